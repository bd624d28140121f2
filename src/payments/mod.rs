//! Payment adapters: what answers the commands the lifecycle writes to
//! `payment-requests` (`payments.adapter`).
//!
//! - `simulated` (default): in this process, decides by the authorization
//!   ID (`lifecycle::gateway::simulate`) and answers through the topics
//!   like any adapter: a `payment_result` written to `orders`, to the
//!   partition the command came from, so the result reaches the order's
//!   owner in order with everything else about the order.
//! - `http`: in this process, POSTs each command to `payments.http_url`
//!   and writes the answer the same way (see [`http`]).
//! - `external`: nothing here; another service reads `payment-requests`
//!   and writes `payment_result` records itself.
//!
//! The adapter reads commands at least once: after a crash a command may be
//! answered again. That is safe: gateways deduplicate by `command_id`, and
//! the lifecycle treats a repeated answer as a repeat.

pub mod adapter;
pub mod http;

use crate::lifecycle::Outcome;
use serde::{Deserialize, Serialize};

pub use crate::config::{PaymentAdapter as AdapterKind, PaymentsConfig};

/// The longest `code` or `gateway_ref` an adapter passes on (a gateway's
/// text is outside data); longer text is cut on a character boundary.
pub const MAX_ANSWER_TEXT_CHARS: usize = 128;

/// A gateway's answer to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    pub code: String,
    pub gateway_ref: Option<String>,
}

impl Answer {
    pub fn new(outcome: Outcome, code: &str, gateway_ref: Option<&str>) -> Answer {
        Answer {
            outcome,
            code: bounded(code),
            gateway_ref: gateway_ref.map(bounded),
        }
    }

    pub fn failed(code: &str) -> Answer {
        Answer::new(Outcome::Failed, code, None)
    }
}

fn bounded(text: &str) -> String {
    text.chars().take(MAX_ANSWER_TEXT_CHARS).collect()
}

/// The part of a command an adapter reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommandHead {
    #[serde(rename = "type")]
    pub kind: crate::lifecycle::CommandKind,
    pub command_id: String,
    pub attempt: u32,
    pub order_id: String,
    #[serde(default)]
    pub authorization_id: Option<String>,
}

/// The `payment_result` record for `answer` to `command`, as the contract
/// has it on `orders`.
pub fn result_json(command: &CommandHead, answer: &Answer) -> Vec<u8> {
    #[derive(Serialize)]
    struct Json<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        order_id: &'a str,
        command_id: &'a str,
        attempt: u32,
        outcome: Outcome,
        code: &'a str,
        gateway_ref: Option<&'a str>,
    }
    serde_json::to_vec(&Json {
        kind: "payment_result",
        order_id: &command.order_id,
        command_id: &command.command_id,
        attempt: command.attempt,
        outcome: answer.outcome,
        code: &answer.code,
        gateway_ref: answer.gateway_ref.as_deref(),
    })
    .expect("results always serialize")
}

/// The simulated gateway's answer, with a reference for a success that is
/// the same for every attempt of a command (as a gateway deduplicating by
/// `command_id` would give).
pub fn simulated(command: &CommandHead) -> Answer {
    let full = crate::lifecycle::Command {
        kind: command.kind,
        command_id: command.command_id.clone(),
        attempt: command.attempt,
        payment: 0,
        method: String::new(),
        authorization_id: command.authorization_id.clone(),
        amount_minor: 0,
        currency: String::new(),
        refund_id: None,
    };
    let (outcome, code) = crate::lifecycle::gateway::simulate(&full);
    let reference = (outcome == Outcome::Succeeded).then(|| simulated_ref(&command.command_id));
    Answer::new(outcome, code, reference.as_deref())
}

fn simulated_ref(command_id: &str) -> String {
    use std::hash::Hasher;
    let mut hash = crate::inventory::Fnv1a::default();
    hash.write(command_id.as_bytes());
    format!("sim_{:016x}", hash.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_follow_the_contract_and_bound_outside_text() {
        let command: CommandHead = serde_json::from_str(
            r#"{"type": "capture", "command_id": "o-42/p0:capture", "attempt": 2,
                "order_id": "o-42", "payment": 0, "method": "card",
                "authorization_id": "auth-1", "amount_minor": 3000, "currency": "EUR",
                "requested_at": "2026-11-23T12:00:00.140Z"}"#,
        )
        .unwrap();
        let answer = Answer::new(Outcome::Succeeded, "ok", Some(&"r".repeat(1_000)));
        let json: serde_json::Value =
            serde_json::from_slice(&result_json(&command, &answer)).unwrap();
        assert_eq!(json["type"], "payment_result");
        assert_eq!(json["order_id"], "o-42");
        assert_eq!(json["command_id"], "o-42/p0:capture");
        assert_eq!(json["attempt"], 2);
        assert_eq!(json["outcome"], "succeeded");
        assert_eq!(json["code"], "ok");
        assert_eq!(
            json["gateway_ref"].as_str().unwrap().len(),
            MAX_ANSWER_TEXT_CHARS
        );
    }

    #[test]
    fn the_simulated_reference_is_the_same_for_every_attempt() {
        let mut command = CommandHead {
            kind: crate::lifecycle::CommandKind::Capture,
            command_id: "o-1/p0:capture".into(),
            attempt: 1,
            order_id: "o-1".into(),
            authorization_id: Some("auth-flaky-1".into()),
        };
        assert_eq!(simulated(&command).outcome, Outcome::Failed);
        command.attempt = 2;
        let first = simulated(&command);
        command.attempt = 3;
        assert_eq!(simulated(&command), first);
        assert!(first.gateway_ref.unwrap().starts_with("sim_"));
    }
}
