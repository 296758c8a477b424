//! Failover with the real istiod: three members with Managed control planes
//! and `spec.failover`, a real pilot-discovery per member reading the mesh
//! config meshfed rendered, a Service with an endpoint in every member.
//! A member whose API server dies or hangs leaves its peers' registries
//! within grace + 5 s and comes back within settle + 5 s of recovering; with
//! two of three members gone nothing is withdrawn and status says why.
//! Prints `FIGURE` lines (failure → withdrawal, recovery → restore) that
//! `make bench-failover` collects.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use e2e::Fleet;
use e2e::istiod::{Istiod, IstiodOptions, base_crds, istio, service_with_pod};
use e2e::mesh::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use meshfed::api::{
    ControlPlaneMode, ControlPlaneSpec, EastWestGatewaySpec, FailoverSpec, LocalityFailoverSpec,
    MeshFederation, OutlierDetectionSpec, WithdrawalSpec,
};
use meshfed::settings::Settings;

const FED: &str = "prod";
const NETWORK: &str = "net-a";
const GRACE: Duration = Duration::from_secs(4);
const SETTLE: Duration = Duration::from_secs(4);
/// What the issue allows above the grace and settle periods.
const SLACK: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(120);
const HOST: &str = "catalog.shop.svc.cluster.local";

fn duration(d: Duration) -> kube::core::Duration {
    format!("{}s", d.as_secs()).parse().expect("a duration")
}

/// Whether `istiod` has `peer` neither as a remote cluster nor as a shard
/// of the catalog's endpoints.
async fn forgets(istiod: &Istiod, peer: &str) -> Result<bool> {
    let listed = istiod.cluster_statuses().await?.contains_key(peer);
    let endpoints = istiod.endpoints().await?;
    let has_endpoints = endpoints
        .iter()
        .any(|e| e.hostname == HOST && e.cluster == peer);
    Ok(!listed && !has_endpoints)
}

/// Whether `istiod` has `peer` synced and the catalog's endpoints from it.
async fn sees(istiod: &Istiod, peer: &str) -> Result<bool> {
    let synced = istiod
        .cluster_statuses()
        .await?
        .get(peer)
        .is_some_and(|s| s == "synced");
    let endpoints = istiod.endpoints().await?;
    let has_endpoints = endpoints
        .iter()
        .any(|e| e.hostname == HOST && e.cluster == peer);
    Ok(synced && has_endpoints)
}

/// Polls every 100 ms until every istiod in `istiods` satisfies `check` for
/// `peer`; returns how long that took, failing after `limit`.
async fn until_all<'a, F, Fut>(
    istiods: &'a [&'a Istiod],
    peer: &'a str,
    limit: Duration,
    what: &str,
    check: F,
) -> Result<Duration>
where
    F: Fn(&'a Istiod, &'a str) -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        let mut all = true;
        for istiod in istiods {
            all &= check(istiod, peer).await.unwrap_or(false);
        }
        if all {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Withdrawal after GRACE, restore after SETTLE, a probe every second.
fn withdrawal() -> WithdrawalSpec {
    WithdrawalSpec {
        grace_period: Some(duration(GRACE)),
        settle_period: Some(duration(SETTLE)),
        probe_interval: Some(duration(Duration::from_secs(1))),
        ..Default::default()
    }
}

async fn federation_now(host: &Client) -> Result<MeshFederation> {
    Ok(Api::<MeshFederation>::all(host.clone()).get(FED).await?)
}

fn withdrawn(fed: &MeshFederation) -> Vec<String> {
    fed.status
        .iter()
        .flat_map(|s| &s.members)
        .filter(|m| {
            m.health
                .as_ref()
                .is_some_and(|h| h.withdrawn_since.is_some())
        })
        .map(|m| m.name.clone())
        .collect()
}

/// Whether member `i` holds meshfed's remote secret for `peer`.
async fn holds_remote_secret(client: &Client, peer: &str) -> Result<bool> {
    Ok(Api::<Secret>::namespaced(client.clone(), "istio-system")
        .get_opt(&format!("istio-remote-secret-{peer}"))
        .await?
        .is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_leaves_its_peers_view_and_comes_back() -> Result<()> {
    istio().await?;
    base_crds().await?;
    let fleet = Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let (charts_dir, version) = istio_chart_set(fleet.dir()).await?;
    let ids: Vec<String> = fleet.clusters().iter().map(|c| c.name().into()).collect();
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let host = clients[0].clone();
    prepare_host(&fleet).await?;
    let settings = Settings {
        // Probes, not resyncs, notice a failure.
        resync: Duration::from_secs(60),
        member_timeout: Duration::from_secs(3),
        helm: e2e::istiod::helm().await?,
        charts_dir,
        ..Settings::new(OPERATOR_NAMESPACE)
    };
    let _operator = start_operator_with(fleet.cluster(0), settings)?;
    let mut fed = federation(
        FED,
        vec![
            local_member(fleet.cluster(0), NETWORK),
            member(fleet.cluster(1), NETWORK),
            member(fleet.cluster(2), NETWORK),
        ],
    );
    // The revision's mesh config: ConfigMap istio-<revision>.
    let mesh_config_map = format!("istio-{}", meshfed::fleet::rollout::revision_of(&version));
    fed.spec.control_plane = Some(ControlPlaneSpec {
        mode: ControlPlaneMode::Managed,
        version: Some(version),
        values: None,
        east_west_gateway: Some(EastWestGatewaySpec {
            enabled: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
    fed.spec.failover = Some(FailoverSpec {
        withdrawal: Some(withdrawal()),
        locality: Some(LocalityFailoverSpec::default()),
        outlier_detection: Some(OutlierDetectionSpec::default()),
    });
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, FED, WAIT, "Ready with control planes", |f| {
        has_condition(f, "Ready", "True") && has_condition(f, "ControlPlanesReady", "True")
    })
    .await?;

    // --- a real istiod per member, with the mesh config meshfed rendered
    let mut mesh_configs = Vec::new();
    for c in &clients {
        let cm = Api::<ConfigMap>::namespaced(c.clone(), "istio-system")
            .get(&mesh_config_map)
            .await?;
        let mesh = cm
            .data
            .and_then(|d| d.get("mesh").cloned())
            .context("istio ConfigMap without mesh")?;
        mesh_configs.push(mesh);
    }
    let options = |i: usize| {
        let mut o = IstiodOptions::new(&ids[i], NETWORK, "mesh1");
        o.remote_cluster_timeout = Duration::from_secs(5);
        o.mesh_config = Some(mesh_configs[i].clone());
        o
    };
    let work = |i: usize| fleet.dir().join(format!("istiod-{}", ids[i]));
    let (w0, w1, w2) = (work(0), work(1), work(2));
    let (i0, i1, i2) = tokio::try_join!(
        Istiod::start_with(fleet.cluster(0), options(0), &w0),
        Istiod::start_with(fleet.cluster(1), options(1), &w1),
        Istiod::start_with(fleet.cluster(2), options(2), &w2),
    )?;
    let mut istiods = vec![i0, i1, i2];
    for c in &clients {
        service_with_pod(c, "shop", "catalog").await?;
    }
    for (i, istiod) in istiods.iter().enumerate() {
        let others: Vec<&str> = ids.iter().map(String::as_str).collect();
        istiod.wait_synced(&others, WAIT).await?;
        for id in &ids {
            until_all(&[istiod], id, WAIT, "catalog endpoints everywhere", sees).await?;
        }
        eprintln!("istiod {} sees every member's catalog endpoint", ids[i]);
    }

    // --- the failover settings, as each istiod loaded them
    let mut settings = Vec::new();
    for istiod in &istiods {
        let mesh = istiod.debug_json("/debug/mesh").await?;
        settings.push(mesh["localityLbSetting"].clone());
        let configz = istiod.debug_json("/debug/configz").await?.to_string();
        assert!(
            configz.contains("meshfed-failover") && configz.contains("consecutive5xxErrors"),
            "istiod {} has the mesh-wide DestinationRule",
            istiod.cluster_id()
        );
    }
    eprintln!("localityLbSetting loaded by every istiod: {}", settings[0]);
    assert_eq!(settings[0]["enabled"], true, "{}", settings[0]);
    assert_eq!(
        settings[0]["failoverPriority"],
        serde_json::json!(["topology.istio.io/network", "topology.istio.io/cluster"])
    );
    assert!(
        settings.iter().all(|s| *s == settings[0]),
        "identical: {settings:?}"
    );

    let gone = ids[2].as_str();

    // --- member 2's API server and istiod stop: withdrawn within grace + 5 s
    istiods[2].stop();
    let stopping = Instant::now();
    fleet.cluster(2).stop_apiserver().await?;
    let survivors = [&istiods[0], &istiods[1]];
    let took = until_all(
        &survivors,
        gone,
        GRACE + SLACK,
        "member 2 withdrawn",
        forgets,
    )
    .await?;
    assert!(
        stopping.elapsed() >= GRACE,
        "never before the grace period: {:?}",
        stopping.elapsed()
    );
    eprintln!(
        "FIGURE stopped API server: failure -> withdrawn from every peer's istiod: {took:?} (grace {GRACE:?})"
    );
    let f = federation_now(&host).await?;
    assert_eq!(withdrawn(&f), vec![gone.to_string()]);
    assert!(has_condition(&f, "Degraded", "True"));
    let degraded = condition(&f, "Degraded").unwrap();
    assert_eq!(degraded.reason, "MembersWithdrawn", "{degraded:?}");
    assert!(degraded.message.contains(gone), "{}", degraded.message);
    for c in &clients[..2] {
        assert!(!holds_remote_secret(c, gone).await?);
    }
    // Withdrawn and still down: once the peers' runs are recorded, status
    // settles instead of being rewritten (2 s without a write, reached
    // within 10 s however loaded the machine is).
    let settling = Instant::now();
    loop {
        let version = federation_now(&host).await?.metadata.resource_version;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = federation_now(&host).await?;
        if again.metadata.resource_version == version {
            break;
        }
        assert!(
            settling.elapsed() < Duration::from_secs(10),
            "status still rewritten while nothing changed: {:?}",
            again.status
        );
    }

    // --- back: restored within settle + 5 s
    fleet.cluster(2).start_apiserver().await?;
    let took = until_all(&survivors, gone, SETTLE + SLACK, "member 2 restored", sees).await?;
    eprintln!(
        "FIGURE restarted API server: recovery -> restored in every peer's istiod: {took:?} (settle {SETTLE:?})"
    );
    // Measured from /readyz passing; the API server answers meshfed's probe a
    // little earlier, so this can come out slightly under the settle period.
    istiods[2] = Istiod::start_with(fleet.cluster(2), options(2), &w2).await?;
    wait_for_federation(&host, FED, WAIT, "not degraded", |f| {
        has_condition(f, "Degraded", "False") && withdrawn(f).is_empty()
    })
    .await?;

    // --- a hung API server (SIGSTOP) behaves the same
    fleet.cluster(2).pause_apiserver()?;
    let survivors = [&istiods[0], &istiods[1]];
    let took = until_all(
        &survivors,
        gone,
        GRACE + SLACK,
        "hung member withdrawn",
        forgets,
    )
    .await?;
    eprintln!(
        "FIGURE hung API server: failure -> withdrawn from every peer's istiod: {took:?} (grace {GRACE:?})"
    );
    fleet.cluster(2).resume_apiserver()?;
    let took = until_all(
        &survivors,
        gone,
        SETTLE + SLACK,
        "hung member restored",
        sees,
    )
    .await?;
    eprintln!(
        "FIGURE resumed API server: recovery -> restored in every peer's istiod: {took:?} (settle {SETTLE:?})"
    );
    wait_for_federation(&host, FED, WAIT, "not degraded", |f| {
        has_condition(f, "Degraded", "False") && withdrawn(f).is_empty()
    })
    .await?;

    // --- two of three gone: no majority, nothing withdrawn, status says why
    fleet.cluster(1).stop_apiserver().await?;
    fleet.cluster(2).stop_apiserver().await?;
    let held = wait_for_federation(&host, FED, GRACE + SLACK, "withdrawal held", |f| {
        condition(f, "Degraded").is_some_and(|c| c.reason == "WithdrawalHeld")
    })
    .await?;
    let message = &condition(&held, "Degraded").unwrap().message;
    eprintln!("with 2 of 3 members down: {message}");
    assert!(message.contains("minHealthy"), "{message}");
    tokio::time::sleep(GRACE).await;
    let f = federation_now(&host).await?;
    assert!(withdrawn(&f).is_empty(), "{:?}", withdrawn(&f));
    let statuses = istiods[0].cluster_statuses().await?;
    assert!(
        statuses.contains_key(&ids[1]) && statuses.contains_key(&ids[2]),
        "nothing withdrawn from istiod {}: {statuses:?}",
        ids[0]
    );
    fleet.cluster(1).start_apiserver().await?;
    fleet.cluster(2).start_apiserver().await?;
    wait_for_federation(&host, FED, WAIT, "Ready again", |f| {
        has_condition(f, "Ready", "True") && has_condition(f, "Degraded", "False")
    })
    .await?;
    Ok(())
}

/// Member `gone`'s east-west gateway stops serving: withdrawn from its peers
/// within grace + 5 s; an operator restart meanwhile restores nothing (the
/// withdrawal is recorded, and a member once healthy is not taken for one
/// still installing); the gateway back, it is restored within settle + 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_withdrawn_for_a_down_gateway_stays_withdrawn_across_a_restart() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use meshfed::api::GatewayServiceType;

    let fleet = Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let (charts_dir, version) = istio_chart_set(fleet.dir()).await?;
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let host = clients[0].clone();
    prepare_host(&fleet).await?;
    let start = || async {
        start_operator_with(
            fleet.cluster(0),
            managed_settings(charts_dir.clone()).await?,
        )
    };
    let mut operator = start().await?;
    let mut fed = federation(
        FED,
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-a"),
            member(fleet.cluster(2), "net-b"),
        ],
    );
    fed.spec.control_plane = Some(ControlPlaneSpec {
        mode: ControlPlaneMode::Managed,
        version: Some(version),
        east_west_gateway: Some(EastWestGatewaySpec {
            service_type: Some(GatewayServiceType::NodePort),
            ..Default::default()
        }),
        ..Default::default()
    });
    fed.spec.failover = Some(FailoverSpec {
        withdrawal: Some(withdrawal()),
        ..Default::default()
    });
    apply_federation(&host, &fed).await?;
    // kwok's istiods serve no injection, and the gateways' pods ask for it.
    poll(WAIT, "gateways ready", || async {
        for c in &clients {
            relax_injection(c).await?;
        }
        let f = federation_now(&host).await?;
        Ok(has_condition(&f, "Ready", "True") && has_condition(&f, "GatewaysReady", "True"))
    })
    .await?;
    let gone = fleet.cluster(2).name().to_string();
    let gateway = Api::<Deployment>::namespaced(clients[2].clone(), "istio-system")
        .get("istio-eastwestgateway")
        .await?;

    // --- the gateway's pods not ready: withdrawn within grace + 5 s
    set_pods_ready(&clients[2], &gateway, false).await?;
    let down = Instant::now();
    wait_for_federation(
        &host,
        FED,
        GRACE + SLACK,
        "withdrawn for its gateway",
        |f| withdrawn(f) == [gone.clone()],
    )
    .await?;
    for c in &clients[..2] {
        poll(SLACK, "peers let it go", || async {
            Ok(!holds_remote_secret(c, &gone).await?)
        })
        .await?;
    }
    eprintln!(
        "FIGURE gateway down -> withdrawn: {:?} (grace {GRACE:?})",
        down.elapsed()
    );

    // --- restarted while withdrawn, the gateway still down: it stays out
    drop(operator);
    operator = start().await?;
    let restarted = Instant::now();
    while restarted.elapsed() < SETTLE + SLACK {
        let f = federation_now(&host).await?;
        assert_eq!(withdrawn(&f), std::slice::from_ref(&gone), "{:?}", f.status);
        for c in &clients[..2] {
            assert!(
                !holds_remote_secret(c, &gone).await?,
                "restored after the restart with its gateway down"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let f = federation_now(&host).await?;
    let member = f
        .status
        .iter()
        .flat_map(|s| &s.members)
        .find(|m| m.name == gone);
    let health = member.and_then(|m| m.health.clone());
    assert_eq!(
        health.as_ref().map(|h| h.reason.as_str()),
        Some("GatewayNotReady"),
        "{health:?}"
    );

    // --- the gateway back: restored within settle + 5 s
    set_pods_ready(&clients[2], &gateway, true).await?;
    let up = Instant::now();
    wait_for_federation(&host, FED, SETTLE + SLACK + GRACE, "restored", |f| {
        withdrawn(f).is_empty()
    })
    .await?;
    eprintln!(
        "FIGURE gateway back -> restored: {:?} (settle {SETTLE:?})",
        up.elapsed()
    );
    for c in &clients[..2] {
        poll(WAIT, "peers hold its remote secret again", || async {
            holds_remote_secret(c, &gone).await
        })
        .await?;
    }
    drop(operator);
    Ok(())
}
