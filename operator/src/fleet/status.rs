//! Pure status aggregation: member reports in, `MeshFederationStatus` out.
//! Every condition type meshfed sets is defined here.
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::report::{MemberReport, MemberRun};
use super::rotation::{CaRecord, Periods};
use crate::api::{
    CaStatus, CertificateStatus, MemberStatus, MeshFederationSpec, MeshFederationStatus,
    RolloutStatus,
};

/// Summary condition for `kubectl wait --for=condition=Ready` and Argo CD.
pub const READY: &str = "Ready";
/// Every member's cluster is its own: no other member or federation holds it.
pub const CLUSTERS_CLAIMED: &str = "ClustersClaimed";
/// Every member reached in the last reconcile.
pub const MEMBERS_REACHABLE: &str = "MembersReachable";
/// Root usable and every member's `cacerts` signed by it.
pub const CERTIFICATES_READY: &str = "CertificatesReady";
/// Every member holds a current remote secret for every peer.
pub const REMOTE_SECRETS_READY: &str = "RemoteSecretsReady";
/// istiod available in every member (only when spec.controlPlane is set).
pub const CONTROL_PLANES_READY: &str = "ControlPlanesReady";
/// Every member that should have an east-west gateway has one with an address.
pub const GATEWAYS_READY: &str = "GatewaysReady";
/// Every member runs spec.controlPlane.version (its tags on that revision);
/// False while a rollout runs (reason RollingOut, Paused or Halted).
pub const CONTROL_PLANES_UP_TO_DATE: &str = "ControlPlanesUpToDate";
/// Some member is unhealthy or withdrawn from its peers' view (True is bad).
pub const DEGRADED: &str = "Degraded";

/// What the status needs beyond the members' reports.
#[derive(Clone, Debug, Default)]
pub struct FleetFacts<'a> {
    /// Why failover holds a withdrawal back, if it does.
    pub withdrawal_held: Option<&'a str>,
    /// The Secrets the operator keeps for this federation in its namespace
    /// (`namespace/name`: the root, the members' credentials): exposed to
    /// every peer when the operator's cluster is a member.
    pub kept_secrets: &'a [String],
    /// The trust bundle and a root rotation in progress.
    pub ca: Option<CaStatus>,
    /// Where a control-plane rollout stands (Managed).
    pub rollout: Option<RolloutStatus>,
}

/// Whether a root rotation waits for the member of `report`: not when it
/// answered and nothing of it chains to the federation's roots (its
/// cluster is another member's, or it holds no intermediate of the
/// federation: a `cacerts` meshfed did not create, or none yet, as after a
/// lost root). Such a member gets an intermediate of the phase it joins
/// in, so no peer is left with a chain its peers do not trust. A member
/// that cannot be reached is waited for: what it holds is not known.
pub fn rotation_waits_for(report: &MemberReport) -> bool {
    report.unreachable.is_some()
        || (report.claim_problem.is_none() && report.status.intermediate.is_some())
}

/// `status.ca`: the roots of the current target's bundle, and where a
/// rotation stands (members in the spec that have not reached `target`
/// hold it; members it does not wait for are named apart).
pub fn ca_status(
    record: &CaRecord,
    target: &str,
    runs: &BTreeMap<String, MemberRun>,
    spec: &MeshFederationSpec,
    periods: Periods,
) -> CaStatus {
    let roots = record
        .target()
        .bundle
        .iter()
        .filter_map(|pem| crate::pki::inspect(pem).ok())
        .map(|info| CertificateStatus {
            serial: info.serial,
            not_after: Time(info.not_after),
        })
        .collect();
    let rotation = record.rotation.as_ref();
    CaStatus {
        roots,
        phase: rotation.map(|r| r.phase.name().to_string()),
        phase_since: rotation.map(|r| Time(r.since)),
        reason: rotation.map(|r| r.reason.clone()),
        waiting_for: match rotation {
            None => Vec::new(),
            Some(_) => spec
                .members
                .iter()
                .filter(|m| {
                    runs.get(&m.name).is_none_or(|r| {
                        rotation_waits_for(&r.report)
                            && r.report.ca_reached.as_deref() != Some(target)
                    })
                })
                .map(|m| m.name.clone())
                .collect(),
        },
        not_waited_for: match rotation {
            None => Vec::new(),
            Some(_) => spec
                .members
                .iter()
                .filter(|m| {
                    runs.get(&m.name)
                        .is_some_and(|r| !rotation_waits_for(&r.report))
                })
                .map(|m| m.name.clone())
                .collect(),
        },
        next_phase_at: record.next_phase_at(periods).map(Time),
    }
}

/// Something meshfed keeps, or a member holds, is readable with a peer's
/// reader token (True is bad).
pub const CREDENTIALS_EXPOSED: &str = "CredentialsExposed";

/// What the operator can tell about credentials peers may read.
pub fn exposure(members: &[MemberStatus], kept_secrets: &[String]) -> (bool, &'static str, String) {
    let host: Vec<&str> = members
        .iter()
        .filter(|m| m.operator_cluster && !m.leaving)
        .map(|m| m.name.as_str())
        .collect();
    let legacy: Vec<String> = members
        .iter()
        .filter(|m| !m.readable_token_secrets.is_empty())
        .map(|m| format!("{} ({})", m.name, m.readable_token_secrets.join(", ")))
        .collect();
    let legacy_text = format!(
        "long-lived ServiceAccount token Secrets that every peer's reader token may read, not created by meshfed: {}; delete them or move their users to short-lived tokens",
        legacy.join("; ")
    );
    if !host.is_empty() && !kept_secrets.is_empty() {
        let mut message = format!(
            "the operator runs in member {}'s cluster, where every peer's reader token may read Secrets: {} (the root key and credentials that can write to members). Run the operator in a cluster that is not a member (docs/security.md, Topologies)",
            host.join(", "),
            kept_secrets.join(", ")
        );
        if !legacy.is_empty() {
            message = format!("{message}. Also {legacy_text}");
        }
        (true, "OperatorClusterIsMember", message)
    } else if !legacy.is_empty() {
        (
            true,
            "ReadableTokenSecrets",
            format!("members hold {legacy_text}"),
        )
    } else {
        (
            false,
            "NoneFound",
            "nothing meshfed keeps is readable with a peer's reader token, and no member holds long-lived ServiceAccount token Secrets".into(),
        )
    }
}

/// The status to write: conditions keep their `lastTransitionTime` unless
/// their status flips, so an unchanged world yields an identical status.
pub fn build_status(
    generation: Option<i64>,
    reports: Vec<MemberReport>,
    root: Result<CertificateStatus, String>,
    fleet: FleetFacts,
    previous: Option<&MeshFederationStatus>,
    now: Timestamp,
) -> MeshFederationStatus {
    let withdrawal_held = fleet.withdrawal_held;
    let ca = fleet.ca.clone();
    let in_spec = reports.iter().filter(|r| !r.status.leaving).count();
    let ready = reports.iter().filter(|r| r.is_ready()).count();

    let unreachable: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            r.unreachable
                .as_ref()
                .map(|why| format!("{}: {why}", r.status.name))
        })
        .collect();
    let claim_problems: Vec<String> = reports
        .iter()
        .filter(|r| !r.status.leaving)
        .filter_map(|r| Some(format!("{}: {}", r.status.name, r.claim_problem.as_ref()?)))
        .collect();
    let cert_problems: Vec<String> = reports
        .iter()
        .filter(|r| !r.status.leaving && r.claim_problem.is_none())
        .filter_map(|r| match (&r.certificate_problem, &r.unreachable) {
            (Some(p), _) => Some(format!("{}: {p}", r.status.name)),
            (None, Some(_)) => Some(format!("{}: unreachable", r.status.name)),
            _ => None,
        })
        .collect();
    let remote_problems: Vec<String> = reports
        .iter()
        .filter(|r| !r.status.leaving && r.claim_problem.is_none())
        .flat_map(|r| {
            let unreachable = r.unreachable.as_ref().map(|_| "unreachable".to_string());
            r.remote_secret_problems
                .iter()
                .cloned()
                .chain(unreachable)
                .map(move |p| format!("{}: {p}", r.status.name))
        })
        .collect();
    let other_problems: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            let leaving = r
                .status
                .leaving
                .then(|| "leaving the federation".to_string());
            r.other_problems
                .iter()
                .cloned()
                .chain(leaving)
                .map(move |p| format!("{}: {p}", r.status.name))
        })
        .collect();

    let mut conditions = Conditions::new(previous, generation, now);
    conditions.set(
        MEMBERS_REACHABLE,
        unreachable.is_empty(),
        if unreachable.is_empty() {
            "AllReachable"
        } else {
            "MembersUnreachable"
        },
        &if unreachable.is_empty() {
            format!("all {in_spec} members reachable")
        } else {
            unreachable.join("; ")
        },
    );
    let claims_ok = claim_problems.is_empty();
    conditions.set(
        CLUSTERS_CLAIMED,
        claims_ok,
        if claims_ok {
            "ClustersOwned"
        } else {
            "ClusterClaimedElsewhere"
        },
        &if claims_ok {
            format!("each of the {in_spec} members has a cluster of its own")
        } else {
            claim_problems.join("; ")
        },
    );
    let root_serial = root.as_ref().map(|r| r.serial.clone());
    let (certs_ok, certs_reason, certs_message): (bool, &str, String) =
        match (&root_serial, cert_problems.is_empty()) {
            (Err(e), _) => (false, "RootUnavailable", e.to_string()),
            (Ok(_), false) => (false, "IntermediatesNotReady", cert_problems.join("; ")),
            (Ok(serial), true) => (
                true,
                "IntermediatesIssued",
                format!("{in_spec} intermediates signed by root {serial}"),
            ),
        };
    conditions.set(CERTIFICATES_READY, certs_ok, certs_reason, &certs_message);
    let secrets_ok = remote_problems.is_empty();
    conditions.set(
        REMOTE_SECRETS_READY,
        secrets_ok,
        if secrets_ok {
            "RemoteSecretsCurrent"
        } else {
            "RemoteSecretsNotReady"
        },
        &if secrets_ok {
            "every member holds a current remote secret for each of its peers".to_string()
        } else {
            remote_problems.join("; ")
        },
    );
    let in_spec_reports = || reports.iter().filter(|r| !r.status.leaving);
    let mut control_planes_ok = true;
    if in_spec_reports().any(|r| r.status.control_plane_ready.is_some()) {
        let problems = member_problems(in_spec_reports(), |r| r.control_plane_problem.clone());
        control_planes_ok = problems.is_empty();
        conditions.set(
            CONTROL_PLANES_READY,
            control_planes_ok,
            if control_planes_ok {
                "IstiodAvailable"
            } else {
                "ControlPlanesNotReady"
            },
            &if control_planes_ok {
                format!("istiod available in all {in_spec} members")
            } else {
                problems.join("; ")
            },
        );
    }
    if let Some(rollout) = &fleet.rollout {
        let complete = rollout.phase == "Complete";
        let message = match (&rollout.halted, complete) {
            (Some(h), _) => format!(
                "halted at member {}: gate {} not met: {}; fix it and the rollout resumes",
                h.member, h.gate, h.message
            ),
            (None, true) => format!(
                "all {in_spec} members run Istio {} ({})",
                rollout.version,
                if rollout.revision.is_empty() {
                    "in place"
                } else {
                    &rollout.revision
                }
            ),
            (None, false) => format!(
                "{}/{in_spec} members at Istio {}{}",
                rollout.updated,
                rollout.version,
                if rollout.wave.is_empty() {
                    String::new()
                } else {
                    format!("; changing now: {}", rollout.wave.join(", "))
                }
            ),
        };
        conditions.set(
            CONTROL_PLANES_UP_TO_DATE,
            complete,
            &rollout.phase,
            &message,
        );
    }
    let mut gateways_ok = true;
    if in_spec_reports().any(|r| r.gateway_expected) {
        let problems = member_problems(in_spec_reports().filter(|r| r.gateway_expected), |r| {
            r.gateway_problem.clone()
        });
        gateways_ok = problems.is_empty();
        conditions.set(
            GATEWAYS_READY,
            gateways_ok,
            if gateways_ok {
                "GatewaysAvailable"
            } else {
                "GatewaysNotReady"
            },
            &if gateways_ok {
                "every east-west gateway is available and has an address".to_string()
            } else {
                problems.join("; ")
            },
        );
    }
    let withdrawn: Vec<String> = in_spec_reports()
        .filter_map(|r| {
            let h = r.status.health.as_ref()?;
            h.withdrawn_since.as_ref()?;
            Some(format!("{} ({}: {})", r.status.name, h.reason, h.message))
        })
        .collect();
    let unhealthy: Vec<String> = in_spec_reports()
        .filter_map(|r| {
            let h = r.status.health.as_ref()?;
            (!h.healthy && h.withdrawn_since.is_none())
                .then(|| format!("{} ({}: {})", r.status.name, h.reason, h.message))
        })
        .collect();
    let mut degraded = Vec::new();
    if !withdrawn.is_empty() {
        degraded.push(format!("withdrawn from peers: {}", withdrawn.join(", ")));
    }
    if !unhealthy.is_empty() {
        degraded.push(format!("unhealthy: {}", unhealthy.join(", ")));
    }
    degraded.extend(withdrawal_held.map(|h| format!("withdrawal held: {h}")));
    let degraded_reason = if !withdrawn.is_empty() {
        "MembersWithdrawn"
    } else if withdrawal_held.is_some() {
        "WithdrawalHeld"
    } else if !unhealthy.is_empty() {
        "MembersUnhealthy"
    } else {
        "AllHealthy"
    };
    // True is the bad state here, as Kubernetes' own Degraded conditions.
    conditions.set(
        DEGRADED,
        !degraded.is_empty(),
        degraded_reason,
        &if degraded.is_empty() {
            "every member judged is healthy and in its peers' view".to_string()
        } else {
            degraded.join("; ")
        },
    );

    let all_ready = unreachable.is_empty()
        && withdrawn.is_empty()
        && claims_ok
        && certs_ok
        && secrets_ok
        && control_planes_ok
        && gateways_ok
        && other_problems.is_empty();
    let (ready_reason, ready_detail) = if all_ready {
        ("Ready", String::new())
    } else if !unreachable.is_empty() {
        ("MembersUnreachable", unreachable.join("; "))
    } else if !claims_ok {
        ("ClusterClaimedElsewhere", claim_problems.join("; "))
    } else if !certs_ok {
        (certs_reason, certs_message.clone())
    } else if !secrets_ok {
        ("RemoteSecretsNotReady", remote_problems.join("; "))
    } else if !control_planes_ok {
        (
            "ControlPlanesNotReady",
            member_problems(reports.iter(), |r| r.control_plane_problem.clone()).join("; "),
        )
    } else if !gateways_ok {
        (
            "GatewaysNotReady",
            member_problems(reports.iter(), |r| r.gateway_problem.clone()).join("; "),
        )
    } else if !withdrawn.is_empty() {
        (
            "MembersWithdrawn",
            format!("withdrawn from peers: {}", withdrawn.join(", ")),
        )
    } else {
        ("MembersNotReady", other_problems.join("; "))
    };
    let ready_message = if ready_detail.is_empty() {
        format!("{ready}/{in_spec} members ready")
    } else {
        format!("{ready}/{in_spec} members ready; {ready_detail}")
    };
    conditions.set(READY, all_ready, ready_reason, &ready_message);

    let members: Vec<MemberStatus> = reports
        .into_iter()
        .map(|r| {
            let ready = r.is_ready();
            let last_error = r.problems().next().cloned();
            MemberStatus {
                ready,
                last_error,
                ..r.status
            }
        })
        .collect();
    let (exposed, reason, message) = exposure(&members, fleet.kept_secrets);
    conditions.set(CREDENTIALS_EXPOSED, exposed, reason, &message);
    MeshFederationStatus {
        observed_generation: generation,
        conditions: conditions.into_vec(),
        member_count: in_spec as i32,
        ready_members: ready as i32,
        root: root.ok(),
        ca,
        control_plane: fleet.rollout.clone(),
        members,
    }
}

/// "member: problem" for every report with one; unreachable members count
/// as "unreachable".
fn member_problems<'a>(
    reports: impl Iterator<Item = &'a MemberReport>,
    problem: impl Fn(&MemberReport) -> Option<String>,
) -> Vec<String> {
    reports
        .filter_map(|r| {
            let p =
                problem(r).or_else(|| r.unreachable.as_ref().map(|_| "unreachable".to_string()))?;
            Some(format!("{}: {p}", r.status.name))
        })
        .collect()
}

/// Builds conditions, carrying `lastTransitionTime` over from the previous status.
struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: Timestamp,
    out: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    fn new(
        previous: Option<&'a MeshFederationStatus>,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Self {
        let previous = previous.map_or(&[][..], |s| s.conditions.as_slice());
        Self {
            previous,
            generation,
            now,
            out: Vec::new(),
        }
    }

    /// Sets `type_` to True when `value` (True is not always good: Degraded).
    fn set(&mut self, type_: &str, value: bool, reason: &str, message: &str) {
        let status = if value { "True" } else { "False" };
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(self.now), |c| c.last_transition_time.clone());
        self.out.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time,
        });
    }

    fn into_vec(self) -> Vec<Condition> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn healthy(name: &str) -> MemberReport {
        let mut r = MemberReport::new(name);
        r.status.reachable = true;
        r.status.remote_secrets_expected = 2;
        r.status.remote_secrets_present = 2;
        r
    }

    fn root() -> Result<CertificateStatus, String> {
        Ok(CertificateStatus {
            serial: "0a".into(),
            not_after: Time(t("2036-01-01T00:00:00Z")),
        })
    }

    fn condition<'a>(s: &'a MeshFederationStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn all_healthy_is_ready() {
        let s = build_status(
            Some(3),
            vec![healthy("a"), healthy("b"), healthy("c")],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        for type_ in [
            READY,
            MEMBERS_REACHABLE,
            CERTIFICATES_READY,
            REMOTE_SECRETS_READY,
        ] {
            let c = condition(&s, type_);
            assert_eq!(c.status, "True", "{type_}: {}", c.message);
            assert_eq!(c.observed_generation, Some(3));
        }
        assert_eq!(condition(&s, READY).message, "3/3 members ready");
        assert_eq!((s.member_count, s.ready_members), (3, 3));
        assert!(s.members.iter().all(|m| m.ready && m.last_error.is_none()));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn unreachable_member_is_named_and_others_stay_ready() {
        let mut down = healthy("b");
        down.status.reachable = false;
        down.unreachable = Some("connection refused".into());
        let s = build_status(
            Some(1),
            vec![healthy("a"), down, healthy("c")],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        let reach = condition(&s, MEMBERS_REACHABLE);
        assert_eq!(
            (reach.status.as_str(), reach.reason.as_str()),
            ("False", "MembersUnreachable")
        );
        assert_eq!(reach.message, "b: connection refused");
        let ready = condition(&s, READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "MembersUnreachable");
        assert!(
            ready.message.starts_with("2/3 members ready"),
            "{}",
            ready.message
        );
        assert_eq!(s.ready_members, 2);
        let b = s.members.iter().find(|m| m.name == "b").unwrap();
        assert!(!b.ready);
        assert_eq!(b.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn foreign_cacerts_fails_certificates_with_the_members_message() {
        let mut a = healthy("a");
        a.certificate_problem = Some("istio-system/cacerts was not created by meshfed".into());
        let s = build_status(
            None,
            vec![a, healthy("b")],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        let c = condition(&s, CERTIFICATES_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "IntermediatesNotReady")
        );
        assert!(
            c.message
                .contains("a: istio-system/cacerts was not created by meshfed")
        );
        assert_eq!(condition(&s, READY).reason, "IntermediatesNotReady");
        assert_eq!(condition(&s, REMOTE_SECRETS_READY).status, "True");
    }

    #[test]
    fn missing_root_is_reported() {
        let s = build_status(
            None,
            vec![healthy("a")],
            Err("Secret meshfed/x not found".into()),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        let c = condition(&s, CERTIFICATES_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "RootUnavailable")
        );
        assert_eq!(condition(&s, READY).status, "False");
        assert!(s.root.is_none());
    }

    #[test]
    fn remote_secret_problems_and_leaving_members() {
        let mut a = healthy("a");
        a.remote_secret_problems
            .push("istio-remote-secret-b: token for b not refreshed".into());
        let mut gone = MemberReport::new("old");
        gone.status.leaving = true;
        gone.status.reachable = true;
        let s = build_status(
            None,
            vec![a, healthy("b"), gone],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            s.member_count, 2,
            "leaving members are not counted as members"
        );
        let c = condition(&s, REMOTE_SECRETS_READY);
        assert_eq!(c.status, "False");
        assert!(c.message.contains("a: istio-remote-secret-b"));
        let mut a2 = healthy("a");
        a2.status.name = "a".into();
        let mut gone2 = MemberReport::new("old");
        gone2.status.leaving = true;
        let s2 = build_status(
            None,
            vec![a2, healthy("b"), gone2],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        let ready = condition(&s2, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "MembersNotReady")
        );
        assert!(ready.message.contains("old: leaving the federation"));
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = build_status(
            Some(1),
            vec![healthy("a")],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        let again = build_status(
            Some(1),
            vec![healthy("a")],
            root(),
            FleetFacts::default(),
            Some(&first),
            t("2026-01-01T01:00:00Z"),
        );
        assert_eq!(
            first, again,
            "an unchanged world gives a byte-identical status"
        );
        let mut down = healthy("a");
        down.unreachable = Some("timeout".into());
        let flipped = build_status(
            Some(1),
            vec![down],
            root(),
            FleetFacts::default(),
            Some(&again),
            t("2026-01-01T02:00:00Z"),
        );
        assert_eq!(
            condition(&flipped, READY).last_transition_time,
            Time(t("2026-01-01T02:00:00Z"))
        );
        assert_eq!(
            condition(&flipped, CERTIFICATES_READY).last_transition_time,
            Time(t("2026-01-01T02:00:00Z")),
            "unreachable means certificates cannot be confirmed"
        );
    }

    fn member(name: &str) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            ..MemberStatus::default()
        }
    }

    #[test]
    fn the_operators_cluster_as_a_member_exposes_what_the_operator_keeps() {
        let kept = [
            "meshfed-system/prod-root-ca".to_string(),
            "meshfed-system/west-kubeconfig".to_string(),
        ];
        let mut host = member("east");
        host.operator_cluster = true;
        let (exposed, reason, message) = exposure(&[host.clone(), member("west")], &kept);
        assert!(exposed);
        assert_eq!(reason, "OperatorClusterIsMember");
        for part in [
            "member east",
            "meshfed-system/prod-root-ca",
            "meshfed-system/west-kubeconfig",
            "not a member",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let (exposed, reason, _) = exposure(&[member("east"), member("west")], &kept);
        assert!(!exposed, "the recommended topology");
        assert_eq!(reason, "NoneFound");
        let mut leaving = host.clone();
        leaving.leaving = true;
        assert!(
            !exposure(&[leaving], &kept).0,
            "a member on its way out no longer counts"
        );
    }

    #[test]
    fn users_legacy_token_secrets_are_reported_by_member() {
        let mut west = member("west");
        west.readable_token_secrets = vec!["ci/deployer-token".into()];
        let (exposed, reason, message) = exposure(&[member("east"), west.clone()], &[]);
        assert!(exposed);
        assert_eq!(reason, "ReadableTokenSecrets");
        assert!(message.contains("west (ci/deployer-token)"), "{message}");
        let mut host = member("east");
        host.operator_cluster = true;
        let (_, reason, message) = exposure(&[host, west], &["ns/root".into()]);
        assert_eq!(reason, "OperatorClusterIsMember", "the worse finding leads");
        assert!(
            message.contains("ci/deployer-token"),
            "and the other is kept: {message}"
        );
    }

    #[test]
    fn exposure_is_a_condition_of_the_status() {
        let kept = ["ns/prod-root-ca".to_string()];
        let mut host = healthy("a");
        host.status.operator_cluster = true;
        let s = build_status(
            Some(1),
            vec![host, healthy("b")],
            root(),
            FleetFacts {
                kept_secrets: &kept,
                ..FleetFacts::default()
            },
            None,
            t("2026-01-01T00:00:00Z"),
        );
        let c = condition(&s, CREDENTIALS_EXPOSED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "OperatorClusterIsMember")
        );
        assert_eq!(
            condition(&s, READY).status,
            "True",
            "a warning, not an outage"
        );
    }
}
