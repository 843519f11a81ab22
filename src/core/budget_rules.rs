//! Would the API server's eviction handler let this eviction through? The same rules, as pure
//! functions, so the mutating webhook can decide before the handler runs (it reads the pod only
//! after mutating admission, so an isolated pod no longer matches its budget).
//!
//! The handler's rules (pkg/registry/core/pod/storage/eviction.go, Kubernetes 1.35):
//! 1. Pending, Succeeded, Failed or terminating pods skip every budget: deleted directly.
//! 2. Budgets are those of the pod's namespace whose selector matches its labels; an empty or
//!    invalid selector matches nothing. More than one: refused with 500.
//! 3. A pod that is not Ready does not spend budget when the budget says `AlwaysAllow`, or (the
//!    default `IfHealthyBudget`) when `currentHealthy >= desiredHealthy > 0`.
//! 4. Otherwise the budget is spent: `observedGeneration < generation` → 429; `disruptionsAllowed
//!    < 0` → 403; more than 2000 `disruptedPods` → 403; `disruptionsAllowed == 0` → 429; else one
//!    disruption is taken (status update with a resourceVersion precondition).

use crate::core::pod_state::{Phase, PodState};

/// What the handler knows of one budget that selects the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub name: String,
    pub generation: i64,
    pub observed_generation: i64,
    pub disruptions_allowed: i32,
    pub current_healthy: i32,
    pub desired_healthy: i32,
    pub disrupted_pods: usize,
    /// The pods named in `status.disruptedPods`: evictions recorded but not yet seen through
    /// (one may be this very pod, spent for by a racing replica that is draining it).
    pub being_disrupted: std::collections::BTreeSet<String>,
    /// `spec.unhealthyPodEvictionPolicy` is `AlwaysAllow`.
    pub always_allow_unhealthy: bool,
}

/// The handler refuses more evictions once this many are recorded but not yet confirmed.
pub const MAX_DISRUPTED_PODS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Rule 1: no budget is consulted; the pod is deleted directly.
    SkipsBudgets,
    /// No budget selects the pod.
    NoBudget,
    /// Rule 3: allowed without spending the budget.
    UnhealthyWithinBudget { budget: String },
    /// Rule 4: allowed by taking one disruption from this budget.
    SpendsBudget { budget: String },
    /// Refused, with the status code and message the handler would answer.
    Refused { code: u16, message: String },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Verdict::Refused { .. })
    }
}

/// `budgets` are the budgets whose selectors match the pod (see [`crate::core::selector`]).
pub fn judge(pod: &PodState, budgets: &[Budget]) -> Verdict {
    if matches!(pod.phase, Phase::Pending | Phase::Succeeded | Phase::Failed) || pod.terminating {
        return Verdict::SkipsBudgets;
    }
    let budget = match budgets {
        [] => return Verdict::NoBudget,
        [one] => one,
        _ => {
            return Verdict::Refused {
                code: 500,
                message: "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            };
        }
    };
    if !pod.ready
        && (budget.always_allow_unhealthy
            || (budget.current_healthy >= budget.desired_healthy && budget.desired_healthy > 0))
    {
        return Verdict::UnhealthyWithinBudget {
            budget: budget.name.clone(),
        };
    }
    spend(budget)
}

/// Rule 4 alone: whether one more disruption may be taken from `budget` as its status stands.
pub fn spend(budget: &Budget) -> Verdict {
    let too_many = "Cannot evict pod as it would violate the pod's disruption budget.";
    if budget.observed_generation < budget.generation {
        return Verdict::Refused {
            code: 429,
            message: format!(
                "{too_many} The disruption budget {} is still being processed by the server.",
                budget.name
            ),
        };
    }
    if budget.disruptions_allowed < 0 {
        return Verdict::Refused {
            code: 403,
            message: format!(
                "poddisruptionbudget {:?} is forbidden: pdb disruptions allowed is negative",
                budget.name
            ),
        };
    }
    if budget.disrupted_pods > MAX_DISRUPTED_PODS {
        return Verdict::Refused {
            code: 403,
            message: format!(
                "poddisruptionbudget {:?} is forbidden: DisruptedPods map too big - too many evictions not confirmed by PDB controller",
                budget.name
            ),
        };
    }
    if budget.disruptions_allowed == 0 {
        return Verdict::Refused {
            code: 429,
            message: format!(
                "{too_many} The disruption budget {} needs {} healthy pods and has {} currently",
                budget.name, budget.desired_healthy, budget.current_healthy
            ),
        };
    }
    Verdict::SpendsBudget {
        budget: budget.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(ready: bool) -> PodState {
        PodState {
            phase: Phase::Running,
            ready,
            terminating: false,
        }
    }

    fn budget(allowed: i32) -> Budget {
        Budget {
            name: "web".into(),
            generation: 1,
            observed_generation: 1,
            disruptions_allowed: allowed,
            current_healthy: 3,
            desired_healthy: 2,
            disrupted_pods: 0,
            being_disrupted: Default::default(),
            always_allow_unhealthy: false,
        }
    }

    fn code(v: Verdict) -> Option<u16> {
        match v {
            Verdict::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    #[test]
    fn pending_terminal_and_terminating_pods_skip_budgets() {
        for phase in [Phase::Pending, Phase::Succeeded, Phase::Failed] {
            let pod = PodState {
                phase,
                ready: false,
                terminating: false,
            };
            assert_eq!(judge(&pod, &[budget(0)]), Verdict::SkipsBudgets);
        }
        let pod = PodState {
            terminating: true,
            ..running(true)
        };
        assert_eq!(judge(&pod, &[budget(0)]), Verdict::SkipsBudgets);
    }

    #[test]
    fn no_budget_allows() {
        assert_eq!(judge(&running(true), &[]), Verdict::NoBudget);
    }

    #[test]
    fn two_budgets_are_refused_with_500() {
        assert_eq!(
            code(judge(&running(true), &[budget(1), budget(1)])),
            Some(500)
        );
    }

    #[test]
    fn a_ready_pod_spends_an_available_disruption() {
        assert_eq!(
            judge(&running(true), &[budget(1)]),
            Verdict::SpendsBudget {
                budget: "web".into()
            }
        );
    }

    #[test]
    fn an_exhausted_budget_refuses_with_429_naming_the_numbers() {
        let v = judge(&running(true), &[budget(0)]);
        assert!(
            matches!(&v, Verdict::Refused { code: 429, message } if message.contains("needs 2 healthy pods and has 3"))
        );
    }

    #[test]
    fn a_budget_not_yet_observed_refuses_with_429() {
        let b = Budget {
            generation: 2,
            ..budget(5)
        };
        assert_eq!(code(judge(&running(true), &[b])), Some(429));
    }

    #[test]
    fn negative_allowance_and_too_many_disrupted_pods_are_forbidden() {
        assert_eq!(code(judge(&running(true), &[budget(-1)])), Some(403));
        let b = Budget {
            disrupted_pods: MAX_DISRUPTED_PODS + 1,
            ..budget(5)
        };
        assert_eq!(code(judge(&running(true), &[b])), Some(403));
        let at_limit = Budget {
            disrupted_pods: MAX_DISRUPTED_PODS,
            ..budget(5)
        };
        assert!(judge(&running(true), &[at_limit]).allowed());
    }

    #[test]
    fn an_unready_pod_within_a_healthy_budget_spends_nothing() {
        assert_eq!(
            judge(&running(false), &[budget(0)]),
            Verdict::UnhealthyWithinBudget {
                budget: "web".into()
            }
        );
    }

    #[test]
    fn an_unready_pod_below_the_healthy_threshold_must_spend() {
        let b = Budget {
            current_healthy: 1,
            ..budget(0)
        };
        assert_eq!(code(judge(&running(false), &[b])), Some(429));
        let zero_desired = Budget {
            desired_healthy: 0,
            current_healthy: 0,
            ..budget(1)
        };
        assert!(matches!(
            judge(&running(false), &[zero_desired]),
            Verdict::SpendsBudget { .. }
        ));
    }

    #[test]
    fn always_allow_lets_unready_pods_go_whatever_the_budget() {
        let b = Budget {
            always_allow_unhealthy: true,
            current_healthy: 0,
            ..budget(0)
        };
        assert!(matches!(
            judge(&running(false), std::slice::from_ref(&b)),
            Verdict::UnhealthyWithinBudget { .. }
        ));
        // ... but not ready pods.
        assert_eq!(code(judge(&running(true), &[b])), Some(429));
    }
}
