//! The real `meshfed-operator` binary: two replicas elect one leader through
//! a Lease, the standby takes over when the leader dies, /metrics, /healthz
//! and /readyz answer, and no secret material reaches the logs.
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use e2e::Fleet;
use e2e::mesh::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use meshfed::api::{MeshFederation, RemoteSecretsSpec};

const WAIT: Duration = Duration::from_secs(60);

struct Operator {
    child: Child,
    metrics: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(
    binary: &std::path::Path,
    kubeconfig: &std::path::Path,
    identity: &str,
    dir: &std::path::Path,
) -> Operator {
    start_under(&[], binary, kubeconfig, identity, dir)
}

/// Starts the operator as an argument of `wrapper` (e.g. `faketime`).
fn start_under(
    wrapper: &[&str],
    binary: &std::path::Path,
    kubeconfig: &std::path::Path,
    identity: &str,
    dir: &std::path::Path,
) -> Operator {
    let metrics = free_addr();
    let log = dir.join(format!("{identity}.log"));
    let mut command = match wrapper {
        [] => Command::new(binary),
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
    };
    let child = command
        .args([
            "--leader-elect",
            "--leader-lease-duration",
            "3s",
            "--resync",
            "2s",
            "--member-timeout",
            "3s",
        ])
        .args([
            "--identity",
            identity,
            "--metrics-addr",
            &metrics.to_string(),
            "--namespace",
            OPERATOR_NAMESPACE,
        ])
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            "debug,hyper=info,tower=info,rustls=info,h2=info",
        )
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{identity}.stderr"))).unwrap(),
        ))
        .spawn()
        .unwrap();
    Operator {
        child,
        metrics,
        log,
    }
}

async fn lease(client: &kube::Client) -> Option<k8s_openapi::api::coordination::v1::LeaseSpec> {
    Api::<Lease>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get_opt("meshfed-operator-leader")
        .await
        .ok()??
        .spec
}

async fn lease_holder(client: &kube::Client) -> Option<String> {
    lease(client).await?.holder_identity
}

/// The timestamp that starts the newest line of an operator log.
fn last_log_time(log: &std::path::Path) -> Option<jiff::Timestamp> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .or_else(|| panic!("no timestamped line in {}", log.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_clock_runs_ahead_never_takes_a_healthy_lease() -> Result<()> {
    let binary = operator_binary()?;
    let fleet = Fleet::start(1).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    let kubeconfig = fleet.cluster(0).kubeconfig_path().to_path_buf();

    let mut a = start(&binary, &kubeconfig, "op-a", fleet.dir());
    poll(WAIT, "op-a leads", || async {
        Ok(lease_holder(&host).await.as_deref() == Some("op-a"))
    })
    .await?;
    // Debian's faketime (libfaketime): every clock of op-b runs 20 s ahead.
    let b = start_under(
        &["faketime", "-f", "+20s"],
        &binary,
        &kubeconfig,
        "op-b",
        fleet.dir(),
    );
    poll(WAIT, "op-b ready (standing by)", || async {
        Ok(http_get(b.metrics, "/readyz").await?.0 == 200)
    })
    .await?;
    let skew = last_log_time(&b.log)
        .zip(last_log_time(&a.log))
        .map(|(b, a)| b.duration_since(a).as_secs_f64());
    assert!(
        skew.is_some_and(|s| s > 15.0),
        "op-b's clock is not ahead: {skew:?}"
    );
    let transitions = lease(&host).await.and_then(|l| l.lease_transitions);
    // Four lease durations: an election that trusted renewTime would take over at once.
    let watch_until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < watch_until {
        let now = lease(&host).await;
        assert_eq!(
            now.as_ref().and_then(|l| l.holder_identity.as_deref()),
            Some("op-a"),
            "the skewed standby took the lease from a healthy leader"
        );
        assert_eq!(now.and_then(|l| l.lease_transitions), transitions);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Its clock is only wrong, not broken: once op-a dies it takes over.
    a.child.kill()?;
    a.child.wait()?;
    poll(WAIT, "op-b takes over from a dead leader", || async {
        Ok(lease_holder(&host).await.as_deref() == Some("op-b"))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_a_takeover() -> Result<()> {
    let binary = operator_binary()?;
    let fleet = Fleet::start(2).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    store_credentials(&host, fleet.cluster(1)).await?;
    let kubeconfig = fleet.cluster(0).kubeconfig_path().to_path_buf();

    let a = start(&binary, &kubeconfig, "op-a", fleet.dir());
    poll(WAIT, "op-a leads", || async {
        Ok(lease_holder(&host).await.as_deref() == Some("op-a"))
    })
    .await?;
    let mut b = start(&binary, &kubeconfig, "op-b", fleet.dir());
    poll(WAIT, "op-b ready (standing by)", || async {
        Ok(http_get(b.metrics, "/readyz").await?.0 == 200)
    })
    .await?;
    assert_eq!(http_get(b.metrics, "/healthz").await?.0, 200);

    let fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-b"),
        ],
    );
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    assert_eq!(
        lease_holder(&host).await.as_deref(),
        Some("op-a"),
        "the leader stays put"
    );

    // A reconcile records its metrics after it has written status: wait for them.
    let needles = [
        r#"meshfed_reconciles_total{federation="prod",result="ready"}"#,
        "meshfed_reconcile_duration_seconds_bucket",
        r#"meshfed_member_reachable{federation="prod",member="cluster-1"} 1"#,
        r#"meshfed_intermediate_expiry_seconds{federation="prod",member="cluster-0"}"#,
        r#"meshfed_remote_secret_token_expiry_seconds{federation="prod",member="cluster-1"}"#,
    ];
    poll(WAIT, "leader metrics", || async {
        let (_, text) = http_get(a.metrics, "/metrics").await?;
        Ok(needles.iter().all(|n| text.contains(n)))
    })
    .await?;
    let (_, standby_metrics) = http_get(b.metrics, "/metrics").await?;
    assert!(
        !standby_metrics.contains("meshfed_reconciles_total{"),
        "the standby must not reconcile:\n{standby_metrics}"
    );

    // The leader dies without releasing the Lease: the standby takes over once it expires.
    let mut a = a;
    a.child.kill()?;
    a.child.wait()?;
    poll(WAIT, "op-b takes over", || async {
        Ok(lease_holder(&host).await.as_deref() == Some("op-b"))
    })
    .await?;
    let mut changed = fed.clone();
    changed.spec.remote_secrets = Some(RemoteSecretsSpec {
        token_lifetime: Some("2h".parse().unwrap()),
        ..Default::default()
    });
    apply_federation(&host, &changed).await?;
    let after = wait_for_federation(
        &host,
        "prod",
        WAIT,
        "new generation reconciled by op-b",
        |f| has_condition(f, "Ready", "True"),
    )
    .await?;
    assert!(after.metadata.generation > Some(1));
    assert_eq!(
        after.status.as_ref().and_then(|s| s.observed_generation),
        after.metadata.generation,
        "op-b reconciled the new generation"
    );
    poll(
        WAIT,
        "the new leader's reconciles in its metrics",
        || async {
            let (_, text) = http_get(b.metrics, "/metrics").await?;
            Ok(text.contains(r#"meshfed_reconciles_total{federation="prod",result="ready"}"#))
        },
    )
    .await?;

    // A clean stop releases the Lease at once.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    b.child.wait()?;
    poll(Duration::from_secs(10), "lease released", || async {
        Ok(lease_holder(&host).await.is_none())
    })
    .await?;

    // Nothing secret in any log line, even at debug level.
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        fleet.cluster(1).client(),
        "istio-system",
    );
    let cacerts = secrets.get("cacerts").await?;
    let key = String::from_utf8(cacerts.data.unwrap()["ca-key.pem"].0.clone())?;
    let key_line = key.lines().nth(1).unwrap().to_string();
    for log in [&a.log, &b.log] {
        let text = std::fs::read_to_string(log)?;
        assert!(
            text.contains("reconciled"),
            "{} has no reconcile lines",
            log.display()
        );
        for forbidden in [
            "PRIVATE KEY",
            "eyJhbGci",
            "client-key-data",
            "token:",
            key_line.as_str(),
        ] {
            assert!(
                !text.contains(forbidden),
                "{} contains {forbidden:?}",
                log.display()
            );
        }
    }
    Ok(())
}

/// A credentials Secret made by hand (a bound token, no
/// `meshfed.io/renew-credentials`): meshfed may not renew it, so it warns
/// once the token has a third of its lifetime left, while the member still
/// works; annotated, it is renewed and the warning goes. The operator's
/// clock runs 41 minutes ahead (faketime), so a one-hour token is in its
/// last third at once without waiting 40 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_meshfed_may_not_renew_is_warned_of_before_it_expires() -> Result<()> {
    let binary = operator_binary()?;
    let fleet = Fleet::start(2).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    let joined = fleet.cluster(1);
    let secret = credentials_secret_name(joined);
    store_kubeconfig(&host, &secret, &join_identity(joined, "prod").await?).await?;
    let kubeconfig = fleet.cluster(0).kubeconfig_path().to_path_buf();
    let _operator = start_under(
        &["faketime", "-f", "+41m"],
        &binary,
        &kubeconfig,
        "op",
        fleet.dir(),
    );
    apply_federation(&host, &federation("prod", vec![member(joined, "net-a")])).await?;

    let feds = Api::<MeshFederation>::all(host.clone());
    let reachable = |f: &MeshFederation| {
        condition(f, "MembersReachable").map(|c| (c.status.clone(), c.reason.clone()))
    };
    wait_for_federation(&host, "prod", WAIT, "Ready, warned of the expiry", |f| {
        has_condition(f, "Ready", "True")
            && reachable(f) == Some(("True".into(), "CredentialsExpiring".into()))
    })
    .await?;
    let fed = feds.get("prod").await?;
    let message = &condition(&fed, "MembersReachable").unwrap().message;
    assert!(message.contains(joined.name()), "{message}");
    let status = fed.status.as_ref().unwrap();
    assert!(status.members[0].credentials_expiring.is_some());
    let warnings = || async {
        let events = Api::<k8s_openapi::api::events::v1::Event>::all(host.clone())
            .list(&Default::default())
            .await?;
        anyhow::Ok(
            events
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("CredentialsExpiring")
                        && e.type_.as_deref() == Some("Warning")
                })
                .filter_map(|e| e.note)
                .collect::<Vec<_>>(),
        )
    };
    poll(WAIT, "a CredentialsExpiring Warning", || async {
        Ok(!warnings().await?.is_empty())
    })
    .await?;
    let notes = warnings().await?;
    assert!(
        notes[0].contains(&secret)
            && notes[0].contains("kubectl meshfed join")
            && notes[0].contains("meshfed.io/renew-credentials"),
        "the Warning names the Secret and both fixes: {notes:?}"
    );
    // More runs (resync 2 s) warn no more for the same token.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(warnings().await?.len(), 1, "one Warning per token");

    // The owner lets meshfed renew it: renewed, and the warning goes.
    let secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE);
    secrets
        .patch(
            &secret,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"meshfed.io/renew-credentials": "true"}}
            })),
        )
        .await?;
    wait_for_federation(&host, "prod", WAIT, "renewed, no warning", |f| {
        reachable(f) == Some(("True".into(), "AllReachable".into()))
            && f.status
                .as_ref()
                .is_some_and(|s| s.members[0].credentials_expiring.is_none())
    })
    .await?;
    Ok(())
}
