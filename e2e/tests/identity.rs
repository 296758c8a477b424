//! A member is its cluster: a renamed member or a recreated reader keeps
//! every peer's token working, and a cluster serves one member of one
//! federation (a later claim is refused and writes nothing there).
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use e2e::Fleet;
use e2e::mesh::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use meshfed::api::MeshFederation;

const WAIT: Duration = Duration::from_secs(60);
/// How long kube-apiserver caches a successful token authentication.
const AUTH_CACHE: Duration = Duration::from_secs(11);

fn ready(f: &MeshFederation) -> bool {
    has_condition(f, "Ready", "True")
}

fn member_names(f: &MeshFederation) -> Vec<String> {
    let mut names: Vec<String> = f
        .status
        .iter()
        .flat_map(|s| s.members.iter().map(|m| m.name.clone()))
        .collect();
    names.sort();
    names
}

/// Every remote secret in every member, used as istiod uses it: its
/// kubeconfig lists pods in the peer. `members` pairs clients with names.
async fn peer_tokens_work(members: &[(Client, String)]) -> Result<()> {
    for (client, name) in members {
        let secrets = Api::<Secret>::namespaced(client.clone(), "istio-system");
        for (_, peer) in members.iter().filter(|(_, p)| p != name) {
            let secret = secrets.get(&format!("istio-remote-secret-{peer}")).await?;
            let yaml = String::from_utf8(secret.data.unwrap()[peer].0.clone())?;
            let config = Config::from_custom_kubeconfig(
                Kubeconfig::from_yaml(&yaml)?,
                &KubeConfigOptions::default(),
            )
            .await?;
            let remote = Client::try_from(config)?;
            Api::<Pod>::all(remote)
                .list(&ListParams::default().limit(1))
                .await
                .map_err(|e| anyhow::anyhow!("{name}'s secret for {peer}: {e}"))?;
        }
    }
    Ok(())
}

async fn kube_system_uid(c: &Client) -> Result<String> {
    Ok(Api::<Namespace>::all(c.clone())
        .get("kube-system")
        .await?
        .uid()
        .unwrap())
}

async fn resource_version<K>(api: &Api<K>, name: &str) -> Result<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .get(name)
        .await?
        .meta()
        .resource_version
        .clone()
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_reader_or_a_renamed_member_keeps_peer_tokens_working() -> Result<()> {
    let bed = operator_bed(3, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (fleet, host) = (&bed.fleet, bed.host.clone());
    let mut members = vec![
        local_member(fleet.cluster(0), "net-a"),
        member(fleet.cluster(1), "net-a"),
        member(fleet.cluster(2), "net-b"),
    ];
    apply_federation(&host, &federation("prod", members.clone())).await?;
    let status = wait_for_federation(&host, "prod", WAIT, "Ready", ready).await?;
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    for (m, c) in status.status.unwrap().members.iter().zip(&clients) {
        assert_eq!(
            m.cluster_id.as_deref(),
            Some(kube_system_uid(c).await?.as_str())
        );
    }
    let named = |names: &[&str]| -> Vec<(Client, String)> {
        clients
            .iter()
            .cloned()
            .zip(names.iter().map(|n| n.to_string()))
            .collect()
    };
    let original = [
        fleet.cluster(0).name(),
        fleet.cluster(1).name(),
        fleet.cluster(2).name(),
    ];
    peer_tokens_work(&named(&original)).await?;

    // The reader ServiceAccount deleted by hand: meshfed recreates it (new
    // UID, so every token of the old one is dead) and re-mints in every peer.
    let readers = Api::<ServiceAccount>::namespaced(clients[1].clone(), "istio-system");
    let old_uid = readers.get("meshfed-reader-prod").await?.uid();
    readers
        .delete("meshfed-reader-prod", &DeleteParams::default())
        .await?;
    poll(WAIT, "reader recreated", || async {
        Ok(readers
            .get_opt("meshfed-reader-prod")
            .await?
            .is_some_and(|sa| sa.uid() != old_uid))
    })
    .await?;
    // The API server caches a token's authentication for 10 s: look past it.
    tokio::time::sleep(AUTH_CACHE).await;
    poll(
        WAIT,
        "peers' tokens for the recreated reader work",
        || async { Ok(peer_tokens_work(&named(&original)).await.is_ok()) },
    )
    .await?;

    // cluster-2 renamed to "east" on the same cluster: once Ready, every
    // token works at once; the old name's cleanup must not touch the cluster.
    members[2].name = "east".into();
    apply_federation(&host, &federation("prod", members.clone())).await?;
    let renamed = wait_for_federation(&host, "prod", WAIT, "Ready as east", |f| {
        ready(f) && member_names(f).contains(&"east".to_string()) && member_names(f).len() == 3
    })
    .await?;
    assert!(!member_names(&renamed).contains(&original[2].to_string()));
    let now_named = [original[0], original[1], "east"];
    peer_tokens_work(&named(&now_named)).await?;
    let claim = Api::<ConfigMap>::namespaced(clients[2].clone(), "istio-system")
        .get("meshfed-cluster-claim")
        .await?;
    assert_eq!(claim.data.as_ref().unwrap()["member"], "east");
    for c in &clients[..2] {
        let stale = Api::<Secret>::namespaced(c.clone(), "istio-system")
            .get_opt(&format!("istio-remote-secret-{}", original[2]))
            .await?;
        assert!(stale.is_none(), "the old name's remote secret stays");
    }
    // Still true a few reconciles later, past the API server's token cache
    // (nothing was deleted behind the status).
    tokio::time::sleep(AUTH_CACHE).await;
    peer_tokens_work(&named(&now_named)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_belongs_to_one_member_of_one_federation() -> Result<()> {
    let bed = operator_bed(3, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (fleet, host) = (&bed.fleet, bed.host.clone());
    let (c1, c2) = (fleet.cluster(1), fleet.cluster(2));
    let owner = c1.name().to_string();
    let prod = vec![local_member(fleet.cluster(0), "net-a"), member(c1, "net-a")];
    apply_federation(&host, &federation("prod", prod.clone())).await?;
    wait_for_federation(&host, "prod", WAIT, "prod Ready", ready).await?;
    let client1 = c1.client();
    let cluster1 = kube_system_uid(&client1).await?;
    let secrets1 = Api::<Secret>::namespaced(client1.clone(), "istio-system");
    let claims1 = Api::<ConfigMap>::namespaced(client1.clone(), "istio-system");
    let cacerts_version = resource_version(&secrets1, "cacerts").await?;
    let claim_version = resource_version(&claims1, "meshfed-cluster-claim").await?;
    let namespace_version =
        resource_version(&Api::<Namespace>::all(client1.clone()), "istio-system").await?;

    // A second federation claims cluster-1 through a member of its own.
    let mut intruder = member(c1, "net-b");
    intruder.name = "intruder".into();
    apply_federation(
        &host,
        &federation("staging", vec![member(c2, "net-c"), intruder]),
    )
    .await?;
    let refused = wait_for_federation(&host, "staging", WAIT, "claim refused", |f| {
        has_condition(f, "ClustersClaimed", "False")
    })
    .await?;
    let message = &condition(&refused, "ClustersClaimed").unwrap().message;
    assert!(
        message.contains("intruder")
            && message.contains(&cluster1)
            && message.contains(&format!("member {owner} of federation prod")),
        "{message}"
    );
    // For a minute: the owner stays Ready and its cluster is not written to.
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let prod_now = Api::<MeshFederation>::all(host.clone()).get("prod").await?;
        ensure!(ready(&prod_now), "prod disturbed: {:?}", prod_now.status);
        ensure!(resource_version(&secrets1, "cacerts").await? == cacerts_version);
        ensure!(resource_version(&claims1, "meshfed-cluster-claim").await? == claim_version);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        resource_version(&Api::<Namespace>::all(client1.clone()), "istio-system").await?,
        namespace_version,
        "the network label was not touched"
    );
    let staging_objects = secrets1
        .list(&ListParams::default().labels("meshfed.io/federation=staging"))
        .await?;
    assert!(staging_objects.items.is_empty(), "staging wrote Secrets");
    assert!(
        Api::<ServiceAccount>::namespaced(client1.clone(), "istio-system")
            .get_opt("meshfed-reader-staging")
            .await?
            .is_none(),
        "staging created its reader in a cluster it does not own"
    );
    // Without the intruder, the two federations run side by side on disjoint
    // clusters, each Ready, each under its own field manager.
    let mut c2_alone = member(c2, "net-c");
    c2_alone.name = "solo".into();
    apply_federation(&host, &federation("staging", vec![c2_alone])).await?;
    wait_for_federation(&host, "staging", WAIT, "staging Ready on its own", ready).await?;
    wait_for_federation(&host, "prod", WAIT, "prod still Ready", ready).await?;
    let staging_cacerts = Api::<Secret>::namespaced(c2.client(), "istio-system")
        .get("cacerts")
        .await?;
    let managers: Vec<String> = staging_cacerts
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"meshfed-staging".to_string()),
        "{managers:?}"
    );
    assert_eq!(
        resource_version(&secrets1, "cacerts").await?,
        cacerts_version
    );
    Api::<MeshFederation>::all(host.clone())
        .delete("staging", &DeleteParams::default())
        .await?;
    poll(WAIT, "staging deleted", || async {
        Ok(Api::<MeshFederation>::all(host.clone())
            .get_opt("staging")
            .await?
            .is_none())
    })
    .await?;

    // A second member of the same federation on cluster-1.
    let mut dup = member(c1, "net-a");
    dup.name = "dup".into();
    let mut with_dup = prod.clone();
    with_dup.push(dup);
    apply_federation(&host, &federation("prod", with_dup)).await?;
    let refused = wait_for_federation(&host, "prod", WAIT, "dup refused, the others ready", |f| {
        has_condition(f, "ClustersClaimed", "False")
            && f.status.as_ref().is_some_and(|s| s.ready_members == 2)
    })
    .await?;
    let message = &condition(&refused, "ClustersClaimed").unwrap().message;
    assert!(
        message.contains("dup:") && message.contains(&format!("member {owner} of federation prod")),
        "{message}"
    );
    let st = refused.status.as_ref().unwrap();
    assert!(st.members.iter().any(|m| m.name == owner && m.ready));
    assert_eq!(st.ready_members, 2);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        resource_version(&secrets1, "cacerts").await?,
        cacerts_version
    );

    // dup leaves: its cleanup must leave cluster-1 (the owner's) intact.
    apply_federation(&host, &federation("prod", prod.clone())).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready without dup", |f| {
        ready(f) && member_names(f).len() == 2
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        resource_version(&secrets1, "cacerts").await?,
        cacerts_version
    );
    assert!(claims1.get_opt("meshfed-cluster-claim").await?.is_some());
    let both = [
        (
            fleet.cluster(0).client(),
            fleet.cluster(0).name().to_string(),
        ),
        (client1, owner),
    ];
    peer_tokens_work(&both).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_deleted_in_a_member_are_restored_within_seconds() -> Result<()> {
    // A resync of ten minutes: only the member watches can repair in time.
    let bed = operator_bed(2, Duration::from_secs(600), Duration::from_secs(3)).await?;
    let (fleet, host) = (&bed.fleet, bed.host.clone());
    let members = vec![
        local_member(fleet.cluster(0), "net-a"),
        member(fleet.cluster(1), "net-b"),
    ];
    apply_federation(&host, &federation("prod", members)).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", ready).await?;
    let member = fleet.cluster(1).client();
    let secrets = Api::<Secret>::namespaced(member.clone(), "istio-system");
    let remote_secret = format!("istio-remote-secret-{}", fleet.cluster(0).name());
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(member.clone());
    let bound = Duration::from_secs(5);

    for (what, uid) in [
        ("cacerts", secrets.get("cacerts").await?.uid()),
        (
            remote_secret.as_str(),
            secrets.get(&remote_secret).await?.uid(),
        ),
    ] {
        let started = Instant::now();
        secrets.delete(what, &DeleteParams::default()).await?;
        poll(bound, &format!("{what} restored"), || async {
            Ok(secrets.get_opt(what).await?.is_some_and(|s| s.uid() != uid))
        })
        .await?;
        eprintln!("{what} restored in {:?}", started.elapsed());
    }
    let uid = roles.get("meshfed-reader-prod").await?.uid();
    let started = Instant::now();
    roles
        .delete("meshfed-reader-prod", &DeleteParams::default())
        .await?;
    poll(bound, "reader ClusterRole restored", || async {
        Ok(roles
            .get_opt("meshfed-reader-prod")
            .await?
            .is_some_and(|r| r.uid() != uid))
    })
    .await?;
    eprintln!("ClusterRole restored in {:?}", started.elapsed());
    wait_for_federation(&host, "prod", WAIT, "Ready after repairs", ready).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_status_orphans_nothing_and_lost_credentials_are_reported() -> Result<()> {
    let fleet = Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let start = || {
        start_operator(
            fleet.cluster(0),
            Duration::from_secs(2),
            Duration::from_secs(3),
        )
    };
    let operator = start()?;
    let members = vec![
        local_member(fleet.cluster(0), "net-a"),
        member(fleet.cluster(1), "net-a"),
        member(fleet.cluster(2), "net-b"),
    ];
    apply_federation(&host, &federation("prod", members.clone())).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", ready).await?;

    // With the operator down, cluster-2 leaves and every status is wiped.
    drop(operator);
    apply_federation(&host, &federation("prod", members[..2].to_vec())).await?;
    let feds = Api::<MeshFederation>::all(host.clone());
    feds.patch_status(
        "prod",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": null})),
    )
    .await?;
    assert!(feds.get("prod").await?.status.is_none(), "status wiped");
    let _operator = start()?;
    wait_for_federation(&host, "prod", WAIT, "Ready with two members", |f| {
        ready(f) && member_names(f).len() == 2
    })
    .await?;
    let left = fleet.cluster(2);
    let selector = ListParams::default().labels("meshfed.io/federation=prod");
    let c2 = left.client();
    let orphans = [
        Api::<Secret>::namespaced(c2.clone(), "istio-system")
            .list(&selector)
            .await?
            .items
            .len(),
        Api::<ServiceAccount>::namespaced(c2.clone(), "istio-system")
            .list(&selector)
            .await?
            .items
            .len(),
        Api::<ConfigMap>::namespaced(c2.clone(), "istio-system")
            .list(&selector)
            .await?
            .items
            .len(),
        Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(c2.clone())
            .list(&selector)
            .await?
            .items
            .len(),
    ];
    // cacerts stays (the default onRemoval: Retain); nothing else does.
    assert_eq!(orphans, [1, 0, 0, 0], "objects left in the departed member");
    for c in [fleet.cluster(0).client(), fleet.cluster(1).client()] {
        let stale = Api::<Secret>::namespaced(c, "istio-system")
            .get_opt(&format!("istio-remote-secret-{}", left.name()))
            .await?;
        assert!(
            stale.is_none(),
            "peers keep a secret for the departed member"
        );
    }

    // cluster-1 leaves together with its credentials: reported, not counted
    // as cleaned. It also holds an object as a Managed control plane's
    // (labelled with its chart component), which the remedy must keep.
    let c1 = fleet.cluster(1).client();
    let installed: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "istio-installed", "namespace": "istio-system", "labels": {
            "app.kubernetes.io/managed-by": "meshfed",
            "meshfed.io/federation": "prod",
            "meshfed.io/component": "istiod",
        }},
    }))?;
    Api::<ConfigMap>::namespaced(c1.clone(), "istio-system")
        .create(&Default::default(), &installed)
        .await?;
    apply_federation(&host, &federation("prod", members[..1].to_vec())).await?;
    Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .delete(
            &credentials_secret_name(fleet.cluster(1)),
            &DeleteParams::default(),
        )
        .await?;
    wait_for_federation(&host, "prod", WAIT, "Ready with one member", |f| {
        ready(f) && member_names(f).len() == 1
    })
    .await?;
    let gone = fleet.cluster(1).name().to_string();
    let orphaned_note = || async {
        let events = Api::<k8s_openapi::api::events::v1::Event>::all(host.clone())
            .list(&ListParams::default())
            .await?;
        anyhow::Ok(events.items.into_iter().find_map(|e| {
            (e.reason.as_deref() == Some("MemberOrphaned") && e.type_.as_deref() == Some("Warning"))
                .then_some(e.note?)
                .filter(|n| n.contains(&gone))
        }))
    };
    poll(WAIT, "a MemberOrphaned warning names cluster-1", || async {
        Ok(orphaned_note().await?.is_some())
    })
    .await?;
    let note = orphaned_note().await?.expect("found above");
    run_orphan_remedy(fleet.cluster(1), &note).await?;
    let labelled = |kind: &str| format!("{kind} left: ");
    let cms = Api::<ConfigMap>::namespaced(c1.clone(), "istio-system")
        .list(&selector)
        .await?;
    let names: Vec<String> = cms.items.iter().map(|c| c.name_any()).collect();
    ensure!(
        names == ["istio-installed"],
        "{}{names:?}",
        labelled("ConfigMaps")
    );
    let secrets = Api::<Secret>::namespaced(c1.clone(), "istio-system")
        .list(&selector)
        .await?;
    let names: Vec<String> = secrets.items.iter().map(|c| c.name_any()).collect();
    ensure!(names == ["cacerts"], "{}{names:?}", labelled("Secrets"));
    let accounts = Api::<ServiceAccount>::namespaced(c1.clone(), "istio-system")
        .list(&selector)
        .await?;
    ensure!(
        accounts.items.is_empty(),
        "the reader's ServiceAccount stays"
    );
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(c1.clone())
        .list(&selector)
        .await?;
    let bindings = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(c1.clone())
        .list(&selector)
        .await?;
    ensure!(
        roles.items.is_empty() && bindings.items.is_empty(),
        "the reader's roles stay"
    );
    Ok(())
}

/// Runs, in `cluster`, every backticked `kubectl` command of a
/// MemberOrphaned note, as a user pasting it into a shell would.
async fn run_orphan_remedy(cluster: &e2e::Cluster, note: &str) -> Result<()> {
    let kubectl = e2e::fleet::tools::tools().await?.path("kubectl");
    let commands: Vec<&str> = note
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("kubectl "))
        .collect();
    ensure!(commands.len() == 2, "two commands in {note:?}");
    for command in commands {
        let line = format!(
            "{} --kubeconfig {} {}",
            kubectl.display(),
            cluster.kubeconfig_path().display(),
            command.trim_start_matches("kubectl ")
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()?;
        ensure!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
