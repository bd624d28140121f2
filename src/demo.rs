//! `orderflow demo`: a flash sale on this machine with nothing installed.
//!
//! One process holds an embedded Kafka-protocol broker (librdkafka's mock
//! cluster), the processor (the same `app::run` as `orderflow run`, on a
//! thread) and the loadtest generator, with metrics served while it runs.
//! It ends with the loadtest's audit; the exit status says whether it held.
//!
//! Payments: the simulated gateway answers the processor's commands on the
//! same embedded broker, and the retry policy is the scenario's short one
//! (`[payments]` in `loadtest/demo.toml`: the first retry after 200 ms, not
//! the five minutes of the default), so a flaky authorization's retries
//! fall within the sale; the output says so.
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
use crate::config::{Config, ConfigErrors, Layers, Source, ENV_PREFIX};
use crate::loadtest::catalog::Catalog;
use crate::loadtest::report::Summary;
use crate::loadtest::scenario::{self, Overrides, Scenario, DEMO_TOML};
use crate::loadtest::{self, Event, LoadtestError, Options};
use crate::telemetry::{self, Readiness};
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
/// The mock broker's group coordinator lets a rebalance round wait up to
/// the session timeout (less one second) for members that may never come:
/// a JoinGroup the client retried leaves a member behind that never
/// syncs. With the default 45 s one such round outlasts the demo's probe
/// timeout (30 s). The demo's one processor has no other instance to fail
/// over to, so a short session costs nothing and bounds every round.
const MOCK_SESSION_TIMEOUT_MS: u32 = 6_000;
/// Where metrics are served unless `--metrics-listen` or
/// `ORDERFLOW__METRICS__LISTEN` says otherwise; if the port is taken, a
/// free one is used instead.
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
    /// A TOML file layered over the defaults (the demo's own included),
    /// below ORDERFLOW__ environment variables and flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Address to serve Prometheus metrics on while the demo runs (over
    /// ORDERFLOW__METRICS__LISTEN; default 127.0.0.1:9898, or a free port).
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
    // The run's tag names its SKUs: known up front, the hot ones are watched.
    let run_id = loadtest::default_run_id();
    let hot: Vec<String> = Catalog::build(&scenario, &run_id)
        .hot
        .into_iter()
        .map(|sku| sku.sku)
        .collect();
    let config = config(
        args,
        &brokers,
        &hot,
        &scenario.payments,
        std::env::vars().collect(),
    )?;
    let plan = &scenario.topics;
    // The mock broker has no CreateTopics API: topics are made directly.
    for (topic, partitions) in [
        (&config.topics.orders, plan.orders_partitions),
        (&config.topics.inventory, plan.inventory_partitions),
        (&config.topics.status, plan.status_partitions),
        (&config.topics.fulfillments, plan.fulfillments_partitions),
        (&config.topics.dlq, plan.dlq_partitions),
        (&config.topics.events, plan.orders_partitions),
        (&config.topics.payment_requests, plan.orders_partitions),
        (&config.topics.state, plan.orders_partitions),
    ] {
        cluster.create_topic(topic, partitions, 1)?;
    }
    let listen = &config.metrics.listen;
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
    // The processor starts the payment adapter (`payments.adapter`).
    let policy = &config.payments;
    observe(Event::Notice(&format!(
        "payments: the {} gateway answers on the embedded broker; retries run on a short \
         backoff here (first after {} ms, doubling to at most {} ms, {} attempts; the default \
         waits five minutes before the first)",
        adapter_name(policy.adapter),
        policy.retry_initial_ms,
        policy.retry_max_ms,
        policy.max_attempts
    )));
    let options = Options {
        run_id: Some(run_id),
        ..Options::default()
    };
    let result = loadtest::run(&config, &scenario, &options, observe);
    shutdown.trigger();
    let stopped = processor
        .join()
        .map_err(|_| DemoError::Processor("the processor thread panicked".into()))?;
    runtime.block_on(telemetry::close_http());
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

fn adapter_name(kind: crate::payments::AdapterKind) -> &'static str {
    use crate::payments::AdapterKind;
    match kind {
        AdapterKind::Simulated => "simulated",
        AdapterKind::Http => "HTTP",
        AdapterKind::External => "external",
    }
}

/// The demo's config, layered like `orderflow run`'s (built-in defaults <
/// `--config` file < environment < flags): the demo's own defaults (its
/// hot SKUs watched, a free port if 9898 is taken, only errors logged, the
/// mock broker's fetch wait and a short group session) sit with the built-in ones, below the file and
/// `ORDERFLOW__…` variables, and `--metrics-listen` is a flag. Only the
/// brokers are not the user's: the embedded broker is what the demo is.
fn config(
    args: &DemoArgs,
    brokers: &str,
    hot_skus: &[String],
    payments: &scenario::Payments,
    env: Vec<(String, String)>,
) -> Result<Config, ConfigErrors> {
    let user_listen = args.metrics_listen.is_some()
        || env
            .iter()
            .any(|(name, _)| env_names(name, "metrics.listen"));
    let watched = toml::Value::try_from(hot_skus)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "[]".into());
    let mut layers = Layers::defaults();
    let demo_defaults = [
        (
            "kafka.consumer.fetch.wait.max.ms",
            MOCK_FETCH_WAIT_MS.to_string(),
        ),
        (
            "kafka.session_timeout_ms",
            MOCK_SESSION_TIMEOUT_MS.to_string(),
        ),
        // The progress line is the demo's output, and the sale sends
        // malformed records on purpose: only errors are logged.
        ("log.level", "error".to_string()),
        ("metrics.watched_skus", watched),
        // The sale's short retry policy, so retries happen within it.
        (
            "payments.retry_initial_ms",
            payments.retry_initial_ms.to_string(),
        ),
        ("payments.retry_max_ms", payments.retry_max_ms.to_string()),
        ("payments.max_attempts", payments.max_attempts.to_string()),
    ];
    for (key, value) in demo_defaults {
        layers.set(key, &value, Source::Default);
    }
    if !user_listen {
        layers.set("metrics.listen", &free_metrics_listen(), Source::Default);
    }
    if let Some(file) = &args.config {
        layers.file(file);
    }
    layers.env(env);
    if let Some(listen) = &args.metrics_listen {
        layers.set("metrics.listen", listen, Source::Flag);
    }
    layers.set("kafka.brokers", brokers, Source::Flag);
    layers.build()
}

/// Whether the environment variable `name` sets config key `key` (as
/// `Layers::env` reads it: sections split by `__`, any case).
fn env_names(name: &str, key: &str) -> bool {
    name.strip_prefix(ENV_PREFIX).is_some_and(|rest| {
        rest.split("__")
            .map(str::to_ascii_lowercase)
            .eq(key.split('.').map(str::to_string))
    })
}

/// The default metrics address, or a free port if it is taken.
fn free_metrics_listen() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    const MOCK: &str = "127.0.0.1:1";
    const PAYMENTS: scenario::Payments = scenario::Payments {
        audit: false,
        retry_initial_ms: 150,
        retry_max_ms: 900,
        max_attempts: 3,
    };

    #[test]
    fn demo_defaults_never_outrank_the_environment_or_flags() {
        let hot = ["T-HOT-0".to_string(), "T-HOT-1".to_string()];
        let args = DemoArgs::default();
        let c = config(&args, MOCK, &hot, &PAYMENTS, Vec::new()).unwrap();
        assert_eq!(c.metrics.watched_skus, hot, "the demo watches its hot SKUs");
        assert_eq!(c.log.level, "error");
        assert_eq!(
            c.kafka.session_timeout_ms,
            u64::from(MOCK_SESSION_TIMEOUT_MS),
            "the mock's rebalance rounds are bounded by a short session"
        );
        assert_eq!(c.kafka.brokers, MOCK);
        assert_eq!(
            (
                c.payments.retry_initial_ms,
                c.payments.retry_max_ms,
                c.payments.max_attempts
            ),
            (150, 900, 3),
            "the scenario's short retry policy"
        );

        let environment: Vec<(String, String)> = [
            ("ORDERFLOW__METRICS__LISTEN", "127.0.0.1:7001"),
            ("ORDERFLOW__METRICS__WATCHED_SKUS", "[\"MINE\"]"),
            ("ORDERFLOW__LOG__LEVEL", "warn"),
            ("ORDERFLOW__KAFKA__BROKERS", "elsewhere:9092"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let c = config(&args, MOCK, &hot, &PAYMENTS, environment.clone()).unwrap();
        assert_eq!(c.metrics.listen, "127.0.0.1:7001", "env over demo default");
        assert_eq!(c.metrics.watched_skus, ["MINE"]);
        assert_eq!(c.log.level, "warn");
        assert_eq!(c.kafka.brokers, MOCK, "the embedded broker is the demo");

        let flagged = DemoArgs {
            metrics_listen: Some("127.0.0.1:7002".into()),
            ..DemoArgs::default()
        };
        let c = config(&flagged, MOCK, &hot, &PAYMENTS, environment).unwrap();
        assert_eq!(c.metrics.listen, "127.0.0.1:7002", "flag over env");
    }

    #[test]
    fn a_config_file_sits_between_the_defaults_and_the_environment() {
        let file = std::env::temp_dir().join(format!("orderflow-demo-{}.toml", std::process::id()));
        let text = "[log]\nlevel = \"info\"\n[metrics]\nlisten = \"127.0.0.1:7003\"\n";
        std::fs::write(&file, text).unwrap();
        let args = DemoArgs {
            config: Some(file.clone()),
            ..DemoArgs::default()
        };
        let c = config(&args, MOCK, &[], &PAYMENTS, Vec::new()).unwrap();
        assert_eq!(c.log.level, "info", "file over demo default");
        assert_eq!(c.metrics.listen, "127.0.0.1:7003");
        let c = config(
            &args,
            MOCK,
            &[],
            &PAYMENTS,
            vec![("ORDERFLOW__LOG__LEVEL".into(), "debug".into())],
        )
        .unwrap();
        assert_eq!(c.log.level, "debug", "env over file");
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn env_names_match_as_the_config_reads_them() {
        assert!(env_names("ORDERFLOW__METRICS__LISTEN", "metrics.listen"));
        assert!(env_names("ORDERFLOW__metrics__Listen", "metrics.listen"));
        assert!(!env_names("ORDERFLOW__METRICS__LISTENER", "metrics.listen"));
        assert!(!env_names("METRICS__LISTEN", "metrics.listen"));
    }
}
