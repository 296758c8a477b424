//! What the federation controller keeps between reconciles: the members'
//! shared context and workers, and per federation its backoff, resync
//! clock, failover state and last figures.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Config, ResourceExt};

use crate::api::MeshFederation;
use crate::connection::{MemberPool, MemberWatches};
use crate::events::Publisher;
use crate::fleet::failover;
use crate::member::MemberContext;
use crate::member::worker::Workers;
use crate::settings::Settings;
use crate::telemetry::{Liveness, Metrics, RequestCount};

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
    pub(super) shared: Arc<MemberContext>,
    pub(super) workers: Arc<Workers>,
    /// What the controller listens to besides federations and Secrets: the
    /// members whose objects changed, and the federations whose workers
    /// finished a run. Taken once by [`run`].
    pub(super) triggers: Mutex<Option<Triggers>>,
    /// When each federation last woke all its workers (the safety resync).
    pub(super) resynced: Mutex<HashMap<String, Instant>>,
    pub(super) failures: Mutex<HashMap<String, u32>>,
    pub(super) stats: Mutex<HashMap<String, ReconcileStats>>,
    /// Failover state by federation (and its UID: a federation deleted
    /// without its finalizer and created again starts afresh), loaded from
    /// its record on first use.
    pub(super) failover: Mutex<HashMap<String, (Option<String>, failover::Tracker)>>,
    /// Each reconcile's start and end, for `/healthz`.
    pub(super) liveness: Arc<Liveness>,
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
            liveness: Arc::default(),
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
    pub(super) fn due_for_resync(&self, federation: &str) -> bool {
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

    /// Whether the controller loop makes progress (what `/healthz` reports).
    pub fn liveness(&self) -> Arc<Liveness> {
        self.liveness.clone()
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
pub(super) struct Triggers {
    pub(super) changed: BoxStream<'static, (String, String)>,
    pub(super) finished: BoxStream<'static, ObjectRef<MeshFederation>>,
}

impl Context {
    /// Exponential backoff while a federation's reconcile fails.
    pub(super) fn error_backoff(&self, federation: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(federation.into()).or_insert(0);
        *n = (*n + 1).min(20);
        Duration::from_millis(500u64 << (*n - 1)).min(self.shared.settings.resync)
    }

    pub(super) fn clear_errors(&self, federation: &str) {
        self.failures
            .lock()
            .expect("failures lock")
            .remove(federation);
    }
}

impl Context {
    /// Drops what this process kept about a deleted federation, so that a
    /// new one of the same name starts afresh.
    pub(super) fn forget(&self, federation: &str) {
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
    pub(super) async fn failover_tracker(
        &self,
        fed: &MeshFederation,
    ) -> Result<failover::Tracker, Error> {
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
