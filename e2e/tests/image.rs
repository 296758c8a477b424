//! The operator's image, built by the recipe that ships (`make image`:
//! e2e/image/build.sh and the Containerfile), run as a container with podman
//! against the test bed: host network and the chart's security context
//! (user 65532, read-only root file system, no capabilities, a writable
//! /tmp). It installs Istio from the charts baked into the image and takes a
//! Managed federation to Ready.
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use e2e::Fleet;
use e2e::mesh::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use meshfed::api::{ControlPlaneMode, ControlPlaneSpec, EastWestGatewaySpec};

const IMAGE: &str = "localhost/meshfed-operator:e2e";
const WAIT: Duration = Duration::from_secs(180);

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn podman(args: &[&str]) -> Result<Output> {
    let out = Command::new("bash")
        .arg(repo().join("e2e/image/podman.sh"))
        .args(args)
        .output()
        .context("running podman")?;
    Ok(out)
}

/// Removes the container when dropped, printing its log first.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        if let Ok(out) = podman(&["logs", "--tail", "40", &self.0]) {
            eprintln!(
                "----- operator container log (tail) -----\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = podman(&["rm", "-f", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_takes_a_managed_federation_to_ready() -> Result<()> {
    let built = tokio::task::spawn_blocking(|| {
        Command::new("bash")
            .arg(repo().join("e2e/image/build.sh"))
            .arg(IMAGE)
            .status()
    })
    .await??;
    if !built.success() {
        bail!("e2e/image/build.sh failed");
    }

    let fleet = Fleet::start(2).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    // The container's user (65532) must be able to read it.
    let kubeconfig = fleet.dir().join("operator-image.kubeconfig");
    std::fs::write(&kubeconfig, fleet.cluster(0).kubeconfig_yaml())?;
    std::fs::set_permissions(
        &kubeconfig,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let metrics = e2e::fleet::free_port()?;
    let name = format!("meshfed-e2e-{}", std::process::id());
    let mount = format!("{}:/etc/meshfed/kubeconfig:ro", kubeconfig.display());
    let metrics_addr = format!("--metrics-addr=127.0.0.1:{metrics}");
    let run = podman(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--user",
        "65532:65532",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        "/tmp",
        "-v",
        &mount,
        "-e",
        "KUBECONFIG=/etc/meshfed/kubeconfig",
        IMAGE,
        &format!("--namespace={OPERATOR_NAMESPACE}"),
        &metrics_addr,
        "--resync=10s",
    ])?;
    if !run.status.success() {
        bail!(
            "podman run failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let _container = Container(name.clone());

    let mut fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-a"),
        ],
    );
    fed.spec.control_plane = Some(ControlPlaneSpec {
        mode: ControlPlaneMode::Managed,
        // The chart set build.sh bakes in as /charts/1.31.
        version: Some("1.31".into()),
        values: None,
        east_west_gateway: Some(EastWestGatewaySpec {
            enabled: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
    apply_federation(&host, &fed).await?;
    let ready = wait_for_federation(&host, "prod", WAIT, "Ready with control planes", |f| {
        has_condition(f, "Ready", "True") && has_condition(f, "ControlPlanesReady", "True")
    })
    .await?;
    eprintln!("{}", status_table(&ready));
    for c in fleet.clusters() {
        let istiod = Api::<Deployment>::namespaced(c.client(), "istio-system")
            .get("istiod-1-31")
            .await?;
        let labels = istiod.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("meshfed.io/federation").map(String::as_str),
            Some("prod"),
            "{}: istiod installed by the containerised operator",
            c.name()
        );
    }
    let (code, body) = http_get(([127, 0, 0, 1], metrics).into(), "/metrics").await?;
    assert_eq!(code, 200);
    assert!(body.contains("meshfed_member_ready"), "{body}");
    let inspect = podman(&["inspect", "--format", "{{.Config.User}}", IMAGE])?;
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "65532:65532"
    );
    Ok(())
}
