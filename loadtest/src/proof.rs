//! The proof: the same scenario (rollout, scale-down, node drain) under constant load behind a
//! lagging load balancer, in three modes on the same cluster in the same run: no mitigation, the
//! native preStop sleep, and a webhook (pod-graceful-drain from its chart by default).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use pgd_harness::drain::drain_node;
use pgd_harness::objects::{self, APP_LABEL};
use pgd_harness::product::{Install, Options};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, nodes_ready_schedulable};
use serde::Serialize;
use serde_json::json;

use crate::lag::Paused;
use crate::load::{Load, LoadConfig, Outcome, Sample};
use crate::observe::{Observer, PodTimes};
use crate::progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Rollout,
    ScaleDown,
    NodeDrain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    None,
    PrestopSleep,
    Webhook,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scenario::Rollout => "rollout",
            Scenario::ScaleDown => "scale-down",
            Scenario::NodeDrain => "node-drain",
        })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::None => "none",
            Mode::PrestopSleep => "prestop-sleep",
            Mode::Webhook => "webhook",
        })
    }
}

/// How the webhook of mode `webhook` is installed.
#[derive(Debug, Clone)]
pub enum Webhook {
    /// pod-graceful-drain from `chart/`, drain = lag + margin, other values the chart's.
    Chart,
    /// Commands run with `sh -c` inside the testbed network (KUBECONFIG set, kubectl and helm on
    /// PATH), with PGD_LOADTEST_NAMESPACE (the app's namespace) and PGD_LOADTEST_DRAIN_SECONDS.
    Commands {
        name: String,
        install: String,
        uninstall: String,
    },
}

impl Webhook {
    pub fn name(&self) -> String {
        match self {
            Webhook::Chart => "pod-graceful-drain".into(),
            Webhook::Commands { name, .. } => name.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProofConfig {
    pub lag: Duration,
    /// preStop sleep = drain = lag + margin.
    pub margin: Duration,
    pub replicas: i32,
    pub workers: usize,
    pub pace: Duration,
    pub budget: Duration,
    pub baseline: Duration,
    pub tail: Duration,
    pub webhook: Webhook,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub mode: Mode,
    /// Which repetition (1-based).
    pub rep: usize,
    pub webhook: Option<String>,
    pub requests: usize,
    pub failed: usize,
    pub failure_rate: f64,
    pub by_outcome: BTreeMap<Outcome, usize>,
    /// Seconds the action took: rollout complete / scaled / `kubectl drain` returned.
    pub wall_s: f64,
    /// Measured pause of kube-proxy (the load balancer's lag).
    pub lag_s: f64,
    /// Seconds from the load's start: the pause began (t0) and ended.
    pub t0: f64,
    pub resumed: f64,
    pub pods: Vec<PodTimes>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl RunResult {
    pub fn lived(&self) -> Vec<f64> {
        self.pods
            .iter()
            .filter_map(PodTimes::lived_after_removal)
            .collect()
    }
}

fn app_deployment(
    name: &str,
    replicas: i32,
    mode: Mode,
    sleep: Duration,
) -> anyhow::Result<Deployment> {
    let mut container = objects::demo_container();
    if mode == Mode::PrestopSleep {
        container["lifecycle"] = json!({"preStop": {"sleep": {"seconds": sleep.as_secs()}}});
    }
    let labels = json!({APP_LABEL: name});
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": sleep.as_secs() + 30,
                "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
                    "labelSelector": {"matchLabels": labels}
                }],
                "containers": [container]
            }}
        }
    }))?)
}

/// Sends requests until every app pod has answered once (kube-proxy knows them all), on the
/// calling (blocking) thread.
fn warm_up(target: SocketAddr, pods: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < pods {
        anyhow::ensure!(
            Instant::now() < deadline,
            "warm-up: only {} of {pods} pods answered in 60 s",
            seen.len()
        );
        if let (Outcome::Ok, Some(pod), _) =
            crate::load::request(target, true, Duration::from_secs(1))
        {
            seen.insert(pod);
        }
    }
    Ok(())
}

async fn run_commands(env: &TestEnv, cmd: &str, drain: Duration) -> anyhow::Result<()> {
    let mut c = pgd_harness::testbed_script(env.target, "exec")?;
    c.args(["sh", "-c", cmd])
        .env("PGD_LOADTEST_NAMESPACE", &env.namespace)
        .env("PGD_LOADTEST_DRAIN_SECONDS", drain.as_secs().to_string());
    let out = tokio::task::spawn_blocking(move || c.output()).await??;
    anyhow::ensure!(
        out.status.success(),
        "webhook command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub async fn run_one(
    scenario: Scenario,
    mode: Mode,
    rep: usize,
    cfg: &ProofConfig,
) -> anyhow::Result<RunResult> {
    let env = TestEnv::new(&format!("{scenario}-{mode}")).await?;
    let target = env.target;
    let drain = cfg.lag + cfg.margin;
    let install = match (mode, &cfg.webhook) {
        (Mode::Webhook, Webhook::Chart) => {
            progress("installing pod-graceful-drain from chart/");
            Some(
                Install::new(
                    &env,
                    Options {
                        replicas: 3,
                        drain_seconds: drain.as_secs(),
                        hold_seconds: 25,
                        ..Options::fast()
                    },
                )
                .await?,
            )
        }
        (Mode::Webhook, Webhook::Commands { install, .. }) => {
            progress("installing the webhook under test");
            run_commands(&env, install, drain).await?;
            None
        }
        _ => None,
    };
    let name = "web";
    progress(&format!(
        "{scenario} / {mode}: deploying {} replicas",
        cfg.replicas
    ));
    env.api::<Service>()
        .create(&PostParams::default(), &objects::service(name))
        .await?;
    let deployments: Api<Deployment> = env.api();
    deployments
        .create(
            &PostParams::default(),
            &app_deployment(name, cfg.replicas, mode, drain)?,
        )
        .await?;
    wait::until(
        &deployments,
        name,
        "the app to be Available",
        Duration::from_secs(120),
        conditions::deployment_complete,
    )
    .await?;
    let svc = env.api::<Service>().get(name).await?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or_else(|| anyhow::anyhow!("no ClusterIP"))?;
    let addr: SocketAddr = format!("{ip}:80").parse()?;
    wait::service_endpoints_ready(
        &env.client,
        &env.namespace,
        name,
        cfg.replicas as usize,
        Duration::from_secs(60),
    )
    .await?;
    let replicas = cfg.replicas as usize;
    tokio::task::spawn_blocking(move || warm_up(addr, replicas)).await??;
    let pods_api: Api<Pod> = env.api();
    let before: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&format!("{APP_LABEL}={name}")))
        .await?
        .items;

    progress(&format!(
        "{scenario} / {mode}: load on, {} s baseline",
        cfg.baseline.as_secs()
    ));
    let load = Load::start(LoadConfig {
        target: addr,
        workers: cfg.workers,
        pace: cfg.pace,
        budget: cfg.budget,
        max_duration: Duration::from_secs(600),
        max_requests: 500_000,
    });
    let zero = load.started;
    let observer = Observer::start(pods_api.clone(), zero);
    tokio::time::sleep(cfg.baseline).await;

    // t0: the load balancer stops learning; resumed after the lag, whatever the action does.
    let paused = Arc::new(Mutex::new(Paused::start()?));
    let t0 = zero.elapsed().as_secs_f64();
    let resumer = {
        let paused = paused.clone();
        let lag = cfg.lag;
        tokio::spawn(async move {
            tokio::time::sleep(lag).await;
            paused.lock().unwrap_or_else(|e| e.into_inner()).resume()
        })
    };
    progress(&format!(
        "{scenario} / {mode}: load balancer paused for {} s; acting",
        cfg.lag.as_secs()
    ));
    let action_start = Instant::now();
    let mut drained_node = None;
    let removed_pods: Vec<String> = match scenario {
        Scenario::Rollout => {
            deployments
                .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"loadtest/restarted-at": jiff::Timestamp::now().to_string()}}}}})))
                .await?;
            wait::until(
                &deployments,
                name,
                "the rollout",
                Duration::from_secs(300),
                conditions::deployment_complete,
            )
            .await?;
            before.iter().map(|p| p.name_any()).collect()
        }
        Scenario::ScaleDown => {
            let want = (cfg.replicas / 2).max(1);
            deployments
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": want}})),
                )
                .await?;
            wait::until(
                &deployments,
                name,
                "the scale-down",
                Duration::from_secs(300),
                conditions::deployment_complete,
            )
            .await?;
            let now: Vec<String> = pods_api
                .list(&ListParams::default().labels(&format!("{APP_LABEL}={name}")))
                .await?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| p.name_any())
                .collect();
            before
                .iter()
                .map(|p| p.name_any())
                .filter(|n| !now.contains(n))
                .collect()
        }
        Scenario::NodeDrain => {
            let nodes = nodes_ready_schedulable(&env.client).await?;
            let node = nodes
                .last()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no node"))?;
            let on_node: Vec<String> = before
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                })
                .map(|p| p.name_any())
                .collect();
            let selector = format!("{APP_LABEL}={name}");
            let drained =
                tokio::task::spawn_blocking(move || drain_node(target, &node, &selector)).await??;
            drained_node = Some(drained);
            on_node
        }
    };
    let wall = action_start.elapsed();
    progress(&format!(
        "{scenario} / {mode}: action done in {:.1} s; waiting for the old pods to go",
        wall.as_secs_f64()
    ));
    let lag_measured = resumer.await?;
    let resumed = t0 + lag_measured.as_secs_f64();
    // Every removed pod gone, then a tail of load.
    let deadline = Instant::now() + drain + Duration::from_secs(90);
    loop {
        let times = observer.times(&removed_pods);
        if times.iter().all(|t| t.gone.is_some()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(cfg.tail).await;
    let samples = tokio::task::spawn_blocking(move || load.stop()).await?;
    observer.stop();
    drop(drained_node);
    let pods = observer.times(&removed_pods);
    if let (Mode::Webhook, Webhook::Commands { uninstall, .. }) = (mode, &cfg.webhook) {
        run_commands(&env, uninstall, drain).await?;
    }
    drop(install);

    let mut by_outcome = BTreeMap::new();
    for s in &samples {
        *by_outcome.entry(s.outcome).or_insert(0) += 1;
    }
    let failed = samples.iter().filter(|s| s.outcome.failed()).count();
    let result = RunResult {
        scenario,
        mode,
        rep,
        webhook: (mode == Mode::Webhook).then(|| cfg.webhook.name()),
        requests: samples.len(),
        failed,
        failure_rate: failed as f64 / samples.len().max(1) as f64,
        by_outcome,
        wall_s: wall.as_secs_f64(),
        lag_s: lag_measured.as_secs_f64(),
        t0,
        resumed,
        pods,
        samples,
    };
    progress(&format!(
        "{scenario} / {mode}: {} requests, {} failed, wall {:.1} s",
        result.requests, result.failed, result.wall_s
    ));
    Ok(result)
}
