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

/// Short, stable text for an API error (no bodies, no secret material).
pub fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !api_server_answered(e) => format!(
            "HTTP {} from a proxy in front of the API server, not the API server itself",
            s.code
        ),
        kube::Error::Api(s) => format!("API error {}: {}", s.code, s.message),
        other => {
            let text = other.to_string();
            text.split(": ").last().unwrap_or(&text).to_string()
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
        let proxy = status(502, NOT_A_STATUS);
        assert!(!api_server_answered(&proxy), "a load balancer's error page");
        assert!(
            !error_text(&proxy).contains("html"),
            "no body in the text: {}",
            error_text(&proxy)
        );
    }
}
