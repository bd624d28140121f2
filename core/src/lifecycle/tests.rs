use super::*;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

const ORDER: &str = "o-42";

/// Short waits, so tests step through retries quickly.
const POLICY: Policy = Policy {
    result_timeout_ms: 1_000,
    retry_initial_ms: 100,
    retry_max_ms: 1_000,
    max_attempts: 4,
};

fn ctx(now: i64) -> Ctx<'static> {
    Ctx {
        order_id: ORDER,
        now: Millis(now),
        policy: &POLICY,
    }
}

fn payment(auth: &str, amount: i64) -> PlacedPayment {
    PlacedPayment {
        method: "card".into(),
        amount_minor: amount,
        authorization_id: Some(auth.into()),
        on_delivery: false,
    }
}

fn cash(amount: i64) -> PlacedPayment {
    PlacedPayment {
        method: "cash_on_delivery".into(),
        amount_minor: amount,
        authorization_id: None,
        on_delivery: true,
    }
}

/// Two lines of SKU A (home) and one of B (office): 2 × 1000 + 1 × 500.
fn order(payments: Vec<PlacedPayment>) -> Accepted {
    Accepted {
        currency: "EUR".into(),
        lines: vec![
            LifeLine {
                sku: "A".into(),
                quantity: 2,
                unit_price_minor: 1000,
                ship_to: "home".into(),
            },
            LifeLine {
                sku: "B".into(),
                quantity: 1,
                unit_price_minor: 500,
                ship_to: "office".into(),
            },
        ],
        payments,
        shipments: vec!["home".into(), "office".into()],
    }
}

fn commands(fx: &[Effect]) -> Vec<&Command> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Command(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn types(fx: &[Effect]) -> Vec<&'static str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Event(e) => Some(e.kind.type_name()),
            _ => None,
        })
        .collect()
}

fn result(command: &Command, outcome: Outcome) -> Input {
    Input::PaymentResult {
        command_id: command.command_id.clone(),
        attempt: command.attempt,
        outcome,
        code: "x".into(),
        gateway_ref: Some("ch_1".into()),
    }
}

fn answer(command: &Command) -> Input {
    let (outcome, code) = gateway::simulate(command);
    Input::PaymentResult {
        command_id: command.command_id.clone(),
        attempt: command.attempt,
        outcome,
        code: code.into(),
        gateway_ref: (outcome == Outcome::Succeeded).then(|| format!("ch-{}", command.attempt)),
    }
}

fn staff(action: Action, target: &str, note: Option<&str>, id: &str) -> Input {
    Input::Staff {
        action_id: id.into(),
        actor: "maria".into(),
        action,
        target: target.into(),
        note: note.map(str::to_string),
    }
}

#[test]
fn a_flaky_2_capture_succeeds_on_attempt_3_after_two_backoffs() {
    let (mut life, fx) = OrderLife::accept(order(vec![payment("auth-flaky-2", 2500)]), ctx(0));
    let first = commands(&fx)[0].clone();
    assert_eq!(
        (first.command_id.as_str(), first.attempt),
        ("o-42/p0:capture", 1)
    );
    let fx = life.apply(ctx(10), &answer(&first)).unwrap();
    assert_eq!(types(&fx), ["payment_retry_scheduled"]);
    let due = life.next_due().unwrap();
    let backoff_1 = due.0 - 10;
    assert!(
        (100..=110).contains(&backoff_1),
        "first backoff {backoff_1} ms"
    );
    // Not due yet: nothing happens.
    assert!(life.apply(ctx(due.0 - 1), &Input::Due).unwrap().is_empty());
    let fx = life.apply(ctx(due.0), &Input::Due).unwrap();
    let second = commands(&fx)[0].clone();
    assert_eq!(
        (second.command_id.as_str(), second.attempt),
        ("o-42/p0:capture", 2)
    );
    let fx = life.apply(ctx(due.0 + 5), &answer(&second)).unwrap();
    assert_eq!(types(&fx), ["payment_retry_scheduled"]);
    let due_2 = life.next_due().unwrap();
    let backoff_2 = due_2.0 - (due.0 + 5);
    assert!(
        (200..=220).contains(&backoff_2),
        "second backoff {backoff_2} ms: doubled"
    );
    let fx = life.apply(ctx(due_2.0), &Input::Due).unwrap();
    let third = commands(&fx)[0].clone();
    assert_eq!(third.attempt, 3);
    let fx = life.apply(ctx(due_2.0 + 1), &answer(&third)).unwrap();
    assert_eq!(types(&fx), ["payment_captured", "order_paid"]);
    assert_eq!(life.next_due(), None);
}

#[test]
fn no_result_in_time_counts_as_a_failure() {
    let (mut life, _) = OrderLife::accept(order(vec![payment("auth-1", 2500)]), ctx(0));
    assert_eq!(life.next_due(), Some(Millis(1_000)));
    let fx = life.apply(ctx(1_000), &Input::Due).unwrap();
    let Effect::Event(event) = &fx[0] else {
        panic!("an event: {fx:?}")
    };
    assert!(matches!(
        &event.kind,
        EventKind::PaymentRetryScheduled { attempt: 2, code, .. } if code == TIMEOUT_CODE
    ));
}

#[test]
fn a_decline_cancels_the_order_voids_what_is_out_and_refunds_what_was_captured() {
    let payments = vec![
        payment("auth-1", 1000),
        payment("auth-2", 1000),
        payment("auth-decline", 500),
    ];
    let (mut life, fx) = OrderLife::accept(order(payments), ctx(0));
    let out: Vec<Command> = commands(&fx).into_iter().cloned().collect();
    assert_eq!(out.len(), 3);
    life.apply(ctx(1), &answer(&out[0])).unwrap(); // p0 captured
    let fx = life.apply(ctx(2), &answer(&out[2])).unwrap(); // p2 declined
    assert_eq!(types(&fx)[0], "payment_declined");
    assert!(fx.contains(&Effect::Cancel(CancelReason::PaymentDeclined)));
    let sent: Vec<(CommandKind, u32, i64)> = commands(&fx)
        .iter()
        .map(|c| (c.kind, c.payment, c.amount_minor))
        .collect();
    assert_eq!(
        sent,
        [(CommandKind::Refund, 0, 1000), (CommandKind::Void, 1, 1000)],
        "p0 refunded, p1 voided"
    );
    assert_eq!(
        CancelReason::PaymentDeclined.status_reason(),
        Some("payment_declined")
    );
    // The order is cancelled once: a customer cancellation now is refused.
    assert_eq!(
        life.apply(ctx(3), &Input::Cancel),
        Err(Refusal::OrderNotActive)
    );
}

#[test]
fn a_down_gateway_reaches_attention_then_staff_retry_captures() {
    let (mut life, fx) = OrderLife::accept(order(vec![payment("auth-down", 2500)]), ctx(0));
    let mut command = commands(&fx)[0].clone();
    let mut now = 0;
    let mut seen = Vec::new();
    loop {
        now += 1;
        let fx = life.apply(ctx(now), &answer(&command)).unwrap();
        seen.extend(types(&fx));
        let Some(due) = life.next_due() else { break };
        now = due.0;
        let fx = life.apply(ctx(now), &Input::Due).unwrap();
        command = commands(&fx)[0].clone();
    }
    assert_eq!(
        seen,
        [
            "payment_retry_scheduled",
            "payment_retry_scheduled",
            "payment_retry_scheduled",
            "payment_attention"
        ]
    );
    assert_eq!(command.attempt, POLICY.max_attempts);
    assert_eq!(life.in_attention(), 1);
    // Staff retry: a new attempt number, never a reused one.
    let fx = life
        .apply(
            ctx(now),
            &staff(Action::RetryPayment, "o-42/p0", None, "act-1"),
        )
        .unwrap();
    let retry = commands(&fx)[0].clone();
    assert_eq!(retry.attempt, POLICY.max_attempts + 1);
    assert_eq!(types(&fx), ["staff_action_applied"]);
    // The same action delivered again changes nothing.
    let again = life
        .apply(
            ctx(now),
            &staff(Action::RetryPayment, "o-42/p0", None, "act-1"),
        )
        .unwrap();
    assert!(again.is_empty());
    let fx = life
        .apply(ctx(now + 1), &result(&retry, Outcome::Succeeded))
        .unwrap();
    assert_eq!(types(&fx), ["payment_captured", "order_paid"]);
    assert_eq!(life.in_attention(), 0);
    // A retry of a captured payment is not allowed.
    assert_eq!(
        life.apply(
            ctx(now + 2),
            &staff(Action::RetryPayment, "o-42/p0", None, "act-2")
        ),
        Err(Refusal::NotAllowed)
    );
}

#[test]
fn mark_paid_needs_a_note_and_an_open_payment() {
    let (mut life, _) = OrderLife::accept(order(vec![payment("auth-down", 2500)]), ctx(0));
    assert_eq!(
        life.apply(ctx(1), &staff(Action::MarkPaid, "o-42/p0", Some("  "), "a")),
        Err(Refusal::Invalid)
    );
    assert_eq!(
        life.apply(
            ctx(1),
            &staff(Action::MarkPaid, "o-42/p9", Some("ref"), "a")
        ),
        Err(Refusal::Invalid)
    );
    let fx = life
        .apply(
            ctx(1),
            &staff(Action::MarkPaid, "o-42/p0", Some("bank ref 7"), "a"),
        )
        .unwrap();
    assert_eq!(
        types(&fx),
        ["payment_captured", "order_paid", "staff_action_applied"]
    );
    // A capture result arriving afterwards is settled already.
    let late = Input::PaymentResult {
        command_id: "o-42/p0:capture".into(),
        attempt: 1,
        outcome: Outcome::Failed,
        code: "x".into(),
        gateway_ref: None,
    };
    assert!(life.apply(ctx(2), &late).unwrap().is_empty());
}

#[test]
fn results_for_attempts_never_sent_or_commands_unknown_are_refused() {
    let (mut life, fx) = OrderLife::accept(order(vec![payment("auth-1", 2500)]), ctx(0));
    let command = commands(&fx)[0].clone();
    let mut future = command.clone();
    future.attempt = 2;
    assert_eq!(
        life.apply(ctx(1), &result(&future, Outcome::Succeeded)),
        Err(Refusal::UnknownCommand)
    );
    let mut other = command.clone();
    other.command_id = "o-42/p7:capture".into();
    assert_eq!(
        life.apply(ctx(1), &result(&other, Outcome::Succeeded)),
        Err(Refusal::UnknownCommand)
    );
    let mut void = command.clone();
    void.command_id = "o-42/p0:void".into();
    assert_eq!(
        life.apply(ctx(1), &result(&void, Outcome::Succeeded)),
        Err(Refusal::UnknownCommand),
        "no void was ever sent"
    );
    // A refused input left the state as it was.
    let before = life.clone();
    let _ = life.apply(ctx(1), &result(&future, Outcome::Succeeded));
    assert_eq!(life, before);
}

#[test]
fn a_stale_failure_changes_nothing_but_a_late_success_counts() {
    let (mut life, fx) = OrderLife::accept(order(vec![payment("auth-1", 2500)]), ctx(0));
    let first = commands(&fx)[0].clone();
    life.apply(ctx(1_000), &Input::Due).unwrap(); // attempt 1 timed out
                                                  // Its failure, arriving late, is stale.
    assert!(life
        .apply(ctx(1_001), &result(&first, Outcome::Failed))
        .unwrap()
        .is_empty());
    // Its success, arriving late, settles the payment (gateways dedup).
    let fx = life
        .apply(ctx(1_002), &result(&first, Outcome::Succeeded))
        .unwrap();
    assert_eq!(types(&fx), ["payment_captured", "order_paid"]);
    assert_eq!(life.next_due(), None, "the scheduled retry is gone");
}

#[test]
fn a_capture_that_succeeds_while_being_voided_wins_and_is_refunded() {
    let (mut life, fx) = OrderLife::accept(order(vec![payment("auth-1", 2500)]), ctx(0));
    let capture = commands(&fx)[0].clone();
    let fx = life.apply(ctx(1), &Input::Cancel).unwrap();
    assert_eq!(fx[0], Effect::Cancel(CancelReason::Customer));
    let void = commands(&fx)[0].clone();
    assert_eq!(void.kind, CommandKind::Void);
    let fx = life
        .apply(ctx(2), &result(&capture, Outcome::Succeeded))
        .unwrap();
    assert_eq!(
        types(&fx),
        ["payment_captured"],
        "no order_paid for a cancelled order"
    );
    let refund = commands(&fx)[0].clone();
    assert_eq!(
        (
            refund.kind,
            refund.amount_minor,
            refund.refund_id.as_deref()
        ),
        (CommandKind::Refund, 2500, Some("o-42/p0/cancel"))
    );
    // The void's success afterwards changes nothing: never captured and voided.
    assert!(life
        .apply(ctx(3), &result(&void, Outcome::Succeeded))
        .unwrap()
        .is_empty());
    assert!(matches!(life.payments[0].state, PayState::Captured { .. }));
}

#[test]
fn cancellation_is_refused_once_a_shipment_shipped() {
    let (mut life, _) = OrderLife::accept(order(vec![payment("auth-1", 2500)]), ctx(0));
    let shipped = Input::Shipped {
        fulfillment_id: "o-42/home".into(),
        carrier: Some("DHL".into()),
        tracking_number: Some("JD1".into()),
    };
    assert_eq!(
        types(&life.apply(ctx(1), &shipped).unwrap()),
        ["shipment_shipped"]
    );
    assert!(life.apply(ctx(2), &shipped).unwrap().is_empty(), "a repeat");
    assert_eq!(
        life.apply(ctx(3), &Input::Cancel),
        Err(Refusal::AlreadyShipped)
    );
    assert_eq!(
        life.apply(ctx(3), &staff(Action::CancelOrder, ORDER, None, "a")),
        Err(Refusal::AlreadyShipped)
    );
    let unknown = Input::Delivered {
        fulfillment_id: "o-42/garage".into(),
    };
    assert_eq!(
        life.apply(ctx(4), &unknown),
        Err(Refusal::UnknownFulfillment)
    );
}

#[test]
fn shipments_of_a_cancelled_order_are_refused() {
    let (mut life, _) = OrderLife::accept(order(vec![cash(2500)]), ctx(0));
    let fx = life
        .apply(ctx(1), &staff(Action::CancelOrder, ORDER, None, "a"))
        .unwrap();
    assert_eq!(fx[0], Effect::Cancel(CancelReason::Staff));
    assert_eq!(types(&fx), ["payment_voided", "staff_action_applied"]);
    assert!(
        commands(&fx).is_empty(),
        "cash on delivery has nothing to void"
    );
    let shipped = Input::Shipped {
        fulfillment_id: "o-42/home".into(),
        carrier: None,
        tracking_number: None,
    };
    assert_eq!(life.apply(ctx(2), &shipped), Err(Refusal::OrderNotActive));
}

fn deliver_all(life: &mut OrderLife, now: i64) -> Vec<Effect> {
    let mut fx = Vec::new();
    for key in ["home", "office"] {
        let delivered = Input::Delivered {
            fulfillment_id: format!("{ORDER}/{key}"),
        };
        fx.extend(life.apply(ctx(now), &delivered).unwrap());
    }
    fx
}

#[test]
fn cash_on_delivery_is_captured_at_the_last_delivery() {
    let (mut life, fx) =
        OrderLife::accept(order(vec![payment("auth-1", 1000), cash(1500)]), ctx(0));
    let capture = commands(&fx)[0].clone();
    assert_eq!(commands(&fx).len(), 1, "no command for cash on delivery");
    assert_eq!(
        types(&life.apply(ctx(1), &answer(&capture)).unwrap()),
        ["payment_captured"]
    );
    let fx = deliver_all(&mut life, 2);
    assert_eq!(
        types(&fx),
        [
            "shipment_delivered",
            "shipment_delivered",
            "order_delivered",
            "payment_captured",
            "order_paid"
        ]
    );
}

#[test]
fn returns_restock_once_and_refund_in_reverse_order_of_payments() {
    let (mut life, fx) =
        OrderLife::accept(order(vec![cash(1000), payment("auth-1", 1500)]), ctx(0));
    let capture = commands(&fx)[0].clone();
    life.apply(ctx(1), &answer(&capture)).unwrap();
    let line = |sku: &str, quantity| ReturnLine {
        sku: sku.into(),
        quantity,
    };
    let request = |id: &str, lines: Vec<ReturnLine>| Input::ReturnRequested {
        return_id: id.into(),
        lines,
    };
    assert_eq!(
        life.apply(ctx(2), &request("r-1", vec![line("A", 1)])),
        Err(Refusal::ExceedsDelivered),
        "nothing delivered yet"
    );
    deliver_all(&mut life, 3);
    assert_eq!(
        life.apply(ctx(4), &request("r-1", vec![line("A", 3)])),
        Err(Refusal::ExceedsDelivered)
    );
    let fx = life
        .apply(ctx(4), &request("r-1", vec![line("A", 2), line("B", 1)]))
        .unwrap();
    assert_eq!(types(&fx), ["return_accepted"]);
    assert_eq!(
        life.apply(ctx(5), &request("r-2", vec![line("B", 1)])),
        Err(Refusal::ExceedsDelivered),
        "B is in another return already"
    );
    let received = |lines: Vec<(&str, u32, bool)>| Input::ReturnReceived {
        return_id: "r-1".into(),
        lines: lines
            .into_iter()
            .map(|(sku, quantity, restock)| ReceivedLine {
                sku: sku.into(),
                quantity,
                restock,
            })
            .collect(),
    };
    assert_eq!(
        life.apply(ctx(6), &received(vec![("B", 2, true)])),
        Err(Refusal::ExceedsRequested)
    );
    let fx = life
        .apply(ctx(6), &received(vec![("A", 2, true), ("B", 1, false)]))
        .unwrap();
    // 2 × 1000 + 500 = 2500: 1500 from the card (listed last), 1000 from
    // the cash payment, which needs staff.
    assert_eq!(
        fx[0],
        Effect::Restock(vec![line("A", 2)]),
        "only lines with restock: true"
    );
    assert_eq!(types(&fx), ["return_received", "refund_attention"]);
    let refund = commands(&fx)[0].clone();
    assert_eq!(
        (
            refund.payment,
            refund.amount_minor,
            refund.refund_id.as_deref()
        ),
        (1, 1500, Some("o-42/r-1/p1"))
    );
    assert_eq!(life.payments[0].refunded_minor, 1000);
    // Delivered again: restocked and refunded once.
    assert!(life
        .apply(ctx(7), &received(vec![("A", 2, true)]))
        .unwrap()
        .is_empty());
    // The cash share is refunded by staff.
    assert_eq!(
        life.apply(
            ctx(8),
            &staff(Action::RetryRefund, "o-42/r-1/p0", None, "a")
        ),
        Err(Refusal::NotAllowed)
    );
    let fx = life
        .apply(
            ctx(8),
            &staff(Action::MarkRefunded, "o-42/r-1/p0", Some("cash back"), "b"),
        )
        .unwrap();
    assert_eq!(types(&fx), ["refund_succeeded", "staff_action_applied"]);
}

#[test]
fn in_flight_commands_survive_a_restart_with_their_attempt_numbers() {
    let (mut life, fx) = OrderLife::accept(order(vec![payment("auth-flaky-1", 2500)]), ctx(0));
    life.apply(ctx(1), &answer(&commands(&fx)[0].clone()))
        .unwrap();
    let due = life.next_due().unwrap();
    let sent = commands(&life.apply(ctx(due.0), &Input::Due).unwrap())[0].clone();
    let bytes = bincode::serde::encode_to_vec(&life, bincode::config::standard()).unwrap();
    let (restored, _): (OrderLife, _) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_eq!(restored, life);
    assert_eq!(restored.in_flight(ctx(due.0 + 5)), vec![sent.clone()]);
    assert_eq!(
        restored.next_due(),
        life.next_due(),
        "timers from the state alone"
    );
}

#[test]
fn event_and_command_json_follow_the_contract() {
    let (_, fx) = OrderLife::accept(order(vec![payment("auth-1", 3000)]), ctx(1_700_000_000_140));
    let command: serde_json::Value =
        serde_json::from_slice(&commands(&fx)[0].to_json(ORDER, Millis(1_700_000_000_140)))
            .unwrap();
    assert_eq!(
        command,
        serde_json::json!({"type": "capture", "command_id": "o-42/p0:capture", "attempt": 1,
            "order_id": "o-42", "payment": 0, "method": "card", "authorization_id": "auth-1",
            "amount_minor": 3000, "currency": "EUR",
            "requested_at": "2023-11-14T22:13:20.14Z"})
    );
    let event = Event {
        event_id: "o-42/p0:captured".into(),
        kind: EventKind::PaymentCaptured {
            payment: 0,
            amount_minor: 3000,
            currency: "EUR".into(),
            gateway_ref: Some("ch_3Nx".into()),
        },
    };
    let json: serde_json::Value =
        serde_json::from_slice(&event.to_json(ORDER, Millis(1_700_000_001_020))).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"event_id": "o-42/p0:captured", "order_id": "o-42",
            "type": "payment_captured", "at": "2023-11-14T22:13:21.02Z", "payment": 0,
            "amount_minor": 3000, "currency": "EUR", "gateway_ref": "ch_3Nx"})
    );
    let refused = rejected(ORDER, &Input::Cancel, Refusal::AlreadyShipped, "3/17");
    let json: serde_json::Value =
        serde_json::from_slice(&refused.to_json(ORDER, Millis(0))).unwrap();
    assert_eq!(json["type"], "input_rejected");
    assert_eq!(json["input"], "order_cancelled");
    assert_eq!(json["reason"], "already_shipped");
    assert_eq!(json["event_id"], "o-42@3/17:input_rejected");
}

#[test]
fn backoff_doubles_is_capped_and_jitter_stays_within_a_tenth() {
    let policy = Policy::DEFAULT;
    let first = policy.backoff_ms("o-1/p0:capture", 1);
    assert!((300_000..=330_000).contains(&first), "{first}");
    let second = policy.backoff_ms("o-1/p0:capture", 2);
    assert!((600_000..=660_000).contains(&second), "{second}");
    assert_eq!(policy.backoff_ms("o-1/p0:capture", 30), 7_200_000);
    assert_eq!(policy.backoff_ms("o-1/p0:capture", u32::MAX), 7_200_000);
    assert_eq!(
        first,
        policy.backoff_ms("o-1/p0:capture", 1),
        "deterministic"
    );
    let spread: HashSet<u64> = (0..50)
        .map(|i| policy.backoff_ms(&format!("o-{i}/p0:capture"), 1))
        .collect();
    assert!(
        spread.len() > 40,
        "jitter spreads orders: {} distinct",
        spread.len()
    );
}

// --- model-based ----------------------------------------------------------

const AUTHS: [&str; 6] = [
    "auth-ok",
    "auth-decline",
    "auth-flaky-1",
    "auth-flaky-3",
    "auth-down",
    "auth-refund-down",
];

#[derive(Debug, Clone)]
enum Step_ {
    /// Answer the k-th outstanding command as the simulated gateway would.
    Answer(usize),
    /// A result for an attempt that was never sent.
    Bogus(usize),
    /// The clock moves on and timers fire.
    Tick(u64),
    Cancel,
    StaffCancel,
    RetryPayment(usize),
    MarkPaid(usize),
    RetryRefund(usize),
    MarkRefunded(usize),
    Ship(usize),
    Deliver(usize),
    RequestReturn(u32, u32),
    ReceiveReturn(usize, bool),
    /// The processor restarts: the state goes through its codec, and what
    /// was in flight is sent again.
    Restart,
    /// The same staff action delivered twice.
    RepeatAction,
}

fn step_strategy() -> impl Strategy<Value = Step_> {
    prop_oneof![
        6 => (0usize..8).prop_map(Step_::Answer),
        1 => (0usize..8).prop_map(Step_::Bogus),
        4 => (0u64..2_500).prop_map(Step_::Tick),
        1 => Just(Step_::Cancel),
        1 => Just(Step_::StaffCancel),
        1 => (0usize..3).prop_map(Step_::RetryPayment),
        1 => (0usize..3).prop_map(Step_::MarkPaid),
        1 => (0usize..4).prop_map(Step_::RetryRefund),
        1 => (0usize..4).prop_map(Step_::MarkRefunded),
        2 => (0usize..2).prop_map(Step_::Ship),
        2 => (0usize..2).prop_map(Step_::Deliver),
        1 => (0u32..3, 0u32..2).prop_map(|(a, b)| Step_::RequestReturn(a, b)),
        1 => (0usize..3, any::<bool>()).prop_map(|(r, s)| Step_::ReceiveReturn(r, s)),
        1 => Just(Step_::Restart),
        1 => Just(Step_::RepeatAction),
    ]
}

fn payments_strategy() -> impl Strategy<Value = Vec<PlacedPayment>> {
    prop::collection::vec((0usize..AUTHS.len(), any::<bool>(), 1i64..2_000), 1..4).prop_map(
        |payments| {
            payments
                .into_iter()
                .map(|(auth, on_delivery, amount)| {
                    if on_delivery {
                        cash(amount)
                    } else {
                        payment(AUTHS[auth], amount)
                    }
                })
                .collect()
        },
    )
}

/// What the checker remembers across a run.
#[derive(Default)]
struct Observed {
    /// Commands out and not yet answered.
    outstanding: Vec<Command>,
    /// Highest attempt sent per command ID.
    attempts: HashMap<String, u32>,
    event_ids: HashSet<String>,
    captured: HashSet<u32>,
    voided: HashSet<u32>,
    /// Refunded per payment, counted once per refund ID.
    refunds: HashMap<String, (u32, i64)>,
    cancels: usize,
    /// Units the order still holds per SKU.
    holding: HashMap<String, i64>,
    last_action: Option<Input>,
}

impl Observed {
    fn new(order: &Accepted) -> Self {
        let mut observed = Observed::default();
        for line in &order.lines {
            *observed.holding.entry(line.sku.clone()).or_insert(0) += i64::from(line.quantity);
        }
        observed
    }

    /// Checks one batch of effects against the invariants. `resent`:
    /// commands sent again after a restart (same attempt allowed).
    fn take(&mut self, fx: &[Effect], order: &Accepted, resent: bool) {
        for effect in fx {
            match effect {
                Effect::Command(command) => {
                    let last = self.attempts.get(&command.command_id).copied().unwrap_or(0);
                    if resent {
                        assert_eq!(command.attempt, last, "a resend keeps its attempt");
                    } else {
                        assert!(
                            command.attempt > last,
                            "attempt {} of {} reused (last {last})",
                            command.attempt,
                            command.command_id
                        );
                    }
                    self.attempts
                        .insert(command.command_id.clone(), command.attempt);
                    if let Some(refund_id) = &command.refund_id {
                        self.refunds
                            .insert(refund_id.clone(), (command.payment, command.amount_minor));
                    }
                    self.outstanding
                        .retain(|c| c.command_id != command.command_id);
                    self.outstanding.push(command.clone());
                }
                Effect::Event(event) => {
                    assert!(
                        self.event_ids.insert(event.event_id.clone()),
                        "event {} emitted twice",
                        event.event_id
                    );
                    let json: serde_json::Value =
                        serde_json::from_slice(&event.to_json(ORDER, Millis(0))).unwrap();
                    assert_eq!(json["type"], event.kind.type_name());
                    match &event.kind {
                        EventKind::PaymentCaptured { payment, .. } => {
                            assert!(self.captured.insert(*payment), "captured twice");
                        }
                        EventKind::PaymentVoided { payment } => {
                            assert!(self.voided.insert(*payment), "voided twice");
                        }
                        EventKind::RefundAttention {
                            refund_id,
                            payment,
                            amount_minor,
                            ..
                        } => {
                            self.refunds
                                .insert(refund_id.clone(), (*payment, *amount_minor));
                        }
                        _ => {}
                    }
                }
                Effect::Cancel(_) => {
                    self.cancels += 1;
                    assert_eq!(self.cancels, 1, "cancelled twice");
                    for units in self.holding.values_mut() {
                        *units = 0;
                    }
                }
                Effect::Restock(lines) => {
                    for line in lines {
                        let held = self.holding.get_mut(&line.sku).expect("a SKU of the order");
                        *held -= i64::from(line.quantity);
                        assert!(
                            *held >= 0,
                            "restocked more of {} than the order held",
                            line.sku
                        );
                    }
                }
            }
        }
        for payment in &self.captured {
            assert!(
                !self.voided.contains(payment),
                "payment {payment} captured and voided"
            );
        }
        let mut refunded: HashMap<u32, i64> = HashMap::new();
        for (payment, amount) in self.refunds.values() {
            *refunded.entry(*payment).or_insert(0) += amount;
        }
        for (payment, amount) in refunded {
            assert!(
                self.captured.contains(&payment),
                "refund of an uncaptured payment"
            );
            let placed = order.payments[payment as usize].amount_minor;
            assert!(amount <= placed, "refunded {amount} of {placed} captured");
        }
    }
}

fn run(order: Accepted, steps: Vec<Step_>) -> (OrderLife, Observed) {
    let mut now = 0i64;
    let (mut life, fx) = OrderLife::accept(order.clone(), ctx(now));
    let mut seen = Observed::new(&order);
    seen.take(&fx, &order, false);
    let mut action = 0;
    let mut act = |a: Action, target: String, note: Option<&str>| {
        action += 1;
        staff(a, &target, note, &format!("act-{action}"))
    };
    for step in steps {
        now += 1;
        let input = match step {
            Step_::Answer(k) => {
                if seen.outstanding.is_empty() {
                    continue;
                }
                let command = seen.outstanding.remove(k % seen.outstanding.len());
                answer(&command)
            }
            Step_::Bogus(k) => {
                let Some(command) = seen.outstanding.get(k % seen.outstanding.len().max(1)) else {
                    continue;
                };
                let mut never = command.clone();
                never.attempt += 1;
                let input = result(&never, Outcome::Succeeded);
                assert_eq!(life.apply(ctx(now), &input), Err(Refusal::UnknownCommand));
                continue;
            }
            Step_::Tick(ms) => {
                now += ms as i64;
                Input::Due
            }
            Step_::Cancel => Input::Cancel,
            Step_::StaffCancel => act(Action::CancelOrder, ORDER.into(), None),
            Step_::RetryPayment(p) => act(Action::RetryPayment, payment_ref(ORDER, p), None),
            Step_::MarkPaid(p) => act(Action::MarkPaid, payment_ref(ORDER, p), Some("ref")),
            Step_::RetryRefund(r) => {
                let Some(refund) = life.refunds.get(r) else {
                    continue;
                };
                act(Action::RetryRefund, refund.refund_id.clone(), None)
            }
            Step_::MarkRefunded(r) => {
                let Some(refund) = life.refunds.get(r) else {
                    continue;
                };
                act(Action::MarkRefunded, refund.refund_id.clone(), Some("ref"))
            }
            Step_::Ship(s) | Step_::Deliver(s) => {
                let fulfillment_id =
                    format!("{ORDER}/{}", order.shipments[s % order.shipments.len()]);
                if matches!(step, Step_::Ship(_)) {
                    Input::Shipped {
                        fulfillment_id,
                        carrier: None,
                        tracking_number: None,
                    }
                } else {
                    Input::Delivered { fulfillment_id }
                }
            }
            Step_::RequestReturn(a, b) => {
                let mut lines = Vec::new();
                if a > 0 {
                    lines.push(ReturnLine {
                        sku: "A".into(),
                        quantity: a,
                    });
                }
                if b > 0 {
                    lines.push(ReturnLine {
                        sku: "B".into(),
                        quantity: b,
                    });
                }
                Input::ReturnRequested {
                    return_id: format!("r-{now}"),
                    lines,
                }
            }
            Step_::ReceiveReturn(r, restock) => {
                let Some(known) = life.returns.get(r) else {
                    continue;
                };
                Input::ReturnReceived {
                    return_id: known.return_id.clone(),
                    lines: known
                        .lines
                        .iter()
                        .map(|l| ReceivedLine {
                            sku: l.sku.clone(),
                            quantity: l.quantity,
                            restock,
                        })
                        .collect(),
                }
            }
            Step_::Restart => {
                let bytes =
                    bincode::serde::encode_to_vec(&life, bincode::config::standard()).unwrap();
                life = bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                    .unwrap()
                    .0;
                let resent: Vec<Effect> = life
                    .in_flight(ctx(now))
                    .into_iter()
                    .map(Effect::Command)
                    .collect();
                seen.take(&resent, &order, true);
                continue;
            }
            Step_::RepeatAction => {
                let Some(input) = seen.last_action.clone() else {
                    continue;
                };
                let before = life.clone();
                assert_eq!(
                    life.apply(ctx(now), &input),
                    Ok(vec![]),
                    "a repeat is a no-op"
                );
                assert_eq!(life, before);
                continue;
            }
        };
        let before = life.clone();
        match life.apply(ctx(now), &input) {
            Ok(fx) => {
                seen.take(&fx, &order, false);
                if matches!(input, Input::Staff { .. }) {
                    seen.last_action = Some(input);
                }
            }
            Err(_) => assert_eq!(life, before, "a refused input changes nothing"),
        }
    }
    (life, seen)
}

/// Answers every outstanding command and runs the clock until nothing is
/// pending: the state every run settles in without staff.
fn settle(life: &mut OrderLife, seen: &mut Observed, order: &Accepted, mut now: i64) {
    for _ in 0..100 {
        while let Some(command) = seen.outstanding.pop() {
            now += 1;
            if let Ok(fx) = life.apply(ctx(now), &answer(&command)) {
                seen.take(&fx, order, false);
            }
        }
        match life.next_due() {
            Some(due) => {
                now = now.max(due.0);
                let fx = life.apply(ctx(now), &Input::Due).unwrap();
                seen.take(&fx, order, false);
            }
            None => return,
        }
    }
    panic!("did not settle: {life:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    /// Random inputs in any order, restarts between them: stock is given
    /// back at most once and never more than held; no payment is both
    /// captured and voided; refunds never exceed what was captured; no
    /// attempt number is reused; no event is emitted twice; a refused
    /// input changes nothing.
    #[test]
    fn invariants_hold_for_any_sequence(
        payments in payments_strategy(),
        steps in prop::collection::vec(step_strategy(), 0..60),
    ) {
        let order = order(payments);
        let (mut life, mut seen) = run(order.clone(), steps);
        settle(&mut life, &mut seen, &order, 1_000_000);
    }

    /// Without staff, every payment settles as the model says: a gateway
    /// that declines cancels the order (unless a shipment left), one that
    /// is down reaches attention, a flaky one that recovers within the
    /// attempts is captured; cash on delivery is captured when everything
    /// is delivered and voided when the order is cancelled.
    #[test]
    fn payments_settle_as_the_model_says(
        payments in payments_strategy(),
        deliver in any::<bool>(),
        cancel_first in any::<bool>(),
    ) {
        let order = order(payments.clone());
        let (mut life, fx) = OrderLife::accept(order.clone(), ctx(0));
        let mut seen = Observed::new(&order);
        seen.take(&fx, &order, false);
        let customer_cancel = cancel_first && life.apply(ctx(1), &Input::Cancel).is_ok();
        if let Ok(fx) = life.apply(ctx(1), &Input::Due) {
            seen.take(&fx, &order, false);
        }
        settle(&mut life, &mut seen, &order, 2);
        if deliver && !life.cancelled {
            seen.take(&deliver_all(&mut life, 10_000_000), &order, false);
        }
        // The model.
        let declines = payments.iter().any(|p| {
            !p.on_delivery && p.authorization_id.as_deref() == Some("auth-decline")
        });
        let cancelled = customer_cancel || declines;
        let decline_count = payments
            .iter()
            .filter(|p| !p.on_delivery && p.authorization_id.as_deref() == Some("auth-decline"))
            .count();
        prop_assert_eq!(life.cancelled, cancelled);
        for (i, placed) in payments.iter().enumerate() {
            let auth = placed.authorization_id.as_deref().unwrap_or("");
            let state = &life.payments[i].state;
            let actual = match state {
                PayState::OnDelivery => "on_delivery",
                PayState::Captured { .. } => "captured",
                PayState::Declined { .. } => "declined",
                PayState::Voided => "voided",
                PayState::Voiding(op) if op.in_attention() => "void_attention",
                PayState::Capturing(op) if op.in_attention() => "attention",
                other => panic!("unsettled: {other:?}"),
            };
            // Which of a cancelled order's answers comes first (the void's
            // or a capture still out) is up to the gateway: a capture that
            // wins is refunded (checked below).
            let expected: &[&str] = match (placed.on_delivery, auth) {
                (true, _) if cancelled => &["voided"],
                (true, _) if deliver => &["captured"],
                (true, _) => &["on_delivery"],
                (false, "auth-down") if cancelled => &["void_attention"],
                (false, "auth-down") => &["attention"],
                // Its own capture's no, or the void's after another
                // payment's decline or the customer cancelled the order.
                (false, "auth-decline") if !customer_cancel && decline_count == 1 => &["declined"],
                (false, "auth-decline") => &["declined", "void_attention"],
                (false, _) if cancelled => &["voided", "captured"],
                (false, _) => &["captured"],
            };
            prop_assert!(expected.contains(&actual), "payment {} ({}): {} not in {:?}", i, auth, actual, expected);
        }
        // Captured payments of a cancelled order are refunded in full.
        if cancelled {
            for (i, payment) in life.payments.iter().enumerate() {
                if payment.captured() {
                    prop_assert_eq!(payment.refunded_minor, payment.placed.amount_minor, "p{}", i);
                }
            }
        }
    }
}

/// Found by the model test: a void that timed out on its last attempt
/// reached attention, and the gateway's late "declined" for that attempt
/// emitted the same attention event again.
#[test]
fn a_late_no_to_a_void_already_in_attention_changes_nothing() {
    let (mut life, _) = OrderLife::accept(order(vec![payment("auth-decline", 2500)]), ctx(0));
    let fx = life.apply(ctx(1), &Input::Cancel).unwrap();
    let mut void = commands(&fx)[0].clone();
    let mut now = 1;
    while let Some(due) = life.next_due() {
        now = due.0;
        if let Some(next) = commands(&life.apply(ctx(now), &Input::Due).unwrap()).first() {
            void = (*next).clone();
        }
    }
    assert_eq!(life.in_attention(), 1, "the last attempt timed out");
    assert!(life
        .apply(ctx(now + 1), &result(&void, Outcome::Declined))
        .unwrap()
        .is_empty());
}

proptest! {
    #[test]
    fn payment_references_are_what_format_writes(
        order_id in crate::order::json::tests::TEXT,
        index in prop_oneof![0usize..20, any::<usize>()],
    ) {
        prop_assert_eq!(payment_ref(&order_id, index), format!("{order_id}/p{index}"));
        prop_assert_eq!(
            command_id(&order_id, index, CommandKind::Capture),
            format!("{order_id}/p{index}:capture")
        );
        prop_assert_eq!(
            payment_ref_then(&order_id, index, &[":voided"]),
            format!("{order_id}/p{index}:voided")
        );
    }
}
