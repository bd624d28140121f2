//! The `orderflow` command line: parses flags, loads config, calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow::app::{self, Readiness, Shutdown};
use orderflow::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "High-throughput order processor for flash sales, on Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Config options every command that reads config shares.
#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// A TOML file layered over the built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bootstrap brokers, host:port[,host:port]; same as --set kafka.brokers=...
    #[arg(long, value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// Override any config key: --set engine.shards=4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, orderflow::config::ConfigErrors> {
        let mut flags = Vec::new();
        if let Some(brokers) = &self.brokers {
            flags.push(format!("kafka.brokers={brokers}"));
        }
        flags.extend(self.set.iter().cloned());
        Config::load(self.config.as_deref(), &flags)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor against the brokers in the config.
    Run(ConfigArgs),
    /// Read and validate the config; print every error with where it came from.
    CheckConfig(ConfigArgs),
    /// The flash-sale generator against real brokers; audits the outcome.
    Loadtest(orderflow::loadtest::cli::LoadtestArgs),
    /// A flash sale on this machine: embedded broker, processor, generator, audit.
    Demo(orderflow::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => match args.load() {
            Ok(config) => {
                print!("{}", config.to_toml());
                eprintln!("config ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for error in &errors.0 {
                    eprintln!("error: {error}");
                }
                eprintln!("{} error(s) in config", errors.0.len());
                ExitCode::from(2)
            }
        },
        Command::Run(args) => {
            let config = match args.load() {
                Ok(config) => config,
                Err(errors) => {
                    for error in &errors.0 {
                        eprintln!("error: {error}");
                    }
                    return ExitCode::from(2);
                }
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Loadtest(args) => audited(orderflow::loadtest::cli::run(&args)),
        Command::Demo(args) => audited(orderflow::demo::cli(&args)),
    }
}

/// Exit status of an audited run: 0 passed, 1 audit or threshold failed,
/// 2 could not run.
fn audited<E: std::fmt::Display>(result: Result<bool, E>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    app::init_logging(&config.log);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let shutdown = Shutdown::new();
    runtime.spawn(app::shutdown_on_signal(shutdown.clone()));
    let readiness = Readiness::new(&shutdown);
    let _metrics = runtime.block_on(async { app::serve_metrics(&config.metrics, &readiness) })?;
    let result = app::run_with_readiness(config, shutdown, &readiness);
    // Probes and scrapes already accepted get their (503) answer, not a reset.
    runtime.block_on(orderflow::telemetry::close_http());
    result
}
