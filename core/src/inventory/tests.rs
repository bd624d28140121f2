use super::*;
use crate::order::validate::tests::{sample_order, validate_order as validate};
use crate::order::validate::Limits;
use crate::order::{Rejection, MAX_STOCK_UNITS};

/// [`Inventory::reserve`] with the rejection's detail, for assertions.
trait Reserving {
    fn reserve_or(
        &self,
        order: &ValidOrder<'_>,
        share: Share<'_>,
        between: impl FnOnce() -> Result<(), Rejection>,
    ) -> Result<(), Rejection>;
}

impl Reserving for Inventory {
    fn reserve_or(
        &self,
        order: &ValidOrder<'_>,
        share: Share<'_>,
        between: impl FnOnce() -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let mut detail = Detail::default();
        let between = |detail: &mut Detail| {
            between().map_err(|r| detail.fail(r.reason, format_args!("{}", r.detail)))
        };
        self.reserve(order, share, &mut detail, between)
            .map_err(|reason| detail.rejection(reason))
    }
}

fn announce(inventory: &Inventory, sku: &str, stock: i64, limit: Option<u32>) {
    inventory
        .apply(&InventoryEvent::StockSet {
            sku: sku.into(),
            available: stock,
            prices: BTreeMap::from([("EUR".to_string(), 1999), ("USD".to_string(), 2199)]),
            max_per_customer: limit,
        })
        .unwrap();
}

/// An inventory with the two SKUs of [`sample`] at its prices: SKU-1 (with
/// `limit`) and SKU-9.
fn stocked_for_sample(sku_1: i64, limit: Option<u32>, sku_9: i64) -> Inventory {
    let inventory = Inventory::new();
    announce(&inventory, "SKU-1", sku_1, limit);
    inventory
        .apply(&InventoryEvent::StockSet {
            sku: "SKU-9".into(),
            available: sku_9,
            prices: BTreeMap::from([("EUR".to_string(), 500)]),
            max_per_customer: None,
        })
        .unwrap();
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
            .reserve_or(&sample(), Share::Whole, ok)
            .unwrap_err()
            .reason,
        Reason::UnknownSku
    );
    announce(&inventory, "SKU-9", 10, None);
    assert_eq!(
        inventory
            .reserve_or(&sample(), Share::Whole, ok)
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
    inventory.reserve_or(&order, Share::Whole, ok).unwrap();
    assert_eq!(inventory.get("SKU-1").unwrap().available(), 1);
    assert_eq!(inventory.get("SKU-1").unwrap().per_customer["c-1"], 3);
    let again = inventory.reserve_or(&order, Share::Whole, ok).unwrap_err();
    assert_eq!(
        again.reason,
        Reason::CustomerLimitExceeded,
        "limit is checked before stock"
    );
    inventory.release(order.customer_id, order.demand());
    assert_eq!(inventory.get("SKU-1").unwrap().available(), 4);
    assert_eq!(inventory.get("SKU-9").unwrap().available(), 1);
    assert!(inventory.get("SKU-1").unwrap().per_customer.is_empty());
}

#[test]
fn payment_check_runs_between_price_and_stock() {
    // Prices right, SKU-1 at its customer limit and out of stock: the
    // payment check's rejection comes before the limit's and the stock's.
    let inventory = stocked_for_sample(0, Some(0), 0);
    let mismatch = || Err(Rejection::new(Reason::PaymentMismatch, "x"));
    let rejection = inventory
        .reserve_or(&sample(), Share::Whole, mismatch)
        .unwrap_err();
    assert_eq!(rejection.reason, Reason::PaymentMismatch);
    assert_eq!(
        inventory
            .reserve_or(&sample(), Share::Whole, ok)
            .unwrap_err()
            .reason,
        Reason::CustomerLimitExceeded,
        "with payments right, the limit is next"
    );
    // A wrong price: rejected before the payment check runs.
    let ran = std::cell::Cell::new(false);
    let wrong_price = stocked_for_sample(10, None, 10);
    announce(&wrong_price, "SKU-1", 10, None);
    wrong_price
        .apply(&InventoryEvent::StockSet {
            sku: "SKU-9".into(),
            available: 10,
            prices: BTreeMap::from([("EUR".to_string(), 501)]),
            max_per_customer: None,
        })
        .unwrap();
    let rejection = wrong_price
        .reserve_or(&sample(), Share::Whole, || {
            ran.set(true);
            Ok(())
        })
        .unwrap_err();
    assert_eq!(rejection.reason, Reason::PriceMismatch);
    assert!(
        !ran.get(),
        "the payment check ran before prices were checked"
    );
    assert_eq!(wrong_price.get("SKU-1").unwrap().reserved, 0);
}

#[test]
fn stock_set_again_keeps_sales_counted() {
    let inventory = stocked_for_sample(3, None, 5);
    inventory.reserve_or(&sample(), Share::Whole, ok).unwrap();
    announce(&inventory, "SKU-1", 3, None);
    assert_eq!(
        inventory.get("SKU-1").unwrap().available(),
        0,
        "replaying stock_set does not resell"
    );
    inventory
        .apply(&InventoryEvent::StockAdjusted {
            sku: "SKU-1".into(),
            delta: -1,
        })
        .unwrap();
    assert_eq!(
        inventory.oversold_units(),
        1,
        "damage below sold units shows as oversold"
    );
    let order = sample();
    inventory.release(order.customer_id, order.demand());
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
    let rejection = inventory.reserve_or(&order, share, ok).unwrap_err();
    assert_eq!(rejection.reason, Reason::OutOfStock);
    assert_eq!(rejection.detail, "SKU-1: 3 units wanted, 2 available");
    sold.insert("SKU-1".to_string(), 7);
    let share = Share::Partition { quota, sold: &sold };
    inventory.reserve_or(&order, share, ok).unwrap();
    assert_eq!(inventory.get("SKU-1").unwrap().reserved, 3);
}

/// `delta` for a `stock_adjusted` of `sku`, through the decoder as the feed
/// reads it, then applied: what the feed would dead-letter is an `Err`.
fn adjust(inventory: &Inventory, sku: &str, delta: i64) -> Result<(), DeadLetter> {
    let json = format!(r#"{{"type":"stock_adjusted","sku":"{sku}","delta":{delta}}}"#);
    crate::order::decode::decode_inventory(Some(sku.as_bytes()), Some(json.as_bytes()), 65_536)
        .and_then(|event| inventory.apply(&event))
}

/// An order for `units` of `sku` at 100 in EUR, paid in full.
fn order_of(id: &str, customer: &str, lines: &[(&str, i64)]) -> ValidOrder<'static> {
    let total: i64 = lines.iter().map(|(_, q)| q * 100).sum();
    let lines: Vec<_> = lines
        .iter()
        .map(|(sku, q)| {
            serde_json::json!({"sku": sku, "quantity": q, "unit_price_minor": 100, "ship_to": "h"})
        })
        .collect();
    let json = serde_json::json!({
        "type": "order_placed", "order_id": id, "customer_id": customer,
        "placed_at": "2026-11-23T12:00:00Z", "currency": "EUR", "lines": lines,
        "addresses": {"h": {"name": "A", "line1": "L", "city": "C", "postal_code": "1", "country": "DE"}},
        "payments": [{"method": "card", "amount_minor": total, "authorization_id": "x"}]
    });
    let bytes: &'static [u8] = Box::leak(serde_json::to_vec(&json).unwrap().into_boxed_slice());
    let limits = Limits {
        max_quantity: i64::from(u32::MAX),
        ..Limits::default()
    };
    match crate::order::decode::decode_order(Some(id.as_bytes()), Some(bytes), 65_536) {
        crate::order::decode::Decoded::Event(crate::order::OrderEvent::Placed(placed)) => {
            validate(placed, &limits).unwrap()
        }
        other => panic!("{other:?}"),
    }
}

fn priced(sku: &str, available: i64, limit: Option<u32>) -> InventoryEvent {
    InventoryEvent::StockSet {
        sku: sku.into(),
        available,
        prices: BTreeMap::from([("EUR".to_string(), 100)]),
        max_per_customer: limit,
    }
}

#[test]
fn extreme_adjustments_are_refused_and_never_oversell() {
    // The hostile producer's sequence: 10 units, 5 sold, then a delta of
    // i64::MIN twice. It saturated the stock to i64::MIN, and the stock
    // minus reserved units wrapped to 9.2e18 available in a release build.
    let inventory = Inventory::new();
    inventory.apply(&priced("S", 10, None)).unwrap();
    for i in 0..5 {
        inventory
            .reserve_or(
                &order_of(&format!("o-{i}"), "c", &[("S", 1)]),
                Share::Whole,
                ok,
            )
            .unwrap();
    }
    for _ in 0..2 {
        let dead = adjust(&inventory, "S", i64::MIN).unwrap_err();
        assert_eq!(dead.reason, DlqReason::InvalidInventoryEvent);
    }
    let accepted = (0..20)
        .filter(|i| {
            let order = order_of(&format!("p-{i}"), "c", &[("S", 1)]);
            inventory.reserve_or(&order, Share::Whole, ok).is_ok()
        })
        .count();
    assert_eq!(accepted, 5, "only the 5 units left are sold");
    let state = inventory.get("S").unwrap();
    assert_eq!(
        (state.stock, state.reserved, state.available()),
        (10, 10, 0)
    );
    assert_eq!(inventory.oversold_units(), 0);
    // Adjustments within range that add up past it are refused too.
    adjust(&inventory, "S", MAX_STOCK_UNITS - 10).unwrap();
    let dead = adjust(&inventory, "S", 1).unwrap_err();
    assert!(
        dead.detail
            .starts_with("stock is 1000000000000; a delta of 1"),
        "{}",
        dead.detail
    );
    adjust(&inventory, "S", -MAX_STOCK_UNITS).unwrap();
    adjust(&inventory, "S", -MAX_STOCK_UNITS).unwrap();
    assert!(adjust(&inventory, "S", -1).is_err());
    assert_eq!(inventory.get("S").unwrap().stock, -MAX_STOCK_UNITS);
    assert_eq!(
        inventory.oversold_units(),
        10,
        "all 10 held units are beyond stock"
    );
}

#[test]
fn oversold_counts_units_held_beyond_stock_not_below_zero() {
    let inventory = Inventory::new();
    inventory.apply(&priced("S", 0, None)).unwrap();
    adjust(&inventory, "S", -3).unwrap();
    assert_eq!(
        inventory.oversold_units(),
        0,
        "nothing sold, nothing oversold"
    );
    adjust(&inventory, "S", 5).unwrap();
    inventory
        .reserve_or(&order_of("o", "c", &[("S", 2)]), Share::Whole, ok)
        .unwrap();
    adjust(&inventory, "S", -4).unwrap(); // stock -2, 2 held
    assert_eq!(inventory.oversold_units(), 2, "at most the units held");
    assert_eq!(inventory.get("S").unwrap().oversold(), 2);
}

#[test]
fn customer_limits_near_u32_max_do_not_wrap() {
    let inventory = Inventory::new();
    inventory
        .apply(&priced("S", MAX_STOCK_UNITS, Some(u32::MAX)))
        .unwrap();
    // A holding read back from the changelog, just under the limit.
    inventory.restore(&crate::engine::Holding {
        customer_id: "c".into(),
        demand: vec![("S".into(), u32::MAX - 1)],
        shipments: vec!["h".into()],
    });
    let rejection = inventory
        .reserve_or(&order_of("o-1", "c", &[("S", 3)]), Share::Whole, ok)
        .unwrap_err();
    assert_eq!(rejection.reason, Reason::CustomerLimitExceeded);
    assert_eq!(
        rejection.detail,
        "S: customer would hold 4294967297 units, limit is 4294967295"
    );
    inventory
        .reserve_or(&order_of("o-2", "c", &[("S", 1)]), Share::Whole, ok)
        .unwrap();
    inventory.restore(&crate::engine::Holding {
        customer_id: "c".into(),
        demand: vec![("S".into(), u32::MAX)],
        shipments: vec!["h".into()],
    });
    assert_eq!(
        inventory.get("S").unwrap().per_customer["c"],
        u32::MAX,
        "saturates"
    );
}

mod model {
    //! Any sequence of inventory events with extreme values, orders,
    //! restores and cancellations, against a model in i128 that cannot
    //! overflow: the same events are refused, no order takes more than
    //! stock, and the oversold figure is the model's.
    use super::*;
    use proptest::prelude::*;

    const SKUS: [&str; 2] = ["A", "B"];

    fn extreme() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MIN + 1),
            Just(-MAX_STOCK_UNITS - 1),
            Just(-MAX_STOCK_UNITS),
            Just(-1),
            Just(0),
            Just(1),
            Just(MAX_STOCK_UNITS),
            Just(MAX_STOCK_UNITS + 1),
            Just(i64::MAX),
            -20..20i64,
        ]
    }

    fn units() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(u32::MAX),
            Just(u32::MAX - 1),
            Just(1u32 << 31),
            1..6u32
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set {
            sku: usize,
            available: i64,
            price: i64,
            limit: Option<u32>,
        },
        Adjust {
            sku: usize,
            delta: i64,
        },
        Place {
            customer: usize,
            lines: Vec<(usize, u32)>,
        },
        Restore {
            customer: usize,
            sku: usize,
            units: u32,
        },
        Cancel {
            index: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let limit = prop_oneof![
            Just(None),
            Just(Some(0)),
            Just(Some(3)),
            Just(Some(u32::MAX - 1)),
            Just(Some(u32::MAX))
        ];
        let price = prop_oneof![3 => Just(100i64), 1 => extreme()];
        prop_oneof![
            2 => (0..2usize, extreme(), price, limit)
                .prop_map(|(sku, available, price, limit)| Op::Set { sku, available, price, limit }),
            3 => (0..2usize, extreme()).prop_map(|(sku, delta)| Op::Adjust { sku, delta }),
            5 => (0..3usize, prop::collection::vec((0..2usize, units()), 1..3))
                .prop_map(|(customer, lines)| Op::Place { customer, lines }),
            1 => (0..3usize, 0..2usize, units())
                .prop_map(|(customer, sku, units)| Op::Restore { customer, sku, units }),
            2 => any::<usize>().prop_map(|index| Op::Cancel { index }),
        ]
    }

    #[derive(Default, Clone)]
    struct Sku {
        stock: i128,
        reserved: i128,
        price: Option<i64>,
        limit: Option<u32>,
        held: HashMap<usize, u32>,
    }

    fn oversold(sku: &Sku) -> i128 {
        (sku.reserved - sku.stock.max(0)).max(0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn inventory_matches_an_unbounded_model(ops in prop::collection::vec(op(), 1..80)) {
            let inventory = Inventory::new();
            let mut model: HashMap<usize, Sku> = HashMap::new();
            // Accepted or restored holdings not yet given back.
            let mut holdings: Vec<(usize, Vec<(usize, u32)>)> = Vec::new();
            let max = i128::from(MAX_STOCK_UNITS);
            for (n, op) in ops.iter().enumerate() {
                match op {
                    Op::Set { sku, available, price, limit } => {
                        let json = serde_json::json!({"type": "stock_set", "sku": SKUS[*sku],
                            "available": available, "prices": {"EUR": price}, "max_per_customer": limit});
                        let bytes = serde_json::to_vec(&json).unwrap();
                        let got = crate::order::decode::decode_inventory(None, Some(&bytes), 65_536)
                            .and_then(|event| inventory.apply(&event));
                        let valid = (0..=max).contains(&i128::from(*available))
                            && (0..=crate::order::MAX_PRICE_MINOR).contains(price);
                        prop_assert_eq!(got.is_ok(), valid, "{:?}", op);
                        if valid {
                            let state = model.entry(*sku).or_default();
                            state.stock = i128::from(*available);
                            state.price = Some(*price);
                            state.limit = *limit;
                        }
                    }
                    Op::Adjust { sku, delta } => {
                        let got = adjust(&inventory, SKUS[*sku], *delta);
                        let before = model.get(sku).map_or(0, |s| s.stock);
                        let after = before + i128::from(*delta);
                        let valid = (-max..=max).contains(&i128::from(*delta)) && (-max..=max).contains(&after);
                        prop_assert_eq!(got.is_ok(), valid, "{:?} on stock {}", op, before);
                        if valid {
                            model.entry(*sku).or_default().stock = after;
                        }
                    }
                    Op::Place { customer, lines } => {
                        // One line per SKU (a second line of a SKU is merged).
                        let mut demand: Vec<(usize, u32)> = Vec::new();
                        for (sku, units) in lines {
                            match demand.iter_mut().find(|(s, _)| s == sku) {
                                Some((_, u)) => *u = u.saturating_add(*units),
                                None => demand.push((*sku, *units)),
                            }
                        }
                        let named: Vec<(&str, i64)> =
                            demand.iter().map(|(s, u)| (SKUS[*s], i64::from(*u))).collect();
                        let order = order_of(&format!("o-{n}"), &format!("c-{customer}"), &named);
                        let got = inventory.reserve_or(&order, Share::Whole, ok).map_err(|r| r.reason);
                        let want = if demand.iter().any(|(s, _)| !model.contains_key(s)) {
                            Err(Reason::UnknownSku)
                        } else if demand.iter().any(|(s, _)| model[s].price != Some(100)) {
                            Err(Reason::PriceMismatch)
                        } else if demand.iter().any(|(s, u)| {
                            let m = &model[s];
                            m.limit.is_some_and(|limit| {
                                u64::from(m.held.get(customer).copied().unwrap_or(0)) + u64::from(*u)
                                    > u64::from(limit)
                            })
                        }) {
                            Err(Reason::CustomerLimitExceeded)
                        } else if demand.iter().any(|(s, u)| {
                            let m = &model[s];
                            (m.stock - m.reserved).max(0) < i128::from(*u)
                        }) {
                            Err(Reason::OutOfStock)
                        } else {
                            Ok(())
                        };
                        prop_assert_eq!(got, want, "{:?}", op);
                        if want.is_ok() {
                            for (s, u) in &demand {
                                let m = model.get_mut(s).unwrap();
                                m.reserved += i128::from(*u);
                                prop_assert!(m.reserved <= m.stock, "sold beyond stock");
                                if m.limit.is_some() {
                                    let held = m.held.entry(*customer).or_default();
                                    *held = held.saturating_add(*u);
                                }
                            }
                            holdings.push((*customer, demand));
                        }
                    }
                    Op::Restore { customer, sku, units } => {
                        inventory.restore(&crate::engine::Holding {
                            customer_id: format!("c-{customer}"),
                            demand: vec![(SKUS[*sku].to_string(), *units)],
                            shipments: vec!["h".into()],
                        });
                        let m = model.entry(*sku).or_default();
                        m.reserved += i128::from(*units);
                        if m.limit.is_some() {
                            let held = m.held.entry(*customer).or_default();
                            *held = held.saturating_add(*units);
                        }
                        holdings.push((*customer, vec![(*sku, *units)]));
                    }
                    Op::Cancel { index } => {
                        if holdings.is_empty() {
                            continue;
                        }
                        let (customer, demand) = holdings.swap_remove(index % holdings.len());
                        let named: Vec<(String, u32)> =
                            demand.iter().map(|(s, u)| (SKUS[*s].to_string(), *u)).collect();
                        inventory.release(&format!("c-{customer}"), named.iter().map(|(s, u)| (s.as_str(), *u)));
                        for (s, u) in demand {
                            let m = model.get_mut(&s).unwrap();
                            m.reserved -= i128::from(u);
                            if let Some(held) = m.held.get_mut(&customer) {
                                *held = held.saturating_sub(u);
                                if *held == 0 {
                                    m.held.remove(&customer);
                                }
                            }
                        }
                    }
                }
                let mut total_oversold = 0;
                for (i, sku) in SKUS.iter().enumerate() {
                    let (Some(state), Some(m)) = (inventory.get(sku), model.get(&i)) else {
                        prop_assert_eq!(inventory.get(sku).is_some(), model.contains_key(&i));
                        continue;
                    };
                    prop_assert_eq!(i128::from(state.stock), m.stock, "stock of {}", sku);
                    prop_assert_eq!(i128::from(state.reserved), m.reserved, "reserved of {}", sku);
                    prop_assert_eq!(i128::from(state.available()), (m.stock - m.reserved).max(0));
                    prop_assert_eq!(i128::from(state.oversold()), oversold(m));
                    total_oversold += oversold(m);
                }
                prop_assert_eq!(i128::from(inventory.oversold_units()), total_oversold);
            }
        }
    }
}

#[test]
fn the_sku_hasher_tells_apart_skus_that_differ_in_any_byte_or_length() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let build = BuildHasherDefault::<SkuHasher>::default();
    let mut seen = std::collections::HashMap::new();
    let mut skus: Vec<String> = (0..50_000).map(|i| format!("sku-{i}")).collect();
    // Same prefix, one byte apart at every position of a 17-byte name, and
    // names that differ only by trailing zero bytes.
    for position in 0..17 {
        let mut bytes = *b"SKU-ABCDEFGHIJKLM";
        bytes[position] ^= 1;
        skus.push(String::from_utf8(bytes.to_vec()).unwrap());
    }
    skus.extend(["a", "a\0", "a\0\0", "\0a", "12345678", "123456780"].map(String::from));
    for sku in &skus {
        if let Some(other) = seen.insert(build.hash_one(sku.as_str()), sku) {
            panic!("{sku:?} and {other:?} hash alike");
        }
    }
}
