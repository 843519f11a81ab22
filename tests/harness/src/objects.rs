//! Manifests of the objects the tests create, built from the testbed's images (which every node
//! has imported; manifests never pull).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};

pub const DEMO_IMAGE: &str = "localhost/testbed/demo-app:1";
pub const PROBE_WEBHOOK_IMAGE: &str = "localhost/testbed/probe-webhook:1";
pub const APP_LABEL: &str = "app";

/// The demo app's container: serves on `http` (8080), ready via /healthz, knows its pod and node.
pub fn demo_container() -> Value {
    json!({
        "name": "app",
        "image": DEMO_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
        ],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}}
    })
}

/// A Deployment of the demo app labelled `app=<name>`.
pub fn demo_deployment(name: &str, replicas: i32) -> Deployment {
    deployment_with(name, replicas, json!({}))
}

/// The same, with extra pod-spec fields merged in (topology spread, node selector, ...).
pub fn deployment_with(name: &str, replicas: i32, extra_pod_spec: Value) -> Deployment {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 15,
        "containers": [demo_container()]
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_pod_spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {APP_LABEL: name}},
            "template": {"metadata": {"labels": {APP_LABEL: name}}, "spec": spec}
        }
    }))
    .expect("demo deployment manifest")
}

/// A ClusterIP Service on port 80 for the pods labelled `app=<name>`.
pub fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {APP_LABEL: name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .expect("service manifest")
}

/// A PodDisruptionBudget for the pods labelled `app=<name>`; `budget` is e.g.
/// `{"minAvailable": 2}` or `{"maxUnavailable": 1}`.
pub fn pdb(name: &str, budget: Value) -> PodDisruptionBudget {
    let mut spec = json!({"selector": {"matchLabels": {APP_LABEL: name}}});
    if let (Some(s), Some(b)) = (spec.as_object_mut(), budget.as_object()) {
        for (k, v) in b {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("pdb manifest")
}

/// A bare demo-app pod with the given labels (not owned by any controller).
pub fn demo_pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 5, "containers": [demo_container()]}
    }))
    .expect("demo pod manifest")
}

/// The pods a budget's status records as disrupted (spent and not yet seen gone); empty when it
/// records none.
pub fn disrupted_pods(budget: &PodDisruptionBudget) -> Vec<String> {
    budget
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.as_ref())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}
