//! The members' side: one worker per member makes its cluster what the
//! fleet decided, one concern per module, and reports what it found
//! ([`crate::fleet::report::MemberReport`]). A worker writes into its own
//! member only (and, for the operator's own credentials, into their Secret
//! in the operator's namespace); nothing here imports the federation
//! controller.
//!
//! - [`worker`]: the loop, the registry of workers and what members publish
//!   for their peers ([`remote_secrets::PeerFacts`]).
//! - [`prepare`]: one run's first step: connect, claim, label, reader, `cacerts`.
//! - [`identity`]: the cluster claim, the reader identity, the operator's
//!   own credentials in the member.
//! - [`cacerts`]: the member's intermediate CA.
//! - [`remote_secrets`]: the member's remote secrets for its peers, and the
//!   tokens it mints and revokes for them.
//! - [`control_plane`]: Istio (Managed) or its gateways (External).
//! - [`cleanup`]: removing meshfed's objects once the member left.
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use crate::api::MeshFederation;
use crate::apply::KindCache;
use crate::charts::ChartRenderer;
use crate::connection::{MemberConnection, MemberPool, MemberWatches};
use crate::events::{Event, Publisher};
use crate::fleet::report::MemberReport;
use crate::render::{PeerEndpoint, TokenSubject};
use crate::settings::Settings;
use crate::telemetry::{Metrics, RequestCount};

pub mod cacerts;
pub mod cleanup;
pub mod control_plane;
pub mod identity;
pub mod prepare;
pub mod remote_secrets;
pub mod worker;

/// What every member's work uses: the operator's own cluster, its settings,
/// the connections to members and the watches on them, the chart renderer,
/// the kinds found through discovery, metrics and the Event publisher.
pub struct MemberContext {
    /// The cluster the operator runs in.
    pub client: Client,
    pub settings: Settings,
    pub connections: MemberPool,
    pub watches: MemberWatches,
    pub charts: ChartRenderer,
    pub kinds: KindCache,
    pub metrics: Arc<Metrics>,
    pub events: Publisher,
}

impl MemberContext {
    /// Whether `fed` (this very object, by UID) still exists. A failed look
    /// counts as yes: a worker is never stopped on a transient error.
    pub async fn federation_exists(&self, fed: &MeshFederation) -> bool {
        let api = Api::<MeshFederation>::all(self.client.clone());
        match api.get_opt(&fed.name_any()).await {
            Ok(found) => found.is_some_and(|f| f.uid() == fed.uid()),
            Err(_) => true,
        }
    }

    /// Publishes `events` on `fed`.
    pub async fn publish(&self, fed: &MeshFederation, events: Vec<Event>) {
        self.events.publish(fed, events).await;
    }
}

/// A member after the per-member step.
pub struct PreparedMember {
    pub name: String,
    /// Set when the member's API server answered.
    pub connection: Option<MemberConnection>,
    /// Where peers reach it (known even when it is down).
    pub endpoint: Result<PeerEndpoint, String>,
    /// Whom its peers' tokens are minted for; an error when meshfed may not
    /// mint tokens there (not reached, or a reader meshfed did not create).
    pub reader: Result<TokenSubject, String>,
    /// The member's request counter when this reconcile started with it.
    pub request_baseline: RequestCount,
    /// The kinds meshfed recorded applying in its cluster (its claim).
    pub recorded_kinds: std::collections::BTreeSet<String>,
    /// Every `istio/multiCluster` Secret in its istio-system, by name.
    pub multicluster_secrets: BTreeMap<String, Secret>,
    pub report: MemberReport,
    pub events: Vec<Event>,
}

/// kube's reason for an error response whose body is not a Kubernetes
/// `Status`: something other than the API server wrote it.
const NOT_A_STATUS: &str = "Failed to parse error data";

/// Whether the member's API server itself answered (with an error): a
/// Kubernetes `Status` came back. A 5xx page from a proxy or load balancer
/// in front of it (HTML, plain text) is no answer from the API server: it
/// is down behind the proxy.
pub fn api_server_answered(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => !(s.code >= 500 && s.reason == NOT_A_STATUS),
        _ => false,
    }
}

/// Short, stable text for an API error (no bodies, no secret material). A
/// refusal (403) names what was refused, to whom, and what to grant.
pub fn error_text(e: &kube::Error) -> String {
    error_text_in(e, Work::Member)
}

/// What meshfed was doing when an API error came back: it decides what a
/// refusal asks the user to grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// What the member roles (`kubectl meshfed join`, `config/member-rbac`)
    /// allow: CA material, the reader, remote secrets, External gateways.
    Member,
    /// Installing Istio's charts (`spec.controlPlane.mode: Managed`), which
    /// takes cluster-admin in effect (docs/security.md).
    ManagedControlPlane,
}

/// [`error_text`] for an error met doing `work`.
pub fn error_text_in(e: &kube::Error, work: Work) -> String {
    match e {
        kube::Error::Api(s) if !api_server_answered(e) => format!(
            "HTTP {} from a proxy in front of the API server, not the API server itself",
            s.code
        ),
        kube::Error::Api(s) if s.code == 403 => denial_text(&s.message, work),
        kube::Error::Api(s) => format!("API error {}: {}", s.code, s.message),
        other => {
            let text = other.to_string();
            text.split(": ").last().unwrap_or(&text).to_string()
        }
    }
}

/// What a 403 refused, read from the API server's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Who was refused (`system:serviceaccount:istio-system:meshfed-member`);
    /// empty when the message does not say.
    pub user: String,
    /// What was refused: `create customresourcedefinitions.apiextensions.k8s.io
    /// cluster-wide`, `create clusterroles.rbac.authorization.k8s.io
    /// istiod-clusterrole-istio-system`.
    pub what: String,
    pub why: DenialCause,
}

/// Why the API server refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenialCause {
    /// RBAC: the identity lacks the permission.
    Rbac,
    /// Kubernetes' escalation check: a role or binding would grant what the
    /// identity does not hold itself; the first such rule.
    Escalation(String),
    /// An admission policy or webhook refused, with its message.
    Admission(String),
}

/// Reads a Kubernetes 403 message: `<resource> "<name>" is forbidden: User
/// "<user>" cannot <verb> resource "<resource>" in API group "<group>" in the
/// namespace "<ns>"` (or `at the cluster scope`), the escalation check's
/// `user "<user>" (groups=...) is attempting to grant RBAC permissions not
/// currently held:`, or an admission refusal.
pub fn denial(message: &str) -> Option<Denial> {
    let quoted = |s: &str| -> Option<(String, usize)> {
        let start = s.find('"')? + 1;
        let len = s[start..].find('"')?;
        Some((s[start..start + len].to_string(), start + len + 1))
    };
    // `<qualified resource> "<name>" is forbidden: <reason>`
    let (object, reason) = message.split_once(" is forbidden: ")?;
    let object = match object.split_once(' ') {
        Some((resource, name)) => format!("{resource} {}", name.trim_matches('"')),
        None => object.to_string(),
    };
    if let Some(at) = reason.find("is attempting to grant RBAC permissions not currently held") {
        let user = quoted(&reason[..at]).map(|(u, _)| u).unwrap_or_default();
        let rule = reason[at..].lines().nth(1).unwrap_or("").trim().to_string();
        return Some(Denial {
            user,
            what: format!("create or change {object}"),
            why: DenialCause::Escalation(rule),
        });
    }
    if let Some(rest) = reason.strip_prefix("User ") {
        let (user, end) = quoted(rest)?;
        let rest = rest[end..].strip_prefix(" cannot ")?;
        let (verb, rest) = rest.split_once(' ')?;
        let (kind, rest) = rest.split_once(' ')?;
        let (target, end) = quoted(rest)?;
        let rest = &rest[end..];
        if kind == "path" {
            return Some(Denial {
                user,
                what: format!("{verb} {target}"),
                why: DenialCause::Rbac,
            });
        }
        let group = rest
            .strip_prefix(" in API group ")
            .and_then(quoted)
            .map(|(g, _)| g)
            .unwrap_or_default();
        let group = if group.is_empty() {
            String::new()
        } else {
            format!(".{group}")
        };
        let (resource, subresource) = match target.split_once('/') {
            Some((r, s)) => (r.to_string(), format!("/{s}")),
            None => (target.clone(), String::new()),
        };
        let name = object
            .split_once(' ')
            .map(|(_, n)| format!(" {n}"))
            .unwrap_or_default();
        let scope = match rest
            .split_once(" in the namespace ")
            .and_then(|(_, n)| quoted(n))
        {
            Some((ns, _)) => format!(" in {ns}"),
            None => " cluster-wide".to_string(),
        };
        return Some(Denial {
            user,
            what: format!("{verb} {resource}{group}{subresource}{name}{scope}"),
            why: DenialCause::Rbac,
        });
    }
    let admission = [
        "admission webhook",
        "ValidatingAdmissionPolicy",
        "denied the request",
        "denied request",
    ];
    admission
        .iter()
        .any(|a| reason.contains(a))
        .then(|| Denial {
            user: String::new(),
            what: object,
            why: DenialCause::Admission(reason.to_string()),
        })
}

/// The command that binds `user` (a ServiceAccount's or a user's name, as
/// the API server reports it; empty: meshfed's member identity) to
/// `cluster-admin`, which a Managed control plane takes in effect.
pub fn cluster_admin_binding(user: &str) -> String {
    let subject = match user
        .strip_prefix("system:serviceaccount:")
        .and_then(|s| s.split_once(':'))
    {
        Some((ns, account)) => format!("--serviceaccount {ns}:{account}"),
        None if !user.is_empty() => format!("--user {user}"),
        None => "--serviceaccount istio-system:meshfed-member".to_string(),
    };
    format!(
        "kubectl create clusterrolebinding meshfed-member-cluster-admin --clusterrole cluster-admin {subject}"
    )
}

/// A 403 as a user reads it: what was refused, to whom, and what to do.
fn denial_text(message: &str, work: Work) -> String {
    let managed_fix = |user: &str| {
        format!(
            "a Managed control plane installs Istio's charts, which takes cluster-admin in effect (docs/security.md): in the member, {}",
            cluster_admin_binding(user)
        )
    };
    let roles_fix = "grant it in the member: the member roles of `kubectl meshfed join <member> --kubeconfig <admin kubeconfig> --federation <federation>` cover everything but a Managed control plane, and `kubectl meshfed check --kubeconfig <member kubeconfig> --federation <federation>` lists what the identity lacks";
    let Some(d) = denial(message) else {
        let fix = match work {
            Work::ManagedControlPlane => managed_fix(""),
            Work::Member => roles_fix.to_string(),
        };
        return format!("API error 403: {message}; {fix}");
    };
    let as_user = if d.user.is_empty() {
        String::new()
    } else {
        format!(" as {}", d.user)
    };
    match (&d.why, work) {
        (DenialCause::Admission(reason), _) => format!(
            "refused by admission (403): {}: {reason}; change what meshfed writes there, or the policy",
            d.what
        ),
        (DenialCause::Escalation(rule), _) => {
            let fix = match work {
                Work::ManagedControlPlane => managed_fix(&d.user),
                Work::Member => format!("give the identity those rights itself; {roles_fix}"),
            };
            format!(
                "access denied (403): may not {}{as_user}: it grants rights the identity does not hold itself ({rule}); {fix}",
                d.what
            )
        }
        (DenialCause::Rbac, Work::ManagedControlPlane) => format!(
            "access denied (403): may not {}{as_user}; {}",
            d.what,
            managed_fix(&d.user)
        ),
        (DenialCause::Rbac, Work::Member) => {
            format!(
                "access denied (403): may not {}{as_user}; {roles_fix}",
                d.what
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kubernetes_status_is_an_answer_from_the_api_server() {
        let status = |code, reason: &str| {
            kube::Error::Api(
                kube::core::Status::failure("<html><body>502 Bad Gateway</body></html>", reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        let forbidden = status(403, "Forbidden");
        assert!(api_server_answered(&forbidden));
        assert_eq!(
            error_text(&forbidden).split(':').next(),
            Some("API error 403")
        );
        assert!(
            api_server_answered(&status(503, "ServiceUnavailable")),
            "the API server's own 503"
        );
        assert!(
            api_server_answered(&status(404, NOT_A_STATUS)),
            "a plain-text 404 comes from the API server for an unknown path"
        );
        assert!(error_text(&forbidden).contains("kubectl meshfed check"));
        let proxy = status(502, NOT_A_STATUS);
        assert!(!api_server_answered(&proxy), "a load balancer's error page");
        assert!(
            !error_text(&proxy).contains("html"),
            "no body in the text: {}",
            error_text(&proxy)
        );
    }

    const MEMBER: &str = "system:serviceaccount:istio-system:meshfed-member";

    fn forbidden(message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(403)
                .boxed(),
        )
    }

    #[test]
    fn a_refusal_names_the_verb_resource_and_scope_denied() {
        let crd = format!(
            "customresourcedefinitions.apiextensions.k8s.io \"gateways.networking.istio.io\" is forbidden: User \"{MEMBER}\" cannot patch resource \"customresourcedefinitions\" in API group \"apiextensions.k8s.io\" at the cluster scope"
        );
        assert_eq!(
            denial(&crd),
            Some(Denial {
                user: MEMBER.into(),
                what: "patch customresourcedefinitions.apiextensions.k8s.io gateways.networking.istio.io cluster-wide".into(),
                why: DenialCause::Rbac,
            })
        );
        let token = format!(
            "serviceaccounts \"meshfed-reader-blue\" is forbidden: User \"{MEMBER}\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"istio-system\""
        );
        assert_eq!(
            denial(&token).unwrap().what,
            "create serviceaccounts/token meshfed-reader-blue in istio-system"
        );
        let list = "deployments.apps is forbidden: User \"alice\" cannot list resource \"deployments\" in API group \"apps\" in the namespace \"istio-system\": RBAC: clusterrole.rbac.authorization.k8s.io \"x\" not found";
        let d = denial(list).unwrap();
        assert_eq!(
            (d.user.as_str(), d.what.as_str()),
            ("alice", "list deployments.apps in istio-system")
        );
        assert_eq!(denial("something else went wrong"), None);
    }

    #[test]
    fn a_refusal_says_what_to_grant_for_the_work_at_hand() {
        let crd = format!(
            "customresourcedefinitions.apiextensions.k8s.io is forbidden: User \"{MEMBER}\" cannot create resource \"customresourcedefinitions\" in API group \"apiextensions.k8s.io\" at the cluster scope"
        );
        let managed = error_text_in(&forbidden(&crd), Work::ManagedControlPlane);
        assert!(
            managed.starts_with(
                "access denied (403): may not create customresourcedefinitions.apiextensions.k8s.io cluster-wide as system:serviceaccount:istio-system:meshfed-member;"
            ),
            "{managed}"
        );
        assert!(
            managed.ends_with(
                "kubectl create clusterrolebinding meshfed-member-cluster-admin --clusterrole cluster-admin --serviceaccount istio-system:meshfed-member"
            ),
            "{managed}"
        );
        let member = error_text(&forbidden(&crd));
        assert!(member.contains("kubectl meshfed join"), "{member}");
        assert!(!member.contains("cluster-admin"), "{member}");

        let escalation = format!(
            "clusterroles.rbac.authorization.k8s.io \"istiod-clusterrole-istio-system\" is forbidden: user \"{MEMBER}\" (groups=[\"system:serviceaccounts\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{{APIGroups:[\"admissionregistration.k8s.io\"], Resources:[\"mutatingwebhookconfigurations\"], Verbs:[\"update\"]}}\n{{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}}"
        );
        let text = error_text_in(&forbidden(&escalation), Work::ManagedControlPlane);
        assert!(
            text.starts_with(
                "access denied (403): may not create or change clusterroles.rbac.authorization.k8s.io istiod-clusterrole-istio-system as system:serviceaccount:istio-system:meshfed-member: it grants rights the identity does not hold itself ({APIGroups:[\"admissionregistration.k8s.io\"]"
            ),
            "{text}"
        );
        assert!(text.contains("--clusterrole cluster-admin"), "{text}");

        let policy = "deployments.apps \"istiod\" is forbidden: ValidatingAdmissionPolicy 'meshfed-member-deployments' with binding 'meshfed-member-deployments' denied request: a Deployment in istio-system may only run as a gateway";
        let text = error_text(&forbidden(policy));
        assert!(
            text.starts_with("refused by admission (403): deployments.apps istiod: ValidatingAdmissionPolicy 'meshfed-member-deployments'"),
            "{text}"
        );
    }

    #[test]
    fn the_cluster_admin_binding_names_whoever_was_refused() {
        assert!(
            cluster_admin_binding("system:serviceaccount:meshfed-system:meshfed-operator")
                .ends_with("--serviceaccount meshfed-system:meshfed-operator")
        );
        assert!(cluster_admin_binding("alice").ends_with("--user alice"));
        assert!(
            cluster_admin_binding("").ends_with("--serviceaccount istio-system:meshfed-member")
        );
    }
}
