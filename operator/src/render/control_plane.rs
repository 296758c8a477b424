//! Istio's control plane per member: Helm values for the official charts,
//! the cross-network Gateway, and what meshfed changes in rendered objects.
use std::collections::BTreeMap;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ISTIO_NAMESPACE, keys, managed_labels};
use crate::api::{GatewayServiceType, Member, MeshFederationSpec, defaults};

/// Label naming which chart (release) an object came from, for pruning.
pub const COMPONENT: &str = "meshfed.io/component";
/// Hash of what meshfed last applied: equal hash, nothing to write.
pub const APPLIED_HASH: &str = "meshfed.io/applied-hash";
/// Label holding the Istio version an object was rendered from.
pub const VERSION_LABEL: &str = "meshfed.io/istio-version";
/// Name of the east-west gateway's Deployment and Service.
pub const EAST_WEST_GATEWAY: &str = "istio-eastwestgateway";
/// Name of the ingress gateway's Deployment and Service.
pub const INGRESS_GATEWAY: &str = "istio-ingressgateway";
/// Component label of the base chart's objects.
pub const BASE: &str = "istio-base";
/// The `default` revision tag's injection webhook keeps the name of Istio's
/// revision-less injector (the chart calls it `istio-revision-tag-default`):
/// injection for `istio-injection=enabled` then moves between revisions, and
/// from a revision-less install to a revision, in one write to one object,
/// never with two webhooks matching or none.
pub const DEFAULT_TAG_WEBHOOK: &str = "istio-sidecar-injector";
const CHART_DEFAULT_TAG_WEBHOOK: &str = "istio-revision-tag-default";
/// Name of the Gateway that exposes `*.local` through the east-west gateway.
pub const CROSS_NETWORK_GATEWAY: &str = "cross-network-gateway";
/// Name (and component) of the mesh-wide DestinationRule with outlier detection.
pub const FAILOVER_DESTINATION_RULE: &str = "meshfed-failover";

/// `b` merged into `a`: objects key by key, anything else replaced.
pub fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Values for the istiod chart: the user's mesh-wide values, then the
/// member's, then what the federation requires (which always wins).
pub fn istiod_values(spec: &MeshFederationSpec, member: &Member) -> Value {
    let mut values = json!({});
    if let Some(v) = spec.control_plane.as_ref().and_then(|c| c.values.as_ref()) {
        merge(&mut values, v);
    }
    if let Some(v) = &member.control_plane_values {
        merge(&mut values, v);
    }
    merge(
        &mut values,
        &json!({
            "global": {
                "meshID": spec.mesh_id,
                "multiCluster": { "clusterName": member.name },
                "network": member.network,
            },
            // Proxies get their root bundle over xDS from istiod (as Istio's
            // own root-rotation test sets it), so a changed bundle reaches
            // them without a restart; only proxies injected afterwards.
            "meshConfig": {
                "trustDomain": spec.trust_domain(),
                "defaultConfig": { "proxyMetadata": { "PROXY_CONFIG_XDS_AGENT": "true" } },
            },
            // A changed root-cert.pem is only honoured with multi-root enabled:
            // needed for root rotation without restarts.
            "pilot": { "env": { "ISTIO_MULTIROOT_MESH": "true" } },
        }),
    );
    if let Some(locality) = locality_lb_setting(spec) {
        merge(
            &mut values,
            &json!({ "meshConfig": { "localityLbSetting": locality } }),
        );
    }
    values
}

/// `meshConfig.localityLbSetting` from `spec.failover.locality`, identical
/// for every member.
fn locality_lb_setting(spec: &MeshFederationSpec) -> Option<Value> {
    let locality = spec.failover.as_ref()?.locality.as_ref()?;
    let priority: Vec<String> = match &locality.failover_priority {
        Some(p) => p.clone(),
        None => defaults::FAILOVER_PRIORITY.map(String::from).to_vec(),
    };
    let mut setting = json!({ "enabled": true });
    if !priority.is_empty() {
        setting["failoverPriority"] = json!(priority);
    }
    if let Some(pairs) = locality.failover.as_ref().filter(|p| !p.is_empty()) {
        setting["failover"] = json!(pairs);
    }
    Some(setting)
}

/// A duration as protobuf JSON writes it (Istio's CRDs take only that form).
fn proto_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

/// The mesh-wide DestinationRule for `*.local` in the root namespace with
/// `spec.failover.outlierDetection`, so that locality failover acts on every
/// service; `None` when not asked for.
pub fn failover_destination_rule(
    federation: &str,
    spec: &MeshFederationSpec,
) -> Option<DynamicObject> {
    let od = spec.failover.as_ref()?.outlier_detection.as_ref()?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "DestinationRule",
    ));
    let mut rule = DynamicObject::new(FAILOVER_DESTINATION_RULE, &resource).within(ISTIO_NAMESPACE);
    let interval = od.interval.map_or(defaults::OUTLIER_INTERVAL, Into::into);
    let ejection = od
        .base_ejection_time
        .map_or(defaults::BASE_EJECTION_TIME, Into::into);
    rule.data = json!({
        "spec": {
            "host": "*.local",
            "trafficPolicy": {
                "outlierDetection": {
                    "consecutive5xxErrors": od.consecutive_5xx_errors.unwrap_or(defaults::CONSECUTIVE_5XX_ERRORS),
                    "interval": proto_duration(interval),
                    "baseEjectionTime": proto_duration(ejection),
                    "maxEjectionPercent": od.max_ejection_percent.unwrap_or(defaults::MAX_EJECTION_PERCENT),
                },
            },
        }
    });
    Some(mark(rule, federation, FAILOVER_DESTINATION_RULE))
}

/// Values for the base chart (CRDs and cluster-wide bits): its default
/// validating webhook goes to the revision the `default` tag points to
/// (`""` for a revision-less istiod).
pub fn base_values(default_revision: &str) -> Value {
    let revision = if default_revision.is_empty() {
        "default"
    } else {
        default_revision
    };
    json!({ "defaultRevision": revision })
}

/// The component label of a revision's istiod objects: `istiod-<revision>`,
/// `istiod` for a revision-less install.
pub fn istiod_component(revision: &str) -> String {
    if revision.is_empty() {
        "istiod".into()
    } else {
        format!("istiod-{revision}")
    }
}

/// The revision an istiod component label names (see [`istiod_component`]).
pub fn component_revision(component: &str) -> Option<&str> {
    match component {
        "istiod" => Some(""),
        c => c.strip_prefix("istiod-"),
    }
}

/// `values` for one revision: its name, and the revision tags when it holds them.
pub fn with_revision(mut values: Value, revision: &str, tags: Option<Vec<String>>) -> Value {
    if !revision.is_empty() {
        merge(&mut values, &json!({ "revision": revision }));
    }
    if let Some(tags) = tags {
        merge(&mut values, &json!({ "revisionTags": tags }));
    }
    values
}

/// Gives the chart's `default` tag webhook its classic name (see
/// [`DEFAULT_TAG_WEBHOOK`]).
pub fn rename_default_tag(mut obj: DynamicObject) -> DynamicObject {
    let is_tag_webhook = obj
        .types
        .as_ref()
        .is_some_and(|t| t.kind == "MutatingWebhookConfiguration");
    if is_tag_webhook && obj.metadata.name.as_deref() == Some(CHART_DEFAULT_TAG_WEBHOOK) {
        obj.metadata.name = Some(DEFAULT_TAG_WEBHOOK.into());
    }
    obj
}

/// Values for the gateway chart that make it the member's east-west gateway:
/// network label and requested network view, ports 15021/15443/15012/15017.
pub fn east_west_gateway_values(spec: &MeshFederationSpec, member: &Member) -> Value {
    let gw = spec
        .control_plane
        .as_ref()
        .and_then(|c| c.east_west_gateway.clone())
        .unwrap_or_default();
    let service_type = service_type(gw.service_type.unwrap_or_default());
    json!({
        "name": EAST_WEST_GATEWAY,
        "labels": { "app": EAST_WEST_GATEWAY, "istio": "eastwestgateway" },
        "networkGateway": member.network,
        "service": { "type": service_type },
        "replicaCount": gw.replicas.unwrap_or(1),
        "autoscaling": { "enabled": false },
    })
}

/// Values for the gateway chart that make it the member's ingress gateway
/// (`istio: ingressgateway`, what Gateway resources usually select).
pub fn ingress_gateway_values(spec: &MeshFederationSpec) -> Value {
    let gw = spec
        .control_plane
        .as_ref()
        .and_then(|c| c.ingress_gateway.clone())
        .unwrap_or_default();
    json!({
        "name": INGRESS_GATEWAY,
        "labels": { "app": INGRESS_GATEWAY, "istio": "ingressgateway" },
        "service": { "type": service_type(gw.service_type.unwrap_or_default()) },
        "replicaCount": gw.replicas.unwrap_or(defaults::INGRESS_REPLICAS),
        "autoscaling": { "enabled": false },
    })
}

fn service_type(t: GatewayServiceType) -> &'static str {
    match t {
        GatewayServiceType::LoadBalancer => "LoadBalancer",
        GatewayServiceType::NodePort => "NodePort",
        GatewayServiceType::ClusterIP => "ClusterIP",
    }
}

/// The Gateway that routes `*.local` mTLS traffic from other networks through
/// the east-west gateway, untouched (AUTO_PASSTHROUGH).
pub fn cross_network_gateway(federation: &str) -> DynamicObject {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        "Gateway",
    ));
    let mut gateway = DynamicObject::new(CROSS_NETWORK_GATEWAY, &resource).within(ISTIO_NAMESPACE);
    gateway.data = json!({
        "spec": {
            "selector": { "istio": "eastwestgateway" },
            "servers": [{
                "port": { "number": 15443, "name": "tls", "protocol": "TLS" },
                "tls": { "mode": "AUTO_PASSTHROUGH" },
                "hosts": ["*.local"],
            }],
        }
    });
    mark(gateway, federation, "cross-network-gateway")
}

/// Makes a rendered chart object meshfed's: its labels (managed-by, federation,
/// component, Istio version) and the hash of what is applied. Fields istiod
/// manages are dropped so server-side apply never takes them: webhook
/// `caBundle`s, and the validating webhook's `failurePolicy` (istiod flips it
/// to Fail once ready).
pub fn prepare_chart_object(
    mut obj: DynamicObject,
    federation: &str,
    component: &str,
    version: &str,
) -> DynamicObject {
    obj.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(VERSION_LABEL.into(), version.into());
    let kind = obj
        .types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default();
    if kind.ends_with("WebhookConfiguration")
        && let Some(webhooks) = obj.data.get_mut("webhooks").and_then(Value::as_array_mut)
    {
        for hook in webhooks {
            if let Some(cc) = hook.get_mut("clientConfig").and_then(Value::as_object_mut) {
                cc.remove("caBundle");
            }
            if kind == "ValidatingWebhookConfiguration"
                && let Some(h) = hook.as_object_mut()
            {
                h.remove("failurePolicy");
            }
        }
    }
    mark(obj, federation, component)
}

/// Field manager for values meshfed sets once, at creation, and then leaves to
/// their real owner.
pub const BOOTSTRAP_MANAGER: &str = "meshfed-bootstrap";

/// What a new object must start with that meshfed does not own afterwards:
/// the chart's initial validating-webhook `failurePolicy` (Ignore until istiod
/// is ready and flips it to Fail). Without it the API server defaults to Fail
/// and rejects Istio config before istiod can serve.
pub fn creation_defaults(rendered: &DynamicObject) -> Option<DynamicObject> {
    let types = rendered.types.as_ref()?;
    if types.kind != "ValidatingWebhookConfiguration" {
        return None;
    }
    let webhooks: Vec<Value> = rendered
        .data
        .get("webhooks")?
        .as_array()?
        .iter()
        .filter_map(|w| {
            Some(json!({ "name": w.get("name")?, "failurePolicy": w.get("failurePolicy")? }))
        })
        .collect();
    if webhooks.is_empty() {
        return None;
    }
    let mut patch = DynamicObject {
        types: Some(types.clone()),
        metadata: Default::default(),
        data: json!({ "webhooks": webhooks }),
    };
    patch.metadata.name = rendered.metadata.name.clone();
    Some(patch)
}

fn mark(mut obj: DynamicObject, federation: &str, component: &str) -> DynamicObject {
    let labels = obj.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.extend(managed_labels(federation));
    labels.insert(COMPONENT.into(), component.into());
    let annotations = obj.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.remove(APPLIED_HASH);
    let hash = {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&obj).unwrap_or_default());
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    obj.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH.into(), hash);
    obj
}

/// Whether the live object is the one meshfed would apply now: it carries the
/// hash of the current render, and nobody changed what meshfed sets (an
/// istiod Deployment edited by hand is drift, and is applied again). Only
/// the hash of what meshfed last applied counts for webhook configurations,
/// which istiod co-manages (it patches `caBundle` and flips
/// `failurePolicy`), and for CRDs, whose megabytes of schema meshfed does
/// not fetch to compare.
pub fn is_current(live: &DynamicObject, desired: &DynamicObject) -> bool {
    let hash = |o: &DynamicObject| {
        o.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_HASH))
            .cloned()
    };
    let ours = live
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::MANAGED_BY))
        .map(String::as_str)
        == Some(keys::MANAGED_BY_VALUE);
    let co_managed = desired.types.as_ref().is_some_and(|t| {
        t.kind.ends_with("WebhookConfiguration") || t.kind == "CustomResourceDefinition"
    });
    ours && hash(live).is_some()
        && hash(live) == hash(desired)
        && (co_managed || drift(live, desired).is_none())
}

/// Where `live` differs from what meshfed applies (`None`: nowhere). Objects
/// from a list carry no apiVersion and kind, so those are not compared.
pub fn drift(live: &DynamicObject, desired: &DynamicObject) -> Option<String> {
    let value = |o: &DynamicObject| {
        let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
        if let Some(fields) = v.as_object_mut() {
            fields.remove("apiVersion");
            fields.remove("kind");
        }
        v
    };
    super::difference(&value(live), &value(desired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ControlPlaneMode, ControlPlaneSpec, EastWestGatewaySpec, MemberCredentials};

    fn member(name: &str, network: &str) -> Member {
        Member {
            name: name.into(),
            network: network.into(),
            credentials: MemberCredentials {
                secret_ref: None,
                local: Some(Default::default()),
            },
            api_server: None,
            control_plane_values: None,
            east_west_gateway: None,
        }
    }

    fn spec(members: Vec<Member>) -> MeshFederationSpec {
        MeshFederationSpec {
            mesh_id: "mesh1".into(),
            trust_domain: Some("example.org".into()),
            members,
            ca: None,
            remote_secrets: None,
            control_plane: Some(ControlPlaneSpec {
                mode: ControlPlaneMode::Managed,
                version: Some("1.31".into()),
                values: None,
                east_west_gateway: None,
                upgrade: None,
                revision_tags: None,
                ingress_gateway: None,
            }),
            failover: None,
            allow_peers_to_read_operator_secrets: None,
        }
    }

    #[test]
    fn revisions_name_components_values_and_the_default_validator() {
        assert_eq!(istiod_component(""), "istiod");
        assert_eq!(istiod_component("1-31"), "istiod-1-31");
        assert_eq!(component_revision("istiod-1-31"), Some("1-31"));
        assert_eq!(component_revision("istiod"), Some(""));
        assert_eq!(component_revision("istio-base"), None);
        let v = with_revision(
            json!({"pilot": {}}),
            "1-31",
            Some(vec!["default".into(), "canary".into()]),
        );
        assert_eq!(v["revision"], "1-31");
        assert_eq!(v["revisionTags"], json!(["default", "canary"]));
        let v = with_revision(json!({}), "", None);
        assert!(v.get("revision").is_none() && v.get("revisionTags").is_none());
        assert_eq!(base_values("")["defaultRevision"], "default");
        assert_eq!(base_values("1-30")["defaultRevision"], "1-30");
    }

    #[test]
    fn the_default_tag_webhook_takes_the_classic_injector_name() {
        let hook = |name: &str, kind: &str| -> DynamicObject {
            serde_json::from_value(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}})).unwrap()
        };
        let renamed = rename_default_tag(hook(
            "istio-revision-tag-default",
            "MutatingWebhookConfiguration",
        ));
        assert_eq!(renamed.metadata.name.as_deref(), Some(DEFAULT_TAG_WEBHOOK));
        for (name, kind) in [
            ("istio-revision-tag-canary", "MutatingWebhookConfiguration"),
            ("istio-revision-tag-default", "Service"),
        ] {
            assert_eq!(
                rename_default_tag(hook(name, kind))
                    .metadata
                    .name
                    .as_deref(),
                Some(name)
            );
        }
    }

    #[test]
    fn ingress_gateway_values_follow_the_spec() {
        use crate::api::IngressGatewaySpec;
        let mut s = spec(vec![member("a", "n1")]);
        assert!(!s.wants_ingress_gateway());
        s.control_plane.as_mut().unwrap().ingress_gateway = Some(IngressGatewaySpec {
            enabled: None,
            service_type: Some(GatewayServiceType::NodePort),
            replicas: Some(2),
        });
        assert!(s.wants_ingress_gateway());
        let v = ingress_gateway_values(&s);
        assert_eq!(v["name"], INGRESS_GATEWAY);
        assert_eq!(v["labels"]["istio"], "ingressgateway");
        assert_eq!(v["service"]["type"], "NodePort");
        assert_eq!(v["replicaCount"], 2);
        s.control_plane
            .as_mut()
            .unwrap()
            .ingress_gateway
            .as_mut()
            .unwrap()
            .enabled = Some(false);
        assert!(!s.wants_ingress_gateway());
    }

    #[test]
    fn federation_values_win_over_user_values() {
        let mut s = spec(vec![member("east", "net-a")]);
        s.control_plane.as_mut().unwrap().values = Some(
            json!({"global": {"meshID": "hijack", "hub": "my.registry"}, "pilot": {"resources": {"cpu": "1"}}}),
        );
        let mut m = member("east", "net-a");
        m.control_plane_values =
            Some(json!({"global": {"hub": "member.registry"}, "pilot": {"env": {"X": "1"}}}));
        let v = istiod_values(&s, &m);
        assert_eq!(v["global"]["meshID"], "mesh1");
        assert_eq!(v["global"]["multiCluster"]["clusterName"], "east");
        assert_eq!(v["global"]["network"], "net-a");
        assert_eq!(
            v["global"]["hub"], "member.registry",
            "member values over mesh-wide ones"
        );
        assert_eq!(v["meshConfig"]["trustDomain"], "example.org");
        assert_eq!(v["pilot"]["env"]["ISTIO_MULTIROOT_MESH"], "true");
        assert_eq!(
            v["meshConfig"]["defaultConfig"]["proxyMetadata"]["PROXY_CONFIG_XDS_AGENT"],
            "true"
        );
        assert_eq!(
            v["pilot"]["env"]["X"], "1",
            "user env kept beside meshfed's"
        );
        assert_eq!(v["pilot"]["resources"]["cpu"], "1");
    }

    #[test]
    fn gateways_default_to_multi_network_federations() {
        let one_net = spec(vec![member("a", "n1"), member("b", "n1")]);
        assert!(!one_net.wants_gateway(&one_net.members[0]));
        let two_nets = spec(vec![member("a", "n1"), member("b", "n2")]);
        assert!(two_nets.wants_gateway(&two_nets.members[0]));
        let mut asked = spec(vec![member("a", "n1"), member("b", "n1")]);
        asked.members[1].east_west_gateway = Some(true);
        assert!(asked.wants_gateway(&asked.members[1]) && !asked.wants_gateway(&asked.members[0]));
        let mut off = spec(vec![member("a", "n1"), member("b", "n2")]);
        off.control_plane.as_mut().unwrap().east_west_gateway = Some(EastWestGatewaySpec {
            enabled: Some(false),
            ..Default::default()
        });
        assert!(!off.wants_gateway(&off.members[0]));
        let mut none = spec(vec![member("a", "n1"), member("b", "n2")]);
        none.control_plane = None;
        assert!(
            !none.wants_gateway(&none.members[0]),
            "no control plane, no gateways"
        );
    }

    #[test]
    fn gateway_values_make_a_network_gateway() {
        let mut s = spec(vec![member("a", "n1")]);
        s.control_plane.as_mut().unwrap().east_west_gateway = Some(EastWestGatewaySpec {
            enabled: None,
            service_type: Some(GatewayServiceType::NodePort),
            replicas: Some(3),
        });
        let v = east_west_gateway_values(&s, &s.members[0]);
        assert_eq!(v["networkGateway"], "n1");
        assert_eq!(v["service"]["type"], "NodePort");
        assert_eq!(v["replicaCount"], 3);
        assert_eq!(v["autoscaling"]["enabled"], false);
        assert_eq!(v["labels"]["istio"], "eastwestgateway");
        let default = east_west_gateway_values(&spec(vec![member("a", "n1")]), &member("a", "n1"));
        assert_eq!(
            (
                default["service"]["type"].as_str(),
                default["replicaCount"].as_i64()
            ),
            (Some("LoadBalancer"), Some(1))
        );
    }

    #[test]
    fn cross_network_gateway_passes_local_tls_through() {
        let g = cross_network_gateway("prod");
        assert_eq!(g.metadata.name.as_deref(), Some("cross-network-gateway"));
        assert_eq!(g.metadata.namespace.as_deref(), Some("istio-system"));
        let server = &g.data["spec"]["servers"][0];
        assert_eq!(server["port"]["number"], 15443);
        assert_eq!(server["tls"]["mode"], "AUTO_PASSTHROUGH");
        assert_eq!(server["hosts"], json!(["*.local"]));
        assert_eq!(g.data["spec"]["selector"]["istio"], "eastwestgateway");
    }

    #[test]
    fn webhook_fields_istiod_manages_are_not_applied() {
        let hook: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "istio-validator", "labels": {"app.kubernetes.io/managed-by": "Helm"}},
            "webhooks": [{"name": "v.istio.io", "failurePolicy": "Ignore", "clientConfig": {"caBundle": "", "service": {"name": "istiod"}}}]
        })).unwrap();
        let out = prepare_chart_object(hook, "prod", "istiod", "1.31");
        let w = &out.data["webhooks"][0];
        assert!(w.get("failurePolicy").is_none());
        assert!(w["clientConfig"].get("caBundle").is_none());
        assert_eq!(w["clientConfig"]["service"]["name"], "istiod");
        let labels = out.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "meshfed");
        assert_eq!(labels[COMPONENT], "istiod");
        assert_eq!(labels[VERSION_LABEL], "1.31");
        assert!(crate::render::is_ours(&out.metadata, "prod"));
    }

    #[test]
    fn initial_failure_policy_is_a_creation_default_only() {
        let hook: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "istio-validator"},
            "webhooks": [{"name": "a.istio.io", "failurePolicy": "Ignore", "clientConfig": {}}, {"name": "b.istio.io", "clientConfig": {}}]
        })).unwrap();
        let patch = creation_defaults(&hook).unwrap();
        assert_eq!(patch.metadata.name.as_deref(), Some("istio-validator"));
        assert_eq!(
            patch.data["webhooks"],
            json!([{"name": "a.istio.io", "failurePolicy": "Ignore"}])
        );
        assert!(creation_defaults(&cross_network_gateway("prod")).is_none());
    }

    #[test]
    fn applied_hash_tracks_content() {
        let a = cross_network_gateway("prod");
        assert!(is_current(&a, &cross_network_gateway("prod")));
        let mut changed = cross_network_gateway("prod");
        changed.data["spec"]["servers"][0]["hosts"] = json!(["*.mesh"]);
        let changed = mark(changed, "prod", "cross-network-gateway");
        assert!(!is_current(&a, &changed));
        let mut foreign = a.clone();
        foreign.metadata.labels = None;
        assert!(!is_current(&foreign, &a));
        // Edited by hand, hash annotation untouched: still drift.
        let mut edited = a.clone();
        edited.data["spec"]["servers"][0]["tls"]["mode"] = json!("SIMPLE");
        assert!(!is_current(&edited, &a));
        // A CRD is current by its hash: only its metadata is listed.
        let crd = |hash: &str| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "gateways.networking.istio.io", "labels": {"app.kubernetes.io/managed-by": "meshfed"}, "annotations": {APPLIED_HASH: hash}},
                "spec": {"group": "networking.istio.io"}
            }))
            .unwrap()
        };
        let mut listed = crd("h1");
        listed.data = Value::Null;
        assert!(is_current(&listed, &crd("h1")));
        assert!(!is_current(&listed, &crd("h2")));
        // Fields only the live object has (defaults, status) are no drift.
        let mut defaulted = a.clone();
        defaulted.data["status"] = json!({"observed": 1});
        assert!(is_current(&defaulted, &a));
        assert_eq!(
            mark(a.clone(), "prod", "cross-network-gateway")
                .metadata
                .annotations,
            a.metadata.annotations,
            "re-marking is stable"
        );
    }

    #[test]
    fn locality_failover_is_rendered_the_same_for_every_member() {
        use crate::api::{FailoverSpec, LocalityFailoverSpec, RegionFailover};
        let mut s = spec(vec![member("east", "net-a"), member("west", "net-b")]);
        assert!(istiod_values(&s, &s.members[0])["meshConfig"]["localityLbSetting"].is_null());
        s.failover = Some(FailoverSpec {
            locality: Some(LocalityFailoverSpec::default()),
            ..FailoverSpec::default()
        });
        let east = istiod_values(&s, &s.members[0]);
        let west = istiod_values(&s, &s.members[1]);
        assert_eq!(
            east["meshConfig"]["localityLbSetting"],
            json!({"enabled": true, "failoverPriority": ["topology.istio.io/network", "topology.istio.io/cluster"]})
        );
        assert_eq!(
            east["meshConfig"]["localityLbSetting"],
            west["meshConfig"]["localityLbSetting"]
        );
        assert_eq!(
            east["meshConfig"]["trustDomain"], "example.org",
            "merged, not replaced"
        );
        s.failover.as_mut().unwrap().locality = Some(LocalityFailoverSpec {
            failover_priority: Some(vec![]),
            failover: Some(vec![RegionFailover {
                from: "us-east".into(),
                to: "us-west".into(),
            }]),
        });
        assert_eq!(
            istiod_values(&s, &s.members[0])["meshConfig"]["localityLbSetting"],
            json!({"enabled": true, "failover": [{"from": "us-east", "to": "us-west"}]})
        );
    }

    #[test]
    fn the_failover_destination_rule_covers_every_local_host_with_proto_durations() {
        use crate::api::{FailoverSpec, OutlierDetectionSpec};
        let mut s = spec(vec![member("east", "net-a")]);
        assert!(failover_destination_rule("prod", &s).is_none());
        s.failover = Some(FailoverSpec {
            outlier_detection: Some(OutlierDetectionSpec {
                interval: Some("1m30s".parse().unwrap()),
                ..OutlierDetectionSpec::default()
            }),
            ..FailoverSpec::default()
        });
        let rule = failover_destination_rule("prod", &s).unwrap();
        assert_eq!(rule.metadata.namespace.as_deref(), Some(ISTIO_NAMESPACE));
        assert_eq!(
            rule.metadata.name.as_deref(),
            Some(FAILOVER_DESTINATION_RULE)
        );
        assert_eq!(rule.data["spec"]["host"], "*.local");
        assert_eq!(
            rule.data["spec"]["trafficPolicy"]["outlierDetection"],
            json!({"consecutive5xxErrors": 5, "interval": "90s", "baseEjectionTime": "30s", "maxEjectionPercent": 100})
        );
        assert_eq!(
            proto_duration(std::time::Duration::from_millis(1500)),
            "1.500s"
        );
        let labels = rule.metadata.labels.unwrap();
        assert_eq!(labels[COMPONENT], FAILOVER_DESTINATION_RULE);
    }
}
