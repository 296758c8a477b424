//! `make bench-upgrade`: a fleet-wide Istio upgrade 1.30 -> 1.31 by
//! revision, in waves of one, on fleets of 3 and 10 members with the real
//! istiod behind every istiod Deployment (the test bed's bridge). Measures
//! the rollout, version change to every member's tags on 1.31 and 1.30
//! removed, against its floor: the sum of the new istiods' start-ups (one
//! per wave, in sequence). Also the writes meshfed sent to each member
//! during the rollout (its member request counter), per wave.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use e2e::Fleet;
use e2e::bridge::{Bridge, bridged_control_plane};
use e2e::istiod::charts_dir;
use e2e::mesh::*;
use kube::Api;
use meshfed::api::{ControlPlaneSpec, MeshFederation, UpgradeSpec};
use meshfed::settings::Settings;

/// Fleet-wide upgrade benchmark.
#[derive(Parser)]
struct Args {
    /// Fleet sizes (members).
    #[arg(long, value_delimiter = ',', default_value = "3,10")]
    sizes: Vec<usize>,
    /// Members changing at once (spec.controlPlane.upgrade.maxConcurrent).
    #[arg(long, default_value_t = 1)]
    max_concurrent: i32,
}

struct Figures {
    members: usize,
    waves: usize,
    rollout: Duration,
    floor: Duration,
    /// Writes to each member during the rollout (one wave each).
    writes: Vec<u64>,
}

fn control_plane(version: &str, max_concurrent: i32) -> ControlPlaneSpec {
    let upgrade = UpgradeSpec {
        max_concurrent: Some(max_concurrent),
        ..Default::default()
    };
    bridged_control_plane(version, upgrade)
}

fn done(f: &MeshFederation, version: &str) -> bool {
    has_condition(f, "ControlPlanesUpToDate", "True")
        && f.status.as_ref().is_some_and(|s| {
            s.control_plane
                .as_ref()
                .is_some_and(|c| c.version == version)
                && s.members.iter().all(|m| m.revisions.len() == 1)
        })
}

/// Writes meshfed sent to each member so far, from its metrics.
fn writes(text: &str, members: &[String]) -> Vec<u64> {
    members
        .iter()
        .map(|m| {
            let series = format!(
                "meshfed_member_api_requests_total{{federation=\"prod\",member=\"{m}\",kind=\"write\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

async fn measure(n: usize, args: &Args) -> Result<Figures> {
    let fleet = Fleet::start(n).await?;
    let charts = charts_dir(fleet.dir(), &["1.30", "1.31"]).await?;
    let bridge = Bridge::start(&fleet, &fleet.dir().join("bridge"));
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let operator = start_operator_with(
        fleet.cluster(0),
        Settings {
            resync: Duration::from_secs(30),
            member_timeout: Duration::from_secs(10),
            helm: e2e::istiod::helm().await?,
            charts_dir: charts,
            ..Settings::new(OPERATOR_NAMESPACE)
        },
    )?;
    let networks = vec!["net-a"; n];
    let mut fed = federation("prod", members_of(&fleet, &networks));
    fed.spec.control_plane = Some(control_plane("1.30", args.max_concurrent));
    apply_federation(&host, &fed).await?;
    wait_for_federation(
        &host,
        "prod",
        Duration::from_secs(300),
        "1.30 everywhere",
        |f| done(f, "1.30") && has_condition(f, "Ready", "True"),
    )
    .await?;
    let names: Vec<String> = fleet
        .clusters()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let before = writes(&operator.context.metrics().encode(), &names);

    let started = Instant::now();
    fed.spec.control_plane = Some(control_plane("1.31", args.max_concurrent));
    apply_federation(&host, &fed).await?;
    let feds = Api::<MeshFederation>::all(host.clone());
    let mut waves = 0;
    let mut last_wave = Vec::new();
    loop {
        let f = feds.get("prod").await?;
        let wave = f
            .status
            .as_ref()
            .and_then(|s| s.control_plane.as_ref())
            .map(|c| c.wave.clone())
            .unwrap_or_default();
        if !wave.is_empty() && wave != last_wave {
            waves += 1;
            last_wave = wave;
        }
        if done(&f, "1.31") {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "rollout on {n} members did not finish: {:?}",
                f.status.map(|s| s.control_plane)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rollout = started.elapsed();
    let after = writes(&operator.context.metrics().encode(), &names);
    let floor = (0..n)
        .filter_map(|i| bridge.istiod(i, "istiod-1-31"))
        .map(|istiod| istiod.ready_after())
        .sum::<Duration>()
        / u32::try_from(args.max_concurrent.max(1))?;
    Ok(Figures {
        members: n,
        waves,
        rollout,
        floor,
        writes: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut all = Vec::new();
    for &n in &args.sizes {
        eprintln!(">> {n} members: 1.30 -> 1.31");
        all.push(measure(n, &args).await?);
    }
    println!(
        "Istio 1.30 -> 1.31 by revision, waves of {}, real istiods (bridge)",
        args.max_concurrent
    );
    println!(
        "| members | waves | rollout | floor (istiod start-ups) | overhead per wave | writes per member per wave (min-max, median) |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    for f in &all {
        let mut w = f.writes.clone();
        w.sort_unstable();
        println!(
            "| {} | {} | {:.1} s | {:.1} s | {:.2} s | {}-{}, {} |",
            f.members,
            f.waves,
            f.rollout.as_secs_f64(),
            f.floor.as_secs_f64(),
            f.rollout.saturating_sub(f.floor).as_secs_f64() / f.waves.max(1) as f64,
            w.first().unwrap_or(&0),
            w.last().unwrap_or(&0),
            w[w.len() / 2],
        );
    }
    Ok(())
}
