//! The one way meshfed writes and deletes in a cluster: apply only what
//! differs, never over objects meshfed does not own, delete only what
//! carries meshfed's labels, and treat an object (or a kind) already gone as
//! gone. Every write into a member goes through here: [`ensure`] and
//! [`write`] (server-side apply as the federation), [`apply_as`] (a field
//! manager of its own), [`create`] and [`replace`] (optimistic writes that
//! must fail on a conflict: a claim, a token binding), [`merge`]; and every
//! delete: [`delete`], [`delete_all`], [`prune`].
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;

use kube::api::{
    ApiResource, DeleteParams, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::render::{contains, field_manager, is_ours, keys, wants_adoption};

/// API resources by cluster (its identity, never a member name, which another
/// federation may share) and kind, found once through discovery and
/// forgotten when the cluster stops serving the kind.
#[derive(Default)]
pub struct KindCache(Mutex<HashMap<String, (ApiResource, bool)>>);

impl KindCache {
    fn key(cluster: &str, gvk: &GroupVersionKind) -> String {
        format!("{cluster}/{}/{}/{}", gvk.group, gvk.version, gvk.kind)
    }

    pub fn forget(&self, cluster: &str, gvk: &GroupVersionKind) {
        self.0
            .lock()
            .expect("kind cache")
            .remove(&Self::key(cluster, gvk));
    }

    /// The API resource of `gvk` in the cluster, and whether it is
    /// namespaced; `None` when the cluster does not serve the kind (yet).
    pub async fn resolve(
        &self,
        client: &Client,
        cluster: &str,
        gvk: &GroupVersionKind,
    ) -> Result<Option<(ApiResource, bool)>, kube::Error> {
        let key = Self::key(cluster, gvk);
        if let Some(found) = self.0.lock().expect("kind cache").get(&key) {
            return Ok(Some(found.clone()));
        }
        let (resource, caps) = match pinned_kind(client, gvk).await {
            Ok(found) => found,
            Err(kube::Error::Discovery(_)) => return Ok(None),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let found = (resource, caps.scope == Scope::Namespaced);
        self.0
            .lock()
            .expect("kind cache")
            .insert(key, found.clone());
        Ok(Some(found))
    }
}

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
    Ok((Applied::Written, write(api, desired, federation).await?))
}

/// Server-side applies `desired` unconditionally (the caller decided it must
/// change). An object a user handed over with `meshfed.io/adopt` now carries
/// this federation's labels; the annotation goes, so that no other federation
/// can take it.
pub async fn write<K>(api: &Api<K>, desired: &K, federation: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(&field_manager(federation)).force();
    let written = api.patch(&name, &params, &Patch::Apply(desired)).await?;
    if !wants_adoption(written.meta()) {
        return Ok(written);
    }
    let adopted = serde_json::json!({"metadata": {"annotations": {keys::ADOPT: null}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&adopted))
        .await
}

/// Deletes every object in `api` matching `selector` that `keep` rejects.
/// Returns the names deleted.
pub async fn prune<K>(
    api: &Api<K>,
    selector: &str,
    keep: impl Fn(&K) -> bool,
) -> Result<Vec<String>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let objects = api.list(&ListParams::default().labels(selector)).await?;
    let unwanted = objects
        .items
        .iter()
        .filter(|o| !keep(o))
        .map(|o| o.name_any());
    delete_all(api, unwanted.collect()).await
}

/// Deletes the objects named `names` in `api` (one already gone is no
/// error). Returns the names deleted.
pub async fn delete_all<K>(api: &Api<K>, names: Vec<String>) -> Result<Vec<String>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let mut deleted = Vec::new();
    for name in names {
        if delete(api, &name).await? {
            deleted.push(name);
        }
    }
    Ok(deleted)
}

/// Deletes `name` in `api`: true when it was there, false when it was
/// already gone.
pub async fn delete<K>(api: &Api<K>, name: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the API server said the object, or its kind, does not exist.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether the API server refused a write because the object exists or
/// changed since it was read.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Creates `obj` as it is: fails with a conflict ([`is_conflict`]) when an
/// object of that name exists, for objects whose first writer must win (a
/// cluster claim) or that get a generated name (a token binding).
pub async fn create<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    api.create(&PostParams::default(), obj).await
}

/// Replaces the object at the resourceVersion `obj` carries: fails with a
/// conflict when it changed since it was read.
pub async fn replace<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.replace(&name, &PostParams::default(), obj).await
}

/// Server-side applies `obj` as `manager` rather than as the federation:
/// fields someone else may take over later (defaults applied once at
/// creation).
pub async fn apply_as<K>(api: &Api<K>, obj: &K, manager: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(manager), &Patch::Apply(obj))
        .await
}

/// Merges `patch` into object `name` (fields meshfed alone writes, such as
/// the kinds a claim records).
pub async fn merge<K>(api: &Api<K>, name: &str, patch: &Value) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Scripted API conversations (controller-rs's `ApiServerVerifier` style):
/// each test names every request the step may send, in order, and fails on
/// any other. The end-to-end suite runs the same steps against real API
/// servers; these pin down the exact requests.
#[cfg(test)]
mod conversations {
    use std::time::Duration;

    use http::{Method, Request, Response, StatusCode};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::Client;
    use kube::client::Body;
    use serde_json::json;

    use super::*;
    use crate::render::managed_labels;

    /// One request the step must send, and the answer it gets.
    struct Exchange {
        method: Method,
        path: &'static str,
        /// What the query must contain (empty: anything).
        query: &'static [&'static str],
        status: StatusCode,
        body: Value,
    }

    fn exchange(method: Method, path: &'static str, status: StatusCode, body: Value) -> Exchange {
        Exchange {
            method,
            path,
            query: &[],
            status,
            body,
        }
    }

    /// Runs `step` against a client that answers `script`, and checks that
    /// it sent exactly the scripted requests.
    async fn converse<T, F>(script: Vec<Exchange>, step: impl FnOnce(Client) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            for expected in script {
                let (request, respond) = handle.next_request().await.unwrap_or_else(|| {
                    panic!(
                        "the step stopped before {} {}",
                        expected.method, expected.path
                    )
                });
                assert_eq!(request.method(), expected.method, "{}", request.uri());
                assert_eq!(request.uri().path(), expected.path);
                let query = request.uri().query().unwrap_or_default();
                for part in expected.query {
                    assert!(query.split('&').any(|p| p == *part), "{part}: {query}");
                }
                let body = serde_json::to_vec(&expected.body).unwrap();
                respond.send_response(
                    Response::builder()
                        .status(expected.status)
                        .body(Body::from(body))
                        .unwrap(),
                );
            }
            let extra = tokio::time::timeout(Duration::from_secs(1), handle.next_request()).await;
            if let Ok(Some((request, _))) = extra {
                panic!(
                    "a request the script does not allow: {} {}",
                    request.method(),
                    request.uri()
                );
            }
        });
        let out = step(Client::new(service, "default")).await;
        server.await.expect("the scripted server");
        out
    }

    const PATH: &str = "/api/v1/namespaces/istio-system/configmaps/settings";

    fn config_map(labels: bool, value: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("settings".into());
        cm.metadata.namespace = Some("istio-system".into());
        cm.metadata.labels = labels.then(|| managed_labels("prod"));
        cm.data = Some([("mode".to_string(), value.to_string())].into());
        cm
    }

    fn api(client: Client) -> Api<ConfigMap> {
        Api::namespaced(client, "istio-system")
    }

    /// Ensures the desired `settings` ConfigMap (`mode: on`) as federation
    /// `prod` against `script`.
    async fn ensure_settings(script: Vec<Exchange>) -> Result<(Applied, ConfigMap), kube::Error> {
        converse(script, |c| async move {
            ensure(
                &api(c),
                &config_map(true, "on"),
                "prod",
                Ownership::Exclusive,
            )
            .await
        })
        .await
    }

    /// An API server's failure answer.
    fn failure(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": reason, "code": code, "message": reason})
    }

    fn not_found() -> Value {
        failure(404, "NotFound")
    }

    #[tokio::test]
    async fn steady_state_reads_once_and_writes_nothing() {
        let live = serde_json::to_value(config_map(true, "on")).unwrap();
        let script = vec![exchange(Method::GET, PATH, StatusCode::OK, live)];
        let (applied, _) = ensure_settings(script).await.unwrap();
        assert_eq!(applied, Applied::Unchanged);
    }

    #[tokio::test]
    async fn a_missing_or_drifted_object_is_applied_as_the_federation() {
        for live in [
            (StatusCode::NOT_FOUND, not_found()),
            (
                StatusCode::OK,
                serde_json::to_value(config_map(true, "off")).unwrap(),
            ),
        ] {
            let written = serde_json::to_value(config_map(true, "on")).unwrap();
            let script = vec![
                exchange(Method::GET, PATH, live.0, live.1),
                Exchange {
                    query: &["fieldManager=meshfed-prod", "force=true"],
                    ..exchange(Method::PATCH, PATH, StatusCode::OK, written)
                },
            ];
            let (applied, _) = ensure_settings(script).await.unwrap();
            assert_eq!(applied, Applied::Written);
        }
    }

    #[tokio::test]
    async fn an_object_meshfed_did_not_create_is_never_written() {
        let foreign = serde_json::to_value(config_map(false, "theirs")).unwrap();
        let script = vec![exchange(Method::GET, PATH, StatusCode::OK, foreign)];
        let (applied, live) = ensure_settings(script).await.unwrap();
        assert_eq!(applied, Applied::Foreign);
        assert_eq!(live.data.unwrap()["mode"], "theirs");
    }

    #[tokio::test]
    async fn a_delete_of_what_is_gone_is_no_error_and_other_errors_are() {
        let script = vec![exchange(
            Method::DELETE,
            PATH,
            StatusCode::NOT_FOUND,
            not_found(),
        )];
        let gone = converse(script, |c| async move { delete(&api(c), "settings").await }).await;
        assert!(!gone.unwrap(), "already gone");
        let forbidden = failure(403, "Forbidden");
        let script = vec![exchange(
            Method::DELETE,
            PATH,
            StatusCode::FORBIDDEN,
            forbidden,
        )];
        let denied = converse(script, |c| async move { delete(&api(c), "settings").await }).await;
        assert!(matches!(denied, Err(kube::Error::Api(s)) if s.code == 403));
    }
}
