//! Removing meshfed's objects from a member that leaves, or from every member
//! when the federation is deleted: the apply engine's prune with nothing
//! desired, over every kind meshfed ever applied there.
use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use kube::api::{DynamicObject, GroupVersionKind, ObjectMeta};
use kube::{Api, Client};

use super::MemberContext;
use crate::api::{MeshFederation, RemovalPolicy};
use crate::apply::KindCache;
use crate::apply::prune;
use crate::events::{Event, Reason};
use crate::render::control_plane::COMPONENT;
use crate::render::{CACERTS, ISTIO_NAMESPACE, managed_selector, with_recorded_kinds};

/// What meshfed creates in every member, recorded or not: remote secrets and
/// `cacerts`, the reader identity.
const BASE_KINDS: [(&str, &str, &str); 4] = [
    ("", "v1", "Secret"),
    ("", "v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
];

/// The kinds to visit: the base kinds, every kind the claim recorded, and
/// ConfigMaps last: the claim, which records the kinds, goes only after
/// everything it records (a cleanup cut short is resumed with the record
/// intact). Never CRDs: deleting Istio's would delete every Istio resource.
pub fn kinds_to_remove(recorded: &BTreeSet<String>) -> Vec<GroupVersionKind> {
    let config_maps = GroupVersionKind::gvk("", "v1", "ConfigMap");
    let base = BASE_KINDS
        .iter()
        .map(|(g, v, k)| GroupVersionKind::gvk(g, v, k))
        .collect();
    let mut kinds = with_recorded_kinds(base, recorded);
    kinds.retain(|k| *k != config_maps);
    kinds.push(config_maps);
    kinds
}

/// Deletes what meshfed labelled for `federation` in the member (`cluster`
/// is its identity). Remote secrets, the reader identity and the cluster
/// claim always go. With `Retain`, what a running Istio needs stays:
/// `cacerts` and the control plane meshfed installed (istiod, gateways), so
/// the cluster keeps working on its own. Never deleted: Istio's CRDs and the
/// `istio-system` namespace.
pub async fn remove_from_member(
    kinds: &KindCache,
    client: &Client,
    cluster: &str,
    federation: &str,
    policy: RemovalPolicy,
    recorded: &BTreeSet<String>,
) -> Result<Vec<String>, kube::Error> {
    let retain = !policy.removes();
    let keep = |meta: &ObjectMeta| {
        let installed = meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(COMPONENT));
        retain && (installed || meta.name.as_deref() == Some(CACERTS))
    };
    let selector = managed_selector(federation);
    let mut removed = Vec::new();
    for gvk in kinds_to_remove(recorded) {
        // Not served (any more): nothing of that kind can exist.
        let Some((resource, namespaced)) = kinds.resolve(client, cluster, &gvk).await? else {
            continue;
        };
        let api = if namespaced {
            Api::<DynamicObject>::namespaced_with(client.clone(), ISTIO_NAMESPACE, &resource)
        } else {
            Api::<DynamicObject>::all_with(client.clone(), &resource)
        };
        let names = prune(&api, &selector, |o: &DynamicObject| keep(&o.metadata)).await?;
        removed.extend(names.into_iter().map(|n| format!("{}/{n}", gvk.kind)));
    }
    Ok(removed)
}

/// The commands that remove from a member what `onRemoval: Retain` removes
/// (everything meshfed labelled for `federation` but `cacerts` and the
/// objects of a control plane it installed), for a member meshfed cannot
/// reach any more. Each is backticked, so a reader can copy it.
pub fn orphan_remedy(federation: &str) -> String {
    let selector = format!(
        "{}={},{}={federation},!{COMPONENT}",
        crate::render::keys::MANAGED_BY,
        crate::render::keys::MANAGED_BY_VALUE,
        crate::render::keys::FEDERATION
    );
    format!(
        "`kubectl delete secret,serviceaccount,configmap -n {ISTIO_NAMESPACE} -l '{selector}' --field-selector metadata.name!={CACERTS}` and `kubectl delete clusterrole,clusterrolebinding -l '{selector}'`"
    )
}

/// What removing a member's objects came to.
#[derive(Debug)]
pub enum Removal {
    /// These objects were deleted.
    Removed(Vec<String>),
    /// Its credentials Secret is gone: nothing can be reached, and whatever
    /// meshfed made in its cluster stays there.
    CredentialsGone(String),
    /// Its cluster now belongs to this member (renamed on the same cluster).
    ClusterTakenBy(String),
}

impl Removal {
    pub fn event(&self, member: &str, federation: &str) -> Event {
        match self {
            Removal::Removed(objects) => Event::new(
                Reason::MemberRemoved,
                format!("member {member} left; removed {} objects", objects.len()),
            ),
            Removal::CredentialsGone(why) => Event::new(
                Reason::MemberOrphaned,
                format!(
                    "member {member} left but {why}: its objects stay in its cluster. To remove meshfed's wiring there (remote secrets, reader identity, claim) and keep its cacerts and any control plane meshfed installed, run there {}",
                    orphan_remedy(federation)
                ),
            ),
            Removal::ClusterTakenBy(owner) => Event::new(
                Reason::MemberRemoved,
                format!("member {member} left; its cluster is now member {owner}'s"),
            ),
        }
    }
}

/// Removes meshfed's objects from one member, unless its cluster now belongs
/// to a member of this federation: by the cluster's claim, or by `taken`
/// (cluster identity to member, as the members' workers found them).
pub async fn remove_member(
    ctx: &MemberContext,
    fed: &MeshFederation,
    member: &str,
    credentials: &crate::api::MemberCredentials,
    taken: &BTreeMap<String, String>,
) -> Result<Removal, String> {
    let conn = match ctx.connections.connect(credentials).await {
        Ok(conn) => conn,
        Err(e @ crate::connection::ConnectError::SecretMissing { .. }) => {
            return Ok(Removal::CredentialsGone(e.to_string()));
        }
        Err(e) => return Err(e.to_string()),
    };
    let federation = fed.name_any();
    let work = async {
        let claim = super::identity::recorded_claim(&conn.client).await?;
        if let Some(owner) = claim
            .as_ref()
            .filter(|c| c.federation == federation && c.member != member)
        {
            // Renamed on the same cluster: everything there is the new member's.
            return Ok(Removal::ClusterTakenBy(owner.member.clone()));
        }
        if !taken.is_empty()
            && let Some(owner) = taken.get(&super::identity::cluster_id(&conn.client).await?)
        {
            return Ok(Removal::ClusterTakenBy(owner.clone()));
        }
        // The claim records every kind meshfed applied there, a control plane's too.
        let ours = claim.filter(|c| c.federation == federation);
        let cluster = match &ours {
            Some(c) => c.cluster_id.clone(),
            None => super::identity::cluster_id(&conn.client).await?,
        };
        let recorded = ours.map(|c| c.kinds).unwrap_or_default();
        remove_from_member(
            &ctx.kinds,
            &conn.client,
            &cluster,
            &federation,
            fed.spec.ca().on_removal(),
            &recorded,
        )
        .await
        .map(Removal::Removed)
    };
    // Removing a control plane is many requests: the control plane's budget.
    let budget = ctx.settings.member_timeout * 6;
    match tokio::time::timeout(budget, work).await {
        Ok(result) => result.map_err(|e| super::error_text(&e)),
        Err(_) => Err(format!("not done within {budget:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_kinds_first_then_recorded_ones_config_maps_last_never_crds() {
        let recorded: BTreeSet<String> = [
            "apps/v1/Deployment",
            "apiextensions.k8s.io/v1/CustomResourceDefinition",
            "/v1/Secret",
            "/v1/ConfigMap",
            "autoscaling/v2/HorizontalPodAutoscaler",
        ]
        .map(String::from)
        .into();
        let kinds: Vec<String> = kinds_to_remove(&recorded)
            .iter()
            .map(|k| k.kind.clone())
            .collect();
        assert_eq!(
            kinds,
            [
                "Secret",
                "ServiceAccount",
                "ClusterRoleBinding",
                "ClusterRole",
                "Deployment",
                "HorizontalPodAutoscaler",
                "ConfigMap"
            ]
        );
    }
}
