//! The federation's root CA: the user's, or one meshfed generates and keeps in
//! the operator's namespace.
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;

use super::rotation::{self, CaRecord, Periods, RootRef, Step};
use crate::api::{CaSpec, MeshFederation, RemovalPolicy, defaults};
use crate::events::{Event, Reason};
use crate::pki::RootCa;
use crate::render::{is_ours, managed_labels};

const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
/// The offline root above a signing intermediate in `tls.crt`.
const ANCHOR_KEY: &str = "ca.crt";

/// Name of the Secret holding the federation's `n`th generated root
/// (`<federation>-root-ca`, then `-1`, `-2`, … after rotations).
pub fn generated_root_name_at(federation: &str, n: u32) -> String {
    match n {
        0 => format!("{federation}-root-ca"),
        n => format!("{federation}-root-ca-{n}"),
    }
}

/// Name of the Secret holding the first generated root.
pub fn generated_root_name(federation: &str) -> String {
    generated_root_name_at(federation, 0)
}

/// Whether `secret` is one of the federation's generated roots.
pub fn is_generated_root(federation: &str, secret: &str) -> bool {
    secret
        .strip_prefix(&generated_root_name(federation))
        .is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('-')
                    .is_some_and(|n| n.parse::<u32>().is_ok())
        })
}

/// What members are given: the key that signs intermediates and the trust
/// bundle, for the current phase of the root's life.
pub struct CaMaterial {
    /// The key of the target's signing root, or why it cannot be had (a lost
    /// root, a root Secret replaced in place): existing intermediates stay,
    /// none is issued.
    pub signing: Result<RootCa, String>,
    /// The root (PEM) every member's intermediate must chain to for the
    /// target: a member whose chain ends elsewhere has not reached it.
    pub signer_pem: String,
    pub trust_bundle_pem: String,
    /// The target's id ([`rotation::Target::id`]): what members report.
    pub target_id: String,
}

/// The federation's CA this reconcile: the material for the workers, the
/// record as it now stands, and what happened to it.
pub struct Ca {
    pub material: Arc<CaMaterial>,
    pub record: CaRecord,
    /// Events to publish.
    pub events: Vec<Event>,
}

fn record_name(federation: &str) -> String {
    format!("meshfed-ca-{federation}")
}

async fn load_record(
    client: &Client,
    namespace: &str,
    federation: &str,
) -> Result<Option<CaRecord>, String> {
    let record = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&record_name(federation))
        .await
        .map_err(|e| {
            format!(
                "reading the CA record {namespace}/{}: {e}",
                record_name(federation)
            )
        })?;
    Ok(record.and_then(|r| CaRecord::from_data(&r.data.unwrap_or_default())))
}

/// The rotation the spec asks for: `spec.ca.rootRotation.request`, and,
/// with `spec.ca.onRemoval: Revoke` and a generated root, the latest
/// departure (`fleet::membership::Departure`): a member that left is
/// distrusted by a new root it takes no part in. A change starts a rotation.
fn rotation_request(spec: &CaSpec, departure: Option<i64>) -> Option<String> {
    let revoking = departure
        .filter(|_| spec.on_removal() == RemovalPolicy::Revoke && spec.root_secret_ref.is_none());
    let user = spec.rotation_request();
    match (user, revoking) {
        (user, None) => user.map(String::from),
        (None, Some(d)) => Some(format!("{REVOKE}{d}")),
        (Some(user), Some(d)) => Some(format!("{user}+{REVOKE}{d}")),
    }
}

const REVOKE: &str = "revoke-departure-";

/// Why a requested rotation starts: a departure under `Revoke`, or the
/// user's request.
fn requested_reason(previous: Option<&String>, request: Option<&String>) -> String {
    let departure = |r: Option<&String>| {
        r.and_then(|r| r.split_once(REVOKE))
            .map(|(_, d)| d.to_string())
    };
    match departure(request) {
        Some(d) if departure(previous) != Some(d.clone()) => format!(
            "a member left (generation {d}) and spec.ca.onRemoval is Revoke: a new root it takes no part in"
        ),
        _ => "spec.ca.rootRotation.request changed".to_string(),
    }
}

/// Loads the root the spec asks for, creating a generated one where there
/// is none, starts or moves on a rotation (`progress(id)`: where the members
/// stand on target `id`), and records where it stands before anything in a
/// member changes. Errors are sentences for a status condition.
#[allow(clippy::too_many_arguments)]
pub async fn prepare_ca(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
    departure: Option<i64>,
    leaving: Vec<(String, rotation::DepartedIntermediate)>,
    now: Timestamp,
    progress: impl Fn(&str) -> rotation::Progress,
) -> Result<Ca, String> {
    let federation = fed.name_any();
    let spec = fed.spec.ca();
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let loaded = load_record(client, namespace, &federation).await?;
    let mut record = loaded.clone();
    let mut events = Vec::new();
    let request = rotation_request(&spec, departure);

    let ((desired_ref, desired_root), reason) = match &spec.root_secret_ref {
        Some(r) => (
            user_root(&api, namespace, &r.name, now).await?,
            "spec.ca.rootSecretRef names another root".to_string(),
        ),
        None => {
            let roots = Roots {
                api: &api,
                namespace,
                federation: &federation,
                now,
            };
            roots
                .generated(&spec, &mut record, request.as_ref(), &mut events)
                .await?
        }
    };

    let record = record.get_or_insert_with(|| CaRecord::new(desired_ref.clone(), request.clone()));
    if spec.root_secret_ref.is_none() && record.request != request && record.rotation.is_none() {
        record.request = request.clone();
    }
    // Another Secret with a signing key under the same root (an offline
    // root's new signing intermediate): no trust changes, so no phases;
    // members re-issue their intermediates under it.
    if record.rotation.is_none()
        && rotation::same_root(&desired_ref.cert_pem, &record.active.cert_pem)
    {
        record.active.secret = desired_ref.secret.clone();
    }
    if record.start(desired_ref.clone(), &reason, now) {
        events.push(Event::new(
            Reason::RootRotationStarted,
            format!(
                "rotating to root {} ({reason}): phase TrustBoth",
                desired_root.info().serial
            ),
        ));
    }
    let (propagation, drain) = spec.rotation_periods();
    let finished = advance(
        record,
        &progress,
        Periods { propagation, drain },
        now,
        &mut events,
    );
    record.note_departed(leaving, now);
    if loaded.as_ref() != Some(record) {
        super::record::write(
            client,
            namespace,
            fed,
            &record_name(&federation),
            record.to_data(),
        )
        .await
        .map_err(|e| format!("writing the CA record: {e}"))?;
    }
    // A generated root no member trusts any more: its key goes.
    let retired = loaded
        .as_ref()
        .and_then(|l| l.rotation.as_ref())
        .and_then(|r| r.from.secret.clone())
        .filter(|s| finished && is_generated_root(&federation, s));
    if let Some(old) = retired {
        // Not fatal: the key is no longer trusted anywhere; a leftover
        // Secret is said in the log and can be deleted by hand.
        if let Err(e) = crate::apply::delete(&api, &old).await {
            tracing::warn!(secret = %old, error = %e, "deleting a retired generated root failed");
        }
    }

    let target = record.target();
    let signing = signing_root(&api, target.signing, &desired_ref, desired_root, now).await;
    let material = CaMaterial {
        signing,
        signer_pem: target.signing.cert_pem.clone(),
        trust_bundle_pem: target.bundle_pem(),
        target_id: target.id(),
    };
    Ok(Ca {
        material: Arc::new(material),
        record: record.clone(),
        events,
    })
}

/// Moves a running rotation on when every member finished its phase and
/// its wait is over; true when the rotation just finished.
fn advance(
    record: &mut CaRecord,
    progress: &impl Fn(&str) -> rotation::Progress,
    periods: Periods,
    now: Timestamp,
    events: &mut Vec<Event>,
) -> bool {
    let target_id = record.target().id();
    match record.advance(progress(&target_id), periods, now) {
        Some(Step::Entered(phase)) => {
            events.push(Event::new(
                Reason::RootRotationPhase,
                format!(
                    "every member finished the last phase; phase {} began",
                    phase.name()
                ),
            ));
            false
        }
        Some(Step::Finished) => {
            events.push(Event::new(
                Reason::RootRotationFinished,
                "the old root left every trust bundle; the rotation is complete",
            ));
            true
        }
        _ => false,
    }
}

/// The root in the user's Secret `name` (`spec.ca.rootSecretRef`).
async fn user_root(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Result<(RootRef, RootCa), String> {
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading root Secret {namespace}/{name}: {e}"))?
        .ok_or_else(|| {
            format!(
                "root Secret {namespace}/{name} (spec.ca.rootSecretRef.name) not found; create it with tls.crt and tls.key"
            )
        })?;
    let root = root_from_secret(&secret, now)
        .map_err(|e| format!("root Secret {namespace}/{name} (spec.ca.rootSecretRef.name): {e}"))?;
    Ok(named(root, name))
}

/// Where generated roots live and when it is.
struct Roots<'a> {
    api: &'a Api<Secret>,
    namespace: &'a str,
    federation: &'a str,
    now: Timestamp,
}

impl Roots<'_> {
    /// The generated root the federation should have, and why it would
    /// replace the active one: the current one, or a new one when it was
    /// lost, a rotation was requested, it nears its end, or the user's root
    /// was removed from the spec (the first one is simply created).
    async fn generated(
        &self,
        spec: &CaSpec,
        record: &mut Option<CaRecord>,
        request: Option<&String>,
        events: &mut Vec<Event>,
    ) -> Result<((RootRef, RootCa), String), String> {
        let Self {
            api,
            namespace,
            federation,
            now,
        } = *self;
        let n = record.as_ref().map_or(0, |r| r.generated);
        let name = generated_root_name_at(federation, n);
        let existing = api
            .get_opt(&name)
            .await
            .map_err(|e| format!("reading root Secret {namespace}/{name}: {e}"))?;
        let idle = record.as_ref().is_some_and(|r| r.rotation.is_none());
        let requested = idle
            && request.is_some()
            && record
                .as_ref()
                .is_some_and(|r| r.request.as_ref() != request);
        // The active root is this generated one, and its Secret is gone.
        let lost = existing.is_none()
            && record
                .as_ref()
                .is_some_and(|r| r.active.secret.as_deref() == Some(name.as_str()));
        let current = match &existing {
            Some(secret) if !is_ours(&secret.metadata, federation) => {
                return Err(format!(
                    "Secret {namespace}/{name} exists and was not created by meshfed; delete or rename it, or point spec.ca.rootSecretRef at it"
                ));
            }
            Some(secret) => Some(
                root_from_secret(secret, now)
                    .map_err(|e| format!("generated root Secret {namespace}/{name}: {e}"))?,
            ),
            None => None,
        };
        // A generated root near its end is replaced like a requested one.
        let expiring_reason = current
            .as_ref()
            .filter(|root| {
                idle && renewal_due(root.info().not_after, spec.root_renew_before(), now)
            })
            .map(|root| {
                format!(
                    "the generated root expires at {} (spec.ca.rootRenewBefore)",
                    root.info().not_after
                )
            });
        if let Some(root) = current
            && !requested
            && expiring_reason.is_none()
        {
            return Ok((named(root, &name), String::new()));
        }
        let n = if record.is_some() { n + 1 } else { 0 };
        let name = generated_root_name_at(federation, n);
        let root = create_generated(api, federation, &name, spec.key_algorithm(), now).await?;
        let previous = generated_root_name_at(federation, n.saturating_sub(1));
        let why = if lost {
            events.push(Event::new(Reason::RootLost, format!("root Secret {namespace}/{previous} is gone; its certificate stays trusted while a new root {} replaces it through every phase", root.1.info().serial)));
            format!("the generated root Secret {previous} was lost")
        } else if requested {
            requested_reason(record.as_ref().and_then(|r| r.request.as_ref()), request)
        } else if let Some(why) = expiring_reason {
            why
        } else if record.is_some() {
            "spec.ca.rootSecretRef removed: a generated root replaces it".to_string()
        } else {
            events.push(Event::new(
                Reason::RootCreated,
                format!("generated root CA {}", root.1.info().serial),
            ));
            String::new()
        };
        if let Some(r) = record.as_mut() {
            r.generated = n;
            if lost {
                r.active.secret = None;
            }
        }
        Ok((root, why))
    }
}

/// The key that signs for the target, picked by certificate: a Secret's
/// name does not stand for its content (cert-manager renews a CA Secret in
/// place), and signing with a root some members do not trust yet would
/// break their chains. Errors say why there is none.
async fn signing_root(
    api: &Api<Secret>,
    signer: &RootRef,
    desired: &RootRef,
    desired_root: RootCa,
    now: Timestamp,
) -> Result<RootCa, String> {
    let namespace = api.namespace().unwrap_or_default();
    let serial = crate::pki::inspect(&signer.cert_pem).map_or_else(|_| "?".into(), |i| i.serial);
    let Some(name) = &signer.secret else {
        return Err(format!(
            "the key of signing root {serial} is gone (its Secret was lost)"
        ));
    };
    let root = if Some(name) == desired.secret.as_ref() {
        desired_root
    } else {
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| format!("reading root Secret {namespace}/{name}: {e}"))?
            .ok_or_else(|| format!("root Secret {namespace}/{name}, which holds the key of signing root {serial}, is gone"))?;
        root_from_secret(&secret, now)
            .map_err(|e| format!("root Secret {namespace}/{name}: {e}"))?
    };
    if !rotation::same_root(&root.anchor_pem(), &signer.cert_pem) {
        return Err(format!(
            "root Secret {namespace}/{name} no longer holds the key of signing root {serial} (it was replaced in place); the phase cannot sign with the new root before every member trusts it"
        ));
    }
    Ok(root)
}

/// The record's view of `root`: the root it chains to (what members
/// trust), and the Secret with the key that signs.
fn named(root: RootCa, secret: &str) -> (RootRef, RootCa) {
    (
        RootRef {
            cert_pem: root.anchor_pem(),
            secret: Some(secret.to_string()),
        },
        root,
    )
}

async fn create_generated(
    api: &Api<Secret>,
    federation: &str,
    name: &str,
    algorithm: crate::api::KeyAlgorithm,
    now: Timestamp,
) -> Result<(RootRef, RootCa), String> {
    let root = RootCa::generate(federation, algorithm, defaults::ROOT_LIFETIME, now)
        .map_err(|e| format!("generating root CA: {e}"))?;
    let mut secret = Secret {
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                CERT_KEY.into(),
                ByteString(root.cert_pem.clone().into_bytes()),
            ),
            (
                KEY_KEY.into(),
                ByteString(root.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.to_string());
    secret.metadata.labels = Some(managed_labels(federation));
    // Create, never apply: two racing reconciles must not mint two roots.
    match crate::apply::create(api, &secret).await {
        Ok(_) => Ok(named(root, name)),
        // Created by a racing reconcile, or by one whose record write failed
        // afterwards: the record's next root is that one, if meshfed made it.
        Err(e) if crate::apply::is_conflict(&e) => {
            adopt_generated(api, federation, name, now).await
        }
        Err(e) => Err(format!("storing root Secret {name}: {e}")),
    }
}

/// The generated root already stored as `name` (this federation's, by its
/// labels), taken as the next root instead of a new one.
async fn adopt_generated(
    api: &Api<Secret>,
    federation: &str,
    name: &str,
    now: Timestamp,
) -> Result<(RootRef, RootCa), String> {
    let namespace = api.namespace().unwrap_or_default();
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading root Secret {namespace}/{name}: {e}"))?
        .ok_or_else(|| {
            format!("root Secret {namespace}/{name} was created and deleted concurrently; retrying")
        })?;
    if !is_ours(&secret.metadata, federation) {
        return Err(format!(
            "Secret {namespace}/{name} exists and was not created by meshfed; delete or rename it, or point spec.ca.rootSecretRef at it"
        ));
    }
    let root = root_from_secret(&secret, now).map_err(|e| {
        format!(
            "generated root Secret {namespace}/{name}: {e}; delete it and meshfed generates another"
        )
    })?;
    Ok(named(root, name))
}

fn root_from_secret(secret: &Secret, now: Timestamp) -> Result<RootCa, String> {
    let text = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let required = |k: &str| text(k).ok_or_else(|| format!("missing key {k}"));
    // tls.crt may be a signing intermediate (and its issuers) below an
    // offline root given as ca.crt.
    RootCa::from_signing_pem(
        &required(CERT_KEY)?,
        &required(KEY_KEY)?,
        text(ANCHOR_KEY).as_deref(),
        now,
    )
    .map_err(|e| e.to_string())
}

/// Whether a generated root expiring at `not_after` is due for rotation.
fn renewal_due(not_after: Timestamp, renew_before: std::time::Duration, now: Timestamp) -> bool {
    now + signed(renew_before) >= not_after
}

fn signed(d: std::time::Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_departure_under_revoke_asks_for_a_rotation_once() {
        let spec = |v: serde_json::Value| -> CaSpec { serde_json::from_value(v).unwrap() };
        let retain = spec(serde_json::json!({}));
        let revoke = spec(serde_json::json!({"onRemoval": "Revoke"}));
        let both =
            spec(serde_json::json!({"onRemoval": "Revoke", "rootRotation": {"request": "r1"}}));
        assert_eq!(
            rotation_request(&retain, Some(4)),
            None,
            "Retain keeps the root"
        );
        assert_eq!(rotation_request(&revoke, None), None, "nobody left");
        let after_4 = rotation_request(&revoke, Some(4));
        assert!(after_4.is_some());
        assert_eq!(
            rotation_request(&revoke, Some(4)),
            after_4,
            "the same departure: one rotation"
        );
        assert_ne!(
            rotation_request(&revoke, Some(7)),
            after_4,
            "another departure: another"
        );
        let combined = rotation_request(&both, Some(4));
        assert_ne!(combined, rotation_request(&both, None));
        assert!(
            requested_reason(None, after_4.as_ref()).contains("Revoke"),
            "{}",
            requested_reason(None, after_4.as_ref())
        );
        assert!(requested_reason(after_4.as_ref(), combined.as_ref()).contains("request changed"));
    }

    #[test]
    fn generated_roots_are_named_by_their_generation() {
        assert_eq!(generated_root_name_at("prod", 0), "prod-root-ca");
        assert_eq!(generated_root_name_at("prod", 3), "prod-root-ca-3");
        assert!(is_generated_root("prod", "prod-root-ca"));
        assert!(is_generated_root("prod", "prod-root-ca-12"));
        assert!(!is_generated_root("prod", "prod-root-ca-x"));
        assert!(!is_generated_root("prod", "prod-root-cat"));
        assert!(!is_generated_root("prod", "staging-root-ca"));
    }

    #[test]
    fn a_generated_root_is_due_within_root_renew_before_of_its_end() {
        let end: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let year = std::time::Duration::from_secs(365 * 86400);
        assert!(!renewal_due(
            end,
            year,
            "2028-12-31T23:59:59Z".parse().unwrap()
        ));
        assert!(renewal_due(
            end,
            year,
            "2029-01-01T00:00:00Z".parse().unwrap()
        ));
        assert!(renewal_due(end, std::time::Duration::ZERO, end), "expired");
    }
}
