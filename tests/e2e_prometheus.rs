//! A real Prometheus (`testbed/prometheus`, built by `testbed/build prometheus`, which tests/run
//! does) finds the replicas through Kubernetes service discovery, scrapes their health port's
//! /metrics, and serves their series with namespace and pod labels; after a rollout the counters
//! say what the rollout did.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options};
use pgd_harness::prometheus::Prometheus;
use pgd_harness::wait::{self, conditions};
use serde_json::json;

#[tokio::test]
async fn prometheus_scrapes_every_replica_found_by_kubernetes_service_discovery()
-> anyhow::Result<()> {
    let env = TestEnv::new("prom").await?;
    let install = Install::new(&env, Options::fast()).await?;
    let prometheus = Prometheus::start_on_testbed(env.target).await?;
    let ns = install.namespace.clone();
    let replicas: BTreeSet<String> = install
        .replicas()
        .await?
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(replicas.len(), 2);

    let targets = prometheus
        .wait_for_targets(
            "both replicas up as scrape targets",
            Duration::from_secs(60),
            |ts| {
                ts.iter()
                    .filter(|t| t.labels.get("namespace") == Some(&ns) && t.health == "up")
                    .count()
                    == 2
            },
        )
        .await?;
    for t in targets
        .iter()
        .filter(|t| t.labels.get("namespace") == Some(&ns))
    {
        assert!(t.scrape_url.ends_with(":8081/metrics"), "{t:?}");
        assert!(replicas.contains(&t.labels["pod"]), "{t:?}");
    }

    let held = prometheus
        .wait_for(
            &format!("pod_graceful_drain_held_requests{{namespace=\"{ns}\"}}"),
            "a held-requests series per replica",
            Duration::from_secs(30),
            |s| s.len() == 2,
        )
        .await?;
    let pods: BTreeSet<String> = held.iter().map(|s| s.label("pod").to_string()).collect();
    assert_eq!(pods, replicas);
    assert!(held.iter().all(|s| s.value == 0.0), "{held:?}");
    Ok(())
}

/// The sum of `expr` over the installation's replicas (0 while no series exists).
fn total(samples: &[pgd_harness::prometheus::Sample]) -> f64 {
    samples.iter().map(|s| s.value).sum()
}

#[tokio::test]
async fn after_a_rollout_the_counters_say_what_it_did() -> anyhow::Result<()> {
    let env = TestEnv::new("prom-rollout").await?;
    let install = Install::new(&env, Options::fast()).await?;
    let prometheus = Prometheus::start_on_testbed(env.target).await?;
    let ns = install.namespace.clone();
    prometheus
        .wait_for_targets("both replicas up", Duration::from_secs(60), |ts| {
            ts.iter()
                .filter(|t| t.labels.get("namespace") == Some(&ns) && t.health == "up")
                .count()
                == 2
        })
        .await?;
    env.serve_demo("web", 3, json!({})).await?;
    // Restart the app: the ReplicaSet controller deletes its 3 old pods, each of which drains.
    let deployments: kube::Api<Deployment> = env.api();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": jiff::Timestamp::now().to_string()
            }}}}})),
        )
        .await?;
    wait::until(
        &deployments,
        "web",
        "the rollout to complete",
        Duration::from_secs(120),
        conditions::deployment_complete,
    )
    .await?;
    let sel = format!("namespace=\"{ns}\"");
    // Every old pod: a DELETE answered as a drain (the controller may ask again before it sees the
    // pod released: at least one each), one Draining event, then (8 s drains) one deletion on
    // time and one Deleted event, and nothing left draining.
    let expect = [
        (
            format!(
                "sum(pod_graceful_drain_admission_requests_total{{{sel},operation=\"delete\",reason=\"drain\"}})"
            ),
            "3 DELETEs answered as drains",
            false,
        ),
        (
            format!("sum(pod_graceful_drain_events_total{{{sel},reason=\"Draining\"}})"),
            "3 Draining events",
            true,
        ),
        (
            format!("sum(pod_graceful_drain_deletions_total{{{sel}}})"),
            "3 deferred deletions",
            true,
        ),
        (
            format!("sum(pod_graceful_drain_events_total{{{sel},reason=\"Deleted\"}})"),
            "3 Deleted events",
            true,
        ),
    ];
    for (expr, what, exactly) in &expect {
        let got = prometheus
            .wait_for(expr, what, Duration::from_secs(60), |s| total(s) >= 3.0)
            .await?;
        if *exactly {
            assert_eq!(total(&got), 3.0, "{what}: {got:?}");
        }
    }
    let late = prometheus
        .query(&format!(
            "sum(pod_graceful_drain_deletions_total{{{sel},timeliness=\"late\"}})"
        ))
        .await?;
    assert_eq!(total(&late), 0.0, "late deletions: {late:?}");
    let draining = prometheus
        .wait_for(
            &format!("sum(pod_graceful_drain_drains_in_progress{{{sel}}})"),
            "no drain left in progress",
            Duration::from_secs(30),
            |s| total(s) == 0.0 && !s.is_empty(),
        )
        .await?;
    assert_eq!(total(&draining), 0.0);
    // Exactly one replica leads.
    let leaders = prometheus
        .wait_for(
            &format!("sum(pod_graceful_drain_leader{{{sel}}})"),
            "one leader",
            Duration::from_secs(30),
            |s| total(s) == 1.0,
        )
        .await?;
    assert_eq!(total(&leaders), 1.0);
    Ok(())
}
