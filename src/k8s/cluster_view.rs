//! What the webhook knows of the cluster beyond the request: Services from a watch cache
//! (selectors only: managed fields and everything else that is not read are dropped), the rest
//! (the pod, its controller, its namespace, its PodDisruptionBudgets) read on demand, since only
//! requests for pods that serve traffic need them. Budgets are read live on purpose: an eviction
//! we turn into a dry-run is never checked against them by the API server, so a budget created a
//! moment ago, or a cache that lags, must not let through an eviction the API would refuse.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::core::budget_rules::Budget;
use crate::core::decision::Facts;
use crate::core::facts;
use crate::core::isolation::Selecting;
use crate::core::selector::Selector;

/// What the decision reads of a pod's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceFacts {
    pub terminating: bool,
    pub selected: bool,
}

#[derive(Clone)]
pub struct ClusterView {
    client: Client,
    services: Store<Service>,
    /// Turns true once the cache holds a complete first listing. (kube-runtime's
    /// `Store::wait_until_ready` wakes only the last of several tasks waiting at once, so exactly
    /// one task waits on it and everyone else on this.)
    ready: tokio::sync::watch::Receiver<bool>,
}

impl ClusterView {
    /// Starts the watch caches; they are usable once [`ClusterView::ready`] returns.
    pub fn start(client: Client) -> ClusterView {
        let (services, writer) = reflector::store();
        let stream = watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|s: &mut Service| {
            s.managed_fields_mut().clear();
            s.annotations_mut().clear();
            s.status = None;
        })
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
        tokio::spawn(stream);
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let store = services.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                let _ = ready_tx.send(true);
            }
        });
        ClusterView {
            client,
            services,
            ready,
        }
    }

    /// Waits until the cache holds a complete first listing (any number of tasks may wait).
    pub async fn ready(&self) {
        let _ = self.ready.clone().wait_for(|r| *r).await;
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Services of the pod's namespace whose selector matches the pod now.
    pub fn selecting_services(&self, pod: &Pod) -> Vec<Selecting> {
        self.services_selecting(&pod.namespace().unwrap_or_default(), pod.labels())
            .into_iter()
            .map(|(name, selector)| Selecting {
                what: format!("Service {name}"),
                selector,
            })
            .collect()
    }

    /// Names and selectors of the Services of `ns` whose selector matches `labels`.
    pub fn services_selecting(
        &self,
        ns: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<(String, Selector)> {
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns))
            .filter_map(|s| Some((s.name_any(), facts::service_selector(s)?)))
            .filter(|(_, sel)| sel.matches(labels))
            .collect()
    }

    /// The Services of `ns` whose EndpointSlices may list a pod that had `labels`: those whose
    /// selector matches them, and those without a selector (their slices are kept by hand or by
    /// another controller, and may list any pod).
    pub fn slice_owners(
        &self,
        ns: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<String> {
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns))
            .filter(|s| facts::service_selector(s).is_none_or(|sel| sel.matches(labels)))
            .map(|s| s.name_any())
            .collect()
    }

    /// Budgets of the pod's namespace whose selector matches the pod now, listed live.
    pub async fn selecting_budgets(
        &self,
        pod: &Pod,
    ) -> Result<Vec<(Selecting, Budget)>, kube::Error> {
        let ns = pod.namespace().unwrap_or_default();
        let labels = pod.labels();
        let listed = Api::<PodDisruptionBudget>::namespaced(self.client.clone(), &ns)
            .list(&kube::api::ListParams::default())
            .await?;
        Ok(listed
            .items
            .iter()
            .filter_map(|p| {
                let (selector, budget) = facts::budget(p)?;
                let what = format!("PodDisruptionBudget {}", p.name_any());
                Some((Selecting { what, selector }, budget))
            })
            .filter(|(s, _)| s.selector.matches(labels))
            .collect())
    }

    /// The selector of the pod's controller (ReplicaSet, StatefulSet, DaemonSet, Job), read now.
    pub async fn controller(&self, pod: &Pod) -> Result<Option<Selecting>, kube::Error> {
        let Some((kind, name)) = facts::controller_ref(pod) else {
            return Ok(None);
        };
        let ns = pod.namespace().unwrap_or_default();
        let c = self.client.clone();
        let selector: Option<LabelSelector> = match kind {
            "ReplicaSet" => Api::<ReplicaSet>::namespaced(c, &ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.spec)
                .map(|s| s.selector),
            "StatefulSet" => Api::<StatefulSet>::namespaced(c, &ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.spec)
                .map(|s| s.selector),
            "DaemonSet" => Api::<DaemonSet>::namespaced(c, &ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.spec)
                .map(|s| s.selector),
            "Job" => Api::<Job>::namespaced(c, &ns)
                .get_opt(name)
                .await?
                .and_then(|o| o.spec)
                .and_then(|s| s.selector),
            _ => None,
        };
        Ok(selector
            .and_then(|s| facts::controller_selector(&s).ok().flatten())
            .map(|selector| Selecting {
                what: format!("{kind} {name}"),
                selector,
            }))
    }

    /// Everything that selects the pod, as the decision reads it, given the Services that do
    /// (`selecting_services`, which the caller has already asked to judge whether the rest is
    /// worth reading).
    pub async fn facts(&self, pod: &Pod, services: Vec<Selecting>) -> Result<Facts, kube::Error> {
        Ok(Facts {
            services,
            controller: self.controller(pod).await?,
            budgets: self.selecting_budgets(pod).await?,
        })
    }

    /// The namespace as the decision needs it: whether it is being deleted (then its pods are let
    /// go at once) and whether `selector` selects it (`None`: every namespace does). A namespace
    /// that does not exist is terminating and selected by nothing.
    pub async fn namespace(
        &self,
        ns: &str,
        selector: Option<&Selector>,
    ) -> Result<NamespaceFacts, kube::Error> {
        let found = Api::<Namespace>::all(self.client.clone())
            .get_opt(ns)
            .await?;
        Ok(match found {
            None => NamespaceFacts {
                terminating: true,
                selected: false,
            },
            Some(n) => NamespaceFacts {
                terminating: n.metadata.deletion_timestamp.is_some(),
                selected: selector.is_none_or(|s| s.matches(n.labels())),
            },
        })
    }

    pub async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
    }
}

/// Shared handle.
pub type SharedView = Arc<ClusterView>;
