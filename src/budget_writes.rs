//! Recording an eviction's disruption in its PodDisruptionBudget, the way the API server's eviction
//! handler does: re-read the budget, check it still allows a disruption, take one and record the
//! pod in `disruptedPods`, and write the status with the budget's resourceVersion as precondition.
//! Two evictions racing for the last disruption: one write wins, the other gets 409, re-reads, and
//! finds nothing left. A budget can never be overspent.

use jiff::Timestamp;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::PostParams;

use crate::eviction::{self, Verdict};
use crate::facts;

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
        match eviction::spend(&facts) {
            Verdict::SpendsBudget { .. } => {}
            other => return Ok(Spent::Refused(other)),
        }
        let status = pdb.status.get_or_insert_with(Default::default);
        status.disruptions_allowed -= 1;
        status
            .disrupted_pods
            .get_or_insert_with(Default::default)
            .insert(pod.to_string(), Time(now));
        match api
            .replace_status(budget, &PostParams::default(), &pdb)
            .await
        {
            Ok(_) => return Ok(Spent::Recorded),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Spent::Gone),
            Err(e) => return Err(e),
        }
    }
    Ok(Spent::Refused(Verdict::Refused {
        code: 429,
        message: format!("couldn't update PodDisruptionBudget {budget:?} due to conflicts"),
    }))
}
