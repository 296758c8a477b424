//! kwok plays the kubelet: it manages the nodes carrying
//! `kwok.x-k8s.io/node=fake`, keeps their leases and status fresh, and walks
//! pods scheduled to them through their lifecycle (Running, Ready, pod IPs
//! from `--cidr`, deletion).

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use super::cluster::KWOK_NODE_ANNOTATION;
use super::process::Spec;
use super::tools::Tools;

/// The Stage objects kwok plays (node Ready, pod Running/Ready, Job pods
/// Succeeded, deleted pods removed).
pub const STAGES: &str = include_str!("../../testbed/kwok-stages.yaml");

/// Pod CIDR of cluster `index` (distinct per cluster, as in a real mesh).
pub fn pod_cidr(index: usize) -> String {
    format!("10.{}.0.0/16", 100 + (index % 100))
}

pub(crate) fn spec(
    tools: &Tools,
    cluster: &str,
    index: usize,
    dir: &Path,
    log: std::path::PathBuf,
) -> Result<Spec> {
    // kwok v0.8 has no built-in stages: it needs Stage objects in its config.
    let config = dir.join("kwok-stages.yaml");
    std::fs::write(&config, STAGES)?;
    Ok(
        Spec::new(format!("{cluster}/kwok"), tools.path("kwok"), log)
            .cwd(dir)
            // kwok also reads ~/.kwok/kwok.yaml when it exists; keep a user's
            // out of the test bed.
            .env("HOME", dir)
            .args([
                format!("--config={}", config.display()),
                format!("--kubeconfig={}", dir.join("kwok.kubeconfig").display()),
                format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                format!("--cidr={}", pod_cidr(index)),
                "--node-ip=127.0.0.1".into(),
                // Without it kwok keeps no node leases, and the node lifecycle
                // controller marks the node (and its pods) NotReady after 40 s.
                "--node-lease-duration-seconds=40".into(),
                // No --node-port / --server-address: kwok then serves nothing,
                // so clusters need no ports beyond their API servers'.
            ]),
    )
}

/// A Node object for kwok to manage.
pub fn node_manifest(name: &str) -> Value {
    let resources = json!({ "cpu": "32", "memory": "256Gi", "pods": "110" });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION: "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
        },
    })
}
