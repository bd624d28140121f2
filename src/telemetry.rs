//! Every metric's name, help text, unit and buckets, and one function per
//! domain event that both counts and logs it, so names and log lines never
//! drift apart.
//!
//! Labels only ever carry values from closed sets (outcomes, reasons,
//! partitions, shards, configured watched SKUs), never order or customer IDs.
//! Handles for the hot-path counters are resolved once, so recording an
//! outcome is an atomic add, not a registry lookup.

use crate::engine::Outcome;
use crate::order::decode::DlqReason;
use crate::order::Reason;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

pub const ORDERS_TOTAL: &str = "orderflow_orders_total";
pub const ORDERS_REJECTED_TOTAL: &str = "orderflow_orders_rejected_total";
pub const DLQ_TOTAL: &str = "orderflow_dlq_records_total";
pub const CANCELS_IGNORED_TOTAL: &str = "orderflow_cancellations_ignored_total";
pub const REPLAYED_TOTAL: &str = "orderflow_records_replayed_total";
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
pub const BUILD_INFO: &str = "orderflow_build_info";

/// placed → decision. A flash sale's orders are decided within
/// milliseconds when healthy and seconds when lagging; the buckets cover
/// 0.5 ms to 30 s so both the SLO (10 ms p99) and an incident are visible.
pub const ORDER_LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// record received → outputs enqueued: microseconds when healthy (target
/// p99 100 µs); up to 10 ms covers lock contention and allocation stalls.
pub const PROCESSING_BUCKETS: [f64; 12] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2,
];

/// Outcome label values of `orderflow_orders_total`.
pub const OUTCOMES: [&str; 5] = ["accepted", "rejected", "cancelled", "duplicate", "dlq"];

/// Installs the Prometheus recorder and serves `/metrics` on `listen`.
/// Must be called from inside a Tokio runtime.
pub fn install(
    listen: SocketAddr,
) -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            Matcher::Full(ORDER_LATENCY_SECONDS.into()),
            &ORDER_LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(PROCESSING_SECONDS.into()),
            &PROCESSING_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Help texts and units of every metric.
pub fn describe() {
    describe_counter!(ORDERS_TOTAL, "Order records processed, by outcome.");
    describe_counter!(ORDERS_REJECTED_TOTAL, "Orders rejected, by reason.");
    describe_counter!(
        DLQ_TOTAL,
        "Records sent to the dead-letter topic, by error."
    );
    describe_counter!(
        CANCELS_IGNORED_TOTAL,
        "Cancellations of unknown, rejected or cancelled orders."
    );
    describe_counter!(
        REPLAYED_TOTAL,
        "Records read again after a restart or rebalance."
    );
    describe_counter!(
        RECOVERED_ORDERS_TOTAL,
        "Order decisions restored from the status topic."
    );
    describe_histogram!(
        ORDER_LATENCY_SECONDS,
        Unit::Seconds,
        "Time from placed_at to the decision."
    );
    describe_histogram!(
        PROCESSING_SECONDS,
        Unit::Seconds,
        "Time from record received to its outputs enqueued."
    );
    describe_gauge!(
        INVENTORY_AVAILABLE_UNITS,
        "Units left for sale, for the configured watched SKUs."
    );
    describe_gauge!(INVENTORY_SKUS, "SKUs known to the inventory cache.");
    describe_counter!(
        INVENTORY_EVENTS_TOTAL,
        "Inventory events applied or dead-lettered, by result."
    );
    describe_gauge!(
        OVERSOLD_UNITS,
        "Units sold beyond stock over all SKUs. Must stay 0."
    );
    describe_gauge!(
        CONSUMER_LAG_MESSAGES,
        "Records of the orders topic not yet consumed, per partition."
    );
    describe_gauge!(SHARD_QUEUE_DEPTH, "Records waiting for a shard.");
    describe_counter!(FULFILLMENTS_TOTAL, "Fulfillment events emitted, by type.");
    describe_counter!(KAFKA_ERRORS_TOTAL, "Kafka client errors, by kind.");
    describe_gauge!(
        OUTPUTS_PENDING,
        "Output records produced but not yet acknowledged by the broker."
    );
    describe_gauge!(BUILD_INFO, "Always 1; labelled with the version.");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Pre-resolved handles for the per-record metrics.
struct Handles {
    outcomes: [Counter; 5],
    rejected: [Counter; 7],
    dlq: [Counter; 7],
    cancels_ignored: Counter,
    replayed: Counter,
    latency: Histogram,
    processing: Histogram,
    fulfillments: [Counter; 2],
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn handles() -> &'static Handles {
    HANDLES.get_or_init(|| Handles {
        outcomes: OUTCOMES.map(|outcome| counter!(ORDERS_TOTAL, "outcome" => outcome)),
        rejected: Reason::ALL
            .map(|reason| counter!(ORDERS_REJECTED_TOTAL, "reason" => reason.as_str())),
        dlq: DlqReason::ALL.map(|reason| counter!(DLQ_TOTAL, "error" => reason.as_str())),
        cancels_ignored: counter!(CANCELS_IGNORED_TOTAL),
        replayed: counter!(REPLAYED_TOTAL),
        latency: histogram!(ORDER_LATENCY_SECONDS),
        processing: histogram!(PROCESSING_SECONDS),
        fulfillments: ["fulfillment_requested", "fulfillment_cancelled"]
            .map(|kind| counter!(FULFILLMENTS_TOTAL, "type" => kind)),
    })
}

/// Creates every labelled series at zero, so dashboards show 0, not "no data".
pub fn init_series() {
    handles();
}

/// One order record processed: counts it and logs it.
pub fn order_processed(outcome: Outcome, latency: Option<Duration>, processing: Duration) {
    let h = handles();
    match outcome {
        Outcome::Accepted => h.outcomes[0].increment(1),
        Outcome::Rejected(reason) => {
            h.outcomes[1].increment(1);
            h.rejected[Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)].increment(1);
            tracing::debug!(reason = reason.as_str(), "order rejected");
        }
        Outcome::Cancelled => h.outcomes[2].increment(1),
        Outcome::Duplicate => {
            h.outcomes[3].increment(1);
            tracing::debug!("duplicate order placement ignored");
        }
        Outcome::Replayed => {
            h.replayed.increment(1);
            tracing::debug!("record replayed after a restart or rebalance; follow-ups sent again");
        }
        Outcome::CancelIgnored => {
            h.cancels_ignored.increment(1);
            tracing::debug!("cancellation of an order without an active acceptance ignored");
        }
        Outcome::DeadLetter(reason) => {
            h.outcomes[4].increment(1);
            h.dlq[DlqReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0)]
            .increment(1);
            tracing::warn!(
                error = reason.as_str(),
                "record sent to the dead-letter topic"
            );
        }
    }
    if let Some(latency) = latency {
        h.latency.record(latency.as_secs_f64());
    }
    h.processing.record(processing.as_secs_f64());
}

/// Decisions restored from the status topic at start.
pub fn orders_recovered(count: u64) {
    counter!(RECOVERED_ORDERS_TOTAL).increment(count);
}

pub fn fulfillment_emitted(kind: &str) {
    let index = usize::from(kind == "fulfillment_cancelled");
    handles().fulfillments[index].increment(1);
}

/// An inventory record: applied, or dead-lettered with its error.
pub fn inventory_event(result: Result<(), DlqReason>) {
    match result {
        Ok(()) => counter!(INVENTORY_EVENTS_TOTAL, "result" => "applied").increment(1),
        Err(reason) => {
            counter!(INVENTORY_EVENTS_TOTAL, "result" => "dlq").increment(1);
            counter!(DLQ_TOTAL, "error" => reason.as_str()).increment(1);
            tracing::warn!(
                error = reason.as_str(),
                "inventory record sent to the dead-letter topic"
            );
        }
    }
}

/// A Kafka client error, `kind` from a closed set (librdkafka error names).
pub fn kafka_error(kind: &'static str, message: &str) {
    counter!(KAFKA_ERRORS_TOTAL, "kind" => kind).increment(1);
    tracing::warn!(kind, message, "kafka error");
}

pub fn shard_queue_depth(shard: usize, depth: usize) {
    gauge!(SHARD_QUEUE_DEPTH, "shard" => shard.to_string()).set(depth as f64);
}

pub fn consumer_lag(partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG_MESSAGES, "partition" => partition.to_string()).set(lag as f64);
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
