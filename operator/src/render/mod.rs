//! What each member should contain: pure functions from the federation spec,
//! member facts and PKI material to Kubernetes objects. No I/O here.
mod cacerts;
mod claim;
pub mod control_plane;
mod drift;
mod kubeconfig;
mod member_rbac;
mod namespace;
mod reader;
mod remote_secret;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use cacerts::{cacerts_bundle, render_cacerts};
pub use claim::{
    CLAIM, ClaimDecision, ClusterClaim, judge_claim, kind_key, kinds_text, parse_kind_key,
    read_claim, render_claim, with_recorded_kinds,
};
pub use drift::{contains, difference};
pub use kubeconfig::{KubeconfigInputs, render_kubeconfig};
pub use member_rbac::member_rbac;
pub use namespace::render_istio_namespace;
pub use reader::{ReaderIdentity, reader_name, render_reader_identity};
pub use remote_secret::{
    HeldToken, IssuedToken, PeerEndpoint, RemoteSecretState, TokenSubject, WrittenToken,
    minted_before, recorded_departure, remote_secret_held, remote_secret_name, remote_secret_peer,
    remote_secret_state, render_remote_secret, render_token_binding, token_refresh_at,
};

/// Namespace where Istio's control plane and its multicluster Secrets live.
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// Name istiod reads its plug-in CA from.
pub const CACERTS: &str = "cacerts";
/// Field manager of every server-side apply meshfed makes for `federation`:
/// one per federation, so that two federations never share the ownership of
/// a field.
pub fn field_manager(federation: &str) -> String {
    format!("meshfed-{federation}")
}

/// Labels and annotations meshfed reads or writes, in one place.
pub mod keys {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "meshfed";
    pub const FEDERATION: &str = "meshfed.io/federation";
    /// Set by a user on an object meshfed did not create to let meshfed take it over.
    pub const ADOPT: &str = "meshfed.io/adopt";
    pub const NETWORK: &str = "topology.istio.io/network";
    pub const MULTICLUSTER: &str = "istio/multiCluster";
    pub const CLUSTER: &str = "networking.istio.io/cluster";
    pub const TOKEN_ISSUED_AT: &str = "meshfed.io/token-issued-at";
    pub const TOKEN_EXPIRES_AT: &str = "meshfed.io/token-expires-at";
    pub const ENDPOINT_HASH: &str = "meshfed.io/endpoint-hash";
    /// On a remote secret: the Secret its token is bound to. On a binding
    /// Secret (as a label): the reader whose tokens it binds.
    pub const TOKEN_BINDING: &str = "meshfed.io/token-binding";
    /// On a remote secret: when meshfed wrote its current token.
    pub const TOKEN_WRITTEN_AT: &str = "meshfed.io/token-written-at";
    /// On a MeshFederation: changing its value makes every member mint a new
    /// token and every peer take it now (the old ones are then revoked). On
    /// a remote secret: the value its token was minted for.
    pub const REFRESH_TOKENS: &str = "meshfed.io/refresh-tokens";
    /// On a token binding and a remote secret: the federation's departure
    /// generation when the token was minted. Tokens minted before the
    /// latest departure are replaced and revoked at once.
    pub const TOKEN_DEPARTURE: &str = "meshfed.io/token-departure";
    /// On a member's credentials Secret: `"true"` lets meshfed store the
    /// renewed token of its member identity there.
    pub const RENEW_CREDENTIALS: &str = "meshfed.io/renew-credentials";
}

/// Labels every object meshfed creates carries, so pruning and `kubectl get -l` work.
pub fn managed_labels(federation: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (keys::MANAGED_BY.into(), keys::MANAGED_BY_VALUE.into()),
        (keys::FEDERATION.into(), federation.into()),
    ])
}

/// Label selector matching everything meshfed created for `federation`.
pub fn managed_selector(federation: &str) -> String {
    format!(
        "{}={},{}={federation}",
        keys::MANAGED_BY,
        keys::MANAGED_BY_VALUE,
        keys::FEDERATION
    )
}

/// Metadata for a managed object.
fn managed_meta(federation: &str, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(managed_labels(federation)),
        ..ObjectMeta::default()
    }
}

/// Who may meshfed write over: what it created for this federation, or what a
/// user explicitly handed over with the `meshfed.io/adopt: "true"` annotation
/// and no federation has taken yet. The first write of an adopted object labels
/// it for one federation and removes the annotation ([`wants_adoption`]).
pub fn is_ours(meta: &ObjectMeta, federation: &str) -> bool {
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
    let owner = label(keys::FEDERATION).map(String::as_str);
    let managed = label(keys::MANAGED_BY).map(String::as_str) == Some(keys::MANAGED_BY_VALUE);
    if managed && owner.is_some() {
        return owner == Some(federation);
    }
    wants_adoption(meta)
}

/// Whether a user annotated the object `meshfed.io/adopt: "true"`.
pub fn wants_adoption(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(keys::ADOPT))
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_needs_both_labels_or_adoption() {
        let mut meta = managed_meta("prod", "x", None);
        assert!(is_ours(&meta, "prod"));
        assert!(!is_ours(&meta, "staging"), "another federation's object");
        meta.labels.as_mut().unwrap().remove(keys::MANAGED_BY);
        assert!(!is_ours(&meta, "prod"));
        let foreign = ObjectMeta::default();
        assert!(!is_ours(&foreign, "prod"));
        let adopted = ObjectMeta {
            annotations: Some(BTreeMap::from([(keys::ADOPT.into(), "true".into())])),
            ..ObjectMeta::default()
        };
        assert!(is_ours(&adopted, "prod"));
        assert!(is_ours(&adopted, "staging"), "not taken yet: either may");
        let mut taken = managed_meta("prod", "x", None);
        taken.annotations = adopted.annotations.clone();
        assert!(is_ours(&taken, "prod"));
        assert!(
            !is_ours(&taken, "staging"),
            "adopted by prod: never another federation's"
        );
        let not_adopted = ObjectMeta {
            annotations: Some(BTreeMap::from([(keys::ADOPT.into(), "yes".into())])),
            ..ObjectMeta::default()
        };
        assert!(!is_ours(&not_adopted, "prod"));
    }

    #[test]
    fn selector_matches_labels() {
        assert_eq!(
            managed_selector("prod"),
            "app.kubernetes.io/managed-by=meshfed,meshfed.io/federation=prod"
        );
    }
}
