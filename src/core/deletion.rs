//! The deleter's own decision for one draining pod, pure (the deleter gathers the facts and acts):
//! what the seal says is the only order; a label without our seal is reported, never acted on;
//! the readable annotations are put back when someone changed them; a pod is deleted at its
//! sealed delete-at unless it has since been excluded or opted out, and not while an
//! EndpointSlice still lists it ready (up to a maximum wait).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::core::schedule::{self, DrainBounds, Reading, Schedule};
use crate::core::seal::{Mark, Unsealed};

/// Why a due pod is not deleted after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// Its namespace is excluded, or no longer selected.
    Namespace,
    /// Annotated as opted out since its drain started.
    OptedOut,
    /// One of the product's own pods.
    OwnPod,
}

impl Withheld {
    pub fn describe(self) -> &'static str {
        match self {
            Withheld::Namespace => "its namespace is excluded or no longer selected",
            Withheld::OptedOut => "it is annotated pod-graceful-drain.io/disabled=true",
            Withheld::OwnPod => "it is one of pod-graceful-drain's own pods",
        }
    }
}

/// What is known of the pod when deciding.
#[derive(Debug, Clone)]
pub struct Pod<'a> {
    pub mark: &'a Mark,
    pub annotations: &'a BTreeMap<String, String>,
    pub terminating: bool,
    /// `Some` once asked (only for a due pod): why it must not be deleted by us now.
    pub withheld: Option<Option<Withheld>>,
    /// `Some` once asked (only for a due pod that may be deleted): still listed ready.
    pub still_listed: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now (not ours, already going, or not due yet).
    Nothing,
    /// A draining label without our seal: say so (once), act on nothing.
    ReportForged(Unsealed),
    /// A drain of the version before seals (adoption window): seal it as it stands.
    Adopt(Schedule),
    /// Someone changed the readable schedule: write back what the seal says.
    Repair(Schedule),
    /// Due: ask whether it is still withheld (exclusions, opt-out).
    AskWithheld,
    /// Due, but withheld: say so (once), leave it.
    Withhold(Withheld),
    /// Due: ask whether an EndpointSlice still lists it ready.
    AskEndpoints,
    /// Still listed: wait until then (announce once).
    WaitForEndpoints { until: Timestamp },
    /// Delete with the sealed options; `forced` when the endpoint wait ran out.
    Delete { schedule: Schedule, forced: bool },
}

pub fn next(pod: &Pod<'_>, now: Timestamp, bounds: DrainBounds, endpoint_wait: Duration) -> Step {
    if pod.terminating {
        return Step::Nothing;
    }
    let schedule = match pod.mark {
        Mark::Unmarked | Mark::Foreign => return Step::Nothing,
        Mark::Forged(why) => return Step::ReportForged(why.clone()),
        Mark::Adopted => {
            return Step::Adopt(match schedule::read(pod.annotations, now, bounds) {
                Reading::Intact(s) => s,
                Reading::Damaged {
                    delete_at, partial, ..
                } => Schedule {
                    delete_at,
                    ..partial
                },
            });
        }
        Mark::Sealed(s) => s,
    };
    let due = schedule.due_at(bounds);
    if due > now {
        let readable = schedule.to_annotations();
        let changed = readable
            .iter()
            .any(|(k, v)| pod.annotations.get(k) != Some(v));
        return if changed {
            Step::Repair(schedule.clone())
        } else {
            Step::Nothing
        };
    }
    // Due: deleting goes first (a person rewriting the annotations in a loop must not keep the
    // pod alive by keeping the deleter busy repairing).
    match pod.withheld {
        None => return Step::AskWithheld,
        Some(Some(w)) => return Step::Withhold(w),
        Some(None) => {}
    }
    let limit = due
        .checked_add(SignedDuration::try_from(endpoint_wait).unwrap_or_default())
        .unwrap_or(Timestamp::MAX);
    match pod.still_listed {
        None => Step::AskEndpoints,
        Some(true) if now < limit => Step::WaitForEndpoints { until: limit },
        Some(listed) => Step::Delete {
            schedule: schedule.clone(),
            forced: listed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys;
    use crate::core::schedule::{Reason, SavedDeleteOptions};

    const BOUNDS: DrainBounds = DrainBounds {
        default: Duration::from_secs(20),
        min: Duration::from_secs(5),
        max: Duration::from_secs(60),
    };
    const WAIT: Duration = Duration::from_secs(30);

    fn at(secs: i64) -> Timestamp {
        "2026-11-25T10:00:00Z"
            .parse::<Timestamp>()
            .unwrap()
            .checked_add(SignedDuration::from_secs(secs))
            .unwrap()
    }

    fn sealed() -> Schedule {
        Schedule {
            started_at: at(0),
            delete_at: at(20),
            requested_by: "jane".into(),
            reason: Reason::Delete,
            delete_options: SavedDeleteOptions::default(),
            traceparent: None,
            removed_labels: BTreeMap::new(),
        }
    }

    fn step(mark: &Mark, annotations: &BTreeMap<String, String>, now: i64) -> Step {
        next(
            &Pod {
                mark,
                annotations,
                terminating: false,
                withheld: Some(None),
                still_listed: Some(false),
            },
            at(now),
            BOUNDS,
            WAIT,
        )
    }

    #[test]
    fn only_a_sealed_drain_is_acted_on() {
        let a = BTreeMap::new();
        assert_eq!(step(&Mark::Unmarked, &a, 100), Step::Nothing);
        assert_eq!(step(&Mark::Foreign, &a, 100), Step::Nothing);
        assert_eq!(
            step(&Mark::Forged(Unsealed::BadTag), &a, 100),
            Step::ReportForged(Unsealed::BadTag)
        );
        assert!(matches!(
            step(&Mark::Sealed(sealed()), &a, 100),
            Step::Delete { forced: false, .. }
        ));
    }

    #[test]
    fn a_pod_already_going_is_left_alone() {
        let a = BTreeMap::new();
        let mark = Mark::Sealed(sealed());
        let pod = Pod {
            mark: &mark,
            annotations: &a,
            terminating: true,
            withheld: None,
            still_listed: None,
        };
        assert_eq!(next(&pod, at(100), BOUNDS, WAIT), Step::Nothing);
    }

    #[test]
    fn before_delete_at_changed_annotations_are_repaired_and_nothing_else() {
        let s = sealed();
        let mark = Mark::Sealed(s.clone());
        assert_eq!(step(&mark, &s.to_annotations(), 5), Step::Nothing);
        let mut restamped = s.to_annotations();
        restamped.insert(keys::DELETE_AT.into(), at(500).to_string());
        assert_eq!(step(&mark, &restamped, 5), Step::Repair(s.clone()));
        // Once due, the sealed delete-at is what counts, whatever the annotations say.
        assert!(matches!(step(&mark, &restamped, 20), Step::Delete { .. }));
    }

    #[test]
    fn a_due_pod_is_checked_for_exclusions_then_endpoints() {
        let a = BTreeMap::new();
        let mark = Mark::Sealed(sealed());
        let mut pod = Pod {
            mark: &mark,
            annotations: &a,
            terminating: false,
            withheld: None,
            still_listed: None,
        };
        assert_eq!(next(&pod, at(20), BOUNDS, WAIT), Step::AskWithheld);
        pod.withheld = Some(Some(Withheld::OptedOut));
        assert_eq!(
            next(&pod, at(20), BOUNDS, WAIT),
            Step::Withhold(Withheld::OptedOut)
        );
        pod.withheld = Some(None);
        assert_eq!(next(&pod, at(20), BOUNDS, WAIT), Step::AskEndpoints);
        pod.still_listed = Some(true);
        assert_eq!(
            next(&pod, at(21), BOUNDS, WAIT),
            Step::WaitForEndpoints { until: at(50) }
        );
        assert!(matches!(
            next(&pod, at(50), BOUNDS, WAIT),
            Step::Delete { forced: true, .. }
        ));
    }

    #[test]
    fn a_lowered_maximum_still_bounds_a_sealed_drain() {
        let s = Schedule {
            delete_at: at(500),
            ..sealed()
        };
        assert_eq!(s.due_at(BOUNDS), at(60));
        assert!(matches!(
            step(&Mark::Sealed(s), &BTreeMap::new(), 60),
            Step::Delete { .. }
        ));
    }

    #[test]
    fn an_adopted_drain_is_sealed_as_it_stands_or_at_a_sane_time() {
        let s = sealed();
        assert_eq!(
            step(&Mark::Adopted, &s.to_annotations(), 5),
            Step::Adopt(s.clone())
        );
        let mut mangled = s.to_annotations();
        mangled.insert(keys::DELETE_AT.into(), "soon".into());
        let Step::Adopt(fixed) = step(&Mark::Adopted, &mangled, 5) else {
            panic!()
        };
        assert_eq!(fixed.delete_at, at(60));
    }
}
