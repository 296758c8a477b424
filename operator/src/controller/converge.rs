//! The federation's pass: the fleet's planners over what the members'
//! workers last found, then every worker's input, the departed members'
//! cleanup, and the status. Each step is a function below, in the order
//! [`converge`] runs them.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::info;

use super::{Context, Error, ReconcileStats};
use crate::api::{CertificateStatus, MeshFederation, MeshFederationStatus};
use crate::events::{Event, Reason};
use crate::fleet::ca::{self, Ca};
use crate::fleet::report::{MemberReport, MemberRun};
use crate::fleet::status::{self, build_status};
use crate::fleet::{failover, membership, rollout, rotation};
use crate::member::cleanup::{Removal, remove_member};
use crate::member::remote_secrets::PeerFacts;
use crate::member::worker;
use crate::render::field_manager;
use crate::telemetry::ReconcileResult;

/// The federation's part: membership, the root, failover, the rollout, one
/// worker per member, the cleanup of members that left, and the status
/// aggregated from the workers' last runs. It waits for no member's worker;
/// removing a member that left is the one thing it does in a member itself
/// (each removal with its own budget, all at once).
pub(super) async fn converge(
    fed: &Arc<MeshFederation>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let now = Timestamp::now();
    let name = fed.name_any();
    let mut events = Vec::new();

    let mut membership = record_membership(ctx, fed).await?;
    let members: BTreeSet<String> = fed.spec.members.iter().map(|m| m.name.clone()).collect();
    // What members leaving now held, from their last runs (gone once their
    // workers stop): a copy of their cacerts stays trusted.
    let leaving = departed_intermediates(&ctx.workers.runs(&name), &members);
    ctx.workers.retain(&name, &members);
    ctx.shared.watches.retain(&name, &members);
    let runs = ctx.workers.runs(&name);

    let ca = prepare_ca(ctx, fed, &runs, &membership, leaving, now).await;
    let failover = decide_failover(ctx, fed, &runs, now).await?;
    let rollout = decide_rollout(ctx, fed, &runs, now).await?;
    events.extend(failover_events(
        &failover.decision,
        fed.spec.withdrawal().as_ref(),
    ));
    events.extend(rollout.iter().flat_map(|r| r.events.iter().cloned()));
    events.extend(ca.iter().flat_map(|ca| ca.events.iter().cloned()));
    let held = record_held_clusters(ctx, fed, &membership, &runs).await?;
    let departure = membership.departure.generation;
    start_workers(ctx, fed, &ca, &held, departure, &failover, rollout.as_ref());

    let mut reports = member_reports(fed, &runs, &ca, &failover, rollout.as_ref());
    reports.extend(leave(ctx, fed, &runs, &mut membership, &mut events).await?);
    let status = next_status(
        ctx,
        fed,
        &runs,
        reports,
        &ca,
        &failover,
        rollout.as_ref(),
        now,
    );
    let ready = publish(ctx, fed, &status, events, started, now).await?;
    record_stats(ctx, fed, &runs, ready, started);
    Ok(Action::requeue(next_check(
        ctx,
        fed,
        &ca,
        &failover,
        rollout.as_ref(),
        now,
    )))
}

/// Every member is on record before anything is written into it, so that
/// no later loss (of status, of this process) can orphan what it gets.
async fn record_membership(
    ctx: &Context,
    fed: &MeshFederation,
) -> Result<membership::Membership, Error> {
    let recorded = known_members(fed, ctx).await?;
    let membership = membership::with_spec(&recorded, fed);
    let (client, namespace) = (&ctx.shared.client, &ctx.shared.settings.namespace);
    membership::store(client, namespace, fed, &recorded, &membership).await?;
    Ok(membership)
}

/// The roots and a rotation's phase, from where the members in the spec
/// stand on its target. A member this process has not heard from (just
/// started, or unreachable since) holds the phase without restarting its
/// wait; one that holds nothing chaining to the federation's roots is not
/// waited for.
async fn prepare_ca(
    ctx: &Context,
    fed: &MeshFederation,
    runs: &BTreeMap<String, MemberRun>,
    membership: &membership::Membership,
    leaving: Vec<(String, rotation::DepartedIntermediate)>,
    now: Timestamp,
) -> Result<Ca, String> {
    let progress =
        |target: &str| {
            rotation::Progress::of(fed.spec.members.iter().filter_map(
                |m| match runs.get(&m.name) {
                    Some(r) if !status::rotation_waits_for(&r.report) => None,
                    Some(r) if r.report.ca_reached.as_deref() == Some(target) => {
                        Some(rotation::Progress::Reached)
                    }
                    Some(r) if r.report.unreachable.is_none() => Some(rotation::Progress::Behind),
                    _ => Some(rotation::Progress::Unknown),
                },
            ))
        };
    let (client, namespace) = (&ctx.shared.client, &ctx.shared.settings.namespace);
    let departure = membership.departure.generation;
    ca::prepare_ca(client, namespace, fed, departure, leaving, now, progress).await
}

/// The intermediates (and the roots they chain to) of members in `runs`
/// that are not in `members` any more.
fn departed_intermediates(
    runs: &BTreeMap<String, MemberRun>,
    members: &BTreeSet<String>,
) -> Vec<(String, rotation::DepartedIntermediate)> {
    runs.iter()
        .filter(|(name, _)| !members.contains(*name))
        .filter_map(|(name, run)| {
            let report = &run.report;
            let intermediate = report.status.intermediate.as_ref()?;
            Some((
                name.clone(),
                rotation::DepartedIntermediate {
                    serial: intermediate.serial.clone(),
                    not_after: intermediate.not_after.0,
                    root_pem: report.intermediate_root.clone()?,
                },
            ))
        })
        .collect()
}

/// Failover's decision and what it was made from.
struct Failover {
    /// Each member's health as its worker last found it.
    health: BTreeMap<String, Option<failover::HealthFinding>>,
    tracker: failover::Tracker,
    decision: failover::Decision,
}

/// Who is healthy, and whom peers must not see; the withdrawn set is on
/// record before any worker acts on it.
async fn decide_failover(
    ctx: &Context,
    fed: &MeshFederation,
    runs: &BTreeMap<String, MemberRun>,
    now: Timestamp,
) -> Result<Failover, Error> {
    let health: BTreeMap<String, Option<failover::HealthFinding>> = fed
        .spec
        .members
        .iter()
        .map(|m| {
            let h = runs
                .get(&m.name)
                .and_then(|r| failover::member_health(&r.report));
            (m.name.clone(), h)
        })
        .collect();
    let mut tracker = ctx.failover_tracker(fed).await?;
    let withdrawn_before = tracker.withdrawn.clone();
    let decision = tracker.decide(&health, fed.spec.withdrawal().as_ref(), now);
    if tracker.withdrawn != withdrawn_before {
        let (client, namespace) = (&ctx.shared.client, &ctx.shared.settings.namespace);
        failover::store(client, namespace, fed, &tracker.withdrawn).await?;
    }
    ctx.failover
        .lock()
        .expect("failover lock")
        .insert(fed.name_any(), (fed.uid(), tracker.clone()));
    Ok(Failover {
        health,
        tracker,
        decision,
    })
}

/// The control-plane rollout. Where it stands is on record before any
/// member acts on it: a restart or a wiped status resumes it there (a
/// pause goes on, a gate timeout keeps its start).
async fn decide_rollout(
    ctx: &Context,
    fed: &MeshFederation,
    runs: &BTreeMap<String, MemberRun>,
    now: Timestamp,
) -> Result<Option<rollout::Rollout>, Error> {
    let (client, namespace) = (&ctx.shared.client, &ctx.shared.settings.namespace);
    let recorded = rollout::load(client, namespace, fed).await?;
    let installed = |m: &str| runs.get(m).and_then(|r| r.report.installed.clone());
    let decided = rollout::decide(fed, installed, recorded.as_ref(), now);
    if let Some(r) = &decided {
        rollout::store(client, namespace, fed, recorded.as_ref(), &r.status).await?;
    }
    Ok(decided)
}

/// Which cluster each member held, on record before it is relied on.
async fn record_held_clusters(
    ctx: &Context,
    fed: &MeshFederation,
    membership: &membership::Membership,
    runs: &BTreeMap<String, MemberRun>,
) -> Result<membership::HeldClusters, Error> {
    let (client, namespace) = (&ctx.shared.client, &ctx.shared.settings.namespace);
    let before = membership::load_clusters(client, namespace, &fed.name_any()).await?;
    let held = membership::held_clusters(
        &before,
        &membership.members,
        runs.iter().filter_map(|(member, run)| {
            let r = &run.report;
            let held = r.claim_problem.is_none() && r.unreachable.is_none();
            Some((
                member.as_str(),
                r.status.cluster_id.as_deref().filter(|_| held)?,
            ))
        }),
    );
    membership::store_clusters(client, namespace, fed, &before, &held).await?;
    Ok(held)
}

/// Hands every member's worker its input (starting it if needed). Every
/// worker runs whatever the CA's state: a root Secret briefly missing
/// leaves `cacerts` alone but never stops membership, remote secrets or
/// failover.
fn start_workers(
    ctx: &Context,
    fed: &Arc<MeshFederation>,
    ca: &Result<Ca, String>,
    held: &membership::HeldClusters,
    departure: Option<i64>,
    failover: &Failover,
    rollout: Option<&rollout::Rollout>,
) {
    let resync = ctx.due_for_resync(&fed.name_any());
    let withdrawn = Arc::new(failover.tracker.withdrawn_set());
    for member in &fed.spec.members {
        let input = worker::Input {
            fed: fed.clone(),
            ca: ca
                .as_ref()
                .map(|ca| ca.material.clone())
                .map_err(Clone::clone),
            member: member.clone(),
            held_cluster: held.get(&member.name).cloned(),
            withdrawn: withdrawn.clone(),
            plan: rollout
                .and_then(|r| r.plans.get(&member.name).cloned())
                .unwrap_or_else(rollout::ControlPlanePlan::observe_only),
            departure,
        };
        ctx.workers.ensure(&ctx.shared, input, resync);
    }
}

/// Every member's last report, with its health and upgrade phase as
/// decided now (the worker's run may predate them).
fn member_reports(
    fed: &MeshFederation,
    runs: &BTreeMap<String, MemberRun>,
    ca: &Result<Ca, String>,
    failover: &Failover,
    rollout: Option<&rollout::Rollout>,
) -> Vec<MemberReport> {
    fed.spec
        .members
        .iter()
        .map(|m| {
            let mut r = match (runs.get(&m.name), ca) {
                (Some(run), _) => run.report.clone(),
                (None, Ok(_)) => {
                    let mut r = MemberReport::new(&m.name);
                    r.status.credentials = Some(m.credentials.clone());
                    r.other_problems.push("not reconciled yet".into());
                    r
                }
                (None, Err(_)) => {
                    let mut r = MemberReport::new(&m.name);
                    r.status.credentials = Some(m.credentials.clone());
                    r.certificate_problem = Some("waiting for the root CA".into());
                    r
                }
            };
            let h = failover.health.get(&m.name).cloned().flatten();
            r.status.health = failover.tracker.status(&m.name, h.as_ref());
            let plan = rollout.and_then(|ro| ro.plans.get(&m.name));
            r.status.upgrade_phase = plan
                .map(|p| p.phase)
                .filter(|p| {
                    !matches!(
                        p,
                        rollout::UpgradePhase::Current | rollout::UpgradePhase::Unknown
                    )
                })
                .map(|p| p.as_str().to_string());
            r
        })
        .collect()
}

/// Removes the members that left (see [`leave_departed`]) and records who
/// is left; reports those still being removed.
async fn leave(
    ctx: &Context,
    fed: &MeshFederation,
    runs: &BTreeMap<String, MemberRun>,
    membership: &mut membership::Membership,
    events: &mut Vec<Event>,
) -> Result<Vec<MemberReport>, Error> {
    // A departed member's cluster may be a current member's (renamed, or
    // refused there until now): clean up only once every current member ran
    // for this generation and said which cluster it has.
    let settled = fed.spec.members.iter().all(|m| {
        runs.get(&m.name)
            .is_some_and(|r| r.generation == fed.metadata.generation)
    });
    let before = membership.clone();
    let mut facts = ctx.workers.facts(&fed.name_any());
    facts.retain(|member, _| fed.spec.member(member).is_some());
    let reports = leave_departed(fed, ctx, &facts, settled, membership, events).await;
    let (client, namespace) = (&ctx.shared.client, &ctx.shared.settings.namespace);
    membership::store(client, namespace, fed, &before, membership).await?;
    Ok(reports)
}

/// The status to write. A member the last status describes but this
/// process has not heard from yet, with every peer known (it just
/// started): that status stands until each such member reported, so a
/// restart changes nothing users see.
#[allow(clippy::too_many_arguments)]
fn next_status(
    ctx: &Context,
    fed: &MeshFederation,
    runs: &BTreeMap<String, MemberRun>,
    reports: Vec<MemberReport>,
    ca: &Result<Ca, String>,
    failover: &Failover,
    rollout: Option<&rollout::Rollout>,
    now: Timestamp,
) -> MeshFederationStatus {
    let spec = &fed.spec;
    let previous = fed.status.as_ref();
    let unheard = previous.filter(|p| {
        spec.members.iter().any(|m| {
            runs.get(&m.name).is_none_or(|r| !r.saw_every_peer)
                && p.members.iter().any(|s| s.name == m.name)
        })
    });
    if let Some(last) = unheard {
        return last.clone();
    }
    let root_status = match ca {
        Ok(ca) => match &ca.material.signing {
            Ok(root) => Ok(CertificateStatus {
                serial: root.info().serial.clone(),
                not_after: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    root.info().not_after,
                ),
            }),
            Err(why) => Err(format!(
                "{why}; existing intermediates stay, and new ones wait for the rotation's next signer"
            )),
        },
        Err(e) => Err(e.clone()),
    };
    let ca_status = ca.as_ref().ok().map(|ca| {
        status::ca_status(
            &ca.record,
            &ca.material.target_id,
            runs,
            spec,
            rotation_periods(fed),
        )
    });
    let active_root = ca
        .as_ref()
        .ok()
        .and_then(|ca| ca.record.active.secret.as_deref());
    let kept_secrets = kept_secrets(fed, &ctx.shared.settings.namespace, active_root);
    // The status describes the oldest generation any member's run worked from.
    let generation = spec
        .members
        .iter()
        .filter_map(|m| runs.get(&m.name).map(|r| r.generation))
        .chain([fed.metadata.generation])
        .min()
        .flatten();
    build_status(
        generation,
        reports,
        root_status,
        status::FleetFacts {
            withdrawal_held: failover.decision.held.as_deref(),
            kept_secrets: &kept_secrets,
            ca: ca_status,
            rollout: rollout.map(|r| r.status.clone()),
            gateways_applied: spec.control_plane.as_ref().is_some_and(|c| {
                c.mode == crate::api::ControlPlaneMode::Managed || c.version.is_some()
            }),
        },
        previous,
        now,
    )
}

fn rotation_periods(fed: &MeshFederation) -> rotation::Periods {
    let (propagation, drain) = fed.spec.ca().rotation_periods();
    rotation::Periods { propagation, drain }
}

/// Writes the status if it changed, publishes the pass's Events and its
/// metrics; whether the federation is Ready.
async fn publish(
    ctx: &Context,
    fed: &MeshFederation,
    status: &MeshFederationStatus,
    mut events: Vec<Event>,
    started: Instant,
    now: Timestamp,
) -> Result<bool, Error> {
    let name = fed.name_any();
    let previous = fed.status.as_ref();
    ctx.shared.metrics.members(&name, previous, status, now);
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    if previous != Some(status) {
        patch_status(ctx, &name, status).await?;
    }
    events.extend(newly_exposed(previous, status));
    ctx.shared.publish(fed, events).await;
    let result = if ready {
        ReconcileResult::Ready
    } else {
        ReconcileResult::NotReady
    };
    ctx.shared
        .metrics
        .reconciled(&name, result, started.elapsed());
    Ok(ready)
}

/// What this pass cost, for `Context::last_reconcile` and the log.
fn record_stats(
    ctx: &Context,
    fed: &MeshFederation,
    runs: &BTreeMap<String, MemberRun>,
    ready: bool,
    started: Instant,
) {
    let name = fed.name_any();
    let stats = ReconcileStats {
        duration: started.elapsed(),
        requests: runs
            .iter()
            .filter(|(member, _)| fed.spec.member(member).is_some())
            .filter_map(|(member, run)| Some((member.clone(), run.requests?)))
            .collect(),
        ready,
    };
    info!(federation = %name, ready, members = fed.spec.members.len(), elapsed_ms = stats.duration.as_millis() as u64, "reconciled");
    ctx.stats.lock().expect("stats lock").insert(name, stats);
}

/// When to run again without being asked: workers ask for aggregation when
/// they finish; this is the safety resync, the end of a failover grace or
/// settle period, of a root rotation phase's wait, or of a rollout's pause
/// or gate timeout.
fn next_check(
    ctx: &Context,
    fed: &MeshFederation,
    ca: &Result<Ca, String>,
    failover: &Failover,
    rollout: Option<&rollout::Rollout>,
    now: Timestamp,
) -> Duration {
    let phase_ends = ca
        .as_ref()
        .ok()
        .and_then(|ca| ca.record.next_phase_at(rotation_periods(fed)));
    let until_check = failover
        .decision
        .next_check
        .into_iter()
        .chain(phase_ends)
        .chain(rollout.and_then(|r| r.next_check))
        .filter_map(|t| Duration::try_from(t.duration_since(now)).ok())
        .min();
    let resync = ctx.shared.settings.resync;
    until_check.map_or(resync, |d| d.min(resync))
}

/// Events for what a failover decision changed.
fn failover_events(
    decision: &failover::Decision,
    policy: Option<&crate::api::WithdrawalPolicy>,
) -> Vec<Event> {
    let mut events = Vec::new();
    for (member, why) in &decision.withdrawn {
        events.push(Event::new(
            Reason::MemberWithdrawn,
            format!(
                "member {member} withdrawn from its peers' view (their remote secrets for it removed): {why}"
            ),
        ));
    }
    for member in &decision.restored {
        let note = match policy {
            Some(p) => format!(
                "member {member} restored to its peers' view after {:?} healthy",
                p.settle
            ),
            None => format!("member {member} restored to its peers' view: withdrawal is off"),
        };
        events.push(Event::new(Reason::MemberRestored, note));
    }
    if let (true, Some(held)) = (decision.held_changed, &decision.held) {
        events.push(Event::new(Reason::WithdrawalHeld, held.clone()));
    }
    events
}

/// The recorded membership. Before there is a record (a federation from
/// before meshfed kept one), members that left are known only from status.
pub(super) async fn known_members(
    fed: &MeshFederation,
    ctx: &Context,
) -> Result<membership::Membership, Error> {
    let recorded = membership::load(
        &ctx.shared.client,
        &ctx.shared.settings.namespace,
        &fed.name_any(),
    )
    .await?;
    Ok(recorded.unwrap_or_else(|| membership::Membership {
        members: fed
            .status
            .iter()
            .flat_map(|s| s.members.iter())
            .filter_map(|m| Some((m.name.clone(), m.credentials.clone()?)))
            .collect(),
        ..Default::default()
    }))
}

/// Why a member that left the spec is still reported.
enum Cleanup {
    /// Its cleanup waits for the current members: nothing is wrong.
    Waits(String),
    /// Its cleanup failed; it is tried again next reconcile.
    Failed(String),
}

/// Recorded members that left the spec: clean them up with the recorded
/// credentials (all at once, each with its own budget), drop them from
/// `membership` once done, and keep reporting them until then. A member
/// renamed on the same cluster (same credentials, or a cluster a current
/// member holds) leaves that cluster alone. Nothing is removed until the
/// current members are `settled`.
async fn leave_departed(
    fed: &MeshFederation,
    ctx: &Context,
    facts: &BTreeMap<String, PeerFacts>,
    settled: bool,
    membership: &mut membership::Membership,
    events: &mut Vec<Event>,
) -> Vec<MemberReport> {
    let taken: BTreeMap<String, String> = facts
        .iter()
        .filter_map(|(member, f)| Some((f.cluster_id.clone()?, member.clone())))
        .collect();
    let departed: Vec<(String, crate::api::MemberCredentials)> =
        membership::departed(membership, fed)
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
    let results = join_all(departed.iter().map(|(name, credentials)| {
        let taken = &taken;
        async move {
            let renamed = fed
                .spec
                .members
                .iter()
                .find(|m| m.credentials == *credentials);
            // A member's previous credentials: its old cluster's claim names
            // the member, and the cluster is left alone if it is the one the
            // member holds now, which must be known first.
            let member = membership::previous_of(name).unwrap_or(name);
            let unknown = member != name && !taken.values().any(|m| m == member);
            match (renamed, settled) {
                (Some(m), _) => Ok(Removal::ClusterTakenBy(m.name.clone())),
                (None, false) => Err(Cleanup::Waits(
                    "waiting for the current members' first run".to_string(),
                )),
                (None, true) if unknown => Err(Cleanup::Waits(format!(
                    "waiting for member {member}'s new cluster to be known"
                ))),
                (None, true) => remove_member(&ctx.shared, fed, member, credentials, taken)
                    .await
                    .map_err(Cleanup::Failed),
            }
        }
    }))
    .await;
    let mut reports = Vec::new();
    for ((name, credentials), result) in departed.iter().zip(results) {
        match result {
            Ok(removal) => {
                events.push(removal.event(name, &fed.name_any()));
                membership.members.remove(name);
            }
            Err(e) => {
                let known = fed
                    .status
                    .iter()
                    .flat_map(|s| s.members.iter())
                    .find(|m| &m.name == name);
                let mut report = MemberReport::new(name);
                report.status = crate::api::MemberStatus {
                    name: name.clone(),
                    leaving: true,
                    reachable: false,
                    credentials: Some(credentials.clone()),
                    ..known.cloned().unwrap_or_default()
                };
                // Waiting is no problem (status: MembersLeaving); a failure
                // is the member's cluster not answering meshfed as it should.
                match e {
                    Cleanup::Waits(why) => report
                        .other_problems
                        .push(format!("cleanup after leaving: {why}")),
                    Cleanup::Failed(why) => {
                        report.unreachable = Some(format!("cleanup after leaving: {why}"));
                    }
                }
                reports.push(report);
            }
        }
    }
    reports
}

pub(super) async fn patch_status(
    ctx: &Context,
    name: &str,
    status: &MeshFederationStatus,
) -> Result<(), Error> {
    let api = Api::<MeshFederation>::all(ctx.shared.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "MeshFederation",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(&field_manager(name)).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// A Warning when `CredentialsExposed` turns True (or says something new).
fn newly_exposed(
    previous: Option<&MeshFederationStatus>,
    now: &MeshFederationStatus,
) -> Option<Event> {
    let exposed = |s: &MeshFederationStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::CREDENTIALS_EXPOSED && c.status == "True")
            .map(|c| c.message.clone())
    };
    let message = exposed(now)?;
    (previous.and_then(exposed) != Some(message.clone()))
        .then(|| Event::new(Reason::CredentialsExposed, message))
}

/// The Secrets the operator keeps for `fed` in its namespace: the root (key
/// included) and every member's credentials.
fn kept_secrets(fed: &MeshFederation, namespace: &str, active_root: Option<&str>) -> Vec<String> {
    // The Secret of the root that signs now (after a rotation, a generated
    // one is `<federation>-root-ca-<n>`); the spec's when it is not known.
    let root = match (active_root, &fed.spec.ca().root_secret_ref) {
        (Some(secret), _) => secret.to_string(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => ca::generated_root_name(&fed.name_any()),
    };
    let credentials = fed
        .spec
        .members
        .iter()
        .filter_map(|m| Some(m.credentials.secret_ref.as_ref()?.name.clone()));
    let mut names: Vec<String> = std::iter::once(root)
        .chain(credentials)
        .map(|n| format!("{namespace}/{n}"))
        .collect();
    names.dedup();
    names
}
