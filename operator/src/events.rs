//! Kubernetes Events on a federation: what meshfed did or found, for
//! `kubectl describe` and `kubectl get events`.
use kube::Resource;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use tracing::warn;

use crate::api::MeshFederation;

/// Why meshfed publishes an Event: the variant's name is the Event's
/// `reason`, and whether it is a Warning is a property of the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A member's API server stopped answering, or answered with an error.
    MemberUnreachable,
    /// A member is reachable again.
    MemberRecovered,
    /// A member left the spec and meshfed's objects were removed from it.
    MemberRemoved,
    /// A member left but its cluster cannot be reached: meshfed's objects stay there.
    MemberOrphaned,
    /// Failover took a member out of its peers' view.
    MemberWithdrawn,
    /// Failover gave a member back to its peers.
    MemberRestored,
    /// Failover holds a withdrawal back (too few members healthy).
    WithdrawalHeld,
    /// A member's cluster claim had been changed behind meshfed's back and was written back.
    ClaimRepaired,
    /// The operator stored a new token of its own for a member.
    CredentialsRenewed,
    /// A bound token meshfed may not renew has a third of its lifetime left.
    CredentialsExpiring,
    /// Something the operator keeps is readable with a peer's reader token.
    CredentialsExposed,
    /// A member minted a new reader token for its peers on request.
    TokenRefreshed,
    /// A replaced reader token was revoked.
    TokenRevoked,
    /// A member's `cacerts` got a new trust bundle, its intermediate unchanged.
    TrustBundleUpdated,
    /// A member got its first intermediate CA.
    IntermediateIssued,
    /// A member's intermediate CA was issued again.
    IntermediateRotated,
    /// The federation's name cannot be a label value; it is ignored.
    InvalidName,
    /// meshfed generated the federation's root CA.
    RootCreated,
    /// The generated root's Secret is gone; a new root replaces it through every phase.
    RootLost,
    /// A root rotation began.
    RootRotationStarted,
    /// A root rotation entered its next phase.
    RootRotationPhase,
    /// A root rotation is complete.
    RootRotationFinished,
    /// A control-plane rollout began a wave.
    UpgradeWaveStarted,
    /// A rollout wave's members are at the new revision.
    UpgradeWaveFinished,
    /// A rollout gate was not met in time; the rollout stops until fixed.
    UpgradeHalted,
    /// Every member runs the new revision.
    UpgradeComplete,
}

impl Reason {
    /// Every reason, for the docs' reference table and its test.
    pub const ALL: [Reason; 26] = [
        Self::MemberUnreachable,
        Self::MemberRecovered,
        Self::MemberRemoved,
        Self::MemberOrphaned,
        Self::MemberWithdrawn,
        Self::MemberRestored,
        Self::WithdrawalHeld,
        Self::ClaimRepaired,
        Self::CredentialsRenewed,
        Self::CredentialsExpiring,
        Self::CredentialsExposed,
        Self::TokenRefreshed,
        Self::TokenRevoked,
        Self::TrustBundleUpdated,
        Self::IntermediateIssued,
        Self::IntermediateRotated,
        Self::InvalidName,
        Self::RootCreated,
        Self::RootLost,
        Self::RootRotationStarted,
        Self::RootRotationPhase,
        Self::RootRotationFinished,
        Self::UpgradeWaveStarted,
        Self::UpgradeWaveFinished,
        Self::UpgradeHalted,
        Self::UpgradeComplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemberUnreachable => "MemberUnreachable",
            Self::MemberRecovered => "MemberRecovered",
            Self::MemberRemoved => "MemberRemoved",
            Self::MemberOrphaned => "MemberOrphaned",
            Self::MemberWithdrawn => "MemberWithdrawn",
            Self::MemberRestored => "MemberRestored",
            Self::WithdrawalHeld => "WithdrawalHeld",
            Self::ClaimRepaired => "ClaimRepaired",
            Self::CredentialsRenewed => "CredentialsRenewed",
            Self::CredentialsExpiring => "CredentialsExpiring",
            Self::CredentialsExposed => "CredentialsExposed",
            Self::TokenRefreshed => "TokenRefreshed",
            Self::TokenRevoked => "TokenRevoked",
            Self::TrustBundleUpdated => "TrustBundleUpdated",
            Self::IntermediateIssued => "IntermediateIssued",
            Self::IntermediateRotated => "IntermediateRotated",
            Self::InvalidName => "InvalidName",
            Self::RootCreated => "RootCreated",
            Self::RootLost => "RootLost",
            Self::RootRotationStarted => "RootRotationStarted",
            Self::RootRotationPhase => "RootRotationPhase",
            Self::RootRotationFinished => "RootRotationFinished",
            Self::UpgradeWaveStarted => "UpgradeWaveStarted",
            Self::UpgradeWaveFinished => "UpgradeWaveFinished",
            Self::UpgradeHalted => "UpgradeHalted",
            Self::UpgradeComplete => "UpgradeComplete",
        }
    }

    /// Whether the Event asks for someone's attention.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Self::MemberUnreachable
                | Self::MemberOrphaned
                | Self::MemberWithdrawn
                | Self::WithdrawalHeld
                | Self::ClaimRepaired
                | Self::CredentialsExpiring
                | Self::CredentialsExposed
                | Self::InvalidName
                | Self::RootLost
                | Self::UpgradeHalted
        )
    }
}

/// A Kubernetes Event to publish on the federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub reason: Reason,
    pub note: String,
}

impl Event {
    pub fn new(reason: Reason, note: impl Into<String>) -> Self {
        Self {
            reason,
            note: note.into(),
        }
    }
}

/// Publishes Events on federations as the operator (`reportingController:
/// meshfed`, the pod's name as its instance).
pub struct Publisher {
    recorder: Recorder,
}

impl Publisher {
    pub fn new(client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: "meshfed".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes `events` on `fed`; a failure is logged, never fatal.
    pub async fn publish(&self, fed: &MeshFederation, events: Vec<Event>) {
        let reference = fed.object_ref(&());
        for e in events {
            let event = KubeEvent {
                type_: if e.reason.is_warning() {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason.as_str().into(),
                note: Some(e.note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&event, &reference).await {
                warn!(error = %err, "publishing event failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/events.md's table: every reason the code has, with its type,
    /// and none it does not have.
    #[test]
    fn the_events_reference_lists_every_reason_with_its_type() {
        let doc = include_str!("../../docs/events.md");
        let rows: Vec<(String, String)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let reason = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((reason.to_string(), cells.get(2)?.to_string()))
            })
            .collect();
        let expected: Vec<(String, String)> = Reason::ALL
            .iter()
            .map(|r| {
                let kind = if r.is_warning() { "Warning" } else { "Normal" };
                (r.as_str().to_string(), kind.to_string())
            })
            .collect();
        assert_eq!(rows, expected);
    }
}
