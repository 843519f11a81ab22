//! What the webhook costs: AdmissionReview latency and throughput measured directly against one
//! replica over TLS with keep-alive (the server's own time from its `Server-Timing` header, and
//! the client's), the CPU it burns per request (from the pod's cgroup), and the API server's
//! DELETE latency for pods that serve nothing, with and without the webhook in the path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::objects;
use pgd_harness::product::{Install, Options};
use pgd_harness::wait;
use pod_graceful_drain::core::keys;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::podstats;
use crate::progress;

/// A kept-alive HTTPS/1.1 connection to one replica.
struct Conn {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    client_ms: f64,
    server_ms: Option<f64>,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str, host: &str, connector: &TlsConnector) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
        Ok(Conn {
            stream: connector.connect(name, tcp).await?,
            buf: Vec::new(),
        })
    }

    async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body).await?;
        self.stream.flush().await?;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let headers = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status: u16 = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let header = |name: &str| {
            headers.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let server_ms = header("server-timing")
            .and_then(|v| v.split("dur=").nth(1).and_then(|d| d.parse().ok()));
        while self.buf.len() < end + length {
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "connection closed mid-body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[end..end + length].to_vec();
        self.buf.drain(..end + length);
        Ok(Answer {
            status,
            client_ms: started.elapsed().as_secs_f64() * 1000.0,
            server_ms,
            body,
        })
    }
}

fn review(pod: &Value, user: &str, uid: u64) -> Vec<u8> {
    let meta = &pod["metadata"];
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": meta["name"], "namespace": meta["namespace"], "operation": "DELETE",
            "userInfo": {"username": user},
            "oldObject": pod, "object": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}
        }
    }))
    .unwrap_or_default()
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub server_p50_ms: f64,
    pub server_p99_ms: f64,
    pub client_p50_ms: f64,
    pub client_p99_ms: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn latency(answers: &[Answer]) -> Latency {
    let mut s: Vec<f64> = answers.iter().filter_map(|a| a.server_ms).collect();
    let mut c: Vec<f64> = answers.iter().map(|a| a.client_ms).collect();
    Latency {
        requests: answers.len(),
        server_p50_ms: pct(&mut s, 0.50),
        server_p99_ms: pct(&mut s, 0.99),
        client_p50_ms: pct(&mut c, 0.50),
        client_p99_ms: pct(&mut c, 0.99),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub connections: usize,
    pub seconds: f64,
    pub requests: usize,
    pub requests_per_second: f64,
    pub cpu_seconds: f64,
    pub requests_per_cpu_second: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiDelete {
    pub with_webhook: Latency,
    pub without_webhook: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub pass_through: Latency,
    pub pass_through_load: Throughput,
    pub intercepting: Latency,
    pub api_delete: ApiDelete,
    pub replica_rss_mib: f64,
}

const CONTROLLER: &str = "system:serviceaccount:kube-system:replicaset-controller";

async fn create_idle(api: &Api<Pod>, n: usize) -> anyhow::Result<()> {
    let pp = PostParams::default();
    for i in 0..n {
        api.create(
            &pp,
            &objects::demo_pod(&format!("idle-{i}"), json!({"role": "idle"})),
        )
        .await?;
    }
    wait::until_list(
        api,
        kube::runtime::watcher::Config::default().labels("role=idle"),
        "idle pods running",
        Duration::from_secs(180),
        |pods: &[Pod]| pods.len() == n && pods.iter().all(wait::conditions::pod_ready),
    )
    .await?;
    Ok(())
}

/// DELETE latency of idle pods (Running, no Service selects them) in a namespace the webhook
/// watches and in one it does not, alternating so that both see the same cluster load. The
/// DELETEs are dry-runs: they go through authentication, admission (the webhook is called, with
/// dryRun set) and validation like any DELETE, and leave the pods in place, so `n` requests need
/// only a few pods and no pod churn disturbs the figures.
async fn api_delete_latency(
    watched: &Api<Pod>,
    unwatched: &Api<Pod>,
    n: usize,
) -> anyhow::Result<(Latency, Latency)> {
    const PODS: usize = 5;
    create_idle(watched, PODS).await?;
    create_idle(unwatched, PODS).await?;
    let dp = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (api, out) in [(watched, &mut with), (unwatched, &mut without)] {
            let t = Instant::now();
            api.delete(&format!("idle-{}", i % PODS), &dp).await?;
            out.push(Answer {
                status: 200,
                client_ms: t.elapsed().as_secs_f64() * 1000.0,
                server_ms: None,
                body: Vec::new(),
            });
        }
    }
    Ok((latency(&with), latency(&without)))
}

/// A TLS client configuration for talking to a replica directly: it trusts the installation's
/// own CA (from its Secret) and presents the testbed PKI's client certificate `client`, if any.
pub async fn replica_tls(
    install: &Install,
    client: Option<&str>,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let secret: Secret = install.api().get(&format!("{}-tls", install.name)).await?;
    let bundle = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bundle) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let (crt, key) = pgd_harness::testbed_client_cert(install.target(), name)?;
            let certs = CertificateDer::pem_file_iter(&crt)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(&key)?)?
        }
    })
}

pub async fn run(
    seconds: u64,
    requests: usize,
    intercepts: usize,
    deletes: usize,
) -> anyhow::Result<CostReport> {
    let env = TestEnv::new("cost").await?;
    progress("installing one replica from chart/");
    let install = Install::new(
        &env,
        Options {
            replicas: 1,
            drain_seconds: 60,
            ..Options::fast()
        },
    )
    .await?;
    let (replica, ip) = install.replica_with_ip().await?;
    let uid = replica.uid().unwrap_or_default();
    // The benchmark stands in for the API server: it presents the API server's webhook client
    // certificate, so the measured cost includes client authentication (the installation runs
    // with clientAuth=required, as the tests do).
    let config = replica_tls(&install, Some("apiserver-webhook-client")).await?;
    let connector = TlsConnector::from(Arc::new(config));
    let host = format!("{}.{}.svc", install.name, install.namespace);
    let addr = format!("{ip}:9443");

    // Pass-through: a pod that serves nothing (not running) is answered without any API call.
    let idle_pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "finished", "namespace": env.namespace, "uid": "00000000-0000-0000-0000-000000000001", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Succeeded"}});
    let body = review(&idle_pod, CONTROLLER, 0);
    progress(&format!(
        "pass-through latency: {requests} sequential requests, one connection"
    ));
    let mut conn = Conn::open(&addr, &host, &connector).await?;
    for _ in 0..200 {
        conn.post("/pods/delete", &body).await?; // warm-up
    }
    let mut answers = Vec::with_capacity(requests);
    for _ in 0..requests {
        let a = conn.post("/pods/delete", &body).await?;
        anyhow::ensure!(
            a.status == 200,
            "status {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        answers.push(a);
    }
    let pass_through = latency(&answers);

    let connections = 8;
    progress(&format!(
        "pass-through throughput: {connections} connections for {seconds} s"
    ));
    let cpu_before = podstats::cpu_seconds(&uid)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (addr, host, connector, body) =
            (addr.clone(), host.clone(), connector.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr, &host, &connector).await?;
            let mut out = Vec::new();
            while Instant::now() < deadline {
                out.push(conn.post("/pods/delete", &body).await?);
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = podstats::cpu_seconds(&uid)? - cpu_before;
    let pass_through_load = Throughput {
        connections,
        seconds: elapsed,
        requests: all.len(),
        requests_per_second: all.len() as f64 / elapsed,
        cpu_seconds: cpu,
        requests_per_cpu_second: all.len() as f64 / cpu.max(1e-9),
        latency: latency(&all),
    };

    // Intercepting: a controller deletes a pod a Service selects; the replica isolates it (one
    // guarded patch) and answers. The pod is put back between requests (not timed).
    progress(&format!(
        "intercepting latency: {intercepts} sequential requests"
    ));
    let pods: Api<Pod> = env.api();
    env.api::<Service>()
        .create(&PostParams::default(), &objects::service("web"))
        .await?;
    pods.create(
        &PostParams::default(),
        &objects::demo_pod("target", json!({"app": "web"})),
    )
    .await?;
    wait::until(
        &pods,
        "target",
        "the target pod ready",
        Duration::from_secs(60),
        |p: Option<&Pod>| p.is_some_and(wait::conditions::pod_ready),
    )
    .await?;
    wait::service_endpoints_ready(
        &env.client,
        &env.namespace,
        "web",
        1,
        Duration::from_secs(30),
    )
    .await?;
    let mut answers = Vec::new();
    for i in 0..intercepts {
        let pod = pods.get("target").await?;
        let a = conn
            .post(
                "/pods/delete",
                &review(&serde_json::to_value(&pod)?, CONTROLLER, i as u64 + 1),
            )
            .await?;
        let allowed = serde_json::from_slice::<Value>(&a.body)?["response"]["allowed"].as_bool();
        anyhow::ensure!(
            allowed == Some(false),
            "the delete was not intercepted: {}",
            String::from_utf8_lossy(&a.body)
        );
        answers.push(a);
        let mut annotations = serde_json::Map::new();
        for key in [
            keys::STARTED_AT,
            keys::DELETE_AT,
            keys::REQUESTED_BY,
            keys::REASON,
            keys::DELETE_OPTIONS,
            keys::TRACEPARENT,
            keys::REMOVED_LABELS,
        ] {
            annotations.insert(key.to_string(), Value::Null);
        }
        pods.patch(
            "target",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
            "labels": {keys::DRAINING_LABEL: null, "app": "web"},
            "annotations": annotations}})),
        )
        .await?;
    }
    let intercepting = latency(&answers);
    let replica_rss_mib = podstats::rss_bytes(&uid, "pod-graceful-drain")? as f64 / 1048576.0;

    progress(&format!(
        "API server DELETE latency: {deletes} dry-run DELETEs of idle pods each, with and without the webhook"
    ));
    let other = TestEnv::new("cost-nowebhook").await?;
    let (with_webhook, without_webhook) =
        api_delete_latency(&env.api(), &other.api(), deletes).await?;
    drop(install);
    Ok(CostReport {
        pass_through,
        pass_through_load,
        intercepting,
        api_delete: ApiDelete {
            with_webhook,
            without_webhook,
        },
        replica_rss_mib,
    })
}

pub fn markdown(r: &CostReport) -> String {
    let l = |x: &Latency| {
        format!(
            "{:.3} / {:.3} ms | {:.3} / {:.3} ms",
            x.server_p50_ms, x.server_p99_ms, x.client_p50_ms, x.client_p99_ms
        )
    };
    let t = &r.pass_through_load;
    format!(
        "| measurement | requests | server p50 / p99 | client p50 / p99 |\n|---|---:|---:|---:|\n\
         | pass-through, sequential | {} | {} |\n\
         | pass-through, {} connections ({:.0} req/s) | {} | {} |\n\
         | intercepting (isolate + answer) | {} | {} |\n\
         | API server DELETE (dry-run) of an idle pod, webhook in the path | {} | – / – | {:.2} / {:.2} ms |\n\
         | API server DELETE (dry-run) of an idle pod, no webhook | {} | – / – | {:.2} / {:.2} ms |\n\n\
         Pass-through throughput: {:.0} requests/s on {} connections for {:.1} s, using {:.2} CPU seconds: \
         **{:.0} requests per CPU-second** (per core). Replica RSS after the run: {:.1} MiB.\n",
        r.pass_through.requests,
        l(&r.pass_through),
        t.connections,
        t.requests_per_second,
        t.requests,
        l(&t.latency),
        r.intercepting.requests,
        l(&r.intercepting),
        r.api_delete.with_webhook.requests,
        r.api_delete.with_webhook.client_p50_ms,
        r.api_delete.with_webhook.client_p99_ms,
        r.api_delete.without_webhook.requests,
        r.api_delete.without_webhook.client_p50_ms,
        r.api_delete.without_webhook.client_p99_ms,
        t.requests_per_second,
        t.connections,
        t.seconds,
        t.cpu_seconds,
        t.requests_per_cpu_second,
        r.replica_rss_mib,
    )
}
