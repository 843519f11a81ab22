//! A Prometheus' HTTP API, for tests that judge the product's metrics as a real scraper sees them:
//! instant queries, active targets, and a wait that polls a query until a predicate holds, with a
//! deadline. On the testbed, [`Prometheus::start_on_testbed`] runs `testbed/prometheus start` (a
//! Prometheus in node 1's network namespace scraping every replica's health port every 2 s) and
//! talks to it from the test thread, which has joined that namespace.
//!
//! The requests are plain HTTP/1.0 on a TCP socket (the server closes the connection after its
//! answer), so no HTTP client is needed and the socket is opened on the calling thread, inside
//! whatever network namespace that thread is in.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::{Target, testbed_script};
use crate::error::{Error, Result};

/// One request's limit: Prometheus answers an instant query on a small TSDB in milliseconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Prometheus::wait_for`] asks again (the testbed scrapes every 2 s).
const POLL: Duration = Duration::from_millis(250);

/// One element of an instant query's answer: a series' labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of one label ("" when the series has none).
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// One active scrape target, as `/api/v1/targets` lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeTarget {
    /// The target's labels after relabelling (namespace, pod, node, release, job, instance).
    pub labels: BTreeMap<String, String>,
    pub scrape_url: String,
    /// "up", "down" or "unknown" (not scraped yet).
    pub health: String,
    #[serde(default)]
    pub last_error: String,
}

/// A Prometheus server, by its base URL (`http://host:port`, no path).
#[derive(Debug, Clone)]
pub struct Prometheus {
    /// `host:port`, as the Host header and the socket address.
    authority: String,
}

impl Prometheus {
    /// A server at `url` (`http://127.0.0.1:9090`; a trailing `/` is allowed). Only `http` is
    /// spoken, and `host` must be an IP address (no resolver is asked).
    pub fn new(url: &str) -> Result<Prometheus> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| {
                Error::Unexpected(format!("Prometheus URL {url}: only http:// is spoken"))
            })?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(Error::Unexpected(format!(
                "Prometheus URL {url}: give the server's base URL, http://host:port"
            )));
        }
        Ok(Prometheus {
            authority: authority.to_string(),
        })
    }

    /// Starts the testbed's Prometheus (`testbed/prometheus start`: nothing is done when it
    /// already runs) and returns it. Joins the testbed's network on this thread: the server
    /// listens on node 1's loopback. An error on another cluster.
    pub async fn start_on_testbed(target: &Target) -> Result<Prometheus> {
        target.enter_network()?;
        let script = |arg: &str| -> Result<std::process::Command> {
            let mut cmd = testbed_script(target, "prometheus")?;
            cmd.arg(arg);
            Ok(cmd)
        };
        let (start, url) = (script("start")?, script("url")?);
        let run = |mut cmd: std::process::Command, what: &'static str| async move {
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .map_err(|e| Error::Testbed(format!("{what}: {e}")))?
                .map_err(|e| Error::Testbed(format!("{what}: {e}")))?;
            if !out.status.success() {
                return Err(Error::Testbed(format!(
                    "{what} failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        run(start, "testbed/prometheus start").await?;
        let url = run(url, "testbed/prometheus url").await?;
        Prometheus::new(&url)
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }

    /// An instant query at the server's now: one [`Sample`] per series of a vector, one sample
    /// without labels for a scalar. A query that Prometheus refuses (bad PromQL, say) is an
    /// error carrying its message.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let data: QueryData = self
            .get(&format!("/api/v1/query?query={}", encode(expr)))
            .await?;
        let parse = |v: &(serde_json::Value, String)| {
            parse_value(&v.1).ok_or_else(|| {
                Error::Unexpected(format!(
                    "query {expr}: a value that is no number: {:?}",
                    v.1
                ))
            })
        };
        match data.result_type.as_str() {
            "vector" => {
                let series: Vec<VectorSample> = serde_json::from_value(data.result)
                    .map_err(|e| Error::Unexpected(format!("query {expr}: the answer: {e}")))?;
                series
                    .into_iter()
                    .map(|s| {
                        Ok(Sample {
                            value: parse(&s.value)?,
                            labels: s.metric,
                        })
                    })
                    .collect()
            }
            "scalar" => {
                let value: (serde_json::Value, String) = serde_json::from_value(data.result)
                    .map_err(|e| Error::Unexpected(format!("query {expr}: the answer: {e}")))?;
                Ok(vec![Sample {
                    labels: BTreeMap::new(),
                    value: parse(&value)?,
                }])
            }
            other => Err(Error::Unexpected(format!(
                "query {expr}: a {other} answer; only instant vectors and scalars are read"
            ))),
        }
    }

    /// The active scrape targets.
    pub async fn targets(&self) -> Result<Vec<ScrapeTarget>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Targets {
            active_targets: Vec<ScrapeTarget>,
        }
        let t: Targets = self.get("/api/v1/targets?state=active").await?;
        Ok(t.active_targets)
    }

    /// Polls `expr` until `pred` holds for its answer, and returns that answer. Past `timeout`,
    /// an [`Error::Timeout`] that shows the last answer (or the last error: a server that is
    /// still starting is asked again, not given up on).
    pub async fn wait_for<P>(
        &self,
        expr: &str,
        what: &str,
        timeout: Duration,
        mut pred: P,
    ) -> Result<Vec<Sample>>
    where
        P: FnMut(&[Sample]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.query(expr).await {
                Ok(samples) if pred(&samples) => return Ok(samples),
                Ok(samples) => format!("{samples:?}"),
                Err(e) => format!("error: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{what} (query {expr}; last answer: {last})"),
                    after: timeout,
                });
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Waits until the active targets satisfy `pred` (say, two replicas up), and returns them.
    pub async fn wait_for_targets<P>(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: P,
    ) -> Result<Vec<ScrapeTarget>>
    where
        P: FnMut(&[ScrapeTarget]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.targets().await {
                Ok(t) if pred(&t) => return Ok(t),
                Ok(t) => format!("{t:?}"),
                Err(e) => format!("error: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{what} (last targets: {last})"),
                    after: timeout,
                });
            }
            tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// GET `path` of the API and the `data` of its JSON envelope (`status: success`).
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.url());
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.request(path))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("GET {url}"),
                after: REQUEST_TIMEOUT,
            })?
            .map_err(|e| Error::Unexpected(format!("GET {url}: {e}")))?;
        let (status, body) = body;
        let envelope: Envelope<T> = serde_json::from_slice(&body).map_err(|e| {
            Error::Unexpected(format!(
                "GET {url}: HTTP {status}, not the API's JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ))
        })?;
        match (envelope.status.as_str(), envelope.data) {
            ("success", Some(data)) => Ok(data),
            _ => Err(Error::Unexpected(format!(
                "GET {url}: HTTP {status}, {}: {}",
                envelope.error_type.unwrap_or_default(),
                envelope.error.unwrap_or_default()
            ))),
        }
    }

    /// One HTTP/1.0 GET: the status code and the body.
    async fn request(&self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(&self.authority).await?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: pgd-harness\r\n\r\n",
            self.authority
        );
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of the HTTP header"))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no HTTP status line"))?;
        if head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
        {
            return Err(bad("a chunked answer to an HTTP/1.0 request"));
        }
        Ok((status, raw[split + 4..].to_vec()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    status: String,
    data: Option<T>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    /// [unix time, "value"]
    value: (serde_json::Value, String),
}

/// Prometheus writes sample values as strings: "1", "0.25", "NaN", "+Inf", "-Inf".
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Percent-encoding of a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_percent_encoded() {
        assert_eq!(
            encode(r#"sum by (pod) (rate(x{a="b c"}[1m]))"#),
            "sum%20by%20%28pod%29%20%28rate%28x%7Ba%3D%22b%20c%22%7D%5B1m%5D%29%29"
        );
    }

    #[test]
    fn values_are_read_as_prometheus_writes_them() {
        assert_eq!(parse_value("1"), Some(1.0));
        assert_eq!(parse_value("0.25"), Some(0.25));
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert!(parse_value("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_value("x"), None);
    }

    #[test]
    fn only_a_base_http_url_is_taken() {
        assert_eq!(
            Prometheus::new("http://127.0.0.1:9090/").unwrap().url(),
            "http://127.0.0.1:9090"
        );
        assert!(Prometheus::new("https://127.0.0.1:9090").is_err());
        assert!(Prometheus::new("http://127.0.0.1:9090/api").is_err());
    }
}
