//! Sidecar injection as a pod would meet it: which mutating webhooks would
//! inject a plain pod in a namespace labelled `istio-injection=enabled`.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Api, Client, ResourceExt};

/// How many mutating webhooks (across every configuration) would inject a
/// plain pod created in a namespace labelled `istio-injection=enabled`.
pub async fn injectors_for_enabled_namespace(c: &Client) -> Result<usize> {
    let namespace: BTreeMap<String, String> = [
        ("istio-injection".to_string(), "enabled".to_string()),
        (
            "kubernetes.io/metadata.name".to_string(),
            "shop".to_string(),
        ),
    ]
    .into();
    let pod = BTreeMap::new();
    let configs = Api::<MutatingWebhookConfiguration>::all(c.clone())
        .list(&Default::default())
        .await?;
    Ok(configs
        .items
        .iter()
        .flat_map(|m| m.webhooks.iter().flatten())
        .filter(|w| {
            w.rules
                .iter()
                .flatten()
                .any(|r| r.resources.iter().flatten().any(|x| x == "pods"))
        })
        .filter(|w| {
            selects(w.namespace_selector.as_ref(), &namespace)
                && selects(w.object_selector.as_ref(), &pod)
        })
        .count())
}

/// Whether a label selector selects `labels` (an absent selector selects all).
fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(s) = selector else { return true };
    let by_label = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = s.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}

/// The UID of the default tag's injector, `istio-sidecar-injector`.
pub async fn injector_uid(c: &Client) -> Result<String> {
    Api::<MutatingWebhookConfiguration>::all(c.clone())
        .get("istio-sidecar-injector")
        .await?
        .uid()
        .context("no uid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_are_evaluated_like_the_api_server() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels: BTreeMap<String, String> =
            [("istio-injection".to_string(), "enabled".to_string())].into();
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let sel = |e: Vec<LabelSelectorRequirement>| LabelSelector {
            match_expressions: Some(e),
            match_labels: None,
        };
        assert!(selects(None, &labels));
        assert!(selects(
            Some(&sel(vec![req("istio-injection", "In", &["enabled"])])),
            &labels
        ));
        assert!(!selects(
            Some(&sel(vec![req("istio-injection", "DoesNotExist", &[])])),
            &labels
        ));
        assert!(selects(
            Some(&sel(vec![req("istio.io/rev", "NotIn", &["x"])])),
            &labels
        ));
        assert!(!selects(
            Some(&sel(vec![req("istio.io/rev", "In", &["default"])])),
            &labels
        ));
        assert!(selects(
            Some(&sel(vec![req("istio.io/rev", "DoesNotExist", &[])])),
            &labels
        ));
    }
}
