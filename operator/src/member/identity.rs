//! Who is who in a member: its cluster claimed before anything is written
//! into it, the federation's reader identity there (whom peers' tokens are
//! minted for), and the operator's own credentials for it.
use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::{MemberContext, PreparedMember, error_text};
use crate::api::{Member, MeshFederation};
use crate::apply::{Applied, Ownership, create, ensure, is_conflict, merge, replace};
use crate::connection::MemberConnection;
use crate::events::{Event, Reason};
use crate::fleet::report::MemberReport;
use crate::render::{
    CLAIM, ClaimDecision, ClusterClaim, ISTIO_NAMESPACE, TokenSubject, judge_claim, keys,
    kinds_text, read_claim, render_claim, render_istio_namespace, render_reader_identity,
};

/// Whether a member may use its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The cluster is this member's; `kinds` is what meshfed recorded applying.
    /// `repaired`: the claim had been changed behind meshfed's back (what it
    /// said), and was written back.
    Held {
        cluster_id: String,
        kinds: BTreeSet<String>,
        repaired: Option<String>,
    },
    /// It belongs to another member or federation: why, naming the owner.
    Refused { cluster_id: String, why: String },
}

/// Why the operator's own cluster is not used as a member without
/// `spec.allowPeersToReadOperatorSecrets`.
pub const OPERATOR_CLUSTER_REFUSED: &str = "this is the operator's own cluster, where every peer's reader token could read the operator's Secrets (the root key, every member's credentials); nothing is written to it and no peer is wired to it. Run the operator in a cluster that is not a member (docs/security.md, Topologies), or set spec.allowPeersToReadOperatorSecrets: true";

/// The cluster's identity: the UID of its `kube-system` namespace, which
/// lives as long as the cluster.
pub async fn cluster_id(client: &Client) -> Result<String, kube::Error> {
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    Ok(ns.uid().unwrap_or_default())
}

/// The claim recorded in the cluster: `None` when there is none,
/// `Some(None)` when the record is unreadable.
async fn recorded(
    records: &Api<ConfigMap>,
) -> Result<Option<(ConfigMap, Option<ClusterClaim>)>, kube::Error> {
    Ok(records.get_opt(CLAIM).await?.map(|r| {
        let claim = read_claim(&r);
        (r, claim)
    }))
}

/// Claims the cluster behind `client` for `member` of `federation`, or says
/// who holds it. `members` are the names in the federation's spec;
/// `held_cluster` is the cluster the member held, as the operator recorded
/// it (a claim that contradicts that record was changed behind meshfed's
/// back: it is written back, unless a federation of this operator really
/// has the member it names). `refused_cluster` (the operator's own cluster,
/// unless the spec allows it) is refused before anything is written.
/// Nothing but the claim itself (and
/// `istio-system` with its network label, for a cluster nobody holds) is
/// written before the claim is settled.
pub async fn claim_cluster(
    client: &Client,
    operator: &Client,
    federation: &str,
    member: &crate::api::Member,
    members: &BTreeSet<String>,
    held_cluster: Option<&str>,
    refused_cluster: Option<&str>,
) -> Result<Claim, kube::Error> {
    let mut me = ClusterClaim {
        federation: federation.into(),
        member: member.name.clone(),
        cluster_id: cluster_id(client).await?,
        kinds: BTreeSet::new(),
    };
    if refused_cluster == Some(me.cluster_id.as_str()) {
        return Ok(Claim::Refused {
            cluster_id: me.cluster_id,
            why: OPERATOR_CLUSTER_REFUSED.into(),
        });
    }
    let records = Api::<ConfigMap>::namespaced(client.clone(), ISTIO_NAMESPACE);
    let mut live = recorded(&records).await?;
    // At most twice: a lost race to create the record is judged again.
    for _ in 0..2 {
        let owner = live.as_ref().and_then(|(_, c)| c.as_ref());
        // Kinds applied under an earlier name still need pruning.
        me.kinds = owner.map(|c| c.kinds.clone()).unwrap_or_default();
        let decision = judge_claim(live.as_ref().map(|(_, c)| c.as_ref()), &me, members);
        let mut repaired = None;
        let written = match decision {
            ClaimDecision::Hold => return Ok(held(&me, None)),
            ClaimDecision::Refuse(_)
                if held_cluster == Some(me.cluster_id.as_str())
                    && !really_held(operator, owner).await? =>
            {
                repaired = Some(owner.map_or_else(
                    || "an unreadable record".to_string(),
                    |o| format!("member {} of federation {}", o.member, o.federation),
                ));
                replace_claim(&records, &me, live.as_ref().map(|(r, _)| r)).await
            }
            ClaimDecision::Refuse(why) => {
                return Ok(Claim::Refused {
                    cluster_id: me.cluster_id,
                    why,
                });
            }
            ClaimDecision::Create => {
                ensure(
                    &Api::<Namespace>::all(client.clone()),
                    &render_istio_namespace(&member.network),
                    federation,
                    Ownership::Shared,
                )
                .await?;
                create(&records, &render_claim(&me)).await
            }
            ClaimDecision::TakeOver => {
                replace_claim(&records, &me, live.as_ref().map(|(r, _)| r)).await
            }
        };
        match written {
            Ok(_) => return Ok(held(&me, repaired)),
            Err(e) if is_conflict(&e) => live = recorded(&records).await?,
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(
        kube::core::Status::failure("the cluster claim keeps changing", "Conflict")
            .with_code(409)
            .boxed(),
    ))
}

/// Writes `me` over the claim `read`, at the resourceVersion read: a
/// concurrent change fails with 409.
async fn replace_claim(
    records: &Api<ConfigMap>,
    me: &ClusterClaim,
    read: Option<&ConfigMap>,
) -> Result<ConfigMap, kube::Error> {
    let mut record = render_claim(me);
    record.metadata.resource_version = read.and_then(|r| r.metadata.resource_version.clone());
    replace(records, &record).await
}

fn held(me: &ClusterClaim, repaired: Option<String>) -> Claim {
    Claim::Held {
        cluster_id: me.cluster_id.clone(),
        kinds: me.kinds.clone(),
        repaired,
    }
}

/// Whether the claim's owner is a member of a federation this operator
/// runs: then it is a real claim, never overwritten.
async fn really_held(operator: &Client, owner: Option<&ClusterClaim>) -> Result<bool, kube::Error> {
    let Some(owner) = owner else { return Ok(false) };
    let fed = Api::<crate::api::MeshFederation>::all(operator.clone())
        .get_opt(&owner.federation)
        .await?;
    Ok(fed.is_some_and(|f| f.spec.member(&owner.member).is_some()))
}

/// Adds `kinds` to the kinds recorded in the cluster's claim (`recorded`),
/// writing only when one is new. Called before objects of them are applied,
/// so a crash in between cannot leave objects no prune would look for.
pub async fn record_kinds(
    client: &Client,
    recorded: &mut BTreeSet<String>,
    kinds: impl IntoIterator<Item = String>,
) -> Result<(), kube::Error> {
    let before = recorded.len();
    recorded.extend(kinds);
    if recorded.len() == before {
        return Ok(());
    }
    let patch = serde_json::json!({"data": {"kinds": kinds_text(recorded)}});
    merge::<ConfigMap>(
        &Api::namespaced(client.clone(), ISTIO_NAMESPACE),
        CLAIM,
        &patch,
    )
    .await?;
    Ok(())
}

/// The claim recorded in the cluster behind `client`, if it can be read.
pub async fn recorded_claim(client: &Client) -> Result<Option<ClusterClaim>, kube::Error> {
    let records = Api::<ConfigMap>::namespaced(client.clone(), ISTIO_NAMESPACE);
    Ok(recorded(&records).await?.and_then(|(_, claim)| claim))
}

/// The federation's reader in the member (ServiceAccount, ClusterRole,
/// binding): whom peers' tokens for this member are minted for. Tokens only
/// for an identity meshfed made: a pre-existing account may be bound to
/// anything, and its tokens would hand that to every peer.
pub async fn ensure_reader(
    client: &Client,
    federation: &str,
    prepared: &mut PreparedMember,
) -> Result<(), kube::Error> {
    let reader = render_reader_identity(federation);
    let (sa_applied, sa) = ensure(
        &Api::namespaced(client.clone(), ISTIO_NAMESPACE),
        &reader.service_account,
        federation,
        Ownership::Exclusive,
    )
    .await?;
    let owned = [
        sa_applied,
        ensure(
            &Api::all(client.clone()),
            &reader.cluster_role,
            federation,
            Ownership::Exclusive,
        )
        .await?
        .0,
        ensure(
            &Api::all(client.clone()),
            &reader.binding,
            federation,
            Ownership::Exclusive,
        )
        .await?
        .0,
    ];
    let names = [
        format!(
            "ServiceAccount {ISTIO_NAMESPACE}/{}",
            reader.service_account.name_any()
        ),
        format!("ClusterRole {}", reader.cluster_role.name_any()),
        format!("ClusterRoleBinding {}", reader.binding.name_any()),
    ];
    for (applied, name) in owned.iter().zip(&names) {
        if *applied == Applied::Foreign {
            prepared.report.other_problems.push(format!(
                "{name} exists and was not created by meshfed; remove it or annotate it {}=true to let meshfed manage it",
                keys::ADOPT
            ));
        }
    }
    prepared.reader = match (&owned, sa.uid()) {
        ([Applied::Foreign, ..], _) => Err(format!(
            "{} was not created by meshfed; no tokens are minted for it",
            names[0]
        )),
        (_, Some(uid)) => Ok(TokenSubject {
            service_account: sa.name_any(),
            uid,
        }),
        (_, None) => Err(format!("{} has no UID yet", names[0])),
    };
    Ok(())
}

/// How often a member's long-lived ServiceAccount token Secrets are looked for.
const TOKEN_SECRET_SCAN: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

/// Users' long-lived ServiceAccount token Secrets in the member: meshfed
/// cannot remove them, but every peer's reader token may read them, so they
/// are reported. Looked for every ten minutes (metadata only); in between,
/// the last finding stands.
pub async fn find_token_secrets(
    conn: &MemberConnection,
    previous: Option<&MemberReport>,
    now: Timestamp,
    report: &mut MemberReport,
) {
    if let Some(prev) = previous
        && let Some(at) = prev.token_secrets_scanned_at
        && now < at + TOKEN_SECRET_SCAN
    {
        report.token_secrets_scanned_at = Some(at);
        report.status.readable_token_secrets = prev.status.readable_token_secrets.clone();
        return;
    }
    let legacy = ListParams::default().fields("type=kubernetes.io/service-account-token");
    match Api::<Secret>::all(conn.client.clone())
        .list_metadata(&legacy)
        .await
    {
        Ok(list) => {
            report.token_secrets_scanned_at = Some(now);
            report.status.readable_token_secrets = list
                .items
                .iter()
                .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
                .collect();
        }
        Err(e) => report.other_problems.push(format!(
            "looking for long-lived ServiceAccount token Secrets: {}",
            error_text(&e)
        )),
    }
}

/// Renews the operator's own token in the member when a third of its
/// lifetime is left, or a forced refresh asks for it: a TokenRequest for the
/// identity the token belongs to, stored back into the credentials Secret.
/// The bootstrap credential is then no longer needed; if the operator is
/// down for longer than the token's lifetime, the member reports it
/// expired and how to bootstrap again.
pub async fn renew_credential(
    ctx: &MemberContext,
    fed: &MeshFederation,
    member: &Member,
    conn: &MemberConnection,
    now: Timestamp,
    prepared: &mut PreparedMember,
) {
    let Some(credential) = conn.credential.as_ref().filter(|c| c.renewable) else {
        return;
    };
    let refresh = super::remote_secrets::refresh_request(fed);
    let forced = refresh.is_some() && credential.renewed_for.as_deref() != refresh;
    if now < credential.claims.renew_at() && !forced {
        prepared.report.next_token_refresh = Some(credential.claims.renew_at());
        return;
    }
    let claims = &credential.claims;
    let lifetime = claims.lifetime().max(std::time::Duration::from_secs(600));
    let accounts = Api::<ServiceAccount>::namespaced(conn.client.clone(), &claims.namespace);
    let minted =
        super::remote_secrets::request_token(&accounts, &claims.service_account, lifetime, None)
            .await;
    let stored = match minted {
        Ok(token) => {
            ctx.connections
                .store_renewed(credential, &token.token, refresh)
                .await
        }
        Err(e) => Err(format!(
            "requesting a token for {}/{}: {}",
            claims.namespace,
            claims.service_account,
            error_text(&e)
        )),
    };
    match stored {
        Ok(()) => prepared.events.push(Event::new(
            Reason::CredentialsRenewed,
            format!(
                "member {}: stored a new token of {}/{} in credentials Secret {}",
                member.name, claims.namespace, claims.service_account, credential.secret
            ),
        )),
        Err(why) => prepared
            .report
            .other_problems
            .push(format!("renewing meshfed's own credentials: {why}")),
    }
}
