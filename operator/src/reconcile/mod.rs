//! The controller: reads the federation, drives every member, writes status.
mod apply;
mod claim;
mod cleanup;
mod control_plane;
mod member;
mod membership;
mod remote_secrets;
mod root;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Config, Resource, ResourceExt};
use tracing::{Instrument, info, warn};

use crate::api::{CertificateStatus, MeshFederation, MeshFederationStatus};
use crate::members::{MemberPool, MemberWatches};
use crate::pki::IntermediatePolicy;
use crate::render::FIELD_MANAGER;
use crate::telemetry::{Metrics, ReconcileResult, RequestCount};
use member::{PreparedMember, prepare_member};
use status::{MemberReport, build_status};

pub use root::generated_root_name;

/// Finalizer that lets meshfed clean members up before the federation goes.
pub const FINALIZER: &str = "meshfed.io/cleanup";

/// How the controller behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace holding member credentials and generated roots.
    pub namespace: String,
    /// Reconcile every federation at least this often (tokens, health, drift).
    pub resync: Duration,
    /// Give up on a member's step after this long.
    pub member_timeout: Duration,
    /// The `helm` binary that renders Istio's charts.
    pub helm: std::path::PathBuf,
    /// Istio chart sets, one directory per version (`<dir>/<version>/base`, ...).
    pub charts_dir: std::path::PathBuf,
}

impl Settings {
    /// The defaults `meshfed-operator --help` shows, for the given namespace.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            resync: Duration::from_secs(60),
            member_timeout: Duration::from_secs(10),
            helm: "helm".into(),
            charts_dir: "/charts".into(),
        }
    }
}

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

/// A Kubernetes Event to publish on the federation.
#[derive(Clone, Debug)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Event {
    fn normal(reason: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
        }
    }
    fn warning(reason: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            note,
        }
    }
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
    client: Client,
    settings: Settings,
    members: MemberPool,
    watches: MemberWatches,
    /// Federations to reconcile because something changed in a member;
    /// taken once by [`run`].
    member_events: Mutex<Option<BoxStream<'static, ObjectRef<MeshFederation>>>>,
    charts: crate::charts::ChartRenderer,
    kinds: control_plane::KindCache,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    stats: Mutex<HashMap<String, ReconcileStats>>,
    metrics: Arc<Metrics>,
}

impl Context {
    /// `client`/`config` talk to the cluster the operator runs in.
    pub fn new(
        client: Client,
        config: Config,
        settings: Settings,
    ) -> Result<Arc<Self>, kube::Error> {
        let reporter = Reporter {
            controller: "meshfed".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (watches, member_events) = MemberWatches::new();
        Ok(Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            watches,
            member_events: Mutex::new(Some(member_events.boxed())),
            members: MemberPool::new(settings.namespace.clone(), config, settings.member_timeout)?,
            charts: crate::charts::ChartRenderer::new(
                settings.helm.clone(),
                settings.charts_dir.clone(),
            ),
            kinds: Default::default(),
            client,
            settings,
            failures: Mutex::default(),
            stats: Mutex::default(),
            metrics: Arc::default(),
        }))
    }

    /// The operator's Prometheus metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Figures of the last finished reconcile of `federation`.
    pub fn last_reconcile(&self, federation: &str) -> Option<ReconcileStats> {
        self.stats
            .lock()
            .expect("stats lock")
            .get(federation)
            .cloned()
    }

    async fn publish(&self, fed: &MeshFederation, events: Vec<Event>) {
        let reference = fed.object_ref(&());
        for e in events {
            let event = KubeEvent {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason.into(),
                note: Some(e.note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&event, &reference).await {
                warn!(error = %err, "publishing event failed");
            }
        }
    }
}

/// Runs the controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let feds = Api::<MeshFederation>::all(ctx.client.clone());
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let controller = Controller::new(feds, watcher::Config::default());
    let store = controller.store();
    let member_events = ctx
        .member_events
        .lock()
        .expect("member events lock")
        .take()
        .expect("the controller runs once per context");
    controller
        // Something meshfed owns changed in a member: repair it now.
        .reconcile_on(member_events)
        // A changed credentials or root Secret re-runs the federations using it.
        .watches(secrets, watcher::Config::default(), move |secret| {
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

fn uses_secret(fed: &MeshFederation, secret: &str) -> bool {
    let spec = &fed.spec;
    let root = spec
        .ca
        .as_ref()
        .and_then(|c| c.root_secret_ref.as_ref())
        .map(|r| r.name.as_str());
    root == Some(secret)
        || *secret == generated_root_name(&fed.name_any())
        || spec.members.iter().any(|m| {
            m.credentials
                .secret_ref
                .as_ref()
                .is_some_and(|r| r.name == secret)
        })
}

async fn reconcile(fed: Arc<MeshFederation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let name = fed.name_any();
    let api = Api::<MeshFederation>::all(ctx.client.clone());
    if name.len() > MAX_FEDERATION_NAME {
        return set_aside_unusable_name(&api, &fed, &ctx).await;
    }
    // One span per reconcile; every member's work nests in a span of its own,
    // so `federation=prod` or `member=east` filters one story out of the logs.
    let span = tracing::info_span!("reconcile", federation = %name);
    let result = finalizer(&api, FINALIZER, fed, |event| async {
        match event {
            Finalizer::Apply(fed) => converge(&fed, &ctx).await,
            Finalizer::Cleanup(fed) => clean_up(&fed, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_err() {
        ctx.metrics
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
    ctx.publish(
        fed,
        vec![Event::warning(
            "InvalidName",
            format!("metadata.name is longer than {MAX_FEDERATION_NAME} characters, so it cannot be a label value; recreate the federation with a shorter name"),
        )],
    )
    .await;
    Ok(Action::await_change())
}

fn error_policy(fed: Arc<MeshFederation>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(federation = %fed.name_any(), error = %error, "reconcile error");
    Action::requeue(ctx.backoff(&fed.name_any(), false))
}

impl Context {
    /// Exponential backoff while a federation is not ready, reset once it is.
    fn backoff(&self, federation: &str, ready: bool) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        if ready {
            failures.remove(federation);
            return self.settings.resync;
        }
        let n = failures.entry(federation.into()).or_insert(0);
        *n = (*n + 1).min(20);
        Duration::from_millis(500u64 << (*n - 1)).min(self.settings.resync)
    }
}

/// One pass towards the desired state of every member.
async fn converge(fed: &MeshFederation, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let name = fed.name_any();
    let now = Timestamp::now();
    let spec = &fed.spec;
    let ca = spec.ca();
    let policy = IntermediatePolicy {
        algorithm: ca.key_algorithm(),
        lifetime: ca.intermediate_lifetime(),
        renew_before: ca.renew_before(),
    };
    let mut events = Vec::new();

    // Every member is on record before anything is written into it, so that
    // no later loss (of status, of this process) can orphan what it gets.
    let recorded = known_members(fed, ctx).await?;
    let mut membership = membership::with_spec(&recorded, fed);
    membership::store(
        &ctx.client,
        &ctx.settings.namespace,
        fed,
        &recorded,
        &membership,
    )
    .await?;

    let root = root::load_or_create_root(&ctx.client, &ctx.settings.namespace, fed, now).await;
    let (mut prepared, root_status) = match &root {
        Ok(root) => {
            if root.created {
                events.push(Event::normal(
                    "RootCreated",
                    format!("generated root CA {}", root.ca.info().serial),
                ));
            }
            let prepared = join_all(spec.members.iter().map(|m| {
                prepare_member(ctx, fed, m, &root.ca, &policy, now)
                    .instrument(tracing::info_span!("member", member = %m.name))
            }))
            .await;
            let info = root.ca.info();
            (
                prepared,
                Ok(CertificateStatus {
                    serial: info.serial.clone(),
                    not_after: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(info.not_after),
                }),
            )
        }
        Err(e) => (Vec::new(), Err(e.clone())),
    };

    remote_secrets::sync_remote_secrets(
        &name,
        &mut prepared,
        spec.token_lifetime(),
        ctx.settings.member_timeout,
        now,
    )
    .await;

    for p in &prepared {
        if let Some(conn) = &p.connection {
            ctx.watches
                .ensure(&name, &p.name, conn, spec.control_plane.is_some());
        }
    }
    ctx.watches.retain(
        &name,
        &spec.members.iter().map(|m| m.name.clone()).collect(),
    );

    let mut reports: Vec<MemberReport> = Vec::new();
    let previous = fed.status.as_ref();
    for p in prepared.iter_mut() {
        events.append(&mut p.events);
        reachability_events(previous, &p.report, &mut events);
    }
    reports.extend(prepared.iter().map(|p: &PreparedMember| p.report.clone()));
    if root.is_err() {
        reports.extend(spec.members.iter().map(|m| {
            // Not contacted this time: keep what was last known of it.
            let known = previous.and_then(|s| s.members.iter().find(|p| p.name == m.name));
            let mut r = MemberReport::new(&m.name);
            r.status.credentials = Some(m.credentials.clone());
            r.status.reachable = known.is_some_and(|k| k.reachable);
            r.status.kubernetes_version = known.and_then(|k| k.kubernetes_version.clone());
            r.certificate_problem = Some("waiting for the root CA".into());
            r
        }));
    }
    let before_leaving = membership.clone();
    reports.extend(leave_departed(fed, ctx, &mut membership, &mut events).await);
    membership::store(
        &ctx.client,
        &ctx.settings.namespace,
        fed,
        &before_leaving,
        &membership,
    )
    .await?;

    let deadline = next_deadline(&reports, policy.renew_before);
    let status = build_status(fed.metadata.generation, reports, root_status, previous, now);
    ctx.metrics.members(&name, previous, &status, now);
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    if previous != Some(&status) {
        patch_status(ctx, &name, &status).await?;
    }
    ctx.publish(fed, events).await;
    let result = if ready {
        ReconcileResult::Ready
    } else {
        ReconcileResult::NotReady
    };
    ctx.metrics.reconciled(&name, result, started.elapsed());

    let stats = ReconcileStats {
        duration: started.elapsed(),
        requests: prepared
            .iter()
            .filter_map(|p| {
                let conn = p.connection.as_ref()?;
                Some((
                    p.name.clone(),
                    conn.requests.snapshot().since(p.request_baseline),
                ))
            })
            .collect(),
        ready,
    };
    info!(federation = %name, ready, members = spec.members.len(), elapsed_ms = stats.duration.as_millis() as u64, "reconciled");
    for (member, count) in &stats.requests {
        ctx.metrics.member_requests(&name, member, *count);
    }
    ctx.stats
        .lock()
        .expect("stats lock")
        .insert(name.clone(), stats);
    Ok(Action::requeue(until_deadline(
        ctx.backoff(&name, ready),
        deadline,
        now,
    )))
}

/// The earliest moment something must be renewed: a remote secret's token
/// due for refresh, or an intermediate reaching its renewal window.
fn next_deadline(reports: &[MemberReport], renew_before: Duration) -> Option<Timestamp> {
    let renew_before = jiff::SignedDuration::try_from(renew_before).unwrap_or_default();
    reports
        .iter()
        .flat_map(|r| {
            let renewal = r
                .status
                .intermediate
                .as_ref()
                .and_then(|i| i.not_after.0.checked_sub(renew_before).ok());
            r.next_token_refresh.into_iter().chain(renewal)
        })
        .min()
}

/// The requeue delay: `regular`, or sooner when a deadline comes first (at
/// least a second later, so that a deadline already passed cannot spin).
fn until_deadline(regular: Duration, deadline: Option<Timestamp>, now: Timestamp) -> Duration {
    let Some(deadline) = deadline else {
        return regular;
    };
    let wait = Duration::try_from(deadline.duration_since(now)).unwrap_or_default();
    regular.min(wait.max(Duration::from_secs(1)))
}

fn reachability_events(
    previous: Option<&MeshFederationStatus>,
    report: &MemberReport,
    events: &mut Vec<Event>,
) {
    let name = &report.status.name;
    let was = previous
        .and_then(|s| s.members.iter().find(|m| &m.name == name))
        .map(|m| m.reachable);
    match (was, report.unreachable.as_ref()) {
        (Some(true) | None, Some(why)) => events.push(Event::warning(
            "MemberUnreachable",
            format!("member {name}: {why}"),
        )),
        (Some(false), None) => events.push(Event::normal(
            "MemberRecovered",
            format!("member {name} is reachable again"),
        )),
        _ => {}
    }
}

/// The recorded membership. A member that left before meshfed kept the
/// record (an upgrade) is known only from status: it is taken from there once.
async fn known_members(
    fed: &MeshFederation,
    ctx: &Context,
) -> Result<membership::Membership, Error> {
    let mut known = membership::load(&ctx.client, &ctx.settings.namespace, &fed.name_any()).await?;
    for m in fed.status.iter().flat_map(|s| s.members.iter()) {
        if let Some(credentials) = &m.credentials {
            known
                .entry(m.name.clone())
                .or_insert_with(|| credentials.clone());
        }
    }
    Ok(known)
}

/// What removing a member's objects came to.
#[derive(Debug)]
enum Removal {
    /// These objects were deleted.
    Removed(Vec<String>),
    /// Its credentials Secret is gone: nothing can be reached, and whatever
    /// meshfed made in its cluster stays there.
    CredentialsGone(String),
    /// Its cluster now belongs to this member (renamed on the same cluster).
    ClusterTakenBy(String),
}

impl Removal {
    fn event(&self, member: &str, federation: &str) -> Event {
        match self {
            Removal::Removed(objects) => Event::normal(
                "MemberRemoved",
                format!("member {member} left; removed {} objects", objects.len()),
            ),
            Removal::CredentialsGone(why) => Event::warning(
                "MemberOrphaned",
                format!(
                    "member {member} left but {why}: its objects stay in its cluster; remove them there with `kubectl delete secret,serviceaccount,configmap -n istio-system -l meshfed.io/federation={federation}` and `kubectl delete clusterrole,clusterrolebinding -l meshfed.io/federation={federation}`"
                ),
            ),
            Removal::ClusterTakenBy(owner) => Event::normal(
                "MemberRemoved",
                format!("member {member} left; its cluster is now member {owner}'s"),
            ),
        }
    }
}

/// Removes meshfed's objects from one member.
async fn remove_member(
    ctx: &Context,
    fed: &MeshFederation,
    member: &str,
    credentials: &crate::api::MemberCredentials,
) -> Result<Removal, String> {
    let conn = match ctx.members.connect(credentials).await {
        Ok(conn) => conn,
        Err(e @ crate::members::ConnectError::SecretMissing { .. }) => {
            return Ok(Removal::CredentialsGone(e.to_string()));
        }
        Err(e) => return Err(e.to_string()),
    };
    let federation = fed.name_any();
    let work = async {
        let claim = claim::recorded_claim(&conn.client).await?;
        if let Some(owner) = claim
            .as_ref()
            .filter(|c| c.federation == federation && c.member != member)
        {
            // Renamed on the same cluster: everything there is the new member's.
            return Ok(Removal::ClusterTakenBy(owner.member.clone()));
        }
        // The claim records every kind meshfed applied: a control plane too.
        let control_plane = fed.spec.control_plane.is_some()
            || claim.is_some_and(|c| c.federation == federation && !c.kinds.is_empty());
        cleanup::remove_from_member(
            &conn.client,
            &federation,
            fed.spec.ca().on_removal(),
            control_plane,
        )
        .await
        .map(Removal::Removed)
    };
    match tokio::time::timeout(ctx.settings.member_timeout, work).await {
        Ok(result) => result.map_err(|e| member::unreachable_reason(&e)),
        Err(_) => Err(format!(
            "no answer within {:?}",
            ctx.settings.member_timeout
        )),
    }
}

/// Recorded members that left the spec: clean them up with the recorded
/// credentials, drop them from `membership` once done, and keep reporting
/// them until then.
async fn leave_departed(
    fed: &MeshFederation,
    ctx: &Context,
    membership: &mut membership::Membership,
    events: &mut Vec<Event>,
) -> Vec<MemberReport> {
    let mut reports = Vec::new();
    let mut removed = Vec::new();
    for (name, credentials) in membership::departed(membership, fed) {
        match remove_member(ctx, fed, name, credentials).await {
            Ok(removal) => {
                events.push(removal.event(name, &fed.name_any()));
                removed.push(name.clone());
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
    for name in removed {
        membership.remove(&name);
    }
    reports
}

/// Finalizer: remove meshfed's objects from every member it can reach.
async fn clean_up(fed: &MeshFederation, ctx: &Context) -> Result<Action, Error> {
    let name = fed.name_any();
    let recorded = known_members(fed, ctx).await?;
    let members: Vec<_> = membership::with_spec(&recorded, fed).into_iter().collect();
    let federation = &name;
    let results = join_all(members.iter().map(|(member, credentials)| async move {
        remove_member(ctx, fed, member, credentials)
            .await
            .map(|removal| removal.event(member, federation))
            .map_err(|e| format!("{member}: {e}"))
    }))
    .await;
    let (done, failures): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let failures: Vec<String> = failures.into_iter().filter_map(Result::err).collect();
    ctx.publish(fed, done.into_iter().filter_map(Result::ok).collect())
        .await;
    if !failures.is_empty() {
        return Err(Error::Cleanup(failures.join("; ")));
    }
    if fed.spec.ca().on_removal() == crate::api::RemovalPolicy::Delete
        && fed.spec.ca().root_secret_ref.is_none()
    {
        let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
        match secrets
            .delete(&generated_root_name(&name), &Default::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    membership::forget(&ctx.client, &ctx.settings.namespace, &name).await?;
    ctx.watches.retain(&name, &Default::default());
    ctx.metrics.forget_federation(&name, fed.status.as_ref());
    info!(federation = %name, "cleaned up every member");
    Ok(Action::await_change())
}

async fn patch_status(
    ctx: &Context,
    name: &str,
    status: &MeshFederationStatus,
) -> Result<(), Error> {
    let api = Api::<MeshFederation>::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "MeshFederation",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CertificateStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_nearest_token_refresh_or_renewal_is_the_deadline() {
        let mut a = MemberReport::new("a");
        a.next_token_refresh = Some(t("2026-01-01T05:00:00Z"));
        let mut b = MemberReport::new("b");
        b.next_token_refresh = Some(t("2026-01-01T03:00:00Z"));
        b.status.intermediate = Some(CertificateStatus {
            serial: "1".into(),
            not_after: Time(t("2026-01-31T00:00:00Z")),
        });
        let renew_before = Duration::from_secs(30 * 24 * 3600);
        assert_eq!(
            next_deadline(&[a.clone(), b], renew_before),
            Some(t("2026-01-01T00:00:00Z")),
            "b's intermediate enters its renewal window first"
        );
        assert_eq!(
            next_deadline(&[a], renew_before),
            Some(t("2026-01-01T05:00:00Z"))
        );
        assert_eq!(next_deadline(&[MemberReport::new("c")], renew_before), None);
    }

    #[test]
    fn a_deadline_before_the_resync_brings_the_requeue_forward() {
        let now = t("2026-01-01T00:00:00Z");
        let resync = 30 * MINUTE;
        assert_eq!(until_deadline(resync, None, now), resync);
        assert_eq!(
            until_deadline(resync, Some(t("2026-01-01T00:10:00Z")), now),
            10 * MINUTE
        );
        assert_eq!(
            until_deadline(resync, Some(t("2026-01-01T02:00:00Z")), now),
            resync
        );
        assert_eq!(
            until_deadline(resync, Some(t("2025-12-31T00:00:00Z")), now),
            Duration::from_secs(1),
            "a passed deadline never spins"
        );
    }
}
