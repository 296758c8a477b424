//! The member-side RBAC meshfed ships (`config/rbac/member`,
//! `config/member-rbac`), limited by name to given federations' readers:
//! what `kubectl meshfed join` applies and `check` asks about.
use serde::Deserialize;
use serde_json::Value;

/// The reader name the shipped member roles are written for (the sample
/// federation's); [`member_rbac`] puts the federations' own names there.
const SHIPPED_READER: &str = "meshfed-reader-prod";

/// The member-side RBAC `kubectl meshfed join` applies: `config/rbac/member`
/// and the identity of `config/member-rbac`, with the rules limited by name
/// to the readers of `federations`, and without any token Secret (join
/// stores a short-lived token instead).
pub fn member_rbac(federations: &[&str]) -> Vec<Value> {
    let readers: Vec<Value> = federations
        .iter()
        .map(|f| Value::String(super::reader_name(f)))
        .collect();
    let mut objects = shipped_member_rbac();
    for rule in objects
        .iter_mut()
        .filter_map(|o| o.get_mut("rules"))
        .filter_map(Value::as_array_mut)
        .flatten()
    {
        if let Some(Value::Array(names)) = rule.get_mut("resourceNames")
            && let Some(at) = names.iter().position(|n| n == SHIPPED_READER)
        {
            names.splice(at..=at, readers.iter().cloned());
        }
    }
    objects
}

fn shipped_member_rbac() -> Vec<Value> {
    let files = [
        include_str!("../../../config/rbac/member/cluster_role.yaml"),
        include_str!("../../../config/rbac/member/istio_system_role.yaml"),
        include_str!("../../../config/rbac/member/token_secret_policy.yaml"),
        include_str!("../../../config/rbac/member/deployment_policy.yaml"),
        include_str!("../../../config/member-rbac/service_account.yaml"),
        include_str!("../../../config/member-rbac/role_binding.yaml"),
    ];
    files
        .iter()
        .flat_map(|f| serde_yaml::Deserializer::from_str(f))
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|v| v.is_object() && v["kind"] != "Secret")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_applies_the_member_roles_and_identity_but_no_token_secret() {
        let objects = member_rbac(&["blue", "green"]);
        let kinds: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        for k in [
            "ClusterRole/meshfed-member",
            "Role/meshfed-member",
            "ServiceAccount/meshfed-member",
            "ClusterRoleBinding/meshfed-member",
            "RoleBinding/meshfed-member",
            "ValidatingAdmissionPolicy/meshfed-token-secrets",
            "ValidatingAdmissionPolicy/meshfed-member-deployments",
        ] {
            assert!(kinds.contains(&k.to_string()), "{k}: {kinds:?}");
        }
        assert!(!kinds.iter().any(|k| k.starts_with("Secret/")));
        let limited: Vec<&Value> = objects
            .iter()
            .flat_map(|o| o["rules"].as_array().into_iter().flatten())
            .filter_map(|r| r.get("resourceNames"))
            .filter(|n| n.to_string().contains("meshfed-reader"))
            .collect();
        assert_eq!(limited.len(), 2, "RBAC writes and tokens: {limited:?}");
        for names in limited {
            let names = names.to_string();
            assert!(
                names.contains("\"meshfed-reader-blue\",\"meshfed-reader-green\""),
                "{names}"
            );
            assert!(!names.contains("prod"), "{names}");
        }
    }
}
