//! Floods against one replica: does it survive what any client reaching its port can send, and
//! does the API server's traffic still get answered meanwhile?
//!
//! One replica is installed with `clientAuth.mode=none`, so that every flood reaches the HTTP layer
//! (with `required`, a caller without the API server's client certificate is refused at the TLS
//! handshake: the worst case is `none`). Each flood runs for `--seconds` against the replica's pod
//! IP, port 9443, from this process (inside the testbed's network), on a runtime of its own so
//! that its tasks cannot delay the measurements, which meanwhile:
//!
//! - send real reviews the way the API server sends them: server-side dry-run DELETEs of serving
//!   pods through the API server (the webhook is called for dry-runs), a few at a time, timed;
//! - count, from the API server's log (testbed only), the calls to this webhook that failed and
//!   were let through unreviewed (the webhooks are failurePolicy Ignore: a DELETE whose review
//!   failed still succeeds, so its success alone says nothing);
//! - send a review straight to the replica on a fresh connection every 250 ms (what a new
//!   connection of the API server's would get);
//! - sample the replica's RSS every 0.5 s, and read its restart count before and after.
//!
//! The floods: `oversized` (4 MiB bodies, with an honest Content-Length and chunked), `slow-loris`
//! (more connections than the cap, sending their request head one byte a second, or never
//! finishing the TLS handshake), `idle` (more connections than the cap, TLS done, then silent) and
//! `held` (forged DELETEs of a draining pod, which the replica holds until its deadline, each on
//! a connection of its own). A flood's clients reconnect as soon as they are cut or refused (after
//! a 200 ms pause when refused, so that the refusals do not become a connect flood of the
//! benchmark's own CPU).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use pgd_harness::TestEnv;
use pgd_harness::product::{ClientAuth, Install, Options};
use pgd_harness::wait;
use pod_graceful_drain::core::keys;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::podstats;
use crate::progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Flood {
    Oversized,
    SlowLoris,
    Idle,
    Held,
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flood::Oversized => "oversized",
            Flood::SlowLoris => "slow-loris",
            Flood::Idle => "idle",
            Flood::Held => "held",
        })
    }
}

pub struct FloodConfig {
    pub floods: Vec<Flood>,
    /// How long each flood lasts.
    pub seconds: u64,
    /// Concurrent connections POSTing 4 MiB bodies (half with Content-Length, half chunked).
    pub oversized: usize,
    /// Slow-loris connections in all, and how many of them never finish the TLS handshake.
    pub loris: usize,
    pub loris_stalled: usize,
    /// Connections that finish TLS and then send nothing.
    pub idle: usize,
    /// Concurrent forged DELETEs of the draining pod, each on a connection of its own.
    pub held: usize,
    pub hold_seconds: u64,
    /// Concurrent senders of real reviews (dry-run DELETEs through the API server), each at most
    /// one per `review_pace`.
    pub reviewers: usize,
    pub review_pace: Duration,
}

/// The size of an oversized body (the replica accepts ~3 MiB + 64 KiB).
const BIG: usize = 4 << 20;
/// How long a flood client waits for an answer before giving up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);
/// A flood client's pause after its connection was refused, before it tries again.
const RETRY: Duration = Duration::from_millis(200);
/// How often the direct review is sent on a fresh connection.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const COMM: &str = "pod-graceful-drain";
/// Where the testbed's API server logs.
const APISERVER_LOG: &str = "/var/log/pgd-testbed/kube-apiserver.log";
/// The flood's client ends, by what happened to a request or connection.
const TCP_FAILED: &str = "TCP connect failed";
const CLOSED_IN_HANDSHAKE: &str = "closed in the TLS handshake within 4 s (connection cap)";
const HANDSHAKE_CUT: &str = "closed in the TLS handshake after 4 s (handshake timeout)";
const CUT: &str = "cut by the server";
const CLOSED: &str = "closed before an answer";
const NO_ANSWER: &str = "no answer within 40 s";
const OPEN_AT_END: &str = "still open when the flood ended";
const UNANSWERED_AT_END: &str = "unanswered when the flood ended";
const STALE: &str = "kept-alive connection found closed (reconnected)";

/// Where the flood goes: the replica's pod IP, port 9443, over TLS.
#[derive(Clone)]
struct Endpoint {
    addr: String,
    name: rustls::pki_types::ServerName<'static>,
    connector: TlsConnector,
}

impl Endpoint {
    async fn tcp(&self) -> std::io::Result<TcpStream> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// A connection with TLS done; or what happened instead.
    async fn tls(&self) -> Result<TlsStream<TcpStream>, &'static str> {
        let t = Instant::now();
        let tcp = self.tcp().await.map_err(|_| TCP_FAILED)?;
        match self.connector.connect(self.name.clone(), tcp).await {
            Ok(s) => Ok(s),
            Err(_) if t.elapsed() < Duration::from_secs(4) => Err(CLOSED_IN_HANDSHAKE),
            Err(_) => Err(HANDSHAKE_CUT),
        }
    }
}

/// How many requests or connections ended each way, and after how long.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, Vec<f64>>>);

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub count: usize,
    /// Seconds from the request (or connection) to its end: p50 and max.
    pub p50_s: f64,
    pub max_s: f64,
}

impl Tally {
    fn add(&self, what: impl Into<String>, took: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what.into())
            .or_default()
            .push(took.as_secs_f64());
    }

    fn summary(&self) -> BTreeMap<String, Outcome> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                (
                    k.clone(),
                    Outcome {
                        count: v.len(),
                        p50_s: pct(&mut v, 0.5),
                        max_s: pct(&mut v, 1.0),
                    },
                )
            })
            .collect()
    }

    fn all(&self) -> Vec<f64> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().flatten().copied().collect()
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 response (Content-Length framed) and returns its status and whether the
/// connection can carry another request; None when it closed before a whole head.
async fn read_response<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Option<(u16, bool)> {
    let mut chunk = vec![0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut reusable = !head.contains("connection: close");
    while buf.len() < end + length {
        match r.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                reusable = false;
                break;
            }
        }
    }
    buf.drain(..(end + length).min(buf.len()));
    Some((status, reusable))
}

/// POSTs a Content-Length body and reads the answer.
async fn post<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    body: &[u8],
) -> Option<(u16, bool)> {
    let head = format!(
        "POST /pods/delete HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(body).await.ok()?;
    s.flush().await.ok()?;
    read_response(s, buf).await
}

/// Waits until the connection is closed by the other end (or errs); returns the bytes it got.
async fn until_closed<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return got,
            Ok(n) if got.len() < 4096 => got.extend_from_slice(&chunk[..n]),
            Ok(_) => {}
        }
    }
}

fn answered(status: u16) -> String {
    format!("answered {status}")
}

/// The pause after a refusal, cut short by the flood's end.
async fn pause(deadline: tokio::time::Instant) {
    sleep_until((tokio::time::Instant::now() + RETRY).min(deadline)).await;
}

/// POSTs a 4 MiB body (Content-Length or chunked) on a fresh connection, again and again. The body
/// is sent while the answer is awaited: the replica answers 413 before reading it all.
async fn oversized_client(
    ep: Endpoint,
    chunked: bool,
    body: Arc<Vec<u8>>,
    deadline: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    let kind = if chunked { "chunked" } else { "content-length" };
    while tokio::time::Instant::now() < deadline {
        let t = Instant::now();
        let attempt = timeout_at(deadline, async {
            let stream = ep.tls().await?;
            Ok::<String, &'static str>(send_big(stream, chunked, &body).await)
        })
        .await;
        match attempt {
            Err(_) => {
                tally.add(format!("{kind}: {UNANSWERED_AT_END}"), t.elapsed());
                return;
            }
            Ok(Err(refused)) => {
                tally.add(format!("{kind}: {refused}"), t.elapsed());
                pause(deadline).await;
            }
            Ok(Ok(outcome)) => tally.add(format!("{kind}: {outcome}"), t.elapsed()),
        }
    }
}

async fn send_big(stream: TlsStream<TcpStream>, chunked: bool, body: &[u8]) -> String {
    let (mut r, mut w) = tokio::io::split(stream);
    let head = if chunked {
        "POST /pods/delete HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
    } else {
        format!(
            "POST /pods/delete HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    let send = async {
        w.write_all(head.as_bytes()).await?;
        for piece in body.chunks(64 * 1024) {
            if chunked {
                w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
            }
            w.write_all(piece).await?;
            if chunked {
                w.write_all(b"\r\n").await?;
            }
        }
        if chunked {
            w.write_all(b"0\r\n\r\n").await?;
        }
        w.flush().await
    };
    let mut buf = Vec::new();
    let answer = read_response(&mut r, &mut buf);
    tokio::pin!(send, answer);
    let mut sent = false;
    let got = timeout(CLIENT_TIMEOUT, async {
        loop {
            tokio::select! {
                a = &mut answer => break a,
                // A failed write (the replica closed) leaves its answer, if any, to be read.
                _ = &mut send, if !sent => sent = true,
            }
        }
    })
    .await;
    match got {
        Err(_) => NO_ANSWER.to_string(),
        Ok(None) => CLOSED.to_string(),
        Ok(Some((status, _))) => answered(status),
    }
}

/// Slow-loris: TLS, then the request head one byte a second (never its end), until cut; again.
async fn trickle_client(ep: Endpoint, deadline: tokio::time::Instant, tally: Arc<Tally>) {
    const HEAD: &[u8] = b"POST /pods/delete HTTP/1.1\r\nHost: webhook\r\nX-Slow: ";
    while tokio::time::Instant::now() < deadline {
        let t = Instant::now();
        let stream = match timeout_at(deadline, ep.tls()).await {
            Err(_) => return,
            Ok(Err(refused)) => {
                tally.add(format!("trickle: {refused}"), t.elapsed());
                pause(deadline).await;
                continue;
            }
            Ok(Ok(s)) => s,
        };
        let opened = Instant::now();
        let (mut r, mut w) = tokio::io::split(stream);
        let trickle = async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for byte in HEAD.iter().chain(std::iter::repeat(&b'a')) {
                tick.tick().await;
                if w.write_all(&[*byte]).await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            got = until_closed(&mut r) => {
                let what = match std::str::from_utf8(&got).ok().and_then(|h| h.split_whitespace().nth(1)) {
                    Some(status) => format!("trickle: answered {status}, then closed"),
                    None => format!("trickle: {CUT}"),
                };
                tally.add(what, opened.elapsed());
            }
            _ = trickle => {}
            _ = sleep_until(deadline) => {
                tally.add(format!("trickle: {OPEN_AT_END}"), opened.elapsed());
                return;
            }
        }
    }
}

/// Slow-loris, the other kind: a TLS record header and the start of a ClientHello, then nothing.
async fn stalled_handshake_client(ep: Endpoint, deadline: tokio::time::Instant, tally: Arc<Tally>) {
    // A handshake record of 512 bytes, of which only 9 are sent.
    const PARTIAL_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    while tokio::time::Instant::now() < deadline {
        let t = Instant::now();
        let mut tcp = match timeout_at(deadline, ep.tcp()).await {
            Err(_) => return,
            Ok(Err(_)) => {
                tally.add(format!("stalled handshake: {TCP_FAILED}"), t.elapsed());
                pause(deadline).await;
                continue;
            }
            Ok(Ok(s)) => s,
        };
        let opened = Instant::now();
        let _ = tcp.write_all(PARTIAL_HELLO).await;
        tokio::select! {
            _ = until_closed(&mut tcp) => {
                let lived = opened.elapsed();
                if lived < Duration::from_secs(4) {
                    tally.add(format!("stalled handshake: {CLOSED_IN_HANDSHAKE}"), lived);
                    pause(deadline).await;
                } else {
                    tally.add(format!("stalled handshake: {HANDSHAKE_CUT}"), lived);
                }
            }
            _ = sleep_until(deadline) => {
                tally.add(format!("stalled handshake: {OPEN_AT_END}"), opened.elapsed());
                return;
            }
        }
    }
}

/// TLS done, then silence, until cut; again.
async fn idle_client(ep: Endpoint, deadline: tokio::time::Instant, tally: Arc<Tally>) {
    while tokio::time::Instant::now() < deadline {
        let t = Instant::now();
        let mut stream = match timeout_at(deadline, ep.tls()).await {
            Err(_) => return,
            Ok(Err(refused)) => {
                tally.add(refused, t.elapsed());
                pause(deadline).await;
                continue;
            }
            Ok(Ok(s)) => s,
        };
        let opened = Instant::now();
        tokio::select! {
            _ = until_closed(&mut stream) => tally.add(CUT, opened.elapsed()),
            _ = sleep_until(deadline) => {
                tally.add(OPEN_AT_END, opened.elapsed());
                return;
            }
        }
    }
}

/// A forged `DELETE pods` AdmissionReview, its uid left to fill in.
struct Forged {
    before_uid: String,
    after_uid: String,
}

impl Forged {
    fn new(pod: &Pod) -> anyhow::Result<Forged> {
        const MARK: &str = "@@UID@@";
        let old = serde_json::to_value(pod)?;
        let body = serde_json::to_string(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": MARK,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "DELETE",
                "name": old["metadata"]["name"], "namespace": old["metadata"]["namespace"],
                "userInfo": {"username": "jane"},
                "oldObject": old,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"},
                "dryRun": false
            }
        }))?;
        let (before, after) = body
            .split_once(MARK)
            .ok_or_else(|| anyhow::anyhow!("no uid mark in the forged review"))?;
        Ok(Forged {
            before_uid: before.to_string(),
            after_uid: after.to_string(),
        })
    }

    fn body(&self, uid: &str) -> Vec<u8> {
        format!("{}{uid}{}", self.before_uid, self.after_uid).into_bytes()
    }
}

/// Forged DELETEs of the draining pod on a connection of its own, one after the other (kept
/// alive; reconnecting when closed).
async fn held_client(
    ep: Endpoint,
    forged: Arc<Forged>,
    id: usize,
    deadline: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    let mut conn: Option<(TlsStream<TcpStream>, Vec<u8>, bool)> = None;
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline {
        let t = Instant::now();
        let Some((stream, buf, fresh)) = conn.as_mut() else {
            match timeout_at(deadline, ep.tls()).await {
                Err(_) => return,
                Ok(Err(refused)) => {
                    tally.add(refused, t.elapsed());
                    pause(deadline).await;
                }
                Ok(Ok(s)) => conn = Some((s, Vec::new(), true)),
            }
            continue;
        };
        n += 1;
        let reused = !std::mem::take(fresh);
        let body = forged.body(&format!("flood-{id}-{n}"));
        match timeout_at(deadline, timeout(CLIENT_TIMEOUT, post(stream, buf, &body))).await {
            Err(_) => {
                tally.add(UNANSWERED_AT_END, t.elapsed());
                return;
            }
            Ok(Err(_)) => {
                tally.add(NO_ANSWER, t.elapsed());
                conn = None;
            }
            Ok(Ok(None)) => {
                // A kept-alive connection the replica closed after its last answer (it does after
                // a 503, the request body unread) fails at once: reconnect, as a client's pool does.
                let what = if reused && t.elapsed() < Duration::from_millis(250) {
                    STALE
                } else {
                    CLOSED
                };
                tally.add(what, t.elapsed());
                conn = None;
            }
            Ok(Ok(Some((status, reusable)))) => {
                let took = t.elapsed();
                let what = match status {
                    200 if took >= Duration::from_secs(5) => {
                        "answered 200 after 5 s or more (held)".into()
                    }
                    200 if took >= Duration::from_secs(1) => "answered 200 in 1-5 s".into(),
                    200 => "answered 200 within 1 s".into(),
                    s => answered(s),
                };
                tally.add(what, took);
                if !reusable {
                    conn = None;
                }
            }
        }
    }
}

/// One review straight to the replica on a fresh connection: what a new connection of the API
/// server's would get.
async fn direct_review(ep: &Endpoint, body: &[u8]) -> String {
    let attempt = timeout(CLIENT_TIMEOUT, async {
        let mut stream = ep.tls().await.map_err(str::to_string)?;
        let mut buf = Vec::new();
        Ok::<_, String>(post(&mut stream, &mut buf, body).await)
    })
    .await;
    match attempt {
        Err(_) => NO_ANSWER.to_string(),
        Ok(Err(refused)) => refused,
        Ok(Ok(None)) => CLOSED.to_string(),
        Ok(Ok(Some((status, _)))) => answered(status),
    }
}

async fn prober(
    ep: Endpoint,
    body: Arc<Vec<u8>>,
    deadline: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    while tokio::time::Instant::now() < deadline {
        let next = tokio::time::Instant::now() + PROBE_EVERY;
        let t = Instant::now();
        let what = direct_review(&ep, &body).await;
        tally.add(what, t.elapsed());
        sleep_until(next).await;
    }
}

/// Real reviews: dry-run DELETEs through the API server, at most one per `pace`.
async fn reviewer(
    api: Api<Pod>,
    names: Arc<Vec<String>>,
    offset: usize,
    pace: Duration,
    deadline: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    let dp = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    let mut i = offset;
    while tokio::time::Instant::now() < deadline {
        let next = tokio::time::Instant::now() + pace;
        let t = Instant::now();
        let got = timeout(
            Duration::from_secs(60),
            api.delete(&names[i % names.len()], &dp),
        )
        .await;
        let took = t.elapsed();
        match got {
            Ok(Ok(_)) => tally.add("ok", took),
            Ok(Err(kube::Error::Api(s))) => tally.add(format!("{} {}", s.code, s.reason), took),
            Ok(Err(e)) => tally.add(e.to_string().chars().take(80).collect::<String>(), took),
            Err(_) => tally.add("no answer within 60 s", took),
        }
        i += 1;
        sleep_until(next).await;
    }
}

/// The replica's memory, every 0.5 s until `stop`: RSS and what its cgroup charges, in MiB.
async fn sampler(uid: String, mut stop: watch::Receiver<bool>) -> (Vec<f64>, Vec<f64>, usize) {
    let (mut rss, mut cgroup, mut gaps) = (Vec::new(), Vec::new(), 0);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match podstats::rss_bytes(&uid, COMM) {
                    Ok(b) => rss.push(b as f64 / 1048576.0),
                    // No process: the container is restarting.
                    Err(_) => gaps += 1,
                }
                if let Ok((usage, _)) = podstats::cgroup_memory(&uid) {
                    cgroup.push(usage as f64 / 1048576.0);
                }
            }
            _ = stop.wait_for(|s| *s) => return (rss, cgroup, gaps),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RealReviews {
    pub requests: usize,
    pub ok: usize,
    pub errors: BTreeMap<String, usize>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub over_10s: usize,
    pub over_webhook_timeout: usize,
}

/// Calls of this webhook the API server could not complete and let through (failurePolicy
/// Ignore), from its log, by cause. The log line names the webhook's URL only when the call
/// itself failed (connection, timeout); when the replica answered an error status (503) it names
/// only the webhook, which every installation's shares: such lines are this installation's
/// unless another one was present during the flood (`unattributed` then).
#[derive(Debug, Clone, Serialize)]
pub struct FailedOpen {
    pub count: usize,
    pub unattributed: usize,
    pub other_installations: usize,
    pub causes: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodResult {
    pub flood: Flood,
    pub description: String,
    pub seconds: f64,
    /// The flood's requests or connections, by how they ended.
    pub outcomes: BTreeMap<String, Outcome>,
    /// The replica's own counters (from its log) of what it refused during the flood.
    pub replica_refusals: BTreeMap<String, u64>,
    pub rss_before_mib: f64,
    pub rss_max_mib: f64,
    pub rss_after_mib: f64,
    /// The most the pod's memory cgroup charged (page cache and kernel memory included), sampled.
    pub cgroup_max_mib: f64,
    /// The cgroup's own peak (memory.max_usage_in_bytes), where this flood raised it.
    pub cgroup_peak_mib: Option<f64>,
    pub rss_samples_mib: Vec<f64>,
    /// Samples that found no replica process (restarting).
    pub samples_without_process: usize,
    pub restarts: i32,
    pub last_termination: Option<String>,
    pub real_reviews: RealReviews,
    /// None where the API server's log is not readable (a cluster other than the testbed).
    pub failed_open: Option<FailedOpen>,
    /// Direct reviews on fresh connections, by how they ended.
    pub direct_reviews: BTreeMap<String, Outcome>,
    /// From the flood's end until a direct review on a fresh connection is answered 200.
    pub recovered_after_s: f64,
    pub replica_log_tail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub client_auth: String,
    pub memory_limit_mib: f64,
    pub webhook_timeout_s: u64,
    pub hold_seconds: u64,
    pub drain_seconds: u64,
    pub flood_seconds: u64,
    pub reviewers: usize,
    pub review_pace_ms: u64,
    pub floods: Vec<FloodResult>,
}

/// `256Mi` and the like, in bytes.
fn quantity_bytes(q: &str) -> Option<f64> {
    const UNITS: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (unit, factor) in UNITS {
        if let Some(n) = q.strip_suffix(unit) {
            return n.trim().parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.trim().parse().ok()
}

/// The replica container's restart count, how it last ended and when it started.
async fn container_state(
    api: &Api<Pod>,
    pod: &str,
) -> anyhow::Result<(i32, Option<String>, Option<String>)> {
    let pod = api.get(pod).await?;
    let status = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| anyhow::anyhow!("the replica has no container status"))?;
    let started = status
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref()?.started_at.as_ref())
        .map(|t| t.0.to_string());
    let last = status.last_state.and_then(|s| s.terminated).map(|t| {
        format!(
            "{} (exit code {}) at {}",
            t.reason.unwrap_or_default(),
            t.exit_code,
            t.finished_at.map(|f| f.0.to_string()).unwrap_or_default()
        )
    });
    Ok((status.restart_count, last, started))
}

/// Waits until a direct review on a fresh connection is answered 200.
async fn until_answered(ep: &Endpoint, body: &[u8], within: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        let what = direct_review(ep, body).await;
        if what == answered(200) {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "the replica did not answer a review within {within:?} (last: {what})"
        );
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// The name of the DELETE webhook in every installation's configuration.
const DELETE_WEBHOOK: &str = "pods-delete.pod-graceful-drain.io";

/// The API server's log from `offset` on: failed-open calls of the webhook at `host`.
fn failed_open_since(offset: u64, host: &str, other_installations: usize) -> Option<FailedOpen> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(APISERVER_LOG).ok()?;
    f.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    f.take(512 << 20).read_to_string(&mut text).ok()?;
    let mut causes = BTreeMap::new();
    let (mut count, mut unattributed) = (0, 0);
    let mut sample = None;
    for line in text.lines() {
        if !line.contains("failing open") || !line.contains(DELETE_WEBHOOK) {
            continue;
        }
        if line.contains("https://") {
            if !line.contains(host) {
                continue;
            }
        } else if other_installations > 0 {
            unattributed += 1;
            continue;
        }
        count += 1;
        let cause = [
            ("unable to handle the request", "503 from the replica"),
            ("Too Large", "413 from the replica"),
            ("connection reset by peer", "connection reset"),
            ("EOF", "connection closed (EOF)"),
            ("broken pipe", "broken pipe"),
            ("connection refused", "connection refused"),
            ("deadline exceeded", "timeout"),
            ("Timeout", "timeout"),
        ]
        .iter()
        .find(|(k, _)| line.contains(k))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| {
            sample.get_or_insert_with(|| line.chars().take(300).collect::<String>());
            "other".to_string()
        });
        *causes.entry(cause).or_insert(0) += 1;
    }
    if let Some(line) = sample {
        // One line of the unclassified, for a person to read.
        causes.insert(format!("(an 'other' line: {line})"), 0);
    }
    Some(FailedOpen {
        count,
        unattributed,
        other_installations,
        causes,
    })
}

/// Other installations' DELETE webhooks (whose failures log like ours).
async fn other_installations(client: &kube::Client, ours: &str) -> anyhow::Result<usize> {
    let all = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .list(&Default::default())
        .await?;
    Ok(all
        .items
        .iter()
        .filter(|c| c.name_any() != ours)
        .filter(|c| {
            c.webhooks
                .iter()
                .flatten()
                .any(|w| w.name == DELETE_WEBHOOK)
        })
        .count())
}

fn apiserver_log_len() -> Option<u64> {
    std::fs::metadata(APISERVER_LOG).ok().map(|m| m.len())
}

/// The replica's counters of what it refused, as its warnings last logged them (cumulative since
/// the container started): connections over the cap, requests over the cap (503), answers not held.
fn refusal_counters(log: &str) -> BTreeMap<String, u64> {
    let log = strip_ansi(log);
    let mut out = BTreeMap::new();
    for (message, key) in [
        (
            "too many open connections",
            "connections over the cap (closed)",
        ),
        ("too many requests at once", "requests over the cap (503)"),
        ("too many held requests", "requests not held (held cap)"),
    ] {
        let last = log
            .lines()
            .filter(|l| l.contains(message))
            .filter_map(|l| {
                let at = l
                    .find("total=")
                    .map(|i| i + 6)
                    .or_else(|| l.find("\"total\":").map(|i| i + 8))?;
                l[at..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse::<u64>()
                    .ok()
            })
            .max();
        if let Some(n) = last {
            out.insert(key.to_string(), n);
        }
    }
    out
}

/// The text without its terminal colour sequences (ESC [ ... letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The replica's log: `args` after `kubectl -n <ns> logs <pod>`.
fn replica_log(env: &TestEnv, namespace: &str, pod: &str, args: &[&str]) -> String {
    match pgd_harness::kubectl(env.target)
        .args(["-n", namespace, "logs", pod])
        .args(args)
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("(kubectl logs failed: {e})"),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let text = strip_ansi(text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What every flood shares.
struct Bench<'a> {
    env: &'a TestEnv,
    install: &'a Install,
    cfg: &'a FloodConfig,
    ep: Endpoint,
    replica: String,
    uid: String,
    host: String,
    timeout_s: u64,
    probe_body: Arc<Vec<u8>>,
    serving: Arc<Vec<String>>,
    /// Floods run here, measurements on the caller's runtime.
    flood_rt: &'a tokio::runtime::Runtime,
    /// The refusal counters as last read, to take differences.
    counters: BTreeMap<String, u64>,
}

impl Bench<'_> {
    async fn replica_ready(&self) -> anyhow::Result<()> {
        wait::until(
            &self.install.api::<Pod>(),
            &self.replica,
            "the replica Ready",
            Duration::from_secs(300),
            |p: Option<&Pod>| p.is_some_and(wait::conditions::pod_ready),
        )
        .await?;
        wait::service_endpoints_ready(
            &self.env.client,
            &self.install.namespace,
            &self.install.name,
            1,
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    }

    /// Before a flood: the replica Ready behind its Service, answering, and the API server's
    /// connections to it open (warm-up reviews), as in a cluster running normally.
    async fn settle(&self) -> anyhow::Result<()> {
        self.replica_ready().await?;
        until_answered(&self.ep, &self.probe_body, Duration::from_secs(60)).await?;
        warm_up(&self.env.api(), &self.serving).await
    }

    async fn run_flood(
        &mut self,
        flood: Flood,
        forged: Option<Arc<Forged>>,
    ) -> anyhow::Result<FloodResult> {
        let cfg = self.cfg;
        let pods: Api<Pod> = self.install.api();
        self.settle().await?;
        let (restarts_before, _, started_before) = container_state(&pods, &self.replica).await?;
        let rss_before = rss_mib(&self.uid);
        let log_offset = apiserver_log_len();
        let others_before = other_installations(&self.env.client, &self.install.name).await?;
        let (_, peak_before) = podstats::cgroup_memory(&self.uid).unwrap_or_default();
        let description = match flood {
            Flood::Oversized => format!(
                "{} connections POSTing {} MiB bodies, half with Content-Length, half chunked, a fresh connection each",
                cfg.oversized,
                BIG >> 20
            ),
            Flood::SlowLoris => format!(
                "{} connections: {} finish TLS then send their request head one byte a second, {} never finish the TLS handshake",
                cfg.loris,
                cfg.loris - cfg.loris_stalled.min(cfg.loris),
                cfg.loris_stalled.min(cfg.loris)
            ),
            Flood::Idle => format!(
                "{} connections that finish TLS and then send nothing",
                cfg.idle
            ),
            Flood::Held => format!(
                "{} concurrent forged DELETEs of the draining pod, each on a connection of its own",
                cfg.held
            ),
        };
        progress(&format!("flood {flood}: {description}, {} s", cfg.seconds));

        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.seconds);
        let (stop_tx, stop_rx) = watch::channel(false);
        let sampling = tokio::spawn(sampler(self.uid.clone(), stop_rx));
        let (flood_tally, real_tally, direct_tally) = (
            Arc::new(Tally::default()),
            Arc::new(Tally::default()),
            Arc::new(Tally::default()),
        );
        let mut measuring = Vec::new();
        for i in 0..cfg.reviewers {
            measuring.push(tokio::spawn(reviewer(
                self.env.api(),
                self.serving.clone(),
                i,
                cfg.review_pace,
                deadline,
                real_tally.clone(),
            )));
        }
        measuring.push(tokio::spawn(prober(
            self.ep.clone(),
            self.probe_body.clone(),
            deadline,
            direct_tally.clone(),
        )));

        let mut clients = Vec::new();
        let ep = &self.ep;
        let rt = self.flood_rt;
        match flood {
            Flood::Oversized => {
                let body = Arc::new(big_body());
                for i in 0..cfg.oversized {
                    clients.push(rt.spawn(oversized_client(
                        ep.clone(),
                        i % 2 == 1,
                        body.clone(),
                        deadline,
                        flood_tally.clone(),
                    )));
                }
            }
            Flood::SlowLoris => {
                let stalled = cfg.loris_stalled.min(cfg.loris);
                for i in 0..cfg.loris {
                    if i < stalled {
                        clients.push(rt.spawn(stalled_handshake_client(
                            ep.clone(),
                            deadline,
                            flood_tally.clone(),
                        )));
                    } else {
                        clients.push(rt.spawn(trickle_client(
                            ep.clone(),
                            deadline,
                            flood_tally.clone(),
                        )));
                    }
                }
            }
            Flood::Idle => {
                for _ in 0..cfg.idle {
                    clients.push(rt.spawn(idle_client(ep.clone(), deadline, flood_tally.clone())));
                }
            }
            Flood::Held => {
                let forged = forged.ok_or_else(|| anyhow::anyhow!("no draining pod"))?;
                for i in 0..cfg.held {
                    clients.push(rt.spawn(held_client(
                        ep.clone(),
                        forged.clone(),
                        i,
                        deadline,
                        flood_tally.clone(),
                    )));
                }
            }
        }
        for c in clients {
            c.await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        for m in measuring {
            m.await?;
        }
        let recovered_after_s =
            until_answered(&self.ep, &self.probe_body, Duration::from_secs(300)).await?;
        let _ = stop_tx.send(true);
        let (rss, cgroup, gaps) = sampling.await?;
        let rss_after = rss_mib(&self.uid);
        // Read once the pod is Ready again: the kubelet reports a restart with a lag.
        self.replica_ready().await?;
        let (restarts_after, last_termination, started_after) =
            container_state(&pods, &self.replica).await?;
        let mut restarts = restarts_after - restarts_before;
        if restarts == 0 && started_after != started_before {
            restarts = 1;
        }

        let since = format!("--since={}s", started.elapsed().as_secs() + 5);
        let log = replica_log(self.env, &self.install.namespace, &self.replica, &[&since]);
        let now = refusal_counters(&log);
        let mut replica_refusals = BTreeMap::new();
        for (k, v) in &now {
            // Counters restart with the container.
            let before = if restarts > 0 {
                0
            } else {
                self.counters.get(k).copied().unwrap_or(0)
            };
            replica_refusals.insert(k.clone(), v.saturating_sub(before));
        }
        self.counters.extend(now);

        let mut all = real_tally.all();
        let real_summary = real_tally.summary();
        let ok = real_summary.get("ok").map(|o| o.count).unwrap_or(0);
        let real_reviews = RealReviews {
            requests: all.len(),
            ok,
            errors: real_summary
                .iter()
                .filter(|(k, _)| k.as_str() != "ok")
                .map(|(k, v)| (k.clone(), v.count))
                .collect(),
            over_10s: all.iter().filter(|s| **s > 10.0).count(),
            over_webhook_timeout: all.iter().filter(|s| **s >= self.timeout_s as f64).count(),
            p50_ms: pct(&mut all, 0.50) * 1000.0,
            p99_ms: pct(&mut all, 0.99) * 1000.0,
            max_ms: pct(&mut all, 1.0) * 1000.0,
        };
        let others =
            others_before.max(other_installations(&self.env.client, &self.install.name).await?);
        let failed_open = log_offset.and_then(|o| failed_open_since(o, &self.host, others));
        let (_, peak_after) = podstats::cgroup_memory(&self.uid).unwrap_or_default();
        let troubled = restarts > 0
            || real_reviews.ok < real_reviews.requests
            || failed_open.as_ref().is_some_and(|f| f.count > 0);
        let replica_log_tail = troubled.then(|| {
            let mut t = String::new();
            if restarts > 0 {
                t.push_str("--- previous container ---\n");
                t.push_str(&tail(
                    &replica_log(
                        self.env,
                        &self.install.namespace,
                        &self.replica,
                        &["--previous", "--tail=30"],
                    ),
                    30,
                ));
                t.push_str("\n--- current container ---\n");
            }
            t.push_str(&tail(&log, 30));
            t
        });
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        let rss_max_mib = max(&rss).max(rss_before).max(rss_after);
        Ok(FloodResult {
            flood,
            description,
            seconds,
            outcomes: flood_tally.summary(),
            replica_refusals,
            rss_before_mib: rss_before,
            rss_max_mib,
            rss_after_mib: rss_after,
            cgroup_max_mib: max(&cgroup),
            cgroup_peak_mib: (peak_after > peak_before).then(|| peak_after as f64 / 1048576.0),
            rss_samples_mib: rss,
            samples_without_process: gaps,
            restarts,
            last_termination: if restarts > 0 { last_termination } else { None },
            real_reviews,
            failed_open,
            direct_reviews: direct_tally.summary(),
            recovered_after_s,
            replica_log_tail,
        })
    }
}

/// The replica's RSS in MiB; NaN while it has no process.
fn rss_mib(uid: &str) -> f64 {
    podstats::rss_bytes(uid, COMM)
        .map(|b| b as f64 / 1048576.0)
        .unwrap_or(f64::NAN)
}

/// A 4 MiB AdmissionReview-looking JSON body.
fn big_body() -> Vec<u8> {
    let prefix = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"big","padding":""#;
    let suffix = br#""}}"#;
    let mut body = Vec::with_capacity(BIG);
    body.extend_from_slice(prefix);
    body.resize(BIG - suffix.len(), b'a');
    body.extend_from_slice(suffix);
    body
}

/// Dry-run DELETEs through the API server, a few at a time: its connections to the webhook.
async fn warm_up(api: &Api<Pod>, serving: &[String]) -> anyhow::Result<()> {
    let dp = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    for round in 0..5 {
        let batch = (0..4).map(|i| api.delete(&serving[(round + i) % serving.len()], &dp));
        for r in futures::future::join_all(batch).await {
            r?;
        }
    }
    Ok(())
}

/// Evicts `pod` through the API server and waits until it carries the draining label; returns it.
async fn drain_one(env: &TestEnv, pod: &str) -> anyhow::Result<Pod> {
    let api: Api<Pod> = env.api();
    api.evict(pod, &Default::default()).await?;
    let drained = wait::until(
        &api,
        pod,
        "the evicted pod draining",
        Duration::from_secs(30),
        |p: Option<&Pod>| p.is_some_and(|p| p.labels().contains_key(keys::DRAINING_LABEL)),
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("the evicted pod is gone"))?;
    Ok(drained)
}

/// The soft limit on open files of this process, from /proc.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub async fn run(cfg: &FloodConfig) -> anyhow::Result<FloodReport> {
    let needed = cfg.oversized.max(cfg.loris).max(cfg.idle).max(cfg.held) as u64 + 512;
    if let Some(limit) = open_files_limit() {
        anyhow::ensure!(
            limit >= needed,
            "the floods need {needed} open files, the limit is {limit} (ulimit -n)"
        );
    }
    // A held request's deadline is the drain's start + holdSeconds, or its delete-at when that is
    // within holdSeconds; in between a DELETE is answered at once. A drain of twice the hold
    // keeps every forged DELETE held from the eviction until the pod is deleted.
    let drain_seconds = 2 * cfg.hold_seconds;
    if cfg.floods.contains(&Flood::Held) && cfg.seconds > drain_seconds {
        progress(&format!(
            "note: the held flood lasts {} s, longer than the drain ({drain_seconds} s): the pod is gone before it ends",
            cfg.seconds
        ));
    }
    let env = TestEnv::new("flood").await?;
    progress("installing one replica from chart/ with clientAuth.mode=none (the worst case)");
    let install = Install::new(
        &env,
        Options {
            replicas: 1,
            client_auth: ClientAuth::None,
            drain_seconds,
            hold_seconds: cfg.hold_seconds,
            ..Options::fast()
        },
    )
    .await?;
    let (replica, ip) = install.replica_with_ip().await?;
    let memory_limit = replica
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory"))
        .and_then(|q| quantity_bytes(&q.0))
        .ok_or_else(|| anyhow::anyhow!("the replica has no memory limit"))?;
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    let timeout_s = webhooks
        .get(&install.name)
        .await?
        .webhooks
        .and_then(|w| w.into_iter().next()?.timeout_seconds)
        .unwrap_or(10) as u64;

    // No client certificate: anyone who can reach the port.
    let config = crate::cost::replica_tls(&install, None).await?;
    let host = format!("{}.{}.svc", install.name, install.namespace);
    let ep = Endpoint {
        addr: format!("{ip}:9443"),
        name: rustls::pki_types::ServerName::try_from(host.clone())?,
        connector: TlsConnector::from(Arc::new(config)),
    };
    // A review the replica answers without any API call: a pod that serves nothing.
    let probe_body = Arc::new(serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "flood-probe",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "finished", "namespace": env.namespace, "operation": "DELETE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "oldObject": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "finished", "namespace": env.namespace,
                             "uid": "00000000-0000-0000-0000-000000000001"},
                "spec": {"containers": [{"name": "app", "image": "x"}]},
                "status": {"phase": "Succeeded"}},
            "object": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}
        }
    }))?);

    progress("the demo app: 3 pods behind a Service (one will drain, two take the real reviews)");
    let pods = env.serve_demo("web", 3, json!({})).await?;
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let (to_drain, serving) = names
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no pods"))?;
    let flood_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flood")
        .build()?;
    let mut bench = Bench {
        env: &env,
        install: &install,
        cfg,
        ep,
        replica: replica.name_any(),
        uid: replica.uid().unwrap_or_default(),
        host,
        timeout_s,
        probe_body,
        serving: Arc::new(serving.to_vec()),
        flood_rt: &flood_rt,
        counters: BTreeMap::new(),
    };
    let mut floods = Vec::new();
    let outcome = async {
        for flood in &cfg.floods {
            let forged = if *flood == Flood::Held {
                progress(&format!(
                    "evicting {to_drain} through the API server: it drains for {drain_seconds} s"
                ));
                Some(Arc::new(Forged::new(&drain_one(&env, to_drain).await?)?))
            } else {
                None
            };
            let r = bench
                .run_flood(*flood, forged)
                .await
                .map_err(|e| e.context(format!("flood {flood}")))?;
            progress(&format!(
                "flood {flood}: RSS max {:.1} MiB, {} restart(s), real reviews {}/{} ok (max {:.0} ms), let through unreviewed: {}",
                r.rss_max_mib,
                r.restarts,
                r.real_reviews.ok,
                r.real_reviews.requests,
                r.real_reviews.max_ms,
                r.failed_open
                    .as_ref()
                    .map(|f| f.count.to_string())
                    .unwrap_or_else(|| "n/a".into())
            ));
            floods.push(r);
        }
        anyhow::Ok(())
    }
    .await;
    // Not dropped here: a runtime cannot be dropped inside another.
    flood_rt.shutdown_background();
    if let Err(e) = outcome {
        eprintln!(
            "replica log tail:\n{}",
            tail(
                &replica_log(
                    &env,
                    &install.namespace,
                    &replica.name_any(),
                    &["--tail=40"]
                ),
                40
            )
        );
        return Err(e);
    }
    drop(install);
    Ok(FloodReport {
        client_auth: ClientAuth::None.as_str().to_string(),
        memory_limit_mib: memory_limit / 1048576.0,
        webhook_timeout_s: timeout_s,
        hold_seconds: cfg.hold_seconds,
        drain_seconds,
        flood_seconds: cfg.seconds,
        reviewers: cfg.reviewers,
        review_pace_ms: cfg.review_pace.as_millis() as u64,
        floods,
    })
}

/// What `--assert` checks, per flood: no restart, RSS below the limit, every real review answered
/// OK within the webhook's timeout, and none of them let through unreviewed by the API server.
pub fn verdict(r: &FloodReport) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &r.floods {
        let name = f.flood;
        if f.restarts != 0 {
            problems.push(format!(
                "{name}: the replica restarted {} time(s) ({})",
                f.restarts,
                f.last_termination.clone().unwrap_or_default()
            ));
        }
        if f.rss_max_mib.is_nan() || f.rss_max_mib >= r.memory_limit_mib {
            problems.push(format!(
                "{name}: RSS max {:.1} MiB, limit {:.0} MiB",
                f.rss_max_mib, r.memory_limit_mib
            ));
        }
        if let Some(peak) = f.cgroup_peak_mib
            && peak >= r.memory_limit_mib
        {
            problems.push(format!(
                "{name}: the memory cgroup reached its limit ({peak:.1} MiB)"
            ));
        }
        let real = &f.real_reviews;
        if real.ok < real.requests {
            problems.push(format!(
                "{name}: {} of {} real reviews failed: {:?}",
                real.requests - real.ok,
                real.requests,
                real.errors
            ));
        }
        if real.over_webhook_timeout > 0 {
            problems.push(format!(
                "{name}: {} real reviews took the webhook's timeout ({} s) or longer",
                real.over_webhook_timeout, r.webhook_timeout_s
            ));
        }
        if let Some(fo) = &f.failed_open
            && fo.count > 0
        {
            problems.push(format!(
                "{name}: the API server could not get {} review(s) answered and let them through unreviewed: {:?}",
                fo.count, fo.causes
            ));
        }
        if let Some(fo) = &f.failed_open
            && fo.unattributed > 0
        {
            eprintln!(
                "{name}: {} failed-open call(s) of the DELETE webhook could be this installation's or one of the {} others present: not counted",
                fo.unattributed, fo.other_installations
            );
        }
    }
    problems
}

fn outcomes_line(o: &BTreeMap<String, Outcome>) -> String {
    let mut v: Vec<(&String, &Outcome)> = o.iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1.count));
    v.iter()
        .map(|(k, o)| format!("{} {k}", o.count))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn markdown(r: &FloodReport) -> String {
    let mut s = format!(
        "One replica, clientAuth.mode=**{}** (anyone reaching the port is served, as unverified: every flood reaches the HTTP layer, the worst case; with `required` a caller without the API server's client certificate is refused at the TLS handshake). \
         Memory limit {:.0} MiB; DELETE webhook timeout {} s; holdSeconds {}, drain {} s. Each flood {} s against the replica's pod IP, port 9443. \
         Meanwhile {} reviewers send real reviews (server-side dry-run DELETEs of serving pods through the API server, one per {} ms each), and a review goes straight to the replica on a fresh connection every {} ms.\n\n\
         \"Real reviews OK\" counts the DELETEs that succeeded; \"answered by the webhook\" excludes those the API server let through without the webhook's answer (failurePolicy Ignore; counted from the API server's log).\n\n\
         | flood | replica RSS max, sampled (before → after) | memory cgroup peak, where the flood raised it | restarts | real reviews OK | answered by the webhook | p50 / p99 / max | > 10 s | direct reviews on a fresh connection answered 200 | recovered after |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.client_auth,
        r.memory_limit_mib,
        r.webhook_timeout_s,
        r.hold_seconds,
        r.drain_seconds,
        r.flood_seconds,
        r.reviewers,
        r.review_pace_ms,
        PROBE_EVERY.as_millis()
    );
    for f in &r.floods {
        let real = &f.real_reviews;
        let direct_total: usize = f.direct_reviews.values().map(|o| o.count).sum();
        let direct_ok = f
            .direct_reviews
            .get(&answered(200))
            .map(|o| o.count)
            .unwrap_or(0);
        s.push_str(&format!(
            "| {} | {:.1} MiB of {:.0} ({:.1} → {:.1}) | {} | {} | {}/{} | {} | {:.0} / {:.0} / {:.0} ms | {} | {}/{} | {:.1} s |\n",
            f.flood,
            f.rss_max_mib,
            r.memory_limit_mib,
            f.rss_before_mib,
            f.rss_after_mib,
            f.cgroup_peak_mib
                .map(|p| format!("{p:.1} MiB"))
                .unwrap_or_else(|| "not raised".into()),
            f.restarts,
            real.ok,
            real.requests,
            match &f.failed_open {
                None => "n/a".to_string(),
                Some(fo) if fo.unattributed > 0 => format!(
                    "{}/{} ({} more failures of an unknown installation's)",
                    real.requests.saturating_sub(fo.count),
                    real.requests,
                    fo.unattributed
                ),
                Some(fo) => format!(
                    "{}/{}",
                    real.requests.saturating_sub(fo.count),
                    real.requests
                ),
            },
            real.p50_ms,
            real.p99_ms,
            real.max_ms,
            real.over_10s,
            direct_ok,
            direct_total,
            f.recovered_after_s,
        ));
    }
    s.push_str("\nWhat the floods got:\n\n| flood | requests or connections, by how they ended (p50 / max seconds each) | the replica's refusals (its log) |\n|---|---|---|\n");
    for f in &r.floods {
        let mut v: Vec<(&String, &Outcome)> = f.outcomes.iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1.count));
        let outcomes = v
            .iter()
            .map(|(k, o)| format!("{} × {k} ({:.2} / {:.2} s)", o.count, o.p50_s, o.max_s))
            .collect::<Vec<_>>()
            .join("<br>");
        let refusals = if f.replica_refusals.is_empty() {
            "none logged".to_string()
        } else {
            f.replica_refusals
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        s.push_str(&format!(
            "| {}: {} | {outcomes} | {refusals} |\n",
            f.flood, f.description
        ));
    }
    let mut notes = Vec::new();
    for f in &r.floods {
        if !f.real_reviews.errors.is_empty() {
            notes.push(format!(
                "- {}: real reviews failed: {:?}",
                f.flood, f.real_reviews.errors
            ));
        }
        if let Some(fo) = &f.failed_open
            && fo.count > 0
        {
            notes.push(format!(
                "- {}: the API server let {} of {} real reviews through without the webhook's answer (failurePolicy Ignore), causes: {:?}",
                f.flood, fo.count, f.real_reviews.requests, fo.causes
            ));
        }
        let direct_bad: BTreeMap<String, Outcome> = f
            .direct_reviews
            .iter()
            .filter(|(k, _)| **k != answered(200))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !direct_bad.is_empty() {
            notes.push(format!(
                "- {}: direct reviews on a fresh connection not answered 200: {}",
                f.flood,
                outcomes_line(&direct_bad)
            ));
        }
        if f.restarts > 0 {
            notes.push(format!(
                "- {}: the replica restarted {} time(s): {}",
                f.flood,
                f.restarts,
                f.last_termination.clone().unwrap_or_default()
            ));
        }
    }
    if !notes.is_empty() {
        s.push_str("\nFindings:\n\n");
        s.push_str(&notes.join("\n"));
        s.push('\n');
    }
    s
}
