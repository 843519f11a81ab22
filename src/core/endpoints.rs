//! Whether an EndpointSlice still lists a pod as ready: what load balancers may still be sending
//! it traffic by. Read by the deleter (wait before deleting) and the status view.

use std::collections::BTreeSet;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt as _;

use crate::core::keys::SERVICE_NAME_LABEL;

/// A pod as an EndpointSlice's `targetRef` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: Option<String>,
}

/// Whether a slice of one of these Services (`None`: of any) lists the pod as ready.
pub fn lists_ready(
    slices: &[EndpointSlice],
    services: Option<&BTreeSet<String>>,
    pod: &PodRef,
) -> bool {
    slices
        .iter()
        .filter(|s| {
            services.is_none_or(|owners| {
                s.labels()
                    .get(SERVICE_NAME_LABEL)
                    .is_some_and(|svc| owners.contains(svc))
            })
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.target_ref.as_ref())
        .any(|r| {
            r.kind.as_deref() == Some("Pod")
                && r.name.as_deref() == Some(pod.name.as_str())
                && (r.uid.is_none() || r.uid == pod.uid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn slice(service: &str, pod: &str, ready: bool) -> EndpointSlice {
        let mut s = EndpointSlice::default();
        s.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into());
        s.endpoints = vec![Endpoint {
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: Some("u1".into()),
                ..Default::default()
            }),
            ..Default::default()
        }];
        s
    }

    #[test]
    fn only_the_named_services_and_ready_endpoints_count() {
        let pod = PodRef {
            name: "web-1".into(),
            uid: Some("u1".into()),
        };
        let slices = [slice("other", "web-1", true), slice("web", "web-1", false)];
        assert!(!lists_ready(&slices, Some(&set(&["web"])), &pod));
        assert!(lists_ready(&slices, Some(&set(&["web", "other"])), &pod));
        assert!(lists_ready(&slices, None, &pod));
        let stranger = PodRef {
            name: "web-1".into(),
            uid: Some("u2".into()),
        };
        assert!(!lists_ready(&slices, Some(&set(&["other"])), &stranger));
    }
}
