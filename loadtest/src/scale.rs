//! Memory and CPU of the replicas on a cluster with many objects: kwok (`testbed/build kwok`) runs
//! fake nodes that mark pods Running without containers; we create 10,000 pods on them and 2,000
//! Services, and read each replica's RSS and CPU from its cgroup before and after. The webhook
//! caches only Services and PodDisruptionBudgets, stripped to what it needs, and never lists pods
//! (its deleter watches only the pods it drains, metadata only): pods should cost it nothing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options};
use serde::Serialize;
use serde_json::json;

use crate::podstats;
use crate::progress;

const FAKE: &str = "kwok.x-k8s.io/node";

/// kwok, stopped on drop.
struct Kwok(Child);

impl Drop for Kwok {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kwok_dir() -> std::path::PathBuf {
    let cache = std::env::var("PGD_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/pod-graceful-drain")
        });
    cache.join("kwok/v0.8.0")
}

fn start_kwok(kubeconfig: &std::path::Path, log: &std::path::Path) -> anyhow::Result<Kwok> {
    let dir = kwok_dir();
    let bin = dir.join("bin/kwok");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run testbed/build kwok",
        bin.display()
    );
    let log = std::fs::File::create(log)?;
    let child = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--config")
        .arg(dir.join("stages.yaml"))
        .args([
            "--manage-all-nodes=false",
            &format!("--manage-nodes-with-annotation-selector={FAKE}=fake"),
            "--cidr=10.244.128.0/17",
            "--node-ip=10.200.0.99",
            "--node-lease-duration-seconds=40",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Kwok(child))
}

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

async fn create_all<K, F>(api: &Api<K>, n: usize, what: &str, make: F) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    F: Fn(usize) -> K,
{
    let started = Instant::now();
    let pp = PostParams::default();
    futures::stream::iter((0..n).map(|i| {
        let obj = make(i);
        let (api, pp) = (api.clone(), pp.clone());
        async move { api.create(&pp, &obj).await.map(|_| ()) }
    }))
    .buffer_unordered(32)
    .enumerate()
    .map(|(i, r)| {
        if (i + 1) % 1000 == 0 {
            progress(&format!(
                "{what}: {} of {n} ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            ));
        }
        r
    })
    .try_collect::<Vec<_>>()
    .await?;
    Ok(())
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
    let _kwok = start_kwok(env.target.kubeconfig(), &log_dir.join("kwok.log"))?;
    let node_api: Api<Node> = Api::all(env.client.clone());
    let node_names: Vec<String> = (0..nodes).map(|i| format!("pgd-fake-{i}")).collect();
    let started = Instant::now();
    progress(&format!(
        "creating {nodes} fake nodes, {services} Services and {pods} pods"
    ));
    create_all(&node_api, nodes, "fake nodes", |i| {
        serde_json::from_value(json!({
            "metadata": {"name": format!("pgd-fake-{i}"), "annotations": {FAKE: "fake"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": format!("pgd-fake-{i}")}},
            "spec": {"taints": [{"key": FAKE, "value": "fake", "effect": "NoSchedule"}]}
        }))
        .expect("node manifest")
    })
    .await?;
    let ns = env.namespace.clone();
    create_all(&env.api::<Service>(), services, "Services", |i| {
        serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "labels": {"bench": "scale"}},
            "spec": {"selector": {"app": format!("app-{i}")}, "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .expect("service manifest")
    })
    .await?;
    let node_count = node_names.len().max(1);
    create_all(&env.api::<Pod>(), pods, "pods", |i| {
        serde_json::from_value(json!({
            "metadata": {"name": format!("fake-{i}"), "namespace": ns,
                         "labels": {"app": format!("app-{}", i % services.max(1)), "bench": "scale"}},
            "spec": {
                "nodeName": node_names[i % node_count],
                "tolerations": [{"key": FAKE, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "app", "image": "fake"}]
            }
        }))
        .expect("pod manifest")
    })
    .await?;
    let create_seconds = started.elapsed().as_secs_f64();
    // kwok marks the pods Running; wait for most of them, bounded.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut running = 0;
    while Instant::now() < deadline {
        running = env
            .api::<Pod>()
            .list(
                &ListParams::default()
                    .fields("status.phase=Running")
                    .labels("bench=scale"),
            )
            .await?
            .items
            .len();
        progress(&format!("{running} of {pods} fake pods Running"));
        if running >= pods {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
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
    // Force-deleted in one call while kwok still runs: without a kubelet nobody would finish them.
    // The API server may time the call out (504) and go on deleting; cleanup is best effort, the
    // figures are already taken.
    if let Err(e) = env
        .api::<Pod>()
        .delete_collection(
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
            &ListParams::default().labels("bench=scale"),
        )
        .await
    {
        progress(&format!(
            "deleting the fake pods: {e} (the API server goes on)"
        ));
    }
    for n in (0..nodes).map(|i| format!("pgd-fake-{i}")) {
        let _ = node_api.delete(&n, &DeleteParams::default()).await;
    }
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
