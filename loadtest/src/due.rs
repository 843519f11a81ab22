//! Many pods due at once: 200 serving pods on kwok's fake nodes, in a namespace that also holds
//! 2,000 selector-less Services with an EndpointSlice each, are deleted through the API server at
//! once; the webhook isolates and seals each, and the leader's deleter must delete all 200 at
//! their delete-at. Measured: how late each deletion is (delete-at → the pod seen terminating on
//! a watch), and how many API requests the product makes meanwhile, counted by the API server
//! itself (a FlowSchema of the benchmark's own matching the product's ServiceAccount, read from
//! `apiserver_flowcontrol_dispatched_requests_total`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::product::{Install, Options};
use pgd_harness::wait;
use pod_graceful_drain::core::keys::{DELETE_AT, DRAINING_LABEL};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::kwok::{Kwok, create_all, wait_running};
use crate::podstats;
use crate::progress;

/// The priority level the built-in `service-accounts` FlowSchema gives the product anyway.
const PRIORITY_LEVEL: &str = "workload-low";
/// Above `service-accounts` (9000), below every built-in schema for system users (≤ 900).
const PRECEDENCE: i32 = 8000;
const APP: &str = "due-app";
const SELECTOR: &str = "bench=due";

/// The benchmark's settings, as given on the command line (`pgd-loadtest due --help`).
#[derive(Debug, Clone, clap::Args)]
pub struct DueConfig {
    #[arg(long, default_value_t = 200)]
    pub pods: usize,
    /// Selector-less Services in the same namespace, each with one EndpointSlice.
    #[arg(long, default_value_t = 2_000)]
    pub services: usize,
    /// Give those Services a selector matching no pod (a comparison: their slices are then
    /// none of a drained pod's business).
    #[arg(long)]
    pub selector_others: bool,
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Drain length: long enough for every DELETE to be answered before the first is due.
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,
    /// Hold budget: each DELETE is answered (403, "will be deleted on time") after this. It is
    /// also the time the webhook has to isolate the pod: a DELETE not decided within it is
    /// let through (the pod deleted at once).
    #[arg(long, default_value_t = 10)]
    pub hold_seconds: u64,
    /// DELETEs in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Seconds of idle request rate before the DELETEs.
    #[arg(long, default_value_t = 20)]
    pub baseline_seconds: u64,
    /// Seconds measured after the last deletion (events published in the background, and the
    /// rate once nothing is due).
    #[arg(long, default_value_t = 10)]
    pub tail_seconds: u64,
    /// How often the API server's /metrics is read, in ms.
    #[arg(long, default_value_t = 1000)]
    pub sample_ms: u64,
}

/// The API server's counters of the product's requests at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Requests of the product's ServiceAccount dispatched (our FlowSchema).
    pub requests: f64,
    /// Seconds the API server spent executing them.
    pub exec_seconds: f64,
    /// EndpointSlice LISTs answered to anyone, and their bytes (the product is the only client
    /// that LISTs slices once the controllers' informers are synced; said so in the report).
    pub slice_lists: f64,
    pub slice_list_bytes: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the first DELETE was issued (negative: before).
    pub t: f64,
    #[serde(flatten)]
    pub counters: Counters,
}

/// What the API server counted between two moments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub from_s: f64,
    pub to_s: f64,
    pub requests: f64,
    pub per_second: f64,
    pub exec_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodTimes {
    pub name: String,
    pub delete_at: Option<String>,
    /// delete-at and deleted_seen as seconds from the first DELETE issued.
    pub delete_at_s: Option<f64>,
    pub deleted_seen_s: Option<f64>,
    /// Seconds from the first DELETE issued to this pod's DELETE answered.
    pub delete_answered_s: Option<f64>,
    /// When the watch first showed it terminating (or gone).
    pub deleted_seen: Option<String>,
    /// deleted_seen − delete_at, seconds.
    pub late_s: Option<f64>,
    /// The API server's own stamp of the deletion: deletionTimestamp − deletionGracePeriodSeconds
    /// (the second, truncated).
    pub server_deleted: Option<String>,
    /// "terminating", "gone" (a DELETED event first) or "missing after a relist".
    pub seen_as: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lateness {
    pub count: usize,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub min_s: f64,
    pub mean_s: f64,
    /// Pods seen terminating before their delete-at (a product defect).
    pub early: Vec<String>,
    /// Pods whose API server stamp lies in an earlier second than their delete-at's (certainly early).
    pub early_by_server_stamp: Vec<String>,
    /// The product's own account: its `Deleted` events ("deleted N ms after its delete-at",
    /// measured before its GET, LIST and DELETE of the pod).
    pub product_events: usize,
    pub product_p50_ms: Option<f64>,
    pub product_max_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deletes {
    pub issued: usize,
    /// Held, then 403 "will be deleted on time" (the expected answer to a person's DELETE of a pod
    /// whose drain outlasts the hold).
    pub held_then_on_time: usize,
    /// Answered 200: the pod was deleted at once (not intercepted).
    pub allowed: usize,
    /// Any other answer, with its message.
    pub other: Vec<String>,
    pub p50_ms: f64,
    pub max_ms: f64,
    /// Seconds from the first DELETE issued to the last answered.
    pub all_answered_s: f64,
    /// Seconds from the last DELETE answered to the earliest delete-at (positive: every DELETE was
    /// issued before the first pod was due).
    pub margin_before_first_due_s: f64,
    /// Seconds from the earliest delete-at to the latest.
    pub delete_at_spread_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Requests {
    pub flow_schema: String,
    pub service_account: String,
    pub priority_level: String,
    pub baseline: Phase,
    /// The DELETEs: first issued → last answered.
    pub admission: Phase,
    /// Last DELETE answered → earliest delete-at (nothing is due).
    pub waiting: Phase,
    /// Earliest delete-at → last pod seen deleted.
    pub due: Phase,
    /// Last pod seen deleted → end of the tail.
    pub after: Phase,
    /// The highest rate between two consecutive samples.
    pub peak_per_second: f64,
    /// Requests beyond the baseline rate from the first DELETE to the end of the tail, per pod.
    pub per_pod: f64,
    /// Of which the admission phase (per pod, beyond baseline).
    pub per_pod_admission: f64,
    /// And the rest: the deleter, from the last DELETE answered to the end of the tail.
    pub per_pod_deleter: f64,
    /// API server seconds executing the product's requests beyond baseline, per pod.
    pub exec_ms_per_pod: f64,
    /// EndpointSlice LISTs (any client) from the earliest delete-at to the end of the tail, and
    /// their bytes per drained pod.
    pub slice_lists_due: f64,
    pub slice_list_kib_per_pod: f64,
    /// Seconds between two reads of /metrics, and the size of one read.
    pub sample_ms: u64,
    pub metrics_kib: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaCpu {
    pub pod: String,
    pub leader: bool,
    /// CPU seconds from the first DELETE to the end of the tail.
    pub cpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DueReport {
    pub pods: usize,
    pub services: usize,
    /// The other Services had a selector (the comparison), not none.
    #[serde(default)]
    pub selector_others: bool,
    pub endpoint_slices: usize,
    pub fake_nodes: usize,
    pub replicas: usize,
    pub drain_seconds: u64,
    pub hold_seconds: u64,
    pub concurrency: usize,
    /// The app Service's ready endpoints naming the benchmark's pods, before the DELETEs.
    pub ready_endpoints_before: usize,
    /// [low, high] seconds of (API server's Date − this process's clock).
    pub clock_offset_s: [f64; 2],
    pub deletes: Deletes,
    pub lateness: Lateness,
    pub requests: Requests,
    pub replica_cpu: Vec<ReplicaCpu>,
    /// Seconds from the first DELETE to the last pod seen deleted.
    pub drain_wall_s: f64,
    /// Seconds of the whole benchmark, setup and cleanup included.
    pub run_seconds: f64,
    pub pod_times: Vec<PodTimes>,
    pub samples: Vec<Sample>,
}

impl DueReport {
    /// What must not happen; an empty list is a pass.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.lateness.early.is_empty() {
            p.push(format!(
                "{} pod(s) deleted before their delete-at: {}",
                self.lateness.early.len(),
                self.lateness.early.join(", ")
            ));
        }
        if !self.lateness.early_by_server_stamp.is_empty() {
            p.push(format!(
                "{} pod(s) deleted before their delete-at by the API server's own stamp: {}",
                self.lateness.early_by_server_stamp.len(),
                self.lateness.early_by_server_stamp.join(", ")
            ));
        }
        let no_schedule = self
            .pod_times
            .iter()
            .filter(|t| t.delete_at.is_none())
            .count();
        if no_schedule > 0 {
            p.push(format!(
                "{no_schedule} pod(s) were never given a delete-at (not intercepted)"
            ));
        }
        let not_deleted = self
            .pod_times
            .iter()
            .filter(|t| t.deleted_seen.is_none())
            .count();
        if not_deleted > 0 {
            p.push(format!(
                "{not_deleted} pod(s) not deleted within the benchmark's bound"
            ));
        }
        if self.deletes.allowed > 0 || !self.deletes.other.is_empty() {
            p.push(format!(
                "{} DELETE(s) allowed at once and {} answered otherwise ({})",
                self.deletes.allowed,
                self.deletes.other.len(),
                self.deletes.other.join("; ")
            ));
        }
        p
    }
}

/// Per pod, what the watch saw (local arrival times) and what the pod said.
#[derive(Debug, Default, Clone)]
struct Seen {
    delete_at: Option<Timestamp>,
    deleted_seen: Option<Timestamp>,
    server_deleted: Option<Timestamp>,
    seen_as: Option<&'static str>,
}

type Book = Arc<Mutex<BTreeMap<String, Seen>>>;

fn secs(d: SignedDuration) -> f64 {
    d.as_secs_f64()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The sum of a metric's samples whose labels contain every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn read_metrics(client: &Client, flow_schema: &str) -> anyhow::Result<(Counters, usize)> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let fs = format!("flow_schema=\"{flow_schema}\"");
    let slices = [
        "resource=\"endpointslices\"",
        "verb=\"LIST\"",
        "group=\"discovery.k8s.io\"",
    ];
    Ok((
        Counters {
            requests: metric_sum(
                &text,
                "apiserver_flowcontrol_dispatched_requests_total",
                &[&fs],
            ),
            exec_seconds: metric_sum(
                &text,
                "apiserver_flowcontrol_request_execution_seconds_sum",
                &[&fs],
            ),
            slice_lists: metric_sum(&text, "apiserver_response_sizes_count", &slices),
            slice_list_bytes: metric_sum(&text, "apiserver_response_sizes_sum", &slices),
        },
        text.len(),
    ))
}

/// Counter readings over time, the moment of each read taken halfway through it.
#[derive(Clone, Default)]
struct Series(Arc<Mutex<Vec<(Timestamp, Counters)>>>);

impl Series {
    async fn read(&self, client: &Client, flow_schema: &str) -> anyhow::Result<usize> {
        let before = Timestamp::now();
        let (c, size) = read_metrics(client, flow_schema).await?;
        let after = Timestamp::now();
        let at = before + before.duration_until(after) / 2;
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.push((at, c));
        v.sort_by_key(|(t, _)| *t);
        Ok(size)
    }

    /// The counters at `t`, interpolated linearly between the reads around it.
    fn at(&self, t: Timestamp) -> Counters {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let after = v.partition_point(|(s, _)| *s <= t);
        match (after.checked_sub(1).map(|i| v[i]), v.get(after).copied()) {
            (Some((t0, c0)), Some((t1, c1))) => {
                let f = secs(t0.duration_until(t)) / secs(t0.duration_until(t1)).max(1e-9);
                let lerp = |a: f64, b: f64| a + (b - a) * f;
                Counters {
                    requests: lerp(c0.requests, c1.requests),
                    exec_seconds: lerp(c0.exec_seconds, c1.exec_seconds),
                    slice_lists: lerp(c0.slice_lists, c1.slice_lists),
                    slice_list_bytes: lerp(c0.slice_list_bytes, c1.slice_list_bytes),
                }
            }
            (Some((_, c)), None) | (None, Some((_, c))) => c,
            (None, None) => Counters::default(),
        }
    }

    fn phase(&self, zero: Timestamp, from: Timestamp, to: Timestamp) -> Phase {
        let (a, b) = (self.at(from), self.at(to));
        let seconds = secs(from.duration_until(to));
        Phase {
            from_s: secs(zero.duration_until(from)),
            to_s: secs(zero.duration_until(to)),
            requests: b.requests - a.requests,
            per_second: if seconds > 0.0 {
                (b.requests - a.requests) / seconds
            } else {
                0.0
            },
            exec_seconds: b.exec_seconds - a.exec_seconds,
        }
    }

    fn samples(&self, zero: Timestamp) -> Vec<Sample> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, c)| Sample {
                t: secs(zero.duration_until(*t)),
                counters: *c,
            })
            .collect()
    }
}

/// Bounds on (API server time − local time) from the `Date` header of a few answers (whole
/// seconds): every answer was stamped between its request's departure and its arrival.
async fn clock_offset(client: &Client) -> anyhow::Result<[f64; 2]> {
    let (mut low, mut high) = (f64::MIN, f64::MAX);
    for _ in 0..8 {
        let req = http::Request::get("/version").body(kube::client::Body::from(Vec::new()))?;
        let sent = Timestamp::now();
        let resp = client.send(req).await?;
        let received = Timestamp::now();
        let date = resp
            .headers()
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("no Date header"))?;
        let date = jiff::fmt::rfc2822::parse(date)?.timestamp();
        low = low.max(secs(received.duration_until(date)));
        high = high.min(secs(sent.duration_until(date)) + 1.0);
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    Ok([low, high])
}

/// Books one watch event; true once a (first or repeated) listing is complete.
fn book_event(book: &Book, listed: &mut BTreeSet<String>, ev: watcher::Event<Pod>) -> bool {
    let now = Timestamp::now();
    let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
    let mut note = |p: &Pod, gone: bool| {
        let entry = book.entry(p.name_any()).or_default();
        if entry.delete_at.is_none() && p.labels().contains_key(DRAINING_LABEL) {
            entry.delete_at = p.annotations().get(DELETE_AT).and_then(|v| v.parse().ok());
        }
        if let Some(dt) = &p.metadata.deletion_timestamp
            && entry.server_deleted.is_none()
        {
            let grace = p.metadata.deletion_grace_period_seconds.unwrap_or(0);
            entry.server_deleted = dt.0.checked_sub(SignedDuration::from_secs(grace)).ok();
        }
        if entry.deleted_seen.is_none() && (gone || p.metadata.deletion_timestamp.is_some()) {
            entry.deleted_seen = Some(now);
            entry.seen_as = Some(if gone { "gone" } else { "terminating" });
        }
    };
    match ev {
        watcher::Event::Init => listed.clear(),
        watcher::Event::InitApply(p) => {
            listed.insert(p.name_any());
            note(&p, false);
        }
        watcher::Event::Apply(p) => note(&p, false),
        watcher::Event::Delete(p) => note(&p, true),
        watcher::Event::InitDone => {
            // After a relist, a pod no longer listed went while the watch was down.
            for (name, s) in book.iter_mut() {
                if !listed.contains(name) && s.deleted_seen.is_none() {
                    s.deleted_seen = Some(now);
                    s.seen_as = Some("missing after a relist");
                }
            }
            return true;
        }
    }
    false
}

/// Watches the namespace's pods and books, per benchmark pod, its delete-at and the first moment
/// it is seen terminating or gone. Returns once the first listing is done.
async fn watch_pods(api: Api<Pod>, book: Book) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut listed: BTreeSet<String> = BTreeSet::new();
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default().labels(SELECTOR)));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if book_event(&book, &mut listed, ev)
                        && let Some(tx) = ready.take()
                    {
                        let _ = tx.send(());
                    }
                }
                Err(e) => {
                    progress(&format!("pod watch: {e}; restarting"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .map_err(|_| anyhow::anyhow!("the pod watch did not list within 60 s"))??;
    Ok(handle)
}

fn flow_schema(name: &str, sa: &str, sa_namespace: &str, test_ns: &str) -> FlowSchema {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"pod-graceful-drain.io/benchmark": test_ns}},
        "spec": {
            "matchingPrecedence": PRECEDENCE,
            "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount",
                              "serviceAccount": {"name": sa, "namespace": sa_namespace}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                   "clusterScope": true, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
            }]
        }
    }))
    .expect("FlowSchema manifest")
}

/// How one DELETE was answered, and when.
struct Answered {
    name: String,
    at: Timestamp,
    took: Duration,
    outcome: Result<(), String>,
    on_time: bool,
}

async fn delete_all(api: &Api<Pod>, names: &[String], concurrency: usize) -> Vec<Answered> {
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = names.len();
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let api = api.clone();
            let done = &done;
            async move {
                let t0 = Instant::now();
                let r = api.delete(&name, &DeleteParams::default()).await;
                let took = t0.elapsed();
                let (outcome, on_time) = match r {
                    Ok(_) => (Ok(()), false),
                    Err(kube::Error::Api(s))
                        if s.code == 403 && s.message.contains("will be deleted on time") =>
                    {
                        (Err(s.message.clone()), true)
                    }
                    Err(e) => (Err(e.to_string()), false),
                };
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(50) || n == total {
                    progress(&format!(
                        "DELETEs answered: {n} of {total} ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    ));
                }
                Answered {
                    name,
                    at: Timestamp::now(),
                    took,
                    outcome,
                    on_time,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// The product's own account of each deletion, from its `Deleted` events.
async fn product_lateness_ms(client: &Client, ns: &str) -> anyhow::Result<Vec<f64>> {
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
    let listed = events
        .list(&ListParams::default().fields("reason=Deleted"))
        .await?;
    Ok(listed
        .items
        .iter()
        .filter_map(|e| {
            let m = e.message.as_deref()?;
            let rest = m.split("deleted ").nth(1)?;
            rest.split(" ms after").next()?.trim().parse::<f64>().ok()
        })
        .collect())
}

pub async fn run(cfg: &DueConfig, log_dir: &std::path::Path) -> anyhow::Result<DueReport> {
    let run_started = Instant::now();
    let env = TestEnv::new("due").await?;
    progress(&format!(
        "installing {} replicas from chart/ (drain {} s, hold {} s)",
        2, cfg.drain_seconds, cfg.hold_seconds
    ));
    let install = Install::new(
        &env,
        Options {
            replicas: 2,
            drain_seconds: cfg.drain_seconds,
            hold_seconds: cfg.hold_seconds,
            ..Options::fast()
        },
    )
    .await?;
    let replicas = install.replicas().await?;
    let sa = replicas
        .first()
        .and_then(|p| p.spec.as_ref()?.service_account_name.clone())
        .ok_or_else(|| anyhow::anyhow!("no replica names its ServiceAccount"))?;
    let plc: Api<PriorityLevelConfiguration> = Api::all(env.client.clone());
    anyhow::ensure!(
        plc.get_opt(PRIORITY_LEVEL).await?.is_some(),
        "the API server has no priority level {PRIORITY_LEVEL}"
    );
    let fs_name = format!("{}-product", env.namespace);
    let schemas: Api<FlowSchema> = Api::all(env.client.clone());
    schemas
        .create(
            &PostParams::default(),
            &flow_schema(&fs_name, &sa, &install.namespace, &env.namespace),
        )
        .await?;
    progress(&format!(
        "FlowSchema {fs_name}: ServiceAccount {}/{sa} → {PRIORITY_LEVEL}, precedence {PRECEDENCE}",
        install.namespace
    ));
    let result = measure(cfg, log_dir, &env, &install, &fs_name, &sa).await;
    let _ = schemas.delete(&fs_name, &DeleteParams::default()).await;
    drop(install);
    let mut report = result?;
    report.run_seconds = run_started.elapsed().as_secs_f64();
    Ok(report)
}

async fn measure(
    cfg: &DueConfig,
    log_dir: &std::path::Path,
    env: &TestEnv,
    install: &Install,
    fs_name: &str,
    sa: &str,
) -> anyhow::Result<DueReport> {
    std::fs::create_dir_all(log_dir)?;
    progress(&format!(
        "starting kwok with {} fake nodes; creating {} Services with an EndpointSlice each",
        cfg.nodes, cfg.services
    ));
    let kwok = Kwok::start(
        &env.client,
        env.target.kubeconfig(),
        &log_dir.join("kwok.log"),
        cfg.nodes,
    )
    .await?;
    let result = drain(cfg, env, install, fs_name, sa, &kwok).await;
    progress("removing the fake objects");
    kwok.remove(&env.api::<Pod>(), SELECTOR).await;
    result
}

async fn drain(
    cfg: &DueConfig,
    env: &TestEnv,
    install: &Install,
    fs_name: &str,
    sa: &str,
    kwok: &Kwok,
) -> anyhow::Result<DueReport> {
    let pods: Api<Pod> = env.api();
    // The others: selector-less Services, each with a slice of its own listing one address
    // (kept by "someone else", as a hand-made or foreign controller's slice is).
    create_all(&env.api::<Service>(), cfg.services, "Services", |i| {
        let mut spec = json!({"ports": [{"port": 80, "targetPort": 8080}]});
        if cfg.selector_others {
            spec["selector"] = json!({"app": format!("other-{i}")});
        }
        serde_json::from_value(json!({
            "metadata": {"name": format!("other-{i}"), "labels": {"bench": "due-other"}},
            "spec": spec
        }))
        .expect("service manifest")
    })
    .await?;
    create_all(
        &env.api::<EndpointSlice>(),
        cfg.services,
        "EndpointSlices",
        |i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("other-{i}"),
                             "labels": {"kubernetes.io/service-name": format!("other-{i}"),
                                        "endpointslice.kubernetes.io/managed-by": "pgd-loadtest",
                                        "bench": "due-other"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [format!("10.250.{}.{}", i / 250, 1 + i % 250)],
                               "conditions": {"ready": true}}],
                "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
            }))
            .expect("EndpointSlice manifest")
        },
    )
    .await?;
    env.api::<Service>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": APP},
                "spec": {"selector": {"app": APP}, "ports": [{"port": 80, "targetPort": 8080}]}
            }))?,
        )
        .await?;
    progress(&format!(
        "creating {} pods of {APP} on the fake nodes",
        cfg.pods
    ));
    let names: Vec<String> = (0..cfg.pods).map(|i| format!("due-{i}")).collect();
    create_all(&pods, cfg.pods, "pods", |i| {
        kwok.pod(i, &names[i], json!({"app": APP, "bench": "due"}))
    })
    .await?;
    let running = wait_running(&pods, SELECTOR, cfg.pods, Duration::from_secs(300)).await?;
    anyhow::ensure!(
        running == cfg.pods,
        "only {running} of {} pods Running",
        cfg.pods
    );
    // The EndpointSlice controller must list every one of them as a ready endpoint: only then
    // are they serving, and only then does the deleter have something to wait for.
    let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let ready_names = |slices: &[EndpointSlice]| -> BTreeSet<String> {
        slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect()
    };
    let slices = wait::until_list(
        &env.api::<EndpointSlice>(),
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={APP}")),
        &format!("{} ready endpoints of Service {APP}", cfg.pods),
        Duration::from_secs(180),
        |s: &[EndpointSlice]| {
            let ready = ready_names(s);
            want.iter().all(|n| ready.contains(*n))
        },
    )
    .await?;
    let ready_endpoints_before = ready_names(&slices)
        .iter()
        .filter(|n| want.contains(n.as_str()))
        .count();
    let endpoint_slices = env
        .api::<EndpointSlice>()
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    progress(&format!(
        "Service {APP}: {ready_endpoints_before} ready endpoints in {} EndpointSlice(s); {endpoint_slices} slices in the namespace",
        slices.len(),
    ));

    let clock_offset_s = clock_offset(&env.client).await?;
    progress(&format!(
        "API server Date − local clock within [{:.3}, {:.3}] s",
        clock_offset_s[0], clock_offset_s[1]
    ));
    let book: Book = Arc::default();
    let watch = watch_pods(pods.clone(), book.clone()).await?;

    // The request counters: one read per sample period from now on, in the background.
    let series = Series::default();
    let metrics_bytes = series.read(&env.client, fs_name).await?;
    let sampler = {
        let (series, client, fs) = (series.clone(), env.client.clone(), fs_name.to_string());
        let period = Duration::from_millis(cfg.sample_ms.max(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = series.read(&client, &fs).await {
                    progress(&format!("reading /metrics: {e}"));
                }
            }
        })
    };
    let replica_names: Vec<(String, String)> = install
        .replicas()
        .await?
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    progress(&format!(
        "baseline: the product's request rate while idle, {} s",
        cfg.baseline_seconds
    ));
    let base0 = Timestamp::now();
    tokio::time::sleep(Duration::from_secs(cfg.baseline_seconds)).await;
    series.read(&env.client, fs_name).await?;
    let idle = series.phase(base0, base0, Timestamp::now());
    anyhow::ensure!(
        idle.requests > 0.0,
        "FlowSchema {fs_name} counted no request of the product in {} s (is it in effect?)",
        cfg.baseline_seconds
    );
    let cpu0: Vec<f64> = replica_names
        .iter()
        .map(|(_, u)| podstats::cpu_seconds(u))
        .collect::<anyhow::Result<_>>()?;

    progress(&format!(
        "deleting {} pods through the API server, {} at a time",
        cfg.pods, cfg.concurrency
    ));
    series.read(&env.client, fs_name).await?;
    let zero = Timestamp::now();
    let answers = delete_all(&pods, &names, cfg.concurrency).await;
    let answered = answers.iter().map(|a| a.at).max().unwrap_or(zero);
    series.read(&env.client, fs_name).await?;

    // Wait for every pod to be seen deleted: at most the drain, the deleter's longest wait for
    // endpoints and a minute more.
    let bound = Duration::from_secs(cfg.drain_seconds + 60 + 60);
    let waited = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let (deleted, scheduled) = {
            let b = book.lock().unwrap_or_else(|e| e.into_inner());
            (
                b.values().filter(|s| s.deleted_seen.is_some()).count(),
                b.values().filter(|s| s.delete_at.is_some()).count(),
            )
        };
        if deleted >= cfg.pods || waited.elapsed() > bound {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            progress(&format!(
                "{deleted} of {} pods deleted ({scheduled} with a delete-at)",
                cfg.pods
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let book_now = book.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last_deleted = book_now
        .values()
        .filter_map(|s| s.deleted_seen)
        .max()
        .unwrap_or_else(Timestamp::now);
    progress(&format!(
        "all seen deleted; measuring {} s more",
        cfg.tail_seconds
    ));
    tokio::time::sleep(Duration::from_secs(cfg.tail_seconds)).await;
    series.read(&env.client, fs_name).await?;
    let end = Timestamp::now();
    sampler.abort();
    watch.abort();
    let cpu1: Vec<f64> = replica_names
        .iter()
        .map(|(_, u)| podstats::cpu_seconds(u).unwrap_or(f64::NAN))
        .collect();
    let leader = {
        use k8s_openapi::api::coordination::v1::Lease;
        install
            .api::<Lease>()
            .get_opt(&install.name)
            .await?
            .and_then(|l| l.spec?.holder_identity)
    };
    let product_ms = product_lateness_ms(&env.client, &env.namespace)
        .await
        .unwrap_or_default();

    // Figures.
    let by_name: HashMap<&str, &Answered> = answers.iter().map(|a| (a.name.as_str(), a)).collect();
    let mut pod_times = Vec::new();
    let mut late = Vec::new();
    let mut early = Vec::new();
    let mut early_stamp = Vec::new();
    for name in &names {
        let s = book_now.get(name).cloned().unwrap_or_default();
        let late_s = match (s.delete_at, s.deleted_seen) {
            (Some(at), Some(seen)) => Some(secs(at.duration_until(seen))),
            _ => None,
        };
        if let Some(l) = late_s {
            late.push(l);
            if l < 0.0 {
                early.push(format!("{name} ({l:.3} s)"));
            }
        }
        if let (Some(at), Some(stamp)) = (s.delete_at, s.server_deleted)
            && stamp.as_second() < at.as_second()
        {
            early_stamp.push(format!("{name} (stamped {stamp}, delete-at {at})"));
        }
        pod_times.push(PodTimes {
            name: name.clone(),
            delete_at: s.delete_at.map(|t| t.to_string()),
            delete_at_s: s.delete_at.map(|t| secs(zero.duration_until(t))),
            deleted_seen_s: s.deleted_seen.map(|t| secs(zero.duration_until(t))),
            delete_answered_s: by_name
                .get(name.as_str())
                .map(|a| secs(zero.duration_until(a.at))),
            deleted_seen: s.deleted_seen.map(|t| t.to_string()),
            late_s,
            server_deleted: s.server_deleted.map(|t| t.to_string()),
            seen_as: s.seen_as.map(str::to_string),
        });
    }
    late.sort_by(f64::total_cmp);
    let mut product_sorted = product_ms.clone();
    product_sorted.sort_by(f64::total_cmp);
    let lateness = Lateness {
        count: late.len(),
        p50_s: percentile(&late, 0.50),
        p99_s: percentile(&late, 0.99),
        max_s: late.last().copied().unwrap_or(f64::NAN),
        min_s: late.first().copied().unwrap_or(f64::NAN),
        mean_s: late.iter().sum::<f64>() / late.len().max(1) as f64,
        early,
        early_by_server_stamp: early_stamp,
        product_events: product_sorted.len(),
        product_p50_ms: (!product_sorted.is_empty()).then(|| percentile(&product_sorted, 0.5)),
        product_max_ms: product_sorted.last().copied(),
    };

    let delete_ats: Vec<Timestamp> = book_now.values().filter_map(|s| s.delete_at).collect();
    let first_due = delete_ats.iter().min().copied().unwrap_or(answered);
    let last_due = delete_ats.iter().max().copied().unwrap_or(answered);
    let mut took: Vec<f64> = answers
        .iter()
        .map(|a| a.took.as_secs_f64() * 1000.0)
        .collect();
    took.sort_by(f64::total_cmp);
    let mut other: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        if let Err(m) = &a.outcome
            && !a.on_time
        {
            *other.entry(m.clone()).or_default() += 1;
        }
    }
    let deletes = Deletes {
        issued: answers.len(),
        held_then_on_time: answers.iter().filter(|a| a.on_time).count(),
        allowed: answers.iter().filter(|a| a.outcome.is_ok()).count(),
        other: other
            .into_iter()
            .map(|(m, n)| format!("{n} × {m}"))
            .collect(),
        p50_ms: percentile(&took, 0.5),
        max_ms: took.last().copied().unwrap_or(f64::NAN),
        all_answered_s: secs(zero.duration_until(answered)),
        margin_before_first_due_s: secs(answered.duration_until(first_due)),
        delete_at_spread_s: secs(first_due.duration_until(last_due)),
    };

    let after_end = last_deleted.max(answered);
    let baseline = series.phase(zero, base0, zero);
    let admission = series.phase(zero, zero, answered);
    let waiting = series.phase(zero, answered, first_due.max(answered));
    let due = series.phase(zero, first_due.max(answered), after_end);
    let after = series.phase(zero, after_end, end);
    let whole = series.phase(zero, zero, end);
    let whole_s = secs(zero.duration_until(end));
    let extra = |p: &Phase| p.requests - baseline.per_second * (p.to_s - p.from_s);
    let n = cfg.pods.max(1) as f64;
    let deleter = series.phase(zero, answered, end);
    let samples = series.samples(zero);
    let peak = samples
        .windows(2)
        .filter(|w| w[1].t - w[0].t > 0.05)
        .map(|w| (w[1].counters.requests - w[0].counters.requests) / (w[1].t - w[0].t))
        .fold(0.0, f64::max);
    let (s0, s1) = (series.at(first_due), series.at(end));
    let exec_base = baseline.exec_seconds / secs(base0.duration_until(zero)).max(1e-9);
    let requests = Requests {
        flow_schema: fs_name.to_string(),
        service_account: format!("{}/{sa}", install.namespace),
        priority_level: PRIORITY_LEVEL.into(),
        peak_per_second: peak,
        per_pod: extra(&whole) / n,
        per_pod_admission: extra(&admission) / n,
        per_pod_deleter: extra(&deleter) / n,
        exec_ms_per_pod: (whole.exec_seconds - exec_base * whole_s) * 1000.0 / n,
        slice_lists_due: s1.slice_lists - s0.slice_lists,
        slice_list_kib_per_pod: (s1.slice_list_bytes - s0.slice_list_bytes) / 1024.0 / n,
        sample_ms: cfg.sample_ms,
        metrics_kib: metrics_bytes as f64 / 1024.0,
        baseline,
        admission,
        waiting,
        due,
        after,
    };
    let replica_cpu = replica_names
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|((name, _), (a, b))| ReplicaCpu {
            pod: name.clone(),
            leader: leader.as_deref() == Some(name.as_str()),
            cpu_seconds: b - a,
        })
        .collect();
    Ok(DueReport {
        pods: cfg.pods,
        services: cfg.services + 1,
        selector_others: cfg.selector_others,
        endpoint_slices,
        fake_nodes: cfg.nodes,
        replicas: replica_names.len(),
        drain_seconds: cfg.drain_seconds,
        hold_seconds: cfg.hold_seconds,
        concurrency: cfg.concurrency,
        ready_endpoints_before,
        clock_offset_s,
        deletes,
        lateness,
        requests,
        replica_cpu,
        drain_wall_s: secs(zero.duration_until(last_deleted)),
        run_seconds: 0.0,
        pod_times,
        samples,
    })
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

/// The report as Markdown (due.md).
pub fn markdown(r: &DueReport) -> String {
    let l = &r.lateness;
    let q = &r.requests;
    let d = &r.deletes;
    let mut s = String::new();
    s.push_str(&format!(
        "{} pods of one app (selected by a Service) on {} kwok nodes, in a namespace with {} other {} Services and {} EndpointSlices in all; {} replicas from chart/, drain {} s, hold {} s. {} DELETEs through the API server, {} at a time.\n\n",
        r.pods, r.fake_nodes, r.services - 1,
        if r.selector_others { "(selecting no pod)" } else { "selector-less" },
        r.endpoint_slices, r.replicas, r.drain_seconds, r.hold_seconds, d.issued, r.concurrency
    ));
    s.push_str("| deletion lateness (delete-at → seen terminating) | pods | p50 | p99 | max | min | deleted early |\n|---|---:|---:|---:|---:|---:|---:|\n");
    s.push_str(&format!(
        "| watch of the namespace's pods | {} | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {} |\n",
        l.count,
        l.p50_s,
        l.p99_s,
        l.max_s,
        l.min_s,
        l.early.len() + l.early_by_server_stamp.len()
    ));
    if let (Some(p50), Some(max)) = (l.product_p50_ms, l.product_max_ms) {
        s.push_str(&format!(
            "| the product's own `Deleted` events | {} | {:.3} s | – | {:.3} s | – | – |\n",
            l.product_events,
            p50 / 1000.0,
            max / 1000.0
        ));
    }
    s.push_str("\n| the product's API requests (API server's count, FlowSchema) | seconds | requests | per second |\n|---|---:|---:|---:|\n");
    for (what, p) in [
        ("idle, before the DELETEs", &q.baseline),
        ("the DELETEs (isolating and sealing)", &q.admission),
        ("drains running, nothing due", &q.waiting),
        ("due: earliest delete-at → last pod deleted", &q.due),
        ("after", &q.after),
    ] {
        s.push_str(&format!(
            "| {what} | {} | {:.0} | {} |\n",
            f1(p.to_s - p.from_s),
            p.requests,
            f1(p.per_second)
        ));
    }
    s.push_str(&format!(
        "\nPer drained pod, beyond the idle rate: **{:.2} requests** ({:.2} while the DELETEs were answered, {:.2} by the deleter), {:.1} ms of API server execution; peak {:.1} requests/s between two reads of /metrics ({} ms apart). EndpointSlice LISTs from the earliest delete-at on (any client): {:.0}, {:.1} KiB per drained pod.\n",
        q.per_pod, q.per_pod_admission, q.per_pod_deleter, q.exec_ms_per_pod, q.peak_per_second, q.sample_ms, q.slice_lists_due, q.slice_list_kib_per_pod
    ));
    s.push_str(&format!(
        "\nDELETEs: {} held then answered 403 \"will be deleted on time\", {} allowed, {} otherwise; p50 {:.0} ms, max {:.0} ms; all answered {:.1} s after the first was sent, {:.1} s before the earliest delete-at; delete-ats spread over {:.1} s. All {} pods deleted {:.1} s after the first DELETE. Replica CPU meanwhile: {}. Run time {:.0} s.\n",
        d.held_then_on_time,
        d.allowed,
        d.other.len(),
        d.p50_ms,
        d.max_ms,
        d.all_answered_s,
        d.margin_before_first_due_s,
        d.delete_at_spread_s,
        l.count,
        r.drain_wall_s,
        r.replica_cpu
            .iter()
            .map(|c| format!(
                "{} {:.2} s{}",
                c.pod,
                c.cpu_seconds,
                if c.leader { " (leader)" } else { "" }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        r.run_seconds
    ));
    s.push_str(&format!(
        "\nClocks: lateness is a watch event's arrival on this process's clock minus the delete-at the product wrote (the API server's time as the product estimates it). This process, the API server and the replicas run on one host and read the same system clock; the API server's `Date` header minus this clock was measured within [{:.3}, {:.3}] s. The API server's own stamp (deletionTimestamp − grace, whole seconds) is checked too: no pod may be stamped in a second before its delete-at's.\n",
        r.clock_offset_s[0], r.clock_offset_s[1]
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_the_matching_series_only() {
        let text = "# HELP x\n\
            apiserver_flowcontrol_dispatched_requests_total{flow_schema=\"a\",priority_level=\"workload-low\"} 12\n\
            apiserver_flowcontrol_dispatched_requests_total{flow_schema=\"ab\",priority_level=\"workload-low\"} 100\n\
            apiserver_flowcontrol_dispatched_requests_total_other{flow_schema=\"a\"} 1000\n\
            apiserver_flowcontrol_dispatched_requests_total{flow_schema=\"a\",priority_level=\"exempt\"} 3\n";
        let got = metric_sum(
            text,
            "apiserver_flowcontrol_dispatched_requests_total",
            &["flow_schema=\"a\""],
        );
        assert_eq!(got, 15.0);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 100.0);
        assert_eq!(percentile(&v, 0.99), 198.0);
        assert_eq!(percentile(&v[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn series_interpolates_between_reads() {
        let s = Series::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let c = |n: f64| Counters {
            requests: n,
            ..Counters::default()
        };
        s.0.lock()
            .unwrap()
            .extend([(t0, c(10.0)), (t0 + SignedDuration::from_secs(2), c(30.0))]);
        assert_eq!(s.at(t0 + SignedDuration::from_secs(1)).requests, 20.0);
        assert_eq!(s.at(t0 - SignedDuration::from_secs(1)).requests, 10.0);
        assert_eq!(s.at(t0 + SignedDuration::from_secs(5)).requests, 30.0);
        let p = s.phase(t0, t0, t0 + SignedDuration::from_secs(2));
        assert_eq!((p.requests, p.per_second), (20.0, 10.0));
    }
}
