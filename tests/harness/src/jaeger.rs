//! Reading traces back from Jaeger's query HTTP API (the v1 JSON API, `/api/traces`), as the
//! testbed's trace backend serves it (`testbed/jaeger`; `testbed/up` starts it when it is built).
//! A span's parent is its `CHILD_OF` reference; an OpenTelemetry span link is a `FOLLOWS_FROM`
//! reference. Spans arrive in batches, a little after they end: wait for them with
//! [`Jaeger::wait_for_traces`], never with a sleep.
//!
//! On the testbed the query API and the OTLP receivers listen on node 1's address, reachable from
//! every pod and from a test (which runs in node 1's network namespace, see
//! [`crate::Target::enter_network`]).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::wait;

/// The testbed's Jaeger query API.
pub const TESTBED_QUERY_URL: &str = "http://10.200.0.1:16686";
/// The testbed's OTLP/HTTP receiver: what the product's `otlp.endpoint` chart value is set to.
pub const TESTBED_OTLP_HTTP_URL: &str = "http://10.200.0.1:4318";
/// Overrides [`TESTBED_QUERY_URL`] (a Jaeger of another cluster, say).
pub const QUERY_URL_ENV: &str = "PGD_JAEGER_URL";
/// The service name the product's replicas report (chart value `otlp.serviceName`).
pub const PRODUCT_SERVICE: &str = "pod-graceful-drain";
/// The service name the API server reports.
pub const APISERVER_SERVICE: &str = "apiserver";

/// A client of one Jaeger's query API.
#[derive(Debug, Clone)]
pub struct Jaeger {
    base: String,
    http: reqwest::Client,
}

/// Which traces [`Jaeger::find_traces`] asks for (the v1 API's search: traces with at least one
/// span of `service` (and `operation`, with every tag in `tags`), started after `since`).
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    pub service: String,
    /// A span name (the v1 API calls it the operation).
    pub operation: Option<String>,
    /// Span tags (attributes) that one span must all carry, e.g. `("pod", "demo-0")`.
    pub tags: Vec<(String, String)>,
    /// Only traces that started after this instant (default: the last hour).
    pub since: Option<jiff::Timestamp>,
    /// At most this many traces (default 100).
    pub limit: Option<u32>,
}

impl TraceQuery {
    pub fn service(service: &str) -> TraceQuery {
        TraceQuery {
            service: service.to_string(),
            ..TraceQuery::default()
        }
    }

    pub fn operation(mut self, name: &str) -> TraceQuery {
        self.operation = Some(name.to_string());
        self
    }

    pub fn tag(mut self, key: &str, value: &str) -> TraceQuery {
        self.tags.push((key.to_string(), value.to_string()));
        self
    }

    pub fn since(mut self, t: jiff::Timestamp) -> TraceQuery {
        self.since = Some(t);
        self
    }

    pub fn limit(mut self, n: u32) -> TraceQuery {
        self.limit = Some(n);
        self
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("service", self.service.clone()),
            ("limit", self.limit.unwrap_or(100).to_string()),
        ];
        if let Some(op) = &self.operation {
            p.push(("operation", op.clone()));
        }
        if !self.tags.is_empty() {
            let tags: serde_json::Map<String, Value> = self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            p.push(("tags", Value::Object(tags).to_string()));
        }
        match self.since {
            Some(t) => p.push(("start", t.as_microsecond().to_string())),
            None => p.push(("lookback", "1h".into())),
        }
        p
    }
}

/// One trace as the v1 API returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<Span>,
    /// The reporting processes (service name and resource attributes), by `Span::process_id`.
    #[serde(default)]
    pub processes: HashMap<String, Process>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// The span's name.
    pub operation_name: String,
    #[serde(default)]
    pub references: Vec<Reference>,
    /// Microseconds since the epoch.
    pub start_time: i64,
    /// Microseconds.
    pub duration: i64,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
    #[serde(rename = "processID", default)]
    pub process_id: String,
}

/// A reference to another span: `CHILD_OF` (the parent) or `FOLLOWS_FROM` (a span link).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub ref_type: String,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

/// A tag (span or resource attribute); `value` is a JSON string, number or boolean as `type` says.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    pub value: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub service_name: String,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

fn tag<'a>(tags: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    tags.iter().find(|t| t.key == key).map(|t| &t.value)
}

impl Span {
    /// The parent span (its `CHILD_OF` reference), if any.
    pub fn parent(&self) -> Option<&Reference> {
        self.references.iter().find(|r| r.ref_type == "CHILD_OF")
    }

    /// The spans this one is linked to (its `FOLLOWS_FROM` references).
    pub fn links(&self) -> impl Iterator<Item = &Reference> {
        self.references
            .iter()
            .filter(|r| r.ref_type == "FOLLOWS_FROM")
    }

    /// Whether this span is linked to `other` (a `FOLLOWS_FROM` reference to its trace and span).
    pub fn links_to(&self, other: &Span) -> bool {
        self.links()
            .any(|r| r.trace_id == other.trace_id && r.span_id == other.span_id)
    }

    pub fn tag(&self, key: &str) -> Option<&Value> {
        tag(&self.tags, key)
    }

    /// A tag's value as a string (a string tag as it is, any other as its JSON).
    pub fn tag_str(&self, key: &str) -> Option<String> {
        self.tag(key).map(|v| match v {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
    }
}

impl Process {
    pub fn tag(&self, key: &str) -> Option<&Value> {
        tag(&self.tags, key)
    }
}

impl Trace {
    /// The spans named `name`.
    pub fn spans_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Span> {
        self.spans.iter().filter(move |s| s.operation_name == name)
    }

    pub fn span(&self, span_id: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// The service that reported the span.
    pub fn service_of(&self, span: &Span) -> Option<&str> {
        self.processes
            .get(&span.process_id)
            .map(|p| p.service_name.as_str())
    }

    /// The span's parent, when it is in this trace.
    pub fn parent_of(&self, span: &Span) -> Option<&Span> {
        span.parent().and_then(|r| self.span(&r.span_id))
    }
}

/// Every span named `name` in `traces`.
pub fn spans_named<'a>(traces: &'a [Trace], name: &'a str) -> impl Iterator<Item = &'a Span> {
    traces.iter().flat_map(move |t| t.spans_named(name))
}

#[derive(Deserialize)]
struct Answer<T> {
    data: Option<T>,
    #[serde(default)]
    errors: Option<Vec<Value>>,
}

impl Jaeger {
    pub fn new(base: &str) -> Jaeger {
        Jaeger {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        }
    }

    /// The testbed's Jaeger (or the one `PGD_JAEGER_URL` names). Make it on a thread inside the
    /// testbed network ([`crate::Target::enter_network`]; a test's client does that).
    pub fn testbed() -> Jaeger {
        Jaeger::new(&std::env::var(QUERY_URL_ENV).unwrap_or_else(|_| TESTBED_QUERY_URL.into()))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<T>> {
        let what = |e: &dyn std::fmt::Display| {
            Error::Unexpected(format!("Jaeger GET {}{path}: {e}", self.base))
        };
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| what(&e))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let resp = self.http.get(url).send().await.map_err(|e| what(&e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(what(&format!("{status}: {body}")));
        }
        let answer: Answer<T> = resp.json().await.map_err(|e| what(&e))?;
        if let Some(errors) = answer.errors.filter(|e| !e.is_empty()) {
            return Err(what(&format!("errors: {errors:?}")));
        }
        Ok(answer.data)
    }

    /// The services that have reported spans.
    pub async fn services(&self) -> Result<Vec<String>> {
        Ok(self.get("/api/services", &[]).await?.unwrap_or_default())
    }

    /// The traces `query` selects, each with all its spans (of every service).
    pub async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<Trace>> {
        // An unknown service is an empty answer, not an error.
        Ok(self
            .get("/api/traces", &query.params())
            .await?
            .unwrap_or_default())
    }

    /// One trace by its id (32 hex digits), `None` when Jaeger has none of its spans.
    pub async fn trace(&self, trace_id: &str) -> Result<Option<Trace>> {
        let traces: Option<Vec<Trace>> = self.get(&format!("/api/traces/{trace_id}"), &[]).await?;
        Ok(traces.and_then(|t| t.into_iter().next()))
    }

    /// Polls `query` until the traces satisfy `pred`, and returns them; a timeout names `what`.
    pub async fn wait_for_traces<P>(
        &self,
        query: &TraceQuery,
        what: &str,
        timeout: Duration,
        mut pred: P,
    ) -> Result<Vec<Trace>>
    where
        P: FnMut(&[Trace]) -> bool,
    {
        wait::poll(what, timeout, Duration::from_millis(250), async || {
            let traces = self.find_traces(query).await?;
            Ok(pred(&traces).then_some(traces))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer of Jaeger v1.76.0's `/api/traces?service=pod-graceful-drain` on the testbed: a
    /// replicaset-controller's DELETE (admission) and the leader's deletion at delete-at
    /// (deferred_delete, linked to that admission span).
    const RECORDED: &str = include_str!("../testdata/jaeger-v1-traces.json");

    #[test]
    fn a_recorded_answer_gives_spans_their_links_tags_and_services() {
        let answer: Answer<Vec<Trace>> = serde_json::from_str(RECORDED).expect("the v1 answer");
        let traces = answer.data.expect("data");
        let deferred: Vec<&Span> = spans_named(&traces, "deferred_delete").collect();
        let admission: Vec<&Span> = spans_named(&traces, "admission").collect();
        assert_eq!((deferred.len(), admission.len()), (1, 1));
        let (d, a) = (deferred[0], admission[0]);
        assert!(
            d.links_to(a),
            "deferred_delete links to the admission span: {d:?}"
        );
        assert!(d.parent().is_none() && a.parent().is_none());
        assert_eq!(d.tag_str("outcome").as_deref(), Some("deleted"));
        assert_eq!(d.tag_str("late_ms").as_deref(), Some("216"));
        assert_eq!(
            a.tag_str("pod").as_deref(),
            Some("jaeger-app/web-6cdfd6c4d5-xvrnz")
        );
        let trace = traces
            .iter()
            .find(|t| t.trace_id == d.trace_id)
            .expect("its trace");
        assert_eq!(trace.service_of(d), Some(PRODUCT_SERVICE));
        let process = &trace.processes[&d.process_id];
        assert!(process.tag("k8s.pod.name").is_some());
    }

    #[test]
    fn a_query_names_service_operation_tags_and_start() {
        let q = TraceQuery::service(PRODUCT_SERVICE)
            .operation("admission")
            .tag("pod", "ns/p")
            .since(jiff::Timestamp::from_second(1).expect("a timestamp"))
            .limit(5);
        let p: HashMap<&str, String> = q.params().into_iter().collect();
        assert_eq!(p["service"], "pod-graceful-drain");
        assert_eq!(p["operation"], "admission");
        assert_eq!(p["tags"], r#"{"pod":"ns/p"}"#);
        assert_eq!(p["start"], "1000000");
        assert_eq!(p["limit"], "5");
        assert!(!p.contains_key("lookback"));
    }
}
