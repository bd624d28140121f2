//! Which consumed offsets are safe to commit.
//!
//! An `orders` record may be committed only when every output it caused has
//! been acknowledged by the broker; otherwise a crash after the commit would
//! lose those outputs. Shards `begin` a record with its output count before
//! sending, delivery reports call `delivered`, and the consumer asks for
//! `committable` offsets: everything below the oldest record still waiting.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
struct Progress {
    /// Offsets with outputs not yet acknowledged, and how many.
    waiting: BTreeMap<i64, u32>,
    /// Highest offset handed to `begin` so far.
    last_begun: Option<i64>,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<i32, Progress>>,
}

impl OffsetTracker {
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
        }
    }

    /// One output of the record at `offset` was acknowledged.
    pub fn delivered(&self, partition: i32, offset: i64) {
        let mut partitions = self.partitions.lock();
        let Some(progress) = partitions.get_mut(&partition) else {
            return;
        };
        if let Some(left) = progress.waiting.get_mut(&offset) {
            *left -= 1;
            if *left == 0 {
                progress.waiting.remove(&offset);
            }
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

    /// Outputs sent and not yet acknowledged, over all partitions.
    pub fn pending_outputs(&self) -> usize {
        self.partitions
            .lock()
            .values()
            .flat_map(|p| p.waiting.values())
            .map(|n| *n as usize)
            .sum()
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
        self.partitions.lock().remove(&partition);
    }
}

/// Delivery reports carry the source record's position packed in a `usize`.
pub mod token {
    /// Outputs that need no tracking (inventory dead letters).
    pub const UNTRACKED: usize = usize::MAX;
    const OFFSET_BITS: u32 = 44;
    /// Largest partition number that fits (2^19 - 1 with 64-bit usize).
    pub const MAX_PARTITION: i32 = (1 << (usize::BITS - OFFSET_BITS - 1)) - 1;

    pub fn pack(partition: i32, offset: i64) -> usize {
        assert!(
            (0..=MAX_PARTITION).contains(&partition),
            "partition {partition} out of range"
        );
        assert!(
            (0..1 << OFFSET_BITS).contains(&offset),
            "offset {offset} out of range"
        );
        ((partition as usize) << OFFSET_BITS) | offset as usize
    }

    pub fn unpack(token: usize) -> Option<(i32, i64)> {
        (token != UNTRACKED).then_some((
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
        let tracker = OffsetTracker::new();
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
        tracker.forget(1);
        assert_eq!(tracker.pending_outputs(), 0);
    }

    #[test]
    fn tokens_round_trip() {
        for (p, o) in [
            (0, 0),
            (7, 123_456_789),
            (token::MAX_PARTITION, (1 << 44) - 1),
        ] {
            assert_eq!(token::unpack(token::pack(p, o)), Some((p, o)));
        }
        assert_eq!(token::unpack(token::UNTRACKED), None);
    }
}
