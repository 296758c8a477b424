//! spec.controlPlane.mode: External with nothing but the shipped member
//! RBAC: an admin installs istiod by hand in two members (two networks),
//! each member is reached with the identity `kubectl meshfed join` makes,
//! and meshfed installs and wires their east-west gateways with it (istiod
//! Available, east-west and ingress gateways Ready). That identity may
//! create Deployments in istio-system, but never one running as another
//! account (istiod's) or reaching into its node: the shipped admission
//! policy refuses both, and leaves an admin alone.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use e2e::Fleet;
use e2e::istiod::install_istio_by_hand;
use e2e::mesh::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use meshfed::api::{
    ControlPlaneMode, ControlPlaneSpec, EastWestGatewaySpec, GatewayServiceType, IngressGatewaySpec,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const NETWORKS: [&str; 2] = ["net-a", "net-b"];

/// A client acting as the identity in `kubeconfig`.
async fn client_of(kubeconfig: &str) -> Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// A one-container Deployment in istio-system running as `account`, with
/// `pod` merged into its pod spec.
fn deployment(account: &str, pod: serde_json::Value) -> Result<Deployment> {
    let mut spec = json!({
        "serviceAccountName": account,
        "containers": [{"name": "c", "image": "e2e"}],
    });
    meshfed::render::control_plane::merge(&mut spec, &pod);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "meshfed-e2e-run-as", "namespace": "istio-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "meshfed-e2e-run-as"}},
            "template": {"metadata": {"labels": {"app": "meshfed-e2e-run-as"}}, "spec": spec},
        },
    }))?)
}

/// The API server's 403 for `result`, with its message naming `by`.
fn refused_by<T: std::fmt::Debug>(result: Result<T, kube::Error>, by: &str) -> Result<String> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(by) => Ok(e.message),
        other => anyhow::bail!("not refused by {by}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_istio_is_wired_with_the_member_rbac_alone() -> Result<()> {
    let fleet = Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let (charts_dir, version) = istio_chart_set(fleet.dir()).await?;
    let host = fleet.cluster(0).client();
    install_operator_prerequisites(&host).await?;

    // cluster-0 only runs the operator; clusters 1 and 2 are the members.
    let started = Instant::now();
    let mut joined = Vec::new();
    for (c, network) in fleet.clusters()[1..].iter().zip(NETWORKS) {
        install_istio_by_hand(c, network, "mesh1").await?;
        // kwok's istiod pods cannot serve injection, which the gateway's
        // pods ask for (control_plane.rs does the same).
        relax_injection(&c.client()).await?;
        let kubeconfig = join_identity(c, "prod").await?;
        store_kubeconfig(&host, &credentials_secret_name(c), &kubeconfig).await?;
        joined.push(kubeconfig);
    }
    eprintln!(
        "istiod installed by hand and members joined in {:?}",
        started.elapsed()
    );

    let _operator = start_operator_with(fleet.cluster(0), managed_settings(charts_dir).await?)?;
    let members = fleet.clusters()[1..]
        .iter()
        .zip(NETWORKS)
        .map(|(c, n)| member(c, n))
        .collect();
    let mut fed = federation("prod", members);
    fed.spec.control_plane = Some(ControlPlaneSpec {
        mode: ControlPlaneMode::External,
        version: Some(version),
        // The test bed has no load balancer: peers use the cluster IP.
        east_west_gateway: Some(EastWestGatewaySpec {
            service_type: Some(GatewayServiceType::NodePort),
            ..Default::default()
        }),
        ingress_gateway: Some(IngressGatewaySpec {
            service_type: Some(GatewayServiceType::NodePort),
            ..Default::default()
        }),
        ..Default::default()
    });
    let started = Instant::now();
    apply_federation(&host, &fed).await?;
    let ready = wait_for_federation(&host, "prod", WAIT, "Ready with gateways", |f| {
        has_condition(f, "Ready", "True")
            && has_condition(f, "ControlPlanesReady", "True")
            && has_condition(f, "GatewaysReady", "True")
    })
    .await?;
    eprintln!("{}", status_table(&ready));
    eprintln!("External federation Ready in {:?}", started.elapsed());
    for m in &ready.status.as_ref().unwrap().members {
        ensure!(m.last_error.is_none(), "{}: {:?}", m.name, m.last_error);
        ensure!(m.gateway_address.is_some(), "{m:?}");
    }
    let gateways = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "Gateway",
    ));
    for c in &fleet.clusters()[1..] {
        let client = c.client();
        let deployments = Api::<Deployment>::namespaced(client.clone(), "istio-system");
        for gateway in ["istio-eastwestgateway", "istio-ingressgateway"] {
            ensure!(
                deployments.get_opt(gateway).await?.is_some(),
                "{}: Deployment {gateway}",
                c.name()
            );
        }
        ensure!(
            Api::<DynamicObject>::namespaced_with(client, "istio-system", &gateways)
                .get_opt("cross-network-gateway")
                .await?
                .is_some(),
            "{}: cross-network-gateway",
            c.name()
        );
    }

    // The member identity may create Deployments in istio-system: only
    // running as a gateway's account, and without host access.
    let member = client_of(&joined[0]).await?;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let as_member = Api::<Deployment>::namespaced(member.clone(), "istio-system");
    as_member
        .create(&dry, &deployment("istio-eastwestgateway", json!({}))?)
        .await
        .context("a Deployment running as the gateway's account")?;
    let forbidden = [
        ("running as istiod", deployment("istiod", json!({}))?),
        (
            "mounting its node's filesystem",
            deployment(
                "istio-eastwestgateway",
                json!({"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}),
            )?,
        ),
        (
            "privileged",
            deployment(
                "istio-eastwestgateway",
                json!({"containers": [{"name": "c", "image": "e2e",
                    "securityContext": {"privileged": true}}]}),
            )?,
        ),
    ];
    // The admission plugin loads a new policy a moment after `join`
    // created it.
    poll(
        Duration::from_secs(20),
        "admission policy meshfed-member-deployments in force",
        || async {
            let made = as_member
                .create(&dry, &deployment("istiod", json!({}))?)
                .await;
            Ok(refused_by(made, "meshfed-member-deployments").is_ok())
        },
    )
    .await?;
    for (what, d) in forbidden {
        let why = refused_by(
            as_member.create(&dry, &d).await,
            "meshfed-member-deployments",
        )
        .with_context(|| format!("a Deployment {what}"))?;
        eprintln!("refused, a Deployment {what}: {why}");
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "meshfed-e2e-run-as"},
        "spec": {"serviceAccountName": "istiod", "containers": [{"name": "c", "image": "e2e"}]},
    }))?;
    let made = Api::<Pod>::namespaced(member, "istio-system")
        .create(&dry, &pod)
        .await;
    refused_by(made, "cannot create resource \"pods\"").context("a Pod")?;
    // An admin is not judged: upgrading istiod by hand still works.
    Api::<Deployment>::namespaced(fleet.cluster(1).client(), "istio-system")
        .create(&dry, &deployment("istiod", json!({}))?)
        .await
        .context("an admin's Deployment running as istiod")?;
    Ok(())
}
