//! orderflow's pure core: everything that decides, with no broker, no
//! async runtime and no network (the binary crate `orderflow` holds Kafka,
//! telemetry, config, the CLI, the loadtest and the demo).
//!
//! - [`order`]: the contract's wire types, decoding of raw records,
//!   validation rules and output events.
//! - [`inventory`]: the stock cache shared by all shards; reservations are
//!   all-or-nothing and can never oversell, also across instances, where
//!   each partition sells its quota of a SKU.
//! - [`engine`]: one record in, an outcome and output events out, with the
//!   per-partition order book that dedups and remembers accepted orders.
//! - [`lifecycle`]: an accepted order's life after the decision (payments
//!   with retries, voids and refunds, shipments, returns, staff actions) as
//!   pure state machines that return what to do as data.
//! - [`state`]: the changelog codec, and the restorer that rebuilds a
//!   partition's book and holdings from it.

pub mod engine;
pub mod inventory;
pub mod lifecycle;
pub mod order;
pub mod state;
