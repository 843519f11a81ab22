//! One clock: times are the API server's. A replica whose clock runs 60 s ahead (faked in the
//! process with its test-only offset, not by changing the machine's clock) writes delete-at by
//! the API server's time, deletes nothing early, and refuses to lead while its clock is that far
//! off (it says so); once its clock is right again it leads and carries the drain out.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use kube::api::EvictParams;
use kube::runtime::conditions::is_deleted;
use kube::{Api, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options};
use pgd_harness::wait;
use pod_graceful_drain::core::keys;
use serde_json::json;

#[tokio::test]
async fn a_replica_with_a_clock_60_s_ahead_deletes_nothing_early() -> anyhow::Result<()> {
    let env = TestEnv::new("clock").await?;
    let install = Install::new(
        &env,
        Options {
            replicas: 1,
            drain_seconds: 8,
            extra_env: vec![("PGD_CLOCK_OFFSET_FOR_TESTS_SECONDS".into(), "60".into())],
            ..Options::fast()
        },
    )
    .await?;
    let pods = env.serve_demo("web", 2, json!({})).await?;
    let api: Api<Pod> = env.api();
    let victim = pods[0].clone();
    let evicted = Timestamp::now();
    api.evict(&victim.name_any(), &EvictParams::default())
        .await?;
    let delete_at: Timestamp =
        api.get(&victim.name_any()).await?.annotations()[keys::DELETE_AT].parse()?;
    eprintln!("evicted at {evicted}, delete-at {delete_at}");
    assert!(
        delete_at < evicted.checked_add(SignedDuration::from_secs(20))?,
        "delete-at was written with the skewed clock: {delete_at}"
    );
    // Until its delete-at (less a margin for the round trip), the pod must stay.
    let until = delete_at.duration_since(Timestamp::now()) - SignedDuration::from_millis(500);
    let early = wait::until(
        &api,
        &victim.name_any(),
        "the pod to be deleted early",
        Duration::try_from(until).unwrap_or_default(),
        is_deleted(&victim.uid().unwrap_or_default()),
    )
    .await;
    assert!(early.is_err(), "the pod was deleted before its delete-at");
    let logs = install.replica_logs();
    assert!(
        logs.contains("refuses to lead"),
        "the skewed replica did not say it refuses to lead: {logs}"
    );

    // With its clock right again, it leads and deletes the pod.
    install
        .run_helm(&[
            "upgrade",
            &install.release,
            &pgd_harness::product::chart_dir().to_string_lossy(),
            "--reuse-values",
            "--set-json",
            r#"extraEnv=[{"name":"PGD_CLOCK_OFFSET_FOR_TESTS_SECONDS","value":"0"}]"#,
            "--wait",
        ])
        .await?;
    wait::until(
        &api,
        &victim.name_any(),
        "the pod to be deleted once a replica with a right clock leads",
        Duration::from_secs(90),
        is_deleted(&victim.uid().unwrap_or_default()),
    )
    .await?;
    Ok(())
}
