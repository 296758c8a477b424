//! Counting what is written in members, as a member would see it: watches on
//! every kind meshfed writes there (any change or deletion after the first
//! listing is a write), and the API server's own count of TokenRequests (a
//! TokenRequest creates no object, so no watch sees it).
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource};

/// Writes seen in a set of members since [`Writes::start`], until dropped.
pub struct Writes {
    seen: Arc<AtomicUsize>,
    listed: Arc<AtomicUsize>,
    streams: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Writes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Writes {
    /// Watches Secrets, ConfigMaps and ServiceAccounts in `istio-system`,
    /// ClusterRoles, ClusterRoleBindings and Namespaces in every client's
    /// cluster, metadata only.
    pub fn start(clients: &[Client]) -> Writes {
        let seen = Arc::new(AtomicUsize::new(0));
        let listed = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for c in clients {
            let ns = "istio-system";
            tasks.push(count(
                Api::<PartialObjectMeta<Secret>>::namespaced(c.clone(), ns),
                &seen,
                &listed,
            ));
            tasks.push(count(
                Api::<PartialObjectMeta<ConfigMap>>::namespaced(c.clone(), ns),
                &seen,
                &listed,
            ));
            tasks.push(count(
                Api::<PartialObjectMeta<ServiceAccount>>::namespaced(c.clone(), ns),
                &seen,
                &listed,
            ));
            tasks.push(count(
                Api::<PartialObjectMeta<ClusterRole>>::all(c.clone()),
                &seen,
                &listed,
            ));
            tasks.push(count(
                Api::<PartialObjectMeta<ClusterRoleBinding>>::all(c.clone()),
                &seen,
                &listed,
            ));
            tasks.push(count(
                Api::<PartialObjectMeta<Namespace>>::all(c.clone()),
                &seen,
                &listed,
            ));
        }
        Writes {
            streams: tasks.len(),
            seen,
            listed,
            tasks,
        }
    }

    /// Whether every watch has made its first listing (writes count after it).
    pub fn ready(&self) -> bool {
        self.listed.load(Ordering::SeqCst) >= self.streams
    }

    /// Writes seen so far.
    pub fn count(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

fn count<K>(
    api: Api<PartialObjectMeta<K>>,
    seen: &Arc<AtomicUsize>,
    listed: &Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let (seen, listed) = (seen.clone(), listed.clone());
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let mut first = true;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::InitDone) if first => {
                    first = false;
                    listed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Apply(_) | Event::Delete(_)) => {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    })
}

/// TokenRequests the API server behind `client` has served (its
/// `apiserver_request_total` for `serviceaccounts/token`).
pub async fn token_requests(client: &Client) -> Result<u64> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(r#"resource="serviceaccounts""#)
                && l.contains(r#"subresource="token""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}
