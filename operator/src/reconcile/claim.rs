//! Claiming a member's cluster before anything is written into it.
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use super::apply::{Ownership, ensure};
use crate::render::{
    CLAIM, ClaimDecision, ClusterClaim, ISTIO_NAMESPACE, judge_claim, kinds_text, read_claim,
    render_claim, render_istio_namespace,
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
/// has the member it names). Nothing but the claim itself (and
/// `istio-system` with its network label, for a cluster nobody holds) is
/// written before the claim is settled.
pub async fn claim_cluster(
    client: &Client,
    operator: &Client,
    federation: &str,
    member: &crate::api::Member,
    members: &BTreeSet<String>,
    held_cluster: Option<&str>,
) -> Result<Claim, kube::Error> {
    let mut me = ClusterClaim {
        federation: federation.into(),
        member: member.name.clone(),
        cluster_id: cluster_id(client).await?,
        kinds: BTreeSet::new(),
    };
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
                records
                    .create(&PostParams::default(), &render_claim(&me))
                    .await
            }
            ClaimDecision::TakeOver => {
                replace_claim(&records, &me, live.as_ref().map(|(r, _)| r)).await
            }
        };
        match written {
            Ok(_) => return Ok(held(&me, repaired)),
            Err(kube::Error::Api(e)) if e.code == 409 => live = recorded(&records).await?,
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
    records
        .replace(CLAIM, &PostParams::default(), &record)
        .await
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
    Api::<ConfigMap>::namespaced(client.clone(), ISTIO_NAMESPACE)
        .patch(CLAIM, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The claim recorded in the cluster behind `client`, if it can be read.
pub async fn recorded_claim(client: &Client) -> Result<Option<ClusterClaim>, kube::Error> {
    let records = Api::<ConfigMap>::namespaced(client.clone(), ISTIO_NAMESPACE);
    Ok(recorded(&records).await?.and_then(|(_, claim)| claim))
}
