//! Waiting for the cluster to reach a state: always on a watch, always with a deadline.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::wait::{Condition, await_condition};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Waits until the named object satisfies `cond` (given `None` while it does not exist) and
/// returns it as last seen.
pub async fn until<K, C>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: C,
) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    C: Condition<K>,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(e)) => Err(Error::Watch {
            what: what.to_string(),
            message: e.to_string(),
        }),
        Err(_) => Err(Error::Timeout {
            what: what.to_string(),
            after: timeout,
        }),
    }
}

/// Waits until the set of objects selected by `config` satisfies `pred`, and returns that set.
/// The set is kept by a reflector, so `pred` always sees the whole current list.
pub async fn until_list<K, P>(
    api: &Api<K>,
    config: watcher::Config,
    what: &str,
    timeout: Duration,
    mut pred: P,
) -> Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    P: FnMut(&[K]) -> bool,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api.clone(), config)).default_backoff();
    let watch = async {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => {
                    return Err(Error::Watch {
                        what: what.to_string(),
                        message: e.to_string(),
                    });
                }
                // The store is complete only once the initial listing is done.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Ok(_) => {}
            }
            let items: Vec<K> = reader.state().iter().map(|o| (**o).clone()).collect();
            if pred(&items) {
                return Ok(items);
            }
        }
        Err(Error::Watch {
            what: what.to_string(),
            message: "the watch ended".into(),
        })
    };
    tokio::time::timeout(timeout, watch)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
            })
        })
}

/// Polls `probe` every `interval` until it returns `Some`, and returns that; for what no watch can
/// see (an HTTP API such as Jaeger's). An error of `probe` ends the wait at once; a deadline
/// passed is [`Error::Timeout`] naming `what` (a probe still running then is dropped). The probe
/// runs at least once, however short the timeout.
pub async fn poll<T, F>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T>
where
    F: AsyncFnMut() -> Result<Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = tokio::time::timeout_at(deadline, probe())
            .await
            .map_err(|_| Error::Timeout {
                what: what.to_string(),
                after: timeout,
            })??
        {
            return Ok(v);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep_until((now + interval).min(deadline)).await;
    }
}

/// Waits until the Service's EndpointSlices list exactly `n` ready endpoints (what kube-proxy
/// programs), e.g. after a rollout and before measuring traffic.
pub async fn service_endpoints_ready(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    until_list(
        &api,
        config,
        &format!("{n} ready endpoints for Service {service}"),
        timeout,
        |slices: &[EndpointSlice]| {
            let ready = slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count();
            ready == n
        },
    )
    .await
    .map(|_| ())
}

/// Conditions the tests wait for, beyond those kube-runtime provides.
pub mod conditions {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;

    /// The Deployment has rolled out: observed its latest generation, every replica updated and
    /// available, and the Available condition is True.
    pub fn deployment_complete(d: Option<&Deployment>) -> bool {
        let Some(d) = d else { return false };
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(st) = d.status.as_ref() else {
            return false;
        };
        st.observed_generation >= d.metadata.generation
            && st.updated_replicas == Some(want)
            && st.available_replicas == Some(want)
            && st.replicas == Some(want)
            && st.conditions.as_ref().is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
            })
    }

    /// The pod is Running and every container is ready.
    pub fn pod_ready(p: &Pod) -> bool {
        let Some(st) = p.status.as_ref() else {
            return false;
        };
        p.metadata.deletion_timestamp.is_none()
            && st.phase.as_deref() == Some("Running")
            && st
                .conditions
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }

    /// The pod has finished (Succeeded or Failed).
    pub fn pod_finished(p: Option<&Pod>) -> bool {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
    }
}
