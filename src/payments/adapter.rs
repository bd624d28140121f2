//! The in-process adapter: reads `payment-requests`, answers each command
//! (simulated, or through the HTTP gateway) and writes the answer as a
//! `payment_result` to `orders`, to the partition the command came from.
//!
//! At least once: a command's offset is stored for commit only once its
//! result is acknowledged by the broker, and only up to the oldest command
//! still unanswered in its partition. Calls in flight are bounded by a
//! semaphore (`payments.http_max_in_flight` for HTTP, `SIMULATED_MAX_IN_FLIGHT`
//! for the simulated gateway); a full adapter stops reading.

use super::{http, result_json, simulated, AdapterKind, Answer, CommandHead};
use crate::kafka::{error_kind, ReaderContext};
use crate::shutdown::Shutdown;
use crate::telemetry;
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// How long one wait for a command lasts before shutdown is checked.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a result may take to be acknowledged before it counts as lost
/// (its command stays uncommitted and is answered again after a restart).
const RESULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for calls in flight.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The cap on commands the adapter's consumer fetches ahead of its calls
/// (librdkafka's `queued.max.messages.kbytes`, 64 MiB by default). A
/// command is about 500 bytes: 4 MiB is thousands of commands, far more
/// than the calls in flight, so reading never waits on it; a backlog of
/// commands (after an outage, or while decisions outrun the gateway) then
/// stays on the broker instead of in the processor's memory.
const PREFETCH_KBYTES: &str = "4096";
/// The commands per partition the consumer reads ahead (librdkafka's
/// `queued.min.messages`; the processor's own consumers read 4,096
/// ahead). Reading stops anyway while every call permit is taken; this
/// only keeps the adapter fed between fetches.
const PREFETCH_COMMANDS: &str = "512";
/// What one fetch brings per partition and in all (librdkafka's
/// `max.partition.fetch.bytes`, 1 MiB, and `fetch.max.bytes`, 50 MiB; a
/// larger record still comes, and `fetch.max.bytes` is raised to
/// `message.max.bytes`). Commands come lz4-compressed with the
/// processor's other outputs, and each fetched batch is decompressed into
/// a buffer that lives as long as any of its commands: with librdkafka's
/// sizes the adapter, catching up, held tens of MiB that the allocator
/// kept (`tests/broker_memory.rs`: +34 MiB, +41.8 % from half-way; with
/// these, 0.0 %). 64 KiB of lz4 is about a thousand commands.
const FETCH_PARTITION_BYTES: &str = "65536";
const FETCH_MAX_BYTES: &str = "1048576";
/// Calls in flight with the `simulated` adapter, whose answers are
/// immediate: what waits is the result's delivery to the broker
/// (`linger.ms` and the acknowledgement), so the bound is on results not
/// yet acknowledged. `payments.http_max_in_flight` bounds HTTP calls.
const SIMULATED_MAX_IN_FLIGHT: usize = 1024;
/// Results are written uncompressed, whatever `kafka.producer` says. A
/// result is about 200 bytes and the adapter sends a few at a time, so
/// each lz4 batch held a handful; read back by the processor among the
/// orders, such batches made its resident memory rise in steps of 30 to
/// 40 MiB (`tests/broker_memory.rs` with the adapter on: +15.7 % from
/// half-way with lz4, +1.1 % and +2.9 % without).
const RESULTS_COMPRESSION: &str = "none";

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Url(#[from] http::UrlError),
    #[error("payment adapter's kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("payment adapter's runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// What the adapter runs with.
pub struct AdapterSetup {
    pub kind: AdapterKind,
    /// A consumer config with its own `group.id`.
    pub consumer: ClientConfig,
    pub producer: ClientConfig,
    pub requests_topic: String,
    pub results_topic: String,
    pub http_url: String,
    pub http_timeout: Duration,
    /// HTTP calls in flight at most (`payments.http_max_in_flight`).
    pub max_in_flight: usize,
}

/// Starts the adapter thread, unless commands are answered elsewhere
/// (`external`: `None`).
pub fn spawn(
    mut setup: AdapterSetup,
    shutdown: Shutdown,
) -> Result<Option<std::thread::JoinHandle<()>>, AdapterError> {
    let (gateway, max_in_flight) = match setup.kind {
        AdapterKind::External => return Ok(None),
        AdapterKind::Simulated => (None, SIMULATED_MAX_IN_FLIGHT),
        AdapterKind::Http => (
            Some(http::Gateway::new(&setup.http_url, setup.http_timeout)?),
            setup.max_in_flight.max(1),
        ),
    };
    setup
        .consumer
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES)
        .set("queued.min.messages", PREFETCH_COMMANDS)
        .set("max.partition.fetch.bytes", FETCH_PARTITION_BYTES)
        .set("fetch.max.bytes", FETCH_MAX_BYTES)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // rdkafka's stream consumer and future producer start timers on the
    // runtime they are created in.
    let (consumer, producer) = {
        let _in_runtime = runtime.enter();
        // Their errors are counted and a repeated one is logged once per
        // interval (telemetry), as the processor's own clients do.
        let consumer: StreamConsumer<ReaderContext> =
            setup.consumer.create_with_context(ReaderContext)?;
        consumer.subscribe(&[&setup.requests_topic])?;
        let producer: FutureProducer<ReaderContext> = setup
            .producer
            .clone()
            .set("enable.idempotence", "true")
            // See RESULTS_COMPRESSION.
            .set("compression.type", RESULTS_COMPRESSION)
            .create_with_context(ReaderContext)?;
        (consumer, producer)
    };
    let adapter = Adapter {
        consumer,
        producer,
        gateway: gateway.map(Arc::new),
        requests_topic: setup.requests_topic,
        results_topic: setup.results_topic,
        permits: Arc::new(Semaphore::new(max_in_flight)),
        max_in_flight,
    };
    let handle = std::thread::Builder::new()
        .name("payments".into())
        .spawn(move || runtime.block_on(adapter.run(shutdown)))?;
    Ok(Some(handle))
}

struct Adapter {
    consumer: StreamConsumer<ReaderContext>,
    producer: FutureProducer<ReaderContext>,
    gateway: Option<Arc<http::Gateway>>,
    requests_topic: String,
    results_topic: String,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
}

/// Offsets of commands read and not yet answered, per partition.
#[derive(Default)]
struct Pending {
    open: HashMap<i32, BTreeSet<i64>>,
    /// The next offset to read per partition, as far as it was read.
    next: HashMap<i32, i64>,
}

impl Pending {
    fn read(&mut self, partition: i32, offset: i64) {
        self.open.entry(partition).or_default().insert(offset);
        self.next.insert(partition, offset + 1);
    }

    fn done(&mut self, partition: i32, offset: i64) {
        if let Some(open) = self.open.get_mut(&partition) {
            open.remove(&offset);
        }
    }

    /// Per partition: everything before the oldest open command.
    fn committable(&self, topic: &str) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in &self.next {
            let upto = self
                .open
                .get(partition)
                .and_then(|open| open.first().copied())
                .unwrap_or(*next);
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(upto));
        }
        tpl
    }
}

impl Adapter {
    async fn run(self, shutdown: Shutdown) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(i32, i64, bool)>();
        let mut pending = Pending::default();
        let producer = self.producer.clone();
        while !shutdown.is_triggered() {
            while let Ok((partition, offset, delivered)) = done_rx.try_recv() {
                if delivered {
                    pending.done(partition, offset);
                }
            }
            self.store(&pending);
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                break;
            };
            let message = match tokio::time::timeout(RECV_TIMEOUT, self.consumer.recv()).await {
                Err(_) => continue,
                Ok(Err(error)) => {
                    telemetry::kafka_error(error_kind(&error), &error.to_string());
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            let (partition, offset) = (message.partition(), message.offset());
            pending.read(partition, offset);
            let payload = message.payload().map(Bytes::copy_from_slice);
            let head = payload
                .as_deref()
                .and_then(|bytes| serde_json::from_slice::<CommandHead>(bytes).ok());
            let (Some(head), Some(payload)) = (head, payload) else {
                // Not a command of ours: nothing to answer, nothing lost
                // (the record stays on the topic).
                tracing::warn!(partition, "an unreadable payment command was skipped");
                pending.done(partition, offset);
                continue;
            };
            let gateway = self.gateway.clone();
            let producer = producer.clone();
            let topic = self.results_topic.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let answer = match &gateway {
                    Some(gateway) => gateway.call(payload).await,
                    None => simulated(&head),
                };
                let delivered = answer_to(&producer, &topic, partition, &head, &answer).await;
                let _ = done.send((partition, offset, delivered));
                drop(permit);
            });
        }
        // Shutdown: let the calls in flight finish, then commit.
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.permits.acquire_many(all)).await;
        while let Ok((partition, offset, delivered)) = done_rx.try_recv() {
            if delivered {
                pending.done(partition, offset);
            }
        }
        let tpl = pending.committable(&self.requests_topic);
        if tpl.count() > 0 {
            if let Err(error) = self.consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(%error, "committing payment commands at shutdown");
            }
        }
    }

    fn store(&self, pending: &Pending) {
        let tpl = pending.committable(&self.requests_topic);
        if tpl.count() > 0 {
            // Partitions revoked a moment ago can no longer be stored.
            let _ = self.consumer.store_offsets(&tpl);
        }
    }
}

/// Writes the result; true once the broker acknowledged it.
async fn answer_to(
    producer: &FutureProducer<ReaderContext>,
    topic: &str,
    partition: i32,
    head: &CommandHead,
    answer: &Answer,
) -> bool {
    let payload = result_json(head, answer);
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(head.order_id.as_bytes())
        .payload(&payload);
    match producer.send(record, RESULT_DELIVERY_TIMEOUT).await {
        Ok(_) => true,
        Err((error, _)) => {
            tracing::warn!(%error, "a payment result was not delivered; its command is answered again after a restart");
            false
        }
    }
}
