//! Which members a federation has, and had until meshfed cleaned them up,
//! with the credentials to reach each. Kept in a ConfigMap in the operator's
//! namespace, not in status: a lost or rewritten status must not orphan a
//! departed member's objects.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};

use super::record;
use crate::api::{MemberCredentials, MeshFederation};

/// Members by name, and how to reach them.
pub type Membership = BTreeMap<String, MemberCredentials>;

/// `meshfed-members-<federation>` in the operator's namespace.
pub fn record_name(federation: &str) -> String {
    format!("meshfed-members-{federation}")
}

/// The membership to record before a reconcile touches any member: every
/// member in the spec (with its current credentials), and every recorded
/// member that left and is not cleaned up yet.
pub fn with_spec(recorded: &Membership, fed: &MeshFederation) -> Membership {
    let mut next = recorded.clone();
    for m in &fed.spec.members {
        next.insert(m.name.clone(), m.credentials.clone());
    }
    next
}

/// Recorded members that are not in the spec any more.
pub fn departed<'a>(
    recorded: &'a Membership,
    fed: &'a MeshFederation,
) -> impl Iterator<Item = (&'a String, &'a MemberCredentials)> {
    recorded
        .iter()
        .filter(|(name, _)| fed.spec.member(name).is_none())
}

/// The membership as record data: credentials as JSON, by member.
fn record_data(membership: &Membership) -> BTreeMap<String, String> {
    membership
        .iter()
        .map(|(name, creds)| {
            (
                name.clone(),
                serde_json::to_string(creds).unwrap_or_default(),
            )
        })
        .collect()
}

/// The record as stored; `None` when there is none yet. Entries that cannot
/// be read are skipped (and dropped at the next write).
pub async fn load(
    client: &Client,
    namespace: &str,
    federation: &str,
) -> Result<Option<Membership>, kube::Error> {
    let record = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&record_name(federation))
        .await?;
    Ok(record.map(|r| {
        r.data
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, creds)| Some((name, serde_json::from_str(&creds).ok()?)))
            .collect()
    }))
}

/// Writes `membership` unless it is what was `recorded`.
pub async fn store(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
    recorded: &Membership,
    membership: &Membership,
) -> Result<(), kube::Error> {
    if recorded == membership {
        return Ok(());
    }
    let name = record_name(&fed.name_any());
    record::write(client, namespace, fed, &name, record_data(membership)).await
}

/// `meshfed-clusters-<federation>` in the operator's namespace: the cluster
/// (its `kube-system` UID) each member held, so that a claim changed in the
/// cluster behind meshfed's back is told from a real one.
pub fn clusters_record_name(federation: &str) -> String {
    format!("meshfed-clusters-{federation}")
}

/// Member name -> the cluster it held.
pub type HeldClusters = BTreeMap<String, String>;

/// The clusters on record (empty before the first is).
pub async fn load_clusters(
    client: &Client,
    namespace: &str,
    federation: &str,
) -> Result<HeldClusters, kube::Error> {
    let record = record::read(client, namespace, &clusters_record_name(federation)).await?;
    Ok(record.unwrap_or_default())
}

/// The clusters to record: `recorded`, for members still on the membership
/// record, updated with what members hold now (`(member, cluster)` of every
/// member whose claim was just held).
pub fn held_clusters<'a>(
    recorded: &HeldClusters,
    membership: &Membership,
    held_now: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> HeldClusters {
    let mut next: HeldClusters = recorded
        .iter()
        .filter(|(m, _)| membership.contains_key(*m))
        .map(|(m, c)| (m.clone(), c.clone()))
        .collect();
    for (member, cluster) in held_now {
        next.insert(member.to_string(), cluster.to_string());
    }
    next
}

/// Writes the clusters record when it changed.
pub async fn store_clusters(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
    recorded: &HeldClusters,
    next: &HeldClusters,
) -> Result<(), kube::Error> {
    if recorded == next {
        return Ok(());
    }
    let name = clusters_record_name(&fed.name_any());
    record::write(client, namespace, fed, &name, next.clone()).await
}

/// Deletes the record once every member is cleaned up.
pub async fn forget(client: &Client, namespace: &str, federation: &str) -> Result<(), kube::Error> {
    record::delete(client, namespace, &record_name(federation)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KubeconfigSecretRef, Member, MeshFederationSpec};

    #[test]
    fn the_clusters_held_follow_the_claims_and_the_membership() {
        let creds: MemberCredentials =
            serde_json::from_value(serde_json::json!({"local": {}})).unwrap();
        let membership = Membership::from([
            ("a".to_string(), creds.clone()),
            ("b".to_string(), creds.clone()),
        ]);
        let recorded = HeldClusters::from([
            ("a".to_string(), "uid-a".to_string()),
            ("gone".to_string(), "uid-g".to_string()),
        ]);
        let next = held_clusters(&recorded, &membership, [("b", "uid-b")]);
        assert_eq!(
            next,
            HeldClusters::from([
                ("a".to_string(), "uid-a".to_string()),
                ("b".to_string(), "uid-b".to_string()),
            ]),
            "kept while on the membership record; a cleaned-up member forgotten"
        );
        let moved = held_clusters(&next, &membership, [("a", "uid-a2")]);
        assert_eq!(moved["a"], "uid-a2", "credentials moved to another cluster");
    }

    fn creds(secret: &str) -> MemberCredentials {
        MemberCredentials {
            secret_ref: Some(KubeconfigSecretRef {
                name: secret.into(),
                key: None,
            }),
            local: None,
        }
    }

    fn fed(members: &[(&str, &str)]) -> MeshFederation {
        let mut f = MeshFederation::new(
            "prod",
            MeshFederationSpec {
                mesh_id: "mesh".into(),
                trust_domain: None,
                members: members
                    .iter()
                    .map(|(name, secret)| Member {
                        name: (*name).into(),
                        network: "n".into(),
                        credentials: creds(secret),
                        api_server: None,
                        control_plane_values: None,
                        east_west_gateway: None,
                    })
                    .collect(),
                ca: None,
                remote_secrets: None,
                control_plane: None,
                failover: None,
            },
        );
        f.metadata.uid = Some("uid".into());
        f
    }

    #[test]
    fn members_stay_recorded_until_cleaned_up() {
        let recorded =
            Membership::from([("a".into(), creds("a-old")), ("gone".into(), creds("g"))]);
        let f = fed(&[("a", "a-new"), ("b", "b")]);
        let next = with_spec(&recorded, &f);
        assert_eq!(next["a"], creds("a-new"), "current credentials win");
        assert_eq!(next["b"], creds("b"));
        assert_eq!(next["gone"], creds("g"), "kept until its cleanup succeeds");
        let gone: Vec<_> = departed(&next, &f).map(|(n, _)| n.as_str()).collect();
        assert_eq!(gone, ["gone"]);
    }

    #[test]
    fn the_record_round_trips_and_is_owned_by_the_federation() {
        let f = fed(&[("a", "a")]);
        let membership = with_spec(&Membership::new(), &f);
        let record = record::render_record(&f, &record_name("prod"), record_data(&membership));
        assert_eq!(
            record.metadata.name.as_deref(),
            Some("meshfed-members-prod")
        );
        let owner = &record.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("MeshFederation", "uid")
        );
        let back: Membership = record
            .data
            .unwrap()
            .into_iter()
            .map(|(n, c)| (n, serde_json::from_str(&c).unwrap()))
            .collect();
        assert_eq!(back, membership);
    }
}
