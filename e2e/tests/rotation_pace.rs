//! A root rotation with real istiods moves at the pace of the istiods, not
//! of the operator's resync: a phase is done in a member once its istiod
//! has rewritten `istio-ca-root-cert`, and that rewrite wakes the member's
//! worker (the ConfigMap is watched). With `--resync 60s` and waits of 1 s
//! each, the whole rotation on two members ends in well under one resync.
use std::time::{Duration, Instant};

use anyhow::Result;
use e2e::istiod::install_base_crds;
use e2e::mesh::*;
use e2e::workload::{MemberWorkload, istiod_fleet};
use kube::Api;
use kube::api::{Patch, PatchParams};
use meshfed::api::MeshFederation;

const WAIT: Duration = Duration::from_secs(60);
const RESYNC: Duration = Duration::from_secs(60);
const NETWORKS: [&str; 2] = ["net-a", "net-b"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_follows_the_istiods_not_the_resync() -> Result<()> {
    let (_logs, fleet, clients) = istiod_fleet(2).await?;
    let host = clients[0].clone();
    let _operator = start_operator(fleet.cluster(0), RESYNC, Duration::from_secs(3))?;
    let mut fed = federation("prod", members_of(&fleet, &NETWORKS));
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "rootRotation": {"propagationPeriod": "1s", "drainPeriod": "1s"}
    }))?);
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    futures::future::try_join_all(clients.iter().map(install_base_crds)).await?;
    let mut istiods = Vec::new();
    for (i, cluster) in fleet.clusters().iter().enumerate() {
        let dir = fleet.dir().join(format!("istiod-{i}"));
        istiods.push(
            MemberWorkload::start(cluster, NETWORKS[i], &dir, Duration::from_secs(600)).await?,
        );
    }

    let feds = Api::<MeshFederation>::all(host.clone());
    let old = feds
        .get("prod")
        .await?
        .status
        .and_then(|s| s.root)
        .map(|r| r.serial);
    let started = Instant::now();
    feds.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"ca": {"rootRotation": {"request": "r1"}}}})),
    )
    .await?;
    let bound = RESYNC / 2;
    wait_for_federation(&host, "prod", bound, "the rotation finished", |f| {
        f.status.as_ref().is_some_and(|s| {
            let ca = s.ca.clone().unwrap_or_default();
            let root = s.root.as_ref().map(|r| r.serial.clone());
            ca.phase.is_none() && ca.roots.len() == 1 && root.is_some() && root != old
        })
    })
    .await?;
    eprintln!(
        "FIGURE rotation with real istiods and --resync {RESYNC:?}: {:?} (waits 2 s)",
        started.elapsed()
    );
    drop(istiods);
    Ok(())
}
