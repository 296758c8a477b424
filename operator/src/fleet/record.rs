//! The durable records: ConfigMaps in the operator's namespace, one per
//! concern and federation (`meshfed-members-`, `-clusters-`, `-ca-`,
//! `-withdrawn-`, `-rollout-<federation>`), owned by the federation. What a
//! decision must remember across a restart lives in one of them, written
//! before anything in a member acts on it.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::MeshFederation;
use crate::render::{field_manager, managed_labels};

/// Writes the ConfigMap `name` in the operator's namespace with `data`,
/// owned by the federation (garbage-collected with it should a finalizer be
/// removed by hand). What meshfed keeps about a federation outside status.
pub async fn write(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply(&field_manager(&fed.name_any())).force(),
            &Patch::Apply(&render_record(fed, name, data)),
        )
        .await?;
    Ok(())
}

pub(super) fn render_record(
    fed: &MeshFederation,
    name: &str,
    data: BTreeMap<String, String>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(managed_labels(&fed.name_any())),
            owner_references: fed.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The data of record `name` in the operator's namespace, if it exists: the
/// one reader of the records [`write`] writes.
pub async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
    let record = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    Ok(record.map(|r| r.data.unwrap_or_default()))
}

/// Deletes record `name`; one already gone is fine.
pub async fn delete(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    crate::apply::delete(
        &Api::<ConfigMap>::namespaced(client.clone(), namespace),
        name,
    )
    .await
    .map(|_| ())
}
