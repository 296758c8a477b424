//! meshfed's real consumer: Istio's own control plane. A 3-member federation
//! (two networks) is wired by meshfed, then one real istiod (pilot-discovery,
//! built from istio.io/istio, see docs/istio.md) runs per member and we ask
//! istiod itself, through its debug endpoints and its CA, whether meshfed's
//! remote secrets and cacerts work.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use e2e::Fleet;
use e2e::istiod::{Istiod, IstiodOptions, base_crds, install_base_crds, istio, service_with_pod};
use e2e::mesh::*;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use meshfed::api::MeshFederation;

const FED: &str = "prod";
const MESH_ID: &str = "mesh1";
const WAIT: Duration = Duration::from_secs(60);
const NETWORKS: [&str; 3] = ["net-a", "net-a", "net-b"];
/// How long a member's API server stays down. istiod's informers retry with
/// client-go's reflector backoff (0.8 s doubling, cap 30 s, jitter 1.0), so
/// the longer the outage, the longer recovery takes after it ends: after
/// 15 s outages we saw 21-65 s, which is why the outage is kept short.
const OUTAGE: Duration = Duration::from_secs(8);

fn ready(f: &MeshFederation) -> bool {
    has_condition(f, "Ready", "True")
}

fn secret_bytes(s: &Secret, key: &str) -> Vec<u8> {
    s.data.as_ref().unwrap()[key].0.clone()
}

fn secret_text(s: &Secret, key: &str) -> String {
    String::from_utf8(secret_bytes(s, key)).unwrap()
}

/// DER of every certificate in a PEM bundle.
fn ders(pem_text: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes())
        .map(|p| p.unwrap().contents)
        .collect()
}

/// The claims of a JWT, unverified.
fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

fn reader_subject() -> String {
    format!("system:serviceaccount:istio-system:meshfed-reader-{FED}")
}

/// Whether `user` may `verb` `resource` cluster-wide in `client`'s cluster.
async fn allowed(client: &Client, user: &str, verb: &str, resource: &str) -> Result<bool> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                resource: Some(resource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let out = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(out.status.is_some_and(|s| s.allowed))
}

/// What the test adds when meshfed's reader lacks Secrets: get/list/watch on
/// Secrets cluster-wide for meshfed's reader ServiceAccount, the rule Istio's
/// own `istio-reader-clusterrole-istio-system` has.
async fn grant_secret_read(client: &Client) -> Result<()> {
    let name = "meshfed-e2e-istiod-secrets";
    let params = PatchParams::apply("meshfed-e2e-istiod").force();
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&role))
        .await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: format!("meshfed-reader-{FED}"),
            namespace: Some("istio-system".into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(name, &params, &Patch::Apply(&binding))
        .await?;
    Ok(())
}

/// Whether a TLS handshake with `addr` succeeds when only `roots` are
/// trusted and the name `istiod.istio-system.svc` is expected: any HTTP
/// answer means istiod's serving chain verified against `roots`.
async fn tls_verifies(addr: std::net::SocketAddr, roots: Vec<Vec<u8>>) -> Result<()> {
    let mut config = kube::Config::new(format!("https://{addr}").parse()?);
    config.root_cert = Some(roots);
    config.tls_server_name = Some("istiod.istio-system.svc".into());
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_secs(5));
    let client = Client::try_from(config)?;
    let request = http::Request::get("/ready").body(kube::client::Body::empty())?;
    client.send(request).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_istiod_consumes_meshfed_federation() -> Result<()> {
    // The Istio build (cold: minutes) is not part of the measured test time.
    let istio = istio().await?;
    base_crds().await?;
    let mut bed = Bed::start().await?;
    start_istiods_checking_the_readers_rights(&mut bed).await?;
    every_peer_is_a_synced_remote_cluster(&bed).await?;
    peers_services_reach_every_registry(&bed).await?;
    istiods_ca_is_the_federations(&bed).await?;
    istioctl_and_meshfed_remote_secrets_compared(&bed, &istio).await?;
    no_istiod_was_denied_anything(&bed).await?;
    a_forced_token_refresh_switches_every_istiod(&bed).await?;
    a_stopped_member_as_istiod_sees_it(&mut bed).await?;
    bed.report();
    Ok(())
}

/// Three members on two networks wired by meshfed (Ready), Istio's CRDs in
/// each, and (once started) one real istiod per member.
struct Bed {
    fleet: Fleet,
    _logs: e2e::fleet::LogTailGuard,
    operator: Option<RunningOperator>,
    ids: Vec<String>,
    clients: Vec<Client>,
    host: Client,
    istiods: Vec<Istiod>,
    /// Whether meshfed's reader may list Secrets without a test-side grant.
    reader_lists_secrets: bool,
    t0: Instant,
    timeline: std::cell::RefCell<Vec<(String, Duration)>>,
}

impl Bed {
    async fn start() -> Result<Self> {
        let t0 = Instant::now();
        let fleet = Fleet::start(3).await?;
        let _logs = fleet.log_guard();
        let ids: Vec<String> = fleet.clusters().iter().map(|c| c.name().into()).collect();
        let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
        let host = clients[0].clone();
        let bed = Self {
            operator: None,
            ids,
            host: host.clone(),
            clients,
            istiods: Vec::new(),
            reader_lists_secrets: true,
            t0,
            timeline: Default::default(),
            _logs,
            fleet,
        };
        bed.mark("fleet started");
        prepare_host(&bed.fleet).await?;
        let operator = start_operator(
            bed.fleet.cluster(0),
            Duration::from_secs(2),
            Duration::from_secs(3),
        )?;
        let members = vec![
            local_member(bed.fleet.cluster(0), NETWORKS[0]),
            member(bed.fleet.cluster(1), NETWORKS[1]),
            member(bed.fleet.cluster(2), NETWORKS[2]),
        ];
        let mut fed = federation(FED, members);
        // Replaced tokens are revoked 5 s after the last peer took the new one.
        fed.spec.remote_secrets = Some(meshfed::api::RemoteSecretsSpec {
            revoke_after: Some("5s".parse()?),
            ..Default::default()
        });
        apply_federation(&host, &fed).await?;
        wait_for_federation(&host, FED, WAIT, "Ready", ready).await?;
        bed.mark("federation Ready");
        futures::future::try_join_all(bed.clients.iter().map(install_base_crds)).await?;
        bed.mark("Istio CRDs established on every member");
        Ok(Self {
            operator: Some(operator),
            ..bed
        })
    }

    fn mark(&self, what: &str) {
        self.timeline
            .borrow_mut()
            .push((what.to_string(), self.t0.elapsed()));
    }

    fn peers_of(&self, i: usize) -> Vec<&str> {
        self.ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| id.as_str())
            .collect()
    }

    fn options(&self, i: usize) -> IstiodOptions {
        let mut o = IstiodOptions::new(&self.ids[i], NETWORKS[i], MESH_ID);
        o.remote_cluster_timeout = Duration::from_secs(5);
        o
    }

    fn work(&self, i: usize) -> std::path::PathBuf {
        self.fleet.dir().join(format!("istiod-{}", self.ids[i]))
    }

    /// Each istiod's memory and the timeline, then everything stops.
    fn report(mut self) {
        for (i, istiod) in self.istiods.iter().enumerate() {
            eprintln!(
                "istiod {}: RSS {} MiB after {:?}",
                self.ids[i],
                istiod.rss_bytes() >> 20,
                istiod.uptime()
            );
        }
        eprintln!("timeline:");
        for (what, at) in self.timeline.borrow().iter() {
            eprintln!("  {:>7.1?}  {what}", at);
        }
        eprintln!("total {:?}", self.t0.elapsed());
        self.istiods.clear();
        self.operator.take();
    }
}

/// The service the registry phases look for.
const CATALOG: &str = "catalog.shop.svc.cluster.local";

/// meshfed's reader vs. what istiod watches in a remote cluster: istiod 0 first (with a test-side grant should the reader lack Secrets), then istiods 1 and 2.
async fn start_istiods_checking_the_readers_rights(bed: &mut Bed) -> Result<()> {
    let ids = &bed.ids;
    let clients = &bed.clients;
    let peers_of = |i: usize| bed.peers_of(i);
    let mut reader_lists_secrets = true;
    for c in bed.clients.iter() {
        reader_lists_secrets &= allowed(c, &reader_subject(), "list", "secrets").await?;
    }
    let istiod0 = Istiod::start_with(bed.fleet.cluster(0), bed.options(0), &bed.work(0)).await?;
    bed.mark("istiod cluster-0 ready");
    if reader_lists_secrets {
        eprintln!("meshfed's reader may list Secrets: no test-side grant needed");
    } else {
        // istiod's remote credentials controller (TLS secrets for gateways)
        // lists and watches Secrets cluster-wide in every remote cluster, and
        // a remote cluster counts as synced only when that informer syncs.
        // /ready can answer a moment before the status flips to timeout.
        let statuses = wait_some(
            Duration::from_secs(10),
            "peers reported timeout",
            || async {
                let st = istiod0.cluster_statuses().await?;
                Ok(peers_of(0)
                    .iter()
                    .all(|p| st.get(*p).is_some_and(|s| s == "timeout"))
                    .then_some(st))
            },
        )
        .await?;
        eprintln!(
            "FINDING: meshfed's reader cannot list Secrets; istiod {} reports {statuses:?} \
             after PILOT_REMOTE_CLUSTER_TIMEOUT (ready after {:?})",
            ids[0],
            istiod0.ready_after()
        );
        for peer in peers_of(0) {
            assert_eq!(statuses[peer], "timeout", "{statuses:?}");
        }
        let log = istiod0.log_text();
        let forbidden = format!(
            "User \"{}\" cannot list resource \"secrets\"",
            reader_subject()
        );
        assert!(
            log.contains(&forbidden),
            "istiod log names the missing rule"
        );
        let granted = Instant::now();
        for c in clients {
            grant_secret_read(c).await?;
        }
        istiod0
            .wait_synced(&peers_of(0), Duration::from_secs(90))
            .await?;
        eprintln!(
            "with Secrets get/list/watch granted to meshfed's reader, istiod {} went from \
             timeout to synced in {:?} without a restart",
            ids[0],
            granted.elapsed()
        );
        bed.mark("secret read granted; istiod cluster-0 synced");
    }
    let (work1, work2) = (bed.work(1), bed.work(2));
    let (istiod1, istiod2) = tokio::try_join!(
        Istiod::start_with(bed.fleet.cluster(1), bed.options(1), &work1),
        Istiod::start_with(bed.fleet.cluster(2), bed.options(2), &work2),
    )?;
    bed.istiods = vec![istiod0, istiod1, istiod2];
    bed.reader_lists_secrets = reader_lists_secrets;
    bed.mark("istiod cluster-1 and cluster-2 ready");
    Ok(())
}

/// Every peer is a synced remote cluster in every istiod, from meshfed's secret.
async fn every_peer_is_a_synced_remote_cluster(bed: &Bed) -> Result<()> {
    let ids = &bed.ids;
    let istiods = &bed.istiods;
    let peers_of = |i: usize| bed.peers_of(i);
    for (i, istiod) in istiods.iter().enumerate() {
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        istiod.wait_synced(&all, Duration::from_secs(30)).await?;
        let clusterz = istiod.clusterz().await?;
        eprintln!(
            "istiod {} (ready after {:?}, RSS {} MiB) clusterz: {clusterz:?}",
            ids[i],
            istiod.ready_after(),
            istiod.rss_bytes() >> 20
        );
        assert_eq!(clusterz.len(), 3, "{clusterz:?}");
        for rc in &clusterz {
            assert_eq!(rc.sync_status, "synced", "{rc:?}");
            let expected = if rc.id == ids[i] {
                String::new()
            } else {
                format!("istio-system/istio-remote-secret-{}", rc.id)
            };
            assert_eq!(rc.secret_name, expected, "{rc:?}");
        }
        let metrics = istiod.metrics().await?;
        for peer in peers_of(i) {
            let line = format!(
                "istiod_remote_cluster_sync_status{{cluster=\"{peer}\",cluster_type=\"remote\",status=\"synced\"}} 1"
            );
            assert!(metrics.contains(&line), "metric {line}");
        }
    }
    bed.mark("every istiod: every peer synced");
    Ok(())
}

/// A service in other members shows up in istiod's registry, per cluster and network.
async fn peers_services_reach_every_registry(bed: &Bed) -> Result<()> {
    let ids = &bed.ids;
    let clients = &bed.clients;
    let istiods = &bed.istiods;
    let (vip1, ip1) = service_with_pod(&clients[1], "shop", "catalog").await?;
    let (vip2, ip2) = service_with_pod(&clients[2], "shop", "catalog").await?;
    let host_name = CATALOG;
    poll(
        WAIT,
        "catalog in cluster-0's istiod with both endpoints",
        || async {
            let eps = istiods[0].endpoints().await?;
            Ok(eps.iter().filter(|e| e.hostname == host_name).count() == 2)
        },
    )
    .await?;
    let services = istiods[0].services().await?;
    let catalog = services
        .iter()
        .find(|s| s.hostname == host_name)
        .context("catalog in registryz")?;
    assert_eq!(catalog.namespace, "shop");
    assert_eq!(
        catalog.cluster_vips,
        BTreeMap::from([
            (ids[1].clone(), vec![vip1.clone()]),
            (ids[2].clone(), vec![vip2.clone()]),
        ]),
        "one VIP per cluster that has the service"
    );
    let mut eps: Vec<_> = istiods[0]
        .endpoints()
        .await?
        .into_iter()
        .filter(|e| e.hostname == host_name)
        .collect();
    eps.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    eprintln!("cluster-0's istiod sees catalog endpoints: {eps:#?}");
    for (ep, (cluster, ip, network)) in eps
        .iter()
        .zip([(&ids[1], &ip1, NETWORKS[1]), (&ids[2], &ip2, NETWORKS[2])])
    {
        assert_eq!(&ep.cluster, cluster);
        assert_eq!(ep.addresses, vec![ip.clone()]);
        assert_eq!(
            ep.network, network,
            "network from meshfed's istio-system label"
        );
        assert_eq!(ep.port, 8080);
        assert_eq!(
            ep.service_account,
            "spiffe://cluster.local/ns/shop/sa/default"
        );
    }
    // The obsolete /debug/endpointz alias answers too.
    let endpointz = istiods[0].endpointz().await?;
    assert!(endpointz.get(host_name).is_some());
    // And the reverse direction: cluster-2's istiod sees cluster-1's endpoint.
    poll(
        WAIT,
        "catalog in cluster-2's istiod from cluster-1",
        || async {
            Ok(istiods[2].endpoints().await?.iter().any(|e| {
                e.hostname == host_name && e.cluster == ids[1] && e.network == NETWORKS[1]
            }))
        },
    )
    .await?;
    bed.mark("registry and endpoints checked");
    Ok(())
}

/// istiod's CA is the federation's: plug-in certs from cacerts, one root.
async fn istiods_ca_is_the_federations(bed: &Bed) -> Result<()> {
    let ids = &bed.ids;
    let clients = &bed.clients;
    let host = &bed.host;
    let istiods = &bed.istiods;
    let root_secret = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .get(&format!("{FED}-root-ca"))
        .await?;
    let root_der = ders(&secret_text(&root_secret, "tls.crt"));
    assert_eq!(root_der.len(), 1, "one root");
    let foreign = rcgen::generate_simple_self_signed(vec!["istiod.istio-system.svc".into()])?;
    for (i, istiod) in istiods.iter().enumerate() {
        let c = &clients[i];
        let cacerts = Api::<Secret>::namespaced(c.clone(), "istio-system")
            .get("cacerts")
            .await?;
        assert_eq!(ders(&secret_text(&cacerts, "root-cert.pem")), root_der);
        // USE_REMOTE_CERTS: istiod copied the Secret, key by key, into ROOT_CA_DIR.
        for key in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            let on_disk = std::fs::read(istiod.ca_dir().join(key))
                .with_context(|| format!("{} has {key}", istiod.ca_dir().display()))?;
            assert_eq!(
                on_disk,
                secret_bytes(&cacerts, key),
                "{key} fetched verbatim"
            );
        }
        let log = istiod.log_text();
        for line in [
            "cacerts Secret found in config cluster",
            "Use local CA certificate",
            "Use root cert from",
        ] {
            assert!(log.contains(line), "istiod {} log lacks {line:?}", ids[i]);
        }
        assert!(
            !log.contains("Use self-signed certificate as the CA certificate"),
            "istiod {} fell back to a self-signed CA",
            ids[i]
        );
        assert!(
            Api::<Secret>::namespaced(c.clone(), "istio-system")
                .get_opt("istio-ca-secret")
                .await?
                .is_none(),
            "no self-signed istio-ca-secret"
        );
        // The root istiod publishes to workloads, in every namespace it watches.
        for ns in ["default", "istio-system"] {
            let cms = Api::<ConfigMap>::namespaced(c.clone(), ns);
            let published = wait_some(WAIT, "istio-ca-root-cert published", || async {
                Ok(cms
                    .get_opt("istio-ca-root-cert")
                    .await?
                    .map(|cm| ders(&cm.data.unwrap_or_default()["root-cert.pem"])))
            })
            .await?;
            assert_eq!(
                published, root_der,
                "{}/{ns}: root is the federation's",
                ids[i]
            );
        }
        // istiod's own serving certificate (its DNS cert, the same one XDS
        // on 15012 presents) chains to the federation root ...
        tls_verifies(istiod.https_addr(), root_der.clone())
            .await
            .with_context(|| format!("istiod {} webhook TLS vs federation root", ids[i]))?;
        // ... and not to an unrelated one.
        assert!(
            tls_verifies(istiod.https_addr(), vec![foreign.cert.der().to_vec()])
                .await
                .is_err(),
            "a foreign root must not verify istiod's chain"
        );
    }
    bed.mark("CA checked");
    Ok(())
}

/// istioctl create-remote-secret for cluster-2 vs meshfed's secret for cluster-2 in cluster-0.
async fn istioctl_and_meshfed_remote_secrets_compared(
    bed: &Bed,
    istio: &e2e::istiod::Istio,
) -> Result<()> {
    let ids = &bed.ids;
    let clients = &bed.clients;
    let host = &bed.host;
    let fleet = &bed.fleet;
    let b = 2;
    let out = tokio::process::Command::new(istio.istioctl())
        .arg("create-remote-secret")
        .arg("--kubeconfig")
        .arg(fleet.cluster(b).kubeconfig_path())
        .args(["--name", &ids[b]])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "istioctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let istioctl_yaml = String::from_utf8(out.stdout)?;
    let ours = Api::<Secret>::namespaced(host.clone(), "istio-system")
        .get(&format!("istio-remote-secret-{}", ids[b]))
        .await?;
    let theirs: serde_json::Value = serde_yaml::from_str(
        istioctl_yaml
            .split("\n---")
            .find(|d| d.contains("kind: Secret"))
            .context("istioctl printed no Secret")?,
    )?;
    let ours_json = serde_json::to_value(&ours)?;
    let mut table: Vec<(String, String, String)> = Vec::new();
    let mut row = |field: &str, istioctl: String, meshfed: String| {
        table.push((field.into(), istioctl, meshfed));
    };
    let meta = |v: &serde_json::Value, k: &str| -> BTreeMap<String, String> {
        serde_json::from_value(v["metadata"][k].clone()).unwrap_or_default()
    };
    assert_eq!(theirs["metadata"]["name"], ours_json["metadata"]["name"]);
    assert_eq!(
        theirs["metadata"]["namespace"],
        ours_json["metadata"]["namespace"]
    );
    row(
        "name",
        theirs["metadata"]["name"].to_string(),
        ours_json["metadata"]["name"].to_string(),
    );
    let (their_labels, our_labels) = (meta(&theirs, "labels"), meta(&ours_json, "labels"));
    assert_eq!(
        their_labels.get("istio/multiCluster").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        our_labels.get("istio/multiCluster").map(String::as_str),
        Some("true")
    );
    row(
        "labels",
        format!("{their_labels:?}"),
        format!("{our_labels:?}"),
    );
    let (their_ann, our_ann) = (
        meta(&theirs, "annotations"),
        meta(&ours_json, "annotations"),
    );
    assert_eq!(their_ann.get("networking.istio.io/cluster"), Some(&ids[b]));
    assert_eq!(our_ann.get("networking.istio.io/cluster"), Some(&ids[b]));
    row(
        "annotations",
        format!("{their_ann:?}"),
        format!("{:?}", our_ann.keys().collect::<Vec<_>>()),
    );
    row(
        "type",
        theirs["type"].as_str().unwrap_or("(unset: Opaque)").into(),
        ours.type_.clone().unwrap_or_default(),
    );
    let their_data: BTreeMap<String, String> =
        serde_json::from_value(theirs["stringData"].clone())?;
    let our_keys: Vec<&String> = ours.data.as_ref().unwrap().keys().collect();
    assert_eq!(their_data.keys().collect::<Vec<_>>(), vec![&ids[b]]);
    assert_eq!(our_keys, vec![&ids[b]]);
    row(
        "data key",
        "stringData: cluster-2".into(),
        "data: cluster-2".into(),
    );
    let their_kc: serde_json::Value = serde_yaml::from_str(&their_data[&ids[b]])?;
    let our_kc: serde_json::Value = serde_yaml::from_str(&secret_text(&ours, &ids[b]))?;
    for (who, kc) in [("istioctl", &their_kc), ("meshfed", &our_kc)] {
        assert_eq!(kc["clusters"].as_array().unwrap().len(), 1, "{who}");
        assert_eq!(kc["clusters"][0]["name"], ids[b].as_str(), "{who}");
        assert_eq!(kc["contexts"][0]["name"], ids[b].as_str(), "{who}");
        assert_eq!(
            kc["contexts"][0]["context"]["cluster"],
            ids[b].as_str(),
            "{who}"
        );
        assert_eq!(
            kc["contexts"][0]["context"]["user"],
            ids[b].as_str(),
            "{who}"
        );
        assert_eq!(kc["users"][0]["name"], ids[b].as_str(), "{who}");
        assert_eq!(kc["current-context"], ids[b].as_str(), "{who}");
        let user_fields: BTreeSet<&String> =
            kc["users"][0]["user"].as_object().unwrap().keys().collect();
        assert_eq!(
            user_fields.into_iter().collect::<Vec<_>>(),
            vec!["token"],
            "{who}: token auth only (no files, exec or client certs)"
        );
        // The CA bundle holds the serving CA of B's API server.
        let ca = B64.decode(
            kc["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .unwrap(),
        )?;
        let serving_ca = ders(fleet.cluster(b).ca_pem());
        let bundle = ders(std::str::from_utf8(&ca)?);
        assert!(
            serving_ca.iter().all(|d| bundle.contains(d)),
            "{who}: CA bundle trusts B's serving CA"
        );
    }
    assert_eq!(
        their_kc["clusters"][0]["cluster"]["server"], our_kc["clusters"][0]["cluster"]["server"],
        "same server"
    );
    row(
        "server",
        their_kc["clusters"][0]["cluster"]["server"].to_string(),
        our_kc["clusters"][0]["cluster"]["server"].to_string(),
    );
    let same_ca = their_kc["clusters"][0]["cluster"]["certificate-authority-data"]
        == our_kc["clusters"][0]["cluster"]["certificate-authority-data"];
    row(
        "certificate-authority-data",
        "ca.crt of the token Secret".into(),
        format!("identical to istioctl's: {same_ca}"),
    );
    let their_claims = jwt_claims(their_kc["users"][0]["user"]["token"].as_str().unwrap());
    let our_claims = jwt_claims(our_kc["users"][0]["user"]["token"].as_str().unwrap());
    assert_eq!(
        their_claims["sub"],
        "system:serviceaccount:istio-system:istio-reader-service-account"
    );
    assert!(
        their_claims.get("exp").is_none(),
        "istioctl: a long-lived token"
    );
    assert_eq!(our_claims["sub"], reader_subject().as_str());
    let exp = our_claims["exp"]
        .as_i64()
        .context("meshfed: a bound token expires")?;
    let now = unix_now();
    assert!(exp > now, "meshfed's token is current");
    row(
        "token sub",
        their_claims["sub"].to_string(),
        our_claims["sub"].to_string(),
    );
    row(
        "token lifetime",
        "none (legacy Secret token, no exp)".into(),
        format!("bound, exp in {} h", (exp - now) / 3600),
    );
    row(
        "kubeconfig extras",
        format!("{:?}", obj_keys(&their_kc)),
        format!("{:?}", obj_keys(&our_kc)),
    );
    // The RBAC each identity gets in B.
    let istio_role = Api::<ClusterRole>::all(clients[b].clone())
        .get("istio-reader-clusterrole-istio-system")
        .await?;
    let our_role = Api::<ClusterRole>::all(clients[b].clone())
        .get(&format!("meshfed-reader-{FED}"))
        .await?;
    let (istio_rules, our_rules) = (rule_set(&istio_role), rule_set(&our_role));
    let not_covered: Vec<&String> = istio_rules
        .iter()
        .filter(|r| !covered(r, &our_rules))
        .collect();
    let only_ours: Vec<&String> = our_rules
        .iter()
        .filter(|r| !covered(r, &istio_rules))
        .collect();
    row(
        "reader rules",
        format!("Istio's role grants, meshfed's does not: {not_covered:?}"),
        format!("meshfed's role grants, Istio's does not: {only_ours:?}"),
    );
    eprintln!("istioctl create-remote-secret vs meshfed, for {}:", ids[b]);
    for (field, a, m) in &table {
        eprintln!("  {field:<28} istioctl: {a}\n  {:<28} meshfed:  {m}", "");
    }
    bed.mark("istioctl comparison");
    Ok(())
}

/// Started after the grant, istiods were never denied anything by a peer.
async fn no_istiod_was_denied_anything(bed: &Bed) -> Result<()> {
    let istiods = &bed.istiods;
    // Started after the grant, istiod 1 and 2 were never denied anything
    // by a peer: meshfed's reader plus Secrets is all istiod reads remotely.
    // (Checked before the outage: a restarted API server denies everything
    // for a moment while its RBAC cache warms up.)
    let granted_before = if bed.reader_lists_secrets { 0 } else { 1 };
    for istiod in &istiods[granted_before..] {
        let log = istiod.log_text();
        let denied: Vec<&str> = log.lines().filter(|l| l.contains("forbidden")).collect();
        assert!(
            denied.is_empty(),
            "istiod {} was denied: {denied:#?}",
            istiod.cluster_id()
        );
    }
    Ok(())
}

/// A forced token refresh: every old token revoked, every istiod switches.
async fn a_forced_token_refresh_switches_every_istiod(bed: &Bed) -> Result<()> {
    let ids = &bed.ids;
    let clients = &bed.clients;
    let host = &bed.host;
    let fleet = &bed.fleet;
    let istiods = &bed.istiods;
    let held = |secret: &Secret, peer: &str| -> (String, String) {
        let kubeconfig: serde_json::Value =
            serde_yaml::from_slice(&secret_bytes(secret, peer)).expect("a kubeconfig");
        let token = kubeconfig["users"][0]["user"]["token"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let binding = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("meshfed.io/token-binding"))
            .cloned()
            .unwrap_or_default();
        (token, binding)
    };
    // Before: what cluster-0 holds of cluster-1 (bound, and working).
    let remote = |i: usize, peer: usize| {
        let api = Api::<Secret>::namespaced(clients[i].clone(), "istio-system");
        let name = format!("istio-remote-secret-{}", ids[peer]);
        async move { anyhow::Ok(api.get(&name).await?) }
    };
    let (old_token, old_binding) = held(&remote(0, 1).await?, &ids[1]);
    assert!(
        !old_binding.is_empty(),
        "remote-secret tokens are bound to a Secret"
    );
    let old_claims = jwt_claims(&old_token);
    assert_eq!(
        old_claims["kubernetes.io"]["secret"]["name"],
        old_binding.as_str(),
        "the token itself names the Secret it is bound to: {old_claims}"
    );
    let as_reader = |token: &str| {
        let mut config = fleet.cluster(1).kube_config();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Client::try_from(config)
    };
    Api::<k8s_openapi::api::core::v1::Namespace>::all(as_reader(&old_token)?)
        .get("istio-system")
        .await
        .context("the current token reads its member")?;
    let refreshed_at = Instant::now();
    Api::<MeshFederation>::all(host.clone())
        .patch(
            FED,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"meshfed.io/refresh-tokens": "e2e-1"}}})),
        )
        .await?;
    // Every remote secret in every member is rewritten for the request.
    poll(
        WAIT,
        "every remote secret holds a token minted for e2e-1",
        || async {
            for i in 0..ids.len() {
                for peer in (0..ids.len()).filter(|p| *p != i) {
                    let s = remote(i, peer).await?;
                    let for_request = s
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("meshfed.io/refresh-tokens"));
                    if for_request.map(String::as_str) != Some("e2e-1") {
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        },
    )
    .await?;
    let (new_token, new_binding) = held(&remote(0, 1).await?, &ids[1]);
    assert_ne!(new_binding, old_binding);
    assert_ne!(new_token, old_token);
    assert_eq!(
        held(&remote(2, 1).await?, &ids[1]).1,
        new_binding,
        "one token per member, for all its peers"
    );
    // The old binding goes (revokeAfter 5 s), and with it the old token.
    let bindings = Api::<Secret>::namespaced(clients[1].clone(), "istio-system");
    poll(
        WAIT,
        "the old token's Secret deleted in cluster-1",
        || async { Ok(bindings.get_opt(&old_binding).await?.is_none()) },
    )
    .await?;
    let revoked_after = refreshed_at.elapsed();
    let denied = Api::<k8s_openapi::api::core::v1::Namespace>::all(as_reader(&old_token)?)
        .get("istio-system")
        .await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(e)) if e.code == 401),
        "the revoked token is rejected: {:?}",
        denied.as_ref().map(|n| n.metadata.name.clone())
    );
    Api::<k8s_openapi::api::core::v1::Namespace>::all(as_reader(&new_token)?)
        .get("istio-system")
        .await
        .context("the new token reads its member")?;
    // Every istiod moved to the new tokens: still synced, and it sees a
    // service created in a member after the old tokens died.
    for istiod in istiods {
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        istiod.wait_synced(&all, Duration::from_secs(30)).await?;
    }
    let (vip_fresh, _) = service_with_pod(&clients[1], "shop", "after-refresh").await?;
    for i in [0, 2] {
        poll(
            WAIT,
            "a service created after the revocation reaches the peers",
            || async {
                Ok(istiods[i].services().await?.iter().any(|s| {
                    s.hostname == "after-refresh.shop.svc.cluster.local"
                        && s.cluster_vips.get(&ids[1]) == Some(&vec![vip_fresh.clone()])
                }))
            },
        )
        .await?;
    }
    eprintln!(
        "forced refresh: old tokens revoked {revoked_after:?} after the request; every istiod synced and seeing new services after {:?}",
        refreshed_at.elapsed()
    );
    bed.mark("forced token refresh, revocation, istiods switched");
    Ok(())
}

/// A member's API server stops: what does a peer istiod say, and how it recovers.
async fn a_stopped_member_as_istiod_sees_it(bed: &mut Bed) -> Result<()> {
    let ids = &bed.ids;
    let clients = &bed.clients;
    let fleet = &bed.fleet;
    let istiods = &mut bed.istiods;
    let host_name = CATALOG;
    let down = 1;
    fleet.cluster(down).stop_apiserver().await?;
    let stopped = Instant::now();
    let mut seen: BTreeMap<String, Duration> = BTreeMap::new();
    while stopped.elapsed() < OUTAGE {
        let st = istiods[0].cluster_statuses().await?;
        let s = st
            .get(&ids[down])
            .cloned()
            .unwrap_or_else(|| "(absent)".into());
        seen.entry(s).or_insert(stopped.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let still_listed = istiods[0]
        .services()
        .await?
        .iter()
        .any(|s| s.hostname == host_name && s.cluster_vips.contains_key(&ids[down]));
    let own_ready = istiods[down].is_ready().await;
    let own_alive = istiods[down].check_running().is_ok();
    eprintln!(
        "with {}'s API server down for {OUTAGE:?}: istiod {} reports it as {seen:?} (status → first seen); \
         its services still in the registry: {still_listed}; istiod {} itself alive: {own_alive}, /ready 200: {own_ready}",
        ids[down], ids[0], ids[down]
    );
    // What istiod 1.31 does (docs/istio.md): the sync status describes the
    // initial sync only, so a member that dies later stays "synced", and
    // its last-known services stay in the registry.
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["synced"],
        "istiod's view of a stopped member changed; update docs/istio.md"
    );
    assert!(still_listed, "istiod keeps the stopped member's services");
    assert!(own_alive, "the stopped member's own istiod keeps running");
    fleet.cluster(down).start_apiserver().await?;
    let restarted = Instant::now();
    // Recovery, seen from istiod: a service created after the restart arrives.
    let (vip_new, _) = service_with_pod(&clients[down], "shop", "after-restart").await?;
    let recovered = poll(
        Duration::from_secs(90),
        "a service created after the restart reaches cluster-0's istiod",
        || async {
            Ok(istiods[0].services().await?.iter().any(|s| {
                s.hostname == "after-restart.shop.svc.cluster.local"
                    && s.cluster_vips.get(&ids[down]) == Some(&vec![vip_new.clone()])
            }))
        },
    )
    .await;
    let statuses = istiods[0].cluster_statuses().await?;
    eprintln!(
        "after restart: recovered={} in {:?}; clusterz {statuses:?}; istiod {} /ready: {}",
        recovered.is_ok(),
        restarted.elapsed(),
        ids[down],
        istiods[down].is_ready().await
    );
    recovered?;
    assert_eq!(statuses[&ids[down]], "synced");
    bed.mark("outage and recovery");
    Ok(())
}

/// Polls `check` every 200 ms until it yields a value or `timeout` passes.
async fn wait_some<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn obj_keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether `rule` ("group/resource:verb") is granted by `rules`, directly
/// or through a `*` resource.
fn covered(rule: &str, rules: &BTreeSet<String>) -> bool {
    let (group_res, verb) = rule.rsplit_once(':').unwrap();
    let (group, _) = group_res.split_once('/').unwrap();
    rules.contains(rule) || rules.contains(&format!("{group}/*:{verb}"))
}

/// A ClusterRole's rules flattened to "group/resource:verb" strings.
fn rule_set(role: &ClusterRole) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for r in role.rules.iter().flatten() {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    let g = if g.is_empty() { "core" } else { g.as_str() };
                    out.insert(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    out
}
