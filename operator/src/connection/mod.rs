//! Connections to member clusters, built from kubeconfig Secrets (or the
//! operator's own cluster) and cached while the credentials are unchanged.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

use crate::api::{KubeconfigSecretRef, Member, MemberCredentials};
use crate::render::{PeerEndpoint, keys};
use crate::telemetry::RequestCounter;

mod credential;
mod join;
pub use join::apply_member_rbac;
mod watch;
pub use credential::{TokenClaims, current_token, with_token};
pub use watch::MemberWatches;
pub(crate) use watch::receiver_stream;

/// Why a member could not be connected to. Messages name the field to fix and
/// never carry the kubeconfig itself.
#[derive(thiserror::Error, Debug)]
pub enum ConnectError {
    #[error(
        "credentials Secret {namespace}/{name} not found (spec.members[].credentials.secretRef)"
    )]
    SecretMissing { namespace: String, name: String },
    #[error(
        "credentials Secret {namespace}/{name} has no key {key:?} (spec.members[].credentials.secretRef.key)"
    )]
    KeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("kubeconfig in Secret {namespace}/{name} is not usable: {reason}")]
    InvalidKubeconfig {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("credentials name neither secretRef nor local")]
    NoCredentials,
    #[error("reading credentials: {0}")]
    Kube(#[from] kube::Error),
}

/// A live connection to one member.
#[derive(Clone)]
pub struct MemberConnection {
    /// Distinct for every connection built: a new one means new credentials.
    pub id: u64,
    pub client: Client,
    /// The API server address and CA the operator uses (peers may use others).
    pub server: String,
    pub ca_pem: Option<String>,
    pub requests: RequestCounter,
    /// The ServiceAccount token it authenticates with, when it is a bound one.
    pub credential: Option<StoredCredential>,
}

/// A member credential that is a bound ServiceAccount token, and where it is kept.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// The Secret in the operator's namespace, and its key.
    pub secret: String,
    pub key: String,
    pub claims: TokenClaims,
    /// Whether meshfed may store a renewed token there: `kubectl meshfed
    /// join` made the Secret, or its owner annotated it
    /// `meshfed.io/renew-credentials: "true"`.
    pub renewable: bool,
    /// The forced refresh (`meshfed.io/refresh-tokens`) it was renewed for.
    pub renewed_for: Option<String>,
}

impl MemberConnection {
    /// Where peers should reach this member: the spec's override, else what the
    /// operator itself uses.
    pub fn peer_endpoint(&self, member: &Member) -> Result<PeerEndpoint, String> {
        let over = member.api_server.as_ref();
        let server = over.map_or(self.server.clone(), |a| a.url.clone());
        let ca_pem = over
            .and_then(|a| a.ca_bundle.clone())
            .or_else(|| self.ca_pem.clone())
            .ok_or_else(|| {
                format!(
                    "no CA known for member {}'s API server; set spec.members[].apiServer.caBundle",
                    member.name
                )
            })?;
        Ok(PeerEndpoint { server, ca_pem })
    }
}

/// Builds member connections and keeps them while their credentials are unchanged.
pub struct MemberPool {
    operator_namespace: String,
    local: MemberConnection,
    request_timeout: Duration,
    cache: Mutex<HashMap<String, (String, MemberConnection)>>,
    own_cluster_id: tokio::sync::OnceCell<Option<String>>,
}

impl MemberPool {
    /// `local` is the operator's own cluster (for `credentials.local`).
    pub fn new(
        operator_namespace: String,
        local: Config,
        request_timeout: Duration,
    ) -> Result<Self, kube::Error> {
        Ok(Self {
            operator_namespace,
            local: connection(local)?,
            request_timeout,
            cache: Mutex::default(),
            own_cluster_id: tokio::sync::OnceCell::new(),
        })
    }

    /// The identity (`kube-system`'s UID) of the cluster the operator runs
    /// in, to recognise it among the members; `None` if it cannot be read.
    pub async fn own_cluster_id(&self) -> Option<String> {
        self.own_cluster_id
            .get_or_init(|| async {
                let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.local.client.clone());
                match namespaces.get("kube-system").await {
                    Ok(ns) => ns.uid(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the operator's own cluster identity; a member reached through a kubeconfig of this cluster is not recognised as the operator's");
                        None
                    }
                }
            })
            .await
            .clone()
    }

    /// A connection to the member behind `credentials`.
    /// The connection the last [`MemberPool::connect`] built for these
    /// credentials, without reading their Secret again: for frequent probes,
    /// which should cost the member one request and the operator's own
    /// cluster none.
    pub fn cached(&self, credentials: &MemberCredentials) -> Option<MemberConnection> {
        match (&credentials.secret_ref, &credentials.local) {
            (Some(r), _) => self
                .cache
                .lock()
                .expect("pool lock")
                .get(&cache_key(r))
                .map(|(_, conn)| conn.clone()),
            (None, Some(_)) => Some(self.local.clone()),
            (None, None) => None,
        }
    }

    /// Drops the connections built from an older version of credentials
    /// Secret `name`; true when there were any (the members using it must
    /// run again: their credentials may now reach another cluster).
    pub fn forget_changed(&self, name: &str, version: &str) -> bool {
        let prefix = format!("{name}/");
        let mut cache = self.cache.lock().expect("pool lock");
        let before = cache.len();
        cache.retain(|key, (v, _)| !key.starts_with(&prefix) || v == version);
        cache.len() != before
    }

    pub async fn connect(
        &self,
        credentials: &MemberCredentials,
    ) -> Result<MemberConnection, ConnectError> {
        let secret_ref = match (&credentials.secret_ref, &credentials.local) {
            (Some(r), _) => r,
            (None, Some(_)) => return Ok(self.local.clone()),
            (None, None) => return Err(ConnectError::NoCredentials),
        };
        let ns = self.operator_namespace.clone();
        let name = secret_ref.name.clone();
        let secret = Api::<Secret>::namespaced(self.local.client.clone(), &ns)
            .get_opt(&name)
            .await?
            .ok_or_else(|| ConnectError::SecretMissing {
                namespace: ns.clone(),
                name: name.clone(),
            })?;
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        let cache_key = cache_key(secret_ref);
        if let Some((v, conn)) = self.cache.lock().expect("pool lock").get(&cache_key)
            && *v == version
        {
            return Ok(conn.clone());
        }
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(secret_ref.key()))
            .ok_or_else(|| ConnectError::KeyMissing {
                namespace: ns.clone(),
                name: name.clone(),
                key: secret_ref.key().into(),
            })?;
        let invalid = |reason: String| ConnectError::InvalidKubeconfig {
            namespace: ns.clone(),
            name: name.clone(),
            reason,
        };
        let text = std::str::from_utf8(&bytes.0).map_err(|_| invalid("not UTF-8".into()))?;
        let kubeconfig = parse_kubeconfig(text).map_err(invalid)?;
        if let Some(reason) = refused(&kubeconfig) {
            return Err(invalid(reason.into()));
        }
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| invalid(e.to_string()))?;
        config.connect_timeout = Some(self.request_timeout.min(Duration::from_secs(5)));
        config.read_timeout = Some(self.request_timeout);
        config.write_timeout = Some(self.request_timeout);
        let mut conn = connection(config).map_err(|e| invalid(e.to_string()))?;
        conn.credential = current_token(text)
            .and_then(|t| TokenClaims::of(&t))
            .map(|claims| StoredCredential {
                secret: name.clone(),
                key: secret_ref.key().into(),
                claims,
                renewable: renewable(&secret),
                renewed_for: secret.annotations().get(keys::REFRESH_TOKENS).cloned(),
            });
        self.cache
            .lock()
            .expect("pool lock")
            .insert(cache_key, (version, conn.clone()));
        Ok(conn)
    }
}

impl MemberPool {
    /// Stores `token` in place of the one in `credential`'s Secret, unless
    /// the Secret changed since it was read (someone else wrote it: theirs
    /// wins).
    pub async fn store_renewed(
        &self,
        credential: &StoredCredential,
        token: &str,
        renewed_for: Option<&str>,
    ) -> Result<(), String> {
        let api = Api::<Secret>::namespaced(self.local.client.clone(), &self.operator_namespace);
        let mut secret = api
            .get(&credential.secret)
            .await
            .map_err(|e| format!("reading {}: {e}", credential.secret))?;
        let text = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&credential.key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| format!("{} lost its kubeconfig", credential.secret))?;
        let renewed = with_token(&text, token)
            .ok_or_else(|| format!("{}'s kubeconfig has no token any more", credential.secret))?;
        secret.data.get_or_insert_default().insert(
            credential.key.clone(),
            k8s_openapi::ByteString(renewed.into_bytes()),
        );
        let annotations = secret.metadata.annotations.get_or_insert_default();
        match renewed_for {
            Some(request) => annotations.insert(keys::REFRESH_TOKENS.into(), request.into()),
            None => annotations.remove(keys::REFRESH_TOKENS),
        };
        // The resourceVersion read above makes this a compare-and-swap.
        api.replace(&credential.secret, &Default::default(), &secret)
            .await
            .map(|_| ())
            .map_err(|e| format!("storing the renewed token in {}: {e}", credential.secret))
    }
}

/// Whether meshfed may write a renewed token into this credentials Secret.
fn renewable(secret: &Secret) -> bool {
    let made_by_join =
        secret.labels().get(keys::MANAGED_BY).map(String::as_str) == Some(JOIN_MANAGER);
    let opted_in = secret
        .annotations()
        .get(keys::RENEW_CREDENTIALS)
        .map(String::as_str)
        == Some("true");
    made_by_join || opted_in
}

/// The `app.kubernetes.io/managed-by` of credentials Secrets `kubectl meshfed join` writes.
pub const JOIN_MANAGER: &str = "kubectl-meshfed";

/// Connections are cached by Secret and key.
fn cache_key(secret_ref: &KubeconfigSecretRef) -> String {
    format!("{}/{}", secret_ref.name, secret_ref.key())
}

/// The kubeconfig in `text`, or why it is none. The YAML parser's errors
/// quote what they found (a token stored where a kubeconfig belongs would
/// land in status, Events and logs), so only their position is kept.
fn parse_kubeconfig(text: &str) -> Result<Kubeconfig, String> {
    Kubeconfig::from_yaml(text).map_err(|e| {
        let shape = match serde_yaml::from_str::<serde_yaml::Value>(text) {
            Ok(serde_yaml::Value::Mapping(_)) => "a YAML mapping without a usable kubeconfig",
            Ok(_) => "not a YAML mapping (is the Secret's key a token or a certificate instead of a kubeconfig?)",
            Err(_) => "not YAML",
        };
        let at = e
            .to_string()
            .rsplit_once(" at line ")
            .map(|(_, pos)| format!(" (at line {pos})"))
            .unwrap_or_default();
        format!("{shape}{at}")
    })
}

/// Why a member kubeconfig must not be used as is. Anyone who may write a
/// Secret in the operator's namespace could otherwise make the operator read
/// its own files (its service-account token) or run programs; and a
/// connection that is not verified TLS straight to the API server would hand
/// the member identity's token, and the CA keys meshfed writes, to whoever
/// sits on the path.
fn refused(kubeconfig: &Kubeconfig) -> Option<&'static str> {
    let users = kubeconfig
        .auth_infos
        .iter()
        .filter_map(|a| a.auth_info.as_ref());
    let clusters = kubeconfig
        .clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref());
    for user in users {
        if user.exec.is_some() || user.auth_provider.is_some() {
            return Some(
                "exec and auth-provider plugins are not allowed; inline a token or client certificate",
            );
        }
        if user.token_file.is_some()
            || user.client_certificate.is_some()
            || user.client_key.is_some()
        {
            return Some(
                "file references (tokenFile, client-certificate, client-key) are not allowed; inline the data",
            );
        }
    }
    for cluster in clusters {
        if cluster.certificate_authority.is_some() {
            return Some(
                "certificate-authority file references are not allowed; use certificate-authority-data",
            );
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Some(
                "insecure-skip-tls-verify is not allowed; set certificate-authority-data to the API server's CA",
            );
        }
        if !cluster
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("https://"))
        {
            return Some("the server must be an https:// URL");
        }
        if cluster.proxy_url.is_some() {
            return Some(
                "proxy-url is not allowed; meshfed connects to member API servers directly",
            );
        }
    }
    None
}

/// A client for `config` whose requests are counted.
pub fn connection(config: Config) -> Result<MemberConnection, kube::Error> {
    let requests = RequestCounter::default();
    let server = server_url(&config);
    let ca_pem = ca_pem(&config);
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&requests)
        .build();
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Ok(MemberConnection {
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        client,
        server,
        ca_pem,
        requests,
        credential: None,
    })
}

fn server_url(config: &Config) -> String {
    config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string()
}

/// The CA certificates `config` trusts for its API server, as PEM.
pub fn ca_pem(config: &Config) -> Option<String> {
    let certs = config.root_cert.as_ref().filter(|c| !c.is_empty())?;
    Some(certs.iter().map(|der| der_to_pem(der)).collect())
}

fn der_to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfigs_that_read_files_run_programs_or_skip_tls_are_refused() {
        let base = |user: &str, cluster_extra: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://x{cluster_extra}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user:\n{user}\n"
            )
        };
        let parse = |y: String| Kubeconfig::from_yaml(&y).unwrap();
        assert_eq!(refused(&parse(base("    token: abc", ""))), None);
        assert!(
            refused(&parse(base(
                "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                ""
            )))
            .is_some()
        );
        assert!(refused(&parse(base("    client-certificate: /etc/cert", ""))).is_some());
        assert!(
            refused(&parse(base(
                "    exec: {command: sh, apiVersion: client.authentication.k8s.io/v1}",
                ""
            )))
            .is_some()
        );
        assert!(
            refused(&parse(base(
                "    token: abc",
                "\n    certificate-authority: /etc/ca"
            )))
            .is_some()
        );
        for cluster_extra in [
            "\n    insecure-skip-tls-verify: true",
            "\n    proxy-url: http://proxy:3128",
        ] {
            assert!(
                refused(&parse(base("    token: abc", cluster_extra))).is_some(),
                "{cluster_extra}"
            );
        }
        let plain_http = base("    token: abc", "").replace("https://x", "http://x");
        assert!(refused(&parse(plain_http)).is_some());
    }

    #[test]
    fn a_token_in_place_of_a_kubeconfig_is_not_quoted_back() {
        // A ServiceAccount token Secret referenced with `key: token`.
        let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl";
        let quoted = Kubeconfig::from_yaml(token).unwrap_err().to_string();
        assert!(
            quoted.contains("eyJ"),
            "the parser itself quotes it: {quoted}"
        );
        for text in [token.to_string(), format!("{token}\n")] {
            let reason = parse_kubeconfig(&text).unwrap_err();
            assert!(!reason.contains("eyJ"), "{reason}");
            assert!(!reason.contains("c2lnbmF0dXJl"), "{reason}");
        }
    }

    #[test]
    fn der_is_wrapped_at_64_columns() {
        let pem = der_to_pem(&[0u8; 100]);
        let body: Vec<&str> = pem
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("-----"))
            .collect();
        assert!(body.iter().all(|l| l.len() <= 64));
        assert_eq!(STANDARD.decode(body.concat()).unwrap(), vec![0u8; 100]);
    }
}
