//! The store against a `HashMap` model: random commits, retention passes
//! and reopens in-process (proptest), and real crashes: a child process
//! committing batches is killed with SIGKILL after a random number of
//! acknowledged batches (so inside the next commit or just after it), and
//! the reopened store must hold exactly the batches it acknowledged (or one
//! more, the batch in flight, whole), never part of one.
//!
//! What the crash test cannot show: a SIGKILL leaves the kernel's page
//! cache, so unsynced writes survive it (power loss is fjall's fsync on
//! every commit, `PersistMode::SyncData`); and a kill rarely lands between
//! two writes of one commit (measured: a commit split in two, checkpoint
//! first, passed it). Atomicity of one commit is fjall's write batch; the
//! store writes each commit, records and checkpoint, as one.

use orderflow_store::{Checkpoint, PartitionStore, Put};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// Order IDs the generated batches draw from, so later batches overwrite.
const KEYS: u64 = 2_000;
const PUTS_PER_BATCH: u64 = 40;
const TOMBSTONE_ONE_IN: u64 = 8;
/// Retention runs after every this many batches.
const EXPIRE_EVERY: u64 = 7;

/// splitmix64: a deterministic stream from a seed, the same in parent and
/// child.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Batch `i` of the sale seeded `seed`.
fn batch(seed: u64, i: u64) -> Vec<Put> {
    let mut rng = Rng(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    (0..PUTS_PER_BATCH)
        .map(|_| {
            let key = format!("o-{:06}", rng.next() % KEYS).into_bytes();
            // One put in TOMBSTONE_ONE_IN is a changelog tombstone: of a
            // held key, a key removed before, or one never written.
            let value = match rng.next() % TOMBSTONE_ONE_IN {
                0 => Vec::new(),
                _ => {
                    let len = 50 + rng.next() % 250;
                    (0..len).map(|_| rng.next() as u8).collect()
                }
            };
            let expires_at_ms = (i * 10 + rng.next() % 200) as i64;
            Put {
                key,
                value,
                expires_at_ms,
            }
        })
        .collect()
}

/// The time of the retention pass after batch `i`.
fn now_after(i: u64) -> i64 {
    (i * 10) as i64
}

fn checkpoint_after(i: u64) -> Checkpoint {
    Checkpoint {
        changelog_next: (i + 1) as i64 * 3,
        input_next: (i + 1) as i64,
    }
}

/// What the store should hold: key → (value, expiry); and what retention
/// removed, with the value it had.
#[derive(Default)]
struct Model {
    live: HashMap<Vec<u8>, (Vec<u8>, i64)>,
    expired: HashMap<Vec<u8>, Vec<u8>>,
}

impl Model {
    fn put(&mut self, put: &Put) {
        self.expired.remove(&put.key);
        if put.value.is_empty() {
            // A tombstone.
            self.live.remove(&put.key);
            return;
        }
        self.live
            .insert(put.key.clone(), (put.value.clone(), put.expires_at_ms));
    }

    fn expire(&mut self, now: i64) {
        let gone: Vec<_> = self
            .live
            .iter()
            .filter(|(_, (_, at))| *at < now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let (value, _) = self.live.remove(&key).unwrap();
            self.expired.insert(key, value);
        }
    }

    /// After batches `0..n` of `seed` and their retention passes.
    fn after(seed: u64, n: u64) -> Model {
        let mut model = Model::default();
        for i in 0..n {
            for put in batch(seed, i) {
                model.put(&put);
            }
            if i % EXPIRE_EVERY == 0 {
                model.expire(now_after(i));
            }
        }
        model
    }
}

fn contents(store: &PartitionStore) -> BTreeMap<Vec<u8>, Vec<u8>> {
    store.records().map(|r| r.unwrap()).collect()
}

/// Every live record is there with its value; anything else is a record
/// retention removed in the model and the store had not removed yet (a
/// crash after a commit, before its retention pass: the next pass removes
/// it, since retention goes by time).
fn assert_matches(store: &PartitionStore, model: &Model, lenient_expiry: bool) {
    let held = contents(store);
    for (key, (value, _)) in &model.live {
        assert_eq!(
            held.get(key),
            Some(value),
            "{} lost or changed",
            String::from_utf8_lossy(key)
        );
        assert_eq!(store.get(key).unwrap().as_ref(), Some(value));
    }
    for (key, value) in &held {
        if model.live.contains_key(key) {
            continue;
        }
        let allowed = lenient_expiry && model.expired.get(key) == Some(value);
        assert!(
            allowed,
            "{} is held but should not be",
            String::from_utf8_lossy(key)
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A commit; `buffered`: not made durable (a clean reopen keeps it too).
    Commit {
        puts: Vec<(u8, Vec<u8>, i64)>,
        buffered: bool,
    },
    Expire(i64),
    Reopen,
    /// Records moved out of memory: found with `get_spilled` until the
    /// next open, never among the records.
    Spill(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    let puts = || {
        prop::collection::vec(
            (
                0u8..60,
                prop::collection::vec(any::<u8>(), 0..64),
                0i64..100,
            ),
            0..12,
        )
    };
    prop_oneof![
        4 => puts().prop_map(|puts| Op::Commit { puts, buffered: false }),
        1 => (0i64..120).prop_map(Op::Expire),
        1 => Just(Op::Reopen),
        1 => (0u8..60).prop_map(|k| Op::Spill(format!("o-{k}").into_bytes())),
        2 => puts().prop_map(|puts| Op::Commit { puts, buffered: true }),
    ]
}

/// Generated puts with their keys spelled as order IDs.
fn named(puts: Vec<(u8, Vec<u8>, i64)>) -> Vec<Put> {
    puts.into_iter()
        .map(|(k, value, expires_at_ms)| Put {
            key: format!("o-{k}").into_bytes(),
            value,
            expires_at_ms,
        })
        .collect()
}

/// Retention as the processor does it: the records due by `now` (walked a
/// few index entries at a time, stale entries pruned), then their
/// tombstones committed with `checkpoint` (as the changelog's copies come
/// back), if there are any. The records retired.
fn retire(
    store: &mut PartitionStore,
    now: i64,
    checkpoint: Checkpoint,
    buffered: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (mut due, mut after) = (Vec::new(), None);
    loop {
        let found = store.due(now, after.as_deref(), 7).unwrap();
        store.prune(&found.stale).unwrap();
        due.extend(found.records);
        if found.walked < 7 {
            break;
        }
        after = found.last;
    }
    let tombstones: Vec<Put> = due
        .iter()
        .map(|(key, _)| Put {
            key: key.clone(),
            value: Vec::new(),
            expires_at_ms: 0,
        })
        .collect();
    if !tombstones.is_empty() {
        match buffered {
            true => store.commit_buffered(&tombstones, checkpoint).unwrap(),
            false => store.commit(&tombstones, checkpoint).unwrap(),
        }
    }
    due
}

/// A commit that removes a key (its last put in the batch is a
/// tombstone) removes what was spilled of it too.
fn forget_removed(spilled: &mut HashMap<Vec<u8>, Vec<u8>>, puts: &[Put]) {
    let mut last: HashMap<&[u8], bool> = HashMap::new();
    for put in puts {
        last.insert(&put.key, put.value.is_empty());
    }
    for (key, removed) in last {
        if removed {
            spilled.remove(key);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_store_holds_what_a_map_holds_through_commits_retention_and_reopens(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PartitionStore::open(dir.path(), 100).unwrap();
        let mut model = Model::default();
        let mut last = None;
        let mut spilled: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Spill(key) => {
                    let value = format!("spilled-{n}").into_bytes();
                    let put = Put { key: key.clone(), value: value.clone(), expires_at_ms: 0 };
                    store.spill(&[put]).unwrap();
                    spilled.insert(key, value);
                }
                Op::Commit { puts, buffered } => {
                    let puts = named(puts);
                    let checkpoint = Checkpoint { changelog_next: n as i64, input_next: 2 * n as i64 };
                    match buffered {
                        true => store.commit_buffered(&puts, checkpoint).unwrap(),
                        false => store.commit(&puts, checkpoint).unwrap(),
                    }
                    for put in &puts {
                        model.put(put);
                    }
                    forget_removed(&mut spilled, &puts);
                    last = Some(checkpoint);
                }
                Op::Expire(now) => {
                    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = model
                        .live
                        .iter()
                        .filter(|(_, (_, at))| *at < now)
                        .map(|(k, (v, _))| (k.clone(), v.clone()))
                        .collect();
                    expected.sort();
                    let checkpoint = Checkpoint { changelog_next: n as i64, input_next: 2 * n as i64 };
                    let mut retired = retire(&mut store, now, checkpoint, false);
                    retired.sort();
                    if !retired.is_empty() {
                        last = Some(checkpoint);
                    }
                    for (key, _) in &retired {
                        spilled.remove(key);
                    }
                    prop_assert_eq!(retired, expected, "the records a walk finds due");
                    model.expire(now);
                }
                Op::Reopen => {
                    drop(store);
                    store = PartitionStore::open(dir.path(), 100).unwrap();
                    spilled.clear();
                }
            }
            assert_matches(&store, &model, false);
            for k in 0..60u8 {
                let key = format!("o-{k}").into_bytes();
                prop_assert_eq!(store.get_spilled(&key).unwrap(), spilled.get(&key).cloned());
            }
            prop_assert_eq!(store.checkpoint(), last);
            for k in 0..60u8 {
                let key = format!("o-{k}").into_bytes();
                if !store.may_contain(&key) {
                    prop_assert!(!model.live.contains_key(&key), "the filter ruled out a held key");
                }
            }
        }
    }
}

/// Buffered commits between two `persist`s in the crash test's buffered
/// mode (the processor's: its writer persists about once a second).
const PERSIST_EVERY: u64 = 3;

/// The child's side of the crash test: commits batches from where the
/// store's checkpoint says, printing each acknowledged batch, until killed.
/// Buffered: commits handed to the OS without fsync (a `persist` every
/// few), each acknowledged once its commit returned: a kill -9 keeps them.
fn commit_until_killed(dir: &Path, seed: u64, buffered: bool) {
    let mut store = PartitionStore::open(dir, 1_000).unwrap();
    let start = store.checkpoint().map_or(0, |c| c.input_next as u64);
    for i in start.. {
        if buffered {
            store
                .commit_buffered(&batch(seed, i), checkpoint_after(i))
                .unwrap();
            if i % PERSIST_EVERY == 0 {
                store.persist().unwrap();
            }
            // Handed to the OS: a kill -9 (not a power loss) keeps it.
            println!("acked {i}");
        } else {
            store.commit(&batch(seed, i), checkpoint_after(i)).unwrap();
            println!("acked {i}");
        }
        if i % EXPIRE_EVERY == 0 {
            // The same checkpoint again: nothing more to vouch for.
            retire(&mut store, now_after(i), checkpoint_after(i), buffered);
        }
    }
}

#[test]
fn crash_child() {
    // Only as the child of the test below.
    let Ok(args) = std::env::var("ORDERFLOW_STORE_CRASH_CHILD") else {
        return;
    };
    let mut args = args.split(',');
    let (dir, seed, mode) = (args.next().unwrap(), args.next().unwrap(), args.next());
    commit_until_killed(
        Path::new(dir),
        seed.parse().unwrap(),
        mode == Some("buffered"),
    );
}

#[test]
fn a_kill_9_between_writes_loses_no_acknowledged_batch_and_shows_no_partial_one() {
    kill_rounds(false);
}

#[test]
fn a_kill_9_between_buffered_commits_keeps_every_acknowledged_batch_and_a_whole_prefix() {
    kill_rounds(true);
}

/// Six rounds of a child committing until SIGKILL, each reopened and
/// checked: every acknowledged batch there, batches whole, the checkpoint
/// the last batch's.
fn kill_rounds(buffered: bool) {
    let mode = if buffered { "buffered" } else { "durable" };
    let dir = tempfile::tempdir().unwrap();
    let seed = 0x5eed_0f0d;
    let mut rng = Rng(seed);
    let mut acked_total = 0u64;
    for round in 0..6 {
        // Kill once this many more batches are acknowledged: the child is
        // then inside the next commit, or between it and its print.
        let more = 3 + rng.next() % 40;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(
                "ORDERFLOW_STORE_CRASH_CHILD",
                format!("{},{seed},{mode}", dir.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut last_acked = None;
        let mut seen = 0;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(i) = line.strip_prefix("acked ") {
                last_acked = Some(i.parse::<u64>().unwrap());
                seen += 1;
                if seen == more {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = last_acked.expect("the child acknowledged batches") + 1;
        assert!(acked >= acked_total, "round {round}: progress went back");
        acked_total = acked;

        let store = PartitionStore::open(dir.path(), 1_000).unwrap();
        let held = store.checkpoint().expect("a checkpoint").input_next as u64;
        // Durable: the next commit may have landed before the kill.
        // Buffered: any number of batches after the last persist may have.
        let held_enough = if buffered {
            held >= acked
        } else {
            held == acked || held == acked + 1
        };
        assert!(
            held_enough,
            "round {round} ({mode}): {acked} batches acknowledged, the store holds {held}"
        );
        assert_eq!(store.checkpoint(), Some(checkpoint_after(held - 1)));
        // Exactly batches 0..held, whole: a partial batch would leave one
        // of its keys with an older value or missing.
        assert_matches(&store, &Model::after(seed, held), true);
    }
}
