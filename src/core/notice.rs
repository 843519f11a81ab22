//! What the product tells people on a pod (Kubernetes Events): one reason for each thing that can
//! happen, Normal or Warning by its nature, so `kubectl describe pod` tells the story and every
//! reason is a fixed label (the words a person reads, and later what metrics count by).

use std::collections::BTreeSet;

use jiff::Timestamp;

use crate::core::keys::{DRAINING_LABEL, REMOVED_LABELS};
use crate::core::seal::Unsealed;

/// Whether an event is news or asks for a person's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventReason {
    /// Taken out of its Services and controller; deleted at delete-at.
    Draining,
    /// Would have been drained, but it is annotated to opt out.
    DrainSkipped,
    /// Serves traffic but cannot be taken out of what selects it (the words say why).
    CannotDrain,
    /// An eviction left to the API server: the budget allows no disruption now.
    EvictionNotAllowed,
    /// A draining label without this installation's seal: nothing is deleted on its account.
    DrainScheduleForged,
    /// The readable schedule was changed by someone else and is put back as sealed.
    DrainScheduleRepaired,
    /// Due, but excluded or opted out since: not deleted, still out of its Services.
    DrainNotCarriedOut,
    /// Due, but still listed as ready in an EndpointSlice: waiting (up to the maximum).
    WaitingForEndpoints,
    /// Still listed after the maximum wait: deleted anyway.
    EndpointsWaitExceeded,
    /// The drain is over and the pod deleted.
    Deleted,
    /// Deleted before its delete-at because the product is being uninstalled.
    DrainCutShort,
}

impl EventReason {
    /// Every reason, for tests and for metrics that list them all.
    pub const ALL: [EventReason; 11] = [
        EventReason::Draining,
        EventReason::DrainSkipped,
        EventReason::CannotDrain,
        EventReason::EvictionNotAllowed,
        EventReason::DrainScheduleForged,
        EventReason::DrainScheduleRepaired,
        EventReason::DrainNotCarriedOut,
        EventReason::WaitingForEndpoints,
        EventReason::EndpointsWaitExceeded,
        EventReason::Deleted,
        EventReason::DrainCutShort,
    ];

    /// The event's `reason` as Kubernetes shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Draining => "Draining",
            EventReason::DrainSkipped => "DrainSkipped",
            EventReason::CannotDrain => "CannotDrain",
            EventReason::EvictionNotAllowed => "EvictionNotAllowed",
            EventReason::DrainScheduleForged => "DrainScheduleForged",
            EventReason::DrainScheduleRepaired => "DrainScheduleRepaired",
            EventReason::DrainNotCarriedOut => "DrainNotCarriedOut",
            EventReason::WaitingForEndpoints => "WaitingForEndpoints",
            EventReason::EndpointsWaitExceeded => "EndpointsWaitExceeded",
            EventReason::Deleted => "Deleted",
            EventReason::DrainCutShort => "DrainCutShort",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            EventReason::Draining
            | EventReason::DrainSkipped
            | EventReason::EvictionNotAllowed
            | EventReason::WaitingForEndpoints
            | EventReason::Deleted => Severity::Normal,
            EventReason::CannotDrain
            | EventReason::DrainScheduleForged
            | EventReason::DrainScheduleRepaired
            | EventReason::DrainNotCarriedOut
            | EventReason::EndpointsWaitExceeded
            | EventReason::DrainCutShort => Severity::Warning,
        }
    }
}

impl std::fmt::Display for EventReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event: its reason and the words for this pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub reason: EventReason,
    pub note: String,
}

impl Notice {
    pub fn new(reason: EventReason, note: impl Into<String>) -> Notice {
        Notice {
            reason,
            note: note.into(),
        }
    }
}

/// The Warning about a draining label that carries no seal of ours.
pub fn forged(instance: &str, why: &Unsealed) -> Notice {
    Notice::new(
        EventReason::DrainScheduleForged,
        format!(
            "Labelled {DRAINING_LABEL}={instance}, but {why}: not a drain of pod-graceful-drain, nothing is deleted on its account (the pod is judged as any other)"
        ),
    )
}

/// The news that a pod is drained: what was taken off, until when, at whose request.
pub fn draining(
    removed: &BTreeSet<String>,
    delete_at: Timestamp,
    requested_by: &str,
    warnings: &[String],
) -> Notice {
    let mut note = format!(
        "Taken out of its Services and controller (labels {removed:?} removed, kept in {REMOVED_LABELS}); deleted at {delete_at}; requested by {requested_by}"
    );
    if !warnings.is_empty() {
        note.push_str(&format!("; note: {}", warnings.join("; ")));
    }
    Notice::new(EventReason::Draining, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: std::collections::BTreeSet<_> =
            EventReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), EventReason::ALL.len());
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_alphabetic()))
        );
    }

    #[test]
    fn what_asks_for_attention_is_a_warning() {
        assert_eq!(EventReason::Draining.severity(), Severity::Normal);
        assert_eq!(EventReason::Deleted.severity(), Severity::Normal);
        assert_eq!(
            EventReason::DrainScheduleForged.severity(),
            Severity::Warning
        );
        assert_eq!(EventReason::DrainCutShort.severity(), Severity::Warning);
    }
}
