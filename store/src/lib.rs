//! The local store of one partition's order records: every order of the
//! partition for its retention, on disk, crash-safe, in front of which the
//! in-memory order book is a bounded cache.
//!
//! Kafka stays the source of truth: the store is a cache that can be
//! thrown away. What it holds is always a prefix of the partition's
//! changelog, and its [`Checkpoint`] says which: the changelog offset it is
//! current to and the input offset whose effects it holds. A restart reads
//! the changelog from the checkpoint on; a partition on a machine without
//! the files reads the (compacted) changelog from its beginning.
//!
//! Layout, in one fjall database per partition directory:
//! - `orders`: order ID → expiry (8 bytes, big-endian) ++ the record's bytes
//!   (the state codec's, opaque here);
//! - `expiry`: expiry (8 bytes, ordered) ++ order ID → nothing: retention
//!   walks it oldest first. A record written again with a later expiry
//!   leaves its older index entry behind; retention drops such an entry
//!   when it finds the record's expiry has moved on, so a write never reads;
//! - `meta`: the checkpoint;
//! - `spilled`: records the processor moved out of memory before their
//!   changelog copy was committed (so not yet in `orders`). It holds what
//!   one open of the store was handed, and is emptied at the next open:
//!   never part of what a checkpoint vouches for.
//!
//! [`PartitionStore::commit`] writes a batch of records and the checkpoint
//! in one atomic, durable (fsynced) fjall write batch: after a crash the
//! store holds every committed batch and nothing of a batch it did not
//! acknowledge. A [`Bloom`] filter of every key answers "never seen" for a
//! new order ID without a disk read.

pub mod bloom;

pub use bloom::Bloom;

use fjall::config::PartitioningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::path::{Path, PathBuf};

/// The block cache of one partition's store. Resident memory per partition
/// is this plus fjall's memtables ([`MEMTABLE_BYTES`] per keyspace, three
/// keyspaces) plus the Bloom filter (10 bits per order); the record count
/// changes only the filter.
pub const CACHE_BYTES: u64 = 32 << 20;
/// The memtable of each keyspace: past it, fjall flushes it to a table.
pub const MEMTABLE_BYTES: u64 = 8 << 20;
/// The journal kept before fjall flushes memtables to make room: bounds
/// both disk use by the journal and the replay time of a reopen.
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;
/// What one store's fjall may hold in memory: its block cache, and the
/// memtable of each keyspace (three). (Its journal, [`MAX_JOURNAL_BYTES`],
/// is fjall's least.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub cache_bytes: u64,
    pub memtable_bytes: u64,
}

/// Keyspaces of one store, each with its memtable: `orders`, `expiry`,
/// `meta`, `spilled`.
pub const KEYSPACES: u64 = 4;

impl Memory {
    /// What fjall may hold in memory for one store at most: the block
    /// cache and a full memtable per keyspace.
    pub fn budget(&self) -> u64 {
        self.cache_bytes + KEYSPACES * self.memtable_bytes
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            cache_bytes: CACHE_BYTES,
            memtable_bytes: MEMTABLE_BYTES,
        }
    }
}

/// fjall's background threads (flushes and compactions) per store. Two,
/// so a flush need not wait for a long compaction: with one, a restore of
/// 10 million scattered order IDs peaked at 1,648 MiB resident (166 MiB
/// with two; docs/benchmarks.md, "Lookups in a large store").
const WORKER_THREADS: usize = 2;
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const IDENTITY_KEY: &[u8] = b"identity";
const SPILLED: &str = "spilled";
const EXPIRY_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order store at {path}: {source}")]
    Fjall {
        path: PathBuf,
        #[source]
        source: fjall::Error,
    },
    #[error("order store at {path}: corrupt {what}")]
    Corrupt { path: PathBuf, what: &'static str },
    #[error("order store at {path} is open in another process")]
    Locked { path: PathBuf },
}

/// How far the store is current: the offsets after the last changelog
/// record and the last input record whose effects it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub changelog_next: i64,
    pub input_next: i64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.changelog_next.to_be_bytes());
        bytes[8..].copy_from_slice(&self.input_next.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let changelog_next = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let input_next = i64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Checkpoint {
            changelog_next,
            input_next,
        })
    }
}

/// One record to write: the order's key, its record's bytes (empty: the
/// key's record is removed, as a changelog tombstone removes it), and when
/// retention may remove it (milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub expires_at_ms: i64,
}

/// What [`PartitionStore::due`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Key and record bytes of each record due.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Index entries walked that no longer name a record's expiry.
    pub stale: Vec<Vec<u8>>,
    /// Index entries walked; `limit` of them: more may be due after `last`.
    pub walked: usize,
    /// The last index entry walked: where the next walk goes on.
    pub last: Option<Vec<u8>>,
}

pub struct PartitionStore {
    path: PathBuf,
    db: Database,
    orders: Keyspace,
    expiry: Keyspace,
    meta: Keyspace,
    spilled: Keyspace,
    bloom: Bloom,
    checkpoint: Option<Checkpoint>,
}

impl PartitionStore {
    /// Opens (or creates) the store in `dir`, replaying its journal after a
    /// crash, and rebuilds the Bloom filter from its keys. `expected` sizes
    /// the filter's first layer.
    pub fn open(dir: &Path, expected: usize) -> Result<Self, StoreError> {
        Self::open_with(dir, expected, Memory::default())
    }

    /// [`PartitionStore::open`] with fjall's memory bounded by `memory`.
    pub fn open_with(dir: &Path, expected: usize, memory: Memory) -> Result<Self, StoreError> {
        let path = dir.to_path_buf();
        let fjall = |source| StoreError::Fjall {
            path: path.clone(),
            source,
        };
        let db = Database::builder(dir)
            .cache_size(memory.cache_bytes)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .worker_threads(WORKER_THREADS)
            .open()
            .map_err(|source| match source {
                fjall::Error::Locked => StoreError::Locked { path: path.clone() },
                source => fjall(source),
            })?;
        // Index and filter blocks partitioned at every level: a lookup then
        // reads one small partition of each (through the block cache), where
        // fjall's default (partitioned from level 3 only) reads a large
        // table's whole index and filter block for every lookup that misses
        // the cache (64 µs per held order at 5 million scattered keys with
        // the processor's 8 MiB cache, docs/benchmarks.md section 8).
        let options = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(memory.memtable_bytes)
                .index_block_partitioning_policy(PartitioningPolicy::all(true))
                .filter_block_partitioning_policy(PartitioningPolicy::all(true))
        };
        let orders = db.keyspace("orders", options).map_err(fjall)?;
        let expiry = db.keyspace("expiry", options).map_err(fjall)?;
        let meta = db.keyspace("meta", options).map_err(fjall)?;
        // What the last open spilled is not vouched for: emptied.
        if db.keyspace_exists(SPILLED) {
            let old = db.keyspace(SPILLED, options).map_err(fjall)?;
            db.delete_keyspace(old).map_err(fjall)?;
        }
        let spilled = db.keyspace(SPILLED, options).map_err(fjall)?;
        let checkpoint = match meta.get(CHECKPOINT_KEY).map_err(fjall)? {
            None => None,
            Some(bytes) => Some(Checkpoint::decode(&bytes).ok_or(StoreError::Corrupt {
                path: path.clone(),
                what: "checkpoint",
            })?),
        };
        let mut bloom = Bloom::new(expected);
        for guard in orders.iter() {
            bloom.insert(&guard.key().map_err(fjall)?);
        }
        Ok(PartitionStore {
            path,
            db,
            orders,
            expiry,
            meta,
            spilled,
            bloom,
            checkpoint,
        })
    }

    fn fjall(&self, source: fjall::Error) -> StoreError {
        StoreError::Fjall {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &'static str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// The checkpoint of the last commit; `None` for a new store.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
    }

    /// What the store is a copy of, as [`PartitionStore::set_identity`]
    /// last said (the processor's: cluster, changelog topic, partition).
    pub fn identity(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let found = self.meta.get(IDENTITY_KEY).map_err(|e| self.fjall(e))?;
        Ok(found.map(|bytes| bytes.to_vec()))
    }

    /// Records what the store is a copy of, durably.
    pub fn set_identity(&mut self, identity: &[u8]) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, IDENTITY_KEY, identity.to_vec());
        batch.commit().map_err(|e| self.fjall(e))
    }

    /// False: `key` is in no record (no disk read). True: look it up.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.bloom.may_contain(key)
    }

    /// The record of `key`, read from disk unless the filter rules it out.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_in(&self.orders, key)
    }

    /// The record of `key` spilled since this open ([`PartitionStore::spill`]).
    pub fn get_spilled(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_in(&self.spilled, key)
    }

    fn get_in(&self, keyspace: &Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if !self.bloom.may_contain(key) {
            return Ok(None);
        }
        match keyspace.get(key).map_err(|e| self.fjall(e))? {
            None => Ok(None),
            Some(stored) => match stored.get(EXPIRY_BYTES..) {
                Some(value) => Ok(Some(value.to_vec())),
                None => Err(self.corrupt("record")),
            },
        }
    }

    /// Writes `puts` (a later put of a key replaces an earlier one) and
    /// the checkpoint, atomically and durably.
    pub fn commit(&mut self, puts: &[Put], checkpoint: Checkpoint) -> Result<(), StoreError> {
        self.put(puts, Some(checkpoint), Some(PersistMode::SyncData))?;
        self.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// [`PartitionStore::commit`] handed to the OS but not fsynced: it
    /// survives the process's crash (kill -9), not the machine's. A power
    /// loss may lose this batch and those after it, never part of one, and
    /// never one without the batches before it (fjall's journal is replayed
    /// up to its first incomplete batch), so the checkpoint that survives
    /// still vouches for what survives with it. [`PartitionStore::persist`]
    /// makes everything so far durable.
    pub fn commit_buffered(
        &mut self,
        puts: &[Put],
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        self.put(puts, Some(checkpoint), Some(PersistMode::Buffer))?;
        self.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Makes every write so far durable (fsync of the journal).
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db
            .persist(PersistMode::SyncData)
            .map_err(|e| self.fjall(e))
    }

    /// Writes `puts` atomically but not durably, and no checkpoint: for a
    /// store used as a cache that is rebuilt from the changelog at every
    /// open. (A crash may lose the last writes; the checkpoint, if any,
    /// then overstates what the store holds, so such a store is never
    /// restored from.)
    pub fn write(&mut self, puts: &[Put]) -> Result<(), StoreError> {
        self.put(puts, None, None)
    }

    /// Keeps `puts` in `spilled` until the next open, not durably, apart
    /// from the records and the checkpoint: found by
    /// [`PartitionStore::get_spilled`].
    pub fn spill(&mut self, puts: &[Put]) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(None);
        for put in last_of_each_key(puts) {
            batch.insert(&self.spilled, put.key.as_slice(), stored(put));
        }
        batch.commit().map_err(|e| self.fjall(e))?;
        for put in puts {
            self.bloom.insert(&put.key);
        }
        Ok(())
    }

    fn put(
        &mut self,
        puts: &[Put],
        checkpoint: Option<Checkpoint>,
        durability: Option<PersistMode>,
    ) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(durability);
        for put in last_of_each_key(puts) {
            if put.value.is_empty() {
                // A tombstone: its index entry, if any, is left to the
                // retention pass that finds no record behind it; a copy
                // spilled before goes too (the key is gone). A key the
                // filter rules out is in neither (every key written since
                // the open, and every record's at the open, is in it), so
                // nothing is written: a restore of a changelog whose
                // records compaction removed before their tombstones.
                if self.bloom.may_contain(&put.key) {
                    batch.remove(&self.orders, put.key.as_slice());
                    batch.remove(&self.spilled, put.key.as_slice());
                }
                continue;
            }
            batch.insert(&self.orders, put.key.as_slice(), stored(put));
            batch.insert(&self.expiry, expiry_key(put.expires_at_ms, &put.key), []);
        }
        if let Some(checkpoint) = checkpoint {
            batch.insert(&self.meta, CHECKPOINT_KEY, checkpoint.encode());
        }
        batch.commit().map_err(|e| self.fjall(e))?;
        for put in puts.iter().filter(|put| !put.value.is_empty()) {
            self.bloom.insert(&put.key);
        }
        Ok(())
    }

    /// The records whose expiry is before `now_ms`, oldest first, from the
    /// index entry after `after` on (`None`: the oldest), walking at most
    /// `limit` index entries; removes nothing: the processor retires them
    /// through the changelog (a tombstone each), whose committed copies
    /// then remove them here. Index entries with no record behind them, or
    /// a record whose expiry moved on, are [`Due::stale`].
    pub fn due(&self, now_ms: i64, after: Option<&[u8]>, limit: usize) -> Result<Due, StoreError> {
        use std::ops::Bound;
        let mut due = Due::default();
        let cut = expiry_key(now_ms, &[]);
        let from = match after {
            Some(after) => Bound::Excluded(after.to_vec()),
            None => Bound::Unbounded,
        };
        let range = (from, Bound::Excluded(cut));
        for guard in self.expiry.range::<Vec<u8>, _>(range) {
            if due.walked >= limit {
                break;
            }
            due.walked += 1;
            let entry = guard.key().map_err(|e| self.fjall(e))?;
            let (at, key) = entry
                .split_at_checked(EXPIRY_BYTES)
                .ok_or_else(|| self.corrupt("expiry index"))?;
            let at = decode_expiry(at);
            due.last = Some(entry.to_vec());
            let current = self.orders.get(key).map_err(|e| self.fjall(e))?;
            match current {
                Some(stored) => match (stored.get(..EXPIRY_BYTES), stored.get(EXPIRY_BYTES..)) {
                    (Some(current_at), Some(value)) if decode_plain(current_at) == at => {
                        due.records.push((key.to_vec(), value.to_vec()));
                    }
                    (Some(_), Some(_)) => due.stale.push(entry.to_vec()),
                    _ => return Err(self.corrupt("record")),
                },
                None => due.stale.push(entry.to_vec()),
            }
        }
        Ok(due)
    }

    /// Removes index entries [`PartitionStore::due`] found stale (not
    /// durably: an entry left behind by a crash is found stale again).
    pub fn prune(&mut self, stale: &[Vec<u8>]) -> Result<(), StoreError> {
        if stale.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(None);
        for entry in stale {
            batch.remove(&self.expiry, entry.clone());
        }
        batch.commit().map_err(|e| self.fjall(e))
    }

    /// Every record, in key order: for restores' checks and tests.
    pub fn records(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.orders.iter().map(|guard| {
            let (key, stored) = guard.into_inner().map_err(|e| self.fjall(e))?;
            let value = stored
                .get(EXPIRY_BYTES..)
                .ok_or_else(|| self.corrupt("record"))?;
            Ok((key.to_vec(), value.to_vec()))
        })
    }

    /// Records in the store (exact: a full count, not for the hot path).
    pub fn len(&self) -> Result<usize, StoreError> {
        self.orders.len().map_err(|e| self.fjall(e))
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.orders.is_empty().map_err(|e| self.fjall(e))
    }

    /// Bytes on disk: tables and journal.
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.db.disk_space().map_err(|e| self.fjall(e))
    }

    /// Memory the Bloom filter takes.
    pub fn filter_bytes(&self) -> usize {
        self.bloom.bytes()
    }
}

/// The last write of each key in `puts`, in their order: the writes of one
/// fjall batch share a sequence number, so which of two writes of a key
/// would win is not left to fjall.
fn last_of_each_key(puts: &[Put]) -> Vec<&Put> {
    let mut seen = std::collections::HashSet::with_capacity(puts.len());
    let mut last: Vec<&Put> = puts
        .iter()
        .rev()
        .filter(|put| seen.insert(put.key.as_slice()))
        .collect();
    last.reverse();
    last
}

/// A record as stored: its expiry, then its bytes.
fn stored(put: &Put) -> Vec<u8> {
    let mut stored = Vec::with_capacity(EXPIRY_BYTES + put.value.len());
    stored.extend_from_slice(&put.expires_at_ms.to_be_bytes());
    stored.extend_from_slice(&put.value);
    stored
}

/// Index keys sort by expiry, then key: the expiry as big-endian with its
/// sign bit flipped, so negative times sort before positive ones.
fn expiry_key(at_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(EXPIRY_BYTES + key.len());
    bytes.extend_from_slice(&((at_ms as u64) ^ (1 << 63)).to_be_bytes());
    bytes.extend_from_slice(key);
    bytes
}

fn decode_expiry(bytes: &[u8]) -> i64 {
    (decode_plain(bytes) as u64 ^ (1 << 63)) as i64
}

/// An 8-byte big-endian i64 (callers slice exactly 8 bytes).
fn decode_plain(bytes: &[u8]) -> i64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..EXPIRY_BYTES]);
    i64::from_be_bytes(word)
}
