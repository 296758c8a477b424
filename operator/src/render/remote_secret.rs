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

/// The identity a peer's tokens are minted for: meshfed's reader
/// ServiceAccount, by name and UID. A recreated ServiceAccount has a new UID
/// and the API server rejects every token of the old one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSubject {
    pub service_account: String,
    pub uid: String,
}

/// A token from TokenRequest and its lifetime as issued (the API server may
/// shorten what was asked for). Never printed: Debug leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// The Secret in the issuing member's `istio-system` the token is bound
    /// to: deleting it revokes the token.
    pub binding: String,
    /// The federation's departure generation when it was minted (see
    /// `fleet::membership::Departure`): a token minted before a member left
    /// may be in that member's hands.
    pub departure: Option<i64>,
}

/// Whether a token minted after departure generation `minted_after` may be
/// held by a member that left at `departure`.
pub fn minted_before(minted_after: Option<i64>, departure: Option<i64>) -> bool {
    departure.is_some_and(|d| minted_after.is_none_or(|m| m < d))
}

fn departure_annotation(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<i64> {
    meta.annotations
        .as_ref()?
        .get(keys::TOKEN_DEPARTURE)?
        .parse()
        .ok()
}

/// The departure generation recorded on a token binding or remote secret.
pub fn recorded_departure(secret: &Secret) -> Option<i64> {
    departure_annotation(&secret.metadata)
}

/// When a remote secret's token was written, and for which forced-refresh
/// request (the federation's `meshfed.io/refresh-tokens` at that time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenToken<'a> {
    pub at: Timestamp,
    pub refresh: Option<&'a str>,
}

/// Which of a peer's tokens a remote secret holds, since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldToken {
    pub binding: String,
    pub written_at: Timestamp,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("binding", &self.binding)
            .field("departure", &self.departure)
            .finish_non_exhaustive()
    }
}

impl PeerEndpoint {
    /// Fingerprint of everything but the token, so a changed address, CA or
    /// reader identity (including a recreated reader) re-writes the secret
    /// even while its token looks fresh.
    pub fn fingerprint(&self, reader: &TokenSubject) -> String {
        let mut h = Sha256::new();
        for part in [
            self.server.as_str(),
            self.ca_pem.as_str(),
            reader.service_account.as_str(),
            reader.uid.as_str(),
        ] {
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
    reader: &TokenSubject,
    token: &IssuedToken,
    written: WrittenToken,
) -> Secret {
    let mut meta = managed_meta(federation, &remote_secret_name(peer), Some(ISTIO_NAMESPACE));
    meta.labels
        .get_or_insert_default()
        .insert(keys::MULTICLUSTER.into(), "true".into());
    let mut annotations = BTreeMap::from([
        (keys::CLUSTER.into(), peer.into()),
        (keys::TOKEN_ISSUED_AT.into(), token.issued_at.to_string()),
        (keys::TOKEN_EXPIRES_AT.into(), token.expires_at.to_string()),
        (keys::ENDPOINT_HASH.into(), endpoint.fingerprint(reader)),
        (keys::TOKEN_BINDING.into(), token.binding.clone()),
        (keys::TOKEN_WRITTEN_AT.into(), written.at.to_string()),
    ]);
    if let Some(request) = written.refresh {
        annotations.insert(keys::REFRESH_TOKENS.into(), request.into());
    }
    if let Some(d) = token.departure {
        annotations.insert(keys::TOKEN_DEPARTURE.into(), d.to_string());
    }
    meta.annotations = Some(annotations);
    let kubeconfig = render_kubeconfig(&KubeconfigInputs {
        cluster: peer,
        server: &endpoint.server,
        ca_pem: &endpoint.ca_pem,
        token: &token.token,
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

/// The token a remote secret of meshfed's holds; none for one written
/// before tokens were bound (it is replaced when due).
pub fn remote_secret_held(secret: &Secret) -> Option<HeldToken> {
    let annotations = secret.metadata.annotations.as_ref()?;
    Some(HeldToken {
        binding: annotations.get(keys::TOKEN_BINDING)?.clone(),
        written_at: annotations.get(keys::TOKEN_WRITTEN_AT)?.parse().ok()?,
    })
}

/// The empty Secret a new token of `reader` is bound to, in `istio-system`
/// (TokenRequest binds only to an object in the ServiceAccount's namespace).
/// The API server names it; it records when the token expires, so that it
/// is deleted then even if a peer never let go of it.
pub fn render_token_binding(
    federation: &str,
    reader: &str,
    expires_at: Timestamp,
    departure: Option<i64>,
) -> Secret {
    let mut meta = managed_meta(federation, "", Some(ISTIO_NAMESPACE));
    meta.name = None;
    meta.generate_name = Some(format!("{reader}-token-"));
    meta.labels
        .get_or_insert_default()
        .insert(keys::TOKEN_BINDING.into(), reader.into());
    let mut annotations = BTreeMap::from([(keys::TOKEN_EXPIRES_AT.into(), expires_at.to_string())]);
    if let Some(d) = departure {
        annotations.insert(keys::TOKEN_DEPARTURE.into(), d.to_string());
    }
    meta.annotations = Some(annotations);
    Secret {
        metadata: meta,
        type_: Some("meshfed.io/token-binding".into()),
        ..Secret::default()
    }
}

/// Whether an existing remote secret can stay as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteSecretState {
    /// Up to date; its token expires at the given time and is due for
    /// refresh at `refresh_at`.
    Current {
        token_expires_at: Timestamp,
        refresh_at: Timestamp,
    },
    /// Points at another address, CA or reader, is missing its kubeconfig, or
    /// holds a token issued for longer than the spec now allows.
    Outdated,
    /// Its token has less than a third of its lifetime left (or expired), or
    /// was minted before the refresh the federation asks for.
    TokenDue,
}

/// Slack for the API server rounding a token's expiry.
const LIFETIME_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// Decides whether `secret` (for `peer`) must be re-written. Tokens are
/// refreshed with a third of their lifetime *as issued* left, well before
/// istiod's watch would start failing. Measuring from the issued lifetime
/// matters: an API server that caps lifetimes below the spec's
/// (`--service-account-max-token-expiration`) would otherwise make every
/// token look due at once, and every reconcile rewrite every secret.
pub fn remote_secret_state(
    secret: &Secret,
    peer: &str,
    fingerprint: &str,
    token_lifetime: Duration,
    refresh: Option<&str>,
    departure: Option<i64>,
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
    let issued_at = annotation(keys::TOKEN_ISSUED_AT).and_then(|t| t.parse::<Timestamp>().ok());
    let wanted = signed(token_lifetime);
    if issued_at
        .is_some_and(|at| expires_at.duration_since(at) > wanted.saturating_add(LIFETIME_SLACK))
    {
        return RemoteSecretState::Outdated;
    }
    let refresh_at = token_refresh_at(issued_at, expires_at, token_lifetime);
    let refresh_requested =
        refresh.is_some() && annotation(keys::REFRESH_TOKENS).map(String::as_str) != refresh;
    let held_by_departed = minted_before(recorded_departure(secret), departure);
    if now >= refresh_at || refresh_requested || held_by_departed {
        RemoteSecretState::TokenDue
    } else {
        RemoteSecretState::Current {
            token_expires_at: expires_at,
            refresh_at,
        }
    }
}

/// When a token is due for refresh: a third of its lifetime before it
/// expires, its lifetime being what the server issued (`issued_at` unknown:
/// the spec's), never more than the spec's.
pub fn token_refresh_at(
    issued_at: Option<Timestamp>,
    expires_at: Timestamp,
    token_lifetime: Duration,
) -> Timestamp {
    let wanted = signed(token_lifetime);
    let issued = issued_at.map_or(wanted, |at| expires_at.duration_since(at));
    expires_at
        .saturating_sub(issued.min(wanted) / 3)
        .unwrap_or(Timestamp::MIN)
}

fn signed(d: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
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

    fn reader(uid: &str) -> TokenSubject {
        TokenSubject {
            service_account: "meshfed-reader-prod".into(),
            uid: uid.into(),
        }
    }

    /// A remote secret whose token was issued for `lifetime`, expiring at `expires`.
    fn issued(expires: &str, lifetime: Duration) -> Secret {
        let expires_at = t(expires);
        let token = IssuedToken {
            token: "tok".into(),
            issued_at: expires_at - jiff::SignedDuration::try_from(lifetime).unwrap(),
            expires_at,
            binding: "meshfed-reader-prod-token-abcde".into(),
            departure: None,
        };
        render_remote_secret(
            "prod",
            "west",
            &endpoint(),
            &reader("uid-1"),
            &token,
            written(None),
        )
    }

    fn written(refresh: Option<&str>) -> WrittenToken<'_> {
        WrittenToken {
            at: t("2026-01-01T00:00:00Z"),
            refresh,
        }
    }

    fn secret(expires: &str) -> Secret {
        issued(expires, 24 * HOUR)
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
        let r = reader("uid-1");
        let base = endpoint().fingerprint(&r);
        assert_eq!(base, endpoint().fingerprint(&reader("uid-1")), "stable");
        assert_ne!(
            base,
            endpoint().fingerprint(&reader("uid-2")),
            "a recreated reader ServiceAccount"
        );
        let renamed = TokenSubject {
            service_account: "other".into(),
            ..r.clone()
        };
        assert_ne!(base, endpoint().fingerprint(&renamed));
        let moved = PeerEndpoint {
            server: "https://10.0.0.9:6443".into(),
            ..endpoint()
        };
        assert_ne!(base, moved.fingerprint(&r));
        let new_ca = PeerEndpoint {
            ca_pem: "CA2".into(),
            ..endpoint()
        };
        assert_ne!(base, new_ca.fingerprint(&r));
    }

    #[test]
    fn the_token_never_reaches_debug_output() {
        let token = IssuedToken {
            token: "eyJhbGciOi-secret".into(),
            issued_at: t("2026-01-01T00:00:00Z"),
            expires_at: t("2026-01-02T00:00:00Z"),
            binding: "b".into(),
            departure: None,
        };
        assert!(!format!("{token:?}").contains("secret"));
    }

    #[test]
    fn refresh_is_measured_from_the_lifetime_the_server_issued() {
        let fp = endpoint().fingerprint(&reader("uid-1"));
        // The server capped a 24h request at 1h: refresh with 20 minutes left,
        // not at once (24h / 3 = 8h is more than the whole token).
        let capped = issued("2026-01-01T01:00:00Z", HOUR);
        let state = |s: &Secret, lifetime, now| {
            remote_secret_state(s, "west", &fp, lifetime, None, None, t(now))
        };
        assert!(matches!(
            state(&capped, 24 * HOUR, "2026-01-01T00:00:00Z"),
            RemoteSecretState::Current { .. }
        ));
        assert!(matches!(
            state(&capped, 24 * HOUR, "2026-01-01T00:39:59Z"),
            RemoteSecretState::Current { .. }
        ));
        assert_eq!(
            state(&capped, 24 * HOUR, "2026-01-01T00:40:00Z"),
            RemoteSecretState::TokenDue
        );
        // A spec lifetime shortened below what a token was issued for: rewrite.
        let long = secret("2026-01-02T00:00:00Z");
        assert_eq!(
            state(&long, 2 * HOUR, "2026-01-01T00:00:00Z"),
            RemoteSecretState::Outdated
        );
        // Lengthened: the old token lives out its own lifetime.
        assert!(matches!(
            state(&long, 48 * HOUR, "2026-01-01T00:00:00Z"),
            RemoteSecretState::Current { .. }
        ));
    }

    #[test]
    fn token_refresh_boundary_is_a_third_of_the_lifetime() {
        let fp = endpoint().fingerprint(&reader("uid-1"));
        let s = secret("2026-01-02T00:00:00Z");
        let lifetime = 24 * HOUR; // refresh 8h before expiry
        let state = |now| remote_secret_state(&s, "west", &fp, lifetime, None, None, t(now));
        assert_eq!(
            state("2026-01-01T15:59:59Z"),
            RemoteSecretState::Current {
                token_expires_at: t("2026-01-02T00:00:00Z"),
                refresh_at: t("2026-01-01T16:00:00Z"),
            }
        );
        assert_eq!(state("2026-01-01T16:00:00Z"), RemoteSecretState::TokenDue);
        assert_eq!(state("2026-01-03T00:00:00Z"), RemoteSecretState::TokenDue);
    }

    #[test]
    fn changed_or_damaged_secrets_are_outdated() {
        let fp = endpoint().fingerprint(&reader("uid-1"));
        let now = t("2026-01-01T00:00:00Z");
        let good = secret("2026-01-02T00:00:00Z");
        let state = |s: &Secret, peer: &str, fp: &str| {
            remote_secret_state(s, peer, fp, 24 * HOUR, None, None, now)
        };
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

    #[test]
    fn a_remote_secret_records_the_binding_and_write_it_holds() {
        let s = secret("2026-01-02T00:00:00Z");
        assert_eq!(
            remote_secret_held(&s),
            Some(HeldToken {
                binding: "meshfed-reader-prod-token-abcde".into(),
                written_at: t("2026-01-01T00:00:00Z"),
            })
        );
        let mut unbound = s.clone();
        unbound
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(keys::TOKEN_BINDING);
        assert_eq!(remote_secret_held(&unbound), None, "written before binding");
    }

    #[test]
    fn a_refresh_request_makes_a_fresh_token_due_once() {
        let fp = endpoint().fingerprint(&reader("uid-1"));
        let now = t("2026-01-01T01:00:00Z");
        let s = secret("2026-01-02T00:00:00Z");
        let state = |s: &Secret, refresh| {
            remote_secret_state(s, "west", &fp, 24 * HOUR, refresh, None, now)
        };
        assert!(matches!(state(&s, None), RemoteSecretState::Current { .. }));
        assert_eq!(state(&s, Some("incident-42")), RemoteSecretState::TokenDue);
        let token = IssuedToken {
            token: "new".into(),
            issued_at: now,
            expires_at: t("2026-01-02T01:00:00Z"),
            binding: "b2".into(),
            departure: None,
        };
        let rewritten = render_remote_secret(
            "prod",
            "west",
            &endpoint(),
            &reader("uid-1"),
            &token,
            written(Some("incident-42")),
        );
        assert!(
            matches!(
                state(&rewritten, Some("incident-42")),
                RemoteSecretState::Current { .. }
            ),
            "written for that request: not due again"
        );
        assert_eq!(
            state(&rewritten, Some("incident-43")),
            RemoteSecretState::TokenDue
        );
        assert!(
            matches!(state(&rewritten, None), RemoteSecretState::Current { .. }),
            "a request removed later asks for nothing"
        );
    }

    #[test]
    fn a_token_minted_before_the_latest_departure_is_due_at_once() {
        let fp = endpoint().fingerprint(&reader("uid-1"));
        let now = t("2026-01-01T01:00:00Z");
        let minted_after = |departure| {
            let token = IssuedToken {
                token: "tok".into(),
                issued_at: now,
                expires_at: t("2026-01-02T01:00:00Z"),
                binding: "b".into(),
                departure,
            };
            render_remote_secret(
                "prod",
                "west",
                &endpoint(),
                &reader("uid-1"),
                &token,
                written(None),
            )
        };
        let state = |s: &Secret, departure| {
            remote_secret_state(s, "west", &fp, 24 * HOUR, None, departure, now)
        };
        let current = |s| matches!(s, RemoteSecretState::Current { .. });
        assert!(current(state(&minted_after(None), None)), "nobody left");
        assert_eq!(
            state(&minted_after(None), Some(4)),
            RemoteSecretState::TokenDue,
            "minted before anyone left, held since: the one who left may have it"
        );
        assert_eq!(
            state(&minted_after(Some(3)), Some(4)),
            RemoteSecretState::TokenDue
        );
        assert!(
            current(state(&minted_after(Some(4)), Some(4))),
            "minted after it left"
        );
        assert!(current(state(&minted_after(Some(5)), Some(4))));
        assert!(!minted_before(Some(4), None) && minted_before(None, Some(1)));
    }

    #[test]
    fn a_binding_is_named_by_the_server_and_labelled_for_its_reader() {
        let b = render_token_binding(
            "prod",
            "meshfed-reader-prod",
            t("2026-01-02T00:00:00Z"),
            Some(4),
        );
        assert_eq!(b.metadata.name, None);
        assert_eq!(
            b.metadata.generate_name.as_deref(),
            Some("meshfed-reader-prod-token-")
        );
        assert_eq!(b.metadata.namespace.as_deref(), Some("istio-system"));
        assert_eq!(
            b.metadata.labels.as_ref().unwrap()[keys::TOKEN_BINDING],
            "meshfed-reader-prod"
        );
        assert_eq!(recorded_departure(&b), Some(4), "minted after departure 4");
        assert!(is_ours(&b.metadata, "prod"), "pruned with the member");
        assert!(b.data.is_none() && b.string_data.is_none(), "holds nothing");
        assert_eq!(
            b.metadata.annotations.as_ref().unwrap()[keys::TOKEN_EXPIRES_AT],
            "2026-01-02T00:00:00Z"
        );
    }
}
