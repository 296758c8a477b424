//! The federation controller: watches `MeshFederation`, runs the fleet's
//! planners over what the members' workers last found, hands each worker
//! its input, cleans up members that left, and writes the status.
mod context;
mod converge;
mod unreadable;

use context::Triggers;
pub use context::{Context, Error, ReconcileStats};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tracing::{Instrument, debug, info, warn};

use crate::api::MeshFederation;
use crate::events::{Event, Reason};
use crate::fleet::{ca, membership};
use crate::member::cleanup::remove_member;
use crate::telemetry::ReconcileResult;

/// Finalizer that lets meshfed clean members up before the federation goes.
pub const FINALIZER: &str = "meshfed.io/cleanup";

/// Runs the controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let secrets =
        Api::<Secret>::namespaced(ctx.shared.client.clone(), &ctx.shared.settings.namespace);
    // Federations are listed untyped and decoded one by one, so that one
    // the operator cannot read is set aside instead of failing the list
    // for every federation (see `unreadable`).
    let raw = Api::<DynamicObject>::all_with(
        ctx.shared.client.clone(),
        &ApiResource::erase::<MeshFederation>(&()),
    );
    let federations = {
        let client = ctx.shared.client.clone();
        watcher(raw, watcher::Config::default()).filter_map(move |event| {
            let client = client.clone();
            async move {
                let (event, set_aside) = match event {
                    Ok(event) => unreadable::readable(event),
                    Err(e) => return Some(Err(e)),
                };
                if let Some((obj, why)) = set_aside {
                    unreadable::set_aside(&client, &obj, &why).await;
                }
                event.map(Ok)
            }
        })
    };
    let (store, writer) = reflector::store();
    let controller = Controller::for_stream(
        reflector(writer, federations).applied_objects(),
        store.clone(),
    );
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
    let liveness = ctx.liveness.clone();
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
        .run(reconcile_tracked, error_policy, ctx)
        .for_each(|result| {
            let liveness = liveness.clone();
            async move {
                match result {
                    // A worker of a federation that was deleted, or set aside
                    // as unreadable, finished a run: nothing to reconcile.
                    Err(controller::Error::ObjectNotFound(obj)) => {
                        liveness.forget(&obj.name);
                        debug!(federation = %obj.name, "not in the store; not reconciled");
                    }
                    Err(e) => warn!(error = %e, "reconcile failed"),
                    Ok(_) => {}
                }
            }
        })
        .await;
}

/// [`reconcile`], with its start and end reported for `/healthz`: whether
/// the controller runs the federation again without a change (a requeue, or
/// an error's backoff) is what makes it due.
async fn reconcile_tracked(fed: Arc<MeshFederation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let run = ctx.liveness.started(&fed.name_any());
    let result = reconcile(fed, ctx).await;
    run.finished(!matches!(&result, Ok(action) if *action == Action::await_change()));
    result
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
                let result = converge::converge(&fed, &ctx).await;
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

/// Finalizer: stop the federation's workers, then remove meshfed's objects
/// from every member it can reach.
async fn clean_up(fed: &MeshFederation, ctx: &Context) -> Result<Action, Error> {
    let name = fed.name_any();
    ctx.workers.retain(&name, &BTreeSet::new());
    ctx.shared.watches.retain(&name, &BTreeSet::new());
    let recorded = converge::known_members(fed, ctx).await?;
    let members: Vec<_> = membership::with_spec(&recorded, fed)
        .members
        .into_iter()
        .collect();
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
    if fed.spec.ca().on_removal().removes() {
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
