//! The inventory feed: reads the `inventory` topic from its beginning to
//! its end before any order is decided, then keeps the cache current.
//!
//! The feed reads every partition with no consumer group membership: stock
//! is rebuilt from the whole topic on every start, which is safe because
//! inventory events set and adjust *stock*, while units sold are the
//! processor's own state (see the `inventory` and `state` modules).
//!
//! Unreadable records go to the dead-letter topic, each once: the feed
//! commits, for the group `{group_id}-inventory`, the offset below which
//! every unreadable record's dead letter is acknowledged (with Kafka
//! transactions: committed), and on the next start dead-letters only
//! records from there on. A crash between a dead letter and that commit
//! sends it again on the next start (a copy with the same source headers),
//! never loses it. Several instances each dead-letter what they read past
//! the offset committed when they started.

use super::catch_up::{committed_offsets, partitions_of, read_to_end};
use super::sink::Sink;
use super::tracker::{token, OffsetTracker};
use super::{Reader, ReaderContext, StartError};
use crate::config::Config;
use crate::inventory::Inventory;
use crate::order::decode::decode_inventory;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, KafkaErrorKind};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often the feed commits how far its dead letters are acknowledged.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

struct Feed {
    inventory: Arc<Inventory>,
    sink: Arc<Sink>,
    topic: String,
    dlq: String,
    max_record_bytes: usize,
    /// Records begun, and their dead letters' acknowledgements.
    tracker: Arc<OffsetTracker>,
    /// Per partition, the offset committed at start: unreadable records
    /// below it were dead-lettered by an earlier start.
    dead_lettered_before: HashMap<i32, i64>,
    /// Unreadable records not dead-lettered again, for one log line.
    skipped: u64,
}

impl Feed {
    fn apply(&mut self, message: &BorrowedMessage<'_>) {
        let (partition, offset) = (message.partition(), message.offset());
        // An event that does not decode, or that the inventory refuses (its
        // stock would leave the documented range), is dead-lettered.
        match decode_inventory(message.key(), message.payload(), self.max_record_bytes)
            .and_then(|event| self.inventory.apply(&event))
        {
            Ok(()) => {
                self.tracker.begin(partition, offset, 0);
                telemetry::inventory_event(Ok(()));
            }
            Err(_)
                if self
                    .dead_lettered_before
                    .get(&partition)
                    .is_some_and(|before| offset < *before) =>
            {
                self.tracker.begin(partition, offset, 0);
                self.skipped += 1;
            }
            Err(dead) => {
                telemetry::inventory_event(Err(dead.reason));
                self.tracker.begin(partition, offset, 1);
                let source = (self.topic.as_str(), partition, offset);
                let (key, value) = (message.key(), message.payload());
                let token = token::pack_for(token::Source::Inventory, partition, offset);
                self.sink
                    .send_dead_letter(&self.dlq, source, key, value, &dead, token);
            }
        }
    }

    /// The offsets below which every dead letter is acknowledged.
    fn acknowledged(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            if let Some(offset) = self.tracker.committable(*partition) {
                let _ = tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(offset));
            }
        }
        tpl
    }
}

/// Commits how far the feed's dead letters are acknowledged; with Kafka
/// transactions only once the transaction that holds them has committed.
struct Commits {
    partitions: Vec<i32>,
    /// Transactional: offsets acknowledged, with the committed-transaction
    /// count when they were (committable once it has grown).
    waiting: Vec<(u64, TopicPartitionList)>,
    last: Instant,
    /// What was last sent to be committed: the same offsets are not sent
    /// again (during an outage, every attempt would fail and be logged).
    sent: Vec<(i32, i64)>,
}

impl Commits {
    fn tick(&mut self, feed: &Feed, consumer: &Reader, force: bool) {
        if !force && self.last.elapsed() < COMMIT_INTERVAL {
            return;
        }
        self.last = Instant::now();
        let acknowledged = feed.acknowledged(&self.partitions);
        let ready = match feed.sink.committed_transactions() {
            None => Some(acknowledged),
            Some(committed) => {
                self.waiting.push((committed, acknowledged));
                let ready = self.waiting.iter().rposition(|(at, _)| *at < committed);
                ready.map(|i| {
                    let (_, tpl) = self
                        .waiting
                        .drain(..=i)
                        .next_back()
                        .expect("index in range");
                    tpl
                })
            }
        };
        // The last commit, at exit, must be done before the consumer is.
        let mode = if force {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        let Some(tpl) = ready else { return };
        let offsets: Vec<(i32, i64)> = tpl
            .elements()
            .iter()
            .filter_map(|e| e.offset().to_raw().map(|o| (e.partition(), o)))
            .collect();
        // An asynchronous commit may have failed: the last one is sent
        // whatever was sent before.
        if offsets.is_empty() || (offsets == self.sent && !force) {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => self.sent = offsets,
            Err(e) => telemetry::kafka_error(KafkaErrorKind::Commit, &e.to_string()),
        }
    }
}

/// Reads `inventory` to its end (returning only then), and leaves a thread
/// applying new events until shutdown.
pub fn start(
    config: &Config,
    inventory: Arc<Inventory>,
    sink: Arc<Sink>,
    tracker: Arc<OffsetTracker>,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    let group = format!("{}-inventory", config.kafka.group_id);
    let consumer: Reader =
        super::reader_config(&config.kafka, &group).create_with_context(ReaderContext)?;
    let topic = config.topics.inventory.clone();
    let partitions = partitions_of(&consumer, &topic, &config.kafka.brokers)?;
    let mut wanted = TopicPartitionList::new();
    for partition in &partitions {
        wanted.add_partition(&topic, *partition);
    }
    let dead_lettered_before = committed_offsets(&consumer, &wanted, &|| shutdown.is_triggered())?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.partition(), offset)),
            _ => None,
        })
        .collect();
    let mut feed = Feed {
        inventory,
        sink,
        topic,
        dlq: config.topics.dlq.clone(),
        max_record_bytes: config.limits.max_record_bytes,
        tracker,
        dead_lettered_before,
        skipped: 0,
    };
    read_to_end(
        &consumer,
        &config.topics.inventory,
        Some(&partitions),
        &config.kafka.brokers,
        &|| shutdown.is_triggered(),
        |m| feed.apply(m),
    )?;
    if feed.skipped > 0 {
        tracing::info!(
            records = feed.skipped,
            "unreadable inventory records dead-lettered on an earlier start, not again"
        );
    }
    tracing::info!(skus = feed.inventory.sku_count(), "inventory loaded");
    let mut commits = Commits {
        partitions,
        waiting: Vec::new(),
        last: Instant::now(),
        sent: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name("inventory".into())
        .spawn(move || {
            while !shutdown.is_triggered() {
                match consumer.poll(POLL_TIMEOUT) {
                    Some(Ok(message)) => feed.apply(&message),
                    Some(Err(error)) => {
                        telemetry::kafka_error(super::error_kind(&error), &error.to_string())
                    }
                    None => {}
                }
                commits.tick(&feed, &consumer, false);
            }
            commits.tick(&feed, &consumer, true);
        })
        .expect("spawning a thread");
    Ok(handle)
}
