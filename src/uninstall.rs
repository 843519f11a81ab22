//! What the chart's pre-delete hook runs, so `helm uninstall` leaves nothing behind and no pod
//! isolated forever. Order matters:
//! 1. delete both webhook configurations: no drain starts from now on (helm, deleting them later,
//!    finds them gone, which it accepts);
//! 2. wait, up to a bound, while the running leader deletes the draining pods on schedule;
//! 3. delete the draining pods still left at once (uid-guarded, with the options their owner's
//!    request carried): cut short, but never left isolated with nobody to delete them;
//! 4. scale the Deployment to zero and wait for its pods to stop, so no replica can recreate the
//!    Lease after step 5;
//! 5. delete the Lease, and the Secrets cert-manager made when it made them (the chart owns the
//!    self-managed certificate Secret; helm deletes that one).
//!
//! Every step is idempotent: a hook that is run again, or after a partial run, finishes the job.
//! Failures are reported and the next step still runs: an uninstall must not get stuck on us.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::events::Events;
use crate::pod_writes::{self, Version};
use crate::schedule::{self, DRAINING_LABEL, DrainBounds, Reading};

pub struct Uninstall {
    pub client: Client,
    pub namespace: String,
    pub instance: String,
    pub webhook_configuration: Option<String>,
    pub deployment: String,
    pub lease_name: String,
    pub delete_secrets: Vec<String>,
    pub wait: Duration,
    pub bounds: DrainBounds,
}

const POLL: Duration = Duration::from_secs(1);
/// Longest wait for the replicas to stop once scaled to zero (their grace period is shorter).
const REPLICAS_STOP: Duration = Duration::from_secs(120);

fn report<T>(step: &str, r: Result<T, kube::Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(e) => {
            tracing::warn!(step, error = %e, "uninstall step failed; going on");
            None
        }
    }
}

impl Uninstall {
    /// Runs every step; returns how many draining pods had to be cut short.
    pub async fn run(&self) -> usize {
        let dp = DeleteParams::default();
        if let Some(name) = &self.webhook_configuration {
            report(
                "delete the validating webhook configuration",
                Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
                    .delete(name, &dp)
                    .await,
            );
            report(
                "delete the mutating webhook configuration",
                Api::<MutatingWebhookConfiguration>::all(self.client.clone())
                    .delete(name, &dp)
                    .await,
            );
            tracing::info!(configuration = %name, "webhooks removed: no new drains start");
        }

        let left = self.wait_for_drains().await;
        let cut = left.len();
        for pod in left {
            self.cut_short(pod).await;
        }

        self.stop_replicas().await;
        report(
            "delete the Lease",
            Api::<Lease>::namespaced(self.client.clone(), &self.namespace)
                .delete(&self.lease_name, &dp)
                .await,
        );
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for name in self.delete_secrets.iter().filter(|n| !n.is_empty()) {
            report("delete a Secret", secrets.delete(name, &dp).await);
        }
        tracing::info!(cut_short = cut, "uninstall preparation done");
        cut
    }

    async fn draining(&self) -> Result<Vec<Pod>, kube::Error> {
        let lp = ListParams::default().labels(&format!("{DRAINING_LABEL}={}", self.instance));
        let pods = Api::<Pod>::all(self.client.clone()).list(&lp).await?;
        Ok(pods
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// Waits while the leader deletes on schedule; returns the pods still draining at the end.
    async fn wait_for_drains(&self) -> Vec<Pod> {
        let deadline = Instant::now() + self.wait;
        let mut last_count = usize::MAX;
        loop {
            let pods = match self.draining().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "listing draining pods failed");
                    Vec::new()
                }
            };
            if pods.is_empty() || Instant::now() >= deadline {
                return pods;
            }
            if pods.len() != last_count {
                tracing::info!(
                    draining = pods.len(),
                    left_s = deadline.saturating_duration_since(Instant::now()).as_secs(),
                    "waiting for running drains to finish"
                );
                last_count = pods.len();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn cut_short(&self, pod: Pod) {
        let (Some(ns), name) = (pod.namespace(), pod.name_any()) else {
            return;
        };
        let Some(version) = Version::of(&pod) else {
            return;
        };
        let options = match schedule::read(pod.annotations(), jiff::Timestamp::now(), self.bounds) {
            Reading::Intact(s) => s.delete_options,
            Reading::Damaged { partial, .. } => partial.delete_options,
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match pod_writes::delete(&api, &name, &version, &options).await {
            Ok(outcome) => {
                tracing::info!(pod = %name, namespace = %ns, ?outcome, "drain cut short by uninstall");
                Events::new(self.client.clone(), &self.instance)
                    .publish(
                        &pod,
                        true,
                        "DrainCutShort",
                        "pod-graceful-drain is being uninstalled: deleted before its delete-at"
                            .into(),
                    )
                    .await;
            }
            Err(e) => tracing::warn!(pod = %name, error = %e, "could not delete a draining pod"),
        }
    }

    async fn stop_replicas(&self) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(deployment) = report("read the Deployment", api.get(&self.deployment).await)
        else {
            return;
        };
        let selector = deployment
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.as_ref())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        report(
            "scale the Deployment to zero",
            api.patch_scale(
                &self.deployment,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await,
        );
        if selector.is_empty() {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = Instant::now() + REPLICAS_STOP;
        while Instant::now() < deadline {
            match pods.list(&ListParams::default().labels(&selector)).await {
                Ok(l) if l.items.is_empty() => {
                    tracing::info!("every replica stopped");
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "listing replicas failed"),
            }
            tokio::time::sleep(POLL).await;
        }
        tracing::warn!("replicas still running; removing the Lease anyway");
    }
}
