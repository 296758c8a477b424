//! Proves the test bed is made of real clusters: real controllers schedule
//! and run workloads, clusters are isolated from one another, service
//! account tokens are minted and checked per cluster with RBAC enforced, and
//! API server faults behave like the real thing.
//!
//! Needs the test bed binaries (`make testbed-tools`, or MESHFED_TESTBED_BIN).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::Fleet;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

/// Polls `f` until it yields `Some`, or fails after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not yet");
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "containers": [{ "name": "app", "image": "registry.invalid/meshfed/app:1" }]
                }
            }
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_become_available_in_two_clusters() -> Result<()> {
    let fleet = Fleet::start(2).await?;
    for c in fleet.clusters() {
        let api: Api<Deployment> = Api::namespaced(c.client(), "default");
        api.create(&PostParams::default(), &deployment("web", 2))
            .await
            .with_context(|| format!("create deployment in {}", c.name()))?;
    }
    for c in fleet.clusters() {
        let api: Api<Deployment> = Api::namespaced(c.client(), "default");
        let d = eventually(
            &format!("deployment web Available in {}", c.name()),
            Duration::from_secs(90),
            || async {
                let d = api.get("web").await?;
                let st = d.status.clone().unwrap_or_default();
                let available = st
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Available" && c.status == "True");
                Ok((available && st.available_replicas == Some(2)).then_some(d))
            },
        )
        .await?;
        assert_eq!(d.status.unwrap().ready_replicas, Some(2));
        // The pods really went through scheduler and kwok: bound to the
        // cluster's node, Running, with IPs from the cluster's pod CIDR.
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.client(), "default");
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        assert_eq!(list.items.len(), 2);
        let cidr_prefix = format!("10.{}.", 100 + c.index());
        for p in list.items {
            let spec = p.spec.unwrap();
            let st = p.status.unwrap();
            assert_eq!(spec.node_name.as_deref(), Some(c.node_names()[0].as_str()));
            assert_eq!(st.phase.as_deref(), Some("Running"));
            let ip = st.pod_ip.unwrap_or_default();
            assert!(
                ip.starts_with(&cidr_prefix),
                "pod IP {ip} not in {cidr_prefix}0.0/16"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_do_not_leak_between_clusters() -> Result<()> {
    let fleet = Fleet::start(2).await?;
    let (a, b) = (fleet.cluster(0), fleet.cluster(1));
    assert_eq!((a.name(), b.name()), ("cluster-0", "cluster-1"));
    assert_ne!(a.server_url(), b.server_url());
    assert_ne!(a.ca_pem(), b.ca_pem());

    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "only-in-a" },
        "data": { "cluster": a.name() }
    }))?;
    Api::<ConfigMap>::namespaced(a.client(), "default")
        .create(&PostParams::default(), &cm)
        .await?;
    let in_a = Api::<ConfigMap>::namespaced(a.client(), "default")
        .get_opt("only-in-a")
        .await?;
    assert_eq!(
        in_a.and_then(|c| c.data)
            .and_then(|d| d.get("cluster").cloned()),
        Some("cluster-0".to_string())
    );
    let in_b = Api::<ConfigMap>::namespaced(b.client(), "default")
        .get_opt("only-in-a")
        .await?;
    assert!(
        in_b.is_none(),
        "configmap created in cluster-0 is visible in cluster-1"
    );

    // Each cluster only trusts its own client CA: cluster-0's admin
    // credentials are rejected by cluster-1 even when pointed at it.
    let mut cross = a.kube_config();
    cross.cluster_url = b.server_url().parse()?;
    cross.root_cert = b.kube_config().root_cert;
    let err = Api::<ConfigMap>::namespaced(kube::Client::try_from(cross)?, "default")
        .list(&ListParams::default())
        .await
        .expect_err("cluster-1 accepted cluster-0's client certificate");
    assert_eq!(status_code(&err), Some(401), "{err}");

    // The kubeconfig is self-contained and named after the cluster.
    let kc: serde_json::Value = serde_yaml::from_str(a.kubeconfig_yaml())?;
    assert_eq!(kc["current-context"], "cluster-0");
    assert_eq!(kc["clusters"][0]["name"], "cluster-0");
    assert_eq!(kc["users"][0]["name"], "cluster-0");
    assert_eq!(kc["contexts"][0]["context"]["cluster"], "cluster-0");
    assert!(kc["clusters"][0]["cluster"]["certificate-authority-data"].is_string());
    for key in ["client-certificate-data", "client-key-data"] {
        assert!(kc["users"][0]["user"][key].is_string(), "{key}");
    }
    assert_eq!(
        std::fs::read_to_string(a.kubeconfig_path())?,
        a.kubeconfig_yaml()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_checked_by_rbac_and_by_cluster() -> Result<()> {
    let fleet = Fleet::start(2).await?;
    let (a, b) = (fleet.cluster(0), fleet.cluster(1));
    let admin = a.client();
    let ns = "tokens";
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": ns } }))?,
        )
        .await?;
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &serde_json::from_value(json!({ "metadata": { "name": "reader" } }))?,
        )
        .await?;
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": { "name": "configmap-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }]
            }))?,
        )
        .await?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": { "name": "reader" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": ns }]
            }))?,
        )
        .await?;

    let tr: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 3600 }
    }))?;
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request("reader", &pp, &tr)
        .await?
        .status
        .context("TokenRequest has no status")?
        .token;
    assert!(!token.is_empty());

    let bearer = |cluster: &e2e::Cluster| -> Result<kube::Client> {
        let mut cfg = kube::Config::new(cluster.server_url().parse()?);
        cfg.root_cert = cluster.kube_config().root_cert;
        cfg.headers.push((
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        ));
        Ok(kube::Client::try_from(cfg)?)
    };
    let as_sa = bearer(a)?;

    // Authenticated as the service account...
    let review = Api::<SelfSubjectReview>::all(as_sa.clone())
        .create(&pp, &SelfSubjectReview::default())
        .await?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:tokens:reader")
    );

    // ...allowed what the Role grants (RBAC caches catch up asynchronously)...
    let cms = Api::<ConfigMap>::namespaced(as_sa.clone(), ns);
    eventually(
        "RBAC to allow listing configmaps",
        Duration::from_secs(30),
        || async { Ok(cms.list(&ListParams::default()).await.ok().map(|_| ())) },
    )
    .await?;

    // ...and nothing else.
    for (what, res) in [
        (
            "secrets in its namespace",
            Api::<Secret>::namespaced(as_sa.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|_| ()),
        ),
        (
            "configmaps in another namespace",
            Api::<ConfigMap>::namespaced(as_sa.clone(), "default")
                .list(&ListParams::default())
                .await
                .map(|_| ()),
        ),
        (
            "creating a configmap",
            cms.create(
                &pp,
                &serde_json::from_value(json!({ "metadata": { "name": "nope" } }))?,
            )
            .await
            .map(|_| ()),
        ),
    ] {
        let err = res.expect_err(what);
        assert_eq!(status_code(&err), Some(403), "{what}: {err}");
    }

    // The other cluster has its own signing key: the token means nothing there.
    let err = Api::<SelfSubjectReview>::all(bearer(b)?)
        .create(&pp, &SelfSubjectReview::default())
        .await
        .expect_err("cluster-1 accepted cluster-0's token");
    assert_eq!(status_code(&err), Some(401), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_apiserver_refuses_and_restarted_one_serves_the_same_data() -> Result<()> {
    let fleet = Fleet::start(1).await?;
    let c = fleet.cluster(0);
    let cms = Api::<ConfigMap>::namespaced(c.client(), "default");
    let created = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "survivor" },
                "data": { "k": "v" }
            }))?,
        )
        .await?;

    // Paused: the kernel still accepts connections, nobody answers.
    c.pause_apiserver()?;
    let hung = tokio::time::timeout(Duration::from_secs(2), cms.get("survivor")).await;
    assert!(hung.is_err(), "a paused API server answered: {hung:?}");
    c.resume_apiserver()?;
    let again = tokio::time::timeout(Duration::from_secs(30), cms.get("survivor")).await??;
    assert_eq!(again.metadata.uid, created.metadata.uid);

    // Stopped: connection refused.
    c.stop_apiserver().await?;
    assert!(!c.apiserver_running());
    let err = tokio::net::TcpStream::connect(("127.0.0.1", c.port()))
        .await
        .expect_err("a stopped API server accepted a connection");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        Api::<ConfigMap>::namespaced(c.client(), "default")
            .get("survivor")
            .await
            .is_err()
    );

    // Restarted on the same port with the same certificates and etcd
    // prefix: the same object, and the old kubeconfig still works.
    c.start_apiserver().await?;
    assert!(c.apiserver_running());
    let back = Api::<ConfigMap>::namespaced(c.client(), "default")
        .get("survivor")
        .await?;
    assert_eq!(back.metadata.uid, created.metadata.uid);
    assert_eq!(back.data.unwrap()["k"], "v");
    // The cluster keeps working after the outage.
    let node = c.node_names()[0].clone();
    eventually("node Ready after restart", Duration::from_secs(60), || {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client());
        let node = node.clone();
        async move {
            let n = nodes.get(&node).await?;
            let ready = n
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(ready.then_some(()))
        }
    })
    .await?;
    // Controller manager, scheduler and kwok rode out the outage.
    c.check_processes()?;
    Ok(())
}

#[test]
fn cluster_pki_has_the_identities_kubernetes_expects() -> Result<()> {
    use x509_parser::prelude::*;
    let pki = e2e::fleet::pki::ClusterPki::generate("cluster-7")?;
    let subject = |pem: &str| -> Result<(String, Vec<String>)> {
        let (_, p) = parse_x509_pem(pem.as_bytes())?;
        let cert = p.parse_x509()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let orgs = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(String::from))
            .collect();
        Ok((cn, orgs))
    };
    assert_eq!(
        subject(&pki.admin.cert_pem)?,
        ("admin".into(), vec!["system:masters".to_string()])
    );
    assert_eq!(
        subject(&pki.controller_manager.cert_pem)?.0,
        "system:kube-controller-manager"
    );
    assert_eq!(subject(&pki.scheduler.cert_pem)?.0, "system:kube-scheduler");

    // The serving certificate chains to the server CA for 127.0.0.1 and the
    // in-cluster names.
    let der = |pem: &str| -> Result<Vec<u8>> { Ok(parse_x509_pem(pem.as_bytes())?.1.contents) };
    let ca_der = der(&pki.server_ca.cert_pem)?;
    let leaf_der = der(&pki.serving.cert_pem)?;
    let ca_cert = rustls_pki_types_der(&ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca_cert)?;
    let leaf_cert = rustls_pki_types_der(&leaf_der);
    let ee = webpki::EndEntityCert::try_from(&leaf_cert)?;
    let now = rustls_pki_types::UnixTime::now();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )?;
    for name in [
        "127.0.0.1",
        "localhost",
        "kubernetes.default.svc",
        "10.96.0.1",
    ] {
        let sn = rustls_pki_types::ServerName::try_from(name)?;
        ee.verify_is_valid_for_subject_name(&sn)?;
    }
    // ...and the client CA did not sign it.
    let other = rustls_pki_types_der(&der(&pki.client_ca.cert_pem)?);
    let other = webpki::anchor_from_trusted_cert(&other)?;
    assert!(
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[other],
            &[],
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .is_err()
    );
    Ok(())
}

fn rustls_pki_types_der(der: &[u8]) -> rustls_pki_types::CertificateDer<'static> {
    rustls_pki_types::CertificateDer::from(der.to_vec())
}
