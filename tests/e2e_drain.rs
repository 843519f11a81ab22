//! pod-graceful-drain from its image on the testbed, end to end: a rollout leaves every old pod
//! serving until its delete-at and the deleter removes it on time, without slowing the rollout;
//! a person's `kubectl delete` is held and exits 0.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options, PRODUCT_PODS, Scene};
use pgd_harness::wait::{self, conditions};
use pod_graceful_drain::core::keys;
use serde_json::json;

/// Deploys `web` (3 replicas + Service), restarts it, and returns the old pods and the rollout's
/// wall time.
async fn rollout(env: &TestEnv) -> anyhow::Result<(Vec<Pod>, Duration)> {
    env.serve_demo("web", 3, json!({})).await?;
    let deployments: Api<Deployment> = env.api();
    let pods: Api<Pod> = env.api();
    let old = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items;
    let started = Instant::now();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": Timestamp::now().to_string()
            }}}}})),
        )
        .await?;
    let gen_before = deployments.get("web").await?.metadata.generation;
    wait::until(
        &deployments,
        "web",
        "the rollout to complete",
        Duration::from_secs(120),
        move |d: Option<&Deployment>| {
            d.is_some_and(|d| {
                d.metadata.generation >= gen_before
                    && d.status.as_ref().and_then(|s| s.observed_generation) >= gen_before
                    && conditions::deployment_complete(Some(d))
            })
        },
    )
    .await?;
    Ok((old, started.elapsed()))
}

#[tokio::test]
async fn rollout_keeps_old_pods_serving_until_delete_at_without_slowing_down() -> anyhow::Result<()>
{
    // Baseline: the same rollout with no webhook.
    let plain = TestEnv::new("rollout-plain").await?;
    let (_, plain_time) = rollout(&plain).await?;

    let env = TestEnv::new("rollout").await?;
    let _install = Install::new(&env, Options::fast()).await?;
    let (old, with_time) = rollout(&env).await?;
    eprintln!("rollout of 3 replicas: {plain_time:?} without the webhook, {with_time:?} with it");
    assert!(
        with_time <= plain_time * 2 + Duration::from_secs(3),
        "the webhook slowed the rollout: {with_time:?} vs {plain_time:?}"
    );

    // Every old pod is still there, out of the Service and serving, with its schedule.
    let pods: Api<Pod> = env.api();
    let mut delete_at: BTreeMap<String, Timestamp> = BTreeMap::new();
    for p in &old {
        let now = pods.get(&p.name_any()).await?;
        assert_eq!(now.uid(), p.uid(), "{} was replaced", p.name_any());
        assert!(
            now.labels().contains_key(keys::DRAINING_LABEL),
            "{} is not draining: {:?}",
            p.name_any(),
            now.labels()
        );
        assert!(
            now.metadata.deletion_timestamp.is_none(),
            "{} is already terminating",
            p.name_any()
        );
        assert!(
            conditions::pod_ready(&now),
            "{} stopped serving",
            p.name_any()
        );
        let at: Timestamp = now.annotations()[keys::DELETE_AT].parse()?;
        delete_at.insert(p.uid().unwrap(), at);
    }

    // The deleter removes each at its delete-at: not before, and within a few seconds after.
    let uids: Vec<String> = delete_at.keys().cloned().collect();
    let mut seen_gone: BTreeMap<String, Timestamp> = BTreeMap::new();
    wait::until_list(
        &pods,
        watcher::Config::default(),
        "the old pods to be deleted",
        Duration::from_secs(60),
        |ps: &[Pod]| {
            let now = Timestamp::now();
            for uid in &uids {
                let terminating_or_gone = ps
                    .iter()
                    .find(|p| p.uid().as_ref() == Some(uid))
                    .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
                if terminating_or_gone {
                    seen_gone.entry(uid.clone()).or_insert(now);
                }
            }
            seen_gone.len() == uids.len()
        },
    )
    .await?;
    for (uid, at) in &delete_at {
        let gone = seen_gone[uid];
        let late = gone.duration_since(*at);
        eprintln!(
            "pod {uid}: delete started {} ms after its delete-at",
            late.as_millis()
        );
        assert!(
            late.as_millis() >= -500,
            "deleted {} ms before its delete-at",
            -late.as_millis()
        );
        assert!(late.as_secs() < 5, "deleted {} ms late", late.as_millis());
    }
    Ok(())
}

#[tokio::test]
async fn a_persons_delete_is_held_and_exits_zero() -> anyhow::Result<()> {
    let scene = Scene::new("held", Options::fast(), 2).await?;
    let victim = scene.pods[0].name_any();
    let started = Instant::now();
    let out = scene.env.kubectl_delete_pod(&victim, &[]).output()?;
    let held = started.elapsed();
    assert!(
        out.status.success(),
        "kubectl delete failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kubectl delete returned after {held:?} (drain 8 s)");
    assert!(held >= Duration::from_secs(6), "not held: {held:?}");
    assert!(held < Duration::from_secs(20), "held too long: {held:?}");
    Ok(())
}

#[tokio::test]
async fn scale_down_keeps_removed_pods_serving_until_delete_at() -> anyhow::Result<()> {
    let Scene {
        env,
        install: _install,
        ..
    } = Scene::new("scale-down", Options::fast(), 3).await?;
    let deployments: Api<Deployment> = env.api();
    let started = Instant::now();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    wait::until(
        &deployments,
        "web",
        "1 replica",
        Duration::from_secs(60),
        |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.replicas == Some(1) && s.available_replicas == Some(1))
        },
    )
    .await?;
    eprintln!(
        "scale-down 3 -> 1 with the webhook: {:?}",
        started.elapsed()
    );
    let pods: Api<Pod> = env.api();
    let draining: Vec<Pod> = pods
        .list(&ListParams::default().labels(keys::DRAINING_LABEL))
        .await?
        .items;
    assert_eq!(draining.len(), 2, "the two removed pods should be draining");
    for p in &draining {
        assert!(conditions::pod_ready(p), "{} stopped serving", p.name_any());
    }
    for p in &draining {
        wait::until(
            &pods,
            &p.name_any(),
            "the removed pod to be deleted at its delete-at",
            Duration::from_secs(30),
            kube::runtime::wait::conditions::is_deleted(&p.uid().unwrap()),
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_replica_stopping_finishes_the_requests_it_holds() -> anyhow::Result<()> {
    let Scene { env, install, pods } = Scene::new("sigterm", Options::fast(), 2).await?;
    let victim = pods[0].name_any();
    let pods: Api<Pod> = env.api();
    let started = Instant::now();
    let held = env.kubectl_delete_pod(&victim, &[]).spawn()?;
    // Once the pod is draining the request is being held: stop every replica (SIGTERM).
    wait::until(
        &pods,
        &victim,
        "the pod to drain",
        Duration::from_secs(10),
        |p: Option<&Pod>| p.is_some_and(|p| p.labels().contains_key(keys::DRAINING_LABEL)),
    )
    .await?;
    install
        .api::<Pod>()
        .delete_collection(
            &kube::api::DeleteParams::default(),
            &ListParams::default().labels(PRODUCT_PODS),
        )
        .await?;
    let out = tokio::task::spawn_blocking(move || held.wait_with_output()).await??;
    eprintln!(
        "held kubectl delete answered after {:?} while its replica stopped",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "the held request failed when its replica stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(6), "not held");
    Ok(())
}
