//! `make bench`: meshfed on real test-bed fleets. For each fleet size it
//! measures the time from `kubectl apply` to `Ready`, the API requests one
//! steady-state reconcile sends to each member, and the operator's peak RSS.
//!
//! Then the Istio control plane, meshfed against the manual path: on one
//! fresh fleet, the time from `kubectl apply` of a Managed federation to
//! `ControlPlanesReady=True`; on a second fresh fleet of the same size, the
//! time `e2e/bench/manual-path.sh` takes to do the same by hand (openssl,
//! helm, istioctl create-remote-secret for every pair, kubectl), and the ratio.
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use e2e::Fleet;
use e2e::mesh::*;
use meshfed::api::{ControlPlaneMode, ControlPlaneSpec, EastWestGatewaySpec};

/// Benchmarks the meshfed operator binary against real multi-cluster fleets.
#[derive(Parser)]
struct Args {
    /// Fleet sizes (number of members) to measure; `--sizes` alone measures none.
    #[arg(long, value_delimiter = ',', default_value = "3,10", num_args = 0..)]
    sizes: Vec<usize>,
    /// Steady-state rounds (every member reconciled once) to average the request counts over.
    #[arg(long, default_value_t = 3)]
    reconciles: u64,
    /// Member counts of the Istio control plane comparison (meshfed against
    /// the manual path, one fresh fleet each); `--control-plane 0` skips it.
    #[arg(long, value_delimiter = ',', default_value = "3,10", num_args = 0..)]
    control_plane: Vec<usize>,
    /// The operator's --resync in the control plane comparison. While a
    /// federation is not Ready the operator retries after 1 s, 2 s, 4 s, ...
    /// capped at this, so it bounds how late istiod's readiness is noticed.
    #[arg(long, default_value = "60s")]
    control_plane_resync: String,
    /// After meshfed's control-plane run: edits of `spec.controlPlane.values`,
    /// each waited for, with the operator's RSS after the first and the last
    /// (each edit is a new chart render); 0 skips them.
    #[arg(long, default_value_t = 200)]
    values_edits: usize,
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
    let mut comparisons = Vec::new();
    for &n in args.control_plane.iter().filter(|&&n| n > 0) {
        comparisons.push(
            compare_control_plane(&binary, n, &args.control_plane_resync, args.values_edits)
                .await?,
        );
    }
    let cores = std::thread::available_parallelism()?;
    if !rows.is_empty() {
        println!("\nmeshfed operator benchmark (dev-profile binary, {cores} cores)");
        println!(
            "{:>7}  {:>14}  {:>26}  {:>27}  {:>17}",
            "members", "apply->Ready", "reads/member run", "writes/member run", "operator peak RSS"
        );
    }
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
    for c in comparisons {
        c.print();
    }
    Ok(())
}

async fn measure(binary: &std::path::Path, n: usize, reconciles: u64) -> Result<Figures> {
    let fleet = Fleet::start(n).await?;
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
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

        // Every member's worker runs at each resync: wait for `reconciles`
        // rounds of them.
        let first = scrape(metrics_addr).await?;
        let mut last = first;
        while last.0 < first.0 + reconciles * n as u64 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            last = scrape(metrics_addr).await?;
        }
        let per = |total: f64| total / (last.0 - first.0) as f64;
        Ok::<_, anyhow::Error>(Figures {
            members: n,
            to_ready,
            reads_per_member: per(last.1 - first.1),
            writes_per_member: per(last.2 - first.2),
            peak_rss_mib: e2e::fleet::peak_rss_bytes(operator.id()) as f64 / (1024.0 * 1024.0),
        })
    }
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    result
}

/// (ready member runs, member reads, member writes) from the operator's /metrics.
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
        if line.starts_with("meshfed_member_runs_total{") && line.contains(r#"result="ready""#) {
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

/// Istio's control plane on the same number of members, meshfed against the
/// manual path.
struct Comparison {
    members: usize,
    resync: String,
    meshfed: Duration,
    /// Reconciles meshfed ran until then, and the seconds they took in all.
    meshfed_reconciles: (u64, f64),
    /// The operator's peak RSS over the Managed-mode run.
    meshfed_peak_rss_mib: f64,
    /// The peak of the operator's RSS plus its `helm template` children's,
    /// sampled every 10 ms: what the pod's memory limit must hold.
    meshfed_tree_peak_rss_mib: f64,
    edits: Option<Edits>,
    manual: Duration,
    manual_commands: usize,
    /// (phase, seconds, commands) as manual-path.sh reports them.
    phases: Vec<(String, f64, usize)>,
}

impl Comparison {
    fn print(&self) {
        let secs = |d: Duration| d.as_secs_f64();
        println!(
            "\nIstio control plane on {} members, until istiod is Available in each \
             (one fresh fleet per path)",
            self.members
        );
        println!("{:<48}  {:>9}  {:>8}", "path", "time", "commands");
        println!(
            "{:<48}  {:>7.2} s  {:>8}",
            "meshfed: kubectl apply -> ControlPlanesReady",
            secs(self.meshfed),
            format!("1 (+{})", self.members - 1)
        );
        println!(
            "{:<48}  {:>7.2} s  {:>8}",
            "manual: e2e/bench/manual-path.sh",
            secs(self.manual),
            self.manual_commands
        );
        println!(
            "{:<48}  {:>8.1}x",
            "manual / meshfed",
            secs(self.manual) / secs(self.meshfed)
        );
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(name, s, c)| format!("{name} {s:.2} s ({c})"))
            .collect();
        println!("manual phases: {}", phases.join(", "));
        println!(
            "meshfed operator peak RSS in Managed mode: {:.1} MiB; with its helm children: \
             {:.1} MiB (the chart's memory limit: {})",
            self.meshfed_peak_rss_mib,
            self.meshfed_tree_peak_rss_mib,
            chart_memory_limit()
        );
        println!(
            "meshfed: reconciles {}, working {:.2} s in all; operator --resync {}; (+{}): \
             member kubeconfig Secrets, stored before the clock starts",
            self.meshfed_reconciles.0,
            self.meshfed_reconciles.1,
            self.resync,
            self.members - 1
        );
        if let Some(e) = &self.edits {
            println!(
                "meshfed operator RSS after {} spec.controlPlane.values edits ({:.0} s): \
                 {:.1} MiB after the first, {:.1} MiB after the last ({:+.1} %)",
                e.count,
                e.took.as_secs_f64(),
                e.rss_first_mib,
                e.rss_last_mib,
                (e.rss_last_mib / e.rss_first_mib - 1.0) * 100.0
            );
        }
    }
}

/// The operator's memory through edits of the control plane's values.
struct Edits {
    count: usize,
    took: Duration,
    rss_first_mib: f64,
    rss_last_mib: f64,
}

/// Edits `spec.controlPlane.values` of `federation` `count` times, each
/// waited for until every member worked from it (each is a chart render of
/// its own), and reads the operator's RSS after the first and the last.
async fn values_edits(
    host: &kube::Client,
    federation: &str,
    operator: u32,
    count: usize,
) -> Result<Edits> {
    let feds = kube::Api::<meshfed::api::MeshFederation>::all(host.clone());
    let mib = || e2e::fleet::rss_bytes(operator) as f64 / (1024.0 * 1024.0);
    let started = Instant::now();
    let mut rss_first_mib = 0.0;
    for n in 1..=count {
        let edit = serde_json::json!({"spec": {"controlPlane": {"values": {"pilot": {"env": {"MESHFED_BENCH_EDIT": n.to_string()}}}}}});
        let edited = feds
            .patch(
                federation,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&edit),
            )
            .await?;
        let generation = edited.metadata.generation;
        wait_for_federation(
            host,
            federation,
            Duration::from_secs(60),
            "the edit applied",
            |f| f.status.as_ref().and_then(|s| s.observed_generation) == generation,
        )
        .await?;
        if n == 1 {
            rss_first_mib = mib();
        }
    }
    Ok(Edits {
        count,
        took: started.elapsed(),
        rss_first_mib,
        rss_last_mib: mib(),
    })
}

/// Times meshfed and the manual path, each on a fresh fleet of `n` clusters.
async fn compare_control_plane(
    binary: &Path,
    n: usize,
    resync: &str,
    edits: usize,
) -> Result<Comparison> {
    let chart_links = tempfile::tempdir()?;
    // One chart set for both paths: the operator's layout links to it.
    let (charts_dir, version) = istio_chart_set(chart_links.path()).await?;
    let charts = std::fs::canonicalize(charts_dir.join(&version))?;
    let helm = e2e::istiod::helm().await?;
    let istioctl = charts
        .parent()
        .map(|root| root.join("bin/istioctl"))
        .filter(|p| p.is_file())
        .with_context(|| {
            format!(
                "no bin/istioctl next to {}; point MESHFED_ISTIO_CHARTS at the charts/ \
                 of a `bash e2e/testbed/build-istio.sh` root, or unset it",
                charts.display()
            )
        })?;
    let kubectl = e2e::fleet::tools().await?.path("kubectl");
    // Page in every binary both paths start, so neither pays a cold disk.
    quiet(
        Command::new(&helm)
            .args(["template", "istio-base"])
            .arg(charts.join("base")),
    )?;
    quiet(
        Command::new(&helm)
            .args(["template", "istiod"])
            .arg(charts.join("istio-control/istio-discovery")),
    )?;
    quiet(Command::new(&istioctl).args(["version", "--remote=false"]))?;
    quiet(Command::new(&kubectl).args(["version", "--client"]))?;
    quiet(Command::new("openssl").arg("version"))?;

    eprintln!(">> control plane, {n} members: meshfed");
    let (meshfed, meshfed_reconciles, (meshfed_peak_rss_mib, meshfed_tree_peak_rss_mib), edits) =
        time_meshfed(binary, n, resync, &charts_dir, &version, &helm, edits).await?;
    eprintln!(">> control plane, {n} members: manual path");
    let (manual, phases, manual_commands) =
        time_manual_path(n, &charts, &helm, &istioctl, &kubectl).await?;
    Ok(Comparison {
        members: n,
        resync: resync.into(),
        meshfed,
        meshfed_reconciles,
        meshfed_peak_rss_mib,
        meshfed_tree_peak_rss_mib,
        edits,
        manual,
        manual_commands,
        phases,
    })
}

/// Runs `cmd` to completion, output discarded; fails if it does.
fn quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The last `lines` lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// meshfed: a Managed federation (no east-west gateways) applied to a fresh
/// fleet; the time from the apply until `Ready` and `ControlPlanesReady`.
async fn time_meshfed(
    binary: &Path,
    n: usize,
    resync: &str,
    charts_dir: &Path,
    version: &str,
    helm: &Path,
    edits: usize,
) -> Result<(Duration, (u64, f64), (f64, f64), Option<Edits>)> {
    let fleet = Fleet::start(n).await?;
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let metrics_addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = fleet.dir().join("operator.log");
    let log_file = std::fs::File::create(&log)?;
    let mut operator = Command::new(binary)
        .args([
            "--resync",
            resync,
            "--metrics-addr",
            &metrics_addr.to_string(),
            "--namespace",
            OPERATOR_NAMESPACE,
        ])
        .arg("--charts-dir")
        .arg(charts_dir)
        .arg("--helm")
        .arg(helm)
        .env("KUBECONFIG", fleet.cluster(0).kubeconfig_path())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()?;
    let tree_peak = e2e::fleet::TreeRssPeak::watch(operator.id());
    let result = async {
        poll(Duration::from_secs(30), "operator ready", || async {
            Ok(http_get(metrics_addr, "/readyz").await?.0 == 200)
        })
        .await?;
        let members = fleet
            .clusters()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let network = format!("net-{}", i % 2);
                if i == 0 {
                    local_member(c, &network)
                } else {
                    member(c, &network)
                }
            })
            .collect();
        let mut fed = federation("bench-control-plane", members);
        fed.spec.control_plane = Some(ControlPlaneSpec {
            mode: ControlPlaneMode::Managed,
            version: Some(version.into()),
            values: None,
            east_west_gateway: Some(EastWestGatewaySpec {
                enabled: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
        let started = Instant::now();
        apply_federation(&host, &fed).await?;
        wait_for_federation(
            &host,
            "bench-control-plane",
            Duration::from_secs(300),
            "Ready and ControlPlanesReady",
            |f| has_condition(f, "Ready", "True") && has_condition(f, "ControlPlanesReady", "True"),
        )
        .await?;
        let elapsed = started.elapsed();
        // The reconcile that wrote the condition is counted once it returns.
        poll(Duration::from_secs(10), "a ready reconcile", || async {
            Ok(scrape(metrics_addr).await?.0 >= 1)
        })
        .await?;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let peak_rss_mib = (
            mib(e2e::fleet::peak_rss_bytes(operator.id())),
            mib(tree_peak.peak_bytes()),
        );
        let work = reconcile_work(metrics_addr).await?;
        let edits = match edits {
            0 => None,
            n => Some(values_edits(&host, "bench-control-plane", operator.id(), n).await?),
        };
        Ok::<_, anyhow::Error>((elapsed, work, peak_rss_mib, edits))
    }
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    // MESHFED_BENCH_LOG=<file> keeps the operator's log (RUST_LOG applies).
    if let Some(keep) = std::env::var_os("MESHFED_BENCH_LOG") {
        std::fs::copy(&log, keep)?;
    }
    let elapsed = result.with_context(|| format!("operator log tail:\n{}", tail(&log, 30)))?;
    check_federated(&fleet).await?;
    Ok(elapsed)
}

/// (reconciles run, seconds spent in them) from the operator's /metrics.
async fn reconcile_work(addr: std::net::SocketAddr) -> Result<(u64, f64)> {
    let (_, text) = http_get(addr, "/metrics").await?;
    let mut work = (0u64, 0.0);
    for line in text.lines() {
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if line.starts_with("meshfed_reconciles_total{") {
            work.0 += value.unwrap_or(0.0) as u64;
        } else if line.starts_with("meshfed_reconcile_duration_seconds_sum") {
            work.1 += value.unwrap_or(0.0);
        }
    }
    Ok(work)
}

/// The manual path on a fresh fleet: manual-path.sh's wall-clock time, its
/// phases and the number of commands it ran.
async fn time_manual_path(
    n: usize,
    charts: &Path,
    helm: &Path,
    istioctl: &Path,
    kubectl: &Path,
) -> Result<(Duration, Vec<(String, f64, usize)>, usize)> {
    let fleet = Fleet::start(n).await?;
    let work = fleet.dir().join("manual-path");
    let kubeconfigs = work.join("kubeconfigs");
    fleet.write_kubeconfigs(&kubeconfigs)?;
    let log = work.join("stderr.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/manual-path.sh");
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script)
        .arg(&kubeconfigs)
        .arg(charts)
        .arg(helm)
        .arg(istioctl)
        .arg(kubectl)
        .arg(work.join("out"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    let started = Instant::now();
    let out = cmd.output().await?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{stdout}\n{}",
            script.display(),
            out.status,
            tail(&log, 30)
        );
    }
    let mut phases = Vec::new();
    let mut total = None;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["phase", name, secs, commands] => {
                phases.push((name.to_string(), secs.parse()?, commands.parse()?))
            }
            ["total", _secs, commands] => total = Some(commands.parse()?),
            _ => {}
        }
    }
    let commands = total.with_context(|| format!("no total line from the script:\n{stdout}"))?;
    check_federated(&fleet).await?;
    Ok((elapsed, phases, commands))
}

/// Both paths end in the same state: in every cluster istiod Available,
/// `cacerts`, and one remote secret per peer.
async fn check_federated(fleet: &Fleet) -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    for c in fleet.clusters() {
        let client = c.client();
        // `istiod` (the manual path) or `istiod-<revision>` (meshfed).
        let istiods = Api::<Deployment>::namespaced(client.clone(), "istio-system")
            .list(&kube::api::ListParams::default().labels("app=istiod"))
            .await?;
        let available = istiods.items.iter().any(|d| {
            d.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True")
        });
        let secrets = Api::<Secret>::namespaced(client, "istio-system");
        let cacerts = secrets.get_opt("cacerts").await?.is_some();
        let remote = secrets
            .list(&kube::api::ListParams::default().labels("istio/multiCluster=true"))
            .await?
            .items
            .len();
        if !available || !cacerts || remote != fleet.len() - 1 {
            bail!(
                "{}: istiod available {available}, cacerts {cacerts}, {remote} remote secrets \
                 (want {})",
                c.name(),
                fleet.len() - 1
            );
        }
    }
    Ok(())
}

/// `resources.limits.memory` of the chart's values.yaml.
fn chart_memory_limit() -> String {
    let values = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/meshfed-operator/values.yaml");
    std::fs::read_to_string(values)
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
        .and_then(|v| {
            v["resources"]["limits"]["memory"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}
