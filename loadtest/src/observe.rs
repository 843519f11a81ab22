//! When each pod of the app left its Service and when it was gone, from a watch: the moment of
//! removal is the first event that shows the pod being deleted (deletionTimestamp) or taken out
//! by a webhook (pod-graceful-drain's draining label); gone is its DELETED event.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use pod_graceful_drain::core::keys::DRAINING_LABEL;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct PodTimes {
    pub name: String,
    /// Seconds from the load's start.
    pub removed: Option<f64>,
    pub gone: Option<f64>,
}

impl PodTimes {
    /// How long the pod lived after its removal.
    pub fn lived_after_removal(&self) -> Option<f64> {
        Some(self.gone? - self.removed?)
    }
}

#[derive(Clone)]
pub struct Observer {
    pods: Arc<Mutex<BTreeMap<String, PodTimes>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Observer {
    pub fn start(api: Api<Pod>, zero: Instant) -> Observer {
        let pods: Arc<Mutex<BTreeMap<String, PodTimes>>> = Arc::default();
        let record = pods.clone();
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let at = zero.elapsed().as_secs_f64();
                let mut map = record.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => {
                        let t = map.entry(p.name_any()).or_insert_with(|| PodTimes {
                            name: p.name_any(),
                            ..PodTimes::default()
                        });
                        let removed = p.metadata.deletion_timestamp.is_some()
                            || p.labels().contains_key(DRAINING_LABEL);
                        if removed && t.removed.is_none() {
                            t.removed = Some(at);
                        }
                    }
                    Ok(Event::Delete(p)) => {
                        let t = map.entry(p.name_any()).or_default();
                        t.name = p.name_any();
                        t.removed.get_or_insert(at);
                        t.gone = Some(at);
                    }
                    _ => {}
                }
            }
        });
        Observer {
            pods,
            task: Arc::new(task),
        }
    }

    pub fn times(&self, names: &[String]) -> Vec<PodTimes> {
        let map = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .map(|n| {
                map.get(n).cloned().unwrap_or(PodTimes {
                    name: n.clone(),
                    ..PodTimes::default()
                })
            })
            .collect()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}
