use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

/// What goes into a remote secret's kubeconfig.
pub struct KubeconfigInputs<'a> {
    /// The peer's cluster ID: names the cluster, context and user.
    pub cluster: &'a str,
    pub server: &'a str,
    pub ca_pem: &'a str,
    pub token: &'a str,
}

/// A kubeconfig in the shape `istioctl create-remote-secret` writes: one
/// cluster, context and user, all named after the peer, with everything
/// inline (istiod rejects file paths and exec plugins in remote secrets).
pub fn render_kubeconfig(inputs: &KubeconfigInputs) -> String {
    let name = inputs.cluster;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": name,
            "cluster": {
                "server": inputs.server,
                "certificate-authority-data": STANDARD.encode(inputs.ca_pem),
            },
        }],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": name } }],
        "current-context": name,
        "users": [{ "name": name, "user": { "token": inputs.token } }],
        "preferences": {},
    });
    serde_yaml::to_string(&config).expect("a JSON value always serialises to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_is_inline_and_named_after_the_peer() {
        let yaml = render_kubeconfig(&KubeconfigInputs {
            cluster: "east",
            server: "https://10.0.0.1:6443",
            ca_pem: "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n",
            token: "t0k3n",
        });
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("east"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(kc.clusters[0].name, "east");
        assert_eq!(cluster.server.as_deref(), Some("https://10.0.0.1:6443"));
        assert!(cluster.certificate_authority.is_none());
        let ca = STANDARD
            .decode(cluster.certificate_authority_data.as_ref().unwrap())
            .unwrap();
        assert!(
            String::from_utf8(ca)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let ctx = kc.contexts[0].context.as_ref().unwrap();
        assert_eq!(
            (ctx.cluster.as_str(), ctx.user.as_deref()),
            ("east", Some("east"))
        );
        let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(kc.auth_infos[0].name, "east");
        assert!(user.token.is_some() && user.token_file.is_none() && user.exec.is_none());
    }
}
