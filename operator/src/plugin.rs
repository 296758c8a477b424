//! `kubectl meshfed`: what the plugin shows and concludes, as pure functions
//! of what it read. The binary (`src/bin/kubectl-meshfed.rs`) does the
//! reading and writing.

use std::time::Duration;

use crate::api::{ControlPlaneMode, MeshFederation};
use crate::member::cluster_admin_binding;
use crate::render::member_rbac;

/// The ServiceAccount `join` gives meshfed in a member.
pub const MEMBER_IDENTITY: &str = "meshfed-member";

/// One thing meshfed's member identity must be allowed to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    /// Empty: cluster-wide (a ClusterRole rule) or any name.
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        write!(f, "{} {}{group}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if !self.name.is_empty() {
            write!(f, " {}", self.name)?;
        }
        if !self.namespace.is_empty() {
            write!(f, " in {}", self.namespace)?;
        }
        Ok(())
    }
}

/// Every permission of the member roles `join` applies for `federation`,
/// one per verb, resource and (first) name: what `check` asks the API server
/// about. The reader role's reads are among them: Kubernetes lets meshfed
/// create the reader role only if it holds every permission in it.
pub fn needed_permissions(federation: &str) -> Vec<Permission> {
    let mut out = Vec::new();
    for role in member_rbac(&[federation])
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        let namespace = role["metadata"]["namespace"].as_str().unwrap_or("");
        for rule in role["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            let name = strings("resourceNames")
                .into_iter()
                .next()
                .unwrap_or_default();
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    let (resource, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_string(), s.to_string()),
                        None => (resource.clone(), String::new()),
                    };
                    for verb in strings("verbs") {
                        out.push(Permission {
                            verb,
                            group: group.clone(),
                            resource: resource.clone(),
                            subresource: subresource.clone(),
                            namespace: namespace.to_string(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// What a Managed control plane (`spec.controlPlane.mode: Managed`) writes
/// in a member beyond the member roles, and a few of the rights istiod's
/// ClusterRoles grant (Kubernetes lets meshfed create those roles only if it
/// holds them itself): what `check` asks about for a Managed federation.
/// Istio's charts (base, istiod, gateway) hold CRDs, webhook
/// configurations, cluster RBAC, and Deployments, Services, ServiceAccounts,
/// ConfigMaps, Roles, RoleBindings, HorizontalPodAutoscalers and
/// PodDisruptionBudgets in istio-system; meshfed applies them, lists them
/// by label, and deletes what a new render no longer has; it reads pods and
/// namespaces cluster-wide to see what still uses an old revision.
pub fn managed_permissions() -> Vec<Permission> {
    let permission = |verb: &str, group: &str, resource: &str, namespace: &str| Permission {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: String::new(),
        namespace: namespace.into(),
        name: String::new(),
    };
    let writes = ["get", "list", "create", "patch", "delete"];
    let cluster_wide = [
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        ),
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
        ),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ];
    let in_istio_system = [
        ("apps", "deployments"),
        ("", "services"),
        ("", "serviceaccounts"),
        ("", "configmaps"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("policy", "poddisruptionbudgets"),
    ];
    let mut out = Vec::new();
    for (group, resource) in cluster_wide {
        out.extend(writes.iter().map(|v| permission(v, group, resource, "")));
    }
    for (group, resource) in in_istio_system {
        out.extend(
            writes
                .iter()
                .map(|v| permission(v, group, resource, "istio-system")),
        );
    }
    out.extend([
        permission("list", "", "pods", ""),
        permission("list", "", "namespaces", ""),
        // istiod's own rights, held to be granted: its webhook's CA bundle,
        // the gateway controller's Deployments and ServiceAccounts in every
        // namespace, token and access reviews.
        permission(
            "update",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
        ),
        permission("create", "apps", "deployments", ""),
        permission("delete", "apps", "deployments", ""),
        permission("create", "", "serviceaccounts", ""),
        permission("create", "authentication.k8s.io", "tokenreviews", ""),
        permission("create", "authorization.k8s.io", "subjectaccessreviews", ""),
    ]);
    out
}

/// `permissions` in few words: the verbs on one resource (and name and
/// namespace) together, `create/patch/delete customresourcedefinitions...`,
/// in the order first met; past eight resources, how many more.
pub fn summarize(permissions: &[&Permission]) -> String {
    const SHOWN: usize = 8;
    let mut groups: Vec<(Permission, Vec<&str>)> = Vec::new();
    for p in permissions {
        let key = Permission {
            verb: String::new(),
            ..(*p).clone()
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, verbs)) => verbs.push(&p.verb),
            None => groups.push((key, vec![&p.verb])),
        }
    }
    let more = groups.len().saturating_sub(SHOWN);
    let mut text = groups
        .into_iter()
        .take(SHOWN)
        .map(|(key, verbs)| {
            let what = Permission {
                verb: verbs.join("/"),
                ..key
            };
            let scope = if what.namespace.is_empty() && what.name.is_empty() {
                " (cluster-wide)"
            } else {
                ""
            };
            format!("{what}{scope}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        text += &format!(" and {more} more resources");
    }
    text
}

/// TokenRequest's shortest lifetime (the API server refuses less).
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// TokenRequest's longest lifetime (2^32 seconds, about 136 years: the API
/// server refuses more; it may also cap lifetimes lower, and then says so in
/// the token it returns).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(1 << 32);

/// A member name as `spec.members[].name` takes it: a DNS-1123 label (it is
/// the member's Istio cluster ID and names its Secret `<name>-kubeconfig`).
pub fn validate_member_name(name: &str) -> Result<(), String> {
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ends_ok = !name.starts_with('-') && !name.ends_with('-');
    if !name.is_empty() && name.len() <= 63 && chars_ok && ends_ok {
        return Ok(());
    }
    Err(format!(
        "member name {name:?} is not a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit (it is the member's Istio cluster ID, spec.members[].name)"
    ))
}

/// A network as `spec.members[].network` takes it: a Kubernetes label value
/// of 1 to 63 characters (it becomes `topology.istio.io/network`).
pub fn validate_network(network: &str) -> Result<(), String> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = network
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if network.len() <= 63
        && chars_ok
        && alnum(network.chars().next())
        && alnum(network.chars().last())
    {
        return Ok(());
    }
    Err(format!(
        "network {network:?} is not a label value: 1 to 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit (it becomes the topology.istio.io/network label)"
    ))
}

/// A token lifetime TokenRequest accepts: 10 minutes to 2^32 seconds.
pub fn validate_token_lifetime(lifetime: Duration) -> Result<(), String> {
    if lifetime < MIN_TOKEN_LIFETIME {
        return Err(format!(
            "{lifetime:?} is shorter than 10m, the shortest token Kubernetes issues (TokenRequest)"
        ));
    }
    if lifetime > MAX_TOKEN_LIFETIME {
        return Err(format!(
            "{lifetime:?} is longer than 2^32 seconds, the longest token Kubernetes issues (TokenRequest)"
        ));
    }
    Ok(())
}

/// An API server address meshfed will use: https only (it verifies TLS).
pub fn validate_server(server: &str) -> Result<(), String> {
    match server.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(format!(
            "API server address {server:?} is not an https:// URL: meshfed only uses verified TLS"
        )),
    }
}

/// Ready members, members, and whether the federation is Ready for its
/// current generation.
pub fn progress(fed: &MeshFederation) -> (i32, i32, bool) {
    let Some(status) = &fed.status else {
        return (0, fed.spec.members.len() as i32, false);
    };
    let current = status.observed_generation == fed.metadata.generation;
    let ready = current
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    (status.ready_members, status.member_count, ready)
}

/// The first line of `status`: name, readiness and why not.
pub fn headline(fed: &MeshFederation) -> String {
    let name = fed.metadata.name.as_deref().unwrap_or("?");
    let (ready_members, members, _) = progress(fed);
    let ready = fed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    match ready {
        Some(c) if c.status == "True" => {
            format!("{name}: Ready, {ready_members}/{members} members ready")
        }
        Some(c) => format!(
            "{name}: not Ready ({}), {ready_members}/{members} members ready",
            c.reason
        ),
        None => format!("{name}: no status yet"),
    }
}

/// Lines under the table: a control-plane rollout or root rotation in
/// progress, and conditions that warn without making the federation not
/// Ready (`CredentialsExposed`).
pub fn warnings(fed: &MeshFederation) -> Vec<String> {
    let rollout = fed
        .status
        .iter()
        .filter_map(|s| Some((s.control_plane.as_ref()?, s.member_count)))
        .filter(|(r, _)| r.phase != "Complete")
        .map(|(r, members)| {
            let wave = if r.wave.is_empty() {
                String::new()
            } else {
                format!(", changing now: {}", r.wave.join(", "))
            };
            let halted = r
                .halted
                .as_ref()
                .map(|h| format!("; halted at {}: gate {}: {}", h.member, h.gate, h.message))
                .unwrap_or_default();
            format!(
                "Istio {}: {}, {}/{members} members updated{wave}{halted}",
                r.version, r.phase, r.updated
            )
        });
    let rotation = fed
        .status
        .iter()
        .filter_map(|s| s.ca.as_ref())
        .filter_map(|ca| {
            let phase = ca.phase.as_ref()?;
            let since = ca
                .phase_since
                .as_ref()
                .map(|t| format!(" since {}", t.0.strftime("%Y-%m-%d %H:%M:%S")))
                .unwrap_or_default();
            let waiting = if ca.waiting_for.is_empty() {
                String::new()
            } else {
                format!(", waiting for {}", ca.waiting_for.join(", "))
            };
            Some(format!("root rotation: phase {phase}{since}{waiting}"))
        });
    let exposed = fed
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| c.type_ == "CredentialsExposed" && c.status == "True")
        .map(|c| format!("warning: {} ({}): {}", c.type_, c.reason, c.message));
    rollout.chain(rotation).chain(exposed).collect()
}

/// Cuts `s` to `max` characters, marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// One line per member, columns sized to their content, so that 50 members
/// are 50 lines; the last error is cut to keep lines short.
pub fn status_table(fed: &MeshFederation) -> String {
    let header = [
        "MEMBER",
        "REACHABLE",
        "HEALTHY",
        "NETWORK",
        "INTERMEDIATE EXPIRES",
        "REMOTE",
        "CONTROL PLANE",
        "GATEWAY",
        "LAST ERROR",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for m in fed.status.iter().flat_map(|s| &s.members) {
        let network = fed
            .spec
            .member(&m.name)
            .map_or("-".to_string(), |x| x.network.clone());
        let expires = m.intermediate.as_ref().map_or("-".into(), |i| {
            i.not_after.0.strftime("%Y-%m-%d %H:%M").to_string()
        });
        let healthy = match &m.health {
            None => "-".to_string(),
            Some(h) if h.withdrawn_since.is_some() => format!("withdrawn ({})", h.reason),
            Some(h) if h.healthy => "yes".to_string(),
            Some(h) => format!("no ({})", h.reason),
        };
        // "1.31 ready", and while a rollout runs its phase and the other
        // revisions: "1.30 ready, Installing, also 1-31".
        let control_plane = match (m.control_plane_ready, &m.istio_version) {
            (None, _) => "-".to_string(),
            (Some(ready), version) => {
                let mut text = format!(
                    "{} {}",
                    version.as_deref().unwrap_or("external"),
                    if ready { "ready" } else { "not ready" }
                );
                if let Some(phase) = &m.upgrade_phase {
                    text += &format!(", {phase}");
                }
                let others: Vec<&str> = m
                    .revisions
                    .iter()
                    .map(|r| r.name.as_str())
                    .filter(|r| Some(*r) != m.tags_revision.as_deref())
                    .collect();
                if !others.is_empty() {
                    text += &format!(", also {}", others.join(" "));
                }
                text
            }
        };
        let name = if m.leaving {
            format!("{} (leaving)", m.name)
        } else {
            m.name.clone()
        };
        rows.push(vec![
            name,
            if m.reachable { "yes" } else { "no" }.to_string(),
            healthy,
            network,
            expires,
            format!("{}/{}", m.remote_secrets_present, m.remote_secrets_expected),
            control_plane,
            m.gateway_address.clone().unwrap_or_else(|| "-".into()),
            cut(m.last_error.as_deref().unwrap_or("-"), 80),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// How serious a preflight finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Advice: nothing is wrong, but a choice to make (printed with it).
    Note,
    /// Something that would go wrong or hurt unless acted on.
    Warn,
    /// Something that stops meshfed (exit code 1).
    Fail,
}

impl Level {
    /// How `check` prints it, four characters wide.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok  ",
            Level::Note => "NOTE",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// What `check` learnt of the federation in the operator's cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FederationLookup {
    /// It exists; its control-plane mode (`None`: no `spec.controlPlane`).
    Found(Option<ControlPlaneMode>),
    /// The operator's cluster answered: there is no federation of that name.
    Missing,
    /// It could not be read, and why.
    Unknown(String),
}

impl FederationLookup {
    /// Whether the rights of a Managed control plane are needed: `None`
    /// when that is not known.
    pub fn managed(&self) -> Option<bool> {
        match self {
            FederationLookup::Found(mode) => Some(*mode == Some(ControlPlaneMode::Managed)),
            _ => None,
        }
    }
}

/// One preflight finding and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    /// What to do; empty when nothing needs doing.
    pub fix: String,
}

impl Finding {
    fn new(level: Level, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            level,
            what: what.into(),
            fix: fix.into(),
        }
    }
}

/// What `kubectl meshfed check` read from a prospective member.
#[derive(Clone, Debug)]
pub struct Preflight {
    /// The API server address in the kubeconfig.
    pub server: String,
    /// `Ok(gitVersion)` or why the API server did not answer.
    pub version: Result<String, String>,
    /// The `meshfed.io/federation` label of an istiod Deployment (`istiod` or
    /// `istiod-<revision>`), if it has one (`Some(None)`: istiod exists, not
    /// installed by meshfed).
    pub istiod: Option<Option<String>>,
    /// The same for `istio-system/cacerts`.
    pub cacerts: Option<Option<String>>,
    /// The `topology.istio.io/network` label of istio-system, if any.
    pub network: Option<String>,
    /// Who the kubeconfig's identity is (SelfSubjectReview), when known.
    pub identity: Option<String>,
    /// The federation as found in the operator's cluster.
    pub federation: FederationLookup,
    /// What meshfed needs to do there ([`needed_permissions`]), and whether
    /// the identity may.
    pub permissions: Vec<(Permission, bool)>,
    /// The same for a Managed control plane ([`managed_permissions`]);
    /// empty when the federation is known not to be Managed.
    pub managed_permissions: Vec<(Permission, bool)>,
    /// `namespace/name` of every ServiceAccount token Secret (long-lived).
    pub token_secrets: Vec<String>,
    /// What could not be read, and why (the other findings are then
    /// incomplete).
    pub unreadable: Vec<String>,
}

/// The oldest Kubernetes minor version meshfed is tested against.
pub const MIN_KUBERNETES_MINOR: u32 = 29;

/// Whether peers' istiods could not use `server`: a loopback or
/// cluster-internal address.
pub fn unusable_by_peers(server: &str) -> bool {
    let host = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.starts_with("127.")
        || host == "::1"
        || host == "kubernetes"
        || host.starts_with("kubernetes.default")
        || host.ends_with(".svc")
        || host.ends_with(".svc.cluster.local")
}

/// The minor version in a `gitVersion` such as `v1.37.2`.
fn minor(git_version: &str) -> Option<u32> {
    git_version
        .trim_start_matches('v')
        .split('.')
        .nth(1)?
        .trim_end_matches('+')
        .parse()
        .ok()
}

/// What the preflight read comes to, each with what to do: every finding
/// but an `Ok` one carries its fix.
pub fn findings(p: &Preflight, federation: &str) -> Vec<Finding> {
    use Level::{Fail, Note, Warn};
    let mut out = Vec::new();
    match &p.version {
        Err(why) => {
            out.push(Finding::new(
                Fail,
                format!("API server {} did not answer: {why}", p.server),
                if why.starts_with("no answer") {
                    "check that this machine reaches that address (VPN, firewall, a tunnel) and that the API server is up; kubectl --kubeconfig <it> get --raw /version tries the same"
                } else {
                    "check the kubeconfig's server address, CA and credentials"
                },
            ));
            return out;
        }
        Ok(v) => match minor(v) {
            Some(m) if m >= MIN_KUBERNETES_MINOR => out.push(Finding::new(
                Level::Ok,
                format!("API server answers, Kubernetes {v}"),
                "",
            )),
            _ => out.push(Finding::new(
                Fail,
                format!("Kubernetes {v} is older than 1.{MIN_KUBERNETES_MINOR}"),
                format!("upgrade the cluster to 1.{MIN_KUBERNETES_MINOR} or newer"),
            )),
        },
    }
    if unusable_by_peers(&p.server) {
        out.push(Finding::new(
            Warn,
            format!("{} is a loopback or cluster-internal address", p.server),
            "peers' istiods cannot reach it from other clusters: set spec.members[].apiServer to an address they can reach",
        ));
    }
    match &p.federation {
        FederationLookup::Found(mode) => out.push(Finding::new(
            Level::Ok,
            format!(
                "federation {federation} exists in the operator's cluster ({})",
                match mode {
                    Some(ControlPlaneMode::Managed) => "control plane: Managed",
                    Some(ControlPlaneMode::External) => "control plane: External",
                    None => "no control plane",
                }
            ),
            "",
        )),
        FederationLookup::Missing => out.push(Finding::new(
            Warn,
            format!("federation {federation} not found in the operator's cluster"),
            "create it before joining (config/samples/meshfederation.yaml), or check the name and the cluster: kubectl get meshfederations; --host-context picks the operator's cluster in the current kubeconfig. join refuses a federation that does not exist",
        )),
        FederationLookup::Unknown(why) => out.push(Finding::new(
            Warn,
            format!("could not read federation {federation} in the operator's cluster: {why}"),
            "--host-context picks the operator's cluster in the current kubeconfig ($KUBECONFIG); until it is read, the rights a Managed control plane needs are advice",
        )),
    }
    let owned_elsewhere = |label: &Option<String>| match label {
        Some(f) => f != federation,
        None => true,
    };
    match &p.istiod {
        None => out.push(Finding::new(Level::Ok, "no istiod in istio-system", "")),
        Some(label) if owned_elsewhere(label) => out.push(Finding::new(
            Warn,
            match label {
                Some(f) => format!("istiod was installed by meshfed for federation {f}"),
                None => "istiod exists and was not installed by meshfed".to_string(),
            },
            "use spec.controlPlane.mode: External for an Istio you installed, or remove it first",
        )),
        Some(_) => out.push(Finding::new(
            Level::Ok,
            "istiod installed by meshfed for this federation",
            "",
        )),
    }
    match &p.cacerts {
        None => out.push(Finding::new(Level::Ok, "no istio-system/cacerts", "")),
        Some(label) if owned_elsewhere(label) => out.push(Finding::new(
            Warn,
            match label {
                Some(f) => format!("istio-system/cacerts belongs to meshfed federation {f}"),
                None => "istio-system/cacerts exists and was not created by meshfed".to_string(),
            },
            "meshfed leaves it untouched; annotate it meshfed.io/adopt=true to let meshfed replace it with an intermediate of the federation's root",
        )),
        Some(_) => out.push(Finding::new(Level::Ok, "istio-system/cacerts is this federation's", "")),
    }
    match &p.network {
        None => out.push(Finding::new(
            Level::Ok,
            "istio-system has no network label",
            "",
        )),
        // Relabelling under a running istiod changes how peers reach its
        // workloads; before Istio runs it is only a choice to make.
        Some(n) => out.push(Finding::new(
            if p.istiod.is_some() { Warn } else { Note },
            format!("istio-system is labelled topology.istio.io/network={n}"),
            format!(
                "join with --network {n} (spec.members[].network: {n}), or meshfed relabels istio-system with the network you give{}",
                if p.istiod.is_some() {
                    ", which changes how peers reach the workloads of the istiod running there"
                } else {
                    ""
                }
            ),
        )),
    }
    let denied: Vec<&Permission> = p
        .permissions
        .iter()
        .filter(|(_, allowed)| !allowed)
        .map(|(what, _)| what)
        .collect();
    if denied.is_empty() {
        out.push(Finding::new(
            Level::Ok,
            format!(
                "the identity may do all {} things meshfed needs",
                p.permissions.len()
            ),
            "",
        ));
    } else {
        out.push(Finding::new(
            Fail,
            format!("the identity may not: {}", summarize(&denied)),
            "kubectl meshfed join creates an identity with exactly these rights",
        ));
    }
    let managed_denied: Vec<&Permission> = p
        .managed_permissions
        .iter()
        .filter(|(_, allowed)| !allowed)
        .map(|(what, _)| what)
        .collect();
    let grant = format!(
        "a Managed control plane installs Istio's charts (CRDs, webhooks, cluster RBAC), which takes cluster-admin in effect (docs/security.md): in this cluster, {}",
        cluster_admin_binding(p.identity.as_deref().unwrap_or(""))
    );
    match (p.federation.managed(), managed_denied.is_empty()) {
        _ if p.managed_permissions.is_empty() => {}
        (Some(false), _) => {}
        (_, true) => out.push(Finding::new(
            Level::Ok,
            "the identity may install Istio's charts (a Managed control plane)",
            "",
        )),
        (Some(true), false) => out.push(Finding::new(
            Fail,
            format!(
                "federation {federation} has a Managed control plane, and the identity may not: {}",
                summarize(&managed_denied)
            ),
            grant,
        )),
        (None, false) => out.push(Finding::new(
            Note,
            format!(
                "if federation {federation} gets a Managed control plane (spec.controlPlane.mode: Managed), the identity may not: {}",
                summarize(&managed_denied)
            ),
            grant,
        )),
    }
    for what in &p.unreadable {
        out.push(Finding::new(
            Warn,
            format!("could not read {what}"),
            "check it by hand, or run check with an identity that may read it",
        ));
    }
    let secrets_unread = p.unreadable.iter().any(|u| u.starts_with("Secrets"));
    if p.token_secrets.is_empty() && !secrets_unread {
        out.push(Finding::new(
            Level::Ok,
            "no long-lived ServiceAccount token Secrets",
            "",
        ));
    } else if !p.token_secrets.is_empty() {
        out.push(Finding::new(
            Warn,
            format!(
                "{} long-lived ServiceAccount token Secret(s) every peer's reader can read: {}",
                p.token_secrets.len(),
                p.token_secrets.join(", ")
            ),
            "delete them, or move those accounts to short-lived tokens: meshfed's reader may read Secrets cluster-wide, as istiod needs",
        ));
    }
    out
}

/// The field manager and user agent the plugin writes with.
pub const FIELD_MANAGER: &str = "kubectl-meshfed";

/// The label the operator's Deployment carries, from the chart and from
/// `config/manager` alike.
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=meshfed-operator";

/// The MeshFederation CRD's name.
pub const CRD_NAME: &str = "meshfederations.meshfed.io";

/// The tag of a container image reference (`repo/x:1.2.3@sha256:...` ->
/// `1.2.3`), if it has one.
pub fn image_tag(image: &str) -> Option<&str> {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':')
        .map(|(_, tag)| tag)
        .filter(|t| !t.is_empty())
}

/// What `version` found: the operator's image tag (`Err`: why none),
/// the CRD's served versions and its `app.kubernetes.io/version` label
/// (`Err`: why the CRD was not read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versions {
    pub plugin: String,
    pub operator: Result<String, String>,
    pub crd: Result<(Vec<String>, Option<String>), String>,
}

/// `version`'s text, and a skew warning when the plugin and the operator
/// are of different versions (a leading `v` ignored).
pub fn version_text(v: &Versions) -> (String, Option<String>) {
    let operator = match &v.operator {
        Ok(tag) => tag.clone(),
        Err(why) => format!("not found ({why})"),
    };
    let crd = match &v.crd {
        Ok((served, label)) => {
            let label = label
                .as_ref()
                .map(|l| format!(", app.kubernetes.io/version {l}"))
                .unwrap_or_default();
            format!("{CRD_NAME} serves {}{label}", served.join(", "))
        }
        Err(why) => format!("not found ({why})"),
    };
    let text = format!(
        "plugin:   {}\noperator: {operator}\nCRD:      {crd}\n",
        v.plugin
    );
    let bare = |s: &str| s.trim_start_matches('v').to_string();
    let skew = match &v.operator {
        Ok(tag) if bare(tag) != bare(&v.plugin) => Some(format!(
            "warning: the plugin ({}) and the operator ({tag}) differ in version: install the plugin of the operator's version, or upgrade the operator (docs/install.md)",
            v.plugin
        )),
        _ => None,
    };
    (text, skew)
}

/// What `rotate` rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The generated root (`spec.ca.rootRotation.request`).
    Root,
    /// Every reader token (`meshfed.io/refresh-tokens`).
    Tokens,
}

/// A request value for `rotate`: the time in UTC, different from
/// `current` (the value set now, if any).
pub fn rotation_value(now: jiff::Timestamp, current: Option<&str>) -> String {
    let value = now.strftime("%Y%m%dt%H%M%Sz").to_string();
    if current == Some(value.as_str()) {
        format!("{value}-2")
    } else {
        value
    }
}

/// The current request `rotate` replaces.
pub fn rotation_current(fed: &MeshFederation, what: Rotation) -> Option<&str> {
    match what {
        Rotation::Root => fed.spec.ca.as_ref()?.rotation_request(),
        Rotation::Tokens => fed
            .metadata
            .annotations
            .as_ref()?
            .get(crate::render::keys::REFRESH_TOKENS)
            .map(String::as_str),
    }
}

/// The merge patch `rotate` applies: only the request, so that the same
/// change can be committed to Git. A root named by `spec.ca.rootSecretRef`
/// is not meshfed's to replace: refused.
pub fn rotate_patch(
    fed: &MeshFederation,
    what: Rotation,
    value: &str,
) -> Result<serde_json::Value, String> {
    let name = fed.metadata.name.as_deref().unwrap_or("?");
    match what {
        Rotation::Root => {
            if let Some(r) = fed
                .spec
                .ca
                .as_ref()
                .and_then(|c| c.root_secret_ref.as_ref())
            {
                return Err(format!(
                    "federation {name} uses your own root (spec.ca.rootSecretRef: {}): meshfed rotates it when rootSecretRef names another Secret with the new root (docs/rotation.md); --root rotates only a generated root",
                    r.name
                ));
            }
            Ok(serde_json::json!({"spec": {"ca": {"rootRotation": {"request": value}}}}))
        }
        Rotation::Tokens => {
            let key = crate::render::keys::REFRESH_TOKENS;
            Ok(serde_json::json!({"metadata": {"annotations": {key: value}}}))
        }
    }
}

/// The merge patch `leave` applies: `spec.members` without `member` (and
/// `spec.controlPlane.upgrade.order` without it, which may name only
/// members), carrying the resourceVersion it was computed from. Refuses a
/// member that is not there and the last member.
pub fn leave_patch(fed: &MeshFederation, member: &str) -> Result<serde_json::Value, String> {
    let name = fed.metadata.name.as_deref().unwrap_or("?");
    let names: Vec<&str> = fed.spec.members.iter().map(|m| m.name.as_str()).collect();
    if !names.contains(&member) {
        return Err(format!(
            "federation {name} has no member {member} (members: {})",
            names.join(", ")
        ));
    }
    if names.len() == 1 {
        return Err(format!(
            "{member} is the last member of federation {name}, and a federation needs at least one (spec.members): to take it apart, delete the federation instead (kubectl delete meshfederation {name}); spec.ca.onRemoval decides what stays in the member"
        ));
    }
    let members: Vec<&crate::api::Member> = fed
        .spec
        .members
        .iter()
        .filter(|m| m.name != member)
        .collect();
    let mut patch = serde_json::json!({
        "metadata": {"resourceVersion": fed.metadata.resource_version},
        "spec": {"members": members},
    });
    let order = fed
        .spec
        .control_plane
        .as_ref()
        .and_then(|c| c.upgrade.as_ref())
        .and_then(|u| u.order.as_ref());
    if let Some(order) = order.filter(|o| o.iter().any(|n| n == member)) {
        let rest: Vec<&String> = order.iter().filter(|n| *n != member).collect();
        patch["spec"]["controlPlane"] = serde_json::json!({"upgrade": {"order": rest}});
    }
    Ok(patch)
}

/// What the operator does once `member` has left, by `spec.ca.onRemoval`.
pub fn removal_text(fed: &MeshFederation, member: &str) -> String {
    use crate::api::RemovalPolicy;
    let policy = fed
        .spec
        .ca
        .as_ref()
        .map(|c| c.on_removal())
        .unwrap_or_default();
    let always = format!(
        "the operator removes {member}'s remote secrets from its peers, its peers' from {member}, and its reader identity"
    );
    let rest = match policy {
        RemovalPolicy::Retain => format!(
            "spec.ca.onRemoval is Retain: {member} keeps its cacerts and any control plane meshfed installed, so it keeps working on its own"
        ),
        RemovalPolicy::Delete => format!(
            "spec.ca.onRemoval is Delete: {member}'s cacerts and the control plane meshfed installed there are deleted too"
        ),
        RemovalPolicy::Revoke => format!(
            "spec.ca.onRemoval is Revoke: {member}'s cacerts and the control plane meshfed installed there are deleted, and the generated root is replaced through a full rotation without {member}, so its intermediate is trusted nowhere (docs/rotation.md)"
        ),
    };
    format!(
        "{always}; {rest}. Its kubeconfig Secret in the operator's namespace stays until you delete it."
    )
}

/// The waves in which a change of `spec.controlPlane.version` to `to`
/// would reach the members if every gate were met at once: the rollout
/// planner ([`crate::fleet::rollout::plan`]) run on a fleet at the current
/// version, each wave taken as done before the next (pauses left out).
/// Refused without `spec.controlPlane`, and for the version already set.
pub fn upgrade_waves(fed: &MeshFederation, to: &str) -> Result<Vec<Vec<String>>, String> {
    use crate::api::UpgradeStrategy;
    use crate::fleet::rollout::{Installed, Policy, Revision, plan, revision_of};
    use std::collections::BTreeMap;
    let name = fed.metadata.name.as_deref().unwrap_or("?");
    let Some(cp) = fed.spec.control_plane.as_ref() else {
        return Err(format!(
            "federation {name} has no spec.controlPlane: meshfed installs no Istio there, so there is nothing to upgrade (upgrade your own Istio, or set spec.controlPlane, docs/istio.md)"
        ));
    };
    if cp.version.as_deref() == Some(to) {
        return Err(format!(
            "federation {name} is already at version {to} (spec.controlPlane.version)"
        ));
    }
    let order: Vec<String> = fed
        .spec
        .upgrade_order()
        .into_iter()
        .map(String::from)
        .collect();
    let upgrade = fed.spec.upgrade();
    if cp.mode != ControlPlaneMode::Managed || upgrade.strategy() == UpgradeStrategy::InPlace {
        return Ok(vec![order]);
    }
    let settings = Policy {
        version: to,
        strategy: upgrade.strategy(),
        order: order.iter().map(String::as_str).collect(),
        max_concurrent: upgrade.max_concurrent(),
        pause: Duration::ZERO,
        gate_timeout: upgrade.gate_timeout(),
        keep_old: upgrade.keeps_old_revisions(),
    };
    let at = |version: &str| {
        let revision = revision_of(version);
        Installed {
            revisions: BTreeMap::from([(
                revision.clone(),
                Revision {
                    version: Some(version.to_string()),
                    ready: true,
                    ..Revision::default()
                },
            )]),
            tags_at: Some(revision),
            base_version: None,
        }
    };
    let from = cp.version.clone().unwrap_or_default();
    let mut observed: BTreeMap<String, Option<Installed>> =
        order.iter().map(|m| (m.clone(), Some(at(&from)))).collect();
    let now = jiff::Timestamp::now();
    let mut previous = None;
    let mut waves = Vec::new();
    for _ in 0..=order.len() {
        let rollout = plan(&settings, &observed, previous.as_ref(), now);
        if rollout.status.wave.is_empty() {
            break;
        }
        for m in &rollout.status.wave {
            observed.insert(m.clone(), Some(at(to)));
        }
        waves.push(rollout.status.wave.clone());
        previous = Some(rollout.status);
    }
    Ok(waves)
}

/// `upgrade`'s plan in words: one line per wave.
pub fn upgrade_plan_text(fed: &MeshFederation, to: &str, waves: &[Vec<String>]) -> String {
    let name = fed.metadata.name.as_deref().unwrap_or("?");
    let cp = fed.spec.control_plane.as_ref();
    let from = cp.and_then(|c| c.version.as_deref()).unwrap_or("(none)");
    let upgrade = fed.spec.upgrade();
    let mut out = format!("federation {name}: Istio {from} -> {to}\n");
    if cp.is_some_and(|c| c.mode != ControlPlaneMode::Managed) {
        out += "External control plane: meshfed installs no istiod; the east-west gateways of every member move to the new gateway chart at once\n";
        return out;
    }
    if upgrade.strategy() == crate::api::UpgradeStrategy::InPlace {
        out += &format!(
            "InPlace: every member is re-rendered at once: {}\n",
            waves.concat().join(", ")
        );
        return out;
    }
    let pause = upgrade.pause();
    out += &format!(
        "RevisionBased, maxConcurrent {}, pause {:?} between waves, gate timeout {:?}:\n",
        upgrade.max_concurrent(),
        pause,
        upgrade.gate_timeout()
    );
    for (i, wave) in waves.iter().enumerate() {
        out += &format!("  wave {}: {}\n", i + 1, wave.join(", "));
    }
    if waves.is_empty() {
        out += "  no member changes revision\n";
    }
    out
}

/// The merge patch `upgrade` applies.
pub fn upgrade_patch(to: &str) -> serde_json::Value {
    serde_json::json!({"spec": {"controlPlane": {"version": to}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MemberHealth, MemberStatus, MeshFederationSpec, MeshFederationStatus};

    fn fed(members: usize) -> MeshFederation {
        let mut f = MeshFederation::new(
            "prod",
            MeshFederationSpec {
                mesh_id: "m".into(),
                trust_domain: None,
                members: vec![],
                ca: None,
                remote_secrets: None,
                control_plane: None,
                failover: None,
                allow_peers_to_read_operator_secrets: None,
            },
        );
        f.status = Some(MeshFederationStatus {
            member_count: members as i32,
            members: (0..members)
                .map(|i| MemberStatus {
                    name: format!("member-{i:02}"),
                    reachable: i != 7,
                    health: (i == 7).then(|| MemberHealth {
                        healthy: false,
                        reason: "ApiServerUnreachable".into(),
                        message: String::new(),
                        withdrawn_since: None,
                    }),
                    last_error: (i == 7).then(|| "x".repeat(300)),
                    remote_secrets_expected: members as i32 - 1,
                    ..MemberStatus::default()
                })
                .collect(),
            ..MeshFederationStatus::default()
        });
        f
    }

    #[test]
    fn fifty_members_are_fifty_short_aligned_lines() {
        let table = status_table(&fed(50));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 51);
        assert!(lines[0].starts_with("MEMBER"));
        assert!(lines.iter().all(|l| l.chars().count() < 200), "{table}");
        let at = lines[0].find("REMOTE").unwrap();
        assert!(lines.iter().skip(1).all(|l| l[at..].starts_with("0/49")));
        assert!(lines[8].contains("no (ApiServerUnreachable)"));
        assert!(lines[8].ends_with('…'));
    }

    #[test]
    fn loopback_and_in_cluster_addresses_are_flagged() {
        for s in [
            "https://127.0.0.1:6443",
            "https://localhost:6443",
            "https://[::1]:6443",
            "https://kubernetes.default.svc",
            "https://kubernetes.default.svc.cluster.local:443",
        ] {
            assert!(unusable_by_peers(s), "{s}");
        }
        for s in ["https://10.0.0.1:6443", "https://api.example.com"] {
            assert!(!unusable_by_peers(s), "{s}");
        }
    }

    fn permission(verb: &str, resource: &str) -> Permission {
        Permission {
            verb: verb.into(),
            group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
        }
    }

    fn preflight() -> Preflight {
        Preflight {
            server: "https://127.0.0.1:6443".into(),
            version: Ok("v1.28.3".into()),
            istiod: Some(None),
            cacerts: Some(Some("other".into())),
            network: Some("net-a".into()),
            identity: None,
            federation: FederationLookup::Missing,
            permissions: vec![
                (permission("create", "namespaces"), true),
                (
                    Permission {
                        group: "rbac.authorization.k8s.io".into(),
                        ..permission("create", "clusterroles")
                    },
                    false,
                ),
            ],
            managed_permissions: Vec::new(),
            token_secrets: vec!["default/legacy".into()],
            unreadable: vec!["Secrets cluster-wide: API error 403".into()],
        }
    }

    #[test]
    fn every_finding_that_needs_doing_says_what_to_do() {
        let p = preflight();
        let f = findings(&p, "prod");
        let levels: Vec<Level> = f.iter().map(|f| f.level).collect();
        assert!(levels.contains(&Level::Fail));
        for x in &f {
            assert_eq!(x.level == Level::Ok, x.fix.is_empty(), "{x:?}");
        }
        let text = format!("{f:?}");
        for expected in [
            "older than 1.29",
            "loopback",
            "not installed by meshfed",
            "federation other",
            "federation prod not found",
            "create clusterroles.rbac.authorization.k8s.io (cluster-wide)",
            "default/legacy",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        let down = Preflight {
            version: Err("no answer within 10s".into()),
            ..p
        };
        let f = findings(&down, "prod");
        assert_eq!(f.len(), 1, "nothing else is known");
        assert!(f[0].fix.contains("get --raw /version"), "{f:?}");
    }

    #[test]
    fn a_network_label_is_advice_before_istio_and_a_warning_under_it() {
        let network = |p: &Preflight| {
            findings(p, "prod")
                .into_iter()
                .find(|f| f.what.contains("topology.istio.io/network"))
                .unwrap()
        };
        let under_istiod = network(&preflight());
        assert_eq!(under_istiod.level, Level::Warn);
        assert!(under_istiod.fix.starts_with("join with --network net-a"));
        let before = network(&Preflight {
            istiod: None,
            ..preflight()
        });
        assert_eq!(before.level, Level::Note, "{before:?}");
        assert!(
            !before.fix.is_empty() && before.level != Level::Ok,
            "printed"
        );
        let unlabelled = findings(
            &Preflight {
                network: None,
                ..preflight()
            },
            "prod",
        );
        assert!(
            unlabelled
                .iter()
                .any(|f| f.level == Level::Ok && f.what.contains("no network label"))
        );
    }

    #[test]
    fn managed_rights_fail_for_a_managed_federation_and_are_advice_when_unknown() {
        let managed_row = |lookup: FederationLookup, allowed: bool| {
            let p = Preflight {
                federation: lookup,
                identity: Some("system:serviceaccount:istio-system:meshfed-member".into()),
                managed_permissions: managed_permissions()
                    .into_iter()
                    .map(|p| (p, allowed))
                    .collect(),
                ..preflight()
            };
            findings(&p, "prod").into_iter().find(|f| {
                f.what.contains("Managed control plane") || f.what.contains("Istio's charts")
            })
        };
        let fail = managed_row(
            FederationLookup::Found(Some(ControlPlaneMode::Managed)),
            false,
        )
        .unwrap();
        assert_eq!(fail.level, Level::Fail);
        assert!(
            fail.what.contains(
                "may not: get/list/create/patch/delete customresourcedefinitions.apiextensions.k8s.io (cluster-wide), "
            ),
            "{fail:?}"
        );
        assert!(fail.what.ends_with("more resources"), "{fail:?}");
        assert!(
            fail.fix.ends_with("kubectl create clusterrolebinding meshfed-member-cluster-admin --clusterrole cluster-admin --serviceaccount istio-system:meshfed-member"),
            "{fail:?}"
        );
        let advice = managed_row(FederationLookup::Unknown("no kubeconfig".into()), false).unwrap();
        assert_eq!(advice.level, Level::Note);
        assert!(
            advice
                .what
                .starts_with("if federation prod gets a Managed control plane")
        );
        let ok = managed_row(
            FederationLookup::Found(Some(ControlPlaneMode::Managed)),
            true,
        )
        .unwrap();
        assert_eq!(ok.level, Level::Ok);
        assert_eq!(
            managed_row(
                FederationLookup::Found(Some(ControlPlaneMode::External)),
                false
            ),
            None,
            "not needed, not said"
        );
    }

    #[test]
    fn managed_rights_cover_what_istios_charts_hold() {
        let all: Vec<String> = managed_permissions()
            .iter()
            .map(|p| p.to_string())
            .collect();
        for expected in [
            "create customresourcedefinitions.apiextensions.k8s.io",
            "patch mutatingwebhookconfigurations.admissionregistration.k8s.io",
            "delete clusterrolebindings.rbac.authorization.k8s.io",
            "create deployments.apps in istio-system",
            "patch horizontalpodautoscalers.autoscaling in istio-system",
            "create poddisruptionbudgets.policy in istio-system",
            "list pods",
            "create deployments.apps",
        ] {
            assert!(all.contains(&expected.to_string()), "{expected}: {all:?}");
        }
    }

    #[test]
    fn summarize_groups_verbs_by_resource() {
        let p = [
            permission("create", "secrets"),
            permission("patch", "secrets"),
            Permission {
                namespace: "istio-system".into(),
                ..permission("get", "configmaps")
            },
        ];
        let refs: Vec<&Permission> = p.iter().collect();
        assert_eq!(
            summarize(&refs),
            "create/patch secrets (cluster-wide), get configmaps in istio-system"
        );
    }

    #[test]
    fn join_refuses_what_the_spec_or_tokenrequest_would() {
        for ok in ["east", "a", "cluster-1", &"a".repeat(63)] {
            assert_eq!(validate_member_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "East",
            "-east",
            "east-",
            "east_1",
            "east.1",
            &"a".repeat(64),
        ] {
            let e = validate_member_name(bad).unwrap_err();
            assert!(e.contains("DNS-1123"), "{bad}: {e}");
        }
        for ok in ["net-a", "Net_A.1", "n"] {
            assert_eq!(validate_network(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b", &"n".repeat(64)] {
            assert!(validate_network(bad).is_err(), "{bad}");
        }
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert!(
            validate_token_lifetime(minutes(9))
                .unwrap_err()
                .contains("10m")
        );
        assert_eq!(validate_token_lifetime(minutes(10)), Ok(()));
        assert_eq!(validate_token_lifetime(MAX_TOKEN_LIFETIME), Ok(()));
        assert!(validate_token_lifetime(MAX_TOKEN_LIFETIME + Duration::from_secs(1)).is_err());
        assert_eq!(validate_server("https://10.0.0.1:6443"), Ok(()));
        assert!(validate_server("http://10.0.0.1:6443").is_err());
        assert!(validate_server("https://").is_err());
    }

    #[test]
    fn check_asks_about_every_permission_of_the_member_roles() {
        let needed: Vec<String> = needed_permissions("blue")
            .iter()
            .map(|p| p.to_string())
            .collect();
        for expected in [
            "list secrets",
            "create clusterroles.rbac.authorization.k8s.io",
            "patch clusterroles.rbac.authorization.k8s.io meshfed-reader-blue",
            "patch namespaces istio-system",
            "create serviceaccounts/token meshfed-reader-blue in istio-system",
            "list endpointslices.discovery.k8s.io",
        ] {
            assert!(
                needed.contains(&expected.to_string()),
                "{expected}: {needed:?}"
            );
        }
        assert!(needed.len() > 40, "{}", needed.len());
    }

    #[test]
    fn progress_counts_only_the_current_generation_as_ready() {
        let mut f = fed(3);
        f.metadata.generation = Some(2);
        let status = f.status.as_mut().unwrap();
        status.ready_members = 3;
        status.observed_generation = Some(1);
        status
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
            });
        assert_eq!(progress(&f), (3, 3, false));
        f.status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(progress(&f), (3, 3, true));
        assert_eq!(headline(&f), "prod: Ready, 3/3 members ready");
    }

    #[test]
    fn a_rollout_is_a_line_under_the_table_and_in_the_control_plane_column() {
        let mut f = fed(2);
        let status = f.status.as_mut().unwrap();
        status.control_plane = Some(crate::api::RolloutStatus {
            version: "1.31".into(),
            revision: "1-31".into(),
            phase: "Halted".into(),
            updated: 1,
            wave: vec!["b".into()],
            halted: Some(crate::api::HaltStatus {
                member: "b".into(),
                gate: "IstiodReady".into(),
                message: "istiod-1-31 is not available".into(),
            }),
            ..Default::default()
        });
        let m = &mut status.members[1];
        m.control_plane_ready = Some(true);
        m.istio_version = Some("1.30".into());
        m.tags_revision = Some("1-30".into());
        m.upgrade_phase = Some("Halted".into());
        m.revisions = ["1-30", "1-31"]
            .map(|r| crate::api::RevisionStatus {
                name: r.into(),
                ..Default::default()
            })
            .to_vec();
        assert_eq!(
            warnings(&f),
            [
                "Istio 1.31: Halted, 1/2 members updated, changing now: b; halted at b: gate IstiodReady: istiod-1-31 is not available"
            ]
        );
        assert!(
            status_table(&f).contains("1.30 ready, Halted, also 1-31"),
            "{}",
            status_table(&f)
        );
        f.status
            .as_mut()
            .unwrap()
            .control_plane
            .as_mut()
            .unwrap()
            .phase = "Complete".into();
        assert!(warnings(&f).is_empty());
    }

    #[test]
    fn exposed_credentials_are_a_warning_under_the_table() {
        let mut f = fed(2);
        assert!(warnings(&f).is_empty());
        let condition = |status: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "CredentialsExposed".into(),
            status: status.into(),
            reason: "OperatorClusterIsMember".into(),
            message: "the operator runs in member a's cluster".into(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        f.status
            .as_mut()
            .unwrap()
            .conditions
            .push(condition("False"));
        assert!(warnings(&f).is_empty());
        f.status.as_mut().unwrap().conditions = vec![condition("True")];
        assert_eq!(
            warnings(&f),
            [
                "warning: CredentialsExposed (OperatorClusterIsMember): the operator runs in member a's cluster"
            ]
        );
    }

    /// A federation of `members` (names), as read from the API server.
    fn federation(members: &[&str], extra: serde_json::Value) -> MeshFederation {
        let members: Vec<serde_json::Value> = members
            .iter()
            .map(|m| {
                serde_json::json!({"name": m, "network": "n",
                    "credentials": {"secretRef": {"name": format!("{m}-kubeconfig")}}})
            })
            .collect();
        let mut spec = serde_json::json!({"meshID": "m", "members": members});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meshfed.io/v1alpha1", "kind": "MeshFederation",
            "metadata": {"name": "prod", "resourceVersion": "42"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("ghcr.io/x/meshfed:0.3.0"), Some("0.3.0"));
        assert_eq!(
            image_tag("localhost:5000/meshfed:v1@sha256:abc"),
            Some("v1")
        );
        assert_eq!(image_tag("localhost:5000/meshfed"), None);
        assert_eq!(image_tag("meshfed@sha256:abc"), None);
    }

    #[test]
    fn version_text_warns_of_skew_only_when_the_operator_differs() {
        let mut v = Versions {
            plugin: "0.3.0".into(),
            operator: Ok("v0.3.0".into()),
            crd: Ok((vec!["v1alpha1".into()], Some("0.3.0".into()))),
        };
        let (text, skew) = version_text(&v);
        assert_eq!(
            text,
            "plugin:   0.3.0\noperator: v0.3.0\nCRD:      meshfederations.meshfed.io serves v1alpha1, app.kubernetes.io/version 0.3.0\n"
        );
        assert_eq!(skew, None);
        v.operator = Ok("0.2.1".into());
        let skew = version_text(&v).1.unwrap();
        assert!(
            skew.contains("the plugin (0.3.0) and the operator (0.2.1) differ"),
            "{skew}"
        );
        v.operator = Err("no Deployment".into());
        v.crd = Err("the CRD is not installed".into());
        let (text, skew) = version_text(&v);
        assert!(
            text.contains("operator: not found (no Deployment)"),
            "{text}"
        );
        assert!(
            text.contains("CRD:      not found (the CRD is not installed)"),
            "{text}"
        );
        assert_eq!(skew, None, "nothing to compare");
    }

    #[test]
    fn rotate_patches_set_only_the_request() {
        let fed = federation(&["a", "b"], serde_json::json!({}));
        assert_eq!(
            rotate_patch(&fed, Rotation::Root, "r1").unwrap(),
            serde_json::json!({"spec": {"ca": {"rootRotation": {"request": "r1"}}}})
        );
        assert_eq!(
            rotate_patch(&fed, Rotation::Tokens, "t1").unwrap(),
            serde_json::json!({"metadata": {"annotations": {"meshfed.io/refresh-tokens": "t1"}}})
        );
        let own = federation(
            &["a"],
            serde_json::json!({"ca": {"rootSecretRef": {"name": "my-root"}}}),
        );
        let e = rotate_patch(&own, Rotation::Root, "r1").unwrap_err();
        assert!(e.contains("spec.ca.rootSecretRef: my-root"), "{e}");
        assert!(rotate_patch(&own, Rotation::Tokens, "t1").is_ok());
    }

    #[test]
    fn rotation_values_change() {
        let now: jiff::Timestamp = "2026-12-06T03:14:15Z".parse().unwrap();
        assert_eq!(rotation_value(now, None), "20261206t031415z");
        assert_eq!(rotation_value(now, Some("x")), "20261206t031415z");
        assert_eq!(
            rotation_value(now, Some("20261206t031415z")),
            "20261206t031415z-2"
        );
        let fed = federation(
            &["a"],
            serde_json::json!({"ca": {"rootRotation": {"request": "old"}}}),
        );
        assert_eq!(rotation_current(&fed, Rotation::Root), Some("old"));
        assert_eq!(rotation_current(&fed, Rotation::Tokens), None);
    }

    #[test]
    fn leave_removes_the_member_and_its_place_in_the_order() {
        let fed = federation(
            &["a", "b", "c"],
            serde_json::json!({"controlPlane": {"mode": "External",
                "upgrade": {"order": ["b", "a"]}}}),
        );
        let patch = leave_patch(&fed, "b").unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let names: Vec<&str> = patch["spec"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(
            patch["spec"]["members"][0]["credentials"]["secretRef"]["name"], "a-kubeconfig",
            "the others are kept whole"
        );
        assert_eq!(
            patch["spec"]["controlPlane"],
            serde_json::json!({"upgrade": {"order": ["a"]}})
        );
        let patch = leave_patch(&fed, "c").unwrap();
        assert!(patch["spec"].get("controlPlane").is_none(), "{patch}");

        let e = leave_patch(&fed, "d").unwrap_err();
        assert_eq!(e, "federation prod has no member d (members: a, b, c)");
        let e = leave_patch(&federation(&["a"], serde_json::json!({})), "a").unwrap_err();
        assert!(e.contains("a is the last member of federation prod"), "{e}");
        assert!(e.contains("kubectl delete meshfederation prod"), "{e}");
    }

    #[test]
    fn removal_text_follows_on_removal() {
        let retain = federation(&["a", "b"], serde_json::json!({}));
        assert!(removal_text(&retain, "b").contains("Retain: b keeps its cacerts"));
        let revoke = federation(
            &["a", "b"],
            serde_json::json!({"ca": {"onRemoval": "Revoke"}}),
        );
        let text = removal_text(&revoke, "b");
        assert!(
            text.contains("replaced through a full rotation without b"),
            "{text}"
        );
        assert!(text.contains("removes b's remote secrets"), "{text}");
    }

    #[test]
    fn upgrade_plans_waves_with_the_rollout_planner() {
        let fed = federation(
            &["a", "b", "c", "d", "e"],
            serde_json::json!({"controlPlane": {"mode": "Managed", "version": "1.30",
                "upgrade": {"order": ["d", "b"], "maxConcurrent": 2, "pause": "5m"}}}),
        );
        let waves = upgrade_waves(&fed, "1.31").unwrap();
        assert_eq!(waves, [vec!["d", "b"], vec!["a", "c"], vec!["e"]]);
        let text = upgrade_plan_text(&fed, "1.31", &waves);
        assert_eq!(
            text,
            "federation prod: Istio 1.30 -> 1.31\nRevisionBased, maxConcurrent 2, pause 300s between waves, gate timeout 300s:\n  wave 1: d, b\n  wave 2: a, c\n  wave 3: e\n"
        );
        assert_eq!(
            upgrade_patch("1.31"),
            serde_json::json!({"spec": {"controlPlane": {"version": "1.31"}}})
        );

        let one_at_a_time = federation(
            &["a", "b"],
            serde_json::json!({"controlPlane": {"mode": "Managed", "version": "1.30"}}),
        );
        assert_eq!(
            upgrade_waves(&one_at_a_time, "1.31").unwrap(),
            [vec!["a"], vec!["b"]]
        );
        let e = upgrade_waves(&one_at_a_time, "1.30").unwrap_err();
        assert!(e.contains("already at version 1.30"), "{e}");

        let in_place = federation(
            &["a", "b"],
            serde_json::json!({"controlPlane": {"mode": "Managed", "version": "1.30",
                "upgrade": {"strategy": "InPlace"}}}),
        );
        let waves = upgrade_waves(&in_place, "1.31").unwrap();
        assert!(
            upgrade_plan_text(&in_place, "1.31", &waves)
                .contains("InPlace: every member is re-rendered at once: a, b")
        );

        let e = upgrade_waves(&federation(&["a"], serde_json::json!({})), "1.31").unwrap_err();
        assert!(
            e.contains("federation prod has no spec.controlPlane"),
            "{e}"
        );
    }
}
