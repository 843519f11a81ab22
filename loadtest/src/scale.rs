//! Memory and CPU of the replicas on a cluster with many objects: kwok (`testbed/build kwok`) runs
//! fake nodes that mark pods Running without containers; we create 10,000 pods on them and 2,000
//! Services, and read each replica's RSS and CPU from its cgroup before and after. The webhook
//! caches only Services and PodDisruptionBudgets, stripped to what it needs, and never lists pods
//! (its deleter watches only the pods it drains, metadata only): pods should cost it nothing.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options};
use serde::Serialize;
use serde_json::json;

use crate::kwok::{Kwok, create_all, wait_running};
use crate::podstats;
use crate::progress;

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaFigures {
    pub pod: String,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub cpu_seconds_during: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub fake_nodes: usize,
    pub pods: usize,
    pub services: usize,
    pub running: usize,
    pub create_seconds: f64,
    pub replicas: Vec<ReplicaFigures>,
}

pub async fn run(
    pods: usize,
    services: usize,
    nodes: usize,
    log_dir: &std::path::Path,
) -> anyhow::Result<ScaleReport> {
    let env = TestEnv::new("scale").await?;
    progress("installing 2 replicas from chart/");
    let install = Install::new(
        &env,
        Options {
            replicas: 2,
            ..Options::fast()
        },
    )
    .await?;
    let replicas: Vec<Pod> = install.replicas().await?;
    let uids: Vec<String> = replicas
        .iter()
        .map(|p| p.uid().unwrap_or_default())
        .collect();
    let before: Vec<(f64, f64)> = uids
        .iter()
        .map(|u| {
            Ok((
                podstats::rss_bytes(u, "pod-graceful-drain")? as f64 / 1048576.0,
                podstats::cpu_seconds(u)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    std::fs::create_dir_all(log_dir)?;
    let started = Instant::now();
    progress(&format!(
        "creating {nodes} fake nodes, {services} Services and {pods} pods"
    ));
    let kwok = Kwok::start(
        &env.client,
        env.target.kubeconfig(),
        &log_dir.join("kwok.log"),
        nodes,
    )
    .await?;
    create_all(&env.api::<Service>(), services, "Services", |i| {
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "labels": {"bench": "scale"}},
            "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .expect("service manifest")
    })
    .await?;
    create_all(&env.api::<Pod>(), pods, "pods", |i| {
        kwok.pod(
            i,
            &format!("fake-{i}"),
            json!({"app": format!("app-{}", i % services.max(1)), "bench": "scale"}),
        )
    })
    .await?;
    let create_seconds = started.elapsed().as_secs_f64();
    // kwok marks the pods Running; wait for most of them, bounded.
    let running = wait_running(
        &env.api::<Pod>(),
        "bench=scale",
        pods,
        Duration::from_secs(300),
    )
    .await?;
    let mut figures = Vec::new();
    for ((p, u), (rss0, cpu0)) in replicas.iter().zip(&uids).zip(&before) {
        figures.push(ReplicaFigures {
            pod: p.name_any(),
            rss_before_mib: *rss0,
            rss_after_mib: podstats::rss_bytes(u, "pod-graceful-drain")? as f64 / 1048576.0,
            cpu_seconds_during: podstats::cpu_seconds(u)? - cpu0,
        });
    }
    progress("removing the fake objects");
    kwok.remove(&env.api::<Pod>(), "bench=scale").await;
    drop(install);
    Ok(ScaleReport {
        fake_nodes: nodes,
        pods,
        services,
        running,
        create_seconds,
        replicas: figures,
    })
}
