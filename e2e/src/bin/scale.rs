//! `make bench-scale`: the release-built operator against fleets of 10, 25
//! and 50 API-server-only clusters, federations without a control plane (CA,
//! reader identities and N×(N−1) remote secrets). For each size it measures:
//! apply → Ready; how fast a deleted `cacerts` or remote secret is back;
//! requests and TokenRequests per member per hour in steady state; the
//! operator's peak RSS; what a restart of the operator costs (writes in
//! members, TokenRequests, time until it heard from every member, whether
//! Ready held); and how much one hung member slows the others when the spec
//! changes. It prints a table and writes the figures as CSV.
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use e2e::fleet::FleetOptions;
use e2e::mesh::*;
use e2e::{Cluster, Fleet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};
use meshfed::api::{CaSpec, MeshFederation};

/// Scale benchmark of the meshfed operator on API-server-only fleets.
#[derive(Parser)]
struct Args {
    /// Fleet sizes (members).
    #[arg(long, value_delimiter = ',', default_value = "10,25,50")]
    sizes: Vec<usize>,
    /// Deletions to time per fleet (half `cacerts`, half remote secrets).
    #[arg(long, default_value_t = 20)]
    repairs: usize,
    /// Seconds of steady state to count requests over.
    #[arg(long, default_value_t = 60)]
    steady_secs: u64,
    /// The operator's --resync (its safety resync).
    #[arg(long, default_value = "5m")]
    resync: String,
    /// Where to write the figures as CSV.
    #[arg(long, default_value = "target/bench-scale.csv")]
    csv: PathBuf,
}

struct Figures {
    members: usize,
    fleet_start: Duration,
    to_ready: Duration,
    /// CPU seconds the operator used from apply to Ready.
    operator_cpu: f64,
    repairs: Vec<Duration>,
    steady: Counters,
    steady_secs: f64,
    per_run: f64,
    change: Duration,
    change_with_hung: Duration,
    peak_rss_mib: f64,
    restart: Restart,
}

/// What an operator restart with a Ready federation cost.
struct Restart {
    /// Objects created, changed or deleted in members.
    writes: usize,
    /// TokenRequests served by the members' API servers.
    tokens: u64,
    /// From the new process's start until every member's worker ran.
    to_every_member: Duration,
    /// Whether `Ready=True` at every sample (every 100 ms).
    ready_held: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let binary = build_operator(true)?;
    let mut rows = Vec::new();
    for &n in &args.sizes {
        eprintln!(">> {n} members: starting an API-server-only fleet");
        rows.push(measure(&binary, n, &args).await?);
    }
    print(&rows);
    write_csv(&args.csv, &rows)?;
    eprintln!("figures written to {}", args.csv.display());
    Ok(())
}

/// The operator process; killed when dropped.
struct Operator {
    child: Child,
    metrics: SocketAddr,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_operator(binary: &Path, host: &Cluster, resync: &str) -> Result<Operator> {
    let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = Command::new(binary)
        .args(["--resync", resync, "--member-timeout", "10s"])
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--namespace", OPERATOR_NAMESPACE])
        .env("KUBECONFIG", host.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Operator { child, metrics })
}

async fn measure(binary: &Path, n: usize, args: &Args) -> Result<Figures> {
    let fleet = Fleet::start_with(FleetOptions {
        apiserver_only: true,
        ..FleetOptions::new(n)
    })
    .await?;
    let fleet_start = fleet.startup_time();
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let operator = start_operator(binary, fleet.cluster(0), &args.resync)?;
    poll(Duration::from_secs(30), "operator ready", || async {
        Ok(http_get(operator.metrics, "/readyz").await?.0 == 200)
    })
    .await?;
    let mut members = vec![local_member(fleet.cluster(0), "net-0")];
    members.extend(
        fleet.clusters()[1..]
            .iter()
            .enumerate()
            .map(|(i, c)| member(c, &format!("net-{}", i % 2))),
    );
    let mut fed = federation("scale", members);
    let ready = |f: &MeshFederation| has_condition(f, "Ready", "True");
    let wait = Duration::from_secs(300);

    let cpu_before = cpu_seconds(operator.child.id());
    let started = Instant::now();
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "scale", wait, "Ready", ready).await?;
    let to_ready = started.elapsed();
    let operator_cpu = cpu_seconds(operator.child.id()) - cpu_before;
    eprintln!("   apply -> Ready in {to_ready:?}; the operator used {operator_cpu:.2} s of CPU");

    // Repairs: delete, then time until a new object of that name exists.
    let mut repairs = Vec::new();
    for i in 0..args.repairs {
        let index = 1 + i % (n - 1);
        let client = fleet.cluster(index).client();
        let secrets = Api::<Secret>::namespaced(client, "istio-system");
        let name = if i % 2 == 0 {
            "cacerts".to_string()
        } else {
            format!("istio-remote-secret-{}", fleet.cluster(0).name())
        };
        let uid = secrets.get(&name).await?.uid();
        let t = Instant::now();
        secrets.delete(&name, &DeleteParams::default()).await?;
        loop {
            if secrets
                .get_opt(&name)
                .await?
                .is_some_and(|s| s.uid() != uid)
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("{name} in cluster-{index} not restored within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        repairs.push(t.elapsed());
    }
    wait_for_federation(&host, "scale", wait, "Ready after repairs", ready).await?;

    // Steady state: nothing changes; count what the operator sends.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = scrape(operator.metrics).await?;
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let after = scrape(operator.metrics).await?;
    let steady = after.since(&before);
    let per_run = if after.runs > 0.0 {
        after.reads / after.runs
    } else {
        0.0
    };

    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let (operator, restart) = measure_restart(binary, operator, &fleet, &clients, args).await?;
    eprintln!(
        "   restart: {} writes in members, {} TokenRequests, every member run after {:?}, Ready held: {}",
        restart.writes, restart.tokens, restart.to_every_member, restart.ready_held
    );

    // A spec change every member acts on (new intermediates), first with
    // every member healthy, then with one hung.
    let healthy: Vec<Client> = fleet.clusters()[..n - 1]
        .iter()
        .map(|c| c.client())
        .collect();
    let change = time_change(&host, &mut fed, &healthy, "4000h", wait).await?;
    let hung = fleet.cluster(n - 1);
    hung.pause_apiserver()?;
    let change_with_hung = time_change(&host, &mut fed, &healthy, "3000h", wait).await;
    hung.resume_apiserver()?;
    let change_with_hung = change_with_hung?;
    eprintln!("   spec change: {change:?}; with one member hung: {change_with_hung:?}");

    let peak_rss_mib = e2e::fleet::peak_rss_bytes(operator.child.id()) as f64 / (1024.0 * 1024.0);
    drop(operator);
    Ok(Figures {
        members: n,
        fleet_start,
        to_ready,
        operator_cpu,
        repairs,
        steady,
        steady_secs: args.steady_secs as f64,
        per_run,
        change,
        change_with_hung,
        peak_rss_mib,
        restart,
    })
}

/// Kills `operator` and starts it again with the federation Ready; counts
/// what the new process writes and mints until it has run every member and
/// 5 s more. Returns the new process.
async fn measure_restart(
    binary: &Path,
    operator: Operator,
    fleet: &Fleet,
    clients: &[Client],
    args: &Args,
) -> Result<(Operator, Restart)> {
    let host = fleet.cluster(0).client();
    let writes = e2e::writes::Writes::start(clients);
    poll(
        Duration::from_secs(120),
        "every write watch listed",
        || async { Ok(writes.ready()) },
    )
    .await?;
    let before = token_requests(clients).await?;
    drop(operator);
    let operator = start_operator(binary, fleet.cluster(0), &args.resync)?;
    let started = Instant::now();
    let mut ready_held = true;
    let mut heard = None;
    while heard.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(5)) {
        let fed = Api::<MeshFederation>::all(host.clone())
            .get("scale")
            .await?;
        ready_held &= has_condition(&fed, "Ready", "True");
        if heard.is_none()
            && http_get(operator.metrics, "/metrics")
                .await
                .is_ok_and(|(_, text)| members_run(&text) == clients.len())
        {
            heard = Some(Instant::now());
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the restarted operator did not run every member within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = token_requests(clients).await?;
    let restart = Restart {
        writes: writes.count(),
        tokens: after - before,
        to_every_member: heard.map_or(Duration::ZERO, |t| t - started),
        ready_held,
    };
    Ok((operator, restart))
}

/// TokenRequests served by every member's API server, summed.
async fn token_requests(clients: &[Client]) -> Result<u64> {
    let counts =
        futures::future::try_join_all(clients.iter().map(e2e::writes::token_requests)).await?;
    Ok(counts.iter().sum())
}

/// How many members' workers have finished a run, from the operator's
/// `/metrics` text.
fn members_run(metrics: &str) -> usize {
    let members: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("meshfed_member_runs_total{"))
        .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
        .filter_map(|l| l.split(r#"member=""#).nth(1)?.split('"').next())
        .collect();
    members.len()
}

/// Sets the intermediate lifetime and times until every client's `cacerts`
/// was re-issued.
async fn time_change(
    host: &Client,
    fed: &mut MeshFederation,
    clients: &[Client],
    lifetime: &str,
    wait: Duration,
) -> Result<Duration> {
    let mut versions = Vec::new();
    for c in clients {
        let s = Api::<Secret>::namespaced(c.clone(), "istio-system")
            .get("cacerts")
            .await?;
        versions.push(s.resource_version());
    }
    fed.spec.ca = Some(CaSpec {
        intermediate_lifetime: Some(lifetime.parse()?),
        ..Default::default()
    });
    let started = Instant::now();
    apply_federation(host, fed).await?;
    poll(wait, "every cacerts re-issued", || async {
        for (c, v) in clients.iter().zip(&versions) {
            let s = Api::<Secret>::namespaced(c.clone(), "istio-system")
                .get("cacerts")
                .await?;
            if s.resource_version() == *v {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    Ok(started.elapsed())
}

/// Operator counters from /metrics, summed over members.
#[derive(Clone, Copy, Default)]
struct Counters {
    reads: f64,
    writes: f64,
    tokens: f64,
    runs: f64,
}

impl Counters {
    fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
            tokens: self.tokens - earlier.tokens,
            runs: self.runs - earlier.runs,
        }
    }
}

async fn scrape(addr: SocketAddr) -> Result<Counters> {
    let (_, text) = http_get(addr, "/metrics").await?;
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if line.starts_with("meshfed_member_api_requests_total{") {
            if line.contains(r#"kind="read""#) {
                c.reads += value;
            } else {
                c.writes += value;
            }
        } else if line.starts_with("meshfed_tokens_minted_total{") {
            c.tokens += value;
        } else if line.starts_with("meshfed_member_runs_total{") {
            c.runs += value;
        }
    }
    Ok(c)
}

/// User plus system CPU time of a process, in seconds (0 when it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, in clock ticks (100 a second on Linux).
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The figures of one row, in the CSV's column order.
fn columns(r: &Figures) -> [f64; 17] {
    let mut sorted = r.repairs.clone();
    sorted.sort();
    let hour = |v: f64| v / r.members as f64 * 3600.0 / r.steady_secs;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    [
        r.members as f64,
        r.fleet_start.as_secs_f64(),
        r.to_ready.as_secs_f64(),
        r.operator_cpu,
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 99.0)),
        hour(r.steady.reads),
        hour(r.steady.writes),
        hour(r.steady.tokens),
        r.per_run,
        r.change.as_secs_f64(),
        r.change_with_hung.as_secs_f64(),
        r.peak_rss_mib,
        r.restart.writes as f64,
        r.restart.tokens as f64,
        r.restart.to_every_member.as_secs_f64(),
        f64::from(u8::from(r.restart.ready_held)),
    ]
}

const CSV_HEADER: &str = "members,fleet_start_s,apply_to_ready_s,operator_cpu_to_ready_s,repair_p50_ms,repair_p99_ms,steady_reads_per_member_hour,steady_writes_per_member_hour,tokens_per_member_hour,reads_per_run,spec_change_s,spec_change_one_hung_s,peak_rss_mib,restart_writes,restart_token_requests,restart_to_every_member_s,restart_ready_held";

fn print(rows: &[Figures]) {
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    println!(
        "\nmeshfed scale benchmark (release operator, API-server-only clusters, {cores} cores)"
    );
    println!(
        "{:>7} {:>9} {:>12} {:>13} {:>16} {:>14} {:>24} {:>9} {:>11} {:>17} {:>9} restart: writes, tokens, every member run, Ready held",
        "members",
        "fleet up",
        "apply->Ready",
        "operator CPU",
        "repair p50/p99",
        "reads/member/h",
        "writes, tokens/member/h",
        "reads/run",
        "spec change",
        "... 1 member hung",
        "peak RSS"
    );
    for r in rows {
        let c = columns(r);
        println!(
            "{:>7} {:>7.1} s {:>10.2} s {:>11.2} s {:>7.0}/{:>5.0} ms {:>14.1} {:>16.1}, {:>6.1} {:>9.1} {:>9.2} s {:>15.2} s {:>5.1} MiB {:>8}, {}, {:.2} s, {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            c[6],
            c[7],
            c[8],
            c[9],
            c[10],
            c[11],
            c[12],
            r.restart.writes,
            r.restart.tokens,
            c[15],
            if r.restart.ready_held { "yes" } else { "NO" }
        );
    }
}

fn write_csv(path: &Path, rows: &[Figures]) -> Result<()> {
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        let line: Vec<String> = columns(r).iter().map(|v| format!("{v:.3}")).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_by_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 50.0), ms(50));
        assert_eq!(percentile(&sorted, 99.0), ms(99));
        assert_eq!(percentile(&sorted[..1], 99.0), ms(1));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn members_run_counts_members_with_a_run() {
        let text = "# TYPE meshfed_member_runs counter
meshfed_member_runs_total{federation=\"scale\",member=\"a\",result=\"ready\"} 2
meshfed_member_runs_total{federation=\"scale\",member=\"a\",result=\"not_ready\"} 1
meshfed_member_runs_total{federation=\"scale\",member=\"b\",result=\"not_ready\"} 0
meshfed_member_api_requests_total{federation=\"scale\",member=\"c\",kind=\"read\"} 4
";
        assert_eq!(members_run(text), 1);
    }
}
