//! `orderflow demo`: a flash sale on this machine with nothing installed.
//!
//! One process holds an embedded Kafka-protocol broker (librdkafka's mock
//! cluster), the processor (the same `app::run` as `orderflow run`, on a
//! thread) and the loadtest generator, with metrics served while it runs.
//! It ends with the loadtest's audit; the exit status says whether it held.
//!
//! Why the demo's sale is small (a few thousand orders per second at the
//! peak, 30 s by default, see `loadtest/demo.toml`): the mock broker runs
//! on a single thread, and keeps only about 5 MiB or 100,000 batches per
//! partition, silently dropping older data. Here it shares two cores with
//! the processor and the generator, so a larger sale would measure the
//! mock, not the processor, and a processor that fell more than a few
//! seconds behind would find its input already dropped: orders would be
//! reported missing that were never delivered. Real figures come from
//! `orderflow loadtest` against a real cluster.

use crate::app::{self, Shutdown};
use crate::config::{Config, ConfigErrors};
use crate::loadtest::report::Summary;
use crate::loadtest::scenario::{Overrides, Scenario, DEMO_TOML};
use crate::loadtest::{self, Event, LoadtestError, Options};
use crate::telemetry::Readiness;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use std::net::TcpListener;

/// Brokers in the mock cluster: one is all a single machine needs.
const MOCK_BROKERS: i32 = 1;
/// The mock broker holds a fetch that finds no data for its full max wait,
/// and new data does not end the wait early (a real broker answers as soon
/// as data arrives). With librdkafka's default of 500 ms every decision
/// would look a quarter second late, so the processor polls it more often.
const MOCK_FETCH_WAIT_MS: u32 = 5;
/// Where metrics are served unless `--metrics-listen` says otherwise; if
/// the port is taken, a free one is used instead.
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9898";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct DemoArgs {
    /// Length of the sale (T0, the burst and the tail scale with it).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Base rate, orders per second (the burst runs at 10x).
    #[arg(long, value_name = "ORDERS_PER_S")]
    pub rate: Option<f64>,
    /// Seed of the generator.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Address to serve Prometheus metrics on while the demo runs.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Print the final summary as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting the embedded broker: {0}")]
    MockCluster(#[from] KafkaError),
    #[error(transparent)]
    Scenario(#[from] loadtest::scenario::ScenarioError),
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("serving metrics: {0}")]
    Metrics(String),
    #[error("the processor stopped: {0}")]
    Processor(String),
    #[error(transparent)]
    Loadtest(#[from] LoadtestError),
}

/// Runs the demo; `observe` gets the notices and progress lines.
pub fn run(args: &DemoArgs, observe: &mut dyn FnMut(Event<'_>)) -> Result<Summary, DemoError> {
    let scenario = Scenario::layered(
        &[("built-in loadtest/demo.toml", DEMO_TOML)],
        &Overrides {
            rate: args.rate,
            duration_secs: args.duration,
            seed: args.seed,
            ..Overrides::default()
        },
    )?;
    // Declared first so it is dropped last: every client must be gone
    // before the broker they talk to.
    let cluster = MockCluster::new(MOCK_BROKERS)?;
    let brokers = cluster.bootstrap_servers();
    let defaults = Config::defaults();
    let plan = &scenario.topics;
    // The mock broker has no CreateTopics API: topics are made directly.
    for (topic, partitions) in [
        (&defaults.topics.orders, plan.orders_partitions),
        (&defaults.topics.inventory, plan.inventory_partitions),
        (&defaults.topics.status, plan.status_partitions),
        (&defaults.topics.fulfillments, plan.fulfillments_partitions),
        (&defaults.topics.dlq, plan.dlq_partitions),
    ] {
        cluster.create_topic(topic, partitions, 1)?;
    }
    let listen = metrics_listen(args.metrics_listen.as_deref());
    let config = Config::load(
        None,
        &[
            format!("kafka.brokers={brokers}"),
            format!("metrics.listen={listen}"),
            format!("kafka.consumer.fetch.wait.max.ms={MOCK_FETCH_WAIT_MS}"),
            // The progress line is the demo's output, and the sale sends
            // malformed records on purpose: only errors are logged.
            "log.level=error".to_string(),
        ],
    )?;
    app::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| DemoError::Metrics(e.to_string()))?;
    let shutdown = Shutdown::new();
    let readiness = Readiness::new(&shutdown);
    let _metrics = runtime
        .block_on(async { app::serve_metrics(&config.metrics, &readiness) })
        .map_err(|e| DemoError::Metrics(format!("{e:#}")))?;
    observe(Event::Notice(&format!(
        "embedded broker at {brokers}; metrics at http://{listen}/metrics while the demo runs"
    )));

    let processor = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("processor".into())
            .spawn(move || app::run_with_readiness(config, shutdown, &readiness))
            .map_err(|e| DemoError::Processor(e.to_string()))?
    };
    let result = loadtest::run(&config, &scenario, &Options::default(), observe);
    shutdown.trigger();
    let stopped = processor
        .join()
        .map_err(|_| DemoError::Processor("the processor thread panicked".into()))?;
    stopped.map_err(|e| DemoError::Processor(format!("{e:#}")))?;
    let summary = result?;
    observe(Event::Notice(&format!(
        "metrics were served at http://{listen}/metrics. Against a real cluster: \
         `orderflow run --brokers HOST:PORT`, and alongside it \
         `orderflow loadtest --brokers HOST:PORT --scenario loadtest/flash-sale.toml`"
    )));
    drop(cluster);
    Ok(summary)
}

/// `requested`, or the default; if that port is taken, a free one.
fn metrics_listen(requested: Option<&str>) -> String {
    if let Some(listen) = requested {
        return listen.to_string();
    }
    if TcpListener::bind(DEFAULT_METRICS_LISTEN).is_ok() {
        return DEFAULT_METRICS_LISTEN.to_string();
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|addr| addr.to_string())
        .unwrap_or_else(|_| DEFAULT_METRICS_LISTEN.to_string())
}

/// `orderflow demo`: prints progress and the summary; returns whether the
/// audit passed.
pub fn cli(args: &DemoArgs) -> Result<bool, DemoError> {
    let summary = run(args, &mut |event| match event {
        Event::Notice(text) => eprintln!("demo: {text}"),
        Event::Progress(progress) => eprintln!("{progress}"),
    })?;
    if args.json {
        println!("{}", summary.to_json());
    } else {
        println!("{summary}");
    }
    Ok(summary.passed)
}
