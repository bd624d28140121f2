//! The shape of a sale in time: a warm-up at the base rate, a burst at T0
//! of `burst_multiplier` times it, and a tail decaying back to the base.

use super::scenario::Scenario;
use serde::Serialize;

/// A phase of the sale, for the progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    WarmUp,
    Burst,
    Tail,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::WarmUp => "warm-up",
            Phase::Burst => "burst",
            Phase::Tail => "tail",
            Phase::Done => "done",
        }
    }
}

/// The target rate over time: base rate until T0, `multiplier` times it
/// for the burst, then an exponential decay back to the base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub base: f64,
    pub duration: f64,
    pub burst_at: f64,
    pub burst: f64,
    pub multiplier: f64,
    pub tail: f64,
}

impl Shape {
    pub fn of(scenario: &Scenario) -> Shape {
        let load = &scenario.load;
        Shape {
            base: load.rate,
            duration: load.duration_secs,
            burst_at: load.burst_at_secs,
            burst: load.burst_secs,
            multiplier: load.burst_multiplier,
            tail: load.tail_secs,
        }
    }

    /// Orders per second due at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        let burst_end = self.burst_at + self.burst;
        if t < self.burst_at {
            self.base
        } else if t < burst_end {
            self.base * self.multiplier
        } else if self.tail > 0.0 {
            let excess = self.multiplier - 1.0;
            self.base * (1.0 + excess * (-(t - burst_end) / self.tail).exp())
        } else {
            self.base
        }
    }

    pub fn phase_at(&self, t: f64) -> Phase {
        if t >= self.duration {
            Phase::Done
        } else if t < self.burst_at {
            Phase::WarmUp
        } else if t < self.burst_at + self.burst {
            Phase::Burst
        } else {
            Phase::Tail
        }
    }

    /// Orders the schedule holds (its rate integrated over the duration).
    pub fn expected_orders(&self) -> f64 {
        const STEP: f64 = 0.01;
        let steps = (self.duration / STEP).ceil() as usize;
        (0..steps)
            .map(|i| {
                let t = i as f64 * STEP;
                self.rate_at(t) * STEP.min(self.duration - t)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_follows_the_phases() {
        let mut scenario = Scenario::defaults();
        scenario.load.rate = 100.0;
        let shape = Shape::of(&scenario);
        let t0 = shape.burst_at;
        assert_eq!(shape.rate_at(t0 - 0.1), 100.0);
        assert_eq!(shape.rate_at(t0 + 0.1), 100.0 * shape.multiplier);
        let after = shape.rate_at(t0 + shape.burst + shape.tail);
        assert!(after > 100.0 && after < 100.0 * shape.multiplier, "{after}");
        assert_eq!(shape.phase_at(0.0), Phase::WarmUp);
        assert_eq!(shape.phase_at(shape.duration), Phase::Done);
    }
}
