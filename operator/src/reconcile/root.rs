//! The federation's root CA: the user's, or one meshfed generates and keeps in
//! the operator's namespace.
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use crate::api::{MeshFederation, defaults};
use crate::pki::RootCa;
use crate::render::{is_ours, managed_labels};

const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";

/// Name of the Secret holding a generated root.
pub fn generated_root_name(federation: &str) -> String {
    format!("{federation}-root-ca")
}

/// Where the root comes from and whether meshfed generated it.
pub struct Root {
    pub ca: RootCa,
    /// Set when meshfed created it in this reconcile.
    pub created: bool,
}

/// Loads the root (creating a generated one on first use). Errors are
/// sentences for a status condition: they name the field and the fix.
pub async fn load_or_create_root(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
    now: Timestamp,
) -> Result<Root, String> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let federation = fed.name_any();
    let ca = fed.spec.ca();
    if let Some(r) = &ca.root_secret_ref {
        let secret = api
            .get_opt(&r.name)
            .await
            .map_err(|e| format!("reading root Secret {namespace}/{}: {e}", r.name))?
            .ok_or_else(|| {
                format!(
                    "root Secret {namespace}/{} (spec.ca.rootSecretRef.name) not found; create it with tls.crt and tls.key",
                    r.name
                )
            })?;
        let root = root_from_secret(&secret, now).map_err(|e| {
            format!(
                "root Secret {namespace}/{} (spec.ca.rootSecretRef.name): {e}",
                r.name
            )
        })?;
        return Ok(Root {
            ca: root,
            created: false,
        });
    }

    let name = generated_root_name(&federation);
    if let Some(secret) = api
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading root Secret {namespace}/{name}: {e}"))?
    {
        if !is_ours(&secret.metadata, &federation) {
            return Err(format!(
                "Secret {namespace}/{name} exists and was not created by meshfed; delete or rename it, or point spec.ca.rootSecretRef at it"
            ));
        }
        let root = root_from_secret(&secret, now)
            .map_err(|e| format!("generated root Secret {namespace}/{name}: {e}"))?;
        return Ok(Root {
            ca: root,
            created: false,
        });
    }
    let root = RootCa::generate(
        &federation,
        ca.key_algorithm(),
        defaults::ROOT_LIFETIME,
        now,
    )
    .map_err(|e| format!("generating root CA: {e}"))?;
    let mut secret = Secret {
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.into(),
                ByteString(root.cert_pem.clone().into_bytes()),
            ),
            (
                KEY_KEY.into(),
                ByteString(root.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.clone());
    secret.metadata.labels = Some(managed_labels(&federation));
    // Create, never apply: two racing reconciles must not mint two roots.
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Root {
            ca: root,
            created: true,
        }),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Err("root CA created concurrently; retrying".into())
        }
        Err(e) => Err(format!("storing root Secret {namespace}/{name}: {e}")),
    }
}

fn root_from_secret(secret: &Secret, now: Timestamp) -> Result<RootCa, String> {
    let text = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| format!("missing key {k}"))
    };
    RootCa::from_pem(&text(CERT_KEY)?, &text(KEY_KEY)?, now).map_err(|e| e.to_string())
}
