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
/// Every condition type the status carries (the reference lists each).
pub const CONDITION_TYPES: [&str; 10] = [
    READY,
    CLUSTERS_CLAIMED,
    MEMBERS_REACHABLE,
    CERTIFICATES_READY,
    REMOTE_SECRETS_READY,
    CONTROL_PLANES_READY,
    GATEWAYS_READY,
    CONTROL_PLANES_UP_TO_DATE,
    DEGRADED,
    CREDENTIALS_EXPOSED,
];

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
    /// meshfed applies the gateways (Managed, or External with
    /// spec.controlPlane.version): one that does not serve yet is starting.
    pub gateways_applied: bool,
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
    /// The stored spec cannot be decoded (a value stored before the CRD
    /// refused it): set aside, the others go on (Ready).
    SpecUnreadable,
    MembersNotReady,
    /// A member in the spec has no finished run yet (Ready).
    MembersNotReconciled,
    /// A member that left the spec waits for its cleanup (Ready).
    MembersLeaving,
    AllReachable,
    /// Every member answered, but a token meshfed may not renew has a third
    /// of its lifetime left (MembersReachable stays True).
    CredentialsExpiring,
    MembersUnreachable,
    ClustersOwned,
    ClusterClaimedElsewhere,
    IntermediatesIssued,
    IntermediatesNotReady,
    RootUnavailable,
    /// The key of the rotation phase's signing root is unavailable; new
    /// intermediates wait for the phase that signs with the new root.
    IntermediatesWaitForRotation,
    RemoteSecretsCurrent,
    RemoteSecretsNotReady,
    IstiodAvailable,
    ControlPlanesNotReady,
    /// Managed: meshfed applied the control plane and istiod is not
    /// available yet.
    ControlPlanesStarting,
    GatewaysAvailable,
    GatewaysNotReady,
    /// meshfed applied the east-west gateways and one does not serve yet.
    GatewaysStarting,
    Complete,
    RollingOut,
    Paused,
    Halted,
    AllHealthy,
    MembersUnhealthy,
    MembersWithdrawn,
    /// Every withdrawn member is healthy again: failover restores it once
    /// settlePeriod has passed (Ready).
    MembersRestoring,
    WithdrawalHeld,
    NoneFound,
    OperatorClusterIsMember,
    ReadableTokenSecrets,
}

impl ConditionReason {
    /// Every reason, in declaration order (a new variant goes here too:
    /// docs/reference.md must describe it).
    pub const ALL: [ConditionReason; 34] = [
        Self::Ready,
        Self::SpecUnreadable,
        Self::MembersNotReady,
        Self::MembersNotReconciled,
        Self::MembersLeaving,
        Self::AllReachable,
        Self::CredentialsExpiring,
        Self::MembersUnreachable,
        Self::ClustersOwned,
        Self::ClusterClaimedElsewhere,
        Self::IntermediatesIssued,
        Self::IntermediatesNotReady,
        Self::RootUnavailable,
        Self::IntermediatesWaitForRotation,
        Self::RemoteSecretsCurrent,
        Self::RemoteSecretsNotReady,
        Self::IstiodAvailable,
        Self::ControlPlanesNotReady,
        Self::ControlPlanesStarting,
        Self::GatewaysAvailable,
        Self::GatewaysNotReady,
        Self::GatewaysStarting,
        Self::Complete,
        Self::RollingOut,
        Self::Paused,
        Self::Halted,
        Self::AllHealthy,
        Self::MembersUnhealthy,
        Self::MembersWithdrawn,
        Self::MembersRestoring,
        Self::WithdrawalHeld,
        Self::NoneFound,
        Self::OperatorClusterIsMember,
        Self::ReadableTokenSecrets,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::SpecUnreadable => "SpecUnreadable",
            Self::MembersNotReady => "MembersNotReady",
            Self::MembersNotReconciled => "MembersNotReconciled",
            Self::MembersLeaving => "MembersLeaving",
            Self::AllReachable => "AllReachable",
            Self::CredentialsExpiring => "CredentialsExpiring",
            Self::MembersUnreachable => "MembersUnreachable",
            Self::ClustersOwned => "ClustersOwned",
            Self::ClusterClaimedElsewhere => "ClusterClaimedElsewhere",
            Self::IntermediatesIssued => "IntermediatesIssued",
            Self::IntermediatesNotReady => "IntermediatesNotReady",
            Self::RootUnavailable => "RootUnavailable",
            Self::IntermediatesWaitForRotation => "IntermediatesWaitForRotation",
            Self::RemoteSecretsCurrent => "RemoteSecretsCurrent",
            Self::RemoteSecretsNotReady => "RemoteSecretsNotReady",
            Self::IstiodAvailable => "IstiodAvailable",
            Self::ControlPlanesNotReady => "ControlPlanesNotReady",
            Self::ControlPlanesStarting => "ControlPlanesStarting",
            Self::GatewaysAvailable => "GatewaysAvailable",
            Self::GatewaysNotReady => "GatewaysNotReady",
            Self::GatewaysStarting => "GatewaysStarting",
            Self::Complete => "Complete",
            Self::RollingOut => "RollingOut",
            Self::Paused => "Paused",
            Self::Halted => "Halted",
            Self::AllHealthy => "AllHealthy",
            Self::MembersUnhealthy => "MembersUnhealthy",
            Self::MembersWithdrawn => "MembersWithdrawn",
            Self::MembersRestoring => "MembersRestoring",
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

/// Every reason the `Ready` condition can carry, in the order [`ready`]
/// tries them: the first failing concern names it. Argo CD's health check
/// (deploy/argocd/health.lua) has a fixture for each (a unit test below
/// and e2e/tests/packaging.rs check), and shows a False one as
/// Progressing when meshfed clears it by itself, Degraded when it waits
/// for a person.
pub const READY_REASONS: &[ConditionReason] = &[
    // True.
    ConditionReason::Ready,
    // A person: credentials, network or RBAC; or a member's cleanup after
    // leaving failed.
    ConditionReason::MembersUnreachable,
    // A person: the operator's cluster is a member, or a cluster is
    // another member's.
    ConditionReason::OperatorClusterIsMember,
    ConditionReason::ClusterClaimedElsewhere,
    // A person: the root Secret is missing or not a usable CA.
    ConditionReason::RootUnavailable,
    // By itself: the rotation reaches the phase that signs with the new root.
    ConditionReason::IntermediatesWaitForRotation,
    // By itself: retried every run (a foreign cacerts needs a person).
    ConditionReason::IntermediatesNotReady,
    ConditionReason::RemoteSecretsNotReady,
    // A person: failover took a member that is still unhealthy out of its
    // peers' view.
    ConditionReason::MembersWithdrawn,
    // A person: meshfed could not apply the control plane (Managed), or
    // your istiod is not available (External).
    ConditionReason::ControlPlanesNotReady,
    // By itself: istiod starts.
    ConditionReason::ControlPlanesStarting,
    // A person: gateways you installed (External without a version) do
    // not serve.
    ConditionReason::GatewaysNotReady,
    // By itself: the gateways meshfed applied start (pods, load balancer).
    ConditionReason::GatewaysStarting,
    // By itself: withdrawn members are healthy again and come back after
    // settlePeriod.
    ConditionReason::MembersRestoring,
    // A person: a member's problem named in its lastError.
    ConditionReason::MembersNotReady,
    // By itself: a member's first run, a departed member's cleanup.
    ConditionReason::MembersNotReconciled,
    ConditionReason::MembersLeaving,
    // A person: the stored spec cannot be decoded; set by the controller
    // (controller/unreadable.rs), never by `ready`.
    ConditionReason::SpecUnreadable,
];

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
    /// Problems of members in the spec that ran, not said elsewhere.
    other: Vec<String>,
    /// Members in the spec whose worker has not finished a run yet.
    not_reconciled: Vec<String>,
    /// Members that left the spec, their cleanup waiting (a failed one is
    /// in `unreachable`).
    leaving: Vec<String>,
    /// "member (reason: message)" of members withdrawn from their peers.
    withdrawn: Vec<String>,
    /// Names of the withdrawn members healthy again (failover restores
    /// them after settlePeriod).
    restoring: Vec<String>,
    /// The same of unhealthy members not withdrawn.
    unhealthy: Vec<String>,
}

/// Whether the member's worker finished a run: every run ends with the
/// member reached or with why it was not, so a report that says neither
/// stands in for a member not reconciled yet.
fn has_run(r: &MemberReport) -> bool {
    r.status.reachable || r.unreachable.is_some()
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
            other: in_spec()
                .filter(|r| has_run(r))
                .flat_map(|r| r.other_problems.iter().map(move |p| named(r, p)))
                .collect(),
            not_reconciled: in_spec()
                .filter(|r| !has_run(r))
                .map(|r| r.status.name.clone())
                .collect(),
            leaving: reports
                .iter()
                .filter(|r| r.status.leaving && r.unreachable.is_none())
                .map(|r| match r.other_problems.as_slice() {
                    [] => named(r, "leaving the federation"),
                    problems => named(r, &problems.join("; ")),
                })
                .collect(),
            withdrawn: health(true),
            restoring: in_spec()
                .filter(|r| {
                    r.status
                        .health
                        .as_ref()
                        .is_some_and(|h| h.healthy && h.withdrawn_since.is_some())
                })
                .map(|r| r.status.name.clone())
                .collect(),
            unhealthy: health(false),
        }
    }

    fn in_spec(&self) -> impl Iterator<Item = &'a MemberReport> {
        self.reports.iter().filter(|r| !r.status.leaving)
    }
}

/// Reachable or not; when all are, whether a credential meshfed may not
/// renew runs out soon (still True: nothing is wrong yet).
fn members_reachable(f: &Findings) -> Verdict {
    let all = format!("all {} members reachable", f.in_spec);
    let expiring: Vec<String> = f
        .reports
        .iter()
        .filter(|r| !r.status.leaving)
        .filter_map(|r| {
            let at = r.status.credentials_expiring.as_ref()?;
            Some(format!(
                "{}: the token in its credentials Secret expires at {} and meshfed may not renew it (see the CredentialsExpiring Event)",
                r.status.name, at.0
            ))
        })
        .collect();
    let ok = if expiring.is_empty() {
        (ConditionReason::AllReachable, all)
    } else {
        (
            ConditionReason::CredentialsExpiring,
            format!("{all}; {}", expiring.join("; ")),
        )
    };
    Verdict::from_problems(&f.unreachable, ok, ConditionReason::MembersUnreachable)
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

/// `rotating`: a root rotation is under way (`status.ca.phase`). Without
/// a root then, the CA record is there but the phase's signing key is not
/// (a lost generated root, a root Secret renewed in place): new
/// intermediates wait for the phase that signs with the new root.
fn certificates_ready(
    f: &Findings,
    root: &Result<CertificateStatus, String>,
    rotating: bool,
) -> Verdict {
    match root {
        Err(e) if rotating => Verdict::new(
            false,
            ConditionReason::IntermediatesWaitForRotation,
            e.clone(),
        ),
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

/// Whether the member's istiod is only starting: meshfed applied the
/// control plane (Managed) and read back what runs there (`installed`,
/// which a failed apply never gets to), and istiod is not available yet.
fn istiod_starting(r: &MemberReport) -> bool {
    r.installed.is_some() && r.status.control_plane_ready == Some(false) && r.unreachable.is_none()
}

/// Only when some member reports on a control plane.
fn control_planes_ready(f: &Findings) -> Option<Verdict> {
    f.in_spec()
        .any(|r| r.status.control_plane_ready.is_some())
        .then(|| {
            let starting = f
                .in_spec()
                .filter(|r| r.control_plane_problem.is_some() || r.unreachable.is_some())
                .all(istiod_starting);
            Verdict::from_problems(
                &member_problems(f.in_spec(), |r| r.control_plane_problem.clone()),
                (
                    ConditionReason::IstiodAvailable,
                    format!("istiod available in all {} members", f.in_spec),
                ),
                if starting {
                    ConditionReason::ControlPlanesStarting
                } else {
                    ConditionReason::ControlPlanesNotReady
                },
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
/// `applied`: meshfed applies the gateways; one that does not serve yet is
/// starting (Kubernetes brings up its pods and load balancer), while the
/// gateways of an External install without a version are yours.
fn gateways_ready(f: &Findings, applied: bool) -> Option<Verdict> {
    let expected = || f.in_spec().filter(|r| r.gateway_expected);
    expected().next().is_some().then(|| {
        let starting = applied && expected().all(|r| r.unreachable.is_none());
        Verdict::from_problems(
            &member_problems(expected(), |r| r.gateway_problem.clone()),
            (
                ConditionReason::GatewaysAvailable,
                "every east-west gateway is available and has an address".into(),
            ),
            if starting {
                ConditionReason::GatewaysStarting
            } else {
                ConditionReason::GatewaysNotReady
            },
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
/// them, gives the reason (one of [`READY_REASONS`]).
fn ready(f: &Findings, parts: &Parts) -> Verdict {
    let failing = |v: &Option<Verdict>| v.as_ref().filter(|v| !v.status).map(|v| v.reason);
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
    } else if f.withdrawn.len() > f.restoring.len() {
        // Failover judged it an outage (a gateway that served, gone): ahead
        // of the control planes and gateways, which may only be starting.
        (
            ConditionReason::MembersWithdrawn,
            format!("withdrawn from peers: {}", f.withdrawn.join(", ")),
        )
    } else if let Some(reason) = failing(&parts.control_planes) {
        (
            reason,
            member_problems(f.reports.iter(), |r| r.control_plane_problem.clone()).join("; "),
        )
    } else if let Some(reason) = failing(&parts.gateways) {
        (
            reason,
            member_problems(f.reports.iter(), |r| r.gateway_problem.clone()).join("; "),
        )
    } else if !f.restoring.is_empty() {
        (
            ConditionReason::MembersRestoring,
            format!(
                "healthy again after a withdrawal: {}; restored to peers once spec.failover.withdrawal.settlePeriod has passed",
                f.restoring.join(", ")
            ),
        )
    } else if !f.other.is_empty() {
        (ConditionReason::MembersNotReady, f.other.join("; "))
    } else if !f.not_reconciled.is_empty() {
        (
            ConditionReason::MembersNotReconciled,
            format!("not reconciled yet: {}", f.not_reconciled.join(", ")),
        )
    } else if !f.leaving.is_empty() {
        (ConditionReason::MembersLeaving, f.leaving.join("; "))
    } else {
        (ConditionReason::Ready, String::new())
    };
    debug_assert!(
        READY_REASONS.contains(&reason),
        "{reason:?} is not in READY_REASONS"
    );
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
        certificates: certificates_ready(
            &f,
            &root,
            fleet.ca.as_ref().is_some_and(|ca| ca.phase.is_some()),
        ),
        remote_secrets: remote_secrets_ready(&f),
        control_planes: control_planes_ready(&f),
        gateways: gateways_ready(&f, fleet.gateways_applied),
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
    fn credentials_meshfed_may_not_renew_are_warned_of_while_still_ready() {
        let mut expiring = healthy("b");
        expiring.status.credentials_expiring = Some(Time(t("2026-01-01T06:00:00Z")));
        let s = build_status(
            Some(1),
            vec![healthy("a"), expiring],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        let reachable = condition(&s, MEMBERS_REACHABLE);
        assert_eq!(reachable.status, "True");
        assert_eq!(reachable.reason, "CredentialsExpiring");
        assert!(
            reachable
                .message
                .contains("b: the token in its credentials Secret expires at 2026-01-01T06:00:00Z"),
            "{}",
            reachable.message
        );
        assert_eq!(condition(&s, READY).status, "True", "nothing is wrong yet");
        let mut gone = healthy("a");
        gone.status.reachable = false;
        gone.unreachable = Some("connection refused".into());
        let mut expiring = healthy("b");
        expiring.status.credentials_expiring = Some(Time(t("2026-01-01T06:00:00Z")));
        let s = build_status(
            Some(1),
            vec![gone, expiring],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            condition(&s, MEMBERS_REACHABLE).reason,
            "MembersUnreachable",
            "the worse news wins"
        );
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
            ("False", "MembersLeaving")
        );
        assert!(ready.message.contains("old: leaving the federation"));
    }

    /// The Ready condition of the status of `reports`.
    fn ready_of(
        reports: Vec<MemberReport>,
        root: Result<CertificateStatus, String>,
        fleet: FleetFacts,
    ) -> Condition {
        let s = build_status(
            Some(1),
            reports,
            root,
            fleet,
            None,
            t("2026-01-01T00:00:00Z"),
        );
        condition(&s, READY).clone()
    }

    fn withdrawn(name: &str, healthy: bool) -> MemberReport {
        let mut r = self::healthy(name);
        r.status.health = Some(crate::api::MemberHealth {
            healthy,
            reason: if healthy {
                "Healthy"
            } else {
                "GatewayNotReady"
            }
            .into(),
            message: String::new(),
            withdrawn_since: Some(Time(t("2026-01-01T00:00:00Z"))),
        });
        r
    }

    /// A member whose control plane meshfed manages: `installed` is what
    /// it read back after applying (none when an apply failed).
    fn with_istiod(name: &str, ready: bool, installed: bool) -> MemberReport {
        let mut r = healthy(name);
        r.status.control_plane_ready = Some(ready);
        r.installed = installed.then(Default::default);
        if !ready {
            r.control_plane_problem = Some(if installed {
                "istiod-1-31 Deployment in istio-system is not available".into()
            } else {
                "applying Istio: API error 403: forbidden".into()
            });
        }
        r
    }

    fn with_gateway(name: &str, problem: Option<&str>) -> MemberReport {
        let mut r = with_istiod(name, true, true);
        r.gateway_expected = true;
        r.gateway_problem = problem.map(String::from);
        r
    }

    /// One status for every reason Ready can carry.
    fn every_ready_case() -> Vec<(ConditionReason, Condition)> {
        use ConditionReason as R;
        let rotating = || FleetFacts {
            ca: Some(CaStatus {
                phase: Some("TrustBoth".into()),
                ..CaStatus::default()
            }),
            ..FleetFacts::default()
        };
        let applied = || FleetFacts {
            gateways_applied: true,
            ..FleetFacts::default()
        };
        let unreachable = {
            let mut r = healthy("b");
            r.status.reachable = false;
            r.unreachable = Some("no answer within 10s".into());
            r
        };
        let claimed = |operator_cluster: bool| {
            let mut r = healthy("b");
            r.claim_problem = Some("cluster uid-1 already belongs to member a".into());
            r.status.operator_cluster = operator_cluster;
            r
        };
        let mut cacerts = healthy("b");
        cacerts.certificate_problem = Some("issuing intermediate: API error 409".into());
        let mut secrets = healthy("b");
        secrets
            .remote_secret_problems
            .push("istio-remote-secret-a: minting token in a: API error 500".into());
        let mut other = healthy("b");
        other
            .other_problems
            .push("no CA known for member b's API server".into());
        // As the controller reports a member whose worker has not run.
        let mut new = MemberReport::new("b");
        new.other_problems.push("not reconciled yet".into());
        let mut gone = MemberReport::new("old");
        gone.status.leaving = true;
        gone.other_problems
            .push("cleanup after leaving: waiting for the current members' first run".into());
        let gw = |p| vec![with_gateway("a", None), with_gateway("b", p)];
        let no_gateway = Some("istio-eastwestgateway Service has no address yet");
        let lost = || Err("the key of signing root 0a is gone (its Secret was lost)".into());
        vec![
            (
                R::Ready,
                ready_of(
                    vec![healthy("a"), healthy("b")],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::MembersUnreachable,
                ready_of(
                    vec![healthy("a"), unreachable],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::OperatorClusterIsMember,
                ready_of(
                    vec![healthy("a"), claimed(true)],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::ClusterClaimedElsewhere,
                ready_of(
                    vec![healthy("a"), claimed(false)],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::RootUnavailable,
                ready_of(
                    vec![healthy("a")],
                    Err("Secret x not found".into()),
                    FleetFacts::default(),
                ),
            ),
            (
                R::IntermediatesWaitForRotation,
                ready_of(vec![healthy("a")], lost(), rotating()),
            ),
            (
                R::IntermediatesNotReady,
                ready_of(vec![healthy("a"), cacerts], root(), FleetFacts::default()),
            ),
            (
                R::RemoteSecretsNotReady,
                ready_of(vec![healthy("a"), secrets], root(), FleetFacts::default()),
            ),
            (
                R::MembersWithdrawn,
                ready_of(
                    vec![healthy("a"), withdrawn("b", false)],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::ControlPlanesNotReady,
                ready_of(
                    vec![with_istiod("a", true, true), with_istiod("b", false, false)],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::ControlPlanesStarting,
                ready_of(
                    vec![with_istiod("a", true, true), with_istiod("b", false, true)],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::GatewaysNotReady,
                ready_of(gw(no_gateway), root(), FleetFacts::default()),
            ),
            (
                R::GatewaysStarting,
                ready_of(gw(no_gateway), root(), applied()),
            ),
            (
                R::MembersRestoring,
                ready_of(
                    vec![healthy("a"), withdrawn("b", true)],
                    root(),
                    FleetFacts::default(),
                ),
            ),
            (
                R::MembersNotReady,
                ready_of(vec![healthy("a"), other], root(), FleetFacts::default()),
            ),
            (
                R::MembersNotReconciled,
                ready_of(vec![healthy("a"), new], root(), FleetFacts::default()),
            ),
            (
                R::MembersLeaving,
                ready_of(vec![healthy("a"), gone], root(), FleetFacts::default()),
            ),
        ]
    }

    #[test]
    fn every_ready_reason_is_reached_and_no_other() {
        let cases = every_ready_case();
        for (reason, c) in &cases {
            let want = if *reason == ConditionReason::Ready {
                "True"
            } else {
                "False"
            };
            assert_eq!(
                (c.reason.as_str(), c.status.as_str()),
                (reason.as_str(), want),
                "{}",
                c.message
            );
        }
        let reached: Vec<ConditionReason> = cases.iter().map(|(r, _)| *r).collect();
        // SpecUnreadable is the controller's (controller/unreadable.rs tests it).
        let built: Vec<ConditionReason> = READY_REASONS
            .iter()
            .copied()
            .filter(|r| *r != ConditionReason::SpecUnreadable)
            .collect();
        assert_eq!(
            reached, built,
            "one case per reason, in READY_REASONS' order"
        );
    }

    #[test]
    fn what_clears_by_itself_is_told_from_what_waits_for_a_person() {
        // A brand-new federation: every member waits for its first run.
        let new = |n: &str| {
            let mut r = MemberReport::new(n);
            r.other_problems.push("not reconciled yet".into());
            r
        };
        let c = ready_of(vec![new("a"), new("b")], root(), FleetFacts::default());
        assert_eq!(c.reason, "MembersNotReconciled");
        assert_eq!(c.message, "0/2 members ready; not reconciled yet: a, b");
        // A member's own problem comes first.
        let mut stuck = healthy("a");
        stuck.other_problems.push("no CA known".into());
        let c = ready_of(vec![stuck, new("b")], root(), FleetFacts::default());
        assert_eq!(c.reason, "MembersNotReady");
        assert_eq!(c.message, "0/2 members ready; a: no CA known");
        // A departed member whose cleanup failed is one meshfed cannot reach.
        let mut failed = MemberReport::new("old");
        failed.status.leaving = true;
        failed.unreachable = Some("cleanup after leaving: no answer within 10s".into());
        let c = ready_of(vec![healthy("a"), failed], root(), FleetFacts::default());
        assert_eq!(c.reason, "MembersUnreachable");
        // One member whose apply failed makes the control planes a person's.
        let s = build_status(
            None,
            vec![
                with_istiod("a", false, true),
                with_istiod("b", false, false),
            ],
            root(),
            FleetFacts::default(),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        for type_ in [CONTROL_PLANES_READY, READY] {
            assert_eq!(
                condition(&s, type_).reason,
                "ControlPlanesNotReady",
                "{type_}"
            );
        }
        // An istiod that is up while the DestinationRule failed is no start.
        let mut rule = with_istiod("a", true, true);
        rule.control_plane_problem = Some("mesh-wide DestinationRule: API error 403".into());
        let c = ready_of(vec![rule], root(), FleetFacts::default());
        assert_eq!(c.reason, "ControlPlanesNotReady");
        // A withdrawn member still failing outranks gateways that may only be
        // starting: failover judged it an outage.
        let mut out = withdrawn("b", false);
        out.gateway_expected = true;
        out.gateway_problem = Some("istio-eastwestgateway Deployment is not available".into());
        let c = ready_of(
            vec![with_gateway("a", None), out],
            root(),
            FleetFacts {
                gateways_applied: true,
                ..FleetFacts::default()
            },
        );
        assert_eq!(c.reason, "MembersWithdrawn");
        // Without a rotation, a root that cannot sign is a person's.
        let c = ready_of(
            vec![healthy("a")],
            Err("root Secret x no longer holds the key".into()),
            FleetFacts {
                ca: Some(CaStatus::default()),
                ..FleetFacts::default()
            },
        );
        assert_eq!(c.reason, "RootUnavailable");
    }

    /// The Ready reason and status of each fixture of deploy/argocd.
    fn argocd_fixture_reasons() -> Vec<(String, String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/argocd");
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let tests: serde_yaml::Value =
            serde_yaml::from_str(&read(&dir.join("health_test.yaml"))).unwrap();
        tests["tests"]
            .as_sequence()
            .expect("tests")
            .iter()
            .filter_map(|t| {
                let path = t["inputPath"].as_str().expect("inputPath");
                let fixture: serde_yaml::Value =
                    serde_yaml::from_str(&read(&dir.join(path))).unwrap();
                let ready = fixture["status"]["conditions"]
                    .as_sequence()?
                    .iter()
                    .find(|c| c["type"] == READY)?;
                Some((
                    path.to_string(),
                    ready["status"].as_str()?.to_string(),
                    ready["reason"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    #[test]
    fn every_ready_reason_has_an_argocd_fixture() {
        let fixtures = argocd_fixture_reasons();
        for reason in READY_REASONS {
            let want = if *reason == ConditionReason::Ready {
                "True"
            } else {
                "False"
            };
            assert!(
                fixtures
                    .iter()
                    .any(|(_, status, r)| r == reason.as_str() && status == want),
                "no fixture in deploy/argocd/health_test.yaml has Ready={want} with reason {}: add one, with the health Argo CD should show",
                reason.as_str()
            );
        }
        for (path, status, reason) in &fixtures {
            assert!(
                status == "Unknown" || READY_REASONS.iter().any(|r| r.as_str() == reason),
                "{path}: Ready reason {reason} is not one meshfed sets"
            );
        }
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
