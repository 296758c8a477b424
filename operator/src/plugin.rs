//! `kubectl meshfed`: what the plugin shows and concludes, as pure functions
//! of what it read. The binary (`src/bin/kubectl-meshfed.rs`) does the
//! reading and writing.

use crate::api::MeshFederation;
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
    Ok,
    Warn,
    Fail,
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
    /// What meshfed needs to do there, and whether the identity may.
    pub permissions: Vec<(String, bool)>,
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

/// What the preflight read comes to, each with what to do.
pub fn findings(p: &Preflight, federation: Option<&str>) -> Vec<Finding> {
    use Level::{Fail, Warn};
    let mut out = Vec::new();
    match &p.version {
        Err(why) => {
            out.push(Finding::new(
                Fail,
                format!("API server {} did not answer: {why}", p.server),
                "check the kubeconfig's server address, CA and credentials",
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
    let owned_elsewhere = |label: &Option<String>| match (label, federation) {
        (Some(f), Some(mine)) => f != mine,
        (Some(_), None) => false,
        (None, _) => true,
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
        Some(n) => out.push(Finding::new(
            Level::Ok,
            format!("istio-system is labelled topology.istio.io/network={n}"),
            "give the member this network in the spec, or meshfed relabels it",
        )),
    }
    let denied: Vec<&str> = p
        .permissions
        .iter()
        .filter(|(_, allowed)| !allowed)
        .map(|(what, _)| what.as_str())
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
            format!("the identity may not: {}", denied.join(", ")),
            "kubectl meshfed join creates an identity with exactly these rights",
        ));
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

    #[test]
    fn every_finding_that_needs_doing_says_what_to_do() {
        let p = Preflight {
            server: "https://127.0.0.1:6443".into(),
            version: Ok("v1.28.3".into()),
            istiod: Some(None),
            cacerts: Some(Some("other".into())),
            network: Some("net-a".into()),
            permissions: vec![
                ("create namespaces".into(), true),
                ("create clusterroles".into(), false),
            ],
            token_secrets: vec!["default/legacy".into()],
            unreadable: vec!["Secrets cluster-wide: API error 403".into()],
        };
        let f = findings(&p, Some("prod"));
        let levels: Vec<Level> = f.iter().map(|f| f.level).collect();
        assert!(levels.contains(&Level::Fail));
        for x in f.iter().filter(|f| f.level != Level::Ok) {
            assert!(!x.fix.is_empty(), "{x:?}");
        }
        let text = format!("{f:?}");
        for expected in [
            "older than 1.29",
            "loopback",
            "not installed by meshfed",
            "federation other",
            "create clusterroles",
            "default/legacy",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        let down = Preflight {
            version: Err("connection refused".into()),
            ..p
        };
        assert_eq!(findings(&down, None).len(), 1, "nothing else is known");
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
}
