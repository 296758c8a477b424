//! The control plane under ordinary events, with the real istiod behind
//! every istiod Deployment (the bridge), on two members.
//!
//! Exactly one injection webhook serves `istio-injection=enabled` at every
//! moment, whether the istiod holding the revision tags is ready or not:
//!
//! 1. a fresh install (Istio 1.30) whose istiod cannot become ready for
//!    10 s (the bridge holds it): the injector is created once and never
//!    pruned, and no rollout wave starts (a first install is not a rollout);
//! 2. after it, the tag-holding istiod reported not ready for 10 s: nothing
//!    about injection changes.
//!
//! Sampled every 200 ms in the member; the default injector's UID never
//! changes (deleted and re-created would be a window without injection:
//! Istio's webhook fails closed, kwok's pods would be admitted bare).
//!
//! 3. An upgrade to 1.31 in waves of one with a long pause: once the first
//!    wave finished, the federation's status is wiped; the pause goes on
//!    (where the rollout stands is on record, not only in status), and the
//!    second member keeps 1.30 until the pause is over.
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use e2e::bridge::{Bridge, bridged_control_plane};
use e2e::injection::{injector_uid, injectors_for_enabled_namespace};
use e2e::istiod::charts_dir;
use e2e::mesh::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use meshfed::api::{MeshFederation, UpgradeSpec};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const FAULT: Duration = Duration::from_secs(10);

/// Samples member `client` every 200 ms for `how_long`: one injection
/// webhook, the injector `uid`, and no rollout wave in the federation.
async fn injection_holds(
    host: &Client,
    client: &Client,
    uid: &str,
    how_long: Duration,
) -> Result<usize> {
    let feds = Api::<MeshFederation>::all(host.clone());
    let started = Instant::now();
    let mut samples = 0;
    while started.elapsed() < how_long {
        let n = injectors_for_enabled_namespace(client).await?;
        ensure!(
            n == 1,
            "sample {samples}: {n} injection webhooks for istio-injection=enabled"
        );
        let now = injector_uid(client).await?;
        ensure!(
            now == uid,
            "sample {samples}: the injector was re-created ({uid} -> {now})"
        );
        let rollout = feds.get("prod").await?.status.and_then(|s| s.control_plane);
        ensure!(
            rollout.as_ref().is_none_or(|r| r.wave.is_empty()),
            "sample {samples}: a rollout wave where nothing changes version: {rollout:?}"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injection_and_rollouts_hold_through_ordinary_events() -> Result<()> {
    let fleet = e2e::Fleet::start(2).await?;
    let _logs = fleet.log_guard();
    let charts = charts_dir(fleet.dir(), &["1.30", "1.31"]).await?;
    let bridge = Bridge::start(&fleet, &fleet.dir().join("bridge"));
    bridge.hold(1, true);
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let settings = managed_settings(charts).await?;
    let _operator = start_operator_with(fleet.cluster(0), settings)?;
    let member = fleet.cluster(1).client();
    let mut fed = federation("prod", members_of(&fleet, &["net-a", "net-a"]));
    let upgrade = UpgradeSpec {
        max_concurrent: Some(1),
        pause: Some("60s".parse()?),
        order: Some(vec![fleet.cluster(0).name().to_string()]),
        ..Default::default()
    };
    fed.spec.control_plane = Some(bridged_control_plane("1.30", upgrade));
    apply_federation(&host, &fed).await?;

    // 1. A fresh install whose istiod is not ready yet.
    poll(WAIT, "member 1's injector installed", || async {
        Ok(injectors_for_enabled_namespace(&member).await? >= 1)
    })
    .await?;
    let uid = injector_uid(&member).await?;
    let fresh = injection_holds(&host, &member, &uid, FAULT).await?;
    bridge.hold(1, false);
    wait_for_federation(&host, "prod", WAIT, "Ready and up to date", |f| {
        has_condition(f, "Ready", "True") && has_condition(f, "ControlPlanesUpToDate", "True")
    })
    .await?;

    // 2. The tag holder briefly not ready.
    bridge.unready(1, true);
    wait_for_federation(&host, "prod", WAIT, "istiod seen not ready", |f| {
        has_condition(f, "ControlPlanesReady", "False")
    })
    .await?;
    let unready = injection_holds(&host, &member, &uid, FAULT).await?;
    bridge.unready(1, false);
    wait_for_federation(&host, "prod", WAIT, "Ready again", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    injection_holds(&host, &member, &uid, Duration::from_secs(1)).await?;
    eprintln!(
        "injection held: {fresh} samples on a fresh install, {unready} with istiod not ready"
    );

    // 3. The status wiped during a rollout's pause.
    let feds = Api::<MeshFederation>::all(host.clone());
    feds.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"controlPlane": {"version": "1.31"}}})),
    )
    .await?;
    wait_for_federation(
        &host,
        "prod",
        WAIT,
        "the first wave finished: paused",
        |f| {
            f.status
                .as_ref()
                .and_then(|s| s.control_plane.as_ref())
                .is_some_and(|c| c.version == "1.31" && c.phase == "Paused")
        },
    )
    .await?;
    let tags = |f: &MeshFederation, i: usize| {
        f.status
            .as_ref()
            .and_then(|s| s.members.get(i))
            .and_then(|m| m.tags_revision.clone())
    };
    let fed = feds.get("prod").await?;
    ensure!(
        tags(&fed, 0).as_deref() == Some("1-31") && tags(&fed, 1).as_deref() == Some("1-30"),
        "member 0 first: {:?}",
        fed.status
    );
    feds.patch_status(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": null})),
    )
    .await?;
    let deployments = Api::<Deployment>::namespaced(member.clone(), "istio-system");
    let wiped = Instant::now();
    while wiped.elapsed() < FAULT {
        let fed = feds.get("prod").await?;
        let rollout = fed.status.as_ref().and_then(|s| s.control_plane.clone());
        ensure!(
            rollout.as_ref().is_none_or(|r| r.wave.is_empty()),
            "the pause ended with the status: {rollout:?}"
        );
        ensure!(
            deployments.get_opt("istiod-1-31").await?.is_none(),
            "member 1 got 1.31 during the pause"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
