//! `orderflow run`: wires config, inventory feed, shards, source and sink
//! together, and shuts them down in the order that loses nothing.

use crate::cold::Stores;
use crate::config::{AutoOffsetReset, Config, LogConfig, LogFormat, MetricsConfig};
use crate::engine::Engine;
use crate::inventory::Inventory;
use crate::kafka::recovery::Recovery;
use crate::kafka::sink::{ChangelogFeed, OutputLimits};
use crate::kafka::source::{self, Source, SourceContext, SourceSetup};
use crate::kafka::transaction::{self, Trackers};
use crate::kafka::StartError;
use crate::kafka::{self, inventory_feed, tracker::OffsetTracker, worker::Shard};
use crate::partitioner::Routing;
use crate::payments;
pub use crate::shutdown::Shutdown;
use crate::telemetry;
pub use crate::telemetry::Readiness;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::Offset;
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
    let _ = if log.format == LogFormat::Json {
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
/// means the processor stopped on its own because going on could break a
/// promise (a transaction failed, see [`Shutdown::fail`]): a restart
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
    let result = run_until_stopped(config, shutdown, readiness);
    // Repeated Kafka errors not yet summarized are reported before exit.
    telemetry::kafka_error_summaries(true);
    result
}

fn run_until_stopped(
    config: Config,
    shutdown: Shutdown,
    readiness: &Readiness,
) -> anyhow::Result<()> {
    // First: wrong credentials or missing ACLs would surface only later,
    // as timeouts or an aborted transaction that names neither.
    kafka::preflight::check(&config)?;
    // A changelog deleted by time would forget orders: refused at start,
    // asked beside the steps below (brokers that never answer cost only
    // the check's deadline, overlapped).
    let changelog = {
        let config = config.clone();
        std::thread::spawn(move || kafka::preflight::check_changelog(&config))
    };
    let trackers = Trackers {
        orders: Arc::new(OffsetTracker::new()),
        inventory: Arc::new(OffsetTracker::new()),
    };
    let limits = OutputLimits::of(
        &kafka::producer_config(&config.kafka),
        config.kafka.max_dlq_payload_bytes,
    );
    kafka::check_output_limits(config.limits.max_record_bytes, limits)
        .context("checking that every output fits the producer")?;
    // The partitions' local stores: restores start from them, and the
    // sink feeds them the committed copies of order records.
    let stores = Stores::with_retention(
        &config.engine.store_dir,
        &format!("{}.{}", config.kafka.group_id, config.topics.state),
        config.engine.dedup_window_orders,
        config.lifecycle.retention(),
    );
    let state_feed = stores.clone().map(|stores| ChangelogFeed {
        topic: config.topics.state.clone(),
        stores,
    });
    // Before anything is sent: with transactions, every send needs one open.
    let (sink, transactions) =
        transaction::start_sink(&config, trackers.clone(), &shutdown, state_feed)
            .context("creating the producer")?;
    let transactional = transactions.is_some();
    // Retention's tombstones and the retired units they move must commit
    // together (see `worker::Shard::retire`).
    let retention = transactional && stores.is_some();
    if stores.is_some() && !transactional {
        tracing::warn!(
            "without Kafka transactions orders are not retired: lifecycle.retention_days does \
             not apply, and the order stores keep every order"
        );
    }
    let inventory = Arc::new(Inventory::new());
    let feed = inventory_feed::start(
        &config,
        inventory.clone(),
        sink.clone(),
        trackers.inventory.clone(),
        shutdown.clone(),
    )
    .context("reading the inventory topic")?;
    let engine = Arc::new(
        Engine::new(inventory.clone(), config.limits.clone()).with_policy(config.payments.policy()),
    );
    changelog
        .join()
        .map_err(|_| anyhow::anyhow!("the changelog check panicked"))??;
    let (recovery, partitions) = recovery(&config, inventory.clone(), stores)?;
    let recovery = recovery.with_transactions(transactional);
    let routing = Routing {
        partitioner: config.kafka.orders_partitioner,
        partitions: u32::try_from(partitions).context("the orders topic's partition count")?,
    };

    let tracker = trackers.orders.clone();
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
            routing,
            shutdown: shutdown.clone(),
            retention,
        };
        queues.push(tx);
        let thread = std::thread::Builder::new().name(format!("shard-{id}"));
        shards.push(thread.spawn(move || shard.run(rx))?);
    }

    let mut source = Source::new(SourceSetup {
        topic: config.topics.orders.clone(),
        shards: queues,
        tracker: tracker.clone(),
        inventory: inventory.clone(),
        recovery,
        partitions,
        whole: !config.engine.split_by_partition(),
        max_outputs_in_flight: source::max_outputs_in_flight(
            config.engine.shards,
            config.engine.shard_queue_records,
        ),
        commit_interval: Duration::from_millis(config.engine.commit_interval_ms),
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        transactions,
        start_without_commit: match config.kafka.auto_offset_reset {
            AutoOffsetReset::Earliest => Offset::Beginning,
            AutoOffsetReset::Latest => Offset::End,
        },
    });
    let consumer: BaseConsumer<SourceContext> =
        kafka::orders_consumer_config(&config.kafka, transactional)
            .create_with_context(SourceContext::new(&config.topics.orders, &shutdown))
            .context("creating the orders consumer")?;
    consumer
        .subscribe(&[&config.topics.orders])
        .context("subscribing to the orders topic")?;
    let payments = payments::adapter::spawn(adapter_setup(&config), shutdown.clone())
        .context("starting the payment adapter")?;
    readiness.set_ready();
    let gauges = spawn_gauges(
        inventory,
        tracker.clone(),
        config.metrics.watched_skus.clone(),
        shutdown.clone(),
    );
    tracing::info!(shards = config.engine.shards, brokers = %config.kafka.brokers,
        transactional, "processing orders");

    source.run(&consumer);

    // Shutdown: no new records; shards finish their queues; outputs are
    // flushed; only then are the offsets of delivered work committed.
    shutdown.trigger();
    source.close();
    for shard in shards {
        let _ = shard.join();
    }
    if !transactional {
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
    }
    // The last commit (inside the last transaction, with transactions).
    source.finish(&consumer);
    consumer.unsubscribe();
    drop(consumer);
    let _ = feed.join();
    let _ = gauges.join();
    if let Some(payments) = payments {
        let _ = payments.join();
    }
    if let Some(failure) = shutdown.take_failure() {
        return Err(anyhow::anyhow!(failure));
    }
    tracing::info!("stopped");
    Ok(())
}

/// The in-process payment adapter: commands from `payment-requests`,
/// results to the command's partition of `orders`, with a group of its own.
fn adapter_setup(config: &Config) -> payments::adapter::AdapterSetup {
    let payments = &config.payments;
    payments::adapter::AdapterSetup {
        kind: payments.adapter,
        consumer: kafka::reader_config(
            &config.kafka,
            &format!("{}-payments", config.kafka.group_id),
        ),
        producer: kafka::producer_config(&config.kafka),
        requests_topic: config.topics.payment_requests.clone(),
        results_topic: config.topics.orders.clone(),
        http_url: payments.http_url.clone(),
        http_timeout: Duration::from_millis(payments.http_timeout_ms),
        max_in_flight: payments.http_max_in_flight,
    }
}

/// The restorer of partition state, and the partition count of `orders`,
/// after checking the status topic can hold each orders partition's
/// changelog.
fn recovery(
    config: &Config,
    inventory: Arc<Inventory>,
    stores: Option<Arc<Stores>>,
) -> anyhow::Result<(Recovery, usize)> {
    let recovery =
        Recovery::new(config, inventory, stores).context("creating the status reader")?;
    let orders = recovery
        .partition_count(&config.topics.orders)
        .context("reading the orders topic's metadata")?;
    // Every topic an orders partition writes by number (its changelog
    // and its Part 2 records) needs as many partitions as `orders`.
    let topics = &config.topics;
    for (topic, what) in [
        (&topics.status, "statuses, its changelog,"),
        (&topics.state, "order records without a status"),
        (&topics.events, "order events"),
        (&topics.payment_requests, "payment commands"),
    ] {
        let partitions = recovery
            .partition_count(topic)
            .with_context(|| format!("reading the metadata of topic {topic:?}"))?;
        if partitions < orders {
            return Err(StartError::OutputPartitions {
                topic: topic.clone(),
                partitions,
                what,
                orders: topics.orders.clone(),
                orders_partitions: orders,
            }
            .into());
        }
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
        let mut stock = telemetry::StockGauges::new(watched);
        while !shutdown.is_triggered() {
            if Instant::now() >= next {
                let levels: Vec<(String, i64)> = stock
                    .skus()
                    .filter_map(|sku| inventory.available(sku).map(|units| (sku.clone(), units)))
                    .collect();
                telemetry::inventory_levels(
                    inventory.sku_count(),
                    inventory.oversold_units(),
                    &levels,
                );
                telemetry::outputs_pending(tracker.pending_outputs());
                telemetry::kafka_error_summaries(false);
                next = Instant::now() + GAUGE_INTERVAL;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}
