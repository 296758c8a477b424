//! A full root rotation on three members with real istiods, proven by the
//! workloads: handshakes between every pair of members are sampled
//! continuously from before the rotation starts to after it ends (with
//! certificates minted before it), and none fails. On the way, the
//! operator is killed in every phase (the rotation resumes: no phase skipped
//! or repeated), and one member's API server is stopped while the others
//! sign with the new root (the rotation holds there until it returns).
//! After each phase, what the istiods serve is checked, not what the Secrets
//! hold: the roots in their `istio-ca-root-cert` ConfigMaps and in their
//! `CreateCertificate` responses. Last, the user's CA Secret is renewed in
//! place (same name, new self-signed key) while a member's API server hangs
//! 20 s: a full rotation, no trust gap in any `cacerts`, no failed handshake.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use e2e::cacerts::CacertsWatch;
use e2e::istiod::install_base_crds;
use e2e::mesh::*;
use e2e::workload::{MemberWorkload, Sampler, distributed_roots, istiod_fleet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use meshfed::api::MeshFederation;

const WAIT: Duration = Duration::from_secs(60);
const NETWORKS: [&str; 3] = ["net-a", "net-a", "net-b"];
const WORKLOAD_TTL: Duration = Duration::from_secs(20);
/// Long enough for the checks made while TrustBoth waits.
const PROPAGATION: &str = "8s";
/// Longer than a workload certificate lives: every certificate under the
/// old root has been renewed before the old root leaves the bundles.
const DRAIN: &str = "30s";

/// A CA certificate (PEM) and its key: self-signed, or signed by `issuer`
/// (certificate PEM and key), able to sign CAs below it.
fn ca(name: &str, issuer: Option<(&str, &rcgen::KeyPair)>) -> Result<(String, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(match issuer {
        None => rcgen::BasicConstraints::Unconstrained,
        Some(_) => rcgen::BasicConstraints::Constrained(1),
    });
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = match issuer {
        None => params.self_signed(&key)?,
        Some((issuer_pem, issuer_key)) => {
            let issuer = rcgen::Issuer::from_ca_cert_pem(issuer_pem, issuer_key)?;
            params.signed_by(&key, &issuer)?
        }
    };
    Ok((cert.pem(), key))
}

fn ders(pem: &str) -> BTreeSet<Vec<u8>> {
    e2e::workload::roots(pem)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Whether no rotation runs and `serial` is the only root.
fn rotated_to(f: &MeshFederation, serial: &str) -> bool {
    f.status
        .as_ref()
        .and_then(|s| s.ca.as_ref())
        .is_some_and(|ca| ca.phase.is_none() && ca.roots.len() == 1 && ca.roots[0].serial == serial)
}

async fn root_pem(host: &Client, secret: &str) -> Result<String> {
    let s = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .get(secret)
        .await?;
    Ok(String::from_utf8(
        s.data.context("root without data")?["tls.crt"].0.clone(),
    )?)
}

/// Each member's `cacerts` chain (subject, issuer, serial of each
/// certificate), for a failure's report.
async fn cacerts_chains(clients: &[Client]) -> String {
    let mut out = String::from("cacerts chains:");
    for (i, c) in clients.iter().enumerate() {
        let chain = Api::<Secret>::namespaced(c.clone(), "istio-system")
            .get_opt("cacerts")
            .await
            .ok()
            .flatten()
            .and_then(|s| s.data?.get("cert-chain.pem").cloned())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default();
        out.push_str(&format!("\n  member {i}:"));
        for cert in meshfed::pki::inspect_bundle(&chain).unwrap_or_default() {
            out.push_str(&format!(
                "\n    {} <- {} (serial {}, from {})",
                cert.subject, cert.issuer, cert.serial, cert.not_before
            ));
        }
    }
    out
}

/// Waits until every member's istiod (those in `members`) distributes
/// exactly `expected`, and signs workload certificates under `signing`.
async fn istiods_serve(
    workloads: &[Arc<MemberWorkload>],
    clients: &[Client],
    members: &[usize],
    expected: &BTreeSet<Vec<u8>>,
    signing: &[u8],
) -> Result<()> {
    for &i in members {
        poll(WAIT, "istiod distributes the phase's roots", || async {
            Ok(ders(&distributed_roots(&clients[i], WAIT).await?) == *expected)
        })
        .await
        .with_context(|| format!("member {i}"))?;
        workloads[i].refresh_roots().await;
        poll(WAIT, "istiod signs under the phase's root", || async {
            Ok(workloads[i].mint().await?.chain.last().map(|c| c.to_vec())
                == Some(signing.to_vec()))
        })
        .await
        .with_context(|| format!("member {i}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_never_fails_a_handshake() -> Result<()> {
    let (_logs, fleet, clients) = istiod_fleet(3).await?;
    let host = clients[0].clone();
    let start = || {
        start_operator(
            fleet.cluster(0),
            Duration::from_secs(2),
            Duration::from_secs(3),
        )
    };
    let mut operator = Some(start()?);
    let members = members_of(&fleet, &NETWORKS);
    let mut fed = federation("prod", members);
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "rootRotation": {"propagationPeriod": PROPAGATION, "drainPeriod": DRAIN}
    }))?);
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    futures::future::try_join_all(clients.iter().map(install_base_crds)).await?;
    let old_root = root_pem(&host, "prod-root-ca").await?;
    let old = ders(&old_root);

    let mut workloads = Vec::new();
    for (i, cluster) in fleet.clusters().iter().enumerate() {
        let dir = fleet.dir().join(format!("istiod-{i}"));
        workloads.push(Arc::new(
            MemberWorkload::start(cluster, NETWORKS[i], &dir, WORKLOAD_TTL).await?,
        ));
    }
    let sampler = Sampler::start(workloads.clone());
    poll(WAIT, "handshakes between every pair", || async {
        Ok(sampler.handshakes() >= 12)
    })
    .await?;

    // --- the request (GitOps can express it: a value in the spec)
    let started = Instant::now();
    Api::<MeshFederation>::all(host.clone())
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"ca": {"rootRotation": {"request": "e2e-1"}}}}),
            ),
        )
        .await?;
    let new_root = {
        let mut found = None;
        let deadline = Instant::now() + WAIT;
        while found.is_none() {
            ensure!(Instant::now() < deadline, "no new root generated");
            found = root_pem(&host, "prod-root-ca-1").await.ok();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        found.unwrap()
    };
    let new = ders(&new_root);
    let both: BTreeSet<Vec<u8>> = old.union(&new).cloned().collect();
    let (old_der, new_der) = (
        old.iter().next().unwrap().clone(),
        new.iter().next().unwrap().clone(),
    );

    let feds = Api::<MeshFederation>::all(host.clone());
    // Every phase the status shows, in order, sampled every 50 ms.
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let observer = {
        let (feds, seen) = (feds.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(f) = feds.get("prod").await
                    && let Some(phase) = f.status.and_then(|s| s.ca).and_then(|c| c.phase)
                {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&phase) {
                        seen.push(phase);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let ca_status = || async {
        anyhow::Ok(
            feds.get("prod")
                .await?
                .status
                .unwrap_or_default()
                .ca
                .unwrap_or_default(),
        )
    };
    let reached = |phase: &'static str| {
        let seen = seen.clone();
        async move {
            poll(Duration::from_secs(120), phase, || async {
                Ok(seen.lock().unwrap().iter().any(|p| p == phase))
            })
            .await
        }
    };
    let mut timeline: Vec<(String, Duration)> = Vec::new();
    let restart = |operator: &mut Option<RunningOperator>| -> Result<()> {
        drop(operator.take());
        *operator = Some(start()?);
        Ok(())
    };

    // TrustBoth: killed once; every istiod distributes both roots and still
    // signs under the old one. Once every member finished it (the
    // propagation wait runs), member 2's API server stops: what member 2
    // reached stays true, so the rotation moves on and holds in SignWithNew.
    reached("TrustBoth").await?;
    timeline.push(("TrustBoth".into(), started.elapsed()));
    restart(&mut operator)?;
    istiods_serve(&workloads, &clients, &[0, 1, 2], &both, &old_der).await?;
    poll(WAIT, "TrustBoth settled", || async {
        Ok(ca_status().await?.next_phase_at.is_some())
    })
    .await?;
    // The status can say "settled" from the durable record before the
    // restarted operator has heard from every member; a member it has not
    // heard from holds the phase by design. Stop member 2 only once this
    // process reached all three.
    let restarted = operator.as_ref().unwrap().context.clone();
    poll(
        WAIT,
        "the restarted operator reached every member",
        || async {
            Ok(restarted
                .last_reconcile("prod")
                .is_some_and(|s| s.requests.len() == 3))
        },
    )
    .await?;
    fleet.cluster(2).stop_apiserver().await?;

    reached("SignWithNew").await?;
    timeline.push(("SignWithNew".into(), started.elapsed()));
    restart(&mut operator)?;
    istiods_serve(&workloads, &clients, &[0, 1], &both, &new_der).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let held = ca_status().await?;
    ensure!(
        held.phase.as_deref() == Some("SignWithNew"),
        "held at SignWithNew: {held:?}"
    );
    ensure!(
        held.waiting_for == [fleet.cluster(2).name()],
        "member 2 holds it: {held:?}"
    );
    timeline.push(("member 2 back".into(), started.elapsed()));
    fleet.cluster(2).start_apiserver().await?;
    istiods_serve(&workloads, &clients, &[2], &both, &new_der).await?;

    reached("Drain").await?;
    timeline.push(("Drain".into(), started.elapsed()));
    restart(&mut operator)?;
    istiods_serve(&workloads, &clients, &[0, 1, 2], &both, &new_der).await?;

    reached("TrustNew").await?;
    timeline.push(("TrustNew".into(), started.elapsed()));
    if ca_status().await?.phase.as_deref() == Some("TrustNew") {
        restart(&mut operator)?;
    }
    wait_for_federation(&host, "prod", WAIT, "the rotation finished", |f| {
        f.status
            .as_ref()
            .and_then(|s| s.ca.as_ref())
            .is_some_and(|ca| ca.phase.is_none() && ca.roots.len() == 1)
    })
    .await?;
    timeline.push(("finished".into(), started.elapsed()));
    observer.abort();
    let phases = seen.lock().unwrap().clone();
    istiods_serve(&workloads, &clients, &[0, 1, 2], &new, &new_der).await?;
    let first_rotation = started.elapsed();

    // --- an offline root: the operator's namespace gets only a signing
    // intermediate (tls.crt, tls.key) and the root's certificate (ca.crt).
    let (offline_pem, offline_key) = ca("Offline Root", None)?;
    let (signing_pem, signing_key) = ca("Signing CA 1", Some((&offline_pem, &offline_key)))?;
    let offline_secret = |signing_pem: &str, signing_key: &rcgen::KeyPair| -> Result<Secret> {
        Ok(serde_json::from_value(serde_json::json!({
            "metadata": {"name": "offline-root", "namespace": OPERATOR_NAMESPACE},
            "stringData": {"tls.crt": signing_pem, "tls.key": signing_key.serialize_pem(), "ca.crt": offline_pem},
        }))?)
    };
    let secrets = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE);
    secrets
        .create(
            &Default::default(),
            &offline_secret(&signing_pem, &signing_key)?,
        )
        .await?;
    let offline = ders(&offline_pem);
    let offline_der = offline.iter().next().unwrap().clone();
    let new_and_offline: BTreeSet<Vec<u8>> = new.union(&offline).cloned().collect();
    feds.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"ca": {"rootSecretRef": {"name": "offline-root"}}}}),
        ),
    )
    .await?;
    let rotating = Instant::now();
    let offline_serial = meshfed::pki::inspect(&offline_pem)?.serial;
    let finished = |f: &MeshFederation| rotated_to(f, &offline_serial);
    wait_for_federation(
        &host,
        "prod",
        Duration::from_secs(120),
        "TrustBoth with the offline root",
        |f| {
            f.status
                .as_ref()
                .and_then(|s| s.ca.as_ref())
                .is_some_and(|ca| ca.phase.is_some())
        },
    )
    .await?;
    istiods_serve(&workloads, &clients, &[0, 1, 2], &new_and_offline, &new_der).await?;
    wait_for_federation(
        &host,
        "prod",
        Duration::from_secs(120),
        "the rotation to the offline root",
        finished,
    )
    .await?;
    istiods_serve(&workloads, &clients, &[0, 1, 2], &offline, &offline_der).await?;
    let to_offline = rotating.elapsed();
    // Workload chains run through the signing intermediate to the root.
    let minted = workloads[0].mint().await?;
    ensure!(
        minted.chain.len() == 4,
        "leaf, intermediate, signing CA, root"
    );
    ensure!(minted.chain[2].to_vec() == ders(&signing_pem).into_iter().next().unwrap());

    // --- the signing intermediate replaced under the same root: no trust
    // change, so no phases; every member re-issues under the new one.
    let (signing2_pem, signing2_key) = ca("Signing CA 2", Some((&offline_pem, &offline_key)))?;
    secrets
        .replace("offline-root", &Default::default(), &{
            let mut s = offline_secret(&signing2_pem, &signing2_key)?;
            s.metadata.resource_version =
                secrets.get("offline-root").await?.metadata.resource_version;
            s
        })
        .await?;
    let signing2 = ders(&signing2_pem).into_iter().next().unwrap();
    for (i, w) in workloads.iter().enumerate() {
        poll(
            WAIT,
            "a workload certificate under the new signing CA",
            || async {
                Ok(w.mint().await?.chain.get(2).map(|c| c.to_vec()) == Some(signing2.clone()))
            },
        )
        .await
        .with_context(|| format!("member {i}"))?;
    }
    let status = feds.get("prod").await?.status.unwrap_or_default();
    ensure!(
        status.ca.as_ref().is_some_and(|ca| ca.phase.is_none()),
        "a new signing intermediate starts no rotation: {:?}",
        status.ca
    );
    let status = feds.get("prod").await?.status.unwrap_or_default();
    let serial = status.root.as_ref().map(|r| r.serial.clone());
    ensure!(
        serial == Some(meshfed::pki::inspect(&signing2_pem)?.serial),
        "status.root is the key that signs: the new signing intermediate"
    );

    // --- the Secret renewed in place as a new self-signed CA (what
    // cert-manager does to a CA Certificate with its default rotationPolicy:
    // Always) while member 1's API server hangs for 20 s: a full rotation,
    // signed by the old intermediate until every member trusts the new root.
    let watch = CacertsWatch::start_seeing_all(clients.clone()).await?;
    let (renewed_pem, renewed_key) = ca("Renewed Root", None)?;
    fleet.cluster(1).pause_apiserver()?;
    let paused = Instant::now();
    secrets
        .replace("offline-root", &Default::default(), &{
            let mut s: Secret = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "offline-root", "namespace": OPERATOR_NAMESPACE},
                "stringData": {"tls.crt": renewed_pem, "tls.key": renewed_key.serialize_pem(), "ca.crt": renewed_pem},
            }))?;
            s.metadata.resource_version =
                secrets.get("offline-root").await?.metadata.resource_version;
            s
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(paused.elapsed())).await;
    fleet.cluster(1).resume_apiserver()?;
    let renewed_serial = meshfed::pki::inspect(&renewed_pem)?.serial;
    let renewal = wait_for_federation(
        &host,
        "prod",
        Duration::from_secs(180),
        "the rotation to the renewed root",
        |f| rotated_to(f, &renewed_serial),
    )
    .await;
    if renewal.is_err() {
        eprintln!("{}", cacerts_chains(&clients).await);
    }
    renewal?;
    let renewed = ders(&renewed_pem);
    let renewed_der = renewed.iter().next().unwrap().clone();
    istiods_serve(&workloads, &clients, &[0, 1, 2], &renewed, &renewed_der).await?;
    let to_renewed = paused.elapsed();
    ensure!(watch.gaps().is_empty(), "trust gaps: {:#?}", watch.gaps());
    watch.expect_rotation(3, &offline_serial, &renewed_serial)?;

    tokio::time::sleep(WORKLOAD_TTL).await;
    let (total, failures) = sampler.finish().await?;
    eprintln!(
        "root rotation: phases {phases:?}; timeline {timeline:?} ({first_rotation:?} to every istiod serving the new root); to an offline root in {to_offline:?}; renewed in place, member 1 hung 20 s: {to_renewed:?}; {total} handshakes, failures: {failures:#?}"
    );
    ensure!(
        phases == ["TrustBoth", "SignWithNew", "Drain", "TrustNew"],
        "{phases:?}"
    );
    ensure!(failures.is_empty(), "failed handshakes: {failures:#?}");
    for retired in ["prod-root-ca", "prod-root-ca-1"] {
        ensure!(
            secrets.get_opt(retired).await?.is_none(),
            "the retired generated root {retired}'s key is deleted once nobody trusts it"
        );
    }
    drop(operator);
    Ok(())
}
