//! The load generator: constant HTTP traffic to a Service's ClusterIP, the way clients behind a
//! load balancer see it. Each request opens a new TCP connection (so every request is routed
//! afresh by kube-proxy's rules, the "load balancer"), sends `GET /` and reads to the end, all
//! within one budget. Workers pace themselves (at most one request per `pace` each), so the rate is
//! bounded; the whole run is bounded in time and count.
//!
//! A connection that failed leaves a conntrack entry pointing at the dead pod; a later connection
//! from the same source port would match it and fail for that reason alone (see
//! ../shared/loadtest-method.md, "Pitfall"). Source ports are therefore chosen here, in sequence,
//! and a port that carried a failure is never used again.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    Refused,
    Timeout,
    Reset,
    HttpError,
    Unreachable,
    Other,
}

impl Outcome {
    pub fn failed(self) -> bool {
        self != Outcome::Ok
    }
}

/// One request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Start, in seconds from the moment the load started.
    pub at: f64,
    pub millis: f64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub workers: usize,
    /// At most one request per `pace` per worker.
    pub pace: Duration,
    /// Connect + send + read, together.
    pub budget: Duration,
    pub max_duration: Duration,
    pub max_requests: u64,
}

/// Source ports handed out in sequence, process-wide (so consecutive runs do not meet their own
/// TIME_WAIT entries), below the kernel's ephemeral range (32768-60999 by default, where the
/// kernel picks ports for every other connection); ports that carried a failure are skipped for
/// good.
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);
static POISONED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

const PORT_LOW: u32 = 10_000;
const PORT_HIGH: u32 = 32_767;

fn take_port() -> u16 {
    loop {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = (PORT_LOW + n % (PORT_HIGH - PORT_LOW + 1)) as u16;
        if !POISONED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&port)
        {
            return port;
        }
    }
}

fn poison(port: u16) {
    POISONED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(port);
}

/// The local port cannot be used for this connection (a listener holds it, or a TIME_WAIT entry
/// for the same peer): a client-side matter, retried on another port, never counted.
fn port_unusable(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrInUse || e.raw_os_error() == Some(99)
}

fn classify(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Outcome::Refused,
        TimedOut | WouldBlock => Outcome::Timeout,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Outcome::Reset,
        _ => match e.raw_os_error() {
            Some(101) | Some(113) => Outcome::Unreachable,
            _ => Outcome::Other,
        },
    }
}

/// Binds a fresh socket to a port of our own (`ephemeral`: one the kernel picks) and connects.
/// Returns the stream and the port, or the connect error and the port it happened on.
fn connect(
    target: SocketAddr,
    ephemeral: bool,
    timeout: Duration,
) -> Result<(TcpStream, u16), (std::io::Error, u16)> {
    for _ in 0..100 {
        let port = if ephemeral { 0 } else { take_port() };
        let socket =
            Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| (e, port))?;
        socket.set_reuse_address(true).map_err(|e| (e, port))?;
        match socket.bind(&SockAddr::from(SocketAddr::from(([0, 0, 0, 0], port)))) {
            Err(e) if port_unusable(&e) => continue,
            Err(e) => return Err((e, port)),
            Ok(()) => {}
        }
        match socket.connect_timeout(&SockAddr::from(target), timeout) {
            Err(e) if port_unusable(&e) => continue,
            Err(e) => return Err((e, port)),
            Ok(()) => return Ok((socket.into(), port)),
        }
    }
    Err((
        std::io::Error::other("no usable local port in 100 tries"),
        0,
    ))
}

/// One request (from a port of our own, or an `ephemeral` one): the outcome, the pod that
/// answered, and the local port used (0 when none was).
pub fn request(
    target: SocketAddr,
    ephemeral: bool,
    budget: Duration,
) -> (Outcome, Option<String>, u16) {
    let deadline = Instant::now() + budget;
    let left = || deadline.saturating_duration_since(Instant::now());
    let (mut stream, port) = match connect(target, ephemeral, left()) {
        Ok(c) => c,
        Err((e, port)) => return (classify(&e), None, port),
    };
    let mut exchange = || -> std::io::Result<(Outcome, Option<String>)> {
        stream.set_write_timeout(Some(left().max(Duration::from_millis(1))))?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: load\r\n\r\n")?;
        let mut body = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let rest = left();
            if rest.is_zero() {
                return Ok((Outcome::Timeout, None));
            }
            stream.set_read_timeout(Some(rest))?;
            match stream.read(&mut buf)? {
                0 => break,
                n => body.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&body);
        if text.is_empty() {
            return Ok((Outcome::Reset, None));
        }
        let ok = text
            .lines()
            .next()
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("200"));
        let served_by = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Served-By: "))
            .map(|s| s.trim().to_string());
        Ok((if ok { Outcome::Ok } else { Outcome::HttpError }, served_by))
    };
    match exchange() {
        Ok((o, s)) => (o, s, port),
        Err(e) => (classify(&e), None, port),
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
    pub started: Instant,
}

impl Load {
    /// Starts the workers. They inherit the network namespace of the thread that starts them
    /// (main joins the testbed's before any thread exists).
    pub fn start(config: LoadConfig) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers = (0..config.workers)
            .map(|i| {
                let (stop, count, config) = (stop.clone(), count.clone(), config.clone());
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    // Spread the workers' first requests over one pace.
                    std::thread::sleep(config.pace * i as u32 / config.workers.max(1) as u32);
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < config.max_duration
                        && count.fetch_add(1, Ordering::Relaxed) < config.max_requests
                    {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        let t = Instant::now();
                        next = t + config.pace;
                        let (outcome, served_by, port) =
                            request(config.target, false, config.budget);
                        if outcome.failed() && port != 0 {
                            poison(port);
                        }
                        samples.push(Sample {
                            at: (t - started).as_secs_f64(),
                            millis: t.elapsed().as_secs_f64() * 1000.0,
                            outcome,
                            served_by,
                        });
                    }
                    samples
                })
            })
            .collect();
        Load {
            stop,
            workers,
            started,
        }
    }

    /// Stops the workers and returns every sample, in start order.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = self
            .workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect();
        all.sort_by(|a, b| a.at.total_cmp(&b.at));
        all
    }
}
