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

use crate::engine::{OrderBook, OrderRecord, OrderState};
use crate::inventory::{Inventory, Quota};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Header of status records that holds the changelog entry.
pub const HEADER: &str = "orderflow-state";
/// Format version, the first byte of the header value.
pub const VERSION: u8 = 1;

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

pub fn encode(entry: &ChangelogEntry) -> Vec<u8> {
    let mut bytes = vec![VERSION];
    bincode::serde::encode_into_std_write(entry, &mut bytes, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
    bytes
}

pub fn decode(bytes: &[u8]) -> Result<ChangelogEntry, StateError> {
    let (&version, rest) = bytes.split_first().ok_or(StateError::Empty)?;
    if version != VERSION {
        return Err(StateError::Version(version));
    }
    bincode::serde::decode_from_slice(rest, bincode::config::standard())
        .map(|(entry, _)| entry)
        .map_err(|e| StateError::Decode(e.to_string()))
}

/// Rebuilds books and reservations from changelog entries, in the order
/// they were written per order (one order's statuses share a partition of
/// the status topic, so they are read in order).
pub struct Restorer<'a> {
    inventory: &'a Inventory,
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
            books: HashMap::new(),
            capacity,
            quota_of,
            applied: 0,
        }
    }

    /// An empty book for `partition`, as this restorer builds them.
    pub fn empty_book(&self, partition: i32) -> OrderBook {
        match self.quota_of {
            Some(partitions) => OrderBook::with_quota(
                self.capacity,
                Quota {
                    partition: partition as u32,
                    partitions,
                },
            ),
            None => OrderBook::new(self.capacity),
        }
    }

    pub fn apply(&mut self, order_id: &str, entry: ChangelogEntry) {
        if !self.books.contains_key(&entry.partition) {
            let book = self.empty_book(entry.partition);
            self.books.insert(entry.partition, book);
        }
        let book = self
            .books
            .get_mut(&entry.partition)
            .expect("inserted above");
        let known = book.get(order_id);
        if known == Some(&entry.record) {
            return; // a copy of a status sent again after a crash
        }
        let was_accepted = known.is_some_and(|r| r.state == OrderState::Accepted);
        match (&entry.record.state, &entry.record.holding) {
            (OrderState::Accepted, Some(holding)) if !was_accepted => {
                self.inventory.restore(holding);
                book.took(&holding.demand);
            }
            // Only give back what this restore took: an acceptance older
            // than the book's window keeps its units (never oversells).
            (OrderState::Cancelled, Some(holding)) if was_accepted => {
                self.inventory
                    .release(&holding.customer_id, &holding.demand);
                book.gave_back(&holding.demand);
            }
            _ => {}
        }
        book.insert(order_id.to_string(), entry.record);
        self.applied += 1;
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
                state,
                offset,
                placed_offset: offset,
                holding,
            },
        }
    }

    #[test]
    fn round_trip_and_version_check() {
        let e = entry(OrderState::Accepted, 42);
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
        let inventory = Inventory::new();
        inventory.apply(&InventoryEvent::StockSet {
            sku: "A".into(),
            available: 10,
            prices: BTreeMap::new(),
            max_per_customer: Some(5),
        });
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
}
