//! The stock cache and its reservation rules.
//!
//! One `Inventory` is shared by every shard of a process. Each SKU has its
//! own mutex; an order locks the SKUs it wants in sorted SKU order (so two
//! orders can never deadlock), checks every line, and only then takes the
//! units of all of them. Holding all the locks of an order at once is what
//! makes a reservation all-or-nothing and what keeps a hot SKU that every
//! shard hits at once from being oversold. Locks are held for a few
//! hundred nanoseconds and only SKUs an order names are touched, so shards
//! contend only when they really sell the same SKU.
//!
//! Stock semantics: `stock_set` sets a SKU's stock, the units it may sell in
//! total; `stock_adjusted` adds to or removes from it. Units held by
//! accepted orders (`reserved`) are counted separately and are never reset
//! by inventory events, so re-reading the inventory topic after a restart
//! gives the same stock and keeps every sale counted.

use crate::order::{validate::ValidOrder, InventoryEvent, Reason, Rejection};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

/// Most SKUs one process holds (2^26, about 67 million). A `stock_set` for
/// a new SKU past it is logged and ignored; orders for that SKU are then
/// rejected `unknown_sku`.
pub const MAX_SKUS: usize = 1 << 26;
/// SKU cells are allocated in chunks of this many.
const CELLS_PER_CHUNK: usize = 4096;
const MAX_CHUNKS: usize = MAX_SKUS / CELLS_PER_CHUNK;
/// SKU names up to this many bytes are stored inside the index entry.
const INLINE_KEY_BYTES: usize = 22;
/// Catalogs with up to this many currencies, all ISO-shaped (three bytes),
/// keep their prices inside the SKU's cell.
const INLINE_PRICES: usize = 3;

/// Which part of a SKU's stock a reservation may take.
///
/// One instance that owns every partition of `orders` sells the whole stock.
/// Several instances sharing a sale each own some partitions, and each
/// partition may sell only its quota of every SKU (see [`partition_quota`]),
/// so the quotas of all partitions add up to the stock and no two instances
/// can sell the same unit, without any coordination between them.
#[derive(Debug, Clone, Copy)]
pub enum Share<'a> {
    Whole,
    Partition {
        quota: Quota,
        /// Units of each SKU the partition holds now (accepted, not cancelled).
        sold: &'a SoldUnits,
    },
}

/// Units sold per SKU by one partition. Looked up twice per line of every
/// order (the check, then the count), so hashed with FNV-1a, several times
/// cheaper than the default SipHash on SKU-sized keys; the keys are SKU
/// names the inventory already accepted, not attacker-chosen at will.
pub type SoldUnits = HashMap<String, i64, BuildHasherDefault<Fnv1a>>;

/// FNV-1a as a `Hasher`, for [`SoldUnits`].
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(FNV_OFFSET)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a_from(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A partition's place among the partitions of `orders`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub partition: u32,
    pub partitions: u32,
}

/// Units of `stock` that `partition` of `partitions` may sell: an equal
/// share, and one more unit for `stock % partitions` of the partitions,
/// chosen from a hash of the SKU so that small stocks are not all sold by
/// partition 0. Every instance computes the same quotas (the hash is
/// FNV-1a, fixed here, not the process's random hasher), and the quotas of
/// all partitions add up to the stock.
pub fn partition_quota(stock: i64, sku: &str, quota: Quota) -> i64 {
    let partitions = i64::from(quota.partitions.max(1));
    let stock = stock.max(0);
    let first_extra = (fnv1a(sku.as_bytes()) % partitions as u64) as i64;
    let rank = (i64::from(quota.partition) - first_extra).rem_euclid(partitions);
    stock / partitions + i64::from(rank < stock % partitions)
}

/// 64-bit FNV-1a: stable across builds and processes.
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

fn fnv1a_from(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A copy of one SKU's state, as [`Inventory::get`] returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuState {
    /// Units the SKU may sell in total: last `stock_set` plus adjustments.
    pub stock: i64,
    /// Units held by accepted orders that were not cancelled.
    pub reserved: i64,
    /// Catalog price per ISO 4217 currency, in minor units.
    pub prices: BTreeMap<String, i64>,
    /// Anti-scalping limit of units one customer may hold.
    pub max_per_customer: Option<u32>,
    /// Units held per customer, kept only while the SKU has a limit (a hash
    /// insert per line is not free on the hot path); a limit set mid-sale
    /// therefore counts purchases from then on.
    pub per_customer: HashMap<String, u32>,
}

impl SkuState {
    /// Units still for sale (never negative).
    pub fn available(&self) -> i64 {
        (self.stock - self.reserved).max(0)
    }

    /// Units sold beyond stock. Only a negative `stock_adjusted` below what
    /// was already sold can cause this; a reservation never does.
    pub fn oversold(&self) -> i64 {
        (self.reserved - self.stock).max(0)
    }
}

/// One SKU as the cache keeps it: the fields of [`SkuState`] in about 80
/// bytes, since a catalog has millions of them (10 million SKUs must fit
/// in well under 2 GiB with the order books; see docs/benchmarks.md).
#[derive(Debug, Default)]
struct Sku {
    stock: i64,
    reserved: i64,
    max_per_customer: Option<u32>,
    prices: Prices,
    /// Boxed: 8 bytes instead of an empty map's 48 for the many SKUs
    /// without a limit, times millions of SKUs.
    #[allow(clippy::box_collection)]
    per_customer: Option<Box<HashMap<String, u32>>>,
}

impl Sku {
    fn available(&self) -> i64 {
        (self.stock - self.reserved).max(0)
    }

    fn held(&self, customer_id: &str) -> u32 {
        self.per_customer
            .as_ref()
            .and_then(|held| held.get(customer_id).copied())
            .unwrap_or(0)
    }

    fn hold(&mut self, customer_id: &str, units: u32) {
        *self
            .per_customer
            .get_or_insert_with(Default::default)
            .entry(customer_id.to_string())
            .or_default() += units;
    }

    fn state(&self) -> SkuState {
        SkuState {
            stock: self.stock,
            reserved: self.reserved,
            prices: self.prices.to_map(),
            max_per_customer: self.max_per_customer,
            per_customer: self.per_customer.as_deref().cloned().unwrap_or_default(),
        }
    }
}

/// Catalog prices by currency.
#[derive(Debug)]
enum Prices {
    /// ISO codes are three bytes: a few of them fit in the cell itself.
    Inline {
        len: u8,
        codes: [[u8; 3]; INLINE_PRICES],
        amounts: [i64; INLINE_PRICES],
    },
    /// Any other catalog (more currencies, odd names), sorted by currency.
    Boxed(Box<[(Box<str>, i64)]>),
}

impl Default for Prices {
    fn default() -> Self {
        Prices::Inline {
            len: 0,
            codes: [[0; 3]; INLINE_PRICES],
            amounts: [0; INLINE_PRICES],
        }
    }
}

impl Prices {
    fn new(prices: &BTreeMap<String, i64>) -> Prices {
        if prices.len() <= INLINE_PRICES && prices.keys().all(|c| c.len() == 3) {
            let mut inline = Prices::default();
            if let Prices::Inline {
                len,
                codes,
                amounts,
            } = &mut inline
            {
                for (i, (currency, amount)) in prices.iter().enumerate() {
                    codes[i].copy_from_slice(currency.as_bytes());
                    amounts[i] = *amount;
                }
                *len = prices.len() as u8;
            }
            return inline;
        }
        Prices::Boxed(
            prices
                .iter()
                .map(|(c, p)| (c.as_str().into(), *p))
                .collect(),
        )
    }

    fn get(&self, currency: &str) -> Option<i64> {
        match self {
            Prices::Inline {
                len,
                codes,
                amounts,
            } => codes[..usize::from(*len)]
                .iter()
                .position(|code| code == currency.as_bytes())
                .map(|i| amounts[i]),
            Prices::Boxed(prices) => prices
                .iter()
                .find(|(c, _)| &**c == currency)
                .map(|(_, p)| *p),
        }
    }

    fn to_map(&self) -> BTreeMap<String, i64> {
        match self {
            Prices::Inline {
                len,
                codes,
                amounts,
            } => codes[..usize::from(*len)]
                .iter()
                .zip(amounts)
                .map(|(code, p)| (String::from_utf8_lossy(code).into_owned(), *p))
                .collect(),
            Prices::Boxed(prices) => prices.iter().map(|(c, p)| (c.to_string(), *p)).collect(),
        }
    }
}

/// A SKU name as the index keeps it: short names inline (no allocation of
/// their own), longer ones boxed. Hashed and compared as bytes, so a lookup
/// by `&[u8]` finds it.
#[derive(Debug, Clone)]
enum SkuKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Boxed(Box<[u8]>),
}

impl SkuKey {
    fn new(sku: &str) -> SkuKey {
        let raw = sku.as_bytes();
        if raw.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0; INLINE_KEY_BYTES];
            bytes[..raw.len()].copy_from_slice(raw);
            SkuKey::Inline {
                len: raw.len() as u8,
                bytes,
            }
        } else {
            SkuKey::Boxed(raw.into())
        }
    }
}

impl Borrow<[u8]> for SkuKey {
    fn borrow(&self) -> &[u8] {
        match self {
            SkuKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SkuKey::Boxed(bytes) => bytes,
        }
    }
}

impl Hash for SkuKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<[u8]>::borrow(self).hash(state)
    }
}

impl PartialEq for SkuKey {
    fn eq(&self, other: &Self) -> bool {
        Borrow::<[u8]>::borrow(self) == Borrow::<[u8]>::borrow(other)
    }
}

impl Eq for SkuKey {}

/// SKU cells in chunks that never move and are never freed before the
/// inventory: a reservation borrows its SKUs' cells for as long as it holds
/// the inventory, with no reference count to touch on the hot path (a hot
/// SKU's count would be one more cache line every shard writes).
struct Cells {
    chunks: Box<[OnceLock<Chunk>]>,
    /// Cells handed out; guarded so two new SKUs never get the same one.
    len: Mutex<usize>,
}

/// `CELLS_PER_CHUNK` cells, allocated together.
type Chunk = Box<[Mutex<Sku>]>;

impl Default for Cells {
    fn default() -> Self {
        Cells {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            len: Mutex::new(0),
        }
    }
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cells({})", *self.len.lock())
    }
}

impl Cells {
    fn get(&self, index: u32) -> &Mutex<Sku> {
        let index = index as usize;
        &self.chunks[index / CELLS_PER_CHUNK]
            .get()
            .expect("a cell's chunk exists before its index is published")[index % CELLS_PER_CHUNK]
    }

    /// A fresh cell, or `None` past [`MAX_SKUS`].
    fn push(&self) -> Option<u32> {
        let mut len = self.len.lock();
        if *len >= MAX_SKUS {
            return None;
        }
        let index = *len;
        self.chunks[index / CELLS_PER_CHUNK].get_or_init(|| {
            (0..CELLS_PER_CHUNK)
                .map(|_| Mutex::new(Sku::default()))
                .collect()
        });
        *len += 1;
        Some(index as u32)
    }
}

#[derive(Debug, Default)]
pub struct Inventory {
    /// SKU name → its cell in `cells`.
    index: DashMap<SkuKey, u32>,
    cells: Cells,
    /// Units sold beyond stock, summed over SKUs. Kept current where stock
    /// or reserved units change outside a checked reservation (inventory
    /// events, restore, release), so reading it never scans every SKU.
    oversold: AtomicI64,
}

/// Runs `change` on a SKU and adds the change in its oversold units to
/// `total`.
fn tracking_oversold(total: &AtomicI64, sku: &mut Sku, change: impl FnOnce(&mut Sku)) {
    let before = (sku.reserved - sku.stock).max(0);
    change(sku);
    let after = (sku.reserved - sku.stock).max(0);
    if after != before {
        total.fetch_add(after - before, Ordering::Relaxed);
    }
}

impl Inventory {
    pub fn new() -> Self {
        Self::default()
    }

    fn cell(&self, sku: &str) -> Option<&Mutex<Sku>> {
        let index = *self.index.get(sku.as_bytes())?;
        Some(self.cells.get(index))
    }

    /// The SKU's cell, created empty if it is new; `None` past [`MAX_SKUS`].
    fn cell_or_insert(&self, sku: &str) -> Option<&Mutex<Sku>> {
        if let Some(cell) = self.cell(sku) {
            return Some(cell);
        }
        let index = match self.index.entry(SkuKey::new(sku)) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => {
                let index = self.cells.push();
                let Some(index) = index else {
                    tracing::error!(limit = MAX_SKUS, "inventory is full; SKU ignored");
                    return None;
                };
                entry.insert(index);
                index
            }
        };
        Some(self.cells.get(index))
    }

    /// Applies an event of the `inventory` topic.
    pub fn apply(&self, event: &InventoryEvent) {
        let Some(cell) = self.cell_or_insert(event.sku()) else {
            return;
        };
        let mut sku = cell.lock();
        tracking_oversold(&self.oversold, &mut sku, |sku| match event {
            InventoryEvent::StockSet {
                available,
                prices,
                max_per_customer,
                ..
            } => {
                sku.stock = *available;
                sku.prices = Prices::new(prices);
                sku.max_per_customer = *max_per_customer;
            }
            InventoryEvent::StockAdjusted { delta, .. } => {
                sku.stock = sku.stock.saturating_add(*delta);
            }
        });
    }

    /// Each SKU's cell in the order of `order.demand`, or `unknown_sku`.
    fn cells(&self, order: &ValidOrder<'_>) -> Result<Vec<&Mutex<Sku>>, Rejection> {
        let mut cells = Vec::with_capacity(order.demand.len());
        for (sku, _) in &order.demand {
            match self.cell(sku) {
                Some(cell) => cells.push(cell),
                None => {
                    return Err(Rejection::new(
                        Reason::UnknownSku,
                        format!("SKU {sku:?} is not in the inventory"),
                    ))
                }
            }
        }
        Ok(cells)
    }

    /// Checks `unknown_sku`, then `price_mismatch`, then runs `between` (the
    /// payment check, which the reasons table puts after prices), then
    /// reserves every SKU of the order or none: `customer_limit_exceeded`,
    /// then `out_of_stock`.
    ///
    /// Every SKU of the order is locked once, in sorted order, for the whole
    /// decision: prices are read under the same locks as the stock, and a hot
    /// SKU's mutex is taken once per order, not once for prices and again
    /// for the reservation (half the lock traffic where shards contend).
    ///
    /// `share` says how much of each SKU's stock the order's partition may
    /// take: all of it, or the partition's quota less what it sold.
    pub fn reserve(
        &self,
        order: &ValidOrder<'_>,
        share: Share<'_>,
        between: impl FnOnce() -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let cells = self.cells(order)?;
        let mut guards: Vec<_> = cells.iter().map(|cell| cell.lock()).collect();
        for (i, line) in order.lines.iter().enumerate() {
            let index = order
                .demand
                .binary_search_by(|(sku, _)| sku.as_str().cmp(&line.sku))
                .unwrap_or_default();
            let catalog = guards[index].prices.get(&order.currency);
            match catalog {
                Some(price) if price == line.unit_price_minor => {}
                Some(price) => {
                    return Err(Rejection::new(
                        Reason::PriceMismatch,
                        format!(
                            "lines[{i}].unit_price_minor is {}, catalog price is {price}",
                            line.unit_price_minor
                        ),
                    ))
                }
                None => {
                    return Err(Rejection::new(
                        Reason::PriceMismatch,
                        format!("{} has no catalog price in {}", line.sku, order.currency),
                    ))
                }
            }
        }
        between()?;
        for ((sku, units), state) in order.demand.iter().zip(&guards) {
            if let Some(limit) = state.max_per_customer {
                let held = state.held(&order.customer_id);
                if held + units > limit {
                    return Err(Rejection::new(
                        Reason::CustomerLimitExceeded,
                        format!(
                            "{sku}: customer would hold {} units, limit is {limit}",
                            held + units
                        ),
                    ));
                }
            }
        }
        for ((sku, units), state) in order.demand.iter().zip(&guards) {
            let available = match share {
                Share::Whole => state.available(),
                Share::Partition { quota, sold } => {
                    let left = partition_quota(state.stock, sku, quota)
                        - sold.get(sku.as_str()).copied().unwrap_or(0);
                    left.clamp(0, state.available())
                }
            };
            if available < i64::from(*units) {
                return Err(Rejection::new(
                    Reason::OutOfStock,
                    format!("{sku}: {units} units wanted, {available} available"),
                ));
            }
        }
        for ((_, units), state) in order.demand.iter().zip(guards.iter_mut()) {
            state.reserved += i64::from(*units);
            if state.max_per_customer.is_some() {
                state.hold(&order.customer_id, *units);
            }
            debug_assert!(
                state.reserved <= state.stock,
                "reservation took more than stock"
            );
        }
        Ok(())
    }

    /// Takes the units of an order accepted before a restart, as found in
    /// the changelog. Unlike `reserve` nothing is checked: the decision was
    /// made and published. A SKU not announced yet is created with no stock.
    pub fn restore(&self, holding: &crate::engine::Holding) {
        for (sku, units) in &holding.demand {
            let Some(cell) = self.cell_or_insert(sku) else {
                continue;
            };
            let mut state = cell.lock();
            tracking_oversold(&self.oversold, &mut state, |state| {
                state.reserved += i64::from(*units);
            });
            if state.max_per_customer.is_some() {
                state.hold(&holding.customer_id, *units);
            }
        }
    }

    /// Gives back the units of an accepted order (on cancellation). The
    /// caller guarantees it is called at most once per accepted order.
    pub fn release(&self, customer_id: &str, demand: &[(String, u32)]) {
        for (sku, units) in demand {
            let Some(cell) = self.cell(sku) else {
                debug_assert!(false, "released a SKU that was never reserved");
                continue;
            };
            let mut state = cell.lock();
            debug_assert!(
                state.reserved >= i64::from(*units),
                "released more than reserved"
            );
            tracking_oversold(&self.oversold, &mut state, |state| {
                state.reserved -= i64::from(*units);
            });
            if let Some(per_customer) = state.per_customer.as_mut() {
                if let Some(held) = per_customer.get_mut(customer_id) {
                    *held = held.saturating_sub(*units);
                    if *held == 0 {
                        per_customer.remove(customer_id);
                    }
                }
            }
        }
    }

    /// Gives back units of a SKU without a customer: what a partition this
    /// process no longer owns held in orders its book has already forgotten.
    pub fn release_units(&self, sku: &str, units: i64) {
        let Some(cell) = self.cell(sku) else {
            return;
        };
        let mut state = cell.lock();
        tracking_oversold(&self.oversold, &mut state, |state| {
            state.reserved -= units.min(state.reserved);
        });
    }

    /// A copy of one SKU's state.
    pub fn get(&self, sku: &str) -> Option<SkuState> {
        self.cell(sku).map(|cell| cell.lock().state())
    }

    pub fn sku_count(&self) -> usize {
        self.index.len()
    }

    /// Units sold beyond stock over all SKUs; must stay 0.
    pub fn oversold_units(&self) -> i64 {
        self.oversold.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
