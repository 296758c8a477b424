//! The federation controller: watches `MeshFederation`, runs the fleet's
//! planners over what the members' workers last found, hands each worker
//! its input, cleans up members that left, and writes the status.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Config, ResourceExt};
use tracing::{Instrument, info, warn};

use crate::api::{CertificateStatus, MeshFederation, MeshFederationStatus};
use crate::connection::{MemberPool, MemberWatches};
use crate::events::{Event, Publisher, Reason};
use crate::fleet::report::MemberReport;
use crate::fleet::status::{self, build_status};
use crate::fleet::{ca, failover, membership, rollout, rotation};
use crate::member::MemberContext;
use crate::member::cleanup::{Removal, remove_member};
use crate::member::remote_secrets::PeerFacts;
use crate::member::worker::{self, Workers};
use crate::render::field_manager;
use crate::settings::Settings;
use crate::telemetry::{Metrics, ReconcileResult, RequestCount};

/// Finalizer that lets meshfed clean members up before the federation goes.
pub const FINALIZER: &str = "meshfed.io/cleanup";

/// Errors that fail a whole reconcile (member problems go to status instead).
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
}

/// What the last reconcile of a federation cost.
#[derive(Clone, Debug, Default)]
pub struct ReconcileStats {
    pub duration: Duration,
    /// API requests this reconcile sent to each reachable member.
    pub requests: HashMap<String, RequestCount>,
    pub ready: bool,
}

/// Shared by every reconcile.
pub struct Context {
    /// What the members' workers share (the operator's client and settings
    /// among it).
    shared: Arc<MemberContext>,
    workers: Arc<Workers>,
    /// What the controller listens to besides federations and Secrets: the
    /// members whose objects changed, and the federations whose workers
    /// finished a run. Taken once by [`run`].
    triggers: Mutex<Option<Triggers>>,
    /// When each federation last woke all its workers (the safety resync).
    resynced: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<String, u32>>,
    stats: Mutex<HashMap<String, ReconcileStats>>,
    /// Failover state by federation (and its UID: a federation deleted
    /// without its finalizer and created again starts afresh), loaded from
    /// its record on first use.
    failover: Mutex<HashMap<String, (Option<String>, failover::Tracker)>>,
}

impl Context {
    /// `client`/`config` talk to the cluster the operator runs in.
    pub fn new(
        client: Client,
        config: Config,
        settings: Settings,
    ) -> Result<Arc<Self>, kube::Error> {
        let (watches, changed) = MemberWatches::new();
        let (workers, finished) = Workers::new();
        let shared = MemberContext {
            events: Publisher::new(client.clone()),
            connections: MemberPool::new(
                settings.namespace.clone(),
                config,
                settings.member_timeout,
            )?,
            watches,
            charts: crate::charts::ChartRenderer::new(
                settings.helm.clone(),
                settings.charts_dir.clone(),
            ),
            kinds: Default::default(),
            metrics: Arc::default(),
            client,
            settings,
        };
        Ok(Arc::new(Self {
            shared: Arc::new(shared),
            workers: Arc::new(workers),
            triggers: Mutex::new(Some(Triggers {
                changed: changed.boxed(),
                finished: finished.boxed(),
            })),
            resynced: Mutex::default(),
            failures: Mutex::default(),
            stats: Mutex::default(),
            failover: Mutex::default(),
        }))
    }

    /// Stops every member worker, as the process exiting would. For an
    /// operator run inside another program (the end-to-end tests), whose
    /// copies of the context would otherwise keep the workers running.
    pub fn stop_workers(&self) {
        self.workers.stop_all();
    }

    /// Whether `federation`'s workers are due for their safety resync (and
    /// if so, that it happens now).
    fn due_for_resync(&self, federation: &str) -> bool {
        let mut resynced = self.resynced.lock().expect("resync lock");
        let last = resynced
            .entry(federation.to_string())
            .or_insert_with(Instant::now);
        if last.elapsed() < self.shared.settings.resync {
            return false;
        }
        *last = Instant::now();
        true
    }

    /// The operator's Prometheus metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Figures of the last finished reconcile of `federation`.
    pub fn last_reconcile(&self, federation: &str) -> Option<ReconcileStats> {
        self.stats
            .lock()
            .expect("stats lock")
            .get(federation)
            .cloned()
    }
}

/// See [`Context::triggers`].
struct Triggers {
    changed: BoxStream<'static, (String, String)>,
    finished: BoxStream<'static, ObjectRef<MeshFederation>>,
}

/// Runs the controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let feds = Api::<MeshFederation>::all(ctx.shared.client.clone());
    let secrets =
        Api::<Secret>::namespaced(ctx.shared.client.clone(), &ctx.shared.settings.namespace);
    let controller = Controller::new(feds, watcher::Config::default());
    let store = controller.store();
    let Triggers { changed, finished } = ctx
        .triggers
        .lock()
        .expect("triggers lock")
        .take()
        .expect("the controller runs once per context");
    // Something meshfed owns changed in a member: its worker repairs it now.
    let repairs = {
        let ctx = Arc::downgrade(&ctx);
        changed.for_each(move |(federation, member)| {
            if let Some(ctx) = ctx.upgrade() {
                ctx.workers.wake(&federation, &member);
            }
            futures::future::ready(())
        })
    };
    let _repairs = AbortOnDrop(tokio::spawn(repairs));
    let credentials_changed = {
        let ctx = Arc::downgrade(&ctx);
        let store = store.clone();
        move |secret: &Secret| {
            let Some(ctx) = ctx.upgrade() else { return };
            let version = secret.resource_version().unwrap_or_default();
            if !ctx
                .shared
                .connections
                .forget_changed(&secret.name_any(), &version)
            {
                return;
            }
            for fed in store.state() {
                for m in members_using(&fed, &secret.name_any()) {
                    ctx.workers.wake(&fed.name_any(), m);
                }
            }
        }
    };
    controller
        // A worker finished: aggregate the federation's status.
        .reconcile_on(finished)
        // A changed credentials or root Secret re-runs the federations using
        // it; the members whose credentials changed run at once, on a new
        // connection (the credentials may now reach another cluster).
        .watches(secrets, watcher::Config::default(), move |secret| {
            credentials_changed(&secret);
            let name = secret.name_any();
            store
                .state()
                .iter()
                .filter(|f| uses_secret(f, &name))
                .map(|f| ObjectRef::from_obj(f.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The members of `fed` whose credentials are in Secret `secret`.
fn members_using<'a>(fed: &'a MeshFederation, secret: &'a str) -> impl Iterator<Item = &'a str> {
    fed.spec
        .members
        .iter()
        .filter(move |m| {
            m.credentials
                .secret_ref
                .as_ref()
                .is_some_and(|r| r.name == secret)
        })
        .map(|m| m.name.as_str())
}

fn uses_secret(fed: &MeshFederation, secret: &str) -> bool {
    let spec = &fed.spec;
    let root = spec
        .ca
        .as_ref()
        .and_then(|c| c.root_secret_ref.as_ref())
        .map(|r| r.name.as_str());
    root == Some(secret)
        || ca::is_generated_root(&fed.name_any(), secret)
        || members_using(fed, secret).next().is_some()
}

async fn reconcile(fed: Arc<MeshFederation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let name = fed.name_any();
    let api = Api::<MeshFederation>::all(ctx.shared.client.clone());
    if name.len() > MAX_FEDERATION_NAME {
        return set_aside_unusable_name(&api, &fed, &ctx).await;
    }
    // One span per reconcile; every member's work nests in a span of its own,
    // so `federation=prod` or `member=east` filters one story out of the logs.
    let span = tracing::info_span!("reconcile", federation = %name);
    let result = finalizer(&api, FINALIZER, fed, |event| async {
        match event {
            Finalizer::Apply(fed) => {
                let result = converge(&fed, &ctx).await;
                if result.is_ok() {
                    ctx.clear_errors(&fed.name_any());
                }
                result
            }
            Finalizer::Cleanup(fed) => clean_up(&fed, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_err() {
        ctx.shared
            .metrics
            .reconciled(&name, ReconcileResult::Error, started.elapsed());
    }
    result
}

/// A federation's name becomes a label value on everything meshfed creates.
const MAX_FEDERATION_NAME: usize = 63;

/// A federation stored before admission refused long names: nothing can have
/// been created for it (every object would carry the invalid label), so it
/// holds no finalizer and can always be deleted.
async fn set_aside_unusable_name(
    api: &Api<MeshFederation>,
    fed: &MeshFederation,
    ctx: &Context,
) -> Result<Action, Error> {
    let finalizers: Vec<&String> = fed
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    if finalizers.len() != fed.finalizers().len() {
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
        api.patch(
            &fed.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    warn!(federation = %fed.name_any(), "federation name longer than {MAX_FEDERATION_NAME} characters; ignored");
    ctx.shared.publish(
        fed,
        vec![Event::new(
 Reason::InvalidName,
            format!("metadata.name is longer than {MAX_FEDERATION_NAME} characters, so it cannot be a label value; recreate the federation with a shorter name"),
        )],
    )
    .await;
    Ok(Action::await_change())
}

fn error_policy(fed: Arc<MeshFederation>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(federation = %fed.name_any(), error = %error, "reconcile error");
    Action::requeue(ctx.error_backoff(&fed.name_any()))
}

impl Context {
    /// Exponential backoff while a federation's reconcile fails.
    fn error_backoff(&self, federation: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(federation.into()).or_insert(0);
        *n = (*n + 1).min(20);
        Duration::from_millis(500u64 << (*n - 1)).min(self.shared.settings.resync)
    }

    fn clear_errors(&self, federation: &str) {
        self.failures
            .lock()
            .expect("failures lock")
            .remove(federation);
    }
}

/// The federation's part: membership, the root, one worker per member, the
/// cleanup of members that left, and the status aggregated from the
/// workers' last runs. It waits for no member's worker; removing a member
/// that left is the one thing it does in a member itself (each removal with
/// its own budget, all at once).
async fn converge(fed: &Arc<MeshFederation>, ctx: &Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let name = fed.name_any();
    let now = Timestamp::now();
    let spec = &fed.spec;
    let mut events = Vec::new();

    // Every member is on record before anything is written into it, so that
    // no later loss (of status, of this process) can orphan what it gets.
    let recorded = known_members(fed, ctx).await?;
    let mut membership = membership::with_spec(&recorded, fed);
    membership::store(
        &ctx.shared.client,
        &ctx.shared.settings.namespace,
        fed,
        &recorded,
        &membership,
    )
    .await?;

    let members: BTreeSet<String> = spec.members.iter().map(|m| m.name.clone()).collect();
    ctx.workers.retain(&name, &members);
    ctx.shared.watches.retain(&name, &members);
    let runs = ctx.workers.runs(&name);
    // Where the members in the spec stand on `target`. A member this process
    // has not heard from (just started, or unreachable since) holds the
    // phase without restarting its wait; one that holds nothing chaining to
    // the federation's roots is not waited for.
    let progress = |target: &str| {
        rotation::Progress::of(spec.members.iter().filter_map(|m| match runs.get(&m.name) {
            Some(r) if !status::rotation_waits_for(&r.report) => None,
            Some(r) if r.report.ca_reached.as_deref() == Some(target) => {
                Some(rotation::Progress::Reached)
            }
            Some(r) if r.report.unreachable.is_none() => Some(rotation::Progress::Behind),
            _ => Some(rotation::Progress::Unknown),
        }))
    };
    let ca = ca::prepare_ca(
        &ctx.shared.client,
        &ctx.shared.settings.namespace,
        fed,
        now,
        progress,
    )
    .await;

    // Failover: who is healthy, and whom peers must not see.
    let health: BTreeMap<String, Option<failover::HealthFinding>> = spec
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
    let decision = tracker.decide(&health, spec.withdrawal().as_ref(), now);
    if tracker.withdrawn != withdrawn_before {
        failover::store(
            &ctx.shared.client,
            &ctx.shared.settings.namespace,
            fed,
            &tracker.withdrawn,
        )
        .await?;
    }
    ctx.failover
        .lock()
        .expect("failover lock")
        .insert(name.clone(), (fed.uid(), tracker.clone()));
    events.extend(failover_events(&decision, spec.withdrawal().as_ref()));
    let withdrawn = Arc::new(tracker.withdrawn_set());
    let (client, namespace) = (&ctx.shared.client, &ctx.shared.settings.namespace);
    let recorded_rollout = rollout::load(client, namespace, fed).await?;
    let installed = |m: &str| runs.get(m).and_then(|r| r.report.installed.clone());
    let rollout = rollout::decide(fed, installed, recorded_rollout.as_ref(), now);
    // Where the rollout stands is on record before any member acts on it:
    // a restart or a wiped status resumes it there (a pause goes on, a gate
    // timeout keeps its start).
    if let Some(r) = &rollout {
        rollout::store(client, namespace, fed, recorded_rollout.as_ref(), &r.status).await?;
    }
    if let Some(r) = &rollout {
        events.extend(r.events.iter().cloned());
    }

    if let Ok(ca) = &ca {
        events.extend(ca.events.iter().cloned());
    }
    // Every member's worker runs whatever the CA's state: a root Secret
    // briefly missing leaves `cacerts` alone but never stops membership,
    // remote secrets or failover.
    // Which cluster each member held, on record before it is relied on.
    let held_before =
        membership::load_clusters(&ctx.shared.client, &ctx.shared.settings.namespace, &name)
            .await?;
    let held = membership::held_clusters(
        &held_before,
        &membership,
        runs.iter().filter_map(|(member, run)| {
            let r = &run.report;
            let held = r.claim_problem.is_none() && r.unreachable.is_none();
            Some((
                member.as_str(),
                r.status.cluster_id.as_deref().filter(|_| held)?,
            ))
        }),
    );
    membership::store_clusters(
        &ctx.shared.client,
        &ctx.shared.settings.namespace,
        fed,
        &held_before,
        &held,
    )
    .await?;
    let resync = ctx.due_for_resync(&name);
    for member in &spec.members {
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
                .as_ref()
                .and_then(|r| r.plans.get(&member.name).cloned())
                .unwrap_or_else(rollout::ControlPlanePlan::observe_only),
        };
        ctx.workers.ensure(&ctx.shared, input, resync);
    }
    let root_status = match &ca {
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
        let (propagation, drain) = spec.ca().rotation_periods();
        status::ca_status(
            &ca.record,
            &ca.material.target_id,
            &runs,
            spec,
            rotation::Periods { propagation, drain },
        )
    });

    let mut reports: Vec<MemberReport> = spec
        .members
        .iter()
        .map(|m| match (runs.get(&m.name), &ca) {
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
        })
        .collect();
    for r in &mut reports {
        let h = health.get(&r.status.name).cloned().flatten();
        r.status.health = tracker.status(&r.status.name, h.as_ref());
        // The phase as decided now (the worker's run may predate it).
        let plan = rollout.as_ref().and_then(|ro| ro.plans.get(&r.status.name));
        r.status.upgrade_phase = plan
            .map(|p| p.phase)
            .filter(|p| {
                !matches!(
                    p,
                    rollout::UpgradePhase::Current | rollout::UpgradePhase::Unknown
                )
            })
            .map(|p| p.as_str().to_string());
    }
    // The status describes the oldest generation any member's run worked from.
    let generation = spec
        .members
        .iter()
        .filter_map(|m| runs.get(&m.name).map(|r| r.generation))
        .chain([fed.metadata.generation])
        .min()
        .flatten();

    // A departed member's cluster may be a current member's (renamed, or
    // refused there until now): clean up only once every current member ran
    // for this generation and said which cluster it has.
    let settled = spec.members.iter().all(|m| {
        runs.get(&m.name)
            .is_some_and(|r| r.generation == fed.metadata.generation)
    });
    let before_leaving = membership.clone();
    let mut facts = ctx.workers.facts(&name);
    facts.retain(|member, _| members.contains(member));
    reports.extend(leave_departed(fed, ctx, &facts, settled, &mut membership, &mut events).await);
    membership::store(
        &ctx.shared.client,
        &ctx.shared.settings.namespace,
        fed,
        &before_leaving,
        &membership,
    )
    .await?;

    let previous = fed.status.as_ref();
    let active_root = ca
        .as_ref()
        .ok()
        .and_then(|ca| ca.record.active.secret.as_deref());
    let kept_secrets = kept_secrets(fed, &ctx.shared.settings.namespace, active_root);
    // A member the last status describes but this process has not heard
    // from yet, with every peer known (it just started): that status stands
    // until each such member reported, so a restart changes nothing users see.
    let unheard = previous.filter(|p| {
        spec.members.iter().any(|m| {
            runs.get(&m.name).is_none_or(|r| !r.saw_every_peer)
                && p.members.iter().any(|s| s.name == m.name)
        })
    });
    let status = match unheard {
        Some(last) => last.clone(),
        None => build_status(
            generation,
            reports,
            root_status,
            status::FleetFacts {
                withdrawal_held: decision.held.as_deref(),
                kept_secrets: &kept_secrets,
                ca: ca_status,
                rollout: rollout.as_ref().map(|r| r.status.clone()),
            },
            previous,
            now,
        ),
    };
    ctx.shared.metrics.members(&name, previous, &status, now);
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    if previous != Some(&status) {
        patch_status(ctx, &name, &status).await?;
    }
    events.extend(newly_exposed(previous, &status));
    ctx.shared.publish(fed, events).await;
    let result = if ready {
        ReconcileResult::Ready
    } else {
        ReconcileResult::NotReady
    };
    ctx.shared
        .metrics
        .reconciled(&name, result, started.elapsed());

    let stats = ReconcileStats {
        duration: started.elapsed(),
        requests: runs
            .iter()
            .filter(|(member, _)| members.contains(*member))
            .filter_map(|(member, run)| Some((member.clone(), run.requests?)))
            .collect(),
        ready,
    };
    info!(federation = %name, ready, members = spec.members.len(), elapsed_ms = stats.duration.as_millis() as u64, "reconciled");
    ctx.stats
        .lock()
        .expect("stats lock")
        .insert(name.clone(), stats);
    // Workers ask for aggregation when they finish; this is the safety
    // resync, the end of a failover grace or settle period, or the end of a
    // root rotation phase's wait.
    let phase_ends = ca.as_ref().ok().and_then(|ca| {
        let (propagation, drain) = spec.ca().rotation_periods();
        ca.record
            .next_phase_at(rotation::Periods { propagation, drain })
    });
    let until_check = decision
        .next_check
        .into_iter()
        .chain(phase_ends)
        .chain(rollout.as_ref().and_then(|r| r.next_check))
        .filter_map(|t| Duration::try_from(t.duration_since(now)).ok())
        .min();
    Ok(Action::requeue(
        until_check.map_or(ctx.shared.settings.resync, |d| {
            d.min(ctx.shared.settings.resync)
        }),
    ))
}

impl Context {
    /// Drops what this process kept about a deleted federation, so that a
    /// new one of the same name starts afresh.
    fn forget(&self, federation: &str) {
        self.stats.lock().expect("stats lock").remove(federation);
        self.resynced
            .lock()
            .expect("resync lock")
            .remove(federation);
        self.failover
            .lock()
            .expect("failover lock")
            .remove(federation);
    }

    /// The federation's failover state, from its record the first time.
    async fn failover_tracker(&self, fed: &MeshFederation) -> Result<failover::Tracker, Error> {
        let federation = &fed.name_any();
        if let Some((uid, t)) = self.failover.lock().expect("failover lock").get(federation)
            && *uid == fed.uid()
        {
            return Ok(t.clone());
        }
        let withdrawn = failover::load(
            &self.shared.client,
            &self.shared.settings.namespace,
            federation,
        )
        .await?;
        Ok(failover::Tracker::with_withdrawn(withdrawn))
    }
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
async fn known_members(
    fed: &MeshFederation,
    ctx: &Context,
) -> Result<membership::Membership, Error> {
    let recorded = membership::load(
        &ctx.shared.client,
        &ctx.shared.settings.namespace,
        &fed.name_any(),
    )
    .await?;
    Ok(recorded.unwrap_or_else(|| {
        fed.status
            .iter()
            .flat_map(|s| s.members.iter())
            .filter_map(|m| Some((m.name.clone(), m.credentials.clone()?)))
            .collect()
    }))
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
            match (renamed, settled) {
                (Some(m), _) => Ok(Removal::ClusterTakenBy(m.name.clone())),
                (None, false) => Err("waiting for the current members' first run".to_string()),
                (None, true) => remove_member(&ctx.shared, fed, name, credentials, taken).await,
            }
        }
    }))
    .await;
    let mut reports = Vec::new();
    for ((name, credentials), result) in departed.iter().zip(results) {
        match result {
            Ok(removal) => {
                events.push(removal.event(name, &fed.name_any()));
                membership.remove(name);
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
                report.unreachable = Some(format!("cleanup after leaving: {e}"));
                reports.push(report);
            }
        }
    }
    reports
}

/// Finalizer: stop the federation's workers, then remove meshfed's objects
/// from every member it can reach.
async fn clean_up(fed: &MeshFederation, ctx: &Context) -> Result<Action, Error> {
    let name = fed.name_any();
    ctx.workers.retain(&name, &BTreeSet::new());
    ctx.shared.watches.retain(&name, &BTreeSet::new());
    let recorded = known_members(fed, ctx).await?;
    let members: Vec<_> = membership::with_spec(&recorded, fed).into_iter().collect();
    let federation = &name;
    let nothing_taken = BTreeMap::new();
    let results = join_all(members.iter().map(|(member, credentials)| {
        let taken = &nothing_taken;
        async move {
            remove_member(&ctx.shared, fed, member, credentials, taken)
                .await
                .map(|removal| removal.event(member, federation))
                .map_err(|e| format!("{member}: {e}"))
        }
    }))
    .await;
    let (done, failures): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let failures: Vec<String> = failures.into_iter().filter_map(Result::err).collect();
    ctx.shared
        .publish(fed, done.into_iter().filter_map(Result::ok).collect())
        .await;
    if !failures.is_empty() {
        return Err(Error::Cleanup(failures.join("; ")));
    }
    if fed.spec.ca().on_removal() == crate::api::RemovalPolicy::Delete {
        // Every root meshfed generated for it: after rotations there may be
        // more than the first (`<federation>-root-ca-<n>`).
        let secrets =
            Api::<Secret>::namespaced(ctx.shared.client.clone(), &ctx.shared.settings.namespace);
        let ours = secrets
            .list_metadata(
                &kube::api::ListParams::default().labels(&crate::render::managed_selector(&name)),
            )
            .await?;
        for generated in ours
            .items
            .iter()
            .map(|s| s.name_any())
            .filter(|s| ca::is_generated_root(&name, s))
        {
            crate::apply::delete(&secrets, &generated).await?;
        }
    }
    membership::forget(&ctx.shared.client, &ctx.shared.settings.namespace, &name).await?;
    ctx.shared
        .metrics
        .forget_federation(&name, fed.status.as_ref());
    ctx.forget(&name);
    info!(federation = %name, "cleaned up every member");
    Ok(Action::await_change())
}

async fn patch_status(
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
