//! Fleet-wide Istio upgrades by revision on real API servers, with the real
//! istiod (pilot-discovery 1.30 and 1.31) behind every istiod Deployment
//! (the test bed's bridge sets pod readiness from istiod's `/ready`):
//!
//! 1. a revision-less (InPlace) 1.30 install migrates to revision 1-30 member
//!    by member, injection for `istio-injection=enabled` handed over in one
//!    write (exactly one matching webhook at every sample);
//! 2. 1.30 -> 1.31 in waves of one: at every sample every ready istiod sees
//!    every peer synced and every member's probe Service, 1.30 and 1.31
//!    istiods discover each other mid-rollout, the old revision goes, except
//!    where a pod it injected still runs (reported, gone once the pod is);
//! 3. rollback 1.31 -> 1.30 with member 2's new istiod held unready: the
//!    rollout halts there (member 3 untouched, the condition names member,
//!    gate and cause), resumes when released; the CRDs stay at 1.31.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::bridge::{Bridge, bridged_control_plane};
use e2e::injection::{injector_uid, injectors_for_enabled_namespace};
use e2e::istiod::{charts_dir, service_with_pod};
use e2e::mesh::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::{Api, Client, ResourceExt};
use meshfed::api::{ControlPlaneSpec, MeshFederation, UpgradeSpec, UpgradeStrategy};

const WAIT: Duration = Duration::from_secs(180);
const GATE_TIMEOUT: Duration = Duration::from_secs(15);

fn control_plane(version: &str, strategy: UpgradeStrategy) -> ControlPlaneSpec {
    let upgrade = UpgradeSpec {
        strategy: Some(strategy),
        max_concurrent: Some(1),
        pause: Some("1s".parse().unwrap()),
        gate_timeout: Some(GATE_TIMEOUT.into()),
        ..Default::default()
    };
    bridged_control_plane(version, upgrade)
}

fn up_to_date(f: &MeshFederation, version: &str) -> bool {
    has_condition(f, "Ready", "True")
        && has_condition(f, "ControlPlanesUpToDate", "True")
        && f.status
            .as_ref()
            .and_then(|s| s.control_plane.as_ref())
            .is_some_and(|c| c.version == version)
}

/// What one sample saw.
#[derive(Default)]
struct Samples {
    count: usize,
    /// Every failed check, with when and where.
    failures: Vec<String>,
    /// Samples in which ready istiods of two versions ran in two different
    /// members, and all checks passed.
    mixed: usize,
    /// Tags revision per member, per sample (to check the order of waves).
    tags: Vec<Vec<Option<String>>>,
    /// The most members changing at once.
    most_changing: usize,
}

/// Samples until `done` says so: every ready bridged istiod sees every
/// cluster `synced` and every probe Service; at most one member changes at
/// once; the injection webhooks for `istio-injection=enabled` number one.
async fn sample_until(
    bridge: &Bridge,
    clients: &[Client],
    host: &Client,
    ids: &[String],
    probes: &[String],
    done: impl Fn(&MeshFederation) -> bool,
) -> Result<Samples> {
    let mut s = Samples::default();
    let deadline = Instant::now() + WAIT;
    let feds = Api::<MeshFederation>::all(host.clone());
    loop {
        let fed = feds.get("prod").await?;
        let status = fed.status.clone().unwrap_or_default();
        s.tags.push(
            status
                .members
                .iter()
                .map(|m| m.tags_revision.clone())
                .collect(),
        );
        let changing = status
            .members
            .iter()
            .filter(|m| matches!(m.upgrade_phase.as_deref(), Some("Installing" | "Switching")))
            .count();
        s.most_changing = s.most_changing.max(changing);
        let mut versions = BTreeMap::new();
        let mut ok = true;
        for (cluster, deployment, istiod) in bridge.istiods() {
            if !istiod.is_ready().await {
                continue;
            }
            let version = istiod.options().version.clone().unwrap_or_default();
            versions
                .entry(version)
                .or_insert_with(BTreeSet::new)
                .insert(cluster.clone());
            let statuses = istiod.cluster_statuses().await?;
            for id in ids {
                if statuses.get(id).map(String::as_str) != Some("synced") {
                    ok = false;
                    s.failures.push(format!(
                        "sample {}: {cluster}/{deployment} sees {id} as {:?}",
                        s.count,
                        statuses.get(id)
                    ));
                }
            }
            let hosts: BTreeSet<String> = istiod
                .services()
                .await?
                .into_iter()
                .map(|r| r.hostname)
                .collect();
            for p in probes {
                if !hosts.contains(p) {
                    ok = false;
                    s.failures.push(format!(
                        "sample {}: {cluster}/{deployment} lacks {p}",
                        s.count
                    ));
                }
            }
        }
        for (i, c) in clients.iter().enumerate() {
            let n = injectors_for_enabled_namespace(c).await?;
            if n != 1 {
                ok = false;
                s.failures.push(format!(
                    "sample {}: member {i} has {n} injection webhooks for istio-injection=enabled",
                    s.count
                ));
            }
        }
        // Istiods of two versions in two different members, each seeing
        // every member's services (the checks above passed).
        let clusters_by_version: Vec<&BTreeSet<String>> = versions.values().collect();
        let across_members = clusters_by_version.iter().enumerate().any(|(i, a)| {
            clusters_by_version[i + 1..]
                .iter()
                .any(|b| a.iter().any(|x| b.iter().any(|y| x != y)))
        });
        if ok && across_members {
            s.mixed += 1;
        }
        s.count += 1;
        if done(&fed) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "not done after {WAIT:?}: {:?}\nbridge failures: {:?}",
                fed.status.map(|s| (s.control_plane, s.conditions)),
                bridge.failures()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn deployments(c: &Client) -> Result<BTreeSet<String>> {
    Ok(Api::<Deployment>::namespaced(c.clone(), "istio-system")
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|d| d.name_any())
        .filter(|n| n.starts_with("istiod"))
        .collect())
}

async fn base_version(c: &Client) -> Result<Option<String>> {
    Ok(Api::<ServiceAccount>::namespaced(c.clone(), "istio-system")
        .get("istio-reader-service-account")
        .await?
        .labels()
        .get("meshfed.io/istio-version")
        .cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn istio_upgrades_by_revision_in_waves_with_real_istiods() -> Result<()> {
    let fleet = e2e::Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let charts = charts_dir(fleet.dir(), &["1.30", "1.31"]).await?;
    let bridge = Bridge::start(&fleet, &fleet.dir().join("bridge"));
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let settings = managed_settings(charts).await?;
    let _operator = start_operator_with(fleet.cluster(0), settings)?;
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let ids: Vec<String> = fleet
        .clusters()
        .iter()
        .map(|c| c.name().to_string())
        .collect();

    // 1. Revision-less Istio 1.30, as meshfed installed it before revisions.
    let mut fed = federation("prod", members_of(&fleet, &["net-a", "net-a", "net-a"]));
    fed.spec.control_plane = Some(control_plane("1.30", UpgradeStrategy::InPlace));
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "revision-less 1.30 ready", |f| {
        up_to_date(f, "1.30")
    })
    .await?;
    for c in &clients {
        assert_eq!(
            deployments(c).await?,
            BTreeSet::from(["istiod".to_string()])
        );
    }
    // A probe Service in every member, for the registries.
    let mut probes = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        service_with_pod(c, "probe", &format!("probe-{i}")).await?;
        probes.push(format!("probe-{i}.probe.svc.cluster.local"));
    }
    let uids: Vec<String> = futures::future::try_join_all(clients.iter().map(injector_uid)).await?;
    poll(WAIT, "every istiod sees every probe", || async {
        let s = sample_until(&bridge, &clients, &host, &ids, &probes, |_| true).await?;
        Ok(s.failures.is_empty() && bridge.istiods().len() == 3)
    })
    .await
    .with_context(|| format!("bridge failures: {:?}", bridge.failures()))?;

    // Migration to revisions, member by member.
    fed.spec.control_plane = Some(control_plane("1.30", UpgradeStrategy::RevisionBased));
    apply_federation(&host, &fed).await?;
    let migration = sample_until(&bridge, &clients, &host, &ids, &probes, |f| {
        up_to_date(f, "1.30")
            && f.status.as_ref().is_some_and(|s| {
                s.members
                    .iter()
                    .all(|m| m.revisions.len() == 1 && m.tags_revision.as_deref() == Some("1-30"))
            })
    })
    .await?;
    eprintln!("migration: {} samples", migration.count);
    assert_eq!(migration.failures, Vec::<String>::new());
    assert!(migration.most_changing <= 1, "waves of one");
    for (c, uid) in clients.iter().zip(&uids) {
        assert_eq!(
            deployments(c).await?,
            BTreeSet::from(["istiod-1-30".to_string()])
        );
        assert_eq!(
            &injector_uid(c).await?,
            uid,
            "the injector was handed over, not recreated"
        );
    }

    // 2. 1.30 -> 1.31 in waves of one. Member 1 has a pod 1-30 injected:
    // it keeps 1-30 (reported) without holding the rollout.
    let injected = injected_pod(&clients[0], "1-30").await?;
    let started = Instant::now();
    fed.spec.control_plane = Some(control_plane("1.31", UpgradeStrategy::RevisionBased));
    apply_federation(&host, &fed).await?;
    let upgrade = sample_until(&bridge, &clients, &host, &ids, &probes, |f| {
        up_to_date(f, "1.31")
            && f.status
                .as_ref()
                .is_some_and(|s| s.members.iter().skip(1).all(|m| m.revisions.len() == 1))
    })
    .await?;
    let status = halted_fed(&host).await?.status.unwrap();
    let first = &status.members[0];
    assert_eq!(
        first.upgrade_phase.as_deref(),
        Some("RemovingOld"),
        "{first:?}"
    );
    let old = first
        .revisions
        .iter()
        .find(|r| r.name == "1-30")
        .expect("1-30 kept");
    assert_eq!(old.pods, 1, "the pod it injected is reported");
    assert_eq!(
        deployments(&clients[0]).await?,
        BTreeSet::from(["istiod-1-30".to_string(), "istiod-1-31".to_string()])
    );
    // Restarted (here: deleted), the pod no longer holds 1-30.
    injected
        .delete(&injected_name(), &Default::default())
        .await?;
    wait_for_federation(&host, "prod", WAIT, "1-30 removed from member 1", |f| {
        f.status.as_ref().is_some_and(|s| {
            s.members[0].revisions.len() == 1 && s.members[0].upgrade_phase.is_none()
        })
    })
    .await?;
    eprintln!(
        "upgrade: {} samples in {:.1?}, {} mixed-version",
        upgrade.count,
        started.elapsed(),
        upgrade.mixed
    );
    assert_eq!(upgrade.failures, Vec::<String>::new());
    assert!(
        upgrade.mixed > 0,
        "1.30 and 1.31 istiods seen side by side in different members"
    );
    assert!(upgrade.most_changing <= 1);
    // Members switched in spec order: a member's tags moved only after the
    // ones before it.
    for tags in &upgrade.tags {
        let moved: Vec<bool> = tags.iter().map(|t| t.as_deref() == Some("1-31")).collect();
        assert!(
            moved.windows(2).all(|w| w[0] || !w[1]),
            "out of order: {tags:?}"
        );
    }
    for (c, uid) in clients.iter().zip(&uids) {
        assert_eq!(
            deployments(c).await?,
            BTreeSet::from(["istiod-1-31".to_string()])
        );
        assert_eq!(&injector_uid(c).await?, uid);
        assert_eq!(base_version(c).await?.as_deref(), Some("1.31"));
    }

    // 3. Rollback with member 2's new istiod unable to become ready.
    bridge.hold(1, true);
    fed.spec.control_plane = Some(control_plane("1.30", UpgradeStrategy::RevisionBased));
    apply_federation(&host, &fed).await?;
    let halted = wait_for_federation(&host, "prod", WAIT, "rollout halted at member 2", |f| {
        f.status
            .as_ref()
            .and_then(|s| s.control_plane.as_ref())
            .is_some_and(|c| c.phase == "Halted")
    })
    .await?;
    let status = halted.status.unwrap();
    let halt = status
        .control_plane
        .as_ref()
        .unwrap()
        .halted
        .clone()
        .unwrap();
    assert_eq!(
        (halt.member.as_str(), halt.gate.as_str()),
        (ids[1].as_str(), "IstiodReady"),
        "{halt:?}"
    );
    assert!(halt.message.contains("istiod-1-30"), "{halt:?}");
    let condition = condition(&halted_fed(&host).await?, "ControlPlanesUpToDate")
        .cloned()
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Halted")
    );
    assert!(
        condition.message.contains(&ids[1]) && condition.message.contains("IstiodReady"),
        "{}",
        condition.message
    );
    assert_eq!(
        status.members[0].tags_revision.as_deref(),
        Some("1-30"),
        "member 1 went back"
    );
    assert_eq!(
        status.members[1].tags_revision.as_deref(),
        Some("1-31"),
        "member 2 holds"
    );
    assert_eq!(status.members[1].upgrade_phase.as_deref(), Some("Halted"));
    assert_eq!(status.members[2].tags_revision.as_deref(), Some("1-31"));
    assert_eq!(
        deployments(&clients[2]).await?,
        BTreeSet::from(["istiod-1-31".to_string()]),
        "member 3 untouched"
    );
    // Fixed: the rollout resumes and completes.
    bridge.hold(1, false);
    let rollback = sample_until(&bridge, &clients, &host, &ids, &probes, |f| {
        up_to_date(f, "1.30")
            && f.status
                .as_ref()
                .is_some_and(|s| s.members.iter().all(|m| m.revisions.len() == 1))
    })
    .await?;
    assert_eq!(rollback.failures, Vec::<String>::new());
    for c in &clients {
        assert_eq!(
            deployments(c).await?,
            BTreeSet::from(["istiod-1-30".to_string()])
        );
        assert_eq!(
            base_version(c).await?.as_deref(),
            Some("1.31"),
            "CRDs are never downgraded"
        );
    }
    let events = Api::<k8s_openapi::api::events::v1::Event>::all(host.clone())
        .list(&Default::default())
        .await?;
    let reasons: BTreeSet<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    for r in [
        "UpgradeWaveStarted",
        "UpgradeWaveFinished",
        "UpgradeHalted",
        "UpgradeComplete",
    ] {
        assert!(reasons.contains(r), "event {r} in {reasons:?}");
    }
    Ok(())
}

fn injected_name() -> String {
    "injected-app".into()
}

/// A pod as `revision`'s injector leaves it (its `istio.io/rev` label), in
/// namespace probe. `sidecar.istio.io/inject=false` keeps the injection
/// webhooks, which cannot reach the out-of-cluster istiods, out of its
/// creation.
async fn injected_pod(c: &Client, revision: &str) -> Result<Api<Pod>> {
    let pods = Api::<Pod>::namespaced(c.clone(), "probe");
    let labels = serde_json::json!({"istio.io/rev": revision, "sidecar.istio.io/inject": "false"});
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": injected_name(), "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }))?;
    pods.create(&Default::default(), &pod).await?;
    Ok(pods)
}

async fn halted_fed(host: &Client) -> Result<MeshFederation> {
    Ok(Api::<MeshFederation>::all(host.clone()).get("prod").await?)
}
