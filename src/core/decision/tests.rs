//! One test per row of the state machine in the module's documentation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use super::*;
use crate::core::budget_rules::Budget;
use crate::core::keys;
use crate::core::selector::Selector;

const OWN: &str = "system:serviceaccount:pgd:pod-graceful-drain";
const RS: &str = "system:serviceaccount:kube-system:replicaset-controller";
const PERSON: &str = "jane@example.com";

fn now() -> Timestamp {
    "2026-11-25T10:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    now().checked_add(SignedDuration::from_secs(secs)).unwrap()
}

fn policy() -> Policy {
    Policy {
        excluded_namespaces: ["kube-system".to_string()].into(),
        namespace_selector: None,
        own_user: OWN.into(),
        controller_users: [RS.to_string()].into(),
        bounds: DrainBounds {
            default: Duration::from_secs(20),
            min: Duration::from_secs(5),
            max: Duration::from_secs(600),
        },
        hold_budget: Duration::from_secs(25),
        long_drain: LongDrain::Deny,
    }
}

use crate::core::pod_state::{Phase, PodState};
use crate::core::test_support::map;

struct World {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    service: Selector,
    rs: Selector,
    pdb: Selector,
    mark: Mark,
}

impl World {
    fn new() -> World {
        World {
            labels: map(&[("app", "web"), ("pod-template-hash", "abc"), ("team", "a")]),
            annotations: BTreeMap::new(),
            service: Selector::from_service(Some(&map(&[("app", "web")]))).unwrap(),
            rs: Selector::from_service(Some(&map(&[("app", "web"), ("pod-template-hash", "abc")])))
                .unwrap(),
            pdb: Selector::from_service(Some(&map(&[("app", "web")]))).unwrap(),
            mark: Mark::Unmarked,
        }
    }

    fn pod(&self) -> PodView<'_> {
        PodView {
            namespace: "shop",
            name: "web-1",
            state: PodState::SERVING,
            labels: &self.labels,
            annotations: &self.annotations,
            own: false,
            namespace_terminating: false,
            namespace_selected: true,
            mark: &self.mark,
        }
    }

    fn facts(&self, allowed: Option<i32>) -> Facts {
        Facts {
            services: vec![Selecting {
                what: "Service web".into(),
                selector: self.service.clone(),
            }],
            controller: Some(Selecting {
                what: "ReplicaSet web-abc".into(),
                selector: self.rs.clone(),
            }),
            budgets: allowed
                .map(|a| {
                    vec![(
                        Selecting {
                            what: "PodDisruptionBudget web".into(),
                            selector: self.pdb.clone(),
                        },
                        Budget {
                            name: "web".into(),
                            generation: 1,
                            observed_generation: 1,
                            disruptions_allowed: a,
                            current_healthy: 3,
                            desired_healthy: 2,
                            disrupted_pods: 0,
                            being_disrupted: Default::default(),
                            always_allow_unhealthy: false,
                        },
                    )]
                })
                .unwrap_or_default(),
        }
    }
}

fn delete(user: &str) -> Request<'_> {
    Request {
        operation: Operation::Delete(SavedDeleteOptions::default()),
        dry_run: false,
        user,
        origin: Origin::ApiServer,
        traceparent: None,
    }
}

fn evict(user: &str) -> Request<'_> {
    Request {
        operation: Operation::Evict,
        ..delete(user)
    }
}

fn passes(d: &Decision) -> Option<PassReason> {
    match d {
        Decision::Pass { reason, .. } => Some(*reason),
        Decision::Drain { .. } => None,
    }
}

#[test]
fn dry_run_passes() {
    let w = World::new();
    let r = Request {
        dry_run: true,
        ..delete(PERSON)
    };
    let d = decide(&policy(), &r, &w.pod(), &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::DryRun));
}

#[test]
fn excluded_and_terminating_namespaces_pass() {
    let w = World::new();
    let pod = PodView {
        namespace: "kube-system",
        ..w.pod()
    };
    let d = decide(&policy(), &delete(PERSON), &pod, &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::ExcludedNamespace));
    let pod = PodView {
        namespace_terminating: true,
        ..w.pod()
    };
    let d = decide(&policy(), &delete(PERSON), &pod, &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::TerminatingNamespace));
}

#[test]
fn own_requests_and_own_pods_pass() {
    let w = World::new();
    let d = decide(&policy(), &delete(OWN), &w.pod(), &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::OwnRequest));
    let pod = PodView {
        own: true,
        ..w.pod()
    };
    let d = decide(&policy(), &delete(PERSON), &pod, &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::OwnPod));
}

#[test]
fn opted_out_pods_pass() {
    let mut w = World::new();
    w.annotations = map(&[(keys::OPT_OUT, "True")]);
    let d = decide(&policy(), &delete(PERSON), &w.pod(), &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::OptedOut));
}

#[test]
fn pods_that_serve_no_traffic_pass() {
    let w = World::new();
    for pod in [
        PodView {
            state: PodState {
                ready: false,
                ..PodState::SERVING
            },
            ..w.pod()
        },
        PodView {
            state: PodState {
                terminating: true,
                ..PodState::SERVING
            },
            ..w.pod()
        },
        PodView {
            state: PodState {
                phase: Phase::Pending,
                ..PodState::SERVING
            },
            ..w.pod()
        },
        PodView {
            state: PodState::default(),
            ..w.pod()
        },
    ] {
        let d = decide(&policy(), &delete(PERSON), &pod, &w.facts(None), now());
        assert_eq!(passes(&d), Some(PassReason::NotExposed), "{pod:?}");
    }
    let no_service = Facts {
        services: vec![],
        ..w.facts(None)
    };
    let d = decide(&policy(), &delete(PERSON), &w.pod(), &no_service, now());
    assert_eq!(passes(&d), Some(PassReason::NotExposed));
}

#[test]
fn a_controller_delete_isolates_and_is_denied_at_once() {
    let w = World::new();
    let d = decide(&policy(), &delete(RS), &w.pod(), &w.facts(Some(1)), now());
    let Decision::Drain {
        isolate: Some(plan),
        spend_budget,
        delete_at,
        answer: Answer::Deny(message),
        ..
    } = d
    else {
        panic!("expected an isolating deny, got {d:?}")
    };
    let Isolation { remove, schedule } = *plan;
    assert_eq!(remove, BTreeSet::from(["app".to_string()]));
    assert_eq!(schedule.removed_labels, map(&[("app", "web")]));
    assert_eq!(schedule.requested_by, RS);
    assert_eq!(schedule.reason, Reason::Delete);
    assert_eq!(delete_at, at(20));
    assert_eq!(spend_budget, None, "a DELETE never spends a budget");
    assert!(message.contains("shop/web-1") && message.contains(&at(20).to_string()));
}

#[test]
fn a_person_delete_is_held_until_delete_at_when_it_fits() {
    let w = World::new();
    let d = decide(&policy(), &delete(PERSON), &w.pod(), &w.facts(None), now());
    assert!(matches!(
        d,
        Decision::Drain { isolate: Some(_), answer: Answer::HoldThenAllow { until }, .. } if until == at(20)
    ));
}

#[test]
fn a_long_drain_answers_at_the_deadline_deny_or_allow_as_configured() {
    let mut w = World::new();
    w.annotations = map(&[(keys::DRAIN_SECONDS, "120")]);
    let d = decide(&policy(), &delete(PERSON), &w.pod(), &w.facts(None), now());
    let Decision::Drain {
        delete_at,
        answer: Answer::HoldThenDeny { until, message },
        ..
    } = d
    else {
        panic!("expected a deny at the deadline, got {d:?}")
    };
    assert_eq!((delete_at, until), (at(120), at(25)));
    assert!(message.contains(&at(120).to_string()));
    let allow = Policy {
        long_drain: LongDrain::Allow,
        ..policy()
    };
    let d = decide(&allow, &delete(PERSON), &w.pod(), &w.facts(None), now());
    assert!(matches!(
        d,
        Decision::Drain { answer: Answer::HoldThenAllow { until }, .. } if until == at(25)
    ));
}

#[test]
fn an_eviction_within_budget_spends_it_isolates_and_becomes_a_dry_run() {
    let w = World::new();
    let d = decide(
        &policy(),
        &evict(PERSON),
        &w.pod(),
        &w.facts(Some(1)),
        now(),
    );
    let Decision::Drain {
        isolate: Some(plan),
        spend_budget: Some(budget),
        answer: Answer::EvictAsDryRun,
        ..
    } = d
    else {
        panic!("expected an isolating dry-run eviction, got {d:?}")
    };
    let Isolation { remove, schedule } = *plan;
    assert_eq!(budget, "web");
    assert_eq!(schedule.reason, Reason::Eviction);
    // Out of the Service, the ReplicaSet and the budget with one key.
    assert_eq!(remove, BTreeSet::from(["app".to_string()]));
}

#[test]
fn an_eviction_without_budget_isolates_without_spending() {
    let w = World::new();
    let d = decide(&policy(), &evict(PERSON), &w.pod(), &w.facts(None), now());
    assert!(matches!(
        d,
        Decision::Drain {
            isolate: Some(_),
            spend_budget: None,
            answer: Answer::EvictAsDryRun,
            ..
        }
    ));
}

#[test]
fn an_eviction_the_budget_forbids_passes_through_untouched() {
    let w = World::new();
    let d = decide(
        &policy(),
        &evict(PERSON),
        &w.pod(),
        &w.facts(Some(0)),
        now(),
    );
    assert_eq!(passes(&d), Some(PassReason::BudgetRefuses));
}

#[test]
fn a_draining_pod_gets_the_same_answer_and_delete_at_never_moves() {
    let w = World::new();
    let first = decide(&policy(), &delete(RS), &w.pod(), &w.facts(None), now());
    let Decision::Drain {
        isolate: Some(plan),
        ..
    } = first
    else {
        panic!()
    };
    let Isolation { remove, schedule } = *plan;
    // The pod as it is after the isolating patch.
    let mut after = World::new();
    for k in &remove {
        after.labels.remove(k);
    }
    after
        .labels
        .insert(keys::DRAINING_LABEL.into(), "true".into());
    after.annotations = schedule.to_annotations();
    after.mark = Mark::Sealed(schedule.clone());
    for (user, later) in [(RS, 5), (PERSON, 10)] {
        let d = decide(
            &policy(),
            &delete(user),
            &after.pod(),
            &after.facts(None),
            at(later),
        );
        let Decision::Drain {
            isolate: None,
            delete_at,
            answer,
            warnings,
            ..
        } = d
        else {
            panic!("expected the same drain, got {d:?}")
        };
        assert_eq!(delete_at, at(20));
        assert!(warnings.is_empty());
        match user {
            RS => assert!(matches!(answer, Answer::Deny(_))),
            _ => assert_eq!(answer, Answer::HoldThenAllow { until: at(20) }),
        }
    }
    let d = decide(
        &policy(),
        &evict(PERSON),
        &after.pod(),
        &after.facts(Some(0)),
        at(3),
    );
    assert!(matches!(
        d,
        Decision::Drain {
            answer: Answer::EvictAsDryRun,
            spend_budget: None,
            ..
        }
    ));
    // After delete-at, a DELETE is simply allowed, and so is an eviction (it really evicts:
    // nothing can keep a node drain waiting past delete-at).
    for r in [delete(RS), evict(PERSON)] {
        let d = decide(&policy(), &r, &after.pod(), &after.facts(None), at(21));
        assert!(
            matches!(
                d,
                Decision::Drain {
                    answer: Answer::Allow,
                    ..
                }
            ),
            "{r:?}: {d:?}"
        );
    }
}

#[test]
fn a_sealed_drain_goes_by_its_seal_whatever_the_annotations_say() {
    let mut w = World::new();
    w.labels.insert(keys::DRAINING_LABEL.into(), "x".into());
    let sealed = Schedule {
        started_at: now(),
        delete_at: at(20),
        requested_by: RS.into(),
        reason: Reason::Delete,
        delete_options: SavedDeleteOptions::default(),
        traceparent: None,
        removed_labels: BTreeMap::new(),
    };
    // Re-stamped by someone: started now + 100, delete-at later still.
    w.annotations = Schedule {
        started_at: at(100),
        delete_at: at(400),
        ..sealed.clone()
    }
    .to_annotations();
    w.mark = Mark::Sealed(sealed.clone());
    let d = decide(&policy(), &delete(PERSON), &w.pod(), &w.facts(None), at(5));
    assert!(
        matches!(d, Decision::Drain { isolate: None, delete_at, answer: Answer::HoldThenAllow { until }, .. } if delete_at == at(20) && until == at(20)),
        "{d:?}"
    );
    // A maximum lowered since the drain started still holds.
    w.mark = Mark::Sealed(Schedule {
        delete_at: at(900),
        ..sealed
    });
    let d = decide(&policy(), &delete(RS), &w.pod(), &w.facts(None), at(5));
    assert!(matches!(d, Decision::Drain { delete_at, .. } if delete_at == at(600)));
}

#[test]
fn a_forged_drain_is_no_drain_and_the_pod_is_judged_afresh() {
    let mut w = World::new();
    w.labels.insert(keys::DRAINING_LABEL.into(), "x".into());
    w.annotations = map(&[
        (keys::STARTED_AT, "2000-01-01T00:00:00Z"),
        (keys::DELETE_AT, "2000-01-01T00:00:01Z"),
    ]);
    w.mark = Mark::Forged(crate::core::seal::Unsealed::Missing);
    // Still serving (its labels are all there): drained for real, with a schedule of its own.
    let d = decide(&policy(), &delete(RS), &w.pod(), &w.facts(None), now());
    let Decision::Drain {
        isolate: Some(plan),
        delete_at,
        ..
    } = d
    else {
        panic!("expected a fresh drain, got {d:?}")
    };
    assert_eq!(delete_at, at(20));
    assert_eq!(plan.schedule.started_at, now());
    // Not serving: passed, as any pod that serves no traffic.
    let d = decide(
        &policy(),
        &evict(PERSON),
        &w.pod(),
        &Facts {
            services: vec![],
            ..w.facts(None)
        },
        now(),
    );
    assert_eq!(passes(&d), Some(PassReason::NotExposed));
}

#[test]
fn another_installations_drain_is_its_own() {
    let mut w = World::new();
    w.labels.insert(keys::DRAINING_LABEL.into(), "blue".into());
    w.mark = Mark::Foreign;
    let d = decide(&policy(), &delete(PERSON), &w.pod(), &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::OtherInstallation));
}

#[test]
fn an_adopted_unsealed_schedule_that_is_mangled_warns_and_falls_back_to_a_sane_time() {
    let mut w = World::new();
    w.labels.insert(keys::DRAINING_LABEL.into(), "true".into());
    w.mark = Mark::Adopted;
    w.annotations = map(&[(keys::DELETE_AT, "soon, promise")]);
    let d = decide(&policy(), &delete(RS), &w.pod(), &w.facts(None), now());
    let Decision::Drain {
        delete_at,
        warnings,
        ..
    } = d
    else {
        panic!("expected a drain, got {d:?}")
    };
    assert_eq!(
        delete_at,
        at(600),
        "the maximum drain from now, at the latest"
    );
    assert!(!warnings.is_empty());
}

#[test]
fn schedule_annotations_without_the_draining_label_do_not_make_a_pod_draining() {
    let mut w = World::new();
    w.annotations = map(&[(keys::DELETE_AT, "2000-01-01T00:00:00Z")]);
    let d = decide(&policy(), &delete(RS), &w.pod(), &w.facts(None), now());
    let Decision::Drain { isolate, .. } = d else {
        panic!("expected a fresh drain, got {d:?}")
    };
    assert!(
        isolate.is_some(),
        "the pod must be isolated and scheduled anew, not taken as draining already"
    );
}

#[test]
fn a_pod_that_cannot_be_isolated_passes_with_a_warning() {
    let w = World::new();
    let negative = Selector::from_label_selector(
        &serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap(),
    )
    .unwrap()
    .unwrap();
    let mut facts = w.facts(None);
    facts.services.push(Selecting {
        what: "Service everything".into(),
        selector: negative,
    });
    let d = decide(&policy(), &delete(PERSON), &w.pod(), &facts, now());
    assert!(matches!(
        d,
        Decision::Pass { reason: PassReason::CannotIsolate, warning: Some(ref w) } if w.contains("Service everything")
    ));
}

#[test]
fn a_retried_invocation_keeps_the_first_deadline() {
    let mut w = World::new();
    w.annotations = map(&[(keys::DRAIN_SECONDS, "120")]);
    let first = decide(&policy(), &delete(PERSON), &w.pod(), &w.facts(None), now());
    let Decision::Drain {
        isolate: Some(plan),
        answer: Answer::HoldThenDeny { until, .. },
        ..
    } = first
    else {
        panic!("expected a held deny, got {first:?}")
    };
    assert_eq!(until, at(25));
    let mut after = World::new();
    after.labels.insert(keys::DRAINING_LABEL.into(), "x".into());
    after.annotations = plan.schedule.to_annotations();
    after.mark = Mark::Sealed(plan.schedule.clone());
    // The API server re-runs admission a moment later: same deadline, not a new budget.
    let again = decide(
        &policy(),
        &delete(PERSON),
        &after.pod(),
        &after.facts(None),
        at(1),
    );
    assert!(
        matches!(again, Decision::Drain { answer: Answer::HoldThenDeny { until, .. }, .. } if until == at(25))
    );
    // A request after the first budget is over gets the same answer at once.
    let later = decide(
        &policy(),
        &delete(PERSON),
        &after.pod(),
        &after.facts(None),
        at(60),
    );
    assert!(matches!(
        later,
        Decision::Drain {
            answer: Answer::Deny(_),
            ..
        }
    ));
    // ... and once delete-at is within reach, it is held until then and allowed.
    let near = decide(
        &policy(),
        &delete(PERSON),
        &after.pod(),
        &after.facts(None),
        at(100),
    );
    assert!(
        matches!(near, Decision::Drain { answer: Answer::HoldThenAllow { until }, .. } if until == at(120))
    );
}

#[test]
fn a_namespace_outside_the_selection_passes() {
    let w = World::new();
    let pod = PodView {
        namespace_selected: false,
        ..w.pod()
    };
    let d = decide(&policy(), &delete(PERSON), &pod, &w.facts(None), now());
    assert_eq!(passes(&d), Some(PassReason::ExcludedNamespace));
}

#[test]
fn an_unverified_delete_keeps_no_options_and_says_who_claimed_it() {
    let w = World::new();
    let forged = SavedDeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: Some("Orphan".into()),
    };
    for (origin, kept, by) in [
        (Origin::ApiServer, forged.clone(), PERSON.to_string()),
        (
            Origin::Unverified,
            SavedDeleteOptions::default(),
            format!("{PERSON} (unverified)"),
        ),
    ] {
        let r = Request {
            operation: Operation::Delete(forged.clone()),
            origin,
            ..delete(PERSON)
        };
        let Decision::Drain {
            isolate: Some(plan),
            ..
        } = decide(&policy(), &r, &w.pod(), &w.facts(None), now())
        else {
            panic!("expected a drain")
        };
        assert_eq!(plan.schedule.delete_options, kept, "{origin:?}");
        assert_eq!(plan.schedule.requested_by, by);
    }
}

#[test]
fn what_a_request_must_read_row_by_row() {
    let not_ready = PodState {
        ready: false,
        ..PodState::SERVING
    };
    // (state, carries the draining label, a Service selects it) → reads
    let rows = [
        (PodState::SERVING, false, false, Reads::Nothing),
        (PodState::SERVING, false, true, Reads::Everything),
        (PodState::SERVING, true, false, Reads::Everything),
        (PodState::SERVING, true, true, Reads::Everything),
        (not_ready, false, false, Reads::Nothing),
        (not_ready, false, true, Reads::Nothing),
        (not_ready, true, false, Reads::Pod),
        (PodState::default(), true, true, Reads::Pod),
    ];
    for (state, draining, selected, want) in rows {
        assert_eq!(
            reads(state, draining, selected),
            want,
            "{state:?} draining={draining} selected={selected}"
        );
    }
}

/// `reads` repeats conditions of `decide`: whatever it lets skip must not change the answer.
#[test]
fn what_reads_skips_cannot_change_the_decision() {
    let states = [
        PodState::SERVING,
        PodState {
            ready: false,
            ..PodState::SERVING
        },
        PodState {
            terminating: true,
            ..PodState::SERVING
        },
        PodState::default(),
    ];
    let w = World::new();
    let sealed = match decide(
        &policy(),
        &delete(PERSON),
        &w.pod(),
        &w.facts(Some(1)),
        now(),
    ) {
        Decision::Drain { isolate, .. } => isolate.expect("a first drain isolates").schedule,
        Decision::Pass { reason, .. } => panic!("expected a drain, got {reason:?}"),
    };
    for state in states {
        for (mark, draining) in [
            (Mark::Unmarked, false),
            (Mark::Sealed(sealed.clone()), true),
        ] {
            for selected in [false, true] {
                let mut w = World::new();
                w.mark = mark.clone();
                if !selected {
                    w.labels.remove("app");
                }
                let pod = PodView { state, ..w.pod() };
                let full = Facts {
                    services: if selected {
                        w.facts(Some(1)).services
                    } else {
                        vec![]
                    },
                    ..w.facts(Some(1))
                };
                for request in [delete(PERSON), evict(PERSON), delete(RS)] {
                    let skipped = match reads(state, draining, selected) {
                        Reads::Everything => continue,
                        // Neither the facts nor the namespace are read.
                        Reads::Nothing | Reads::Pod => {
                            decide(&policy(), &request, &pod, &Facts::default(), now())
                        }
                    };
                    let read = decide(&policy(), &request, &pod, &full, now());
                    assert_eq!(
                        format!("{skipped:?}"),
                        format!("{read:?}"),
                        "{state:?} draining={draining} selected={selected} {request:?}"
                    );
                    if reads(state, draining, selected) == Reads::Nothing {
                        assert!(matches!(read, Decision::Pass { .. }));
                    }
                }
            }
        }
    }
}
