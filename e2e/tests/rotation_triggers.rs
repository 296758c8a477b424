//! What starts a root rotation, on members without istiod (nothing there
//! distributes roots, so each phase is done once `cacerts` is): a lost
//! generated root, and `rootSecretRef` naming another root. Each time, every member's `cacerts`
//! goes through exactly (old), (old + new, signed by old), (old + new,
//! signed by new), (new), each bundle a superset or subset of the last.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use e2e::mesh::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use meshfed::api::MeshFederation;
use meshfed::pki::inspect_bundle;

const WAIT: Duration = Duration::from_secs(60);

/// (serials of root-cert.pem, serial of the root the intermediate chains to)
type CaState = (Vec<String>, String);

fn state_of(secret: &Secret) -> Option<CaState> {
    let text = |k: &str| String::from_utf8(secret.data.as_ref()?.get(k)?.0.clone()).ok();
    let roots = inspect_bundle(&text("root-cert.pem")?).ok()?;
    let chain = inspect_bundle(&text("cert-chain.pem")?).ok()?;
    Some((
        roots.into_iter().map(|r| r.serial).collect(),
        chain.get(1)?.serial.clone(),
    ))
}

/// Records every distinct `cacerts` state of each member until dropped.
struct Watch {
    seen: Arc<Mutex<BTreeMap<usize, Vec<CaState>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(clients: Vec<Client>) -> Self {
        let seen: Arc<Mutex<BTreeMap<usize, Vec<CaState>>>> = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    for (i, c) in clients.iter().enumerate() {
                        let api = Api::<Secret>::namespaced(c.clone(), "istio-system");
                        if let Ok(Some(s)) = api.get_opt("cacerts").await
                            && let Some(state) = state_of(&s)
                        {
                            let mut seen = seen.lock().unwrap();
                            let states = seen.entry(i).or_default();
                            if states.last() != Some(&state) {
                                states.push(state);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Watch { seen, task }
    }

    /// The states each member went through since the last call.
    fn take(&self) -> BTreeMap<usize, Vec<CaState>> {
        let mut seen = self.seen.lock().unwrap();
        let out = seen.clone();
        for states in seen.values_mut() {
            let last = states.pop();
            states.clear();
            states.extend(last);
        }
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
async fn rotated(host: &Client, watch: &Watch, members: usize, old: &str, new: &str) -> Result<()> {
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
    let seen = watch.take();
    let (o, n) = (old.to_string(), new.to_string());
    let expected: Vec<CaState> = vec![
        (vec![o.clone()], o.clone()),
        (vec![o.clone(), n.clone()], o.clone()),
        (vec![o.clone(), n.clone()], n.clone()),
        (vec![n.clone()], n.clone()),
    ];
    for i in 0..members {
        ensure!(
            seen.get(&i) == Some(&expected),
            "member {i}: {:#?}",
            seen.get(&i)
        );
    }
    Ok(())
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
    let watch = Watch::start(clients.clone());
    poll(WAIT, "both members seen", || async {
        Ok(watch.seen.lock().unwrap().len() == 2)
    })
    .await?;

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
