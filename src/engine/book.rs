//! The order book of one partition: which orders have a status, and what
//! each accepted order holds, so duplicates get no second status and a
//! cancellation gives back exactly what was taken, once.

use crate::inventory::{Quota, Share, SoldUnits};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Where a decided order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderState {
    Accepted,
    Rejected,
    Cancelled,
}

/// What an accepted (or once accepted, now cancelled) order holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub customer_id: String,
    /// Units per SKU, sorted by SKU, as reserved.
    pub demand: Vec<(String, u32)>,
    /// Address keys of the order's shipments.
    pub shipments: Vec<String>,
}

/// What the processor remembers of a decided order. This is also the
/// changelog entry written beside each status (see `state`), from which a
/// restarted processor rebuilds its books and reservations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub state: OrderState,
    /// Offset (in the order's partition) of the record that brought the
    /// order to this state. A record seen again at the same offset is a
    /// replay after a crash or rebalance, not an upstream duplicate.
    pub offset: i64,
    /// Offset of the order's `order_placed` record (equal to `offset` until
    /// a cancellation), to tell a replay of the placement from a duplicate.
    pub placed_offset: i64,
    /// `None` for rejected orders.
    pub holding: Option<Holding>,
}

/// Decided orders of one partition, bounded: past `capacity` orders the
/// oldest is forgotten (first in, first out). A duplicate of a forgotten
/// order would be decided again, and a cancellation of one ignored, so the
/// capacity (`engine.dedup_window_orders`) must cover the time over which
/// upstream can redeliver or cancel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderBook {
    orders: HashMap<String, OrderRecord>,
    arrival: VecDeque<String>,
    capacity: usize,
    evicted: u64,
    /// Set when the partition sells only its quota of each SKU (instances
    /// sharing a sale); `None` when this process sells the whole stock.
    quota: Option<Quota>,
    /// With a quota: units of each SKU held by the partition's accepted,
    /// uncancelled orders, including orders the window has forgotten.
    sold: SoldUnits,
}

impl OrderBook {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "an order book must hold at least one order");
        OrderBook {
            orders: HashMap::new(),
            arrival: VecDeque::new(),
            capacity,
            evicted: 0,
            quota: None,
            sold: SoldUnits::default(),
        }
    }

    /// A book for a partition that sells only its quota of each SKU.
    pub fn with_quota(capacity: usize, quota: Quota) -> Self {
        OrderBook {
            quota: Some(quota),
            ..OrderBook::new(capacity)
        }
    }

    /// How much stock this partition's orders may take.
    pub fn share(&self) -> Share<'_> {
        match self.quota {
            None => Share::Whole,
            Some(quota) => Share::Partition {
                quota,
                sold: &self.sold,
            },
        }
    }

    /// Counts units an accepted order took (only needed with a quota).
    pub fn took(&mut self, demand: &[(String, u32)]) {
        if self.quota.is_none() {
            return;
        }
        for (sku, units) in demand {
            match self.sold.get_mut(sku.as_str()) {
                Some(sold) => *sold += i64::from(*units),
                None => {
                    self.sold.insert(sku.clone(), i64::from(*units));
                }
            }
        }
    }

    /// Counts units a cancelled order gave back.
    pub fn gave_back(&mut self, demand: &[(String, u32)]) {
        for (sku, units) in demand {
            if let Some(sold) = self.sold.get_mut(sku.as_str()) {
                debug_assert!(*sold >= i64::from(*units), "gave back more than sold");
                *sold -= i64::from(*units);
            }
        }
    }

    /// Units held per SKU with a quota (empty without one).
    pub fn sold(&self) -> &SoldUnits {
        &self.sold
    }

    /// Holdings of the accepted, uncancelled orders the window remembers.
    pub fn accepted(&self) -> impl Iterator<Item = &Holding> {
        self.orders
            .values()
            .filter(|record| record.state == OrderState::Accepted)
            .filter_map(|record| record.holding.as_ref())
    }

    pub fn get(&self, order_id: &str) -> Option<&OrderRecord> {
        self.orders.get(order_id)
    }

    /// Remembers a newly decided order, forgetting the oldest past capacity;
    /// for a known order, changes its record (accepted → cancelled).
    pub fn insert(&mut self, order_id: String, record: OrderRecord) {
        if let Some(slot) = self.orders.get_mut(&order_id) {
            *slot = record;
            return;
        }
        while self.arrival.len() >= self.capacity {
            if let Some(oldest) = self.arrival.pop_front() {
                self.orders.remove(&oldest);
                self.evicted += 1;
            }
        }
        self.arrival.push_back(order_id.clone());
        self.orders.insert(order_id, record);
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Orders forgotten because the book was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_oldest_past_capacity() {
        let mut book = OrderBook::new(2);
        for (offset, id) in ["a", "b", "c"].into_iter().enumerate() {
            book.insert(
                id.to_string(),
                OrderRecord {
                    state: OrderState::Rejected,
                    offset: offset as i64,
                    placed_offset: offset as i64,
                    holding: None,
                },
            );
        }
        assert!(book.get("a").is_none());
        assert!(book.get("b").is_some() && book.get("c").is_some());
        assert_eq!((book.len(), book.evicted()), (2, 1));
    }
}
