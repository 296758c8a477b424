//! Which members a federation has, and had until meshfed cleaned them up,
//! with the credentials to reach each. Kept in a ConfigMap in the operator's
//! namespace, not in status: a lost or rewritten status must not orphan a
//! departed member's objects.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client, ResourceExt};

use super::record;
use crate::api::{MemberCredentials, MeshFederation};

/// Members by name, and how to reach them.
pub type Members = BTreeMap<String, MemberCredentials>;

/// The members on record, and the latest departure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    /// Every member in the spec, and every one that left and is not cleaned
    /// up yet.
    pub members: Members,
    pub departure: Departure,
}

/// The latest departure, for the reader tokens a departed member may hold:
/// each member minted one token for all its peers, so the one that left
/// holds a copy of every peer's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Departure {
    /// The generation of the first spec without the member that left last.
    /// Every reader token minted from an older spec may be in its hands:
    /// each member replaces its token and revokes the older ones at once.
    pub generation: Option<i64>,
    /// The departed members this was noted for (until cleaned up), so that
    /// one departure moves the generation once.
    noted: BTreeSet<String>,
}

// Record keys that cannot be member names (those are DNS labels: no dots).
const DEPARTURE_GENERATION: &str = "departure.generation";
const DEPARTURE_NOTED: &str = "departure.noted";

/// `meshfed-members-<federation>` in the operator's namespace.
pub fn record_name(federation: &str) -> String {
    format!("meshfed-members-{federation}")
}

/// Suffix of the record entry that keeps a member's previous credentials
/// when its credentials change: its previous cluster is cleaned up like a
/// departed member's (unless it is the same cluster). Member names are DNS
/// labels, so no member is called that.
const PREVIOUS: &str = ".previous";

/// The member whose previous credentials record entry `name` is.
pub fn previous_of(name: &str) -> Option<&str> {
    name.split_once(PREVIOUS).map(|(member, _)| member)
}

/// The membership to record before a reconcile touches any member: every
/// member in the spec (with its current credentials), every recorded
/// member that left and is not cleaned up yet, and the previous
/// credentials of every member whose credentials changed (see
/// [`previous_of`]). A member that left since the last record, or moved,
/// moves the departure to this generation.
pub fn with_spec(recorded: &Membership, fed: &MeshFederation) -> Membership {
    let mut members = recorded.members.clone();
    for m in &fed.spec.members {
        if let Some(before) = members.insert(m.name.clone(), m.credentials.clone())
            && before != m.credentials
        {
            let free = (0..)
                .map(|i| match i {
                    0 => format!("{}{PREVIOUS}", m.name),
                    i => format!("{}{PREVIOUS}.{i}", m.name),
                })
                .find(|k| !members.contains_key(k))
                .expect("a free name");
            members.insert(free, before);
        }
    }
    let gone: BTreeSet<String> = members
        .keys()
        .filter(|name| fed.spec.member(name).is_none())
        .cloned()
        .collect();
    let new = gone.difference(&recorded.departure.noted).next().is_some();
    Membership {
        members,
        departure: Departure {
            generation: match new {
                true => fed.metadata.generation.or(recorded.departure.generation),
                false => recorded.departure.generation,
            },
            noted: gone,
        },
    }
}

/// Recorded members that are not in the spec any more.
pub fn departed<'a>(
    recorded: &'a Membership,
    fed: &'a MeshFederation,
) -> impl Iterator<Item = (&'a String, &'a MemberCredentials)> {
    recorded
        .members
        .iter()
        .filter(|(name, _)| fed.spec.member(name).is_none())
}

/// The membership as record data: credentials as JSON, by member, and the
/// departure under keys no member can have.
fn record_data(membership: &Membership) -> BTreeMap<String, String> {
    let departure = &membership.departure;
    let noted = departure
        .noted
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    membership
        .members
        .iter()
        .map(|(name, creds)| {
            (
                name.clone(),
                serde_json::to_string(creds).unwrap_or_default(),
            )
        })
        .chain(
            departure
                .generation
                .map(|g| (DEPARTURE_GENERATION.to_string(), g.to_string())),
        )
        .chain((!noted.is_empty()).then(|| (DEPARTURE_NOTED.to_string(), noted)))
        .collect()
}

fn from_record_data(data: BTreeMap<String, String>) -> Membership {
    let mut membership = Membership::default();
    for (key, value) in data {
        match key.as_str() {
            DEPARTURE_GENERATION => membership.departure.generation = value.parse().ok(),
            DEPARTURE_NOTED => {
                membership.departure.noted = value
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect()
            }
            // Entries that cannot be read are skipped (and dropped at the
            // next write).
            _ => {
                if let Ok(creds) = serde_json::from_str(&value) {
                    membership.members.insert(key, creds);
                }
            }
        }
    }
    membership
}

/// The record as stored; `None` when there is none yet.
pub async fn load(
    client: &Client,
    namespace: &str,
    federation: &str,
) -> Result<Option<Membership>, kube::Error> {
    let record = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&record_name(federation))
        .await?;
    Ok(record.map(|r| from_record_data(r.data.unwrap_or_default())))
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
    membership: &Members,
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
        let membership = Members::from([
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
                allow_peers_to_read_operator_secrets: None,
            },
        );
        f.metadata.uid = Some("uid".into());
        f
    }

    #[test]
    fn members_stay_recorded_until_cleaned_up() {
        let recorded = Membership {
            members: Members::from([("a".into(), creds("a-old")), ("gone".into(), creds("g"))]),
            ..Membership::default()
        };
        let f = fed(&[("a", "a-new"), ("b", "b")]);
        let next = with_spec(&recorded, &f);
        assert_eq!(next.members["a"], creds("a-new"), "current credentials win");
        assert_eq!(next.members["b"], creds("b"));
        assert_eq!(
            next.members["gone"],
            creds("g"),
            "kept until its cleanup succeeds"
        );
        let gone: Vec<_> = departed(&next, &f).map(|(n, _)| n.as_str()).collect();
        assert_eq!(gone, ["a.previous", "gone"], "a's previous cluster too");
    }

    #[test]
    fn changed_credentials_keep_the_previous_ones_for_cleanup() {
        let recorded = with_spec(&Membership::default(), &fed(&[("a", "a"), ("b", "b")]));
        let mut moved = fed(&[("a", "a-elsewhere"), ("b", "b")]);
        moved.metadata.generation = Some(2);
        let next = with_spec(&recorded, &moved);
        assert_eq!(next.members["a"], creds("a-elsewhere"));
        assert_eq!(next.members["a.previous"], creds("a"));
        assert_eq!(previous_of("a.previous"), Some("a"));
        assert_eq!(previous_of("a.previous.1"), Some("a"));
        assert_eq!(previous_of("a"), None);
        let gone: Vec<_> = departed(&next, &moved).map(|(n, _)| n.as_str()).collect();
        assert_eq!(gone, ["a.previous"], "cleaned up like a departed member");
        assert_eq!(
            next.departure.generation,
            Some(2),
            "its old cluster held tokens"
        );
        assert_eq!(with_spec(&next, &moved), next, "noted once");
        let mut again = fed(&[("a", "a-third"), ("b", "b")]);
        again.metadata.generation = Some(3);
        let third = with_spec(&next, &again);
        assert_eq!(third.members["a.previous"], creds("a"));
        assert_eq!(third.members["a.previous.1"], creds("a-elsewhere"));
    }

    #[test]
    fn a_departure_moves_the_token_generation_once() {
        let mut f = fed(&[("a", "a"), ("b", "b"), ("c", "c")]);
        f.metadata.generation = Some(3);
        let first = with_spec(&Membership::default(), &f);
        assert_eq!(first.departure.generation, None, "nobody left");

        f.spec.members.retain(|m| m.name != "c");
        f.metadata.generation = Some(4);
        let left = with_spec(&first, &f);
        assert_eq!(left.departure.generation, Some(4), "c left at generation 4");

        f.metadata.generation = Some(5);
        let later = with_spec(&left, &f);
        assert_eq!(
            later.departure.generation,
            Some(4),
            "still being cleaned up: the same departure, not a new one"
        );
        let mut cleaned = later.clone();
        cleaned.members.remove("c");
        f.metadata.generation = Some(6);
        let after = with_spec(&cleaned, &f);
        assert_eq!(after.departure.generation, Some(4), "kept after cleanup");
        assert!(after.departure.noted.is_empty());

        f.spec.members.retain(|m| m.name != "b");
        f.metadata.generation = Some(7);
        assert_eq!(
            with_spec(&after, &f).departure.generation,
            Some(7),
            "b left"
        );
    }

    #[test]
    fn the_record_round_trips_and_is_owned_by_the_federation() {
        let mut f = fed(&[("a", "a"), ("b", "b")]);
        let both = with_spec(&Membership::default(), &f);
        f.spec.members.retain(|m| m.name != "b");
        f.metadata.generation = Some(9);
        let membership = with_spec(&both, &f);
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
        let back = from_record_data(record.data.unwrap());
        assert_eq!(back, membership);
        assert_eq!(back.departure.generation, Some(9));
    }
}
