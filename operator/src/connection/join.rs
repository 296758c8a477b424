//! What `kubectl meshfed join` does to a cluster before it stores a token:
//! `istio-system`, and meshfed's member roles and identity, limited to one
//! federation's reader ([`crate::render::member_rbac`]).
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use k8s_openapi::api::core::v1::Namespace;

/// Creates `istio-system` if missing and applies the member roles for
/// `federation` with server-side apply as `manager`.
pub async fn apply_member_rbac(
    client: &Client,
    federation: &str,
    manager: &str,
) -> Result<(), kube::Error> {
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.get_opt("istio-system").await?.is_none() {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("istio-system".into());
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let params = PatchParams::apply(manager).force();
    for object in crate::render::member_rbac(&[federation]) {
        let obj: DynamicObject = serde_json::from_value(object).map_err(kube::Error::SerdeError)?;
        // The shipped YAML always names a kind; one without cannot be applied.
        let Some(types) = obj.types.clone() else {
            return Err(kube::Error::SerdeError(serde::de::Error::custom(format!(
                "member RBAC object {} has no apiVersion and kind",
                obj.name_any()
            ))));
        };
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", types.api_version.as_str()));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
        let api = match obj.namespace() {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource),
            None => Api::<DynamicObject>::all_with(client.clone(), &resource),
        };
        api.patch(&obj.name_any(), &params, &Patch::Apply(&obj))
            .await?;
    }
    Ok(())
}
