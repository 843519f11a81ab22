//! The two writes the product makes to a pod, both guarded so that a stale view, a second
//! "leader" or a retried request can never do harm:
//! - the isolating patch (labels off, schedule on, in one merge patch that carries the pod's
//!   resourceVersion: the API server refuses it with 409 if the pod changed or was replaced. A
//!   resourceVersion is an etcd revision, unique across objects, so it also pins the uid; putting
//!   `uid` itself in a patch is refused with 422 "field is immutable" instead, as seen on the
//!   testbed);
//! - the deferred delete, with uid and resourceVersion preconditions.
//!
//! A 404 means the pod is already gone (someone else finished the job): success. A 409 means the
//! caller must re-read the pod and decide again.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use serde_json::{Map, Value, json};

use crate::core::decision::Isolation;
use crate::core::keys::{DRAINING_LABEL, SEAL};
use crate::core::schedule::{SavedDeleteOptions, Schedule};
use crate::k8s::{FIELD_MANAGER, Outcome, classify};

/// Which pod version a write applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub uid: String,
    pub resource_version: String,
}

impl Version {
    pub fn of(pod: &Pod) -> Option<Version> {
        Some(Version {
            uid: pod.metadata.uid.clone()?,
            resource_version: pod.metadata.resource_version.clone()?,
        })
    }
}

/// The merge patch that isolates a pod and records its schedule. The draining label's value names
/// the installation (`instance`), whose deleter alone acts on the pod. Pure, for unit tests.
pub fn isolation_patch(version: &Version, plan: &Isolation, instance: &str, seal: &str) -> Value {
    let mut labels = Map::new();
    for key in &plan.remove {
        labels.insert(key.clone(), Value::Null);
    }
    labels.insert(DRAINING_LABEL.to_string(), json!(instance));
    let mut annotations = schedule_annotations(&plan.schedule);
    annotations.insert(SEAL.to_string(), json!(seal));
    json!({
        "metadata": {
            "resourceVersion": version.resource_version,
            "labels": labels,
            "annotations": annotations,
        }
    })
}

fn schedule_annotations(schedule: &Schedule) -> Map<String, Value> {
    schedule
        .to_annotations()
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// Applies a merge patch (carrying its resourceVersion precondition) and classifies the outcome.
async fn guarded_patch(api: &Api<Pod>, name: &str, patch: &Value) -> Result<Outcome, kube::Error> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    classify(api.patch(name, &params, &Patch::Merge(patch)).await)
}

/// Applies the isolation to exactly the pod version that was decided on.
pub async fn isolate(
    api: &Api<Pod>,
    name: &str,
    version: &Version,
    plan: &Isolation,
    instance: &str,
    seal: &str,
) -> Result<Outcome, kube::Error> {
    let patch = isolation_patch(version, plan, instance, seal);
    guarded_patch(api, name, &patch).await
}

/// Rewrites the readable schedule (and, for a drain adopted from before seals, the seal) on
/// exactly the pod version that was read: what people read matches what the deleter acts on.
pub async fn rewrite_schedule(
    api: &Api<Pod>,
    name: &str,
    version: &Version,
    schedule: &Schedule,
    seal: Option<&str>,
) -> Result<Outcome, kube::Error> {
    let mut annotations = schedule_annotations(schedule);
    if let Some(seal) = seal {
        annotations.insert(SEAL.to_string(), json!(seal));
    }
    let patch = json!({"metadata": {
        "resourceVersion": version.resource_version,
        "annotations": annotations,
    }});
    guarded_patch(api, name, &patch).await
}

/// Deletes exactly the pod version that was read, with the caller's saved options.
pub async fn delete(
    api: &Api<Pod>,
    name: &str,
    version: &Version,
    options: &SavedDeleteOptions,
) -> Result<Outcome, kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: options
            .grace_period_seconds
            .and_then(|g| u32::try_from(g).ok()),
        propagation_policy: match options.propagation_policy.as_deref() {
            Some("Orphan") => Some(PropagationPolicy::Orphan),
            Some("Foreground") => Some(PropagationPolicy::Foreground),
            Some("Background") => Some(PropagationPolicy::Background),
            _ => None,
        },
        preconditions: Some(Preconditions {
            uid: Some(version.uid.clone()),
            resource_version: Some(version.resource_version.clone()),
        }),
        ..DeleteParams::default()
    };
    classify(api.delete(name, &params).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::schedule::Reason;

    #[test]
    fn the_patch_removes_labels_adds_the_schedule_and_carries_the_version() {
        let plan = Isolation {
            remove: ["app".to_string(), "tier/x".to_string()].into(),
            schedule: Schedule {
                started_at: "2026-11-25T10:00:00Z".parse().unwrap(),
                delete_at: "2026-11-25T10:01:30Z".parse().unwrap(),
                requested_by: "jane".into(),
                reason: Reason::Eviction,
                delete_options: SavedDeleteOptions::default(),
                traceparent: None,
                removed_labels: [("app".to_string(), "web".to_string())].into(),
            },
        };
        let version = Version {
            uid: "u-1".into(),
            resource_version: "42".into(),
        };
        let p = isolation_patch(&version, &plan, "default", "v1.k.p.t");
        assert_eq!(p["metadata"]["annotations"][SEAL], "v1.k.p.t");
        assert_eq!(p["metadata"].get("uid"), None);
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["metadata"]["labels"]["app"], Value::Null);
        assert_eq!(p["metadata"]["labels"]["tier/x"], Value::Null);
        assert_eq!(p["metadata"]["labels"][DRAINING_LABEL], "default");
        assert_eq!(
            p["metadata"]["annotations"][crate::core::keys::DELETE_AT],
            "2026-11-25T10:01:30Z"
        );
        assert_eq!(
            p["metadata"]["annotations"][crate::core::keys::REASON],
            "eviction"
        );
    }
}
