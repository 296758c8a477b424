//! The real istiod behind every managed istiod Deployment. kwok makes a
//! Deployment "Available" without running anything, so health gates would
//! judge a fake. For each istiod Deployment (each revision) whose pods carry
//! [`BRIDGED_LABEL`]`=real` (kwok leaves their readiness alone, see
//! `testbed/kwok-stages.yaml`), the bridge starts the real pilot-discovery of
//! the Deployment's Istio version for that cluster, out of cluster as the
//! other e2e tests run it, and sets the pods' Ready condition from istiod's
//! `/ready`. A Deployment that goes away stops its istiod.
//!
//! Opt in with the istiod chart value `pilot.podLabels` ([`pod_labels`]).
//!
//! ```no_run
//! # async fn demo(fleet: &e2e::Fleet) -> anyhow::Result<()> {
//! let bridge = e2e::bridge::Bridge::start(fleet, &fleet.dir().join("bridge"));
//! // ... meshfed installs istiod with e2e::bridge::pod_labels() ...
//! for (cluster, revision, istiod) in bridge.istiods() {
//!     println!("{cluster} {revision}: {:?}", istiod.clusterz().await?);
//! }
//! # Ok(()) }
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::Fleet;
use crate::istiod::{
    ClusterAccess, DEFAULT_VERSION, ISTIO_NAMESPACE, Istiod, IstiodOptions, NETWORK_LABEL,
};

/// The pod label that hands an istiod pod's readiness to the bridge.
pub const BRIDGED_LABEL: &str = "testbed.meshfed.io/istiod";
/// The label meshfed puts the Istio version of a rendered object in.
const VERSION_LABEL: &str = "meshfed.io/istio-version";

/// The istiod chart values that opt a control plane into the bridge.
pub fn pod_labels() -> serde_json::Value {
    json!({ "pilot": { "podLabels": { BRIDGED_LABEL: "real" } } })
}

/// A Managed control plane of Istio `version` whose istiods the bridge
/// runs, without east-west gateways (kwok's gateway pods cannot be
/// injected), upgraded as `upgrade` says.
pub fn bridged_control_plane(
    version: &str,
    upgrade: meshfed::api::UpgradeSpec,
) -> meshfed::api::ControlPlaneSpec {
    meshfed::api::ControlPlaneSpec {
        mode: meshfed::api::ControlPlaneMode::Managed,
        version: Some(version.into()),
        values: Some(pod_labels()),
        east_west_gateway: Some(meshfed::api::EastWestGatewaySpec {
            enabled: Some(false),
            ..Default::default()
        }),
        upgrade: Some(upgrade),
        ..Default::default()
    }
}

type Key = (usize, String);

#[derive(Default)]
struct State {
    /// Running istiods by (cluster index, Deployment name).
    running: BTreeMap<Key, Arc<Istiod>>,
    /// Starts in progress.
    starting: BTreeSet<Key>,
    /// Clusters whose new istiods are not started (a fault: "cannot become
    /// Available").
    held: BTreeSet<usize>,
    /// Clusters whose istiod pods are reported not ready whatever their
    /// istiod says (a fault: "istiod briefly not ready").
    unready: BTreeSet<usize>,
    /// Why a start failed, by key (retried every round).
    failures: BTreeMap<Key, String>,
}

/// The bridge: a task per fleet. Dropping it stops every istiod it started.
pub struct Bridge {
    state: Arc<Mutex<State>>,
    names: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
        self.state.lock().expect("bridge").running.clear();
    }
}

impl Bridge {
    /// Starts watching every cluster of `fleet`; istiods keep their working
    /// directories (logs) under `work_dir`.
    pub fn start(fleet: &Fleet, work_dir: &Path) -> Bridge {
        let clusters: Vec<ClusterAccess> =
            fleet.clusters().iter().map(ClusterAccess::from).collect();
        let names = clusters.iter().map(|c| c.name.clone()).collect();
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(run(clusters, state.clone(), work_dir.to_path_buf()));
        Bridge { state, names, task }
    }

    /// Stops starting istiods in cluster `index` (its new istiod pods stay
    /// unready), or starts them again.
    pub fn hold(&self, index: usize, held: bool) {
        let mut state = self.state.lock().expect("bridge");
        if held {
            state.held.insert(index);
        } else {
            state.held.remove(&index);
        }
    }

    /// Reports every istiod pod in cluster `index` not ready (their
    /// istiods keep running), or ready again as their istiods say.
    pub fn unready(&self, index: usize, unready: bool) {
        let mut state = self.state.lock().expect("bridge");
        if unready {
            state.unready.insert(index);
        } else {
            state.unready.remove(&index);
        }
    }

    /// The running istiods: (cluster name, Deployment name, istiod).
    pub fn istiods(&self) -> Vec<(String, String, Arc<Istiod>)> {
        self.state
            .lock()
            .expect("bridge")
            .running
            .iter()
            .map(|((i, d), istiod)| (self.names[*i].clone(), d.clone(), istiod.clone()))
            .collect()
    }

    /// The istiod of Deployment `deployment` in cluster `index`, if running.
    pub fn istiod(&self, index: usize, deployment: &str) -> Option<Arc<Istiod>> {
        self.state
            .lock()
            .expect("bridge")
            .running
            .get(&(index, deployment.to_string()))
            .cloned()
    }

    /// Why istiods failed to start, if any did.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.state
            .lock()
            .expect("bridge")
            .failures
            .iter()
            .map(|((i, d), why)| (format!("{}/{d}", self.names[*i]), why.clone()))
            .collect()
    }
}

async fn run(clusters: Vec<ClusterAccess>, state: Arc<Mutex<State>>, work_dir: PathBuf) {
    loop {
        for (index, cluster) in clusters.iter().enumerate() {
            if let Err(e) = round(index, cluster, &state, &work_dir).await {
                tracing::debug!(cluster = %cluster.name, error = %e, "bridge round");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One look at one cluster: start istiods for new Deployments, stop those
/// whose Deployment went, and set every bridged pod's readiness.
async fn round(
    index: usize,
    cluster: &ClusterAccess,
    state: &Arc<Mutex<State>>,
    work_dir: &Path,
) -> Result<()> {
    let deployments = Api::<Deployment>::namespaced(cluster.client.clone(), ISTIO_NAMESPACE)
        .list(&ListParams::default().labels("app=istiod"))
        .await?;
    let bridged: Vec<&Deployment> = deployments
        .items
        .iter()
        .filter(|d| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
                .and_then(|l| l.get(BRIDGED_LABEL))
                .map(String::as_str)
                == Some("real")
        })
        .collect();
    let names: BTreeSet<String> = bridged.iter().map(|d| d.name_any()).collect();
    {
        let mut s = state.lock().expect("bridge");
        s.running
            .retain(|(i, d), _| *i != index || names.contains(d));
    }
    for d in &bridged {
        let key = (index, d.name_any());
        let start = {
            let mut s = state.lock().expect("bridge");
            let start = !s.running.contains_key(&key)
                && !s.starting.contains(&key)
                && !s.held.contains(&index);
            if start {
                s.starting.insert(key.clone());
            }
            start
        };
        if start {
            let options = options_for(cluster, d).await;
            let dir = work_dir.join(format!("{}-{}", cluster.name, key.1));
            let (cluster, state, key) = (cluster.clone(), state.clone(), key.clone());
            tokio::spawn(async move {
                let started = match options {
                    Ok(o) => Istiod::start_on(&cluster, o, &dir).await,
                    Err(e) => Err(e),
                };
                let mut s = state.lock().expect("bridge");
                s.starting.remove(&key);
                match started {
                    Ok(istiod) => {
                        s.failures.remove(&key);
                        s.running.insert(key, Arc::new(istiod));
                    }
                    Err(e) => {
                        s.failures.insert(key, format!("{e:#}"));
                    }
                }
            });
        }
        let (istiod, forced) = {
            let s = state.lock().expect("bridge");
            (s.running.get(&key).cloned(), s.unready.contains(&index))
        };
        let ready = match istiod {
            Some(i) => !forced && i.is_ready().await,
            None => false,
        };
        crate::mesh::set_pods_ready(&cluster.client, d, ready).await?;
    }
    Ok(())
}

/// How to run the real istiod for Deployment `d`: its cluster ID and
/// revision from its environment, its version from meshfed's label, the
/// mesh config from its revision's `istio` ConfigMap, the network from
/// `istio-system`'s label.
async fn options_for(cluster: &ClusterAccess, d: &Deployment) -> Result<IstiodOptions> {
    let env = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    let cluster_id = value("CLUSTER_ID").context("istiod Deployment without CLUSTER_ID")?;
    let revision = value("REVISION").unwrap_or_default();
    let config_map = match revision.as_str() {
        "" | "default" => "istio".to_string(),
        r => format!("istio-{r}"),
    };
    let mesh = Api::<ConfigMap>::namespaced(cluster.client.clone(), ISTIO_NAMESPACE)
        .get(&config_map)
        .await?
        .data
        .and_then(|d| d.get("mesh").cloned())
        .with_context(|| format!("ConfigMap {config_map} without mesh"))?;
    let network = Api::<Namespace>::all(cluster.client.clone())
        .get(ISTIO_NAMESPACE)
        .await?
        .labels()
        .get(NETWORK_LABEL)
        .cloned()
        .unwrap_or_default();
    let mut options = IstiodOptions::new(&cluster_id, &network, "");
    options.mesh_config = Some(mesh);
    options.remote_cluster_timeout = Duration::from_secs(5);
    options.version = Some(
        d.labels()
            .get(VERSION_LABEL)
            .cloned()
            .unwrap_or_else(|| DEFAULT_VERSION.into()),
    );
    options.env = vec![
        ("REVISION".into(), revision.clone()),
        ("POD_NAME".into(), format!("{}-bridged", d.name_any())),
    ];
    Ok(options)
}
