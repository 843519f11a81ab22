//! The deleter, run in-process against the testbed: two deleters that both believe they lead
//! (what the election library can briefly allow) delete a due pod exactly once and neither fails;
//! a pod still listed as ready in an EndpointSlice is kept, with an event, up to the maximum.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::runtime::wait::conditions::is_deleted;
use kube::{Api, ResourceExt};
use pgd_harness::drained::events_about;
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, objects};
use pod_graceful_drain::core::decision::{Isolation, LongDrain, Policy};
use pod_graceful_drain::core::notice::EventReason;
use pod_graceful_drain::core::schedule::{DrainBounds, Reason, SavedDeleteOptions, Schedule};
use pod_graceful_drain::core::seal::{KEY_BYTES, Key, KeySet};
use pod_graceful_drain::deleter::Deleter;
use pod_graceful_drain::k8s::Outcome;
use pod_graceful_drain::k8s::cluster_view::ClusterView;
use pod_graceful_drain::k8s::events::Events;
use pod_graceful_drain::k8s::pod_writes::{self, Version};
use pod_graceful_drain::k8s::seal_keys::SealKeys;
use pod_graceful_drain::leader::Leadership;
use serde_json::json;
use tokio::sync::watch;

const BOUNDS: DrainBounds = DrainBounds {
    default: Duration::from_secs(5),
    min: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// The keys both the test (sealing, as admission does) and the deleters use.
fn keys() -> KeySet {
    let made = Timestamp::now() - SignedDuration::from_hours(1);
    KeySet::first(Key::new("test".into(), &[7; KEY_BYTES], made), None)
}

/// A ready demo pod, drained by `instance` with delete-at `in_secs` from now.
async fn draining_pod(
    env: &TestEnv,
    name: &str,
    instance: &str,
    in_secs: i64,
) -> anyhow::Result<Pod> {
    let api: Api<Pod> = env.api();
    api.create(
        &PostParams::default(),
        &objects::demo_pod(name, json!({"app": name})),
    )
    .await?;
    let pod = wait::until(
        &api,
        name,
        "the pod to be ready",
        Duration::from_secs(60),
        |p: Option<&Pod>| p.is_some_and(conditions::pod_ready),
    )
    .await?
    .expect("pod");
    let now = Timestamp::now();
    let plan = Isolation {
        remove: ["app".to_string()].into(),
        schedule: Schedule {
            started_at: now,
            delete_at: now.checked_add(SignedDuration::from_secs(in_secs))?,
            requested_by: "test".into(),
            reason: Reason::Delete,
            delete_options: SavedDeleteOptions {
                grace_period_seconds: Some(1),
                propagation_policy: None,
            },
            traceparent: None,
            removed_labels: [("app".to_string(), name.to_string())].into(),
        },
    };
    let version = Version::of(&pod).expect("version");
    let seal = keys().seal(&version.uid, instance, &plan.schedule, now);
    assert_eq!(
        pod_writes::isolate(&api, name, &version, &plan, instance, &seal).await?,
        Outcome::Done
    );
    Ok(api.get(name).await?)
}

fn deleter(env: &TestEnv, identity: &str, instance: &str, endpoint_wait_max: Duration) -> Deleter {
    Deleter {
        client: env.client.clone(),
        leadership: Leadership::fixed(true),
        events: Events::new(env.client.clone(), identity),
        policy: Policy {
            excluded_namespaces: Default::default(),
            namespace_selector: None,
            own_user: "system:serviceaccount:pgd:pod-graceful-drain".into(),
            controller_users: Default::default(),
            bounds: BOUNDS,
            hold_budget: Duration::from_secs(20),
            long_drain: LongDrain::Deny,
        },
        endpoint_wait_max,
        instance: instance.to_string(),
        keys: SealKeys::fixed(keys()),
        view: ClusterView::start(env.client.clone()),
        clock: pod_graceful_drain::k8s::clock::Clock::system(),
        metrics: pod_graceful_drain::metrics::Metrics::new(),
    }
}

#[tokio::test]
async fn two_deleters_that_both_lead_delete_a_due_pod_exactly_once() -> anyhow::Result<()> {
    let env = TestEnv::new("two-leaders").await?;
    let instance = env.namespace.clone();
    let pod = draining_pod(&env, "due", &instance, 2).await?;
    let (stop_tx, stop) = watch::channel(false);
    let a = tokio::spawn(deleter(&env, "a", &instance, Duration::from_secs(5)).run(stop.clone()));
    let b = tokio::spawn(deleter(&env, "b", &instance, Duration::from_secs(5)).run(stop));
    let api: Api<Pod> = env.api();
    wait::until(
        &api,
        "due",
        "the due pod to be deleted",
        Duration::from_secs(20),
        is_deleted(&pod.uid().unwrap()),
    )
    .await?;
    // Let both run a few more passes over the now-missing pod.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    a.await?;
    b.await?;
    assert_eq!(
        events_about(&env, "due", EventReason::Deleted).await?.len(),
        1,
        "the pod was deleted more than once"
    );
    Ok(())
}

#[tokio::test]
async fn a_pod_still_ready_in_an_endpoint_slice_is_kept_up_to_the_maximum() -> anyhow::Result<()> {
    let env = TestEnv::new("endpoints").await?;
    let instance = env.namespace.clone();
    let pod = draining_pod(&env, "listed", &instance, 1).await?;
    // A hand-managed EndpointSlice of a Service without a selector (as a load balancer
    // controller might keep) still lists it.
    env.api::<k8s_openapi::api::core::v1::Service>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "manual"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))?,
        )
        .await?;
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("ip");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "manual", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "listed", "namespace": env.namespace, "uid": pod.uid()}}]
    }))?;
    env.api::<EndpointSlice>()
        .create(&PostParams::default(), &slice)
        .await?;
    let delete_at: Timestamp =
        pod.annotations()[pod_graceful_drain::core::keys::DELETE_AT].parse()?;
    let (stop_tx, stop) = watch::channel(false);
    let listed_deleter = deleter(&env, "a", &instance, Duration::from_secs(6));
    let metrics = listed_deleter.metrics.clone();
    let run = tokio::spawn(listed_deleter.run(stop));
    let api: Api<Pod> = env.api();
    wait::until(
        &api,
        "listed",
        "the pod to be deleted after the maximum wait",
        Duration::from_secs(30),
        is_deleted(&pod.uid().unwrap()),
    )
    .await?;
    let gone = Timestamp::now();
    let _ = stop_tx.send(true);
    run.await?;
    let waited = gone.duration_since(delete_at);
    eprintln!(
        "kept {} ms past delete-at while listed ready",
        waited.as_millis()
    );
    assert!(
        waited.as_secs() >= 5,
        "deleted while still listed: after {} ms",
        waited.as_millis()
    );
    assert_eq!(
        events_about(&env, "listed", EventReason::WaitingForEndpoints)
            .await?
            .len(),
        1
    );
    assert_eq!(
        events_about(&env, "listed", EventReason::EndpointsWaitExceeded)
            .await?
            .len(),
        1
    );
    // The metrics tell the same story: one wait started and ran out, one deletion, past due.
    let text = metrics.encode();
    for line in [
        r#"pod_graceful_drain_endpoint_waits_total{outcome="started"} 1"#,
        r#"pod_graceful_drain_endpoint_waits_total{outcome="exceeded"} 1"#,
        r#"pod_graceful_drain_deletions_total{timeliness="late"} 1"#,
        "pod_graceful_drain_deletion_lateness_seconds_count 1",
        r#"pod_graceful_drain_events_total{reason="Deleted",type="Normal"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    Ok(())
}
