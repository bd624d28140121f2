//! The flags of `orderflow loadtest`, and the command itself: load config
//! and scenario, run, print the summary. `main.rs` only dispatches here.

use super::report::Thresholds;
use super::scenario::{Overrides, Scenario};
use super::{Event, LoadtestError, Options};
use crate::config::Config;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct LoadtestArgs {
    /// The processor's config file (brokers, topics, limits), layered over
    /// the built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override any config key: --set kafka.properties.security.protocol=SSL (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Bootstrap brokers, host:port[,host:port].
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// A scenario TOML file (see loadtest/*.toml), layered over the
    /// built-in flash-sale scenario.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Base rate, orders per second (the burst runs at 10x by default).
    #[arg(long, value_name = "ORDERS_PER_S")]
    pub rate: Option<f64>,
    /// Length of the sale; T0, the burst and the tail scale with it.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Number of ordinary SKUs.
    #[arg(long, value_name = "N")]
    pub skus: Option<usize>,
    /// Seed of the generator: the same seed gives the same sale.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// How long to wait after the last order for outstanding outcomes.
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<f64>,
    /// Fail unless the sale reaches this many orders per second.
    #[arg(long, value_name = "ORDERS_PER_S")]
    pub min_rate: Option<f64>,
    /// Fail if the p99 of placed → status latency exceeds this.
    #[arg(long, value_name = "MS")]
    pub max_p99_ms: Option<f64>,
    /// Prefix of the run's order IDs and SKUs (default: from the clock).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Print the final summary as one JSON object on standard output.
    #[arg(long)]
    pub json: bool,
}

impl LoadtestArgs {
    pub fn config(&self) -> Result<Config, LoadtestError> {
        let mut flags = Vec::new();
        if let Some(brokers) = &self.brokers {
            flags.push(format!("kafka.brokers={brokers}"));
        }
        flags.extend(self.set.iter().cloned());
        Ok(Config::load(self.config.as_deref(), &flags)?)
    }

    pub fn scenario(&self) -> Result<Scenario, LoadtestError> {
        let overrides = Overrides {
            rate: self.rate,
            duration_secs: self.duration,
            skus: self.skus,
            seed: self.seed,
            drain_timeout_secs: self.drain_timeout,
        };
        Ok(Scenario::load(self.scenario.as_deref(), &overrides)?)
    }

    pub fn options(&self) -> Options {
        Options {
            thresholds: Thresholds {
                min_rate: self.min_rate,
                max_p99_ms: self.max_p99_ms,
            },
            run_id: self.run_id.clone(),
            ..Options::default()
        }
    }
}

/// Prints notices and progress lines on standard error.
pub fn print_event(event: Event<'_>) {
    match event {
        Event::Notice(text) => eprintln!("loadtest: {text}"),
        Event::Progress(progress) => eprintln!("{progress}"),
    }
}

/// `orderflow loadtest`: returns whether the run passed.
pub fn run(args: &LoadtestArgs) -> Result<bool, LoadtestError> {
    let config = args.config()?;
    let scenario = args.scenario()?;
    crate::app::init_logging(&config.log);
    let summary = super::run(&config, &scenario, &args.options(), &mut print_event)?;
    if args.json {
        println!("{}", summary.to_json());
    } else {
        println!("{summary}");
    }
    Ok(summary.passed)
}
