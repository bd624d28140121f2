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
//!
//! Arithmetic: stock stays within ±[`MAX_STOCK_UNITS`] (the decoder bounds
//! each event's values, [`Inventory::apply`] refuses an adjustment that
//! would leave the range), reservations never take more than stock, and the
//! units of holdings read back from the changelog are added saturating. So
//! no sum here can wrap, whatever the topics carry; the `debug_assert!`s
//! say where an invariant, not outside data, would be broken.

use crate::order::codes::{self, Currency};
use crate::order::decode::{DeadLetter, DlqReason};
use crate::order::{validate::ValidOrder, Detail, InventoryEvent, Reason, MAX_STOCK_UNITS};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

/// Most SKUs one process holds (2^26, about 67 million). An event for a
/// new SKU past it is dead-lettered `invalid_inventory_event`; orders for
/// that SKU are then rejected `unknown_sku`.
pub const MAX_SKUS: usize = 1 << 26;
/// SKUs an order locks without allocating: their guards live on the stack
/// (an order with more distinct SKUs keeps them in a vector).
pub const INLINE_LOCKS: usize = 8;
/// SKU cells are allocated in chunks of this many.
const CELLS_PER_CHUNK: usize = 4096;
const MAX_CHUNKS: usize = MAX_SKUS / CELLS_PER_CHUNK;
/// SKU names up to this many bytes are stored inside the index entry.
const INLINE_KEY_BYTES: usize = 22;
/// Catalogs with up to this many currencies, all ISO 4217 codes, keep their
/// prices inside the SKU's cell.
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
/// order (the check, then the count), so hashed with [`SkuHasher`],
/// several times cheaper than the default SipHash on SKU-sized keys; the
/// keys are SKU names the inventory already accepted, not attacker-chosen
/// at will.
pub type SoldUnits = HashMap<String, i64, BuildHasherDefault<SkuHasher>>;

/// The hasher of maps keyed by SKUs the inventory accepted: eight bytes per
/// step (a folded multiply), where FNV-1a takes one. Not
/// stable across versions and not resistant to chosen keys: for in-memory
/// maps of known SKUs only; [`Fnv1a`] where a hash must stay the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct SkuHasher(u64);

const SKU_HASH_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl SkuHasher {
    /// A folded multiply (as foldhash and wyhash): the 128-bit product's
    /// halves xored, so every input bit reaches the low bits too.
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(SKU_HASH_SEED);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for SkuHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
        // The length keeps "a" and "a\0" apart (the padding is zeros).
        self.add(bytes.len() as u64);
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a as a `Hasher`: stable across builds and processes, for hashes
/// that decide something (the simulated gateway's outcome, command IDs).
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
    // stock is at most MAX_STOCK_UNITS: nothing below can overflow.
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
        available(self.stock, self.reserved)
    }

    /// Units sold beyond stock. Only a negative `stock_adjusted` below what
    /// was already sold can cause this; a reservation never does.
    pub fn oversold(&self) -> i64 {
        oversold(self.stock, self.reserved)
    }
}

/// Units of `stock` not held by `reserved` (never negative).
fn available(stock: i64, reserved: i64) -> i64 {
    stock.saturating_sub(reserved).max(0)
}

/// Units held beyond stock, where stock below zero (adjustments removed
/// more than there was) counts as none: at most the units held, and zero
/// for a SKU that sold nothing, whatever its stock.
fn oversold(stock: i64, reserved: i64) -> i64 {
    reserved.saturating_sub(stock.max(0)).max(0)
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
        available(self.stock, self.reserved)
    }

    fn held(&self, customer_id: &str) -> u32 {
        self.per_customer
            .as_ref()
            .and_then(|held| held.get(customer_id).copied())
            .unwrap_or(0)
    }

    /// Counts `units` more held by the customer. Saturating: a reservation
    /// checked the sum against a `u32` limit, but a restore adds holdings
    /// read back from the changelog without a check. The customer's name is
    /// copied only the first time (an `entry` would copy it every time).
    fn hold(&mut self, customer_id: &str, units: u32) {
        let per_customer = self.per_customer.get_or_insert_with(Default::default);
        match per_customer.get_mut(customer_id) {
            Some(held) => *held = held.saturating_add(units),
            None => {
                per_customer.insert(customer_id.to_string(), units);
            }
        }
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
    /// A few ISO 4217 currencies, as small integers, inside the cell.
    Inline {
        len: u8,
        currencies: [Currency; INLINE_PRICES],
        amounts: [i64; INLINE_PRICES],
    },
    /// Any other catalog (more currencies, names that are not ISO codes),
    /// sorted by currency.
    Boxed(Box<[(Box<str>, i64)]>),
}

impl Default for Prices {
    fn default() -> Self {
        Prices::Boxed(Box::default())
    }
}

impl Prices {
    fn new(prices: &BTreeMap<String, i64>) -> Prices {
        // Places past `len` are never read.
        let mut currencies = [Currency::default(); INLINE_PRICES];
        let mut amounts = [0; INLINE_PRICES];
        let inline = prices.len() <= INLINE_PRICES
            && prices.iter().enumerate().all(|(i, (currency, amount))| {
                codes::currency(currency).is_some_and(|currency| {
                    currencies[i] = currency;
                    amounts[i] = *amount;
                    true
                })
            });
        if inline {
            return Prices::Inline {
                len: prices.len() as u8,
                currencies,
                amounts,
            };
        }
        Prices::Boxed(
            prices
                .iter()
                .map(|(c, p)| (c.as_str().into(), *p))
                .collect(),
        )
    }

    fn get(&self, currency: Currency) -> Option<i64> {
        match self {
            Prices::Inline {
                len,
                currencies,
                amounts,
            } => currencies[..usize::from(*len)]
                .iter()
                .position(|c| *c == currency)
                .map(|i| amounts[i]),
            Prices::Boxed(prices) => prices
                .iter()
                .find(|(c, _)| &**c == currency.code())
                .map(|(_, p)| *p),
        }
    }

    fn to_map(&self) -> BTreeMap<String, i64> {
        match self {
            Prices::Inline {
                len,
                currencies,
                amounts,
            } => currencies[..usize::from(*len)]
                .iter()
                .zip(amounts)
                .map(|(c, p)| (c.code().to_string(), *p))
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
/// `total`. Both figures are in `0..=i64::MAX`, so their difference fits.
fn tracking_oversold<T>(total: &AtomicI64, sku: &mut Sku, change: impl FnOnce(&mut Sku) -> T) -> T {
    let before = oversold(sku.stock, sku.reserved);
    let result = change(sku);
    let after = oversold(sku.stock, sku.reserved);
    if after != before {
        total.fetch_add(after - before, Ordering::Relaxed);
    }
    result
}

impl Inventory {
    pub fn new() -> Self {
        Self::default()
    }

    fn cell(&self, sku: &str) -> Option<&Mutex<Sku>> {
        let index = *self.index.get(sku.as_bytes())?;
        Some(self.cells.get(index))
    }

    /// The SKU's cell, created empty if it is new; `None` past [`MAX_SKUS`]
    /// (logged).
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

    /// Applies an event of the `inventory` topic, as decoded (its values
    /// within the decoder's ranges). Refuses, changing nothing, an event
    /// for a new SKU past [`MAX_SKUS`] and an adjustment that would take the
    /// stock outside ±[`MAX_STOCK_UNITS`]: the feed dead-letters those.
    pub fn apply(&self, event: &InventoryEvent) -> Result<(), DeadLetter> {
        let refused = |detail: String| DeadLetter::new(DlqReason::InvalidInventoryEvent, detail);
        let Some(cell) = self.cell_or_insert(event.sku()) else {
            return Err(refused(format!(
                "the inventory holds {MAX_SKUS} SKUs, its limit; this SKU is new"
            )));
        };
        let mut sku = cell.lock();
        tracking_oversold(&self.oversold, &mut sku, |sku| match event {
            InventoryEvent::StockSet {
                available,
                prices,
                max_per_customer,
                ..
            } => {
                debug_assert!((0..=MAX_STOCK_UNITS).contains(available), "decoder's range");
                sku.stock = *available;
                sku.prices = Prices::new(prices);
                sku.max_per_customer = *max_per_customer;
                Ok(())
            }
            InventoryEvent::StockAdjusted { delta, .. } => {
                let stock = sku
                    .stock
                    .checked_add(*delta)
                    .filter(|stock| (-MAX_STOCK_UNITS..=MAX_STOCK_UNITS).contains(stock))
                    .ok_or_else(|| {
                        refused(format!(
                            "stock is {}; a delta of {delta} would take it outside \
                             -{MAX_STOCK_UNITS} to {MAX_STOCK_UNITS}",
                            sku.stock
                        ))
                    })?;
                sku.stock = stock;
                Ok(())
            }
        })
    }

    /// Checks `unknown_sku`, then `price_mismatch`, then runs `between` (the
    /// payment check, which the reasons table puts after prices), then
    /// reserves every SKU of the order or none: `customer_limit_exceeded`,
    /// then `out_of_stock`. A rejection's detail goes into `detail`.
    ///
    /// Each SKU is looked up once and its mutex taken once, in sorted order,
    /// for the whole decision: prices are read under the same locks as the
    /// stock, and a hot SKU's mutex is taken once per order, not once for
    /// prices and again for the reservation (half the lock traffic where
    /// shards contend). The guards of up to [`INLINE_LOCKS`] SKUs live on
    /// the stack.
    ///
    /// `share` says how much of each SKU's stock the order's partition may
    /// take: all of it, or the partition's quota less what it sold.
    pub fn reserve(
        &self,
        order: &ValidOrder<'_>,
        share: Share<'_>,
        detail: &mut Detail,
        between: impl FnOnce(&mut Detail) -> Result<(), Reason>,
    ) -> Result<(), Reason> {
        let skus = order.demand().len();
        let mut inline: [Option<MutexGuard<'_, Sku>>; INLINE_LOCKS] =
            [const { None }; INLINE_LOCKS];
        let mut spilled = Vec::new();
        let guards = if skus <= INLINE_LOCKS {
            &mut inline[..skus]
        } else {
            spilled.resize_with(skus, || None);
            &mut spilled[..]
        };
        for ((sku, _), guard) in order.demand().zip(guards.iter_mut()) {
            let Some(cell) = self.cell(sku) else {
                return Err(detail.fail(
                    Reason::UnknownSku,
                    format_args!("SKU {sku:?} is not in the inventory"),
                ));
            };
            *guard = Some(cell.lock());
        }
        fn locked<'g>(guard: &'g Option<MutexGuard<'_, Sku>>) -> &'g Sku {
            guard.as_deref().expect("every SKU of the order is locked")
        }
        for (i, line) in order.lines().enumerate() {
            match locked(&guards[line.demand]).prices.get(order.currency) {
                Some(price) if price == line.unit_price_minor => {}
                Some(price) => {
                    return Err(detail.fail(
                        Reason::PriceMismatch,
                        format_args!(
                            "lines[{i}].unit_price_minor is {}, catalog price is {price}",
                            line.unit_price_minor
                        ),
                    ))
                }
                None => {
                    return Err(detail.fail(
                        Reason::PriceMismatch,
                        format_args!(
                            "{} has no catalog price in {}",
                            line.sku,
                            order.currency.code()
                        ),
                    ))
                }
            }
        }
        between(detail)?;
        for ((sku, units), guard) in order.demand().zip(guards.iter()) {
            let state = locked(guard);
            if let Some(limit) = state.max_per_customer {
                // In u64: a limit near u32::MAX plus an order must not wrap.
                let would_hold = u64::from(state.held(order.customer_id)) + u64::from(units);
                if would_hold > u64::from(limit) {
                    return Err(detail.fail(
                        Reason::CustomerLimitExceeded,
                        format_args!(
                            "{sku}: customer would hold {would_hold} units, limit is {limit}"
                        ),
                    ));
                }
            }
        }
        for ((sku, units), guard) in order.demand().zip(guards.iter()) {
            let state = locked(guard);
            let available = match share {
                Share::Whole => state.available(),
                Share::Partition { quota, sold } => {
                    let left = partition_quota(state.stock, sku, quota)
                        .saturating_sub(sold.get(sku).copied().unwrap_or(0));
                    left.clamp(0, state.available())
                }
            };
            if available < i64::from(units) {
                return Err(detail.fail(
                    Reason::OutOfStock,
                    format_args!("{sku}: {units} units wanted, {available} available"),
                ));
            }
        }
        for ((_, units), guard) in order.demand().zip(guards.iter_mut()) {
            let state = guard
                .as_deref_mut()
                .expect("every SKU of the order is locked");
            // At most available units were taken: reserved stays <= stock.
            state.reserved += i64::from(units);
            if state.max_per_customer.is_some() {
                state.hold(order.customer_id, units);
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
                state.reserved = state.reserved.saturating_add(i64::from(*units));
            });
            if state.max_per_customer.is_some() {
                state.hold(&holding.customer_id, *units);
            }
        }
    }

    /// Gives back the units of an accepted order (on cancellation): its
    /// customer and units per SKU. The caller guarantees it is called at
    /// most once per accepted order.
    pub fn release<'d>(&self, customer_id: &str, demand: impl IntoIterator<Item = (&'d str, u32)>) {
        for (sku, units) in demand {
            let Some(cell) = self.cell(sku) else {
                debug_assert!(false, "released a SKU that was never reserved");
                continue;
            };
            let mut state = cell.lock();
            debug_assert!(
                state.reserved >= i64::from(units),
                "released more than reserved"
            );
            tracking_oversold(&self.oversold, &mut state, |state| {
                state.reserved -= i64::from(units).min(state.reserved);
            });
            if let Some(per_customer) = state.per_customer.as_mut() {
                if let Some(held) = per_customer.get_mut(customer_id) {
                    *held = held.saturating_sub(units);
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

    /// Takes units of a SKU without a customer: what a partition's retired
    /// orders hold, as a restore reads it (sold for good; nothing checked).
    pub fn take_units(&self, sku: &str, units: i64) {
        let Some(cell) = self.cell_or_insert(sku) else {
            return;
        };
        let mut state = cell.lock();
        tracking_oversold(&self.oversold, &mut state, |state| {
            state.reserved = state.reserved.saturating_add(units.max(0));
        });
    }

    /// A copy of one SKU's state.
    pub fn get(&self, sku: &str) -> Option<SkuState> {
        self.cell(sku).map(|cell| cell.lock().state())
    }

    /// Units of a SKU still for sale: [`SkuState::available`] without
    /// copying the SKU's per-customer counts (the gauges read the hottest
    /// SKUs every second, whose counts are the largest).
    pub fn available(&self, sku: &str) -> Option<i64> {
        self.cell(sku).map(|cell| {
            let sku = cell.lock();
            sku.stock.saturating_sub(sku.reserved).max(0)
        })
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
