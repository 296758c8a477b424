//! Exactly one injection webhook serves `istio-injection=enabled` at every
//! moment, whether the istiod holding the revision tags is ready or not,
//! with the real istiod behind every istiod Deployment (the bridge):
//!
//! 1. a fresh install whose istiod cannot become ready for 10 s (the
//!    bridge holds it): the injector is created once and never pruned, and
//!    no rollout wave starts (a first install is not a rollout);
//! 2. after it, the tag-holding istiod reported not ready for 10 s: nothing
//!    about injection changes.
//!
//! Sampled every 200 ms in the member; the default injector's UID never
//! changes (deleted and re-created would be a window without injection:
//! Istio's webhook fails closed, kwok's pods would be admitted bare).
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use e2e::bridge::{Bridge, bridged_control_plane};
use e2e::injection::{injector_uid, injectors_for_enabled_namespace};
use e2e::istiod::charts_dir;
use e2e::mesh::*;
use kube::{Api, Client};
use meshfed::api::{MeshFederation, UpgradeSpec};
use meshfed::reconcile::Settings;

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
async fn one_injection_webhook_whether_istiod_is_ready_or_not() -> Result<()> {
    let fleet = e2e::Fleet::start(2).await?;
    let _logs = fleet.log_guard();
    let charts = charts_dir(fleet.dir(), &["1.31"]).await?;
    let bridge = Bridge::start(&fleet, &fleet.dir().join("bridge"));
    bridge.hold(1, true);
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let settings = Settings {
        resync: Duration::from_secs(2),
        member_timeout: Duration::from_secs(10),
        helm: e2e::istiod::helm().await?,
        charts_dir: charts,
        ..Settings::new(OPERATOR_NAMESPACE)
    };
    let _operator = start_operator_with(fleet.cluster(0), settings)?;
    let member = fleet.cluster(1).client();
    let mut fed = federation("prod", members_of(&fleet, &["net-a", "net-a"]));
    fed.spec.control_plane = Some(bridged_control_plane("1.31", UpgradeSpec::default()));
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
    Ok(())
}
