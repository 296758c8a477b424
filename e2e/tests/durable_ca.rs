//! The CA's decisions rest on durable facts, on members without istiod
//! (each phase is done once `cacerts` is). Through every event below, no
//! member's intermediate ever chains to a root another member's bundle
//! lacks, sampled every 100 ms:
//!
//! - the operator restarts with a Ready federation: nothing is written in
//!   any member (watched), no TokenRequest is made (the API servers' own
//!   count), and `Ready` holds at every sample;
//! - the operator dies between creating the next root's Secret and
//!   recording it: the restarted operator adopts that Secret (no second
//!   root, no "created concurrently" forever);
//! - the operator restarts every 20 s through a rotation with a 20 s
//!   propagation and a 60 s drain: every restart leaves the waits running,
//!   and the rotation ends within its waits plus two restarts plus its work;
//! - the new root's Secret is deleted while a member is down in
//!   SignWithNew: that member cannot re-issue, so it holds the phase, with
//!   a reason, instead of counting as done on its bundle alone;
//! - the user's root Secret is renewed in place (same name, new key and
//!   certificate, as cert-manager does) while a member's API server hangs
//!   20 s: nothing signs with the new key before every member trusts it
//!   (rotation.rs repeats this with istiods and workload handshakes);
//! - the root Secret is missing: membership and remote secrets go on (a
//!   new member is claimed and wired to its peers);
//! - a member holding a `cacerts` meshfed did not create (nothing of it
//!   chains to the federation's roots): a rotation does not wait for it,
//!   names it in `status.ca.notWaitedFor`, and leaves its `cacerts` alone;
//! - a member's credentials Secret is swapped for another cluster's while
//!   the federation is Ready: the member runs again at once, on the new
//!   credentials, not at the resync (60 s here).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use e2e::cacerts::CacertsWatch;
use e2e::mesh::*;
use e2e::writes::{Writes, token_requests};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use meshfed::api::MeshFederation;
use meshfed::pki::RootCa;

const WAIT: Duration = Duration::from_secs(60);
const RESTART_EVERY: Duration = Duration::from_secs(20);
const RESYNC: Duration = Duration::from_secs(2);
const MEMBER_TIMEOUT: Duration = Duration::from_secs(3);

fn new_root() -> Result<RootCa> {
    Ok(RootCa::generate(
        "prod",
        Default::default(),
        Duration::from_secs(5 * 365 * 86400),
        jiff::Timestamp::now(),
    )?)
}

/// A root Secret in the operator's namespace, with `labels`.
fn root_secret(name: &str, root: &RootCa, labels: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(
            [("tls.crt", &root.cert_pem), ("tls.key", &root.key_pem)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn serial_of(root: &RootCa) -> String {
    root.info().serial.clone()
}

async fn root_serial(host: &Client, secret: &str) -> Result<String> {
    let s = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .get(secret)
        .await?;
    let pem = String::from_utf8(s.data.context("no data")?["tls.crt"].0.clone())?;
    Ok(meshfed::pki::inspect(&pem)?.serial)
}

async fn ca_status(host: &Client) -> Result<meshfed::api::CaStatus> {
    Ok(Api::<MeshFederation>::all(host.clone())
        .get("prod")
        .await?
        .status
        .unwrap_or_default()
        .ca
        .unwrap_or_default())
}

fn finished_at(f: &MeshFederation, serial: &str) -> bool {
    f.status
        .as_ref()
        .and_then(|s| s.ca.as_ref())
        .is_some_and(|ca| ca.phase.is_none() && ca.roots.len() == 1 && ca.roots[0].serial == serial)
}

async fn patch_ca(host: &Client, ca: serde_json::Value) -> Result<()> {
    Api::<MeshFederation>::all(host.clone())
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"ca": ca}})),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_root_rotation_survives_a_crash_restarts_and_a_lost_signer() -> Result<()> {
    let bed = operator_bed(3, RESYNC, MEMBER_TIMEOUT).await?;
    let fleet = &bed.fleet;
    let host = bed.host.clone();
    let mut operator = Some(bed.operator);
    let start = || start_operator(fleet.cluster(0), RESYNC, MEMBER_TIMEOUT);
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let mut fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-a"),
            member(fleet.cluster(2), "net-b"),
        ],
    );
    let (propagation, drain) = (Duration::from_secs(20), Duration::from_secs(60));
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "rootRotation": {"propagationPeriod": "20s", "drainPeriod": "60s"}
    }))?);
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    let first = root_serial(&host, "prod-root-ca").await?;
    let watch = CacertsWatch::start_seeing_all(clients.clone()).await?;
    let secrets = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE);

    // --- restarted with a Ready federation: nothing written in any member,
    // no token minted, Ready at every sample
    let writes = Writes::start(&clients);
    poll(WAIT, "every write watch listed", || async {
        Ok(writes.ready())
    })
    .await?;
    let tokens_before = futures::future::try_join_all(clients.iter().map(token_requests)).await?;
    drop(operator.take());
    operator = Some(start()?);
    let restarted = Instant::now();
    let mut heard_at = None;
    while heard_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(3)) {
        let fed = Api::<MeshFederation>::all(host.clone()).get("prod").await?;
        ensure!(
            has_condition(&fed, "Ready", "True"),
            "Ready held through the restart: {:?}",
            fed.status.map(|s| s.conditions)
        );
        let heard = operator
            .as_ref()
            .unwrap()
            .context
            .last_reconcile("prod")
            .is_some_and(|s| s.requests.len() == 3);
        if heard && heard_at.is_none() {
            heard_at = Some(Instant::now());
        }
        ensure!(
            restarted.elapsed() < WAIT,
            "the restarted operator never heard from every member"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens_after = futures::future::try_join_all(clients.iter().map(token_requests)).await?;
    ensure!(
        writes.count() == 0 && tokens_after == tokens_before,
        "a restart wrote {} objects in members and minted {:?} -> {:?} tokens",
        writes.count(),
        tokens_before,
        tokens_after
    );
    drop(writes);

    // --- killed after creating the next root's Secret, before recording it
    drop(operator.take());
    let planted = new_root()?;
    secrets
        .create(
            &PostParams::default(),
            &root_secret(
                "prod-root-ca-1",
                &planted,
                meshfed::render::managed_labels("prod"),
            ),
        )
        .await?;
    patch_ca(
        &host,
        serde_json::json!({"rootRotation": {"request": "r1"}}),
    )
    .await?;
    operator = Some(start()?);

    // --- restarted every 20 s: as often as the propagation wait, three times in the drain
    let started = Instant::now();
    let work = Duration::from_secs(20);
    let bound = propagation + drain + 2 * RESTART_EVERY + work;
    let mut restarts = 0;
    loop {
        let done = poll(RESTART_EVERY, "the rotation finished", || async {
            Ok(finished_at(
                &Api::<MeshFederation>::all(host.clone()).get("prod").await?,
                &serial_of(&planted),
            ))
        })
        .await;
        if done.is_ok() {
            break;
        }
        ensure!(
            started.elapsed() < bound,
            "with the operator restarted every {RESTART_EVERY:?} ({restarts} times), the rotation did not finish within {bound:?}: {:?}",
            ca_status(&host).await?
        );
        drop(operator.take());
        operator = Some(start()?);
        restarts += 1;
    }
    eprintln!(
        "FIGURE rotation with {restarts} restarts every {RESTART_EVERY:?}: {:?} (waits {:?})",
        started.elapsed(),
        propagation + drain
    );
    ensure!(
        secrets.get_opt("prod-root-ca-2").await?.is_none(),
        "the planted root was adopted, not replaced by another"
    );
    ensure!(
        secrets.get_opt("prod-root-ca").await?.is_none(),
        "the retired root's key is deleted"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.expect_rotation(3, &first, &serial_of(&planted))?;
    ensure!(watch.gaps().is_empty(), "trust gaps: {:#?}", watch.gaps());

    // --- the new root's key lost while member 2 is down in SignWithNew
    patch_ca(
        &host,
        serde_json::json!({"rootRotation": {"request": "r2", "propagationPeriod": "6s", "drainPeriod": "2s"}}),
    )
    .await?;
    poll(WAIT, "a new root", || async {
        Ok(secrets.get_opt("prod-root-ca-2").await?.is_some())
    })
    .await?;
    let second = root_serial(&host, "prod-root-ca-2").await?;
    poll(
        WAIT,
        "TrustBoth settled, heard from every member",
        || async {
            let ca = ca_status(&host).await?;
            let heard = operator
                .as_ref()
                .unwrap()
                .context
                .last_reconcile("prod")
                .is_some_and(|s| s.requests.len() == 3);
            Ok(ca.phase.as_deref() == Some("TrustBoth") && ca.next_phase_at.is_some() && heard)
        },
    )
    .await?;
    fleet.cluster(2).pause_apiserver()?;
    poll(WAIT, "members 0 and 1 signed by the new root", || async {
        let latest = watch.latest();
        Ok([0, 1]
            .iter()
            .all(|i| latest.get(i).is_some_and(|s| s.1 == second)))
    })
    .await?;
    let member2 = fleet.cluster(2).name().to_string();
    // The status follows the members' reports: wait until it says only
    // member 2 is behind before taking its way to catch up away.
    poll(WAIT, "only member 2 behind in SignWithNew", || async {
        let ca = ca_status(&host).await?;
        Ok(ca.phase.as_deref() == Some("SignWithNew") && ca.waiting_for == [member2.clone()])
    })
    .await?;
    secrets
        .delete("prod-root-ca-2", &Default::default())
        .await?;
    // A run that took the key before it was lost may sign with it, which is
    // no harm; what is tested is a run that cannot have it. Once the status
    // says the signer is gone, the workers hold the loss (they are handed
    // their input before the status is written); a run that started
    // earlier ends within two member timeouts against the paused server.
    wait_for_federation(&host, "prod", WAIT, "the signer's loss seen", |f| {
        // Mid-rotation the lost signer is waited out, not a person's to fix.
        condition(f, "CertificatesReady")
            .is_some_and(|c| c.reason == "IntermediatesWaitForRotation")
    })
    .await?;
    tokio::time::sleep(2 * MEMBER_TIMEOUT + Duration::from_secs(1)).await;
    fleet.cluster(2).resume_apiserver()?;
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(10) {
        let ca = ca_status(&host).await?;
        ensure!(
            ca.phase.as_deref() == Some("SignWithNew") && ca.waiting_for == [member2.clone()],
            "member 2 could not re-issue, so it holds SignWithNew: {ca:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fed = Api::<MeshFederation>::all(host.clone()).get("prod").await?;
    let error = fed
        .status
        .iter()
        .flat_map(|s| s.members.iter())
        .find(|m| m.name == member2)
        .and_then(|m| m.last_error.clone())
        .unwrap_or_default();
    ensure!(
        error.contains("does not chain to the signing root"),
        "member 2 says why it holds the phase: {error:?}"
    );
    ensure!(watch.gaps().is_empty(), "trust gaps: {:#?}", watch.gaps());
    drop(operator);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_claim_or_a_root_renewed_in_place_or_missing_breaks_nothing_else() -> Result<()>
{
    let fleet = e2e::Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    prepare_host(&fleet).await?;
    let host = fleet.cluster(0).client();
    // A long resync: what happens below must not wait for it.
    let operator = start_operator(
        fleet.cluster(0),
        Duration::from_secs(60),
        Duration::from_secs(3),
    )?;
    let secrets = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE);
    let r1 = new_root()?;
    secrets
        .create(
            &PostParams::default(),
            &root_secret("own-root", &r1, BTreeMap::new()),
        )
        .await?;
    let mut fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-b"),
        ],
    );
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "rootSecretRef": {"name": "own-root"},
        "rootRotation": {"propagationPeriod": "2s", "drainPeriod": "2s"}
    }))?);
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;

    // --- member 1's claim rewritten to name another federation
    let member1 = fleet.cluster(1);
    poll(WAIT, "member 1's cluster on record", || async {
        let record = Api::<ConfigMap>::namespaced(host.clone(), OPERATOR_NAMESPACE)
            .get_opt("meshfed-clusters-prod")
            .await?;
        Ok(record
            .and_then(|r| r.data)
            .is_some_and(|d| d.contains_key(member1.name())))
    })
    .await?;
    let claims = Api::<ConfigMap>::namespaced(member1.client(), "istio-system");
    let remote_secret = format!("istio-remote-secret-{}", member1.name());
    let peer_secrets = Api::<Secret>::namespaced(fleet.cluster(0).client(), "istio-system");
    let peer_secret_uid = peer_secrets.get(&remote_secret).await?.metadata.uid;
    claims
        .patch(
            "meshfed-cluster-claim",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"data": {"federation": "other", "member": "intruder"}}),
            ),
        )
        .await?;
    let tampered = Instant::now();
    let mut repaired = None;
    while tampered.elapsed() < Duration::from_secs(5) {
        let claim = claims
            .get("meshfed-cluster-claim")
            .await?
            .data
            .unwrap_or_default();
        if repaired.is_none() && claim.get("federation").map(String::as_str) == Some("prod") {
            repaired = Some(tampered.elapsed());
        }
        let uid = peer_secrets
            .get_opt(&remote_secret)
            .await?
            .and_then(|s| s.metadata.uid);
        ensure!(
            uid == peer_secret_uid,
            "member 0's remote secret for member 1 was removed or replaced"
        );
        let fed = Api::<MeshFederation>::all(host.clone()).get("prod").await?;
        ensure!(
            condition(&fed, "ClustersClaimed").is_none_or(|c| c.status != "False"),
            "the tampered claim was obeyed: {:?}",
            condition(&fed, "ClustersClaimed")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let repaired = repaired.context("the claim was not written back")?;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(host.clone(), "default")
        .list(&Default::default())
        .await?;
    ensure!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ClaimRepaired")
                && e.type_.as_deref() == Some("Warning")),
        "a Warning Event says the claim was repaired"
    );
    eprintln!("FIGURE tampered claim written back in {repaired:?}");

    let clients: Vec<Client> = fleet.clusters()[..2].iter().map(|c| c.client()).collect();
    let watch = CacertsWatch::start_seeing_all(clients).await?;

    // --- renewed in place while member 1's API server hangs for 20 s
    fleet.cluster(1).pause_apiserver()?;
    let paused = Instant::now();
    let r2 = new_root()?;
    let mut renewed = root_secret("own-root", &r2, BTreeMap::new());
    renewed.metadata.resource_version = secrets.get("own-root").await?.metadata.resource_version;
    secrets
        .replace("own-root", &PostParams::default(), &renewed)
        .await?;
    poll(WAIT, "TrustBoth", || async {
        Ok(ca_status(&host).await?.phase.as_deref() == Some("TrustBoth"))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(paused.elapsed())).await;
    fleet.cluster(1).resume_apiserver()?;
    wait_for_federation(
        &host,
        "prod",
        WAIT,
        "the rotation to the renewed root",
        |f| finished_at(f, &serial_of(&r2)),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(watch.gaps().is_empty(), "trust gaps: {:#?}", watch.gaps());
    watch.expect_rotation(2, &serial_of(&r1), &serial_of(&r2))?;

    // --- the root Secret missing: a new member still joins its peers
    secrets.delete("own-root", &Default::default()).await?;
    wait_for_federation(
        &host,
        "prod",
        WAIT,
        "CertificatesReady=False naming the Secret",
        |f| {
            condition(f, "CertificatesReady")
                .is_some_and(|c| c.status == "False" && c.message.contains("own-root"))
        },
    )
    .await?;
    let newcomer = fleet.cluster(2);
    fed.spec.members.push(member(newcomer, "net-c"));
    apply_federation(&host, &fed).await?;
    let remote_secret = format!("istio-remote-secret-{}", newcomer.name());
    poll(
        WAIT,
        "the new member claimed and wired to its peers",
        || async {
            let claimed = Api::<ConfigMap>::namespaced(newcomer.client(), "istio-system")
                .get_opt("meshfed-cluster-claim")
                .await?
                .is_some();
            let wired = Api::<Secret>::namespaced(fleet.cluster(0).client(), "istio-system")
                .get_opt(&remote_secret)
                .await?
                .is_some();
            Ok(claimed && wired)
        },
    )
    .await?;

    // --- its credentials swapped for member 1's cluster while every member
    // is Ready (no run is due before the 60 s resync): refused at once
    secrets
        .create(
            &PostParams::default(),
            &root_secret("own-root", &r2, BTreeMap::new()),
        )
        .await?;
    wait_for_federation(&host, "prod", WAIT, "Ready with the root back", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let swapped = Instant::now();
    store_kubeconfig(
        &host,
        &credentials_secret_name(newcomer),
        fleet.cluster(1).kubeconfig_yaml(),
    )
    .await?;
    wait_for_federation(
        &host,
        "prod",
        Duration::from_secs(3),
        "ClustersClaimed=False",
        |f| condition(f, "ClustersClaimed").is_some_and(|c| c.status == "False"),
    )
    .await?;
    eprintln!(
        "FIGURE credentials swap noticed in {:?} (resync 60 s)",
        swapped.elapsed()
    );
    drop(operator);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_foreign_cacerts_does_not_hold_a_rotation() -> Result<()> {
    let bed = operator_bed(2, RESYNC, MEMBER_TIMEOUT).await?;
    let host = bed.host.clone();
    let other = bed.fleet.cluster(1);
    // Istio installed by hand there, with a CA of its own.
    let own = new_root()?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(other.client())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "istio-system"}}))?,
        )
        .await?;
    let cacerts: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "cacerts"},
        "stringData": {
            "ca-cert.pem": own.cert_pem, "ca-key.pem": own.key_pem,
            "root-cert.pem": own.cert_pem, "cert-chain.pem": own.cert_pem,
        },
    }))?;
    let foreign = Api::<Secret>::namespaced(other.client(), "istio-system");
    foreign.create(&PostParams::default(), &cacerts).await?;
    let before = foreign.get("cacerts").await?.data;
    let mut fed = federation(
        "prod",
        vec![
            local_member(bed.fleet.cluster(0), "net-a"),
            member(other, "net-b"),
        ],
    );
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "rootRotation": {"propagationPeriod": "1s", "drainPeriod": "1s"}
    }))?);
    apply_federation(&host, &fed).await?;
    wait_for_federation(
        &host,
        "prod",
        WAIT,
        "member 1's foreign cacerts reported",
        |f| {
            condition(f, "CertificatesReady").is_some_and(|c| {
                c.status == "False" && c.message.contains("not created by meshfed")
            })
        },
    )
    .await?;
    let first = root_serial(&host, "prod-root-ca").await?;
    patch_ca(
        &host,
        serde_json::json!({"rootRotation": {"request": "r1"}}),
    )
    .await?;
    let mut named = false;
    let finished = wait_for_federation(
        &host,
        "prod",
        WAIT,
        "the rotation finished without member 1",
        |f| {
            let ca = f
                .status
                .as_ref()
                .and_then(|s| s.ca.clone())
                .unwrap_or_default();
            ca.phase.is_none() && ca.roots.len() == 1 && ca.roots[0].serial != first
        },
    );
    let watching = async {
        loop {
            let ca = ca_status(&host).await?;
            if ca.phase.is_some()
                && ca.not_waited_for == [other.name().to_string()]
                && ca.waiting_for.iter().all(|m| m != other.name())
            {
                named = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if named {
                return anyhow::Ok(());
            }
        }
    };
    let (done, seen) = tokio::join!(finished, tokio::time::timeout(WAIT, watching));
    done?;
    ensure!(
        seen.is_ok_and(|r| r.is_ok()),
        "status.ca named member 1 as not waited for"
    );
    ensure!(
        foreign.get("cacerts").await?.data == before,
        "a cacerts meshfed did not create stays byte-identical"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_under_revoke_is_trusted_nowhere_once_the_rotation_ends() -> Result<()> {
    use e2e::workload::{Workload, handshake, roots, sign_with_cacerts};
    let bed = operator_bed(3, RESYNC, MEMBER_TIMEOUT).await?;
    let (host, fleet) = (&bed.host, &bed.fleet);
    let mut fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-a"),
            member(fleet.cluster(2), "net-b"),
        ],
    );
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "onRemoval": "Revoke",
        "rootRotation": {"propagationPeriod": "3s", "drainPeriod": "3s"}
    }))?);
    apply_federation(host, &fed).await?;
    wait_for_federation(host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    let first = root_serial(host, "prod-root-ca").await?;
    let cacerts = |i: usize| {
        let api = Api::<Secret>::namespaced(fleet.cluster(i).client(), "istio-system");
        async move { anyhow::Ok(api.get("cacerts").await?) }
    };
    let bundle = |s: &Secret| -> Result<Vec<_>> {
        let pem = s
            .data
            .as_ref()
            .and_then(|d| d.get("root-cert.pem"))
            .context("no root-cert.pem")?;
        roots(std::str::from_utf8(&pem.0)?)
    };
    let id = |who: &str| format!("spiffe://cluster.local/ns/default/sa/{who}");
    // What the departed cluster keeps: a copy of its cacerts.
    let kept = cacerts(2).await?;
    let forged = sign_with_cacerts(&kept, &id("forged"))?;
    let trusted_by = |w: &Workload, peer: &Workload, peer_roots: &[_]| {
        let (w, peer, peer_roots) = (w.clone(), peer.clone(), peer_roots.to_vec());
        async move { handshake(&w, &peer_roots, &peer, &peer_roots).await.is_ok() }
    };
    let a = cacerts(0).await?;
    let a_leaf = sign_with_cacerts(&a, &id("a"))?;
    ensure!(
        trusted_by(&forged, &a_leaf, &bundle(&a)?).await,
        "before it leaves, a certificate from its intermediate is trusted (else the test cannot fail)"
    );

    let watch =
        CacertsWatch::start_seeing_all(vec![fleet.cluster(0).client(), fleet.cluster(1).client()])
            .await?;
    fed.spec
        .members
        .retain(|m| m.name != fleet.cluster(2).name());
    apply_federation(host, &fed).await?;
    let left = Instant::now();
    let kept_serial = e2e::cacerts::intermediate_serial(&kept)?;
    wait_for_federation(host, "prod", WAIT, "the kept intermediate listed", |f| {
        f.status
            .as_ref()
            .and_then(|s| s.ca.as_ref())
            .is_some_and(|ca| {
                ca.departed_intermediates
                    .iter()
                    .any(|d| d.serial == kept_serial)
            })
    })
    .await?;
    let rotated = wait_for_federation(host, "prod", WAIT, "a rotation started and finished", |f| {
        f.status
            .as_ref()
            .and_then(|s| s.ca.as_ref())
            .is_some_and(|ca| {
                ca.phase.is_none()
                    && ca.roots.len() == 1
                    && ca.roots[0].serial != first
                    && ca.departed_intermediates.is_empty()
            })
    })
    .await?;
    eprintln!(
        "FIGURE departed member distrusted (rotation under Revoke, periods 3 s + 3 s) {:?} after it left",
        left.elapsed()
    );
    let new_root = rotated.status.unwrap().ca.unwrap().roots[0].serial.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    watch.expect_rotation(2, &first, &new_root)?;
    ensure!(
        watch.gaps().is_empty(),
        "trust gaps between the members that stay: {:#?}",
        watch.gaps()
    );
    let (a, b) = (cacerts(0).await?, cacerts(1).await?);
    let (a_leaf, b_leaf) = (
        sign_with_cacerts(&a, &id("a"))?,
        sign_with_cacerts(&b, &id("b"))?,
    );
    ensure!(
        trusted_by(&a_leaf, &b_leaf, &bundle(&b)?).await,
        "a and b trust each other"
    );
    for (name, peer, s) in [("a", &a_leaf, &a), ("b", &b_leaf, &b)] {
        ensure!(
            !trusted_by(&forged, peer, &bundle(s)?).await,
            "{name} still trusts a certificate from the departed member's intermediate"
        );
    }
    ensure!(
        Api::<Secret>::namespaced(fleet.cluster(2).client(), "istio-system")
            .get_opt("cacerts")
            .await?
            .is_none(),
        "Revoke removes cacerts from the departed cluster, as Delete does"
    );
    Ok(())
}
