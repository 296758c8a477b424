//! Watches on what meshfed owns in each member, so that an object deleted or
//! edited there is repaired within seconds instead of at the next resync.
use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::MemberConnection;
use crate::render::{ISTIO_NAMESPACE, managed_selector};

/// The running watches, by federation and member, and the channel that
/// says which member (federation, member) saw a change.
pub struct MemberWatches {
    trigger: mpsc::UnboundedSender<(String, String)>,
    running: Mutex<HashMap<(String, String), Running>>,
}

struct Running {
    connection: u64,
    control_plane: bool,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MemberWatches {
    /// The registry, and the stream of members whose objects changed.
    pub fn new() -> (Self, impl Stream<Item = (String, String)> + Send + 'static) {
        let (trigger, events) = mpsc::unbounded_channel();
        let watches = Self {
            trigger,
            running: Mutex::default(),
        };
        (watches, receiver_stream(events))
    }

    /// Watches `member` of `federation` through `conn`, unless it already is
    /// through this very connection. With `control_plane`, the control
    /// plane's Deployments and Services are watched too.
    pub fn ensure(
        &self,
        federation: &str,
        member: &str,
        conn: &MemberConnection,
        control_plane: bool,
    ) {
        let key = (federation.to_string(), member.to_string());
        let mut running = self.running.lock().expect("watches lock");
        if running
            .get(&key)
            .is_some_and(|r| r.connection == conn.id && r.control_plane == control_plane)
        {
            return;
        }
        let task = tokio::spawn(watch_member(
            conn.client.clone(),
            key.clone(),
            control_plane,
            self.trigger.clone(),
        ));
        running.insert(
            key,
            Running {
                connection: conn.id,
                control_plane,
                task,
            },
        );
    }

    /// Stops the watches of `federation`'s members that are not in `members`.
    pub fn retain(&self, federation: &str, members: &BTreeSet<String>) {
        self.running
            .lock()
            .expect("watches lock")
            .retain(|(f, m), _| f != federation || members.contains(m));
    }
}

/// What `receiver` receives, as a stream.
pub(crate) fn receiver_stream<T: Send + 'static>(
    receiver: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        let next = receiver.recv().await?;
        Some((next, receiver))
    })
}

/// Every kind meshfed owns in a member, watched by meshfed's labels, the
/// `kube-system` (its identity) and `istio-system` namespaces, and istiod's
/// `istio-ca-root-cert`, metadata only: any change or deletion wakes the
/// member's worker.
async fn watch_member(
    client: Client,
    member: (String, String),
    control_plane: bool,
    trigger: mpsc::UnboundedSender<(String, String)>,
) {
    let federation = member.0.clone();
    let config = watcher::Config::default().labels(&managed_selector(&federation));
    let ns = ISTIO_NAMESPACE;
    type Meta<K> = PartialObjectMeta<K>;
    let mut streams = vec![
        changes(Api::<Meta<Secret>>::namespaced(client.clone(), ns), &config),
        changes(
            Api::<Meta<ServiceAccount>>::namespaced(client.clone(), ns),
            &config,
        ),
        changes(
            Api::<Meta<ConfigMap>>::namespaced(client.clone(), ns),
            &config,
        ),
        changes(Api::<Meta<ClusterRole>>::all(client.clone()), &config),
        changes(
            Api::<Meta<ClusterRoleBinding>>::all(client.clone()),
            &config,
        ),
    ];
    // The roots the member's istiod distributes: a rotation phase is done in
    // a member once istiod has rewritten them, which no other event marks.
    let root_cert = watcher::Config::default().fields("metadata.name=istio-ca-root-cert");
    streams.push(changes(
        Api::<Meta<ConfigMap>>::namespaced(client.clone(), ns),
        &root_cert,
    ));
    // The cluster's identity, and the namespace everything meshfed owns is in.
    for ns in ["kube-system", ISTIO_NAMESPACE] {
        let by_name = watcher::Config::default().fields(&format!("metadata.name={ns}"));
        streams.push(changes(
            Api::<Meta<Namespace>>::all(client.clone()),
            &by_name,
        ));
    }
    if control_plane {
        streams.push(changes(
            Api::<Meta<Deployment>>::namespaced(client.clone(), ns),
            &config,
        ));
        streams.push(changes(
            Api::<Meta<Service>>::namespaced(client.clone(), ns),
            &config,
        ));
    }
    let mut all = futures::stream::select_all(streams);
    while let Some(what) = all.next().await {
        debug!(federation = %federation, member = %member.1, object = %what, "member object changed");
        if trigger.send(member.clone()).is_err() {
            return;
        }
    }
}

/// "Kind/name" of every object of `api` that is changed or deleted after the
/// watch's first listing (which only says what already exists).
fn changes<K>(
    api: Api<PartialObjectMeta<K>>,
    config: &watcher::Config,
) -> std::pin::Pin<Box<dyn Stream<Item = String> + Send>>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).to_string();
    let mut listings = 0u32;
    watch(api, config.clone())
        .default_backoff()
        .filter_map(move |event| {
            let what = match event {
                Ok(Event::Apply(o) | Event::Delete(o)) => {
                    Some(format!("{kind}/{}", o.metadata.name.unwrap_or_default()))
                }
                // A listing after the first one follows a broken watch: what
                // happened in between is unknown, so look again.
                Ok(Event::InitDone) => {
                    listings += 1;
                    (listings > 1).then(|| format!("{kind} (relisted)"))
                }
                Ok(_) => None,
                Err(e) => {
                    debug!(error = %e, kind = %kind, "member watch interrupted; retrying");
                    None
                }
            };
            futures::future::ready(what)
        })
        .boxed()
}
