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

/// An inventory with the two SKUs of [`sample`] at its prices: SKU-1 (with
/// `limit`) and SKU-9.
fn stocked_for_sample(sku_1: i64, limit: Option<u32>, sku_9: i64) -> Inventory {
    let inventory = Inventory::new();
    announce(&inventory, "SKU-1", sku_1, limit);
    inventory.apply(&InventoryEvent::StockSet {
        sku: "SKU-9".into(),
        available: sku_9,
        prices: BTreeMap::from([("EUR".to_string(), 500)]),
        max_per_customer: None,
    });
    inventory
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
        inventory
            .reserve(&sample(), Share::Whole, ok)
            .unwrap_err()
            .reason,
        Reason::UnknownSku
    );
    announce(&inventory, "SKU-9", 10, None);
    assert_eq!(
        inventory
            .reserve(&sample(), Share::Whole, ok)
            .unwrap_err()
            .reason,
        Reason::PriceMismatch,
        "SKU-9 costs 1999"
    );
}

#[test]
fn reserve_release_and_limits() {
    let inventory = stocked_for_sample(4, Some(3), 1);
    let order = sample();
    inventory.reserve(&order, Share::Whole, ok).unwrap();
    assert_eq!(inventory.get("SKU-1").unwrap().available(), 1);
    assert_eq!(inventory.get("SKU-1").unwrap().per_customer["c-1"], 3);
    let again = inventory.reserve(&order, Share::Whole, ok).unwrap_err();
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
        inventory
            .reserve(&sample(), Share::Whole, mismatch)
            .unwrap_err()
            .reason,
        Reason::UnknownSku
    );
}

#[test]
fn stock_set_again_keeps_sales_counted() {
    let inventory = stocked_for_sample(3, None, 5);
    inventory.reserve(&sample(), Share::Whole, ok).unwrap();
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

#[test]
fn partition_quotas_add_up_to_the_stock_and_spread_the_remainder() {
    let mut first_extra = std::collections::HashSet::new();
    for sku in ["A", "SKU-1", "SKU-2", "HOT", "b-99", "x"] {
        for partitions in [1u32, 2, 3, 4, 12] {
            for stock in [-5i64, 0, 1, 2, 11, 300, 1_000_003] {
                let quotas: Vec<i64> = (0..partitions)
                    .map(|partition| {
                        partition_quota(
                            stock,
                            sku,
                            Quota {
                                partition,
                                partitions,
                            },
                        )
                    })
                    .collect();
                assert_eq!(
                    quotas.iter().sum::<i64>(),
                    stock.max(0),
                    "{sku} {partitions} {stock}"
                );
                let (low, high) = (quotas.iter().min().unwrap(), quotas.iter().max().unwrap());
                assert!(high - low <= 1, "{sku}: quotas {quotas:?}");
            }
        }
        let quota = |partition| {
            partition_quota(
                1,
                sku,
                Quota {
                    partition,
                    partitions: 12,
                },
            )
        };
        first_extra.insert((0..12).find(|p| quota(*p) == 1).unwrap());
    }
    assert!(
        first_extra.len() > 1,
        "a single unit always goes to the same partition"
    );
}

#[test]
fn a_partition_sells_only_its_quota() {
    let inventory = stocked_for_sample(40, None, 40);
    let order = sample(); // wants 3 of SKU-1
    let quota = Quota {
        partition: 1,
        partitions: 4,
    };
    assert_eq!(partition_quota(40, "SKU-1", quota), 10);
    let mut sold = SoldUnits::default();
    sold.insert("SKU-1".to_string(), 8);
    let share = Share::Partition { quota, sold: &sold };
    let rejection = inventory.reserve(&order, share, ok).unwrap_err();
    assert_eq!(rejection.reason, Reason::OutOfStock);
    assert_eq!(rejection.detail, "SKU-1: 3 units wanted, 2 available");
    sold.insert("SKU-1".to_string(), 7);
    let share = Share::Partition { quota, sold: &sold };
    inventory.reserve(&order, share, ok).unwrap();
    assert_eq!(inventory.get("SKU-1").unwrap().reserved, 3);
}
