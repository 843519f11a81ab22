//! Recording an eviction's disruption in its PodDisruptionBudget, the way the API server's eviction
//! handler does: re-read the budget, check it still allows a disruption, take one and record the
//! pod in `disruptedPods`, and write the status with the budget's resourceVersion as precondition.
//! Two evictions racing for the last disruption: one write wins, the other gets 409, re-reads, and
//! finds nothing left. A budget can never be overspent, and one pod never spends twice: a pod
//! already in `disruptedPods` (a retry of the same eviction) counts as recorded.

use jiff::Timestamp;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;

use crate::core::budget_rules::{self, Verdict};
use crate::core::facts;
use crate::k8s::{Outcome, classify};

/// How many times a conflicting write is retried with a fresh read (the handler uses 20).
pub const ATTEMPTS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spent {
    /// One disruption is recorded for the pod.
    Recorded,
    /// The budget (as now read) refuses: the eviction must be left to the API server to refuse.
    Refused(Verdict),
    /// The budget no longer exists or no longer applies; nothing to record.
    Gone,
}

/// Whether the budget already counts `pod` as disrupted (the disruption controller drops entries
/// once the pod is gone or after two minutes).
pub fn already_disrupted(pdb: &PodDisruptionBudget, pod: &str) -> bool {
    pdb.status
        .as_ref()
        .and_then(|s| s.disrupted_pods.as_ref())
        .is_some_and(|d| d.contains_key(pod))
}

pub async fn record_disruption(
    api: &Api<PodDisruptionBudget>,
    budget: &str,
    pod: &str,
    now: Timestamp,
) -> Result<Spent, kube::Error> {
    for _ in 0..ATTEMPTS {
        let Some(mut pdb) = api.get_opt(budget).await? else {
            return Ok(Spent::Gone);
        };
        let Some((_, facts)) = facts::budget(&pdb) else {
            return Ok(Spent::Gone);
        };
        if already_disrupted(&pdb, pod) {
            return Ok(Spent::Recorded);
        }
        match budget_rules::spend(&facts) {
            Verdict::SpendsBudget { .. } => {}
            other => return Ok(Spent::Refused(other)),
        }
        let status = pdb.status.get_or_insert_with(Default::default);
        status.disruptions_allowed -= 1;
        status
            .disrupted_pods
            .get_or_insert_with(Default::default)
            .insert(pod.to_string(), Time(now));
        let written = api
            .replace_status(budget, &PostParams::default(), &pdb)
            .await;
        match classify(written)? {
            Outcome::Done => return Ok(Spent::Recorded),
            Outcome::Conflict => continue,
            Outcome::Gone => return Ok(Spent::Gone),
        }
    }
    Ok(Spent::Refused(Verdict::Refused {
        code: 429,
        message: format!("couldn't update PodDisruptionBudget {budget:?} due to conflicts"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_already_in_disrupted_pods_is_not_spent_again() {
        let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b"},
            "status": {"disruptedPods": {"web-1": "2026-11-25T10:00:00Z"},
                       "disruptionsAllowed": 0, "currentHealthy": 2, "desiredHealthy": 2,
                       "expectedPods": 2, "observedGeneration": 1}
        }))
        .unwrap();
        assert!(already_disrupted(&pdb, "web-1"));
        assert!(!already_disrupted(&pdb, "web-2"));
        assert!(!already_disrupted(&PodDisruptionBudget::default(), "web-1"));
    }
}
