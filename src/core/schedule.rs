//! The drain schedule, kept only in the pod's own annotations (so it survives restarts of every
//! replica and a change of leader), and how to read it back when a person has mangled it.
//!
//! Written in one patch together with the isolation: when the drain started, when the pod is to
//! be deleted, who asked and why, the delete options to use, the trace context, and the labels that
//! were taken off (so a person can put them back). The label `keys::DRAINING_LABEL` lets the leader
//! list draining pods by selector.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::core::keys::DRAIN_SECONDS;
use crate::core::keys::{
    DELETE_AT, DELETE_OPTIONS, REASON, REMOVED_LABELS, REQUESTED_BY, STARTED_AT, TRACEPARENT,
};

/// Why the pod is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Delete,
    Eviction,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Delete => "delete",
            Reason::Eviction => "eviction",
        }
    }
}

/// The parts of the original DeleteOptions the deferred delete repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedDeleteOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation_policy: Option<String>,
}

/// Configured limits on how long a pod drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainBounds {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub started_at: Timestamp,
    pub delete_at: Timestamp,
    pub requested_by: String,
    pub reason: Reason,
    pub delete_options: SavedDeleteOptions,
    pub traceparent: Option<String>,
    pub removed_labels: BTreeMap<String, String>,
}

/// How long this pod drains: its [`DRAIN_SECONDS`] annotation clamped to the bounds, or the
/// default. A value that is not a whole number of seconds is reported and the default used.
pub fn drain_length(
    annotations: &BTreeMap<String, String>,
    bounds: DrainBounds,
) -> (Duration, Option<String>) {
    let Some(raw) = annotations.get(DRAIN_SECONDS) else {
        return (bounds.default, None);
    };
    match raw.trim().parse::<u64>() {
        Ok(secs) => {
            let wanted = Duration::from_secs(secs);
            let used = wanted.clamp(bounds.min, bounds.max);
            let note = (used != wanted).then(|| {
                format!(
                    "{DRAIN_SECONDS}={secs} is outside [{}, {}] s; using {} s",
                    bounds.min.as_secs(),
                    bounds.max.as_secs(),
                    used.as_secs()
                )
            });
            (used, note)
        }
        Err(_) => (
            bounds.default,
            Some(format!(
                "{DRAIN_SECONDS}={raw:?} is not a number of seconds; using the default {} s",
                bounds.default.as_secs()
            )),
        ),
    }
}

impl Schedule {
    /// When the pod is due: its delete-at, but never later than the maximum drain from its start
    /// (the maximum may have been lowered since the drain started).
    pub fn due_at(&self, bounds: DrainBounds) -> Timestamp {
        let latest = self
            .started_at
            .checked_add(
                jiff::SignedDuration::try_from(bounds.max).unwrap_or(jiff::SignedDuration::MAX),
            )
            .unwrap_or(Timestamp::MAX);
        self.delete_at.min(latest)
    }

    /// The annotations that record this schedule (the draining label is set beside them).
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert(STARTED_AT.into(), self.started_at.to_string());
        a.insert(DELETE_AT.into(), self.delete_at.to_string());
        a.insert(REQUESTED_BY.into(), self.requested_by.clone());
        a.insert(REASON.into(), self.reason.as_str().into());
        a.insert(
            DELETE_OPTIONS.into(),
            serde_json::to_string(&self.delete_options).expect("plain struct serializes"),
        );
        if let Some(tp) = &self.traceparent {
            a.insert(TRACEPARENT.into(), tp.clone());
        }
        a.insert(
            REMOVED_LABELS.into(),
            serde_json::to_string(&self.removed_labels).expect("string map serializes"),
        );
        a
    }
}

/// What the annotations of a draining pod say, once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Every part is present and sane.
    Intact(Schedule),
    /// Something was missing or mangled. `delete_at` is the latest sane time to delete the pod;
    /// the caller records it (so the answer does not move on the next read) and warns.
    Damaged {
        delete_at: Timestamp,
        problems: Vec<String>,
        partial: Schedule,
    },
}

impl Reading {
    pub fn delete_at(&self) -> Timestamp {
        match self {
            Reading::Intact(s) => s.delete_at,
            Reading::Damaged { delete_at, .. } => *delete_at,
        }
    }
}

/// Reads a draining pod's schedule. `now` is used only when nothing sane is left to anchor on:
/// then the pod is deleted one maximum drain from now, at the latest.
pub fn read(
    annotations: &BTreeMap<String, String>,
    now: Timestamp,
    bounds: DrainBounds,
) -> Reading {
    let mut problems = Vec::new();
    let max = jiff::SignedDuration::try_from(bounds.max).unwrap_or(jiff::SignedDuration::MAX);
    let mut time = |key: &str| -> Option<Timestamp> {
        match annotations.get(key).map(|v| v.trim().parse::<Timestamp>()) {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => {
                problems.push(format!("{key} is not an RFC 3339 time"));
                None
            }
            None => {
                problems.push(format!("{key} is missing"));
                None
            }
        }
    };
    let started = time(STARTED_AT);
    let delete_at = time(DELETE_AT);
    // The latest sane moment: a drain never lasts longer than the maximum from its start, and a
    // start in the future is not believed.
    let started_sane = started.filter(|s| *s <= now);
    if started.is_some() && started_sane.is_none() {
        problems.push(format!("{STARTED_AT} lies in the future"));
    }
    let anchor = started_sane.unwrap_or(now);
    let latest = anchor.checked_add(max).unwrap_or(Timestamp::MAX);
    let effective = match delete_at {
        Some(d) if d > latest => {
            problems.push(format!(
                "{DELETE_AT} is more than the maximum drain ({} s) after the drain started",
                bounds.max.as_secs()
            ));
            latest
        }
        Some(d) => d,
        None => latest,
    };

    let requested_by = annotations.get(REQUESTED_BY).cloned().unwrap_or_else(|| {
        problems.push(format!("{REQUESTED_BY} is missing"));
        "unknown".into()
    });
    let reason = match annotations.get(REASON).map(String::as_str) {
        Some("delete") => Reason::Delete,
        Some("eviction") => Reason::Eviction,
        _ => {
            problems.push(format!("{REASON} is missing or unknown"));
            Reason::Delete
        }
    };
    let delete_options = match annotations
        .get(DELETE_OPTIONS)
        .map(|v| serde_json::from_str(v))
    {
        Some(Ok(o)) => o,
        _ => {
            problems.push(format!("{DELETE_OPTIONS} is missing or not valid JSON"));
            SavedDeleteOptions::default()
        }
    };
    let removed_labels = match annotations
        .get(REMOVED_LABELS)
        .map(|v| serde_json::from_str(v))
    {
        Some(Ok(m)) => m,
        _ => {
            problems.push(format!(
                "{REMOVED_LABELS} is missing or not a JSON object of strings"
            ));
            BTreeMap::new()
        }
    };
    let schedule = Schedule {
        started_at: anchor,
        delete_at: effective,
        requested_by,
        reason,
        delete_options,
        traceparent: annotations.get(TRACEPARENT).cloned(),
        removed_labels,
    };
    if problems.is_empty() {
        Reading::Intact(schedule)
    } else {
        Reading::Damaged {
            delete_at: effective,
            problems,
            partial: schedule,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: DrainBounds = DrainBounds {
        default: Duration::from_secs(90),
        min: Duration::from_secs(5),
        max: Duration::from_secs(600),
    };

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn schedule() -> Schedule {
        Schedule {
            started_at: t("2026-11-25T10:00:00Z"),
            delete_at: t("2026-11-25T10:01:30Z"),
            requested_by: "system:serviceaccount:kube-system:replicaset-controller".into(),
            reason: Reason::Delete,
            delete_options: SavedDeleteOptions {
                grace_period_seconds: Some(30),
                propagation_policy: None,
            },
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            removed_labels: [("app".to_string(), "web".to_string())].into(),
        }
    }

    #[test]
    fn a_written_schedule_reads_back_intact() {
        let s = schedule();
        let read_back = read(&s.to_annotations(), t("2026-11-25T10:00:10Z"), BOUNDS);
        assert_eq!(read_back, Reading::Intact(s));
    }

    #[test]
    fn a_mangled_delete_at_falls_back_to_the_maximum_drain_from_the_start() {
        let mut a = schedule().to_annotations();
        a.insert(DELETE_AT.into(), "tomorrow-ish".into());
        let r = read(&a, t("2026-11-25T10:00:10Z"), BOUNDS);
        assert_eq!(r.delete_at(), t("2026-11-25T10:10:00Z"));
        assert!(
            matches!(r, Reading::Damaged { ref problems, .. } if problems[0].contains(DELETE_AT))
        );
    }

    #[test]
    fn a_delete_at_beyond_the_maximum_is_pulled_in() {
        let mut a = schedule().to_annotations();
        a.insert(DELETE_AT.into(), "2099-01-01T00:00:00Z".into());
        let r = read(&a, t("2026-11-25T10:00:10Z"), BOUNDS);
        assert_eq!(r.delete_at(), t("2026-11-25T10:10:00Z"));
    }

    #[test]
    fn with_no_sane_start_the_pod_goes_one_maximum_drain_from_now_at_the_latest() {
        let mut a = schedule().to_annotations();
        a.remove(STARTED_AT);
        a.insert(DELETE_AT.into(), "garbage".into());
        let now = t("2026-11-25T12:00:00Z");
        assert_eq!(read(&a, now, BOUNDS).delete_at(), t("2026-11-25T12:10:00Z"));
        // A start in the future is not believed either.
        a.insert(STARTED_AT.into(), "2030-01-01T00:00:00Z".into());
        assert_eq!(read(&a, now, BOUNDS).delete_at(), t("2026-11-25T12:10:00Z"));
    }

    #[test]
    fn an_early_delete_at_is_kept() {
        let mut a = schedule().to_annotations();
        a.insert(DELETE_AT.into(), "2026-11-25T10:00:05Z".into());
        let r = read(&a, t("2026-11-25T10:00:10Z"), BOUNDS);
        assert_eq!(r.delete_at(), t("2026-11-25T10:00:05Z"));
        assert!(matches!(r, Reading::Intact(_)));
    }

    #[test]
    fn mangled_side_fields_are_reported_but_do_not_move_delete_at() {
        let mut a = schedule().to_annotations();
        a.insert(DELETE_OPTIONS.into(), "{not json".into());
        a.insert(REMOVED_LABELS.into(), "[1,2]".into());
        a.insert(REASON.into(), "boredom".into());
        a.remove(REQUESTED_BY);
        let r = read(&a, t("2026-11-25T10:00:10Z"), BOUNDS);
        let Reading::Damaged {
            delete_at,
            problems,
            partial,
        } = r
        else {
            panic!("expected damage")
        };
        assert_eq!(delete_at, t("2026-11-25T10:01:30Z"));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert_eq!(partial.delete_options, SavedDeleteOptions::default());
        assert_eq!(partial.requested_by, "unknown");
    }

    #[test]
    fn drain_length_honours_the_annotation_within_bounds() {
        let mut a = BTreeMap::new();
        assert_eq!(drain_length(&a, BOUNDS), (Duration::from_secs(90), None));
        a.insert(DRAIN_SECONDS.to_string(), "120".to_string());
        assert_eq!(drain_length(&a, BOUNDS), (Duration::from_secs(120), None));
        a.insert(DRAIN_SECONDS.to_string(), "100000".to_string());
        let (d, note) = drain_length(&a, BOUNDS);
        assert_eq!(d, Duration::from_secs(600));
        assert!(note.unwrap().contains("outside"));
        a.insert(DRAIN_SECONDS.to_string(), "1".to_string());
        assert_eq!(drain_length(&a, BOUNDS).0, Duration::from_secs(5));
        a.insert(DRAIN_SECONDS.to_string(), "-3".to_string());
        let (d, note) = drain_length(&a, BOUNDS);
        assert_eq!(d, Duration::from_secs(90));
        assert!(note.unwrap().contains("not a number"));
    }
}
