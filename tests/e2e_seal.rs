//! Only pod-graceful-drain can start or move a drain, even where the chart's schedule policy is
//! off (Kubernetes before 1.30, or turned off): the schedule it writes is sealed with a key only
//! it holds, and the deleter acts on nothing else.
//! - A ServiceAccount that may patch pods but not delete them labels a serving pod draining with
//!   a delete-at in the past: nothing is deleted, a Warning event says why, and the pod is judged
//!   afresh when it is really evicted.
//! - A pod's editor re-stamping a real drain's start and delete-at in a loop does not move its
//!   deletion: the pod goes at its sealed delete-at, so the eviction's caller (`kubectl drain`
//!   waiting for the pod to go) is done well before start + max.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use kube::api::EvictParams;
use kube::runtime::conditions::is_deleted;
use kube::{Api, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::drained::event_about;
use pgd_harness::product::{Install, Options, Scene};
use pgd_harness::wait;
use pod_graceful_drain::core::keys;
use pod_graceful_drain::core::notice::EventReason;
use serde_json::json;

fn without_schedule_policy(drain_seconds: u64, max_seconds: u64) -> Options {
    Options {
        drain_seconds,
        values: vec![
            ("schedulePolicy.enabled".into(), "false".into()),
            ("drain.maxSeconds".into(), max_seconds.to_string()),
        ],
        ..Options::fast()
    }
}

/// Waits for an event of `reason` about `pod`, and returns its note.
#[tokio::test]
async fn a_forged_drain_is_not_carried_out_and_the_pod_is_judged_afresh() -> anyhow::Result<()> {
    let Scene {
        env,
        install: _install,
        pods,
    } = Scene::new("seal-forged", without_schedule_policy(8, 20), 3).await?;
    let api: Api<Pod> = env.api();
    let instance = env.namespace.clone();
    let forger = env.patch_only_user("forger").await?;

    // The forgery, on the pod and through the status subresource: draining, due long ago.
    let forged = json!({"metadata": {
        "labels": {keys::DRAINING_LABEL: instance},
        "annotations": {keys::STARTED_AT: "2026-01-01T00:00:00Z",
                        keys::DELETE_AT: "2026-01-01T00:00:01Z",
                        keys::REQUESTED_BY: "system:admin",
                        keys::REASON: "delete",
                        keys::DELETE_OPTIONS: "{}",
                        keys::REMOVED_LABELS: "{}"}}});
    for (pod, status) in [(&pods[0], false), (&pods[1], true)] {
        let out = env.patch_pod_as(Some(&forger), &pod.name_any(), status, &forged)?;
        assert!(
            out.status.success(),
            "the forger could not patch (status subresource: {status}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for pod in &pods[..2] {
        let name = pod.name_any();
        let stored = api.get(&name).await?;
        if stored.labels().get(keys::DRAINING_LABEL) != Some(&instance) {
            // The status subresource dropped the label change: nothing was forged there.
            eprintln!("{name}: the patch did not keep the label");
            continue;
        }
        let note = event_about(
            &env,
            &name,
            EventReason::DrainScheduleForged,
            Duration::from_secs(30),
        )
        .await?
        .note
        .unwrap_or_default();
        eprintln!("{name}: {note}");
        let now = api.get(&name).await?;
        assert_eq!(now.uid(), pod.uid(), "{name} was replaced");
        assert!(
            now.metadata.deletion_timestamp.is_none(),
            "{name} is being deleted on a forged schedule"
        );
    }

    // Evicted for real, the forged pod (still serving: its labels are all there) really drains,
    // with a schedule of the product's own.
    let victim = pods[0].name_any();
    let evicted_at = Timestamp::now();
    api.evict(&victim, &EvictParams::default()).await?;
    let draining = api.get(&victim).await?;
    let a = draining.annotations();
    assert!(a.contains_key(keys::SEAL), "no seal on a real drain: {a:?}");
    let delete_at: Timestamp = a[keys::DELETE_AT].parse()?;
    assert!(
        delete_at >= evicted_at.checked_add(SignedDuration::from_secs(7))?,
        "the forged delete-at was kept: {delete_at}"
    );
    assert!(
        !draining.labels().contains_key("app"),
        "the pod was not taken out of its Service"
    );
    Ok(())
}

#[tokio::test]
async fn re_stamping_a_drain_does_not_move_its_deletion() -> anyhow::Result<()> {
    let env = TestEnv::new("seal-restamp").await?;
    let (drain, max) = (8, 20);
    let _install = Install::new(&env, without_schedule_policy(drain, max)).await?;
    let pods = env.serve_demo("web", 2, json!({})).await?;
    let api: Api<Pod> = env.api();
    let victim = pods[0].clone();
    let name = victim.name_any();
    api.evict(&name, &EvictParams::default()).await?;
    let started: Timestamp = api.get(&name).await?.annotations()[keys::STARTED_AT].parse()?;

    // The pod's editor keeps pushing the drain forward, as fast as the API lets it.
    let editor = {
        let api = api.clone();
        let name = name.clone();
        tokio::spawn(async move {
            loop {
                let now = Timestamp::now();
                let later = now.checked_add(SignedDuration::from_secs(drain as i64));
                let patch = json!({"metadata": {"annotations": {
                    keys::STARTED_AT: now.to_string(),
                    keys::DELETE_AT: later.map(|t| t.to_string()).unwrap_or_default()}}});
                if api
                    .patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                    .is_err_and(|e| matches!(e, kube::Error::Api(ref s) if s.code == 404))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // What `kubectl drain` does after its eviction succeeded: wait for the pod to go.
    let deadline = started.checked_add(SignedDuration::from_secs(drain as i64 + 10))?;
    let wait = Duration::try_from(deadline.duration_since(Timestamp::now()))?;
    let gone = wait::until(
        &api,
        &name,
        "the re-stamped pod to be deleted at its first delete-at",
        wait,
        is_deleted(&victim.uid().unwrap_or_default()),
    )
    .await;
    editor.abort();
    gone?;
    assert!(
        Timestamp::now() < started.checked_add(SignedDuration::from_secs(max as i64))?,
        "the drain outlived start + max"
    );
    Ok(())
}
