//! The `orders` consumer.
//!
//! One consumer in the group reads every assigned partition and routes each
//! record to shard `partition % shards`, so a partition (and therefore an
//! order) always has one owner. Shard queues are bounded: when a shard falls
//! behind, the consumer waits, and the broker holds the backlog.
//!
//! Each concern has one owner, and rdkafka's callbacks only hand work over:
//!
//! - [`SourceContext`] (the rebalance callback) records what changed. An
//!   assignment is applied at once, paused, so nothing of a new partition is
//!   fetched before its state is restored; a revoke is applied later, by
//!   the poll loop, once the partitions can be handed over; a lost
//!   assignment (the group already gave it away) is applied at once.
//! - [`Ownership`] knows where each partition stands (restoring, owned,
//!   being handed over) and which records may be dispatched: only those of
//!   owned partitions, whose books are with their shards.
//! - The [`RestoreWorker`] reads newly assigned partitions' state from the
//!   status topic in the background, while the other partitions go on.
//! - The [`OffsetTracker`] says which offsets are safe to commit: only up
//!   to the oldest record whose outputs are not all acknowledged; librdkafka
//!   commits the stored offsets in the background. A revoked partition is
//!   handed over only once everything dispatched for it is acknowledged and
//!   committed, so the next owner starts where this one ended and restores
//!   every status it wrote.
//! - With Kafka transactions ([`Transactions`]) the consumer instead stops
//!   dispatching every `engine.commit_interval_ms`, at a revoke and at
//!   shutdown, waits until everything dispatched is decided and
//!   acknowledged, and commits the offsets inside the transaction. A
//!   commit the group refused because a rebalance raced it rewinds the
//!   partitions still owned (see [`Source::rewind`]).
//! - [`Flow`] pauses and resumes partitions and sets readiness: restoring
//!   and revoking partitions are paused; owned ones while the outputs in
//!   flight are over their bound ([`max_outputs_in_flight`]), and, with
//!   `engine.stock_split = "whole"`, while this process does not own every
//!   partition (another instance would sell the same stock: it pauses and
//!   says so).
//!
//! The poll loop (`Source::run`) runs them, on one thread.

use super::ownership::{Flow, Ownership, Verdict};
use super::recovery::{give_back, Recovery, RestoreJob, RestoreWorker};
use super::tracker::OffsetTracker;
use super::transaction::{Next, TransactionError, Transactions};
use super::worker::Work;
use super::Fatal;
use crate::inventory::Inventory;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, KafkaErrorKind, Readiness};
use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one poll waits for a record before checking for shutdown.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a full shard queue is waited on before checking for shutdown.
const DISPATCH_RETRY: Duration = Duration::from_millis(100);
/// How often pausing and readiness are brought up to date between records.
const FLOW_INTERVAL: Duration = Duration::from_millis(5);
/// How long a rewind may wait for the committed offsets, and to seek.
const REWIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Outputs in flight allowed per record the shard queues can hold; see
/// [`max_outputs_in_flight`].
pub const OUTPUTS_IN_FLIGHT_PER_QUEUED_RECORD: usize = 8;

/// The outputs in flight (produced, not yet acknowledged, follow-ups and
/// held ones included) past which the consumer pauses its partitions, until
/// they fall to half: [`OUTPUTS_IN_FLIGHT_PER_QUEUED_RECORD`] per record
/// the shard queues hold (`engine.shards × engine.shard_queue_records`;
/// 131,072 with the defaults, a few hundred bytes each). During an outage
/// of the output brokers, what waits in memory for redelivery is thus
/// bounded, and the broker holds the backlog of orders.
pub fn max_outputs_in_flight(shards: usize, shard_queue_records: usize) -> usize {
    OUTPUTS_IN_FLIGHT_PER_QUEUED_RECORD
        .saturating_mul(shards)
        .saturating_mul(shard_queue_records)
}

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

/// A change of the assignment, recorded by the rebalance callback for the
/// poll loop.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Assigned and paused: to restore.
    Assigned(Vec<i32>),
    /// Revoked and paused, still assigned: to hand over, then unassign.
    Revoked(Vec<i32>),
    /// Lost, already unassigned: gone.
    Lost(Vec<i32>),
}

/// The orders consumer's context: statistics, errors, and the rebalance
/// callback, which only records what changed (see the module doc).
pub struct SourceContext {
    topic: String,
    changes: Mutex<Vec<Change>>,
    shutdown: Shutdown,
}

impl SourceContext {
    pub fn new(topic: &str, shutdown: &Shutdown) -> Self {
        SourceContext {
            topic: topic.to_string(),
            changes: Mutex::new(Vec::new()),
            shutdown: shutdown.clone(),
        }
    }

    fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut *self.changes.lock())
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        telemetry::librdkafka_log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
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
        telemetry::kafka_error(super::error_kind(&error), reason);
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions = self.partitions(tpl);
        let change = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
                    _ => consumer.assign(tpl),
                };
                if let Err(error) = assigned {
                    telemetry::kafka_error(KafkaErrorKind::Client, &error.to_string());
                }
                // Paused before anything is fetched: none of their records
                // reaches the poll loop before their state is restored.
                if let Err(error) = consumer.pause(tpl) {
                    telemetry::kafka_error(KafkaErrorKind::Client, &error.to_string());
                }
                Change::Assigned(partitions)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() || self.shutdown.is_triggered() {
                    // Nothing to hand over: the group gave them away
                    // already, or the processor has committed what it did
                    // and is closing.
                    unassign(consumer, tpl);
                    Change::Lost(partitions)
                } else {
                    // The poll loop unassigns them once handed over.
                    if let Err(error) = consumer.pause(tpl) {
                        telemetry::kafka_error(KafkaErrorKind::Client, &error.to_string());
                    }
                    Change::Revoked(partitions)
                }
            }
            other => {
                let code: rdkafka::types::RDKafkaErrorCode = other.into();
                telemetry::kafka_error(KafkaErrorKind::Client, &format!("rebalance: {code}"));
                return;
            }
        };
        self.changes.lock().push(change);
    }
}

/// Removes `tpl` from the consumer's assignment, the way its protocol wants.
fn unassign<C: ConsumerContext>(consumer: &BaseConsumer<C>, tpl: &TopicPartitionList) {
    let done = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
        _ => consumer.unassign(),
    };
    if let Err(error) = done {
        telemetry::kafka_error(KafkaErrorKind::Client, &error.to_string());
    }
}

/// What the source needs.
pub struct SourceSetup {
    pub topic: String,
    /// Queue of each shard.
    pub shards: Vec<Sender<Work>>,
    pub tracker: Arc<OffsetTracker>,
    pub inventory: Arc<Inventory>,
    pub recovery: Recovery,
    /// Partition count of `orders`.
    pub partitions: usize,
    /// Sells the whole stock: decide only while owning every partition.
    pub whole: bool,
    /// See [`max_outputs_in_flight`].
    pub max_outputs_in_flight: usize,
    pub commit_interval: Duration,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    /// Kafka transactions, if on: offsets are committed inside them.
    pub transactions: Option<Transactions>,
    /// Where a partition without a committed offset starts
    /// (`kafka.auto_offset_reset`): `Beginning` or `End`.
    pub start_without_commit: Offset,
}

/// The poll loop's state; used by one thread only.
pub struct Source {
    topic: String,
    shards: Vec<Sender<Work>>,
    tracker: Arc<OffsetTracker>,
    inventory: Arc<Inventory>,
    restores: RestoreWorker,
    ownership: Ownership,
    flow: Flow,
    /// Highest offset dispatched to a shard, per partition.
    dispatched: HashMap<i32, i64>,
    /// Partitions whose shards are giving back what they held (released
    /// after a revoke or loss), until a restore of theirs takes the answer.
    releasing: HashMap<i32, Receiver<()>>,
    /// How to cancel each running restore job.
    cancels: HashMap<u64, Shutdown>,
    commit_interval: Duration,
    readiness: Readiness,
    shutdown: Shutdown,
    transactions: Option<Transactions>,
    partitions: usize,
    /// See [`max_outputs_in_flight`].
    max_outputs_in_flight: usize,
    start_without_commit: Offset,
}

impl Source {
    pub fn new(setup: SourceSetup) -> Self {
        let restores = RestoreWorker::start(
            setup.recovery,
            setup.tracker.clone(),
            setup.shutdown.clone(),
        );
        Source {
            topic: setup.topic,
            shards: setup.shards,
            tracker: setup.tracker,
            inventory: setup.inventory,
            restores,
            ownership: Ownership::new(),
            flow: Flow::new(setup.partitions, setup.whole, setup.max_outputs_in_flight),
            dispatched: HashMap::new(),
            releasing: HashMap::new(),
            cancels: HashMap::new(),
            commit_interval: setup.commit_interval,
            readiness: setup.readiness,
            shutdown: setup.shutdown,
            transactions: setup.transactions,
            partitions: setup.partitions,
            max_outputs_in_flight: setup.max_outputs_in_flight,
            start_without_commit: setup.start_without_commit,
        }
    }

    /// Whether offsets are committed inside Kafka transactions.
    pub fn transactional(&self) -> bool {
        self.transactions.is_some()
    }

    /// Polls `orders` and dispatches records to shards until shutdown (or
    /// a failure that stops the processor).
    pub fn run(&mut self, consumer: &BaseConsumer<SourceContext>) {
        let mut last_commit = Instant::now();
        let mut last_flow = Instant::now();
        while !self.shutdown.is_triggered() {
            let polled = consumer.poll(POLL_TIMEOUT);
            // Changes recorded during that poll come first: a message is
            // judged by the assignment it was fetched under.
            self.apply_changes(consumer);
            match polled {
                Some(Ok(message)) => {
                    let record = Record {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().map(<[u8]>::to_vec),
                        received: quanta::Instant::now(),
                    };
                    drop(message);
                    if !self.take(record) {
                        break;
                    }
                }
                Some(Err(error)) => {
                    telemetry::kafka_error(super::error_kind(&error), &error.to_string())
                }
                None => {}
            }
            if !self.adopt_restored() {
                break;
            }
            self.hand_over(consumer);
            // The bound is checked after every record, so it is overshot by
            // at most what the shard queues already hold.
            let over = !self.flow.over_bound()
                && self.tracker.pending_outputs() > self.max_outputs_in_flight;
            if over || last_flow.elapsed() >= FLOW_INTERVAL {
                self.update_flow(consumer);
                last_flow = Instant::now();
            }
            if last_commit.elapsed() >= self.commit_interval {
                if !self.transactional() {
                    self.store_offsets(consumer);
                } else if !self.commit_transaction(consumer, Next::Begin) {
                    break;
                }
                last_commit = Instant::now();
            }
        }
    }

    /// Dispatches `record` if its partition is owned. False if the loop
    /// must stop (shutdown, or a record that must not be decided here).
    fn take(&mut self, record: Record) -> bool {
        let (partition, offset) = (record.partition, record.offset);
        match self.ownership.verdict(partition) {
            Verdict::Dispatch => {
                if !self.dispatch(partition, Work::Record(record)) {
                    return false;
                }
                // Only records a shard got: commits wait for every one.
                self.dispatched.insert(partition, offset);
                true
            }
            // Fetched before a revoke paused it (or before an unassign):
            // its owner reads it from the committed offset.
            Verdict::Drop => true,
            Verdict::Refuse => {
                self.shutdown
                    .fail(Fatal::RecordWithoutState { partition, offset });
                false
            }
        }
    }

    /// Applies what the rebalance callback recorded.
    fn apply_changes(&mut self, consumer: &BaseConsumer<SourceContext>) {
        let changes = consumer.context().take_changes();
        if changes.is_empty() {
            return;
        }
        for change in changes {
            match change {
                Change::Assigned(partitions) => {
                    tracing::info!(?partitions, "partitions assigned; restoring their state");
                    self.flow.paused_by_consumer(&partitions);
                    self.restore(&partitions);
                }
                Change::Revoked(partitions) => {
                    tracing::info!(
                        ?partitions,
                        "partitions revoked; handing them over once what was dispatched for \
                         them is acknowledged"
                    );
                    self.flow.paused_by_consumer(&partitions);
                    self.ownership.revoke(&partitions);
                    if self.transactional() {
                        // Everything dispatched, of every partition, commits
                        // now, with the generation that still owns the
                        // revoked ones. On failure the processor stops.
                        self.commit_transaction(consumer, Next::Begin);
                    }
                }
                Change::Lost(partitions) => {
                    tracing::warn!(
                        ?partitions,
                        "partitions lost: the group gave them to another member (a session \
                         timeout); outputs still in flight for them may land after the next \
                         owner restored them (see docs/architecture.md, a zombie owner)"
                    );
                    self.flow.unassigned(&partitions);
                    let owned = self.ownership.lose(&partitions);
                    if self.transactional() {
                        // Fenced if the group moved on: the commit fails and
                        // the processor stops (see `transaction`).
                        self.commit_transaction(consumer, Next::Begin);
                    }
                    // Undelivered outputs stay tracked: if a partition comes
                    // back, its restore waits for them (see `recovery`).
                    for partition in owned {
                        self.dispatched.remove(&partition);
                        self.release(partition);
                    }
                }
            }
        }
        // A restore none of whose partitions is wanted any more stops.
        for job in self.ownership.unwanted_jobs() {
            if let Some(cancel) = self.cancels.remove(&job) {
                cancel.trigger();
            }
        }
        self.report_partitions();
        self.update_flow(consumer);
    }

    /// Starts restoring `partitions`, assigned and paused: a job waits for
    /// what their shards are still giving back, then reads their state.
    fn restore(&mut self, partitions: &[i32]) {
        let Some(job) = self.ownership.assign(partitions) else {
            return;
        };
        let released = partitions
            .iter()
            .filter_map(|p| self.releasing.remove(p))
            .collect();
        let cancel = Shutdown::new();
        self.cancels.insert(job.id, cancel.clone());
        self.restores.submit(RestoreJob {
            id: job.id,
            partitions: job.partitions,
            released,
            cancel,
        });
    }

    /// After a transaction the group refused (a rebalance raced its
    /// commit) was aborted: every partition still owned is decided again
    /// from its committed offset. Paused, its shard gives back what its
    /// book holds, its position is moved to the committed offset, and its
    /// state is restored from the committed statuses, as after a new
    /// assignment. Partitions being handed over are handed over with
    /// nothing more committed: their next owner starts from the same
    /// committed offset. False, with the processor stopping, if the
    /// committed offsets cannot be read or sought.
    fn rewind(&mut self, consumer: &BaseConsumer<SourceContext>, cause: &str) -> bool {
        let owned = self.ownership.owned();
        tracing::warn!(
            partitions = ?owned,
            %cause,
            "a rebalance raced the transaction's commit, and it was aborted: the partitions \
             still owned are decided again from their committed offsets"
        );
        telemetry::kafka_error(KafkaErrorKind::Transaction, cause);
        // What partitions being handed over decided was aborted too: no
        // later transaction may commit their offsets past it.
        let revoking: Vec<i32> = self.ownership.revoking().collect();
        for partition in revoking {
            self.dispatched.remove(&partition);
            self.tracker.forget(partition);
        }
        if owned.is_empty() {
            return true;
        }
        let tpl = self.list(&owned);
        // Pausing and seeking both discard what was fetched before them.
        if let Err(error) = consumer.pause(&tpl) {
            telemetry::kafka_error(KafkaErrorKind::Client, &error.to_string());
        }
        self.flow.paused_by_consumer(&owned);
        let sought = self
            .committed_positions(consumer, &tpl)
            .map_err(|e| format!("reading the committed offsets: {e}"))
            .and_then(|positions| {
                let sought = consumer
                    .seek_partitions(positions, REWIND_TIMEOUT)
                    .map_err(|e| format!("seeking to the committed offsets: {e}"))?;
                match sought.elements().iter().find_map(|e| e.error().err()) {
                    Some(e) => Err(format!("seeking to the committed offsets: {e}")),
                    None => Ok(()),
                }
            });
        if let Err(error) = sought {
            self.shutdown.fail(TransactionError::Aborted {
                cause: format!("{cause}; then {error}"),
            });
            return false;
        }
        self.ownership.lose(&owned);
        for partition in &owned {
            self.dispatched.remove(partition);
            self.tracker.forget(*partition);
            self.release(*partition);
        }
        self.restore(&owned);
        self.report_partitions();
        true
    }

    /// The committed offset of each of `tpl`'s partitions, or where the
    /// group starts without one (`kafka.auto_offset_reset`).
    fn committed_positions(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        tpl: &TopicPartitionList,
    ) -> Result<TopicPartitionList, KafkaError> {
        let positions = consumer.committed_offsets(tpl.clone(), REWIND_TIMEOUT)?;
        for mut element in positions.elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                element.set_offset(self.start_without_commit)?;
            }
        }
        Ok(positions)
    }

    fn report_partitions(&self) {
        telemetry::partitions_assigned(self.ownership.assigned(), self.ownership.restoring());
    }

    /// Hands restored books to their shards (the partitions are owned
    /// from then on); gives back what books of partitions revoked or lost
    /// meanwhile took. False if shutdown came first.
    fn adopt_restored(&mut self) -> bool {
        for (job, books) in self.restores.finished() {
            self.cancels.remove(&job);
            // `None`: cancelled (it gave back what it took), or shutdown
            // came first; partitions still waiting for it stay restoring.
            let Some(mut books) = books else {
                self.ownership.abandon(job);
                continue;
            };
            let done = self.ownership.restored(job);
            give_back(
                &self.inventory,
                done.give_back.iter().filter_map(|p| books.get(p)),
            );
            for partition in done.adopt {
                // Its earlier outputs are acknowledged (the restore waited
                // for them): offsets start over from the committed one.
                self.tracker.forget(partition);
                self.dispatched.remove(&partition);
                let Some(book) = books.remove(&partition) else {
                    continue; // the restore returns a book for every partition
                };
                if !self.dispatch(
                    partition,
                    Work::Adopt {
                        partition,
                        book: Box::new(book),
                    },
                ) {
                    return false;
                }
            }
            self.report_partitions();
        }
        true
    }

    /// Hands over every pending revoke whose partitions are settled:
    /// commits their offsets, has their shards give back what they held,
    /// and unassigns them.
    fn hand_over(&mut self, consumer: &BaseConsumer<SourceContext>) {
        loop {
            let (dispatched, tracker) = (&self.dispatched, &self.tracker);
            // Decided and acknowledged, and no output of an earlier
            // ownership (a partition lost, then assigned again) in flight.
            let settled = |partitions: &[i32]| {
                drained(dispatched, tracker, partitions)
                    && partitions.iter().all(|p| tracker.waiting_outputs(*p) == 0)
            };
            let Some(revoke) = self.ownership.handed_over(settled) else {
                return;
            };
            // With transactions their offsets were committed at the revoke.
            if !self.transactional() {
                let tpl = self.committable(Some(&revoke.partitions));
                if tpl.count() > 0 {
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                        telemetry::kafka_error(KafkaErrorKind::Commit, &e.to_string());
                    }
                }
            }
            for partition in &revoke.partitions {
                self.dispatched.remove(partition);
                self.tracker.forget(*partition);
                self.release(*partition);
            }
            self.unassign(consumer, &revoke.partitions);
            tracing::info!(partitions = ?revoke.partitions, "partitions handed over");
            self.report_partitions();
        }
    }

    /// Has the shard of `partition` give back what its book holds; a
    /// restore of the partition waits for the answer.
    fn release(&mut self, partition: i32) {
        let (done, released) = crossbeam_channel::bounded(1);
        if self.dispatch(partition, Work::Release { partition, done }) {
            self.releasing.insert(partition, released);
        }
    }

    fn unassign(&mut self, consumer: &BaseConsumer<SourceContext>, partitions: &[i32]) {
        unassign(consumer, &self.list(partitions));
        self.flow.unassigned(partitions);
    }

    /// Pauses and resumes what [`Flow`] says, and sets readiness.
    fn update_flow(&mut self, consumer: &BaseConsumer<SourceContext>) {
        let was_over = self.flow.over_bound();
        let change = self
            .flow
            .update(&self.ownership, self.tracker.pending_outputs());
        if self.flow.over_bound() != was_over {
            if was_over {
                tracing::info!("outputs in flight back under their bound: consuming again");
            } else {
                tracing::warn!(
                    pending = self.tracker.pending_outputs(),
                    "outputs in flight over their bound (the output brokers are slow or down): \
                     paused until they are acknowledged"
                );
            }
        }
        if !change.pause.is_empty() {
            if let Err(e) = consumer.pause(&self.list(&change.pause)) {
                // Partitions unassigned a moment ago cannot be paused.
                tracing::debug!(error = %e, "pausing");
            }
        }
        if !change.resume.is_empty() {
            if let Err(e) = consumer.resume(&self.list(&change.resume)) {
                tracing::debug!(error = %e, "resuming");
            }
        }
        match change.ready {
            Some(false) => {
                tracing::error!(
                    owned = self.ownership.assigned(),
                    partitions = self.partitions,
                    "another instance shares the consumer group, and engine.stock_split = \
                     \"whole\" lets every instance sell the whole stock: paused so nothing is \
                     oversold; run one instance, or set engine.stock_split = \"partition\" on \
                     all of them"
                );
                self.readiness
                    .set_not_ready("paused: another instance shares the whole stock");
            }
            Some(true) => self.readiness.set_ready(),
            None => {}
        }
    }

    fn list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            tpl.add_partition(&self.topic, *partition);
        }
        tpl
    }

    /// Hands work to the shard of `partition`, waiting while its queue is
    /// full. False if shutdown came first or the shard stopped.
    fn dispatch(&self, partition: i32, work: Work) -> bool {
        if self.shards.is_empty() {
            return false;
        }
        let shard = &self.shards[partition as usize % self.shards.len()];
        dispatch(shard, work, &self.shutdown)
    }

    /// Transactional mode: waits until every dispatched record is decided
    /// and all outputs are acknowledged, then commits the transaction with
    /// the consumed offsets and begins the next (unless `next` is
    /// `Finish`). A commit the group refused because a rebalance raced it
    /// rewinds the partitions still owned ([`Source::rewind`]); any other
    /// failure aborts it and stops the processor (see [`Shutdown::fail`]);
    /// returns false then (and after any failure).
    pub fn commit_transaction(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        next: Next,
    ) -> bool {
        let Some(transactions) = &self.transactions else {
            return true;
        };
        if !transactions.is_open() {
            return true; // finished at shutdown, or failed before
        }
        if let Err(cause) = self.settle(transactions) {
            self.shutdown.fail(transactions.abort(&cause));
            return false;
        }
        let offsets = self.committable(None);
        let committed: Result<(), TransactionError> =
            transactions.commit(&offsets, consumer.group_metadata().as_ref(), next);
        match committed {
            Ok(()) => true,
            Err(TransactionError::Rebalanced { cause }) if next == Next::Finish => {
                tracing::warn!(
                    %cause,
                    "a rebalance raced the last transaction's commit at shutdown, and it was \
                     aborted: the next owner decides its records from the committed offsets"
                );
                telemetry::kafka_error(KafkaErrorKind::Transaction, &cause);
                true
            }
            Err(TransactionError::Rebalanced { cause }) => self.rewind(consumer, &cause),
            Err(error) => {
                self.shutdown.fail(error);
                false
            }
        }
    }

    /// Waits until every dispatched record is decided and every output of
    /// the transaction acknowledged, or says why it cannot be committed.
    fn settle(&self, transactions: &Transactions) -> Result<(), String> {
        let deadline = Instant::now() + transactions.timeout();
        let partitions: Vec<i32> = self.dispatched.keys().copied().collect();
        loop {
            if transactions.doomed() {
                return Err(transactions.doom_reason());
            }
            if drained(&self.dispatched, &self.tracker, &partitions)
                && self.tracker.pending_outputs() == 0
            {
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

    /// Offsets safe to commit for the given partitions (all known if `None`).
    fn committable(&self, only: Option<&[i32]>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for partition in self.dispatched.keys() {
            if only.is_some_and(|only| !only.contains(partition)) {
                continue;
            }
            if let Some(offset) = self.tracker.committable(*partition) {
                let _ = tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(offset));
            }
        }
        tpl
    }

    /// Stores committable offsets of every partition; librdkafka commits them.
    fn store_offsets(&self, consumer: &BaseConsumer<SourceContext>) {
        let tpl = self.committable(None);
        if tpl.count() > 0 {
            if let Err(e) = consumer.store_offsets(&tpl) {
                // Partitions unassigned a moment ago can no longer be stored.
                tracing::debug!(error = %e, "storing offsets");
            }
        }
    }

    /// Shutdown, first step: no more work for the shards (each finishes
    /// what it has and stops), and no more restores.
    pub fn close(&mut self) {
        self.shards.clear();
        self.restores.stop();
    }

    /// Shutdown, last step, after the shards finished and outputs were
    /// flushed: commits the offsets of delivered work (inside the last
    /// transaction, with transactions), then hands over what is still
    /// being revoked, so the consumer can close.
    pub fn finish(&mut self, consumer: &BaseConsumer<SourceContext>) {
        if self.transactional() {
            // The last transaction: waits for every output, commits the
            // offsets with it, and begins none (a failure stops the
            // processor with an error).
            self.commit_transaction(consumer, Next::Finish);
        } else {
            let tpl = self.committable(None);
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    telemetry::kafka_error(KafkaErrorKind::Commit, &e.to_string());
                }
            }
        }
        for revoke in self.ownership.hand_over_all() {
            self.unassign(consumer, &revoke.partitions);
        }
    }
}

/// Whether every dispatched record of `partitions` is decided and its
/// outputs acknowledged.
fn drained(dispatched: &HashMap<i32, i64>, tracker: &OffsetTracker, partitions: &[i32]) -> bool {
    partitions.iter().all(|p| match dispatched.get(p) {
        Some(last) => tracker.committable(*p).is_some_and(|next| next > *last),
        None => true,
    })
}

/// Sends work to a shard, waiting while the queue is full. Returns false if
/// shutdown came first (a record is then not committed) or the shard
/// stopped.
fn dispatch(shard: &Sender<Work>, mut work: Work, shutdown: &Shutdown) -> bool {
    loop {
        match shard.send_timeout(work, DISPATCH_RETRY) {
            Ok(()) => return true,
            Err(SendTimeoutError::Timeout(back)) if !shutdown.is_triggered() => work = back,
            Err(_) => return false,
        }
    }
}
