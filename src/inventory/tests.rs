use super::*;
use crate::order::validate::{tests::sample_order, validate, Limits};

fn announce(inventory: &Inventory, sku: &str, stock: i64, limit: Option<u32>) {
    inventory.apply(&InventoryEvent::StockSet {
        sku: sku.into(),
        available: stock,
        prices: BTreeMap::from([("EUR".to_string(), 1999), ("USD".to_string(), 2199)]),
        max_per_customer: limit,
    });
}

fn sample() -> ValidOrder<'static> {
    // SKU-1 × 3 at 1999 and SKU-9 × 1 at 500, paid in EUR.
    validate(sample_order("o-1"), &Limits::default()).unwrap()
}

fn ok() -> Result<(), Rejection> {
    Ok(())
}

#[test]
fn unknown_sku_then_price() {
    let inventory = Inventory::new();
    announce(&inventory, "SKU-1", 10, None);
    assert_eq!(
        inventory.reserve(&sample(), ok).unwrap_err().reason,
        Reason::UnknownSku
    );
    announce(&inventory, "SKU-9", 10, None);
    assert_eq!(
        inventory.reserve(&sample(), ok).unwrap_err().reason,
        Reason::PriceMismatch,
        "SKU-9 costs 1999"
    );
}

#[test]
fn reserve_release_and_limits() {
    let inventory = Inventory::new();
    announce(&inventory, "SKU-1", 4, Some(3));
    inventory.apply(&InventoryEvent::StockSet {
        sku: "SKU-9".into(),
        available: 1,
        prices: BTreeMap::from([("EUR".to_string(), 500)]),
        max_per_customer: None,
    });
    let order = sample();
    inventory.reserve(&order, ok).unwrap();
    assert_eq!(inventory.get("SKU-1").unwrap().available(), 1);
    assert_eq!(inventory.get("SKU-1").unwrap().per_customer["c-1"], 3);
    let again = inventory.reserve(&order, ok).unwrap_err();
    assert_eq!(
        again.reason,
        Reason::CustomerLimitExceeded,
        "limit is checked before stock"
    );
    inventory.release(&order.customer_id, &order.demand);
    assert_eq!(inventory.get("SKU-1").unwrap().available(), 4);
    assert_eq!(inventory.get("SKU-9").unwrap().available(), 1);
    assert!(inventory.get("SKU-1").unwrap().per_customer.is_empty());
}

#[test]
fn payment_check_runs_between_price_and_stock() {
    let inventory = Inventory::new();
    announce(&inventory, "SKU-1", 0, None);
    let mismatch = || Err(Rejection::new(Reason::PaymentMismatch, "x"));
    assert_eq!(
        inventory.reserve(&sample(), mismatch).unwrap_err().reason,
        Reason::UnknownSku
    );
}

#[test]
fn stock_set_again_keeps_sales_counted() {
    let inventory = Inventory::new();
    announce(&inventory, "SKU-1", 3, None);
    inventory.apply(&InventoryEvent::StockSet {
        sku: "SKU-9".into(),
        available: 5,
        prices: BTreeMap::from([("EUR".to_string(), 500)]),
        max_per_customer: None,
    });
    inventory.reserve(&sample(), ok).unwrap();
    announce(&inventory, "SKU-1", 3, None);
    assert_eq!(
        inventory.get("SKU-1").unwrap().available(),
        0,
        "replaying stock_set does not resell"
    );
    inventory.apply(&InventoryEvent::StockAdjusted {
        sku: "SKU-1".into(),
        delta: -1,
    });
    assert_eq!(
        inventory.oversold_units(),
        1,
        "damage below sold units shows as oversold"
    );
    let order = sample();
    inventory.release(&order.customer_id, &order.demand);
    assert_eq!(
        inventory.oversold_units(),
        0,
        "a cancellation gives the units back"
    );
    inventory.restore(&crate::engine::Holding {
        customer_id: "c-9".into(),
        demand: vec![("SKU-1".into(), 4)],
        shipments: vec!["home".into()],
    });
    assert_eq!(
        inventory.oversold_units(),
        2,
        "restored sales count against stock (4 held, 2 in stock)"
    );
    announce(&inventory, "SKU-1", 10, None);
    assert_eq!(inventory.oversold_units(), 0, "restocking covers them");
}
