//! What starts a root rotation, on members without istiod (nothing there
//! distributes roots, so each phase is done once `cacerts` is): a lost
//! generated root, and `rootSecretRef` naming another root. Each time, every member's `cacerts`
//! goes through exactly (old), (old + new, signed by old), (old + new,
//! signed by new), (new), each bundle a superset or subset of the last.
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use e2e::cacerts::CacertsWatch;
use e2e::mesh::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use meshfed::api::MeshFederation;

const WAIT: Duration = Duration::from_secs(60);

fn serial_of(pem: &str) -> String {
    meshfed::pki::inspect(pem).unwrap().serial
}

async fn root_serial(host: &Client, secret: &str) -> Result<String> {
    let s = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .get(secret)
        .await?;
    Ok(serial_of(&String::from_utf8(
        s.data.context("no data")?["tls.crt"].0.clone(),
    )?))
}

/// Waits for the rotation to finish, then checks every member went
/// exactly through the four states from `old` to `new`.
async fn rotated(
    host: &Client,
    watch: &CacertsWatch,
    members: usize,
    old: &str,
    new: &str,
) -> Result<()> {
    wait_for_federation(host, "prod", WAIT, "rotation finished", |f| {
        f.status
            .as_ref()
            .and_then(|s| s.ca.as_ref())
            .is_some_and(|ca| {
                ca.phase.is_none() && ca.roots.len() == 1 && ca.roots[0].serial == new
            })
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(watch.gaps().is_empty(), "trust gaps: {:#?}", watch.gaps());
    watch.expect_rotation(members, old, new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_replaced_roots_rotate_through_every_phase() -> Result<()> {
    let bed = operator_bed(2, Duration::from_secs(1), Duration::from_secs(3)).await?;
    let host = bed.host.clone();
    let clients: Vec<Client> = bed.fleet.clusters().iter().map(|c| c.client()).collect();
    let mut fed = federation(
        "prod",
        vec![
            local_member(bed.fleet.cluster(0), "net-a"),
            member(bed.fleet.cluster(1), "net-b"),
        ],
    );
    fed.spec.ca = Some(serde_json::from_value(serde_json::json!({
        "rootRotation": {"propagationPeriod": "1s", "drainPeriod": "2s"}
    }))?);
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    let first = root_serial(&host, "prod-root-ca").await?;
    let watch = CacertsWatch::start_seeing_all(clients.clone()).await?;

    // --- the generated root's Secret is lost: never silently a new trust root
    let secrets = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE);
    secrets.delete("prod-root-ca", &Default::default()).await?;
    poll(WAIT, "a replacement root", || async {
        Ok(secrets.get_opt("prod-root-ca-1").await?.is_some())
    })
    .await?;
    let second = root_serial(&host, "prod-root-ca-1").await?;
    rotated(&host, &watch, 2, &first, &second).await?;
    let events = Api::<Event>::namespaced(host.clone(), "default")
        .list(&ListParams::default())
        .await?;
    ensure!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("RootLost")
                && e.type_.as_deref() == Some("Warning")),
        "a Warning Event says the root was lost"
    );

    // --- rootSecretRef names the user's own root
    let own = meshfed::pki::RootCa::generate(
        "own",
        Default::default(),
        Duration::from_secs(5 * 365 * 86400),
        jiff::Timestamp::now(),
    )?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("own-root".into()),
            ..Default::default()
        },
        data: Some(
            [
                ("tls.crt", own.cert_pem.clone()),
                ("tls.key", own.key_pem.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    Api::<MeshFederation>::all(host.clone())
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"spec": {"ca": {"rootSecretRef": {"name": "own-root"}}}}),
            ),
        )
        .await?;
    rotated(&host, &watch, 2, &second, &serial_of(&own.cert_pem)).await?;
    ensure!(
        secrets.get_opt("prod-root-ca-1").await?.is_none(),
        "a generated root nobody trusts any more is deleted"
    );
    ensure!(
        secrets.get_opt("own-root").await?.is_some(),
        "the user's root Secret is never deleted"
    );
    Ok(())
}
