//! A member's `cacerts`: an intermediate of the federation's signing root,
//! re-issued only when `pki::reissue_reason` says so, re-bundled when only
//! the trust bundle changes, and whether the member (its istiod included)
//! reached the rotation's target.
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;

use super::PreparedMember;
use crate::api::{CertificateStatus, Member};
use crate::apply::write;
use crate::events::{Event, Reason};
use crate::fleet::ca::CaMaterial;
use crate::pki::{self, CacertsBundle, IntermediatePolicy, ReissueReason, RootCa};
use crate::render::{CACERTS, ISTIO_NAMESPACE, cacerts_bundle, is_ours, keys, render_cacerts};

/// Makes the member's `cacerts` an intermediate of the CA's current signer
/// (or re-bundles it) and records whether the member reached the CA's
/// target. The CA's trouble is the CA's: membership, remote secrets and
/// failover go on, and `cacerts` stays as it is.
pub async fn sync(
    client: &kube::Client,
    federation: &str,
    member: &Member,
    ca: Result<&CaMaterial, &String>,
    policy: &IntermediatePolicy,
    now: Timestamp,
    prepared: &mut PreparedMember,
) -> Result<(), kube::Error> {
    let ca = match ca {
        Ok(ca) => ca,
        Err(why) => {
            prepared.report.certificate_problem = Some(format!("waiting for the root CA: {why}"));
            return Ok(());
        }
    };
    let secrets = Api::<Secret>::namespaced(client.clone(), ISTIO_NAMESPACE);
    if let Some(current) =
        sync_cacerts(&secrets, federation, member, ca, policy, now, prepared).await?
    {
        check_reached(client, ca, &current, prepared).await?;
    }
    Ok(())
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
            prepared.events.push(Event::new(
                Reason::TrustBundleUpdated,
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
            prepared.report.intermediate_root = pki::chain_root_pem(&current);
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
        (Reason::IntermediateIssued, "issued")
    } else {
        (Reason::IntermediateRotated, "rotated")
    };
    Event::new(
        reason_code,
        format!(
            "member {member}: intermediate CA {verb} ({})",
            reason.describe()
        ),
    )
}
