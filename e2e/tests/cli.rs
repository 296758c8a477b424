//! `kubectl meshfed` against the test bed: `check` preflights a cluster
//! (finding a seeded legacy token Secret, the loopback address, a network
//! label to reuse, a federation not created yet, and for a Managed
//! federation the rights its identity lacks), `join` refuses a bad name or
//! lifetime, a federation or namespace that does not exist, before writing
//! anything, then gives meshfed its least-privilege identity there with a
//! short-lived token and adds the member, `status --wait` follows it to
//! Ready, and `status` prints the table, JSON and YAML. Exit codes are
//! checked.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use e2e::mesh::*;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use meshfed::api::{ControlPlaneMode, ControlPlaneSpec, MeshFederation};

const WAIT: Duration = Duration::from_secs(90);

struct Plugin {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Plugin {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.binary)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("running kubectl-meshfed");
        eprintln!(
            "$ kubectl meshfed {}\n{}{}(exit {:?})",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status.code()
        );
        out
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_join_and_status_from_the_plugin() -> Result<()> {
    let binary = tokio::task::spawn_blocking(|| build_binary("kubectl-meshfed", false)).await??;
    let bed = operator_bed(2, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (fleet, host) = (&bed.fleet, bed.host.clone());
    let plugin = Plugin {
        binary,
        kubeconfig: fleet.cluster(0).kubeconfig_path().to_path_buf(),
    };
    let member_kubeconfig = fleet.cluster(1).kubeconfig_path().to_path_buf();
    let member_client = fleet.cluster(1).client();

    // A user's legacy token Secret that every peer's reader would read.
    let legacy: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "legacy-token", "namespace": "default",
                     "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token",
    }))?;
    Api::<Secret>::namespaced(member_client.clone(), "default")
        .create(&PostParams::default(), &legacy)
        .await?;

    // istio-system already carries a network label (an earlier install):
    // advice to reuse it, printed before anything else is there.
    let labelled: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "istio-system", "labels": {"topology.istio.io/network": "net-a"}},
    }))?;
    Api::<Namespace>::all(member_client.clone())
        .create(&PostParams::default(), &labelled)
        .await?;

    // --- check, before joining (and before the federation exists)
    let out = plugin.run(&["check", "--kubeconfig", path(&member_kubeconfig)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--federation is required, as for join"
    );
    let out = plugin.run(&[
        "check",
        "--kubeconfig",
        path(&member_kubeconfig),
        "--federation",
        "prod",
    ]);
    assert_eq!(out.status.code(), Some(0), "an admin may do everything");
    let text = stdout(&out);
    assert!(
        text.contains(
            "NOTE  istio-system is labelled topology.istio.io/network=net-a\n      -> join with --network net-a"
        ),
        "the network advice is printed: {text}"
    );
    assert!(
        text.contains("WARN  federation prod not found in the operator's cluster"),
        "{text}"
    );
    assert!(
        text.contains("ok    the identity may install Istio's charts"),
        "Managed mode's rights are checked while the mode is not known: {text}"
    );
    assert!(
        text.contains("ok    API server answers, Kubernetes v1."),
        "{text}"
    );
    assert!(
        text.contains("WARN  https://127.0.0.1:"),
        "loopback: {text}"
    );
    assert!(text.contains("default/legacy-token"), "{text}");
    assert!(text.contains("the identity may do all "), "{text}");
    let unreachable = fleet.dir().join("nowhere.kubeconfig");
    std::fs::write(
        &unreachable,
        e2e::fleet::kubeconfig_yaml(
            "nowhere",
            "https://127.0.0.1:1",
            fleet.cluster(1).ca_pem(),
            &e2e::fleet::pki::ClusterPki::generate("nowhere")?.admin,
        ),
    )?;
    let out = plugin.run(&[
        "check",
        "--kubeconfig",
        path(&unreachable),
        "--federation",
        "prod",
    ]);
    assert_eq!(out.status.code(), Some(1), "an unreachable cluster fails");
    assert!(stdout(&out).contains("FAIL  API server https://127.0.0.1:1"));

    // --- a federation of the operator's own cluster; then join cluster-1
    apply_federation(
        &host,
        &federation("prod", vec![local_member(fleet.cluster(0), "net-a")]),
    )
    .await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    let name = fleet.cluster(1).name();

    // --- join refuses, before writing anything, what would fail later
    let credentials_version = || async {
        Ok::<_, kube::Error>(
            Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
                .get_opt(&format!("{name}-kubeconfig"))
                .await?
                .and_then(|s| s.metadata.resource_version),
        )
    };
    let stored_before = credentials_version().await?;
    let join = |member: &str, federation: &str, extra: &[&str]| {
        let mut args = vec![
            "join",
            member,
            "--kubeconfig",
            path(&member_kubeconfig),
            "--federation",
            federation,
        ];
        args.extend_from_slice(extra);
        plugin.run(&args)
    };
    let out = join("Cluster_1", "prod", &[]);
    assert_eq!(out.status.code(), Some(2), "not a DNS-1123 label");
    assert!(stderr(&out).contains("DNS-1123"), "{}", stderr(&out));
    let out = join(name, "prod", &["--token-lifetime", "5m"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "shorter than TokenRequest's 10m"
    );
    assert!(stderr(&out).contains("10m"), "{}", stderr(&out));
    let out = join(name, "nosuch", &["--network", "net-a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("federation nosuch not found in the operator's cluster")
            && stderr(&out).contains(&format!(
                "nothing was written to member {name} or to namespace {OPERATOR_NAMESPACE}"
            )),
        "{}",
        stderr(&out)
    );
    let out = join(name, "prod", &["--namespace", "nosuch-system"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("namespace nosuch-system not found"),
        "{}",
        stderr(&out)
    );
    assert!(
        Api::<ClusterRole>::all(member_client.clone())
            .get_opt("meshfed-reader-nosuch")
            .await?
            .is_none()
            && Api::<ServiceAccount>::namespaced(member_client.clone(), "istio-system")
                .get_opt("meshfed-member")
                .await?
                .is_none(),
        "no roles or identity in the member"
    );
    assert_eq!(
        credentials_version().await?,
        stored_before,
        "nothing stored in the operator's namespace"
    );

    let out = plugin.run(&[
        "join",
        name,
        "--kubeconfig",
        path(&member_kubeconfig),
        "--federation",
        "prod",
        "--network",
        "net-a",
        "--token-lifetime",
        "1h",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = plugin.run(&[
        "status",
        "prod",
        "--wait",
        "--timeout",
        "90s",
        "--host-context",
        fleet.cluster(0).name(),
    ]);
    assert_eq!(out.status.code(), Some(0), "Ready after the join");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("2/2 members ready"), "{progress}");

    // What join stored: a token of meshfed's member identity, nothing long-lived.
    let stored = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .get(&format!("{name}-kubeconfig"))
        .await?;
    let kubeconfig = String::from_utf8(stored.data.unwrap()["kubeconfig"].0.clone())?;
    let token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token user");
    let claims: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(token.split('.').nth(1).unwrap())?)?;
    assert_eq!(
        claims["sub"],
        "system:serviceaccount:istio-system:meshfed-member"
    );
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 3600, "the lifetime asked for");
    assert!(
        Api::<Secret>::namespaced(member_client.clone(), "istio-system")
            .get_opt("meshfed-member-token")
            .await?
            .is_none(),
        "no long-lived token Secret"
    );

    // --- the operator renews its own token in the member and stores it
    // (forced here: a due renewal comes with a third of the lifetime left).
    let credentials = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE);
    Api::<MeshFederation>::all(host.clone())
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"meshfed.io/refresh-tokens": "e2e-renew"}}})),
        )
        .await?;
    poll(
        WAIT,
        "a renewed member token stored by the operator",
        || async {
            let s = credentials.get(&format!("{name}-kubeconfig")).await?;
            Ok(s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("meshfed.io/refresh-tokens"))
                .map(String::as_str)
                == Some("e2e-renew"))
        },
    )
    .await?;
    let renewed = credentials.get(&format!("{name}-kubeconfig")).await?;
    let renewed_kubeconfig = String::from_utf8(renewed.data.unwrap()["kubeconfig"].0.clone())?;
    let renewed_token = renewed_kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token user");
    assert_ne!(renewed_token, token);
    let renewed_claims: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(renewed_token.split('.').nth(1).unwrap())?)?;
    assert_eq!(renewed_claims["sub"], claims["sub"], "the same identity");
    assert_eq!(
        renewed_claims["exp"].as_i64().unwrap() - renewed_claims["iat"].as_i64().unwrap(),
        3600,
        "the same lifetime"
    );
    let out = plugin.run(&["status", "prod", "--wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(0), "Ready with the renewed token");
    // The joined identity has what meshfed needs, and nothing flags it.
    let joined = fleet.dir().join("joined.kubeconfig");
    std::fs::write(&joined, &kubeconfig)?;
    let out = plugin.run(&[
        "check",
        "--kubeconfig",
        path(&joined),
        "--federation",
        "prod",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("the identity may do all "), "{text}");
    assert!(
        text.contains("istio-system/cacerts is this federation's"),
        "{text}"
    );
    assert!(
        text.contains("ok    federation prod exists in the operator's cluster (no control plane)"),
        "{text}"
    );
    assert!(
        !text.contains("Istio's charts") && !text.contains("Managed"),
        "no Managed-mode rights asked of a federation without one: {text}"
    );

    // --- a Managed federation: the joined identity may not install Istio,
    // and check says what to grant.
    let mut managed = federation("managed", vec![member(fleet.cluster(1), "net-a")]);
    managed.spec.members[0].name = "ghost".into();
    managed.spec.members[0]
        .credentials
        .secret_ref
        .as_mut()
        .unwrap()
        .name = "ghost-kubeconfig".into();
    managed.spec.control_plane = Some(ControlPlaneSpec {
        mode: ControlPlaneMode::Managed,
        version: Some("1.31".into()),
        ..Default::default()
    });
    apply_federation(&host, &managed).await?;
    let out = plugin.run(&[
        "check",
        "--kubeconfig",
        path(&joined),
        "--federation",
        "managed",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "Managed needs more than join gives"
    );
    let text = stdout(&out);
    assert!(
        text.contains(
            "FAIL  federation managed has a Managed control plane, and the identity may not: "
        ) && text.contains("customresourcedefinitions.apiextensions.k8s.io (cluster-wide)"),
        "{text}"
    );
    assert!(
        text.contains(
            "kubectl create clusterrolebinding meshfed-member-cluster-admin --clusterrole cluster-admin --serviceaccount istio-system:meshfed-member"
        ),
        "the binding for the identity check found: {text}"
    );
    let out = plugin.run(&[
        "check",
        "--kubeconfig",
        path(&member_kubeconfig),
        "--federation",
        "managed",
    ]);
    assert!(
        stdout(&out).contains("ok    the identity may install Istio's charts"),
        "an admin may: {}",
        stdout(&out)
    );
    let federations = Api::<MeshFederation>::all(host.clone());
    federations
        .delete("managed", &DeleteParams::default())
        .await?;
    poll(WAIT, "federation managed deleted", || async {
        Ok(federations.get_opt("managed").await?.is_none())
    })
    .await?;

    // --- status: table, JSON, YAML (--context: --host-context's old name)
    let out = plugin.run(&["status", "prod", "--context", fleet.cluster(0).name()]);
    assert_eq!(out.status.code(), Some(0));
    let table = stdout(&out);
    assert!(
        table.starts_with("prod: Ready, 2/2 members ready\nMEMBER"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(name))
        .expect("a row for the joined member");
    assert!(
        row.contains("yes") && row.contains("net-a") && row.contains("1/1"),
        "{row}"
    );
    let out = plugin.run(&["status", "prod", "-o", "json"]);
    let feds: Vec<MeshFederation> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(feds[0].status.as_ref().unwrap().members.len(), 2);
    let out = plugin.run(&["status", "-o", "yaml"]);
    let feds: Vec<MeshFederation> = serde_yaml::from_slice(&out.stdout)?;
    assert_eq!(feds.len(), 1);

    // --watch draws the table, then again on every change.
    let mut watch = Command::new(&plugin.binary)
        .args(["status", "prod", "--watch"])
        .env("KUBECONFIG", &plugin.kubeconfig)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut fed = Api::<MeshFederation>::all(host.clone()).get("prod").await?;
    fed.spec.remote_secrets = Some(meshfed::api::RemoteSecretsSpec {
        token_lifetime: Some("2h".parse()?),
        ..Default::default()
    });
    fed.status = None;
    Api::<MeshFederation>::all(host.clone())
        .replace("prod", &PostParams::default(), &fed)
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.kill()?;
    let drawn = String::from_utf8(watch.wait_with_output()?.stdout)?;
    assert!(
        drawn.matches("MEMBER").count() >= 2,
        "redrawn after the change: {drawn}"
    );

    // --- a member whose stored token expired (the operator was down for
    // longer than its lifetime): said so, with the command that fixes it.
    let expired_token = {
        let part = |v: serde_json::Value| B64URL.encode(v.to_string());
        let mut c = renewed_claims.clone();
        c["iat"] = (unix_now() - 7200).into();
        c["exp"] = (unix_now() - 3600).into();
        format!(
            "{}.{}.sig",
            part(serde_json::json!({"alg": "RS256"})),
            part(c)
        )
    };
    let stale: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stale-kubeconfig", "namespace": OPERATOR_NAMESPACE},
        "stringData": {"kubeconfig": renewed_kubeconfig.replace(renewed_token, &expired_token)},
    }))?;
    credentials.create(&PostParams::default(), &stale).await?;
    let mut fed = Api::<MeshFederation>::all(host.clone()).get("prod").await?;
    let mut entry = fed.spec.members[1].clone();
    entry.name = "stale".into();
    entry.credentials.secret_ref.as_mut().unwrap().name = "stale-kubeconfig".into();
    fed.spec.members.push(entry);
    fed.status = None;
    Api::<MeshFederation>::all(host.clone())
        .replace("prod", &PostParams::default(), &fed)
        .await?;
    let reported = wait_for_federation(&host, "prod", WAIT, "the stale member reported", |f| {
        f.status.as_ref().is_some_and(|s| {
            s.members.iter().any(|m| {
                m.name == "stale"
                    && m.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("expired"))
            })
        })
    })
    .await?;
    let text = serde_json::to_string(&reported.status)?;
    assert!(
        text.contains("kubectl meshfed join stale --kubeconfig"),
        "{text}"
    );
    assert!(!text.contains("eyJ"), "no token in status: {text}");

    // --- exit codes scripts can use
    let out = plugin.run(&["status", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("federation nosuch"));
    let out = plugin.run(&["status", "--output", "xml"]);
    assert_eq!(out.status.code(), Some(2), "bad usage");
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `version`, `completion`, `rotate`, `leave` and `upgrade` against a
/// federation the test writes (no operator runs: these commands only read
/// and change the federation, and `version` finds no operator Deployment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_rotate_leave_upgrade_and_completion() -> Result<()> {
    let binary = tokio::task::spawn_blocking(|| build_binary("kubectl-meshfed", false)).await??;
    let fleet = e2e::Fleet::start(1).await?;
    let _logs = fleet.log_guard();
    prepare_host(&fleet).await?;
    let host = fleet.cluster(0).client();
    let plugin = Plugin {
        binary,
        kubeconfig: fleet.cluster(0).kubeconfig_path().to_path_buf(),
    };
    let federations = Api::<MeshFederation>::all(host.clone());
    let named = |name: &str| {
        let mut m = member(fleet.cluster(0), "net-a");
        m.name = name.into();
        m
    };
    let mut ops = federation("ops", vec![named("a"), named("b"), named("c")]);
    ops.spec.control_plane = Some(serde_json::from_value(serde_json::json!({
        "mode": "Managed", "version": "1.30",
        "upgrade": {"order": ["c"], "maxConcurrent": 2},
    }))?);
    apply_federation(&host, &ops).await?;
    apply_federation(&host, &federation("solo", vec![named("a")])).await?;

    // --- version: no operator Deployment in the test bed
    let out = plugin.run(&["version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.starts_with("plugin:   "), "{text}");
    assert!(
        text.contains(
            "operator: not found (no Deployment labelled app.kubernetes.io/name=meshfed-operator in namespace meshfed-system"
        ),
        "{text}"
    );
    assert!(
        text.contains("CRD:      meshfederations.meshfed.io serves v1alpha1"),
        "{text}"
    );
    assert!(!stderr(&out).contains("warning"), "no operator, no skew");

    // --- completion
    let out = plugin.run(&["completion", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = stdout(&out);
    assert!(!script.is_empty() && script.contains("meshfed"), "{script}");
    assert!(script.contains("rotate"), "subcommands are completed");
    let out = plugin.run(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");

    // --- rotate: --dry-run prints the patch and changes nothing
    let out = plugin.run(&["rotate", "ops", "--root", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let patch: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        patch["spec"]["ca"]["rootRotation"]["request"].is_string(),
        "{patch}"
    );
    assert!(federations.get("ops").await?.spec.ca.is_none());
    let out = plugin.run(&["rotate", "ops", "--root"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("kubectl meshfed status ops --wait"),
        "says how to follow it"
    );
    let fed = federations.get("ops").await?;
    let first = fed
        .spec
        .ca
        .as_ref()
        .and_then(|c| c.rotation_request())
        .expect("spec.ca.rootRotation.request is set")
        .to_string();
    let out = plugin.run(&["rotate", "ops", "--root"]);
    assert_eq!(out.status.code(), Some(0));
    let fed = federations.get("ops").await?;
    assert_ne!(
        fed.spec.ca.as_ref().and_then(|c| c.rotation_request()),
        Some(first.as_str()),
        "a second rotation is a new request"
    );
    let out = plugin.run(&["rotate", "ops", "--tokens", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let patch: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        patch["metadata"]["annotations"]["meshfed.io/refresh-tokens"].is_string(),
        "{patch}"
    );
    let out = plugin.run(&["rotate", "ops", "--tokens"]);
    assert_eq!(out.status.code(), Some(0));
    let fed = federations.get("ops").await?;
    assert!(
        fed.annotations().contains_key("meshfed.io/refresh-tokens"),
        "{:?}",
        fed.annotations()
    );
    let out = plugin.run(&["rotate", "ops"]);
    assert_eq!(out.status.code(), Some(2), "--root or --tokens is required");
    let out = plugin.run(&["rotate", "nosuch", "--tokens"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("federation nosuch not found"));

    // --- upgrade --dry-run: the plan and the patch, nothing changed
    let out = plugin.run(&["upgrade", "ops", "--to", "1.31", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("federation ops: Istio 1.30 -> 1.31\n"),
        "{text}"
    );
    assert!(
        text.contains("  wave 1: c, a\n  wave 2: b\n"),
        "order first, then spec order, two at a time: {text}"
    );
    assert!(
        text.contains("\"version\": \"1.31\""),
        "the patch is printed: {text}"
    );
    let fed = federations.get("ops").await?;
    assert_eq!(
        fed.spec.control_plane.as_ref().unwrap().version.as_deref(),
        Some("1.30")
    );
    let out = plugin.run(&["upgrade", "solo", "--to", "1.31"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("federation solo has no spec.controlPlane"),
        "refused without spec.controlPlane"
    );

    // --- leave: --dry-run changes nothing; then the member goes, with its
    // place in upgrade.order
    let out = plugin.run(&["leave", "ops", "c", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let patch: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(patch["spec"]["members"].as_array().map(Vec::len), Some(2));
    assert!(
        stderr(&out).contains("spec.ca.onRemoval is Retain"),
        "says what onRemoval does"
    );
    assert_eq!(federations.get("ops").await?.spec.members.len(), 3);
    let out = plugin.run(&["leave", "ops", "c"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("member c left federation ops"));
    let fed = federations.get("ops").await?;
    let names: Vec<&str> = fed.spec.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(fed.spec.upgrade().order, Some(vec![]));
    let out = plugin.run(&["leave", "ops", "c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("federation ops has no member c (members: a, b)"));
    let out = plugin.run(&["leave", "solo", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a is the last member of federation solo"),
        "the last member is refused"
    );
    assert_eq!(federations.get("solo").await?.spec.members.len(), 1);

    // --- upgrade, applied
    let out = plugin.run(&["upgrade", "ops", "--to", "1.31"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("  wave 1: a, b\n"));
    let fed = federations.get("ops").await?;
    assert_eq!(
        fed.spec.control_plane.as_ref().unwrap().version.as_deref(),
        Some("1.31")
    );
    Ok(())
}
