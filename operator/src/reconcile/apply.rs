//! "Make it so" for single objects: apply only what differs, never over
//! objects meshfed does not own, delete only what carries meshfed's labels.
use std::fmt::Debug;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::render::{FIELD_MANAGER, contains, is_ours, keys, managed_selector, wants_adoption};

/// What [`ensure`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The live object already says everything the desired one does.
    Unchanged,
    /// Created or updated with server-side apply.
    Written,
    /// An object of that name exists and meshfed did not create it.
    Foreign,
}

/// Whether an object may already exist without meshfed's labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Only ever write over objects meshfed created (or the user handed over).
    Exclusive,
    /// Shared object (istio-system): meshfed owns only the fields it applies.
    Shared,
}

/// Server-side applies `desired` unless the live object already matches it.
/// Reading first keeps a steady-state reconcile free of writes. Returns the
/// object as it now is on the server (a foreign one as found).
pub async fn ensure<K>(
    api: &Api<K>,
    desired: &K,
    federation: &str,
    ownership: Ownership,
) -> Result<(Applied, K), kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    if let Some(live) = api.get_opt(&name).await? {
        if ownership == Ownership::Exclusive && !is_ours(live.meta(), federation) {
            return Ok((Applied::Foreign, live));
        }
        if contains(&to_value(&live), &to_value(desired)) {
            return Ok((Applied::Unchanged, live));
        }
    }
    Ok((Applied::Written, write(api, desired).await?))
}

/// Server-side applies `desired` unconditionally (the caller decided it must
/// change). An object a user handed over with `meshfed.io/adopt` now carries
/// this federation's labels; the annotation goes, so that no other federation
/// can take it.
pub async fn write<K>(api: &Api<K>, desired: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let written = api.patch(&name, &params, &Patch::Apply(desired)).await?;
    if !wants_adoption(written.meta()) {
        return Ok(written);
    }
    let adopted = serde_json::json!({"metadata": {"annotations": {keys::ADOPT: null}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&adopted))
        .await
}

/// Deletes every object meshfed labelled for `federation` that `keep` rejects.
/// Returns the names deleted.
pub async fn prune<K>(
    api: &Api<K>,
    federation: &str,
    keep: impl Fn(&K) -> bool,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let mut deleted = Vec::new();
    let objects = api
        .list(&ListParams::default().labels(&managed_selector(federation)))
        .await?;
    for obj in objects.items.iter().filter(|o| !keep(o)) {
        match api.delete(&obj.name_any(), &DeleteParams::default()).await {
            Ok(_) => deleted.push(obj.name_any()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
