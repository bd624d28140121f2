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
use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The state of one SKU.
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

type SkuCell = Arc<Mutex<SkuState>>;

#[derive(Debug, Default)]
pub struct Inventory {
    skus: DashMap<String, SkuCell>,
}

impl Inventory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies an event of the `inventory` topic.
    pub fn apply(&self, event: &InventoryEvent) {
        let cell = self
            .skus
            .entry(event.sku().to_string())
            .or_default()
            .clone();
        let mut sku = cell.lock();
        match event {
            InventoryEvent::StockSet {
                available,
                prices,
                max_per_customer,
                ..
            } => {
                sku.stock = *available;
                sku.prices = prices.clone();
                sku.max_per_customer = *max_per_customer;
            }
            InventoryEvent::StockAdjusted { delta, .. } => {
                sku.stock = sku.stock.saturating_add(*delta);
            }
        }
    }

    /// Each SKU's cell in the order of `order.demand`, or `unknown_sku`.
    fn cells(&self, order: &ValidOrder<'_>) -> Result<Vec<SkuCell>, Rejection> {
        let mut cells = Vec::with_capacity(order.demand.len());
        for (sku, _) in &order.demand {
            match self.skus.get(sku.as_str()) {
                Some(cell) => cells.push(cell.clone()),
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
    pub fn reserve(
        &self,
        order: &ValidOrder<'_>,
        between: impl FnOnce() -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let cells = self.cells(order)?;
        let mut guards: Vec<_> = cells.iter().map(|cell| cell.lock()).collect();
        for (i, line) in order.lines.iter().enumerate() {
            let index = order
                .demand
                .binary_search_by(|(sku, _)| sku.as_str().cmp(&line.sku))
                .unwrap_or_default();
            let catalog = guards[index].prices.get(order.currency.as_ref()).copied();
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
                let held = state
                    .per_customer
                    .get(order.customer_id.as_ref())
                    .copied()
                    .unwrap_or(0);
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
            if state.available() < i64::from(*units) {
                return Err(Rejection::new(
                    Reason::OutOfStock,
                    format!(
                        "{sku}: {units} units wanted, {} available",
                        state.available()
                    ),
                ));
            }
        }
        for ((_, units), state) in order.demand.iter().zip(guards.iter_mut()) {
            state.reserved += i64::from(*units);
            if state.max_per_customer.is_some() {
                *state
                    .per_customer
                    .entry(order.customer_id.to_string())
                    .or_default() += units;
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
            let cell = self.skus.entry(sku.clone()).or_default().clone();
            let mut state = cell.lock();
            state.reserved += i64::from(*units);
            if state.max_per_customer.is_some() {
                *state
                    .per_customer
                    .entry(holding.customer_id.clone())
                    .or_default() += units;
            }
        }
    }

    /// Gives back the units of an accepted order (on cancellation). The
    /// caller guarantees it is called at most once per accepted order.
    pub fn release(&self, customer_id: &str, demand: &[(String, u32)]) {
        for (sku, units) in demand {
            let Some(cell) = self.skus.get(sku.as_str()).map(|c| c.clone()) else {
                debug_assert!(false, "released a SKU that was never reserved");
                continue;
            };
            let mut state = cell.lock();
            debug_assert!(
                state.reserved >= i64::from(*units),
                "released more than reserved"
            );
            state.reserved -= i64::from(*units);
            if let Some(held) = state.per_customer.get_mut(customer_id) {
                *held = held.saturating_sub(*units);
                if *held == 0 {
                    state.per_customer.remove(customer_id);
                }
            }
        }
    }

    /// A copy of one SKU's state.
    pub fn get(&self, sku: &str) -> Option<SkuState> {
        self.skus.get(sku).map(|cell| cell.lock().clone())
    }

    pub fn sku_count(&self) -> usize {
        self.skus.len()
    }

    /// Units sold beyond stock over all SKUs; must stay 0.
    pub fn oversold_units(&self) -> i64 {
        self.skus
            .iter()
            .map(|entry| entry.value().lock().oversold())
            .sum()
    }
}

#[cfg(test)]
mod tests;
