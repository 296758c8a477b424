use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ISTIO_NAMESPACE, keys};

/// `istio-system` labelled with the member's network. Only the label is ours:
/// the namespace may hold the user's own Istio install, so it is never deleted.
pub fn render_istio_namespace(network: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(ISTIO_NAMESPACE.into()),
            labels: Some(BTreeMap::from([(keys::NETWORK.into(), network.into())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_carries_network_label_only() {
        let ns = render_istio_namespace("net-a");
        assert_eq!(ns.metadata.name.as_deref(), Some("istio-system"));
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels["topology.istio.io/network"], "net-a");
        assert!(ns.spec.is_none());
    }
}
