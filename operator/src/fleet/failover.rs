//! Failover: each member's health, and which members are withdrawn from
//! their peers' view. Decided purely from what the workers last saw; the
//! controller carries it out by leaving withdrawn members out of every
//! peer's remote secrets, and keeps the withdrawn set in a ConfigMap so a
//! restarted operator does not restore a dead member by forgetting.
use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, Client, ResourceExt};

use super::report::{Contact, MemberReport};
use crate::api::{MemberHealth, MeshFederation, WithdrawalPolicy};

pub const HEALTHY: &str = "Healthy";
pub const API_SERVER_UNREACHABLE: &str = "ApiServerUnreachable";
pub const GATEWAY_NOT_READY: &str = "GatewayNotReady";
pub const ISTIOD_UNAVAILABLE: &str = "IstiodUnavailable";
pub const ACCESS_FAILED: &str = "AccessFailed";
/// A withdrawn member not checked since the operator started, or a member
/// the operator holds no usable credentials for (nothing was sent to it).
pub const UNKNOWN: &str = "Unknown";
/// Every reason a member's health can carry.
pub const HEALTH_REASONS: [&str; 6] = [
    HEALTHY,
    API_SERVER_UNREACHABLE,
    ACCESS_FAILED,
    GATEWAY_NOT_READY,
    ISTIOD_UNAVAILABLE,
    UNKNOWN,
];

/// A member's health as its worker last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthFinding {
    pub reason: &'static str,
    pub message: String,
}

impl HealthFinding {
    pub fn healthy(&self) -> bool {
        self.reason == HEALTHY
    }

    /// Whether this is a reason to take the member out of its peers' view:
    /// its API server is gone (peers' istiods would keep serving its
    /// last-known endpoints) or traffic cannot enter it (no gateway). istiod
    /// down alone is not: the member's workloads still serve, and peers
    /// still read its endpoints from its API server.
    pub fn withdrawable(&self) -> bool {
        matches!(self.reason, API_SERVER_UNREACHABLE | GATEWAY_NOT_READY)
    }
}

/// The member's health from its last report; `None` when there is nothing
/// to judge (never run yet, or its cluster is another member's).
pub fn member_health(report: &MemberReport) -> Option<HealthFinding> {
    if report.claim_problem.is_some() {
        return None;
    }
    let health = |reason, message: &str| {
        Some(HealthFinding {
            reason,
            message: message.to_string(),
        })
    };
    match (&report.unreachable, report.contact) {
        (Some(why), Contact::NoAnswer) => return health(API_SERVER_UNREACHABLE, why),
        // Its API server answered with errors: the operator's access is the
        // problem, not the member.
        (Some(why), Contact::Answered) => return health(ACCESS_FAILED, why),
        // Nothing was sent: whether it is up is not known.
        (Some(why), Contact::NotTried) => return health(UNKNOWN, why),
        (None, _) => {}
    }
    if !report.status.reachable {
        return None;
    }
    if report.gateway_expected
        && let Some(problem) = &report.gateway_problem
    {
        return health(GATEWAY_NOT_READY, problem);
    }
    if report.status.control_plane_ready == Some(false) {
        let why = report
            .control_plane_problem
            .as_deref()
            .unwrap_or("istiod is not available");
        return health(ISTIOD_UNAVAILABLE, why);
    }
    health(HEALTHY, "")
}

/// What the controller remembers between reconciles of one federation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tracker {
    /// Since when each member has been unhealthy in a withdrawable way.
    failing_since: BTreeMap<String, Timestamp>,
    /// Since when each withdrawn member has been healthy again.
    recovered_since: BTreeMap<String, Timestamp>,
    /// Withdrawn members, and since when. The only durable part: timers
    /// start over after a restart, which can only delay a change.
    pub withdrawn: BTreeMap<String, Timestamp>,
    /// Why withdrawal is held, as last reported.
    held: Option<String>,
    /// Members seen healthy since the operator started: only those (and
    /// members already withdrawn, which were healthy once) are withdrawn
    /// for their gateway, so that a member still installing (a load
    /// balancer without an address yet) is not.
    seen_healthy: BTreeSet<String>,
}

/// What changed in one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Members withdrawn now, with the reason.
    pub withdrawn: Vec<(String, String)>,
    /// Members restored now.
    pub restored: Vec<String>,
    /// Why a member that is due for withdrawal stays in its peers' view.
    pub held: Option<String>,
    /// Whether `held` differs from the last reconcile's.
    pub held_changed: bool,
    /// When a grace or settle period ends next.
    pub next_check: Option<Timestamp>,
}

impl Tracker {
    /// A tracker that knows only which members are withdrawn.
    pub fn with_withdrawn(withdrawn: BTreeMap<String, Timestamp>) -> Self {
        Self {
            withdrawn,
            ..Self::default()
        }
    }

    /// Updates the timers from the members' `health` (every member in the
    /// spec, `None` when not judged) and decides withdrawals and restores.
    /// Without a policy, withdrawal is off and every withdrawn member is
    /// restored.
    pub fn decide(
        &mut self,
        health: &BTreeMap<String, Option<HealthFinding>>,
        policy: Option<&WithdrawalPolicy>,
        now: Timestamp,
    ) -> Decision {
        let mut d = Decision::default();
        let in_spec = |m: &String| health.contains_key(m);
        self.failing_since.retain(|m, _| in_spec(m));
        self.recovered_since.retain(|m, _| in_spec(m));
        self.withdrawn.retain(|m, _| in_spec(m));
        self.seen_healthy.retain(|m| in_spec(m));
        let Some(policy) = policy else {
            d.restored = std::mem::take(&mut self.withdrawn).into_keys().collect();
            self.failing_since.clear();
            self.recovered_since.clear();
            d.held_changed = self.held.take().is_some();
            return d;
        };
        for (member, h) in health {
            let Some(h) = h else { continue };
            if h.healthy() {
                self.seen_healthy.insert(member.clone());
            }
            // A withdrawn member was healthy before it failed: that is on
            // record, so a restart does not restore it while its gateway
            // is still down.
            let was_healthy =
                self.seen_healthy.contains(member) || self.withdrawn.contains_key(member);
            let withdrawable = h.withdrawable() && (h.reason != GATEWAY_NOT_READY || was_healthy);
            if withdrawable {
                self.failing_since.entry(member.clone()).or_insert(now);
                self.recovered_since.remove(member);
            } else {
                self.failing_since.remove(member);
                if self.withdrawn.contains_key(member) {
                    self.recovered_since.entry(member.clone()).or_insert(now);
                }
            }
        }
        let after = |since: &Timestamp, period| {
            since
                .checked_add(jiff::SignedDuration::try_from(period).unwrap_or_default())
                .unwrap_or(Timestamp::MAX)
        };

        let settled: Vec<String> = self
            .recovered_since
            .iter()
            .filter(|(m, since)| {
                self.withdrawn.contains_key(*m) && after(since, policy.settle) <= now
            })
            .map(|(m, _)| m.clone())
            .collect();
        for m in settled {
            self.withdrawn.remove(&m);
            self.recovered_since.remove(&m);
            d.restored.push(m);
        }

        let mut due: Vec<(&Timestamp, &String)> = self
            .failing_since
            .iter()
            .filter(|(m, since)| {
                !self.withdrawn.contains_key(*m) && after(since, policy.grace) <= now
            })
            .map(|(m, since)| (since, m))
            .collect();
        due.sort();
        let judged = health.values().filter(|h| h.is_some()).count();
        // A member the operator holds no usable credentials for was not
        // reached: it is no evidence that the operator sees the fleet.
        let healthy = health
            .iter()
            .filter(|(m, h)| {
                h.as_ref().is_some_and(|h| h.reason != UNKNOWN)
                    && !self.failing_since.contains_key(*m)
            })
            .filter(|(m, _)| !self.withdrawn.contains_key(*m))
            .count();
        let mut held = None;
        if !due.is_empty() && healthy < policy.min_healthy {
            held = Some(format!(
                "{} due for withdrawal, but only {healthy} of {} members are reachable and healthy (of {judged} judged); withdrawing needs {} (spec.failover.withdrawal.minHealthy, default a strict majority)",
                names(due.iter().map(|(_, m)| m.as_str())),
                health.len(),
                policy.min_healthy
            ));
        } else {
            let room = policy.max_withdrawn.saturating_sub(self.withdrawn.len());
            let (now_out, kept): (Vec<_>, Vec<_>) =
                due.iter().enumerate().partition(|(i, _)| *i < room);
            for (_, (_, m)) in now_out {
                let why = health
                    .get(*m)
                    .cloned()
                    .flatten()
                    .map(|h| h.message)
                    .unwrap_or_default();
                d.withdrawn.push(((*m).clone(), why));
            }
            if !kept.is_empty() {
                held = Some(format!(
                    "{} due for withdrawal, but at most {} members are withdrawn at once (spec.failover.withdrawal.maxWithdrawn)",
                    names(kept.iter().map(|(_, (_, m))| m.as_str())),
                    policy.max_withdrawn
                ));
            }
        }
        // Status shows whole seconds: a finer time would never compare equal
        // to what is read back, and every reconcile would write status again.
        let whole_seconds = Timestamp::from_second(now.as_second()).unwrap_or(now);
        for (m, _) in &d.withdrawn {
            self.withdrawn.insert(m.clone(), whole_seconds);
        }
        d.held_changed = self.held != held;
        self.held.clone_from(&held);
        d.held = held;

        let grace_ends = self
            .failing_since
            .iter()
            .filter(|(m, _)| !self.withdrawn.contains_key(*m))
            .map(|(_, since)| after(since, policy.grace));
        let settle_ends = self
            .recovered_since
            .values()
            .map(|since| after(since, policy.settle));
        d.next_check = grace_ends.chain(settle_ends).filter(|t| *t > now).min();
        d
    }

    /// The members peers must not see.
    pub fn withdrawn_set(&self) -> BTreeSet<String> {
        self.withdrawn.keys().cloned().collect()
    }

    /// The status entry for `member`: none while it is not judged, unless
    /// it is withdrawn (which status must always show).
    pub fn status(&self, member: &str, health: Option<&HealthFinding>) -> Option<MemberHealth> {
        let withdrawn_since = self.withdrawn.get(member).map(|t| Time(*t));
        let (healthy, reason, message) = match health {
            Some(h) => (h.healthy(), h.reason, h.message.clone()),
            None if withdrawn_since.is_some() => (
                false,
                UNKNOWN,
                "not checked since the operator started".to_string(),
            ),
            None => return None,
        };
        Some(MemberHealth {
            healthy,
            reason: reason.to_string(),
            message,
            withdrawn_since,
        })
    }
}

fn names<'a>(members: impl Iterator<Item = &'a str>) -> String {
    members.collect::<Vec<_>>().join(", ")
}

/// `meshfed-withdrawn-<federation>` in the operator's namespace: withdrawn
/// members and since when.
pub fn record_name(federation: &str) -> String {
    format!("meshfed-withdrawn-{federation}")
}

/// The withdrawn members on record.
pub async fn load(
    client: &Client,
    namespace: &str,
    federation: &str,
) -> Result<BTreeMap<String, Timestamp>, kube::Error> {
    let record = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&record_name(federation))
        .await?;
    Ok(record
        .and_then(|r| r.data)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(member, since)| Some((member, since.parse().ok()?)))
        .collect())
}

/// Records the withdrawn members (an empty record when none).
pub async fn store(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
    withdrawn: &BTreeMap<String, Timestamp>,
) -> Result<(), kube::Error> {
    let data = withdrawn
        .iter()
        .map(|(m, since)| (m.clone(), since.to_string()))
        .collect();
    let name = record_name(&fed.name_any());
    super::record::write(client, namespace, fed, &name, data).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn policy() -> WithdrawalPolicy {
        WithdrawalPolicy {
            grace: Duration::from_secs(30),
            settle: Duration::from_secs(60),
            probe_interval: Duration::from_secs(5),
            max_withdrawn: 1,
            min_healthy: 2,
        }
    }

    fn h(reason: &'static str) -> Option<HealthFinding> {
        Some(HealthFinding {
            reason,
            message: format!("{reason} message"),
        })
    }

    fn fleet(states: &[(&str, Option<HealthFinding>)]) -> BTreeMap<String, Option<HealthFinding>> {
        states
            .iter()
            .map(|(m, h)| (m.to_string(), h.clone()))
            .collect()
    }

    #[test]
    fn health_comes_from_the_report_in_order_of_severity() {
        let mut r = MemberReport::new("a");
        assert_eq!(member_health(&r), None, "never reached: not judged");
        r.status.reachable = true;
        assert_eq!(member_health(&r).unwrap().reason, HEALTHY);
        r.status.control_plane_ready = Some(false);
        r.control_plane_problem = Some("istiod Deployment is not available".into());
        let istiod = member_health(&r).unwrap();
        assert_eq!(istiod.reason, ISTIOD_UNAVAILABLE);
        assert!(
            !istiod.withdrawable(),
            "istiod alone is reported, not withdrawn"
        );
        r.gateway_expected = true;
        r.gateway_problem = Some("no ready endpoint".into());
        let gateway = member_health(&r).unwrap();
        assert_eq!(gateway.reason, GATEWAY_NOT_READY);
        assert!(gateway.withdrawable());
        assert_eq!(gateway.message, "no ready endpoint");
        r.unreachable = Some("API error 403: forbidden".into());
        r.status.reachable = false;
        let access = member_health(&r).unwrap();
        assert_eq!(access.reason, ACCESS_FAILED, "the server answered");
        assert!(!access.withdrawable());
        r.unreachable = Some("connection refused".into());
        r.contact = Contact::NoAnswer;
        assert_eq!(member_health(&r).unwrap().reason, API_SERVER_UNREACHABLE);
        r.unreachable = Some("the token in credentials Secret x expired".into());
        r.contact = Contact::NotTried;
        let unknown = member_health(&r).unwrap();
        assert_eq!(unknown.reason, UNKNOWN, "nothing was sent: not known");
        assert!(!unknown.withdrawable());
        r.claim_problem = Some("cluster is b's".into());
        assert_eq!(member_health(&r), None, "a refused member is nobody's peer");
    }

    #[test]
    fn a_member_with_unusable_credentials_does_not_count_towards_the_quorum() {
        let mut tr = Tracker::default();
        let t0 = Timestamp::from_second(1_000).unwrap();
        let later = Timestamp::from_second(1_100).unwrap();
        let states = |third| {
            fleet(&[
                ("a", h(HEALTHY)),
                ("b", h(third)),
                ("c", h(API_SERVER_UNREACHABLE)),
            ])
        };
        tr.decide(&states(UNKNOWN), Some(&policy()), t0);
        let d = tr.decide(&states(UNKNOWN), Some(&policy()), later);
        assert!(d.withdrawn.is_empty(), "only a is known healthy: {d:?}");
        assert!(d.held.unwrap().contains("only 1 of 3"));
        let d = tr.decide(&states(ACCESS_FAILED), Some(&policy()), later);
        assert_eq!(
            d.withdrawn
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>(),
            ["c"],
            "b's API server answered (with an error): it counts"
        );
    }

    #[test]
    fn a_member_unhealthy_past_grace_is_withdrawn_and_restored_after_settling() {
        let mut tr = Tracker::default();
        let p = policy();
        let down = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(HEALTHY)),
            ("c", h(API_SERVER_UNREACHABLE)),
        ]);
        let d = tr.decide(&down, Some(&p), t(0));
        assert!(d.withdrawn.is_empty());
        assert_eq!(d.next_check, Some(t(30)));
        let d = tr.decide(&down, Some(&p), t(29));
        assert!(d.withdrawn.is_empty());
        let d = tr.decide(&down, Some(&p), t(30));
        assert_eq!(
            d.withdrawn,
            vec![("c".into(), "ApiServerUnreachable message".into())]
        );
        assert_eq!(tr.withdrawn_set(), BTreeSet::from(["c".to_string()]));
        assert_eq!(d.next_check, None);
        // Still down: stays withdrawn, nothing new.
        assert_eq!(tr.decide(&down, Some(&p), t(100)), Decision::default());

        let up = fleet(&[("a", h(HEALTHY)), ("b", h(HEALTHY)), ("c", h(HEALTHY))]);
        let d = tr.decide(&up, Some(&p), t(200));
        assert!(d.restored.is_empty());
        assert_eq!(d.next_check, Some(t(260)));
        // A relapse inside the settle period starts it over.
        tr.decide(&down, Some(&p), t(210));
        let d = tr.decide(&up, Some(&p), t(220));
        assert_eq!(d.next_check, Some(t(280)));
        assert!(tr.decide(&up, Some(&p), t(279)).restored.is_empty());
        assert_eq!(
            tr.decide(&up, Some(&p), t(280)).restored,
            vec!["c".to_string()]
        );
        assert!(tr.withdrawn_set().is_empty());
    }

    #[test]
    fn a_restart_neither_restores_a_dead_gateway_nor_withdraws_an_installing_one() {
        let p = policy();
        let gateway_down = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(HEALTHY)),
            ("c", h(GATEWAY_NOT_READY)),
        ]);
        // Before the restart: c was healthy, its gateway failed, it was withdrawn.
        let mut before = Tracker::default();
        before.decide(
            &fleet(&[("a", h(HEALTHY)), ("b", h(HEALTHY)), ("c", h(HEALTHY))]),
            Some(&p),
            t(0),
        );
        before.decide(&gateway_down, Some(&p), t(10));
        assert_eq!(
            before
                .decide(&gateway_down, Some(&p), t(40))
                .withdrawn
                .len(),
            1
        );
        // After it: only the withdrawn set is known, and the gateway is still down.
        let mut after = Tracker::with_withdrawn(before.withdrawn.clone());
        for now in [100, 200, 1000] {
            let d = after.decide(&gateway_down, Some(&p), t(now));
            assert!(d.restored.is_empty(), "restored a dead gateway at {now}");
        }
        assert_eq!(after.withdrawn_set(), BTreeSet::from(["c".to_string()]));
        // A member never seen healthy (still installing) is not withdrawn.
        let mut fresh = Tracker::default();
        for now in [0, 100, 1000] {
            assert!(
                fresh
                    .decide(&gateway_down, Some(&p), t(now))
                    .withdrawn
                    .is_empty()
            );
        }
    }

    #[test]
    fn a_blip_shorter_than_grace_withdraws_nothing() {
        let mut tr = Tracker::default();
        let p = policy();
        tr.decide(
            &fleet(&[("a", h(HEALTHY)), ("b", h(API_SERVER_UNREACHABLE))]),
            Some(&p),
            t(0),
        );
        tr.decide(
            &fleet(&[("a", h(HEALTHY)), ("b", h(HEALTHY))]),
            Some(&p),
            t(10),
        );
        let d = tr.decide(
            &fleet(&[("a", h(HEALTHY)), ("b", h(API_SERVER_UNREACHABLE))]),
            Some(&p),
            t(35),
        );
        assert!(
            d.withdrawn.is_empty(),
            "the grace period started again at 35"
        );
        assert_eq!(d.next_check, Some(t(65)));
    }

    #[test]
    fn istiod_down_alone_is_never_withdrawn() {
        let mut tr = Tracker::default();
        let f = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(HEALTHY)),
            ("c", h(ISTIOD_UNAVAILABLE)),
        ]);
        tr.decide(&f, Some(&policy()), t(0));
        let d = tr.decide(&f, Some(&policy()), t(3600));
        assert!(d.withdrawn.is_empty() && d.next_check.is_none());
    }

    #[test]
    fn without_a_majority_healthy_nothing_is_withdrawn_and_status_says_why() {
        let mut tr = Tracker::default();
        let p = policy();
        let f = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(API_SERVER_UNREACHABLE)),
            ("c", h(API_SERVER_UNREACHABLE)),
        ]);
        tr.decide(&f, Some(&p), t(0));
        let d = tr.decide(&f, Some(&p), t(60));
        assert!(d.withdrawn.is_empty());
        let held = d.held.unwrap();
        assert!(held.contains("b, c due for withdrawal"), "{held}");
        assert!(held.contains("only 1 of 3"), "{held}");
        assert!(held.contains("minHealthy"), "{held}");
        assert!(d.held_changed);
        assert!(
            !tr.decide(&f, Some(&p), t(61)).held_changed,
            "reported once"
        );
        // One comes back: now the other may go.
        let f = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(HEALTHY)),
            ("c", h(API_SERVER_UNREACHABLE)),
        ]);
        let d = tr.decide(&f, Some(&p), t(62));
        assert_eq!(d.withdrawn.len(), 1);
        assert_eq!(d.held, None);
        assert!(d.held_changed);
    }

    #[test]
    fn two_members_never_withdraw_unless_the_bound_is_lowered() {
        let f = fleet(&[("a", h(HEALTHY)), ("b", h(API_SERVER_UNREACHABLE))]);
        let default_bound = WithdrawalPolicy {
            min_healthy: 2,
            ..policy()
        };
        let mut tr = Tracker::default();
        tr.decide(&f, Some(&default_bound), t(0));
        let d = tr.decide(&f, Some(&default_bound), t(100));
        assert!(d.withdrawn.is_empty() && d.held.is_some());
        let lowered = WithdrawalPolicy {
            min_healthy: 1,
            ..policy()
        };
        let d = tr.decide(&f, Some(&lowered), t(101));
        assert_eq!(d.withdrawn.len(), 1);
    }

    #[test]
    fn at_most_max_withdrawn_at_once_oldest_failure_first() {
        let mut tr = Tracker::default();
        let p = WithdrawalPolicy {
            min_healthy: 1,
            ..policy()
        };
        let mut f = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(HEALTHY)),
            ("c", h(API_SERVER_UNREACHABLE)),
            ("d", h(HEALTHY)),
        ]);
        tr.decide(&f, Some(&p), t(0));
        f.insert("b".into(), h(GATEWAY_NOT_READY));
        tr.decide(&f, Some(&p), t(5));
        let d = tr.decide(&f, Some(&p), t(40));
        assert_eq!(d.withdrawn.len(), 1);
        assert_eq!(d.withdrawn[0].0, "c", "the longest failing goes first");
        assert!(
            d.held
                .unwrap()
                .contains("b due for withdrawal, but at most 1")
        );
    }

    #[test]
    fn withdrawal_switched_off_or_a_member_leaving_restores() {
        let mut tr = Tracker::with_withdrawn(BTreeMap::from([
            ("b".to_string(), t(0)),
            ("gone".to_string(), t(0)),
        ]));
        let f = fleet(&[("a", h(HEALTHY)), ("b", h(API_SERVER_UNREACHABLE))]);
        let d = tr.decide(&f, None, t(10));
        assert_eq!(d.restored, vec!["b".to_string()]);
        assert!(tr.withdrawn.is_empty());
    }

    #[test]
    fn unjudged_members_keep_their_timers_and_do_not_count_as_healthy() {
        let mut tr = Tracker::with_withdrawn(BTreeMap::from([("c".to_string(), t(0))]));
        let p = policy();
        // Just restarted: nothing judged yet, nothing restored.
        let f = fleet(&[("a", None), ("b", None), ("c", None)]);
        assert_eq!(tr.decide(&f, Some(&p), t(1)), Decision::default());
        assert_eq!(tr.withdrawn_set().len(), 1);
        let f = fleet(&[
            ("a", h(HEALTHY)),
            ("b", None),
            ("d", h(API_SERVER_UNREACHABLE)),
        ]);
        tr.decide(&f, Some(&p), t(2));
        let d = tr.decide(&f, Some(&p), t(40));
        assert!(d.held.unwrap().contains("only 1 of 3"));
    }

    #[test]
    fn status_names_the_reason_and_withdrawal() {
        let tr = Tracker::with_withdrawn(BTreeMap::from([("c".to_string(), t(7))]));
        let s = tr.status("c", h(API_SERVER_UNREACHABLE).as_ref()).unwrap();
        assert!(!s.healthy);
        assert_eq!(s.reason, API_SERVER_UNREACHABLE);
        assert_eq!(s.withdrawn_since, Some(Time(t(7))));
        let s = tr.status("a", h(HEALTHY).as_ref()).unwrap();
        assert!(s.healthy && s.withdrawn_since.is_none());
        assert_eq!(tr.status("a", None), None);
        let s = tr.status("c", None).unwrap();
        assert_eq!(s.reason, UNKNOWN, "a withdrawn member is always shown");
        assert!(s.withdrawn_since.is_some());
    }

    #[test]
    fn withdrawal_times_are_whole_seconds_as_status_shows_them() {
        let mut tr = Tracker::default();
        let p = policy();
        let f = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(HEALTHY)),
            ("c", h(API_SERVER_UNREACHABLE)),
        ]);
        let subsecond = |secs| {
            t(secs)
                .checked_add(jiff::SignedDuration::from_millis(700))
                .unwrap()
        };
        tr.decide(&f, Some(&p), subsecond(0));
        tr.decide(&f, Some(&p), subsecond(31));
        assert_eq!(tr.withdrawn["c"], t(31));
    }

    #[test]
    fn a_gateway_counts_only_once_the_member_was_healthy() {
        let mut tr = Tracker::default();
        let p = policy();
        let installing = fleet(&[
            ("a", h(HEALTHY)),
            ("b", h(HEALTHY)),
            ("c", h(GATEWAY_NOT_READY)),
        ]);
        tr.decide(&installing, Some(&p), t(0));
        let d = tr.decide(&installing, Some(&p), t(600));
        assert!(d.withdrawn.is_empty() && d.next_check.is_none(), "{d:?}");
        let up = fleet(&[("a", h(HEALTHY)), ("b", h(HEALTHY)), ("c", h(HEALTHY))]);
        tr.decide(&up, Some(&p), t(601));
        tr.decide(&installing, Some(&p), t(602));
        assert_eq!(tr.decide(&installing, Some(&p), t(632)).withdrawn.len(), 1);
    }
}
