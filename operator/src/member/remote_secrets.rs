//! Remote secrets in one member: for every peer, a kubeconfig that lets the
//! member's istiod read the peer. Planned purely from what the member's own
//! step saw and what each peer published of itself ([`PeerFacts`]), then
//! carried out with writes into this member only: a peer that hangs cannot
//! slow any other member down.
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::{PreparedMember, error_text};
use crate::api::MeshFederation;
use crate::apply::{create, delete, write};
use crate::render::{
    HeldToken, ISTIO_NAMESPACE, IssuedToken, PeerEndpoint, RemoteSecretState, TokenSubject,
    WrittenToken, is_ours, keys, minted_before, recorded_departure, remote_secret_held,
    remote_secret_name, remote_secret_peer, remote_secret_state, render_remote_secret,
    render_token_binding, token_refresh_at,
};

/// The forced token refresh the federation asks for: the value of its
/// `meshfed.io/refresh-tokens` annotation.
pub fn refresh_request(fed: &MeshFederation) -> Option<&str> {
    fed.annotations()
        .get(keys::REFRESH_TOKENS)
        .map(String::as_str)
}

/// What a member publishes of itself for its peers, from its own last run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerFacts {
    /// Where peers reach it.
    pub endpoint: Result<PeerEndpoint, String>,
    /// Whom tokens for it are minted for.
    pub reader: Result<TokenSubject, String>,
    /// The newest token it minted for its reader, and for which subject.
    pub token: Option<(TokenSubject, IssuedToken)>,
    /// Its cluster belongs to another member: it is nobody's peer.
    pub refused: bool,
    /// Its cluster's identity, once known.
    pub cluster_id: Option<String>,
    /// The forced-refresh request (`meshfed.io/refresh-tokens`) its token
    /// was minted for.
    pub refreshed_for: Option<String>,
    /// Which token of each peer its remote secrets hold; `None` until it has
    /// read them. A peer's old token is revoked only once no member may
    /// still hold it.
    pub holds: Option<BTreeMap<String, HeldToken>>,
}

impl Default for PeerFacts {
    fn default() -> Self {
        Self {
            endpoint: Err("not reached yet".into()),
            reader: Err("not reached yet".into()),
            token: None,
            refused: false,
            cluster_id: None,
            refreshed_for: None,
            holds: None,
        }
    }
}

/// How peers' tokens are to be minted and written: their lifetime, and the
/// forced refresh the federation asks for, if any.
#[derive(Clone, Copy, Debug)]
pub struct TokenPolicy<'a> {
    pub lifetime: Duration,
    pub refresh: Option<&'a str>,
    /// The latest departure's generation: tokens minted before it are not
    /// used again.
    pub departure: Option<i64>,
}

impl PeerFacts {
    /// Its token, if it is for its current reader, not yet due for refresh,
    /// and minted for the forced refresh asked for.
    pub fn usable_token(&self, policy: TokenPolicy, now: Timestamp) -> Option<&IssuedToken> {
        let lifetime = policy.lifetime;
        if policy.refresh.is_some() && self.refreshed_for.as_deref() != policy.refresh {
            return None;
        }
        let (subject, token) = self.token.as_ref()?;
        if minted_before(token.departure, policy.departure) {
            return None;
        }
        let reader = self.reader.as_ref().ok()?;
        let limit = jiff::SignedDuration::try_from(lifetime).unwrap_or(jiff::SignedDuration::MAX);
        let fits = token.expires_at.duration_since(token.issued_at)
            <= limit.saturating_add(jiff::SignedDuration::from_secs(60));
        let fresh = now < token_refresh_at(Some(token.issued_at), token.expires_at, lifetime);
        (subject == reader && fits && fresh).then_some(token)
    }
}

/// What to do about the remote secret for one peer in this member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// Current; nothing to do until `refresh_at`.
    Keep {
        token_expires_at: Timestamp,
        refresh_at: Timestamp,
    },
    /// Write it with this token of the peer's.
    Write(IssuedToken),
    /// It must be written, but the peer has no usable token yet: the peer is
    /// asked to mint one. An existing secret stays meanwhile.
    NeedsToken { existing: bool },
    /// A Secret of that name exists that meshfed did not create.
    Foreign,
    /// Cannot be written now (the peer's address or reader is unknown); an
    /// existing, older secret for it stays in place.
    Blocked { reason: String, existing: bool },
}

/// The plan for one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretsPlan {
    pub actions: BTreeMap<String, PeerAction>,
    /// meshfed's remote secrets for peers that left the federation.
    pub stale: Vec<String>,
}

impl SecretsPlan {
    /// Peers asked to mint a token.
    pub fn needs_tokens(&self) -> impl Iterator<Item = &String> {
        self.actions
            .iter()
            .filter(|(_, a)| matches!(a, PeerAction::NeedsToken { .. }))
            .map(|(peer, _)| peer)
    }
}

/// Decides, for every peer of `member`, what must happen in `member`.
pub fn plan_remote_secrets(
    federation: &str,
    member: &PreparedMember,
    peers: &BTreeMap<String, PeerFacts>,
    policy: TokenPolicy,
    now: Timestamp,
) -> SecretsPlan {
    let peers: BTreeMap<&String, &PeerFacts> = peers
        .iter()
        .filter(|(name, facts)| **name != member.name && !facts.refused)
        .collect();
    let mut p = SecretsPlan::default();
    for (peer, facts) in &peers {
        let live = member.multicluster_secrets.get(&remote_secret_name(peer));
        let target = facts
            .endpoint
            .as_ref()
            .and_then(|e| Ok((e, facts.reader.as_ref()?)));
        let action = match (live, target) {
            (Some(s), _) if !is_ours(&s.metadata, federation) => PeerAction::Foreign,
            (live, Err(reason)) => PeerAction::Blocked {
                reason: reason.clone(),
                existing: live.is_some(),
            },
            (live, Ok((endpoint, reader))) => {
                let state = live.map(|s| {
                    let fingerprint = endpoint.fingerprint(reader);
                    remote_secret_state(
                        s,
                        peer,
                        &fingerprint,
                        policy.lifetime,
                        policy.refresh,
                        policy.departure,
                        now,
                    )
                });
                match state {
                    Some(RemoteSecretState::Current {
                        token_expires_at,
                        refresh_at,
                    }) => PeerAction::Keep {
                        token_expires_at,
                        refresh_at,
                    },
                    _ => match facts.usable_token(policy, now) {
                        Some(token) => PeerAction::Write(token.clone()),
                        None => PeerAction::NeedsToken {
                            existing: live.is_some(),
                        },
                    },
                }
            }
        };
        p.actions.insert((*peer).clone(), action);
    }
    p.stale = member
        .multicluster_secrets
        .values()
        .filter(|s| is_ours(&s.metadata, federation))
        .filter(|s| {
            remote_secret_peer(s)
                .is_none_or(|peer| peer == member.name || !peers.keys().any(|p| p.as_str() == peer))
        })
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    p
}

/// Carries out `plan` in `member` (bounded by `timeout`); records counts,
/// problems and the next token deadline in its report. Returns which token
/// of each peer the member's remote secrets now hold: what they held
/// before, but for the writes that were confirmed.
pub async fn sync_remote_secrets(
    federation: &str,
    member: &mut PreparedMember,
    plan: &SecretsPlan,
    peers: &BTreeMap<String, PeerFacts>,
    policy: TokenPolicy<'_>,
    timeout: Duration,
) -> BTreeMap<String, HeldToken> {
    let mut held: BTreeMap<String, HeldToken> = plan
        .actions
        .keys()
        .filter_map(|peer| {
            let live = member.multicluster_secrets.get(&remote_secret_name(peer))?;
            let ours = is_ours(&live.metadata, federation);
            Some((peer.clone(), remote_secret_held(live).filter(|_| ours)?))
        })
        .collect();
    if member.connection.is_none() {
        return held;
    }
    let work = carry_out(federation, policy, member, plan, peers, &mut held);
    if tokio::time::timeout(timeout, work).await.is_err() {
        member.report.remote_secret_problems.push(format!(
            "writing remote secrets: no answer within {timeout:?} (retried next reconcile; if it persists, the member's API server is overloaded or the path to it is slow)"
        ));
    }
    held
}

async fn carry_out(
    federation: &str,
    policy: TokenPolicy<'_>,
    member: &mut PreparedMember,
    plan: &SecretsPlan,
    peers: &BTreeMap<String, PeerFacts>,
    held: &mut BTreeMap<String, HeldToken>,
) {
    let api = Api::<Secret>::namespaced(
        member
            .connection
            .clone()
            .expect("planned members are reachable")
            .client,
        ISTIO_NAMESPACE,
    );
    let report = &mut member.report;
    report.status.remote_secrets_expected = plan.actions.len() as i32;
    let mut present = 0;
    let mut earliest: Option<Timestamp> = None;
    let mut next_refresh: Option<Timestamp> = None;
    let mut note = |expires: Timestamp, refresh: Timestamp| {
        earliest = Some(earliest.map_or(expires, |e| e.min(expires)));
        next_refresh = Some(next_refresh.map_or(refresh, |r| r.min(refresh)));
    };
    for (peer, action) in &plan.actions {
        let name = remote_secret_name(peer);
        match action {
            PeerAction::Keep {
                token_expires_at,
                refresh_at,
            } => {
                present += 1;
                note(*token_expires_at, *refresh_at);
            }
            PeerAction::Foreign => report.remote_secret_problems.push(format!(
                "{ISTIO_NAMESPACE}/{name} exists and was not created by meshfed; it is left untouched (istiod ignores a second secret for the same cluster). Delete it, or annotate it {}=true to let meshfed replace it",
                keys::ADOPT
            )),
            PeerAction::Blocked { reason, existing } => {
                present += i32::from(*existing);
                report.remote_secret_problems.push(format!("{name}: {reason}"));
            }
            PeerAction::NeedsToken { existing } => {
                present += i32::from(*existing);
                report
                    .remote_secret_problems
                    .push(format!("{name}: waiting for a token from {peer}"));
            }
            PeerAction::Write(token) => {
                let facts = &peers[peer];
                let (Ok(endpoint), Ok(reader)) = (&facts.endpoint, &facts.reader) else {
                    continue;
                };
                let written = WrittenToken {
                    at: Timestamp::now(),
                    refresh: policy.refresh,
                };
                let secret = render_remote_secret(federation, peer, endpoint, reader, token, written);
                match write(&api, &secret, federation).await {
                    Ok(_) => {
                        present += 1;
                        held.insert(
                            peer.clone(),
                            HeldToken {
                                binding: token.binding.clone(),
                                written_at: written.at,
                            },
                        );
                        note(
                            token.expires_at,
                            token_refresh_at(Some(token.issued_at), token.expires_at, policy.lifetime),
                        );
                    }
                    Err(e) => report
                        .remote_secret_problems
                        .push(format!("writing {name}: {}", error_text(&e))),
                }
            }
        }
    }
    for name in &plan.stale {
        if let Err(e) = delete(&api, name).await {
            report
                .remote_secret_problems
                .push(format!("deleting stale {name}: {}", error_text(&e)));
        }
    }
    report.status.remote_secrets_present = present;
    report.status.token_expiry = earliest.map(Time);
    report.next_token_refresh = report
        .next_token_refresh
        .into_iter()
        .chain(next_refresh)
        .min();
}

/// A token for the reader ServiceAccount, bound to a new Secret of its own
/// (deleting that Secret revokes it), and its lifetime as issued.
pub async fn mint_token(
    client: &kube::Client,
    federation: &str,
    reader: &str,
    policy: TokenPolicy<'_>,
) -> Result<IssuedToken, kube::Error> {
    let (lifetime, departure) = (policy.lifetime, policy.departure);
    let secrets = Api::<Secret>::namespaced(client.clone(), ISTIO_NAMESPACE);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ISTIO_NAMESPACE);
    let binding = render_token_binding(
        federation,
        reader,
        Timestamp::now() + signed(lifetime),
        departure,
    );
    let binding = create(&secrets, &binding).await?;
    let name = binding.name_any();
    let bound = BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        name: Some(name.clone()),
        uid: binding.uid(),
    };
    match request_token(&accounts, reader, lifetime, Some(bound)).await {
        Ok(token) => Ok(IssuedToken {
            token: token.token,
            issued_at: token.issued_at,
            expires_at: token.expires_at,
            binding: name,
            departure,
        }),
        Err(e) => {
            // Nothing is bound to it: no reason to keep it (should this
            // fail too, it is revoked later like any binding nobody holds).
            let _ = delete(&secrets, &name).await;
            Err(e)
        }
    }
}

/// A token from TokenRequest, with its lifetime as the server issued it.
pub struct RequestedToken {
    pub token: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A TokenRequest for `account` in `accounts`' namespace, for `lifetime`,
/// bound to `bound` if given.
pub async fn request_token(
    accounts: &Api<ServiceAccount>,
    account: &str,
    lifetime: Duration,
    bound: Option<BoundObjectReference>,
) -> Result<RequestedToken, kube::Error> {
    let asked_at = Timestamp::now();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(lifetime.as_secs() as i64),
            bound_object_ref: bound,
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let response = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await?;
    // The server may shorten the lifetime; trust what it says.
    let status = response
        .status
        .filter(|s| !s.token.is_empty())
        .ok_or_else(|| {
            kube::Error::Api(
                kube::core::Status::failure("TokenRequest returned no token", "NoToken")
                    .with_code(500)
                    .boxed(),
            )
        })?;
    let expires_at = status.expiration_timestamp.0.max(asked_at);
    Ok(RequestedToken {
        token: status.token,
        issued_at: issued_at(asked_at, expires_at, lifetime),
        expires_at,
    })
}

fn signed(d: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
}

/// A Secret a token of this member's reader is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    /// When its token expires (as asked; the server may have made it sooner).
    pub expires_at: Option<Timestamp>,
    /// The departure generation its token was minted after.
    pub departure: Option<i64>,
}

impl Binding {
    pub fn of(secret: &Secret) -> Self {
        Binding {
            name: secret.name_any(),
            departure: recorded_departure(secret),
            expires_at: secret
                .annotations()
                .get(keys::TOKEN_EXPIRES_AT)
                .and_then(|t| t.parse().ok()),
        }
    }
}

/// The bindings whose tokens a member that left may hold (minted before the
/// latest departure): revoked at once, holders or not, but for the
/// `current` one, which is replaced first (peers are asked to take a new
/// token as soon as the departure is known). A remaining peer whose istiod
/// still uses one loses this member for the moment it takes to switch: the
/// price of cutting the departed member off now rather than `revokeAfter`
/// later.
pub fn held_by_departed(
    bindings: &[Binding],
    current: Option<&str>,
    departure: Option<i64>,
) -> Vec<String> {
    bindings
        .iter()
        .filter(|b| Some(b.name.as_str()) != current && minted_before(b.departure, departure))
        .map(|b| b.name.clone())
        .collect()
}

/// Which of this member's bindings to delete now (revoking their tokens),
/// and when to look again. `holders` has, for every other member, the
/// token of this member its remote secret holds: `None` when that is not
/// known (not read since the operator started), `Some(None)` when it holds
/// none. A binding goes when its token expired, or when it is not the
/// current one, no member may hold it, and every holder wrote what it holds
/// at least `revoke_after` ago (time for its istiod to switch).
pub fn revocable(
    bindings: &[Binding],
    current: Option<&str>,
    holders: &[Option<Option<HeldToken>>],
    revoke_after: Duration,
    now: Timestamp,
) -> (Vec<String>, Option<Timestamp>) {
    let all_known = holders.iter().all(Option::is_some);
    let held: Vec<&HeldToken> = holders.iter().flatten().flatten().collect();
    let switched_at = held
        .iter()
        .map(|h| h.written_at + signed(revoke_after))
        .max();
    let mut revoke = Vec::new();
    let mut next: Option<Timestamp> = None;
    let mut wake = |at: Timestamp| next = Some(next.map_or(at, |n: Timestamp| n.min(at)));
    for b in bindings {
        if Some(b.name.as_str()) == current {
            continue;
        }
        if b.expires_at.is_some_and(|at| at <= now) {
            revoke.push(b.name.clone());
            continue;
        }
        let unheld = all_known && held.iter().all(|h| h.binding != b.name);
        match switched_at {
            _ if !unheld => {}
            Some(at) if at > now => wake(at),
            _ => {
                revoke.push(b.name.clone());
                continue;
            }
        }
        if let Some(at) = b.expires_at {
            wake(at);
        }
    }
    (revoke, next)
}

/// When a token asked for at `asked_at` (our clock) for `lifetime`, expiring
/// at `expires_at` (the server's clock), counts as issued. The server's clock
/// may run ahead of ours: a token never lived longer than asked for, so
/// that a skew can never make a fresh token look too long-lived to use.
fn issued_at(asked_at: Timestamp, expires_at: Timestamp, lifetime: Duration) -> Timestamp {
    let asked = jiff::SignedDuration::try_from(lifetime).unwrap_or(jiff::SignedDuration::MAX);
    expires_at
        .checked_sub(asked)
        .map_or(asked_at, |earliest| earliest.max(asked_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::MemberReport;
    use crate::render::keys;

    const DAY: Duration = Duration::from_secs(86400);

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn endpoint(name: &str) -> PeerEndpoint {
        PeerEndpoint {
            server: format!("https://{name}:6443"),
            ca_pem: "CA".into(),
        }
    }

    fn subject(peer: &str) -> TokenSubject {
        TokenSubject {
            service_account: "meshfed-reader-prod".into(),
            uid: format!("uid-of-{peer}"),
        }
    }

    fn token(expires: &str) -> IssuedToken {
        let expires_at: Timestamp = expires.parse().unwrap();
        IssuedToken {
            token: "tok".into(),
            issued_at: expires_at - jiff::SignedDuration::from_hours(24),
            expires_at,
            binding: format!("binding-{expires}"),
            departure: None,
        }
    }

    /// What `name` publishes: reachable, with a token fresh until tomorrow.
    fn facts(name: &str) -> PeerFacts {
        PeerFacts {
            endpoint: Ok(endpoint(name)),
            reader: Ok(subject(name)),
            token: Some((subject(name), token("2026-01-02T00:00:00Z"))),
            refused: false,
            cluster_id: Some(format!("cluster-of-{name}")),
            refreshed_for: None,
            holds: None,
        }
    }

    fn fleet(names: &[&str]) -> BTreeMap<String, PeerFacts> {
        names.iter().map(|n| (n.to_string(), facts(n))).collect()
    }

    fn member(name: &str, secrets: Vec<Secret>) -> PreparedMember {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        PreparedMember {
            name: name.into(),
            connection: Some(crate::connection::connection(config).unwrap()),
            endpoint: Ok(endpoint(name)),
            reader: Ok(subject(name)),
            request_baseline: Default::default(),
            recorded_kinds: Default::default(),
            multicluster_secrets: secrets
                .into_iter()
                .map(|s| (s.metadata.name.clone().unwrap(), s))
                .collect(),
            report: MemberReport::new(name),
            events: vec![],
        }
    }

    fn written() -> WrittenToken<'static> {
        WrittenToken {
            at: now(),
            refresh: None,
        }
    }

    fn ours(peer: &str, expires: &str) -> Secret {
        render_remote_secret(
            "prod",
            peer,
            &endpoint(peer),
            &subject(peer),
            &token(expires),
            written(),
        )
    }

    fn policy(lifetime: Duration) -> TokenPolicy<'static> {
        TokenPolicy {
            lifetime,
            refresh: None,
            departure: None,
        }
    }

    #[tokio::test]
    async fn fresh_secrets_are_kept_and_missing_ones_written_with_the_peers_token() {
        let peers = fleet(&["a", "b", "c"]);
        let a = member("a", vec![ours("b", "2026-01-01T20:00:00Z")]);
        let p = plan_remote_secrets("prod", &a, &peers, policy(DAY), now());
        assert_eq!(
            p.actions["b"],
            PeerAction::Keep {
                token_expires_at: "2026-01-01T20:00:00Z".parse().unwrap(),
                refresh_at: "2026-01-01T12:00:00Z".parse().unwrap(),
            }
        );
        assert_eq!(
            p.actions["c"],
            PeerAction::Write(token("2026-01-02T00:00:00Z"))
        );
        assert!(!p.actions.contains_key("a"), "no secret for itself");
        assert!(p.stale.is_empty());
    }

    #[tokio::test]
    async fn expiring_tokens_and_moved_peers_are_rewritten() {
        let mut moved = ours("c", "2026-01-01T20:00:00Z");
        moved
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(keys::ENDPOINT_HASH.into(), "old".into());
        let a = member("a", vec![ours("b", "2026-01-01T07:00:00Z"), moved]);
        let p = plan_remote_secrets("prod", &a, &fleet(&["a", "b", "c"]), policy(DAY), now());
        assert!(
            matches!(p.actions["b"], PeerAction::Write(_)),
            "7h left of 24h is under a third"
        );
        assert!(
            matches!(p.actions["c"], PeerAction::Write(_)),
            "endpoint changed"
        );
    }

    #[tokio::test]
    async fn a_peer_without_a_usable_token_is_asked_for_one() {
        let mut peers = fleet(&["a", "b", "c"]);
        peers.get_mut("b").unwrap().token = None;
        // c's token is itself due (issued for 24h, 7h left).
        peers.get_mut("c").unwrap().token = Some((subject("c"), token("2026-01-01T07:00:00Z")));
        let a = member("a", vec![ours("c", "2026-01-01T07:00:00Z")]);
        let p = plan_remote_secrets("prod", &a, &peers, policy(DAY), now());
        assert_eq!(p.actions["b"], PeerAction::NeedsToken { existing: false });
        assert_eq!(p.actions["c"], PeerAction::NeedsToken { existing: true });
        assert_eq!(p.needs_tokens().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[tokio::test]
    async fn a_recreated_reader_needs_a_new_token_for_every_secret() {
        let mut peers = fleet(&["a", "b"]);
        let recreated = TokenSubject {
            uid: "a-new-uid".into(),
            ..subject("b")
        };
        peers.get_mut("b").unwrap().reader = Ok(recreated.clone());
        let a = member("a", vec![ours("b", "2026-01-01T20:00:00Z")]);
        let p = plan_remote_secrets("prod", &a, &peers, policy(DAY), now());
        assert_eq!(
            p.actions["b"],
            PeerAction::NeedsToken { existing: true },
            "the old subject's token is no use"
        );
        peers.get_mut("b").unwrap().token = Some((recreated, token("2026-01-02T00:00:00Z")));
        let p = plan_remote_secrets("prod", &a, &peers, policy(DAY), now());
        assert!(matches!(p.actions["b"], PeerAction::Write(_)));
    }

    #[tokio::test]
    async fn unknown_or_foreign_readers_block_but_keep_existing_secrets() {
        let mut peers = fleet(&["a", "b", "c"]);
        peers.get_mut("b").unwrap().reader =
            Err("ServiceAccount istio-system/meshfed-reader-prod is not meshfed's".into());
        peers.get_mut("c").unwrap().endpoint = Err("not reached yet".into());
        let a = member("a", vec![ours("b", "2026-01-01T20:00:00Z")]);
        let p = plan_remote_secrets("prod", &a, &peers, policy(DAY), now());
        assert!(matches!(
            &p.actions["b"],
            PeerAction::Blocked { existing: true, reason } if reason.contains("not meshfed's")
        ));
        assert!(matches!(
            &p.actions["c"],
            PeerAction::Blocked {
                existing: false,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn foreign_secrets_are_never_planned_for_writing() {
        let mut foreign = ours("b", "2026-01-02T00:00:00Z");
        foreign.metadata.labels =
            Some(BTreeMap::from([(keys::MULTICLUSTER.into(), "true".into())]));
        let a = member("a", vec![foreign]);
        let p = plan_remote_secrets("prod", &a, &fleet(&["a", "b"]), policy(DAY), now());
        assert_eq!(p.actions["b"], PeerAction::Foreign);
    }

    #[tokio::test]
    async fn secrets_for_departed_refused_peers_and_self_are_stale() {
        let mut peers = fleet(&["a", "b", "dup"]);
        peers.get_mut("dup").unwrap().refused = true;
        let a = member(
            "a",
            vec![
                ours("b", "2026-01-02T00:00:00Z"),
                ours("gone", "2026-01-02T00:00:00Z"),
                ours("a", "2026-01-02T00:00:00Z"),
                ours("dup", "2026-01-02T00:00:00Z"),
            ],
        );
        let p = plan_remote_secrets("prod", &a, &peers, policy(DAY), now());
        assert_eq!(
            p.stale,
            [
                "istio-remote-secret-a",
                "istio-remote-secret-dup",
                "istio-remote-secret-gone"
            ]
        );
        assert!(
            !p.actions.contains_key("dup"),
            "a refused member is nobody's peer"
        );
        let other_federation = render_remote_secret(
            "staging",
            "gone",
            &endpoint("gone"),
            &subject("gone"),
            &token("2026-01-02T00:00:00Z"),
            written(),
        );
        let a = member("a", vec![other_federation]);
        assert!(
            plan_remote_secrets("prod", &a, &fleet(&["a"]), policy(DAY), now())
                .stale
                .is_empty(),
            "never prune another federation's secrets"
        );
    }

    #[test]
    fn a_server_clock_ahead_of_ours_never_makes_a_token_too_long_lived() {
        let asked = now();
        // Server 90 s ahead: 24h from its now is 24h90s from ours.
        let expires: Timestamp = "2026-01-02T00:01:30Z".parse().unwrap();
        let issued = issued_at(asked, expires, DAY);
        assert_eq!(
            expires.duration_since(issued),
            jiff::SignedDuration::from_hours(24)
        );
        let f = PeerFacts {
            token: Some((
                subject("b"),
                IssuedToken {
                    token: "t".into(),
                    issued_at: issued,
                    expires_at: expires,
                    binding: "b".into(),
                    departure: None,
                },
            )),
            ..facts("b")
        };
        assert!(f.usable_token(policy(DAY), asked).is_some());
        // Capped by the server to 1h: issued when asked.
        let capped: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        assert_eq!(issued_at(asked, capped, DAY), asked);
    }

    #[test]
    fn a_token_is_usable_only_for_its_subject_within_its_fresh_third() {
        let f = facts("b");
        assert!(f.usable_token(policy(DAY), now()).is_some());
        assert!(
            f.usable_token(policy(DAY), "2026-01-01T16:00:00Z".parse().unwrap())
                .is_none(),
            "due with a third of its lifetime left"
        );
        assert!(
            f.usable_token(policy(Duration::from_secs(3600)), now())
                .is_none(),
            "issued for longer than the spec now allows"
        );
        let mut other = facts("b");
        other.reader = Ok(subject("someone-else"));
        assert!(other.usable_token(policy(DAY), now()).is_none());
    }

    #[tokio::test]
    async fn a_forced_refresh_takes_a_token_minted_for_it_and_only_that() {
        let request = TokenPolicy {
            lifetime: DAY,
            refresh: Some("incident-42"),
            departure: None,
        };
        let mut peers = fleet(&["a", "b"]);
        let a = member("a", vec![ours("b", "2026-01-01T20:00:00Z")]);
        assert!(matches!(
            plan_remote_secrets("prod", &a, &peers, policy(DAY), now()).actions["b"],
            PeerAction::Keep { .. }
        ));
        assert_eq!(
            plan_remote_secrets("prod", &a, &peers, request, now()).actions["b"],
            PeerAction::NeedsToken { existing: true },
            "b's token predates the request: b is asked for a new one"
        );
        peers.get_mut("b").unwrap().refreshed_for = Some("incident-42".into());
        let p = plan_remote_secrets("prod", &a, &peers, request, now());
        assert_eq!(
            p.actions["b"],
            PeerAction::Write(token("2026-01-02T00:00:00Z"))
        );
    }

    #[tokio::test]
    async fn after_a_departure_peers_take_only_a_token_minted_since() {
        let departed = TokenPolicy {
            departure: Some(4),
            ..policy(DAY)
        };
        let mut peers = fleet(&["a", "b"]);
        let a = member("a", vec![ours("b", "2026-01-01T20:00:00Z")]);
        assert_eq!(
            plan_remote_secrets("prod", &a, &peers, departed, now()).actions["b"],
            PeerAction::NeedsToken { existing: true },
            "the token a holds of b was minted before c left, and b's published one too"
        );
        let (_, minted) = peers.get_mut("b").unwrap().token.as_mut().unwrap();
        minted.departure = Some(4);
        let p = plan_remote_secrets("prod", &a, &peers, departed, now());
        let PeerAction::Write(token) = &p.actions["b"] else {
            panic!("{:?}", p.actions["b"]);
        };
        assert_eq!(token.departure, Some(4));
        let written =
            render_remote_secret("prod", "b", &endpoint("b"), &subject("b"), token, written());
        let a = member("a", vec![written]);
        assert!(matches!(
            plan_remote_secrets("prod", &a, &peers, departed, now()).actions["b"],
            PeerAction::Keep { .. }
        ));
    }

    fn held(binding: &str, written_at: &str) -> Option<Option<HeldToken>> {
        Some(Some(HeldToken {
            binding: binding.into(),
            written_at: written_at.parse().unwrap(),
        }))
    }

    fn binding(name: &str, expires: &str) -> Binding {
        Binding {
            name: name.into(),
            expires_at: Some(expires.parse().unwrap()),
            departure: None,
        }
    }

    #[test]
    fn every_token_a_departed_member_may_hold_is_revoked_but_the_current_one() {
        let minted_after = |name: &str, departure| Binding {
            departure,
            ..binding(name, "2026-01-02T00:00:00Z")
        };
        let bindings = [
            minted_after("before-anyone-left", None),
            minted_after("before-c-left", Some(3)),
            minted_after("after", Some(4)),
        ];
        assert!(held_by_departed(&bindings, Some("after"), None).is_empty());
        assert_eq!(
            held_by_departed(&bindings, Some("after"), Some(4)),
            ["before-anyone-left", "before-c-left"]
        );
        assert_eq!(
            held_by_departed(&bindings, Some("before-c-left"), Some(4)),
            ["before-anyone-left"],
            "the current token goes once it is replaced"
        );
    }

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn a_replaced_token_is_revoked_a_grace_period_after_the_last_peer_switched() {
        let bindings = [
            binding("old", "2026-01-01T12:00:00Z"),
            binding("new", "2026-01-02T00:00:00Z"),
        ];
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        // b switched at 00:00, c at 00:05: old goes at 00:15, not before.
        let both = [
            held("new", "2026-01-01T00:00:00Z"),
            held("new", "2026-01-01T00:05:00Z"),
        ];
        let (revoke, next) = revocable(
            &bindings,
            Some("new"),
            &both,
            GRACE,
            t("2026-01-01T00:14:59Z"),
        );
        assert!(revoke.is_empty());
        assert_eq!(next, Some(t("2026-01-01T00:15:00Z")));
        let (revoke, _) = revocable(
            &bindings,
            Some("new"),
            &both,
            GRACE,
            t("2026-01-01T00:15:00Z"),
        );
        assert_eq!(revoke, ["old"]);
        // The current one is never revoked, even once unheld.
        let (revoke, _) = revocable(
            &bindings,
            Some("old"),
            &both,
            GRACE,
            t("2026-01-01T01:00:00Z"),
        );
        assert!(revoke.is_empty());
    }

    #[test]
    fn a_token_a_member_may_still_hold_is_kept_until_it_expires() {
        let bindings = [binding("old", "2026-01-01T12:00:00Z")];
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let later = t("2026-01-01T06:00:00Z");
        let still = [
            held("new", "2026-01-01T00:00:00Z"),
            held("old", "2025-12-31T12:00:00Z"),
        ];
        let (revoke, next) = revocable(&bindings, Some("new"), &still, GRACE, later);
        assert!(revoke.is_empty(), "c still holds it");
        assert_eq!(
            next,
            Some(t("2026-01-01T12:00:00Z")),
            "looked at again when it expires"
        );
        let unknown = [held("new", "2026-01-01T00:00:00Z"), None];
        let (revoke, _) = revocable(&bindings, Some("new"), &unknown, GRACE, later);
        assert!(
            revoke.is_empty(),
            "c not heard from since the operator started"
        );
        let (revoke, _) = revocable(
            &bindings,
            Some("new"),
            &unknown,
            GRACE,
            t("2026-01-01T12:00:00Z"),
        );
        assert_eq!(revoke, ["old"], "expired: no member can use it");
        // A peer holding nothing of this member (none written, or foreign).
        let none = [held("new", "2026-01-01T00:00:00Z"), Some(None)];
        let (revoke, _) = revocable(&bindings, Some("new"), &none, GRACE, later);
        assert_eq!(revoke, ["old"]);
    }

    #[test]
    fn a_binding_minted_but_never_handed_out_goes_at_once() {
        let bindings = [binding("orphan", "2026-01-02T00:00:00Z")];
        let (revoke, next) = revocable(&bindings, Some("new"), &[Some(None)], GRACE, now());
        assert_eq!(revoke, ["orphan"]);
        assert_eq!(next, None);
    }
}
