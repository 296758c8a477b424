//! Leader election on a coordination.k8s.io Lease, so that of several
//! replicas exactly one reconciles at a time.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

/// One candidate for the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    lease: String,
    identity: String,
    lease_duration: Duration,
    observed: Mutex<Observation>,
}

/// What a look at the lease says.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// We may take or renew it (with this lease as the base).
    Take,
    /// Someone else holds it and is renewing.
    Held(String),
}

/// The last lease record this candidate saw and when (on its own monotonic
/// clock) it first saw it. Expiry is measured from that moment, never from the
/// holder's `renewTime`, so clocks that disagree cannot cause a takeover (as
/// client-go's leader election does).
#[derive(Debug, Default)]
struct Observation {
    record: Option<LeaseSpec>,
    since: Option<Instant>,
}

impl Observation {
    /// Records `record` as seen at `now`; returns how long it has been unchanged.
    fn see(&mut self, record: &LeaseSpec, now: Instant) -> Duration {
        if self.record.as_ref() != Some(record) || self.since.is_none() {
            self.record = Some(record.clone());
            self.since = Some(now);
        }
        now.saturating_duration_since(self.since.unwrap_or(now))
    }
}

/// Pure decision: may `identity` take `lease`, which this candidate has seen
/// unchanged for `unchanged_for`?
fn claim(lease: &LeaseSpec, identity: &str, unchanged_for: Duration) -> Claim {
    let holder = lease.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return Claim::Take;
    }
    let duration = Duration::from_secs(lease.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    if unchanged_for > duration {
        Claim::Take
    } else {
        Claim::Held(holder)
    }
}

impl LeaderElector {
    /// A candidate named `identity` for Lease `namespace/lease`.
    pub fn new(
        client: Client,
        namespace: &str,
        lease: &str,
        identity: String,
        lease_duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            lease: lease.into(),
            identity,
            lease_duration,
            observed: Mutex::default(),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) {
        let mut logged_holder = String::new();
        loop {
            match self.try_acquire().await {
                Ok(None) => {
                    info!(identity = %self.identity, lease = %self.lease, "became leader");
                    return;
                }
                Ok(Some(holder)) => {
                    if holder != logged_holder {
                        info!(leader = %holder, "standing by while another replica leads");
                        logged_holder = holder;
                    }
                }
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the lease until renewal fails; returns when leadership is lost.
    /// Steps down at two thirds of the lease, before a standby may take it.
    pub async fn hold(&self) {
        let deadline = self.lease_duration * 2 / 3;
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match tokio::time::timeout(self.retry_period(), self.try_acquire()).await {
                Ok(Ok(None)) => last_renewal = tokio::time::Instant::now(),
                Ok(Ok(Some(holder))) => {
                    warn!(leader = %holder, "lost the lease to another replica");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "renewing the lease failed"),
                Err(_) => warn!("renewing the lease timed out"),
            }
            if last_renewal.elapsed() >= deadline {
                return;
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.lease).await {
            let spec = lease.spec.get_or_insert_default();
            if spec.holder_identity.as_deref() == Some(&self.identity) {
                spec.holder_identity = None;
                if let Err(e) = self
                    .api
                    .replace(&self.lease, &PostParams::default(), &lease)
                    .await
                {
                    warn!(error = %e, "releasing the lease failed");
                }
            }
        }
    }

    fn retry_period(&self) -> Duration {
        self.lease_duration / 3
    }

    /// Takes or renews the lease; `Some(holder)` when someone else holds it.
    async fn try_acquire(&self) -> Result<Option<String>, kube::Error> {
        let now = Timestamp::now();
        let mine = |previous: Option<&LeaseSpec>| {
            let changed =
                previous.is_none_or(|p| p.holder_identity.as_deref() != Some(&self.identity));
            LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
                acquire_time: if changed {
                    Some(MicroTime(now))
                } else {
                    previous.and_then(|p| p.acquire_time.clone())
                },
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(
                    previous.and_then(|p| p.lease_transitions).unwrap_or(0)
                        + i32::from(changed && previous.is_some()),
                ),
                ..LeaseSpec::default()
            }
        };
        let Some(mut lease) = self.api.get_opt(&self.lease).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(mine(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some("another replica".into())),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let unchanged_for = self
            .observed
            .lock()
            .expect("observation lock")
            .see(&current, Instant::now());
        if let Claim::Held(holder) = claim(&current, &self.identity, unchanged_for) {
            return Ok(Some(holder));
        }
        lease.spec = Some(mine(Some(&current)));
        // replace carries the resourceVersion we read: a racing replica gets a 409.
        match self
            .api
            .replace(&self.lease, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Some("another replica".into())),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_of_another_holder_is_respected_until_unchanged_for_its_duration() {
        let l = lease(Some("b"), "2026-01-01T00:00:00Z");
        assert_eq!(claim(&l, "a", LEASE), Claim::Held("b".into()));
        assert_eq!(
            claim(&l, "a", LEASE + Duration::from_millis(1)),
            Claim::Take
        );
    }

    #[test]
    fn a_released_empty_or_own_lease_can_be_taken_at_once() {
        for holder in [None, Some(""), Some("a")] {
            let l = lease(holder, "2026-01-01T00:00:00Z");
            assert_eq!(claim(&l, "a", Duration::ZERO), Claim::Take, "{holder:?}");
        }
    }

    #[test]
    fn expiry_is_measured_on_the_local_clock_from_the_last_change_seen() {
        let start = Instant::now();
        let mut seen = Observation::default();
        // The holder's clock is far behind ours: its renewTime looks ancient.
        let first = lease(Some("b"), "2000-01-01T00:00:00Z");
        assert_eq!(seen.see(&first, start), Duration::ZERO);
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(seen.see(&first, at(5)), Duration::from_secs(5));
        // A renewal (any change of the record) restarts the count.
        let renewed = lease(Some("b"), "2000-01-01T00:00:05Z");
        assert_eq!(seen.see(&renewed, at(10)), Duration::ZERO);
        assert_eq!(
            claim(&renewed, "a", seen.see(&renewed, at(24))),
            Claim::Held("b".into())
        );
        assert_eq!(
            claim(&renewed, "a", seen.see(&renewed, at(26))),
            Claim::Take,
            "unchanged for 16 s of a 15 s lease"
        );
    }
}
