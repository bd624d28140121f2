//! Shutdown is a type, not a habit: every long-running loop holds a
//! `Shutdown` and checks it between units of work, so SIGINT/SIGTERM (or a
//! test, or the demo) can stop the processor at a clean point.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every holder to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
