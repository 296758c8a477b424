//! `make demo`: four local clusters (the operator's, which is not a member,
//! and three members), the meshfed operator, and the sample
//! federation from config/samples with Managed Istio control planes, the
//! real istiod (pilot-discovery) behind each member's istiod Deployment (the
//! test bed's bridge), down to a per-member status table; then each istiod's
//! view of its peers, and a service discovered across members. Keeps
//! everything running until Ctrl-C.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::Fleet;
use e2e::istiod::{helm, istio, service_with_pod};
use e2e::mesh::*;
use kube::Client;
use meshfed::api::{
    ControlPlaneMode, ControlPlaneSpec, EastWestGatewaySpec, GatewayServiceType, MeshFederation,
};

/// The Istio version the demo installs: the test bed's pinned build.
const ISTIO_VERSION: &str = "1.31";

const SAMPLE: &str = include_str!("../../../config/samples/meshfederation.yaml");

#[tokio::main]
async fn main() -> Result<()> {
    let mut sample: MeshFederation =
        serde_yaml::from_str(SAMPLE).context("config/samples/meshfederation.yaml")?;
    // The sample leaves Istio to you; the demo has meshfed install it.
    sample.spec.control_plane = Some(ControlPlaneSpec {
        mode: ControlPlaneMode::Managed,
        version: Some(ISTIO_VERSION.into()),
        // The test bed's bridge runs the real istiod for these pods.
        values: Some(e2e::bridge::pod_labels()),
        // kwok gives LoadBalancer Services no address; NodePort has one.
        east_west_gateway: Some(EastWestGatewaySpec {
            service_type: Some(GatewayServiceType::NodePort),
            ..Default::default()
        }),
        ..Default::default()
    });
    let name = sample
        .metadata
        .name
        .clone()
        .context("sample without a name")?;
    let members = sample.spec.members.len();
    let binary = operator_binary()?;

    println!("building or finding Istio {ISTIO_VERSION} (pilot-discovery and charts)...");
    istio().await?;
    let helm = helm().await?;
    // The operator runs in a cluster of its own: a member's cluster is read
    // by every peer's istiod, with a token that may read all its Secrets.
    println!(
        "starting {} local Kubernetes clusters (real API servers, no containers): one for the operator, one per member...",
        members + 1
    );
    let fleet = Fleet::start(members + 1).await?;
    let member_clusters = &fleet.clusters()[1..];
    let charts_dir = e2e::istiod::charts_dir(fleet.dir(), &[ISTIO_VERSION]).await?;
    let bridge = e2e::bridge::Bridge::start(&fleet, &fleet.dir().join("istiod"));
    let kubeconfigs = fleet.dir().join("kubeconfigs");
    let paths = fleet.write_kubeconfigs(&kubeconfigs)?;
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    for (member, cluster) in sample.spec.members.iter().zip(member_clusters) {
        let secret = member
            .credentials
            .secret_ref
            .as_ref()
            .context("demo members use secretRef")?;
        store_credentials_as(&host, cluster, &secret.name).await?;
        println!(
            "  member {:<8} -> {} at {}",
            member.name,
            cluster.name(),
            cluster.server_url()
        );
    }

    let log = fleet.dir().join("meshfed-operator.log");
    let operator = Command::new(&binary)
        .args([
            "--namespace",
            OPERATOR_NAMESPACE,
            "--resync",
            "10s",
            "--metrics-addr",
            "127.0.0.1:0",
            "--charts-dir",
        ])
        .arg(&charts_dir)
        .arg("--helm")
        .arg(&helm)
        .env("KUBECONFIG", fleet.cluster(0).kubeconfig_path())
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::inherit())
        .spawn()?;
    // Killed however the demo ends, early errors included.
    let _operator = KillOnDrop(operator);
    println!(
        "meshfed-operator running in {} (log: {})",
        fleet.cluster(0).name(),
        log.display()
    );

    let started = Instant::now();
    apply_federation(&host, &sample).await?;
    println!(
        "applied config/samples/meshfederation.yaml with spec.controlPlane (Managed, Istio {ISTIO_VERSION}); waiting for condition Ready..."
    );
    let clients: Vec<Client> = member_clusters.iter().map(|c| c.client()).collect();
    relax_injection_when_installed(&clients).await?;
    let fed = wait_for_federation(&host, &name, Duration::from_secs(240), "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    println!(
        "\nmeshfederation/{name} Ready in {:.1?}\n",
        started.elapsed()
    );
    print!("{}", status_table(&fed));

    // The real istiod behind each member's istiod Deployment (kwok runs no
    // containers): the bridge started pilot-discovery for each, and the
    // Deployments became Available when it answered /ready.
    let istiods: Vec<_> = sample
        .spec
        .members
        .iter()
        .enumerate()
        .filter_map(|(i, _)| {
            bridge.istiod(
                i + 1,
                &format!("istiod-{}", ISTIO_VERSION.replace('.', "-")),
            )
        })
        .collect();
    anyhow::ensure!(
        istiods.len() == members,
        "bridged istiods: {:?}",
        bridge.failures()
    );
    let ids: Vec<&str> = sample
        .spec
        .members
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    for istiod in &istiods {
        istiod.wait_synced(&ids, Duration::from_secs(90)).await?;
    }
    // A service with a pod in two members, discovered by every istiod.
    for c in [&clients[0], &clients[1]] {
        service_with_pod(c, "shop", "catalog").await?;
    }
    let host_name = "catalog.shop.svc.cluster.local";
    let mut views = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for istiod in &istiods {
        loop {
            let endpoints: Vec<_> = istiod
                .endpoints()
                .await?
                .into_iter()
                .filter(|e| e.hostname == host_name)
                .collect();
            if endpoints.len() >= 2 || Instant::now() > deadline {
                views.push(endpoints);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("\nwhat each member's istiod sees:");
    for (istiod, endpoints) in istiods.iter().zip(&views) {
        let peers: Vec<String> = istiod
            .clusterz()
            .await?
            .into_iter()
            .map(|c| format!("{} {}", c.id, c.sync_status))
            .collect();
        println!(
            "  istiod {:<8} peers: {}",
            istiod.cluster_id(),
            peers.join(", ")
        );
        for e in endpoints {
            println!(
                "  {:<17} {host_name} endpoint {} in cluster {} (network {})",
                "",
                e.addresses.join(","),
                e.cluster,
                e.network
            );
        }
    }

    println!("\nkubeconfigs (cluster-0 runs the operator and is not a member):");
    for p in &paths {
        println!("  {}", p.display());
    }
    let kubectl = e2e::fleet::tools().await?.path("kubectl");
    let kubectl = kubectl.display();
    println!(
        "try:\n  export KUBECONFIG={}\n  cargo run -q -p meshfed-operator --bin kubectl-meshfed -- status {name}\n  {kubectl} get meshfederations\n  {kubectl} -n istio-system get secrets -l istio/multiCluster=true",
        paths[0].display()
    );
    println!("\nclusters stay up until Ctrl-C");
    tokio::signal::ctrl_c().await?;
    drop(istiods);
    drop(bridge);
    println!("stopping");
    Ok(())
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Relaxes each member's injection webhooks once meshfed installed them
/// (see [`relax_injection`]).
async fn relax_injection_when_installed(clients: &[Client]) -> Result<()> {
    for c in clients {
        let deadline = Instant::now() + Duration::from_secs(180);
        while relax_injection(c).await? == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}
