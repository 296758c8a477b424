//! Pure status aggregation: member reports in, `MeshFederationStatus` out.
//! Every condition type meshfed sets is defined here.
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::report::{MemberReport, MemberRun};
use super::rotation::{CaRecord, Periods};
use crate::api::{
    CaStatus, CertificateStatus, DepartedIntermediateStatus, MemberStatus, MeshFederationSpec,
    MeshFederationStatus, RolloutStatus,
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
        departed_intermediates: record
            .departed
            .iter()
            .map(|(member, d)| DepartedIntermediateStatus {
                member: member.clone(),
                serial: d.serial.clone(),
                not_after: Time(d.not_after),
            })
            .collect(),
    }
}

/// Something meshfed keeps, or a member holds, is readable with a peer's
/// reader token (True is bad).
pub const CREDENTIALS_EXPOSED: &str = "CredentialsExposed";

/// Why a condition is what it is: the variant's name is the condition's
/// `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionReason {
    Ready,
    MembersNotReady,
    AllReachable,
    MembersUnreachable,
    ClustersOwned,
    ClusterClaimedElsewhere,
    IntermediatesIssued,
    IntermediatesNotReady,
    RootUnavailable,
    RemoteSecretsCurrent,
    RemoteSecretsNotReady,
    IstiodAvailable,
    ControlPlanesNotReady,
    GatewaysAvailable,
    GatewaysNotReady,
    Complete,
    RollingOut,
    Paused,
    Halted,
    AllHealthy,
    MembersUnhealthy,
    MembersWithdrawn,
    WithdrawalHeld,
    NoneFound,
    OperatorClusterIsMember,
    ReadableTokenSecrets,
}

impl ConditionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::MembersNotReady => "MembersNotReady",
            Self::AllReachable => "AllReachable",
            Self::MembersUnreachable => "MembersUnreachable",
            Self::ClustersOwned => "ClustersOwned",
            Self::ClusterClaimedElsewhere => "ClusterClaimedElsewhere",
            Self::IntermediatesIssued => "IntermediatesIssued",
            Self::IntermediatesNotReady => "IntermediatesNotReady",
            Self::RootUnavailable => "RootUnavailable",
            Self::RemoteSecretsCurrent => "RemoteSecretsCurrent",
            Self::RemoteSecretsNotReady => "RemoteSecretsNotReady",
            Self::IstiodAvailable => "IstiodAvailable",
            Self::ControlPlanesNotReady => "ControlPlanesNotReady",
            Self::GatewaysAvailable => "GatewaysAvailable",
            Self::GatewaysNotReady => "GatewaysNotReady",
            Self::Complete => "Complete",
            Self::RollingOut => "RollingOut",
            Self::Paused => "Paused",
            Self::Halted => "Halted",
            Self::AllHealthy => "AllHealthy",
            Self::MembersUnhealthy => "MembersUnhealthy",
            Self::MembersWithdrawn => "MembersWithdrawn",
            Self::WithdrawalHeld => "WithdrawalHeld",
            Self::NoneFound => "NoneFound",
            Self::OperatorClusterIsMember => "OperatorClusterIsMember",
            Self::ReadableTokenSecrets => "ReadableTokenSecrets",
        }
    }

    /// The reason for a rollout in `phase` (`status.controlPlane.phase`).
    fn of_rollout(phase: &str) -> Self {
        match phase {
            "Complete" => Self::Complete,
            "Paused" => Self::Paused,
            "Halted" => Self::Halted,
            _ => Self::RollingOut,
        }
    }
}

/// One condition's outcome: whether it is True, why, and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub status: bool,
    pub reason: ConditionReason,
    pub message: String,
}

impl Verdict {
    fn new(status: bool, reason: ConditionReason, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }

    /// True with `ok`, or False with `failed` and the problems joined.
    fn from_problems(
        problems: &[String],
        ok: (ConditionReason, String),
        failed: ConditionReason,
    ) -> Self {
        if problems.is_empty() {
            Self::new(true, ok.0, ok.1)
        } else {
            Self::new(false, failed, problems.join("; "))
        }
    }
}

/// What the operator can tell about credentials peers may read
/// (`CredentialsExposed`; True is bad).
pub fn exposure(members: &[MemberStatus], kept_secrets: &[String]) -> Verdict {
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
        Verdict::new(true, ConditionReason::OperatorClusterIsMember, message)
    } else if !legacy.is_empty() {
        Verdict::new(
            true,
            ConditionReason::ReadableTokenSecrets,
            format!("members hold {legacy_text}"),
        )
    } else {
        Verdict::new(
            false,
            ConditionReason::NoneFound,
            "nothing meshfed keeps is readable with a peer's reader token, and no member holds long-lived ServiceAccount token Secrets",
        )
    }
}

/// The members' problems by concern, each as "member: problem": what every
/// condition is computed from.
struct Findings<'a> {
    reports: &'a [MemberReport],
    /// Members in the spec (not leaving).
    in_spec: usize,
    ready: usize,
    unreachable: Vec<String>,
    claims: Vec<String>,
    /// Whether a member was refused because it is the operator's cluster.
    operator_cluster_refused: bool,
    certificates: Vec<String>,
    remote_secrets: Vec<String>,
    other: Vec<String>,
    /// "member (reason: message)" of members withdrawn from their peers.
    withdrawn: Vec<String>,
    /// The same of unhealthy members not withdrawn.
    unhealthy: Vec<String>,
}

impl<'a> Findings<'a> {
    fn of(reports: &'a [MemberReport]) -> Self {
        let named = |r: &MemberReport, p: &str| format!("{}: {p}", r.status.name);
        let in_spec = || reports.iter().filter(|r| !r.status.leaving);
        // Members whose cluster is their own: the rest is reported as a claim problem.
        let owned = || in_spec().filter(|r| r.claim_problem.is_none());
        let health = |withdrawn: bool| -> Vec<String> {
            in_spec()
                .filter_map(|r| {
                    let h = r.status.health.as_ref()?;
                    let counted = if withdrawn {
                        h.withdrawn_since.is_some()
                    } else {
                        !h.healthy && h.withdrawn_since.is_none()
                    };
                    counted.then(|| format!("{} ({}: {})", r.status.name, h.reason, h.message))
                })
                .collect()
        };
        Self {
            reports,
            in_spec: in_spec().count(),
            ready: reports.iter().filter(|r| r.is_ready()).count(),
            unreachable: reports
                .iter()
                .filter_map(|r| Some(named(r, r.unreachable.as_ref()?)))
                .collect(),
            claims: in_spec()
                .filter_map(|r| Some(named(r, r.claim_problem.as_ref()?)))
                .collect(),
            operator_cluster_refused: in_spec()
                .any(|r| r.claim_problem.is_some() && r.status.operator_cluster),
            certificates: owned()
                .filter_map(|r| match (&r.certificate_problem, &r.unreachable) {
                    (Some(p), _) => Some(named(r, p)),
                    (None, Some(_)) => Some(named(r, "unreachable")),
                    _ => None,
                })
                .collect(),
            remote_secrets: owned()
                .flat_map(|r| {
                    let unreachable = r.unreachable.as_ref().map(|_| "unreachable");
                    r.remote_secret_problems
                        .iter()
                        .map(String::as_str)
                        .chain(unreachable)
                        .map(move |p| named(r, p))
                })
                .collect(),
            other: reports
                .iter()
                .flat_map(|r| {
                    let leaving = r.status.leaving.then_some("leaving the federation");
                    r.other_problems
                        .iter()
                        .map(String::as_str)
                        .chain(leaving)
                        .map(move |p| named(r, p))
                })
                .collect(),
            withdrawn: health(true),
            unhealthy: health(false),
        }
    }

    fn in_spec(&self) -> impl Iterator<Item = &'a MemberReport> {
        self.reports.iter().filter(|r| !r.status.leaving)
    }
}

fn members_reachable(f: &Findings) -> Verdict {
    Verdict::from_problems(
        &f.unreachable,
        (
            ConditionReason::AllReachable,
            format!("all {} members reachable", f.in_spec),
        ),
        ConditionReason::MembersUnreachable,
    )
}

fn clusters_claimed(f: &Findings) -> Verdict {
    Verdict::from_problems(
        &f.claims,
        (
            ConditionReason::ClustersOwned,
            format!("each of the {} members has a cluster of its own", f.in_spec),
        ),
        if f.operator_cluster_refused {
            ConditionReason::OperatorClusterIsMember
        } else {
            ConditionReason::ClusterClaimedElsewhere
        },
    )
}

fn certificates_ready(f: &Findings, root: &Result<CertificateStatus, String>) -> Verdict {
    match root {
        Err(e) => Verdict::new(false, ConditionReason::RootUnavailable, e.clone()),
        Ok(root) => Verdict::from_problems(
            &f.certificates,
            (
                ConditionReason::IntermediatesIssued,
                format!("{} intermediates signed by root {}", f.in_spec, root.serial),
            ),
            ConditionReason::IntermediatesNotReady,
        ),
    }
}

fn remote_secrets_ready(f: &Findings) -> Verdict {
    Verdict::from_problems(
        &f.remote_secrets,
        (
            ConditionReason::RemoteSecretsCurrent,
            "every member holds a current remote secret for each of its peers".into(),
        ),
        ConditionReason::RemoteSecretsNotReady,
    )
}

/// Only when some member reports on a control plane.
fn control_planes_ready(f: &Findings) -> Option<Verdict> {
    f.in_spec()
        .any(|r| r.status.control_plane_ready.is_some())
        .then(|| {
            Verdict::from_problems(
                &member_problems(f.in_spec(), |r| r.control_plane_problem.clone()),
                (
                    ConditionReason::IstiodAvailable,
                    format!("istiod available in all {} members", f.in_spec),
                ),
                ConditionReason::ControlPlanesNotReady,
            )
        })
}

/// Only while meshfed rolls out a version (Managed).
fn control_planes_up_to_date(f: &Findings, rollout: Option<&RolloutStatus>) -> Option<Verdict> {
    let rollout = rollout?;
    let in_spec = f.in_spec;
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
    Some(Verdict::new(
        complete,
        ConditionReason::of_rollout(&rollout.phase),
        message,
    ))
}

/// Only when some member should have an east-west gateway.
fn gateways_ready(f: &Findings) -> Option<Verdict> {
    let expected = || f.in_spec().filter(|r| r.gateway_expected);
    expected().next().is_some().then(|| {
        Verdict::from_problems(
            &member_problems(expected(), |r| r.gateway_problem.clone()),
            (
                ConditionReason::GatewaysAvailable,
                "every east-west gateway is available and has an address".into(),
            ),
            ConditionReason::GatewaysNotReady,
        )
    })
}

/// True is the bad state here, as in Kubernetes' own Degraded conditions.
fn degraded(f: &Findings, withdrawal_held: Option<&str>) -> Verdict {
    let mut said = Vec::new();
    if !f.withdrawn.is_empty() {
        said.push(format!("withdrawn from peers: {}", f.withdrawn.join(", ")));
    }
    if !f.unhealthy.is_empty() {
        said.push(format!("unhealthy: {}", f.unhealthy.join(", ")));
    }
    said.extend(withdrawal_held.map(|h| format!("withdrawal held: {h}")));
    let reason = if !f.withdrawn.is_empty() {
        ConditionReason::MembersWithdrawn
    } else if withdrawal_held.is_some() {
        ConditionReason::WithdrawalHeld
    } else if !f.unhealthy.is_empty() {
        ConditionReason::MembersUnhealthy
    } else {
        ConditionReason::AllHealthy
    };
    if said.is_empty() {
        Verdict::new(
            false,
            reason,
            "every member judged is healthy and in its peers' view",
        )
    } else {
        Verdict::new(true, reason, said.join("; "))
    }
}

/// The summary: True when every member is ready and in its peers' view;
/// otherwise the first failing concern, in the order a person would fix
/// them, gives the reason.
fn ready(f: &Findings, parts: &Parts) -> Verdict {
    let failing = |v: &Option<Verdict>| v.as_ref().is_some_and(|v| !v.status);
    let (reason, detail) = if !f.unreachable.is_empty() {
        (
            ConditionReason::MembersUnreachable,
            f.unreachable.join("; "),
        )
    } else if !parts.clusters.status {
        (parts.clusters.reason, f.claims.join("; "))
    } else if !parts.certificates.status {
        (
            parts.certificates.reason,
            parts.certificates.message.clone(),
        )
    } else if !parts.remote_secrets.status {
        (
            ConditionReason::RemoteSecretsNotReady,
            f.remote_secrets.join("; "),
        )
    } else if failing(&parts.control_planes) {
        (
            ConditionReason::ControlPlanesNotReady,
            member_problems(f.reports.iter(), |r| r.control_plane_problem.clone()).join("; "),
        )
    } else if failing(&parts.gateways) {
        (
            ConditionReason::GatewaysNotReady,
            member_problems(f.reports.iter(), |r| r.gateway_problem.clone()).join("; "),
        )
    } else if !f.withdrawn.is_empty() {
        (
            ConditionReason::MembersWithdrawn,
            format!("withdrawn from peers: {}", f.withdrawn.join(", ")),
        )
    } else if !f.other.is_empty() {
        (ConditionReason::MembersNotReady, f.other.join("; "))
    } else {
        (ConditionReason::Ready, String::new())
    };
    let counts = format!("{}/{} members ready", f.ready, f.in_spec);
    let message = if detail.is_empty() {
        counts
    } else {
        format!("{counts}; {detail}")
    };
    Verdict::new(reason == ConditionReason::Ready, reason, message)
}

/// The verdicts `Ready` sums up.
struct Parts {
    clusters: Verdict,
    certificates: Verdict,
    remote_secrets: Verdict,
    control_planes: Option<Verdict>,
    gateways: Option<Verdict>,
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
    let f = Findings::of(&reports);
    let parts = Parts {
        clusters: clusters_claimed(&f),
        certificates: certificates_ready(&f, &root),
        remote_secrets: remote_secrets_ready(&f),
        control_planes: control_planes_ready(&f),
        gateways: gateways_ready(&f),
    };
    let mut conditions = Conditions::new(previous, generation, now);
    conditions.set(MEMBERS_REACHABLE, members_reachable(&f));
    conditions.set(CLUSTERS_CLAIMED, parts.clusters.clone());
    conditions.set(CERTIFICATES_READY, parts.certificates.clone());
    conditions.set(REMOTE_SECRETS_READY, parts.remote_secrets.clone());
    if let Some(v) = parts.control_planes.clone() {
        conditions.set(CONTROL_PLANES_READY, v);
    }
    if let Some(v) = control_planes_up_to_date(&f, fleet.rollout.as_ref()) {
        conditions.set(CONTROL_PLANES_UP_TO_DATE, v);
    }
    if let Some(v) = parts.gateways.clone() {
        conditions.set(GATEWAYS_READY, v);
    }
    conditions.set(DEGRADED, degraded(&f, fleet.withdrawal_held));
    conditions.set(READY, ready(&f, &parts));
    let (in_spec, ready_members) = (f.in_spec, f.ready);
    // A refused member is not wired to any peer: nothing of it is exposed.
    let refused: Vec<bool> = reports.iter().map(|r| r.claim_problem.is_some()).collect();
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
    let wired: Vec<MemberStatus> = members
        .iter()
        .zip(&refused)
        .filter(|(_, refused)| !**refused)
        .map(|(m, _)| m.clone())
        .collect();
    conditions.set(CREDENTIALS_EXPOSED, exposure(&wired, fleet.kept_secrets));
    MeshFederationStatus {
        observed_generation: generation,
        conditions: conditions.into_vec(),
        member_count: in_spec as i32,
        ready_members: ready_members as i32,
        root: root.ok(),
        ca: fleet.ca,
        control_plane: fleet.rollout,
        members,
    }
}

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

    /// Sets `type_` as `verdict` says (True is not always good: Degraded).
    fn set(&mut self, type_: &str, verdict: Verdict) {
        let Verdict {
            status,
            reason,
            message,
        } = verdict;
        let status = if status { "True" } else { "False" };
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(self.now), |c| c.last_transition_time.clone());
        self.out.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.as_str().into(),
            message,
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
        let Verdict {
            status: exposed,
            reason,
            message,
        } = exposure(&[host.clone(), member("west")], &kept);
        assert!(exposed);
        assert_eq!(reason, ConditionReason::OperatorClusterIsMember);
        for part in [
            "member east",
            "meshfed-system/prod-root-ca",
            "meshfed-system/west-kubeconfig",
            "not a member",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let Verdict {
            status: exposed,
            reason,
            message: _,
        } = exposure(&[member("east"), member("west")], &kept);
        assert!(!exposed, "the recommended topology");
        assert_eq!(reason, ConditionReason::NoneFound);
        let mut leaving = host.clone();
        leaving.leaving = true;
        assert!(
            !exposure(&[leaving], &kept).status,
            "a member on its way out no longer counts"
        );
    }

    #[test]
    fn users_legacy_token_secrets_are_reported_by_member() {
        let mut west = member("west");
        west.readable_token_secrets = vec!["ci/deployer-token".into()];
        let Verdict {
            status: exposed,
            reason,
            message,
        } = exposure(&[member("east"), west.clone()], &[]);
        assert!(exposed);
        assert_eq!(reason, ConditionReason::ReadableTokenSecrets);
        assert!(message.contains("west (ci/deployer-token)"), "{message}");
        let mut host = member("east");
        host.operator_cluster = true;
        let Verdict {
            status: _,
            reason,
            message,
        } = exposure(&[host, west], &["ns/root".into()]);
        assert_eq!(
            reason,
            ConditionReason::OperatorClusterIsMember,
            "the worse finding leads"
        );
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

    #[test]
    fn a_refused_operator_cluster_is_named_and_exposes_nothing() {
        let kept = ["ns/prod-root-ca".to_string()];
        let mut host = healthy("a");
        host.status.operator_cluster = true;
        host.claim_problem = Some("this is the operator's own cluster".into());
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
        for kind in [CLUSTERS_CLAIMED, READY] {
            let c = condition(&s, kind);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "OperatorClusterIsMember"),
                "{kind}"
            );
            assert!(c.message.contains("a: this is the operator's own cluster"));
        }
        assert_eq!(condition(&s, CREDENTIALS_EXPOSED).status, "False");
        let mut elsewhere = healthy("a");
        elsewhere.claim_problem = Some("member b holds it".into());
        let s = build_status(
            Some(1),
            vec![elsewhere, healthy("b")],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            condition(&s, CLUSTERS_CLAIMED).reason,
            "ClusterClaimedElsewhere"
        );
    }
}
