//! `make bench`: meshfed on real test-bed fleets. For each fleet size it
//! measures the time from `kubectl apply` to `Ready`, the API requests one
//! steady-state reconcile sends to each member, and the operator's peak RSS.
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use e2e::Fleet;
use e2e::mesh::*;

/// Benchmarks the meshfed operator binary against real multi-cluster fleets.
#[derive(Parser)]
struct Args {
    /// Fleet sizes (number of members) to measure.
    #[arg(long, value_delimiter = ',', default_value = "3,10")]
    sizes: Vec<usize>,
    /// Steady-state reconciles to average the request counts over.
    #[arg(long, default_value_t = 3)]
    reconciles: u64,
}

struct Figures {
    members: usize,
    to_ready: Duration,
    reads_per_member: f64,
    writes_per_member: f64,
    peak_rss_mib: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = operator_binary()?;
    let mut rows = Vec::new();
    for &n in &args.sizes {
        eprintln!(">> {n} members: starting fleet");
        rows.push(measure(&binary, n, args.reconciles).await?);
    }
    println!(
        "\nmeshfed operator benchmark (dev-profile binary, {} cores)",
        std::thread::available_parallelism()?
    );
    println!(
        "{:>7}  {:>14}  {:>26}  {:>27}  {:>17}",
        "members",
        "apply->Ready",
        "reads/reconcile/member",
        "writes/reconcile/member",
        "operator peak RSS"
    );
    for r in rows {
        println!(
            "{:>7}  {:>12.0}ms  {:>26.1}  {:>27.1}  {:>13.1} MiB",
            r.members,
            r.to_ready.as_secs_f64() * 1000.0,
            r.reads_per_member,
            r.writes_per_member,
            r.peak_rss_mib
        );
    }
    Ok(())
}

async fn measure(binary: &std::path::Path, n: usize, reconciles: u64) -> Result<Figures> {
    let fleet = Fleet::start(n).await?;
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    for c in &fleet.clusters()[1..] {
        store_credentials(&host, c).await?;
    }
    let metrics_addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut operator = Command::new(binary)
        .args([
            "--resync",
            "2s",
            "--metrics-addr",
            &metrics_addr.to_string(),
            "--namespace",
            OPERATOR_NAMESPACE,
        ])
        .env("KUBECONFIG", fleet.cluster(0).kubeconfig_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        poll(Duration::from_secs(30), "operator ready", || async {
            Ok(http_get(metrics_addr, "/readyz").await?.0 == 200)
        })
        .await?;
        let mut members = vec![local_member(fleet.cluster(0), "net-0")];
        members.extend(
            fleet.clusters()[1..]
                .iter()
                .enumerate()
                .map(|(i, c)| member(c, &format!("net-{}", i % 2))),
        );
        let started = Instant::now();
        apply_federation(&host, &federation("bench", members)).await?;
        wait_for_federation(&host, "bench", Duration::from_secs(120), "Ready", |f| {
            has_condition(f, "Ready", "True")
        })
        .await?;
        let to_ready = started.elapsed();

        let first = scrape(metrics_addr).await?;
        let mut last = first;
        while last.0 < first.0 + reconciles {
            tokio::time::sleep(Duration::from_millis(200)).await;
            last = scrape(metrics_addr).await?;
        }
        let per = |total: f64| total / (last.0 - first.0) as f64 / n as f64;
        Ok::<_, anyhow::Error>(Figures {
            members: n,
            to_ready,
            reads_per_member: per(last.1 - first.1),
            writes_per_member: per(last.2 - first.2),
            peak_rss_mib: peak_rss_kib(operator.id())? as f64 / 1024.0,
        })
    }
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    result
}

/// (ready reconciles, member reads, member writes) from the operator's /metrics.
async fn scrape(addr: std::net::SocketAddr) -> Result<(u64, f64, f64)> {
    let (_, text) = http_get(addr, "/metrics").await?;
    let mut figures = (0u64, 0.0, 0.0);
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with("meshfed_reconciles_total{") && line.contains(r#"result="ready""#) {
            figures.0 += value() as u64;
        } else if line.starts_with("meshfed_member_api_requests_total{") {
            if line.contains(r#"kind="read""#) {
                figures.1 += value();
            } else {
                figures.2 += value();
            }
        }
    }
    Ok(figures)
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}
