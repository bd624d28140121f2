//! Every metric's name, help text, unit and buckets, and one function per
//! domain event that both counts and logs it, so names and log lines never
//! drift apart. The HTTP endpoints an orchestrator and Prometheus talk to
//! (`/metrics`, `/health`, `/ready`) are served from here too.
//!
//! Labels only ever carry values from closed sets (outcomes, reasons, error
//! kinds, partitions, shards, configured watched SKUs), never order or
//! customer IDs. Handles for the per-record metrics are resolved once, and
//! shards buffer per-record counts and samples in a [`ShardTelemetry`], so
//! the hot path touches no shared state (see `benches/telemetry.rs` and
//! docs/benchmarks.md).

use crate::engine::Outcome;
use crate::order::decode::DlqReason;
use crate::order::Reason;
use crate::shutdown::Shutdown;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ORDERS_TOTAL: &str = "orderflow_orders_total";
pub const ORDERS_REJECTED_TOTAL: &str = "orderflow_orders_rejected_total";
pub const DLQ_RECORDS_TOTAL: &str = "orderflow_dlq_records_total";
pub const CANCELLATIONS_IGNORED_TOTAL: &str = "orderflow_cancellations_ignored_total";
pub const RECORDS_REPLAYED_TOTAL: &str = "orderflow_records_replayed_total";
pub const RECOVERED_ORDERS_TOTAL: &str = "orderflow_recovered_orders_total";
pub const ORDER_LATENCY_SECONDS: &str = "orderflow_order_latency_seconds";
pub const PROCESSING_SECONDS: &str = "orderflow_processing_seconds";
pub const INVENTORY_AVAILABLE_UNITS: &str = "orderflow_inventory_available_units";
pub const INVENTORY_SKUS: &str = "orderflow_inventory_skus";
pub const INVENTORY_EVENTS_TOTAL: &str = "orderflow_inventory_events_total";
pub const OVERSOLD_UNITS: &str = "orderflow_oversold_units";
pub const CONSUMER_LAG_MESSAGES: &str = "orderflow_consumer_lag_messages";
pub const SHARD_QUEUE_DEPTH: &str = "orderflow_shard_queue_depth";
pub const FULFILLMENTS_TOTAL: &str = "orderflow_fulfillments_total";
pub const KAFKA_ERRORS_TOTAL: &str = "orderflow_kafka_errors_total";
pub const OUTPUTS_PENDING: &str = "orderflow_outputs_pending";
pub const PARTITIONS_ASSIGNED: &str = "orderflow_partitions_assigned";
pub const BUILD_INFO: &str = "orderflow_build_info";

/// The kind of a metric, as Prometheus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric this process exports, with its kind. Dashboards, alert
/// rules and their tests are checked against this list.
pub const METRICS: [(&str, Kind); 19] = [
    (ORDERS_TOTAL, Kind::Counter),
    (ORDERS_REJECTED_TOTAL, Kind::Counter),
    (DLQ_RECORDS_TOTAL, Kind::Counter),
    (CANCELLATIONS_IGNORED_TOTAL, Kind::Counter),
    (RECORDS_REPLAYED_TOTAL, Kind::Counter),
    (RECOVERED_ORDERS_TOTAL, Kind::Counter),
    (ORDER_LATENCY_SECONDS, Kind::Histogram),
    (PROCESSING_SECONDS, Kind::Histogram),
    (INVENTORY_AVAILABLE_UNITS, Kind::Gauge),
    (INVENTORY_SKUS, Kind::Gauge),
    (INVENTORY_EVENTS_TOTAL, Kind::Counter),
    (OVERSOLD_UNITS, Kind::Gauge),
    (CONSUMER_LAG_MESSAGES, Kind::Gauge),
    (SHARD_QUEUE_DEPTH, Kind::Gauge),
    (FULFILLMENTS_TOTAL, Kind::Counter),
    (KAFKA_ERRORS_TOTAL, Kind::Counter),
    (OUTPUTS_PENDING, Kind::Gauge),
    (PARTITIONS_ASSIGNED, Kind::Gauge),
    (BUILD_INFO, Kind::Gauge),
];

/// Every series name a scrape can contain: histograms add `_bucket`,
/// `_sum` and `_count` series.
pub fn series_names() -> Vec<String> {
    let mut names = Vec::new();
    for (name, kind) in METRICS {
        match kind {
            Kind::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{name}{suffix}"));
                }
            }
            Kind::Counter | Kind::Gauge => names.push(name.to_string()),
        }
    }
    names
}

/// placed → decision, which includes the time an order waited in Kafka and
/// in a shard queue. Healthy, a flash sale's orders are decided within a few
/// milliseconds (SLO: p99 under 10 ms), so the buckets are dense from 0.5 ms
/// to 100 ms; during an incident the backlog turns that into seconds or
/// minutes, so they go on, sparser, to 2 minutes: a p99.9 of "over 30 s"
/// still has a bucket to land in.
pub const ORDER_LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 120.0,
];

/// record received from Kafka → outputs enqueued. The engine itself takes
/// a few microseconds per order (see benches/engine), so the buckets start
/// at 5 µs; but the time includes the wait in the bounded shard queue
/// (`engine.shard_queue_records`), which under back-pressure grows to
/// hundreds of milliseconds, so they reach 5 s.
pub const PROCESSING_BUCKETS: [f64; 18] = [
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
    0.25, 0.5, 1.0, 5.0,
];

/// `outcome` values of `orderflow_orders_total`, in the order of `Handles::outcomes`.
pub const OUTCOMES: [&str; 5] = ["accepted", "rejected", "cancelled", "duplicate", "dlq"];
/// `type` values of `orderflow_fulfillments_total`.
pub const FULFILLMENT_TYPES: [&str; 2] = ["fulfillment_requested", "fulfillment_cancelled"];
/// `result` values of `orderflow_inventory_events_total`.
pub const INVENTORY_RESULTS: [&str; 2] = ["applied", "dlq"];
/// `kind` values of `orderflow_kafka_errors_total` (see
/// `kafka::sink::error_kind`, plus `commit` for failed offset commits).
pub const KAFKA_ERROR_KINDS: [&str; 9] = [
    "message_timed_out",
    "queue_full",
    "all_brokers_down",
    "transport",
    "unknown_topic",
    "message_too_large",
    "broker",
    "client",
    "commit",
];

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("binding {listen}: {source}")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("installing the metrics recorder: {0}")]
    Recorder(#[from] BuildError),
}

/// Builds the Prometheus recorder with the histograms' buckets (so they are
/// exported as real `_bucket` histograms, not summaries). Not installed:
/// [`install`] does that; a benchmark may install it itself.
pub fn recorder() -> Result<metrics_exporter_prometheus::PrometheusRecorder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(ORDER_LATENCY_SECONDS.into()),
            &ORDER_LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(PROCESSING_SECONDS.into()),
            &PROCESSING_BUCKETS,
        )?
        .build_recorder())
}

/// How often histogram samples are folded into their buckets between
/// scrapes, so memory stays bounded even if nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's global recorder,
/// describes every metric and creates every labelled series at zero, and
/// serves `/metrics`, `/health` and `/ready` on `listen`.
/// Must be called from inside a Tokio runtime.
pub fn install(listen: SocketAddr, readiness: Readiness) -> Result<PrometheusHandle, InstallError> {
    // Bind first, so a taken port fails start-up before anything is global.
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|listener| {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        })
        .map_err(|source| InstallError::Bind { listen, source })?;
    let recorder = recorder()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(BuildError::from)?;
    describe();
    init_series();

    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(http::serve(listener, handle.clone(), readiness));
    Ok(handle)
}

/// Help texts and units of every metric, and the build info series.
pub fn describe() {
    describe_counter!(
        ORDERS_TOTAL,
        "Order records processed, by outcome (accepted, rejected, cancelled, duplicate, dlq)."
    );
    describe_counter!(ORDERS_REJECTED_TOTAL, "Orders rejected, by reason.");
    describe_counter!(
        DLQ_RECORDS_TOTAL,
        "Records sent to the dead-letter topic, by error code."
    );
    describe_counter!(
        CANCELLATIONS_IGNORED_TOTAL,
        "Cancellations of unknown, rejected or already cancelled orders."
    );
    describe_counter!(
        RECORDS_REPLAYED_TOTAL,
        "Records read again after a restart or rebalance; their follow-ups are sent again."
    );
    describe_counter!(
        RECOVERED_ORDERS_TOTAL,
        "Order decisions restored from the status topic's changelog at start."
    );
    describe_histogram!(
        ORDER_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from an order's placed_at to its accept or reject decision."
    );
    describe_histogram!(
        PROCESSING_SECONDS,
        Unit::Seconds,
        "Time from an orders record received from Kafka to its outputs enqueued."
    );
    describe_gauge!(
        INVENTORY_AVAILABLE_UNITS,
        "Units left for sale, for the configured watched SKUs only."
    );
    describe_gauge!(INVENTORY_SKUS, "SKUs known to the inventory cache.");
    describe_counter!(
        INVENTORY_EVENTS_TOTAL,
        "Inventory records applied or sent to the dead-letter topic, by result."
    );
    describe_gauge!(
        OVERSOLD_UNITS,
        "Units sold beyond stock over all SKUs. Must stay 0."
    );
    describe_gauge!(
        CONSUMER_LAG_MESSAGES,
        "Records of the orders topic not yet committed, per partition this instance owns."
    );
    describe_gauge!(
        SHARD_QUEUE_DEPTH,
        "Records waiting in a shard's queue, per shard."
    );
    describe_counter!(FULFILLMENTS_TOTAL, "Fulfillment events emitted, by type.");
    describe_counter!(KAFKA_ERRORS_TOTAL, "Kafka client errors, by kind.");
    describe_gauge!(
        OUTPUTS_PENDING,
        "Output records produced but not yet acknowledged by the broker."
    );
    describe_gauge!(
        PARTITIONS_ASSIGNED,
        "Partitions of the orders topic this instance owns and decides."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version of the running binary is in its labels."
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Pre-resolved handles for the per-record metrics, indexed by the
/// position of a label value in its closed set.
struct Handles {
    outcomes: [Counter; 5],
    rejected: [Counter; 7],
    dlq: [Counter; 7],
    cancels_ignored: Counter,
    replayed: Counter,
    latency: Histogram,
    processing: Histogram,
    fulfillments: [Counter; 2],
    inventory_events: [Counter; 2],
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn handles() -> &'static Handles {
    HANDLES.get_or_init(Handles::resolve)
}

impl Handles {
    /// Registers every series with the current recorder.
    fn resolve() -> Handles {
        Handles {
            outcomes: OUTCOMES.map(|outcome| counter!(ORDERS_TOTAL, "outcome" => outcome)),
            rejected: Reason::ALL
                .map(|reason| counter!(ORDERS_REJECTED_TOTAL, "reason" => reason.as_str())),
            dlq: DlqReason::ALL
                .map(|reason| counter!(DLQ_RECORDS_TOTAL, "error" => reason.as_str())),
            cancels_ignored: counter!(CANCELLATIONS_IGNORED_TOTAL),
            replayed: counter!(RECORDS_REPLAYED_TOTAL),
            latency: histogram!(ORDER_LATENCY_SECONDS),
            processing: histogram!(PROCESSING_SECONDS),
            fulfillments: FULFILLMENT_TYPES
                .map(|kind| counter!(FULFILLMENTS_TOTAL, "type" => kind)),
            inventory_events: INVENTORY_RESULTS
                .map(|result| counter!(INVENTORY_EVENTS_TOTAL, "result" => result)),
        }
    }
}

/// Creates every labelled series of a closed set at zero, so dashboards and
/// alerts see 0, not "no data", before the first event of a kind.
pub fn init_series() {
    handles();
    for kind in KAFKA_ERROR_KINDS {
        counter!(KAFKA_ERRORS_TOTAL, "kind" => kind).increment(0);
    }
    gauge!(OVERSOLD_UNITS).set(0.0);
    gauge!(OUTPUTS_PENDING).set(0.0);
    gauge!(PARTITIONS_ASSIGNED).set(0.0);
}

/// The per-record metrics of one shard thread, buffered.
///
/// A shard records every order into plain fields of its own (no atomics,
/// no cache lines shared with other threads, nothing evicted by the
/// engine's work between records) and hands the sums and samples to the
/// exporter in one go every [`ShardTelemetry::FLUSH_RECORDS`] records, and
/// whenever the shard reports its queue depth (at least every
/// `DEPTH_REPORT_INTERVAL` when busy, and when idle). Recording straight
/// into the exporter's shared counters and histogram buckets per record
/// cost up to 4% of the engine's time; this costs about 1%
/// (docs/benchmarks.md, "Metrics overhead").
/// Logs are never buffered: each event logs when it happens.
pub struct ShardTelemetry {
    handles: &'static Handles,
    outcomes: [u64; 5],
    rejected: [u64; 7],
    dlq: [u64; 7],
    cancels_ignored: u64,
    replayed: u64,
    fulfillments: [u64; 2],
    /// Seconds, placed → decision, of decided orders since the last flush.
    latency: Vec<f64>,
    /// Seconds, received → outputs enqueued, since the last flush.
    processing: Vec<f64>,
}

impl Default for ShardTelemetry {
    fn default() -> Self {
        Self::with_handles(handles())
    }
}

impl ShardTelemetry {
    fn with_handles(handles: &'static Handles) -> Self {
        ShardTelemetry {
            handles,
            outcomes: [0; 5],
            rejected: [0; 7],
            dlq: [0; 7],
            cancels_ignored: 0,
            replayed: 0,
            fulfillments: [0; 2],
            latency: Vec::with_capacity(Self::FLUSH_RECORDS),
            processing: Vec::with_capacity(Self::FLUSH_RECORDS),
        }
    }
}

impl ShardTelemetry {
    /// Records buffered at most before a flush: at a sale's rate a few
    /// milliseconds' worth, so scrapes never see stale numbers, while the
    /// flush's cost is spread thin.
    pub const FLUSH_RECORDS: usize = 256;

    pub fn new() -> Self {
        Self::default()
    }

    /// One order record processed: counts it, keeps its timings, logs it.
    /// `Reason` and `DlqReason` are fieldless enums listed in `ALL` in
    /// declaration order, so `as usize` is their index (a unit test checks).
    pub fn order_processed(
        &mut self,
        outcome: Outcome,
        latency: Option<Duration>,
        processing: Duration,
    ) {
        match outcome {
            Outcome::Accepted => self.outcomes[0] += 1,
            Outcome::Rejected(reason) => {
                self.outcomes[1] += 1;
                self.rejected[reason as usize] += 1;
                tracing::debug!(reason = reason.as_str(), "order rejected");
            }
            Outcome::Cancelled => self.outcomes[2] += 1,
            Outcome::Duplicate => {
                self.outcomes[3] += 1;
                tracing::debug!("duplicate order placement ignored");
            }
            Outcome::Replayed => {
                self.replayed += 1;
                tracing::debug!(
                    "record replayed after a restart or rebalance; follow-ups sent again"
                );
            }
            Outcome::CancelIgnored => {
                self.cancels_ignored += 1;
                tracing::debug!("cancellation of an order without an active acceptance ignored");
            }
            Outcome::DeadLetter(reason) => {
                self.outcomes[4] += 1;
                self.dlq[reason as usize] += 1;
                // Per record, so debug: the rate is in the metric (and its
                // alert); a sale with bad input must not flood the logs.
                tracing::debug!(
                    error = reason.as_str(),
                    "record sent to the dead-letter topic"
                );
            }
        }
        if let Some(latency) = latency {
            self.latency.push(latency.as_secs_f64());
        }
        self.processing.push(processing.as_secs_f64());
        if self.processing.len() >= Self::FLUSH_RECORDS {
            self.flush();
        }
    }

    /// One fulfillment event emitted; `kind` is one of [`FULFILLMENT_TYPES`].
    pub fn fulfillment_emitted(&mut self, kind: &str) {
        debug_assert!(FULFILLMENT_TYPES.contains(&kind), "unknown type {kind}");
        self.fulfillments[usize::from(kind == FULFILLMENT_TYPES[1])] += 1;
    }

    /// Hands everything buffered to the exporter.
    pub fn flush(&mut self) {
        fn add(counters: &[Counter], counts: &mut [u64]) {
            for (counter, count) in counters.iter().zip(counts.iter_mut()) {
                if *count > 0 {
                    counter.increment(std::mem::take(count));
                }
            }
        }
        let h = self.handles;
        add(&h.outcomes, &mut self.outcomes);
        add(&h.rejected, &mut self.rejected);
        add(&h.dlq, &mut self.dlq);
        add(
            std::slice::from_ref(&h.cancels_ignored),
            std::slice::from_mut(&mut self.cancels_ignored),
        );
        add(
            std::slice::from_ref(&h.replayed),
            std::slice::from_mut(&mut self.replayed),
        );
        add(&h.fulfillments, &mut self.fulfillments);
        for seconds in self.latency.drain(..) {
            h.latency.record(seconds);
        }
        for seconds in self.processing.drain(..) {
            h.processing.record(seconds);
        }
    }
}

impl Drop for ShardTelemetry {
    /// A shard that stops still has its last records counted.
    fn drop(&mut self) {
        self.flush();
    }
}

/// Decisions restored from the status topic at start.
/// Partitions' state restored from the status topic: counted and logged.
pub fn orders_recovered(partitions: &[i32], count: u64, elapsed: Duration) {
    counter!(RECOVERED_ORDERS_TOTAL).increment(count);
    tracing::info!(
        ?partitions,
        decisions = count,
        elapsed_ms = elapsed.as_millis() as u64,
        "partition state restored from the status topic"
    );
}

/// An inventory record: applied, or dead-lettered with its error.
pub fn inventory_event(result: Result<(), DlqReason>) {
    let h = handles();
    match result {
        Ok(()) => h.inventory_events[0].increment(1),
        Err(reason) => {
            h.inventory_events[1].increment(1);
            h.dlq[reason as usize].increment(1);
            tracing::warn!(
                error = reason.as_str(),
                "inventory record sent to the dead-letter topic"
            );
        }
    }
}

/// A Kafka client error; `kind` is one of [`KAFKA_ERROR_KINDS`].
pub fn kafka_error(kind: &'static str, message: &str) {
    debug_assert!(KAFKA_ERROR_KINDS.contains(&kind), "unknown kind {kind}");
    counter!(KAFKA_ERRORS_TOTAL, "kind" => kind).increment(1);
    tracing::warn!(kind, message, "kafka error");
}

/// A shard's queue depth, reported periodically by the shard itself.
pub fn shard_queue_depth(shard: usize, depth: usize) {
    gauge!(SHARD_QUEUE_DEPTH, "shard" => shard.to_string()).set(depth as f64);
}

/// One partition's consumer lag from librdkafka's statistics. A partition
/// this instance does not own (`lag` is `None`) is exported as 0, so a
/// revoked partition does not keep its last lag forever; with several
/// instances, `max by (partition)` picks the owner's value.
pub fn consumer_lag(partition: i32, lag: Option<i64>) {
    let lag = lag.unwrap_or(0).max(0);
    gauge!(CONSUMER_LAG_MESSAGES, "partition" => partition.to_string()).set(lag as f64);
}

pub fn partitions_assigned(count: usize) {
    gauge!(PARTITIONS_ASSIGNED).set(count as f64);
}

pub fn outputs_pending(pending: usize) {
    gauge!(OUTPUTS_PENDING).set(pending as f64);
}

/// Inventory gauges: SKU count, oversold units, and watched SKUs' stock.
pub fn inventory_levels(skus: usize, oversold: i64, watched: &[(String, i64)]) {
    gauge!(INVENTORY_SKUS).set(skus as f64);
    gauge!(OVERSOLD_UNITS).set(oversold as f64);
    if oversold > 0 {
        tracing::error!(oversold, "units sold beyond stock");
    }
    for (sku, available) in watched {
        gauge!(INVENTORY_AVAILABLE_UNITS, "sku" => sku.clone()).set(*available as f64);
    }
}

/// Whether the processor should get traffic: `/ready` answers 200 only
/// after the inventory was read to its end and the consumer subscribed, and
/// 503 again as soon as shutdown starts. Clones share the state.
#[derive(Debug, Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    shutdown: Shutdown,
}

impl Readiness {
    /// Not ready until [`Readiness::set_ready`]; never ready once `shutdown`
    /// is triggered.
    pub fn new(shutdown: &Shutdown) -> Self {
        Readiness {
            ready: Arc::new(AtomicBool::new(false)),
            shutdown: shutdown.clone(),
        }
    }

    pub fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("ready: inventory read to its end, consuming orders");
        }
    }

    /// Not ready until [`Readiness::set_ready`] again, for `why`.
    pub fn set_not_ready(&self, why: &str) {
        if self.ready.swap(false, Ordering::AcqRel) {
            tracing::warn!(why, "not ready");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_triggered()
    }
}

/// A minimal HTTP/1.x server for three GET endpoints: enough for
/// Prometheus, Kubernetes probes and Docker health checks, without a web
/// framework on the processor's dependency list. One request per
/// connection; every connection is bounded in time, size and number.
mod http {
    use super::*;

    /// Connections served at once; more are closed right away.
    const MAX_CONNECTIONS: usize = 64;
    /// Largest request head read; a scrape's is a few hundred bytes.
    const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
    /// How long one connection may take, request and response.
    const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
    /// Wait after a failed accept (e.g. out of file descriptors).
    const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

    pub(super) async fn serve(
        listener: tokio::net::TcpListener,
        handle: PrometheusHandle,
        readiness: Readiness,
    ) {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a metrics connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue; // dropping the stream closes it
            };
            let handle = handle.clone();
            let readiness = readiness.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ =
                    tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &handle, &readiness))
                        .await;
            });
        }
    }

    async fn answer(
        mut stream: tokio::net::TcpStream,
        handle: &PrometheusHandle,
        readiness: &Readiness,
    ) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD_BYTES {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let request_line = head
            .split(|b| *b == b'\n')
            .next()
            .map(|line| String::from_utf8_lossy(line).trim_end().to_string())
            .unwrap_or_default();
        let response = route(&request_line, || handle.render(), readiness.is_ready());
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    }

    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Response {
        pub status: u16,
        pub body: String,
        pub content_type: &'static str,
        /// HEAD: headers only.
        pub head_only: bool,
    }

    impl Response {
        fn text(status: u16, body: &str) -> Self {
            Response {
                status,
                body: format!("{body}\n"),
                content_type: "text/plain; charset=utf-8",
                head_only: false,
            }
        }

        fn to_bytes(&self) -> Vec<u8> {
            let reason = match self.status {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                503 => "Service Unavailable",
                _ => "Bad Request",
            };
            let mut out = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                self.status,
                self.content_type,
                self.body.len()
            )
            .into_bytes();
            if !self.head_only {
                out.extend_from_slice(self.body.as_bytes());
            }
            out
        }
    }

    /// The response to one request line (`GET /metrics HTTP/1.1`).
    pub(super) fn route(
        request_line: &str,
        render: impl FnOnce() -> String,
        ready: bool,
    ) -> Response {
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Response::text(400, "bad request");
        };
        let path = target.split('?').next().unwrap_or(target);
        let mut response = match (method, path) {
            ("GET" | "HEAD", "/metrics") => Response {
                status: 200,
                body: render(),
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                head_only: false,
            },
            ("GET" | "HEAD", "/health") => Response::text(200, "ok"),
            ("GET" | "HEAD", "/ready") if ready => Response::text(200, "ready"),
            ("GET" | "HEAD", "/ready") => Response::text(503, "not ready"),
            ("GET" | "HEAD", _) => Response::text(404, "not found: try /metrics, /health, /ready"),
            _ => Response::text(405, "only GET and HEAD"),
        };
        response.head_only = method == "HEAD";
        response
    }
}

#[cfg(test)]
mod tests {
    use super::http::route;
    use super::*;

    #[test]
    fn enum_discriminants_index_their_closed_sets() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
        for (i, reason) in DlqReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for (name, kind) in METRICS {
            assert!(name.starts_with("orderflow_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert_eq!(name.ends_with("_total"), kind == Kind::Counter, "{name}");
            if kind == Kind::Histogram {
                assert!(name.ends_with("_seconds"), "{name}: base unit last");
            }
        }
        let mut names: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "duplicate metric names");
    }

    #[test]
    fn buckets_ascend() {
        assert!(ORDER_LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert!(PROCESSING_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn kafka_error_kinds_cover_the_sink_mapping() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let errors = [
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
            KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown),
            KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure),
            KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition),
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            KafkaError::MessageProduction(RDKafkaErrorCode::InvalidMessage),
            KafkaError::NoMessageReceived,
        ];
        for error in errors {
            let kind = crate::kafka::sink::error_kind(&error);
            assert!(KAFKA_ERROR_KINDS.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn routes() {
        let render = || "orderflow_up 1\n".to_string();
        let metrics = route("GET /metrics HTTP/1.1", render, false);
        assert_eq!(
            (metrics.status, metrics.body.as_str()),
            (200, "orderflow_up 1\n")
        );
        assert!(metrics.content_type.contains("version=0.0.4"));
        assert_eq!(
            route("GET /metrics?x=1 HTTP/1.1", render, false).status,
            200
        );
        assert_eq!(route("GET /health HTTP/1.1", render, false).status, 200);
        assert_eq!(route("GET /ready HTTP/1.1", render, false).status, 503);
        assert_eq!(route("GET /ready HTTP/1.0", render, true).status, 200);
        assert_eq!(route("GET / HTTP/1.1", render, true).status, 404);
        assert_eq!(route("POST /ready HTTP/1.1", render, true).status, 405);
        assert_eq!(route("", render, true).status, 400);
        let head = route("HEAD /health HTTP/1.1", render, true);
        assert!(head.head_only && head.status == 200);
    }

    #[test]
    fn shard_telemetry_flushes_everything_it_buffered() {
        let recorder = recorder().unwrap();
        let handle = recorder.handle();
        // A local recorder and handles of its own: the process-wide ones
        // stay untouched for other tests.
        metrics::with_local_recorder(&recorder, || {
            let mut shard = ShardTelemetry::with_handles(Box::leak(Box::new(Handles::resolve())));
            let ms = Duration::from_millis(1);
            for _ in 0..ShardTelemetry::FLUSH_RECORDS + 3 {
                shard.order_processed(Outcome::Accepted, Some(ms), ms);
            }
            shard.order_processed(Outcome::Rejected(Reason::OutOfStock), Some(ms), ms);
            shard.order_processed(Outcome::DeadLetter(DlqReason::NotJson), None, ms);
            shard.order_processed(Outcome::CancelIgnored, None, ms);
            shard.fulfillment_emitted("fulfillment_cancelled");
            drop(shard);
        });
        let scrape = handle.render();
        let n = ShardTelemetry::FLUSH_RECORDS + 3;
        for line in [
            format!("orderflow_orders_total{{outcome=\"accepted\"}} {n}"),
            "orderflow_orders_total{outcome=\"rejected\"} 1".to_string(),
            "orderflow_orders_rejected_total{reason=\"out_of_stock\"} 1".to_string(),
            "orderflow_orders_total{outcome=\"dlq\"} 1".to_string(),
            "orderflow_dlq_records_total{error=\"not_json\"} 1".to_string(),
            "orderflow_cancellations_ignored_total 1".to_string(),
            "orderflow_fulfillments_total{type=\"fulfillment_cancelled\"} 1".to_string(),
            format!("orderflow_order_latency_seconds_count {}", n + 1),
            format!("orderflow_processing_seconds_count {}", n + 3),
            format!(
                "orderflow_order_latency_seconds_bucket{{le=\"0.0025\"}} {}",
                n + 1
            ),
        ] {
            assert!(
                scrape.lines().any(|l| l == line),
                "missing {line:?} in\n{scrape}"
            );
        }
    }

    #[test]
    fn readiness_follows_start_and_shutdown() {
        let shutdown = Shutdown::new();
        let readiness = Readiness::new(&shutdown);
        assert!(!readiness.is_ready(), "not ready before start-up completes");
        readiness.clone().set_ready();
        assert!(readiness.is_ready());
        shutdown.trigger();
        assert!(!readiness.is_ready(), "not ready once shutdown starts");
    }
}
