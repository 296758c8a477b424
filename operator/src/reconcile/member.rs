//! Per member, the objects that depend only on that member: the network label,
//! the reader identity and `cacerts`. Also collects what the remote-secret
//! step needs to know about the member.
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::apply::{Applied, Ownership, ensure, write};
use super::claim::{Claim, claim_cluster};
use super::control_plane::{ControlPlaneReport, MemberCluster, sync_control_plane};
use super::root::CaMaterial;
use super::status::MemberReport;
use super::upgrade::MemberPlan;
use super::{Context, Event};
use crate::api::{CertificateStatus, Member, MeshFederation};
use crate::members::MemberConnection;
use crate::pki::{self, CacertsBundle, IntermediatePolicy, ReissueReason, RootCa};
use crate::render::{
    CACERTS, ISTIO_NAMESPACE, PeerEndpoint, TokenSubject, cacerts_bundle, is_ours, keys,
    render_cacerts, render_istio_namespace, render_reader_identity,
};
use crate::telemetry::RequestCount;

/// A member after the per-member step.
pub struct PreparedMember {
    pub name: String,
    /// Set when the member's API server answered.
    pub connection: Option<MemberConnection>,
    /// Where peers reach it (known even when it is down).
    pub endpoint: Result<PeerEndpoint, String>,
    /// Whom its peers' tokens are minted for; an error when meshfed may not
    /// mint tokens there (not reached, or a reader meshfed did not create).
    pub reader: Result<TokenSubject, String>,
    /// The member's request counter when this reconcile started with it.
    pub request_baseline: RequestCount,
    /// The kinds meshfed recorded applying in its cluster (its claim).
    pub recorded_kinds: std::collections::BTreeSet<String>,
    /// Every `istio/multiCluster` Secret in its istio-system, by name.
    pub multicluster_secrets: BTreeMap<String, Secret>,
    pub report: MemberReport,
    pub events: Vec<Event>,
}

/// Connects to `member` and makes its network label, reader identity and
/// `cacerts` right. Never fails: what went wrong lands in the report.
pub async fn prepare_member(
    ctx: &Context,
    fed: &MeshFederation,
    member: &Member,
    ca: Result<&CaMaterial, &String>,
    policy: &IntermediatePolicy,
    now: Timestamp,
    held_cluster: Option<&str>,
) -> PreparedMember {
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
    let conn = match ctx.members.connect(&member.credentials).await {
        Ok(c) => c,
        Err(e) => {
            prepared.report.unreachable = Some(e.to_string());
            return prepared;
        }
    };
    if let Some(expired) = conn
        .credential
        .as_ref()
        .filter(|c| c.claims.expires_at <= now)
    {
        prepared.report.unreachable = Some(format!(
            "the token in credentials Secret {} expired at {} (meshfed renews it only while it runs); bootstrap it again: kubectl meshfed join {} --kubeconfig <an admin kubeconfig of the member> --federation {}",
            expired.secret,
            expired.claims.expires_at,
            member.name,
            fed.name_any()
        ));
        return prepared;
    }
    prepared.request_baseline = conn.requests.snapshot();
    prepared.endpoint = conn.peer_endpoint(member);
    if let Err(e) = &prepared.endpoint {
        prepared.report.other_problems.push(e.clone());
    }
    let input = SyncInput {
        fed,
        member,
        ca,
        policy,
        now,
        operator: &ctx.client,
        held_cluster,
    };
    let work = sync_member(&conn, &input, &mut prepared);
    match tokio::time::timeout(ctx.settings.member_timeout, work).await {
        Ok(Ok(())) if prepared.report.claim_problem.is_some() => {
            // Reached, but its cluster is another member's: nothing is
            // written there, and no peer is wired to it.
            prepared.report.status.reachable = true;
            prepared.endpoint = Err(format!(
                "member {}'s cluster belongs to another member",
                member.name
            ));
        }
        Ok(Ok(())) => {
            prepared.report.status.reachable = true;
            let own = ctx.members.own_cluster_id().await;
            prepared.report.status.operator_cluster = member.credentials.local.is_some()
                || (own.is_some() && own == prepared.report.status.cluster_id);
            let previous = ctx.workers.last_report(&fed.name_any(), &member.name);
            find_token_secrets(&conn, previous.as_ref(), now, &mut prepared.report).await;
            renew_credential(ctx, fed, member, &conn, now, &mut prepared).await;
            prepared.connection = Some(conn);
        }
        Ok(Err(e)) => {
            prepared.report.no_answer = !matches!(e, kube::Error::Api(_));
            prepared.report.unreachable = Some(unreachable_reason(&e));
        }
        Err(_) => {
            prepared.report.no_answer = true;
            prepared.report.unreachable = Some(format!(
                "no answer within {:?}",
                ctx.settings.member_timeout
            ))
        }
    }
    prepared
}

/// How often a member's long-lived ServiceAccount token Secrets are looked for.
const TOKEN_SECRET_SCAN: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

/// Users' long-lived ServiceAccount token Secrets in the member: meshfed
/// cannot remove them, but every peer's reader token may read them, so they
/// are reported. Looked for every ten minutes (metadata only); in between,
/// the last finding stands.
async fn find_token_secrets(
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
            unreachable_reason(&e)
        )),
    }
}

/// Renews the operator's own token in the member when a third of its
/// lifetime is left, or a forced refresh asks for it: a TokenRequest for the
/// identity the token belongs to, stored back into the credentials Secret.
/// The bootstrap credential is then no longer needed; if the operator is
/// down for longer than the token's lifetime, the member reports it
/// expired and how to bootstrap again.
async fn renew_credential(
    ctx: &Context,
    fed: &MeshFederation,
    member: &Member,
    conn: &MemberConnection,
    now: Timestamp,
    prepared: &mut PreparedMember,
) {
    let Some(credential) = conn.credential.as_ref().filter(|c| c.renewable) else {
        return;
    };
    let refresh = super::worker::refresh_request(fed);
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
            ctx.members
                .store_renewed(credential, &token.token, refresh)
                .await
        }
        Err(e) => Err(format!(
            "requesting a token for {}/{}: {}",
            claims.namespace,
            claims.service_account,
            unreachable_reason(&e)
        )),
    };
    match stored {
        Ok(()) => prepared.events.push(Event::normal(
            "CredentialsRenewed",
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

/// What to do with a member's `cacerts`.
enum CacertsPlan<'a> {
    Keep,
    /// Only `root-cert.pem` changes.
    Rebundle,
    Issue(&'a RootCa, pki::ReissueReason),
}

/// `existing` with `trust_bundle` as its `root-cert.pem`.
fn rebundled(existing: &CacertsBundle, trust_bundle: &str) -> Option<CacertsBundle> {
    Some(CacertsBundle {
        root_cert_pem: trust_bundle.to_string(),
        ..existing.clone()
    })
}

/// Whether the member reached the CA target: its intermediate chains to the
/// target's signing root (a bundle alone is not a re-issue), and the roots
/// its istiod distributes to workloads (its `istio-ca-root-cert` ConfigMap
/// in `istio-system`) are the target's, so that what istiod serves, not
/// just what the Secret holds, has changed. A member without that ConfigMap
/// has no istiod distributing roots; its `cacerts` is all there is.
async fn check_reached(
    client: &kube::Client,
    ca: &CaMaterial,
    current: &CacertsBundle,
    prepared: &mut PreparedMember,
) -> Result<(), kube::Error> {
    prepared.report.ca_reached = None;
    if !pki::chains_to(current, &ca.signer_pem) {
        let why = ca.signing.as_ref().err().map_or("", String::as_str);
        prepared.report.certificate_problem = Some(format!(
            "its intermediate does not chain to the signing root of the rotation's phase, and none can be issued: {why}"
        ));
        return Ok(());
    }
    let distributed = Api::<ConfigMap>::namespaced(client.clone(), ISTIO_NAMESPACE)
        .get_opt(ROOT_CERT_CONFIGMAP)
        .await?
        .and_then(|m| m.data?.get("root-cert.pem").cloned());
    let wanted = pki::certificate_set(&ca.trust_bundle_pem);
    match distributed {
        Some(pem) if pki::certificate_set(&pem) != wanted => {
            // Not a problem: istiod reloads its CA within seconds.
            prepared.report.ca_reached = None;
        }
        _ => prepared.report.ca_reached = Some(ca.target_id.clone()),
    }
    Ok(())
}

/// The ConfigMap istiod writes its root bundle into, in every namespace.
const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";

/// Istio's control plane in a reachable member (when the spec asks for
/// one). A first install applies dozens of objects, so it gets a longer
/// budget than a member's basic step, and its failures are control-plane
/// problems, never unreachability. It runs after the remote secrets, so
/// that a peer withdrawn or restored by failover is not held up by it.
pub async fn sync_member_control_plane(
    ctx: &Context,
    fed: &MeshFederation,
    member: &Member,
    plan: &MemberPlan,
    prepared: &mut PreparedMember,
) {
    let Some(conn) = prepared.connection.clone() else {
        return;
    };
    if fed.spec.control_plane.is_none() {
        return;
    }
    let conn = &conn;
    let budget = ctx.settings.member_timeout * 6;
    let certificates_ready = prepared.report.certificate_problem.is_none();
    let version = prepared
        .report
        .status
        .kubernetes_version
        .clone()
        .unwrap_or_default();
    let federation = fed.name_any();
    let cluster = prepared
        .report
        .status
        .cluster_id
        .clone()
        .unwrap_or_default();
    let target = MemberCluster {
        client: &conn.client,
        id: &cluster,
        kube_version: &version,
        recorded_kinds: prepared.recorded_kinds.clone(),
    };
    let work = sync_control_plane(
        ctx,
        &target,
        &federation,
        &fed.spec,
        member,
        plan,
        certificates_ready,
    );
    let cp = match tokio::time::timeout(budget, work).await {
        Ok(Ok(cp)) => cp,
        failed => {
            let why = match failed {
                Ok(Err(e)) => unreachable_reason(&e),
                _ => format!("not done within {budget:?}; continuing next reconcile"),
            };
            ControlPlaneReport {
                problem: Some(format!("applying Istio: {why}")),
                ..Default::default()
            }
        }
    };
    let status = &mut prepared.report.status;
    status.istio_version = cp.istio_version;
    status.control_plane_ready = Some(cp.ready);
    status.gateway_address = cp.gateway.as_ref().and_then(|g| g.address.clone());
    status.revisions = cp
        .installed
        .as_ref()
        .map(super::upgrade::revision_status)
        .unwrap_or_default();
    status.tags_revision = cp
        .installed
        .as_ref()
        .and_then(|i| i.tags_at.as_deref())
        .map(|r| super::upgrade::display(r).to_string());
    prepared.report.installed = cp.installed;
    prepared.report.control_plane_problem = cp.problem;
    prepared.report.gateway_expected = cp.gateway.is_some();
    prepared.report.gateway_problem = cp.gateway.and_then(|g| g.problem);
    if let Some(problem) = cp.ingress.and_then(|g| g.problem) {
        prepared
            .report
            .other_problems
            .push(format!("ingress gateway: {problem}"));
    }
}

/// Short, stable text for an API error (no bodies, no secret material).
pub fn unreachable_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("API error {}: {}", s.code, s.message),
        other => {
            let text = other.to_string();
            text.split(": ").last().unwrap_or(&text).to_string()
        }
    }
}

/// What one member's sync works from.
#[derive(Clone, Copy)]
struct SyncInput<'a> {
    fed: &'a MeshFederation,
    member: &'a Member,
    ca: Result<&'a CaMaterial, &'a String>,
    policy: &'a IntermediatePolicy,
    now: Timestamp,
    /// The operator's own cluster.
    operator: &'a kube::Client,
    /// The cluster the member held, on record (see [`claim_cluster`]).
    held_cluster: Option<&'a str>,
}

async fn sync_member(
    conn: &MemberConnection,
    input: &SyncInput<'_>,
    prepared: &mut PreparedMember,
) -> Result<(), kube::Error> {
    let SyncInput {
        fed,
        member,
        ca,
        policy,
        now,
        operator,
        held_cluster,
    } = *input;
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
    )
    .await?
    {
        Claim::Held {
            cluster_id,
            kinds,
            repaired,
        } => {
            if let Some(what) = repaired {
                prepared.events.push(Event::warning(
                    "ClaimRepaired",
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

    let reader = render_reader_identity(&federation);
    let (sa_applied, sa) = ensure(
        &Api::namespaced(client.clone(), ISTIO_NAMESPACE),
        &reader.service_account,
        &federation,
        Ownership::Exclusive,
    )
    .await?;
    let owned = [
        sa_applied,
        ensure(
            &Api::all(client.clone()),
            &reader.cluster_role,
            &federation,
            Ownership::Exclusive,
        )
        .await?
        .0,
        ensure(
            &Api::all(client.clone()),
            &reader.binding,
            &federation,
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
    // Tokens only for an identity meshfed made: a pre-existing account may be
    // bound to anything, and its tokens would hand that to every peer.
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

    let secrets = Api::<Secret>::namespaced(client.clone(), ISTIO_NAMESPACE);
    match ca {
        Ok(ca) => {
            let current =
                sync_cacerts(&secrets, &federation, member, ca, policy, now, prepared).await?;
            if let Some(current) = current {
                check_reached(&client, ca, &current, prepared).await?;
            }
        }
        // The CA's trouble is the CA's: membership, remote secrets and
        // failover go on, and `cacerts` stays as it is.
        Err(why) => {
            prepared.report.certificate_problem = Some(format!("waiting for the root CA: {why}"))
        }
    }

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

async fn sync_cacerts(
    secrets: &Api<Secret>,
    federation: &str,
    member: &Member,
    ca: &CaMaterial,
    policy: &IntermediatePolicy,
    now: Timestamp,
    prepared: &mut PreparedMember,
) -> Result<Option<CacertsBundle>, kube::Error> {
    let live = secrets.get_opt(CACERTS).await?;
    if let Some(live) = &live
        && !is_ours(&live.metadata, federation)
    {
        prepared.report.certificate_problem = Some(format!(
            "{ISTIO_NAMESPACE}/{CACERTS} exists and was not created by meshfed; it is left untouched. To let meshfed replace it with an intermediate of the federation's root, annotate it {}=true",
            keys::ADOPT
        ));
        return Ok(None);
    }
    let trust_bundle = ca.trust_bundle_pem.as_str();
    let existing = live.as_ref().and_then(cacerts_bundle);
    let plan = match &ca.signing {
        Ok(root) => match pki::reissue_reason(
            existing.as_ref(),
            root,
            trust_bundle,
            &member.name,
            policy,
            now,
        ) {
            None => CacertsPlan::Keep,
            // Only the bundle moved (a root rotation's trust phases): the
            // intermediate and its key stay.
            Some(pki::ReissueReason::TrustBundleChanged)
                if existing.as_ref().is_some_and(|e| {
                    rebundled(e, trust_bundle).as_ref().is_some_and(|b| {
                        pki::reissue_reason(Some(b), root, trust_bundle, &member.name, policy, now)
                            .is_none()
                    })
                }) =>
            {
                CacertsPlan::Rebundle
            }
            Some(reason) => CacertsPlan::Issue(root, reason),
        },
        // The signing root's key cannot be had: only the bundle can change.
        Err(why) => match &existing {
            Some(e) if e.root_cert_pem == trust_bundle => CacertsPlan::Keep,
            Some(_) => CacertsPlan::Rebundle,
            None => {
                prepared.report.certificate_problem =
                    Some(format!("no intermediate can be issued: {why}"));
                return Ok(None);
            }
        },
    };
    let current = match plan {
        CacertsPlan::Keep => existing.expect("kept bundles exist"),
        CacertsPlan::Rebundle => {
            let bundle = rebundled(
                existing.as_ref().expect("rebundled bundles exist"),
                trust_bundle,
            )
            .expect("checked above");
            write(secrets, &render_cacerts(federation, &bundle), federation).await?;
            prepared.events.push(Event::normal(
                "TrustBundleUpdated",
                format!(
                    "member {}: root-cert.pem now holds {} root(s); the intermediate is unchanged",
                    member.name,
                    trust_bundle.matches("BEGIN CERTIFICATE").count()
                ),
            ));
            bundle
        }
        CacertsPlan::Issue(root, reason) => {
            let bundle =
                match pki::issue_intermediate(root, trust_bundle, &member.name, policy, now) {
                    Ok(b) => b,
                    Err(e) => {
                        prepared.report.certificate_problem =
                            Some(format!("issuing intermediate: {e}"));
                        return Ok(None);
                    }
                };
            write(secrets, &render_cacerts(federation, &bundle), federation).await?;
            prepared
                .events
                .push(intermediate_event(&member.name, reason));
            bundle
        }
    };
    match pki::inspect(&current.ca_cert_pem) {
        Ok(info) => {
            prepared.report.status.intermediate = Some(CertificateStatus {
                serial: info.serial,
                not_after: Time(info.not_after),
            });
            Ok(Some(current))
        }
        Err(e) => {
            prepared.report.certificate_problem = Some(format!("reading intermediate: {e}"));
            Ok(None)
        }
    }
}

fn intermediate_event(member: &str, reason: ReissueReason) -> Event {
    let (reason_code, verb) = if reason == ReissueReason::Missing {
        ("IntermediateIssued", "issued")
    } else {
        ("IntermediateRotated", "rotated")
    };
    Event::normal(
        reason_code,
        format!(
            "member {member}: intermediate CA {verb} ({})",
            reason.describe()
        ),
    )
}
