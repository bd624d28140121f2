//! Recovery state: what a restarted processor must know before it decides
//! anything, and where it comes from.
//!
//! Every status record carries, in a header, the changelog entry of its
//! order: the order's new [`OrderRecord`] (state, deciding offset, what it
//! holds) and the partition it belongs to, in bincode. A status is written
//! exactly when a decision is made, so the status topic *is* the changelog:
//! reading it from the beginning rebuilds every partition's order book and
//! every SKU's reserved units and per-customer holdings. Stock itself comes
//! from the inventory topic, which is always read whole; the two never
//! overwrite each other, so replaying inventory never resets sales.
//!
//! See docs/architecture.md for why this holds across crashes.

use crate::engine::{ColdOrders, OrderBook, OrderRecord, OrderState};
use crate::inventory::{Inventory, Quota};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Header of status records that holds the changelog entry.
pub const HEADER: &str = "orderflow-state";
/// Format version, the first byte of the header value. Version 1 (before
/// order lifecycles) is still read: its orders have no life.
pub const VERSION: u8 = 2;
const VERSION_1: u8 = 1;

/// An order's record as version 1 wrote it.
#[derive(Deserialize)]
struct RecordV1 {
    state: OrderState,
    offset: i64,
    placed_offset: i64,
    holding: Option<crate::engine::Holding>,
}

#[derive(Deserialize)]
struct EntryV1 {
    partition: i32,
    record: RecordV1,
}

/// One decision, as written beside its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogEntry {
    /// Partition of the `orders` topic the order belongs to.
    pub partition: i32,
    pub record: OrderRecord,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("state header is empty")]
    Empty,
    #[error("state header has version {0}, this build reads version {VERSION}")]
    Version(u8),
    #[error("state header does not decode: {0}")]
    Decode(String),
}

/// [`encode`] of the entry of `record` in `partition`, without owning
/// the record: the same bytes (serde writes a reference as its value).
pub fn encode_record(partition: i32, record: &OrderRecord) -> Vec<u8> {
    #[derive(Serialize)]
    struct Entry<'a> {
        partition: i32,
        record: &'a OrderRecord,
    }
    let mut bytes = vec![VERSION];
    bincode::serde::encode_into_std_write(
        Entry { partition, record },
        &mut bytes,
        bincode::config::standard(),
    )
    .expect("writing to a Vec cannot fail");
    bytes
}

pub fn encode(entry: &ChangelogEntry) -> Vec<u8> {
    let mut bytes = vec![VERSION];
    bincode::serde::encode_into_std_write(entry, &mut bytes, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
    bytes
}

pub fn decode(bytes: &[u8]) -> Result<ChangelogEntry, StateError> {
    let (&version, rest) = bytes.split_first().ok_or(StateError::Empty)?;
    let config = bincode::config::standard();
    let error = |e: bincode::error::DecodeError| StateError::Decode(e.to_string());
    match version {
        VERSION => bincode::serde::decode_from_slice(rest, config)
            .map(|(entry, _)| entry)
            .map_err(error),
        VERSION_1 => {
            let (old, _): (EntryV1, _) =
                bincode::serde::decode_from_slice(rest, config).map_err(error)?;
            Ok(ChangelogEntry {
                partition: old.partition,
                record: OrderRecord {
                    state: old.record.state,
                    offset: old.record.offset,
                    placed_offset: old.record.placed_offset,
                    holding: old.record.holding,
                    life: None,
                    outbox: Vec::new(),
                    // Ordered among themselves by offset (see `newer`).
                    version: 0,
                },
            })
        }
        other => Err(StateError::Version(other)),
    }
}

/// Key prefix, in the state topic, of the units a partition's retired
/// orders hold, one record per SKU (the SKU follows): retention removes an
/// accepted order's record but its units stay sold. No order ID starts
/// with it: 0xFF never begins UTF-8.
pub const RETIRED_PREFIX: &[u8] = b"\xFFretired:";
/// First byte of a retired-units record's value.
const RETIRED_VERSION: u8 = 1;

/// The state topic's key of `sku`'s retired units.
pub fn retired_key(sku: &str) -> Vec<u8> {
    let mut key = RETIRED_PREFIX.to_vec();
    key.extend_from_slice(sku.as_bytes());
    key
}

/// Whether `key` is a retired-units key; the SKU if it names one.
pub fn retired_sku(key: &[u8]) -> Option<Result<&str, StateError>> {
    let sku = key.strip_prefix(RETIRED_PREFIX)?;
    Some(std::str::from_utf8(sku).map_err(|_| StateError::Decode("SKU is not UTF-8".into())))
}

/// The units of a SKU a partition's retired orders hold, in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredUnits {
    /// Partition of `orders` whose orders held them.
    pub partition: i32,
    pub units: i64,
}

pub fn encode_retired(retired: RetiredUnits) -> Vec<u8> {
    let mut bytes = vec![RETIRED_VERSION];
    bincode::serde::encode_into_std_write(retired, &mut bytes, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
    bytes
}

pub fn decode_retired(bytes: &[u8]) -> Result<RetiredUnits, StateError> {
    match bytes.split_first() {
        None => Err(StateError::Empty),
        Some((&RETIRED_VERSION, rest)) => {
            bincode::serde::decode_from_slice(rest, bincode::config::standard())
                .map(|(retired, _)| retired)
                .map_err(|e| StateError::Decode(e.to_string()))
        }
        Some((&other, _)) => Err(StateError::Version(other)),
    }
}

/// Whether `record` is a later state of its order than `known`: a higher
/// version, or (version 1 records, which have none) a later offset.
fn newer(record: &OrderRecord, known: &OrderRecord) -> bool {
    (record.version, record.offset) > (known.version, known.offset)
}

/// Makes the [`ColdOrders`] of a partition's book.
pub type ColdFactory<'a> = Box<dyn Fn(i32) -> Box<dyn ColdOrders> + 'a>;

/// Rebuilds books and reservations from changelog entries, in the order
/// they were written per order (one order's statuses share a partition of
/// the status topic, so they are read in order).
pub struct Restorer<'a> {
    inventory: &'a Inventory,
    /// Makes each partition's cold tier, if its books have one.
    cold: Option<ColdFactory<'a>>,
    books: HashMap<i32, OrderBook>,
    capacity: usize,
    /// Partitions of `orders` when each sells only its quota.
    quota_of: Option<u32>,
    /// Entries applied (copies of an entry already applied are skipped).
    pub applied: u64,
}

impl<'a> Restorer<'a> {
    /// `quota_of`: the partition count of `orders` when every partition
    /// sells only its quota (instances sharing a sale), else `None`.
    pub fn new(inventory: &'a Inventory, capacity: usize, quota_of: Option<u32>) -> Self {
        Restorer {
            inventory,
            cold: None,
            books: HashMap::new(),
            capacity,
            quota_of,
            applied: 0,
        }
    }

    /// Books whose orders past capacity go to the tier `cold` makes for
    /// their partition (else they are forgotten).
    pub fn with_cold(mut self, cold: ColdFactory<'a>) -> Self {
        self.cold = Some(cold);
        self
    }

    /// An empty book for `partition`, as this restorer builds them.
    pub fn empty_book(&self, partition: i32) -> OrderBook {
        let book = match self.quota_of {
            Some(partitions) => OrderBook::with_quota(
                self.capacity,
                Quota {
                    partition: partition as u32,
                    partitions,
                },
            ),
            None => OrderBook::new(self.capacity),
        };
        match &self.cold {
            Some(cold) => book.with_cold(cold(partition)),
            None => book,
        }
    }

    pub fn apply(&mut self, order_id: &str, entry: ChangelogEntry) {
        self.ensure_book(entry.partition);
        let book = self.books.get_mut(&entry.partition).expect("made above");
        let known = book.find(order_id);
        if known.is_some_and(|known| !newer(&entry.record, known)) {
            // A copy sent again after a crash, or an older state read
            // after a newer one (the status and state topics interleave).
            return;
        }
        let held = |record: &OrderRecord| match (&record.state, &record.holding) {
            (OrderState::Accepted, Some(holding)) => Some(holding.clone()),
            _ => None,
        };
        let before = known.and_then(held);
        let after = held(&entry.record);
        if before != after {
            // Only give back what this restore took: an acceptance older
            // than the book's window keeps its units (never oversells).
            if let Some(holding) = &before {
                self.inventory
                    .release(&holding.customer_id, holding.units());
                book.gave_back(holding.units());
            }
            if let Some(holding) = &after {
                self.inventory.restore(holding);
                book.took(holding.units());
            }
        }
        book.insert(order_id.to_string(), entry.record);
        self.applied += 1;
    }

    /// Applies a changelog tombstone of `order_id` (retention retired it):
    /// what it held is given back here, since the partition's retired
    /// units, applied apart ([`Restorer::apply_retired`]), count it.
    pub fn apply_tombstone(&mut self, partition: i32, order_id: &str) {
        self.ensure_book(partition);
        let book = self.books.get_mut(&partition).expect("made above");
        let Some(record) = book.remove(order_id) else {
            return;
        };
        if let (OrderState::Accepted, Some(holding)) = (&record.state, &record.holding) {
            self.inventory
                .release(&holding.customer_id, holding.units());
            book.gave_back(holding.units());
        }
        self.applied += 1;
    }

    /// Applies the units of `sku` that `partition`'s retired orders hold
    /// in all (the newest such record counts: each replaces the one before).
    pub fn apply_retired(&mut self, sku: &str, retired: RetiredUnits) {
        self.ensure_book(retired.partition);
        let book = self.books.get_mut(&retired.partition).expect("made above");
        let more = book.set_retired(sku, retired.units);
        if more > 0 {
            self.inventory.take_units(sku, more);
        } else if more < 0 {
            self.inventory.release_units(sku, -more);
        }
        self.applied += 1;
    }

    /// Applies the record of an order the partition's cold tier holds (a
    /// restore's scan of its local store, before anything else is
    /// applied: each order once, so nothing is looked up): takes what it
    /// holds, and lets the book adopt it (see [`OrderBook::adopt`]).
    pub fn apply_stored(&mut self, order_id: &str, entry: ChangelogEntry) {
        self.ensure_book(entry.partition);
        let book = self.books.get_mut(&entry.partition).expect("made above");
        if let (OrderState::Accepted, Some(holding)) = (&entry.record.state, &entry.record.holding)
        {
            self.inventory.restore(holding);
            book.took(holding.units());
        }
        book.adopt(order_id.to_string(), entry.record);
        self.applied += 1;
    }

    /// `order_id`'s record at `version` was written to `partition`'s cold
    /// tier (a restore writes what it reads from the changelog): see
    /// [`OrderBook::mark_stored`].
    pub fn stored(&mut self, partition: i32, order_id: &str, version: u64) {
        if let Some(book) = self.books.get_mut(&partition) {
            book.mark_stored(order_id, version);
        }
    }

    /// Makes `partition`'s book now, if it has none yet (so its cold tier
    /// exists before records are applied).
    pub fn ensure_book(&mut self, partition: i32) {
        if !self.books.contains_key(&partition) {
            let book = self.empty_book(partition);
            self.books.insert(partition, book);
        }
    }

    /// The rebuilt order books of `partitions` (empty where no entry was
    /// found), by partition.
    pub fn finish(mut self, partitions: &[i32]) -> HashMap<i32, OrderBook> {
        for partition in partitions {
            if !self.books.contains_key(partition) {
                let book = self.empty_book(*partition);
                self.books.insert(*partition, book);
            }
        }
        self.books
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Holding;
    use crate::order::InventoryEvent;
    use std::collections::BTreeMap;

    fn entry(state: OrderState, offset: i64) -> ChangelogEntry {
        let holding = (state != OrderState::Rejected).then(|| Holding {
            customer_id: "c-1".into(),
            demand: vec![("A".into(), 2)],
            shipments: vec!["home".into()],
        });
        ChangelogEntry {
            partition: 3,
            record: OrderRecord {
                version: offset as u64,
                ..OrderRecord::decided(state, offset, holding)
            },
        }
    }

    /// An inventory with 10 units of SKU `A`.
    fn ten_of_a(max_per_customer: Option<u32>) -> Inventory {
        let inventory = Inventory::new();
        inventory
            .apply(&InventoryEvent::StockSet {
                sku: "A".into(),
                available: 10,
                prices: BTreeMap::new(),
                max_per_customer,
            })
            .unwrap();
        inventory
    }

    #[test]
    fn round_trip_and_version_check() {
        let e = entry(OrderState::Accepted, 42);
        assert_eq!(encode_record(e.partition, &e.record), encode(&e));
        assert_eq!(decode(&encode(&e)), Ok(e));
        assert_eq!(decode(&[]), Err(StateError::Empty));
        assert_eq!(decode(&[9, 1, 2]), Err(StateError::Version(9)));
        assert!(matches!(
            decode(&[VERSION, 0xff]),
            Err(StateError::Decode(_))
        ));
    }

    #[test]
    fn restores_reservations_once_and_cancellations() {
        let inventory = ten_of_a(Some(5));
        let mut restorer = Restorer::new(&inventory, 100, None);
        restorer.apply("o-1", entry(OrderState::Accepted, 7));
        restorer.apply("o-1", entry(OrderState::Accepted, 7)); // copy
        restorer.apply("o-2", entry(OrderState::Accepted, 8));
        restorer.apply("o-3", entry(OrderState::Rejected, 9));
        assert_eq!(inventory.get("A").unwrap().reserved, 4);
        assert_eq!(inventory.get("A").unwrap().per_customer["c-1"], 4);
        restorer.apply("o-2", entry(OrderState::Cancelled, 20));
        restorer.apply("o-2", entry(OrderState::Cancelled, 20)); // copy
        restorer.apply("o-9", entry(OrderState::Cancelled, 21)); // acceptance not seen
        assert_eq!(inventory.get("A").unwrap().reserved, 2);
        assert_eq!(restorer.applied, 5);
        let books = restorer.finish(&[3]);
        assert_eq!(books[&3].get("o-2").unwrap().state, OrderState::Cancelled);
        assert_eq!(books[&3].get("o-3").unwrap().offset, 9);
    }

    #[test]
    fn version_1_entries_are_read_as_orders_without_a_life() {
        #[derive(Serialize)]
        struct OldRecord {
            state: OrderState,
            offset: i64,
            placed_offset: i64,
            holding: Option<Holding>,
        }
        #[derive(Serialize)]
        struct OldEntry {
            partition: i32,
            record: OldRecord,
        }
        let old = OldEntry {
            partition: 2,
            record: OldRecord {
                state: OrderState::Rejected,
                offset: 11,
                placed_offset: 11,
                holding: None,
            },
        };
        let mut bytes = vec![1u8];
        bincode::serde::encode_into_std_write(&old, &mut bytes, bincode::config::standard())
            .unwrap();
        let entry = decode(&bytes).unwrap();
        assert_eq!(entry.partition, 2);
        assert_eq!(entry.record.offset, 11);
        assert!(entry.record.life.is_none());
    }

    #[test]
    fn the_newest_version_wins_whichever_topic_is_read_first() {
        let inventory = ten_of_a(None);
        let mut restorer = Restorer::new(&inventory, 100, None);
        // A return restocked one unit: version 30 holds 1 of the 2.
        let mut returned = entry(OrderState::Accepted, 7);
        returned.record.version = 30;
        returned.record.offset = 30;
        returned.record.holding.as_mut().unwrap().demand = vec![("A".into(), 1)];
        restorer.apply("o-1", returned.clone()); // the state topic, read first
        restorer.apply("o-1", entry(OrderState::Accepted, 7)); // the status, older
        assert_eq!(inventory.get("A").unwrap().reserved, 1);
        // Read the other way round, the same.
        let inventory_2 = ten_of_a(None);
        let mut restorer = Restorer::new(&inventory_2, 100, None);
        restorer.apply("o-1", entry(OrderState::Accepted, 7));
        restorer.apply("o-1", returned);
        assert_eq!(inventory_2.get("A").unwrap().reserved, 1);
        assert_eq!(restorer.finish(&[3])[&3].get("o-1").unwrap().version, 30);
    }

    #[test]
    fn a_retired_order_counts_once_whether_its_records_are_compacted_or_not() {
        let stock = || ten_of_a(None);
        let retired = RetiredUnits {
            partition: 3,
            units: 2,
        };
        assert_eq!(decode_retired(&encode_retired(retired)), Ok(retired));
        assert_eq!(retired_sku(&retired_key("A")), Some(Ok("A")));
        assert_eq!(retired_sku(b"o-1"), None, "an order ID is no retired key");
        // The changelog before compaction: the order, then its retirement
        // (the units, then the tombstone), then another order.
        let inventory = stock();
        let mut restorer = Restorer::new(&inventory, 100, None);
        restorer.apply("o-1", entry(OrderState::Accepted, 7));
        restorer.apply_retired("A", retired);
        restorer.apply_tombstone(3, "o-1");
        restorer.apply("o-2", entry(OrderState::Accepted, 8));
        assert_eq!(inventory.get("A").unwrap().reserved, 4);
        let books = restorer.finish(&[3]);
        assert!(books[&3].get("o-1").is_none());
        assert_eq!((books[&3].sold()["A"], books[&3].retired("A")), (4, 2));
        // After compaction: the units record alone, and the later order.
        let inventory = stock();
        let mut restorer = Restorer::new(&inventory, 100, None);
        restorer.apply_retired("A", retired);
        restorer.apply("o-2", entry(OrderState::Accepted, 8));
        // A newer total replaces the older one.
        restorer.apply_retired(
            "A",
            RetiredUnits {
                units: 3,
                ..retired
            },
        );
        assert_eq!(inventory.get("A").unwrap().reserved, 5);
    }
}
