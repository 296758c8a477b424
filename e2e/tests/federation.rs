//! meshfed against real API servers: a 3-member federation from apply to
//! Ready, verified from the members' side, through membership changes, a
//! foreign cacerts, a member outage and deletion.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use e2e::Fleet;
use e2e::mesh::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use meshfed::api::MeshFederation;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};

const FED: &str = "prod";
const WAIT: Duration = Duration::from_secs(60);

fn ready(f: &MeshFederation) -> bool {
    has_condition(f, "Ready", "True")
}

fn secret_text(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn pem_ders(pem_text: &str) -> Vec<CertificateDer<'static>> {
    x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes())
        .map(|p| CertificateDer::from(p.unwrap().contents))
        .collect()
}

/// Issues a workload certificate with the member's intermediate (as istiod
/// would) and validates it with webpki against `trust_bundle`.
fn verify_cacerts(cacerts: &Secret, trust_bundle: &str) -> Result<(), webpki::Error> {
    let key = KeyPair::from_pem(&secret_text(cacerts, "ca-key.pem")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&secret_text(cacerts, "ca-cert.pem"), key).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/default/sa/demo"
            .try_into()
            .unwrap(),
    )];
    params
        .distinguished_name
        .push(DnType::CommonName, "workload");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = params
        .signed_by(&KeyPair::generate().unwrap(), &issuer)
        .unwrap();
    let leaf_der = CertificateDer::from(leaf.der().to_vec());
    let anchors_der = pem_ders(trust_bundle);
    let anchors: Vec<_> = anchors_der
        .iter()
        .map(|d| webpki::anchor_from_trusted_cert(d).unwrap())
        .collect();
    // cert-chain.pem is intermediate then root: present the intermediate.
    let chain = pem_ders(&secret_text(cacerts, "cert-chain.pem"));
    let ee = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[..1],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

async fn client_from_kubeconfig(yaml: &str) -> Client {
    let kc = Kubeconfig::from_yaml(yaml).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn istio_secrets(c: &Client) -> Api<Secret> {
    Api::namespaced(c.clone(), "istio-system")
}

async fn remote_secret_names(c: &Client) -> Vec<String> {
    let list = istio_secrets(c)
        .list(&ListParams::default().labels("istio/multiCluster=true"))
        .await
        .unwrap();
    let mut names: Vec<_> = list
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    names.sort();
    names
}

/// resourceVersions of everything meshfed manages in a member.
async fn managed_versions(c: &Client) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=meshfed");
    let mut out = BTreeMap::new();
    for s in istio_secrets(c).list(&lp).await.unwrap() {
        out.insert(
            format!("secret/{}", s.metadata.name.unwrap()),
            s.metadata.resource_version.unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_lifecycle_on_three_real_clusters() -> Result<()> {
    let bed = operator_bed(3, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (fleet, host, operator) = (&bed.fleet, bed.host.clone(), &bed.operator);
    let members = vec![
        local_member(fleet.cluster(0), "net-a"),
        member(fleet.cluster(1), "net-a"),
        member(fleet.cluster(2), "net-b"),
    ];
    let fed = federation(FED, members.clone());
    let started = std::time::Instant::now();
    apply_federation(&host, &fed).await?;
    let status = wait_for_federation(&host, FED, WAIT, "Ready", ready).await?;
    eprintln!(
        "apply -> Ready in {:?}\n{}",
        started.elapsed(),
        status_table(&status)
    );
    let st = status.status.as_ref().unwrap();
    assert_eq!((st.member_count, st.ready_members), (3, 3));
    for m in &st.members {
        assert!(m.reachable && m.ready, "{m:?}");
        assert_eq!(
            (m.remote_secrets_present, m.remote_secrets_expected),
            (2, 2)
        );
        assert!(m.kubernetes_version.as_deref().unwrap().starts_with("v1."));
        assert!(m.intermediate.is_some() && m.token_expiry.is_some());
    }

    // --- every member, seen from the member itself
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let mut cacerts: Vec<Secret> = Vec::new();
    for c in &clients {
        cacerts.push(istio_secrets(c).get("cacerts").await?);
    }
    let roots: Vec<String> = cacerts
        .iter()
        .map(|s| secret_text(s, "root-cert.pem"))
        .collect();
    assert!(roots.iter().all(|r| *r == roots[0]), "one shared root");
    for (i, own) in cacerts.iter().enumerate() {
        for (j, peer_root) in roots.iter().enumerate() {
            verify_cacerts(own, peer_root)
                .unwrap_or_else(|e| panic!("member {i} chain vs member {j} bundle: {e:?}"));
        }
    }
    let stranger = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    assert!(
        verify_cacerts(&cacerts[0], &stranger.cert.pem()).is_err(),
        "a foreign root must not validate"
    );
    for (i, c) in clients.iter().enumerate() {
        let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone())
            .get("istio-system")
            .await?;
        assert_eq!(
            ns.metadata.labels.unwrap()["topology.istio.io/network"],
            members[i].network
        );
    }

    // --- every remote secret's kubeconfig, used as is, reads its peer and cannot write
    for (i, c) in clients.iter().enumerate() {
        let expected: Vec<String> = {
            let mut v: Vec<_> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("istio-remote-secret-{}", fleet.cluster(j).name()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(remote_secret_names(c).await, expected);
        for j in (0..3).filter(|j| *j != i) {
            let peer = fleet.cluster(j).name();
            let s = istio_secrets(c)
                .get(&format!("istio-remote-secret-{peer}"))
                .await?;
            assert_eq!(
                s.metadata.annotations.as_ref().unwrap()["networking.istio.io/cluster"],
                peer
            );
            assert_eq!(s.data.as_ref().unwrap().keys().collect::<Vec<_>>(), [peer]);
            let remote = client_from_kubeconfig(&secret_text(&s, peer)).await;
            Api::<Service>::all(remote.clone())
                .list(&ListParams::default())
                .await?;
            Api::<EndpointSlice>::all(remote.clone())
                .list(&ListParams::default())
                .await?;
            Api::<Pod>::all(remote.clone())
                .list(&ListParams::default())
                .await?;
            let write = Api::<ConfigMap>::namespaced(remote.clone(), "default")
                .create(
                    &PostParams::default(),
                    &ConfigMap {
                        metadata: kube::api::ObjectMeta {
                            name: Some("nope".into()),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                )
                .await;
            assert!(
                matches!(write, Err(kube::Error::Api(ref e)) if e.code == 403),
                "reader wrote: {write:?}"
            );
            // istiod's remote credentials controller watches Secrets in its peers.
            Api::<Secret>::all(remote.clone())
                .list(&ListParams::default())
                .await?;
            let delete = Api::<Secret>::namespaced(remote, "istio-system")
                .delete("cacerts", &Default::default())
                .await;
            assert!(
                matches!(delete, Err(kube::Error::Api(ref e)) if e.code == 403),
                "reader deleted a Secret"
            );
        }
    }

    // --- steady state: a reconcile with nothing changed writes nothing
    let versions_before: Vec<_> =
        futures::future::join_all(clients.iter().map(managed_versions)).await;
    let first = operator.context.last_reconcile(FED).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await; // at least two resyncs
    let later = operator.context.last_reconcile(FED).unwrap();
    assert_eq!(later.requests.len(), 3);
    for (member, count) in &later.requests {
        assert_eq!(
            count.writes, 0,
            "member {member} got writes in steady state: {count:?}"
        );
        assert!(count.reads > 0, "member {member} was not read");
    }
    assert_ne!(first.duration, later.duration, "a later reconcile ran");
    let versions_after: Vec<_> =
        futures::future::join_all(clients.iter().map(managed_versions)).await;
    assert_eq!(versions_before, versions_after, "no managed object changed");
    let again = Api::<MeshFederation>::all(host.clone()).get(FED).await?;
    assert_eq!(
        again.metadata.resource_version, status.metadata.resource_version,
        "status not rewritten"
    );

    // --- a member leaves: its secrets vanish everywhere, its objects are cleaned
    let leaving = fleet.cluster(2).name().to_string();
    apply_federation(&host, &federation(FED, members[..2].to_vec())).await?;
    wait_for_federation(&host, FED, WAIT, "Ready with two members", |f| {
        ready(f) && f.status.as_ref().is_some_and(|s| s.members.len() == 2)
    })
    .await?;
    for c in &clients[..2] {
        assert!(
            !remote_secret_names(c)
                .await
                .contains(&format!("istio-remote-secret-{leaving}"))
        );
    }
    assert!(
        remote_secret_names(&clients[2]).await.is_empty(),
        "left member keeps no remote secrets"
    );
    let sa = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        clients[2].clone(),
        "istio-system",
    );
    assert!(
        sa.get_opt("meshfed-reader-prod").await?.is_none(),
        "reader identity removed"
    );
    assert!(
        istio_secrets(&clients[2])
            .get_opt("cacerts")
            .await?
            .is_some(),
        "cacerts retained by default policy"
    );

    // --- a foreign cacerts is never overwritten, and adoption is opt-in
    istio_secrets(&clients[2])
        .delete("cacerts", &DeleteParams::default())
        .await?;
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("cacerts".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "ca-cert.pem".to_string(),
            ByteString(b"hand-made".to_vec()),
        )])),
        ..Default::default()
    };
    istio_secrets(&clients[2])
        .create(&PostParams::default(), &foreign)
        .await?;
    apply_federation(&host, &fed).await?;
    let blocked = wait_for_federation(
        &host,
        FED,
        WAIT,
        "CertificatesReady=False for the foreign cacerts, the others converged",
        |f| {
            has_condition(f, "CertificatesReady", "False")
                && f.status.as_ref().is_some_and(|s| s.ready_members == 2)
        },
    )
    .await?;
    let message = &condition(&blocked, "CertificatesReady").unwrap().message;
    assert!(
        message.contains(&leaving)
            && message.contains("istio-system/cacerts")
            && message.contains("meshfed.io/adopt"),
        "{message}"
    );
    let untouched = istio_secrets(&clients[2]).get("cacerts").await?;
    assert_eq!(
        untouched.data, foreign.data,
        "foreign cacerts left byte-identical"
    );
    let others_ready = blocked
        .status
        .as_ref()
        .unwrap()
        .members
        .iter()
        .filter(|m| m.ready)
        .count();
    assert_eq!(others_ready, 2, "the other members still converge");
    let mut adopt = untouched.clone();
    adopt.metadata.annotations = Some(BTreeMap::from([(
        "meshfed.io/adopt".to_string(),
        "true".to_string(),
    )]));
    istio_secrets(&clients[2])
        .replace("cacerts", &PostParams::default(), &adopt)
        .await?;
    wait_for_federation(&host, FED, WAIT, "Ready after adoption", ready).await?;
    let adopted = istio_secrets(&clients[2]).get("cacerts").await?;
    verify_cacerts(&adopted, &roots[0]).expect("adopted cacerts re-issued under the shared root");
    // Adopted by this federation only: labelled for it, the hand-over annotation gone.
    assert_eq!(
        adopted.metadata.labels.as_ref().unwrap()["meshfed.io/federation"],
        FED
    );
    assert!(
        !adopted
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("meshfed.io/adopt"),
        "the adopt annotation stays behind"
    );

    // --- a member's API server stops: reported, others converge; back: Ready again
    fleet.cluster(1).stop_apiserver().await?;
    let degraded = wait_for_federation(&host, FED, WAIT, "member 1 reported unreachable", |f| {
        has_condition(f, "MembersReachable", "False")
    })
    .await?;
    let down = fleet.cluster(1).name();
    assert!(
        condition(&degraded, "MembersReachable")
            .unwrap()
            .message
            .contains(down)
    );
    assert!(has_condition(&degraded, "Ready", "False"));
    let st = degraded.status.as_ref().unwrap();
    for m in &st.members {
        assert_eq!(m.reachable, m.name != down, "{m:?}");
    }
    eprintln!("with {down} down:\n{}", status_table(&degraded));
    fleet.cluster(1).start_apiserver().await?;
    wait_for_federation(&host, FED, WAIT, "Ready after restart", ready).await?;

    // --- deleting the federation cleans every member up
    Api::<MeshFederation>::all(host.clone())
        .delete(FED, &DeleteParams::default())
        .await?;
    poll(WAIT, "federation deleted", || async {
        Ok(Api::<MeshFederation>::all(host.clone())
            .get_opt(FED)
            .await?
            .is_none())
    })
    .await?;
    for c in &clients {
        assert!(remote_secret_names(c).await.is_empty());
        let readers = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
            c.clone(),
            "istio-system",
        );
        assert!(readers.get_opt("meshfed-reader-prod").await?.is_none());
        let claim = Api::<ConfigMap>::namespaced(c.clone(), "istio-system")
            .get_opt("meshfed-cluster-claim")
            .await?;
        assert!(claim.is_none(), "the cluster claim is released");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_by_the_api_server() -> Result<()> {
    let fleet = Fleet::start(1).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;
    let c = fleet.cluster(0);
    let valid = federation("ok", vec![member(c, "net-a")]);
    create_federation(&host, &valid)
        .await
        .expect("a valid spec is accepted");

    let mut cases: Vec<(&str, MeshFederation, &str)> = Vec::new();
    cases.push((
        "duplicate names",
        federation("dup", vec![member(c, "a"), member(c, "b")]),
        "spec.members[].name must be unique",
    ));
    let mut bad_name = member(c, "a");
    bad_name.name = "Not_A_Label".into();
    cases.push((
        "non DNS-1123 name",
        federation("badname", vec![bad_name]),
        "spec.members[0].name",
    ));
    cases.push(("no members", federation("empty", vec![]), "spec.members"));
    let mut both = member(c, "a");
    both.credentials.local = Some(Default::default());
    cases.push((
        "two credentials",
        federation("both", vec![both]),
        "exactly one of credentials.secretRef or credentials.local",
    ));
    let mut local = local_member(c, "a");
    local.api_server = None;
    cases.push((
        "local without apiServer",
        federation(
            "local",
            vec![local, member(fleet.cluster(0), "b")]
                .into_iter()
                .enumerate()
                .map(|(i, mut m)| {
                    m.name = format!("m{i}");
                    m
                })
                .collect(),
        ),
        "needs spec.members[].apiServer",
    ));
    let mut peer = member(c, "b");
    peer.name = "peer".into();
    let mut host_member = federation("hostmember", vec![local_member(c, "a"), peer]);
    host_member.spec.allow_peers_to_read_operator_secrets = None;
    cases.push((
        "the operator's cluster as a member, not allowed",
        host_member,
        "spec.allowPeersToReadOperatorSecrets: true",
    ));
    let mut renew = federation("renew", vec![member(c, "a")]);
    renew.spec.ca = Some(meshfed::api::CaSpec {
        intermediate_lifetime: Some("24h".parse().unwrap()),
        renew_before: Some("48h".parse().unwrap()),
        ..Default::default()
    });
    cases.push((
        "renewBefore >= lifetime",
        renew,
        "spec.ca.renewBefore must be shorter than spec.ca.intermediateLifetime",
    ));
    let mut short = federation("short", vec![member(c, "a")]);
    short.spec.remote_secrets = Some(meshfed::api::RemoteSecretsSpec {
        token_lifetime: Some("1m".parse().unwrap()),
        ..Default::default()
    });
    cases.push((
        "token lifetime below TokenRequest minimum",
        short,
        "spec.remoteSecrets.tokenLifetime",
    ));

    cases.push((
        "a name that cannot be a label value",
        federation(&"f".repeat(64), vec![member(c, "a")]),
        "metadata.name must be at most 63 characters",
    ));
    for version in ["..", "../../etc", ".hidden"] {
        let mut escape = federation("escape", vec![member(c, "a")]);
        escape.spec.control_plane = Some(meshfed::api::ControlPlaneSpec {
            version: Some(version.into()),
            ..Default::default()
        });
        cases.push((
            "a version outside --charts-dir",
            escape,
            "spec.controlPlane.version",
        ));
    }

    let withdrawal = |w: meshfed::api::WithdrawalSpec| {
        let mut f = federation("failover", vec![member(c, "a")]);
        f.spec.failover = Some(meshfed::api::FailoverSpec {
            withdrawal: Some(w),
            ..Default::default()
        });
        f
    };
    cases.push((
        "no member may be withdrawn",
        withdrawal(meshfed::api::WithdrawalSpec {
            max_withdrawn: Some(0),
            ..Default::default()
        }),
        "spec.failover.withdrawal.maxWithdrawn must be at least 1",
    ));
    cases.push((
        "a probe interval under a second",
        withdrawal(meshfed::api::WithdrawalSpec {
            probe_interval: Some("100ms".parse().unwrap()),
            ..Default::default()
        }),
        "spec.failover.withdrawal.probeInterval must be between 1s and 5m",
    ));
    let with_control_plane = |name: &str, mode: meshfed::api::ControlPlaneMode| {
        let mut f = federation(name, vec![member(c, "a")]);
        f.spec.control_plane = Some(meshfed::api::ControlPlaneSpec {
            mode,
            version: Some("1.31".into()),
            ..Default::default()
        });
        f
    };
    let mut ejection = with_control_plane("ejection", meshfed::api::ControlPlaneMode::External);
    ejection.spec.failover = Some(meshfed::api::FailoverSpec {
        outlier_detection: Some(meshfed::api::OutlierDetectionSpec {
            max_ejection_percent: Some(101),
            ..Default::default()
        }),
        ..Default::default()
    });
    cases.push((
        "ejecting more than every endpoint",
        ejection,
        "spec.failover.outlierDetection.maxEjectionPercent must be between 0 and 100",
    ));

    let mut order = with_control_plane("order", meshfed::api::ControlPlaneMode::External);
    order.spec.control_plane.as_mut().unwrap().upgrade = Some(meshfed::api::UpgradeSpec {
        order: Some(vec![c.name().into(), "nope".into()]),
        ..Default::default()
    });
    cases.push((
        "an upgrade order naming a cluster that is not a member",
        order,
        "spec.controlPlane.upgrade.order may name only members",
    ));
    cases.push((
        "more members required healthy than there are",
        withdrawal(meshfed::api::WithdrawalSpec {
            min_healthy: Some(2),
            ..Default::default()
        }),
        "spec.failover.withdrawal.minHealthy must be at most the number of members",
    ));
    for domain in [
        "spiffe://cluster.local",
        "cluster.local/ns/default",
        "Cluster.Local",
        "example.org:443",
        "a..b",
    ] {
        let mut trust = federation("trust", vec![member(c, "a")]);
        trust.spec.trust_domain = Some(domain.into());
        cases.push((
            "a trust domain that is not a DNS-like name",
            trust,
            "spec.trustDomain must be a DNS-like name",
        ));
    }
    let mut outlier = federation("outlier", vec![member(c, "a")]);
    outlier.spec.failover = Some(meshfed::api::FailoverSpec {
        outlier_detection: Some(Default::default()),
        ..Default::default()
    });
    cases.push((
        "outlier detection without a control plane",
        outlier,
        "spec.failover.outlierDetection needs spec.controlPlane",
    ));
    let locality = |mut f: MeshFederation| {
        f.spec.failover = Some(meshfed::api::FailoverSpec {
            locality: Some(Default::default()),
            ..Default::default()
        });
        f
    };
    cases.push((
        "locality failover without a control plane",
        locality(federation("locality", vec![member(c, "a")])),
        "spec.failover.locality needs spec.controlPlane.mode: Managed",
    ));
    cases.push((
        "locality failover with an External control plane",
        locality(with_control_plane(
            "locality",
            meshfed::api::ControlPlaneMode::External,
        )),
        "spec.failover.locality needs spec.controlPlane.mode: Managed",
    ));

    for (what, fed, expected) in cases {
        match create_federation(&host, &fed).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{what}: {e:?}");
                assert!(
                    e.message.contains(expected),
                    "{what}: message {:?} should name {expected:?}",
                    e.message
                );
            }
            other => panic!("{what}: expected rejection, got {other:?}"),
        }
    }

    // Durations as written, which the typed API cannot hold: the operator
    // must never be handed one it reads differently from Istio, or not at all.
    let untyped =
        Api::<DynamicObject>::all_with(host.clone(), &ApiResource::erase::<MeshFederation>(&()));
    let outlier_durations = |interval: &str, ejection: &str| -> Result<DynamicObject> {
        let mut f = serde_json::to_value(with_control_plane(
            "durations",
            meshfed::api::ControlPlaneMode::External,
        ))?;
        f["spec"]["failover"] = serde_json::json!({
            "outlierDetection": {"interval": interval, "baseEjectionTime": ejection},
        });
        Ok(serde_json::from_value(f)?)
    };
    for (interval, ejection, field) in [
        ("10 s", "30s", "interval"),
        ("-5s", "30s", "interval"),
        ("10", "30s", "interval"),
        ("500us", "30s", "interval"),
        ("0s", "30s", "interval"),
        ("10s", "1e3s", "baseEjectionTime"),
        ("10s", "thirty seconds", "baseEjectionTime"),
        ("10s", "99999999999999999999h", "baseEjectionTime"),
    ] {
        let what =
            format!("outlier detection interval {interval:?}, baseEjectionTime {ejection:?}");
        let expected = format!("spec.failover.outlierDetection.{field}");
        match untyped
            .create(
                &PostParams::default(),
                &outlier_durations(interval, ejection)?,
            )
            .await
        {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{what}: {e:?}");
                assert!(
                    e.message.contains(&expected),
                    "{what}: message {:?} should name {expected:?}",
                    e.message
                );
            }
            other => panic!("{what}: expected rejection, got {other:?}"),
        }
    }

    // What the rules allow still goes in: every field they look at, set.
    let mut full = with_control_plane("full", meshfed::api::ControlPlaneMode::Managed);
    full.spec.trust_domain = Some("mesh.example.org".into());
    full.spec.control_plane.as_mut().unwrap().upgrade = Some(meshfed::api::UpgradeSpec {
        order: Some(vec![c.name().into()]),
        ..Default::default()
    });
    full.spec.failover = Some(meshfed::api::FailoverSpec {
        withdrawal: Some(meshfed::api::WithdrawalSpec {
            min_healthy: Some(1),
            ..Default::default()
        }),
        locality: Some(Default::default()),
        outlier_detection: Some(meshfed::api::OutlierDetectionSpec {
            interval: Some("1m30s".parse().unwrap()),
            base_ejection_time: Some("1.5s".parse().unwrap()),
            ..Default::default()
        }),
    });
    create_federation(&host, &full)
        .await
        .expect("a spec that sets every rule's field validly is accepted");
    untyped
        .create(&PostParams::default(), &{
            let mut ms = outlier_durations("500ms", "2m")?;
            ms.metadata.name = Some("durations-ok".into());
            ms
        })
        .await
        .expect("durations in ms and m are accepted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_kubeconfigs_without_verified_tls_are_refused() -> Result<()> {
    let bed = operator_bed(2, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (fleet, host) = (&bed.fleet, bed.host.clone());
    let remote = fleet.cluster(1);
    let yaml = remote.kubeconfig_yaml();
    let server_line = yaml
        .lines()
        .find(|l| l.trim_start().starts_with("server:"))
        .unwrap();
    let indent = &server_line[..server_line.len() - server_line.trim_start().len()];
    let variants = [
        (
            "insecure",
            yaml.replace(
                server_line,
                &format!("{server_line}\n{indent}insecure-skip-tls-verify: true"),
            ),
            "insecure-skip-tls-verify",
        ),
        (
            "plain-http",
            yaml.replace("server: https://", "server: http://"),
            "https://",
        ),
        (
            "proxied",
            yaml.replace(
                server_line,
                &format!("{server_line}\n{indent}proxy-url: http://127.0.0.1:1"),
            ),
            "proxy-url",
        ),
    ];
    for (name, kubeconfig, why) in variants {
        let secret = format!("{name}-kubeconfig");
        store_kubeconfig(&host, &secret, &kubeconfig).await?;
        let mut m = member(remote, "net-b");
        m.credentials.secret_ref.as_mut().unwrap().name = secret.clone();
        let fed_name = format!("tls-{name}");
        apply_federation(
            &host,
            &federation(&fed_name, vec![local_member(fleet.cluster(0), "net-a"), m]),
        )
        .await?;
        let refused = wait_for_federation(&host, &fed_name, WAIT, "MembersReachable=False", |f| {
            has_condition(f, "MembersReachable", "False")
        })
        .await?;
        let message = &condition(&refused, "MembersReachable").unwrap().message;
        assert!(
            message.contains(&format!("{OPERATOR_NAMESPACE}/{secret}")) && message.contains(why),
            "{name}: {message}"
        );
        Api::<MeshFederation>::all(host.clone())
            .delete(&fed_name, &DeleteParams::default())
            .await?;
    }
    // Nothing was written into the member through the refused credentials.
    let sa = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        remote.client(),
        "istio-system",
    );
    for name in ["insecure", "plain-http", "proxied"] {
        assert!(
            sa.get_opt(&format!("meshfed-reader-tls-{name}"))
                .await?
                .is_none()
        );
    }
    Ok(())
}

/// Resumes a paused API server even when the test fails.
struct Resume<'a>(&'a e2e::Cluster);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume_apiserver();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_member_does_not_slow_the_others() -> Result<()> {
    // A long member timeout: any wait on the hung member would show.
    let member_timeout = Duration::from_secs(15);
    let bed = operator_bed(4, Duration::from_secs(60), member_timeout).await?;
    let (fleet, host) = (&bed.fleet, bed.host.clone());
    let mut fed = federation(
        FED,
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-a"),
            member(fleet.cluster(2), "net-b"),
            member(fleet.cluster(3), "net-b"),
        ],
    );
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, FED, WAIT, "Ready", ready).await?;
    let healthy: Vec<(Client, String)> = (0..3)
        .map(|i| {
            (
                fleet.cluster(i).client(),
                fleet.cluster(i).name().to_string(),
            )
        })
        .collect();
    let serials = || async {
        let mut out = Vec::new();
        for (c, _) in &healthy {
            let cacerts = istio_secrets(c).get("cacerts").await?;
            out.push(cacerts.metadata.resource_version.unwrap());
        }
        anyhow::Ok(out)
    };
    let before = serials().await?;

    // cluster-3 hangs: connections are accepted, never answered.
    let hung = fleet.cluster(3);
    hung.pause_apiserver()?;
    let _resume = Resume(hung);
    // A change every member must act on: new intermediates everywhere, and
    // remote secrets whose tokens may live at most 2h.
    fed.spec.ca = Some(meshfed::api::CaSpec {
        intermediate_lifetime: Some("4000h".parse().unwrap()),
        ..Default::default()
    });
    fed.spec.remote_secrets = Some(meshfed::api::RemoteSecretsSpec {
        token_lifetime: Some("2h".parse().unwrap()),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    apply_federation(&host, &fed).await?;
    poll(WAIT, "the healthy members converged", || async {
        let now = serials().await?;
        if now.iter().zip(&before).any(|(a, b)| a == b) {
            return Ok(false);
        }
        for (c, name) in &healthy {
            for (_, peer) in healthy.iter().filter(|(_, p)| p != name) {
                let s = istio_secrets(c)
                    .get(&format!("istio-remote-secret-{peer}"))
                    .await?;
                let a = s.metadata.annotations.unwrap_or_default();
                let (Some(issued), Some(expires)) = (
                    a.get("meshfed.io/token-issued-at"),
                    a.get("meshfed.io/token-expires-at"),
                ) else {
                    return Ok(false);
                };
                let lifetime = expires
                    .parse::<jiff::Timestamp>()?
                    .duration_since(issued.parse::<jiff::Timestamp>()?);
                // issued-at is taken just before the TokenRequest: allow a minute.
                if lifetime > jiff::SignedDuration::from_mins(121) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })
    .await?;
    let converged = started.elapsed();
    eprintln!("healthy members converged in {converged:?} with cluster-3 hung");
    assert!(
        converged < member_timeout / 3,
        "the healthy members waited for the hung one: {converged:?}"
    );
    let status = Api::<MeshFederation>::all(host.clone()).get(FED).await?;
    eprintln!("{}", status_table(&status));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_caps_token_lifetimes_causes_no_rewrites() -> Result<()> {
    let fleet = Fleet::start_with(e2e::FleetOptions {
        apiserver_args: vec!["--service-account-max-token-expiration=1h".into()],
        ..e2e::FleetOptions::new(2)
    })
    .await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let operator = start_operator(
        fleet.cluster(0),
        Duration::from_secs(2),
        Duration::from_secs(3),
    )?;
    // tokenLifetime stays at its default, 24h: the servers issue 1h.
    let fed = federation(
        FED,
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-b"),
        ],
    );
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, FED, WAIT, "Ready", ready).await?;
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    let versions = || async {
        let mut out = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let peer = fleet.cluster(1 - i).name();
            let s = istio_secrets(c)
                .get(&format!("istio-remote-secret-{peer}"))
                .await?;
            let a = s.metadata.annotations.clone().unwrap_or_default();
            let lifetime = a["meshfed.io/token-expires-at"]
                .parse::<jiff::Timestamp>()?
                .duration_since(a["meshfed.io/token-issued-at"].parse::<jiff::Timestamp>()?);
            anyhow::ensure!(
                lifetime <= jiff::SignedDuration::from_mins(61),
                "the server did not cap the token: {lifetime:?}"
            );
            out.push(s.metadata.resource_version.unwrap());
        }
        anyhow::Ok(out)
    };
    let before = versions().await?;
    // Fifteen safety resyncs of every member.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(versions().await?, before, "remote secrets were rewritten");
    let stats = operator.context.last_reconcile(FED).unwrap();
    for (member, count) in &stats.requests {
        assert_eq!(count.writes, 0, "{member}: {count:?}");
    }
    Ok(())
}

/// A ServiceAccount token stored where the kubeconfig belongs (a Secret
/// referenced with `key: token`): the member is refused as unreachable, and
/// neither status nor any Event quotes the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_place_of_a_kubeconfig_never_reaches_status_or_events() -> Result<()> {
    let bed = operator_bed(2, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (fleet, host) = (&bed.fleet, bed.host.clone());
    let request = k8s_openapi::api::authentication::v1::TokenRequest::default();
    let token = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        fleet.cluster(1).client(),
        "default",
    )
    .create_token_request("default", &PostParams::default(), &request)
    .await?
    .status
    .unwrap()
    .token;
    assert!(token.starts_with("eyJ"), "a JWT");
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("cluster-1-token".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(token.clone().into_bytes()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await?;
    let mut m = member(fleet.cluster(1), "net-a");
    m.credentials.secret_ref = Some(meshfed::api::KubeconfigSecretRef {
        name: "cluster-1-token".into(),
        key: Some("token".into()),
    });
    apply_federation(
        &host,
        &federation("tokenkey", vec![local_member(fleet.cluster(0), "net-a"), m]),
    )
    .await?;
    let refused = wait_for_federation(&host, "tokenkey", WAIT, "MembersReachable=False", |f| {
        has_condition(f, "MembersReachable", "False")
    })
    .await?;
    let message = &condition(&refused, "MembersReachable").unwrap().message;
    eprintln!("{message}");
    assert!(message.contains("not a YAML mapping"), "{message}");
    // Let a few more reconciles and Events happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = serde_json::to_string(
        &Api::<MeshFederation>::all(host.clone())
            .get("tokenkey")
            .await?
            .status,
    )?;
    assert!(!status.contains("eyJ"), "status quotes the token: {status}");
    let events = Api::<k8s_openapi::api::core::v1::Event>::all(host.clone())
        .list(&ListParams::default())
        .await?;
    let notes: Vec<String> = events
        .items
        .iter()
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("cluster-1")),
        "the member's Events are there: {notes:?}"
    );
    for note in &notes {
        assert!(!note.contains("eyJ"), "an Event quotes the token: {note}");
    }
    Ok(())
}

/// The health of member `name` as the federation's status reports it.
fn health_of(fed: &MeshFederation, name: &str) -> Option<meshfed::api::MemberHealth> {
    fed.status
        .as_ref()?
        .members
        .iter()
        .find(|m| m.name == name)?
        .health
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_load_balancer_answering_502_is_withdrawn_like_a_stopped_one()
-> Result<()> {
    let bed = operator_bed(3, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (host, fleet) = (&bed.host, &bed.fleet);
    let behind = fleet.cluster(2);
    let name = behind.name().to_string();
    let proxy = e2e::proxy::ApiProxy::start(behind).await?;
    let kubeconfig = proxy.kubeconfig(&join_identity(behind, "prod").await?)?;
    store_kubeconfig(host, &credentials_secret_name(behind), &kubeconfig).await?;
    let mut fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-a"),
            member(behind, "net-b"),
        ],
    );
    fed.spec.failover = Some(serde_json::from_value(serde_json::json!({
        "withdrawal": {"gracePeriod": "3s", "settlePeriod": "5s", "probeInterval": "1s"}
    }))?);
    apply_federation(host, &fed).await?;
    wait_for_federation(host, "prod", Duration::from_secs(60), "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;

    // The API server stops; the load balancer in front answers 502 pages.
    behind.pause_apiserver()?;
    proxy.set_down(true);
    let down = std::time::Instant::now();
    let withdrawn = wait_for_federation(
        host,
        "prod",
        Duration::from_secs(30),
        "the member behind the load balancer withdrawn",
        |f| {
            health_of(f, &name)
                .is_some_and(|h| h.reason == "ApiServerUnreachable" && h.withdrawn_since.is_some())
        },
    )
    .await?;
    eprintln!(
        "FIGURE 502 from a load balancer -> withdrawn in {:?} (grace 3 s)",
        down.elapsed()
    );
    let health = health_of(&withdrawn, &name).unwrap();
    anyhow::ensure!(
        health.message.contains("proxy") && !health.message.contains("html"),
        "says a proxy answered, without its page: {}",
        health.message
    );

    behind.resume_apiserver()?;
    proxy.set_down(false);
    wait_for_federation(
        host,
        "prod",
        Duration::from_secs(30),
        "restored once back",
        |f| health_of(f, &name).is_some_and(|h| h.healthy && h.withdrawn_since.is_none()),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moved_to_another_cluster_leaves_only_retained_cacerts_in_the_old_one()
-> Result<()> {
    let bed = operator_bed(3, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (host, fleet) = (&bed.host, &bed.fleet);
    let (old, new) = (fleet.cluster(1), fleet.cluster(2));
    let mut fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(old, "net-b"),
        ],
    );
    apply_federation(host, &fed).await?;
    wait_for_federation(host, "prod", Duration::from_secs(60), "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    let meshfeds = |c: &e2e::Cluster| {
        let (configmaps, secrets) = (
            Api::<ConfigMap>::namespaced(c.client(), "istio-system"),
            Api::<Secret>::namespaced(c.client(), "istio-system"),
        );
        async move {
            let ours = ListParams::default().labels("meshfed.io/federation=prod");
            let mut names: Vec<String> = configmaps
                .list(&ours)
                .await?
                .into_iter()
                .map(|c| format!("ConfigMap/{}", c.metadata.name.unwrap_or_default()))
                .collect();
            names.extend(
                secrets
                    .list(&ours)
                    .await?
                    .into_iter()
                    .map(|s| format!("Secret/{}", s.metadata.name.unwrap_or_default())),
            );
            anyhow::Ok(names)
        }
    };
    let before = meshfeds(old).await?;
    anyhow::ensure!(
        before
            .iter()
            .any(|n| n == "ConfigMap/meshfed-cluster-claim")
            && before
                .iter()
                .any(|n| n.starts_with("Secret/istio-remote-secret-")),
        "the member's objects are in its cluster before the move: {before:?}"
    );

    // The member's secretRef now names another cluster's kubeconfig.
    fed.spec.members[1].credentials.secret_ref = Some(meshfed::api::KubeconfigSecretRef {
        name: credentials_secret_name(new),
        key: None,
    });
    apply_federation(host, &fed).await?;
    let moved = poll(
        Duration::from_secs(60),
        "the old cluster cleaned, the new one a member",
        || async {
            let left = meshfeds(old).await?;
            let now = meshfeds(new).await?;
            // cacerts stays: spec.ca.onRemoval defaults to Retain.
            Ok(left == ["Secret/cacerts"]
                && now.iter().any(|n| n == "ConfigMap/meshfed-cluster-claim")
                && now
                    .iter()
                    .any(|n| n.starts_with("Secret/istio-remote-secret-")))
        },
    )
    .await;
    if moved.is_err() {
        let f = Api::<MeshFederation>::all(host.clone()).get("prod").await?;
        anyhow::bail!(
            "old cluster holds {:?}, new {:?}; status {}",
            meshfeds(old).await?,
            meshfeds(new).await?,
            status_table(&f)
        );
    }
    wait_for_federation(
        host,
        "prod",
        Duration::from_secs(60),
        "Ready after the move",
        |f| {
            has_condition(f, "Ready", "True")
                && f.status.as_ref().is_some_and(|s| s.members.len() == 2)
        },
    )
    .await?;
    Ok(())
}
