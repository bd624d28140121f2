//! Which consumed offsets are safe to commit, and which outputs must wait
//! for an earlier record's.
//!
//! An `orders` record may be committed only when every output it caused has
//! been acknowledged by the broker; otherwise a crash after the commit would
//! lose those outputs. Shards `begin` a record with its output count before
//! sending, delivery reports call `delivered`, and the consumer asks for
//! `committable` offsets: everything below the oldest record still waiting.
//!
//! An order's later record (its cancellation) must not overtake its earlier
//! one's outputs: if the acceptance's status failed and is sent again after
//! an outage while the cancellation's went through, the status topic (the
//! changelog) would read cancelled → accepted, and a restore would bring
//! back what the cancelled order held. So the later record's outputs can be
//! held here ([`OffsetTracker::hold_until_done`]) and are handed back by
//! the `delivered` call that completes the earlier record. Both happen
//! under one lock, so nothing is held after its record completed.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
struct Progress<D> {
    /// Offsets with outputs not yet acknowledged, and how many.
    waiting: BTreeMap<i64, u32>,
    /// Highest offset handed to `begin` so far.
    last_begun: Option<i64>,
    /// Outputs held until every output of the record at the key is
    /// acknowledged (in the order they were held).
    held: HashMap<i64, Vec<D>>,
}

impl<D> Default for Progress<D> {
    fn default() -> Self {
        Progress {
            waiting: BTreeMap::new(),
            last_begun: None,
            held: HashMap::new(),
        }
    }
}

/// `D` is what is held back: the sink's queued records.
#[derive(Debug)]
pub struct OffsetTracker<D = super::sink::Queued> {
    partitions: Mutex<HashMap<i32, Progress<D>>>,
    /// Outputs begun and not yet acknowledged, over all partitions: read
    /// by the consumer between records, so kept outside the lock.
    pending: AtomicUsize,
}

impl<D> Default for OffsetTracker<D> {
    fn default() -> Self {
        OffsetTracker {
            partitions: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
        }
    }
}

impl<D> OffsetTracker<D> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A shard finished deciding the record at `offset`, which produced
    /// `outputs` records now being sent. Offsets of one partition must come
    /// in increasing order (one shard owns a partition).
    pub fn begin(&self, partition: i32, offset: i64, outputs: u32) {
        let mut partitions = self.partitions.lock();
        let progress = partitions.entry(partition).or_default();
        debug_assert!(
            progress.last_begun.is_none_or(|last| last < offset),
            "offsets go forward"
        );
        progress.last_begun = Some(offset);
        if outputs > 0 {
            progress.waiting.insert(offset, outputs);
            self.pending.fetch_add(outputs as usize, Ordering::Relaxed);
        }
    }

    /// One output of the record at `offset` was acknowledged. Returns what
    /// was held until that record's outputs were all acknowledged, if this
    /// was its last one.
    pub fn delivered(&self, partition: i32, offset: i64) -> Vec<D> {
        let mut partitions = self.partitions.lock();
        let Some(progress) = partitions.get_mut(&partition) else {
            return Vec::new();
        };
        let Some(left) = progress.waiting.get_mut(&offset) else {
            return Vec::new();
        };
        *left -= 1;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        if *left > 0 {
            return Vec::new();
        }
        progress.waiting.remove(&offset);
        progress.held.remove(&offset).unwrap_or_default()
    }

    /// Holds `item` until every output of the record at `earlier` is
    /// acknowledged, and returns `None`; or returns it right away if they
    /// already are (or it had none), to be sent now.
    pub fn hold_until_done(&self, partition: i32, earlier: i64, item: D) -> Option<D> {
        let mut partitions = self.partitions.lock();
        match partitions.get_mut(&partition) {
            Some(progress) if progress.waiting.contains_key(&earlier) => {
                progress.held.entry(earlier).or_default().push(item);
                None
            }
            _ => Some(item),
        }
    }

    /// The offset to commit for `partition` (the next record to read after a
    /// restart), or `None` if nothing of it was processed.
    pub fn committable(&self, partition: i32) -> Option<i64> {
        let partitions = self.partitions.lock();
        let progress = partitions.get(&partition)?;
        match progress.waiting.keys().next() {
            Some(oldest) => Some(*oldest),
            None => progress.last_begun.map(|last| last + 1),
        }
    }

    /// Outputs sent (or held, or waiting for their status) and not yet
    /// acknowledged, over all partitions.
    pub fn pending_outputs(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Outputs of `partition` sent and not yet acknowledged.
    pub fn waiting_outputs(&self, partition: i32) -> usize {
        self.partitions
            .lock()
            .get(&partition)
            .map_or(0, |p| p.waiting.values().map(|n| *n as usize).sum())
    }

    /// Forgets a partition (after it was revoked and committed).
    pub fn forget(&self, partition: i32) {
        if let Some(progress) = self.partitions.lock().remove(&partition) {
            let waiting: usize = progress.waiting.values().map(|n| *n as usize).sum();
            debug_assert!(
                waiting == 0 && progress.held.is_empty(),
                "forgot a partition with outputs in flight"
            );
            self.pending.fetch_sub(waiting, Ordering::Relaxed);
        }
    }
}

/// Delivery reports carry the source record's position packed in a `usize`.
pub mod token {
    /// Outputs that need no tracking.
    pub const UNTRACKED: usize = usize::MAX;
    const OFFSET_BITS: u32 = 44;
    /// Largest partition number that fits (2^18 - 1 with 64-bit usize): the
    /// top bit tells the two trackers (orders, inventory) apart.
    pub const MAX_PARTITION: i32 = (1 << (usize::BITS - OFFSET_BITS - 2)) - 1;
    /// Set in the tokens of the inventory feed's dead letters.
    const INVENTORY: usize = 1 << (usize::BITS - 1);

    /// Which tracker a token belongs to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Source {
        Orders,
        Inventory,
    }

    pub fn pack(partition: i32, offset: i64) -> usize {
        pack_for(Source::Orders, partition, offset)
    }

    pub fn pack_for(source: Source, partition: i32, offset: i64) -> usize {
        assert!(
            (0..=MAX_PARTITION).contains(&partition),
            "partition {partition} out of range"
        );
        assert!(
            (0..1 << OFFSET_BITS).contains(&offset),
            "offset {offset} out of range"
        );
        let flag = match source {
            Source::Orders => 0,
            Source::Inventory => INVENTORY,
        };
        flag | ((partition as usize) << OFFSET_BITS) | offset as usize
    }

    pub fn unpack(token: usize) -> Option<(Source, i32, i64)> {
        if token == UNTRACKED {
            return None;
        }
        let source = if token & INVENTORY == 0 {
            Source::Orders
        } else {
            Source::Inventory
        };
        let token = token & !INVENTORY;
        Some((
            source,
            (token >> OFFSET_BITS) as i32,
            (token & ((1 << OFFSET_BITS) - 1)) as i64,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_oldest_waiting_record() {
        let tracker = OffsetTracker::<()>::new();
        assert_eq!(tracker.committable(0), None);
        tracker.begin(0, 10, 2);
        tracker.begin(0, 11, 0);
        tracker.begin(0, 12, 1);
        tracker.begin(1, 5, 1);
        assert_eq!(tracker.committable(0), Some(10));
        assert_eq!(
            (tracker.waiting_outputs(0), tracker.waiting_outputs(1)),
            (3, 1)
        );
        assert_eq!(tracker.pending_outputs(), 4);
        tracker.delivered(0, 12);
        assert_eq!(tracker.committable(0), Some(10), "12 is done but 10 is not");
        tracker.delivered(0, 10);
        assert_eq!(
            tracker.committable(0),
            Some(10),
            "10 waits for its second output"
        );
        tracker.delivered(0, 10);
        assert_eq!(tracker.committable(0), Some(13));
        assert_eq!(tracker.waiting_outputs(0), 0);
        assert_eq!(tracker.pending_outputs(), 1, "partition 1 still waits");
        tracker.delivered(1, 5);
        tracker.forget(1);
        assert_eq!(tracker.pending_outputs(), 0);
    }

    #[test]
    fn a_later_records_outputs_wait_for_an_earlier_ones() {
        let tracker = OffsetTracker::<&str>::new();
        tracker.begin(0, 3, 2); // an acceptance: status and one shipment
        tracker.begin(0, 9, 2); // its cancellation
        assert_eq!(tracker.hold_until_done(0, 3, "cancelled status"), None);
        assert_eq!(tracker.hold_until_done(0, 3, "then"), None);
        assert!(tracker.delivered(0, 3).is_empty(), "one output of 3 left");
        assert_eq!(tracker.delivered(0, 3), ["cancelled status", "then"]);
        assert_eq!(
            tracker.hold_until_done(0, 3, "late"),
            Some("late"),
            "3 is done: nothing to wait for"
        );
        assert_eq!(tracker.hold_until_done(1, 3, "other"), Some("other"));
        assert_eq!(tracker.pending_outputs(), 2, "the cancellation's outputs");
    }

    #[test]
    fn tokens_round_trip() {
        for source in [token::Source::Orders, token::Source::Inventory] {
            for (p, o) in [
                (0, 0),
                (7, 123_456_789),
                (token::MAX_PARTITION, (1 << 44) - 1),
            ] {
                assert_eq!(
                    token::unpack(token::pack_for(source, p, o)),
                    Some((source, p, o))
                );
            }
        }
        assert_eq!(token::unpack(token::UNTRACKED), None);
    }
}
