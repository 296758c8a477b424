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
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use e2e::istiod::install_base_crds;
use e2e::mesh::*;
use e2e::workload::{MemberWorkload, Sampler, distributed_roots, handshake, istiod_fleet, roots};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;

const WAIT: Duration = Duration::from_secs(60);
const NETWORKS: [&str; 3] = ["net-a", "net-a", "net-b"];
/// Short, so that the sampler renews during the test (at half of it).
const WORKLOAD_TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_of_every_member_handshake_through_an_intermediate_renewal() -> Result<()> {
    let (_logs, fleet, clients) = istiod_fleet(3).await?;
    let host = clients[0].clone();
    let _operator = start_operator(
        fleet.cluster(0),
        Duration::from_secs(2),
        Duration::from_secs(3),
    )?;
    let members = members_of(&fleet, &NETWORKS);
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
        let dir = fleet.dir().join(format!("istiod-{i}"));
        let w = MemberWorkload::start(cluster, NETWORKS[i], &dir, WORKLOAD_TTL).await?;
        ensure!(
            w.roots().await == federation_root,
            "istiod {i} distributes the federation's root"
        );
        let first = w.certificate().await?;
        ensure!(
            first.chain.last() == federation_root.first(),
            "istiod {i}'s CreateCertificate ends in the federation's root"
        );
        workloads.push(Arc::new(w));
    }

    // The handshake can fail: an untrusted root, or a peer that is not who
    // it should be.
    let (a, b) = (
        workloads[0].certificate().await?,
        workloads[2].certificate().await?,
    );
    handshake(
        &a,
        &workloads[0].roots().await,
        &b,
        &workloads[2].roots().await,
    )
    .await?;
    let stranger = rcgen::CertificateParams::new(Vec::<String>::new())?
        .self_signed(&rcgen::KeyPair::generate()?)?;
    let untrusted = vec![stranger.der().clone()];
    ensure!(
        handshake(&a, &untrusted, &b, &workloads[2].roots().await)
            .await
            .is_err()
    );
    ensure!(
        handshake(&a, &workloads[0].roots().await, &b, &untrusted)
            .await
            .is_err()
    );
    let mut impostor = b.clone();
    impostor.spiffe_id = workloads[1].spiffe_id.clone();
    ensure!(
        handshake(
            &a,
            &workloads[0].roots().await,
            &impostor,
            &workloads[2].roots().await
        )
        .await
        .is_err(),
        "a certificate for another identity is refused"
    );

    // Every ordered pair, sampled continuously.
    let sampler = Sampler::start(workloads.clone());
    poll(WAIT, "handshakes between every pair", || async {
        Ok(sampler.handshakes() >= 12)
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
    let sampled_before = sampler.handshakes();
    tokio::time::sleep(WORKLOAD_TTL).await;
    let (total, failures) = sampler.finish().await?;
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
            roots(&distributed_roots(c, WAIT).await?)? == federation_root,
            "member {i}"
        );
    }
    Ok(())
}
