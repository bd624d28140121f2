//! What a run tells its user: a progress line every few seconds while it
//! runs, and a final summary, in words or as one JSON object.

use super::audit::Audit;
use super::shape::Phase;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyMs {
    /// From a histogram of microseconds; all zero when it is empty.
    pub fn of(micros: &Histogram<u64>) -> LatencyMs {
        if micros.is_empty() {
            return LatencyMs::default();
        }
        let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
        LatencyMs {
            p50: ms(micros.value_at_quantile(0.50)),
            p99: ms(micros.value_at_quantile(0.99)),
            p999: ms(micros.value_at_quantile(0.999)),
            max: ms(micros.max()),
        }
    }
}

/// How far behind its schedule the sender was, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LagMs {
    pub p99: f64,
    pub max: f64,
}

/// What became of this run's payments, read back from `order-events` and
/// `payment-requests`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Payments {
    /// `payment_captured` events.
    pub captured: u64,
    /// `payment_declined` events (each cancels its order).
    pub declined: u64,
    /// `payment_attention` events: payments left to staff.
    pub attention: u64,
    /// `payment_retry_scheduled` events.
    pub retries: u64,
    /// Command attempts on `payment-requests`.
    pub commands: u64,
    /// Whether the audit checked every accepted order's payment end
    /// (the scenario's `payments.audit`).
    pub audited: bool,
}

/// Pass/fail limits given on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Thresholds {
    /// Orders per second the sale must reach.
    pub min_rate: Option<f64>,
    /// Largest acceptable p99 latency, milliseconds.
    pub max_p99_ms: Option<f64>,
}

/// The final account of a run. `--json` prints exactly this.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub run_id: String,
    pub seed: u64,
    pub brokers: String,
    pub topics_created: Vec<String>,
    /// From the first order to the last record sent, seconds.
    pub duration_secs: f64,
    /// Readable orders placed (first copies; duplicates not counted).
    pub orders_sent: u64,
    /// Orders per second from the first order to the last.
    pub orders_per_second: f64,
    /// The scenario's burst rate, orders per second.
    pub peak_rate_target: f64,
    /// Every record produced: orders, duplicates, cancellations, malformed
    /// records, restocks.
    pub records_sent: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    /// Rejections the generator built on purpose, by reason.
    pub rejections_intended: BTreeMap<String, u64>,
    pub cancelled: u64,
    pub cancellations_sent: u64,
    /// Duplicate submissions sent (same order ID, same bytes).
    pub duplicates: u64,
    pub malformed_sent: u64,
    /// Dead letters of this run read back.
    pub dlq: u64,
    pub fulfillments_requested: u64,
    pub fulfillments_cancelled: u64,
    /// Decisions per second, from the first order to the last decision.
    pub decided_per_second: f64,
    /// placed → status, as read back by the loadtest's consumer.
    pub latency_ms: LatencyMs,
    pub sender_lag_ms: LagMs,
    pub oversold_units: i64,
    pub missing_status: u64,
    pub duplicate_statuses: u64,
    pub conflicting_statuses: u64,
    pub unexpected_reasons: u64,
    pub unknown_orders: u64,
    pub fulfillment_errors: u64,
    pub cancellation_errors: u64,
    pub dlq_missing: u64,
    pub dlq_wrong: u64,
    pub payments: Payments,
    pub payments_unsettled: u64,
    pub payments_wrong_end: u64,
    pub conflicting_results: u64,
    /// Records the broker never acknowledged (excluded from the audit).
    pub delivery_errors: u64,
    /// Output records of this run that were not contract JSON.
    pub unreadable_outputs: u64,
    /// Whether every outcome arrived before the drain timeout.
    pub drained: bool,
    pub thresholds: Thresholds,
    /// One line per failed check; empty when the run passed.
    pub violations: Vec<String>,
    /// The first violations found, order by order.
    pub examples: Vec<String>,
    pub passed: bool,
}

impl Summary {
    /// Fills the audit's findings in and decides pass or fail.
    pub fn judge(&mut self, audit: &Audit) {
        self.accepted = audit.accepted;
        self.rejected = audit.rejected.clone();
        self.cancelled = audit.cancelled;
        self.dlq = audit.dlq;
        self.fulfillments_requested = audit.fulfillments_requested;
        self.fulfillments_cancelled = audit.fulfillments_cancelled;
        self.oversold_units = audit.oversold_units;
        self.missing_status = audit.missing_status;
        self.duplicate_statuses = audit.duplicate_statuses;
        self.conflicting_statuses = audit.conflicting_statuses;
        self.unexpected_reasons = audit.unexpected_reasons;
        self.unknown_orders = audit.unknown_orders;
        self.fulfillment_errors = audit.fulfillment_errors;
        self.cancellation_errors = audit.cancellation_errors;
        self.dlq_missing = audit.dlq_missing;
        self.dlq_wrong = audit.dlq_wrong;
        self.payments = Payments {
            captured: audit.payments_captured,
            declined: audit.payments_declined,
            attention: audit.payments_attention,
            retries: audit.payment_retries,
            commands: audit.payment_commands,
            audited: self.payments.audited,
        };
        self.payments_unsettled = audit.payments_unsettled;
        self.payments_wrong_end = audit.payments_wrong_end;
        self.conflicting_results = audit.conflicting_results;
        self.examples = audit.examples.clone();

        let mut violations = Vec::new();
        let counts: [(&str, i64); 16] = [
            ("oversold_units", audit.oversold_units),
            ("missing_status", audit.missing_status as i64),
            ("duplicate_statuses", audit.duplicate_statuses as i64),
            ("conflicting_statuses", audit.conflicting_statuses as i64),
            ("unexpected_reasons", audit.unexpected_reasons as i64),
            ("unknown_orders", audit.unknown_orders as i64),
            ("fulfillment_errors", audit.fulfillment_errors as i64),
            ("cancellation_errors", audit.cancellation_errors as i64),
            ("dlq_missing", audit.dlq_missing as i64),
            ("dlq_wrong", audit.dlq_wrong as i64),
            ("payments_unsettled", audit.payments_unsettled as i64),
            ("payments_wrong_end", audit.payments_wrong_end as i64),
            ("conflicting_results", audit.conflicting_results as i64),
            ("delivery_errors", self.delivery_errors as i64),
            ("unreadable_outputs", self.unreadable_outputs as i64),
            ("orders_sent", i64::from(self.orders_sent == 0)),
        ];
        for (name, count) in counts {
            if count != 0 {
                if name == "orders_sent" {
                    violations.push("no order was sent".to_string());
                } else {
                    violations.push(format!("{name} is {count}, must be 0"));
                }
            }
        }
        if let Some(min_rate) = self.thresholds.min_rate {
            if self.orders_per_second < min_rate {
                violations.push(format!(
                    "orders_per_second is {:.1}, below --min-rate {min_rate}",
                    self.orders_per_second
                ));
            }
        }
        if let Some(max_p99) = self.thresholds.max_p99_ms {
            if self.latency_ms.p99 > max_p99 {
                violations.push(format!(
                    "latency p99 is {:.3} ms, above --max-p99-ms {max_p99}",
                    self.latency_ms.p99
                ));
            }
        }
        self.violations = violations;
        self.passed = self.violations.is_empty();
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} run {} (seed {}) against {}",
            self.scenario, self.run_id, self.seed, self.brokers
        )?;
        writeln!(
            f,
            "  sent      {} orders in {:.1} s: {:.0} orders/s (burst target {:.0}/s), {} records in all",
            self.orders_sent, self.duration_secs, self.orders_per_second, self.peak_rate_target, self.records_sent
        )?;
        writeln!(
            f,
            "            {} duplicates, {} cancellations, {} malformed records",
            self.duplicates, self.cancellations_sent, self.malformed_sent
        )?;
        let rejected: u64 = self.rejected.values().sum();
        writeln!(
            f,
            "  outcomes  {} accepted, {} rejected, {} cancelled, {} dead letters; {:.0} decisions/s",
            self.accepted, rejected, self.cancelled, self.dlq, self.decided_per_second
        )?;
        for (reason, count) in &self.rejected {
            let intended = self.rejections_intended.get(reason).copied().unwrap_or(0);
            writeln!(
                f,
                "            {reason:<24} {count:>8}  ({intended} built to be)"
            )?;
        }
        writeln!(
            f,
            "  latency   placed → status p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.latency_ms.p50, self.latency_ms.p99, self.latency_ms.p999, self.latency_ms.max
        )?;
        writeln!(
            f,
            "  payments  {} captured, {} declined, {} in attention, {} retries scheduled, {} command attempts{}",
            self.payments.captured,
            self.payments.declined,
            self.payments.attention,
            self.payments.retries,
            self.payments.commands,
            if self.payments.audited {
                "; every order's end audited"
            } else {
                "; ends not audited (payments.audit = false)"
            }
        )?;
        writeln!(
            f,
            "  sender    behind schedule p99 {:.2} ms, max {:.2} ms",
            self.sender_lag_ms.p99, self.sender_lag_ms.max
        )?;
        writeln!(
            f,
            "  audit     oversold {} units, missing {}, conflicting {}, unexpected reasons {}, fulfillment errors {}, dlq missing {}",
            self.oversold_units,
            self.missing_status,
            self.conflicting_statuses,
            self.unexpected_reasons,
            self.fulfillment_errors,
            self.dlq_missing
        )?;
        if self.payments.audited {
            writeln!(
                f,
                "            payments unsettled {}, wrong end {}, conflicting results {}",
                self.payments_unsettled, self.payments_wrong_end, self.conflicting_results
            )?;
        }
        if self.passed {
            write!(f, "PASSED")
        } else {
            writeln!(f, "FAILED")?;
            for violation in &self.violations {
                writeln!(f, "  - {violation}")?;
            }
            for example in &self.examples {
                writeln!(f, "    e.g. {example}")?;
            }
            Ok(())
        }
    }
}

/// One progress line's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub elapsed_secs: f64,
    pub phase: Phase,
    /// Orders sent per second since the last line.
    pub sent_per_second: f64,
    pub decided_per_second: f64,
    /// How far behind schedule the sender is, milliseconds.
    pub behind_ms: f64,
    /// Orders sent with no decision yet.
    pub awaiting: u64,
    /// p99 latency since the last line, milliseconds.
    pub p99_ms: f64,
    pub orders_sent: u64,
    pub decided: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>6.1}s {:<7}] sent {:>6.0}/s  decided {:>6.0}/s  behind {:>7.1} ms  awaiting {:>6}  p99 {:>8.2} ms  ({} sent, {} decided)",
            self.elapsed_secs,
            self.phase.as_str(),
            self.sent_per_second,
            self.decided_per_second,
            self.behind_ms,
            self.awaiting,
            self.p99_ms,
            self.orders_sent,
            self.decided
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(thresholds: Thresholds) -> Summary {
        Summary {
            scenario: "t".into(),
            run_id: "r".into(),
            seed: 1,
            brokers: "b".into(),
            topics_created: vec![],
            duration_secs: 10.0,
            orders_sent: 1000,
            orders_per_second: 100.0,
            peak_rate_target: 1000.0,
            records_sent: 1100,
            accepted: 0,
            rejected: BTreeMap::new(),
            rejections_intended: BTreeMap::new(),
            cancelled: 0,
            cancellations_sent: 0,
            duplicates: 0,
            malformed_sent: 0,
            dlq: 0,
            fulfillments_requested: 0,
            fulfillments_cancelled: 0,
            decided_per_second: 100.0,
            latency_ms: LatencyMs {
                p50: 2.0,
                p99: 12.0,
                p999: 20.0,
                max: 30.0,
            },
            sender_lag_ms: LagMs::default(),
            oversold_units: 0,
            missing_status: 0,
            duplicate_statuses: 0,
            conflicting_statuses: 0,
            unexpected_reasons: 0,
            unknown_orders: 0,
            fulfillment_errors: 0,
            cancellation_errors: 0,
            dlq_missing: 0,
            dlq_wrong: 0,
            payments: Payments::default(),
            payments_unsettled: 0,
            payments_wrong_end: 0,
            conflicting_results: 0,
            delivery_errors: 0,
            unreadable_outputs: 0,
            drained: true,
            thresholds,
            violations: vec![],
            examples: vec![],
            passed: false,
        }
    }

    #[test]
    fn thresholds_decide_pass_or_fail() {
        let mut met = summary(Thresholds {
            min_rate: Some(100.0),
            max_p99_ms: Some(12.0),
        });
        met.judge(&Audit::default());
        assert!(met.passed, "{:?}", met.violations);

        let mut missed = summary(Thresholds {
            min_rate: Some(150.0),
            max_p99_ms: Some(10.0),
        });
        missed.judge(&Audit::default());
        assert!(!missed.passed);
        assert_eq!(missed.violations.len(), 2, "{:?}", missed.violations);
    }

    #[test]
    fn any_audit_violation_fails_the_run() {
        let mut s = summary(Thresholds::default());
        s.judge(&Audit {
            oversold_units: 3,
            ..Audit::default()
        });
        assert!(!s.passed);
        assert_eq!(s.violations, ["oversold_units is 3, must be 0"]);
        let json: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(json["oversold_units"], 3);
        assert_eq!(json["latency_ms"]["p999"], 20.0);
    }
}
