//! Whether the controller loop still makes progress: what `/healthz` (the
//! liveness probe) answers.
//!
//! Every federation the controller reconciles is run again by a deadline it
//! set itself: the safety resync at the latest (`Action::requeue`), or the
//! error backoff, which is capped at the resync too. So a healthy loop
//! finishes a reconcile of each such federation at least once per resync.
//! The loop is stuck when
//!
//! * a reconcile has been running longer than the stall timeout (it hangs), or
//! * a federation that asked to run again has not finished a reconcile for
//!   longer than that (its requeue never came: the loop stopped).
//!
//! Federations that wait only for a change (`Action::await_change`) are not
//! counted, and neither is anything while no reconcile ran: a standby
//! replica, which never starts the controller, and a leader with no
//! federations are always live.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the controller reports as it reconciles; shared with `/healthz`.
#[derive(Default)]
pub struct Liveness {
    state: Mutex<State>,
}

#[derive(Default, Debug)]
struct State {
    /// Reconciles running now, by federation, with when each started.
    running: HashMap<String, Instant>,
    /// Federations that asked to be reconciled again, with when their last
    /// reconcile finished.
    due: HashMap<String, Instant>,
}

impl Liveness {
    /// The default stall timeout for a given resync: five resyncs, and at
    /// least five minutes (so that a slow cleanup under a short resync is
    /// not taken for a hang).
    pub fn default_stall_timeout(resync: Duration) -> Duration {
        (resync * 5).max(Duration::from_secs(5 * 60))
    }

    /// A reconcile of `federation` starts. Report its end through the
    /// returned [`Reconcile`]; dropped without that (cancelled), it only
    /// stops counting as running.
    pub fn started(self: &Arc<Self>, federation: &str) -> Reconcile {
        self.lock()
            .running
            .insert(federation.to_string(), Instant::now());
        Reconcile {
            liveness: self.clone(),
            federation: federation.to_string(),
        }
    }

    /// `federation` is gone (not in the controller's store any more): no
    /// reconcile of it is due.
    pub fn forget(&self, federation: &str) {
        self.lock().due.remove(federation);
    }

    /// Ok while the loop makes progress; else why not.
    pub fn check(&self, stall_timeout: Duration) -> Result<(), String> {
        self.lock().verdict(Instant::now(), stall_timeout)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent maps.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One running reconcile (see [`Liveness::started`]).
pub struct Reconcile {
    liveness: Arc<Liveness>,
    federation: String,
}

impl Reconcile {
    /// The reconcile finished; `again`: whether the controller will run it
    /// again without a change (a requeue, or an error's backoff).
    pub fn finished(self, again: bool) {
        let mut state = self.liveness.lock();
        if again {
            state.due.insert(self.federation.clone(), Instant::now());
        } else {
            state.due.remove(&self.federation);
        }
        drop(state);
        // `drop(self)` takes it off the running list.
    }
}

impl Drop for Reconcile {
    fn drop(&mut self) {
        self.liveness.lock().running.remove(&self.federation);
    }
}

impl State {
    /// The decision, at `now`.
    fn verdict(&self, now: Instant, stall: Duration) -> Result<(), String> {
        let age = |since: &Instant| now.saturating_duration_since(*since);
        let oldest = |entries: &mut dyn Iterator<Item = (&String, &Instant)>| {
            entries
                .map(|(f, t)| (f.clone(), age(t)))
                .max_by_key(|(_, age)| *age)
                .filter(|(_, age)| *age > stall)
        };
        if let Some((federation, age)) = oldest(&mut self.running.iter()) {
            return Err(format!(
                "the reconcile of federation {federation} has been running for {}s \
                 (stall timeout {}s)",
                age.as_secs(),
                stall.as_secs()
            ));
        }
        let mut waiting = self
            .due
            .iter()
            .filter(|(f, _)| !self.running.contains_key(*f));
        if let Some((federation, age)) = oldest(&mut waiting) {
            return Err(format!(
                "federation {federation} was due to be reconciled again but has not been \
                 for {}s (stall timeout {}s)",
                age.as_secs(),
                stall.as_secs()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(300);

    fn state(running: &[(&str, u64)], due: &[(&str, u64)], now: Instant) -> State {
        let at = |ago: u64| now - Duration::from_secs(ago);
        State {
            running: running
                .iter()
                .map(|(f, a)| (f.to_string(), at(*a)))
                .collect(),
            due: due.iter().map(|(f, a)| (f.to_string(), at(*a))).collect(),
        }
    }

    #[test]
    fn nothing_reconciled_is_live() {
        // A standby, or a leader with no federations.
        let now = Instant::now() + Duration::from_secs(3600);
        assert_eq!(state(&[], &[], now).verdict(now, STALL), Ok(()));
    }

    #[test]
    fn a_reconcile_running_past_the_stall_timeout_is_stuck() {
        let now = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            state(&[("prod", 299)], &[], now).verdict(now, STALL),
            Ok(())
        );
        let err = state(&[("prod", 301)], &[("prod", 900), ("dev", 10)], now)
            .verdict(now, STALL)
            .unwrap_err();
        assert!(
            err.contains("federation prod has been running for 301s"),
            "{err}"
        );
    }

    #[test]
    fn a_federation_overdue_for_its_requeue_is_stuck() {
        let now = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            state(&[], &[("prod", 250), ("dev", 10)], now).verdict(now, STALL),
            Ok(())
        );
        let err = state(&[], &[("prod", 400), ("dev", 10)], now)
            .verdict(now, STALL)
            .unwrap_err();
        assert!(err.contains("federation prod was due"), "{err}");
        // Running again: only the running reconcile's age counts.
        assert_eq!(
            state(&[("prod", 5)], &[("prod", 400)], now).verdict(now, STALL),
            Ok(())
        );
    }

    #[test]
    fn reconciles_report_their_start_and_end() {
        let live = Arc::new(Liveness::default());
        let run = live.started("prod");
        assert!(live.lock().running.contains_key("prod"));
        run.finished(true);
        assert!(live.lock().running.is_empty());
        assert!(live.lock().due.contains_key("prod"));
        // Waiting for a change only: not due.
        live.started("prod").finished(false);
        assert!(live.lock().due.is_empty());
        // Cancelled: no longer running, what was due stays due.
        live.started("dev").finished(true);
        drop(live.started("dev"));
        assert!(live.lock().running.is_empty());
        assert!(live.lock().due.contains_key("dev"));
        live.forget("dev");
        assert!(live.lock().due.is_empty());
        assert_eq!(live.check(Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn the_default_stall_timeout_is_five_resyncs_and_at_least_five_minutes() {
        let d = Liveness::default_stall_timeout;
        assert_eq!(d(Duration::from_secs(2)), Duration::from_secs(300));
        assert_eq!(d(Duration::from_secs(60)), Duration::from_secs(300));
        assert_eq!(d(Duration::from_secs(600)), Duration::from_secs(3000));
    }
}
