//! A circuit breaker per peer. After `failures_to_open` consecutive failures the circuit opens
//! and requests to the peer fail at once, without waiting for it. After `open_for` one probe is
//! let through (half-open): if it succeeds the circuit closes; if not, it opens again. The
//! clock is a parameter, so the state machine is tested without sleeping.
//!
//! Written by hand: the breaker crates seen (failsafe, tower's) either lack a half-open probe
//! that can be observed, or tie the clock to real time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What the breaker says about a request about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// Go ahead: this request is the probe of a half-open circuit.
    Probe,
    /// Do not: the circuit is open (or a probe is already out) for about this long.
    No { retry_in: Duration },
}

/// The circuit's state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }

    /// 0 closed, 1 half-open, 2 open (the metric's value).
    pub fn level(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            open_for,
            state: Mutex::new(State::Closed { consecutive: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks whether a request may go to the peer now.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now < until => Admit::No {
                retry_in: until - now,
            },
            State::Open { .. } => {
                *state = State::HalfOpen;
                Admit::Probe
            }
            State::HalfOpen => Admit::No {
                retry_in: Duration::ZERO,
            },
        }
    }

    /// Records how a request that was admitted went. Returns the new state when it changed.
    pub fn record(&self, healthy: bool, now: Instant) -> Option<CircuitState> {
        let mut state = self.lock();
        let before = *state;
        *state = match (before, healthy) {
            (_, true) => State::Closed { consecutive: 0 },
            (State::Closed { consecutive }, false) if consecutive + 1 < self.failures_to_open => {
                State::Closed {
                    consecutive: consecutive + 1,
                }
            }
            (State::Closed { .. } | State::HalfOpen, false) => State::Open {
                until: now + self.open_for,
            },
            // A request admitted before the circuit opened: the circuit stays as it is.
            (State::Open { until }, false) => State::Open { until },
        };
        let changed = std::mem::discriminant(&before) != std::mem::discriminant(&*state);
        changed.then(|| label(*state))
    }

    pub fn state(&self) -> CircuitState {
        label(*self.lock())
    }
}

fn label(s: State) -> CircuitState {
    match s {
        State::Closed { .. } => CircuitState::Closed,
        State::Open { .. } => CircuitState::Open,
        State::HalfOpen => CircuitState::HalfOpen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_probes_after_the_pause() {
        let b = Breaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admit::Yes);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        // A success in between resets the count.
        assert_eq!(b.record(true, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), None);
        assert_eq!(b.record(false, t0), Some(CircuitState::Open));
        assert_eq!(
            b.admit(t0 + Duration::from_secs(10)),
            Admit::No {
                retry_in: Duration::from_secs(20)
            }
        );
        // After the pause: one probe, and nobody else while it is out.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(matches!(b.admit(t1), Admit::No { .. }));
        // The probe fails: open again for another pause.
        assert_eq!(b.record(false, t1), Some(CircuitState::Open));
        assert!(matches!(
            b.admit(t1 + Duration::from_secs(29)),
            Admit::No { .. }
        ));
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(b.admit(t2), Admit::Probe);
        // The probe succeeds: closed.
        assert_eq!(b.record(true, t2), Some(CircuitState::Closed));
        assert_eq!(b.admit(t2), Admit::Yes);
        assert_eq!(b.state().as_str(), "closed");
    }

    #[test]
    fn a_late_failure_does_not_extend_an_open_circuit() {
        let b = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(b.record(false, t0), Some(CircuitState::Open));
        assert_eq!(b.record(false, t0 + Duration::from_secs(4)), None);
        assert_eq!(b.admit(t0 + Duration::from_secs(5)), Admit::Probe);
    }
}
