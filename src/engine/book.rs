//! The order book of one partition: which orders have a status, and what
//! each accepted order holds, so duplicates get no second status and a
//! cancellation gives back exactly what was taken, once.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// What the processor remembers of a decided order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderRecord {
    Accepted {
        customer_id: String,
        /// Units per SKU, sorted by SKU, as reserved.
        demand: Vec<(String, u32)>,
        /// Address keys of the order's shipments.
        shipments: Vec<String>,
    },
    Rejected,
    Cancelled,
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
}

impl OrderBook {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "an order book must hold at least one order");
        OrderBook {
            orders: HashMap::new(),
            arrival: VecDeque::new(),
            capacity,
            evicted: 0,
        }
    }

    pub fn get(&self, order_id: &str) -> Option<&OrderRecord> {
        self.orders.get(order_id)
    }

    /// Remembers a newly decided order, forgetting the oldest past capacity.
    pub fn insert(&mut self, order_id: String, record: OrderRecord) {
        debug_assert!(
            !self.orders.contains_key(&order_id),
            "an order is decided once"
        );
        while self.arrival.len() >= self.capacity {
            if let Some(oldest) = self.arrival.pop_front() {
                self.orders.remove(&oldest);
                self.evicted += 1;
            }
        }
        self.arrival.push_back(order_id.clone());
        self.orders.insert(order_id, record);
    }

    /// Changes the record of a known order (accepted → cancelled).
    pub fn replace(&mut self, order_id: &str, record: OrderRecord) {
        if let Some(slot) = self.orders.get_mut(order_id) {
            *slot = record;
        }
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
        for id in ["a", "b", "c"] {
            book.insert(id.to_string(), OrderRecord::Rejected);
        }
        assert!(book.get("a").is_none());
        assert!(book.get("b").is_some() && book.get("c").is_some());
        assert_eq!((book.len(), book.evicted()), (2, 1));
    }
}
