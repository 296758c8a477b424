//! Remote secrets: for every ordered pair (member, peer) a kubeconfig in the
//! member that lets its istiod read the peer. Planned purely from what the
//! per-member step saw, then carried out with as few requests as possible.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::future::join_all;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use super::apply::write;
use super::member::{PreparedMember, unreachable_reason};
use crate::render::{
    ISTIO_NAMESPACE, IssuedToken, PeerEndpoint, RemoteSecretState, TokenSubject, is_ours, keys,
    remote_secret_name, remote_secret_peer, remote_secret_state, render_remote_secret,
    token_refresh_at,
};

/// What to do about the remote secret for `peer` in one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// Current; nothing to do until `refresh_at`.
    Keep {
        token_expires_at: Timestamp,
        refresh_at: Timestamp,
    },
    /// Write it with a fresh token from the peer.
    Write,
    /// A Secret of that name exists that meshfed did not create.
    Foreign,
    /// Cannot be written now (peer unreachable or its address unknown); an
    /// existing, older secret for it stays in place.
    Blocked { reason: String, existing: bool },
}

/// The plan for one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberPlan {
    pub actions: BTreeMap<String, PeerAction>,
    /// meshfed's remote secrets for peers that left the federation.
    pub stale: Vec<String>,
}

/// Decides, for every reachable member and every peer, what must happen.
pub fn plan(
    federation: &str,
    members: &[PreparedMember],
    token_lifetime: Duration,
    now: Timestamp,
) -> BTreeMap<String, MemberPlan> {
    // A member refused its cluster (another member holds it) is nobody's peer.
    let peers: Vec<&PreparedMember> = members
        .iter()
        .filter(|m| m.report.claim_problem.is_none())
        .collect();
    let names: BTreeSet<&str> = peers.iter().map(|m| m.name.as_str()).collect();
    let mut plans = BTreeMap::new();
    for member in members.iter().filter(|m| m.connection.is_some()) {
        let mut p = MemberPlan::default();
        for peer in peers.iter().filter(|p| p.name != member.name) {
            let live = member
                .multicluster_secrets
                .get(&remote_secret_name(&peer.name));
            let target = peer
                .endpoint
                .as_ref()
                .and_then(|e| Ok((e, peer.reader.as_ref()?)));
            let action = match (live, target) {
                (Some(s), _) if !is_ours(&s.metadata, federation) => PeerAction::Foreign,
                (live, Err(reason)) => PeerAction::Blocked {
                    reason: reason.clone(),
                    existing: live.is_some(),
                },
                (live, Ok((endpoint, reader))) => {
                    let state = live.map(|s| {
                        remote_secret_state(
                            s,
                            &peer.name,
                            &endpoint.fingerprint(reader),
                            token_lifetime,
                            now,
                        )
                    });
                    match (state, peer.connection.is_some()) {
                        (
                            Some(RemoteSecretState::Current {
                                token_expires_at,
                                refresh_at,
                            }),
                            _,
                        ) => PeerAction::Keep {
                            token_expires_at,
                            refresh_at,
                        },
                        (_, true) => PeerAction::Write,
                        (_, false) => PeerAction::Blocked {
                            reason: format!("peer {} unreachable, cannot mint a token", peer.name),
                            existing: live.is_some(),
                        },
                    }
                }
            };
            p.actions.insert(peer.name.clone(), action);
        }
        p.stale = member
            .multicluster_secrets
            .values()
            .filter(|s| is_ours(&s.metadata, federation))
            .filter(|s| {
                remote_secret_peer(s)
                    .is_none_or(|peer| peer == member.name || !names.contains(peer))
            })
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        plans.insert(member.name.clone(), p);
    }
    plans
}

/// Carries out the plans; records counts and problems in each member's report.
pub async fn sync_remote_secrets(
    federation: &str,
    members: &mut [PreparedMember],
    token_lifetime: Duration,
    timeout: Duration,
    now: Timestamp,
) {
    let plans = plan(federation, members, token_lifetime, now);
    let peers_needing_tokens: BTreeSet<&str> = plans
        .values()
        .flat_map(|p| p.actions.iter())
        .filter(|(_, a)| **a == PeerAction::Write)
        .map(|(peer, _)| peer.as_str())
        .collect();
    // One token per peer per reconcile, shared by every member that needs it.
    let tokens: BTreeMap<String, Result<IssuedToken, String>> = join_all(
        members
            .iter()
            .filter(|m| peers_needing_tokens.contains(m.name.as_str()))
            .map(|m| async {
                let sa = Api::<ServiceAccount>::namespaced(
                    m.connection
                        .clone()
                        .expect("planned peers are reachable")
                        .client,
                    ISTIO_NAMESPACE,
                );
                let reader = m.reader.as_ref().expect("planned peers have a reader");
                let minted = tokio::time::timeout(
                    timeout,
                    mint_token(&sa, &reader.service_account, token_lifetime, now),
                )
                .await;
                let result = match minted {
                    Ok(Ok(t)) => Ok(t),
                    Ok(Err(e)) => Err(format!(
                        "minting token in {}: {}",
                        m.name,
                        unreachable_reason(&e)
                    )),
                    Err(_) => Err(format!(
                        "minting token in {}: no answer within {timeout:?}",
                        m.name
                    )),
                };
                (m.name.clone(), result)
            }),
    )
    .await
    .into_iter()
    .collect();

    let targets: BTreeMap<String, Target> = members
        .iter()
        .filter_map(|m| {
            let endpoint = m.endpoint.clone().ok()?;
            let reader = m.reader.clone().ok()?;
            Some((m.name.clone(), (endpoint, reader)))
        })
        .collect();
    join_all(
        members
            .iter_mut()
            .filter(|m| m.connection.is_some())
            .map(|member| {
                let plan = plans.get(&member.name).cloned().unwrap_or_default();
                let (tokens, targets) = (&tokens, &targets);
                async move {
                    let work =
                        carry_out(federation, token_lifetime, member, &plan, tokens, targets);
                    if tokio::time::timeout(timeout, work).await.is_err() {
                        member.report.remote_secret_problems.push(format!(
                            "writing remote secrets: no answer within {timeout:?}"
                        ));
                    }
                }
            }),
    )
    .await;
}

/// Where a peer is reached and whom its tokens belong to.
type Target = (PeerEndpoint, TokenSubject);

async fn carry_out(
    federation: &str,
    token_lifetime: Duration,
    member: &mut PreparedMember,
    plan: &MemberPlan,
    tokens: &BTreeMap<String, Result<IssuedToken, String>>,
    targets: &BTreeMap<String, Target>,
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
    for (peer, action) in &plan.actions {
        let name = remote_secret_name(peer);
        match action {
            PeerAction::Keep {
                token_expires_at,
                refresh_at,
            } => {
                present += 1;
                earliest = Some(earliest.map_or(*token_expires_at, |e| e.min(*token_expires_at)));
                next_refresh = Some(next_refresh.map_or(*refresh_at, |r| r.min(*refresh_at)));
            }
            PeerAction::Foreign => report.remote_secret_problems.push(format!(
                "{ISTIO_NAMESPACE}/{name} exists and was not created by meshfed; it is left untouched (istiod ignores a second secret for the same cluster). Delete it, or annotate it {}=true to let meshfed replace it",
                keys::ADOPT
            )),
            PeerAction::Blocked { reason, existing } => {
                if *existing {
                    present += 1;
                }
                report.remote_secret_problems.push(format!("{name}: {reason}"));
            }
            PeerAction::Write => {
                let (Some(Ok(token)), Some((endpoint, reader))) = (tokens.get(peer), targets.get(peer)) else {
                    let why = match tokens.get(peer) {
                        Some(Err(e)) => e.clone(),
                        _ => "no token".into(),
                    };
                    report.remote_secret_problems.push(format!("{name}: {why}"));
                    continue;
                };
                let secret = render_remote_secret(federation, peer, endpoint, reader, token);
                match write(&api, &secret).await {
                    Ok(_) => {
                        present += 1;
                        earliest = Some(earliest.map_or(token.expires_at, |e| e.min(token.expires_at)));
                        let refresh = token_refresh_at(Some(token.issued_at), token.expires_at, token_lifetime);
                        next_refresh = Some(next_refresh.map_or(refresh, |r| r.min(refresh)));
                    }
                    Err(e) => report.remote_secret_problems.push(format!("writing {name}: {}", unreachable_reason(&e))),
                }
            }
        }
    }
    for name in &plan.stale {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => report
                .remote_secret_problems
                .push(format!("deleting stale {name}: {}", unreachable_reason(&e))),
        }
    }
    report.status.remote_secrets_present = present;
    report.status.token_expiry = earliest.map(Time);
    report.next_token_refresh = next_refresh;
}

/// A token for the reader ServiceAccount, and its lifetime as issued.
async fn mint_token(
    api: &Api<ServiceAccount>,
    reader: &str,
    lifetime: Duration,
    now: Timestamp,
) -> Result<IssuedToken, kube::Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(lifetime.as_secs() as i64),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let response = api
        .create_token_request(reader, &PostParams::default(), &request)
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
    Ok(IssuedToken {
        token: status.token,
        issued_at: now,
        expires_at: status.expiration_timestamp.0.max(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::status::MemberReport;
    use crate::render::{PeerEndpoint, keys};

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

    fn member(name: &str, reachable: bool, secrets: Vec<Secret>) -> PreparedMember {
        let connection = reachable.then(|| {
            let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
            crate::members::connection(config).unwrap()
        });
        PreparedMember {
            name: name.into(),
            connection,
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
        }
    }

    fn ours(peer: &str, expires: &str) -> Secret {
        render_remote_secret(
            "prod",
            peer,
            &endpoint(peer),
            &subject(peer),
            &token(expires),
        )
    }

    #[tokio::test]
    async fn fresh_secrets_are_kept_and_missing_ones_written() {
        let members = [
            member("a", true, vec![ours("b", "2026-01-01T20:00:00Z")]),
            member("b", true, vec![]),
        ];
        let plans = plan("prod", &members, DAY, now());
        assert_eq!(
            plans["a"].actions["b"],
            PeerAction::Keep {
                token_expires_at: "2026-01-01T20:00:00Z".parse().unwrap(),
                refresh_at: "2026-01-01T12:00:00Z".parse().unwrap(),
            }
        );
        assert_eq!(plans["b"].actions["a"], PeerAction::Write);
        assert!(plans["a"].stale.is_empty());
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
        let members = [
            member("a", true, vec![ours("b", "2026-01-01T07:00:00Z"), moved]),
            member("b", true, vec![]),
            member("c", true, vec![]),
        ];
        let plans = plan("prod", &members, DAY, now());
        assert_eq!(
            plans["a"].actions["b"],
            PeerAction::Write,
            "7h left of 24h is under a third"
        );
        assert_eq!(
            plans["a"].actions["c"],
            PeerAction::Write,
            "endpoint changed"
        );
    }

    #[tokio::test]
    async fn a_recreated_reader_rewrites_every_secret_for_it() {
        let members = [
            member("a", true, vec![ours("b", "2026-01-01T20:00:00Z")]),
            member("b", true, vec![ours("a", "2026-01-01T20:00:00Z")]),
        ];
        let mut recreated = members;
        recreated[1].reader = Ok(TokenSubject {
            uid: "a-new-uid".into(),
            ..subject("b")
        });
        let plans = plan("prod", &recreated, DAY, now());
        assert_eq!(plans["a"].actions["b"], PeerAction::Write);
        assert!(matches!(plans["b"].actions["a"], PeerAction::Keep { .. }));
    }

    #[tokio::test]
    async fn no_token_is_minted_for_a_reader_meshfed_did_not_create() {
        let mut members = [
            member("a", true, vec![ours("b", "2026-01-01T20:00:00Z")]),
            member("b", true, vec![]),
        ];
        members[1].reader =
            Err("ServiceAccount istio-system/meshfed-reader-prod is not meshfed's".into());
        let plans = plan("prod", &members, DAY, now());
        assert!(matches!(
            &plans["a"].actions["b"],
            PeerAction::Blocked { existing: true, reason } if reason.contains("not meshfed's")
        ));
    }

    #[tokio::test]
    async fn a_member_refused_its_cluster_is_nobodys_peer() {
        let mut members = [
            member("a", true, vec![ours("dup", "2026-01-01T20:00:00Z")]),
            member("dup", false, vec![]),
        ];
        members[1].report.claim_problem = Some("cluster belongs to a".into());
        let plans = plan("prod", &members, DAY, now());
        assert!(plans["a"].actions.is_empty());
        assert_eq!(plans["a"].stale, ["istio-remote-secret-dup"]);
    }

    #[tokio::test]
    async fn unreachable_peers_block_but_keep_existing_secrets() {
        let members = [
            member("a", true, vec![ours("b", "2026-01-01T01:00:00Z")]),
            member("b", false, vec![]),
            member("c", true, vec![]),
        ];
        let plans = plan("prod", &members, DAY, now());
        assert!(
            !plans.contains_key("b"),
            "nothing is planned inside an unreachable member"
        );
        assert!(matches!(
            &plans["a"].actions["b"],
            PeerAction::Blocked { existing: true, .. }
        ));
        assert!(matches!(
            &plans["c"].actions["b"],
            PeerAction::Blocked {
                existing: false,
                ..
            }
        ));
        assert_eq!(plans["c"].actions["a"], PeerAction::Write);
    }

    #[tokio::test]
    async fn foreign_secrets_are_never_planned_for_writing() {
        let mut foreign = ours("b", "2026-01-02T00:00:00Z");
        foreign.metadata.labels =
            Some(BTreeMap::from([(keys::MULTICLUSTER.into(), "true".into())]));
        let members = [member("a", true, vec![foreign]), member("b", true, vec![])];
        let plans = plan("prod", &members, DAY, now());
        assert_eq!(plans["a"].actions["b"], PeerAction::Foreign);
    }

    #[tokio::test]
    async fn secrets_for_departed_peers_and_self_are_stale() {
        let members = [
            member(
                "a",
                true,
                vec![
                    ours("b", "2026-01-02T00:00:00Z"),
                    ours("gone", "2026-01-02T00:00:00Z"),
                    ours("a", "2026-01-02T00:00:00Z"),
                ],
            ),
            member("b", true, vec![]),
        ];
        let plans = plan("prod", &members, DAY, now());
        assert_eq!(
            plans["a"].stale,
            ["istio-remote-secret-a", "istio-remote-secret-gone"]
        );
        let other_federation = render_remote_secret(
            "staging",
            "gone",
            &endpoint("gone"),
            &subject("gone"),
            &token("2026-01-02T00:00:00Z"),
        );
        let members = [
            member("a", true, vec![other_federation]),
            member("b", true, vec![]),
        ];
        assert!(
            plan("prod", &members, DAY, now())["a"].stale.is_empty(),
            "never prune another federation's secrets"
        );
    }
}
