//! `make demo`: three local clusters, the meshfed operator, and the sample
//! federation from config/samples, down to a per-member status table. Keeps
//! everything running until Ctrl-C.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use e2e::Fleet;
use e2e::mesh::*;
use meshfed::api::MeshFederation;

const SAMPLE: &str = include_str!("../../../config/samples/meshfederation.yaml");

#[tokio::main]
async fn main() -> Result<()> {
    let sample: MeshFederation =
        serde_yaml::from_str(SAMPLE).context("config/samples/meshfederation.yaml")?;
    let name = sample
        .metadata
        .name
        .clone()
        .context("sample without a name")?;
    let members = sample.spec.members.len();
    let binary = operator_binary()?;

    println!("starting {members} local Kubernetes clusters (real API servers, no containers)...");
    let fleet = Fleet::start(members).await?;
    let kubeconfigs = fleet.dir().join("kubeconfigs");
    let paths = fleet.write_kubeconfigs(&kubeconfigs)?;
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    for (member, cluster) in sample.spec.members.iter().zip(fleet.clusters()) {
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
    let mut operator = Command::new(&binary)
        .args([
            "--namespace",
            OPERATOR_NAMESPACE,
            "--resync",
            "10s",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", fleet.cluster(0).kubeconfig_path())
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::inherit())
        .spawn()?;
    println!(
        "meshfed-operator running in {} (log: {})",
        fleet.cluster(0).name(),
        log.display()
    );

    let started = Instant::now();
    apply_federation(&host, &sample).await?;
    println!("applied config/samples/meshfederation.yaml; waiting for condition Ready...");
    let fed = wait_for_federation(&host, &name, Duration::from_secs(120), "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    println!(
        "\nmeshfederation/{name} Ready in {:.1?}\n",
        started.elapsed()
    );
    print!("{}", status_table(&fed));

    println!("\nkubeconfigs (cluster-0 runs the operator):");
    for p in &paths {
        println!("  {}", p.display());
    }
    let kubectl = e2e::fleet::tools().await?.path("kubectl");
    let kubectl = kubectl.display();
    println!(
        "try:\n  export KUBECONFIG={}\n  {kubectl} get meshfederations\n  {kubectl} -n istio-system get secrets -l istio/multiCluster=true",
        paths[0].display()
    );
    println!("\nclusters stay up until Ctrl-C");
    tokio::signal::ctrl_c().await?;
    let _ = operator.kill();
    let _ = operator.wait();
    println!("stopping");
    Ok(())
}
