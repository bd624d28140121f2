//! The order book of one partition: which orders have a status, and what
//! each accepted order holds, so duplicates get no second status and a
//! cancellation gives back exactly what was taken, once.

use crate::inventory::{Quota, Share, SoldUnits};
use crate::lifecycle::{Command, Event, Millis, OrderLife};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

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

impl Holding {
    /// Units per SKU, as `Inventory::release` and the book's counts take them.
    pub fn units(&self) -> impl Iterator<Item = (&str, u32)> {
        self.demand
            .iter()
            .map(|(sku, units)| (sku.as_str(), *units))
    }
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
    /// The order's life after its acceptance (payments, shipments,
    /// returns); `None` for rejected orders, and for orders decided before
    /// lifecycles existed.
    pub life: Option<Box<OrderLife>>,
    /// Outputs of the latest record-driven changes, by the offset of the
    /// record (at most [`MAX_OUTBOX`]): they are sent after the record that
    /// carries this state, so a replay of that record after a crash sends
    /// them again (same IDs) instead of deciding anything twice.
    pub outbox: Vec<Outbox>,
    /// Bumped by every change: of two copies of an order's record (the
    /// status topic's and the state topic's), a restore keeps the higher.
    pub version: u64,
}

/// Most [`Outbox`] entries kept per order. Entries older than the last
/// committed offset are never needed again; an order changed by more than
/// this many records within one commit interval loses the oldest entry's
/// replay (its follow-ups may then be missing after a crash without
/// Kafka transactions).
pub const MAX_OUTBOX: usize = 8;

/// What one record's change of an order sent after the order's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    pub offset: i64,
    pub at: Millis,
    pub events: Vec<Event>,
    pub commands: Vec<Command>,
    /// The record cancelled the order: its fulfillment cancellations too.
    pub cancelled: bool,
}

impl OrderRecord {
    /// A newly decided order's record.
    pub fn decided(state: OrderState, offset: i64, holding: Option<Holding>) -> OrderRecord {
        OrderRecord {
            state,
            offset,
            placed_offset: offset,
            holding,
            life: None,
            outbox: Vec::new(),
            version: 1,
        }
    }
}

/// Where a book keeps the orders it has no room for, and finds them again
/// (the processor's is the partition's on-disk store). With one, the book
/// is a bounded cache in front of it and forgets nothing; without, the
/// book forgets its oldest order past its capacity.
pub trait ColdOrders: Send {
    /// Keeps `record` as `order_id`'s, replacing what was kept before.
    /// (Both are the book's own, shared: keeping them copies nothing.)
    fn keep(&mut self, order_id: Arc<str>, record: Arc<OrderRecord>);
    /// What was kept for `order_id`, if anything. Asked for every order ID
    /// the book does not hold, new ones included: "never kept" must be
    /// answered without a disk read.
    fn recall(&mut self, order_id: &str) -> Option<OrderRecord>;
    /// Why it can no longer keep or recall orders, if it cannot: a book
    /// whose tier failed may have missed an order it holds, so whoever
    /// drives the book must stop before its outputs leave.
    fn failure(&self) -> Option<String> {
        None
    }
    /// Orders kept whose retention ended before `now`, with the version
    /// of the record kept (oldest first, at most `limit` looked at per
    /// call, going on where the last call stopped). None without retention.
    fn expired(&mut self, _now: Millis, _limit: usize) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// `order_id` is gone from the partition (retired, its tombstone on its
    /// way): never recalled again, whatever is still kept of it.
    fn forget(&mut self, _order_id: &str) {}
}

/// Orders that must stay in memory one insertion passes over at most
/// before the book, finding no other to move out, grows past capacity:
/// bounds the cost of an insertion when most orders wait on staff.
const STAY_SCAN: usize = 64;

/// Decided orders of one partition, bounded: past `capacity` orders the
/// oldest leaves memory (first in, first out). With [`ColdOrders`] it is
/// kept there and found again ([`OrderBook::find`]); its lifecycle timer
/// stays listed here (an order ID and a time), and brings it back when it
/// fires. Orders with a payment waiting for staff stay in memory (the
/// attention count lives here), so the book may hold more than
/// `capacity` by the orders waiting on staff. Without, it is forgotten:
/// a duplicate of a forgotten order would be decided again, and a
/// cancellation of one ignored, so the capacity (`engine.dedup_window_orders`) must cover the time over which
/// upstream can redeliver or cancel.
pub struct OrderBook {
    /// Keys are shared with `arrival` and `timers`: one allocation of an
    /// order's ID however many places remember it.
    /// Records are shared with the status output that carries them (its
    /// changelog entry), so a decision copies no record.
    orders: HashMap<Arc<str>, Arc<OrderRecord>>,
    arrival: VecDeque<Arc<str>>,
    capacity: usize,
    evicted: u64,
    /// Set when the partition sells only its quota of each SKU (instances
    /// sharing a sale); `None` when this process sells the whole stock.
    quota: Option<Quota>,
    /// Units of each SKU held by the partition's accepted, uncancelled
    /// orders, including orders the window has forgotten: what a quota is
    /// checked against, and what the partition gives back when it moves
    /// (also with the whole stock, where nothing else remembers what
    /// forgotten orders hold).
    sold: SoldUnits,
    /// When remembered orders' lifecycle timers fire next: one entry per
    /// order with a timer (a change or a forgotten order takes its entry
    /// out; an order moved to `cold` keeps it), so without `cold` the list
    /// is bounded by the window, and with it by the orders waiting on a
    /// gateway.
    timers: BTreeSet<(Millis, Arc<str>)>,
    /// Payments and refunds of remembered orders waiting for staff.
    attention: usize,
    /// Where orders past capacity go, if anywhere.
    cold: Option<Box<dyn ColdOrders>>,
    /// Orders in memory whose record `cold` holds already (restored from
    /// it, or written to it by the restore): moved out of memory without
    /// being handed to it again. A change takes an order off the set.
    clean: HashSet<Arc<str>>,
    /// Units per SKU held by the partition's accepted orders that
    /// retention retired: still counted in `sold` (they were sold), and
    /// in the state topic, so every restore counts them too.
    retired: HashMap<String, i64>,
    /// Orders moved to `cold`, and found there again.
    spilled: u64,
    recalled: u64,
}

impl std::fmt::Debug for OrderBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderBook")
            .field("orders", &self.orders.len())
            .field("capacity", &self.capacity)
            .field("evicted", &self.evicted)
            .field("cold", &self.cold.is_some())
            .field("spilled", &self.spilled)
            .field("recalled", &self.recalled)
            .finish_non_exhaustive()
    }
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
            timers: BTreeSet::new(),
            attention: 0,
            cold: None,
            clean: HashSet::new(),
            retired: HashMap::new(),
            spilled: 0,
            recalled: 0,
        }
    }

    /// This book, keeping the orders it has no room for in `cold`.
    pub fn with_cold(mut self, cold: Box<dyn ColdOrders>) -> Self {
        self.cold = Some(cold);
        self
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

    /// Counts units an accepted order took, per SKU (in whole-stock mode
    /// too: giving a book back returns what forgotten orders hold).
    pub fn took<'d>(&mut self, demand: impl IntoIterator<Item = (&'d str, u32)>) {
        for (sku, units) in demand {
            match self.sold.get_mut(sku) {
                // Saturating: a restore counts holdings from the changelog.
                Some(sold) => *sold = sold.saturating_add(i64::from(units)),
                None => {
                    self.sold.insert(sku.to_string(), i64::from(units));
                }
            }
        }
    }

    /// Counts units a cancelled order gave back, per SKU.
    pub fn gave_back<'d>(&mut self, demand: impl IntoIterator<Item = (&'d str, u32)>) {
        for (sku, units) in demand {
            if let Some(sold) = self.sold.get_mut(sku) {
                debug_assert!(*sold >= i64::from(units), "gave back more than sold");
                *sold -= i64::from(units).min(*sold);
            }
        }
    }

    /// Units held per SKU by the partition's accepted orders.
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

    /// The record of `order_id` if it is in memory.
    pub fn get(&self, order_id: &str) -> Option<&OrderRecord> {
        self.orders.get(order_id).map(|record| &**record)
    }

    /// The record of `order_id`, from memory or, brought back into memory,
    /// from the book's [`ColdOrders`]: what every decision asks.
    pub fn find(&mut self, order_id: &str) -> Option<&OrderRecord> {
        if !self.orders.contains_key(order_id) {
            let record = self.cold.as_mut()?.recall(order_id)?;
            self.recalled += 1;
            self.insert(order_id.to_string(), record);
        }
        self.get(order_id)
    }

    /// Remembers a newly decided order, forgetting the oldest past capacity;
    /// for a known order, changes its record (accepted → cancelled).
    pub fn insert(&mut self, order_id: String, record: OrderRecord) {
        self.insert_shared(order_id, Arc::new(record));
    }

    /// [`OrderBook::insert`] of a record an output shares.
    pub fn insert_shared(&mut self, order_id: String, record: Arc<OrderRecord>) {
        self.attention += attention(&record);
        if let Some(slot) = self.orders.get_mut(order_id.as_str()) {
            self.attention -= attention(slot);
            if !self.clean.is_empty() {
                self.clean.remove(order_id.as_str());
            }
            let (old, new) = (next_due(slot), next_due(&record));
            *slot = record;
            if old.is_some() || new.is_some() {
                let key = self
                    .orders
                    .get_key_value(order_id.as_str())
                    .map(|(key, _)| key.clone())
                    .expect("the order was just found");
                if let Some(old) = old.filter(|old| Some(*old) != new) {
                    self.timers.remove(&(old, key.clone()));
                }
                // Also when unchanged: `due` took the entry off the list.
                if let Some(due) = new {
                    self.timers.insert((due, key));
                }
            }
            return;
        }
        let key: Arc<str> = Arc::from(order_id);
        if let Some(due) = next_due(&record) {
            self.timers.insert((due, key.clone()));
        }
        self.make_room();
        self.arrival.push_back(key.clone());
        self.orders.insert(key, record);
    }

    /// Takes in an order its [`ColdOrders`] holds already (a restore from
    /// the partition's local store): in memory while there is room, or
    /// while it waits on staff; otherwise only its lifecycle timer is
    /// listed here, and [`OrderBook::find`] brings it back when asked.
    /// Nothing is written. Without a tier it is [`OrderBook::insert`].
    pub fn adopt(&mut self, order_id: String, record: OrderRecord) {
        if self.cold.is_none() || self.arrival.len() < self.capacity || attention(&record) > 0 {
            let version = record.version;
            self.insert(order_id.clone(), record);
            self.mark_stored(&order_id, version);
            return;
        }
        if let Some(due) = next_due(&record) {
            self.timers.insert((due, Arc::from(order_id)));
        }
    }

    /// `order_id`'s record at `version` is now in the book's
    /// [`ColdOrders`]: if that is the record in memory, moving it out
    /// needs no handing over.
    pub fn mark_stored(&mut self, order_id: &str, version: u64) {
        if self.cold.is_none() {
            return;
        }
        if let Some((key, record)) = self.orders.get_key_value(order_id) {
            if record.version == version {
                self.clean.insert(key.clone());
            }
        }
    }

    /// Moves the oldest orders out of memory until one more fits: to
    /// `cold` (those waiting on staff stay, moved to the back), or,
    /// without it, forgotten.
    fn make_room(&mut self) {
        let mut stayed = 0;
        while self.arrival.len() >= self.capacity && stayed < STAY_SCAN.min(self.arrival.len()) {
            let Some(oldest) = self.arrival.pop_front() else {
                break;
            };
            let Some(record) = self.orders.get(&oldest) else {
                continue;
            };
            if let Some(cold) = &mut self.cold {
                if attention(record) > 0 {
                    self.arrival.push_back(oldest);
                    stayed += 1;
                    continue;
                }
                // Its timer, if any, stays listed: `due` brings it back.
                if let Some(record) = self.orders.remove(&oldest) {
                    // (Empty but after a restore: no hashing then.)
                    if self.clean.is_empty() || !self.clean.remove(&oldest) {
                        cold.keep(oldest, record);
                        self.spilled += 1;
                    }
                }
                continue;
            }
            if let Some(forgotten) = self.orders.remove(&oldest) {
                self.attention -= attention(&forgotten);
                if let Some(due) = next_due(&forgotten) {
                    self.timers.remove(&(due, oldest));
                }
            }
            self.evicted += 1;
        }
    }

    /// Takes `order_id` out of the book for good (found in memory or
    /// brought back from `cold`): its record, timer and attention count;
    /// `cold` never recalls it again. What it holds stays counted in
    /// `sold`: the caller says where those units go.
    pub fn remove(&mut self, order_id: &str) -> Option<Arc<OrderRecord>> {
        self.find(order_id)?;
        let (key, record) = self.orders.remove_entry(order_id)?;
        self.attention -= attention(&record);
        if let Some(due) = next_due(&record) {
            self.timers.remove(&(due, key.clone()));
        }
        if !self.clean.is_empty() {
            self.clean.remove(&key);
        }
        if let Some(cold) = &mut self.cold {
            cold.forget(order_id);
        }
        Some(record)
    }

    /// Retires `order_id`, its retention over: removed ([`OrderBook::remove`]),
    /// what an accepted one holds counted as retired units, sold for good.
    pub fn retire(&mut self, order_id: &str) -> Option<Arc<OrderRecord>> {
        let record = self.remove(order_id)?;
        if let (OrderState::Accepted, Some(holding)) = (&record.state, &record.holding) {
            for (sku, units) in holding.units() {
                let retired = self.retired.entry(sku.to_string()).or_default();
                *retired = retired.saturating_add(i64::from(units));
            }
        }
        Some(record)
    }

    /// Units of `sku` the partition's retired orders hold.
    pub fn retired(&self, sku: &str) -> i64 {
        self.retired.get(sku).copied().unwrap_or(0)
    }

    /// Sets the units of `sku` the partition's retired orders hold (a
    /// restore reading them), counting the difference in `sold`; returns
    /// it, for the inventory.
    pub fn set_retired(&mut self, sku: &str, units: i64) -> i64 {
        let units = units.max(0);
        let before = self.retired.insert(sku.to_string(), units).unwrap_or(0);
        let more = units.saturating_sub(before);
        let sold = self.sold.entry(sku.to_string()).or_default();
        *sold = sold.saturating_add(more).max(0);
        more
    }

    /// Orders whose retention ended before `now` (see [`ColdOrders::expired`]).
    pub fn expired(&mut self, now: Millis, limit: usize) -> Vec<(String, u64)> {
        match &mut self.cold {
            Some(cold) => cold.expired(now, limit),
            None => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Orders forgotten because the book was full (none with [`ColdOrders`]).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Why the book's [`ColdOrders`] failed, if it did (see there).
    pub fn cold_failure(&self) -> Option<String> {
        self.cold.as_ref().and_then(|cold| cold.failure())
    }

    /// Orders moved to the book's [`ColdOrders`] for want of room.
    pub fn spilled(&self) -> u64 {
        self.spilled
    }

    /// Orders found in the book's [`ColdOrders`] and brought back.
    pub fn recalled(&self) -> u64 {
        self.recalled
    }

    /// The orders whose lifecycle timers are due by `now`, taken off the
    /// timer list (a change of the order puts its next timer back).
    pub fn due(&mut self, now: Millis) -> Vec<Arc<str>> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((at, order_id)) = self.timers.pop_first() else {
                break;
            };
            let current = self
                .find(&order_id)
                .and_then(|record| record.life.as_ref())
                .and_then(|life| life.next_due());
            if current == Some(at) && due.last() != Some(&order_id) {
                due.push(order_id);
            }
        }
        due
    }

    /// How many remembered orders have a lifecycle timer set.
    pub fn timers_set(&self) -> usize {
        self.timers.len()
    }

    /// Payments and refunds of remembered orders waiting for staff.
    pub fn in_attention(&self) -> usize {
        self.attention
    }

    /// Every remembered order with a life, for a restore's resend of what
    /// was in flight.
    pub fn lives(&self) -> impl Iterator<Item = (&str, &OrderRecord)> {
        self.orders
            .iter()
            .filter(|(_, record)| record.life.is_some())
            .map(|(order_id, record)| (&**order_id, &**record))
    }
}

/// When an order's lifecycle timer fires next, if it has one.
fn next_due(record: &OrderRecord) -> Option<Millis> {
    record.life.as_ref().and_then(|life| life.next_due())
}

/// Payments and refunds of an order waiting for staff.
fn attention(record: &OrderRecord) -> usize {
    record.life.as_ref().map_or(0, |life| life.in_attention())
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
                OrderRecord::decided(OrderState::Rejected, offset as i64, None),
            );
        }
        assert!(book.get("a").is_none());
        assert!(book.get("b").is_some() && book.get("c").is_some());
        assert_eq!((book.len(), book.evicted()), (2, 1));
    }

    /// A tier that records what it was handed.
    struct Handed(Arc<std::sync::Mutex<Vec<String>>>);

    impl ColdOrders for Handed {
        fn keep(&mut self, order_id: Arc<str>, _record: Arc<OrderRecord>) {
            self.0.lock().unwrap().push(order_id.to_string());
        }
        fn recall(&mut self, _order_id: &str) -> Option<OrderRecord> {
            None
        }
    }

    fn rejected(offset: i64) -> OrderRecord {
        OrderRecord::decided(OrderState::Rejected, offset, None)
    }

    #[test]
    fn orders_the_store_holds_leave_memory_without_being_handed_over_again() {
        let handed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut book = OrderBook::new(2).with_cold(Box::new(Handed(handed.clone())));
        // Restored from the store: two fit in memory, the third stays out.
        for (offset, id) in ["a", "b", "c"].into_iter().enumerate() {
            book.adopt(id.to_string(), rejected(offset as i64));
        }
        assert!(book.get("a").is_some() && book.get("b").is_some());
        assert!(book.get("c").is_none(), "past capacity: left in the store");
        // A change makes "b" the book's own again.
        book.insert(
            "b".into(),
            OrderRecord {
                version: 2,
                ..rejected(1)
            },
        );
        book.insert("d".into(), rejected(3));
        book.insert("e".into(), rejected(4));
        assert_eq!(
            *handed.lock().unwrap(),
            ["b"],
            "only the changed one is handed over"
        );
        // Written by a restore: marked, so not handed over either; a
        // record of another version is not.
        book.insert("f".into(), rejected(5));
        book.mark_stored("e", 1);
        book.mark_stored("f", 7);
        book.insert("g".into(), rejected(6));
        book.insert("h".into(), rejected(7));
        assert_eq!(*handed.lock().unwrap(), ["b", "d", "f"]);
    }
}
