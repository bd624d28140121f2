//! The `orders` consumer.
//!
//! One consumer in the group reads every assigned partition and routes each
//! record to shard `partition % shards`, so a partition (and therefore an
//! order) always has one owner. Shard queues are bounded: when a shard falls
//! behind, the consumer waits, and the broker holds the backlog.
//!
//! Offsets are stored for commit only up to the oldest record whose outputs
//! are not yet acknowledged (see [`OffsetTracker`]); librdkafka commits the
//! stored offsets in the background. Before partitions are revoked in a
//! rebalance, the consumer waits until what it dispatched for them is
//! delivered and commits it, so the next owner starts where this one ended.
//!
//! With Kafka transactions (see `transaction`), the consumer instead stops
//! dispatching every `engine.commit_interval_ms`, before partitions are
//! revoked and at shutdown, waits until everything dispatched is decided
//! and acknowledged, and commits the offsets inside the transaction.
//!
//! When partitions are assigned, their state is restored from the status
//! topic (see `recovery`) and handed to their shards before any of their
//! records; when they are revoked, their shards give back what they held.
//! With `engine.stock_split = "whole"` the process decides only while it
//! owns every partition: otherwise another instance sells the same stock,
//! so it pauses and says so.

use super::recovery::Recovery;
use super::tracker::OffsetTracker;
use super::transaction::{Next, TransactionError, Transactions};
use super::worker::Work;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, Readiness};
use crossbeam_channel::{SendTimeoutError, Sender};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one poll waits for a record before checking for shutdown.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a full shard queue is waited on before checking for shutdown.
const DISPATCH_RETRY: Duration = Duration::from_millis(100);
/// How often a revoke waits between looking at delivery progress.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// One consumed record, owned, on its way to a shard.
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// When the consumer got it, for `orderflow_processing_seconds`.
    /// quanta's clock: two reads per record are on the hot path.
    pub received: quanta::Instant,
}

/// State shared by the poll loop and the rebalance callbacks (which run on
/// the poll loop's thread, inside `poll`).
pub struct SourceShared {
    pub topic: String,
    pub tracker: Arc<OffsetTracker>,
    /// Highest offset dispatched to a shard, per partition.
    dispatched: Mutex<HashMap<i32, i64>>,
    /// How long a revoke waits for in-flight outputs.
    drain_timeout: Duration,
    /// Queue of each shard; emptied by [`SourceShared::close`].
    shards: Mutex<Vec<Sender<Work>>>,
    recovery: Recovery,
    /// Partition count of `orders`.
    partitions: usize,
    /// Sells the whole stock: decide only while owning every partition.
    whole: bool,
    readiness: Readiness,
    shutdown: Shutdown,
    /// Kafka transactions, if on: offsets are committed inside them.
    transactions: Option<Transactions>,
    /// Why the processor must stop: a transaction failed and was aborted.
    failure: Mutex<Option<TransactionError>>,
}

/// What the source needs besides the tracker.
pub struct SourceSetup {
    pub topic: String,
    pub drain_timeout: Duration,
    pub shards: Vec<Sender<Work>>,
    pub recovery: Recovery,
    pub partitions: usize,
    pub whole: bool,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    pub transactions: Option<Transactions>,
}

impl SourceShared {
    pub fn new(tracker: Arc<OffsetTracker>, setup: SourceSetup) -> Self {
        SourceShared {
            topic: setup.topic,
            tracker,
            dispatched: Mutex::new(HashMap::new()),
            drain_timeout: setup.drain_timeout,
            shards: Mutex::new(setup.shards),
            recovery: setup.recovery,
            partitions: setup.partitions,
            whole: setup.whole,
            readiness: setup.readiness,
            shutdown: setup.shutdown,
            transactions: setup.transactions,
            failure: Mutex::new(None),
        }
    }

    /// Whether offsets are committed inside Kafka transactions.
    pub fn transactional(&self) -> bool {
        self.transactions.is_some()
    }

    /// The error that stopped the processor, if a transaction failed.
    pub fn take_failure(&self) -> Option<TransactionError> {
        self.failure.lock().take()
    }

    /// Transactional mode: waits until every dispatched record is decided
    /// and all outputs are acknowledged, then commits the transaction with
    /// the consumed offsets and begins the next (unless `next` is
    /// `Finish`). A failure aborts it, is kept for [`Self::take_failure`]
    /// and triggers shutdown; returns false then (and after any failure).
    pub fn commit_transaction(&self, consumer: &BaseConsumer<SourceContext>, next: Next) -> bool {
        let Some(transactions) = &self.transactions else {
            return true;
        };
        if self.failure.lock().is_some() {
            return false;
        }
        if !transactions.is_open() {
            return true; // finished at shutdown
        }
        let offsets = match self.settle(transactions) {
            Ok(()) => self.committable(None),
            Err(cause) => {
                self.fail(transactions.abort(&cause));
                return false;
            }
        };
        match transactions.commit(&offsets, consumer.group_metadata().as_ref(), next) {
            Ok(()) if next == Next::Finish => {
                let offsets: Vec<String> = offsets
                    .elements()
                    .iter()
                    .map(|e| format!("{}:{}", e.partition(), e.offset().to_raw().unwrap_or(-1)))
                    .collect();
                tracing::info!(
                    offsets = %offsets.join(","),
                    "last transaction committed, with the next offset to read per partition"
                );
                true
            }
            Ok(()) => true,
            Err(error) => {
                self.fail(error);
                false
            }
        }
    }

    /// Keeps `error` for [`Self::take_failure`] and stops the processor.
    fn fail(&self, error: TransactionError) {
        tracing::error!(%error, "stopping");
        *self.failure.lock() = Some(error);
        self.shutdown.trigger();
    }

    /// Waits until every dispatched record is decided and every output of
    /// the transaction acknowledged, or says why it cannot be committed.
    fn settle(&self, transactions: &Transactions) -> Result<(), String> {
        let deadline = Instant::now() + transactions.timeout();
        loop {
            if transactions.doomed() {
                return Err("an output could not be delivered".into());
            }
            let partitions: Vec<i32> = self.dispatched.lock().keys().copied().collect();
            if self.drained(&partitions) && self.tracker.pending_outputs() == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "outputs still unacknowledged after the transaction timeout of {} ms",
                    transactions.timeout().as_millis()
                ));
            }
            std::thread::sleep(super::transaction::SETTLE_POLL);
        }
    }

    /// Drops the shards' queues: each shard finishes what it has and stops.
    pub fn close(&self) {
        self.shards.lock().clear();
    }

    /// Hands work to the shard of `partition`, waiting while its queue is
    /// full. False if shutdown came first or the shards are closed.
    fn dispatch(&self, partition: i32, work: Work) -> bool {
        let shards = self.shards.lock();
        if shards.is_empty() {
            return false;
        }
        let shard = &shards[partition as usize % shards.len()];
        dispatch(shard, work, &self.shutdown)
    }

    /// Restores the state of newly assigned partitions and hands it to
    /// their shards, ahead of their records.
    ///
    /// Outputs this process sent for a partition before it lost it (a
    /// session that timed out during a broker outage, say) may still be on
    /// their way: the restore must see them, or it would decide their
    /// records again. So it first waits until they are acknowledged.
    fn adopt(&self, partitions: &[i32]) {
        let mut logged = false;
        while partitions
            .iter()
            .any(|p| self.tracker.waiting_outputs(*p) > 0)
        {
            if self.shutdown.is_triggered() {
                return;
            }
            if !logged {
                tracing::info!(
                    ?partitions,
                    "waiting for this process's earlier outputs before restoring"
                );
                logged = true;
            }
            std::thread::sleep(DRAIN_POLL);
        }
        self.forget(partitions);
        let Some(books) = self.recovery.restore(partitions, &self.shutdown) else {
            return; // shutdown: nothing more is decided
        };
        for (partition, book) in books {
            self.dispatch(partition, Work::Adopt { partition, book });
        }
    }

    /// Has the shards give back what revoked partitions held, and waits
    /// until they did: a partition assigned again right after must not be
    /// restored on top of holdings not yet given back (the inventory would
    /// count them twice for a moment and refuse units it has).
    fn release(&self, partitions: &[i32]) {
        let (done, released) = crossbeam_channel::bounded(partitions.len());
        let mut waiting = 0;
        for partition in partitions {
            let work = Work::Release {
                partition: *partition,
                done: done.clone(),
            };
            if self.dispatch(*partition, work) {
                waiting += 1;
            }
        }
        drop(done);
        for _ in 0..waiting {
            // A shard answers after the records queued before; one that
            // stopped (its queue closed) dropped its `done`: an error here.
            if released.recv().is_err() {
                return;
            }
        }
    }

    /// Reports the partitions owned after a rebalance and, with the whole
    /// stock, decides only while owning every partition.
    fn after_rebalance(&self, consumer: &BaseConsumer<SourceContext>) {
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let owned = assignment.elements_for_topic(&self.topic).len();
        telemetry::partitions_assigned(owned);
        if !self.whole || owned == 0 {
            return; // quotas, or nothing owned: nothing to pause
        }
        if owned < self.partitions {
            tracing::error!(
                owned,
                partitions = self.partitions,
                "another instance shares the consumer group, and engine.stock_split = \"whole\" \
                 lets every instance sell the whole stock: paused so nothing is oversold; \
                 run one instance, or set engine.stock_split = \"partition\" on all of them"
            );
            if let Err(e) = consumer.pause(&assignment) {
                telemetry::kafka_error("client", &e.to_string());
            }
            self.readiness
                .set_not_ready("paused: another instance shares the whole stock");
        } else {
            if let Err(e) = consumer.resume(&assignment) {
                telemetry::kafka_error("client", &e.to_string());
            }
            self.readiness.set_ready();
        }
    }

    /// Offsets safe to commit for the given partitions (all known if `None`).
    fn committable(&self, only: Option<&[i32]>) -> TopicPartitionList {
        let dispatched = self.dispatched.lock();
        let mut tpl = TopicPartitionList::new();
        for partition in dispatched.keys() {
            if only.is_some_and(|only| !only.contains(partition)) {
                continue;
            }
            if let Some(offset) = self.tracker.committable(*partition) {
                let _ = tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(offset));
            }
        }
        tpl
    }

    /// Waits until every dispatched record of `partitions` has its outputs
    /// acknowledged, or the drain timeout passes. Returns whether it drained.
    fn drain(&self, partitions: &[i32]) -> bool {
        let deadline = Instant::now() + self.drain_timeout;
        loop {
            if self.drained(partitions) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(DRAIN_POLL);
        }
    }

    /// Whether every dispatched record of `partitions` is decided and its
    /// outputs acknowledged.
    fn drained(&self, partitions: &[i32]) -> bool {
        let dispatched = self.dispatched.lock();
        partitions.iter().all(|p| match dispatched.get(p) {
            Some(last) => self
                .tracker
                .committable(*p)
                .is_some_and(|next| next > *last),
            None => true,
        })
    }

    fn forget(&self, partitions: &[i32]) {
        let mut dispatched = self.dispatched.lock();
        for p in partitions {
            dispatched.remove(p);
            self.tracker.forget(*p);
        }
    }
}

pub struct SourceContext {
    pub shared: Arc<SourceShared>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.topic) else {
            return;
        };
        // Partition -1 is librdkafka's "unassigned" placeholder. A partition
        // this consumer does not fetch ("none") is reported as not owned, so
        // its gauge does not freeze at the lag it had when it was revoked.
        for (partition, stats) in &topic.partitions {
            if *partition >= 0 {
                let owned = stats.fetch_state != "none";
                telemetry::consumer_lag(*partition, owned.then_some(stats.consumer_lag));
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(super::sink::error_kind(&error), reason);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = revoked
            .elements_for_topic(&self.shared.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        if partitions.is_empty() {
            return;
        }
        let drained = if self.shared.transactional() {
            // Everything dispatched, of every partition, commits now, with
            // the generation that still owns the revoked ones. On failure
            // the processor stops (see `commit_transaction`).
            self.shared.commit_transaction(consumer, Next::Begin);
            true
        } else {
            let drained = self.shared.drain(&partitions);
            if !drained {
                tracing::warn!(
                    ?partitions,
                    "revoked partitions still had undelivered outputs; committing what is done"
                );
            }
            let tpl = self.shared.committable(Some(&partitions));
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    telemetry::kafka_error("commit", &e.to_string());
                }
            }
            drained
        };
        // Undelivered outputs stay tracked: if a partition comes back, its
        // restore waits for them (see `adopt`).
        if drained {
            self.shared.forget(&partitions);
        }
        self.shared.release(&partitions);
        tracing::info!(?partitions, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions: Vec<i32> = assigned
                .elements_for_topic(&self.shared.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            tracing::info!(?partitions, "partitions assigned");
            if !partitions.is_empty() {
                self.shared.adopt(&partitions);
            }
        }
        self.shared.after_rebalance(consumer);
    }
}

/// Polls `orders` and dispatches records to shards until shutdown (or a
/// failed transaction).
pub fn run(consumer: &BaseConsumer<SourceContext>, shutdown: &Shutdown, commit_interval: Duration) {
    let shared = consumer.context().shared.clone();
    let transactional = shared.transactional();
    let mut last_store = Instant::now();
    while !shutdown.is_triggered() {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                let record = Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    received: quanta::Instant::now(),
                };
                let (partition, offset) = (record.partition, record.offset);
                if !shared.dispatch(partition, Work::Record(record)) {
                    break;
                }
                // Only records a shard got: a transaction's commit waits
                // for every one of them.
                shared.dispatched.lock().insert(partition, offset);
            }
            Some(Err(error)) => {
                telemetry::kafka_error(super::sink::error_kind(&error), &error.to_string())
            }
            None => {}
        }
        if last_store.elapsed() >= commit_interval {
            if !transactional {
                store_offsets(consumer);
            } else if !shared.commit_transaction(consumer, Next::Begin) {
                break;
            }
            last_store = Instant::now();
        }
    }
}

/// Sends work to a shard, waiting while the queue is full. Returns false if
/// shutdown came first (a record is then not committed).
fn dispatch(shard: &Sender<Work>, mut work: Work, shutdown: &Shutdown) -> bool {
    loop {
        match shard.send_timeout(work, DISPATCH_RETRY) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(back)) if !shutdown.is_triggered() => work = back,
            Err(_) => return false,
        }
    }
}

/// Stores committable offsets of every partition; librdkafka commits them.
pub fn store_offsets(consumer: &BaseConsumer<SourceContext>) {
    let tpl = consumer.context().shared.committable(None);
    if tpl.count() > 0 {
        if let Err(e) = consumer.store_offsets(&tpl) {
            // Partitions revoked a moment ago can no longer be stored.
            tracing::debug!(error = %e, "storing offsets");
        }
    }
}

/// Final commit at shutdown, after shards finished and outputs flushed.
pub fn commit_final(consumer: &BaseConsumer<SourceContext>) {
    let tpl = consumer.context().shared.committable(None);
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            telemetry::kafka_error("commit", &e.to_string());
        }
    }
}
