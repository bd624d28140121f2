//! A gateway operation (capture, void, refund) retried until it settles.
//!
//! Timers are values, not sleeping tasks: an operation in flight carries the
//! instant its result is given up on, a failed one the instant of its next
//! attempt. A restore therefore rebuilds every timer from the state alone,
//! and a retry that fell due while the processor was down fires once, after
//! it.

use super::{Millis, Outcome, Refusal};
use crate::inventory::Fnv1a;
use serde::{Deserialize, Serialize};
use std::hash::Hasher;

/// How gateway operations are retried (`[payments]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// No result within this long after an attempt counts as `failed`.
    pub result_timeout_ms: u64,
    /// Wait before the second attempt; doubles for each further one.
    pub retry_initial_ms: u64,
    /// The wait never exceeds this.
    pub retry_max_ms: u64,
    /// Attempts before the operation needs staff.
    pub max_attempts: u32,
}

impl Policy {
    /// The contract's defaults: a result within a minute, the first retry
    /// after five minutes, doubling to at most two hours, eight attempts.
    pub const DEFAULT: Policy = Policy {
        result_timeout_ms: 60_000,
        retry_initial_ms: 300_000,
        retry_max_ms: 7_200_000,
        max_attempts: 8,
    };

    /// The wait after attempt `failed` of `command_id` failed: the initial
    /// wait doubled per earlier attempt, plus up to a tenth of it as
    /// jitter, capped at the maximum. The jitter is a hash of the command
    /// and attempt, so gateways recovering from an outage do not see every
    /// order's retry at once, and the same state always yields the same
    /// instant (a replay computes what the first run computed).
    pub fn backoff_ms(&self, command_id: &str, failed: u32) -> u64 {
        let doublings = failed.saturating_sub(1).min(u64::BITS - 1);
        let base = self
            .retry_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.retry_max_ms);
        let mut hash = Fnv1a::default();
        hash.write(command_id.as_bytes());
        hash.write(&failed.to_le_bytes());
        // base / 10 + 1 cannot overflow.
        let jitter = hash.finish() % (base / JITTER_DIVISOR + 1);
        base.saturating_add(jitter).min(self.retry_max_ms)
    }
}

/// Jitter is at most `base / JITTER_DIVISOR` (a tenth).
const JITTER_DIVISOR: u64 = 10;

/// Where a retried operation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The attempt sent last, from 1. Every attempt gets a new number.
    pub attempt: u32,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Attempt `attempt` is out; no result by `timeout_at` counts as failed.
    Sent { timeout_at: Millis },
    /// Attempt `attempt` failed with `code`; the next goes out at `next_at`.
    Waiting { next_at: Millis, code: String },
    /// Attempt `attempt`, the last automatic one, failed with `code`:
    /// staff decide.
    Attention { code: String },
}

/// What a failure of the current attempt led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// Attempt `attempt` goes out at `at`.
    Retry { attempt: u32, at: Millis },
    /// No attempt left: `attempts` were made.
    Attention { attempts: u32 },
}

impl Op {
    /// The first attempt, sent now.
    pub fn first(now: Millis, policy: &Policy) -> Op {
        Op {
            attempt: 1,
            step: Step::Sent {
                timeout_at: now.after(policy.result_timeout_ms),
            },
        }
    }

    /// When this operation needs the clock next.
    pub fn due(&self) -> Option<Millis> {
        match self.step {
            Step::Sent { timeout_at } => Some(timeout_at),
            Step::Waiting { next_at, .. } => Some(next_at),
            Step::Attention { .. } => None,
        }
    }

    /// Whether a command is out awaiting its result (a restore sends it
    /// again with the same attempt number: it may never have left).
    pub fn in_flight(&self) -> bool {
        matches!(self.step, Step::Sent { .. })
    }

    pub fn in_attention(&self) -> bool {
        matches!(self.step, Step::Attention { .. })
    }

    /// Whether a gateway's answer for `attempt` still matters. A success
    /// or a final no from any attempt sent settles the operation (gateways
    /// deduplicate by command, so any attempt's success is the command's);
    /// a failure matters only for the attempt in flight (one already given
    /// up on, timed out or superseded, changes nothing). An attempt never
    /// sent is an unknown command.
    pub fn answer_matters(&self, attempt: u32, outcome: Outcome) -> Result<bool, Refusal> {
        if attempt == 0 || attempt > self.attempt {
            return Err(Refusal::UnknownCommand);
        }
        let current = attempt == self.attempt && self.in_flight();
        Ok(outcome != Outcome::Failed || current)
    }

    /// The attempt in flight failed (a `failed` result, or its timeout).
    pub fn fail(&mut self, code: &str, command_id: &str, now: Millis, policy: &Policy) -> Failed {
        if self.attempt >= policy.max_attempts {
            self.step = Step::Attention { code: code.into() };
            return Failed::Attention {
                attempts: self.attempt,
            };
        }
        let at = now.after(policy.backoff_ms(command_id, self.attempt));
        self.step = Step::Waiting {
            next_at: at,
            code: code.into(),
        };
        Failed::Retry {
            attempt: self.attempt + 1,
            at,
        }
    }

    /// Sends the next attempt now (its retry fell due, or staff asked).
    /// Returns the new attempt number.
    pub fn next_attempt(&mut self, now: Millis, policy: &Policy) -> u32 {
        self.attempt = self.attempt.saturating_add(1);
        self.step = Step::Sent {
            timeout_at: now.after(policy.result_timeout_ms),
        };
        self.attempt
    }
}
