//! `testbed`: bring up a containerless multi-cluster fleet by hand, or
//! measure how fast and how big fleets are.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use e2e::{Fleet, FleetOptions};

#[derive(Parser)]
#[command(name = "testbed", about = "meshfed's real multi-cluster test bed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a fleet, write one kubeconfig per cluster, run until Ctrl-C.
    Up {
        /// Number of clusters.
        #[arg(long, default_value_t = 3)]
        clusters: usize,
        /// Directory for the fleet (certificates, kubeconfigs, etcd data,
        /// logs). Default: a temporary directory removed on exit.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// kwok nodes per cluster.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Start and tear down fleets of each size; print start time and memory.
    Bench {
        /// Comma-separated fleet sizes.
        #[arg(long, value_delimiter = ',', default_value = "1,3,10")]
        sizes: Vec<usize>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Up {
            clusters,
            dir,
            nodes,
        } => up(clusters, dir, nodes).await,
        Cmd::Bench { sizes } => bench(&sizes).await,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn up(clusters: usize, dir: Option<PathBuf>, nodes: usize) -> Result<()> {
    eprintln!("starting {clusters} clusters...");
    let mut opts = FleetOptions::new(clusters);
    opts.dir = dir;
    opts.nodes_per_cluster = nodes;
    let fleet = Fleet::start_with(opts).await?;
    let kube_dir = fleet.dir().join("kubeconfigs");
    let files = fleet.write_kubeconfigs(&kube_dir)?;

    println!(
        "fleet of {} clusters Ready in {:.1}s",
        fleet.len(),
        fleet.startup_time().as_secs_f64()
    );
    println!(
        "{:<12} {:<26} {:>6} {:>9}  KUBECONFIG",
        "CLUSTER", "SERVER", "NODES", "RSS MiB"
    );
    for (c, f) in fleet.clusters().iter().zip(&files) {
        println!(
            "{:<12} {:<26} {:>6} {:>9.0}  {}",
            c.name(),
            c.server_url(),
            c.node_names().len(),
            mib(c.rss_bytes()),
            f.display()
        );
    }
    println!(
        "etcd         {:<26} {:>6} {:>9.0}",
        fleet.etcd_url(),
        "-",
        mib(fleet.etcd_rss_bytes())
    );
    println!("kubeconfigs: {}", kube_dir.display());
    println!("logs:        {}", fleet.log_dir().display());
    println!(
        "e.g.  kubectl --kubeconfig {} get nodes",
        files
            .first()
            .map(|f| f.display().to_string())
            .unwrap_or_default()
    );
    println!("Ctrl-C to tear down.");

    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    eprintln!("tearing down...");
    drop(fleet);
    Ok(())
}

async fn bench(sizes: &[usize]) -> Result<()> {
    struct Row {
        size: usize,
        start_s: f64,
        per_cluster: Vec<u64>,
        components: [u64; 4],
        etcd: u64,
        teardown_s: f64,
    }
    let mut rows = Vec::new();
    for &size in sizes {
        eprintln!("bench: starting {size} clusters...");
        let fleet = Fleet::start(size).await?;
        let start_s = fleet.startup_time().as_secs_f64();
        let mut components = [0u64; 4];
        let per_cluster = fleet
            .clusters()
            .iter()
            .map(|c| {
                let mut sum = 0;
                for (name, pid) in c.processes() {
                    let rss = e2e::fleet::rss_bytes(pid);
                    sum += rss;
                    let slot = [
                        "kube-apiserver",
                        "kube-controller-manager",
                        "kube-scheduler",
                        "kwok",
                    ]
                    .iter()
                    .position(|k| name.ends_with(&format!("/{k}")));
                    if let Some(i) = slot {
                        components[i] += rss;
                    }
                }
                sum
            })
            .collect();
        let etcd = fleet.etcd_rss_bytes();
        let t = Instant::now();
        drop(fleet);
        rows.push(Row {
            size,
            start_s,
            per_cluster,
            components,
            etcd,
            teardown_s: t.elapsed().as_secs_f64(),
        });
        eprintln!("bench: {size} clusters done");
    }

    println!(
        "{:>8} {:>9} {:>13} {:>13} {:>13} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9}",
        "clusters",
        "ready s",
        "avg MiB/clu",
        "min MiB/clu",
        "max MiB/clu",
        "apisrv",
        "kcm",
        "sched",
        "kwok",
        "etcd MiB",
        "total MiB",
        "down s"
    );
    for r in &rows {
        let n = r.size.max(1) as u64;
        let total: u64 = r.per_cluster.iter().sum();
        println!(
            "{:>8} {:>9.1} {:>13.0} {:>13.0} {:>13.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>10.0} {:>9.1}",
            r.size,
            r.start_s,
            mib(total / n),
            mib(r.per_cluster.iter().copied().min().unwrap_or(0)),
            mib(r.per_cluster.iter().copied().max().unwrap_or(0)),
            mib(r.components[0] / n),
            mib(r.components[1] / n),
            mib(r.components[2] / n),
            mib(r.components[3] / n),
            mib(r.etcd),
            mib(total + r.etcd),
            r.teardown_s,
        );
    }
    println!(
        "(per-component columns are averages per cluster, in MiB; RSS measured right after Ready)"
    );
    Ok(())
}
