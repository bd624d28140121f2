//! Shutdown is a type, not a habit: every long-running loop holds a
//! `Shutdown` and checks it between units of work, so SIGINT/SIGTERM (or a
//! test, or the demo) can stop the processor at a clean point.
//!
//! A part of the processor that finds it cannot go on safely (a Kafka
//! transaction aborted, a record whose partition state is missing) calls
//! [`Shutdown::fail`]: the processor then stops the same way, and returns
//! the first such error instead of success.

use parking_lot::Mutex;
use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why the processor stopped on its own.
pub type Failure = Box<dyn Error + Send + Sync>;

#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    triggered: AtomicBool,
    /// The first failure, if the processor stops because of one.
    failure: Mutex<Option<Failure>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.triggered.store(true, Ordering::Release);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.triggered.load(Ordering::Acquire)
    }

    /// Stops the processor because going on could break a promise: logs
    /// `error`, keeps it (the first one wins) for [`Shutdown::take_failure`]
    /// and triggers shutdown.
    pub fn fail(&self, error: impl Into<Failure>) {
        let error = error.into();
        tracing::error!(%error, "stopping");
        let mut failure = self.0.failure.lock();
        if failure.is_none() {
            *failure = Some(error);
        }
        drop(failure);
        self.trigger();
    }

    /// The failure that stopped the processor, if one did.
    pub fn take_failure(&self) -> Option<Failure> {
        self.0.failure.lock().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_stops_and_the_first_one_is_kept() {
        let shutdown = Shutdown::new();
        let holder = shutdown.clone();
        assert!(!shutdown.is_triggered() && shutdown.take_failure().is_none());
        holder.fail("first");
        holder.fail("second");
        assert!(shutdown.is_triggered());
        assert_eq!(shutdown.take_failure().unwrap().to_string(), "first");
    }
}
