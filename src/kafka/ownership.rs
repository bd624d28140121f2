//! Which partitions of `orders` this process owns, and where each stands.
//! Pure bookkeeping, no Kafka calls: the consumer's poll loop (`source`)
//! feeds it what happened and carries out what it says.
//!
//! A partition goes through three stages:
//!
//! - **Restoring**: assigned; its state is being read from the status topic
//!   in the background (`recovery`). It is paused, and none of its records
//!   may be dispatched.
//! - **Owned**: its restored book is with its shard; its records are
//!   dispatched.
//! - **Revoking**: revoked by a rebalance; paused. It is handed over (the
//!   consumer unassigns it) only once everything dispatched for it is
//!   decided and acknowledged and its offset committed, and its restore,
//!   if one was running, has ended: the next owner then restores every
//!   status this process wrote for it.
//!
//! [`Flow`] decides, from the stages and the outputs in flight, which
//! partitions are paused and whether the process is ready: the one owner of
//! both.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where one partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its state is being restored by the job with this id.
    Restoring(u64),
    Owned,
    Revoking,
}

/// A restore to run: the partitions of one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub partitions: Vec<i32>,
}

/// A revoke waiting to be handed over: the consumer unassigns its
/// partitions in one call once it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoke {
    pub partitions: Vec<i32>,
}

/// What to do with a record of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Owned: hand it to its shard.
    Dispatch,
    /// Being handed over, or not assigned (fetched before it was, which
    /// librdkafka's version barrier should already filter): not decided
    /// here, not committed; its owner reads it from the committed offset.
    Drop,
    /// Assigned but not restored: deciding it could decide an order twice,
    /// and skipping it would move the fetch position past it (a pause
    /// resumes from the last record the consumer was given). Cannot happen
    /// (a partition is paused from its assignment until it is owned); if
    /// it does, the processor stops.
    Refuse,
}

/// What became of a finished restore job.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Still assigned: their books go to their shards, now owned.
    pub adopt: Vec<i32>,
    /// Revoked or lost while restoring: what their books took goes back.
    pub give_back: Vec<i32>,
}

#[derive(Debug, Default)]
pub struct Ownership {
    stages: BTreeMap<i32, Stage>,
    /// Restore jobs not finished yet, with their partitions.
    jobs: HashMap<u64, Vec<i32>>,
    /// Graceful revokes not handed over yet, in the order they came.
    revokes: Vec<Revoke>,
    next_job: u64,
}

impl Ownership {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stage(&self, partition: i32) -> Option<Stage> {
        self.stages.get(&partition).copied()
    }

    /// Partitions assigned (restoring or owned), not being handed over.
    pub fn assigned(&self) -> usize {
        self.stages
            .values()
            .filter(|s| **s != Stage::Revoking)
            .count()
    }

    /// Partitions owned (restored, not being handed over), in order.
    pub fn owned(&self) -> Vec<i32> {
        let mut owned: Vec<i32> = self
            .stages
            .iter()
            .filter(|(_, s)| **s == Stage::Owned)
            .map(|(p, _)| *p)
            .collect();
        owned.sort_unstable();
        owned
    }

    /// Partitions assigned whose state is still being restored: counted in
    /// `assigned`, not yet decided.
    pub fn restoring(&self) -> usize {
        self.stages
            .values()
            .filter(|s| matches!(s, Stage::Restoring(_)))
            .count()
    }

    /// Whether every one of `partitions` partitions is owned.
    pub fn owns_all(&self, partitions: usize) -> bool {
        self.stages.len() == partitions && self.stages.values().all(|s| *s == Stage::Owned)
    }

    /// Partitions assigned by a rebalance: they are restoring, by the
    /// returned job.
    pub fn assign(&mut self, partitions: &[i32]) -> Option<Job> {
        if partitions.is_empty() {
            return None;
        }
        let id = self.next_job;
        self.next_job += 1;
        for partition in partitions {
            let before = self.stages.insert(*partition, Stage::Restoring(id));
            debug_assert!(
                before.is_none(),
                "partition {partition} assigned again while {before:?}"
            );
        }
        self.jobs.insert(id, partitions.to_vec());
        Some(Job {
            id,
            partitions: partitions.to_vec(),
        })
    }

    /// A restore job finished (or stopped at shutdown).
    pub fn restored(&mut self, job: u64) -> Restored {
        let mut done = Restored::default();
        for partition in self.jobs.remove(&job).unwrap_or_default() {
            if self.stages.get(&partition) == Some(&Stage::Restoring(job)) {
                self.stages.insert(partition, Stage::Owned);
                done.adopt.push(partition);
            } else {
                done.give_back.push(partition);
            }
        }
        done
    }

    /// A restore job that ended without books (cancelled, or shutdown):
    /// forgotten; partitions it still had stay restoring, never dispatched.
    pub fn abandon(&mut self, job: u64) {
        self.jobs.remove(&job);
    }

    /// Restore jobs none of whose partitions is waiting for them any more
    /// (all revoked or lost): they can stop.
    pub fn unwanted_jobs(&self) -> Vec<u64> {
        self.jobs
            .iter()
            .filter(|(id, partitions)| {
                !partitions
                    .iter()
                    .any(|p| self.stages.get(p) == Some(&Stage::Restoring(**id)))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// A graceful revoke: the partitions are handed over once
    /// [`Ownership::handed_over`] says so.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for partition in partitions {
            if let Some(stage) = self.stages.get_mut(partition) {
                *stage = Stage::Revoking;
            }
        }
        self.revokes.push(Revoke {
            partitions: partitions.to_vec(),
        });
    }

    /// Partitions lost (the group gave them away already, e.g. after a
    /// session timeout): forgotten now. Returns those that were owned,
    /// whose shards must give back what they hold.
    pub fn lose(&mut self, partitions: &[i32]) -> Vec<i32> {
        let mut owned = Vec::new();
        for partition in partitions {
            match self.stages.get(partition) {
                Some(Stage::Owned) => {
                    self.stages.remove(partition);
                    owned.push(*partition);
                }
                // The restore's result is given back when it comes.
                Some(Stage::Restoring(_)) => {
                    self.stages.remove(partition);
                }
                // Lost while being handed over: the revoke still needs
                // its unassign call; it completes as it would have.
                Some(Stage::Revoking) | None => {}
            }
        }
        owned
    }

    /// Partitions of graceful revokes that still wait to be handed over.
    pub fn revoking(&self) -> impl Iterator<Item = i32> + '_ {
        self.revokes
            .iter()
            .flat_map(|r| r.partitions.iter().copied())
    }

    /// The oldest revoke, if it can be handed over now: none of its
    /// partitions is still being restored, and `settled` (everything
    /// dispatched for them decided and acknowledged) holds for them. It is
    /// removed, and its partitions forgotten.
    pub fn handed_over(&mut self, settled: impl Fn(&[i32]) -> bool) -> Option<Revoke> {
        let revoke = self.revokes.first()?;
        let restoring = revoke
            .partitions
            .iter()
            .any(|p| self.jobs.values().any(|job| job.contains(p)));
        if restoring || !settled(&revoke.partitions) {
            return None;
        }
        let revoke = self.revokes.remove(0);
        for partition in &revoke.partitions {
            self.stages.remove(partition);
        }
        Some(revoke)
    }

    /// Every pending revoke, handed over as it is (at shutdown, after the
    /// final commit).
    pub fn hand_over_all(&mut self) -> Vec<Revoke> {
        for partition in self.revokes.iter().flat_map(|r| &r.partitions) {
            self.stages.remove(partition);
        }
        std::mem::take(&mut self.revokes)
    }

    /// What to do with a record of `partition`.
    pub fn verdict(&self, partition: i32) -> Verdict {
        match self.stages.get(&partition) {
            Some(Stage::Owned) => Verdict::Dispatch,
            Some(Stage::Revoking) | None => Verdict::Drop,
            Some(Stage::Restoring(_)) => Verdict::Refuse,
        }
    }
}

/// What [`Flow`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlowChange {
    pub pause: Vec<i32>,
    pub resume: Vec<i32>,
    /// `Some(false)`: turn `/ready` to 503 (another instance shares the
    /// whole stock); `Some(true)`: ready again.
    pub ready: Option<bool>,
}

/// Which partitions are paused, and whether the process is ready.
///
/// A partition is paused while it is restoring or being handed over; an
/// owned one while the outputs in flight are over their bound (until they
/// fall to half of it), and, when this process sells the whole stock,
/// while it does not own every partition (another instance would sell the
/// same units). In that last case it is also not ready.
#[derive(Debug)]
pub struct Flow {
    /// Partition count of `orders`.
    partitions: usize,
    /// Sells the whole stock: decide only while owning every partition.
    whole: bool,
    /// Outputs in flight past which the consumer pauses.
    max_in_flight: usize,
    /// Paused for the in-flight bound (until half of it).
    over_bound: bool,
    /// Paused as far as the consumer knows.
    paused: BTreeSet<i32>,
    /// Whether the whole stock is shared right now.
    sharing: bool,
}

impl Flow {
    pub fn new(partitions: usize, whole: bool, max_in_flight: usize) -> Self {
        Flow {
            partitions,
            whole,
            max_in_flight,
            over_bound: false,
            paused: BTreeSet::new(),
            sharing: false,
        }
    }

    /// The consumer paused `partitions` itself (in the rebalance callback).
    pub fn paused_by_consumer(&mut self, partitions: &[i32]) {
        self.paused.extend(partitions);
    }

    /// `partitions` are no longer assigned: nothing to resume.
    pub fn unassigned(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.paused.remove(partition);
        }
    }

    /// Whether owned partitions are paused for the outputs in flight.
    pub fn over_bound(&self) -> bool {
        self.over_bound
    }

    /// What to pause, resume and report, given the stages and the outputs
    /// in flight now.
    pub fn update(&mut self, ownership: &Ownership, in_flight: usize) -> FlowChange {
        if in_flight > self.max_in_flight {
            self.over_bound = true;
        } else if in_flight <= self.max_in_flight / 2 {
            self.over_bound = false;
        }
        let assigned = ownership.assigned();
        let sharing = self.whole && assigned > 0 && assigned < self.partitions;
        let blocked = self.over_bound || (self.whole && !ownership.owns_all(self.partitions));
        let mut change = FlowChange::default();
        for (partition, stage) in &ownership.stages {
            let pause = match stage {
                Stage::Owned => blocked,
                Stage::Restoring(_) | Stage::Revoking => true,
            };
            match (pause, self.paused.contains(partition)) {
                (true, false) => {
                    self.paused.insert(*partition);
                    change.pause.push(*partition);
                }
                (false, true) => {
                    self.paused.remove(partition);
                    change.resume.push(*partition);
                }
                _ => {}
            }
        }
        if sharing != self.sharing {
            self.sharing = sharing;
            change.ready = Some(!sharing);
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_decided_only_once_restored() {
        let mut ownership = Ownership::new();
        let job = ownership.assign(&[0, 1]).unwrap();
        assert_eq!(ownership.verdict(0), Verdict::Refuse, "restoring");
        assert_eq!(ownership.verdict(7), Verdict::Drop, "not assigned");
        assert_eq!((ownership.assigned(), ownership.restoring()), (2, 2));
        assert_eq!(
            ownership.restored(job.id),
            Restored {
                adopt: vec![0, 1],
                give_back: vec![]
            }
        );
        assert_eq!(ownership.verdict(0), Verdict::Dispatch);
        assert_eq!((ownership.assigned(), ownership.restoring()), (2, 0));
        ownership.revoke(&[0]);
        assert_eq!(ownership.verdict(0), Verdict::Drop, "being handed over");
        assert_eq!(ownership.verdict(1), Verdict::Dispatch);
    }

    #[test]
    fn a_revoke_is_handed_over_only_once_settled_however_long() {
        let mut ownership = Ownership::new();
        let job = ownership.assign(&[0, 1, 2]).unwrap();
        ownership.restored(job.id);
        ownership.revoke(&[1, 2]);
        // Outputs of partition 2 in flight: no hand-over, no timeout.
        for _ in 0..1_000 {
            assert_eq!(ownership.handed_over(|ps| !ps.contains(&2)), None);
        }
        assert_eq!(ownership.revoking().collect::<Vec<_>>(), [1, 2]);
        let revoke = ownership.handed_over(|_| true).unwrap();
        assert_eq!(revoke.partitions, [1, 2]);
        assert_eq!(ownership.stage(1), None);
        assert_eq!(ownership.assigned(), 1);
    }

    #[test]
    fn a_partition_revoked_while_restoring_waits_for_its_restore_and_gives_it_back() {
        let mut ownership = Ownership::new();
        let job = ownership.assign(&[0, 1]).unwrap();
        ownership.revoke(&[1]);
        assert_eq!(ownership.handed_over(|_| true), None, "restore running");
        assert_eq!(
            ownership.restored(job.id),
            Restored {
                adopt: vec![0],
                give_back: vec![1]
            }
        );
        assert_eq!(ownership.handed_over(|_| true).unwrap().partitions, [1]);
        // Lost while restoring: forgotten now, given back when restored.
        let job = ownership.assign(&[3]).unwrap();
        assert!(
            ownership.lose(&[0, 3]) == [0],
            "only owned ones are released"
        );
        assert_eq!(ownership.restored(job.id).give_back, [3]);
        assert_eq!(ownership.assigned(), 0);
    }

    #[test]
    fn flow_pauses_restoring_revoking_and_over_the_in_flight_bound() {
        let mut ownership = Ownership::new();
        let mut flow = Flow::new(2, false, 100);
        let job = ownership.assign(&[0, 1]).unwrap();
        flow.paused_by_consumer(&[0, 1]);
        assert_eq!(flow.update(&ownership, 0), FlowChange::default());
        ownership.restored(job.id);
        let change = flow.update(&ownership, 0);
        assert_eq!(change.resume, [0, 1]);
        assert_eq!(flow.update(&ownership, 101).pause, [0, 1], "over the bound");
        assert!(flow.update(&ownership, 60).resume.is_empty(), "until half");
        assert_eq!(flow.update(&ownership, 50).resume, [0, 1]);
        ownership.revoke(&[1]);
        flow.paused_by_consumer(&[1]);
        assert_eq!(flow.update(&ownership, 0), FlowChange::default());
    }

    #[test]
    fn whole_stock_decides_only_while_owning_every_partition() {
        let mut ownership = Ownership::new();
        let mut flow = Flow::new(3, true, 100);
        let first = ownership.assign(&[0, 1]).unwrap();
        flow.paused_by_consumer(&[0, 1]);
        ownership.restored(first.id);
        let change = flow.update(&ownership, 0);
        assert_eq!(change.ready, Some(false), "two of three: shared");
        assert!(change.resume.is_empty());
        let last = ownership.assign(&[2]).unwrap();
        flow.paused_by_consumer(&[2]);
        let change = flow.update(&ownership, 0);
        assert_eq!(change.ready, Some(true), "all three assigned");
        assert!(change.resume.is_empty(), "one is still restoring");
        ownership.restored(last.id);
        assert_eq!(flow.update(&ownership, 0).resume, [0, 1, 2]);
    }
}
