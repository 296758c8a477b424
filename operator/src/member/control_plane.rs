//! Istio's control plane in a member: the official charts applied in order
//! (base, istiod, east-west gateway), what a new render no longer contains
//! pruned, and istiod's and the gateway's health read back.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client, ResourceExt};

use super::identity::record_kinds;
use super::{MemberContext, PreparedMember, Work, error_text, error_text_in};
use crate::api::{ControlPlaneMode, Member, MeshFederation, MeshFederationSpec};
use crate::apply::KindCache;
use crate::apply::{apply_as, delete_all, is_not_found, write};
use crate::charts::{CLUSTER_PLACEHOLDER, Chart, NETWORK_PLACEHOLDER};
use crate::fleet::rollout::{ControlPlanePlan, Installed, Revision};
use crate::render::control_plane::{
    BASE, BOOTSTRAP_MANAGER, COMPONENT, CROSS_NETWORK_GATEWAY, DEFAULT_TAG_WEBHOOK,
    EAST_WEST_GATEWAY, FAILOVER_DESTINATION_RULE, INGRESS_GATEWAY, VERSION_LABEL, base_values,
    component_revision, creation_defaults, cross_network_gateway, drift, east_west_gateway_values,
    failover_destination_rule, ingress_gateway_values, is_current, istiod_component, istiod_values,
    prepare_chart_object, rename_default_tag, with_revision,
};
use crate::render::{
    ISTIO_NAMESPACE, is_ours, keys, kind_key, managed_selector, with_recorded_kinds,
};

/// What the control-plane step found in one member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControlPlaneReport {
    pub istio_version: Option<String>,
    pub ready: bool,
    pub problem: Option<String>,
    /// None when the member gets no gateway.
    pub gateway: Option<GatewayReport>,
    /// None when the member gets no ingress gateway.
    pub ingress: Option<GatewayReport>,
    /// The revisions and tags found (Managed).
    pub installed: Option<Installed>,
}

/// The member's east-west gateway.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayReport {
    pub ready: bool,
    pub address: Option<String>,
    pub problem: Option<String>,
}

/// The cluster a member's control plane goes into.
pub struct MemberCluster<'a> {
    pub client: &'a Client,
    /// Its identity (the `kube-system` namespace UID).
    pub id: &'a str,
    /// The version its API server reports, for the charts' `kubeVersion`.
    pub kube_version: &'a str,
    /// The kinds meshfed recorded applying there (its claim).
    pub recorded_kinds: BTreeSet<String>,
}

/// Istio's control plane in a reachable member (when the spec asks for
/// one). A first install applies dozens of objects, so it gets a longer
/// budget than a member's basic step, and its failures are control-plane
/// problems, never unreachability. It runs after the remote secrets, so
/// that a peer withdrawn or restored by failover is not held up by it.
pub async fn sync_member_control_plane(
    ctx: &MemberContext,
    fed: &MeshFederation,
    member: &Member,
    plan: &ControlPlanePlan,
    prepared: &mut PreparedMember,
) {
    let Some(conn) = prepared.connection.clone() else {
        return;
    };
    if fed.spec.control_plane.is_none() {
        return;
    }
    let conn = &conn;
    let budget = ctx.settings.member_timeout * 6;
    let certificates_ready = prepared.report.certificate_problem.is_none();
    let version = prepared
        .report
        .status
        .kubernetes_version
        .clone()
        .unwrap_or_default();
    let federation = fed.name_any();
    let cluster = prepared
        .report
        .status
        .cluster_id
        .clone()
        .unwrap_or_default();
    let target = MemberCluster {
        client: &conn.client,
        id: &cluster,
        kube_version: &version,
        recorded_kinds: prepared.recorded_kinds.clone(),
    };
    let work = sync_control_plane(
        ctx,
        &target,
        &federation,
        &fed.spec,
        member,
        plan,
        certificates_ready,
    );
    let managed = fed
        .spec
        .control_plane
        .as_ref()
        .is_some_and(|c| c.mode == ControlPlaneMode::Managed);
    let cp = match tokio::time::timeout(budget, work).await {
        Ok(Ok(cp)) => cp,
        failed => {
            let why = match failed {
                Ok(Err(e)) if managed => error_text_in(&e, Work::ManagedControlPlane),
                Ok(Err(e)) => error_text(&e),
                _ => format!("not done within {budget:?}; continuing next reconcile"),
            };
            ControlPlaneReport {
                problem: Some(format!("applying Istio: {why}")),
                ..Default::default()
            }
        }
    };
    let status = &mut prepared.report.status;
    status.istio_version = cp.istio_version;
    status.control_plane_ready = Some(cp.ready);
    status.gateway_address = cp.gateway.as_ref().and_then(|g| g.address.clone());
    status.revisions = cp
        .installed
        .as_ref()
        .map(crate::fleet::rollout::revision_status)
        .unwrap_or_default();
    status.tags_revision = cp
        .installed
        .as_ref()
        .and_then(|i| i.tags_at.as_deref())
        .map(|r| crate::fleet::rollout::display(r).to_string());
    prepared.report.installed = cp.installed;
    prepared.report.control_plane_problem = cp.problem;
    prepared.report.gateway_expected = cp.gateway.is_some();
    prepared.report.gateway_problem = cp.gateway.and_then(|g| g.problem);
    if let Some(problem) = cp.ingress.and_then(|g| g.problem) {
        prepared
            .report
            .other_problems
            .push(format!("ingress gateway: {problem}"));
    }
}

/// Drives the control plane of one member as `plan` says (Managed), or
/// wires the gateways of the Istio you installed (External).
/// `certificates_ready` gates the install: istiod must start with the
/// federation's CA, never a self-signed one.
#[allow(clippy::too_many_arguments)]
pub async fn sync_control_plane(
    ctx: &MemberContext,
    target: &MemberCluster<'_>,
    federation: &str,
    spec: &MeshFederationSpec,
    member: &Member,
    plan: &ControlPlanePlan,
    certificates_ready: bool,
) -> Result<ControlPlaneReport, kube::Error> {
    let MemberCluster {
        client,
        id: cluster,
        kube_version,
        ..
    } = *target;
    let mut recorded = target.recorded_kinds.clone();
    let Some(cp) = &spec.control_plane else {
        return Ok(ControlPlaneReport::default());
    };
    let mut report = ControlPlaneReport::default();
    let wants_gateway = spec.wants_gateway(member);
    let managed = cp.mode == ControlPlaneMode::Managed;
    if !certificates_ready && managed {
        report.problem = Some("waiting for cacerts before installing istiod".into());
        report.gateway = wants_gateway.then(GatewayReport::default);
        return Ok(report);
    }
    let apply = Apply {
        ctx,
        client,
        cluster,
        federation,
        kube_version,
        member: [
            (CLUSTER_PLACEHOLDER, member.name.as_str()),
            (NETWORK_PLACEHOLDER, member.network.as_str()),
        ],
    };

    // A member not known to the rollout yet is looked at first: one without
    // istiod is installed at once.
    let resolved;
    let plan = if managed && plan.if_new.is_some() {
        resolved = plan.resolve(&find_installed(client, federation).await?);
        &resolved
    } else {
        plan
    };
    if managed
        && let Some(problem) = install_istiod(&apply, spec, member, plan, &mut recorded).await?
    {
        report.problem = Some(problem);
        return Ok(report);
    }
    // Gateways follow the revision the tags point to (External: the version
    // in the spec, whose charts render them).
    let gateway_version = if managed {
        plan.active.as_ref().map(|a| a.version.clone())
    } else {
        cp.version.clone()
    };
    if let Some(version) = &gateway_version {
        if let Some(problem) =
            install_gateways(&apply, spec, member, version, &mut recorded).await?
        {
            report.problem = Some(problem);
            return Ok(report);
        }
        let wanted = wants_gateway.then(|| cross_network_gateway(federation));
        if let Some(problem) = wire_cross_network_gateway(&apply, wanted, &mut recorded).await? {
            report.gateway = Some(GatewayReport {
                problem: Some(problem),
                ..GatewayReport::default()
            });
        }
    }
    if let Some(problem) = apply_failover_rule(&apply, spec, &mut recorded).await? {
        report.problem = Some(format!("mesh-wide DestinationRule: {problem}"));
    }
    read_health(
        &apply,
        spec,
        member,
        managed.then_some(plan),
        gateway_version.is_some(),
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Base (its version with the tags' revision), each revision's istiod the
/// plan applies, and the revisions it removes; the first problem, if any.
async fn install_istiod(
    apply: &Apply<'_>,
    spec: &MeshFederationSpec,
    member: &Member,
    plan: &ControlPlanePlan,
    recorded: &mut BTreeSet<String>,
) -> Result<Option<String>, kube::Error> {
    let active_revision = plan.active.as_ref().map(|a| a.revision.as_str());
    if let (Some(version), Some(active)) = (&plan.base_version, active_revision) {
        let step = Step::chart(Chart::Base, base_values(active), version, BASE.into());
        if let Some(problem) = apply.step(step, recorded).await? {
            return Ok(Some(problem));
        }
    }
    let tags = revision_tags(spec);
    let shared = shared_member(member);
    for render in &plan.apply {
        // A revision-less istiod has its own injector for the default
        // tag's namespaces: kept while it holds the tags, handed over
        // (left out of its render) once a revision does.
        let revisionless = render.revision.is_empty();
        let values = with_revision(
            istiod_values(spec, &shared),
            &render.revision,
            (render.tags && !revisionless).then(|| tags.clone()),
        );
        let component = istiod_component(&render.revision);
        let step = Step {
            leave_out: (revisionless && !render.tags).then_some(DEFAULT_TAG_WEBHOOK),
            ..Step::chart(Chart::Istiod, values, &render.version, component)
        };
        if let Some(problem) = apply.step(step, recorded).await? {
            return Ok(Some(problem));
        }
    }
    for revision in &plan.remove {
        let step = Step {
            chart: None,
            component: istiod_component(revision),
            version: String::new(),
            values: serde_json::Value::Null,
            wanted: false,
            leave_out: None,
        };
        if let Some(problem) = apply.step(step, recorded).await? {
            return Ok(Some(problem));
        }
    }
    Ok(None)
}

/// The east-west gateway (where the member wants one) and the ingress
/// gateway (where the spec asks for one) at `version`, or their removal.
async fn install_gateways(
    apply: &Apply<'_>,
    spec: &MeshFederationSpec,
    member: &Member,
    version: &str,
    recorded: &mut BTreeSet<String>,
) -> Result<Option<String>, kube::Error> {
    let gateways = [
        (
            Chart::Gateway,
            east_west_gateway_values(spec, member),
            spec.wants_gateway(member),
        ),
        (
            Chart::IngressGateway,
            ingress_gateway_values(spec),
            spec.wants_ingress_gateway(),
        ),
    ];
    for (chart, values, wanted) in gateways {
        let step = Step {
            wanted,
            ..Step::chart(chart, values, version, chart.release().into())
        };
        if let Some(problem) = apply.step(step, recorded).await? {
            return Ok(Some(problem));
        }
    }
    Ok(None)
}

/// The `cross-network-gateway` Gateway that exposes the member's services
/// on its east-west gateway (`wanted`), or its removal.
async fn wire_cross_network_gateway(
    apply: &Apply<'_>,
    wanted: Option<DynamicObject>,
    recorded: &mut BTreeSet<String>,
) -> Result<Option<String>, kube::Error> {
    let kinds = kinds_in_order(&[cross_network_gateway(apply.federation)]);
    record_kinds(apply.client, recorded, kinds.iter().map(kind_key)).await?;
    let component = Component {
        name: CROSS_NETWORK_GATEWAY.into(),
        kinds,
        desired: wanted.into_iter().collect(),
        bootstraps: Vec::new(),
    };
    apply_component(
        &apply.ctx.kinds,
        apply.client,
        apply.cluster,
        apply.federation,
        &component,
    )
    .await
}

/// The mesh-wide DestinationRule of spec.failover.outlierDetection; its
/// kind is looked at only once it was ever wanted, so that a member
/// without Istio's CRDs is not held up by a rule nobody asked for. Its
/// failure (e.g. a member identity without the destinationrules rules) is
/// a problem to report; istiod's and the gateway's health are still read.
async fn apply_failover_rule(
    apply: &Apply<'_>,
    spec: &MeshFederationSpec,
    recorded: &mut BTreeSet<String>,
) -> Result<Option<String>, kube::Error> {
    let rule = failover_destination_rule(apply.federation, spec);
    let rule_kind = GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule");
    if rule.is_some() {
        record_kinds(apply.client, recorded, [kind_key(&rule_kind)]).await?;
    }
    if !recorded.contains(&kind_key(&rule_kind)) {
        return Ok(None);
    }
    let component = Component {
        name: FAILOVER_DESTINATION_RULE.into(),
        kinds: vec![rule_kind],
        desired: rule.into_iter().collect(),
        bootstraps: Vec::new(),
    };
    let ctx = apply.ctx;
    Ok(
        match apply_component(
            &ctx.kinds,
            apply.client,
            apply.cluster,
            apply.federation,
            &component,
        )
        .await
        {
            Ok(problem) => problem,
            Err(e) => Some(super::error_text(&e)),
        },
    )
}

/// istiod's health (Managed: the plan's active revision, and every
/// revision installed; External: the `istiod` Deployment) and the
/// gateways', into `report`.
async fn read_health(
    apply: &Apply<'_>,
    spec: &MeshFederationSpec,
    member: &Member,
    managed: Option<&ControlPlanePlan>,
    gateways_rendered: bool,
    report: &mut ControlPlaneReport,
) -> Result<(), kube::Error> {
    let client = apply.client;
    let deployments = Api::<Deployment>::namespaced(client.clone(), ISTIO_NAMESPACE);
    if let Some(plan) = managed {
        let installed = find_installed(client, apply.federation).await?;
        let active = plan.active.as_ref();
        report.istio_version = active.map(|a| a.version.clone());
        let state = active.and_then(|a| installed.revisions.get(&a.revision));
        report.ready = state.is_some_and(|r| r.ready);
        if !report.ready && report.problem.is_none() {
            report.problem = Some(match (active, state) {
                (Some(a), Some(r)) => r.problem.clone().unwrap_or_else(|| {
                    deployment_problem(&istiod_component(&a.revision), "not ready")
                }),
                (Some(a), None) => {
                    format!("{} is not installed yet", istiod_component(&a.revision))
                }
                (None, _) => "waiting for the rollout to decide this member's revision".into(),
            });
        }
        report.installed = Some(installed);
    } else {
        let unavailable = available(&deployments, "istiod").await?;
        report.ready = unavailable.is_none();
        if let (Some(why), None) = (unavailable, &report.problem) {
            report.problem = Some(external_istiod_problem(&why));
        }
    }
    if spec.wants_gateway(member) && report.gateway.is_none() {
        report.gateway = Some(gateway_report(client, &deployments, EAST_WEST_GATEWAY, true).await?);
    }
    if spec.wants_ingress_gateway() && gateways_rendered {
        report.ingress = Some(gateway_report(client, &deployments, INGRESS_GATEWAY, false).await?);
    }
    Ok(())
}

/// `member` with placeholders for its cluster name and network: members
/// with the same values share one render (see [`ChartRenderer`]).
///
/// [`ChartRenderer`]: crate::charts::ChartRenderer
fn shared_member(member: &Member) -> Member {
    Member {
        name: CLUSTER_PLACEHOLDER.into(),
        network: NETWORK_PLACEHOLDER.into(),
        ..member.clone()
    }
}

/// The revision tags: `default` and the spec's.
fn revision_tags(spec: &MeshFederationSpec) -> Vec<String> {
    let extra = spec
        .control_plane
        .as_ref()
        .and_then(|c| c.revision_tags.as_ref())
        .into_iter()
        .flatten()
        .map(|t| t.0.clone());
    std::iter::once("default".to_string())
        .chain(extra)
        .collect()
}

/// A gateway's Deployment, endpoints and address. Peers need the east-west
/// gateway's address; an ingress gateway's is reported when it has one.
async fn gateway_report(
    client: &Client,
    deployments: &Api<Deployment>,
    name: &str,
    needs_address: bool,
) -> Result<GatewayReport, kube::Error> {
    let unavailable = available(deployments, name).await?;
    let service = Api::<Service>::namespaced(client.clone(), ISTIO_NAMESPACE)
        .get_opt(name)
        .await?;
    let address = service.as_ref().and_then(gateway_address);
    // Traffic enters through the Service's endpoints, not the Deployment.
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ISTIO_NAMESPACE)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await?;
    let endpoints = ready_endpoints(&slices.items);
    let problem = gateway_problem(
        name,
        unavailable,
        endpoints,
        address.is_some(),
        needs_address,
    );
    Ok(GatewayReport {
        ready: problem.is_none(),
        address,
        problem,
    })
}

/// The istiod revisions meshfed installed in the member, where the `default`
/// tag points, the base chart's version, and what still uses each revision
/// other than the tagged one.
async fn find_installed(client: &Client, federation: &str) -> Result<Installed, kube::Error> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ISTIO_NAMESPACE)
        .list(&ListParams::default().labels(&managed_selector(federation)))
        .await?;
    let mut installed = Installed::default();
    for d in &deployments.items {
        let labels = d.labels();
        let Some(revision) = labels.get(COMPONENT).and_then(|c| component_revision(c)) else {
            continue;
        };
        installed.revisions.insert(
            revision.to_string(),
            Revision {
                version: labels.get(VERSION_LABEL).cloned(),
                ready: deployment_unavailable(d).is_none(),
                problem: deployment_unavailable(d)
                    .map(|why| deployment_problem(&d.name_any(), &why)),
                ..Default::default()
            },
        );
    }
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone());
    installed.tags_at = webhooks
        .get_opt(DEFAULT_TAG_WEBHOOK)
        .await?
        .filter(|w| is_ours(&w.metadata, federation))
        .and_then(|w| {
            let component = w.labels().get(COMPONENT)?.clone();
            component_revision(&component).map(String::from)
        });
    installed.base_version = Api::<ServiceAccount>::namespaced(client.clone(), ISTIO_NAMESPACE)
        .get_opt(BASE_SERVICE_ACCOUNT)
        .await?
        .filter(|a| is_ours(&a.metadata, federation))
        .and_then(|a| a.labels().get(VERSION_LABEL).cloned());
    // What still uses the untagged revisions: namespaces labelled with
    // them and pods they injected (istiod's own pods aside).
    let untagged: Vec<&str> = installed
        .revisions
        .keys()
        .filter(|r| Some(*r) != installed.tags_at.as_ref())
        .map(|r| if r.is_empty() { "default" } else { r.as_str() })
        .collect();
    if !untagged.is_empty() {
        let selector = format!("{REV_LABEL} in ({})", untagged.join(","));
        let pods = Api::<Pod>::all(client.clone())
            .list_metadata(&ListParams::default().labels(&format!("{selector},app!=istiod")))
            .await?;
        let namespaces = Api::<Namespace>::all(client.clone())
            .list_metadata(&ListParams::default().labels(&selector))
            .await?;
        for (name, revision) in installed.revisions.iter_mut() {
            let value = if name.is_empty() {
                "default"
            } else {
                name.as_str()
            };
            if Some(name) == installed.tags_at.as_ref() {
                continue;
            }
            revision.pods = pods
                .items
                .iter()
                .filter(|p| p.labels().get(REV_LABEL).map(String::as_str) == Some(value))
                .count();
            // Namespaces labelled `default` follow the tag, not a revision.
            if !name.is_empty() {
                revision.namespaces = namespaces
                    .items
                    .iter()
                    .filter(|n| n.labels().get(REV_LABEL).map(String::as_str) == Some(value))
                    .map(|n| n.name_any())
                    .collect();
            }
        }
    }
    Ok(installed)
}

/// The label naming the revision a namespace uses or a pod was injected by.
const REV_LABEL: &str = "istio.io/rev";
/// A ServiceAccount the base chart renders: its labels say the chart's version.
const BASE_SERVICE_ACCOUNT: &str = "istio-reader-service-account";

/// One chart render (or removal) to converge.
struct Step {
    /// None: nothing is rendered; the component's objects are removed.
    chart: Option<Chart>,
    component: String,
    version: String,
    values: serde_json::Value,
    wanted: bool,
    /// A MutatingWebhookConfiguration of the render that is not this
    /// component's (another revision holds it).
    leave_out: Option<&'static str>,
}

impl Step {
    fn chart(chart: Chart, values: serde_json::Value, version: &str, component: String) -> Step {
        Step {
            chart: Some(chart),
            component,
            version: version.into(),
            values,
            wanted: true,
            leave_out: None,
        }
    }
}

/// Where chart steps are applied.
struct Apply<'a> {
    ctx: &'a MemberContext,
    client: &'a Client,
    cluster: &'a str,
    federation: &'a str,
    kube_version: &'a str,
    /// The member's cluster name and network, for the placeholders.
    member: [(&'static str, &'a str); 2],
}

impl Apply<'_> {
    /// Renders the step's chart and applies it as its component; what the
    /// component carried before and no longer renders is deleted. Objects
    /// another component of this federation rendered until now (revision
    /// tags moving between revisions) change hands in one write. Returns a
    /// problem to report.
    async fn step(
        &self,
        step: Step,
        recorded: &mut BTreeSet<String>,
    ) -> Result<Option<String>, kube::Error> {
        let started = std::time::Instant::now();
        let (prepared, bootstraps) = match step.chart {
            Some(chart) => {
                let rendered = match self
                    .ctx
                    .charts
                    .render(
                        &format!("{}/{}/{}", self.federation, self.cluster, step.component),
                        &step.version,
                        chart,
                        &step.values,
                        self.kube_version,
                        &self.member,
                    )
                    .await
                {
                    Ok(objects) => objects,
                    Err(e) => return Ok(Some(e.to_string())),
                };
                let bootstraps: Vec<DynamicObject> =
                    rendered.iter().filter_map(creation_defaults).collect();
                let left_out = |o: &DynamicObject| {
                    o.types
                        .as_ref()
                        .is_some_and(|t| t.kind == "MutatingWebhookConfiguration")
                        && o.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| Some(n) == step.leave_out)
                };
                let prepared: Vec<DynamicObject> = rendered
                    .into_iter()
                    .map(rename_default_tag)
                    .filter(|o| !left_out(o))
                    .map(|o| {
                        prepare_chart_object(o, self.federation, &step.component, &step.version)
                    })
                    .collect();
                (prepared, bootstraps)
            }
            None => (Vec::new(), Vec::new()),
        };
        // Kinds come from the render even when nothing is wanted, so that
        // switching a component off prunes it, and from the record of every
        // kind ever applied, so that an object whose kind the render no
        // longer has (an HPA after autoscaleEnabled: false) is pruned too.
        let rendered_kinds = kinds_in_order(&prepared);
        record_kinds(self.client, recorded, rendered_kinds.iter().map(kind_key)).await?;
        let kinds = with_recorded_kinds(rendered_kinds, recorded);
        let rendered = started.elapsed();
        let component = Component {
            name: step.component,
            kinds,
            desired: if step.wanted { prepared } else { Vec::new() },
            bootstraps,
        };
        let problem = apply_component(
            &self.ctx.kinds,
            self.client,
            self.cluster,
            self.federation,
            &component,
        )
        .await;
        tracing::debug!(
            component = %component.name,
            render_ms = rendered.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "component converged"
        );
        problem
    }
}

/// The kinds among `objects`, in the order they first appear (CRDs first).
fn kinds_in_order(objects: &[DynamicObject]) -> Vec<GroupVersionKind> {
    let mut kinds: Vec<GroupVersionKind> = Vec::new();
    for gvk in objects.iter().filter_map(gvk_of) {
        if !kinds.contains(&gvk) {
            kinds.push(gvk);
        }
    }
    kinds.sort_by_key(|k| k.kind != "CustomResourceDefinition");
    kinds
}

fn gvk_of(o: &DynamicObject) -> Option<GroupVersionKind> {
    let t = o.types.as_ref()?;
    let (group, version) = t
        .api_version
        .split_once('/')
        .unwrap_or(("", t.api_version.as_str()));
    Some(GroupVersionKind::gvk(group, version, &t.kind))
}

/// One chart's worth of objects (or the cross-network Gateway).
struct Component {
    /// Value of the component label.
    name: String,
    /// Every kind the component renders, even when nothing of it is desired.
    kinds: Vec<GroupVersionKind>,
    desired: Vec<DynamicObject>,
    /// Creation defaults (see `creation_defaults`).
    bootstraps: Vec<DynamicObject>,
}

/// Applies the component's objects and deletes what it carried before but no
/// longer renders. CRDs are never deleted: that would delete every Istio
/// resource in the cluster. Returns a problem to report.
async fn apply_component(
    kinds: &KindCache,
    client: &Client,
    cluster: &str,
    federation: &str,
    component: &Component,
) -> Result<Option<String>, kube::Error> {
    let selector = format!(
        "{},{COMPONENT}={}",
        managed_selector(federation),
        component.name
    );
    let desired = &component.desired;
    for gvk in &component.kinds {
        // The kind is not served yet (Istio's CRDs are still being established).
        let Some((resource, namespaced)) = kinds.resolve(client, cluster, gvk).await? else {
            return Ok(Some(format!(
                "waiting for {} {} to be served",
                gvk.group, gvk.kind
            )));
        };
        let api_for = |ns: Option<&str>| match (namespaced, ns) {
            (true, Some(ns)) => {
                Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
            }
            (true, None) => {
                Api::<DynamicObject>::namespaced_with(client.clone(), ISTIO_NAMESPACE, &resource)
            }
            (false, _) => Api::<DynamicObject>::all_with(client.clone(), &resource),
        };
        // CRDs are compared by the hash of what meshfed applied alone (see
        // `is_current`): their metadata is enough, and Istio's schemas are
        // megabytes a list would fetch on every run.
        let params = ListParams::default().labels(&selector);
        let listed = if gvk.kind == "CustomResourceDefinition" {
            api_for(None).list_metadata(&params).await.map(|l| {
                l.items
                    .into_iter()
                    .map(|m| DynamicObject {
                        types: None,
                        metadata: m.metadata,
                        data: serde_json::Value::Null,
                    })
                    .collect::<Vec<_>>()
            })
        } else {
            api_for(None).list(&params).await.map(|l| l.items)
        };
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) if is_not_found(&e) => {
                // The kind went away (its CRD was deleted): discover it anew.
                kinds.forget(cluster, gvk);
                return Ok(Some(format!(
                    "waiting for {} {} to be served",
                    gvk.group, gvk.kind
                )));
            }
            Err(e) => return Err(e),
        };
        let live: BTreeMap<(String, String), DynamicObject> = listed
            .into_iter()
            .map(|o| ((o.namespace().unwrap_or_default(), o.name_any()), o))
            .collect();
        let mine: Vec<&DynamicObject> = desired
            .iter()
            .filter(|o| gvk_of(o).as_ref() == Some(gvk))
            .collect();
        let mut wanted = BTreeSet::new();
        for obj in mine {
            let ns = namespaced.then(|| obj.namespace().unwrap_or_else(|| ISTIO_NAMESPACE.into()));
            let key = (ns.clone().unwrap_or_default(), obj.name_any());
            wanted.insert(key.clone());
            if live.get(&key).is_some_and(|l| is_current(l, obj)) {
                continue;
            }
            if let Some(l) = live.get(&key) {
                tracing::debug!(kind = %gvk.kind, name = %obj.name_any(), drift = ?drift(l, obj), "applying again");
            }
            let api = api_for(ns.as_deref());
            // Outside our label selection: absent, or someone else's.
            let unlisted = if live.contains_key(&key) {
                None
            } else {
                Some(api.get_opt(&obj.name_any()).await?)
            };
            if let Some(Some(existing)) = &unlisted
                && !is_ours(&existing.metadata, federation)
            {
                return Ok(Some(format!(
                    "{} {} exists and was not created by meshfed; use spec.controlPlane.mode: External for an Istio you installed, or annotate it {}=true",
                    gvk.kind,
                    existing.name_any(),
                    keys::ADOPT
                )));
            }
            let created = matches!(unlisted, Some(None));
            let mut obj = obj.clone();
            obj.metadata.namespace = ns.clone();
            write(&api, &obj, federation).await?;
            let bootstrap = component
                .bootstraps
                .iter()
                .find(|b| b.metadata.name == obj.metadata.name && b.types == obj.types);
            if let (true, Some(bootstrap)) = (created, bootstrap) {
                apply_as(&api, bootstrap, BOOTSTRAP_MANAGER).await?;
            }
        }
        if gvk.kind == "CustomResourceDefinition" {
            continue;
        }
        // Listed in istio-system (or cluster-wide): deleted through the same API.
        let unwanted: Vec<String> = live
            .keys()
            .filter(|k| !wanted.contains(*k))
            .map(|(_, name)| name.clone())
            .collect();
        delete_all(&api_for(None), unwanted).await?;
    }
    Ok(None)
}

/// What to say about the Deployment `name` in istio-system, not available
/// for `why`, and where to look next.
fn deployment_problem(name: &str, why: &str) -> String {
    format!(
        "{name} Deployment in istio-system is not available: {why}; see why in the member with kubectl -n istio-system describe deployment {name} (and the events of its pods)"
    )
}

/// istiod of an External control plane (the Istio you installed) is not
/// available for `why` (`not found`: not installed).
fn external_istiod_problem(why: &str) -> String {
    if why == NOT_FOUND {
        return "istiod Deployment not found in istio-system: spec.controlPlane.mode External reads the Istio you installed; install it there (istiod with meshID, clusterName and network set), or use mode Managed to let meshfed install it".into();
    }
    deployment_problem("istiod", why)
}

/// Why a gateway `name` takes no traffic: its Deployment is not available
/// (`unavailable`), its Service has no ready endpoint, or (when peers need
/// it, `needs_address`) no address; `None` when it is ready.
fn gateway_problem(
    name: &str,
    unavailable: Option<String>,
    endpoints: usize,
    has_address: bool,
    needs_address: bool,
) -> Option<String> {
    match (unavailable, endpoints, has_address) {
        (Some(why), _, _) if why == NOT_FOUND => Some(format!(
            "{name} Deployment not found in istio-system: with spec.controlPlane.mode External and no spec.controlPlane.version, install it yourself, or set the version to let meshfed apply Istio's gateway chart (Managed applies it with istiod)"
        )),
        (Some(why), _, _) => Some(deployment_problem(name, &why)),
        (None, 0, _) => Some(format!(
            "{name} Service has no ready endpoint: its pods are not ready; see kubectl -n istio-system get endpointslices -l kubernetes.io/service-name={name} and the events of its pods"
        )),
        (None, _, false) if needs_address => Some(format!(
            "{name} Service has no address yet: its LoadBalancer has not been given one; the member needs a load-balancer controller (its cloud provider, MetalLB); where peers reach this cluster's Service IPs directly, spec.controlPlane.eastWestGateway.serviceType: NodePort or ClusterIP does without one"
        )),
        _ => None,
    }
}

/// What [`available`] says of a Deployment that does not exist.
const NOT_FOUND: &str = "not found";

/// Why the Deployment `name` is not available (`None`: it is).
async fn available(api: &Api<Deployment>, name: &str) -> Result<Option<String>, kube::Error> {
    Ok(match api.get_opt(name).await? {
        Some(d) => deployment_unavailable(&d),
        None => Some(NOT_FOUND.into()),
    })
}

/// Why a Deployment is not available, from its Available condition.
fn deployment_unavailable(d: &Deployment) -> Option<String> {
    let conditions = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    match conditions.and_then(|c| c.iter().find(|c| c.type_ == "Available")) {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(
            c.message
                .clone()
                .or(c.reason.clone())
                .unwrap_or_else(|| "Available is False".into()),
        ),
        None => Some("no Available condition yet".into()),
    }
}

/// Endpoints of `slices` not known to be unready (a missing condition counts
/// as ready, as the EndpointSlice API says consumers should).
fn ready_endpoints(slices: &[EndpointSlice]) -> usize {
    slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .count()
}

/// Where peers reach the gateway: the load balancer's address, else (NodePort,
/// ClusterIP) the cluster IP.
fn gateway_address(service: &Service) -> Option<String> {
    let lb = service
        .status
        .as_ref()?
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first());
    let lb_address = lb.and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    let service_type = service
        .spec
        .as_ref()
        .and_then(|s| s.type_.clone())
        .unwrap_or_default();
    lb_address.or_else(|| {
        (service_type != "LoadBalancer")
            .then(|| service.spec.as_ref()?.cluster_ip.clone())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    fn service(type_: &str, ip: Option<&str>, hostname: Option<&str>) -> Service {
        let ingress = (ip.is_some() || hostname.is_some()).then(|| {
            vec![LoadBalancerIngress {
                ip: ip.map(Into::into),
                hostname: hostname.map(Into::into),
                ..Default::default()
            }]
        });
        Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some("10.96.0.9".into()),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus { ingress }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_endpoints_not_marked_unready_count() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "addressType": "IPv4",
            "metadata": {"name": "gw-1"},
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
            ]
        }))
        .unwrap();
        assert_eq!(ready_endpoints(&[slice.clone(), slice]), 4);
        assert_eq!(ready_endpoints(&[]), 0);
    }

    #[test]
    fn every_gateway_and_istiod_problem_says_where_to_look_or_what_to_do() {
        let gw = EAST_WEST_GATEWAY;
        assert_eq!(gateway_problem(gw, None, 2, true, true), None);
        assert_eq!(gateway_problem(gw, None, 2, false, false), None);
        let unavailable = gateway_problem(
            gw,
            Some("MinimumReplicasUnavailable".into()),
            0,
            false,
            true,
        )
        .unwrap();
        assert!(
            unavailable.starts_with(&format!(
                "{gw} Deployment in istio-system is not available: MinimumReplicasUnavailable; "
            )) && unavailable
                .contains(&format!("kubectl -n istio-system describe deployment {gw}")),
            "{unavailable}"
        );
        let missing = gateway_problem(gw, Some(NOT_FOUND.into()), 0, false, true).unwrap();
        assert!(missing.contains("install it yourself"), "{missing}");
        let no_endpoint = gateway_problem(gw, None, 0, true, true).unwrap();
        assert!(
            no_endpoint.contains("kubernetes.io/service-name=istio-eastwestgateway"),
            "{no_endpoint}"
        );
        let no_address = gateway_problem(gw, None, 1, false, true).unwrap();
        assert!(
            no_address.starts_with(&format!("{gw} Service has no address yet: "))
                && no_address.contains("load-balancer controller")
                && no_address.contains("serviceType: NodePort"),
            "{no_address}"
        );
        assert!(external_istiod_problem(NOT_FOUND).contains("install it there"));
        assert!(
            external_istiod_problem("Deployment does not have minimum availability.")
                .contains("kubectl -n istio-system describe deployment istiod")
        );
    }

    #[test]
    fn gateway_address_prefers_the_load_balancer() {
        assert_eq!(
            gateway_address(&service("LoadBalancer", Some("1.2.3.4"), None)).as_deref(),
            Some("1.2.3.4")
        );
        assert_eq!(
            gateway_address(&service("LoadBalancer", None, Some("gw.example.com"))).as_deref(),
            Some("gw.example.com")
        );
        assert_eq!(
            gateway_address(&service("LoadBalancer", None, None)),
            None,
            "pending load balancer"
        );
        assert_eq!(
            gateway_address(&service("NodePort", None, None)).as_deref(),
            Some("10.96.0.9")
        );
        assert_eq!(
            gateway_address(&service("ClusterIP", None, None)).as_deref(),
            Some("10.96.0.9")
        );
    }
}
