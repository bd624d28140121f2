//! Retention: an order whose last change is older than
//! `lifecycle.retention_days` leaves its partition for good. Its record is
//! removed from the changelog by a tombstone; what an accepted order holds
//! stays sold, counted per SKU in the partition's retired units, which go
//! to the changelog in the same transaction as the tombstones, so every
//! restore (from the changelog, from a store) counts each unit once.
//!
//! Orders still waiting on something (a lifecycle timer, staff) are kept
//! past their retention until they are done: retiring one would drop a
//! payment in flight.

use super::book::{OrderBook, OrderState};
use crate::lifecycle::Millis;
use std::collections::BTreeSet;

/// What one retention pass retired, for the changelog.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retired {
    /// Orders retired: a tombstone each.
    pub orders: Vec<String>,
    /// The partition's retired units, in all, of each SKU this pass
    /// changed: a record each, replacing the one before.
    pub units: Vec<(String, i64)>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }
}

/// Retires the orders of `book` whose retention ended before `now`,
/// looking at most `limit` of the stored orders (the book's
/// [`super::ColdOrders`] knows when each changed last). An order changed
/// since its stored record, or still waiting on a timer or on staff, is
/// kept.
pub fn retire(book: &mut OrderBook, now: Millis, limit: usize) -> Retired {
    let mut retired = Retired::default();
    let mut skus = BTreeSet::new();
    for (order_id, version) in book.expired(now, limit) {
        let Some(current) = book.find(&order_id) else {
            continue;
        };
        let waiting = current
            .life
            .as_ref()
            .is_some_and(|life| life.next_due().is_some() || life.in_attention() > 0);
        if current.version != version || waiting {
            continue;
        }
        let Some(record) = book.retire(&order_id) else {
            continue;
        };
        if let (OrderState::Accepted, Some(holding)) = (&record.state, &record.holding) {
            skus.extend(holding.demand.iter().map(|(sku, _)| sku.clone()));
        }
        retired.orders.push(order_id);
    }
    retired.units = skus
        .into_iter()
        .map(|sku| {
            let units = book.retired(&sku);
            (sku, units)
        })
        .collect();
    retired
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ColdOrders, Holding, OrderRecord};
    use std::collections::HashMap;
    use std::sync::Arc;

    /// A tier that says which of its orders are due, and forgets.
    #[derive(Default)]
    struct Due {
        kept: HashMap<String, OrderRecord>,
        due: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
    }

    impl ColdOrders for Due {
        fn keep(&mut self, order_id: Arc<str>, record: Arc<OrderRecord>) {
            self.kept
                .insert(order_id.to_string(), OrderRecord::clone(&record));
        }
        fn recall(&mut self, order_id: &str) -> Option<OrderRecord> {
            self.kept.get(order_id).cloned()
        }
        fn expired(&mut self, _now: Millis, limit: usize) -> Vec<(String, u64)> {
            let mut due = self.due.lock().unwrap();
            let n = limit.min(due.len());
            due.drain(..n).collect()
        }
        fn forget(&mut self, order_id: &str) {
            self.kept.remove(order_id);
        }
    }

    fn accepted(units: u32) -> OrderRecord {
        let holding = Holding {
            customer_id: "c".into(),
            demand: vec![("A".into(), units), ("B".into(), 1)],
            shipments: Vec::new(),
        };
        OrderRecord::decided(OrderState::Accepted, 0, Some(holding))
    }

    #[test]
    fn retired_orders_leave_for_good_and_their_units_stay_sold() {
        let mut tier = Due::default();
        tier.kept.insert("old".into(), accepted(3));
        tier.kept.insert(
            "rejected".into(),
            OrderRecord::decided(OrderState::Rejected, 1, None),
        );
        let due = tier.due.clone();
        *due.lock().unwrap() = vec![
            ("old".into(), 1),
            ("rejected".into(), 1),
            // Changed since its stored copy: kept.
            ("changed".into(), 1),
        ];
        let mut book = OrderBook::new(10).with_cold(Box::new(tier));
        book.insert(
            "changed".into(),
            OrderRecord {
                version: 2,
                ..accepted(5)
            },
        );
        book.took([("A", 3), ("B", 1), ("A", 5), ("B", 1)]);
        let retired = retire(&mut book, Millis(0), 100);
        assert_eq!(retired.orders, ["old", "rejected"]);
        assert_eq!(retired.units, [("A".to_string(), 3), ("B".to_string(), 1)]);
        assert!(book.find("old").is_none(), "never recalled again");
        assert!(book.find("changed").is_some());
        assert_eq!(book.sold().get("A"), Some(&8), "retired units stay sold");
        // A second pass adds to the totals.
        book.insert(
            "later".into(),
            OrderRecord {
                version: 1,
                ..accepted(2)
            },
        );
        due.lock().unwrap().push(("later".into(), 1));
        let retired = retire(&mut book, Millis(0), 100);
        assert_eq!(retired.units, [("A".to_string(), 5), ("B".to_string(), 2)]);
    }
}
