use std::sync::atomic::AtomicU64;
use std::time::Duration;

use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::MeshFederationStatus;
use crate::telemetry::RequestCount;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    federation: String,
    /// ready, not_ready or error.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FederationLabels {
    federation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    federation: String,
    phase: &'static str,
}

/// The phases of a root rotation, as `status.ca.phase` names them.
const ROTATION_PHASES: [&str; 4] = ["TrustBoth", "SignWithNew", "Drain", "TrustNew"];
const ROLLOUT_PHASES: [&str; 4] = ["Complete", "RollingOut", "Paused", "Halted"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    federation: String,
    member: String,
}

/// Outcome of one reconcile, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    Ready,
    NotReady,
    Error,
}

/// meshfed's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<ReconcileLabels, Histogram, fn() -> Histogram>,
    member_reachable: Family<MemberLabels, Gauge>,
    member_ready: Family<MemberLabels, Gauge>,
    member_healthy: Family<MemberLabels, Gauge>,
    member_withdrawn: Family<MemberLabels, Gauge>,
    intermediate_expiry: Family<MemberLabels, Gauge<f64, AtomicU64>>,
    token_expiry: Family<MemberLabels, Gauge<f64, AtomicU64>>,
    member_requests: Family<RequestLabels, Counter>,
    member_runs: Family<RunLabels, Counter>,
    tokens_minted: Family<MemberLabels, Counter>,
    root_expiry: Family<FederationLabels, Gauge<f64, AtomicU64>>,
    rotation_phase: Family<PhaseLabels, Gauge>,
    rollout_phase: Family<PhaseLabels, Gauge>,
    members_updated: Family<FederationLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    federation: String,
    member: String,
    /// ready or not_ready.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    federation: String,
    member: String,
    /// read (GET) or write (everything else).
    kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("meshfed");
        let reconciles = Family::default();
        registry.register(
            "reconciles",
            "Reconciles of a federation by result (ready, not_ready, error)",
            reconciles.clone(),
        );
        let reconcile_duration: Family<ReconcileLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by result",
            reconcile_duration.clone(),
        );
        let member_reachable = Family::default();
        registry.register(
            "member_reachable",
            "1 when the member's API server answered in the last reconcile",
            member_reachable.clone(),
        );
        let member_ready = Family::default();
        registry.register(
            "member_ready",
            "1 when everything meshfed manages in the member is in place",
            member_ready.clone(),
        );
        let member_healthy = Family::default();
        registry.register(
            "member_healthy",
            "1 when the member is healthy (status.members[].health), 0 when not; absent while not judged",
            member_healthy.clone(),
        );
        let member_withdrawn = Family::default();
        registry.register(
            "member_withdrawn",
            "1 while the member is withdrawn from its peers' view (spec.failover.withdrawal)",
            member_withdrawn.clone(),
        );
        let intermediate_expiry = Family::default();
        registry.register(
            "intermediate_expiry_seconds",
            "Seconds until the member's intermediate CA expires",
            intermediate_expiry.clone(),
        );
        let token_expiry = Family::default();
        registry.register(
            "remote_secret_token_expiry_seconds",
            "Seconds until the earliest token in the member's remote secrets expires",
            token_expiry.clone(),
        );
        let member_requests = Family::default();
        registry.register(
            "member_api_requests",
            "API requests sent to a member's API server while reconciling, by kind (read, write)",
            member_requests.clone(),
        );
        let member_runs = Family::default();
        registry.register(
            "member_runs",
            "Runs of a member's worker by result (ready, not_ready)",
            member_runs.clone(),
        );
        let tokens_minted = Family::default();
        registry.register(
            "tokens_minted",
            "Tokens minted for a member's reader (TokenRequests), for its peers' remote secrets",
            tokens_minted.clone(),
        );
        let root_expiry = Family::default();
        registry.register(
            "root_expiry_seconds",
            "Seconds until the root that signs the federation's intermediates expires",
            root_expiry.clone(),
        );
        let rotation_phase = Family::default();
        registry.register(
            "root_rotation_phase",
            "1 for the phase a root rotation is in (TrustBoth, SignWithNew, Drain, TrustNew), 0 for the others",
            rotation_phase.clone(),
        );
        let rollout_phase = Family::default();
        registry.register(
            "control_plane_rollout_phase",
            "1 for the phase the control-plane rollout is in (Complete, RollingOut, Paused, Halted), 0 for the others",
            rollout_phase.clone(),
        );
        let members_updated = Family::default();
        registry.register(
            "control_plane_members_updated",
            "Members whose revision tags point at spec.controlPlane.version's revision, with its istiod ready",
            members_updated.clone(),
        );
        Self {
            root_expiry,
            rotation_phase,
            rollout_phase,
            members_updated,
            member_runs,
            tokens_minted,
            member_requests,
            registry,
            reconciles,
            reconcile_duration,
            member_reachable,
            member_ready,
            member_healthy,
            member_withdrawn,
            intermediate_expiry,
            token_expiry,
        }
    }
}

/// 10 ms to ~80 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

impl Metrics {
    /// Counts one reconcile.
    pub fn reconciled(&self, federation: &str, result: ReconcileResult, took: Duration) {
        let labels = ReconcileLabels {
            federation: federation.into(),
            result: match result {
                ReconcileResult::Ready => "ready",
                ReconcileResult::NotReady => "not_ready",
                ReconcileResult::Error => "error",
            },
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Sets the per-member gauges from a freshly built status, dropping the
    /// series of members that are gone.
    pub fn members(
        &self,
        federation: &str,
        previous: Option<&MeshFederationStatus>,
        current: &MeshFederationStatus,
        now: Timestamp,
    ) {
        let labels = |member: &str| MemberLabels {
            federation: federation.into(),
            member: member.into(),
        };
        for gone in previous
            .iter()
            .flat_map(|s| &s.members)
            .filter(|m| !current.members.iter().any(|c| c.name == m.name))
        {
            self.forget_member(&labels(&gone.name));
        }
        let seconds_until = |t: Timestamp| t.duration_since(now).as_secs_f64();
        let fed = FederationLabels {
            federation: federation.into(),
        };
        match &current.root {
            Some(root) => {
                self.root_expiry
                    .get_or_create(&fed)
                    .set(seconds_until(root.not_after.0));
            }
            None => {
                self.root_expiry.remove(&fed);
            }
        }
        let phase = current.ca.as_ref().and_then(|c| c.phase.as_deref());
        for p in ROTATION_PHASES {
            self.rotation_phase
                .get_or_create(&PhaseLabels {
                    federation: federation.into(),
                    phase: p,
                })
                .set(i64::from(phase == Some(p)));
        }
        match &current.control_plane {
            Some(rollout) => {
                for p in ROLLOUT_PHASES {
                    self.rollout_phase
                        .get_or_create(&PhaseLabels {
                            federation: federation.into(),
                            phase: p,
                        })
                        .set(i64::from(rollout.phase == p));
                }
                self.members_updated
                    .get_or_create(&fed)
                    .set(i64::from(rollout.updated));
            }
            None => self.forget_rollout(federation),
        }
        for m in &current.members {
            let l = labels(&m.name);
            self.member_reachable
                .get_or_create(&l)
                .set(i64::from(m.reachable));
            self.member_ready.get_or_create(&l).set(i64::from(m.ready));
            match &m.health {
                Some(h) => {
                    self.member_healthy
                        .get_or_create(&l)
                        .set(i64::from(h.healthy));
                }
                None => {
                    self.member_healthy.remove(&l);
                }
            }
            let withdrawn = m
                .health
                .as_ref()
                .is_some_and(|h| h.withdrawn_since.is_some());
            self.member_withdrawn
                .get_or_create(&l)
                .set(i64::from(withdrawn));
            match &m.intermediate {
                Some(i) => {
                    self.intermediate_expiry
                        .get_or_create(&l)
                        .set(seconds_until(i.not_after.0));
                }
                None => {
                    self.intermediate_expiry.remove(&l);
                }
            }
            match &m.token_expiry {
                Some(t) => {
                    self.token_expiry.get_or_create(&l).set(seconds_until(t.0));
                }
                None => {
                    self.token_expiry.remove(&l);
                }
            }
        }
    }

    /// Counts one run of a member's worker and the requests it sent.
    pub fn member_run(&self, federation: &str, member: &str, ready: bool, count: RequestCount) {
        let labels = RunLabels {
            federation: federation.into(),
            member: member.into(),
            result: if ready { "ready" } else { "not_ready" },
        };
        self.member_runs.get_or_create(&labels).inc();
        self.member_requests(federation, member, count);
    }

    /// Counts a token minted for `member`'s reader.
    pub fn token_minted(&self, federation: &str, member: &str) {
        let labels = MemberLabels {
            federation: federation.into(),
            member: member.into(),
        };
        self.tokens_minted.get_or_create(&labels).inc();
    }

    /// Counts the requests sent to a member.
    fn member_requests(&self, federation: &str, member: &str, count: RequestCount) {
        for (kind, n) in [("read", count.reads), ("write", count.writes)] {
            let labels = RequestLabels {
                federation: federation.into(),
                member: member.into(),
                kind,
            };
            self.member_requests.get_or_create(&labels).inc_by(n);
        }
    }

    /// Drops every series of a deleted federation's members.
    pub fn forget_federation(&self, federation: &str, status: Option<&MeshFederationStatus>) {
        self.root_expiry.remove(&FederationLabels {
            federation: federation.into(),
        });
        for phase in ROTATION_PHASES {
            self.rotation_phase.remove(&PhaseLabels {
                federation: federation.into(),
                phase,
            });
        }
        self.forget_rollout(federation);
        for m in status.iter().flat_map(|s| &s.members) {
            self.forget_member(&MemberLabels {
                federation: federation.into(),
                member: m.name.clone(),
            });
        }
    }

    fn forget_rollout(&self, federation: &str) {
        for phase in ROLLOUT_PHASES {
            self.rollout_phase.remove(&PhaseLabels {
                federation: federation.into(),
                phase,
            });
        }
        self.members_updated.remove(&FederationLabels {
            federation: federation.into(),
        });
    }

    fn forget_member(&self, l: &MemberLabels) {
        self.member_reachable.remove(l);
        self.member_ready.remove(l);
        self.member_healthy.remove(l);
        self.member_withdrawn.remove(l);
        self.intermediate_expiry.remove(l);
        self.token_expiry.remove(l);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CertificateStatus, MemberStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(members: &[(&str, bool)]) -> MeshFederationStatus {
        MeshFederationStatus {
            members: members
                .iter()
                .map(|(n, up)| MemberStatus {
                    name: n.to_string(),
                    reachable: *up,
                    ready: *up,
                    intermediate: Some(CertificateStatus {
                        serial: "01".into(),
                        not_after: Time("2026-01-02T00:00:00Z".parse().unwrap()),
                    }),
                    ..MemberStatus::default()
                })
                .collect(),
            ..MeshFederationStatus::default()
        }
    }

    /// docs/reference.md's metric rows are exactly the families served
    /// (every family sampled once, since empty families are not encoded).
    #[test]
    fn the_reference_lists_every_metric() {
        let m = Metrics::default();
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut s = status(&[("a", true)]);
        s.members[0].token_expiry = Some(Time("2026-01-01T01:00:00Z".parse().unwrap()));
        s.members[0].health = Some(crate::api::MemberHealth {
            healthy: true,
            reason: "Healthy".into(),
            ..Default::default()
        });
        s.root = s.members[0].intermediate.clone();
        s.control_plane = Some(crate::api::RolloutStatus {
            phase: "Complete".into(),
            ..Default::default()
        });
        m.members("prod", None, &s, now);
        m.reconciled("prod", ReconcileResult::Ready, Duration::from_millis(20));
        let count = RequestCount {
            reads: 1,
            writes: 1,
        };
        m.member_run("prod", "a", true, count);
        m.token_minted("prod", "a");
        let served: Vec<String> = m
            .encode()
            .lines()
            .filter_map(|l| {
                let mut words = l.strip_prefix("# TYPE ")?.split_whitespace();
                let (name, kind) = (words.next()?, words.next()?);
                Some(match kind {
                    "counter" => format!("{name}_total"),
                    _ => name.to_string(),
                })
            })
            .collect();
        let documented: Vec<String> = include_str!("../../../docs/reference.md")
            .lines()
            .filter_map(|l| {
                let cell = l.strip_prefix("| `meshfed_")?.split('`').next()?;
                Some(format!("meshfed_{cell}"))
            })
            .collect();
        assert_eq!(served.len(), 15, "every family sampled: {served:?}");
        let mut sorted = served.clone();
        sorted.sort();
        let mut documented_sorted = documented.clone();
        documented_sorted.sort();
        assert_eq!(documented_sorted, sorted, "docs/reference.md's metrics");
    }

    #[test]
    fn exposition_has_prefixed_conventional_names() {
        let m = Metrics::default();
        m.reconciled("prod", ReconcileResult::Ready, Duration::from_millis(20));
        m.members(
            "prod",
            None,
            &status(&[("a", true), ("b", false)]),
            "2026-01-01T00:00:00Z".parse().unwrap(),
        );
        let text = m.encode();
        assert!(
            text.contains(r#"meshfed_reconciles_total{federation="prod",result="ready"} 1"#),
            "{text}"
        );
        assert!(text.contains("meshfed_reconcile_duration_seconds_bucket"));
        assert!(text.contains(r#"meshfed_member_reachable{federation="prod",member="b"} 0"#));
        assert!(
            !text.contains("meshfed_member_healthy{"),
            "not judged, no series: {text}"
        );
        assert!(text.contains(r#"meshfed_member_withdrawn{federation="prod",member="b"} 0"#));
        assert!(
            text.contains(
                r#"meshfed_intermediate_expiry_seconds{federation="prod",member="a"} 86400"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"meshfed_root_rotation_phase{federation="prod",phase="TrustBoth"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn a_rollout_is_a_phase_gauge_and_a_count() {
        let m = Metrics::default();
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut s = status(&[("a", true)]);
        s.control_plane = Some(crate::api::RolloutStatus {
            version: "1.31".into(),
            revision: "1-31".into(),
            phase: "Halted".into(),
            updated: 2,
            ..Default::default()
        });
        m.members("prod", None, &s, now);
        let text = m.encode();
        assert!(
            text.contains(
                r#"meshfed_control_plane_rollout_phase{federation="prod",phase="Halted"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"meshfed_control_plane_rollout_phase{federation="prod",phase="Complete"} 0"#
        ));
        assert!(text.contains(r#"meshfed_control_plane_members_updated{federation="prod"} 2"#));
        let previous = s.clone();
        s.control_plane = None;
        m.members("prod", Some(&previous), &s, now);
        assert!(
            !m.encode().contains("meshfed_control_plane_rollout_phase{"),
            "gone with the rollout"
        );
    }

    #[test]
    fn the_root_and_its_rotation_are_gauges() {
        let m = Metrics::default();
        let mut s = status(&[("a", true)]);
        s.root = Some(crate::api::CertificateStatus {
            serial: "01".into(),
            not_after: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-11T00:00:00Z".parse().unwrap(),
            ),
        });
        s.ca = Some(crate::api::CaStatus {
            phase: Some("Drain".into()),
            ..Default::default()
        });
        m.members("prod", None, &s, "2026-01-01T00:00:00Z".parse().unwrap());
        let text = m.encode();
        assert!(
            text.contains(r#"meshfed_root_expiry_seconds{federation="prod"} 864000"#),
            "{text}"
        );
        assert!(text.contains(r#"meshfed_root_rotation_phase{federation="prod",phase="Drain"} 1"#));
        assert!(
            text.contains(r#"meshfed_root_rotation_phase{federation="prod",phase="TrustNew"} 0"#)
        );
        m.forget_federation("prod", Some(&s));
        assert!(
            !m.encode().contains(r#"federation="prod""#),
            "all series gone"
        );
    }

    #[test]
    fn health_and_withdrawal_are_gauges() {
        let m = Metrics::default();
        let mut s = status(&[("a", true), ("b", false)]);
        s.members[1].health = Some(crate::api::MemberHealth {
            healthy: false,
            reason: "ApiServerUnreachable".into(),
            message: String::new(),
            withdrawn_since: Some(Time("2026-01-01T00:00:00Z".parse().unwrap())),
        });
        m.members("prod", None, &s, "2026-01-01T00:00:00Z".parse().unwrap());
        let text = m.encode();
        assert!(
            text.contains(r#"meshfed_member_healthy{federation="prod",member="b"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshfed_member_withdrawn{federation="prod",member="b"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshfed_member_withdrawn{federation="prod",member="a"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn departed_members_lose_their_series() {
        let m = Metrics::default();
        let now = "2026-01-01T00:00:00Z".parse().unwrap();
        let before = status(&[("a", true), ("b", true)]);
        m.members("prod", None, &before, now);
        m.members("prod", Some(&before), &status(&[("a", true)]), now);
        assert!(!m.encode().contains(r#"member="b""#));
        m.forget_federation("prod", Some(&status(&[("a", true)])));
        assert!(!m.encode().contains(r#"member="a""#));
    }
}
