//! The on-disk tier of each partition's order book: orders past
//! `engine.dedup_window_orders` leave memory for the partition's store
//! (crate `orderflow-store`, fjall) and are found there again, so a
//! duplicate or a cancellation of an order decided long ago finds it, and
//! resident memory is set by the window, not by the orders decided.
//!
//! Each book gets a store of its own, in a new directory under
//! `engine.store_dir`, made when the first order leaves memory and deleted
//! with the book (a partition released, the process stopped). Every restore
//! reads the partition's whole status topic (see `kafka::recovery`) into a
//! new book, whose orders past the window go to its new store: the store is
//! a cache of that read, so a crash, a move to another machine or deleted
//! files lose nothing, and its writes need no fsync. The decision path
//! only hands an order over (its record is shared with the book, nothing
//! is copied or encoded there); a writer thread per store encodes and
//! writes them in batches, and until it has, the order is found among
//! those handed over. (Restoring from the
//! store's own checkpoint plus the changelog after it, so that a restart
//! does not read the whole history, is issue 11's next step: see
//! docs/architecture.md, "Order state that lasts".)
//!
//! A store that fails (disk full, I/O error, a record that does not
//! decode) is reported through [`ColdOrders::failure`]: the shard stops
//! the processor before the outputs of the record that met it leave.

use crate::engine::{ColdOrders, OrderRecord};
use crate::state;
use orderflow_store::{Memory, PartitionStore, Put};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Orders that left memory written to the store together, at most: the
/// writer takes what has been handed over, up to this many, per write
/// batch (one fjall journal append).
pub const WRITE_BATCH: usize = 256;
/// The expiry each stored record carries: contract Part 2's default
/// `lifecycle.retention_days` (90). Retention passes over the store are
/// not run yet: a store lives as long as its book.
const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// The least first layer of a store's Bloom filter, in orders.
const MIN_EXPECTED_ORDERS: usize = 1 << 14;
/// fjall's memory per store: what a book reads back is rare (duplicates,
/// late cancellations, lifecycle inputs of old orders), so a small block
/// cache; small memtables, as orders leave memory at the pace they are
/// decided. With the filter (10 bits per order stored), a partition's
/// resident cost beside its in-memory book.
const STORE_MEMORY: Memory = Memory {
    cache_bytes: 8 << 20,
    memtable_bytes: 4 << 20,
};
/// `engine.store_dir` value that turns the tier off.
pub const OFF: &str = "off";

/// The process's stores: one directory, one store per book under it.
pub struct Stores {
    root: PathBuf,
    next: AtomicU64,
    /// Orders in memory per book: sizes each store's filter.
    capacity: usize,
}

impl Stores {
    /// The stores `engine.store_dir` asks for: `None` for `"off"`; `""`
    /// is a directory of this process under the system's temporary one.
    pub fn new(store_dir: &str, capacity: usize) -> Option<Arc<Stores>> {
        let root = match store_dir {
            OFF => return None,
            "" => std::env::temp_dir().join(format!("orderflow-store-{}", std::process::id())),
            dir => Path::new(dir).join(format!("orderflow-store-{}", std::process::id())),
        };
        if let Some(parent) = root.parent() {
            remove_stale(parent);
        }
        Some(Arc::new(Stores {
            root,
            next: AtomicU64::new(0),
            capacity,
        }))
    }

    /// Where the stores are.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new, empty tier for a book of `partition`.
    pub fn cold(&self, partition: i32) -> Box<dyn ColdOrders> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Box::new(PartitionCold::start(
            self.root.join(format!("p{partition}-{n}")),
            partition,
            self.capacity.max(MIN_EXPECTED_ORDERS),
        ))
    }
}

impl Drop for Stores {
    fn drop(&mut self) {
        // Each book's store deletes its own directory; this one is then
        // empty, unless a book outlives the stores (then it stays).
        let _ = std::fs::remove_dir(&self.root);
    }
}

/// Removes the store directories in `parent` of processes no longer
/// running (killed before they could delete theirs): they are caches of
/// restores no one will use.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("orderflow-store-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let running = Path::new("/proc").join(pid.to_string()).exists();
        if !running && pid != std::process::id() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(dir = %entry.path().display(),
                    "removed the order stores of a process that is gone"),
                Err(error) => tracing::warn!(dir = %entry.path().display(), %error,
                    "could not remove the order stores of a process that is gone"),
            }
        }
    }
}

/// One book's tier: the book's thread hands each order that leaves memory
/// to a writer thread (its record is shared, so nothing is copied or
/// encoded on the decision path) and finds it in `unwritten` until the
/// writer has put it in the store.
struct PartitionCold {
    shared: Arc<Shared>,
    to_writer: Option<crossbeam_channel::Sender<(Arc<str>, Arc<OrderRecord>)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// What a book's thread and its store's writer share.
struct Shared {
    dir: PathBuf,
    partition: i32,
    expected: usize,
    /// Opened by the writer when the first order leaves memory.
    store: Mutex<Option<PartitionStore>>,
    /// Orders handed to the writer and not yet written.
    unwritten: Mutex<HashMap<Arc<str>, Arc<OrderRecord>>>,
    failure: Mutex<Option<String>>,
    /// Set when the book is dropped: what is left is not written.
    closing: AtomicBool,
}

/// Orders handed over and not yet taken by the writer, at most: past it
/// the book's thread waits (the writer sets the pace, memory stays bounded).
const HANDOVER_QUEUE: usize = 8 * WRITE_BATCH;

impl PartitionCold {
    fn start(dir: PathBuf, partition: i32, expected: usize) -> PartitionCold {
        let shared = Arc::new(Shared {
            dir,
            partition,
            expected,
            store: Mutex::new(None),
            unwritten: Mutex::new(HashMap::new()),
            failure: Mutex::new(None),
            closing: AtomicBool::new(false),
        });
        let (to_writer, from_book) = crossbeam_channel::bounded(HANDOVER_QUEUE);
        let for_writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name(format!("store-p{partition}"))
            .spawn(move || for_writer.write_all(&from_book));
        match writer {
            Ok(writer) => PartitionCold {
                shared,
                to_writer: Some(to_writer),
                writer: Some(writer),
            },
            Err(error) => {
                shared.fail(format!("starting the order store's writer thread: {error}"));
                PartitionCold {
                    shared,
                    to_writer: None,
                    writer: None,
                }
            }
        }
    }
}

impl Shared {
    fn fail(&self, error: String) {
        self.failure.lock().get_or_insert(error);
    }

    /// The writer thread: batches of handed-over orders into the store.
    fn write_all(&self, from_book: &crossbeam_channel::Receiver<(Arc<str>, Arc<OrderRecord>)>) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while let Ok(first) = from_book.recv() {
            batch.push(first);
            while batch.len() < WRITE_BATCH {
                match from_book.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            if self.closing.load(Ordering::Relaxed) {
                return;
            }
            if self.failure.lock().is_none() {
                // fjall asserts on what it cannot do: a failure like any
                // other, not a thread gone.
                let written =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write(&batch)))
                        .unwrap_or_else(|_| {
                            Err(format!("the order store {} panicked", self.dir.display()))
                        });
                match written {
                    Ok(()) => {
                        let mut unwritten = self.unwritten.lock();
                        for (order_id, record) in &batch {
                            // Unless handed over again since (a newer record).
                            if unwritten
                                .get(order_id)
                                .is_some_and(|r| Arc::ptr_eq(r, record))
                            {
                                unwritten.remove(order_id);
                            }
                        }
                    }
                    Err(error) => self.fail(error),
                }
            }
            batch.clear();
        }
    }

    fn write(&self, batch: &[(Arc<str>, Arc<OrderRecord>)]) -> Result<(), String> {
        let expires_at_ms = expiry_ms();
        let puts: Vec<Put> = batch
            .iter()
            .map(|(order_id, record)| Put {
                key: order_id.as_bytes().to_vec(),
                value: state::encode_record(self.partition, record),
                expires_at_ms,
            })
            .collect();
        let mut store = self.store.lock();
        let store = match &mut *store {
            Some(store) => store,
            None => {
                std::fs::create_dir_all(&self.dir)
                    .map_err(|e| format!("creating the order store {}: {e}", self.dir.display()))?;
                let opened = PartitionStore::open_with(&self.dir, self.expected, STORE_MEMORY)
                    .map_err(|e| e.to_string())?;
                tracing::info!(partition = self.partition, dir = %self.dir.display(),
                    "orders past the dedup window go to an on-disk store");
                store.insert(opened)
            }
        };
        store.write(&puts).map_err(|e| e.to_string())
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
}

impl ColdOrders for PartitionCold {
    fn keep(&mut self, order_id: Arc<str>, record: Arc<OrderRecord>) {
        let Some(to_writer) = &self.to_writer else {
            return;
        };
        self.shared
            .unwritten
            .lock()
            .insert(order_id.clone(), record.clone());
        if to_writer.send((order_id, record)).is_err() {
            self.shared
                .fail("the order store's writer thread is gone".to_string());
        }
    }

    fn recall(&mut self, order_id: &str) -> Option<OrderRecord> {
        if let Some(record) = self.shared.unwritten.lock().get(order_id) {
            return Some(OrderRecord::clone(record));
        }
        let found = {
            let store = self.shared.store.lock();
            store.as_ref()?.get(order_id.as_bytes())
        };
        match found {
            Ok(Some(bytes)) => self.shared.decode(&bytes),
            Ok(None) => None,
            Err(error) => {
                self.shared.fail(error.to_string());
                None
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }
}

impl Drop for PartitionCold {
    fn drop(&mut self) {
        // What is left unwritten is not needed: the store goes with the book.
        self.shared.closing.store(true, Ordering::Relaxed);
        drop(self.to_writer.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        // Closed first: its files go with it (a cache of this book only).
        if self.shared.store.lock().take().is_some() {
            let _ = std::fs::remove_dir_all(&self.shared.dir);
        }
    }
}

/// When a record written now expires, in milliseconds since the epoch.
fn expiry_ms() -> i64 {
    let at = SystemTime::now() + RETENTION;
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(i64::MAX, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
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

    #[test]
    fn a_book_finds_every_order_it_had_no_room_for_and_its_files_go_with_it() {
        let base = tempfile::tempdir().unwrap();
        let stores = Stores::new(base.path().to_str().unwrap(), 100).unwrap();
        let mut book = OrderBook::new(100).with_cold(stores.cold(3));
        let orders = 100 + 3 * WRITE_BATCH as i64 + 7;
        for offset in 0..orders {
            book.insert(format!("o-{offset}"), record(offset));
        }
        assert_eq!((book.len(), book.evicted()), (100, 0));
        assert_eq!(book.spilled(), orders as u64 - 100);
        let dirs = eventually("the book's store", || {
            let dirs = std::fs::read_dir(stores.root()).ok()?.count();
            (dirs > 0).then_some(dirs)
        });
        assert_eq!(dirs, 1, "one store for the book");
        // Written and still pending alike, each found with its record.
        for offset in (0..orders).rev() {
            let found = book.find(&format!("o-{offset}")).map(|r| r.offset);
            assert_eq!(found, Some(offset), "o-{offset}");
        }
        assert!(book.find("o-never").is_none());
        assert!(book.cold_failure().is_none());
        drop(book);
        assert_eq!(std::fs::read_dir(stores.root()).unwrap().count(), 0);
    }

    #[test]
    fn a_store_that_cannot_be_made_reports_why() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("not-a-directory");
        std::fs::write(&file, b"x").unwrap();
        let stores = Stores::new(file.to_str().unwrap(), 10).unwrap();
        let mut book = OrderBook::new(10).with_cold(stores.cold(0));
        for offset in 0..(10 + WRITE_BATCH as i64) {
            book.insert(format!("o-{offset}"), record(offset));
        }
        let failure = eventually("the writer's failure", || book.cold_failure());
        assert!(failure.contains("not-a-directory"), "{failure}");
    }

    #[test]
    fn stores_of_processes_that_are_gone_are_removed_at_start() {
        let base = tempfile::tempdir().unwrap();
        // No process has this PID (above the kernel's pid_max limit).
        let gone = base.path().join(format!("orderflow-store-{}", 1u32 << 23));
        let live = base.path().join("orderflow-store-1");
        let other = base.path().join("someone-else");
        for dir in [&gone, &live, &other] {
            std::fs::create_dir_all(dir.join("p0-0")).unwrap();
        }
        let _stores = Stores::new(base.path().to_str().unwrap(), 10).unwrap();
        assert!(!gone.exists(), "a gone process's stores are removed");
        assert!(live.exists(), "PID 1 runs: its stores stay");
        assert!(other.exists(), "what is not ours stays");
    }

    #[test]
    fn off_means_no_tier() {
        assert!(Stores::new(OFF, 10).is_none());
    }
}
