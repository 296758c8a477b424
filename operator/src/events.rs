//! Kubernetes Events on a federation: what meshfed did or found, for
//! `kubectl describe` and `kubectl get events`.
use kube::Resource;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use tracing::warn;

use crate::api::MeshFederation;

/// A Kubernetes Event to publish on the federation.
#[derive(Clone, Debug)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Event {
    pub fn normal(reason: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
        }
    }
    pub fn warning(reason: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            note,
        }
    }
}

/// Publishes Events on federations as the operator (`reportingController:
/// meshfed`, the pod's name as its instance).
pub struct Publisher {
    recorder: Recorder,
}

impl Publisher {
    pub fn new(client: kube::Client) -> Self {
        let reporter = Reporter {
            controller: "meshfed".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes `events` on `fed`; a failure is logged, never fatal.
    pub async fn publish(&self, fed: &MeshFederation, events: Vec<Event>) {
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
