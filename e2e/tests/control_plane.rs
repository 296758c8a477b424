//! spec.controlPlane on real API servers: Istio's official charts rendered
//! with helm and applied by meshfed to three members on two networks; istiod
//! and east-west gateways become Available (kwok plays the kubelet); nothing
//! is rewritten in steady state; istiod's webhook fields are left to istiod;
//! an ingress gateway comes and goes; switching gateways off prunes them.
use std::time::Duration;

use anyhow::Result;
use e2e::Fleet;
use e2e::mesh::*;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use meshfed::api::{
    ControlPlaneMode, ControlPlaneSpec, EastWestGatewaySpec, GatewayServiceType,
    IngressGatewaySpec, MeshFederation,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
/// The revision meshfed installs the test bed's Istio 1.31 as.
const ISTIOD: &str = "istiod-1-31";

fn env_of(d: &Deployment, name: &str) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

fn cross_network_gateways(c: &Client) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "Gateway",
    ));
    Api::namespaced_with(c.clone(), "istio-system", &resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_charts_install_istiod_and_east_west_gateways() -> Result<()> {
    let fleet = Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let (charts_dir, version) = istio_chart_set(fleet.dir()).await?;
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let settings = managed_settings(charts_dir).await?;
    let operator = start_operator_with(fleet.cluster(0), settings)?;
    let mut fed = federation(
        "prod",
        vec![
            local_member(fleet.cluster(0), "net-a"),
            member(fleet.cluster(1), "net-a"),
            member(fleet.cluster(2), "net-b"),
        ],
    );
    fed.spec.control_plane = Some(ControlPlaneSpec {
        mode: ControlPlaneMode::Managed,
        version: Some(version.clone()),
        values: Some(json!({"pilot": {"env": {"MESHFED_E2E_MARKER": "5"}}})),
        east_west_gateway: Some(EastWestGatewaySpec {
            enabled: Some(false),
            service_type: Some(GatewayServiceType::NodePort),
            replicas: Some(2),
        }),
        ..Default::default()
    });
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "istiod available", |f| {
        has_condition(f, "Ready", "True") && has_condition(f, "ControlPlanesReady", "True")
    })
    .await?;
    // kwok's istiod pods cannot serve sidecar injection, and the gateway's pods
    // ask for it: relax the injector as a serving istiod would make moot.
    let clients: Vec<Client> = fleet.clusters().iter().map(|c| c.client()).collect();
    for c in &clients {
        relax_injection(c).await?;
    }
    // Members span two networks: by default each gets an east-west gateway.
    fed.spec
        .control_plane
        .as_mut()
        .unwrap()
        .east_west_gateway
        .as_mut()
        .unwrap()
        .enabled = None;
    apply_federation(&host, &fed).await?;
    let ready = wait_for_federation(
        &host,
        "prod",
        WAIT,
        "Ready with control planes and gateways",
        |f| {
            has_condition(f, "Ready", "True")
                && has_condition(f, "ControlPlanesReady", "True")
                && has_condition(f, "GatewaysReady", "True")
        },
    )
    .await?;
    eprintln!("{}", status_table(&ready));
    for m in &ready.status.as_ref().unwrap().members {
        assert_eq!(m.istio_version.as_deref(), Some(version.as_str()));
        assert_eq!(m.control_plane_ready, Some(true));
        assert!(m.gateway_address.is_some(), "{m:?}");
    }

    let networks = ["net-a", "net-a", "net-b"];
    for (i, c) in clients.iter().enumerate() {
        let crds = Api::<CustomResourceDefinition>::all(c.clone());
        assert!(
            crds.get_opt("gateways.networking.istio.io")
                .await?
                .is_some(),
            "base chart CRDs"
        );
        let deployments = Api::<Deployment>::namespaced(c.clone(), "istio-system");
        let istiod = deployments.get(ISTIOD).await?;
        assert_eq!(
            env_of(&istiod, "CLUSTER_ID").as_deref(),
            Some(fleet.cluster(i).name())
        );
        assert_eq!(
            env_of(&istiod, "ISTIO_MULTIROOT_MESH").as_deref(),
            Some("true")
        );
        assert_eq!(
            env_of(&istiod, "MESHFED_E2E_MARKER").as_deref(),
            Some("5"),
            "user values reach istiod"
        );
        let labels = istiod.metadata.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "meshfed");
        let gw = deployments.get("istio-eastwestgateway").await?;
        assert_eq!(gw.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(
            env_of(&gw, "ISTIO_META_REQUESTED_NETWORK_VIEW").as_deref(),
            Some(networks[i])
        );
        let svc = Api::<Service>::namespaced(c.clone(), "istio-system")
            .get("istio-eastwestgateway")
            .await?;
        assert_eq!(
            svc.metadata.labels.as_ref().unwrap()["topology.istio.io/network"],
            networks[i]
        );
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let mut ports: Vec<(String, i32)> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        ports.sort();
        assert_eq!(
            ports,
            [
                ("status-port".into(), 15021),
                ("tls".into(), 15443),
                ("tls-istiod".into(), 15012),
                ("tls-webhook".into(), 15017)
            ]
        );
        let gateway = cross_network_gateways(c)
            .get("cross-network-gateway")
            .await?;
        let server = &gateway.data["spec"]["servers"][0];
        assert_eq!(
            (
                server["port"]["number"].as_i64(),
                server["tls"]["mode"].as_str()
            ),
            (Some(15443), Some("AUTO_PASSTHROUGH"))
        );
        assert_eq!(server["hosts"], json!(["*.local"]));
    }

    // istiod patches its webhook's caBundle; meshfed must not take it back.
    let hooks = Api::<MutatingWebhookConfiguration>::all(clients[1].clone());
    let name = hooks
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find_map(|h| {
            h.metadata
                .name
                .filter(|n| n.starts_with("istio-sidecar-injector"))
        })
        .expect("injector webhook");
    let hook = hooks.get(&name).await?;
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": hook.webhooks.unwrap().iter().map(|w| json!({"name": w.name, "clientConfig": {"caBundle": "Y2EtZnJvbS1pc3Rpb2Q="}})).collect::<Vec<_>>(),
    });
    hooks
        .patch(
            &name,
            &PatchParams::apply("pilot-discovery").force(),
            &Patch::Apply(&patch),
        )
        .await?;

    // Force meshfed to apply the webhook again (a value that changes its
    // render): istiod's caBundle must survive the re-apply.
    let mut values = fed
        .spec
        .control_plane
        .as_ref()
        .unwrap()
        .values
        .clone()
        .unwrap();
    values["sidecarInjectorWebhook"] = json!({"reinvocationPolicy": "IfNeeded"});
    fed.spec.control_plane.as_mut().unwrap().values = Some(values.clone());
    apply_federation(&host, &fed).await?;
    poll(WAIT, "webhook applied again", || async {
        let hook = hooks.get(&name).await?;
        Ok(hook
            .webhooks
            .unwrap_or_default()
            .iter()
            .all(|w| w.reinvocation_policy.as_deref() == Some("IfNeeded")))
    })
    .await?;

    // istiod's Deployment edited by hand: the member watch sees it and
    // meshfed applies it again.
    let istiods = Api::<Deployment>::namespaced(clients[2].clone(), "istio-system");
    istiods
        .patch(
            ISTIOD,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "discovery", "env": [{"name": "MESHFED_E2E_MARKER", "value": "tampered"}]}
            ]}}}})),
        )
        .await?;
    poll(Duration::from_secs(10), "hand edit reverted", || async {
        Ok(env_of(&istiods.get(ISTIOD).await?, "MESHFED_E2E_MARKER").as_deref() == Some("5"))
    })
    .await?;

    // Steady state: several reconciles, no writes anywhere, caBundle intact.
    wait_for_federation(&host, "prod", WAIT, "Ready after the edits", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = operator.context.last_reconcile("prod").unwrap();
    for (member, count) in &stats.requests {
        assert_eq!(count.writes, 0, "{member}: {count:?}");
    }
    let after = hooks.get(&name).await?;
    for w in after.webhooks.unwrap() {
        assert_eq!(
            w.client_config.ca_bundle.map(|b| b.0),
            Some(b"ca-from-istiod".to_vec()),
            "caBundle left to istiod"
        );
    }

    // Autoscaling off: the chart renders no HorizontalPodAutoscaler any more,
    // and the one meshfed applied goes (its kind is in the claim's record).
    let hpas = Api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>::namespaced(
        clients[1].clone(),
        "istio-system",
    );
    assert!(
        hpas.get_opt(ISTIOD).await?.is_some(),
        "the chart's default HPA"
    );
    values["pilot"]["autoscaleEnabled"] = json!(false);
    fed.spec.control_plane.as_mut().unwrap().values = Some(values);
    apply_federation(&host, &fed).await?;
    poll(WAIT, "HPA pruned", || async {
        Ok(hpas.get_opt(ISTIOD).await?.is_none())
    })
    .await?;

    // An ingress gateway in every member: rendered from the gateway chart,
    // Available, its Service as asked; pruned when switched off. Its pods
    // ask for injection, which meshfed's re-apply above made strict again.
    for c in &clients {
        relax_injection(c).await?;
    }
    fed.spec.control_plane.as_mut().unwrap().ingress_gateway = Some(IngressGatewaySpec {
        enabled: None,
        service_type: Some(GatewayServiceType::NodePort),
        replicas: Some(2),
    });
    apply_federation(&host, &fed).await?;
    for c in &clients {
        let deployments = Api::<Deployment>::namespaced(c.clone(), "istio-system");
        poll(WAIT, "ingress gateway available", || async {
            let Some(d) = deployments.get_opt("istio-ingressgateway").await? else {
                return Ok(false);
            };
            Ok(d.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True"))
        })
        .await?;
        let d = deployments.get("istio-ingressgateway").await?;
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
        let svc = Api::<Service>::namespaced(c.clone(), "istio-system")
            .get("istio-ingressgateway")
            .await?;
        assert_eq!(
            svc.spec.as_ref().unwrap().type_.as_deref(),
            Some("NodePort")
        );
        assert_eq!(
            svc.spec.as_ref().unwrap().selector.as_ref().unwrap()["istio"],
            "ingressgateway"
        );
    }
    wait_for_federation(&host, "prod", WAIT, "Ready with ingress gateways", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    fed.spec
        .control_plane
        .as_mut()
        .unwrap()
        .ingress_gateway
        .as_mut()
        .unwrap()
        .enabled = Some(false);
    apply_federation(&host, &fed).await?;
    for c in &clients {
        let deployments = Api::<Deployment>::namespaced(c.clone(), "istio-system");
        poll(WAIT, "ingress gateway pruned", || async {
            Ok(deployments.get_opt("istio-ingressgateway").await?.is_none())
        })
        .await?;
        assert!(
            Api::<Service>::namespaced(c.clone(), "istio-system")
                .get_opt("istio-ingressgateway")
                .await?
                .is_none()
        );
    }

    // Gateways off: pruned everywhere, the condition goes away, istiod stays.
    fed.spec
        .control_plane
        .as_mut()
        .unwrap()
        .east_west_gateway
        .as_mut()
        .unwrap()
        .enabled = Some(false);
    apply_federation(&host, &fed).await?;
    wait_for_federation(
        &host,
        "prod",
        WAIT,
        "Ready without gateways",
        |f: &MeshFederation| {
            has_condition(f, "Ready", "True")
                && f.status
                    .as_ref()
                    .is_some_and(|s| !s.conditions.iter().any(|c| c.type_ == "GatewaysReady"))
        },
    )
    .await?;
    for c in &clients {
        let deployments = Api::<Deployment>::namespaced(c.clone(), "istio-system");
        assert!(
            deployments
                .get_opt("istio-eastwestgateway")
                .await?
                .is_none()
        );
        assert!(deployments.get_opt(ISTIOD).await?.is_some());
        assert!(
            cross_network_gateways(c)
                .get_opt("cross-network-gateway")
                .await?
                .is_none()
        );
    }

    // Deleting the federation with the default Retain policy keeps each
    // member's Istio running on its own; the cross-cluster wiring goes.
    Api::<MeshFederation>::all(host.clone())
        .delete("prod", &Default::default())
        .await?;
    poll(WAIT, "federation deleted", || async {
        Ok(Api::<MeshFederation>::all(host.clone())
            .get_opt("prod")
            .await?
            .is_none())
    })
    .await?;
    for c in &clients {
        assert!(
            Api::<Deployment>::namespaced(c.clone(), "istio-system")
                .get_opt(ISTIOD)
                .await?
                .is_some()
        );
        let secrets =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.clone(), "istio-system");
        let remote = secrets
            .list(&kube::api::ListParams::default().labels("istio/multiCluster=true"))
            .await?;
        assert!(remote.items.is_empty(), "remote secrets removed");
        assert!(
            secrets.get_opt("cacerts").await?.is_some(),
            "cacerts retained"
        );
    }
    drop(operator);
    Ok(())
}
