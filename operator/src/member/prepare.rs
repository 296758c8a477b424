//! A run's first step in a member: connect, claim its cluster, its network
//! label, the reader identity and `cacerts`; and what the remote-secret and
//! control-plane steps need to know about it.
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::identity::{self, Claim, claim_cluster};
use super::{MemberContext, PreparedMember, api_server_answered, cacerts, error_text};
use crate::api::{Member, MeshFederation};
use crate::apply::{Ownership, ensure};
use crate::connection::MemberConnection;
use crate::events::{Event, Reason};
use crate::fleet::ca::CaMaterial;
use crate::fleet::report::{Contact, MemberReport};
use crate::pki::IntermediatePolicy;
use crate::render::{ISTIO_NAMESPACE, keys, render_istio_namespace};
use crate::telemetry::RequestCount;

/// How to give meshfed a credential it may renew, for a member whose
/// Secret `secret` it may not write.
fn credentials_fix(fed: &MeshFederation, member: &Member, secret: &str) -> String {
    format!(
        "run `kubectl meshfed join {m} --kubeconfig <an admin kubeconfig of the member> --federation {f} --network <its network>` (it stores a token meshfed renews and points member {m} at it), or annotate Secret {secret} in the operator's namespace `{key}=true` and store a fresh token in it",
        m = member.name,
        f = fed.name_any(),
        key = keys::RENEW_CREDENTIALS
    )
}

/// A bound token meshfed may not renew, with a third of its lifetime left:
/// reported in the member's status and, once per token, as a Warning.
fn warn_of_expiring_credentials(
    fed: &MeshFederation,
    member: &Member,
    conn: &MemberConnection,
    now: Timestamp,
    prepared: &mut PreparedMember,
) {
    let Some(credential) = conn
        .credential
        .as_ref()
        .filter(|c| !c.renewable && now >= c.claims.renew_at())
    else {
        return;
    };
    let expires = Time(credential.claims.expires_at);
    let warned = fed
        .status
        .iter()
        .flat_map(|s| &s.members)
        .any(|m| m.name == member.name && m.credentials_expiring.as_ref() == Some(&expires));
    if !warned {
        prepared.events.push(Event::new(
            Reason::CredentialsExpiring,
            format!(
                "member {}: the token in credentials Secret {} expires at {} and meshfed may not renew it; {}",
                member.name,
                credential.secret,
                credential.claims.expires_at,
                credentials_fix(fed, member, &credential.secret)
            ),
        ));
    }
    prepared.report.status.credentials_expiring = Some(expires);
}

/// Connects to `member` and makes its network label, reader identity and
/// `cacerts` right. Never fails: what went wrong lands in the report.
pub async fn prepare_member(ctx: &MemberContext, step: Step<'_>) -> PreparedMember {
    let Step {
        fed,
        member,
        now,
        previous,
        ..
    } = step;
    let mut prepared = PreparedMember {
        name: member.name.clone(),
        connection: None,
        endpoint: Err("credentials not usable".into()),
        reader: Err(format!("member {} not reached", member.name)),
        request_baseline: RequestCount::default(),
        multicluster_secrets: BTreeMap::new(),
        recorded_kinds: Default::default(),
        report: MemberReport::new(&member.name),
        events: Vec::new(),
    };
    prepared.report.status.credentials = Some(member.credentials.clone());
    let conn = match ctx.connections.connect(&member.credentials).await {
        Ok(c) => c,
        Err(e) => {
            prepared.report.unreachable = Some(e.to_string());
            prepared.report.contact = Contact::NotTried;
            return prepared;
        }
    };
    if let Some(expired) = conn
        .credential
        .as_ref()
        .filter(|c| c.claims.expires_at <= now)
    {
        let what = format!(
            "the token in credentials Secret {} expired at {}",
            expired.secret, expired.claims.expires_at
        );
        prepared.report.unreachable = Some(if expired.renewable {
            format!(
                "{what}: meshfed renews it only while it runs, and it was stopped past the token's lifetime; bootstrap it again: kubectl meshfed join {} --kubeconfig <an admin kubeconfig of the member> --federation {}",
                member.name,
                fed.name_any()
            )
        } else {
            format!(
                "{what} and meshfed may not renew it; {}",
                credentials_fix(fed, member, &expired.secret)
            )
        });
        prepared.report.contact = Contact::NotTried;
        return prepared;
    }
    warn_of_expiring_credentials(fed, member, &conn, now, &mut prepared);
    prepared.request_baseline = conn.requests.snapshot();
    prepared.endpoint = conn.peer_endpoint(member);
    if let Err(e) = &prepared.endpoint {
        prepared.report.other_problems.push(e.clone());
    }
    let own = ctx.connections.own_cluster_id().await;
    let refused = own
        .as_deref()
        .filter(|_| !fed.spec.allows_operator_cluster());
    let work = sync_member(&conn, &ctx.client, &step, refused, &mut prepared);
    let result = tokio::time::timeout(ctx.settings.member_timeout, work).await;
    prepared.report.status.operator_cluster = member.credentials.local.is_some()
        || (own.is_some() && own == prepared.report.status.cluster_id);
    match result {
        Ok(Ok(())) if prepared.report.claim_problem.is_some() => {
            // Reached, but its cluster is another member's (or the
            // operator's, not allowed): nothing is written there, and no
            // peer is wired to it.
            prepared.report.status.reachable = true;
            prepared.endpoint = Err(format!(
                "member {}'s cluster is not its own to use",
                member.name
            ));
        }
        Ok(Ok(())) => {
            prepared.report.status.reachable = true;
            identity::find_token_secrets(&conn, previous, now, &mut prepared.report).await;
            identity::renew_credential(ctx, fed, member, &conn, now, &mut prepared).await;
            prepared.connection = Some(conn);
        }
        Ok(Err(e)) => {
            if !api_server_answered(&e) {
                prepared.report.contact = Contact::NoAnswer;
            }
            prepared.report.unreachable = Some(error_text(&e));
        }
        Err(_) => {
            prepared.report.contact = Contact::NoAnswer;
            prepared.report.unreachable = Some(format!(
                "no answer from {} within {:?}: check that the operator's cluster reaches that address (firewall, network policy, VPN, a private endpoint) and that the API server is up; it is the server in the member's kubeconfig (kubectl meshfed join --server sets another)",
                conn.server, ctx.settings.member_timeout
            ))
        }
    }
    prepared
}

/// What one member's first step works from.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub fed: &'a MeshFederation,
    pub member: &'a Member,
    pub ca: Result<&'a CaMaterial, &'a String>,
    pub policy: &'a IntermediatePolicy,
    pub now: Timestamp,
    /// The cluster the member held, on record (see [`claim_cluster`]).
    pub held_cluster: Option<&'a str>,
    /// The member's last report, if this process has one.
    pub previous: Option<&'a MemberReport>,
}

async fn sync_member(
    conn: &MemberConnection,
    operator: &kube::Client,
    step: &Step<'_>,
    refused_cluster: Option<&str>,
    prepared: &mut PreparedMember,
) -> Result<(), kube::Error> {
    let Step {
        fed,
        member,
        ca,
        policy,
        now,
        held_cluster,
        ..
    } = *step;
    let federation = fed.name_any();
    let client = conn.client.clone();
    let version = client.apiserver_version().await?;
    prepared.report.status.kubernetes_version = Some(version.git_version);

    let members = fed.spec.members.iter().map(|m| m.name.clone()).collect();
    match claim_cluster(
        &client,
        operator,
        &federation,
        member,
        &members,
        held_cluster,
        refused_cluster,
    )
    .await?
    {
        Claim::Held {
            cluster_id,
            kinds,
            repaired,
        } => {
            if let Some(what) = repaired {
                prepared.events.push(Event::new(
 Reason::ClaimRepaired,
                    format!(
                        "member {}: {ISTIO_NAMESPACE}/meshfed-cluster-claim in cluster {cluster_id} had been changed to name {what}, but this member holds the cluster (recorded in the operator's namespace); it was written back. Whoever can write ConfigMaps in {ISTIO_NAMESPACE} there did this",
                        member.name
                    ),
                ));
            }
            prepared.report.status.cluster_id = Some(cluster_id);
            prepared.recorded_kinds = kinds;
        }
        Claim::Refused { cluster_id, why } => {
            prepared.report.status.cluster_id = Some(cluster_id);
            prepared.report.claim_problem = Some(why);
            return Ok(());
        }
    }

    ensure(
        &Api::<Namespace>::all(client.clone()),
        &render_istio_namespace(&member.network),
        &federation,
        Ownership::Shared,
    )
    .await?;

    identity::ensure_reader(&client, &federation, prepared).await?;

    cacerts::sync(&client, &federation, member, ca, policy, now, prepared).await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), ISTIO_NAMESPACE);

    let multicluster = secrets
        .list(&ListParams::default().labels(&format!("{}=true", keys::MULTICLUSTER)))
        .await?;
    prepared.multicluster_secrets = multicluster
        .items
        .into_iter()
        .map(|s| (s.name_any(), s))
        .collect();
    Ok(())
}
