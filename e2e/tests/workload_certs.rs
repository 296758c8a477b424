//! What a workload sees of meshfed's CA, from the real istiod: certificates
//! it mints over gRPC (`CreateCertificate`), and mTLS handshakes between
//! workloads of every pair of members, each side trusting the roots its own
//! istiod distributes. istiod runs with `cacerts` projected as the kubelet
//! mounts a Secret volume, so it reloads its plug-in CA as in a pod.
//!
//! An intermediate renewal (one member's `cacerts` replaced by meshfed with
//! a new intermediate key) is picked up by that istiod without a restart,
//! and handshakes sampled continuously across it, with certificates minted
//! before and after, never fail.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use e2e::Fleet;
use e2e::istiod::{Istiod, IstiodOptions, base_crds, install_base_crds, istio};
use e2e::mesh::*;
use e2e::workload::{Workload, ca_token, handshake, mint, roots};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rustls::pki_types::CertificateDer;
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(60);
const NETWORKS: [&str; 3] = ["net-a", "net-a", "net-b"];
/// Short, so that the sampler renews during the test (at half of it).
const WORKLOAD_TTL: Duration = Duration::from_secs(30);

/// One member's workload: where its istiod's CA is, its `istio-ca` token,
/// the roots its istiod distributes, and its current certificate.
struct Member {
    istiod: Istiod,
    token: String,
    spiffe_id: String,
    roots_pem: String,
    current: Mutex<Workload>,
}

impl Member {
    async fn mint(&self) -> Result<Workload> {
        mint(
            self.istiod.secure_grpc_addr(),
            &self.roots_pem,
            &self.token,
            &self.spiffe_id,
            WORKLOAD_TTL,
        )
        .await
    }

    /// Its certificate, renewed first if past half its life (the agent's rule).
    async fn certificate(&self) -> Result<Workload> {
        let mut current = self.current.lock().await;
        if jiff::Timestamp::now() >= current.renew_at() {
            *current = self.mint().await?;
        }
        Ok(current.clone())
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        roots(&self.roots_pem).expect("roots were parsed before")
    }
}

/// The roots istiod distributes to workloads in namespace `default`.
async fn distributed_roots(client: &Client) -> Result<String> {
    let maps = Api::<ConfigMap>::namespaced(client.clone(), "default");
    let deadline = Instant::now() + WAIT;
    loop {
        let found = maps
            .get_opt("istio-ca-root-cert")
            .await?
            .and_then(|m| m.data?.get("root-cert.pem").cloned());
        match found {
            Some(pem) => return Ok(pem),
            None if Instant::now() > deadline => anyhow::bail!("no istio-ca-root-cert in default"),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_of_every_member_handshake_through_an_intermediate_renewal() -> Result<()> {
    istio().await?;
    base_crds().await?;
    let fleet = Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let host = clients[0].clone();
    prepare_host(&fleet).await?;
    let _operator = start_operator(
        fleet.cluster(0),
        Duration::from_secs(2),
        Duration::from_secs(3),
    )?;
    let members = vec![
        local_member(fleet.cluster(0), NETWORKS[0]),
        member(fleet.cluster(1), NETWORKS[1]),
        member(fleet.cluster(2), NETWORKS[2]),
    ];
    apply_federation(&host, &federation("prod", members)).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    futures::future::try_join_all(clients.iter().map(install_base_crds)).await?;
    let root_pem = {
        let s = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
            .get("prod-root-ca")
            .await?;
        String::from_utf8(s.data.context("root without data")?["tls.crt"].0.clone())?
    };
    let federation_root = roots(&root_pem)?;

    let mut workloads = Vec::new();
    for (i, cluster) in fleet.clusters().iter().enumerate() {
        let mut options = IstiodOptions::new(cluster.name(), NETWORKS[i], "mesh1");
        options.project_cacerts = true;
        let istiod =
            Istiod::start_with(cluster, options, &fleet.dir().join(format!("istiod-{i}"))).await?;
        let account = format!("workload-{i}");
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": account}}))?;
        Api::<ServiceAccount>::namespaced(clients[i].clone(), "default")
            .create(&PostParams::default(), &sa)
            .await?;
        let token = ca_token(&clients[i], "default", &account).await?;
        let roots_pem = distributed_roots(&clients[i]).await?;
        ensure!(
            roots(&roots_pem)? == federation_root,
            "istiod {i} distributes the federation's root"
        );
        let spiffe_id = format!("spiffe://cluster.local/ns/default/sa/{account}");
        let first = mint(
            istiod.secure_grpc_addr(),
            &roots_pem,
            &token,
            &spiffe_id,
            WORKLOAD_TTL,
        )
        .await?;
        ensure!(
            first.chain.last() == federation_root.first(),
            "istiod {i}'s CreateCertificate ends in the federation's root"
        );
        workloads.push(Arc::new(Member {
            istiod,
            token,
            spiffe_id,
            roots_pem,
            current: Mutex::new(first),
        }));
    }

    // The handshake can fail: an untrusted root, or a peer that is not who
    // it should be.
    let (a, b) = (
        workloads[0].certificate().await?,
        workloads[2].certificate().await?,
    );
    handshake(&a, &workloads[0].roots(), &b, &workloads[2].roots()).await?;
    let stranger = rcgen::CertificateParams::new(Vec::<String>::new())?
        .self_signed(&rcgen::KeyPair::generate()?)?;
    let untrusted = vec![stranger.der().clone()];
    ensure!(
        handshake(&a, &untrusted, &b, &workloads[2].roots())
            .await
            .is_err()
    );
    ensure!(
        handshake(&a, &workloads[0].roots(), &b, &untrusted)
            .await
            .is_err()
    );
    let mut impostor = b.clone();
    impostor.spiffe_id = workloads[1].spiffe_id.clone();
    ensure!(
        handshake(&a, &workloads[0].roots(), &impostor, &workloads[2].roots())
            .await
            .is_err(),
        "a certificate for another identity is refused"
    );

    // Every ordered pair, sampled continuously.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let sampler = {
        let (workloads, stop, done, failures) = (
            workloads.clone(),
            stop.clone(),
            done.clone(),
            failures.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, a) in workloads.iter().enumerate() {
                    for (j, b) in workloads.iter().enumerate().filter(|(j, _)| *j != i) {
                        let result = async {
                            let (client, server) = (a.certificate().await?, b.certificate().await?);
                            handshake(&client, &a.roots(), &server, &b.roots()).await
                        }
                        .await;
                        match result {
                            Ok(()) => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().await.push(format!("{i} -> {j}: {e:#}")),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    poll(WAIT, "handshakes between every pair", || async {
        Ok(done.load(Ordering::Relaxed) >= 12)
    })
    .await?;

    // --- an intermediate renewal in member 1: meshfed replaces its cacerts
    // with a new intermediate; the projection changes; istiod reloads.
    let renewed = 1;
    let before = workloads[renewed].mint().await?;
    let pid = workloads[renewed].istiod.pid();
    let started = Instant::now();
    Api::<Secret>::namespaced(clients[renewed].clone(), "istio-system")
        .delete("cacerts", &DeleteParams::default())
        .await?;
    let after = loop {
        let minted = workloads[renewed].mint().await?;
        if minted.chain[1] != before.chain[1] {
            break minted;
        }
        ensure!(
            started.elapsed() < WAIT,
            "istiod 1 never signed with a new intermediate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    ensure!(
        workloads[renewed].istiod.pid() == pid,
        "istiod was not restarted"
    );
    ensure!(
        workloads[renewed]
            .istiod
            .log_text()
            .contains("Istiod has detected the newly added intermediate CA"),
        "istiod logged the reload"
    );
    ensure!(after.chain.last() == federation_root.first(), "same root");
    // Old and new certificates side by side for a while.
    let sampled_before = done.load(Ordering::Relaxed);
    tokio::time::sleep(WORKLOAD_TTL).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    let total = done.load(Ordering::Relaxed);
    let failures = failures.lock().await.clone();
    eprintln!(
        "intermediate renewal picked up by istiod in {took:?} without a restart; {total} handshakes ({} after the renewal), failures: {failures:#?}",
        total - sampled_before
    );
    ensure!(failures.is_empty(), "failed handshakes: {failures:#?}");
    ensure!(
        total - sampled_before >= 30,
        "too few handshakes after the renewal"
    );
    // What istiod serves, not what the Secret holds: the roots it distributes.
    for (i, c) in clients.iter().enumerate() {
        ensure!(
            roots(&distributed_roots(c).await?)? == federation_root,
            "member {i}"
        );
    }
    Ok(())
}
