//! The real Istio control plane in the test bed: istiod (`pilot-discovery`)
//! run as a local process against one test-bed cluster, the way it would
//! run in that cluster, plus Istio's base CRDs and its debug endpoints.
//!
//! ```no_run
//! # async fn demo(fleet: &e2e::Fleet) -> anyhow::Result<()> {
//! use e2e::istiod::{Istiod, install_base_crds};
//! let c = fleet.cluster(0);
//! install_base_crds(&c.client()).await?;
//! let istiod = Istiod::start(c, "cluster-0", "net-a", "mesh1", &fleet.dir().join("istiod-0")).await?;
//! for rc in istiod.clusterz().await? {
//!     println!("{} {}", rc.id, rc.sync_status);
//! }
//! # Ok(()) }
//! ```
//!
//! The binaries and charts come from `e2e/testbed/build-istio.sh` (pinned by
//! `ISTIO_MODULE_VERSION` in `versions.env`), or from `$MESHFED_ISTIO_ROOT`.
//! See `docs/istio.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fleet::{Proc, Spec};
pub use crate::mesh::http_get;
use crate::mesh::poll;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use tokio::sync::OnceCell;

use crate::Cluster;
use crate::fleet::{free_port, tail_file};
use crate::workload::SecretProjection;

/// A directory holding `bin/{pilot-discovery,istioctl}` and `charts/`; skips
/// running the build script.
pub const ROOT_ENV: &str = "MESHFED_ISTIO_ROOT";
/// Path of a helm binary; skips running `build-helm.sh`.
pub const HELM_ENV: &str = "MESHFED_HELM";
/// Path of a promtool binary; skips running `build-promtool.sh`.
pub const PROMTOOL_ENV: &str = "MESHFED_PROMTOOL";
/// Istio's system namespace, where istiod reads `cacerts` and remote secrets.
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// Label istiod reads a cluster's network from (on the system namespace).
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// Field manager for what this module applies.
const MANAGER: &str = "meshfed-e2e-istio";

/// The pinned Istio build: binaries and Helm charts.
#[derive(Debug, Clone)]
pub struct Istio {
    root: PathBuf,
}

impl Istio {
    /// The directory holding `bin/` and `charts/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `pilot-discovery`, i.e. istiod.
    pub fn pilot_discovery(&self) -> PathBuf {
        self.root.join("bin/pilot-discovery")
    }

    /// `istioctl`.
    pub fn istioctl(&self) -> PathBuf {
        self.root.join("bin/istioctl")
    }

    /// Istio's charts (`base`, `istio-control/istio-discovery`, `gateway`, ...).
    pub fn charts_dir(&self) -> PathBuf {
        self.root.join("charts")
    }

    fn check(root: PathBuf) -> Result<Istio> {
        let istio = Istio { root };
        for p in [
            istio.pilot_discovery(),
            istio.istioctl(),
            istio.charts_dir().join("base/Chart.yaml"),
        ] {
            if !p.is_file() {
                bail!(
                    "{} missing; run `bash e2e/testbed/build-istio.sh` or point {ROOT_ENV} at its output",
                    p.display()
                );
            }
        }
        Ok(istio)
    }
}

/// The Istio version the test bed uses unless a test asks for another.
pub const DEFAULT_VERSION: &str = "1.31";
/// Every Istio version the test bed builds (`ISTIO_VERSIONS` in versions.env).
pub const VERSIONS: [&str; 2] = ["1.30", "1.31"];

/// The build of Istio `version` (one of [`VERSIONS`]): for the default
/// version what [`istio`] finds, else what `build-istio.sh <version>`
/// prints (built on first use, cached by version).
pub async fn istio_version(version: &str) -> Result<Istio> {
    if version == DEFAULT_VERSION {
        return istio().await;
    }
    static BUILDS: tokio::sync::Mutex<BTreeMap<String, Istio>> =
        tokio::sync::Mutex::const_new(BTreeMap::new());
    let mut builds = BUILDS.lock().await;
    if let Some(found) = builds.get(version) {
        return Ok(found.clone());
    }
    let root =
        crate::fleet::tools::testbed_script_output_with("build-istio.sh", &[version]).await?;
    let found = Istio::check(root)?;
    builds.insert(version.into(), found.clone());
    Ok(found)
}

/// A charts directory as the operator expects it (`<dir>/<version>/base`,
/// ...) holding every version in `versions`, under `into`.
pub async fn charts_dir(into: &Path, versions: &[&str]) -> Result<PathBuf> {
    let dir = into.join("istio-charts");
    std::fs::create_dir_all(&dir)?;
    for v in versions {
        let link = dir.join(v);
        if !link.exists() {
            std::os::unix::fs::symlink(istio_version(v).await?.charts_dir(), &link)?;
        }
    }
    Ok(dir)
}

/// Finds the Istio build: `$MESHFED_ISTIO_ROOT`, else what
/// `e2e/testbed/build-istio.sh` prints (instant when warm; a cold cache
/// builds, about 5 minutes on 2 cores). Cached for the process.
pub async fn istio() -> Result<Istio> {
    static ISTIO: OnceCell<Istio> = OnceCell::const_new();
    ISTIO
        .get_or_try_init(|| async {
            match std::env::var_os(ROOT_ENV).filter(|v| !v.is_empty()) {
                Some(dir) => Istio::check(dir.into()),
                None => Istio::check(
                    crate::fleet::tools::testbed_script_output("build-istio.sh").await?,
                ),
            }
        })
        .await
        .cloned()
}

/// Finds helm: `$MESHFED_HELM`, else what `e2e/testbed/build-helm.sh` prints.
pub async fn helm() -> Result<PathBuf> {
    static HELM: OnceCell<PathBuf> = OnceCell::const_new();
    HELM.get_or_try_init(|| async {
        match std::env::var_os(HELM_ENV).filter(|v| !v.is_empty()) {
            Some(p) => Ok(PathBuf::from(p)),
            None => crate::fleet::tools::testbed_script_output("build-helm.sh").await,
        }
    })
    .await
    .cloned()
}

/// Finds promtool (for the chart's alert rules): `$MESHFED_PROMTOOL`, else
/// what `e2e/testbed/build-promtool.sh` prints.
pub async fn promtool() -> Result<PathBuf> {
    static PROMTOOL: OnceCell<PathBuf> = OnceCell::const_new();
    PROMTOOL
        .get_or_try_init(|| async {
            match std::env::var_os(PROMTOOL_ENV).filter(|v| !v.is_empty()) {
                Some(p) => Ok(PathBuf::from(p)),
                None => crate::fleet::tools::testbed_script_output("build-promtool.sh").await,
            }
        })
        .await
        .cloned()
}

/// `helm template <release>` of the pinned Istio's chart at `chart` (a path
/// under its charts directory, e.g. `istio-control/istio-discovery`) into
/// istio-system with `values`: every rendered object.
pub async fn helm_template(
    release: &str,
    chart: &str,
    values: &serde_json::Value,
) -> Result<Vec<serde_json::Value>> {
    let istio = istio().await?;
    let helm = helm().await?;
    // JSON is YAML: helm reads the values file as it is.
    let mut values_file = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(&mut values_file, values.to_string().as_bytes())?;
    let out = tokio::process::Command::new(&helm)
        .args(["template", release])
        .arg(istio.charts_dir().join(chart))
        .args(["--namespace", ISTIO_NAMESPACE, "--values"])
        .arg(values_file.path())
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {}", helm.display()))?;
    if !out.status.success() {
        bail!(
            "helm template {chart} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)?;
        if value.get("kind").is_some() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// The CustomResourceDefinitions of Istio's `base` chart, rendered with
/// `helm template` (rendered once per process). The chart's other objects
/// (the reader ServiceAccount and the default-revision validating webhook)
/// are left out: they belong to an installation, not to the API.
pub async fn base_crds() -> Result<Vec<CustomResourceDefinition>> {
    static CRDS: OnceCell<Vec<CustomResourceDefinition>> = OnceCell::const_new();
    CRDS.get_or_try_init(|| async {
        let mut crds = Vec::new();
        for object in helm_template("base", "base", &serde_json::json!({})).await? {
            if object["kind"] == "CustomResourceDefinition" {
                crds.push(serde_json::from_value(object)?);
            }
        }
        if crds.is_empty() {
            bail!("helm template base rendered no CustomResourceDefinition");
        }
        Ok(crds)
    })
    .await
    .cloned()
}

/// Applies Istio's base CRDs to a cluster (server-side apply) and waits
/// until every one is Established. Istio's CRDs must be in before istiod starts.
pub async fn install_base_crds(client: &Client) -> Result<()> {
    let crds = base_crds().await?;
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let params = PatchParams::apply(MANAGER).force();
    let mut names = Vec::new();
    for crd in &crds {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(crd))
            .await
            .with_context(|| format!("apply CRD {name}"))?;
        names.push(name);
    }
    poll(
        Duration::from_secs(60),
        "Istio CRDs established",
        || async {
            for name in &names {
                let crd = api.get(name).await?;
                let established = crate::mesh::crd_established(&crd);
                if !established {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await
}

/// Istio installed in `cluster` by hand, as an admin would without meshfed:
/// the pinned Istio's `base` and revision-less `istio-discovery` charts
/// rendered with `helm template` and server-side applied (CRDs first, until
/// Established), istiod told its mesh, cluster name and network.
pub async fn install_istio_by_hand(cluster: &Cluster, network: &str, mesh_id: &str) -> Result<()> {
    let client = cluster.client();
    let params = PatchParams::apply(MANAGER).force();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_NAMESPACE}
    }))?;
    Api::<Namespace>::all(client.clone())
        .patch(ISTIO_NAMESPACE, &params, &Patch::Apply(&namespace))
        .await?;
    install_base_crds(&client).await?;
    let values = serde_json::json!({"global": {
        "meshID": mesh_id,
        "multiCluster": {"clusterName": cluster.name()},
        "network": network,
    }});
    let mut objects = helm_template("istio-base", "base", &serde_json::json!({})).await?;
    objects.retain(|o| o["kind"] != "CustomResourceDefinition");
    objects.extend(helm_template("istiod", "istio-control/istio-discovery", &values).await?);
    let kinds = meshfed::apply::KindCache::default();
    for object in objects {
        let object: kube::api::DynamicObject = serde_json::from_value(object)?;
        let types = object
            .types
            .clone()
            .context("rendered object without a kind")?;
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", types.api_version.as_str()));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
        let (resource, namespaced) = kinds
            .resolve(&client, cluster.name(), &gvk)
            .await?
            .with_context(|| format!("{} is not served", types.kind))?;
        let api = if namespaced {
            let ns = object
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(ISTIO_NAMESPACE);
            Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let name = object.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .with_context(|| format!("apply {} {name}", types.kind))?;
    }
    Ok(())
}

/// How to run one istiod.
#[derive(Debug, Clone)]
pub struct IstiodOptions {
    /// `--clusterID`: the name peers' remote secrets use for this cluster.
    pub cluster_id: String,
    /// The network this cluster is on. istiod itself reads it from the
    /// `topology.istio.io/network` label of `istio-system` (which meshfed
    /// sets); [`Istiod::start_with`] refuses to start if the label differs.
    pub network: String,
    /// `meshConfig.defaultConfig.meshId`.
    pub mesh_id: String,
    /// `meshConfig.trustDomain` (default `cluster.local`).
    pub trust_domain: String,
    /// `PILOT_REMOTE_CLUSTER_TIMEOUT`: how long istiod waits for a remote
    /// cluster before it reports `timeout` and becomes ready without it
    /// (default 10 s; Istio's own default is 30 s).
    pub remote_cluster_timeout: Duration,
    /// `USE_REMOTE_CERTS=true` (default): istiod fetches the `cacerts`
    /// Secret from its cluster into `<work_dir>/etc/cacerts` at start-up.
    pub use_remote_certs: bool,
    /// Instead, keep `cacerts` projected into `<work_dir>/etc/cacerts` as
    /// the kubelet mounts a Secret volume ([`SecretProjection`]), for as
    /// long as istiod runs: istiod then reloads its plug-in CA on every
    /// change, as in a pod.
    pub project_cacerts: bool,
    /// Extra environment for pilot-discovery (applied last).
    pub env: Vec<(String, String)>,
    /// The mesh config file's content, as the kubelet would mount it from
    /// the `istio` ConfigMap (its `mesh` key) that a Managed install renders.
    /// Default: a minimal one with `trust_domain` and `mesh_id`.
    pub mesh_config: Option<String>,
    /// Give up if `/ready` does not answer 200 within this time (default 90 s).
    pub ready_timeout: Duration,
    /// The Istio version to run (one of [`VERSIONS`]; default [`DEFAULT_VERSION`]).
    pub version: Option<String>,
}

/// What istiod needs of the cluster it runs for; owned, so that a task can
/// keep it (a [`Cluster`] owns its processes).
#[derive(Clone)]
pub struct ClusterAccess {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub client: Client,
}

impl From<&Cluster> for ClusterAccess {
    fn from(c: &Cluster) -> Self {
        ClusterAccess {
            name: c.name().into(),
            kubeconfig: c.kubeconfig_path().to_path_buf(),
            client: c.client(),
        }
    }
}

impl IstiodOptions {
    pub fn new(cluster_id: &str, network: &str, mesh_id: &str) -> IstiodOptions {
        IstiodOptions {
            cluster_id: cluster_id.into(),
            network: network.into(),
            mesh_id: mesh_id.into(),
            trust_domain: "cluster.local".into(),
            remote_cluster_timeout: Duration::from_secs(10),
            use_remote_certs: true,
            project_cacerts: false,
            env: Vec::new(),
            mesh_config: None,
            ready_timeout: Duration::from_secs(90),
            version: None,
        }
    }
}

/// The ports one istiod listens on, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct IstiodPorts {
    /// `--httpAddr` (8080 in a pod): `/ready` and the debug endpoints.
    pub http: u16,
    /// `--grpcAddr` (15010): plaintext XDS.
    pub grpc: u16,
    /// `--secureGRPCAddr` (15012): XDS and the CA over TLS, istiod's DNS cert.
    pub secure_grpc: u16,
    /// `--httpsAddr` (15017): webhooks over TLS, istiod's DNS cert.
    pub https: u16,
    /// `--monitoringAddr` (15014): `/metrics` and the debug endpoints.
    pub monitoring: u16,
    /// `--ctrlz_port` (9876).
    pub ctrlz: u16,
}

/// One entry of `/debug/clusterz` (what `istioctl remote-clusters` shows).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RemoteCluster {
    /// Cluster ID: the data key of the remote secret (or istiod's own ID).
    pub id: String,
    /// `<namespace>/<secret>` it came from; empty for istiod's own cluster.
    #[serde(rename = "secretName", default)]
    pub secret_name: String,
    /// `synced`, `syncing`, `timeout` or `closed`.
    #[serde(rename = "syncStatus", default)]
    pub sync_status: String,
}

/// A service in istiod's registry (`/debug/registryz`), reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryService {
    pub hostname: String,
    pub namespace: String,
    /// Cluster ID → cluster IPs of the service in that cluster.
    pub cluster_vips: BTreeMap<String, Vec<String>>,
}

/// An endpoint from `/debug/endpointShardz`, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEndpoint {
    pub hostname: String,
    pub namespace: String,
    /// The shard key's cluster (`Kubernetes/<cluster>`).
    pub cluster: String,
    pub addresses: Vec<String>,
    pub network: String,
    pub port: u64,
    pub workload: String,
    pub service_account: String,
}

/// A running istiod. Dropping it kills its process group and reaps it.
pub struct Istiod {
    process: Option<Proc>,
    pid: u32,
    opts: IstiodOptions,
    ports: IstiodPorts,
    work_dir: PathBuf,
    log: PathBuf,
    started: Instant,
    ready_after: Duration,
    /// Keeps `cacerts` on disk while istiod runs (`project_cacerts`).
    _projection: Option<SecretProjection>,
}

impl Istiod {
    /// Starts istiod for `cluster` as cluster `cluster_id` of mesh `mesh_id`,
    /// with its working directory (mesh config, fetched `cacerts`, log) in
    /// `work_dir`, and waits until `/ready` answers 200.
    pub async fn start(
        cluster: &Cluster,
        cluster_id: &str,
        network: &str,
        mesh_id: &str,
        work_dir: &Path,
    ) -> Result<Istiod> {
        Istiod::start_with(
            cluster,
            IstiodOptions::new(cluster_id, network, mesh_id),
            work_dir,
        )
        .await
    }

    /// [`Istiod::start`] with options.
    pub async fn start_with(
        cluster: &Cluster,
        opts: IstiodOptions,
        work_dir: &Path,
    ) -> Result<Istiod> {
        Istiod::start_on(&ClusterAccess::from(cluster), opts, work_dir).await
    }

    /// [`Istiod::start_with`] for a cluster given by its access.
    pub async fn start_on(
        cluster: &ClusterAccess,
        opts: IstiodOptions,
        work_dir: &Path,
    ) -> Result<Istiod> {
        let istio = istio_version(opts.version.as_deref().unwrap_or(DEFAULT_VERSION)).await?;
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("create {}", work_dir.display()))?;
        let work_dir = std::path::absolute(work_dir)?;

        // istiod takes its network from the system namespace's label.
        let ns = Api::<Namespace>::all(cluster.client.clone())
            .get_opt(ISTIO_NAMESPACE)
            .await?
            .with_context(|| format!("{}: namespace {ISTIO_NAMESPACE} missing", cluster.name))?;
        let label = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(NETWORK_LABEL))
            .cloned()
            .unwrap_or_default();
        if label != opts.network {
            bail!(
                "{}: {ISTIO_NAMESPACE} is labelled {NETWORK_LABEL}={label:?}, expected {:?}",
                cluster.name,
                opts.network
            );
        }

        let config_dir = work_dir.join("etc/istio/config");
        std::fs::create_dir_all(&config_dir)?;
        let mesh = opts.mesh_config.clone().unwrap_or_else(|| {
            format!(
                "trustDomain: {}\ndefaultConfig:\n  meshId: {}\n",
                opts.trust_domain, opts.mesh_id
            )
        });
        std::fs::write(config_dir.join("mesh"), mesh)?;
        std::fs::write(config_dir.join("meshNetworks"), "networks: {}\n")?;
        // USE_REMOTE_CERTS skips the fetch when a complete bundle is already
        // on disk: never let a previous run's copy stand in for the Secret.
        let ca_dir = work_dir.join("etc/cacerts");
        if ca_dir.exists() {
            std::fs::remove_dir_all(&ca_dir)?;
        }
        let mut opts = opts;
        let mut projection = if opts.project_cacerts {
            opts.use_remote_certs = false;
            let projected = SecretProjection::start(
                cluster.client.clone(),
                ISTIO_NAMESPACE,
                "cacerts",
                &ca_dir,
            );
            Some(
                tokio::time::timeout(Duration::from_secs(30), projected)
                    .await
                    .context("waiting for cacerts to project")??,
            )
        } else {
            None
        };
        let log = work_dir.join("istiod.log");

        let mut last_err = None;
        for _attempt in 0..3 {
            let ports = IstiodPorts {
                http: free_port()?,
                grpc: free_port()?,
                secure_grpc: free_port()?,
                https: free_port()?,
                monitoring: free_port()?,
                ctrlz: free_port()?,
            };
            let started = Instant::now();
            let process = spawn(&istio, cluster, &opts, &ports, &work_dir, &log)?;
            let mut istiod = Istiod {
                pid: process.pid(),
                process: Some(process),
                opts: opts.clone(),
                ports,
                work_dir: work_dir.clone(),
                log: log.clone(),
                started,
                ready_after: Duration::ZERO,
                _projection: projection.take(),
            };
            match istiod.wait_ready(opts.ready_timeout).await {
                Ok(()) => {
                    istiod.ready_after = started.elapsed();
                    return Ok(istiod);
                }
                Err(e) if tail_file(&log, 60).contains("address already in use") => {
                    istiod.stop();
                    projection = istiod._projection.take();
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("istiod did not start")))
    }

    /// Waits until `/ready` answers 200 (failing early if the process exits).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if self.is_ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "istiod {} not ready after {timeout:?}; last lines of {}:\n{}",
                    self.opts.cluster_id,
                    self.log.display(),
                    tail_file(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether `GET /ready` on the http port answers 200.
    pub async fn is_ready(&self) -> bool {
        matches!(http_get(self.http_addr(), "/ready").await, Ok((200, _)))
    }

    /// Error (with the log's tail) if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(process) => process.ensure_running(),
            None => bail!("istiod {} was stopped", self.opts.cluster_id),
        }
    }

    /// SIGKILLs the process group and reaps istiod.
    pub fn stop(&mut self) {
        self.process.take();
    }

    pub fn cluster_id(&self) -> &str {
        &self.opts.cluster_id
    }

    pub fn network(&self) -> &str {
        &self.opts.network
    }

    pub fn options(&self) -> &IstiodOptions {
        &self.opts
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn ports(&self) -> IstiodPorts {
        self.ports
    }

    /// `--httpAddr`: `/ready`, debug endpoints.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.http))
    }

    /// `--monitoringAddr`: `/metrics`, debug endpoints.
    pub fn monitoring_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.monitoring))
    }

    /// `--httpsAddr`: TLS with istiod's DNS certificate (issued by its CA).
    pub fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.https))
    }

    /// `--secureGRPCAddr`: XDS/CA over TLS with istiod's DNS certificate.
    pub fn secure_grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.secure_grpc))
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// `ROOT_CA_DIR`: where istiod keeps (with `USE_REMOTE_CERTS`, fetches) `cacerts`.
    pub fn ca_dir(&self) -> PathBuf {
        self.work_dir.join("etc/cacerts")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Time from spawn to the first `/ready` 200.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Time since spawn.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Resident set size in bytes (0 once gone).
    pub fn rss_bytes(&self) -> u64 {
        crate::fleet::rss_bytes(self.pid)
    }

    /// `GET <path>` on the monitoring port, parsed as JSON.
    pub async fn debug_json(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = http_get(self.monitoring_addr(), path).await?;
        if code != 200 {
            bail!(
                "GET {path} on istiod {}: HTTP {code}: {body}",
                self.opts.cluster_id
            );
        }
        serde_json::from_str(&body)
            .with_context(|| format!("GET {path} on istiod {}: not JSON", self.opts.cluster_id))
    }

    /// `/debug/clusterz`: istiod's own cluster first, then one entry per
    /// cluster from remote secrets.
    pub async fn clusterz(&self) -> Result<Vec<RemoteCluster>> {
        Ok(serde_json::from_value(
            self.debug_json("/debug/clusterz").await?,
        )?)
    }

    /// `/debug/clusterz` as cluster ID → sync status.
    pub async fn cluster_statuses(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .clusterz()
            .await?
            .into_iter()
            .map(|c| (c.id, c.sync_status))
            .collect())
    }

    /// Waits until `/debug/clusterz` lists each of `ids` as `synced`.
    pub async fn wait_synced(
        &self,
        ids: &[&str],
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>> {
        let start = Instant::now();
        loop {
            let last = self.cluster_statuses().await;
            if let Ok(s) = &last
                && ids
                    .iter()
                    .all(|id| s.get(*id).is_some_and(|st| st == "synced"))
            {
                return last;
            }
            if start.elapsed() > timeout {
                bail!(
                    "istiod {}: {ids:?} not all synced after {timeout:?}; clusterz: {last:?}",
                    self.opts.cluster_id
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `/debug/registryz`, raw.
    pub async fn registryz(&self) -> Result<serde_json::Value> {
        self.debug_json("/debug/registryz").await
    }

    /// `/debug/registryz`, reduced to hostname, namespace and per-cluster VIPs.
    pub async fn services(&self) -> Result<Vec<RegistryService>> {
        Ok(parse_registryz(&self.registryz().await?))
    }

    /// `/debug/endpointShardz`, raw (`/debug/endpointz` is an alias of it).
    pub async fn endpoint_shardz(&self) -> Result<serde_json::Value> {
        self.debug_json("/debug/endpointShardz").await
    }

    /// `/debug/endpointz`, raw.
    pub async fn endpointz(&self) -> Result<serde_json::Value> {
        self.debug_json("/debug/endpointz").await
    }

    /// Every endpoint istiod knows, reduced.
    pub async fn endpoints(&self) -> Result<Vec<ShardEndpoint>> {
        Ok(parse_endpoint_shardz(&self.endpoint_shardz().await?))
    }

    /// `/metrics` (Prometheus text) on the monitoring port.
    pub async fn metrics(&self) -> Result<String> {
        let (code, body) = http_get(self.monitoring_addr(), "/metrics").await?;
        if code != 200 {
            bail!("GET /metrics: HTTP {code}");
        }
        Ok(body)
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        if std::thread::panicking() && self.process.is_some() {
            eprintln!(
                "----- tail of {} -----\n{}",
                self.log.display(),
                tail_file(&self.log, 40)
            );
        }
        self.stop();
    }
}

/// Reduces `/debug/registryz` JSON.
pub fn parse_registryz(v: &serde_json::Value) -> Vec<RegistryService> {
    let mut out = Vec::new();
    for s in v.as_array().into_iter().flatten() {
        let mut cluster_vips = BTreeMap::new();
        if let Some(m) = s
            .pointer("/clusterVIPs/Addresses")
            .and_then(|a| a.as_object())
        {
            for (cluster, ips) in m {
                let ips = ips
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_str().map(String::from))
                    .collect();
                cluster_vips.insert(cluster.clone(), ips);
            }
        }
        out.push(RegistryService {
            hostname: str_at(s, "/hostname"),
            namespace: str_at(s, "/Attributes/Namespace"),
            cluster_vips,
        });
    }
    out
}

/// Reduces `/debug/endpointShardz` JSON (hostname → namespace → Shards →
/// `<registry>/<cluster>` → endpoints).
pub fn parse_endpoint_shardz(v: &serde_json::Value) -> Vec<ShardEndpoint> {
    let mut out = Vec::new();
    for (hostname, by_ns) in v.as_object().into_iter().flatten() {
        for (namespace, shards) in by_ns.as_object().into_iter().flatten() {
            let Some(shards) = shards.get("Shards").and_then(|s| s.as_object()) else {
                continue;
            };
            for (key, eps) in shards {
                let cluster = key.rsplit('/').next().unwrap_or(key).to_string();
                for ep in eps.as_array().into_iter().flatten() {
                    out.push(ShardEndpoint {
                        hostname: hostname.clone(),
                        namespace: namespace.clone(),
                        cluster: cluster.clone(),
                        addresses: ep
                            .get("Addresses")
                            .and_then(|a| a.as_array())
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str().map(String::from))
                            .collect(),
                        network: str_at(ep, "/Network"),
                        port: ep.get("EndpointPort").and_then(|p| p.as_u64()).unwrap_or(0),
                        workload: str_at(ep, "/WorkloadName"),
                        service_account: str_at(ep, "/ServiceAccount"),
                    });
                }
            }
        }
    }
    out
}

fn str_at(v: &serde_json::Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string()
}

fn spawn(
    istio: &Istio,
    cluster: &ClusterAccess,
    opts: &IstiodOptions,
    ports: &IstiodPorts,
    work_dir: &Path,
    log: &Path,
) -> Result<Proc> {
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let args: Vec<String> = vec![
        "discovery".into(),
        "--kubeconfig".into(),
        cluster.kubeconfig.display().to_string(),
        "--clusterID".into(),
        opts.cluster_id.clone(),
        "--namespace".into(),
        ISTIO_NAMESPACE.into(),
        "--domain".into(),
        "cluster.local".into(),
        "--httpAddr".into(),
        addr(ports.http),
        "--grpcAddr".into(),
        addr(ports.grpc),
        "--secureGRPCAddr".into(),
        addr(ports.secure_grpc),
        "--httpsAddr".into(),
        addr(ports.https),
        "--monitoringAddr".into(),
        addr(ports.monitoring),
        "--ctrlz_address".into(),
        "127.0.0.1".into(),
        "--ctrlz_port".into(),
        ports.ctrlz.to_string(),
        "--meshConfig".into(),
        work_dir.join("etc/istio/config/mesh").display().to_string(),
        "--networksConfig".into(),
        work_dir
            .join("etc/istio/config/meshNetworks")
            .display()
            .to_string(),
        "--keepaliveMaxServerConnectionAge".into(),
        "30m".into(),
    ];
    let mut env: Vec<(String, String)> = vec![
        ("POD_NAMESPACE".into(), ISTIO_NAMESPACE.into()),
        ("POD_NAME".into(), format!("istiod-{}", opts.cluster_id)),
        (
            "ROOT_CA_DIR".into(),
            work_dir.join("etc/cacerts").display().to_string(),
        ),
        ("USE_REMOTE_CERTS".into(), opts.use_remote_certs.to_string()),
        ("ISTIO_MULTIROOT_MESH".into(), "true".into()),
        (
            "PILOT_REMOTE_CLUSTER_TIMEOUT".into(),
            format!("{}ms", opts.remote_cluster_timeout.as_millis()),
        ),
    ];
    env.extend(opts.env.iter().cloned());

    let mut spec = Spec::new(
        format!("istiod-{}", opts.cluster_id),
        istio.pilot_discovery(),
        log.to_path_buf(),
    )
    .args(&args)
    .cwd(work_dir);
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    spec.spawn().context("spawn pilot-discovery")
}

/// Creates namespace `ns`, a Service `name` (port 80 → 8080) and one pod it
/// selects; kwok makes the pod Running with an IP. Returns (cluster IP, pod IP).
pub async fn service_with_pod(client: &Client, ns: &str, name: &str) -> Result<(String, String)> {
    let params = PatchParams::apply("meshfed-e2e-istiod").force();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
    }))?;
    Api::<Namespace>::all(client.clone())
        .patch(ns, &params, &Patch::Apply(&namespace))
        .await?;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))?;
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .patch(name, &params, &Patch::Apply(&svc))
        .await?;
    let pod_name = format!("{name}-0");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "app", "image": name,
                                 "ports": [{"containerPort": 8080}]}]}
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    pods.patch(&pod_name, &params, &Patch::Apply(&pod)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ip = loop {
        if let Some(ip) = pods.get(&pod_name).await?.status.and_then(|s| s.pod_ip) {
            break ip;
        }
        if Instant::now() > deadline {
            bail!("pod {ns}/{pod_name} got no IP within 60s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let vip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("no cluster IP")?;
    Ok((vip, ip))
}
