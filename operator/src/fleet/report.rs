//! What a member's worker found, in the fleet's vocabulary: the facts the
//! fleet's planners and its status are computed from.
use jiff::Timestamp;

use crate::api::MemberStatus;
use crate::telemetry::RequestCount;

/// How far a run got towards a member's API server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Contact {
    /// It answered (with an error, when the member is unreachable).
    #[default]
    Answered,
    /// It did not answer: refused, reset, timed out, or a proxy in front of
    /// it answered for it (a 5xx page that is not a Kubernetes `Status`).
    NoAnswer,
    /// Nothing was sent: the operator holds no usable credentials for it
    /// (Secret missing or unreadable, token expired). Its health is unknown.
    NotTried,
}

/// What one reconcile learnt about one member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemberReport {
    /// Facts for `status.members[]`; `ready` and `last_error` are derived here.
    pub status: MemberStatus,
    /// Why the member could not be reached, if it could not.
    pub unreachable: Option<String>,
    /// How far the run got towards the member's API server when it was not
    /// reached: only [`Contact::NoAnswer`] makes it a failover case.
    pub contact: Contact,
    /// Why its cluster is not its own (another member or federation holds it).
    pub claim_problem: Option<String>,
    /// Why its `cacerts` is not in place.
    pub certificate_problem: Option<String>,
    /// Why some of its remote secrets are missing or stale.
    pub remote_secret_problems: Vec<String>,
    /// Anything else (reader identity, namespace, cleanup).
    pub other_problems: Vec<String>,
    /// Why istiod is not in place (when meshfed manages or watches it).
    pub control_plane_problem: Option<String>,
    /// Whether the member should have an east-west gateway.
    pub gateway_expected: bool,
    /// Why its east-west gateway is not in place.
    pub gateway_problem: Option<String>,
    /// When the first of its remote secrets' tokens is due for refresh.
    pub next_token_refresh: Option<Timestamp>,
    /// When a replaced token of its reader may next be revoked.
    pub next_revocation: Option<Timestamp>,
    /// When its long-lived token Secrets were last looked for.
    pub token_secrets_scanned_at: Option<Timestamp>,
    /// The CA target ([`super::rotation::Target::id`]) its `cacerts` and its
    /// istiod's distributed roots match.
    pub ca_reached: Option<String>,
    /// The root (PEM) its intermediate's chain ends at: what a copy of its
    /// `cacerts` stays trusted under once it leaves.
    pub intermediate_root: Option<String>,
    /// Its istiod revisions and tags (Managed), for the rollout.
    pub installed: Option<super::rollout::Installed>,
}

impl MemberReport {
    /// A report for a member named `name`, filled in as the reconcile goes.
    pub fn new(name: &str) -> Self {
        Self {
            status: MemberStatus {
                name: name.into(),
                ..MemberStatus::default()
            },
            ..Self::default()
        }
    }

    pub fn problems(&self) -> impl Iterator<Item = &String> {
        self.unreachable
            .iter()
            .chain(&self.claim_problem)
            .chain(&self.certificate_problem)
            .chain(&self.remote_secret_problems)
            .chain(&self.other_problems)
            .chain(&self.control_plane_problem)
            .chain(&self.gateway_problem)
    }

    pub fn is_ready(&self) -> bool {
        self.status.reachable && !self.status.leaving && self.problems().next().is_none()
    }
}

/// A worker's last finished run.
#[derive(Clone, Debug)]
pub struct MemberRun {
    pub report: MemberReport,
    /// The federation generation the run worked from.
    pub generation: Option<i64>,
    /// API requests the run sent to the member (none when it was not reached).
    pub requests: Option<RequestCount>,
    /// Whether every member in the spec had published its facts when the
    /// run planned the remote secrets: right after a start, a run before
    /// its peers' first runs reports them "not reached yet".
    pub saw_every_peer: bool,
}
