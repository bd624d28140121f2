//! The collector: reads `order-status`, `fulfillments` and `orders-dlq`,
//! and of the payments `order-events`, `payment-requests` and the
//! `payment_result` records on `orders`, while the sale runs; keeps what
//! belongs to this run for the audit, and measures placed → status latency
//! as each first decision arrives.
//!
//! It reads every partition with no consumer group and commits nothing,
//! starting at the high watermarks of the moment it starts: everything of
//! this run comes after, and nothing of earlier runs is read.

use super::audit::{
    address_fingerprint, bytes_fingerprint, CommandSeen, DeadLetterSeen, EventSeen,
    FulfillmentSeen, ResultSeen, Seen, StatusSeen,
};
use super::generator::Generator;
use super::sender::Ledger;
use super::LoadtestError;
use crate::config::Config;
use crate::kafka::METADATA_TIMEOUT;
use crate::order::events::{FulfillmentEvent, Status, StatusEvent};
use crate::order::Reason;
use crate::shutdown::Shutdown;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;
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
    /// Probe orders the processor dead-lettered, by order ID: their
    /// `error` and `error_detail` headers.
    pub probes_dead: Mutex<HashMap<String, (String, String)>>,
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
            &config.topics.events,
            &config.topics.payment_requests,
            // For the payment results adapters write there.
            &config.topics.orders,
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
                let (_, high) = watermarks(&consumer, name, partition.id())?;
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
            probes_dead: Mutex::new(HashMap::new()),
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
        // Probe orders are the probe's business; only their status (or
        // their dead letter) is read.
        let probe = message
            .key()
            .is_some_and(|k| k.starts_with(self.probe_prefix.as_bytes()));
        if !ours || (probe && topic != self.config.topics.status && topic != self.config.topics.dlq)
        {
            return;
        }
        let header = |name: &str| {
            message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if probe && topic == self.config.topics.dlq {
            let order_id = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let error = header("error").unwrap_or_default();
            let detail = header("error_detail").unwrap_or_default();
            self.collected
                .probes_dead
                .lock()
                .insert(order_id, (error, detail));
            return;
        }
        let payload = message.payload().unwrap_or_default();
        let topics = &self.config.topics;
        if topic == topics.orders {
            // The sale's own records are here too: only results are read.
            if contains(payload, b"\"payment_result\"") {
                if let Ok(result) = serde_json::from_slice::<ResultLine>(payload) {
                    self.collected.seen.lock().results.push(ResultSeen {
                        order_id: result.order_id,
                        command_id: result.command_id,
                        attempt: result.attempt,
                        outcome: result.outcome,
                    });
                }
            }
        } else if topic == topics.events {
            match serde_json::from_slice::<EventLine>(payload) {
                Ok(event) => self.collected.seen.lock().events.push(EventSeen {
                    order_id: event.order_id,
                    kind: event.kind,
                    payment: event.payment,
                }),
                Err(_) => {
                    self.collected.unreadable.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if topic == topics.payment_requests {
            match serde_json::from_slice::<CommandLine>(payload) {
                Ok(command) => self.collected.seen.lock().commands.push(CommandSeen {
                    order_id: command.order_id,
                    kind: command.kind,
                    command_id: command.command_id,
                    attempt: command.attempt,
                }),
                Err(_) => {
                    self.collected.unreadable.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if topic == topics.status {
            match serde_json::from_slice::<StatusLine>(payload) {
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
            let error = header("error");
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

    fn status(&mut self, line: StatusLine) {
        if line.order_id.starts_with(&self.probe_prefix) {
            // Probes are decided, never cancelled: a Part 1 status.
            match line.part_one() {
                Some(status) => {
                    self.collected
                        .probes
                        .lock()
                        .insert(status.order_id.clone(), status);
                }
                None => {
                    self.collected.unreadable.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        // A rejection's reason is one of the contract's; a cancellation's
        // is its own (`payment_declined`, `staff`, none).
        let (reason, cancel_reason) = match line.status {
            Status::Cancelled => (None, line.reason),
            Status::Accepted | Status::Rejected => match line.reason.as_deref().map(reason_of) {
                None => (None, None),
                Some(Some(reason)) => (Some(reason), None),
                Some(None) => {
                    self.collected.unreadable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let status = StatusSeen {
            order_id: line.order_id,
            status: line.status,
            reason,
            cancel_reason,
        };
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
        self.collected.seen.lock().statuses.push(status);
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

/// A status as read back: the reason is a string, since a cancellation's
/// (`payment_declined`, `staff`) is not a rejection reason.
#[derive(Deserialize)]
struct StatusLine {
    event_id: String,
    order_id: String,
    status: Status,
    reason: Option<String>,
    detail: Option<String>,
    processed_at: String,
}

impl StatusLine {
    /// As a Part 1 status, if its reason (if any) is a rejection reason.
    fn part_one(self) -> Option<StatusEvent> {
        let reason = match self.reason.as_deref() {
            None => None,
            Some(text) => Some(reason_of(text)?),
        };
        Some(StatusEvent {
            event_id: self.event_id,
            order_id: self.order_id,
            status: self.status,
            reason,
            detail: self.detail,
            processed_at: self.processed_at,
        })
    }
}

fn reason_of(text: &str) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| r.as_str() == text)
}

/// The fields of a lifecycle event the audit reads.
#[derive(Deserialize)]
struct EventLine {
    order_id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payment: Option<u32>,
}

/// The fields of a payment command the audit reads.
#[derive(Deserialize)]
struct CommandLine {
    order_id: String,
    #[serde(rename = "type")]
    kind: String,
    command_id: String,
    attempt: u32,
}

/// The fields of a `payment_result` the audit reads.
#[derive(Deserialize)]
struct ResultLine {
    order_id: String,
    command_id: String,
    attempt: u32,
    outcome: String,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `o-1/home` → `home`; anything else is kept whole so the audit flags it.
fn address_key(order_id: &str, fulfillment_id: &str) -> String {
    fulfillment_id
        .strip_prefix(order_id)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(fulfillment_id)
        .to_string()
}

/// A partition's high watermark, asked again while its leader is still
/// being elected (a topic created a moment ago answers NotLeaderForPartition
/// or LeaderNotAvailable for a while), up to the metadata timeout.
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), LoadtestError> {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;
    let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT) {
            Ok(watermarks) => return Ok(watermarks),
            Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::NotLeaderForPartition | RDKafkaErrorCode::LeaderNotAvailable,
            )) if std::time::Instant::now() < deadline => {
                std::thread::sleep(WATERMARK_RETRY);
            }
            Err(source) => return Err(LoadtestError::kafka("reading output watermarks", source)),
        }
    }
}

/// How long to wait before asking a leaderless partition again.
const WATERMARK_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
