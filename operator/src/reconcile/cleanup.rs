//! Removing meshfed's objects from a member that leaves, or from every member
//! when the federation is deleted: the apply engine's prune with nothing
//! desired, over every kind meshfed ever applied there.
use std::collections::BTreeSet;

use kube::api::{DynamicObject, GroupVersionKind, ObjectMeta};
use kube::{Api, Client};

use super::apply::prune;
use super::control_plane::KindCache;
use crate::api::RemovalPolicy;
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
    let retain = policy == RemovalPolicy::Retain;
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
        let (resource, namespaced) = match kinds.resolve(client, cluster, &gvk).await {
            Ok(found) => found,
            // Not served (any more): nothing of that kind can exist.
            Err(kube::Error::Discovery(_)) => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e),
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
