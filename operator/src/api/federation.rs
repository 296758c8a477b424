use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, core::Duration};
use serde::{Deserialize, Serialize};

use super::KeyAlgorithm;

/// DNS-1123 label: what Kubernetes and Istio accept as a cluster ID.
const DNS1123_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A Kubernetes label value (networks become `topology.istio.io/network` labels).
const LABEL_VALUE: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$";
/// A trust domain as Istio validates it (`ValidateTrustDomain`): DNS-1123
/// labels separated by dots.
const TRUST_DOMAIN_RULE: &str =
    "self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$')";
/// Longest duration string accepted where admission parses it with a
/// pattern (bounds the cost of the CEL rule).
const DURATION_MAX_LENGTH: u32 = 32;

/// Defaults live in code, not in the schema, so that the stored object is exactly
/// what the user (or Argo CD) applied and never shows as OutOfSync.
pub mod defaults {
    use std::time::Duration;
    pub const TRUST_DOMAIN: &str = "cluster.local";
    pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    pub const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
    pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
    pub const REVOKE_AFTER: Duration = Duration::from_secs(10 * 60);
    pub const ROOT_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);
    pub const PROPAGATION_PERIOD: Duration = Duration::from_secs(5 * 60);
    pub const DRAIN_PERIOD: Duration = Duration::from_secs(25 * 3600);
    pub const KUBECONFIG_KEY: &str = "kubeconfig";
    pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
    pub const SETTLE_PERIOD: Duration = Duration::from_secs(60);
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
    pub const MAX_WITHDRAWN: i32 = 1;
    /// Istio's `failoverPriority`: same network first, then same cluster.
    pub const FAILOVER_PRIORITY: [&str; 2] =
        ["topology.istio.io/network", "topology.istio.io/cluster"];
    pub const CONSECUTIVE_5XX_ERRORS: i32 = 5;
    pub const OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
    pub const BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    pub const MAX_EJECTION_PERCENT: i32 = 100;
    pub const MAX_CONCURRENT_UPGRADES: i32 = 1;
    pub const GATE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    pub const INGRESS_REPLICAS: i32 = 1;
}

/// The federation as the user wants it: its members and how meshfed joins
/// them (CA, remote secrets, control plane, failover). Only `meshID` and
/// `members` are required; each other field's description says what holds
/// while it is unset (its default).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    doc = "Kubernetes clusters (its members) joined into one Istio multi-primary mesh. meshfed gives every member an intermediate CA under one shared root (its `cacerts` Secret), a read-only identity for its peers and a remote secret for every peer; with spec.controlPlane it installs (Managed) or checks (External) istiod and east-west gateways; with spec.failover it can withdraw an unhealthy member from its peers' view. `status` reports each member's state and the federation's conditions. Cluster-scoped.",
    group = "meshfed.io",
    version = "v1alpha1",
    kind = "MeshFederation",
    plural = "meshfederations",
    shortname = "mfed",
    status = "MeshFederationStatus",
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount"}"#,
    printcolumn = r#"{"name":"Ready-Members","type":"integer","jsonPath":".status.readyMembers"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name must be at most 63 characters: it becomes the meshfed.io/federation label on every object meshfed creates")
)]
#[x_kube(
    validation = Rule::new("self.members.all(m, self.members.exists_one(n, n.name == m.name))").message("spec.members[].name must be unique").field_path(".members"),
    validation = Rule::new("self.members.size() == 1 || self.members.all(m, !has(m.credentials.local) || has(m.apiServer))").message("a member with credentials.local needs spec.members[].apiServer: peers cannot reach the in-cluster address").field_path(".members"),
    validation = Rule::new("self.members.all(m, !has(m.credentials.local)) || (has(self.allowPeersToReadOperatorSecrets) && self.allowPeersToReadOperatorSecrets)").message("a member with credentials.local is the operator's own cluster, where every peer's reader token could read the operator's Secrets (the root key, every member's credentials): run the operator in a cluster that is not a member, or set spec.allowPeersToReadOperatorSecrets: true (docs/security.md, Topologies)").field_path(".members"),
    validation = Rule::new("!has(self.controlPlane) || !has(self.controlPlane.upgrade) || !has(self.controlPlane.upgrade.order) || self.controlPlane.upgrade.order.all(n, self.members.exists(m, m.name == n))").message("spec.controlPlane.upgrade.order may name only members: every name in it must be one of spec.members[].name (remove the others from the order, or add them to spec.members)").field_path(".controlPlane.upgrade.order"),
    validation = Rule::new("!has(self.failover) || !has(self.failover.withdrawal) || !has(self.failover.withdrawal.minHealthy) || self.failover.withdrawal.minHealthy <= self.members.size()").message("spec.failover.withdrawal.minHealthy must be at most the number of members in spec.members, or no member could ever be withdrawn: lower it, or leave it unset (a strict majority)").field_path(".failover.withdrawal.minHealthy"),
    validation = Rule::new("!has(self.failover) || !has(self.failover.outlierDetection) || has(self.controlPlane)").message("spec.failover.outlierDetection needs spec.controlPlane: meshfed applies its DestinationRule together with the control plane (Managed or External); set spec.controlPlane, or remove spec.failover.outlierDetection").field_path(".failover.outlierDetection"),
    validation = Rule::new("!has(self.failover) || !has(self.failover.locality) || (has(self.controlPlane) && self.controlPlane.mode == 'Managed')").message("spec.failover.locality needs spec.controlPlane.mode: Managed: it goes into the meshConfig of the istiod meshfed installs; with External (or no spec.controlPlane) set meshConfig.localityLbSetting in your own Istio installation and remove spec.failover.locality").field_path(".failover.locality"),
)]
#[serde(rename_all = "camelCase")]
pub struct MeshFederationSpec {
    /// Mesh ID shared by every member (Istio's `global.meshID`). Changing it later
    /// means reinstalling Istio in every member.
    #[serde(rename = "meshID")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub mesh_id: String,

    /// SPIFFE trust domain of the mesh (Istio's `meshConfig.trustDomain`): a
    /// DNS-like name such as `example.org`, without a scheme or a path.
    /// Default: cluster.local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(TRUST_DOMAIN_RULE).message("spec.trustDomain must be a DNS-like name such as cluster.local or example.org: dot-separated labels of lowercase letters, digits and '-' (at most 63 characters each), with no scheme (spiffe://), slash or port"))]
    pub trust_domain: Option<String>,

    /// The member clusters. Each ordered pair of members gets a remote secret.
    #[schemars(length(min = 1, max = 64))]
    pub members: Vec<Member>,

    /// Certificate authority: the shared root and the per-member intermediates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSpec>,

    /// Remote secrets: the kubeconfigs that let each member's istiod read its peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_secrets: Option<RemoteSecretsSpec>,

    /// Istio's control plane in every member. Unset: meshfed installs nothing
    /// and does not look at istiod (CA material and remote secrets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneSpec>,

    /// Failover: taking an unhealthy member out of its peers' view, and the
    /// traffic settings that move requests away from unhealthy endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSpec>,

    /// Lets the operator's own cluster be a member (`credentials.local`, or
    /// a kubeconfig that reaches it). Every peer's istiod reads a member with
    /// a token that may read all its Secrets, so every peer could then read
    /// the operator's: the federation's root key and every member's
    /// credentials. Unset or false: such a member is refused (at admission
    /// for `credentials.local`, otherwise with nothing written to it and
    /// `ClustersClaimed` False, reason `OperatorClusterIsMember`). Prefer
    /// running the operator in a cluster that is not a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_peers_to_read_operator_secrets: Option<bool>,
}

/// What happens when a member degrades.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Withdraw a member whose API server is unreachable, or whose east-west
    /// gateway has no ready endpoint or no address, from every peer: its
    /// remote secrets are removed, so peers' istiods drop its endpoints
    /// instead of sending traffic to a dead cluster. Restored once it is
    /// healthy again. Unset: never withdraw (peers keep its last-known
    /// endpoints, which is Istio's own behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawal: Option<WithdrawalSpec>,

    /// Mesh-wide locality failover: rendered into every member's
    /// `meshConfig.localityLbSetting`, the same everywhere. It only acts
    /// where outlier detection is configured (see `outlierDetection`).
    /// Needs `spec.controlPlane.mode: Managed` (refused otherwise: with
    /// External, set `localityLbSetting` in your own Istio installation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityFailoverSpec>,

    /// A mesh-wide DestinationRule `meshfed-failover` for `*.local` in
    /// istio-system with this outlier detection, so that failover acts on
    /// every service. A service's own DestinationRule replaces it for that
    /// service (Istio does not merge them). Needs `spec.controlPlane`
    /// (Managed or External; refused without it). Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
}

/// When a member is withdrawn from its peers and when it comes back.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WithdrawalSpec {
    /// How long a member must be unhealthy before it is withdrawn. Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("spec.failover.withdrawal.gracePeriod must be at least 1s"))]
    pub grace_period: Option<Duration>,
    /// How long a withdrawn member must be healthy again before it is
    /// restored. Default: 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("spec.failover.withdrawal.settlePeriod must be at least 1s"))]
    pub settle_period: Option<Duration>,
    /// How often the operator checks each member's API server between
    /// reconciles (one GET /version per member). Default: 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('5m')").message("spec.failover.withdrawal.probeInterval must be between 1s and 5m"))]
    pub probe_interval: Option<Duration>,
    /// At most this many members are withdrawn at once. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.failover.withdrawal.maxWithdrawn must be at least 1"))]
    pub max_withdrawn: Option<i32>,
    /// Withdraw only while at least this many members are reachable and
    /// healthy, so that an operator cut off from most of the fleet (a
    /// partition on its side) withdraws nobody. Default: a strict majority
    /// of the members; with two members that is both, so withdrawal never
    /// fires unless you set 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.failover.withdrawal.minHealthy must be at least 1"))]
    pub min_healthy: Option<i32>,
}

/// Istio's locality load balancing, mesh-wide.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LocalityFailoverSpec {
    /// Labels whose match ranks endpoints (`failoverPriority`). Default:
    /// topology.istio.io/network, then topology.istio.io/cluster: the
    /// client's own network first, then its own cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub failover_priority: Option<Vec<String>>,
    /// Explicit region failover pairs (`failover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub failover: Option<Vec<RegionFailover>>,
}

/// Traffic leaving region `from` goes to region `to` when `from` has no
/// healthy endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegionFailover {
    #[schemars(length(min = 1, max = 253))]
    pub from: String,
    #[schemars(length(min = 1, max = 253))]
    pub to: String,
}

/// An outlier detection duration: what Istio's DestinationRule takes (at
/// least 1ms), in the units that make sense for it. The pattern keeps out
/// what CEL's `duration()` or the operator would read differently (a sign,
/// `ns`/`us`, spaces).
const OUTLIER_DURATION_RULE: &str =
    "self.matches('^([0-9]+([.][0-9]+)?(ms|s|m|h))+$') && duration(self) >= duration('1ms')";

/// Outlier detection for the mesh-wide DestinationRule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx (or connection) errors that eject an endpoint. Default: 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.failover.outlierDetection.consecutive5xxErrors must be at least 1"))]
    pub consecutive_5xx_errors: Option<i32>,
    /// Time between ejection sweeps: at least 1ms, written with the units
    /// ms, s, m or h (`500ms`, `10s`, `1m30s`). Default: 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new(OUTLIER_DURATION_RULE).message("spec.failover.outlierDetection.interval must be a duration of at least 1ms written with the units ms, s, m or h, such as 500ms, 10s or 1m30s"))]
    pub interval: Option<Duration>,
    /// Minimum ejection duration: at least 1ms, written with the units ms,
    /// s, m or h (`500ms`, `30s`, `1m`). Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new(OUTLIER_DURATION_RULE).message("spec.failover.outlierDetection.baseEjectionTime must be a duration of at least 1ms written with the units ms, s, m or h, such as 500ms, 30s or 1m"))]
    pub base_ejection_time: Option<Duration>,
    /// Largest share of a service's endpoints that may be ejected. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("spec.failover.outlierDetection.maxEjectionPercent must be between 0 and 100"))]
    pub max_ejection_percent: Option<i32>,
}

/// How Istio's control plane gets into each member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'External' || has(self.version)").message("spec.controlPlane.version is required when spec.controlPlane.mode is Managed"))]
pub struct ControlPlaneSpec {
    /// Managed: meshfed installs Istio's official charts (base, istiod, and the
    /// gateway chart for east-west gateways). External: you install Istio;
    /// meshfed wires CA, remote secrets and gateways and reports istiod's health.
    pub mode: ControlPlaneMode,

    /// Istio version, one the operator carries charts for (under
    /// `--charts-dir/<version>`, e.g. `1.31`). Managed: required, the
    /// version installed. External: the version of the gateway chart meshfed
    /// installs the gateways from; unset, it installs no gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]*(\\.[A-Za-z0-9_-]+)*$")
    )]
    pub version: Option<String>,

    /// Helm values for the istiod chart in every member (Managed), under
    /// meshfed's own (meshID, clusterName, network, trust domain and
    /// ISTIO_MULTIROOT_MESH always win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub values: Option<serde_json::Value>,

    /// East-west gateways. Default: one per member when members span more than
    /// one network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west_gateway: Option<EastWestGatewaySpec>,

    /// How a change of `version` reaches the members (Managed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeSpec>,

    /// Revision tags besides `default` that follow the fleet's current
    /// revision (RevisionBased): namespaces labelled `istio.io/rev=<tag>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(t, t != 'default')").message("spec.controlPlane.revisionTags: 'default' is always present; list only your other tags"))]
    #[schemars(length(max = 16))]
    pub revision_tags: Option<Vec<RevisionTag>>,

    /// An Istio ingress gateway (`istio-ingressgateway`, from Istio's gateway
    /// chart) in every member: the mesh's entry point for Gateway and
    /// VirtualService resources. Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_gateway: Option<IngressGatewaySpec>,
}

/// A revision tag name (a DNS-1123 label).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RevisionTag(
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))] pub String,
);

/// `spec.controlPlane.upgrade`: a new version is installed beside the old as
/// its own revision (`istiod-<1-31>`), member by member, in waves; revision
/// tags move to it once it is healthy, and the old revision goes once
/// nothing uses it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// How a change of `version` is rolled out. RevisionBased (default): the
    /// new version is installed beside the old as its own revision
    /// (`istiod-1-31`), member by member in waves of `maxConcurrent`, and
    /// the revision tags move to it once it is healthy. InPlace: one
    /// revision-less istiod per member, re-rendered at the new version in
    /// every member at once (no waves, gates or pause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = own_description)]
    pub strategy: Option<UpgradeStrategy>,
    /// Members that change first, in this order; the others follow in
    /// spec.members order. Every name must be a member's (refused
    /// otherwise); repeats are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub order: Option<Vec<String>>,
    /// Members changing at once (a wave). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.controlPlane.upgrade.maxConcurrent must be at least 1"))]
    pub max_concurrent: Option<i32>,
    /// Wait between the end of one wave and the start of the next. Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("spec.controlPlane.upgrade.pause must not be negative"))]
    pub pause: Option<Duration>,
    /// How long a member's health gate may stay unmet before the rollout is
    /// reported halted (it stays halted, and resumes when the gate is met).
    /// Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("spec.controlPlane.upgrade.gateTimeout must be at least 1s"))]
    pub gate_timeout: Option<Duration>,
    /// Remove (default): an old revision is deleted once no tag, namespace
    /// or pod uses it. Keep: old revisions stay until you remove them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_revisions: Option<OldRevisionPolicy>,
}

/// How a new version is rolled out.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum UpgradeStrategy {
    /// A revision per version beside the old one, in waves, tags moved when healthy.
    #[default]
    RevisionBased,
    /// One revision-less istiod per member, re-rendered in place, all members at once.
    InPlace,
}

/// What becomes of a revision nothing uses any more.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum OldRevisionPolicy {
    #[default]
    Remove,
    Keep,
}

/// The ingress gateway of every member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngressGatewaySpec {
    /// Install it (default true once this block is present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Service type: LoadBalancer (default), NodePort or ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<GatewayServiceType>,
    /// Replicas. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("spec.controlPlane.ingressGateway.replicas must be between 1 and 100"))]
    pub replicas: Option<i32>,
}

/// Who installs Istio.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ControlPlaneMode {
    /// meshfed installs and upgrades Istio from its official charts.
    #[default]
    Managed,
    /// You install Istio; meshfed reads istiod's health.
    External,
}

/// East-west gateway settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EastWestGatewaySpec {
    /// Always (true) or never (false) give members a gateway. Default: when
    /// members span more than one network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Service type of the gateway: LoadBalancer (default), NodePort or ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<GatewayServiceType>,
    /// Gateway replicas. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("spec.controlPlane.eastWestGateway.replicas must be between 1 and 100"))]
    pub replicas: Option<i32>,
}

/// Service type of an east-west gateway.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum GatewayServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    ClusterIP,
}

/// Keeps an optional enum field's own description in the CRD: kube hoists
/// the enum's schema, description included, over the field's, so the
/// type's description (the same for every field of that type) is dropped
/// here and the field's doc comment stays.
fn own_description(schema: &mut schemars::Schema) {
    let inner = schema.get_mut("anyOf").and_then(|v| v.as_array_mut());
    for s in inner.into_iter().flatten() {
        if let Some(s) = s.as_object_mut() {
            s.remove("description");
        }
    }
}

/// Any JSON object (Helm values).
fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// One member cluster of the federation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The member's Istio cluster ID (`global.multiCluster.clusterName`): a DNS-1123
    /// label, unique in the federation. Peers' remote secrets are keyed by it.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL))]
    pub name: String,

    /// The member's network (`topology.istio.io/network` on istio-system). Members
    /// whose pods can reach each other directly share a network.
    #[schemars(length(min = 1, max = 63), regex(pattern = LABEL_VALUE))]
    pub network: String,

    /// How the operator reaches this member's API server.
    pub credentials: MemberCredentials,

    /// Where peers' istiods reach this member's API server, when that differs from
    /// the address in the credentials (required for a `local` member when there are
    /// peers). Written into the remote secrets for this member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<ApiServerEndpoint>,

    /// Helm values for this member's istiod, over spec.controlPlane.values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub control_plane_values: Option<serde_json::Value>,

    /// Give this member an east-west gateway even when all members share one
    /// network (true), or never (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub east_west_gateway: Option<bool>,
}

/// Credentials for a member: exactly one of `secretRef` or `local`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.local)").message("set exactly one of credentials.secretRef or credentials.local"))]
pub struct MemberCredentials {
    /// A Secret in the operator's namespace holding a kubeconfig for the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<KubeconfigSecretRef>,

    /// The cluster the operator runs in (its own service account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalCluster>,
}

/// Reference to a kubeconfig stored in a Secret in the operator's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Data key holding the kubeconfig. Default: kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Marker for "the cluster the operator runs in".
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct LocalCluster {}

/// An API server address as peers see it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiServerEndpoint {
    /// HTTPS URL of the API server, e.g. https://10.0.0.1:6443.
    #[schemars(length(min = 1, max = 2048), regex(pattern = "^https://"))]
    pub url: String,
    /// PEM CA bundle that signs the API server's certificate. Default: the CA from
    /// the member's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// The shared root and the per-member intermediate CAs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(has(self.renewBefore) ? self.renewBefore : '720h') < duration(has(self.intermediateLifetime) ? self.intermediateLifetime : '8760h')").message("spec.ca.renewBefore must be shorter than spec.ca.intermediateLifetime (defaults 720h and 8760h)"))]
#[x_kube(validation = Rule::new("!has(self.onRemoval) || self.onRemoval != 'Revoke' || !has(self.rootSecretRef)").message("spec.ca.onRemoval: Revoke rotates a generated root when a member leaves; with spec.ca.rootSecretRef, rotate your own root instead (use Delete)"))]
pub struct CaSpec {
    /// A Secret in the operator's namespace with your own root CA (`tls.crt`,
    /// `tls.key`), or with a signing intermediate (`tls.crt`, `tls.key`) and
    /// only the certificate of the offline root above it (`ca.crt`).
    /// Default: meshfed generates a root and keeps it in the Secret
    /// `<federation>-root-ca` in the operator's namespace. Naming another
    /// root rotates to it through every phase (docs/rotation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_secret_ref: Option<SecretRef>,

    /// Key type and size of the root meshfed generates and of every
    /// member's intermediate CA: ECDSA-P256 (default; small and fast),
    /// ECDSA-P384, RSA-2048 or RSA-4096 (Istio's reference layout, slow to
    /// generate). Changing it re-issues every intermediate with the new
    /// algorithm; a generated root keeps its own until it is rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = own_description)]
    pub key_algorithm: Option<KeyAlgorithm>,

    /// Lifetime of each member's intermediate CA. Default: 8760h (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("spec.ca.intermediateLifetime must be at least 1h"))]
    pub intermediate_lifetime: Option<Duration>,

    /// How long before expiry an intermediate is re-issued. Default: 720h (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.ca.renewBefore must be positive"))]
    pub renew_before: Option<Duration>,

    /// What happens to what a running Istio needs when a member leaves or the
    /// federation is deleted: Retain (default) keeps each member's `cacerts`,
    /// the control plane meshfed installed, and a generated root, so clusters
    /// keep working on their own; Delete removes them. Revoke removes them
    /// too and, when a member leaves, replaces the generated root through a
    /// full rotation the departed member takes no part in, so that its
    /// intermediate (which a retained copy of `cacerts` still holds) is
    /// trusted nowhere once the rotation ends (docs/security.md). Remote
    /// secrets and reader identities are always removed; Istio's CRDs never
    /// are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = own_description)]
    pub on_removal: Option<RemovalPolicy>,

    /// How the root is rotated. A rotation starts when `rootSecretRef`
    /// names another root, when `rootRotation.request` changes (a generated
    /// root is replaced by a new one), or when a generated root is lost; it
    /// goes through four phases across every member (docs/rotation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_rotation: Option<RootRotationSpec>,

    /// A generated root is rotated to a new one when less than this much of
    /// its validity is left (it is generated for 10 years). Default: 8760h
    /// (one year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) < duration('87600h')").message("spec.ca.rootRenewBefore must be at least 0s and shorter than a generated root's lifetime (87600h)"))]
    pub root_renew_before: Option<Duration>,
}

/// Root rotation settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RootRotationSpec {
    /// Set or change to any other value to rotate a generated root now
    /// (GitOps can express it; ignored with rootSecretRef, where naming
    /// another Secret is the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub request: Option<String>,
    /// Time for proxies to receive the new trust bundle once every istiod
    /// distributes both roots (kubelet ConfigMap refresh, or an xDS push),
    /// before any member signs with the new root. Default: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("spec.ca.rootRotation.propagationPeriod must not be negative"))]
    pub propagation_period: Option<Duration>,
    /// Time for workload certificates signed under the old root to expire
    /// or be re-issued once every member signs with the new one, before the
    /// old root leaves the trust bundles. Default: 25h (istiod's default
    /// workload certificate lifetime, 24h, plus an hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("spec.ca.rootRotation.drainPeriod must not be negative"))]
    pub drain_period: Option<Duration>,
}

/// Reference to a Secret in the operator's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Fate of CA material meshfed wrote when its member or federation goes away.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum RemovalPolicy {
    /// Leave it in place (running istiods keep their CA).
    #[default]
    Retain,
    /// Delete it.
    Delete,
    /// Delete it, and distrust a departed member's intermediate by rotating
    /// the generated root without it.
    Revoke,
}

impl RemovalPolicy {
    /// Whether CA material and installed control planes are removed.
    pub fn removes(self) -> bool {
        self != Self::Retain
    }
}

/// Remote secrets settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RemoteSecretsSpec {
    /// Lifetime of the bound service-account tokens in remote secrets; meshfed
    /// refreshes a token when a third of its lifetime is left. Default: 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10m')").message("spec.remoteSecrets.tokenLifetime must be at least 10m (the TokenRequest minimum)"))]
    pub token_lifetime: Option<Duration>,
    /// How long a replaced token keeps working after the last peer wrote its
    /// successor: the time every istiod gets to switch to the new token
    /// (istiod shows no sign of which one it uses). Then meshfed deletes the
    /// Secret the old token is bound to, and the API server rejects it.
    /// Default: 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s')").message("spec.remoteSecrets.revokeAfter must not be negative"))]
    pub revoke_after: Option<Duration>,
}

/// Observed state of a MeshFederation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeshFederationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Always set: Ready (the summary, for `kubectl wait` and Argo CD),
    /// ClustersClaimed, MembersReachable, CertificatesReady,
    /// RemoteSecretsReady, Degraded and CredentialsExposed (True is the bad
    /// state for these two). ControlPlanesReady once a member reports on
    /// istiod (spec.controlPlane set), GatewaysReady once some member should
    /// have an east-west gateway, ControlPlanesUpToDate once meshfed rolls
    /// out a version (Managed; False while a rollout runs). Each type and
    /// reason is described in docs/reference.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of members in the spec.
    #[serde(default)]
    pub member_count: i32,
    /// Number of members with everything in place.
    #[serde(default)]
    pub ready_members: i32,
    /// The shared root CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<CertificateStatus>,
    /// The trust bundle members hold, and a root rotation in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaStatus>,
    /// Where a change of spec.controlPlane.version stands (Managed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<RolloutStatus>,
    /// Per-member state, in spec order; members still being cleaned up after
    /// leaving the spec come last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
}

/// The roots members trust, and where a rotation stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    /// The roots in every member's trust bundle (`root-cert.pem`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<CertificateStatus>,
    /// TrustBoth, SignWithNew, Drain or TrustNew while a rotation runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Time>,
    /// Why the rotation started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Members that have not finished the current phase (they hold it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// Members the rotation does not wait for: their cluster is another
    /// member's, or they hold no intermediate of the federation (a cacerts
    /// meshfed did not create, or none yet). They get an intermediate of the
    /// phase they join in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_waited_for: Vec<String>,
    /// When the phase's wait ends once every member finished it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_phase_at: Option<Time>,
    /// Intermediates of members that left, still trusted by every member: a
    /// copy of a departed member's `cacerts` (kept with `onRemoval: Retain`,
    /// or taken before it left) signs certificates for any identity until
    /// the intermediate expires, or until a root rotation (`onRemoval:
    /// Revoke`) removes the root it chains to. Listed until then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub departed_intermediates: Vec<DepartedIntermediateStatus>,
}

/// A departed member's intermediate CA that members still trust.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DepartedIntermediateStatus {
    /// The member that held it.
    pub member: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// End of validity: trusted until then unless a root rotation removes
    /// its root first.
    pub not_after: Time,
}

/// A fleet-wide control-plane rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The version the fleet is moving to (spec.controlPlane.version).
    pub version: String,
    /// Its revision (`1.31` -> `1-31`); empty for InPlace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Complete, RollingOut, Paused (between waves) or Halted.
    pub phase: String,
    /// Members whose tags point at the revision (and whose istiod is ready).
    pub updated: i32,
    /// The members of the current wave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wave: Vec<String>,
    /// When the current wave began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_started_at: Option<Time>,
    /// When the last wave ended (the pause counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_wave_finished_at: Option<Time>,
    /// Why the rollout stopped: the member, the gate and the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<HaltStatus>,
}

/// A health gate a member has not met within gateTimeout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HaltStatus {
    pub member: String,
    /// IstiodReady or MemberReachable.
    pub gate: String,
    pub message: String,
}

/// One istiod revision in a member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// `1-31`, or `default` for a revision-less istiod.
    pub name: String,
    /// The Istio version it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its istiod Deployment is available.
    pub ready: bool,
    /// Pods its injector injected (they keep it until restarted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods: i32,
    /// Namespaces labelled `istio.io/rev=<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Where one member stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member's cluster ID.
    pub name: String,
    /// Whether the operator reached the member's API server in the last reconcile.
    pub reachable: bool,
    /// Whether every object meshfed manages in the member is in place.
    pub ready: bool,
    /// True while meshfed removes its objects from a member that left the spec.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Kubernetes version reported by the member's API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,

    /// The member's cluster identity: the UID of its `kube-system` namespace.
    #[serde(default, rename = "clusterID", skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Istio version meshfed installed (Managed) in the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_version: Option<String>,
    /// Whether istiod is available in the member (when spec.controlPlane is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_ready: Option<bool>,
    /// The istiod revisions meshfed installed in the member (Managed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionStatus>,
    /// The revision the member's revision tags (`default` and
    /// spec.controlPlane.revisionTags) point to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags_revision: Option<String>,
    /// Where the member is in a rollout (Managed): Waiting (for its wave),
    /// Installing (the new revision beside the old), Switching (its tags
    /// move to the new revision), Halted (a gate not met within
    /// gateTimeout) or RemovingOld (at the target, an old revision still in
    /// use). Unset when the member runs the target version, or when no
    /// rollout is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_phase: Option<String>,
    /// Whether the member is healthy enough to receive traffic from peers,
    /// and whether it is withdrawn from them (`spec.failover.withdrawal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<MemberHealth>,
    /// Address of the member's east-west gateway Service, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_address: Option<String>,
    /// The member's intermediate CA (from its `cacerts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<CertificateStatus>,
    /// Remote secrets for peers present in this member.
    #[serde(default)]
    pub remote_secrets_present: i32,
    /// Remote secrets this member should hold (one per peer).
    #[serde(default)]
    pub remote_secrets_expected: i32,
    /// Earliest expiry of the tokens in this member's remote secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expiry: Option<Time>,
    /// When the token in this member's credentials Secret expires, set once
    /// a third of its lifetime is left and meshfed may not renew it (a
    /// Secret neither made by `kubectl meshfed join` nor annotated
    /// `meshfed.io/renew-credentials: "true"`). Past it the member is
    /// unreachable until the Secret holds a new token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expiring: Option<Time>,
    /// Credentials used for this member, kept so that a member that leaves the spec
    /// can still be cleaned up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<MemberCredentials>,
    /// The operator runs in this member's cluster: every peer's reader
    /// token may read the operator's namespace (docs/security.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub operator_cluster: bool,
    /// Long-lived ServiceAccount token Secrets in the member
    /// (`namespace/name`), which every peer's reader token may read. Not
    /// meshfed's: delete them or move their users to short-lived tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readable_token_secrets: Vec<String>,
    /// What went wrong last, if anything (never secret material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One member's health.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberHealth {
    /// Its API server answers, istiod is available (when meshfed installs or
    /// watches it) and its east-west gateway, if it has one, has a ready
    /// endpoint and an address.
    pub healthy: bool,
    /// Healthy; ApiServerUnreachable (no answer); AccessFailed (its API
    /// server answered with errors: the operator's credentials or rights
    /// are the problem); GatewayNotReady; IstiodUnavailable; or Unknown
    /// (nothing was sent: no usable credentials, or withdrawn and not
    /// checked since the operator started).
    pub reason: String,
    /// What is wrong, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Since when it has been withdrawn from its peers (their remote secrets
    /// for it removed); unset while it is in their view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_since: Option<Time>,
}

/// A CA certificate meshfed manages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// End of validity.
    pub not_after: Time,
}

impl MeshFederationSpec {
    /// Whether the operator's own cluster may be a member
    /// (`spec.allowPeersToReadOperatorSecrets`).
    pub fn allows_operator_cluster(&self) -> bool {
        self.allow_peers_to_read_operator_secrets == Some(true)
    }

    /// The trust domain, defaulted.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain
            .as_deref()
            .unwrap_or(defaults::TRUST_DOMAIN)
    }

    /// The CA settings, defaulted.
    pub fn ca(&self) -> CaSpec {
        self.ca.clone().unwrap_or_default()
    }

    /// Lifetime of the bound tokens in remote secrets, defaulted.
    pub fn token_lifetime(&self) -> std::time::Duration {
        self.remote_secrets
            .as_ref()
            .and_then(|r| r.token_lifetime)
            .map_or(defaults::TOKEN_LIFETIME, Into::into)
    }

    /// How long a replaced remote-secret token stays valid, defaulted.
    pub fn revoke_after(&self) -> std::time::Duration {
        self.remote_secrets
            .as_ref()
            .and_then(|r| r.revoke_after)
            .map_or(defaults::REVOKE_AFTER, Into::into)
    }

    /// Whether `member` gets an east-west gateway: its own wish, the spec's, or
    /// by default when members span more than one network.
    pub fn wants_gateway(&self, member: &Member) -> bool {
        let Some(cp) = &self.control_plane else {
            return false;
        };
        let spec_wide = cp.east_west_gateway.as_ref().and_then(|g| g.enabled);
        let networks: std::collections::BTreeSet<&str> =
            self.members.iter().map(|m| m.network.as_str()).collect();
        member
            .east_west_gateway
            .or(spec_wide)
            .unwrap_or(networks.len() > 1)
    }

    /// The withdrawal policy, defaulted; `None` when withdrawal is off.
    pub fn withdrawal(&self) -> Option<WithdrawalPolicy> {
        let w = self.failover.as_ref()?.withdrawal.as_ref()?;
        let members = self.members.len();
        Some(WithdrawalPolicy {
            grace: w.grace_period.map_or(defaults::GRACE_PERIOD, Into::into),
            settle: w.settle_period.map_or(defaults::SETTLE_PERIOD, Into::into),
            probe_interval: w
                .probe_interval
                .map_or(defaults::PROBE_INTERVAL, Into::into),
            max_withdrawn: w.max_withdrawn.unwrap_or(defaults::MAX_WITHDRAWN).max(1) as usize,
            min_healthy: w.min_healthy.map_or(members / 2 + 1, |n| n.max(1) as usize),
        })
    }

    /// The upgrade settings, defaulted.
    pub fn upgrade(&self) -> UpgradeSpec {
        self.control_plane
            .as_ref()
            .and_then(|c| c.upgrade.clone())
            .unwrap_or_default()
    }

    /// Member names in upgrade order: `upgrade.order` first, then the rest
    /// in spec order (names not in the spec are ignored).
    pub fn upgrade_order(&self) -> Vec<&str> {
        let upgrade = self.control_plane.as_ref().and_then(|c| c.upgrade.as_ref());
        let mut first: Vec<&str> = Vec::new();
        for name in upgrade.and_then(|u| u.order.as_ref()).into_iter().flatten() {
            if self.member(name).is_some() && !first.contains(&name.as_str()) {
                first.push(name);
            }
        }
        let rest = self
            .members
            .iter()
            .map(|m| m.name.as_str())
            .filter(|n| !first.contains(n));
        first.iter().copied().chain(rest).collect()
    }

    /// Whether members get an ingress gateway.
    pub fn wants_ingress_gateway(&self) -> bool {
        self.control_plane
            .as_ref()
            .and_then(|c| c.ingress_gateway.as_ref())
            .is_some_and(|g| g.enabled.unwrap_or(true))
    }

    /// The member with this name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// `spec.failover.withdrawal` with its defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalPolicy {
    pub grace: std::time::Duration,
    pub settle: std::time::Duration,
    pub probe_interval: std::time::Duration,
    pub max_withdrawn: usize,
    /// Members that must be reachable and healthy for a withdrawal to happen.
    pub min_healthy: usize,
}

impl CaSpec {
    /// Key algorithm, defaulted.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm.unwrap_or_default()
    }

    /// Intermediate lifetime, defaulted.
    pub fn intermediate_lifetime(&self) -> std::time::Duration {
        self.intermediate_lifetime
            .map_or(defaults::INTERMEDIATE_LIFETIME, Into::into)
    }

    /// Renewal margin, defaulted.
    pub fn renew_before(&self) -> std::time::Duration {
        self.renew_before.map_or(defaults::RENEW_BEFORE, Into::into)
    }

    /// Removal policy, defaulted.
    pub fn on_removal(&self) -> RemovalPolicy {
        self.on_removal.unwrap_or_default()
    }

    /// How long before its expiry a generated root is rotated, defaulted.
    pub fn root_renew_before(&self) -> std::time::Duration {
        self.root_renew_before
            .map_or(defaults::ROOT_RENEW_BEFORE, Into::into)
    }

    /// The rotation request for a generated root, if any.
    pub fn rotation_request(&self) -> Option<&str> {
        self.root_rotation.as_ref()?.request.as_deref()
    }

    /// Propagation and drain periods of a root rotation, defaulted.
    pub fn rotation_periods(&self) -> (std::time::Duration, std::time::Duration) {
        let r = self.root_rotation.as_ref();
        (
            r.and_then(|r| r.propagation_period)
                .map_or(defaults::PROPAGATION_PERIOD, Into::into),
            r.and_then(|r| r.drain_period)
                .map_or(defaults::DRAIN_PERIOD, Into::into),
        )
    }
}

impl UpgradeSpec {
    pub fn strategy(&self) -> UpgradeStrategy {
        self.strategy.unwrap_or_default()
    }
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
            .unwrap_or(defaults::MAX_CONCURRENT_UPGRADES)
            .max(1) as usize
    }
    pub fn pause(&self) -> std::time::Duration {
        self.pause.map_or(std::time::Duration::ZERO, Into::into)
    }
    pub fn gate_timeout(&self) -> std::time::Duration {
        self.gate_timeout.map_or(defaults::GATE_TIMEOUT, Into::into)
    }
    pub fn keeps_old_revisions(&self) -> bool {
        self.old_revisions == Some(OldRevisionPolicy::Keep)
    }
}

impl KubeconfigSecretRef {
    /// The data key holding the kubeconfig, defaulted.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(defaults::KUBECONFIG_KEY)
    }
}
