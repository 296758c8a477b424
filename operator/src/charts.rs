//! Istio's official Helm charts, rendered with the `helm` binary (Rust has no
//! Helm engine). The operator's image carries helm and one chart set per
//! supported Istio version under `--charts-dir/<version>/`.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::DynamicObject;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::OnceCell;

/// The charts meshfed installs, by their path in Istio's `manifests/charts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chart {
    Base,
    Istiod,
    /// The gateway chart as the member's east-west gateway.
    Gateway,
    /// The gateway chart as the member's ingress gateway.
    IngressGateway,
}

impl Chart {
    fn path(self) -> &'static str {
        match self {
            Chart::Base => "base",
            Chart::Istiod => "istio-control/istio-discovery",
            Chart::Gateway | Chart::IngressGateway => "gateway",
        }
    }

    /// Helm release name.
    pub fn release(self) -> &'static str {
        match self {
            Chart::Base => "istio-base",
            Chart::Istiod => "istiod",
            Chart::Gateway => "istio-eastwestgateway",
            Chart::IngressGateway => "istio-ingressgateway",
        }
    }
}

/// Why a chart could not be rendered.
#[derive(thiserror::Error, Debug)]
pub enum ChartError {
    #[error(
        "no charts for Istio {version} in {dir} (spec.controlPlane.version; the operator carries: {available})"
    )]
    UnknownVersion {
        version: String,
        dir: String,
        available: String,
    },
    #[error("running {helm}: {reason}")]
    Helm { helm: String, reason: String },
    #[error("helm template {chart}: {stderr}")]
    Template { chart: &'static str, stderr: String },
    #[error("parsing rendered {chart}: {reason}")]
    Parse { chart: &'static str, reason: String },
}

/// The chart set of `version` under `charts_dir`, if `version` names a plain
/// directory in it. The schema already refuses anything else; this keeps a
/// version from reaching outside `charts_dir` whatever got stored.
fn version_dir(charts_dir: &std::path::Path, version: &str) -> Option<PathBuf> {
    let plain = !version.is_empty()
        && !version.starts_with('.')
        && !version.contains("..")
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    plain.then(|| charts_dir.join(version))
}

/// The Istio versions under `charts_dir` (directories holding a base chart),
/// oldest first.
pub fn versions(charts_dir: &std::path::Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(charts_dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|v| {
                    version_dir(charts_dir, v).is_some_and(|d| d.join(Chart::Base.path()).is_dir())
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by(|a, b| crate::fleet::rollout::compare_versions(a, b));
    found
}

/// Stands for a member's cluster name in values rendered once for every
/// member (see [`ChartRenderer::render`]). A valid DNS label and label value.
pub const CLUSTER_PLACEHOLDER: &str = "meshfed-placeholder-cluster";
/// Stands for a member's network, likewise.
pub const NETWORK_PLACEHOLDER: &str = "meshfed-placeholder-network";

/// Renders charts with `helm template`, remembering results by version,
/// chart and values: a steady-state reconcile runs no helm at all, and
/// members whose values differ only in their cluster name and network share
/// one render (the values carry [`CLUSTER_PLACEHOLDER`] and
/// [`NETWORK_PLACEHOLDER`], which each member's copy replaces). Concurrent
/// callers of one render wait for a single helm run.
///
/// The cache holds only what is in use: each caller (a component of a
/// member) uses one render at a time, and a render no caller uses any more
/// (values edited, a version left behind) is dropped at once; a render
/// nobody asked for in [`ChartRenderer::IDLE`] goes too (a member that
/// left). A render holds megabytes (Istio's CRDs), so memory stays flat
/// however often values change.
pub struct ChartRenderer {
    helm: PathBuf,
    charts_dir: PathBuf,
    cache: Mutex<RenderCache>,
    idle: Duration,
    runs: AtomicU64,
}

type Rendered = Arc<OnceCell<Vec<DynamicObject>>>;

#[derive(Default)]
struct RenderCache {
    /// Renders by key, with when each was last asked for.
    renders: HashMap<String, (Rendered, Instant)>,
    /// The render each caller used last.
    users: HashMap<String, String>,
}

impl RenderCache {
    /// The render for `key`, as `user` now uses it: what it used before is
    /// dropped if nobody else uses it, and so is anything idle.
    fn take(&mut self, user: &str, key: &str, now: Instant, idle: Duration) -> Rendered {
        if let Some(before) = self.users.insert(user.to_string(), key.to_string())
            && before != key
            && !self.users.values().any(|k| *k == before)
        {
            self.renders.remove(&before);
        }
        self.renders
            .retain(|k, (_, used)| k == key || now.duration_since(*used) < idle);
        let renders = &self.renders;
        self.users
            .retain(|_, k| k == key || renders.contains_key(k));
        let (render, used) = self
            .renders
            .entry(key.to_string())
            .or_insert_with(|| (Rendered::default(), now));
        *used = now;
        render.clone()
    }
}

impl ChartRenderer {
    /// How long a render nobody asks for is kept.
    pub const IDLE: Duration = Duration::from_secs(15 * 60);

    pub fn new(helm: PathBuf, charts_dir: PathBuf) -> Self {
        Self {
            helm,
            charts_dir,
            cache: Mutex::default(),
            idle: Self::IDLE,
            runs: AtomicU64::new(0),
        }
    }

    /// How many renders are held.
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("chart cache").renders.len()
    }

    /// How many times helm ran.
    pub fn helm_runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The objects `chart` of Istio `version` renders to with `values`, with
    /// each `(placeholder, value)` of `member` substituted, for `user` (one
    /// component of one member: what it rendered before may be dropped).
    pub async fn render(
        &self,
        user: &str,
        version: &str,
        chart: Chart,
        values: &Value,
        kube_version: &str,
        member: &[(&str, &str)],
    ) -> Result<Vec<DynamicObject>, ChartError> {
        let key = {
            let mut h = Sha256::new();
            h.update(format!(
                "{version}\0{}\0{kube_version}\0{values}",
                chart.release()
            ));
            format!("{:x}", h.finalize())
        };
        let cell =
            self.cache
                .lock()
                .expect("chart cache")
                .take(user, &key, Instant::now(), self.idle);
        let objects = cell
            .get_or_try_init(|| self.helm_template(version, chart, values, kube_version))
            .await?;
        if member.is_empty() {
            return Ok(objects.clone());
        }
        let mut text = serde_json::to_string(objects).map_err(|e| ChartError::Parse {
            chart: chart.release(),
            reason: e.to_string(),
        })?;
        for (placeholder, value) in member {
            text = text.replace(placeholder, value);
        }
        serde_json::from_str(&text).map_err(|e| ChartError::Parse {
            chart: chart.release(),
            reason: e.to_string(),
        })
    }

    async fn helm_template(
        &self,
        version: &str,
        chart: Chart,
        values: &Value,
        kube_version: &str,
    ) -> Result<Vec<DynamicObject>, ChartError> {
        let dir = version_dir(&self.charts_dir, version);
        if !dir.as_ref().is_some_and(|d| d.join(chart.path()).is_dir()) {
            let available = versions(&self.charts_dir).join(", ");
            return Err(ChartError::UnknownVersion {
                version: version.into(),
                dir: self.charts_dir.display().to_string(),
                available,
            });
        }
        let helm_error = |reason: String| ChartError::Helm {
            helm: self.helm.display().to_string(),
            reason,
        };
        let values_file = tempfile_with(&serde_json::to_string(values).unwrap_or_default())
            .map_err(|e| helm_error(e.to_string()))?;
        self.runs.fetch_add(1, Ordering::Relaxed);
        let output = Command::new(&self.helm)
            .args(["template", chart.release()])
            .arg(dir.expect("checked above").join(chart.path()))
            .args([
                "--namespace",
                crate::render::ISTIO_NAMESPACE,
                "--include-crds",
                "--kube-version",
                kube_version,
            ])
            .arg("--values")
            .arg(values_file.path())
            // A reconcile that times out must not leave helm behind.
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| helm_error(e.to_string()))?;
        if !output.status.success() {
            return Err(ChartError::Template {
                chart: chart.release(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let text = String::from_utf8_lossy(&output.stdout);
        parse_manifests(&text).map_err(|reason| ChartError::Parse {
            chart: chart.release(),
            reason,
        })
    }
}

/// Splits a multi-document YAML stream into objects, skipping empty documents.
pub fn parse_manifests(text: &str) -> Result<Vec<DynamicObject>, String> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if value.is_null() || value.as_object().is_some_and(|o| o.is_empty()) {
            continue;
        }
        objects.push(serde_json::from_value(value).map_err(|e| e.to_string())?);
    }
    Ok(objects)
}

/// A temporary file holding `content`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_with(content: &str) -> std::io::Result<TempFile> {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "meshfed-values-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, content)?;
    Ok(TempFile(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_holds_what_callers_use_now() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut c = RenderCache::default();
        c.take("prod/a/base", "v1", t0, idle);
        c.take("prod/b/base", "v1", t0, idle);
        for n in 0..200 {
            c.take("prod/a/istiod", &format!("values-{n}"), t0, idle);
        }
        assert_eq!(c.renders.len(), 2, "200 edits: the last values only");
        // One caller moves on; the render another still uses stays.
        c.take("prod/a/base", "v2", t0, idle);
        assert!(c.renders.contains_key("v1") && c.renders.contains_key("v2"));
        c.take("prod/b/base", "v2", t0, idle);
        assert!(!c.renders.contains_key("v1"), "nobody uses it");
        // Asked for again within the idle time: the same render, not a new one.
        let first = c.take("prod/a/base", "v2", t0, idle);
        assert!(Arc::ptr_eq(&first, &c.take("prod/b/base", "v2", t0, idle)));
        // A member that left: its render goes once idle.
        let later = t0 + idle + Duration::from_secs(1);
        c.take("prod/b/base", "v2", later, idle);
        assert_eq!(c.renders.keys().collect::<Vec<_>>(), ["v2"]);
        assert!(!c.users.contains_key("prod/a/istiod"));
    }

    #[test]
    fn manifests_split_and_skip_empty_documents() {
        let text = "---\n# Source: x\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: b\n";
        let objects = parse_manifests(text).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].types.as_ref().unwrap().kind, "Deployment");
        assert!(parse_manifests("kind: [").is_err());
    }

    #[test]
    fn versions_are_the_chart_sets_found_newest_last() {
        let dir = std::env::temp_dir().join(format!("meshfed-charts-{}", std::process::id()));
        for v in ["1.9", "1.31", "1.30"] {
            std::fs::create_dir_all(dir.join(v).join("base")).unwrap();
        }
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        std::fs::create_dir_all(dir.join(".hidden/base")).unwrap();
        assert_eq!(versions(&dir), ["1.9", "1.30", "1.31"]);
        assert!(versions(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_version_never_leaves_the_charts_directory() {
        let dir = std::path::Path::new("/charts");
        assert_eq!(
            version_dir(dir, "1.31"),
            Some(PathBuf::from("/charts/1.31"))
        );
        assert_eq!(
            version_dir(dir, "1.31.0-rc_1"),
            Some(PathBuf::from("/charts/1.31.0-rc_1"))
        );
        for bad in [
            "",
            "..",
            ".",
            "../etc",
            "a/../../b",
            "/etc",
            "1..2",
            ".hidden",
            "a b",
        ] {
            assert_eq!(version_dir(dir, bad), None, "{bad:?}");
        }
    }
}
