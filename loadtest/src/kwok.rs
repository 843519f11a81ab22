//! kwok (`testbed/build kwok`): fake nodes that mark the pods bound to them Running and Ready
//! (with a pod IP) without containers, and finish their deletion at once. Shared by the
//! benchmarks that need many pods (`scale`, `due`): starting kwok, creating and removing its
//! nodes, the manifest of a pod on them, and creating many objects at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::progress;

/// The annotation (and taint) of the nodes kwok manages.
pub const FAKE: &str = "kwok.x-k8s.io/node";

/// kwok and its fake nodes: kwok is stopped on drop (delete the nodes first, [`Kwok::remove_nodes`]).
pub struct Kwok {
    child: Child,
    nodes: Api<Node>,
    pub node_names: Vec<String>,
}

impl Drop for Kwok {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kwok_dir() -> PathBuf {
    let cache = std::env::var("PGD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/pod-graceful-drain")
        });
    cache.join("kwok/v0.8.0")
}

impl Kwok {
    /// Starts kwok (its log in `log`) and creates `nodes` fake nodes `pgd-fake-<i>` for it.
    pub async fn start(
        client: &Client,
        kubeconfig: &Path,
        log: &Path,
        nodes: usize,
    ) -> anyhow::Result<Kwok> {
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
        let kwok = Kwok {
            child,
            nodes: Api::all(client.clone()),
            node_names: (0..nodes).map(|i| format!("pgd-fake-{i}")).collect(),
        };
        create_all(&kwok.nodes, nodes, "fake nodes", |i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("pgd-fake-{i}"), "annotations": {FAKE: "fake"},
                             "labels": {"type": "kwok", "kubernetes.io/hostname": format!("pgd-fake-{i}")}},
                "spec": {"taints": [{"key": FAKE, "value": "fake", "effect": "NoSchedule"}]}
            }))
            .expect("node manifest")
        })
        .await?;
        Ok(kwok)
    }

    /// A pod bound to the `i`-th fake node (round robin), tolerating its taint.
    pub fn pod(&self, i: usize, name: &str, labels: serde_json::Value) -> Pod {
        let node = &self.node_names[i % self.node_names.len().max(1)];
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "tolerations": [{"key": FAKE, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "app", "image": "fake"}]
            }
        }))
        .expect("pod manifest")
    }

    /// Force-deletes the pods `selector` selects in one call while kwok still runs (without a
    /// kubelet nobody else would finish them), then the fake nodes. Best effort: the API server
    /// may time the call out (504) and go on deleting.
    pub async fn remove(&self, pods: &Api<Pod>, selector: &str) {
        if let Err(e) = pods
            .delete_collection(
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
                &ListParams::default().labels(selector),
            )
            .await
        {
            progress(&format!(
                "deleting the fake pods: {e} (the API server goes on)"
            ));
        }
        for n in &self.node_names {
            let _ = self.nodes.delete(n, &DeleteParams::default()).await;
        }
    }
}

/// Creates `n` objects made by `make`, 32 at a time, with a progress line every 1,000.
pub async fn create_all<K, F>(api: &Api<K>, n: usize, what: &str, make: F) -> anyhow::Result<()>
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

/// Waits (bounded, listing every 5 s) until `want` pods that `selector` selects are Running;
/// returns how many are.
pub async fn wait_running(
    pods: &Api<Pod>,
    selector: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut running = 0;
    while Instant::now() < deadline {
        running = pods
            .list(
                &ListParams::default()
                    .fields("status.phase=Running")
                    .labels(selector),
            )
            .await?
            .items
            .len();
        progress(&format!("{running} of {want} fake pods Running"));
        if running >= want {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(running)
}
