//! The collector: reads `order-status`, `fulfillments` and `orders-dlq`
//! while the sale runs, keeps what belongs to this run for the audit, and
//! measures placed → status latency as each first decision arrives.
//!
//! It reads every partition with no consumer group and commits nothing,
//! starting at the high watermarks of the moment it starts: everything of
//! this run comes after, and nothing of earlier runs is read.

use super::audit::{
    address_fingerprint, bytes_fingerprint, DeadLetterSeen, FulfillmentSeen, Seen, StatusSeen,
};
use super::generator::Generator;
use super::sender::Ledger;
use super::LoadtestError;
use crate::config::Config;
use crate::kafka::METADATA_TIMEOUT;
use crate::order::events::{FulfillmentEvent, Status, StatusEvent};
use crate::shutdown::Shutdown;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the broker may hold a fetch with no data: bounds how much the
/// reader's own waiting adds to the latency it measures.
const FETCH_WAIT_MAX_MS: &str = "10";
/// Largest latency recorded, microseconds (an hour).
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// Placed → status latency, microseconds: since the start, and since the
/// last progress line.
#[derive(Debug)]
pub struct Latency {
    pub total: Histogram<u64>,
    pub interval: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("valid bounds")
}

/// What the collector shares with the rest of the run.
#[derive(Debug)]
pub struct Collected {
    pub seen: Mutex<Seen>,
    pub latency: Mutex<Latency>,
    /// Statuses of probe orders, by order ID.
    pub probes: Mutex<HashMap<String, StatusEvent>>,
    /// Orders of this run with a first decision.
    pub decided: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Output records of this run that are not contract JSON.
    pub unreadable: AtomicU64,
    /// When the last first decision arrived, microseconds after the epoch.
    pub last_decision_micros: AtomicU64,
}

pub struct Collector {
    pub collected: Arc<Collected>,
    stop: Shutdown,
    handle: Option<JoinHandle<()>>,
}

struct Reader {
    config: Config,
    tag: String,
    probe_prefix: String,
    epoch: Instant,
    ledger: Arc<Mutex<Ledger>>,
    collected: Arc<Collected>,
    first_decisions: HashSet<u64>,
}

impl Collector {
    /// Positions a reader at the end of the three output topics and starts
    /// reading on a thread. Latency is measured from `epoch`, the instant
    /// the ledger's `placed_micros` count from.
    pub fn start(
        config: &Config,
        tag: &str,
        probe_prefix: &str,
        epoch: Instant,
        ledger: Arc<Mutex<Ledger>>,
    ) -> Result<Collector, LoadtestError> {
        let mut client =
            crate::kafka::consumer_config(&config.kafka, &format!("orderflow-loadtest-{tag}"));
        client
            .set("enable.auto.commit", "false")
            .set("statistics.interval.ms", "0")
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
        let consumer: BaseConsumer = client
            .create()
            .map_err(|source| LoadtestError::kafka("creating the output reader", source))?;
        let mut tpl = TopicPartitionList::new();
        let topics = [
            &config.topics.status,
            &config.topics.fulfillments,
            &config.topics.dlq,
        ];
        let metadata = consumer
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|source| LoadtestError::kafka("reading output topic metadata", source))?;
        for name in topics {
            let topic = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name.as_str())
                .ok_or_else(|| LoadtestError::TopicMissing {
                    topic: name.clone(),
                    brokers: config.kafka.brokers.clone(),
                })?;
            for partition in topic.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(name, partition.id(), METADATA_TIMEOUT)
                    .map_err(|source| LoadtestError::kafka("reading output watermarks", source))?;
                tpl.add_partition_offset(name, partition.id(), Offset::Offset(high))
                    .map_err(|source| {
                        LoadtestError::kafka("assigning output partitions", source)
                    })?;
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|source| LoadtestError::kafka("assigning output partitions", source))?;
        let collected = Arc::new(Collected {
            seen: Mutex::new(Seen::default()),
            latency: Mutex::new(Latency {
                total: histogram(),
                interval: histogram(),
            }),
            probes: Mutex::new(HashMap::new()),
            decided: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            last_decision_micros: AtomicU64::new(0),
        });
        let stop = Shutdown::new();
        let mut reader = Reader {
            config: config.clone(),
            tag: format!("{tag}-"),
            probe_prefix: probe_prefix.to_string(),
            epoch,
            ledger,
            collected: collected.clone(),
            first_decisions: HashSet::new(),
        };
        let for_thread = stop.clone();
        let handle = std::thread::Builder::new()
            .name("loadtest-collector".into())
            .spawn(move || {
                while !for_thread.is_triggered() {
                    match consumer.poll(POLL_TIMEOUT) {
                        Some(Ok(message)) => reader.read(&message),
                        Some(Err(error)) => tracing::debug!(%error, "output reader"),
                        None => {}
                    }
                }
            })
            .expect("spawning a thread");
        Ok(Collector {
            collected,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops reading; what was read stays in `collected`.
    pub fn stop(mut self) -> Arc<Collected> {
        self.stop.trigger();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.collected.clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

impl Reader {
    fn read(&mut self, message: &BorrowedMessage<'_>) {
        let topic = message.topic();
        let ours = message
            .key()
            .is_some_and(|k| k.starts_with(self.tag.as_bytes()));
        // Probe orders are the probe's business; only their status is read.
        let probe = message
            .key()
            .is_some_and(|k| k.starts_with(self.probe_prefix.as_bytes()));
        if !ours || (probe && topic != self.config.topics.status) {
            return;
        }
        let payload = message.payload().unwrap_or_default();
        if topic == self.config.topics.status {
            match serde_json::from_slice::<StatusEvent>(payload) {
                Ok(status) => self.status(status),
                Err(_) => {
                    self.collected.unreadable.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if topic == self.config.topics.fulfillments {
            match serde_json::from_slice::<FulfillmentEvent>(payload) {
                Ok(event) => self.fulfillment(event),
                Err(_) => {
                    self.collected.unreadable.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if topic == self.config.topics.dlq {
            let error = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == "error")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            self.collected
                .seen
                .lock()
                .dead_letters
                .push(DeadLetterSeen {
                    key: message.key().unwrap_or_default().to_vec(),
                    error,
                    payload_fingerprint: bytes_fingerprint(payload),
                });
            self.collected.dead_letters.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn status(&mut self, status: StatusEvent) {
        if status.order_id.starts_with(&self.probe_prefix) {
            self.collected
                .probes
                .lock()
                .insert(status.order_id.clone(), status);
            return;
        }
        let now_micros = self.epoch.elapsed().as_micros() as u64;
        let decision = matches!(status.status, Status::Accepted | Status::Rejected);
        if decision {
            let tag = self.tag.trim_end_matches('-');
            if let Some(seq) = Generator::order_seq(tag, &status.order_id) {
                if self.first_decisions.insert(seq) {
                    let placed = self.ledger.lock().placed_micros.get(seq as usize).copied();
                    if let Some(placed) = placed {
                        let micros = now_micros
                            .saturating_sub(placed)
                            .clamp(1, MAX_LATENCY_MICROS);
                        let mut latency = self.collected.latency.lock();
                        latency.total.saturating_record(micros);
                        latency.interval.saturating_record(micros);
                    }
                    self.collected.decided.fetch_add(1, Ordering::Relaxed);
                    self.collected
                        .last_decision_micros
                        .store(now_micros, Ordering::Relaxed);
                }
            }
        }
        self.collected.seen.lock().statuses.push(StatusSeen {
            order_id: status.order_id,
            status: status.status,
            reason: status.reason,
        });
    }

    fn fulfillment(&mut self, event: FulfillmentEvent) {
        let seen = match event {
            FulfillmentEvent::FulfillmentRequested {
                fulfillment_id,
                order_id,
                address,
                ..
            } => FulfillmentSeen::Requested {
                address_key: address_key(&order_id, &fulfillment_id),
                address_fingerprint: address_fingerprint(&address),
                order_id,
            },
            FulfillmentEvent::FulfillmentCancelled {
                fulfillment_id,
                order_id,
                ..
            } => FulfillmentSeen::Cancelled {
                address_key: address_key(&order_id, &fulfillment_id),
                order_id,
            },
        };
        self.collected.seen.lock().fulfillments.push(seen);
    }
}

/// `o-1/home` → `home`; anything else is kept whole so the audit flags it.
fn address_key(order_id: &str, fulfillment_id: &str) -> String {
    fulfillment_id
        .strip_prefix(order_id)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(fulfillment_id)
        .to_string()
}
