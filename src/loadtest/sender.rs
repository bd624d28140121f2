//! The sender: produces the generator's schedule, open loop.
//!
//! Each record is due at a fixed time from the start of the sale. The
//! sender sleeps until a record is due and never waits for the broker: a
//! record is enqueued in librdkafka and its delivery is reported on
//! librdkafka's thread. When the sender falls behind (the broker pushes
//! back through a full queue, or the machine is busy), the schedule does not
//! move: late records go out at once, and how late they were is measured.
//! A closed loop that waited for each ack would instead slow down with the
//! system and hide exactly the overload a flash sale causes.

use super::audit::{SentMalformed, SentOrder};
use super::generator::{Generator, Note, Topic};
use super::LoadtestError;
use crate::config::Config;
use crate::shutdown::Shutdown;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records librdkafka may hold before `send` reports a full queue: enough
/// for several seconds of a burst, so a slow broker shows up as latency.
const QUEUE_MAX_MESSAGES: &str = "1000000";
/// Wait when librdkafka's queue is full before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);
/// Do not sleep for less: a sleep that short overshoots more than it waits.
const MIN_SLEEP: Duration = Duration::from_micros(200);
/// Largest sender lag recorded, microseconds (an hour).
const MAX_LAG_MICROS: u64 = 3_600_000_000;

/// What the delivery opaque of a record says it is: `index << 2 | kind`.
mod token {
    pub const UNTRACKED: usize = 0;
    pub const ORDER: usize = 1;
    pub const MALFORMED: usize = 2;
    pub const RESTOCK: usize = 3;

    pub fn pack(kind: usize, index: usize) -> usize {
        index << 2 | kind
    }

    pub fn unpack(token: usize) -> (usize, usize) {
        (token & 3, token >> 2)
    }
}

/// Records whose delivery failed after librdkafka's own retries.
#[derive(Debug, Default)]
pub struct Failures {
    pub orders: Vec<usize>,
    pub malformed: Vec<usize>,
    pub restocks: Vec<usize>,
    pub other: u64,
}

pub struct DeliveryContext {
    failures: Arc<Mutex<Failures>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if result.is_err() {
            self.failures.lock().record(opaque);
        }
    }
}

impl Failures {
    fn record(&mut self, opaque: usize) {
        match token::unpack(opaque) {
            (token::ORDER, index) => self.orders.push(index),
            (token::MALFORMED, index) => self.malformed.push(index),
            (token::RESTOCK, index) => self.restocks.push(index),
            _ => self.other += 1,
        }
    }

    pub fn total(&self) -> u64 {
        (self.orders.len() + self.malformed.len() + self.restocks.len()) as u64 + self.other
    }
}

pub type LoadProducer = ThreadedProducer<DeliveryContext>;

/// The producer: the processor's producer settings (brokers, security,
/// tuning) plus idempotence, so retries never reorder an order's records,
/// and librdkafka's partitioner that places keys as
/// `kafka.orders_partitioner` says upstream producers do, so the
/// processor's partition check passes every record of the sale.
pub fn producer(config: &Config) -> Result<(LoadProducer, Arc<Mutex<Failures>>), LoadtestError> {
    let failures = Arc::new(Mutex::new(Failures::default()));
    let mut client = crate::kafka::producer_config(&config.kafka);
    client
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", QUEUE_MAX_MESSAGES);
    if let Some(partitioner) = config.kafka.orders_partitioner.librdkafka_property() {
        client.set("partitioner", partitioner);
    }
    let producer = client
        .create_with_context(DeliveryContext {
            failures: failures.clone(),
        })
        .map_err(|source| LoadtestError::kafka("creating the producer", source))?;
    Ok((producer, failures))
}

/// Enqueues one record, waiting only while librdkafka's queue is full.
pub fn send(
    producer: &LoadProducer,
    topic: &str,
    partition: Option<i32>,
    key: &[u8],
    value: &[u8],
    opaque: usize,
) -> Result<(), KafkaError> {
    let mut record = BaseRecord::with_opaque_to(topic, opaque)
        .key(key)
        .payload(value);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(QUEUE_FULL_WAIT);
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Produces `records` and waits until the broker has acknowledged all of
/// them: the inventory must be on the broker before any order names it.
pub fn send_and_flush(
    producer: &LoadProducer,
    failures: &Mutex<Failures>,
    topic: &str,
    records: &[(Vec<u8>, Vec<u8>, Option<i32>)],
    timeout: Duration,
) -> Result<(), LoadtestError> {
    let before = failures.lock().other;
    for (key, value, partition) in records {
        send(producer, topic, *partition, key, value, token::UNTRACKED)
            .map_err(|source| LoadtestError::kafka("producing inventory", source))?;
    }
    producer
        .flush(timeout)
        .map_err(|source| LoadtestError::kafka("waiting for inventory acknowledgements", source))?;
    let failed = failures.lock().other - before;
    if failed > 0 {
        return Err(LoadtestError::Announce { failed });
    }
    Ok(())
}

/// What was sent, appended by the sender, read by the collector (send
/// times, for latency) and by the audit at the end.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Readable orders by sequence number.
    pub orders: Vec<SentOrder>,
    /// When each order was due, microseconds after the run's epoch (the
    /// instant the collector measures from); the `placed_at` written into
    /// the order is the same instant.
    pub placed_micros: Vec<u64>,
    pub malformed: Vec<SentMalformed>,
    pub restocks: Vec<(String, i64)>,
    pub duplicates: u64,
    pub cancellations: u64,
}

/// Counters the progress line reads while the sale runs.
#[derive(Debug, Default)]
pub struct SendStats {
    pub records: AtomicU64,
    pub orders: AtomicU64,
    /// How far behind schedule the last record went out, microseconds.
    pub lag_micros: AtomicU64,
    /// Seconds into the schedule of the last record sent, in milliseconds.
    pub schedule_millis: AtomicU64,
}

/// The sender's own account of the sale.
#[derive(Debug)]
pub struct SendReport {
    /// From the start to the last record enqueued.
    pub elapsed: Duration,
    /// From the start to the last new order enqueued: the span the order
    /// rate is measured over (cancellations and duplicates trail it).
    pub orders_elapsed: Duration,
    /// How far behind schedule records went out, microseconds.
    pub lag: Histogram<u64>,
    pub send_errors: u64,
    /// Whether `stop` cut the sale short.
    pub stopped: bool,
}

/// Sends the whole schedule of `generator`, due from `start`; `epoch` is
/// the instant latency is measured from.
#[allow(clippy::too_many_arguments)]
pub fn run_schedule(
    producer: &LoadProducer,
    config: &Config,
    generator: Generator,
    epoch: Instant,
    start: Instant,
    ledger: &Mutex<Ledger>,
    failures: &Mutex<Failures>,
    stats: &SendStats,
    stop: &Shutdown,
) -> SendReport {
    let mut lag = Histogram::<u64>::new_with_bounds(1, MAX_LAG_MICROS, 3).expect("valid bounds");
    let mut send_errors = 0;
    let mut stopped = false;
    let mut orders_elapsed = Duration::ZERO;
    for planned in generator {
        if stop.is_triggered() {
            stopped = true;
            break;
        }
        let due = start + planned.at;
        let now = Instant::now();
        if due > now + MIN_SLEEP {
            std::thread::sleep(due - now);
        }
        let behind = Instant::now().saturating_duration_since(due);
        let behind_micros = behind.as_micros().min(u128::from(MAX_LAG_MICROS)) as u64;
        lag.saturating_record(behind_micros.max(1));
        stats.lag_micros.store(behind_micros, Ordering::Relaxed);
        stats
            .schedule_millis
            .store(planned.at.as_millis() as u64, Ordering::Relaxed);

        // The ledger learns of a record before it is sent, so its status
        // can never arrive before the collector can place it.
        let opaque = {
            let mut ledger = ledger.lock();
            match planned.note {
                Note::Placed { seq, order } => {
                    debug_assert_eq!(
                        seq as usize,
                        ledger.orders.len(),
                        "orders are numbered in send order"
                    );
                    ledger.orders.push(order);
                    ledger
                        .placed_micros
                        .push(due.saturating_duration_since(epoch).as_micros() as u64);
                    token::pack(token::ORDER, seq as usize)
                }
                Note::Duplicate { .. } => {
                    ledger.duplicates += 1;
                    token::UNTRACKED
                }
                Note::Cancel { .. } => {
                    ledger.cancellations += 1;
                    token::UNTRACKED
                }
                Note::Malformed(malformed) => {
                    ledger.malformed.push(malformed);
                    token::pack(token::MALFORMED, ledger.malformed.len() - 1)
                }
                Note::Restock { sku, delta } => {
                    ledger.restocks.push((sku, delta));
                    token::pack(token::RESTOCK, ledger.restocks.len() - 1)
                }
            }
        };
        let topic = match planned.topic {
            Topic::Orders => &config.topics.orders,
            Topic::Inventory => &config.topics.inventory,
        };
        match send(producer, topic, None, &planned.key, &planned.value, opaque) {
            Ok(()) => {
                stats.records.fetch_add(1, Ordering::Relaxed);
                if token::unpack(opaque).0 == token::ORDER {
                    stats.orders.fetch_add(1, Ordering::Relaxed);
                    orders_elapsed = start.elapsed();
                }
            }
            Err(error) => {
                send_errors += 1;
                failures.lock().record(opaque);
                tracing::warn!(%error, "a record could not be enqueued");
            }
        }
    }
    SendReport {
        elapsed: start.elapsed(),
        orders_elapsed,
        lag,
        send_errors,
        stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::token;

    #[test]
    fn tokens_round_trip() {
        for kind in [token::ORDER, token::MALFORMED, token::RESTOCK] {
            assert_eq!(token::unpack(token::pack(kind, 12_345)), (kind, 12_345));
        }
        assert_eq!(token::unpack(token::UNTRACKED).0, token::UNTRACKED);
    }
}
