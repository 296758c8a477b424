//! `make bench-rotation`: a full root rotation on fleets of API-server-only
//! members (3 and 10 by default), against the floor it is bounded by (the
//! sum of the phase waits: propagation and drain), with the writes to each
//! member's `cacerts` in every phase (counted by a watch in the member, so
//! nothing meshfed does is missed).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use e2e::Fleet;
use e2e::mesh::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use meshfed::api::MeshFederation;

/// Root rotation benchmark.
#[derive(Parser)]
struct Args {
    /// Fleet sizes (members).
    #[arg(long, value_delimiter = ',', default_value = "3,10")]
    sizes: Vec<usize>,
    /// spec.ca.rootRotation.propagationPeriod, in seconds.
    #[arg(long, default_value_t = 2)]
    propagation: u64,
    /// spec.ca.rootRotation.drainPeriod, in seconds.
    #[arg(long, default_value_t = 4)]
    drain: u64,
}

const PHASES: [&str; 4] = ["TrustBoth", "SignWithNew", "Drain", "TrustNew"];

struct Figures {
    members: usize,
    total: Duration,
    floor: Duration,
    phases: Vec<(String, Duration)>,
    /// Writes to each member's cacerts, by the phase whose state they wrote.
    writes: BTreeMap<&'static str, Vec<usize>>,
}

/// Writes to one member's `cacerts`, by the phase whose state they wrote.
type Counts = Arc<std::sync::Mutex<BTreeMap<&'static str, usize>>>;

/// What a member's `cacerts` holds: how many roots, and the serial of the
/// root its intermediate chains to.
fn state_of(secret: &Secret) -> Option<(usize, String)> {
    let text = |k: &str| String::from_utf8(secret.data.as_ref()?.get(k)?.0.clone()).ok();
    let roots = meshfed::pki::inspect_bundle(&text("root-cert.pem")?)
        .ok()?
        .len();
    let chain = meshfed::pki::inspect_bundle(&text("cert-chain.pem")?).ok()?;
    Some((roots, chain.get(1)?.serial.clone()))
}

/// The phase a change of `cacerts` belongs to.
fn phase_of(before: &(usize, String), after: &(usize, String)) -> &'static str {
    match (before.0, after.0, before.1 == after.1) {
        (1, 2, true) => "TrustBoth",
        (2, 2, false) => "SignWithNew",
        (2, 1, true) => "TrustNew",
        _ if before == after => "unchanged",
        _ => "other",
    }
}

/// Every write to `istio-system/cacerts` in one member, attributed to the
/// phase by what it changed; a write that changed nothing (it would belong
/// to Drain, or be waste) counts as "unchanged".
fn count_writes(client: Client) -> (Counts, tokio::task::JoinHandle<()>) {
    let counts: Counts = Arc::default();
    let task = {
        let counts = counts.clone();
        tokio::spawn(async move {
            let api = Api::<Secret>::namespaced(client, "istio-system");
            let config = watcher::Config::default().fields("metadata.name=cacerts");
            let mut events = watcher(api, config).boxed();
            let mut last: Option<(usize, String)> = None;
            while let Some(event) = events.next().await {
                let (Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s))) = event
                else {
                    continue;
                };
                let Some(state) = state_of(&s) else { continue };
                if let Some(before) = &last {
                    *counts
                        .lock()
                        .unwrap()
                        .entry(phase_of(before, &state))
                        .or_default() += 1;
                }
                last = Some(state);
            }
        })
    };
    (counts, task)
}

async fn measure(n: usize, args: &Args) -> Result<Figures> {
    let fleet = Fleet::start(n).await?;
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let _operator = start_operator(
        fleet.cluster(0),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )?;
    let members = fleet
        .clusters()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                local_member(c, "net-a")
            } else {
                member(c, "net-a")
            }
        })
        .collect();
    let mut fed = federation("prod", members);
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "rootRotation": {
            "propagationPeriod": format!("{}s", args.propagation),
            "drainPeriod": format!("{}s", args.drain),
        }
    }))?);
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", Duration::from_secs(120), "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    let counters: Vec<_> = fleet
        .clusters()
        .iter()
        .map(|c| count_writes(c.client()))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let feds = Api::<MeshFederation>::all(host.clone());
    let started = Instant::now();
    feds.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"ca": {"rootRotation": {"request": "bench"}}}})),
    )
    .await?;
    let mut phases: Vec<(String, Duration)> = Vec::new();
    loop {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("rotation on {n} members did not finish");
        }
        let ca = feds.get("prod").await?.status.and_then(|s| s.ca);
        let phase = ca.as_ref().and_then(|c| c.phase.clone());
        let current = phases.last().map(|(p, _)| p.clone());
        if phase != current {
            match phase {
                Some(p) => phases.push((p, started.elapsed())),
                None if !phases.is_empty() => break,
                None => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut writes: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (counts, task) in counters {
        task.abort();
        let counts = counts.lock().unwrap().clone();
        for key in PHASES.iter().chain(&["unchanged", "other"]) {
            writes
                .entry(key)
                .or_default()
                .push(counts.get(key).copied().unwrap_or(0));
        }
    }
    Ok(Figures {
        members: n,
        total,
        floor: Duration::from_secs(args.propagation + args.drain),
        phases,
        writes,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut all = Vec::new();
    for &n in &args.sizes {
        let f = measure(n, &args).await?;
        eprintln!("{n} members: rotation took {:?}", f.total);
        all.push(f);
    }
    println!(
        "root rotation, API-server-only members, propagation {}s + drain {}s",
        args.propagation, args.drain
    );
    println!(
        "| members | rotation | floor (waits) | overhead | phase starts (s) | cacerts writes per member, by phase |"
    );
    println!("|---|---|---|---|---|---|");
    for f in &all {
        let starts: Vec<String> = f
            .phases
            .iter()
            .map(|(p, at)| format!("{p} {:.1}", at.as_secs_f64()))
            .collect();
        let writes: Vec<String> = PHASES
            .iter()
            .chain(&["unchanged", "other"])
            .map(|p| {
                let w = f.writes.get(p).cloned().unwrap_or_default();
                let (min, max) = (
                    w.iter().min().copied().unwrap_or(0),
                    w.iter().max().copied().unwrap_or(0),
                );
                if min == max {
                    format!("{p} {min}")
                } else {
                    format!("{p} {min}-{max}")
                }
            })
            .collect();
        println!(
            "| {} | {:.1} s | {:.1} s | {:.1} s | {} | {} |",
            f.members,
            f.total.as_secs_f64(),
            f.floor.as_secs_f64(),
            f.total.saturating_sub(f.floor).as_secs_f64(),
            starts.join(", "),
            writes.join(", ")
        );
    }
    Ok(())
}
