//! Leader failover: drains are scheduled to end one after another; right after the leader has
//! carried out one, it is killed (grace period 0: no SIGTERM handling, the Lease is not released)
//! and we measure when the next scheduled deletion is carried out by whoever leads next.

use std::time::Duration;

use crate::progress;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{EvictParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions::is_deleted};
use kube::{Api, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options};
use pgd_harness::wait;
use pod_graceful_drain::core::keys;
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub lease_seconds: u64,
    pub killed_at: String,
    pub next_delete_at: String,
    pub carried_out_at: String,
    /// Carried out minus scheduled.
    pub late_s: f64,
    /// Carried out minus the kill.
    pub after_kill_s: f64,
    /// The drain ended on time before the kill, for comparison.
    pub late_before_kill_s: f64,
}

async fn gone(api: &Api<Pod>, pod: &Pod) -> anyhow::Result<Timestamp> {
    let uid = pod.uid().unwrap_or_default();
    tokio::time::timeout(
        Duration::from_secs(180),
        await_condition(api.clone(), &pod.name_any(), is_deleted(&uid)),
    )
    .await??;
    Ok(Timestamp::now())
}

pub async fn run(lease_seconds: u64) -> anyhow::Result<Failover> {
    let env = TestEnv::new("failover").await?;
    progress("installing 3 replicas from chart/");
    let install = Install::new(
        &env,
        Options {
            replicas: 3,
            drain_seconds: 10,
            values: vec![
                (
                    "leaderElection.leaseSeconds".into(),
                    lease_seconds.to_string(),
                ),
                ("shutdownGraceSeconds".into(), "5".into()),
            ],
            ..Options::fast()
        },
    )
    .await?;
    let pods = env.serve_demo("web", 4, json!({})).await?;
    let api: Api<Pod> = env.api();
    // Two drains, the second ending 8 s after the first.
    for (p, secs) in pods.iter().zip(["10", "18"]) {
        api.patch(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {keys::DRAIN_SECONDS: secs}}})),
        )
        .await?;
    }
    let mut draining = Vec::new();
    for p in &pods[..2] {
        api.evict(&p.name_any(), &EvictParams::default()).await?;
        let d = wait::until(
            &api,
            &p.name_any(),
            "the pod to drain",
            Duration::from_secs(10),
            |q: Option<&Pod>| q.is_some_and(|q| q.labels().contains_key(keys::DRAINING_LABEL)),
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("pod vanished"))?;
        let at: Timestamp = d.annotations()[keys::DELETE_AT].parse()?;
        draining.push((d, at));
    }
    progress("first drain: waiting for the leader to carry it out");
    let first = gone(&api, &draining[0].0).await?;
    let late_before = (first - draining[0].1).total(jiff::Unit::Second)?;
    let leader = install.kill_leader().await?;
    let killed = Timestamp::now();
    progress(&format!(
        "killed the leader {leader}; the next drain ends at {}",
        draining[1].1
    ));
    let second = gone(&api, &draining[1].0).await?;
    let report = Failover {
        lease_seconds,
        killed_at: killed.to_string(),
        next_delete_at: draining[1].1.to_string(),
        carried_out_at: second.to_string(),
        late_s: (second - draining[1].1).total(jiff::Unit::Second)?,
        after_kill_s: (second - killed).total(jiff::Unit::Second)?,
        late_before_kill_s: late_before,
    };
    progress(&format!(
        "next deletion carried out {:.1} s after the kill, {:.1} s after its delete-at",
        report.after_kill_s, report.late_s
    ));
    Ok(report)
}
