//! Prometheus metrics, served as OpenMetrics text on the health port's `/metrics`. Names follow
//! the Prometheus conventions: one `pod_graceful_drain_` prefix, base units (seconds), `_total`
//! on counters, and labels from small fixed sets only: never a pod or namespace name (those are
//! in the pods' events and in `pod-graceful-drain status`), so a busy cluster cannot grow the
//! series without bound.
//!
//! Every replica counts what it answers; what only the leader knows (drains in progress, overdue
//! drains) is reported by the leader alone and is zero elsewhere, so a `sum` over replicas is
//! the cluster's figure.

#[cfg(test)]
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::notice::{EventReason, Severity};
use crate::core::schedule::Reason;

/// How far past its due time a deletion counts as late.
pub const LATE_AFTER: Duration = Duration::from_secs(5);

/// `operation`: what the API server asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationLabel {
    Delete,
    Evict,
    /// A body that was not a review of either (answered 4xx).
    Unknown,
}

impl OperationLabel {
    fn as_str(self) -> &'static str {
        match self {
            OperationLabel::Delete => "delete",
            OperationLabel::Evict => "evict",
            OperationLabel::Unknown => "unknown",
        }
    }
}

/// `answer`: what the webhook replied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnswerLabel {
    Allow,
    Deny,
    /// 429: the caller is asked to come again.
    TooManyRequests,
    /// The eviction was turned into a dry-run (the pod drains).
    EvictionDryRun,
    /// The body was refused (4xx without a review).
    BadRequest,
}

impl AnswerLabel {
    fn as_str(self) -> &'static str {
        match self {
            AnswerLabel::Allow => "allow",
            AnswerLabel::Deny => "deny",
            AnswerLabel::TooManyRequests => "too_many_requests",
            AnswerLabel::EvictionDryRun => "eviction_dry_run",
            AnswerLabel::BadRequest => "bad_request",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AdmissionLabels {
    operation: &'static str,
    answer: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationOnly {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonOnly {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    reason: &'static str,
    r#type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TimelinessLabel {
    timeliness: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiErrorLabels {
    component: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WaitLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LeadershipChange {
    to: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabel {
    what: &'static str,
}

/// Which part of the product met an API error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Admission,
    Deleter,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Admission => "admission",
            Component::Deleter => "deleter",
        }
    }
}

/// The product's metrics; cheap to clone (every clone counts into the same series).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    admission: Family<AdmissionLabels, Counter>,
    admission_seconds: Family<OperationOnly, Histogram>,
    held: Gauge,
    drains: Family<ReasonOnly, Gauge>,
    overdue: Gauge,
    deletions: Family<TimelinessLabel, Counter>,
    lateness: Histogram,
    endpoint_waits: Family<WaitLabel, Counter>,
    leadership_changes: Family<LeadershipChange, Counter>,
    api_errors: Family<ApiErrorLabels, Counter>,
    events: Family<EventLabels, Counter>,
    live: Arc<Live>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What is read at scrape time rather than counted: leadership, the serving certificate's
/// expiry, the webhook listener's refusals. Each is set once, when it exists, as a reading
/// function (so this module needs none of the runners that own them).
#[derive(Default)]
struct Live {
    leading: OnceLock<Reading<bool>>,
    certificate_expiry: OnceLock<Reading<Option<i64>>>,
    refusals: OnceLock<Reading<Vec<(&'static str, u64)>>>,
}

type Reading<T> = Box<dyn Fn() -> T + Send + Sync>;

const PREFIX: &str = "pod_graceful_drain";

impl Metrics {
    pub fn new() -> Metrics {
        let latency = || {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 15.0,
            ])
        };
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            admission: Family::default(),
            admission_seconds: Family::new_with_constructor(latency),
            held: Gauge::default(),
            drains: Family::default(),
            overdue: Gauge::default(),
            deletions: Family::default(),
            lateness: Histogram::new([0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            endpoint_waits: Family::default(),
            leadership_changes: Family::default(),
            api_errors: Family::default(),
            events: Family::default(),
            live: Arc::new(Live::default()),
        };
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "admission_requests",
            "Admission reviews answered, by operation, answer and why",
            m.admission.clone(),
        );
        r.register(
            "admission_duration_seconds",
            "Time from a review's arrival to its answer (held answers included)",
            m.admission_seconds.clone(),
        );
        r.register(
            "held_requests",
            "Answers being held until their pod's delete-at",
            m.held.clone(),
        );
        r.register(
            "drains_in_progress",
            "Pods draining now, by what started the drain (reported by the leader)",
            m.drains.clone(),
        );
        r.register(
            "drains_overdue",
            "Draining pods past their delete-at and the longest endpoint wait, not yet deleted (reported by the leader)",
            m.overdue.clone(),
        );
        r.register(
            "deletions",
            "Deferred deletions carried out, on time or late (more than 5 s past due)",
            m.deletions.clone(),
        );
        r.register(
            "deletion_lateness_seconds",
            "How long after its due time a pod was deleted",
            m.lateness.clone(),
        );
        r.register(
            "endpoint_waits",
            "Due pods still listed as ready in an EndpointSlice: waits started, and waits that ran out",
            m.endpoint_waits.clone(),
        );
        r.register(
            "leadership_changes",
            "Times this replica started or stopped leading",
            m.leadership_changes.clone(),
        );
        r.register(
            "api_errors",
            "Kubernetes API calls that failed, by component and kind",
            m.api_errors.clone(),
        );
        r.register(
            "events",
            "Kubernetes events published, by reason and type",
            m.events.clone(),
        );
        r.register_collector(Box::new(m.live.clone()));
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String fails only if an encoder does, which ours do not.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Whether this replica leads, read at each scrape.
    pub fn watch_leadership(&self, leading: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.live.leading.set(Box::new(leading));
    }

    /// When the serving certificate in use expires (Unix seconds), read at each scrape.
    pub fn watch_certificate(&self, expiry: impl Fn() -> Option<i64> + Send + Sync + 'static) {
        let _ = self.live.certificate_expiry.set(Box::new(expiry));
    }

    /// The webhook listener's refusal counts by kind, read at each scrape.
    pub fn watch_refusals(
        &self,
        counts: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    ) {
        let _ = self.live.refusals.set(Box::new(counts));
    }

    pub fn answered(
        &self,
        operation: OperationLabel,
        answer: AnswerLabel,
        reason: &'static str,
        took: Duration,
    ) {
        self.admission
            .get_or_create(&AdmissionLabels {
                operation: operation.as_str(),
                answer: answer.as_str(),
                reason,
            })
            .inc();
        self.admission_seconds
            .get_or_create(&OperationOnly {
                operation: operation.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a held answer for as long as the guard lives.
    pub fn holding(&self) -> HeldGuard {
        self.held.inc();
        HeldGuard(self.held.clone())
    }

    /// The leader's view of the drains after a pass; `None` when not leading (reported as 0).
    pub fn drains_seen(&self, seen: Option<&DrainCounts>) {
        for reason in [Reason::Delete, Reason::Eviction] {
            let n = seen.map_or(0, |s| match reason {
                Reason::Delete => s.delete,
                Reason::Eviction => s.eviction,
            });
            self.drains
                .get_or_create(&ReasonOnly {
                    reason: reason_label(reason),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.overdue
            .set(seen.map_or(0, |s| i64::try_from(s.overdue).unwrap_or(i64::MAX)));
    }

    pub fn deleted(&self, late: Duration) {
        let timeliness = if late > LATE_AFTER { "late" } else { "on_time" };
        self.deletions
            .get_or_create(&TimelinessLabel { timeliness })
            .inc();
        self.lateness.observe(late.as_secs_f64());
    }

    pub fn endpoint_wait(&self, exceeded: bool) {
        let outcome = if exceeded { "exceeded" } else { "started" };
        self.endpoint_waits
            .get_or_create(&WaitLabel { outcome })
            .inc();
    }

    pub fn leadership_changed(&self, leading: bool) {
        let to = if leading { "leading" } else { "following" };
        self.leadership_changes
            .get_or_create(&LeadershipChange { to })
            .inc();
    }

    pub fn api_error(&self, component: Component, kind: &'static str) {
        self.api_errors
            .get_or_create(&ApiErrorLabels {
                component: component.as_str(),
                kind,
            })
            .inc();
    }

    pub fn event(&self, reason: EventReason) {
        let r#type = match reason.severity() {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        };
        self.events
            .get_or_create(&EventLabels {
                reason: reason.as_str(),
                r#type,
            })
            .inc();
    }
}

/// Drains the leader saw in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainCounts {
    pub delete: u64,
    pub eviction: u64,
    pub overdue: u64,
}

fn reason_label(reason: Reason) -> &'static str {
    match reason {
        Reason::Delete => "delete",
        Reason::Eviction => "eviction",
    }
}

/// One held answer; dropping it stops counting it.
pub struct HeldGuard(Gauge);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(leading) = self.leading.get() {
            let g = ConstGauge::new(i64::from(leading()));
            let m = encoder.encode_descriptor(
                "leader",
                "1 while this replica leads (and runs the deleter), else 0",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Some(expiry) = self.certificate_expiry.get().and_then(|read| read()) {
            let g = ConstGauge::new(expiry);
            let m = encoder.encode_descriptor(
                "certificate_expiry_timestamp_seconds",
                "When the serving certificate in use expires (Unix time)",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        if let Some(r) = self.refusals.get() {
            let mut family = encoder.encode_descriptor(
                "webhook_refusals",
                "Connections and requests the webhook listener refused or cut short, by what",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (what, n) in r() {
                let c: ConstCounter<u64> = ConstCounter::new(n);
                c.encode(family.encode_family(&RefusalLabel { what })?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_by_convention_and_labelled_without_pod_names() {
        let m = Metrics::new();
        m.answered(
            OperationLabel::Delete,
            AnswerLabel::Deny,
            "drain",
            Duration::from_millis(3),
        );
        m.deleted(Duration::from_secs(7));
        m.deleted(Duration::from_millis(300));
        m.event(EventReason::Draining);
        m.api_error(Component::Deleter, "timeout");
        m.drains_seen(Some(&DrainCounts {
            delete: 2,
            eviction: 1,
            overdue: 0,
        }));
        let text = m.encode();
        for line in [
            r#"pod_graceful_drain_admission_requests_total{operation="delete",answer="deny",reason="drain"} 1"#,
            r#"pod_graceful_drain_admission_duration_seconds_bucket{le="0.005",operation="delete"} 1"#,
            r#"pod_graceful_drain_deletions_total{timeliness="late"} 1"#,
            r#"pod_graceful_drain_deletions_total{timeliness="on_time"} 1"#,
            r#"pod_graceful_drain_deletion_lateness_seconds_count 2"#,
            r#"pod_graceful_drain_events_total{reason="Draining",type="Normal"} 1"#,
            r#"pod_graceful_drain_api_errors_total{component="deleter",kind="timeout"} 1"#,
            r#"pod_graceful_drain_drains_in_progress{reason="delete"} 2"#,
            r#"pod_graceful_drain_drains_in_progress{reason="eviction"} 1"#,
            "pod_graceful_drain_held_requests 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_held_answer_is_counted_while_it_is_held() {
        let m = Metrics::new();
        let guard = m.holding();
        assert!(m.encode().contains("pod_graceful_drain_held_requests 1\n"));
        drop(guard);
        assert!(m.encode().contains("pod_graceful_drain_held_requests 0\n"));
    }

    #[test]
    fn leadership_and_refusals_are_read_when_scraped() {
        let m = Metrics::new();
        let refusals = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = refusals.clone();
        m.watch_refusals(move || {
            vec![(
                "handshake_failed",
                seen.load(std::sync::atomic::Ordering::Relaxed),
            )]
        });
        m.watch_leadership(|| true);
        refusals.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let text = m.encode();
        assert!(text.contains("pod_graceful_drain_leader 1\n"), "{text}");
        assert!(
            text.contains(
                r#"pod_graceful_drain_webhook_refusals_total{what="handshake_failed"} 3"#
            ),
            "{text}"
        );
    }

    /// Every series the chart's alerts and dashboard read is one the product serves: a renamed
    /// metric cannot silently blind them.
    #[test]
    fn the_charts_alerts_and_dashboard_read_only_series_that_exist() {
        let m = Metrics::new();
        m.watch_leadership(|| false);
        m.watch_refusals(|| vec![("handshake_failed", 0)]);
        m.watch_certificate(|| Some(1_900_000_000));
        // A labelled family shows once it has a series: give each one.
        m.answered(
            OperationLabel::Evict,
            AnswerLabel::Allow,
            "drain",
            Duration::ZERO,
        );
        m.deleted(Duration::ZERO);
        m.endpoint_wait(false);
        m.leadership_changed(true);
        m.api_error(Component::Admission, "server");
        m.event(EventReason::Deleted);
        m.drains_seen(None);
        let text = m.encode();
        let families: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let known = |name: &str| {
            families.contains(name)
                || ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .any(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|f| families.contains(f))
                    })
        };
        for (file, body) in [
            ("alerts.yaml", include_str!("../chart/files/alerts.yaml")),
            (
                "dashboard.json",
                include_str!("../chart/files/dashboard.json"),
            ),
        ] {
            let mut read = 0;
            for name in body
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("pod_graceful_drain_"))
            {
                read += 1;
                assert!(
                    known(name),
                    "{file} reads {name}, which is not served:\n{text}"
                );
            }
            assert!(read >= 5, "{file} reads only {read} series");
        }
    }
}
