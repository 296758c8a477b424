//! Removing meshfed's objects from a member that leaves, or from every member
//! when the federation is deleted.
use std::fmt::Debug;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::apply::prune;
use crate::api::RemovalPolicy;
use crate::render::control_plane::COMPONENT;
use crate::render::{CACERTS, ISTIO_NAMESPACE};

/// Deletes what meshfed labelled for `federation` in the member. Remote
/// secrets, the reader identity and the cluster claim always go. With `Retain`, what a running
/// Istio needs stays: `cacerts` and the control plane meshfed installed
/// (istiod, gateways), so the cluster keeps working on its own. Never
/// deleted: Istio's CRDs (that would delete every Istio resource) and the
/// `istio-system` namespace. Control-plane kinds are visited only when the
/// federation has (or had) a control plane: otherwise the operator has no
/// business, nor permission, listing them.
pub async fn remove_from_member(
    client: &Client,
    federation: &str,
    policy: RemovalPolicy,
    control_plane: bool,
) -> Result<Vec<String>, kube::Error> {
    let retain = policy == RemovalPolicy::Retain;
    let keep = |meta: &ObjectMeta| {
        let installed = meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(COMPONENT));
        retain && (installed || meta.name.as_deref() == Some(CACERTS))
    };
    let c = || client.clone();
    let ns = ISTIO_NAMESPACE;
    let mut removed = Vec::new();
    removed.extend(prune_kind(Api::<Secret>::namespaced(c(), ns), federation, &keep).await?);
    removed.extend(
        prune_kind(
            Api::<ServiceAccount>::namespaced(c(), ns),
            federation,
            &keep,
        )
        .await?,
    );
    removed.extend(prune_kind(Api::<ClusterRoleBinding>::all(c()), federation, &keep).await?);
    removed.extend(prune_kind(Api::<ClusterRole>::all(c()), federation, &keep).await?);
    // The cluster claim, and the control plane's ConfigMaps unless retained.
    removed.extend(prune_kind(Api::<ConfigMap>::namespaced(c(), ns), federation, &keep).await?);
    if !control_plane {
        return Ok(removed);
    }
    removed.extend(prune_kind(Api::<Deployment>::namespaced(c(), ns), federation, &keep).await?);
    removed.extend(prune_kind(Api::<Service>::namespaced(c(), ns), federation, &keep).await?);
    removed.extend(prune_kind(Api::<Role>::namespaced(c(), ns), federation, &keep).await?);
    removed.extend(prune_kind(Api::<RoleBinding>::namespaced(c(), ns), federation, &keep).await?);
    removed.extend(
        prune_kind(
            Api::<HorizontalPodAutoscaler>::namespaced(c(), ns),
            federation,
            &keep,
        )
        .await?,
    );
    removed.extend(
        prune_kind(
            Api::<PodDisruptionBudget>::namespaced(c(), ns),
            federation,
            &keep,
        )
        .await?,
    );
    removed.extend(
        prune_kind(
            Api::<MutatingWebhookConfiguration>::all(c()),
            federation,
            &keep,
        )
        .await?,
    );
    removed.extend(
        prune_kind(
            Api::<ValidatingWebhookConfiguration>::all(c()),
            federation,
            &keep,
        )
        .await?,
    );
    let gateway = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "Gateway",
    ));
    match prune_kind(
        Api::<DynamicObject>::namespaced_with(c(), ns, &gateway),
        federation,
        &keep,
    )
    .await
    {
        Ok(names) => removed.extend(names),
        // Istio's CRDs are not installed: no Gateway can exist.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    Ok(removed)
}

/// Deletes `federation`'s objects of one kind that `keep` rejects; returns "Kind/name"s.
async fn prune_kind<K>(
    api: Api<K>,
    federation: &str,
    keep: &impl Fn(&ObjectMeta) -> bool,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    let names = prune(&api, federation, |o: &K| keep(o.meta())).await?;
    Ok(names.into_iter().map(|n| format!("{kind}/{n}")).collect())
}
