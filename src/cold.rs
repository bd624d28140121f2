//! Each partition's local order store (crate `orderflow-store`, fjall):
//! every order's committed record on disk, in front of which the
//! partition's in-memory book is a bounded cache (`engine.dedup_window_orders`).
//!
//! **What the store holds.** A store is the partition's changelog
//! (`order-state`) as far as its checkpoint says: every record committed
//! there, each order's newest, and the offset after the last one. It is
//! written from two sides, both of committed records only: a restore
//! writes the changelog records it reads, and while the partition is
//! owned the sink hands over each copy once its transaction commits (its
//! delivery, without transactions; see `kafka::sink`), which the store's
//! writer thread writes with the checkpoint after it. So a crash or an
//! aborted transaction never leaves a record in the store that Kafka does
//! not have: the store is a cache that can be thrown away, and Kafka stays
//! the source of truth.
//!
//! **Restoring from it.** A partition that stays on a machine opens its
//! store again: its records rebuild the book and the reservations, and
//! only the changelog after the checkpoint is read from Kafka (see
//! `kafka::recovery`). A store that is missing, unreadable, or ahead of
//! the changelog (the topic was made again) is emptied and filled from
//! the changelog's beginning. Writes are not fsynced one by one: each
//! carries its checkpoint in the same atomic batch, and fjall's journal
//! replays a prefix of them after a crash, so the checkpoint that survives
//! vouches for the records that survive; the writer makes them durable
//! every [`PERSIST_INTERVAL`].
//!
//! **Orders out of memory.** An order leaving the window before its copy
//! is committed is kept in the store's `spilled` part (emptied at every
//! open, so never vouched for) and found there; until the writer has
//! written it, among those handed over. The decision path only hands the
//! shared record over: nothing is copied or encoded there.
//!
//! A store is one directory per partition under `engine.store_dir`, in a
//! directory named after the consumer group and the changelog topic.
//! fjall locks it: a second process on the machine that takes the
//! partition while the first still has it open uses a scratch store of its
//! own instead, filled from the changelog and deleted when it closes.
//!
//! A store that fails (disk full, I/O error, a record that does not
//! decode) is reported through [`ColdOrders::failure`]: the shard stops
//! the processor before the outputs of the record that met it leave.

use crate::engine::{ColdOrders, OrderRecord};
use crate::lifecycle::Millis;
use crate::state;
use crossbeam_channel::{Receiver, Sender};
use orderflow_store::{Checkpoint, Memory, PartitionStore, Put, StoreError};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Records written to the store together, at most: the writer takes what
/// has been handed over, up to this many, per write batch (one fjall
/// journal append).
pub const WRITE_BATCH: usize = 256;
/// The retention of [`Stores::new`]'s stores: contract Part 2's default
/// `lifecycle.retention_days` (90). Each stored record's expiry counts
/// from its changelog record's timestamp (the order's last change).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// Record times before this (2020-01-01T00:00:00Z) are no order's change
/// (librdkafka's mock cluster stamps every record 1234 ms after the
/// epoch): such a record's retention counts from when it is written.
const EARLIEST_CHANGE_MS: i64 = 1_577_836_800_000;
/// The least first layer of a store's Bloom filter, in orders.
const MIN_EXPECTED_ORDERS: usize = 1 << 14;
/// fjall's memory per store: what a book reads back is rare (duplicates,
/// late cancellations, lifecycle inputs of old orders), so a small block
/// cache; small memtables, as records arrive at the pace orders change.
/// With the filter (10 bits per order stored), a partition's resident
/// cost beside its in-memory book.
const STORE_MEMORY: Memory = Memory {
    cache_bytes: 8 << 20,
    memtable_bytes: 4 << 20,
};
/// What one partition's store may hold in memory, at most (fjall's cache
/// and memtables; the Bloom filter's 1.25 bytes per order come on top).
pub fn store_memory_bytes() -> u64 {
    STORE_MEMORY.budget()
}

/// How often a store's writer fsyncs what it wrote, at most: a machine
/// that loses power loses at most this much of the checkpoint's progress
/// (the next restore reads that much more of the changelog), never its
/// consistency.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// `engine.store_dir` value that turns the stores off.
pub const OFF: &str = "off";
/// Scratch stores' directory names start with this, then the PID.
const SCRATCH: &str = "scratch-";

/// A changelog record committed to Kafka, for its partition's store: its
/// offset in the changelog partition, its key (the order ID) and value
/// (the state codec's bytes; empty for a tombstone, which removes the
/// order from the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    /// The record's timestamp (milliseconds since the epoch; the producer
    /// sets it when the change is made): its retention counts from there,
    /// however often the record is read and written again.
    pub timestamp_ms: Option<i64>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Orders due (ID and the version stored), and the index entry after
/// which the walk goes on (`None`: from the oldest).
type DueOrders = (Vec<(String, u64)>, Option<Vec<u8>>);

/// A record a store keeps, as [`OpenStore::scan`] reads it.
#[derive(Debug)]
pub enum Kept<'a> {
    /// An order's record.
    Order(&'a str, state::ChangelogEntry),
    /// The units of a SKU its partition's retired orders hold.
    Retired(&'a str, state::RetiredUnits),
}

/// The way to a store's writer for committed copies, with the id of the
/// tier that started the writer.
type Feed = (u64, Sender<Vec<Committed>>);

/// The process's stores: one directory, one store per partition under it.
pub struct Stores {
    root: PathBuf,
    next: AtomicU64,
    /// Orders in memory per book: sizes each store's filter.
    capacity: usize,
    /// How long a record is kept after its order's last change.
    retention_ms: i64,
    /// The writers of the stores open now, by partition (with the id of
    /// the tier that started each): where committed copies go.
    feeds: Mutex<HashMap<i32, Feed>>,
}

impl Stores {
    /// The stores `engine.store_dir` asks for: `None` for `"off"`; `""`
    /// is the system's temporary directory. `namespace` (the consumer
    /// group and changelog topic) names their directory, so processes of
    /// other groups on the machine never share one.
    pub fn new(store_dir: &str, namespace: &str, capacity: usize) -> Option<Arc<Stores>> {
        Stores::with_retention(store_dir, namespace, capacity, DEFAULT_RETENTION)
    }

    /// [`Stores::new`] whose records expire `retention` after their
    /// order's last change (`lifecycle.retention_days`).
    pub fn with_retention(
        store_dir: &str,
        namespace: &str,
        capacity: usize,
        retention: Duration,
    ) -> Option<Arc<Stores>> {
        let base = match store_dir {
            OFF => return None,
            "" => std::env::temp_dir().join("orderflow-stores"),
            dir => PathBuf::from(dir),
        };
        let name: String = namespace
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
                _ => '_',
            })
            .collect();
        let root = base.join(name);
        remove_stale(&root);
        Some(Arc::new(Stores {
            root,
            next: AtomicU64::new(0),
            capacity: capacity.max(MIN_EXPECTED_ORDERS),
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
            feeds: Mutex::new(HashMap::new()),
        }))
    }

    /// Where the stores are.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of `partition`'s store.
    pub fn dir(&self, partition: i32) -> PathBuf {
        self.root.join(format!("p{partition}"))
    }

    /// Opens `partition`'s store for a restore: its own, or a scratch one
    /// when another process has it open. One that cannot be read is
    /// emptied (a cache: the restore fills it from the changelog).
    pub fn open(&self, partition: i32) -> Result<Arc<OpenStore>, String> {
        let dir = self.dir(partition);
        let open = |dir: &Path| {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("creating the order store {}: {e}", dir.display()))?;
            Ok::<_, String>(PartitionStore::open_with(dir, self.capacity, STORE_MEMORY))
        };
        let (dir, scratch, store) = match open(&dir)? {
            Ok(store) => (dir, false, store),
            Err(StoreError::Locked { .. }) => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                let scratch = self
                    .root
                    .join(format!("{SCRATCH}{}-{n}-p{partition}", std::process::id()));
                tracing::warn!(partition, dir = %dir.display(),
                    "the partition's order store is open in another process; restoring into a \
                     scratch store from the changelog");
                let store = open(&scratch)?.map_err(|e| e.to_string())?;
                (scratch, true, store)
            }
            Err(error) => {
                tracing::warn!(partition, %error,
                    "the partition's order store cannot be read; emptied, to be filled from the \
                     changelog");
                let _ = std::fs::remove_dir_all(&dir);
                let store = open(&dir)?.map_err(|e| e.to_string())?;
                (dir, false, store)
            }
        };
        Ok(Arc::new(OpenStore {
            dir,
            partition,
            scratch,
            retention_ms: self.retention_ms,
            store: Mutex::new(Some(store)),
            unwritten: Mutex::new(HashMap::new()),
            gone: Mutex::new(HashSet::new()),
            failure: Mutex::new(None),
            closing: AtomicBool::new(false),
            feed: Mutex::new(None),
        }))
    }

    /// The tier of a book of `partition` on `store` (opened by
    /// [`Stores::open`]; `None`: opened here). Its writer takes the
    /// partition's committed copies once [`Stores::feed`] says so.
    pub fn cold(
        self: &Arc<Self>,
        partition: i32,
        store: Option<Arc<OpenStore>>,
    ) -> Box<dyn ColdOrders> {
        let store = match store.map_or_else(|| self.open(partition), Ok) {
            Ok(store) => store,
            Err(error) => {
                let failed = OpenStore::failed(self.dir(partition), partition, error);
                return Box::new(PartitionCold::idle(failed));
            }
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (feed, committed) = crossbeam_channel::unbounded();
        *store.feed.lock() = Some((id, feed));
        Box::new(PartitionCold::start(
            store,
            Arc::downgrade(self),
            id,
            committed,
        ))
    }

    /// From now on the partition's committed copies go to `store` (its
    /// book's tier was made by [`Stores::cold`]): once its restore has
    /// read the changelog to its end, so the store's writer and the
    /// restore never write the same store at once, and every copy after
    /// that end is this process's own.
    pub fn feed(&self, store: &OpenStore) {
        if let Some(feed) = store.feed.lock().take() {
            self.feeds.lock().insert(store.partition, feed);
        }
    }

    /// Hands copies committed to `partition` of the changelog, in offset
    /// order, to its store's writer; dropped when the partition has no
    /// store open (its next restore reads them from the changelog).
    pub fn committed(&self, partition: i32, copies: Vec<Committed>) {
        if let Some((_, feed)) = self.feeds.lock().get(&partition) {
            let _ = feed.send(copies);
        }
    }

    fn closed(&self, partition: i32, id: u64) {
        let mut feeds = self.feeds.lock();
        if feeds.get(&partition).is_some_and(|(open, _)| *open == id) {
            feeds.remove(&partition);
        }
    }
}

/// Removes the scratch stores in `root` of processes no longer running
/// (killed before they could delete theirs): caches no one will use.
fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(SCRATCH))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let running = Path::new("/proc").join(pid.to_string()).exists();
        if !running && pid != std::process::id() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(dir = %entry.path().display(),
                    "removed the scratch order store of a process that is gone"),
                Err(error) => tracing::warn!(dir = %entry.path().display(), %error,
                    "could not remove the scratch order store of a process that is gone"),
            }
        }
    }
}

/// A partition's store, open: what a restore, the book's thread and the
/// store's writer share.
pub struct OpenStore {
    dir: PathBuf,
    partition: i32,
    /// Deleted when closed (another process has the partition's own).
    scratch: bool,
    /// How long a record is kept after its order's last change.
    retention_ms: i64,
    /// `None` once closed, or when it could not be opened.
    store: Mutex<Option<PartitionStore>>,
    /// Orders handed to the writer to spill and not yet written.
    unwritten: Mutex<HashMap<Arc<str>, Arc<OrderRecord>>>,
    /// Orders retired whose tombstones are not written yet: recalled no
    /// more.
    gone: Mutex<HashSet<Vec<u8>>>,
    failure: Mutex<Option<String>>,
    /// Set when the book is dropped: spills left are not written.
    closing: AtomicBool,
    /// The way to the writer for committed copies, until [`Stores::feed`]
    /// hands it to the sink's side (with the id of the tier).
    feed: Mutex<Option<Feed>>,
}

impl OpenStore {
    fn failed(dir: PathBuf, partition: i32, error: String) -> Arc<OpenStore> {
        Arc::new(OpenStore {
            dir,
            partition,
            scratch: false,
            retention_ms: 0,
            store: Mutex::new(None),
            unwritten: Mutex::new(HashMap::new()),
            gone: Mutex::new(HashSet::new()),
            failure: Mutex::new(Some(error)),
            closing: AtomicBool::new(false),
            feed: Mutex::new(None),
        })
    }

    fn fail(&self, error: String) {
        self.failure.lock().get_or_insert(error);
    }

    /// The orders partition whose store this is.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// What the store holds: the changelog up to this offset (`None`: an
    /// empty store, nothing vouched for).
    pub fn checkpoint(&self) -> Option<i64> {
        let store = self.store.lock();
        store
            .as_ref()
            .and_then(PartitionStore::checkpoint)
            .map(|c| c.changelog_next)
    }

    /// Makes the store `identity`'s (the cluster, changelog topic and
    /// partition it copies): a store that was another's (a store directory
    /// moved, a broker set up anew) is emptied first. Whether it was.
    pub fn claim(&self, identity: &str) -> Result<bool, String> {
        let known = {
            let store = self.store.lock();
            let Some(store) = store.as_ref() else {
                return Ok(false);
            };
            store.identity().map_err(|e| e.to_string())?
        };
        let emptied = known.as_deref() != Some(identity.as_bytes()) && self.checkpoint().is_some();
        if emptied {
            self.reset()?;
        }
        if known.as_deref() != Some(identity.as_bytes()) {
            let mut store = self.store.lock();
            if let Some(store) = store.as_mut() {
                store
                    .set_identity(identity.as_bytes())
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(emptied)
    }

    /// Empties the store (it cannot vouch for the changelog it is asked
    /// for: ahead of it, another's, or unreadable).
    pub fn reset(&self) -> Result<(), String> {
        let mut store = self.store.lock();
        drop(store.take());
        std::fs::remove_dir_all(&self.dir)
            .and_then(|()| std::fs::create_dir_all(&self.dir))
            .map_err(|e| format!("emptying the order store {}: {e}", self.dir.display()))?;
        let opened = PartitionStore::open_with(&self.dir, MIN_EXPECTED_ORDERS, STORE_MEMORY)
            .map_err(|e| e.to_string())?;
        *store = Some(opened);
        Ok(())
    }

    /// Every record, decoded, to `apply` (in key order); the count. A
    /// record that does not decode is an error: the store is then emptied
    /// by the caller and the changelog read whole.
    pub fn scan(&self, mut apply: impl FnMut(Kept<'_>)) -> Result<u64, String> {
        let store = self.store.lock();
        let Some(store) = store.as_ref() else {
            return Ok(0);
        };
        let unreadable = |e: &dyn std::fmt::Display| {
            format!(
                "a record in the order store {} does not decode: {e}",
                self.dir.display()
            )
        };
        let mut read = 0;
        for record in store.records() {
            let (key, value) = record.map_err(|e| e.to_string())?;
            if let Some(sku) = state::retired_sku(&key) {
                let sku = sku.map_err(|e| unreadable(&e))?;
                let retired = state::decode_retired(&value).map_err(|e| unreadable(&e))?;
                apply(Kept::Retired(sku, retired));
                read += 1;
                continue;
            }
            let order_id = std::str::from_utf8(&key).map_err(|_| {
                format!(
                    "a key in the order store {} is not UTF-8",
                    self.dir.display()
                )
            })?;
            let entry = state::decode(&value).map_err(|e| unreadable(&e))?;
            apply(Kept::Order(order_id, entry));
            read += 1;
        }
        Ok(read)
    }

    /// Writes committed changelog records, then the checkpoint `next`
    /// (the changelog offset after them), in one atomic batch; records
    /// before the store's checkpoint are already held and skipped.
    pub fn commit(&self, copies: &[Committed], next: i64) -> Result<(), String> {
        let mut store = self.store.lock();
        let Some(store) = store.as_mut() else {
            return Ok(());
        };
        let held = store.checkpoint().map_or(0, |c| c.changelog_next);
        if next <= held {
            return Ok(());
        }
        let now = now_ms();
        let puts: Vec<Put> = copies
            .iter()
            .filter(|copy| copy.offset >= held)
            .map(|copy| Put {
                key: copy.key.clone(),
                value: copy.value.clone(),
                // A partition's retired units are kept for good.
                expires_at_ms: match state::retired_sku(&copy.key) {
                    Some(_) => i64::MAX,
                    None => self.expiry_ms(
                        copy.timestamp_ms
                            .filter(|t| *t >= EARLIEST_CHANGE_MS)
                            .unwrap_or(now),
                    ),
                },
            })
            .collect();
        let checkpoint = Checkpoint {
            changelog_next: next,
            input_next: 0,
        };
        store
            .commit_buffered(&puts, checkpoint)
            .map_err(|e| e.to_string())?;
        crate::telemetry::store_records_written(puts.len());
        let mut gone = self.gone.lock();
        if !gone.is_empty() {
            for put in puts.iter().filter(|put| put.value.is_empty()) {
                gone.remove(&put.key);
            }
        }
        Ok(())
    }

    /// Makes what was written durable.
    pub fn persist(&self) -> Result<(), String> {
        match self.store.lock().as_ref() {
            Some(store) => store.persist().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Records the store holds (a full count: for tests and benchmarks).
    pub fn len(&self) -> usize {
        let store = self.store.lock();
        store.as_ref().and_then(|s| s.len().ok()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn spill(&self, batch: &[(Arc<str>, Arc<OrderRecord>)]) -> Result<(), String> {
        let expires_at_ms = self.expiry_ms(now_ms());
        let puts: Vec<Put> = batch
            .iter()
            .map(|(order_id, record)| Put {
                key: order_id.as_bytes().to_vec(),
                value: state::encode_record(self.partition, record),
                expires_at_ms,
            })
            .collect();
        match self.store.lock().as_mut() {
            Some(store) => store.spill(&puts).map_err(|e| e.to_string()),
            None => Err(format!("the order store {} is closed", self.dir.display())),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Option<OrderRecord> {
        match state::decode(bytes) {
            Ok(entry) => Some(entry.record),
            Err(error) => {
                self.fail(format!(
                    "a record in the order store {} does not decode: {error}",
                    self.dir.display()
                ));
                None
            }
        }
    }

    /// When a record changed at `changed_ms` expires, in milliseconds since
    /// the epoch (saturating: a timestamp from outside is not trusted).
    fn expiry_ms(&self, changed_ms: i64) -> i64 {
        changed_ms.saturating_add(self.retention_ms)
    }

    /// Committed records due by `now_ms`, from the index entry after
    /// `after`: their order IDs and versions, and where the walk stopped
    /// if it walked `limit` entries. Index entries found stale are removed.
    fn due(&self, now_ms: i64, after: Option<&[u8]>, limit: usize) -> Result<DueOrders, String> {
        let mut store = self.store.lock();
        let Some(store) = store.as_mut() else {
            return Ok((Vec::new(), None));
        };
        let due = store.due(now_ms, after, limit).map_err(|e| e.to_string())?;
        store.prune(&due.stale).map_err(|e| e.to_string())?;
        let mut orders = Vec::with_capacity(due.records.len());
        for (key, value) in due.records {
            // Only orders expire (retired units are kept for good).
            let Ok(order_id) = String::from_utf8(key) else {
                continue;
            };
            let entry = state::decode(&value).map_err(|e| {
                format!(
                    "a record in the order store {} does not decode: {e}",
                    self.dir.display()
                )
            })?;
            orders.push((order_id, entry.record.version));
        }
        let next = (due.walked >= limit).then_some(due.last).flatten();
        Ok((orders, next))
    }

    /// `order_id`'s newest record on disk: spilled since this open, or
    /// committed.
    fn recall(&self, order_id: &str) -> Option<OrderRecord> {
        if self.gone.lock().contains(order_id.as_bytes()) {
            return None;
        }
        let found = {
            let store = self.store.lock();
            let store = store.as_ref()?;
            let key = order_id.as_bytes();
            store
                .get_spilled(key)
                .and_then(|spilled| Ok((spilled, store.get(key)?)))
        };
        let (spilled, committed) = match found {
            Ok(found) => found,
            Err(error) => {
                self.fail(error.to_string());
                return None;
            }
        };
        let spilled = spilled.and_then(|bytes| self.decode(&bytes));
        let committed = committed.and_then(|bytes| self.decode(&bytes));
        match (spilled, committed) {
            (Some(a), Some(b)) => Some(if (a.version, a.offset) >= (b.version, b.offset) {
                a
            } else {
                b
            }),
            (a, b) => a.or(b),
        }
    }

    fn close(&self) {
        let store = self.store.lock().take();
        if let Some(store) = store {
            if let Err(error) = store.persist() {
                tracing::warn!(partition = self.partition, %error,
                    "making the order store durable at close");
            }
            drop(store);
            if self.scratch {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// One book's tier: its store, and the store's writer thread, which
/// writes committed copies and orders handed over as they leave memory.
struct PartitionCold {
    store: Arc<OpenStore>,
    stores: Weak<Stores>,
    id: u64,
    to_writer: Option<Sender<(Arc<str>, Arc<OrderRecord>)>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Where the retention walk goes on (`None`: from the oldest).
    cursor: Option<Vec<u8>>,
}

/// Orders handed over and not yet taken by the writer, at most: past it
/// the book's thread waits (the writer sets the pace, memory stays bounded).
const HANDOVER_QUEUE: usize = 8 * WRITE_BATCH;

impl PartitionCold {
    /// A tier whose store failed to open: it reports the failure.
    fn idle(store: Arc<OpenStore>) -> PartitionCold {
        PartitionCold {
            store,
            stores: Weak::new(),
            id: 0,
            to_writer: None,
            writer: None,
            cursor: None,
        }
    }

    fn start(
        store: Arc<OpenStore>,
        stores: Weak<Stores>,
        id: u64,
        committed: Receiver<Vec<Committed>>,
    ) -> PartitionCold {
        let partition = store.partition;
        let (to_writer, from_book) = crossbeam_channel::bounded(HANDOVER_QUEUE);
        let for_writer = store.clone();
        let writer = std::thread::Builder::new()
            .name(format!("store-p{partition}"))
            .spawn(move || write_all(&for_writer, &from_book, &committed));
        match writer {
            Ok(writer) => PartitionCold {
                store,
                stores,
                id,
                to_writer: Some(to_writer),
                writer: Some(writer),
                cursor: None,
            },
            Err(error) => {
                store.fail(format!("starting the order store's writer thread: {error}"));
                PartitionCold {
                    store,
                    stores,
                    id,
                    to_writer: None,
                    writer: None,
                    cursor: None,
                }
            }
        }
    }
}

/// The writer thread: committed copies with their checkpoints, and
/// batches of spilled orders, until the book is dropped; then what was
/// committed meanwhile, and a last fsync.
fn write_all(
    store: &OpenStore,
    spills: &Receiver<(Arc<str>, Arc<OrderRecord>)>,
    committed: &Receiver<Vec<Committed>>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut dirty = false;
    let mut persisted = Instant::now();
    // A feed replaced by a later tier of the partition is done with.
    let never = crossbeam_channel::never();
    let mut feed = committed;
    loop {
        crossbeam_channel::select! {
            recv(spills) -> first => match first {
                Ok(first) => {
                    batch.push(first);
                    while batch.len() < WRITE_BATCH {
                        match spills.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    if !store.closing.load(Ordering::Relaxed) {
                        guarded(store, || spill(store, &batch));
                    }
                    batch.clear();
                }
                Err(_) => break,
            },
            recv(feed) -> copies => match copies {
                Ok(mut copies) => {
                    // What else is waiting, in one batch (without
                    // transactions copies come one by one).
                    while copies.len() < WRITE_BATCH {
                        match feed.try_recv() {
                            Ok(more) => copies.extend(more),
                            Err(_) => break,
                        }
                    }
                    guarded(store, || write_committed(store, &copies));
                    dirty = true;
                }
                Err(_) => feed = &never,
            },
            default(PERSIST_INTERVAL) => {}
        }
        if dirty && persisted.elapsed() >= PERSIST_INTERVAL {
            guarded(store, || store.persist());
            dirty = false;
            persisted = Instant::now();
        }
    }
    for copies in feed.try_iter() {
        guarded(store, || write_committed(store, &copies));
    }
}

/// Runs a write unless the store failed before, recording its failure;
/// fjall asserts on what it cannot do: a failure like any other, not a
/// thread gone.
fn guarded(store: &OpenStore, write: impl FnOnce() -> Result<(), String>) {
    if store.failure.lock().is_some() {
        return;
    }
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(write))
        .unwrap_or_else(|_| Err(format!("the order store {} panicked", store.dir.display())));
    if let Err(error) = written {
        store.fail(error);
    }
}

fn write_committed(store: &OpenStore, copies: &[Committed]) -> Result<(), String> {
    match copies.last() {
        Some(last) => store.commit(copies, last.offset.saturating_add(1)),
        None => Ok(()),
    }
}

fn spill(store: &OpenStore, batch: &[(Arc<str>, Arc<OrderRecord>)]) -> Result<(), String> {
    store.spill(batch)?;
    let mut unwritten = store.unwritten.lock();
    for (order_id, record) in batch {
        // Unless handed over again since (a newer record).
        if unwritten
            .get(order_id)
            .is_some_and(|r| Arc::ptr_eq(r, record))
        {
            unwritten.remove(order_id);
        }
    }
    Ok(())
}

impl ColdOrders for PartitionCold {
    fn keep(&mut self, order_id: Arc<str>, record: Arc<OrderRecord>) {
        let Some(to_writer) = &self.to_writer else {
            return;
        };
        self.store
            .unwritten
            .lock()
            .insert(order_id.clone(), record.clone());
        if to_writer.send((order_id, record)).is_err() {
            self.store
                .fail("the order store's writer thread is gone".to_string());
        }
    }

    fn recall(&mut self, order_id: &str) -> Option<OrderRecord> {
        if let Some(record) = self.store.unwritten.lock().get(order_id) {
            return Some(OrderRecord::clone(record));
        }
        self.store.recall(order_id)
    }

    fn failure(&self) -> Option<String> {
        self.store.failure.lock().clone()
    }

    fn expired(&mut self, now: Millis, limit: usize) -> Vec<(String, u64)> {
        match self.store.due(now.0, self.cursor.as_deref(), limit) {
            Ok((due, next)) => {
                self.cursor = next;
                due
            }
            Err(error) => {
                self.store.fail(error);
                Vec::new()
            }
        }
    }

    fn forget(&mut self, order_id: &str) {
        self.store.unwritten.lock().remove(order_id);
        self.store.gone.lock().insert(order_id.as_bytes().to_vec());
    }
}

impl Drop for PartitionCold {
    fn drop(&mut self) {
        // No more committed copies: the partition's next restore reads
        // what comes after from the changelog.
        if let Some(stores) = self.stores.upgrade() {
            stores.closed(self.store.partition, self.id);
        }
        drop(self.store.feed.lock().take());
        // Spills left are not needed: the book is gone.
        self.store.closing.store(true, Ordering::Relaxed);
        drop(self.to_writer.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.store.close();
    }
}

/// Now, in milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{OrderBook, OrderState};

    /// `done`'s answer, once it has one (the writer thread works on its own).
    fn eventually<T>(what: &str, mut done: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(answer) = done() {
                return answer;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn record(offset: i64) -> OrderRecord {
        OrderRecord::decided(OrderState::Rejected, offset, None)
    }

    fn copy(offset: i64, order_id: &str, record: &OrderRecord) -> Committed {
        Committed {
            offset,
            timestamp_ms: None,
            key: order_id.as_bytes().to_vec(),
            value: state::encode_record(3, record),
        }
    }

    #[test]
    fn a_book_finds_every_order_it_had_no_room_for_and_spills_are_not_kept_past_a_reopen() {
        let base = tempfile::tempdir().unwrap();
        let stores = Stores::new(base.path().to_str().unwrap(), "group.order-state", 100).unwrap();
        let mut book = OrderBook::new(100).with_cold(stores.cold(3, None));
        let orders = 100 + 3 * WRITE_BATCH as i64 + 7;
        for offset in 0..orders {
            book.insert(format!("o-{offset}"), record(offset));
        }
        assert_eq!((book.len(), book.evicted()), (100, 0));
        assert_eq!(book.spilled(), orders as u64 - 100);
        // Written and still pending alike, each found with its record.
        for offset in (0..orders).rev() {
            let found = book.find(&format!("o-{offset}")).map(|r| r.offset);
            assert_eq!(found, Some(offset), "o-{offset}");
        }
        assert!(book.find("o-never").is_none());
        assert!(book.cold_failure().is_none());
        drop(book);
        // The store stays, with nothing vouched for: spills were never
        // committed to the changelog.
        assert!(stores.dir(3).exists(), "the partition's store is kept");
        let store = stores.open(3).unwrap();
        assert_eq!((store.checkpoint(), store.len()), (None, 0));
        assert!(store.recall("o-0").is_none(), "spills are emptied at open");
    }

    #[test]
    fn committed_copies_are_kept_with_their_checkpoint_and_found_after_a_reopen() {
        let base = tempfile::tempdir().unwrap();
        let stores = Stores::new(base.path().to_str().unwrap(), "g.order-state", 10).unwrap();
        let store = stores.open(3).unwrap();
        let mut book = OrderBook::new(10).with_cold(stores.cold(3, Some(store.clone())));
        // Before the restore is done, copies are not taken.
        stores.committed(3, vec![copy(39, "o-early", &record(1))]);
        stores.feed(&store);
        drop(store);
        let older = record(5);
        let newer = OrderRecord {
            version: 2,
            ..record(9)
        };
        stores.committed(3, vec![copy(40, "o-a", &older), copy(41, "o-b", &older)]);
        stores.committed(3, vec![copy(42, "o-a", &newer)]);
        // Another partition's copies go nowhere: it has no store open.
        stores.committed(4, vec![copy(7, "o-z", &older)]);
        let found = eventually("the copies written", || {
            book.find("o-a")
                .filter(|r| r.version == 2)
                .map(|r| r.offset)
        });
        assert_eq!(found, 9);
        drop(book);
        let store = stores.open(3).unwrap();
        assert_eq!(
            store.checkpoint(),
            Some(43),
            "the offset after the last copy"
        );
        let mut seen = Vec::new();
        store
            .scan(|kept| {
                if let Kept::Order(id, entry) = kept {
                    seen.push((id.to_string(), entry.record.offset));
                }
            })
            .unwrap();
        assert_eq!(seen, [("o-a".to_string(), 9), ("o-b".to_string(), 5)]);
        // Copies before the checkpoint are held already: not written again.
        store.commit(&[copy(41, "o-b", &newer)], 42).unwrap();
        assert_eq!(store.checkpoint(), Some(43));
        assert_eq!(store.recall("o-b").map(|r| r.offset), Some(5));
        assert!(!stores.dir(4).exists(), "no store for partition 4");
    }

    #[test]
    fn records_are_due_a_retention_after_their_time_and_retired_units_never() {
        let base = tempfile::tempdir().unwrap();
        let retention = Duration::from_secs(3_600);
        let stores =
            Stores::with_retention(base.path().to_str().unwrap(), "g.s", 10, retention).unwrap();
        let store = stores.open(3).unwrap();
        let now = now_ms();
        let at = |offset, order_id: &str, timestamp_ms| Committed {
            timestamp_ms,
            ..copy(offset, order_id, &record(offset))
        };
        let retired = Committed {
            offset: 4,
            timestamp_ms: Some(1),
            key: state::retired_key("A"),
            value: state::encode_retired(state::RetiredUnits {
                partition: 3,
                units: 2,
            }),
        };
        let copies = [
            at(0, "o-old", Some(now - 2 * 3_600_000)),
            at(1, "o-new", Some(now)),
            // No time, or the mock cluster's 1234: counted from now.
            at(2, "o-untimed", None),
            at(3, "o-mock", Some(1_234)),
            retired,
        ];
        store.commit(&copies, 5).unwrap();
        let due = |now| store.due(now, None, 100).unwrap().0;
        assert_eq!(due(now), [("o-old".to_string(), 1)]);
        let mut later: Vec<String> = due(now + 2 * 3_600_000)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        later.sort();
        assert_eq!(later, ["o-mock", "o-new", "o-old", "o-untimed"]);
    }

    #[test]
    fn a_store_open_in_another_process_gives_way_to_a_scratch_store_deleted_at_close() {
        let base = tempfile::tempdir().unwrap();
        let stores = Stores::new(base.path().to_str().unwrap(), "g.s", 10).unwrap();
        let first = stores.open(2).unwrap();
        first.commit(&[copy(0, "o-1", &record(0))], 1).unwrap();
        // fjall's lock file is held per open: a second open is refused as
        // a second process's would be.
        let second = stores.open(2).unwrap();
        assert_eq!(second.checkpoint(), None, "a new, empty store");
        assert!(second.dir != first.dir);
        let scratch = second.dir.clone();
        assert!(scratch.exists());
        drop(stores.cold(2, Some(second)));
        assert!(!scratch.exists(), "the scratch store goes at close");
        assert_eq!(
            first.checkpoint(),
            Some(1),
            "the partition's own is untouched"
        );
    }

    #[test]
    fn a_record_that_does_not_decode_fails_the_scan_and_reset_empties_the_store() {
        let base = tempfile::tempdir().unwrap();
        let stores = Stores::new(base.path().to_str().unwrap(), "g.s", 10).unwrap();
        let store = stores.open(1).unwrap();
        let garbage = Committed {
            offset: 0,
            timestamp_ms: None,
            key: b"o-1".to_vec(),
            value: vec![0xff, 1, 2],
        };
        store.commit(&[garbage], 1).unwrap();
        let error = store.scan(|_| {}).unwrap_err();
        assert!(
            error.contains("does not decode") && error.contains("p1"),
            "{error}"
        );
        store.reset().unwrap();
        assert_eq!((store.checkpoint(), store.len()), (None, 0));
        // A tombstone removes what a record put.
        store.commit(&[copy(3, "o-2", &record(3))], 4).unwrap();
        let tombstone = Committed {
            offset: 4,
            timestamp_ms: None,
            key: b"o-2".to_vec(),
            value: Vec::new(),
        };
        store.commit(&[tombstone], 5).unwrap();
        assert_eq!((store.checkpoint(), store.len()), (Some(5), 0));
    }

    #[test]
    fn a_store_of_another_cluster_or_topic_is_emptied_when_claimed() {
        let base = tempfile::tempdir().unwrap();
        let stores = Stores::new(base.path().to_str().unwrap(), "g.s", 10).unwrap();
        let store = stores.open(0).unwrap();
        assert!(
            !store.claim("cluster-a/order-state/0").unwrap(),
            "a new store"
        );
        store.commit(&[copy(0, "o-1", &record(0))], 1).unwrap();
        assert!(!store.claim("cluster-a/order-state/0").unwrap(), "its own");
        assert_eq!(store.checkpoint(), Some(1));
        assert!(store.claim("cluster-b/order-state/0").unwrap(), "another's");
        assert_eq!((store.checkpoint(), store.len()), (None, 0));
    }

    #[test]
    fn a_store_that_cannot_be_made_reports_why() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let stores = Stores::new(file.to_str().unwrap(), "g.s", 10).unwrap();
        let book = OrderBook::new(10).with_cold(stores.cold(0, None));
        let failure = eventually("the store's failure", || book.cold_failure());
        assert!(failure.contains("not-a-directory"), "{failure}");
    }

    #[test]
    fn scratch_stores_of_processes_that_are_gone_are_removed_at_start() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("g.s");
        // No process has this PID (above the kernel's pid_max limit).
        let gone = root.join(format!("{SCRATCH}{}-0-p1", 1u32 << 23));
        let live = root.join(format!("{SCRATCH}1-0-p1"));
        let own = root.join("p1");
        for dir in [&gone, &live, &own] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let _stores = Stores::new(base.path().to_str().unwrap(), "g.s", 10).unwrap();
        assert!(!gone.exists(), "a gone process's scratch store is removed");
        assert!(live.exists(), "PID 1 runs: its scratch store stays");
        assert!(own.exists(), "a partition's own store stays");
    }

    #[test]
    fn off_means_no_stores() {
        assert!(Stores::new(OFF, "g.s", 10).is_none());
    }
}
