//! A real Prometheus (`testbed/prometheus`) finds the replicas through Kubernetes service discovery,
//! scrapes their health port's /metrics, and serves their series with namespace and pod labels.
//!
//! Ignored in a plain `cargo test`: it needs `testbed/build prometheus` (about 10 minutes cold),
//! which tests/run does not build. Run it with
//! `testbed/build prometheus && cargo test --test e2e_prometheus -- --ignored`.

use std::collections::BTreeSet;
use std::time::Duration;

use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options};
use pgd_harness::prometheus::Prometheus;

#[tokio::test]
#[ignore = "needs testbed/build prometheus, which tests/run does not build"]
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
