use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use super::kubeconfig::{KubeconfigInputs, render_kubeconfig};
use super::{ISTIO_NAMESPACE, keys, managed_meta};

/// Where peers reach a member's API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEndpoint {
    pub server: String,
    pub ca_pem: String,
}

impl PeerEndpoint {
    /// Fingerprint of everything but the token, so a changed address, CA or
    /// reader identity re-writes the secret even while its token is fresh.
    pub fn fingerprint(&self, reader: &str) -> String {
        let mut h = Sha256::new();
        for part in [self.server.as_str(), self.ca_pem.as_str(), reader] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// `istio-remote-secret-<peer>`, the name `istioctl create-remote-secret` uses.
pub fn remote_secret_name(peer: &str) -> String {
    format!("istio-remote-secret-{peer}")
}

/// The peer a remote secret points at (its `networking.istio.io/cluster`).
pub fn remote_secret_peer(secret: &Secret) -> Option<&str> {
    secret
        .metadata
        .annotations
        .as_ref()?
        .get(keys::CLUSTER)
        .map(String::as_str)
}

/// The Secret that lets a member's istiod read `peer`: labelled
/// `istio/multiCluster`, one data key named after the peer.
pub fn render_remote_secret(
    federation: &str,
    peer: &str,
    endpoint: &PeerEndpoint,
    reader: &str,
    token: &str,
    token_expires_at: Timestamp,
) -> Secret {
    let mut meta = managed_meta(federation, &remote_secret_name(peer), Some(ISTIO_NAMESPACE));
    meta.labels
        .get_or_insert_default()
        .insert(keys::MULTICLUSTER.into(), "true".into());
    meta.annotations = Some(BTreeMap::from([
        (keys::CLUSTER.into(), peer.into()),
        (keys::TOKEN_EXPIRES_AT.into(), token_expires_at.to_string()),
        (keys::ENDPOINT_HASH.into(), endpoint.fingerprint(reader)),
    ]));
    let kubeconfig = render_kubeconfig(&KubeconfigInputs {
        cluster: peer,
        server: &endpoint.server,
        ca_pem: &endpoint.ca_pem,
        token,
    });
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            peer.into(),
            ByteString(kubeconfig.into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// Whether an existing remote secret can stay as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteSecretState {
    /// Up to date; its token expires at the given time.
    Current { token_expires_at: Timestamp },
    /// Points at another address, CA or reader, or is missing its kubeconfig.
    Outdated,
    /// Its token has less than a third of its lifetime left (or expired).
    TokenExpiring,
}

/// Decides whether `secret` (for `peer`) must be re-written. Tokens are
/// refreshed with a third of their lifetime left, well before istiod's watch
/// would start failing.
pub fn remote_secret_state(
    secret: &Secret,
    peer: &str,
    fingerprint: &str,
    token_lifetime: Duration,
    now: Timestamp,
) -> RemoteSecretState {
    let annotation = |k: &str| secret.metadata.annotations.as_ref().and_then(|a| a.get(k));
    let has_kubeconfig = secret.data.as_ref().is_some_and(|d| d.contains_key(peer));
    if !has_kubeconfig
        || remote_secret_peer(secret) != Some(peer)
        || annotation(keys::ENDPOINT_HASH).map(String::as_str) != Some(fingerprint)
    {
        return RemoteSecretState::Outdated;
    }
    let Some(expires_at) =
        annotation(keys::TOKEN_EXPIRES_AT).and_then(|t| t.parse::<Timestamp>().ok())
    else {
        return RemoteSecretState::Outdated;
    };
    let margin =
        jiff::SignedDuration::try_from(token_lifetime / 3).unwrap_or(jiff::SignedDuration::MAX);
    if now.saturating_add(margin).unwrap_or(Timestamp::MAX) >= expires_at {
        RemoteSecretState::TokenExpiring
    } else {
        RemoteSecretState::Current {
            token_expires_at: expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::is_ours;

    const HOUR: Duration = Duration::from_secs(3600);

    fn endpoint() -> PeerEndpoint {
        PeerEndpoint {
            server: "https://127.0.0.1:6443".into(),
            ca_pem: "CA".into(),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn secret(expires: &str) -> Secret {
        render_remote_secret(
            "prod",
            "west",
            &endpoint(),
            "meshfed-reader-prod",
            "tok",
            t(expires),
        )
    }

    #[test]
    fn remote_secret_matches_istio_conventions() {
        let s = secret("2026-01-02T00:00:00Z");
        assert_eq!(s.metadata.name.as_deref(), Some("istio-remote-secret-west"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("istio-system"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()["istio/multiCluster"],
            "true"
        );
        assert!(is_ours(&s.metadata, "prod"));
        assert_eq!(remote_secret_peer(&s), Some("west"));
        let data = s.data.as_ref().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["west"]);
        let kc = kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&data["west"].0).unwrap())
            .unwrap();
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:6443")
        );
    }

    #[test]
    fn fingerprint_covers_server_ca_and_reader() {
        let base = endpoint().fingerprint("r");
        assert_eq!(base, endpoint().fingerprint("r"), "stable");
        assert_ne!(base, endpoint().fingerprint("other"));
        let moved = PeerEndpoint {
            server: "https://10.0.0.9:6443".into(),
            ..endpoint()
        };
        assert_ne!(base, moved.fingerprint("r"));
        let new_ca = PeerEndpoint {
            ca_pem: "CA2".into(),
            ..endpoint()
        };
        assert_ne!(base, new_ca.fingerprint("r"));
    }

    #[test]
    fn token_refresh_boundary_is_a_third_of_the_lifetime() {
        let fp = endpoint().fingerprint("meshfed-reader-prod");
        let s = secret("2026-01-02T00:00:00Z");
        let lifetime = 24 * HOUR; // refresh 8h before expiry
        let state = |now| remote_secret_state(&s, "west", &fp, lifetime, t(now));
        assert_eq!(
            state("2026-01-01T15:59:59Z"),
            RemoteSecretState::Current {
                token_expires_at: t("2026-01-02T00:00:00Z")
            }
        );
        assert_eq!(
            state("2026-01-01T16:00:00Z"),
            RemoteSecretState::TokenExpiring
        );
        assert_eq!(
            state("2026-01-03T00:00:00Z"),
            RemoteSecretState::TokenExpiring
        );
    }

    #[test]
    fn changed_or_damaged_secrets_are_outdated() {
        let fp = endpoint().fingerprint("meshfed-reader-prod");
        let now = t("2026-01-01T00:00:00Z");
        let good = secret("2026-01-02T00:00:00Z");
        let state =
            |s: &Secret, peer: &str, fp: &str| remote_secret_state(s, peer, fp, 24 * HOUR, now);
        assert!(matches!(
            state(&good, "west", &fp),
            RemoteSecretState::Current { .. }
        ));
        assert_eq!(state(&good, "west", "0000"), RemoteSecretState::Outdated);
        assert_eq!(state(&good, "east", &fp), RemoteSecretState::Outdated);
        let mut no_data = good.clone();
        no_data.data = None;
        assert_eq!(state(&no_data, "west", &fp), RemoteSecretState::Outdated);
        let mut bad_expiry = good.clone();
        bad_expiry
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::TOKEN_EXPIRES_AT.into(), "soon".into());
        assert_eq!(state(&bad_expiry, "west", &fp), RemoteSecretState::Outdated);
        assert_eq!(
            state(&Secret::default(), "west", &fp),
            RemoteSecretState::Outdated
        );
    }
}
