//! Running meshfed against a test-bed fleet: install the CRD, hand the
//! operator each member's kubeconfig, run the operator, wait on conditions.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use meshfed::api::{
    ApiServerEndpoint, KubeconfigSecretRef, LocalCluster, Member, MemberCredentials,
    MeshFederation, MeshFederationSpec,
};
use meshfed::controller::Context;
use meshfed::settings::Settings;
use tokio::task::JoinHandle;

use crate::Cluster;

/// Namespace the operator keeps credentials and generated roots in.
pub const OPERATOR_NAMESPACE: &str = "meshfed-system";

/// The generated CRD, as checked in.
pub const CRD_YAML: &str = include_str!("../../config/crd/meshfed.io_meshfederations.yaml");

/// Installs the MeshFederation CRD and the operator namespace on `host`, and
/// waits until the CRD is served.
pub async fn install_operator_prerequisites(host: &Client) -> Result<()> {
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD_YAML)?;
    let crds = Api::<CustomResourceDefinition>::all(host.clone());
    let params = PatchParams::apply("meshfed-e2e").force();
    crds.patch("meshfederations.meshfed.io", &params, &Patch::Apply(&crd))
        .await?;
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(OPERATOR_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(host.clone())
        .patch(OPERATOR_NAMESPACE, &params, &Patch::Apply(&ns))
        .await?;
    poll(Duration::from_secs(30), "CRD established", || async {
        let crd = crds.get("meshfederations.meshfed.io").await?;
        let established = crd_established(&crd);
        // Discovery lags the condition a little; ask for the resource itself.
        Ok(established
            && Api::<MeshFederation>::all(host.clone())
                .list(&Default::default())
                .await
                .is_ok())
    })
    .await
}

/// Makes the fleet's cluster-0 the operator's host: CRD and namespace
/// installed, every other cluster's kubeconfig stored as member credentials.
pub async fn prepare_host(fleet: &crate::Fleet) -> Result<()> {
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    for c in &fleet.clusters()[1..] {
        store_credentials(&host, c).await?;
    }
    Ok(())
}

/// Whether the API server reports the CRD as Established (served).
pub fn crd_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Name of the Secret holding `cluster`'s kubeconfig in the operator namespace.
pub fn credentials_secret_name(cluster: &Cluster) -> String {
    format!("{}-kubeconfig", cluster.name())
}

/// Stores `cluster`'s admin kubeconfig where the operator looks for it.
pub async fn store_credentials(host: &Client, cluster: &Cluster) -> Result<()> {
    store_credentials_as(host, cluster, &credentials_secret_name(cluster)).await
}

/// Stores `cluster`'s admin kubeconfig in the operator namespace as Secret `name`.
pub async fn store_credentials_as(host: &Client, cluster: &Cluster, name: &str) -> Result<()> {
    store_kubeconfig(host, name, cluster.kubeconfig_yaml()).await
}

/// Stores `kubeconfig` in the operator namespace as Secret `name`.
pub async fn store_kubeconfig(host: &Client, name: &str, kubeconfig: &str) -> Result<()> {
    let name = name.to_string();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "kubeconfig".to_string(),
            ByteString(kubeconfig.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .patch(
            &name,
            &PatchParams::apply("meshfed-e2e").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// A kubeconfig for `cluster` holding a one-hour token of ServiceAccount
/// `namespace/name`.
pub async fn token_kubeconfig(
    cluster: &Cluster,
    admin: &Client,
    namespace: &str,
    name: &str,
) -> Result<String> {
    use base64::Engine as _;
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await?
            .status
            .context("TokenRequest without status")?
            .token;
    let ca = base64::engine::general_purpose::STANDARD.encode(cluster.ca_pem());
    Ok(format!(
        "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: {}
    certificate-authority-data: {ca}
users:
- name: {name}
  user:
    token: {token}
contexts:
- name: c
  context: {{cluster: c, user: {name}}}
current-context: c
",
        cluster.server_url()
    ))
}

/// What `kubectl meshfed join` does to a cluster, without the plugin:
/// `istio-system`, meshfed's member roles limited to `federation`, and the
/// member identity; returns a kubeconfig with a token of that identity.
pub async fn join_identity(cluster: &Cluster, federation: &str) -> Result<String> {
    let admin = cluster.client();
    meshfed::connection::apply_member_rbac(&admin, federation, "meshfed-e2e").await?;
    token_kubeconfig(
        cluster,
        &admin,
        "istio-system",
        meshfed::plugin::MEMBER_IDENTITY,
    )
    .await
}

/// The members of a federation over the whole fleet: cluster 0 (the
/// operator's) as a `local` member, every other through its kubeconfig,
/// cluster `i` on `networks[i]`.
pub fn members_of(fleet: &crate::Fleet, networks: &[&str]) -> Vec<Member> {
    fleet
        .clusters()
        .iter()
        .zip(networks)
        .enumerate()
        .map(|(i, (c, n))| {
            if i == 0 {
                local_member(c, n)
            } else {
                member(c, n)
            }
        })
        .collect()
}

/// A member entry for `cluster` on `network`, reached through its kubeconfig Secret.
pub fn member(cluster: &Cluster, network: &str) -> Member {
    Member {
        name: cluster.name().into(),
        network: network.into(),
        credentials: MemberCredentials {
            secret_ref: Some(KubeconfigSecretRef {
                name: credentials_secret_name(cluster),
                key: None,
            }),
            local: None,
        },
        api_server: None,
        control_plane_values: None,
        east_west_gateway: None,
    }
}

/// A member entry for the cluster the operator runs in.
pub fn local_member(cluster: &Cluster, network: &str) -> Member {
    Member {
        name: cluster.name().into(),
        network: network.into(),
        credentials: MemberCredentials {
            secret_ref: None,
            local: Some(LocalCluster {}),
        },
        api_server: Some(ApiServerEndpoint {
            url: cluster.server_url().into(),
            ca_bundle: Some(cluster.ca_pem().into()),
        }),
        control_plane_values: None,
        east_west_gateway: None,
    }
}

/// A federation of `members` with meshfed's defaults. A `local` member
/// (the test bed saves a cluster by making the operator's host a member)
/// comes with the opt-in it needs: `allowPeersToReadOperatorSecrets`.
pub fn federation(name: &str, members: Vec<Member>) -> MeshFederation {
    let host_is_member = members.iter().any(|m| m.credentials.local.is_some());
    MeshFederation::new(
        name,
        MeshFederationSpec {
            mesh_id: "mesh1".into(),
            trust_domain: None,
            members,
            ca: None,
            remote_secrets: None,
            control_plane: None,
            failover: None,
            allow_peers_to_read_operator_secrets: host_is_member.then_some(true),
        },
    )
}

/// The operator running inside this process against `host`.
pub struct RunningOperator {
    pub context: Arc<Context>,
    task: JoinHandle<()>,
}

impl Drop for RunningOperator {
    /// A restart as a process exit is one: the workers stop too, even while
    /// a test still holds a copy of the context.
    fn drop(&mut self) {
        self.task.abort();
        self.context.stop_workers();
    }
}

/// Starts the operator with `host` as its own cluster.
pub fn start_operator(
    host: &Cluster,
    resync: Duration,
    member_timeout: Duration,
) -> Result<RunningOperator> {
    start_operator_with(
        host,
        Settings {
            resync,
            member_timeout,
            ..Settings::new(OPERATOR_NAMESPACE)
        },
    )
}

/// What most end-to-end tests start from: a fleet whose cluster-0 is the
/// operator's host (prepared by [`prepare_host`]), and the operator running
/// in this process. Fields drop in order: log tails first (while the files
/// exist), then the operator, then the fleet.
pub struct OperatorBed {
    _logs: crate::LogTailGuard,
    pub operator: RunningOperator,
    pub host: Client,
    pub fleet: crate::Fleet,
}

/// An [`OperatorBed`] of `clusters` clusters, the operator with `resync` and
/// `member_timeout`.
pub async fn operator_bed(
    clusters: usize,
    resync: Duration,
    member_timeout: Duration,
) -> Result<OperatorBed> {
    let fleet = crate::Fleet::start(clusters).await?;
    let logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let operator = start_operator(fleet.cluster(0), resync, member_timeout)?;
    Ok(OperatorBed {
        _logs: logs,
        operator,
        host,
        fleet,
    })
}

/// The operator's settings for Managed control planes in the test bed:
/// Istio's charts from `charts_dir`, the pinned helm, a 2 s resync.
pub async fn managed_settings(charts_dir: std::path::PathBuf) -> Result<Settings> {
    Ok(Settings {
        resync: Duration::from_secs(2),
        member_timeout: Duration::from_secs(10),
        helm: crate::istiod::helm().await?,
        charts_dir,
        ..Settings::new(OPERATOR_NAMESPACE)
    })
}

/// Starts the operator with `host` as its own cluster and these settings.
pub fn start_operator_with(host: &Cluster, settings: Settings) -> Result<RunningOperator> {
    let context = Context::new(host.client(), host.kube_config(), settings)?;
    let task = tokio::spawn(meshfed::controller::run(context.clone()));
    Ok(RunningOperator { context, task })
}

/// Creates or replaces the federation's spec (as a user or Argo CD would).
pub async fn apply_federation(host: &Client, fed: &MeshFederation) -> Result<()> {
    let api = Api::<MeshFederation>::all(host.clone());
    let name = fed
        .metadata
        .name
        .clone()
        .context("federation without a name")?;
    api.patch(
        &name,
        &PatchParams::apply("meshfed-e2e-user").force(),
        &Patch::Apply(fed),
    )
    .await?;
    Ok(())
}

/// Creates the federation, failing if the API server rejects it.
pub async fn create_federation(host: &Client, fed: &MeshFederation) -> Result<(), kube::Error> {
    Api::<MeshFederation>::all(host.clone())
        .create(&PostParams::default(), fed)
        .await
        .map(|_| ())
}

/// Status of condition `type_` ("True"/"False"), if set.
pub fn condition<'a>(
    fed: &'a MeshFederation,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    fed.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Whether the federation's status describes its current generation and says `type_`=`status`.
pub fn has_condition(fed: &MeshFederation, type_: &str, status: &str) -> bool {
    let current =
        fed.status.as_ref().and_then(|s| s.observed_generation) == fed.metadata.generation;
    current && condition(fed, type_).is_some_and(|c| c.status == status)
}

/// Waits until `pred` holds for the federation; returns it.
pub async fn wait_for_federation(
    host: &Client,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&MeshFederation) -> bool,
) -> Result<MeshFederation> {
    let api = Api::<MeshFederation>::all(host.clone());
    let start = Instant::now();
    loop {
        let fed = api.get_opt(name).await?;
        if let Some(fed) = &fed
            && pred(fed)
        {
            return Ok(fed.clone());
        }
        if start.elapsed() > timeout {
            let status = fed
                .and_then(|f| f.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default());
            bail!(
                "timed out after {timeout:?} waiting for {what}; last status: {}",
                status.unwrap_or_else(|| "none".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn poll<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The federation's headline and per-member table, as `kubectl meshfed
/// status` prints them, followed by its conditions.
pub fn status_table(fed: &MeshFederation) -> String {
    let mut out = format!(
        "{}\n{}",
        meshfed::plugin::headline(fed),
        meshfed::plugin::status_table(fed)
    );
    for c in fed.status.iter().flat_map(|s| &s.conditions) {
        out += &format!(
            "condition {:<20} {:<6} {:<24} {}\n",
            c.type_, c.status, c.reason, c.message
        );
    }
    out
}

/// kwok runs no sidecar injector, and the gateway pods ask for injection:
/// lets every mutating webhook in the cluster fail open, as a serving istiod
/// would make moot (docs/install.md explains). Returns how many webhook
/// configurations there were.
pub async fn relax_injection(client: &Client) -> Result<usize> {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let hooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let found = hooks.list(&Default::default()).await?.items;
    for hook in &found {
        let name = hook.metadata.name.clone().unwrap_or_default();
        let relaxed = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": hook.webhooks.iter().flatten()
                .map(|w| serde_json::json!({"name": w.name, "failurePolicy": "Ignore"}))
                .collect::<Vec<_>>(),
        });
        hooks
            .patch(
                &name,
                &PatchParams::apply("e2e-testbed").force(),
                &Patch::Apply(&relaxed),
            )
            .await?;
    }
    Ok(found.len())
}

/// The pod annotation that keeps kwok from making a pod Ready again.
pub const HELD_UNREADY: &str = "testbed.meshfed.io/held-unready";

/// Sets Ready (and ContainersReady) on the Deployment's pods where it
/// differs, as a kubelet would after a readiness probe. Not ready is held
/// (annotation [`HELD_UNREADY`]) until set ready again: the test bed's kwok
/// otherwise makes a running pod Ready again after a second.
pub async fn set_pods_ready(client: &Client, d: &Deployment, ready: bool) -> Result<()> {
    let selector = d
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &d.namespace().unwrap_or_default());
    let want = if ready { "True" } else { "False" };
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let status = pod.status.as_ref();
        if status.and_then(|s| s.pod_ip.as_ref()).is_none() {
            continue; // kwok has not started it yet
        }
        let current = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        let held = pod.annotations().contains_key(HELD_UNREADY);
        if held == ready {
            let annotation = if ready { None } else { Some("true") };
            let patch =
                serde_json::json!({"metadata": {"annotations": {HELD_UNREADY: annotation}}});
            pods.patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        if current.as_deref() == Some(want) {
            continue;
        }
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
        let containers: Vec<serde_json::Value> = status
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|mut c| {
                c.ready = ready;
                serde_json::to_value(c).unwrap_or_default()
            })
            .collect();
        let patch = serde_json::json!({"status": {
            "conditions": [
                {"type": "Ready", "status": want, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": want, "lastTransitionTime": now},
            ],
            "containerStatuses": containers,
        }});
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await?;
    }
    Ok(())
}

/// Path of the `meshfed-operator` binary, built (debug) if needed.
pub fn operator_binary() -> Result<std::path::PathBuf> {
    build_operator(false)
}

/// Builds the operator binary, optimised with `release`; returns its path.
pub fn build_operator(release: bool) -> Result<std::path::PathBuf> {
    build_binary("meshfed-operator", release)
}

/// Builds binary `name` of the operator crate (`meshfed-operator`,
/// `kubectl-meshfed`), optimised with `release`; returns its path.
pub fn build_binary(name: &str, release: bool) -> Result<std::path::PathBuf> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = vec!["build", "-q", "-p", "meshfed-operator", "--bin", name];
    if release {
        args.push("--release");
    }
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(&args)
            .current_dir(&workspace)
            .status()?;
    if !status.success() {
        bail!("building {name} failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(workspace.join("target"), Into::into);
    let profile = if release { "release" } else { "debug" };
    Ok(target.join(profile).join(name))
}

/// `GET path` over HTTP/1.0: (status, body). Bounded to 10 s.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let code = response
            .split_whitespace()
            .nth(1)
            .context("empty HTTP response")?
            .parse()?;
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        anyhow::Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .with_context(|| format!("GET {path} on {addr} timed out"))?
}

/// A chart directory laid out as the operator expects (`<dir>/<version>/base`,
/// ...), holding the pinned Istio's official charts; and that version's name.
/// `$MESHFED_ISTIO_CHARTS` may point at a `manifests/charts` directory;
/// otherwise `e2e/testbed/build-istio.sh` provides it.
pub async fn istio_chart_set(into: &std::path::Path) -> Result<(std::path::PathBuf, String)> {
    let charts = match std::env::var_os("MESHFED_ISTIO_CHARTS") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => crate::istiod::istio().await?.charts_dir(),
    };
    let version = crate::istiod::DEFAULT_VERSION.to_string();
    let dir = into.join("istio-charts");
    std::fs::create_dir_all(&dir)?;
    let link = dir.join(&version);
    if !link.exists() {
        std::os::unix::fs::symlink(&charts, &link)?;
    }
    Ok((dir, version))
}
