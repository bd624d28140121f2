//! `orderflow loadtest`: a flash sale against real brokers, audited.
//!
//! The stages, in the order a run goes through them:
//!
//! - [`scenario`]: the sale's shape, catalog and mix, from TOML and flags.
//! - [`topics`]: creates missing contract topics with explicit partitions.
//! - [`catalog`]: the run's SKUs, stock and prices. Pure.
//! - [`shape`]: the target rate over time (warm-up, burst, tail). Pure.
//! - [`people`]: names and addresses in many scripts.
//! - [`generator`]: a reproducible schedule of records, each with what the
//!   audit should expect of it. Pure.
//! - [`probe`]: waits until the processor knows the announced catalog.
//! - [`sender`]: produces the schedule open loop and keeps the ledger.
//! - [`collector`]: reads the output topics back, measures latency.
//! - [`audit`]: checks what came back against what was sent. Pure.
//! - [`report`]: the progress line and the final summary.
//! - [`cli`]: the command's flags.

pub mod audit;
pub mod catalog;
pub mod cli;
pub mod collector;
pub mod generator;
pub mod people;
pub mod probe;
pub mod report;
pub mod scenario;
pub mod sender;
pub mod shape;
pub mod topics;

use crate::config::{Config, ConfigErrors};
use crate::shutdown::Shutdown;
use audit::Sent;
use catalog::Catalog;
use collector::{Collected, Collector};
use generator::Generator;
use parking_lot::Mutex;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use report::{LagMs, LatencyMs, Progress, Summary, Thresholds};
use scenario::{Scenario, ScenarioError};
use sender::{Failures, Ledger, SendStats};
use shape::Shape;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the progress line is printed.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// How often the main thread looks at the sender and the collector.
const TICK: Duration = Duration::from_millis(50);
/// How often the full drain condition is evaluated once counts add up
/// (it walks every order, so not on every tick).
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("{what}: {source}")]
    Kafka {
        what: &'static str,
        source: KafkaError,
    },
    #[error("topic {topic:?} does not exist on {brokers}; create it, or set [topics] create = true in the scenario")]
    TopicMissing { topic: String, brokers: String },
    #[error("creating topic {topic:?}: {message}")]
    TopicCreation { topic: String, message: String },
    #[error("{failed} inventory record(s) were not acknowledged by the broker")]
    Announce { failed: u64 },
    #[error(
        "no processor answered a probe order within {waited_secs} s: start `orderflow run --brokers {brokers}` \
         (before or after the loadtest), or raise load.probe_timeout_secs"
    )]
    NoProcessor { waited_secs: f64, brokers: String },
    #[error("the processor rejected a probe order ({reason}: {detail}); do its [limits] fit the scenario?")]
    ProbeRejected { reason: String, detail: String },
    #[error(
        "the processor dead-lettered a probe order ({error}: {detail}); for wrong_partition, \
         give the loadtest the processor's kafka.orders_partitioner"
    )]
    ProbeDeadLettered { error: String, detail: String },
}

impl LoadtestError {
    pub fn kafka(what: &'static str, source: KafkaError) -> Self {
        LoadtestError::Kafka { what, source }
    }
}

/// What a run reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// A sentence for the user (topics created, waiting for the processor).
    Notice(&'a str),
    Progress(&'a Progress),
}

/// Options that are not part of the scenario.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub thresholds: Thresholds,
    /// Prefix of every order ID, SKU and key of the run; by default derived
    /// from the clock, so runs never collide on a long-lived cluster.
    pub run_id: Option<String>,
    /// Triggering it ends the sale early (the audit still runs).
    pub stop: Shutdown,
}

/// A run ID unique enough for one cluster: the clock in milliseconds.
pub fn default_run_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("lt{:x}", millis & 0xff_ffff_ffff)
}

/// Runs one sale against the brokers of `config` and audits it.
pub fn run(
    config: &Config,
    scenario: &Scenario,
    options: &Options,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<Summary, LoadtestError> {
    let limit_errors =
        scenario.check_limits(&config.limits, &format!("scenario {:?}", scenario.name));
    if !limit_errors.is_empty() {
        return Err(ScenarioError::Invalid(limit_errors).into());
    }
    let tag = options.run_id.clone().unwrap_or_else(default_run_id);
    let topics_created = topics::ensure(config, &scenario.topics)?;
    for topic in &topics_created {
        observe(Event::Notice(&format!("created topic {topic}")));
    }
    let (producer, failures) = sender::producer(config)?;
    let epoch = Instant::now();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let collector = Collector::start(config, &tag, &probe::prefix(&tag), epoch, ledger.clone())?;

    let catalog = Catalog::build(scenario, &tag);
    let stock_sets: Vec<_> = catalog
        .stock_set_records()
        .into_iter()
        .map(|(key, value)| (key, value, None))
        .collect();
    observe(Event::Notice(&format!(
        "run {tag}: announcing {} SKUs ({} hot, {} sold out) on {}",
        stock_sets.len(),
        catalog.hot.len(),
        catalog.sold_out.len(),
        config.topics.inventory
    )));
    sender::send_and_flush(
        &producer,
        &failures,
        &config.topics.inventory,
        &stock_sets,
        probe::ANNOUNCE_TIMEOUT,
    )?;
    let probes = probe::wait_until_ready(
        config,
        &producer,
        &failures,
        &collector.collected,
        &tag,
        Duration::from_secs_f64(scenario.load.probe_timeout_secs),
        observe,
    )?;
    observe(Event::Notice(&format!(
        "processor ready (probe {probes}); sale of {:.0} s: {:.0} orders/s, burst of {:.0}/s at T0 = {:.1} s",
        scenario.load.duration_secs,
        scenario.load.rate,
        scenario.peak_rate(),
        scenario.load.burst_at_secs
    )));

    // The sale.
    let origin = time::OffsetDateTime::now_utc();
    let start = Instant::now();
    let generator = Generator::new(scenario, &config.limits, &tag, origin);
    let shape = *generator.shape();
    let stats = SendStats::default();
    let mut ticker = Ticker::new(start, shape);
    let send_report = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            sender::run_schedule(
                &producer,
                config,
                generator,
                epoch,
                start,
                &ledger,
                &failures,
                &stats,
                &options.stop,
            )
        });
        while !sender.is_finished() {
            std::thread::sleep(TICK);
            ticker.tick(&stats, &collector.collected, observe);
        }
        sender.join().expect("the sender thread does not panic")
    });

    // Everything is enqueued; wait for the broker's acks, then for outcomes.
    let drain_timeout = Duration::from_secs_f64(scenario.load.drain_timeout_secs);
    // Audited payments settle after their retries: a `down` authorization
    // reaches attention only after every backoff.
    let retries = if scenario.payments.audit {
        scenario.payments.retry_span()
    } else {
        Duration::ZERO
    };
    let drain_deadline = Instant::now() + drain_timeout + retries;
    if let Err(error) = producer.flush(drain_timeout) {
        observe(Event::Notice(&format!(
            "not every record was acknowledged: {error}"
        )));
    }
    let mut sent = sent_of(&ledger.lock(), &failures.lock(), &catalog);
    sent.payments_audited = scenario.payments.audit;
    let drained = drain(
        &sent,
        &collector.collected,
        drain_deadline,
        &mut ticker,
        &stats,
        observe,
    );
    if !drained {
        observe(Event::Notice(&format!(
            "gave up waiting for outstanding outcomes after --drain-timeout {} s{}",
            scenario.load.drain_timeout_secs,
            if retries.is_zero() {
                String::new()
            } else {
                format!(" plus {:.1} s of payment retries", retries.as_secs_f64())
            }
        )));
    }
    let collected = collector.stop();
    let seen = std::mem::take(&mut *collected.seen.lock());
    let audit = audit::audit(&sent, &seen);

    let ledger = ledger.lock();
    let failures = failures.lock();
    let elapsed = send_report.elapsed.as_secs_f64();
    let orders_elapsed = send_report.orders_elapsed.as_secs_f64().max(f64::EPSILON);
    let orders_sent = sent.orders.len() as u64;
    let decided = collected.decided.load(Ordering::Relaxed);
    let sale_start_micros = start.duration_since(epoch).as_micros() as u64;
    let decision_span = collected
        .last_decision_micros
        .load(Ordering::Relaxed)
        .saturating_sub(sale_start_micros) as f64
        / 1e6;
    let mut rejections_intended: BTreeMap<String, u64> = BTreeMap::new();
    for order in &sent.orders {
        if let audit::Intent::Reject(reason) = order.intent {
            *rejections_intended
                .entry(reason.as_str().to_string())
                .or_default() += 1;
        }
    }
    let lag = &send_report.lag;
    let mut summary = Summary {
        scenario: scenario.name.clone(),
        run_id: tag,
        seed: scenario.load.seed,
        brokers: config.kafka.brokers.clone(),
        topics_created,
        duration_secs: round3(elapsed),
        orders_sent,
        orders_per_second: round3(orders_sent as f64 / orders_elapsed),
        peak_rate_target: scenario.peak_rate(),
        records_sent: stats.records.load(Ordering::Relaxed),
        accepted: 0,
        rejected: BTreeMap::new(),
        rejections_intended,
        cancelled: 0,
        cancellations_sent: ledger.cancellations,
        duplicates: ledger.duplicates,
        malformed_sent: sent.malformed.len() as u64,
        dlq: 0,
        fulfillments_requested: 0,
        fulfillments_cancelled: 0,
        decided_per_second: if decision_span > 0.0 {
            round3(decided as f64 / decision_span)
        } else {
            0.0
        },
        latency_ms: LatencyMs::of(&collected.latency.lock().total),
        sender_lag_ms: LagMs {
            p99: lag.value_at_quantile(0.99) as f64 / 1000.0,
            max: lag.max() as f64 / 1000.0,
        },
        oversold_units: 0,
        missing_status: 0,
        duplicate_statuses: 0,
        conflicting_statuses: 0,
        unexpected_reasons: 0,
        unknown_orders: 0,
        fulfillment_errors: 0,
        cancellation_errors: 0,
        dlq_missing: 0,
        dlq_wrong: 0,
        payments: report::Payments {
            audited: scenario.payments.audit,
            ..report::Payments::default()
        },
        payments_unsettled: 0,
        payments_wrong_end: 0,
        conflicting_results: 0,
        delivery_errors: failures.total(),
        unreadable_outputs: collected.unreadable.load(Ordering::Relaxed),
        drained,
        thresholds: options.thresholds,
        violations: Vec::new(),
        examples: Vec::new(),
        passed: false,
    };
    summary.judge(&audit);
    Ok(summary)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The audit's view of the ledger: only what the broker acknowledged, and
/// the stock each SKU had in all (`stock_set` plus delivered restocks).
fn sent_of(ledger: &Ledger, failures: &Failures, catalog: &Catalog) -> Sent {
    let failed_orders: HashSet<usize> = failures.orders.iter().copied().collect();
    let failed_malformed: HashSet<usize> = failures.malformed.iter().copied().collect();
    let failed_restocks: HashSet<usize> = failures.restocks.iter().copied().collect();
    let mut stock: std::collections::HashMap<String, i64> = catalog
        .all()
        .map(|sku| (sku.sku.clone(), sku.stock))
        .collect();
    for (i, (sku, delta)) in ledger.restocks.iter().enumerate() {
        if !failed_restocks.contains(&i) {
            *stock.entry(sku.clone()).or_default() += delta;
        }
    }
    Sent {
        orders: ledger
            .orders
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed_orders.contains(i))
            .map(|(_, order)| order.clone())
            .collect(),
        malformed: ledger
            .malformed
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed_malformed.contains(i))
            .map(|(_, m)| m.clone())
            .collect(),
        stock,
        payments_audited: false,
    }
}

/// Waits until every outcome `sent` implies has arrived, or the deadline.
/// Cheap counters gate the full check, which walks every order.
fn drain(
    sent: &Sent,
    collected: &Collected,
    deadline: Instant,
    ticker: &mut Ticker,
    stats: &SendStats,
    observe: &mut dyn FnMut(Event<'_>),
) -> bool {
    let orders = sent.orders.len() as u64;
    let malformed = sent.malformed.len() as u64;
    let mut last_check = Instant::now() - DRAIN_CHECK_INTERVAL;
    loop {
        let counts_complete = collected.decided.load(Ordering::Relaxed) >= orders
            && collected.dead_letters.load(Ordering::Relaxed) >= malformed;
        if counts_complete && last_check.elapsed() >= DRAIN_CHECK_INTERVAL {
            last_check = Instant::now();
            if audit::outstanding(sent, &collected.seen.lock()) == 0 {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(TICK);
        ticker.tick(stats, collected, observe);
    }
}

/// Emits a progress line every [`PROGRESS_INTERVAL`].
struct Ticker {
    start: Instant,
    shape: Shape,
    last: Instant,
    last_orders: u64,
    last_decided: u64,
}

impl Ticker {
    fn new(start: Instant, shape: Shape) -> Ticker {
        Ticker {
            start,
            shape,
            last: start,
            last_orders: 0,
            last_decided: 0,
        }
    }

    fn tick(
        &mut self,
        stats: &SendStats,
        collected: &Collected,
        observe: &mut dyn FnMut(Event<'_>),
    ) {
        let interval = self.last.elapsed();
        if interval < PROGRESS_INTERVAL {
            return;
        }
        let orders = stats.orders.load(Ordering::Relaxed);
        let decided = collected.decided.load(Ordering::Relaxed);
        let p99_ms = {
            let mut latency = collected.latency.lock();
            let p99 = if latency.interval.is_empty() {
                0.0
            } else {
                latency.interval.value_at_quantile(0.99) as f64 / 1000.0
            };
            latency.interval.reset();
            p99
        };
        let elapsed = self.start.elapsed().as_secs_f64();
        let secs = interval.as_secs_f64();
        let progress = Progress {
            elapsed_secs: elapsed,
            phase: self.shape.phase_at(elapsed),
            sent_per_second: (orders - self.last_orders) as f64 / secs,
            decided_per_second: decided.saturating_sub(self.last_decided) as f64 / secs,
            behind_ms: stats.lag_micros.load(Ordering::Relaxed) as f64 / 1000.0,
            awaiting: orders.saturating_sub(decided),
            p99_ms,
            orders_sent: orders,
            decided,
        };
        observe(Event::Progress(&progress));
        self.last = Instant::now();
        self.last_orders = orders;
        self.last_decided = decided;
    }
}
