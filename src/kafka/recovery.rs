//! Restoring a partition's state when this process takes it over: at start
//! and at every rebalance that assigns it a partition, before any of that
//! partition's records is decided.
//!
//! Restores run on a thread of their own ([`RestoreWorker`]): the rebalance
//! callback only hands the assigned partitions over (paused), and the
//! consumer goes on deciding its other partitions meanwhile; it resumes the
//! new ones once their books are with their shards (see `source`).
//!
//! Every change of an order writes the order's new record to the
//! partition of the state topic (compacted by order ID) with the same
//! number as its order's partition of `orders` (see `worker`), so the
//! state of orders partition `p` is state partition `p` read from the
//! beginning: each record rebuilds `p`'s order book and puts back in the
//! inventory what `p`'s orders hold (see the `state` module), each order
//! keeping its newest record by version. Compaction keeps that read to
//! about one record per order, however many changes the sale made.
//!
//! A status carries the same record in its header. With transactions a
//! status and its state copy commit together, and the state topic is all
//! a restore reads. Without them, the copy follows the status's
//! acknowledgement, and a crash in between leaves a status whose copy
//! never went; so a restore first reads status partition `p` whole.
//!
//! With the local stores on (`engine.store_dir`, see `cold`), a partition
//! whose store is on this machine starts from it: the store's records
//! rebuild the book and the reservations, and the state topic is read
//! only from the store's checkpoint on, each record read written to the
//! store, which then vouches for the changelog up to its end.

use super::catch_up::{partitions_of, read_from, read_to_end};
use super::tracker::OffsetTracker;
use super::{Reader, ReaderContext, StartError, METADATA_TIMEOUT};
use crate::cold::{Committed, Kept, OpenStore, Stores, WRITE_BATCH};
use crate::config::Config;
use crate::engine::{self, OrderBook};
use crate::inventory::Inventory;
use crate::shutdown::Shutdown;
use crate::state::{self, Restorer};
use crate::telemetry::{self, KafkaErrorKind};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// First wait before trying a failed restore again; doubles up to the max.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(200);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the restore worker looks at this process's earlier outputs,
/// and for shutdown while it has no job.
const WAIT_POLL: Duration = Duration::from_millis(5);
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Restored books, by partition.
pub type Books = HashMap<i32, OrderBook>;

/// The local stores a restore opened, by partition.
type Stored = HashMap<i32, Arc<OpenStore>>;

/// Gives back to the inventory what restored `books` took, when they will
/// not be used (a failed attempt, or partitions revoked while restoring).
/// Exact for units, also for orders the books' windows have forgotten
/// (they count what their orders hold, see `OrderBook::sold`).
pub fn give_back<'a>(inventory: &Inventory, books: impl IntoIterator<Item = &'a OrderBook>) {
    for book in books {
        engine::forget(inventory, book);
    }
}

/// Restores partitions from the status and state topics, with its own
/// reader.
pub struct Recovery {
    reader: Reader,
    topic: String,
    /// Order records written after changes without a status (Part 2).
    state_topic: String,
    brokers: String,
    inventory: Arc<Inventory>,
    capacity: usize,
    /// Partitions of `orders` when each sells only its quota.
    quota_of: Option<u32>,
    /// The partitions' local stores, which restored books keep their
    /// orders in and restores start from (`None`: books forget orders
    /// past `capacity`, and restores read the changelog whole).
    stores: Option<Arc<Stores>>,
    /// Whether a restore reads the status topic before the state topic.
    /// Without transactions it must: a status acknowledged just before a
    /// crash may lack its state copy. With them, a status and its copy
    /// commit together, so the compacted state topic alone holds every
    /// order's newest record.
    statuses: bool,
    /// `engine.restore_statuses`: the status topic is read in any case.
    statuses_always: bool,
}

impl Recovery {
    /// `stores`: the partitions' local stores (`None`: off), shared with
    /// the sink that feeds them.
    pub fn new(
        config: &Config,
        inventory: Arc<Inventory>,
        stores: Option<Arc<Stores>>,
    ) -> Result<Self, StartError> {
        let group = format!("{}-restore", config.kafka.group_id);
        Ok(Recovery {
            reader: super::reader_config(&config.kafka, &group)
                .create_with_context(ReaderContext)?,
            topic: config.topics.status.clone(),
            state_topic: config.topics.state.clone(),
            brokers: config.kafka.brokers.clone(),
            inventory,
            capacity: config.engine.dedup_window_orders,
            quota_of: None,
            stores,
            statuses: true,
            statuses_always: config.engine.restore_statuses,
        })
    }

    /// Restores from the state topic alone (unless `engine.restore_statuses`
    /// says otherwise): every status was committed in the transaction of
    /// its state copy.
    pub fn with_transactions(mut self, transactional: bool) -> Self {
        self.statuses = !transactional || self.statuses_always;
        self
    }

    /// Restores books that sell only their quota of `partitions`.
    pub fn with_quotas(mut self, partitions: u32) -> Self {
        self.quota_of = Some(partitions);
        self
    }

    /// Partition count of `topic`.
    pub fn partition_count(&self, topic: &str) -> Result<usize, StartError> {
        Ok(partitions_of(&self.reader, topic, &self.brokers)?.len())
    }

    /// Rebuilds the books of `partitions` and takes what their orders hold
    /// in the inventory. A broker that does not answer is tried again, with
    /// backoff, until it does or `stop` says so (then `None`, and what the
    /// attempt took is given back): deciding a partition without its state
    /// could decide an order twice.
    pub fn restore(&self, partitions: &[i32], stop: &dyn Fn() -> bool) -> Option<Books> {
        let mut backoff = RETRY_BACKOFF_MIN;
        while !stop() {
            let started = Instant::now();
            let attempt = self.open_stores(partitions).map(|opened| {
                let mut restorer = Restorer::new(&self.inventory, self.capacity, self.quota_of);
                if let Some(stores) = &self.stores {
                    let opened = opened.clone();
                    restorer = restorer.with_cold(Box::new(move |partition| {
                        stores.cold(partition, opened.get(&partition).cloned())
                    }));
                }
                // Each book with its store's tier from the start.
                for partition in partitions {
                    restorer.ensure_book(*partition);
                }
                let read = self.read(partitions, &opened, &mut restorer, stop);
                (restorer, read, opened)
            });
            let (restorer, read, opened) = match attempt {
                Ok(attempt) => attempt,
                Err(error) => (
                    Restorer::new(&self.inventory, self.capacity, self.quota_of),
                    Err(error),
                    Stored::new(),
                ),
            };
            match read {
                Ok(read) if !stop() => {
                    if let Some(stores) = &self.stores {
                        for store in opened.values() {
                            stores.feed(store);
                        }
                    }
                    telemetry::orders_recovered(
                        partitions,
                        restorer.applied,
                        read,
                        started.elapsed(),
                    );
                    return Some(restorer.finish(partitions));
                }
                Ok(_) => {
                    give_back(&self.inventory, restorer.finish(&[]).values());
                    return None;
                }
                Err(error) => {
                    // What this attempt took goes back before the next one.
                    give_back(&self.inventory, restorer.finish(&[]).values());
                    telemetry::kafka_error(KafkaErrorKind::Restore, &error.to_string());
                    tracing::warn!(?partitions, %error, retry_in_ms = backoff.as_millis() as u64,
                        "restoring partition state failed; trying again");
                    sleep_unless(backoff, stop);
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
        None
    }

    /// The local stores of `partitions`, open (none without stores).
    fn open_stores(&self, partitions: &[i32]) -> Result<Stored, StartError> {
        let Some(stores) = &self.stores else {
            return Ok(Stored::new());
        };
        partitions
            .iter()
            .map(|partition| {
                stores
                    .open(*partition)
                    .map(|store| (*partition, store))
                    .map_err(StartError::Store)
            })
            .collect()
    }

    /// Where each partition's read of the state topic starts: its store's
    /// checkpoint, after the store's records were applied; else 0. A
    /// checkpoint past the partition's end (the topic was made again) or a
    /// store that cannot be read empties the store.
    fn apply_stores(
        &self,
        partitions: &[i32],
        opened: &Stored,
        restorer: &mut Restorer<'_>,
    ) -> Result<(Vec<(i32, i64)>, u64), StartError> {
        let mut starts = Vec::with_capacity(partitions.len());
        let mut local = 0;
        // A store copies one cluster's changelog partition: a store of
        // another (its directory moved, the brokers set up anew) would
        // answer for orders this one never saw.
        let cluster = match opened.is_empty() {
            true => String::new(),
            false => self
                .reader
                .client()
                .fetch_cluster_id(METADATA_TIMEOUT)
                .unwrap_or_default(),
        };
        for partition in partitions {
            let Some(store) = opened.get(partition) else {
                starts.push((*partition, 0));
                continue;
            };
            let identity = format!("{cluster}/{}/{partition}", self.state_topic);
            if store.claim(&identity).map_err(StartError::Store)? {
                tracing::warn!(
                    partition,
                    "the order store copied another cluster's or topic's changelog: emptied"
                );
            }
            let Some(checkpoint) = store.checkpoint() else {
                starts.push((*partition, 0));
                continue;
            };
            let (_, high) =
                self.reader
                    .fetch_watermarks(&self.state_topic, *partition, METADATA_TIMEOUT)?;
            if checkpoint > high {
                tracing::warn!(
                    partition,
                    checkpoint,
                    end = high,
                    "the order store is ahead of the changelog (made again?): emptied"
                );
                store.reset().map_err(StartError::Store)?;
                starts.push((*partition, 0));
                continue;
            }
            // The scan holds the store; the books are empty before it, and
            // what they adopt is the store's already, so nothing is handed
            // to the store's writer meanwhile (see `OrderBook::adopt`).
            let scanned = store.scan(|kept| match kept {
                Kept::Order(order_id, entry) if entry.partition == *partition => {
                    restorer.apply_stored(order_id, entry)
                }
                Kept::Retired(sku, retired) if retired.partition == *partition => {
                    restorer.apply_retired(sku, retired)
                }
                _ => {}
            });
            match scanned {
                Ok(scanned) => {
                    local += scanned;
                    starts.push((*partition, checkpoint));
                }
                // Before anything was decided: the attempt is given back
                // and tried again, from an emptied store.
                Err(error) => {
                    store.reset().map_err(StartError::Store)?;
                    return Err(StartError::Store(error));
                }
            }
        }
        Ok((starts, local))
    }

    fn read(
        &self,
        partitions: &[i32],
        opened: &Stored,
        restorer: &mut Restorer<'_>,
        stop: &dyn Fn() -> bool,
    ) -> Result<(u64, u64), StartError> {
        // First the local stores (they hold one record per order, so the
        // restorer looks nothing up), then what came after them.
        let (starts, local) = self.apply_stores(partitions, opened, restorer)?;
        let mut read = 0;
        if self.statuses {
            read += self.read_statuses(partitions, restorer, stop)?;
        }
        // Then the order records of the state topic (every change's, since
        // statuses got copies; before, only those without a status): the
        // restorer keeps each order's newest record by its version,
        // whichever topic it came from. Each record read goes to the
        // partition's store, with the checkpoint after it.
        let mut unreadable = 0u64;
        let mut pending: HashMap<i32, Vec<(Committed, Option<u64>)>> = HashMap::new();
        let mut failed = None;
        let (state_read, ends) =
            read_from(&self.reader, &self.state_topic, &starts, stop, |message| {
                let partition = message.partition();
                let keep = apply_state_record(
                    restorer,
                    partitions,
                    partition,
                    message.key(),
                    message.payload(),
                );
                let version = match keep {
                    Keep::Order(version) => Some(version),
                    Keep::Other => None,
                    Keep::Nothing => return,
                    Keep::Unreadable => {
                        unreadable += 1;
                        return;
                    }
                };
                let Some(store) = opened.get(&partition) else {
                    return;
                };
                let batch = pending.entry(partition).or_default();
                batch.push((
                    Committed {
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                        key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
                        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    },
                    version,
                ));
                if batch.len() >= WRITE_BATCH {
                    if let Err(error) = write_read(store, batch, message.offset() + 1, restorer) {
                        failed.get_or_insert(error);
                    }
                    batch.clear();
                }
            })?;
        read += state_read;
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "order-state records that could not be read were skipped"
            );
        }
        if !stop() {
            // Read to the end: each store now vouches for its partition's
            // changelog up to there.
            for (partition, store) in opened {
                let batch = pending.remove(partition).unwrap_or_default();
                let end = ends.get(partition).copied().unwrap_or(0);
                let written =
                    write_read(store, &batch, end, restorer).and_then(|()| store.persist());
                if let Err(error) = written {
                    failed.get_or_insert(error);
                }
            }
        }
        if let Some(error) = failed {
            return Err(StartError::Store(error));
        }
        Ok((read, local))
    }

    /// Applies each status's changelog header; returns the records read.
    fn read_statuses(
        &self,
        partitions: &[i32],
        restorer: &mut Restorer<'_>,
        stop: &dyn Fn() -> bool,
    ) -> Result<u64, StartError> {
        let mut unreadable = 0u64;
        let read = read_to_end(
            &self.reader,
            &self.topic,
            Some(partitions),
            &self.brokers,
            stop,
            |message| {
                let entry = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == state::HEADER))
                    .and_then(|h| h.value)
                    .map(state::decode);
                match (
                    message.key().and_then(|k| std::str::from_utf8(k).ok()),
                    entry,
                ) {
                    // A status of another orders partition (written before
                    // statuses followed their order's partition) is not ours.
                    (Some(order_id), Some(Ok(entry))) if partitions.contains(&entry.partition) => {
                        restorer.apply(order_id, entry)
                    }
                    (Some(_), Some(Ok(_))) => {}
                    _ => unreadable += 1,
                }
            },
        )?;
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "status records without a readable state header were skipped"
            );
        }
        Ok(read)
    }
}

/// What a partition's store keeps of a record of its changelog.
enum Keep {
    /// An order's record, at this version.
    Order(u64),
    /// A record that is no order's: a tombstone, a SKU's retired units.
    Other,
    /// Nothing: another partition's record.
    Nothing,
    /// Nothing: a record this version cannot read.
    Unreadable,
}

/// Applies one record of the state topic's `partition` (if it is one of
/// `partitions`): an order's record, its tombstone (retention retired it),
/// or a SKU's retired units.
fn apply_state_record(
    restorer: &mut Restorer<'_>,
    partitions: &[i32],
    partition: i32,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Keep {
    let Some(key) = key else {
        return Keep::Unreadable;
    };
    let ours = partitions.contains(&partition);
    if let Some(sku) = state::retired_sku(key) {
        let retired = payload.map(state::decode_retired);
        let (Ok(sku), Some(Ok(retired))) = (sku, retired) else {
            return Keep::Unreadable;
        };
        if retired.partition != partition {
            return Keep::Nothing;
        }
        if ours {
            restorer.apply_retired(sku, retired);
        }
        return Keep::Other;
    }
    let Ok(order_id) = std::str::from_utf8(key) else {
        return Keep::Unreadable;
    };
    let Some(payload) = payload else {
        if ours {
            restorer.apply_tombstone(partition, order_id);
        }
        return Keep::Other;
    };
    let Ok(entry) = state::decode(payload) else {
        return Keep::Unreadable;
    };
    let version = entry.record.version;
    let same = entry.partition == partition;
    if partitions.contains(&entry.partition) {
        restorer.apply(order_id, entry);
    }
    match same {
        true => Keep::Order(version),
        false => Keep::Nothing,
    }
}

/// Writes changelog records a restore read (and applied) to their
/// partition's store with the checkpoint `next`; the book then need not
/// hand them over again when they leave memory.
fn write_read(
    store: &OpenStore,
    batch: &[(Committed, Option<u64>)],
    next: i64,
    restorer: &mut Restorer<'_>,
) -> Result<(), String> {
    let copies: Vec<Committed> = batch.iter().map(|(copy, _)| copy.clone()).collect();
    store.commit(&copies, next)?;
    for (copy, version) in batch {
        if let (Some(version), Ok(order_id)) = (version, std::str::from_utf8(&copy.key)) {
            restorer.stored(store.partition(), order_id, *version);
        }
    }
    Ok(())
}

/// A restore to run in the background.
#[derive(Debug)]
pub struct RestoreJob {
    pub id: u64,
    pub partitions: Vec<i32>,
    /// Shards still giving back what some of these partitions held before
    /// (revoked and assigned again right after): the restore waits for
    /// them, or the inventory would count those holdings twice for a while
    /// and refuse units it has.
    pub released: Vec<Receiver<()>>,
    /// Triggered when none of the partitions is wanted any more (revoked
    /// or lost while restoring): the job stops and gives back what it took.
    pub cancel: Shutdown,
}

/// The thread that restores partitions, one job after the other.
pub struct RestoreWorker {
    jobs: Option<Sender<RestoreJob>>,
    results: Receiver<(u64, Option<Books>)>,
    thread: Option<JoinHandle<()>>,
}

impl RestoreWorker {
    /// Starts the thread. A job's result is `None` when it was cancelled or
    /// shutdown came first.
    pub fn start(recovery: Recovery, tracker: Arc<OffsetTracker>, shutdown: Shutdown) -> Self {
        let (jobs_tx, jobs) = crossbeam_channel::unbounded::<RestoreJob>();
        let (results_tx, results) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("restore".into())
            .spawn(move || loop {
                let job = match jobs.recv_timeout(IDLE_POLL) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) if !shutdown.is_triggered() => continue,
                    Err(_) => return,
                };
                let books = restore_job(&recovery, &tracker, &job, &shutdown);
                if results_tx.send((job.id, books)).is_err() {
                    return;
                }
            })
            .expect("spawning a thread");
        RestoreWorker {
            jobs: Some(jobs_tx),
            results,
            thread: Some(thread),
        }
    }

    pub fn submit(&self, job: RestoreJob) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Jobs finished since the last call, with their books.
    pub fn finished(&self) -> Vec<(u64, Option<Books>)> {
        self.results.try_iter().collect()
    }

    /// Ends the thread (after shutdown was triggered, a running job stops).
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One job: waits for what it must, then restores.
fn restore_job(
    recovery: &Recovery,
    tracker: &OffsetTracker,
    job: &RestoreJob,
    shutdown: &Shutdown,
) -> Option<Books> {
    for released in &job.released {
        // A shard answers once its queue before the release is done; one
        // that stopped dropped its sender (an error here).
        let _ = released.recv();
    }
    // Outputs this process sent for a partition before it lost it (a
    // session that timed out during a broker outage, say) may still be on
    // their way: the restore must see them, or it would decide their
    // records again. So it first waits until they are acknowledged.
    let stop = || shutdown.is_triggered() || job.cancel.is_triggered();
    let mut logged = false;
    while job
        .partitions
        .iter()
        .any(|p| tracker.waiting_outputs(*p) > 0)
    {
        if stop() {
            return None;
        }
        if !logged {
            tracing::info!(
                partitions = ?job.partitions,
                "waiting for this process's earlier outputs before restoring"
            );
            logged = true;
        }
        std::thread::sleep(WAIT_POLL);
    }
    recovery.restore(&job.partitions, &stop)
}

/// Sleeps for `duration`, or less if `stop` says so first.
fn sleep_unless(duration: Duration, stop: &dyn Fn() -> bool) {
    let deadline = Instant::now() + duration;
    while !stop() && Instant::now() < deadline {
        std::thread::sleep(WAIT_POLL.max(Duration::from_millis(20)).min(duration));
    }
}
