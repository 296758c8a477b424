//! Which member of which federation a cluster belongs to, recorded in the
//! cluster itself. A cluster has one `istio-system/cacerts`, so it can serve
//! one member of one federation; the record settles who came first.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::GroupVersionKind;

use super::{ISTIO_NAMESPACE, managed_meta};

/// The ConfigMap in a member's istio-system that records its owner.
pub const CLAIM: &str = "meshfed-cluster-claim";

/// A cluster's owner: one member of one federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterClaim {
    pub federation: String,
    pub member: String,
    /// The cluster's identity: the UID of its `kube-system` namespace.
    pub cluster_id: String,
    /// Every kind meshfed has applied in the cluster ([`kind_key`]s), so that
    /// pruning finds objects of kinds the current render no longer has.
    pub kinds: BTreeSet<String>,
}

/// How a kind is recorded: `group/version/Kind` (core group empty).
pub fn kind_key(gvk: &GroupVersionKind) -> String {
    format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind)
}

/// `kinds` followed by the recorded kinds (kind keys) it lacks, never CRDs:
/// pruning Istio's would delete every Istio resource.
pub fn with_recorded_kinds(
    mut kinds: Vec<GroupVersionKind>,
    recorded: &BTreeSet<String>,
) -> Vec<GroupVersionKind> {
    for gvk in recorded.iter().filter_map(|k| parse_kind_key(k)) {
        if gvk.kind != "CustomResourceDefinition" && !kinds.contains(&gvk) {
            kinds.push(gvk);
        }
    }
    kinds
}

/// The kind a [`kind_key`] names.
pub fn parse_kind_key(key: &str) -> Option<GroupVersionKind> {
    let mut parts = key.split('/');
    let (group, version, kind) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !version.is_empty() && !kind.is_empty())
        .then(|| GroupVersionKind::gvk(group, version, kind))
}

/// What to do about a cluster's claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Already ours.
    Hold,
    /// Nobody holds it: create the record.
    Create,
    /// Held by a member of this federation that left the spec (a member
    /// renamed on the same cluster): take it over.
    TakeOver,
    /// Another member or federation holds it; nothing may be written.
    Refuse(String),
}

/// The record for `claim`.
pub fn render_claim(claim: &ClusterClaim) -> ConfigMap {
    let mut data = BTreeMap::from([
        ("federation".into(), claim.federation.clone()),
        ("member".into(), claim.member.clone()),
        ("clusterID".into(), claim.cluster_id.clone()),
    ]);
    if !claim.kinds.is_empty() {
        data.insert("kinds".into(), kinds_text(&claim.kinds));
    }
    ConfigMap {
        metadata: managed_meta(&claim.federation, CLAIM, Some(ISTIO_NAMESPACE)),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The `kinds` entry of a record: one kind key a line.
pub fn kinds_text(kinds: &BTreeSet<String>) -> String {
    kinds.iter().map(|k| format!("{k}\n")).collect()
}

/// The claim a record holds, if it is one meshfed wrote.
pub fn read_claim(record: &ConfigMap) -> Option<ClusterClaim> {
    let data = record.data.as_ref()?;
    Some(ClusterClaim {
        federation: data.get("federation")?.clone(),
        member: data.get("member")?.clone(),
        cluster_id: data.get("clusterID").cloned().unwrap_or_default(),
        kinds: data
            .get("kinds")
            .map(|k| {
                k.lines()
                    .filter(|l| parse_kind_key(l).is_some())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Decides whether `me` may have the cluster recorded by `live` (`None`: no
/// record; `Some(None)`: a record meshfed cannot read). `members` are the
/// names in this federation's spec.
pub fn judge_claim(
    live: Option<Option<&ClusterClaim>>,
    me: &ClusterClaim,
    members: &BTreeSet<String>,
) -> ClaimDecision {
    let owner = match live {
        None => return ClaimDecision::Create,
        Some(None) => {
            return ClaimDecision::Refuse(format!(
                "cluster {} has an {ISTIO_NAMESPACE}/{CLAIM} meshfed cannot read; delete it if no federation uses this cluster",
                me.cluster_id
            ));
        }
        Some(Some(owner)) => owner,
    };
    if owner.federation == me.federation && owner.member == me.member {
        return ClaimDecision::Hold;
    }
    if owner.federation == me.federation && !members.contains(&owner.member) {
        return ClaimDecision::TakeOver;
    }
    ClaimDecision::Refuse(format!(
        "cluster {} already belongs to member {} of federation {} ({ISTIO_NAMESPACE}/{CLAIM}); a cluster has one {ISTIO_NAMESPACE}/cacerts, so it can be one member of one federation. Remove member {} or point its credentials at another cluster",
        me.cluster_id, owner.member, owner.federation, me.member
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::is_ours;

    fn claim(federation: &str, member: &str) -> ClusterClaim {
        ClusterClaim {
            federation: federation.into(),
            member: member.into(),
            cluster_id: "uid-1".into(),
            kinds: BTreeSet::new(),
        }
    }

    fn spec(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_record_round_trips_and_is_labelled_for_its_federation() {
        let c = claim("prod", "east");
        let record = render_claim(&c);
        assert_eq!(record.metadata.name.as_deref(), Some(CLAIM));
        assert_eq!(record.metadata.namespace.as_deref(), Some("istio-system"));
        assert!(is_ours(&record.metadata, "prod"));
        assert!(!is_ours(&record.metadata, "staging"));
        assert_eq!(read_claim(&record), Some(c));
        assert_eq!(read_claim(&ConfigMap::default()), None);
    }

    #[test]
    fn recorded_kinds_round_trip_and_junk_is_dropped() {
        let hpa = GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler");
        let cm = GroupVersionKind::gvk("", "v1", "ConfigMap");
        assert_eq!(parse_kind_key(&kind_key(&hpa)), Some(hpa.clone()));
        assert_eq!(parse_kind_key(&kind_key(&cm)), Some(cm.clone()));
        for junk in ["", "v1", "a/b", "a/b/c/d", "//Kind", "g/v/"] {
            assert_eq!(parse_kind_key(junk), None, "{junk:?}");
        }
        let mut c = claim("prod", "east");
        c.kinds = [kind_key(&hpa), kind_key(&cm)].into();
        let mut record = render_claim(&c);
        assert_eq!(read_claim(&record), Some(c.clone()));
        record
            .data
            .as_mut()
            .unwrap()
            .get_mut("kinds")
            .unwrap()
            .push_str("not a kind\n");
        assert_eq!(read_claim(&record).unwrap().kinds, c.kinds);
    }

    #[test]
    fn an_unclaimed_cluster_is_claimed_and_an_own_claim_held() {
        let me = claim("prod", "east");
        assert_eq!(
            judge_claim(None, &me, &spec(&["east"])),
            ClaimDecision::Create
        );
        assert_eq!(
            judge_claim(Some(Some(&me)), &me, &spec(&["east"])),
            ClaimDecision::Hold
        );
    }

    #[test]
    fn a_renamed_member_takes_over_from_its_old_name() {
        let old = claim("prod", "cluster-2");
        let me = claim("prod", "east");
        assert_eq!(
            judge_claim(Some(Some(&old)), &me, &spec(&["east", "west"])),
            ClaimDecision::TakeOver
        );
    }

    #[test]
    fn a_second_member_or_federation_is_refused_with_the_owner_named() {
        let owner = claim("prod", "east");
        for me in [claim("prod", "dup"), claim("staging", "east")] {
            let members = spec(&["east", "dup"]);
            let ClaimDecision::Refuse(why) = judge_claim(Some(Some(&owner)), &me, &members) else {
                panic!("{me:?} was not refused");
            };
            assert!(
                why.contains("uid-1") && why.contains("member east of federation prod"),
                "{why}"
            );
            assert!(
                why.contains(&format!("Remove member {}", me.member)),
                "{why}"
            );
        }
        assert!(matches!(
            judge_claim(Some(None), &owner, &spec(&["east"])),
            ClaimDecision::Refuse(_)
        ));
    }
}
