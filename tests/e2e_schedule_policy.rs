//! Only pod-graceful-drain starts or changes a drain: the chart's ValidatingAdmissionPolicy refuses
//! everyone else the draining label with the installation's value and changes to a draining pod's
//! schedule, on pods and on pods/status. Without it, anyone allowed to patch a pod (not to delete
//! it) could label it draining with a delete-at in the past and have the leader delete it at once,
//! with the product's rights.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use pgd_harness::product::{Options, Scene};
use pod_graceful_drain::core::keys;
use serde_json::json;

fn refused_with(out: &std::process::Output, words: &str) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(words)
}

#[tokio::test]
async fn only_pod_graceful_drain_may_mark_a_pod_draining_or_change_its_schedule()
-> anyhow::Result<()> {
    let Scene {
        env,
        install: _install,
        pods,
    } = Scene::new("sched-policy", Options::fast(), 2).await?;
    let api: Api<Pod> = env.api();
    let target = pods[0].name_any();
    let instance = env.namespace.clone();

    // A ServiceAccount that may patch pods (and their status) but not delete them.
    let forger = env.patch_only_user("forger").await?;

    // Its rights are real: another label is patched.
    let control = env.patch_pod_as(
        Some(&forger),
        &target,
        false,
        &json!({"metadata": {"labels": {"example.com/touched": "yes"}}}),
    )?;
    assert!(
        control.status.success(),
        "the ServiceAccount cannot patch pods at all, the test would prove nothing: {}",
        String::from_utf8_lossy(&control.stderr)
    );

    // The forgery: draining, due an hour ago.
    let forged = json!({"metadata": {
        "labels": {keys::DRAINING_LABEL: instance},
        "annotations": {keys::STARTED_AT: "2026-01-01T00:00:00Z",
                        keys::DELETE_AT: "2026-01-01T00:00:01Z"}}});
    for status in [false, true] {
        let out = env.patch_pod_as(Some(&forger), &target, status, &forged)?;
        assert!(
            refused_with(&out, "only pod-graceful-drain may mark a pod as draining"),
            "the forged drain was not refused (status subresource: {status}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let now = api.get(&target).await?;
    assert!(!now.labels().contains_key(keys::DRAINING_LABEL));
    assert!(now.metadata.deletion_timestamp.is_none(), "the pod is gone");

    // A real drain, then a person (cluster admin) tries to move its delete-at: refused.
    let victim = pods[1].name_any();
    api.evict(&victim, &Default::default()).await?;
    let draining = api.get(&victim).await?;
    assert_eq!(draining.labels().get(keys::DRAINING_LABEL), Some(&instance));
    let out = env.patch_pod_as(
        None,
        &victim,
        false,
        &json!({"metadata": {"annotations": {keys::DELETE_AT: "2026-01-01T00:00:01Z"}}}),
    )?;
    assert!(
        refused_with(&out, "written by\npod-graceful-drain only")
            || refused_with(&out, "written by pod-graceful-drain only"),
        "a person re-stamped a draining pod's schedule: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        api.get(&victim).await?.annotations()[keys::DELETE_AT],
        draining.annotations()[keys::DELETE_AT]
    );
    // Cancelling the drain (removing the label) stays possible.
    let out = env.patch_pod_as(
        None,
        &victim,
        false,
        &json!({"metadata": {"labels": {keys::DRAINING_LABEL: null}}}),
    )?;
    assert!(
        out.status.success(),
        "removing the draining label was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
