//! A fleet of real Kubernetes control planes on 127.0.0.1, without
//! containers: one etcd, and per cluster a kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (in place of kubelets).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let fleet = e2e::Fleet::start(2).await?;
//! let client = fleet.cluster(0).client();
//! # Ok(()) }
//! ```

mod cluster;
mod etcd;
pub mod kwok;
pub mod pki;
mod process;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use cluster::{Cluster, KWOK_NODE_ANNOTATION, SERVICE_CIDR, kubeconfig_yaml};
pub use process::{
    Proc, Spec, TreeRssPeak, free_port, peak_rss_bytes, rss_bytes, tail_file, tree_rss_bytes,
};
pub use tools::{Tools, tools};

use cluster::ClusterEnv;
use etcd::Etcd;

/// Set to `1` to keep a fleet's directory (logs, certificates, kubeconfigs,
/// etcd data) after it is dropped.
pub const KEEP_ENV: &str = "MESHFED_KEEP_FLEET";

/// How to start a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Number of clusters.
    pub clusters: usize,
    /// kwok-managed nodes per cluster (at least 1).
    pub nodes_per_cluster: usize,
    /// Clusters of kube-apiserver alone (no controller-manager, scheduler,
    /// kwok or nodes): about half the memory, for fleets of 50. Enough for
    /// what meshfed does without a control plane (TokenRequest is served
    /// by the API server itself); Deployments never become Available.
    pub apiserver_only: bool,
    /// Extra kube-apiserver flags for every cluster.
    pub apiserver_args: Vec<String>,
    /// Directory for the fleet's files. `None`: a fresh temporary directory,
    /// removed on drop unless [`FleetOptions::keep`]. A given directory is
    /// never removed.
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory on drop (default: `MESHFED_KEEP_FLEET=1`).
    pub keep: bool,
    /// Give up if the fleet is not Ready within this time (default: 120 s
    /// plus 20 s per cluster).
    pub timeout: Option<Duration>,
}

impl FleetOptions {
    pub fn new(clusters: usize) -> FleetOptions {
        FleetOptions {
            clusters,
            nodes_per_cluster: 1,
            apiserver_only: false,
            apiserver_args: Vec::new(),
            dir: None,
            keep: std::env::var(KEEP_ENV).is_ok_and(|v| v == "1" || v == "true"),
            timeout: None,
        }
    }
}

/// N independent clusters sharing one etcd. Dropping it kills every process
/// (SIGKILL to each process group) and waits for them.
pub struct Fleet {
    // Field order matters for nothing: Drop does the teardown explicitly.
    clusters: Vec<Cluster>,
    etcd: Option<Etcd>,
    dir: PathBuf,
    log_dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    keep: bool,
    startup: Duration,
}

impl Fleet {
    /// Starts `n` clusters concurrently and waits until every API server
    /// passes `/readyz`, every node is Ready and each `default` service
    /// account exists.
    pub async fn start(n: usize) -> Result<Fleet> {
        Fleet::start_with(FleetOptions::new(n)).await
    }

    /// [`Fleet::start`] with options.
    pub async fn start_with(opts: FleetOptions) -> Result<Fleet> {
        let t0 = Instant::now();
        let tools = tools::tools().await?;
        let (tmp, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
                (None, std::path::absolute(d)?)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("meshfed-fleet-")
                    .tempdir()
                    .context("create fleet directory")?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut guard = PartialFleet {
            tmp,
            keep: opts.keep,
            dir: dir.clone(),
        };
        let log_dir = dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let timeout = opts
            .timeout
            .unwrap_or(Duration::from_secs(120 + 20 * opts.clusters as u64));
        let etcd = Etcd::start(&tools, &dir, &log_dir.join("etcd.log"), timeout).await?;
        let env = Arc::new(ClusterEnv {
            tools,
            dir: dir.clone(),
            log_dir: log_dir.clone(),
            etcd_url: etcd.url.clone(),
            nodes: opts.nodes_per_cluster,
            apiserver_only: opts.apiserver_only,
            apiserver_args: opts.apiserver_args.clone(),
            timeout: timeout.saturating_sub(t0.elapsed()),
        });
        let clusters = futures::future::try_join_all(
            (0..opts.clusters).map(|i| Cluster::start(i, env.clone())),
        )
        .await
        .with_context(|| {
            format!(
                "starting a fleet of {} clusters in {}",
                opts.clusters,
                dir.display()
            )
        })?;
        Ok(Fleet {
            clusters,
            etcd: Some(etcd),
            dir,
            log_dir,
            tmp: guard.tmp.take(),
            keep: opts.keep,
            startup: t0.elapsed(),
        })
    }

    /// All clusters, in index order.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// Cluster `i`. Panics if out of range.
    pub fn cluster(&self, i: usize) -> &Cluster {
        &self.clusters[i]
    }

    /// Number of clusters.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// Whether the fleet has no clusters.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// The fleet's directory (per-cluster PKI and kubeconfigs, etcd data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory with one log file per process
    /// (`etcd.log`, `cluster-<i>.<component>.log`).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The shared etcd's client URL.
    pub fn etcd_url(&self) -> &str {
        self.etcd
            .as_ref()
            .map(|e| e.url.as_str())
            .unwrap_or_default()
    }

    /// The etcd process id.
    pub fn etcd_pid(&self) -> Option<u32> {
        self.etcd.as_ref().map(|e| e.proc.pid())
    }

    /// `VmRSS` of the shared etcd, in bytes.
    pub fn etcd_rss_bytes(&self) -> u64 {
        self.etcd_pid().map(rss_bytes).unwrap_or(0)
    }

    /// Time [`Fleet::start`] took, from the call until everything was Ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Writes each cluster's admin kubeconfig to `<dir>/<cluster name>.kubeconfig`.
    pub fn write_kubeconfigs(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        self.clusters
            .iter()
            .map(|c| {
                let p = dir.join(format!("{}.kubeconfig", c.name()));
                std::fs::write(&p, c.kubeconfig_yaml())?;
                Ok(p)
            })
            .collect()
    }

    /// All log files, etcd first.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.log_dir.join("etcd.log")];
        for c in &self.clusters {
            v.extend(c.log_files());
        }
        v
    }

    /// Prints the last `lines` lines of every log to stderr.
    pub fn print_log_tails(&self, lines: usize) {
        for f in self.log_files() {
            eprintln!("----- tail of {} -----", f.display());
            eprintln!("{}", tail_file(&f, lines));
        }
        eprintln!("----- fleet directory: {} -----", self.dir.display());
    }

    /// A guard that prints the tails of all logs if it is dropped while the
    /// thread panics (a failing test). [`Fleet`]'s own `Drop` does the same,
    /// so this is for fleets shared behind `Arc` or statics.
    pub fn log_guard(&self) -> LogTailGuard {
        LogTailGuard {
            files: self.log_files(),
            lines: 40,
        }
    }
}

/// See [`Fleet::log_guard`].
pub struct LogTailGuard {
    files: Vec<PathBuf>,
    lines: usize,
}

impl Drop for LogTailGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for f in &self.files {
                eprintln!("----- tail of {} -----", f.display());
                eprintln!("{}", tail_file(f, self.lines));
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails(40);
        }
        for c in &self.clusters {
            c.start_kill();
        }
        for c in &self.clusters {
            c.kill_and_wait();
        }
        if let Some(mut e) = self.etcd.take() {
            e.proc.kill_and_wait();
        }
        if let Some(t) = self.tmp.take()
            && self.keep
        {
            eprintln!("fleet directory kept: {}", t.keep().display());
        }
    }
}

/// Owns the temporary directory while a fleet starts, so a failed start
/// still honours `keep`.
struct PartialFleet {
    tmp: Option<tempfile::TempDir>,
    keep: bool,
    dir: PathBuf,
}

impl Drop for PartialFleet {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take()
            && self.keep
        {
            let _ = t.keep();
            eprintln!("fleet directory kept: {}", self.dir.display());
        }
    }
}
