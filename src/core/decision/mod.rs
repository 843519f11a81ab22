//! The decision: given an admission request, the pod and what selects it, what to do. Pure: no
//! client, no clock (the caller passes `now`), no I/O; the admission server gathers the facts and
//! carries the decision out. Reads top to bottom as the state machine:
//!
//! 1. pass through, untouched: dry-run requests, excluded or unselected namespaces, terminating
//!    namespaces, the product's own pods and requests, opted-out pods;
//! 2. a pod already draining gets the same answer again, and delete-at never moves: "draining"
//!    means sealed by this installation (its readable annotations are not read); a draining label
//!    without this installation's seal is no drain, and the pod is judged afresh;
//! 3. pass through pods that are not exposed (not Running and Ready, terminating, or selected by
//!    no Service);
//! 4. an eviction the eviction handler would refuse passes through unchanged (the API server
//!    itself answers 429);
//! 5. otherwise isolate and schedule, and answer: a controller is denied at once (it no longer
//!    owns the pod), a person's DELETE is held until delete-at when that fits in the webhook's time
//!    budget, an eviction becomes a dry-run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::core::budget_rules::{self, Verdict};
use crate::core::isolation::{self, Selecting};
use crate::core::keys;
use crate::core::pod_state::PodState;
use crate::core::schedule::{self, DrainBounds, Reading, Reason, SavedDeleteOptions, Schedule};
use crate::core::seal::Mark;

/// What happens to a person's DELETE when the drain outlasts the webhook's time budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongDrain {
    /// Answer at the deadline with a deny naming delete-at (the pod is deleted on time anyway).
    Deny,
    /// Answer at the deadline with an allow (the pod goes at once, before its delete-at).
    Allow,
}

/// Configuration the decision depends on.
#[derive(Debug, Clone)]
pub struct Policy {
    pub excluded_namespaces: BTreeSet<String>,
    /// The namespaces this installation serves, by their labels (`None`: every namespace).
    pub namespace_selector: Option<crate::core::selector::Selector>,
    /// The product's own ServiceAccount user name: its requests (the leader's deletes) pass.
    pub own_user: String,
    /// Users whose DELETEs are a controller's: answered at once.
    pub controller_users: BTreeSet<String>,
    pub bounds: DrainBounds,
    /// How long an admission answer may be held (below the webhook's timeout).
    pub hold_budget: Duration,
    pub long_drain: LongDrain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Delete(SavedDeleteOptions),
    Evict,
}

/// Whether the API server vouches for the request (it presented its client certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The API server: `user` and the delete options are as it authenticated them.
    ApiServer,
    /// Anybody who can reach the port: the user name is a claim, the delete options are not
    /// kept (the deferred delete uses the pod's own grace period).
    Unverified,
}

#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub operation: Operation,
    pub dry_run: bool,
    pub user: &'a str,
    pub origin: Origin,
    pub traceparent: Option<String>,
}

impl Request<'_> {
    /// Who the schedule and the events name as having asked.
    pub fn requested_by(&self) -> String {
        match self.origin {
            Origin::ApiServer => self.user.to_string(),
            Origin::Unverified => format!("{} (unverified)", self.user),
        }
    }
}

/// The pod as the decision sees it.
#[derive(Debug, Clone)]
pub struct PodView<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub state: PodState,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    /// One of the product's own pods.
    pub own: bool,
    pub namespace_terminating: bool,
    /// The pod's namespace matches the installation's namespace selector (the API server applies
    /// it too, but a request that did not come through the API server must not escape it).
    pub namespace_selected: bool,
    /// Its draining label and seal, read with this installation's keys.
    pub mark: &'a Mark,
}

/// What selects the pod, as gathered from the caches.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub services: Vec<Selecting>,
    pub controller: Option<Selecting>,
    /// Budgets whose selector matches the pod, with their status.
    pub budgets: Vec<(Selecting, budget_rules::Budget)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassReason {
    DryRun,
    ExcludedNamespace,
    TerminatingNamespace,
    OwnRequest,
    OwnPod,
    OptedOut,
    NotExposed,
    BudgetRefuses,
    CannotIsolate,
    /// Drained by another installation of pod-graceful-drain.
    OtherInstallation,
}

impl PassReason {
    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PassReason::DryRun => "dry_run",
            PassReason::ExcludedNamespace => "excluded_namespace",
            PassReason::TerminatingNamespace => "terminating_namespace",
            PassReason::OwnRequest => "own_request",
            PassReason::OwnPod => "own_pod",
            PassReason::OptedOut => "opted_out",
            PassReason::NotExposed => "not_exposed",
            PassReason::BudgetRefuses => "budget_refuses",
            PassReason::CannotIsolate => "cannot_isolate",
            PassReason::OtherInstallation => "other_installation",
        }
    }
}

/// What to answer the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Deny at once with this message.
    Deny(String),
    /// Hold the answer until `until`, then allow.
    HoldThenAllow { until: Timestamp },
    /// Hold the answer until `until` (the budget's deadline), then deny with this message.
    HoldThenDeny { until: Timestamp, message: String },
    /// Allow now (delete-at has passed).
    Allow,
    /// Turn the eviction into a dry-run, so the caller succeeds and waits for the pod to go.
    EvictAsDryRun,
}

/// What to change on a pod that starts draining: remove these labels and write this schedule,
/// in one patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    pub remove: BTreeSet<String>,
    pub schedule: Schedule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Pass {
        reason: PassReason,
        /// For a Warning event (e.g. why isolation was impossible).
        warning: Option<String>,
    },
    /// The pod drains. `isolate` is set when it is not draining yet. `spend_budget` names the
    /// budget to record the disruption in, first. `warnings` go to Warning events.
    Drain {
        isolate: Option<Box<Isolation>>,
        spend_budget: Option<String>,
        delete_at: Timestamp,
        answer: Answer,
        warnings: Vec<String>,
    },
}

fn pass(reason: PassReason) -> Decision {
    Decision::Pass {
        reason,
        warning: None,
    }
}

/// How much of the cluster a request must read before [`decide`] can answer it, judged from the
/// pod alone and the Services the cache says select it. Most requests (pods that serve nothing,
/// or that nothing selects) need no API call at all; `decide` passes them whatever the API says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Nothing more: the answer is a pass.
    Nothing,
    /// The stored pod only: it carries the draining label but serves no traffic, so its answer is
    /// repeated (or it is passed) whatever surrounds it.
    Pod,
    /// The pod and what surrounds it (its namespace, controller and budgets): a serving pod that
    /// a Service selects, or that drains.
    Everything,
}

/// See [`Reads`]. `selected`: a Service of the pod's namespace selects its labels.
pub fn reads(state: PodState, draining_label: bool, selected: bool) -> Reads {
    match (state.serving(), draining_label, selected) {
        (true, true, _) | (true, _, true) => Reads::Everything,
        (false, true, _) => Reads::Pod,
        _ => Reads::Nothing,
    }
}

pub fn decide(
    policy: &Policy,
    request: &Request<'_>,
    pod: &PodView<'_>,
    facts: &Facts,
    now: Timestamp,
) -> Decision {
    // 1. Untouched.
    if request.dry_run {
        return pass(PassReason::DryRun);
    }
    if policy.excluded_namespaces.contains(pod.namespace) || !pod.namespace_selected {
        return pass(PassReason::ExcludedNamespace);
    }
    if pod.namespace_terminating {
        return pass(PassReason::TerminatingNamespace);
    }
    if request.user == policy.own_user {
        return pass(PassReason::OwnRequest);
    }
    if pod.own {
        return pass(PassReason::OwnPod);
    }
    if pod
        .annotations
        .get(keys::OPT_OUT)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return pass(PassReason::OptedOut);
    }

    // 2. Already draining: the same answer, delete-at unchanged. A draining label without this
    // installation's seal was not written by it (a forgery, or a person's edit): no drain, the
    // pod is judged afresh (and its schedule rewritten if it is drained now).
    match pod.mark {
        Mark::Sealed(s) => {
            let delete_at = s.due_at(policy.bounds);
            return Decision::Drain {
                isolate: None,
                spend_budget: None,
                delete_at,
                answer: answer_for(policy, request, pod, delete_at, s.started_at, now),
                warnings: Vec::new(),
            };
        }
        Mark::Adopted => {
            let reading = schedule::read(pod.annotations, now, policy.bounds);
            let (warnings, started) = match &reading {
                Reading::Damaged {
                    problems, partial, ..
                } => (problems.clone(), partial.started_at),
                Reading::Intact(s) => (Vec::new(), s.started_at),
            };
            let delete_at = reading.delete_at();
            return Decision::Drain {
                isolate: None,
                spend_budget: None,
                delete_at,
                answer: answer_for(policy, request, pod, delete_at, started, now),
                warnings,
            };
        }
        Mark::Foreign => return pass(PassReason::OtherInstallation),
        Mark::Unmarked | Mark::Forged(_) => {}
    }

    // 3. Only pods that serve traffic are drained.
    let exposed = pod.state.serving()
        && facts
            .services
            .iter()
            .any(|s| s.selector.matches(pod.labels));
    if !exposed {
        return pass(PassReason::NotExposed);
    }

    // 4. An eviction the handler would refuse: change nothing, let it answer 429 itself.
    let mut spend_budget = None;
    if request.operation == Operation::Evict {
        let budgets: Vec<budget_rules::Budget> =
            facts.budgets.iter().map(|(_, b)| b.clone()).collect();
        match budget_rules::judge(&pod.state, &budgets) {
            Verdict::Refused { .. } => return pass(PassReason::BudgetRefuses),
            Verdict::SpendsBudget { budget } => spend_budget = Some(budget),
            Verdict::NoBudget | Verdict::UnhealthyWithinBudget { .. } | Verdict::SkipsBudgets => {}
        }
    }

    // 5. Isolate and schedule.
    let selecting: Vec<&Selecting> = (facts.services.iter())
        .chain(&facts.controller)
        .chain(facts.budgets.iter().map(|(s, _)| s))
        .collect();
    let remove = match isolation::keys_to_remove(pod.labels, &selecting) {
        Ok(keys) => keys,
        Err(e) => {
            return Decision::Pass {
                reason: PassReason::CannotIsolate,
                warning: Some(e.to_string()),
            };
        }
    };
    let (length, note) = schedule::drain_length(pod.annotations, policy.bounds);
    let delete_at = now
        .checked_add(SignedDuration::try_from(length).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    let (reason, delete_options) = match (&request.operation, request.origin) {
        (Operation::Delete(options), Origin::ApiServer) => (Reason::Delete, options.clone()),
        (Operation::Delete(_), Origin::Unverified) => {
            (Reason::Delete, SavedDeleteOptions::default())
        }
        (Operation::Evict, _) => (Reason::Eviction, SavedDeleteOptions::default()),
    };
    let schedule = Schedule {
        started_at: now,
        delete_at,
        requested_by: request.requested_by(),
        reason,
        delete_options,
        traceparent: request.traceparent.clone(),
        removed_labels: remove
            .iter()
            .filter_map(|k| Some((k.clone(), pod.labels.get(k)?.clone())))
            .collect(),
    };
    Decision::Drain {
        isolate: Some(Box::new(Isolation { remove, schedule })),
        spend_budget,
        delete_at,
        answer: answer_for(policy, request, pod, delete_at, now, now),
        warnings: note.into_iter().collect(),
    }
}

/// The answer for a draining pod, the same on every repeat of the request.
///
/// A held answer's deadline counts from the drain's start while that is within the budget: the
/// API server re-runs validating admission when the pod changed during the call (our own
/// isolating patch changes it), and that second invocation must not wait a second budget.
fn answer_for(
    policy: &Policy,
    request: &Request<'_>,
    pod: &PodView<'_>,
    delete_at: Timestamp,
    started: Timestamp,
    now: Timestamp,
) -> Answer {
    // Past delete-at the pod may go however it is asked to: an eviction then really evicts
    // (whoever keeps the pod from being deleted on time cannot keep a node drain waiting).
    if delete_at <= now {
        return Answer::Allow;
    }
    if request.operation == Operation::Evict {
        return Answer::EvictAsDryRun;
    }
    let draining = format!(
        "pod {}/{} is draining: pod-graceful-drain took it out of its Services and its controller and will delete it at {delete_at}",
        pod.namespace, pod.name
    );
    if policy.controller_users.contains(request.user) {
        return Answer::Deny(format!(
            "{draining}; a replacement can start now (requested by {})",
            request.user
        ));
    }
    let budget = SignedDuration::try_from(policy.hold_budget).unwrap_or(SignedDuration::ZERO);
    let from_start = started.checked_add(budget).unwrap_or(Timestamp::MAX);
    // Within the first budget (a retried or repeated call) the deadline stays the first one;
    // after it, a repeated request waits for nothing more than delete-at itself.
    let deadline = if now < from_start {
        from_start
    } else {
        now.checked_add(budget).unwrap_or(Timestamp::MAX)
    };
    if delete_at <= deadline {
        return Answer::HoldThenAllow { until: delete_at };
    }
    let message = format!(
        "{draining}, which is later than this request can wait; nothing more to do: it will be deleted on time"
    );
    let first_budget_over = now >= from_start;
    match (policy.long_drain, first_budget_over) {
        (LongDrain::Allow, false) => Answer::HoldThenAllow { until: deadline },
        (LongDrain::Allow, true) => Answer::Allow,
        (LongDrain::Deny, false) => Answer::HoldThenDeny {
            until: deadline,
            message,
        },
        (LongDrain::Deny, true) => Answer::Deny(message),
    }
}

#[cfg(test)]
mod tests;
