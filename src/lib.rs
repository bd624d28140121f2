//! orderflow: a high-throughput order processor for flash sales.
//!
//! A tour, in the direction data flows:
//!
//! - [`config`]: one typed `Config`, from `config/default.toml`, a file,
//!   `ORDERFLOW__SECTION__KEY` environment variables and flags.
//! - [`order`]: the contract's wire types, decoding of raw records,
//!   validation rules and output events. Pure: no Kafka, no I/O. (It and
//!   `inventory`, `engine`, `lifecycle` and `state` are the crate
//!   `orderflow-core`, in core/, re-exported here.)
//! - [`inventory`]: the stock cache shared by all shards; reservations are
//!   all-or-nothing and can never oversell, also across instances, where
//!   each partition sells its quota of a SKU.
//! - [`partitioner`]: which partition of `orders` a key belongs on, as the
//!   Java client (murmur2) and librdkafka (CRC32) compute it. Pure.
//! - [`engine`]: one record in, an outcome and output events out, with the
//!   per-partition order book that dedups and remembers accepted orders.
//! - [`kafka`]: the source (consumer, rebalances, inventory feed), the
//!   shards that run the engine, the sink (producer with delivery tracking,
//!   DLQ) and Kafka transactions where the brokers have them.
//! - [`lifecycle`]: an accepted order's life after the decision (payments
//!   with retries, voids and refunds, shipments, returns, staff actions) as
//!   pure state machines that return what to do as data.
//! - [`payments`]: the adapters that answer payment commands (simulated,
//!   http, or an external service) through the topics.
//! - [`state`]: the changelog written beside each status, and the restore
//!   that rebuilds a partition's book and holdings from it whenever this
//!   process is assigned the partition.
//! - [`telemetry`]: every metric name, help text and bucket in one place,
//!   and the `/metrics`, `/health` and `/ready` endpoints.
//! - [`app`]: wires it all together for `orderflow run`.
//! - [`loadtest`]: the flash-sale generator and the audit of its outcome.
//! - [`demo`]: an embedded broker, the processor and the generator in one process.

pub mod app;
pub mod cold;
pub mod config;
pub mod demo;
pub mod kafka;
pub mod loadtest;
pub mod partitioner;
pub mod payments;
pub mod shutdown;
pub mod telemetry;

// The pure core lives in its own crate (core/), which cannot depend on
// rdkafka, tokio or HTTP; its modules keep their paths here.
pub use orderflow_core::{engine, inventory, lifecycle, order, state};
