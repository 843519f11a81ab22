//! From Kubernetes objects (as the caches hold them) to the plain facts the decision reads.
//! Pure conversions: the I/O layer looks the objects up, this module only reads them.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::core::budget_rules::Budget;
use crate::core::selector::{InvalidSelector, Selector};

/// Controller kinds whose selector a draining pod must leave (so the controller replaces it at
/// once). A StatefulSet's pods have fixed names: it recreates the pod once the old one is gone.
pub const CONTROLLER_KINDS: &[&str] = &["ReplicaSet", "StatefulSet", "DaemonSet", "Job"];

/// The Service's selector; `None` for Services without one (their endpoints are managed by hand).
pub fn service_selector(service: &Service) -> Option<Selector> {
    Selector::from_service(service.spec.as_ref().and_then(|s| s.selector.as_ref()))
}

/// The pod's controlling owner, as (kind, name), when it is one of [`CONTROLLER_KINDS`].
pub fn controller_ref(pod: &Pod) -> Option<(&str, &str)> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| CONTROLLER_KINDS.contains(&o.kind.as_str()))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

/// A controller's `spec.selector`.
pub fn controller_selector(selector: &LabelSelector) -> Result<Option<Selector>, InvalidSelector> {
    Selector::from_label_selector(selector)
}

/// A budget's selector and status. `Ok(None)` for a budget that selects nothing (empty
/// selector); an invalid selector also selects nothing, as in the eviction handler.
pub fn budget(pdb: &PodDisruptionBudget) -> Option<(Selector, Budget)> {
    let spec = pdb.spec.as_ref()?;
    let selector = Selector::from_label_selector(spec.selector.as_ref()?).ok()??;
    let status = pdb.status.clone().unwrap_or_default();
    Some((
        selector,
        Budget {
            name: pdb.metadata.name.clone().unwrap_or_default(),
            generation: pdb.metadata.generation.unwrap_or(0),
            observed_generation: status.observed_generation.unwrap_or(0),
            disruptions_allowed: status.disruptions_allowed,
            current_healthy: status.current_healthy,
            desired_healthy: status.desired_healthy,
            disrupted_pods: status.disrupted_pods.as_ref().map_or(0, |m| m.len()),
            being_disrupted: status
                .disrupted_pods
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            always_allow_unhealthy: spec.unhealthy_pod_eviction_policy.as_deref()
                == Some("AlwaysAllow"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    use crate::core::test_support::map as labels;

    #[test]
    fn only_controlling_owners_of_known_kinds_count() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "2", "controller": true}
        ]}}))
        .unwrap();
        assert_eq!(controller_ref(&pod), Some(("ReplicaSet", "web-abc")));
        let custom: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "x/v1", "kind": "Rollout", "name": "r", "uid": "3", "controller": true}
        ]}}))
        .unwrap();
        assert_eq!(controller_ref(&custom), None);
    }

    #[test]
    fn budgets_read_their_status_and_policy() {
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "unhealthyPodEvictionPolicy": "AlwaysAllow"},
            "status": {"observedGeneration": 2, "disruptionsAllowed": 1, "currentHealthy": 3,
                       "desiredHealthy": 2, "expectedPods": 3,
                       "disruptedPods": {"a": "2026-11-25T10:00:00Z"}}
        }))
        .unwrap();
        let (selector, b) = budget(&pdb).unwrap();
        assert!(selector.matches(&labels(&[("app", "web")])));
        assert_eq!((b.generation, b.observed_generation), (3, 2));
        assert_eq!((b.disruptions_allowed, b.disrupted_pods), (1, 1));
        assert!(b.always_allow_unhealthy);
    }

    #[test]
    fn empty_or_invalid_budget_selectors_select_nothing() {
        for spec in [
            json!({}),
            json!({"selector": {}}),
            json!({"selector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}),
        ] {
            let pdb: PodDisruptionBudget =
                serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": spec})).unwrap();
            assert!(budget(&pdb).is_none());
        }
    }

    #[test]
    fn services_without_selectors_select_nothing() {
        let svc: Service =
            serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": {}})).unwrap();
        assert!(service_selector(&svc).is_none());
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"name": "s"}, "spec": {"selector": {"app": "web"}}}),
        )
        .unwrap();
        assert!(
            service_selector(&svc)
                .unwrap()
                .matches(&labels(&[("app", "web")]))
        );
    }
}
