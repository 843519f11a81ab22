//! One admission request, start to finish: parse, gather facts, decide (pure), act (budget,
//! isolating patch, event), answer (at once, or held until delete-at). A conflict on any write
//! re-reads the pod and decides again, so every replica may answer any request.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Api, ResourceExt};

use crate::budget_writes::{self, Spent};
use crate::cluster_view::ClusterView;
use crate::decision::{
    self, Answer, Decision, Facts, Operation, PassReason, PodView, Policy, Request,
};
use crate::events::Events;
use crate::facts;
use crate::isolation::Selecting;
use crate::pod_writes::{self, Outcome, Version};
use crate::review::{self, BadReview, Incoming, Reply};

/// Label that marks the product's own pods (never drained).
pub const OWN_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "pod-graceful-drain");
/// How many times a request re-reads and re-decides after a conflicting write.
const ATTEMPTS: usize = 5;

pub struct Admission {
    pub policy: Policy,
    pub view: ClusterView,
    pub events: Events,
    pub field_manager: String,
    /// This installation's name, the draining label's value.
    pub instance: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Bad(#[from] BadReview),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// The HTTP answer: status and body.
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Admission {
    /// Serves one request body. Never panics on input; a bad body is a 4xx with its reason.
    #[tracing::instrument(name = "admission", skip_all, fields(uid, user, pod))]
    pub async fn serve(&self, body: &[u8]) -> HttpAnswer {
        let incoming = match review::parse(body) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "bad admission request");
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
        let reply = match self.handle(&incoming).await {
            Ok(reply) => reply,
            Err(e) => {
                // The webhook is failurePolicy Ignore: an error lets the request through, which
                // is also what we answer, so a broken API connection never blocks deletions.
                tracing::error!(error = %e, uid, "could not process; letting the request through");
                Reply::Allow
            }
        };
        HttpAnswer {
            status: 200,
            body: review::respond(&uid, &reply),
        }
    }

    async fn handle(&self, incoming: &Incoming) -> Result<Reply, AdmissionError> {
        let caller = incoming.caller();
        let (operation, mut pod, eviction_has_options) = match incoming {
            Incoming::Delete { pod, options, .. } => {
                (Operation::Delete(options.clone()), (**pod).clone(), false)
            }
            Incoming::Evict { eviction, .. } => {
                if caller.dry_run {
                    return Ok(Reply::Allow);
                }
                match self.view.pod(&caller.namespace, &caller.name).await? {
                    Some(p) => (Operation::Evict, p, review::eviction_has_options(eviction)),
                    // The eviction handler answers 404 itself.
                    None => return Ok(Reply::Allow),
                }
            }
        };
        let request = Request {
            operation,
            dry_run: caller.dry_run,
            user: &caller.user,
            traceparent: crate::telemetry::current_traceparent(),
        };
        // Once this request has recorded a disruption in a budget it must not end in "allow" with
        // the pod not isolated: the real eviction would then spend the budget a second time.
        let mut recorded = false;
        for _ in 0..ATTEMPTS {
            let step = match self.attempt(&request, &pod, &mut recorded).await {
                Err(e) if recorded => {
                    tracing::warn!(error = %e, pod = %caller.name, "isolating after recording the disruption failed; asking the caller to retry");
                    return Ok(too_many());
                }
                other => other?,
            };
            match step {
                Step::Answer(answer, delete_at) => {
                    return Ok(self.finish(answer, delete_at, eviction_has_options).await);
                }
                Step::Reread => match self.view.pod(&caller.namespace, &caller.name).await? {
                    Some(p) => pod = p,
                    None => return Ok(Reply::Allow),
                },
                Step::Pass => return Ok(Reply::Allow),
            }
        }
        if recorded {
            tracing::warn!(pod = %caller.name, "pod kept changing under us after recording the disruption; asking the caller to retry");
            return Ok(too_many());
        }
        tracing::warn!(pod = %caller.name, "pod kept changing under us; letting the request through");
        Ok(Reply::Allow)
    }

    async fn attempt(
        &self,
        request: &Request<'_>,
        pod: &Pod,
        recorded: &mut bool,
    ) -> Result<Step, AdmissionError> {
        let now = Timestamp::now();
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let (phase, ready, terminating) = facts::pod_state(pod);
        let labels = pod.labels();
        let annotations = pod.annotations();
        let own = labels.get(OWN_POD_LABEL.0).map(String::as_str) == Some(OWN_POD_LABEL.1);
        // Only pods that could be drained cost API calls: a pod no Service selects (from the
        // cache, scanned once) and that carries nothing of ours is answered without any.
        let ours = labels.contains_key(crate::schedule::DRAINING_LABEL)
            || annotations
                .keys()
                .any(|k| k.starts_with(crate::schedule::PREFIX));
        let maybe_serving = !request.dry_run && ready && !terminating && phase == Some("Running");
        let services = if maybe_serving {
            self.view.selecting_services(pod)
        } else {
            Vec::new()
        };
        let (surroundings, ns_terminating) = if maybe_serving && (ours || !services.is_empty()) {
            (
                Some(self.view.surroundings(pod, services).await?),
                self.view.namespace_terminating(&ns).await?,
            )
        } else {
            (None, false)
        };
        let facts = match &surroundings {
            None => Facts::default(),
            Some(s) => Facts {
                services: s
                    .services
                    .iter()
                    .map(|(what, sel)| Selecting {
                        what: what.clone(),
                        selector: sel,
                    })
                    .collect(),
                controller: s.controller.as_ref().map(|(what, sel)| Selecting {
                    what: what.clone(),
                    selector: sel,
                }),
                budgets: s
                    .budgets
                    .iter()
                    .map(|(what, sel, b)| {
                        (
                            Selecting {
                                what: what.clone(),
                                selector: sel,
                            },
                            b.clone(),
                        )
                    })
                    .collect(),
            },
        };
        let view = PodView {
            namespace: &ns,
            name: &name,
            phase,
            ready,
            terminating,
            labels,
            annotations,
            own,
            namespace_terminating: ns_terminating,
        };
        match decision::decide(&self.policy, request, &view, &facts, now) {
            Decision::Pass { reason, warning } => {
                // Events only where a person would ask why an exposed pod was not drained; the
                // everyday passes (not serving, dry-run, excluded) stay quiet.
                match (reason, warning) {
                    (_, Some(w)) => self.events.publish(pod, true, "CannotDrain", w).await,
                    (PassReason::OptedOut, None) => {
                        let note = format!("Not drained: annotated {}", crate::schedule::OPT_OUT);
                        self.events.publish(pod, false, "DrainSkipped", note).await;
                    }
                    (PassReason::BudgetRefuses, None) => {
                        let note = "Eviction left to the API server: the PodDisruptionBudget allows no disruption now".to_string();
                        self.events
                            .publish(pod, false, "EvictionNotAllowed", note)
                            .await;
                    }
                    _ => {}
                }
                if !matches!(reason, PassReason::DryRun | PassReason::NotExposed) {
                    tracing::debug!(pod = %name, ?reason, "passing through");
                }
                Ok(Step::Pass)
            }
            Decision::Drain {
                isolate,
                spend_budget,
                delete_at,
                answer,
                warnings,
            } => {
                for w in warnings {
                    self.events
                        .publish(pod, true, "DrainScheduleRepaired", w)
                        .await;
                }
                if let Some(budget) = spend_budget {
                    let api: Api<PodDisruptionBudget> =
                        Api::namespaced(self.view.client().clone(), &ns);
                    match budget_writes::record_disruption(&api, &budget, &name, now).await? {
                        Spent::Recorded => *recorded = true,
                        Spent::Gone => {}
                        // Someone spent it first: leave it to the eviction handler to refuse.
                        Spent::Refused(_) => return Ok(Step::Pass),
                    }
                }
                if let Some(plan) = isolate {
                    let Some(version) = Version::of(pod) else {
                        return Ok(Step::Pass);
                    };
                    let api: Api<Pod> = Api::namespaced(self.view.client().clone(), &ns);
                    match pod_writes::isolate(
                        &api,
                        &name,
                        &version,
                        &plan,
                        &self.field_manager,
                        &self.instance,
                    )
                    .await?
                    {
                        Outcome::Done => {
                            tracing::info!(pod = %name, namespace = %ns, user = request.user, %delete_at, removed = ?plan.remove, "draining");
                            self.events
                                .publish(
                                    pod,
                                    false,
                                    "Draining",
                                    format!(
                                        "Taken out of its Services and controller (labels {:?} removed, kept in {}); deleted at {delete_at}; requested by {}",
                                        plan.remove,
                                        crate::schedule::REMOVED_LABELS,
                                        request.user
                                    ),
                                )
                                .await;
                        }
                        Outcome::Gone => return Ok(Step::Pass),
                        Outcome::Conflict => return Ok(Step::Reread),
                    }
                }
                Ok(Step::Answer(answer, delete_at))
            }
        }
    }

    /// Turns the answer into a reply, holding it when asked to.
    async fn finish(&self, answer: Answer, delete_at: Timestamp, has_options: bool) -> Reply {
        match answer {
            Answer::Deny(message) => Reply::Deny { code: 403, message },
            Answer::Allow => Reply::Allow,
            Answer::EvictAsDryRun => Reply::EvictionDryRun {
                eviction_has_options: has_options,
            },
            Answer::HoldThenAllow { until } => {
                hold_until(until).await;
                Reply::Allow
            }
            Answer::HoldThenDeny { until, message } => {
                hold_until(until).await;
                tracing::info!(%delete_at, "held request answered at its deadline");
                Reply::Deny { code: 403, message }
            }
        }
    }
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
    Pass,
}

async fn hold_until(until: Timestamp) {
    let wait = until.duration_since(Timestamp::now());
    if wait.is_positive() {
        tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
    }
}
