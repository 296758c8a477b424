use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{CACERTS, ISTIO_NAMESPACE, managed_meta};
use crate::pki::CacertsBundle;

const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const ROOT_CERT: &str = "root-cert.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// The `cacerts` Secret istiod loads its plug-in CA from.
pub fn render_cacerts(federation: &str, bundle: &CacertsBundle) -> Secret {
    let data = [
        (CA_CERT, &bundle.ca_cert_pem),
        (CA_KEY, &bundle.ca_key_pem),
        (ROOT_CERT, &bundle.root_cert_pem),
        (CERT_CHAIN, &bundle.cert_chain_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect::<BTreeMap<_, _>>();
    Secret {
        metadata: managed_meta(federation, CACERTS, Some(ISTIO_NAMESPACE)),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The CA material in an existing `cacerts`, if all four keys are there as text.
pub fn cacerts_bundle(secret: &Secret) -> Option<CacertsBundle> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
    Some(CacertsBundle {
        ca_cert_pem: text(CA_CERT)?,
        ca_key_pem: text(CA_KEY)?,
        root_cert_pem: text(ROOT_CERT)?,
        cert_chain_pem: text(CERT_CHAIN)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::is_ours;

    fn bundle() -> CacertsBundle {
        CacertsBundle {
            ca_cert_pem: "INTERMEDIATE".into(),
            ca_key_pem: "KEY".into(),
            root_cert_pem: "ROOT".into(),
            cert_chain_pem: "INTERMEDIATE\nROOT".into(),
        }
    }

    #[test]
    fn cacerts_has_the_four_keys_istio_reads() {
        let s = render_cacerts("prod", &bundle());
        assert_eq!(s.metadata.name.as_deref(), Some("cacerts"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("istio-system"));
        assert!(is_ours(&s.metadata, "prod"));
        let data = s.data.as_ref().unwrap();
        let keys: Vec<_> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ca-cert.pem",
                "ca-key.pem",
                "cert-chain.pem",
                "root-cert.pem"
            ]
        );
        assert_eq!(data["cert-chain.pem"].0, b"INTERMEDIATE\nROOT");
    }

    #[test]
    fn bundle_round_trips_and_partial_bundles_are_rejected() {
        let mut s = render_cacerts("prod", &bundle());
        assert_eq!(cacerts_bundle(&s), Some(bundle()));
        s.data.as_mut().unwrap().remove("ca-key.pem");
        assert_eq!(cacerts_bundle(&s), None);
        assert_eq!(cacerts_bundle(&Secret::default()), None);
    }
}
