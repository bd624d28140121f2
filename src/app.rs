//! `orderflow run`: wires config, inventory feed, shards, source and sink
//! together, and shuts them down in the order that loses nothing.

use crate::config::{Config, LogConfig, MetricsConfig};
use crate::engine::Engine;
use crate::inventory::Inventory;
use crate::kafka::recovery::Recovery;
use crate::kafka::source::{self, SourceContext, SourceSetup, SourceShared};
use crate::kafka::transaction::{self, Next};
use crate::kafka::StartError;
use crate::kafka::{self, inventory_feed, tracker::OffsetTracker, worker::Shard};
pub use crate::shutdown::Shutdown;
use crate::telemetry;
pub use crate::telemetry::Readiness;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one flush waits at shutdown before looking at progress again.
const FLUSH_STEP: Duration = Duration::from_millis(100);
/// How often inventory gauges (oversold units, watched SKUs) are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Sets up `tracing` from the `[log]` section (RUST_LOG wins if set).
pub fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the Prometheus recorder and serves `/metrics`, `/health` and
/// `/ready` (answered from `readiness`). Call inside a Tokio runtime.
/// Returns `None` when metrics are disabled.
pub fn serve_metrics(
    metrics: &MetricsConfig,
    readiness: &Readiness,
) -> anyhow::Result<Option<PrometheusHandle>> {
    if !metrics.enabled {
        return Ok(None);
    }
    let listen = metrics.listen.parse().context("metrics.listen")?;
    let handle = telemetry::install(listen, readiness.clone())
        .with_context(|| format!("serving metrics on {listen}"))?;
    tracing::info!(%listen, "metrics at http://{listen}/metrics, probes at /health and /ready");
    Ok(Some(handle))
}

/// Triggers `shutdown` on SIGINT or SIGTERM.
pub async fn shutdown_on_signal(shutdown: Shutdown) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested: finishing in-flight work");
    shutdown.trigger();
}

/// Runs the processor until `shutdown` is triggered, then finishes in-flight
/// records, flushes outputs and commits offsets. An error after start-up
/// means a transaction failed: the processor stopped so that a restart
/// restores its state from what was committed.
pub fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let readiness = Readiness::new(&shutdown);
    run_with_readiness(config, shutdown, &readiness)
}

/// [`run`], marking `readiness` ready once the inventory is read to its end
/// and the orders consumer is subscribed.
pub fn run_with_readiness(
    config: Config,
    shutdown: Shutdown,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    let tracker = Arc::new(OffsetTracker::new());
    // Before anything is sent: with transactions, every send needs one open.
    let (sink, transactions) =
        transaction::start_sink(&config, tracker.clone()).context("creating the producer")?;
    let transactional = transactions.is_some();
    let inventory = Arc::new(Inventory::new());
    let feed = inventory_feed::start(&config, inventory.clone(), sink.clone(), shutdown.clone())
        .context("reading the inventory topic")?;
    let engine = Arc::new(Engine::new(inventory.clone(), config.limits.clone()));
    let recovery = recovery(&config, inventory.clone())?;

    let mut queues = Vec::new();
    let mut shards = Vec::new();
    for id in 0..config.engine.shards {
        let (tx, rx) = crossbeam_channel::bounded(config.engine.shard_queue_records);
        let shard = Shard {
            id,
            engine: engine.clone(),
            sink: sink.clone(),
            tracker: tracker.clone(),
            topics: config.topics.clone(),
        };
        queues.push(tx);
        let thread = std::thread::Builder::new().name(format!("shard-{id}"));
        shards.push(thread.spawn(move || shard.run(rx))?);
    }

    let (recovery, partitions) = recovery;
    let shared = Arc::new(SourceShared::new(
        tracker.clone(),
        SourceSetup {
            topic: config.topics.orders.clone(),
            drain_timeout: Duration::from_millis(config.engine.shutdown_timeout_ms),
            shards: queues,
            recovery,
            partitions,
            whole: !config.engine.split_by_partition(),
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
            transactions,
        },
    ));
    let consumer: BaseConsumer<SourceContext> =
        kafka::orders_consumer_config(&config.kafka, transactional)
            .create_with_context(SourceContext {
                shared: shared.clone(),
            })
            .context("creating the orders consumer")?;
    consumer
        .subscribe(&[&config.topics.orders])
        .context("subscribing to the orders topic")?;
    readiness.set_ready();
    let gauges = spawn_gauges(
        inventory,
        tracker.clone(),
        config.metrics.watched_skus.clone(),
        shutdown.clone(),
    );
    tracing::info!(shards = config.engine.shards, brokers = %config.kafka.brokers,
        transactional, "processing orders");

    source::run(
        &consumer,
        &shutdown,
        Duration::from_millis(config.engine.commit_interval_ms),
    );

    // Shutdown: no new records; shards finish their queues; outputs are
    // flushed; only then are the offsets of delivered work committed.
    shutdown.trigger();
    shared.close();
    for shard in shards {
        let _ = shard.join();
    }
    if transactional {
        // The last transaction: waits for every output, commits the
        // offsets with it, and begins none (a failure is returned below).
        shared.commit_transaction(&consumer, Next::Finish);
    } else {
        // Follow-ups are queued only once their status is acknowledged, so
        // one flush is not enough: wait until every output is acknowledged.
        let deadline = Instant::now() + Duration::from_millis(config.engine.shutdown_timeout_ms);
        while tracker.pending_outputs() > 0 && Instant::now() < deadline {
            let _ = sink.flush(FLUSH_STEP);
        }
        if tracker.pending_outputs() > 0 {
            tracing::warn!(
                pending = tracker.pending_outputs(),
                "not every output was acknowledged; their records stay uncommitted"
            );
        }
        source::commit_final(&consumer);
    }
    consumer.unsubscribe();
    let _ = feed.join();
    let _ = gauges.join();
    if let Some(failure) = shared.take_failure() {
        return Err(failure.into());
    }
    tracing::info!("stopped");
    Ok(())
}

/// The restorer of partition state, and the partition count of `orders`,
/// after checking the status topic can hold each orders partition's
/// changelog.
fn recovery(config: &Config, inventory: Arc<Inventory>) -> anyhow::Result<(Recovery, usize)> {
    let recovery = Recovery::new(config, inventory).context("creating the status reader")?;
    let orders = recovery
        .partition_count(&config.topics.orders)
        .context("reading the orders topic's metadata")?;
    let status = recovery
        .partition_count(&config.topics.status)
        .context("reading the status topic's metadata")?;
    if status < orders {
        return Err(StartError::StatusPartitions {
            status: config.topics.status.clone(),
            status_partitions: status,
            orders: config.topics.orders.clone(),
            orders_partitions: orders,
        }
        .into());
    }
    let recovery = if config.engine.split_by_partition() {
        recovery.with_quotas(orders as u32)
    } else {
        recovery
    };
    Ok((recovery, orders))
}

fn spawn_gauges(
    inventory: Arc<Inventory>,
    tracker: Arc<OffsetTracker>,
    watched: Vec<String>,
    shutdown: Shutdown,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = Instant::now();
        while !shutdown.is_triggered() {
            if Instant::now() >= next {
                let levels: Vec<(String, i64)> = watched
                    .iter()
                    .filter_map(|sku| inventory.get(sku).map(|s| (sku.clone(), s.available())))
                    .collect();
                telemetry::inventory_levels(
                    inventory.sku_count(),
                    inventory.oversold_units(),
                    &levels,
                );
                telemetry::outputs_pending(tracker.pending_outputs());
                next = Instant::now() + GAUGE_INTERVAL;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}
