//! Removing meshfed's objects from a member that leaves, or from every member
//! when the federation is deleted.
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::{Api, Client, ResourceExt};

use super::apply::prune;
use crate::api::RemovalPolicy;
use crate::render::{CACERTS, ISTIO_NAMESPACE};

/// Deletes everything meshfed labelled for `federation` in the member: remote
/// secrets, the reader identity, and `cacerts` unless the policy retains it.
/// The `istio-system` namespace and its network label stay (they may carry
/// the user's own Istio install).
pub async fn remove_from_member(
    client: &Client,
    federation: &str,
    policy: RemovalPolicy,
) -> Result<Vec<String>, kube::Error> {
    let retain_cacerts = policy == RemovalPolicy::Retain;
    let mut removed = Vec::new();
    let secrets = Api::<Secret>::namespaced(client.clone(), ISTIO_NAMESPACE);
    removed.extend(
        prune(&secrets, federation, |s| {
            retain_cacerts && s.name_any() == CACERTS
        })
        .await?,
    );
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), ISTIO_NAMESPACE);
    removed.extend(prune(&sas, federation, |_| false).await?);
    removed.extend(
        prune(
            &Api::<ClusterRoleBinding>::all(client.clone()),
            federation,
            |_| false,
        )
        .await?,
    );
    removed.extend(
        prune(&Api::<ClusterRole>::all(client.clone()), federation, |_| {
            false
        })
        .await?,
    );
    Ok(removed)
}
