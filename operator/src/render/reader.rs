use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};

use super::{ISTIO_NAMESPACE, managed_meta};

/// The read-only identity peers' istiods use to watch a member.
#[derive(Clone, Debug, PartialEq)]
pub struct ReaderIdentity {
    pub service_account: ServiceAccount,
    pub cluster_role: ClusterRole,
    pub binding: ClusterRoleBinding,
}

/// Name of the reader ServiceAccount, ClusterRole and binding. Not
/// `istio-reader-service-account`: Istio's charts own that name.
pub fn reader_name(federation: &str) -> String {
    format!("meshfed-reader-{federation}")
}

fn read_only(groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|g| g.to_string()).collect()),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: ["get", "list", "watch"].map(String::from).to_vec(),
        ..PolicyRule::default()
    }
}

/// What a remote istiod watches in a peer (after Istio's `istio-reader` role),
/// read-only. Secrets are included because istiod's remote credentials
/// controller lists and watches them in every peer and reports the peer
/// `timeout` instead of `synced` without them (its opt-out crashes istiod
/// 1.31; see docs/istio.md). Unlike Istio's role there is no TokenReview: in
/// multi-primary each cluster's proxies talk to their own istiod.
fn reader_rules() -> Vec<PolicyRule> {
    vec![
        read_only(
            &[""],
            &[
                "endpoints",
                "pods",
                "services",
                "nodes",
                "namespaces",
                "replicationcontrollers",
                "configmaps",
                "secrets",
            ],
        ),
        read_only(&["discovery.k8s.io"], &["endpointslices"]),
        read_only(&["apps"], &["replicasets"]),
        read_only(&["apiextensions.k8s.io"], &["customresourcedefinitions"]),
        read_only(
            &[
                "config.istio.io",
                "security.istio.io",
                "networking.istio.io",
                "telemetry.istio.io",
                "extensions.istio.io",
            ],
            &["*"],
        ),
        read_only(
            &["gateway.networking.k8s.io", "gateway.networking.x-k8s.io"],
            &["*"],
        ),
        read_only(
            &["multicluster.x-k8s.io"],
            &["serviceexports", "serviceimports"],
        ),
    ]
}

/// The reader ServiceAccount in istio-system, its ClusterRole and binding.
pub fn render_reader_identity(federation: &str) -> ReaderIdentity {
    let name = reader_name(federation);
    ReaderIdentity {
        service_account: ServiceAccount {
            metadata: managed_meta(federation, &name, Some(ISTIO_NAMESPACE)),
            ..ServiceAccount::default()
        },
        cluster_role: ClusterRole {
            metadata: managed_meta(federation, &name, None),
            rules: Some(reader_rules()),
            ..ClusterRole::default()
        },
        binding: ClusterRoleBinding {
            metadata: managed_meta(federation, &name, None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name,
                namespace: Some(ISTIO_NAMESPACE.into()),
                ..Subject::default()
            }]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::is_ours;

    #[test]
    fn reader_is_read_only_and_bound_to_its_account() {
        let r = render_reader_identity("prod");
        assert_eq!(
            r.service_account.metadata.name.as_deref(),
            Some("meshfed-reader-prod")
        );
        assert_eq!(
            r.service_account.metadata.namespace.as_deref(),
            Some("istio-system")
        );
        for rule in r.cluster_role.rules.as_ref().unwrap() {
            assert_eq!(rule.verbs, ["get", "list", "watch"]);
            assert!(rule.resource_names.is_none());
        }
        let rules = r.cluster_role.rules.unwrap();
        let grants = |group: &str, resource: &str| {
            rules.iter().any(|r| {
                r.api_groups.as_ref().unwrap().iter().any(|g| g == group)
                    && r.resources
                        .as_ref()
                        .unwrap()
                        .iter()
                        .any(|x| x == resource || x == "*")
            })
        };
        for (g, res) in [
            ("", "services"),
            ("", "pods"),
            ("", "endpoints"),
            ("", "nodes"),
            ("", "namespaces"),
            ("discovery.k8s.io", "endpointslices"),
            ("networking.istio.io", "serviceentries"),
            ("gateway.networking.k8s.io", "gateways"),
        ] {
            assert!(grants(g, res), "reader must read {g}/{res}");
        }
        assert!(
            grants("", "secrets"),
            "istiod's remote credentials controller watches Secrets"
        );
        assert!(!rules.iter().any(|r| {
            r.resources
                .as_ref()
                .unwrap()
                .iter()
                .any(|x| x == "tokenreviews")
        }));
        assert_eq!(r.binding.role_ref.name, "meshfed-reader-prod");
        let subject = &r.binding.subjects.as_ref().unwrap()[0];
        assert_eq!(subject.kind, "ServiceAccount");
        assert_eq!(subject.name, "meshfed-reader-prod");
        assert_eq!(subject.namespace.as_deref(), Some("istio-system"));
        for meta in [
            &r.service_account.metadata,
            &r.cluster_role.metadata,
            &r.binding.metadata,
        ] {
            assert!(is_ours(meta, "prod"));
        }
    }
}
