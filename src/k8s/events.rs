//! Kubernetes Events on the pod for every decision, so `kubectl describe pod` tells the story.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Semaphore;

use crate::core::notice::{Notice, Severity};

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    /// Events on their way; past the cap a new one is dropped (and counted): an answer never
    /// waits for an event, and a flood of requests cannot pile up tasks.
    in_flight: Arc<Semaphore>,
    dropped: Arc<AtomicU64>,
}

/// Events being published at once.
const MAX_IN_FLIGHT: usize = 64;

impl Events {
    pub fn new(client: Client, instance: &str) -> Events {
        Events {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "pod-graceful-drain".into(),
                    instance: Some(instance.to_string()),
                },
            ),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            dropped: Arc::default(),
        }
    }

    /// Publishes an event in the background: the caller (an admission answer, with the API
    /// server's timeout running) does not wait for it.
    pub fn publish_in_background(&self, pod: &Pod, notice: Notice) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    total = n,
                    reason = %notice.reason,
                    "too many events on their way; dropping one"
                );
            }
            return;
        };
        let (events, reference) = (self.clone(), pod.object_ref(&()));
        tokio::spawn(async move {
            events.publish_ref(&reference, notice).await;
            drop(permit);
        });
    }

    /// Publishes an event; a failure to publish is logged, never fatal (events are best effort).
    pub async fn publish(&self, pod: &Pod, notice: Notice) {
        self.publish_ref(&pod.object_ref(&()), notice).await
    }

    async fn publish_ref(&self, reference: &ObjectReference, notice: Notice) {
        let reason = notice.reason;
        let event = Event {
            type_: match reason.severity() {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: reason.as_str().to_string(),
            note: Some(truncate(notice.note, 1000)),
            action: "Drain".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, %reason, "could not publish an event");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
