//! The schedule lives only in pod annotations, so it survives the loss of the leader and of every
//! replica; a schedule a person mangled gets a Warning event and a safe outcome; a drain longer
//! than the webhook's budget answers a person's DELETE at the deadline and still deletes on time.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use pgd_harness::drained::{self, delete_at, deleted_within};
use pgd_harness::product::{Options, PRODUCT_PODS, Scene};
use pgd_harness::wait::{self, conditions};
use pod_graceful_drain::core::keys;
use pod_graceful_drain::core::notice::EventReason;
use serde_json::json;

/// Evicts the pod (answered at once) and returns its delete-at.
async fn start_drain(api: &Api<Pod>, name: &str) -> anyhow::Result<Timestamp> {
    api.evict(name, &EvictParams::default()).await?;
    Ok(delete_at(&api.get(name).await?)?)
}

#[tokio::test]
async fn killing_the_leader_mid_drain_still_deletes_on_time() -> anyhow::Result<()> {
    let Scene { env, install, pods } = Scene::new("failover", Options::fast(), 2).await?;
    let api: Api<Pod> = env.api();
    let delete_at = start_drain(&api, &pods[0].name_any()).await?;
    // kill -9: no grace, no SIGTERM handling, the Lease is not released.
    let leader = install.kill_leader().await?;
    eprintln!("killed leader {leader}; the drain ends at {delete_at}");
    // The Lease (6 s) expires before delete-at (8 s after the eviction): the other replica takes
    // over and deletes on time, within a tick and a renewal period.
    deleted_within(&api, &pods[0], delete_at, SignedDuration::from_secs(3)).await?;
    Ok(())
}

#[tokio::test]
async fn restarting_every_replica_mid_drain_loses_no_schedule() -> anyhow::Result<()> {
    let Scene { env, install, pods } = Scene::new(
        "restart-all",
        Options {
            drain_seconds: 15,
            ..Options::fast()
        },
        3,
    )
    .await?;
    let api: Api<Pod> = env.api();
    let mut deadlines = Vec::new();
    for p in &pods[..2] {
        deadlines.push(start_drain(&api, &p.name_any()).await?);
    }
    // Every replica goes at once (graceful stop: the leader releases the Lease).
    install
        .api::<Pod>()
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(PRODUCT_PODS),
        )
        .await?;
    let deployments: Api<Deployment> = install.api();
    wait::until(
        &deployments,
        &install.name,
        "new replicas",
        Duration::from_secs(60),
        conditions::deployment_complete,
    )
    .await?;
    for (p, at) in pods[..2].iter().zip(&deadlines) {
        // Replicas stopping take their grace period; allow for it on top of the schedule.
        deleted_within(&api, p, *at, SignedDuration::from_secs(20)).await?;
    }
    Ok(())
}

/// Where the chart's schedule policy is off (Kubernetes before 1.30, or turned off), a person can
/// still mangle a draining pod's readable schedule: the deleter puts it back as sealed, with a
/// Warning, and deletes the pod at its sealed delete-at. (With the policy on, such a patch is
/// refused: `e2e_schedule_policy`; a forged or re-stamped schedule: `e2e_seal`.)
#[tokio::test]
async fn a_mangled_schedule_gets_a_warning_and_the_pod_is_deleted_at_its_sealed_time()
-> anyhow::Result<()> {
    let scene = Scene::new(
        "mangled",
        Options {
            drain_seconds: 10,
            values: vec![
                ("drain.maxSeconds".into(), "12".into()),
                ("schedulePolicy.enabled".into(), "false".into()),
            ],
            ..Options::fast()
        },
        2,
    )
    .await?;
    let api = scene.pods_api();
    let name = scene.pods[0].name_any();
    let sealed = start_drain(&api, &name).await?;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {keys::DELETE_AT: "next tuesday, maybe"}}}),
        ),
    )
    .await?;
    let events: Api<Event> = scene.env.api();
    wait::until_list(
        &events,
        kube::runtime::watcher::Config::default(),
        "a Warning event about the damaged schedule",
        Duration::from_secs(20),
        |evs: &[Event]| {
            evs.iter().any(|e| {
                drained::is_about(e, &name, EventReason::DrainScheduleRepaired)
                    && e.type_.as_deref() == Some("Warning")
            })
        },
    )
    .await?;
    let repaired = delete_at(&api.get(&name).await?)?;
    assert_eq!(repaired, sealed, "the readable delete-at was not put back");
    deleted_within(&api, &scene.pods[0], repaired, SignedDuration::from_secs(3)).await?;
    Ok(())
}

#[tokio::test]
async fn a_drain_longer_than_the_budget_answers_at_the_deadline_and_deletes_on_time()
-> anyhow::Result<()> {
    let scene = Scene::new(
        "long",
        Options {
            hold_seconds: 5,
            ..Options::fast()
        },
        2,
    )
    .await?;
    let api = scene.pods_api();
    let name = scene.pods[0].name_any();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {keys::DRAIN_SECONDS: "12"}}})),
    )
    .await?;
    let t = Instant::now();
    let out = scene.env.kubectl_delete_pod(&name, &[]).output()?;
    let answered = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("kubectl delete answered after {answered:?}: {stderr}");
    assert!(
        !out.status.success(),
        "a drain longer than the budget was allowed early"
    );
    assert!(
        answered >= Duration::from_secs(4) && answered < Duration::from_secs(10),
        "{answered:?}"
    );
    let delete_at = delete_at(&api.get(&name).await?)?;
    assert!(
        stderr.contains(&delete_at.to_string()),
        "the message does not name delete-at: {stderr}"
    );
    deleted_within(
        &api,
        &scene.pods[0],
        delete_at,
        SignedDuration::from_secs(3),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_held_delete_under_a_slowed_api_is_still_answered_before_the_webhook_timeout()
-> anyhow::Result<()> {
    // One replica, so the review surely reaches the slowed one. Hold 20 s: the webhook's timeout
    // is 25 s, so 5 s of slow API calls counted outside the hold would let the DELETE through.
    // Drain 40 s: longer than the hold, and within reach of a second call's own hold.
    let Scene { env, install, pods } = Scene::new(
        "slowapi",
        Options {
            replicas: 1,
            hold_seconds: 20,
            drain_seconds: 40,
            ..Options::fast()
        },
        2,
    )
    .await?;
    let api: Api<Pod> = env.api();
    let name = pods[0].name_any();
    let (_, ip) = install.replica_with_ip().await?;
    // Every call the replica makes to the API now waits on a 32 kbit/s link: the isolation patch
    // and its events take seconds instead of milliseconds.
    let slow = pgd_harness::faults::SlowApi::new(&ip, 32)?;
    let t = Instant::now();
    let out = env
        .kubectl_delete_pod(&name, &["--request-timeout=60s"])
        .output()?;
    let answered = t.elapsed();
    drop(slow);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("kubectl delete answered after {answered:?}: {stderr}");
    // Past the webhook's timeout the API server goes ahead without us (failurePolicy Ignore) and
    // the pod would be deleted at once, still in its load balancers. The API server calls the
    // webhook twice here: the first answer (held 20 s, then denied) judged a pod our isolation
    // patch had changed, so it calls again on the stored pod with what its request has left
    // (`?timeout=14s`), and that answer must come within it too.
    let ours = stderr.contains("is draining");
    if out.status.success() || !ours {
        eprintln!("{}", install.replica_logs());
    }
    assert!(
        !out.status.success(),
        "the DELETE went through at once after {answered:?}"
    );
    assert!(ours, "not answered by the webhook: {stderr}");
    let pod = api.get(&name).await?;
    assert!(
        pod.metadata.deletion_timestamp.is_none(),
        "the pod is being deleted"
    );
    assert!(
        pod.labels().contains_key(keys::DRAINING_LABEL),
        "the pod was not isolated: {:?}",
        pod.labels()
    );
    let delete_at = delete_at(&pod)?;
    deleted_within(&api, &pods[0], delete_at, SignedDuration::from_secs(3)).await?;
    Ok(())
}
