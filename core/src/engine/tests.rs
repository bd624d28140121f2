use super::*;
use crate::order::events::StatusEvent;
use crate::order::InventoryEvent;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

const PRICE: i64 = 100;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap()
}

pub(crate) fn order_json(order_id: &str, customer: &str, lines: &[(&str, i64)]) -> Vec<u8> {
    let total: i64 = lines.iter().map(|(_, q)| q * PRICE).sum();
    let lines: Vec<_> = lines
        .iter()
        .map(|(sku, q)| serde_json::json!({"sku": sku, "quantity": q, "unit_price_minor": PRICE, "ship_to": "home"}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "type": "order_placed", "order_id": order_id, "customer_id": customer,
        "placed_at": "2026-11-23T12:00:00Z", "currency": "EUR", "lines": lines,
        "addresses": {"home": {"name": "A 🏠", "line1": "L", "city": "C", "postal_code": "1", "country": "DE"}},
        "payments": [{"method": "card", "amount_minor": total, "authorization_id": "x"}]
    }))
    .unwrap()
}

fn cancel_json(order_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"type": "order_cancelled", "order_id": order_id}))
        .unwrap()
}

fn stock_set(sku: &str, available: i64, limit: Option<u32>) -> InventoryEvent {
    InventoryEvent::StockSet {
        sku: sku.into(),
        available,
        prices: BTreeMap::from([("EUR".to_string(), PRICE)]),
        max_per_customer: limit,
    }
}

fn engine_with(stock: &[(&str, i64, Option<u32>)]) -> Engine {
    let inventory = Arc::new(Inventory::new());
    for (sku, units, limit) in stock {
        inventory.apply(&stock_set(sku, *units, *limit)).unwrap();
    }
    Engine::new(inventory, Limits::default())
}

/// Offsets only need to grow within a book; one counter serves all tests.
static NEXT_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn run(engine: &Engine, book: &mut OrderBook, id: &str, value: &[u8]) -> (Outcome, Vec<Output>) {
    let offset = NEXT_OFFSET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    run_at(engine, book, offset, id, value)
}

fn run_at(
    engine: &Engine,
    book: &mut OrderBook,
    offset: i64,
    id: &str,
    value: &[u8],
) -> (Outcome, Vec<Output>) {
    let mut out = Vec::new();
    let processed = engine.process(
        book,
        offset,
        Some(id.as_bytes()),
        Some(value),
        now(),
        &mut out,
    );
    (processed.outcome, out)
}

fn fulfillment_count(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Fulfillment { .. }))
        .count()
}

fn statuses(out: &[Output]) -> Vec<StatusEvent> {
    out.iter()
        .filter_map(|o| match o {
            Output::Status { payload, .. } => Some(serde_json::from_slice(payload).unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn accept_then_duplicate_then_cancel_once() {
    let engine = engine_with(&[("A", 5, None)]);
    let mut book = OrderBook::new(100);
    let order = order_json("o-1", "c-1", &[("A", 2)]);
    let (outcome, out) = run(&engine, &mut book, "o-1", &order);
    assert_eq!(outcome, Outcome::Accepted);
    assert_eq!(statuses(&out)[0].status, Status::Accepted);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Fulfillment { .. }))
            .count(),
        1
    );
    assert_eq!(engine.inventory().get("A").unwrap().available(), 3);

    let (outcome, out) = run(&engine, &mut book, "o-1", &order);
    assert_eq!((outcome, out.len()), (Outcome::Duplicate, 0));

    let (outcome, out) = run(&engine, &mut book, "o-1", &cancel_json("o-1"));
    assert_eq!(outcome, Outcome::Cancelled);
    assert_eq!(statuses(&out)[0].event_id, "o-1:cancelled");
    assert_eq!(engine.inventory().get("A").unwrap().available(), 5);

    let (outcome, out) = run(&engine, &mut book, "o-1", &cancel_json("o-1"));
    assert_eq!((outcome, out.len()), (Outcome::CancelIgnored, 0));
    assert_eq!(
        engine.inventory().get("A").unwrap().available(),
        5,
        "units come back exactly once"
    );
}

#[test]
fn replayed_records_resend_follow_ups_only() {
    let engine = engine_with(&[("A", 5, None)]);
    let mut book = OrderBook::new(100);
    let order = order_json("o-1", "c-1", &[("A", 2)]);
    assert_eq!(
        run_at(&engine, &mut book, 10, "o-1", &order).0,
        Outcome::Accepted
    );
    let (outcome, out) = run_at(&engine, &mut book, 10, "o-1", &order);
    assert_eq!(outcome, Outcome::Replayed);
    assert!(statuses(&out).is_empty(), "no second status");
    assert_eq!(fulfillment_count(&out), 1, "fulfillment sent again");
    assert_eq!(
        engine.inventory().get("A").unwrap().available(),
        3,
        "stock taken once"
    );
    let (outcome, out) = run_at(&engine, &mut book, 11, "o-1", &order);
    assert_eq!(
        (outcome, out.len()),
        (Outcome::Duplicate, 0),
        "another offset is an upstream duplicate"
    );

    let cancel = cancel_json("o-1");
    assert_eq!(
        run_at(&engine, &mut book, 12, "o-1", &cancel).0,
        Outcome::Cancelled
    );
    let (outcome, out) = run_at(&engine, &mut book, 12, "o-1", &cancel);
    assert_eq!(
        (outcome, statuses(&out).len(), fulfillment_count(&out)),
        (Outcome::Replayed, 0, 1)
    );
    assert_eq!(
        engine.inventory().get("A").unwrap().available(),
        5,
        "units given back once"
    );
    let (outcome, out) = run_at(&engine, &mut book, 10, "o-1", &order);
    assert_eq!(
        (outcome, statuses(&out).len(), fulfillment_count(&out)),
        (Outcome::Replayed, 0, 1),
        "a replayed placement resends its fulfillment even when cancelled since"
    );
    let (outcome, out) = run_at(&engine, &mut book, 13, "o-1", &order);
    assert_eq!((outcome, out.len()), (Outcome::Duplicate, 0));
}

#[test]
fn status_carries_the_new_record() {
    let engine = engine_with(&[("A", 5, None)]);
    let mut book = OrderBook::new(100);
    let (_, out) = run_at(
        &engine,
        &mut book,
        7,
        "o-1",
        &order_json("o-1", "c-1", &[("A", 2)]),
    );
    let Some(Output::Status { record, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(&**record, book.get("o-1").unwrap());
    assert_eq!((record.state, record.offset), (OrderState::Accepted, 7));
    assert_eq!(
        record.holding.as_ref().unwrap().demand,
        vec![("A".to_string(), 2)]
    );
}

#[test]
fn latency_is_reported_only_within_range() {
    let engine = engine_with(&[("A", 100, None)]);
    let mut book = OrderBook::new(100);
    let placed_at = |id: &str, at: &str| {
        let mut order: serde_json::Value =
            serde_json::from_slice(&order_json(id, "c", &[("A", 1)])).unwrap();
        order["placed_at"] = at.into();
        serde_json::to_vec(&order).unwrap()
    };
    let latency_of = |book: &mut OrderBook, id: &str, at: &str| {
        let mut out = Vec::new();
        let value = placed_at(id, at);
        engine
            .process(book, 0, Some(id.as_bytes()), Some(&value), now(), &mut out)
            .latency
    };
    // now() is 2026-11-18T11:06:40Z.
    assert_eq!(
        latency_of(&mut book, "o-1", "2026-11-18T11:06:39.995Z"),
        Latency::Measured(Duration::from_millis(5))
    );
    assert_eq!(
        latency_of(&mut book, "o-2", "2026-11-18T10:06:40Z"),
        Latency::Measured(MAX_ORDER_LATENCY),
        "an hour is still a latency"
    );
    for (id, at) in [
        ("o-3", "1970-01-01T00:00:00Z"),
        ("o-4", "2026-11-18T10:06:39.999Z"),
        ("o-5", "2026-11-18T11:06:40.001Z"),
        ("o-6", "9999-12-31T23:59:59Z"),
        ("o-7", "0000-01-01T00:00:00Z"),
    ] {
        assert_eq!(latency_of(&mut book, id, at), Latency::OutOfRange, "{at}");
    }
    // Rejected orders have a latency too; undecided records none.
    let mut out = Vec::new();
    let unknown = order_json("o-8", "c", &[("Z", 1)]);
    let processed = engine.process(&mut book, 1, Some(b"o-8"), Some(&unknown), now(), &mut out);
    assert_eq!(processed.outcome, Outcome::Rejected(Reason::UnknownSku));
    assert!(
        matches!(processed.latency, Latency::OutOfRange),
        "placed 5 days after now()"
    );
    let processed = engine.process(&mut book, 2, Some(b"o-8"), Some(&unknown), now(), &mut out);
    assert_eq!(
        (processed.outcome, processed.latency),
        (Outcome::Duplicate, Latency::Absent)
    );
}

#[test]
fn all_or_nothing_across_lines() {
    let engine = engine_with(&[("A", 5, None), ("B", 1, None)]);
    let mut book = OrderBook::new(100);
    let (outcome, _) = run(
        &engine,
        &mut book,
        "o-1",
        &order_json("o-1", "c", &[("A", 3), ("B", 2)]),
    );
    assert_eq!(outcome, Outcome::Rejected(Reason::OutOfStock));
    assert_eq!(
        engine.inventory().get("A").unwrap().available(),
        5,
        "A untouched when B fails"
    );
}

#[test]
fn reasons_in_table_order() {
    let engine = engine_with(&[("A", 1, Some(1))]);
    let mut book = OrderBook::new(100);
    let cases = [
        (
            "o-1",
            order_json("o-1", "c", &[("Z", 1)]),
            Reason::UnknownSku,
        ),
        (
            "o-2",
            order_json("o-2", "c", &[("A", 2)]),
            Reason::CustomerLimitExceeded,
        ),
        (
            "o-3",
            order_json("o-3", "c", &[("A", 0)]),
            Reason::InvalidOrder,
        ),
    ];
    for (id, value, reason) in cases {
        assert_eq!(
            run(&engine, &mut book, id, &value).0,
            Outcome::Rejected(reason),
            "{id}"
        );
    }
    let mut wrong_price: serde_json::Value =
        serde_json::from_slice(&order_json("o-4", "c", &[("A", 1)])).unwrap();
    wrong_price["lines"][0]["unit_price_minor"] = 99.into();
    wrong_price["payments"][0]["amount_minor"] = 99.into();
    let value = serde_json::to_vec(&wrong_price).unwrap();
    assert_eq!(
        run(&engine, &mut book, "o-4", &value).0,
        Outcome::Rejected(Reason::PriceMismatch)
    );
    let (outcome, out) = run(&engine, &mut book, "o-5", b"\xff");
    assert_eq!(outcome, Outcome::DeadLetter(DlqReason::NotUtf8));
    assert!(matches!(out[0], Output::DeadLetter(_)));
}

#[test]
fn hot_sku_hit_by_every_shard_never_oversells() {
    const STOCK: i64 = 1_000;
    const SHARDS: usize = 4;
    const ORDERS_PER_SHARD: usize = 2_000;
    let engine = Arc::new(engine_with(&[
        ("HOT", STOCK, None),
        ("COLD", 1_000_000, None),
    ]));
    let (accepted_units, accepted_orders): (i64, i64) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..SHARDS)
            .map(|shard| {
                let engine = engine.clone();
                scope.spawn(move || {
                    let mut book = OrderBook::new(ORDERS_PER_SHARD);
                    let (mut units, mut orders) = (0, 0);
                    for i in 0..ORDERS_PER_SHARD {
                        let id = format!("o-{shard}-{i}");
                        let qty = (i % 3 + 1) as i64;
                        let value = order_json(&id, &id, &[("COLD", 1), ("HOT", qty)]);
                        if run(&engine, &mut book, &id, &value).0 == Outcome::Accepted {
                            units += qty;
                            orders += 1;
                        }
                    }
                    (units, orders)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let hot = engine.inventory().get("HOT").unwrap();
    assert_eq!(hot.reserved, accepted_units);
    assert!(
        accepted_units <= STOCK,
        "oversold: {accepted_units} > {STOCK}"
    );
    assert!(
        STOCK - accepted_units < 3,
        "demand exceeds stock, so stock sells out up to the last small order"
    );
    let cold = engine.inventory().get("COLD").unwrap();
    assert_eq!(
        cold.reserved, accepted_orders,
        "an order takes all its lines or none"
    );
}

// ---- model test ----------------------------------------------------------

const SKUS: [&str; 3] = ["S0", "S1", "S2"];
const SHARDS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Place {
        order: usize,
        customer: usize,
        lines: Vec<(usize, i64)>,
    },
    Cancel {
        order: usize,
    },
    Restock {
        sku: usize,
        delta: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..40usize, 0..4usize, prop::collection::vec((0..3usize, 0..5i64), 1..4))
            .prop_map(|(order, customer, lines)| Op::Place { order, customer, lines }),
        2 => (0..40usize).prop_map(|order| Op::Cancel { order }),
        1 => (0..3usize, -3..6i64).prop_map(|(sku, delta)| Op::Restock { sku, delta }),
    ]
}

type Holding = (usize, BTreeMap<usize, u32>);

/// The plain model: stock and holdings in hash maps, one order at a time.
#[derive(Default)]
struct Model {
    stock: HashMap<usize, i64>,
    reserved: HashMap<usize, i64>,
    held: HashMap<(usize, usize), u32>,
    /// Some((customer, units per SKU)) while accepted and not cancelled.
    orders: HashMap<usize, Option<Holding>>,
}

const LIMIT_SKU: usize = 2;
const LIMIT: u32 = 3;

impl Model {
    fn place(&mut self, order: usize, customer: usize, lines: &[(usize, i64)]) -> Outcome {
        if self.orders.contains_key(&order) {
            return Outcome::Duplicate;
        }
        if lines.iter().any(|(_, q)| *q < 1) {
            self.orders.insert(order, None);
            return Outcome::Rejected(Reason::InvalidOrder);
        }
        let mut demand: BTreeMap<usize, u32> = BTreeMap::new();
        for (sku, q) in lines {
            *demand.entry(*sku).or_default() += *q as u32;
        }
        let limited = demand.get(&LIMIT_SKU).copied().unwrap_or(0);
        let outcome = if limited > 0
            && self.held.get(&(customer, LIMIT_SKU)).copied().unwrap_or(0) + limited > LIMIT
        {
            Outcome::Rejected(Reason::CustomerLimitExceeded)
        } else if demand
            .iter()
            .any(|(s, u)| self.stock[s] - self.reserved[s] < i64::from(*u))
        {
            Outcome::Rejected(Reason::OutOfStock)
        } else {
            for (s, u) in &demand {
                *self.reserved.get_mut(s).unwrap() += i64::from(*u);
                if *s == LIMIT_SKU {
                    *self.held.entry((customer, *s)).or_default() += u;
                }
            }
            self.orders.insert(order, Some((customer, demand)));
            return Outcome::Accepted;
        };
        self.orders.insert(order, None);
        outcome
    }

    fn cancel(&mut self, order: usize) -> Outcome {
        match self.orders.get_mut(&order).and_then(Option::take) {
            Some((customer, demand)) => {
                for (s, u) in demand {
                    *self.reserved.get_mut(&s).unwrap() -= i64::from(u);
                    if s == LIMIT_SKU {
                        *self.held.get_mut(&(customer, s)).unwrap() -= u;
                    }
                }
                Outcome::Cancelled
            }
            None => Outcome::CancelIgnored,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn engine_matches_model(initial in prop::collection::vec(0..8i64, 3), ops in prop::collection::vec(op(), 1..120)) {
        let engine = engine_with(&[]);
        let mut model = Model::default();
        for (i, units) in initial.iter().enumerate() {
            let limit = (i == LIMIT_SKU).then_some(LIMIT);
            engine.inventory().apply(&stock_set(SKUS[i], *units, limit)).unwrap();
            model.stock.insert(i, *units);
            model.reserved.insert(i, 0);
        }
        let mut books: Vec<OrderBook> = (0..SHARDS).map(|_| OrderBook::new(1_000)).collect();
        let mut decisions: HashMap<String, usize> = HashMap::new();
        for op in &ops {
            match op {
                Op::Place { order, customer, lines } => {
                    let id = format!("o-{order}");
                    let named: Vec<(&str, i64)> = lines.iter().map(|(s, q)| (SKUS[*s], *q)).collect();
                    let (got, out) = run(&engine, &mut books[order % SHARDS], &id, &order_json(&id, &format!("c-{customer}"), &named));
                    let want = model.place(*order, *customer, lines);
                    prop_assert_eq!(got, want, "{:?}", op);
                    for status in statuses(&out) {
                        prop_assert!(status.status != Status::Cancelled);
                        *decisions.entry(status.order_id).or_default() += 1;
                    }
                }
                Op::Cancel { order } => {
                    let id = format!("o-{order}");
                    let (got, _) = run(&engine, &mut books[order % SHARDS], &id, &cancel_json(&id));
                    prop_assert_eq!(got, model.cancel(*order), "{:?}", op);
                }
                Op::Restock { sku, delta } => {
                    // Never below zero stock here: a negative adjustment below
                    // what is sold is an operator's oversell, tested apart.
                    let delta = (*delta).max(model.reserved[sku] - model.stock[sku]);
                    engine.inventory().apply(&InventoryEvent::StockAdjusted { sku: SKUS[*sku].into(), delta }).unwrap();
                    *model.stock.get_mut(sku).unwrap() += delta;
                }
            }
            for (i, sku) in SKUS.iter().enumerate() {
                let state = engine.inventory().get(sku).unwrap();
                prop_assert!(state.reserved <= state.stock, "oversold {}", sku);
                prop_assert_eq!(state.reserved, model.reserved[&i]);
            }
        }
        prop_assert!(decisions.values().all(|n| *n == 1), "an order got two decisions");
        prop_assert_eq!(decisions.len(), model.orders.len(), "every placed order got one decision");
    }
}

/// Instances sharing a sale: each has its own inventory, partitions sell
/// their quotas, and partitions move between instances (the old owner
/// forgets, the new one restores from the partition's changelog).
mod shared_sale {
    use super::*;
    use crate::inventory::Quota;
    use crate::state::{ChangelogEntry, Restorer};

    const PARTITIONS: u32 = 4;
    const INSTANCES: usize = 3;
    const SKUS: [&str; 2] = ["HOT", "B"];
    const WINDOW: usize = 8;

    #[derive(Debug, Clone)]
    enum Op {
        Place {
            order: usize,
            lines: Vec<(usize, i64)>,
        },
        Cancel {
            order: usize,
        },
        Move {
            partition: u32,
            to: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..60usize, prop::collection::vec((0..2usize, 1..4i64), 1..3))
                .prop_map(|(order, lines)| Op::Place { order, lines }),
            1 => (0..60usize).prop_map(|order| Op::Cancel { order }),
            1 => (0..PARTITIONS, 0..INSTANCES).prop_map(|(partition, to)| Op::Move { partition, to }),
        ]
    }

    struct Sale {
        engines: Vec<Engine>,
        /// Owner instance and book of each partition.
        owners: Vec<(usize, OrderBook)>,
        /// Every status's changelog entry, per partition, in order.
        changelog: Vec<Vec<(String, ChangelogEntry)>>,
        next_offset: i64,
    }

    impl Sale {
        fn new(stock: &[i64]) -> Sale {
            let engines: Vec<Engine> = (0..INSTANCES)
                .map(|_| {
                    let stocks: Vec<_> = SKUS
                        .iter()
                        .zip(stock)
                        .map(|(s, u)| (*s, *u, None))
                        .collect();
                    engine_with(&stocks)
                })
                .collect();
            let owners = (0..PARTITIONS)
                .map(|p| {
                    let quota = Quota {
                        partition: p,
                        partitions: PARTITIONS,
                    };
                    (p as usize % INSTANCES, OrderBook::with_quota(WINDOW, quota))
                })
                .collect();
            Sale {
                engines,
                owners,
                changelog: vec![Vec::new(); PARTITIONS as usize],
                next_offset: 0,
            }
        }

        fn send(&mut self, partition: usize, id: &str, value: &[u8]) -> Outcome {
            let (owner, book) = &mut self.owners[partition];
            let offset = self.next_offset;
            self.next_offset += 1;
            let (outcome, out) = run_at(&self.engines[*owner], book, offset, id, value);
            for output in out {
                if let Output::Status {
                    order_id, record, ..
                } = output
                {
                    let entry = ChangelogEntry {
                        partition: partition as i32,
                        record: std::sync::Arc::unwrap_or_clone(record),
                    };
                    self.changelog[partition].push((order_id, entry));
                }
            }
            outcome
        }

        fn move_partition(&mut self, partition: u32, to: usize) {
            let p = partition as usize;
            let (from, book) = &self.owners[p];
            forget(self.engines[*from].inventory(), book);
            let inventory = self.engines[to].inventory();
            let mut restorer = Restorer::new(inventory, WINDOW, Some(PARTITIONS));
            for (id, entry) in &self.changelog[p] {
                restorer.apply(id, entry.clone());
            }
            let book = restorer
                .finish(&[partition as i32])
                .remove(&(partition as i32))
                .unwrap();
            self.owners[p] = (to, book);
        }

        /// Units of each SKU held by accepted, uncancelled orders, from the
        /// changelog (what the outside world was told).
        fn sold(&self) -> [i64; 2] {
            let mut last: HashMap<&str, &ChangelogEntry> = HashMap::new();
            for (id, entry) in self.changelog.iter().flatten() {
                last.insert(id, entry);
            }
            let mut sold = [0; 2];
            for entry in last
                .values()
                .filter(|e| e.record.state == OrderState::Accepted)
            {
                for (sku, units) in &entry.record.holding.as_ref().unwrap().demand {
                    sold[SKUS.iter().position(|s| s == sku).unwrap()] += i64::from(*units);
                }
            }
            sold
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_oversold_and_each_instance_holds_what_its_partitions_sold(
            stock in prop::collection::vec(0..20i64, 2),
            ops in prop::collection::vec(op(), 1..150),
        ) {
            let mut sale = Sale::new(&stock);
            // The model of each partition's window: the last WINDOW orders
            // decided there, oldest first. A book rebuilt on another
            // instance remembers the same ones (it replays the same
            // decisions in the same order), so partition moves change nothing.
            let mut windows: Vec<std::collections::VecDeque<String>> =
                vec![Default::default(); PARTITIONS as usize];
            for op in &ops {
                match op {
                    Op::Place { order, lines } => {
                        let id = format!("o-{order}");
                        let named: Vec<(&str, i64)> = lines.iter().map(|(s, q)| (SKUS[*s], *q)).collect();
                        let window = &mut windows[order % PARTITIONS as usize];
                        let remembered = window.contains(&id);
                        let outcome = sale.send(order % PARTITIONS as usize, &id, &order_json(&id, "c", &named));
                        if matches!(outcome, Outcome::Accepted | Outcome::Rejected(_)) {
                            // Only an order the window forgot may be decided again.
                            prop_assert!(!remembered, "decided twice within the window: {}", id);
                            window.push_back(id);
                            if window.len() > WINDOW {
                                window.pop_front();
                            }
                        } else {
                            prop_assert_eq!(outcome, Outcome::Duplicate);
                            prop_assert!(remembered, "{} was not decided, though forgotten", id);
                        }
                    }
                    Op::Cancel { order } => {
                        let id = format!("o-{order}");
                        sale.send(order % PARTITIONS as usize, &id, &cancel_json(&id));
                    }
                    Op::Move { partition, to } => sale.move_partition(*partition, *to),
                }
                let sold = sale.sold();
                for (i, sku) in SKUS.iter().enumerate() {
                    prop_assert!(sold[i] <= stock[i], "{} sold {} of {}", sku, sold[i], stock[i]);
                    for (instance, engine) in sale.engines.iter().enumerate() {
                        let held: i64 = sale.owners.iter()
                            .filter(|(owner, _)| *owner == instance)
                            .map(|(_, book)| book.sold().get(*sku).copied().unwrap_or(0))
                            .sum();
                        let state = engine.inventory().get(sku).unwrap();
                        prop_assert_eq!(state.reserved, held, "instance {} {}", instance, sku);
                    }
                }
            }
        }
    }

    #[test]
    fn all_stock_sells_when_every_partition_has_demand() {
        for stock in [0, 1, 3, 4, 7, 40] {
            let mut sale = Sale::new(&[stock, 0]);
            sale.move_partition(1, 0); // owners 0, 0, 2, 0
            for order in 0..200 {
                let id = format!("o-{order}");
                sale.send(
                    order % PARTITIONS as usize,
                    &id,
                    &order_json(&id, "c", &[("HOT", 1)]),
                );
            }
            assert_eq!(sale.sold()[0], stock, "stock {stock}");
        }
    }
}

/// A [`ColdOrders`] in memory: the contract the processor's on-disk store
/// keeps, without the disk.
#[derive(Default)]
struct ColdMap(HashMap<String, OrderRecord>);

impl ColdOrders for ColdMap {
    fn keep(&mut self, order_id: Arc<str>, record: Arc<OrderRecord>) {
        self.0
            .insert(order_id.to_string(), Arc::unwrap_or_clone(record));
    }

    fn recall(&mut self, order_id: &str) -> Option<OrderRecord> {
        self.0.get(order_id).cloned()
    }
}

/// An order paid cash on delivery: no capture, so no timer keeps it in memory.
fn cod_order_json(order_id: &str, customer: &str, lines: &[(&str, i64)]) -> Vec<u8> {
    let mut order: serde_json::Value =
        serde_json::from_slice(&order_json(order_id, customer, lines)).unwrap();
    let total: i64 = lines.iter().map(|(_, q)| q * PRICE).sum();
    order["payments"] = serde_json::json!([{"method": "cash_on_delivery", "amount_minor": total}]);
    serde_json::to_vec(&order).unwrap()
}

/// What the second copy of an order sent after three times the book's
/// capacity of other orders gets, and the stock after its cancellation.
fn duplicate_after_three_capacities(mut book: OrderBook) -> (Outcome, usize, i64, OrderBook) {
    const CAPACITY: usize = 10;
    let engine = engine_with(&[("A", 100, None)]);
    let first = cod_order_json("o-first", "c-first", &[("A", 2)]);
    assert_eq!(
        run(&engine, &mut book, "o-first", &first).0,
        Outcome::Accepted
    );
    for i in 0..3 * CAPACITY {
        let id = format!("o-{i}");
        let order = cod_order_json(&id, &format!("c-{i}"), &[("A", 1)]);
        assert_eq!(run(&engine, &mut book, &id, &order).0, Outcome::Accepted);
    }
    let (outcome, out) = run(&engine, &mut book, "o-first", &first);
    let statuses = statuses(&out).len();
    run(&engine, &mut book, "o-first", &cancel_json("o-first"));
    let available = engine.inventory().get("A").unwrap().available();
    (outcome, statuses, available, book)
}

#[test]
fn a_book_in_front_of_cold_orders_decides_an_order_once_after_three_times_its_capacity() {
    let (outcome, statuses, available, book) =
        duplicate_after_three_capacities(OrderBook::new(10).with_cold(Box::<ColdMap>::default()));
    assert_eq!(
        (outcome, statuses),
        (Outcome::Duplicate, 0),
        "no second decision"
    );
    assert_eq!(
        available,
        100 - 30,
        "the cancellation found the order and gave back its 2 units"
    );
    assert!(
        book.len() <= 10,
        "memory holds the capacity: {}",
        book.len()
    );
    assert_eq!(book.evicted(), 0, "nothing forgotten");
    assert!(book.spilled() >= 21 && book.recalled() >= 1, "{book:?}");

    // The same sale without a cold tier: the window forgot the order.
    let (outcome, statuses, available, _) = duplicate_after_three_capacities(OrderBook::new(10));
    assert_eq!(
        (outcome, statuses),
        (Outcome::Accepted, 1),
        "decided twice without it"
    );
    assert_eq!(
        available,
        100 - 30 - 2,
        "the cancellation took back only the second copy"
    );
}

#[test]
fn an_order_waiting_on_the_gateway_leaves_memory_and_its_timer_brings_it_back() {
    let engine = engine_with(&[("A", 100, None)]);
    let mut book = OrderBook::new(10).with_cold(Box::<ColdMap>::default());
    let card = order_json("o-card", "c-card", &[("A", 1)]);
    assert_eq!(
        run(&engine, &mut book, "o-card", &card).0,
        Outcome::Accepted
    );
    assert_eq!(book.timers_set(), 1, "the capture's result timeout");
    for i in 0..30 {
        let id = format!("o-{i}");
        run(
            &engine,
            &mut book,
            &id,
            &cod_order_json(&id, &format!("c-{i}"), &[("A", 1)]),
        );
    }
    assert!(book.get("o-card").is_none(), "out of memory: {book:?}");
    assert!(book.len() <= 10, "{}", book.len());
    assert_eq!(book.timers_set(), 1, "its timer still listed");

    // Long after the result timeout: the timer fires on the order's record.
    let mut out = Vec::new();
    let later = now() + time::Duration::days(1);
    assert_eq!(
        engine.tick(&mut book, later, &mut out),
        1,
        "the card order changed"
    );
    assert!(book.get("o-card").is_some(), "brought back");
    let retries = out
        .iter()
        .filter(|o| matches!(o, Output::Event { kind, .. } if *kind == "payment_retry_scheduled"))
        .count();
    assert_eq!(
        retries, 1,
        "the result timed out, a retry scheduled: {out:?}"
    );
}
