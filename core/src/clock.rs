//! Where `now` comes from.
//!
//! Every decision takes `now` as an argument; the broker and the agent read it from the
//! [`Clock`] they were given. Production uses [`SystemClock`]; tests and rehearsals use a
//! [`ManualClock`] or an [`OffsetClock`] and move time instead of sleeping.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to. Cheap to clone; clones share one time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock standing at `at`.
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(at)))
    }

    /// Move the clock forward (or back, for a negative `by`).
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *t += by;
    }

    /// Set the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The system clock moved on by an offset that only grows when told to: time passes as
/// usual, and a test can jump ahead (say past a deadline, or to put a second between two
/// events) without sleeping. Cheap to clone; clones share one offset.
#[derive(Clone, Debug, Default)]
pub struct OffsetClock(Arc<Mutex<Duration>>);

impl OffsetClock {
    /// A clock at the system time.
    pub fn new() -> OffsetClock {
        OffsetClock::default()
    }

    /// Jump ahead by `by`.
    pub fn advance(&self, by: Duration) {
        let mut o = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *o += by;
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A clock that runs `factor` times faster than the system clock from the moment it was
/// made (the demo's shortened covenant: a 48-hour deadline passes in minutes).
#[derive(Clone, Copy, Debug)]
pub struct ScaledClock {
    origin: DateTime<Utc>,
    started: std::time::Instant,
    factor: u32,
}

impl ScaledClock {
    /// A clock that starts at the system time now and runs `factor` times as fast.
    pub fn new(factor: u32) -> ScaledClock {
        ScaledClock {
            origin: Utc::now(),
            started: std::time::Instant::now(),
            factor: factor.max(1),
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let real = self.started.elapsed();
        let scaled = real.saturating_mul(self.factor);
        self.origin + Duration::from_std(scaled).unwrap_or(Duration::MAX)
    }
}

/// The shared handle broker and agent keep.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("valid timestamp");
        let c = ManualClock::new(at);
        assert_eq!(c.now(), at);
        c.clone().advance(Duration::hours(48));
        assert_eq!(c.now(), at + Duration::hours(48));
    }

    #[test]
    fn an_offset_clock_runs_and_jumps() {
        let c = OffsetClock::new();
        let before = c.now();
        c.clone().advance(Duration::days(1));
        assert!(c.now() >= before + Duration::days(1));
    }
}
