//! The simulated payment gateway's decision (`payments.adapter =
//! "simulated"`): deterministic by the authorization ID, so a sale's
//! outcome is reproducible. The adapter that carries commands and results
//! through the topics lives outside the core; this is only the rule.

use super::events::{Command, CommandKind};
use serde::{Deserialize, Serialize};

/// A gateway's answer to one attempt of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// Final: the gateway said no.
    Declined,
    /// Transient or unknown: retried.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Declined => "declined",
            Outcome::Failed => "failed",
        }
    }
}

/// The simulated gateway's answer: outcome and code. First match wins on
/// the authorization ID: containing `refund-down`, captures succeed and
/// refunds always fail; `decline` → declined; `flaky-N` (N a digit) →
/// failed on the first N attempts, then succeeded; `down` → always failed;
/// anything else → succeeded.
pub fn simulate(command: &Command) -> (Outcome, &'static str) {
    let auth = command.authorization_id.as_deref().unwrap_or("");
    if auth.contains("refund-down") {
        return match command.kind {
            CommandKind::Refund => (Outcome::Failed, "gateway_unavailable"),
            _ => (Outcome::Succeeded, "ok"),
        };
    }
    if auth.contains("decline") {
        return (Outcome::Declined, "card_declined");
    }
    if let Some(n) = flaky_count(auth) {
        return if command.attempt <= n {
            (Outcome::Failed, "gateway_timeout")
        } else {
            (Outcome::Succeeded, "ok")
        };
    }
    if auth.contains("down") {
        return (Outcome::Failed, "gateway_unavailable");
    }
    (Outcome::Succeeded, "ok")
}

/// N of the first `flaky-N` in `auth`, N one digit.
fn flaky_count(auth: &str) -> Option<u32> {
    auth.match_indices("flaky-").find_map(|(at, marker)| {
        auth[at + marker.len()..]
            .chars()
            .next()
            .and_then(|c| c.to_digit(10))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(kind: CommandKind, auth: &str, attempt: u32) -> Command {
        Command {
            kind,
            command_id: "o-1/p0:capture".into(),
            attempt,
            payment: 0,
            method: "card".into(),
            authorization_id: Some(auth.into()),
            amount_minor: 100,
            currency: "EUR".into(),
            refund_id: None,
        }
    }

    #[test]
    fn decides_by_authorization_first_match_wins() {
        use CommandKind::*;
        use Outcome::*;
        let cases = [
            (Capture, "auth-1", 1, Succeeded),
            (Capture, "auth-decline-7", 1, Declined),
            (Capture, "auth-flaky-2", 1, Failed),
            (Capture, "auth-flaky-2", 2, Failed),
            (Capture, "auth-flaky-2", 3, Succeeded),
            (Capture, "auth-down", 9, Failed),
            (Capture, "auth-refund-down", 1, Succeeded),
            (Refund, "auth-refund-down", 5, Failed),
            // refund-down comes first: it contains "down" too.
            (Void, "x-refund-down", 1, Succeeded),
            // decline before flaky and down.
            (Capture, "decline-flaky-1-down", 2, Declined),
            // flaky needs a digit.
            (Capture, "flaky-x", 1, Succeeded),
            (Capture, "flaky-x-down", 1, Failed),
        ];
        for (kind, auth, attempt, expected) in cases {
            assert_eq!(
                simulate(&command(kind, auth, attempt)).0,
                expected,
                "{kind:?} {auth} attempt {attempt}"
            );
        }
    }
}
