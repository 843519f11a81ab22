//! One admission request, start to finish: parse, gather facts, decide (pure), act (budget,
//! isolating patch, event), answer (at once, or held until delete-at). A conflict on any write
//! re-reads the pod and decides again, so every replica may answer any request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Api, ResourceExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::core::decision::{
    self, Answer, Decision, Facts, Isolation, LongDrain, Operation, Origin, PassReason, PodView,
    Policy, Reads, Request,
};
use crate::core::isolation::Selecting;
use crate::core::keys::{self, OWN_POD_LABEL};
use crate::core::notice::{self, EventReason, Notice};
use crate::core::pod_state::PodState;
use crate::core::review::{self, BadReview, Incoming, Reply};
use crate::core::seal::{self, KeySet, Mark, Unsealed};
use crate::k8s::budget_writes::{self, Spent};
use crate::k8s::clock::Clock;
use crate::k8s::cluster_view::{ClusterView, NamespaceFacts};
use crate::k8s::events::Events;
use crate::k8s::pod_writes::{self, Version};
use crate::k8s::seal_keys::SealKeys;
use crate::k8s::{self, Outcome};
use crate::metrics::{AnswerLabel, Component, Metrics, OperationLabel};
use crate::tls::client_auth::Caller;

/// How many times a request re-reads and re-decides after a conflicting write.
const ATTEMPTS: usize = 5;
/// Held answers at once (each is a connection of the API server's kept open up to the hold).
pub const MAX_HELD: usize = 256;

pub struct Admission {
    pub policy: Policy,
    /// Permits for held answers; past them a request is answered at once.
    pub held: Arc<Semaphore>,
    /// How many requests found no permit to be held.
    pub held_over_cap: AtomicU64,
    pub view: ClusterView,
    pub events: Events,
    /// This installation's name, the draining label's value.
    pub instance: String,
    /// The keys that seal schedules (and tell ours from forgeries).
    pub keys: SealKeys,
    /// The API server's time, as this replica measures it.
    pub clock: Clock,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Bad(#[from] BadReview),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("the seal keys are not known yet")]
    NoKeys,
}

/// The HTTP answer: status and body.
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A request's place under the server's cap on requests being worked on (released once the
/// answer is known, before any hold), and when it arrived: every answer is due within the hold
/// budget of that moment, however long the API took.
#[derive(Clone)]
pub struct Slot {
    permit: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    arrived: tokio::time::Instant,
    /// The time the API server gives this call (its `timeout` query parameter), if it said.
    caller_timeout: Option<Duration>,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            permit: Default::default(),
            arrived: tokio::time::Instant::now(),
            caller_timeout: None,
        }
    }
}

/// What an answer keeps back from the caller's timeout, for the way back to the API server.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

impl Slot {
    /// A slot for a request whose headers arrived just now, with the time its caller gives it.
    pub fn new(permit: OwnedSemaphorePermit, caller_timeout: Option<Duration>) -> Slot {
        Slot {
            permit: Arc::new(std::sync::Mutex::new(Some(permit))),
            arrived: tokio::time::Instant::now(),
            caller_timeout,
        }
    }
    pub fn release(&self) {
        self.permit.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
    pub fn arrived(&self) -> tokio::time::Instant {
        self.arrived
    }
    /// When the answer is due: within the hold budget of the arrival, and a margin before the
    /// caller's own timeout when it gives less (a re-run call after a stale-object deny gets
    /// only what its request has left; past it the API server fails open and deletes at once).
    pub fn due(&self, hold_budget: Duration) -> tokio::time::Instant {
        let caller = self
            .caller_timeout
            .map_or(hold_budget, |t| t.saturating_sub(ANSWER_MARGIN));
        self.arrived + hold_budget.min(caller)
    }
}

impl Admission {
    /// Serves one request body from `caller`. Never panics on input; a bad body is a 4xx with its
    /// reason.
    /// `traceparent`: the caller's trace, which this request's span continues.
    pub async fn serve(
        &self,
        body: Bytes,
        caller: &Caller,
        slot: Slot,
        traceparent: Option<&str>,
    ) -> HttpAnswer {
        use tracing::Instrument as _;
        use tracing::field::Empty;
        let span = tracing::info_span!("admission", uid = Empty, user = Empty, pod = Empty, caller = %caller);
        crate::telemetry::continue_trace(&span, traceparent);
        self.answer(body, caller, slot).instrument(span).await
    }

    async fn answer(&self, body: Bytes, caller: &Caller, slot: Slot) -> HttpAnswer {
        let parsed = review::parse(&body);
        // Nothing of the body outlives the parse (a held request must not keep it).
        drop(body);
        let arrived = slot.arrived();
        let incoming = match parsed {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "bad admission request");
                self.metrics.answered(
                    OperationLabel::Unknown,
                    AnswerLabel::BadRequest,
                    "bad_review",
                    arrived.elapsed(),
                );
                return HttpAnswer {
                    status: e.status(),
                    body: e.to_string().into_bytes(),
                };
            }
        };
        let uid = incoming.caller().uid.clone();
        let span = tracing::Span::current();
        span.record("uid", uid.as_str());
        span.record("user", incoming.caller().user.as_str());
        span.record(
            "pod",
            format!("{}/{}", incoming.caller().namespace, incoming.caller().name).as_str(),
        );
        let origin = if caller.is_verified() {
            Origin::ApiServer
        } else {
            Origin::Unverified
        };
        // The answer is due within the hold budget of the request's arrival, below the webhook's
        // timeout, and before the time the API server gives this very call: past it the API
        // server would go ahead without us (failurePolicy Ignore) and a DELETE would take the pod
        // at once. Slow API calls shorten the hold, never extend it.
        let due = slot.due(self.policy.hold_budget);
        let unfinished = unfinished(&incoming, self.policy.long_drain);
        let operation = match &incoming {
            Incoming::Delete { .. } => OperationLabel::Delete,
            Incoming::Evict { .. } => OperationLabel::Evict,
        };
        // Set once a write of ours may have reached the API server.
        let wrote = AtomicBool::new(false);
        let handled = self.handle(incoming, origin, slot, due, &wrote);
        let (reply, why) = match tokio::time::timeout_at(due, handled).await {
            Err(_) if wrote.load(Ordering::SeqCst) => {
                // The pod may be drained by now (the answer to our write was still on its way):
                // letting the request through would delete or evict it at once.
                tracing::warn!(
                    uid,
                    "no answer within the hold budget of the request's arrival (slow API?), after writing; not letting the request through"
                );
                (unfinished, Why::OutOfTime)
            }
            Err(_) => {
                tracing::warn!(
                    uid,
                    "no answer within the hold budget of the request's arrival (slow API?); letting the request through"
                );
                (Reply::Allow, Why::OutOfTime)
            }
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                // The webhook is failurePolicy Ignore: an error lets the request through, which
                // is also what we answer, so a broken API connection never blocks deletions.
                tracing::error!(error = %e, uid, "could not process; letting the request through");
                if let AdmissionError::Api(api) = &e {
                    self.metrics
                        .api_error(Component::Admission, k8s::error_kind(api));
                }
                (Reply::Allow, Why::Failed)
            }
        };
        self.metrics.answered(
            operation,
            answer_label(&reply),
            why.as_str(),
            arrived.elapsed(),
        );
        HttpAnswer {
            status: 200,
            body: review::respond(&uid, &reply),
        }
    }

    async fn handle(
        &self,
        incoming: Incoming,
        origin: Origin,
        slot: Slot,
        due: tokio::time::Instant,
        wrote: &AtomicBool,
    ) -> Result<(Reply, Why), AdmissionError> {
        let (caller, operation, hint, eviction_has_options) = match incoming {
            Incoming::Delete {
                caller,
                pod,
                options,
                ..
            } => (caller, Operation::Delete(options), Some(pod), false),
            Incoming::Evict {
                caller,
                has_options,
            } => (caller, Operation::Evict, None, has_options),
        };
        let caller = &caller;
        let request = Request {
            operation,
            dry_run: caller.dry_run,
            user: &caller.user,
            origin,
            traceparent: crate::telemetry::current_traceparent(),
        };
        if request.dry_run {
            return Ok((Reply::Allow, Why::Pass(PassReason::DryRun)));
        }
        // The DELETE's oldObject is only a hint of whether the pod may need us: anyone able to
        // reach the port could have written it. The decision is made on the pod as stored.
        if let Some(hint) = &hint
            && self.glance(hint).0 == Reads::Nothing
        {
            return Ok((Reply::Allow, Why::Pass(PassReason::NotExposed)));
        }
        let Some(mut pod) = self.view.pod(&caller.namespace, &caller.name).await? else {
            // Gone already (the API server answers 404 itself).
            return Ok((Reply::Allow, Why::Gone));
        };
        if let Some(hint) = &hint
            && hint.metadata.uid.is_some()
            && hint.metadata.uid != pod.metadata.uid
        {
            tracing::warn!(pod = %caller.name, "the review's oldObject is not the stored pod; letting the request through");
            return Ok((Reply::Allow, Why::NotTheStoredPod));
        }
        drop(hint);
        let mut notice = None;
        let settled = self
            .settle(&request, caller, &mut pod, &mut notice, wrote)
            .await;
        // One request, at most one event, sent in the background: the answer does not wait.
        if let Some(n) = notice {
            self.metrics.event(n.reason);
            self.events.publish_in_background(&pod, n);
        }
        drop(pod);
        match settled? {
            Finish::Answer(answer, delete_at) => Ok(self
                .finish(answer, delete_at, eviction_has_options, slot, due)
                .await),
            Finish::Now(reply, why) => Ok((reply, why)),
        }
    }

    /// Decides and acts, re-reading the pod after each conflicting write, until the answer is
    /// known. `notice` holds the event of the last attempt.
    async fn settle(
        &self,
        request: &Request<'_>,
        caller: &review::Caller,
        pod: &mut Pod,
        notice: &mut Option<Notice>,
        wrote: &AtomicBool,
    ) -> Result<Finish, AdmissionError> {
        // Once this request has recorded a disruption in a budget it must not end in "allow" with
        // the pod not isolated: the real eviction would then spend the budget a second time.
        let mut recorded = false;
        for _ in 0..ATTEMPTS {
            let step = match self
                .attempt(request, pod, &mut recorded, notice, wrote)
                .await
            {
                Err(e) if recorded => {
                    tracing::warn!(error = %e, pod = %caller.name, "isolating after recording the disruption failed; asking the caller to retry");
                    return Ok(Finish::Now(too_many(), Why::CutShort));
                }
                other => other?,
            };
            match step {
                Step::Answer(answer, delete_at) => return Ok(Finish::Answer(answer, delete_at)),
                Step::Reread | Step::RereadSoon => {
                    if matches!(step, Step::RereadSoon) {
                        tokio::time::sleep(RACING_WRITE_PAUSE).await;
                    }
                    match self.view.pod(&caller.namespace, &caller.name).await? {
                        Some(p) => *pod = p,
                        None => return Ok(Finish::Now(Reply::Allow, Why::Gone)),
                    }
                }
                Step::Pass(why) => return Ok(Finish::Now(Reply::Allow, why)),
            }
        }
        if recorded {
            tracing::warn!(pod = %caller.name, "pod kept changing under us after recording the disruption; asking the caller to retry");
            return Ok(Finish::Now(too_many(), Why::KeptChanging));
        }
        tracing::warn!(pod = %caller.name, "pod kept changing under us; letting the request through");
        Ok(Finish::Now(Reply::Allow, Why::KeptChanging))
    }

    /// What the pod could need of us, from the pod alone and the Service cache (no API call):
    /// how much to read, and the Services that select it (scanned once per look, and only for a
    /// pod that could be serving).
    fn glance(&self, pod: &Pod) -> (Reads, Vec<Selecting>) {
        let state = PodState::of(pod);
        let services = if state.serving() {
            self.view.selecting_services(pod)
        } else {
            Vec::new()
        };
        let draining = pod.labels().contains_key(keys::DRAINING_LABEL);
        (
            decision::reads(state, draining, !services.is_empty()),
            services,
        )
    }

    /// One attempt on the pod as last read: gather the facts, decide (pure), act.
    async fn attempt(
        &self,
        request: &Request<'_>,
        pod: &Pod,
        recorded: &mut bool,
        notice: &mut Option<Notice>,
        wrote: &AtomicBool,
    ) -> Result<Step, AdmissionError> {
        *notice = None;
        let now = self.clock.now();
        let keys = self.keys.get().ok_or(AdmissionError::NoKeys)?;
        let mark = seal::mark(
            &keys,
            &self.instance,
            pod.metadata.uid.as_deref().unwrap_or_default(),
            pod.labels(),
            pod.annotations(),
            now,
        );
        if let Mark::Forged(Unsealed::UnknownKey(_)) = &mark {
            self.keys.reread_soon();
        }
        let (facts, namespace) = self.gather(pod, &mark).await?;
        let view = pod_view(pod, &mark, namespace);
        let decision = decision::decide(&self.policy, request, &view, &facts, now);
        match decision {
            // The budget was spent for this very pod by a replica still isolating it (its write
            // landed, the pod's patch not yet): read the pod again and find it draining, rather
            // than pass the eviction to a handler that refuses it.
            Decision::Pass {
                reason: PassReason::BudgetRefuses,
                ..
            } if facts
                .budgets
                .iter()
                .any(|(_, b)| b.being_disrupted.contains(view.name)) =>
            {
                Ok(Step::RereadSoon)
            }
            Decision::Pass { reason, warning } => {
                *notice = pass_notice(reason, warning, &mark, &self.instance);
                if let Mark::Forged(why) = &mark {
                    tracing::warn!(pod = %view.name, namespace = %view.namespace, %why, "draining label without our seal: not a drain");
                }
                if !matches!(reason, PassReason::DryRun | PassReason::NotExposed) {
                    tracing::debug!(pod = %view.name, ?reason, "passing through");
                }
                Ok(Step::Pass(Why::Pass(reason)))
            }
            Decision::Drain {
                isolate,
                spend_budget,
                delete_at,
                answer,
                mut warnings,
            } => {
                if let Mark::Forged(why) = &mark {
                    warnings.push(notice::forged(&self.instance, why).note);
                }
                if !warnings.is_empty() {
                    *notice = Some(Notice::new(
                        EventReason::DrainScheduleRepaired,
                        warnings.join("; "),
                    ));
                }
                let act = Act {
                    request,
                    pod,
                    keys: &keys,
                    now,
                    wrote,
                };
                if let Some(budget) = spend_budget {
                    match self.spend(&act, &budget).await? {
                        Spent::Recorded => *recorded = true,
                        Spent::Gone => {}
                        // Someone spent it first, maybe a replica draining this very pod: read
                        // the pod again (drained: the same answer; else the budget refuses).
                        Spent::Refused(_) => return Ok(Step::Reread),
                    }
                }
                if let Some(plan) = isolate {
                    match self.isolate(&act, &plan, delete_at).await? {
                        Outcome::Done => {
                            let by = request.requested_by();
                            *notice =
                                Some(notice::draining(&plan.remove, delete_at, &by, &warnings));
                        }
                        Outcome::Gone => return Ok(Step::Pass(Why::Gone)),
                        Outcome::Conflict => return Ok(Step::Reread),
                    }
                }
                Ok(Step::Answer(answer, delete_at))
            }
        }
    }

    /// What the decision reads beyond the pod, for a pod that may be drained: what selects it
    /// and its namespace. A pod already draining (sealed by us) gets its first answer again, so
    /// what selects it is not read: one API call fewer for every repeated request. A label
    /// without our seal is no drain: that pod is judged afresh.
    async fn gather(
        &self,
        pod: &Pod,
        mark: &Mark,
    ) -> Result<(Facts, Option<NamespaceFacts>), AdmissionError> {
        let (reads, services) = self.glance(pod);
        if reads != Reads::Everything {
            return Ok((Facts::default(), None));
        }
        let facts = if matches!(mark, Mark::Sealed(_) | Mark::Adopted) {
            Facts::default()
        } else {
            self.view.facts(pod, services).await?
        };
        let namespace = self
            .view
            .namespace(
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                self.policy.namespace_selector.as_ref(),
            )
            .await?;
        Ok((facts, Some(namespace)))
    }

    /// Records the eviction's disruption in its budget, as the eviction handler would.
    async fn spend(&self, act: &Act<'_>, budget: &str) -> Result<Spent, AdmissionError> {
        let api: Api<PodDisruptionBudget> =
            Api::namespaced(self.view.client().clone(), &act.namespace());
        act.wrote.store(true, Ordering::SeqCst);
        Ok(budget_writes::record_disruption(&api, budget, &act.pod.name_any(), act.now).await?)
    }

    /// Isolates exactly the pod version decided on, sealing its schedule (a pod without a
    /// version is not one the API server stores: gone).
    async fn isolate(
        &self,
        act: &Act<'_>,
        plan: &Isolation,
        delete_at: Timestamp,
    ) -> Result<Outcome, AdmissionError> {
        let Some(version) = Version::of(act.pod) else {
            return Ok(Outcome::Gone);
        };
        let (ns, name) = (act.namespace(), act.pod.name_any());
        let api: Api<Pod> = Api::namespaced(self.view.client().clone(), &ns);
        let sealed = act
            .keys
            .seal(&version.uid, &self.instance, &plan.schedule, act.now);
        act.wrote.store(true, Ordering::SeqCst);
        let outcome =
            pod_writes::isolate(&api, &name, &version, plan, &self.instance, &sealed).await?;
        if outcome == Outcome::Done {
            let by = act.request.requested_by();
            tracing::info!(pod = %name, namespace = %ns, requested_by = %by, %delete_at, removed = ?plan.remove, "draining");
        }
        Ok(outcome)
    }

    /// Turns the answer into a reply, holding it when asked to. Past the cap on held requests the
    /// answer is given at once: what the policy answers a drain too long to wait for.
    async fn finish(
        &self,
        answer: Answer,
        delete_at: Timestamp,
        has_options: bool,
        slot: Slot,
        due: tokio::time::Instant,
    ) -> (Reply, Why) {
        let held = matches!(
            answer,
            Answer::HoldThenAllow { .. } | Answer::HoldThenDeny { .. }
        );
        let _permit = if held {
            match self.held.clone().try_acquire_owned() {
                Ok(p) => Some((p, self.metrics.holding())),
                Err(_) => {
                    let n = self.held_over_cap.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(total = n, %delete_at, "too many held requests; answering at once");
                    let reply = match (answer, self.policy.long_drain) {
                        (Answer::HoldThenDeny { message, .. }, _) => {
                            Reply::Deny { code: 403, message }
                        }
                        (_, LongDrain::Allow) => Reply::Allow,
                        (_, LongDrain::Deny) => Reply::Deny {
                            code: 403,
                            message: format!(
                                "the pod is draining and will be deleted at {delete_at}; too many requests are waiting to be answered, so this one is answered now"
                            ),
                        },
                    };
                    return (reply, Why::HeldOverCap);
                }
            }
        } else {
            None
        };
        // A held answer is counted by the held cap, not the cap on requests being worked on.
        slot.release();
        let reply = match answer {
            Answer::Deny(message) => Reply::Deny { code: 403, message },
            Answer::Allow => Reply::Allow,
            Answer::EvictAsDryRun => Reply::EvictionDryRun {
                eviction_has_options: has_options,
            },
            Answer::HoldThenAllow { until } => {
                if hold_until(until, self.clock.now(), due).await {
                    return (Reply::Allow, Why::Drain);
                }
                // The API was slow: the hold ran into the request's own deadline first.
                tracing::info!(%delete_at, "held request answered at the deadline of its arrival");
                match self.policy.long_drain {
                    LongDrain::Allow => Reply::Allow,
                    LongDrain::Deny => Reply::Deny {
                        code: 403,
                        message: format!(
                            "the pod is draining and will be deleted at {delete_at}; this request could not wait that long (nothing more to do: it will be deleted on time)"
                        ),
                    },
                }
            }
            Answer::HoldThenDeny { until, message } => {
                hold_until(until, self.clock.now(), due).await;
                tracing::info!(%delete_at, "held request answered at its deadline");
                Reply::Deny { code: 403, message }
            }
        };
        (reply, Why::Drain)
    }
}

/// Why a request got its answer: the `reason` label of the admission metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The decision passed it.
    Pass(PassReason),
    /// The pod drains (or was drained): the drain's answer.
    Drain,
    /// The pod was gone when read.
    Gone,
    /// The review's `oldObject` was not the pod the API server stores.
    NotTheStoredPod,
    /// The pod changed under every attempt.
    KeptChanging,
    /// Isolating failed after the budget was spent: the caller is asked to retry.
    CutShort,
    /// No answer within the hold budget of the request's arrival.
    OutOfTime,
    /// More held answers than the cap: answered at once.
    HeldOverCap,
    /// An API error (the request is let through).
    Failed,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Pass(reason) => reason.as_str(),
            Why::Drain => "drain",
            Why::Gone => "gone",
            Why::NotTheStoredPod => "not_the_stored_pod",
            Why::KeptChanging => "kept_changing",
            Why::CutShort => "cut_short",
            Why::OutOfTime => "out_of_time",
            Why::HeldOverCap => "held_over_cap",
            Why::Failed => "api_error",
        }
    }
}

fn answer_label(reply: &Reply) -> AnswerLabel {
    match reply {
        Reply::Allow => AnswerLabel::Allow,
        Reply::Deny { code: 429, .. } => AnswerLabel::TooManyRequests,
        Reply::Deny { .. } => AnswerLabel::Deny,
        Reply::EvictionDryRun { .. } => AnswerLabel::EvictionDryRun,
    }
}

/// What one attempt works with once it acts.
struct Act<'a> {
    request: &'a Request<'a>,
    pod: &'a Pod,
    keys: &'a KeySet,
    now: Timestamp,
    /// Set before each write: past it, the request must not be let through on a timeout.
    wrote: &'a AtomicBool,
}

impl Act<'_> {
    fn namespace(&self) -> String {
        self.pod.namespace().unwrap_or_default()
    }
}

/// The pod as the decision sees it (`namespace`: read only for a pod that may be drained).
fn pod_view<'a>(pod: &'a Pod, mark: &'a Mark, namespace: Option<NamespaceFacts>) -> PodView<'a> {
    let labels = pod.labels();
    PodView {
        namespace: pod.metadata.namespace.as_deref().unwrap_or_default(),
        name: pod.metadata.name.as_deref().unwrap_or_default(),
        state: PodState::of(pod),
        labels,
        annotations: pod.annotations(),
        own: labels.get(OWN_POD_LABEL.0).map(String::as_str) == Some(OWN_POD_LABEL.1),
        namespace_terminating: namespace.is_some_and(|n| n.terminating),
        // Unread only for a pod that cannot be drained now (the decision passes it or, for one
        // already draining, repeats its answer without a write).
        namespace_selected: namespace.is_none_or(|n| n.selected),
        mark,
    }
}

/// The event of a pass: only where a person would ask why an exposed pod was not drained (the
/// everyday passes, not serving, dry-run, excluded, stay quiet), and always for a forged mark.
fn pass_notice(
    reason: PassReason,
    warning: Option<String>,
    mark: &Mark,
    instance: &str,
) -> Option<Notice> {
    if let Mark::Forged(why) = mark {
        return Some(notice::forged(instance, why));
    }
    match (reason, warning) {
        (_, Some(w)) => Some(Notice::new(EventReason::CannotDrain, w)),
        (PassReason::OptedOut, None) => Some(Notice::new(
            EventReason::DrainSkipped,
            format!("Not drained: annotated {}", keys::OPT_OUT),
        )),
        (PassReason::BudgetRefuses, None) => Some(Notice::new(
            EventReason::EvictionNotAllowed,
            "Eviction left to the API server: the PodDisruptionBudget allows no disruption now",
        )),
        _ => None,
    }
}

/// The answer when time ran out after a write of ours may have landed: an eviction is asked to
/// come again (drainers retry 429), a DELETE is refused unless the operator chose to let long
/// drains through. Either way the next request finds the pod as it now is.
fn unfinished(incoming: &Incoming, long_drain: LongDrain) -> Reply {
    let message = "pod-graceful-drain could not finish in time: the pod may be draining (then it is deleted at its delete-at, see its annotations) or untouched; try again";
    match (incoming, long_drain) {
        (Incoming::Evict { .. }, _) => Reply::Deny {
            code: 429,
            message: message.into(),
        },
        (Incoming::Delete { .. }, LongDrain::Deny) => Reply::Deny {
            code: 403,
            message: message.into(),
        },
        (Incoming::Delete { .. }, LongDrain::Allow) => Reply::Allow,
    }
}

/// How a request ends once its attempts are over.
enum Finish {
    Answer(Answer, Timestamp),
    Now(Reply, Why),
}

/// The answer the eviction handler gives when a budget write conflicts: the caller retries (and
/// the retry finds the disruption already recorded for this pod, so nothing is spent twice).
fn too_many() -> Reply {
    Reply::Deny {
        code: 429,
        message:
            "pod-graceful-drain could not finish taking the pod out of its Services; try again"
                .into(),
    }
}

enum Step {
    Answer(Answer, Timestamp),
    Reread,
    /// Re-read after a pause: another replica's write is on its way.
    RereadSoon,
    Pass(Why),
}

/// How long a request waits for a racing replica's isolating patch before it reads the pod again.
const RACING_WRITE_PAUSE: Duration = Duration::from_millis(100);

/// Holds until `until` or the request's `due` instant, whichever is first; whether `until` was
/// reached.
async fn hold_until(until: Timestamp, now: Timestamp, due: tokio::time::Instant) -> bool {
    let wait = until.duration_since(now);
    let wait = Duration::try_from(wait).unwrap_or_default();
    let end = tokio::time::Instant::now() + wait;
    tokio::time::sleep_until(end.min(due)).await;
    end <= due
}
