//! The ServiceAccount token in a member's credentials, as far as the
//! operator needs to know it to renew it: whose it is and when it expires.
//! The token's signature is the member API server's business; these claims
//! only decide when to ask that server for a new one.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde_json::Value;

/// A ServiceAccount token's identity and lifetime, read from its claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub namespace: String,
    pub service_account: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

impl TokenClaims {
    /// The claims of a bound ServiceAccount token (TokenRequest's), if
    /// `token` is one: a legacy Secret token has no expiry and needs no
    /// renewal, any other kind of token is not the operator's to renew.
    pub fn of(token: &str) -> Option<Self> {
        let payload = token.split('.').nth(1)?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let k8s = claims.get("kubernetes.io")?;
        let time = |key: &str| Timestamp::from_second(claims.get(key)?.as_i64()?).ok();
        Some(Self {
            namespace: k8s.get("namespace")?.as_str()?.into(),
            service_account: k8s.get("serviceaccount")?.get("name")?.as_str()?.into(),
            issued_at: time("iat")?,
            expires_at: time("exp")?,
        })
    }

    /// Its lifetime as issued.
    pub fn lifetime(&self) -> std::time::Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unsigned_abs()
    }

    /// When to renew it: with a third of its lifetime left, as for reader
    /// tokens.
    pub fn renew_at(&self) -> Timestamp {
        crate::render::token_refresh_at(Some(self.issued_at), self.expires_at, self.lifetime())
    }
}

/// The token of the user `kubeconfig`'s current context uses, if any.
pub fn current_token(kubeconfig: &str) -> Option<String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(kubeconfig).ok()?;
    Some(current_user_token(&mut doc)?.as_str()?.to_string())
}

/// `kubeconfig` (YAML) with the token of the user its current context uses
/// replaced by `token`; everything else kept. `None` when it has no such
/// user with a token.
pub fn with_token(kubeconfig: &str, token: &str) -> Option<String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(kubeconfig).ok()?;
    *current_user_token(&mut doc)? = serde_yaml::Value::String(token.into());
    serde_yaml::to_string(&doc).ok()
}

fn current_user_token(doc: &mut serde_yaml::Value) -> Option<&mut serde_yaml::Value> {
    let named =
        |v: &serde_yaml::Value, name: &str| v.get("name").and_then(|n| n.as_str()) == Some(name);
    let context = doc.get("current-context")?.as_str()?.to_string();
    let user = doc
        .get("contexts")?
        .as_sequence()?
        .iter()
        .find(|c| named(c, &context))?
        .get("context")?
        .get("user")?
        .as_str()?
        .to_string();
    doc.get_mut("users")?
        .as_sequence_mut()?
        .iter_mut()
        .find(|u| named(u, &user))?
        .get_mut("user")?
        .get_mut("token")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unsigned token with these claims (the operator never checks
    /// signatures; the API server does).
    pub fn token(claims: Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.sig",
            part(&serde_json::json!({"alg": "RS256"})),
            part(&claims)
        )
    }

    fn member_token(iat: i64, exp: i64) -> String {
        token(serde_json::json!({
            "iat": iat, "exp": exp,
            "sub": "system:serviceaccount:istio-system:meshfed-member",
            "kubernetes.io": {"namespace": "istio-system", "serviceaccount": {"name": "meshfed-member", "uid": "u"}},
        }))
    }

    #[test]
    fn a_bound_service_account_token_is_read_and_renewed_with_a_third_left() {
        let c = TokenClaims::of(&member_token(1_767_225_600, 1_767_225_600 + 86_400)).unwrap();
        assert_eq!(c.namespace, "istio-system");
        assert_eq!(c.service_account, "meshfed-member");
        assert_eq!(c.lifetime(), std::time::Duration::from_secs(86_400));
        assert_eq!(
            c.renew_at(),
            Timestamp::from_second(1_767_225_600 + 57_600).unwrap()
        );
    }

    #[test]
    fn tokens_that_are_not_bound_service_account_tokens_are_left_alone() {
        let legacy = token(serde_json::json!({
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": "istio-system",
        }));
        assert_eq!(TokenClaims::of(&legacy), None, "no expiry");
        assert_eq!(TokenClaims::of("not-a-jwt"), None);
        assert_eq!(TokenClaims::of("a.%%%.c"), None);
        let oidc = token(serde_json::json!({"iat": 1, "exp": 2, "sub": "alice"}));
        assert_eq!(TokenClaims::of(&oidc), None, "not a ServiceAccount's");
    }

    #[test]
    fn only_the_current_users_token_is_replaced() {
        let kubeconfig = "apiVersion: v1
kind: Config
current-context: m
clusters:
- name: c
  cluster: {server: 'https://10.0.0.1:6443', certificate-authority-data: Q0E=}
contexts:
- name: m
  context: {cluster: c, user: meshfed}
- name: other
  context: {cluster: c, user: admin}
users:
- name: admin
  user: {token: admin-token}
- name: meshfed
  user: {token: old-token}
";
        assert_eq!(current_token(kubeconfig).as_deref(), Some("old-token"));
        let renewed = with_token(kubeconfig, "new-token").unwrap();
        assert_eq!(current_token(&renewed).as_deref(), Some("new-token"));
        let parsed = kube::config::Kubeconfig::from_yaml(&renewed).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("m"));
        let admin = renewed.replace("current-context: m", "current-context: other");
        assert_eq!(
            current_token(&admin).as_deref(),
            Some("admin-token"),
            "untouched"
        );
        assert_eq!(
            parsed.clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .server
                .as_deref(),
            Some("https://10.0.0.1:6443")
        );
        let no_token = kubeconfig.replace("{token: old-token}", "{username: x}");
        assert_eq!(with_token(&no_token, "t"), None);
        assert_eq!(current_token(&no_token), None);
    }
}
