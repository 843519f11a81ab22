//! What the chart's pre-delete hook runs, so `helm uninstall` leaves nothing behind and no pod
//! isolated forever. Order matters:
//! 1. delete both webhook configurations: no drain starts from now on (helm, deleting them later,
//!    finds them gone, which it accepts);
//! 2. wait, up to a bound, while the running leader deletes the draining pods on schedule;
//! 3. delete the draining pods still left at once (uid-guarded, with the options sealed in their
//!    schedule; a pod that changed is re-read and tried again): cut short, but never left
//!    isolated with nobody to delete them. Only drains sealed by this installation are touched: a
//!    draining label without its seal is nobody's order;
//! 4. scale the Deployment to zero and wait for its pods to stop, so no replica can recreate the
//!    Lease after step 5, then look again for drains (a replica answering until it stopped may
//!    have started one) and cut those short too;
//! 5. delete the Lease, and the Secrets cert-manager made when it made them (the chart owns the
//!    self-managed certificate Secret; helm deletes that one).
//!
//! Every step is idempotent: a hook that is run again, or after a partial run, finishes the job.
//! A failed step is reported and the next still runs, but a listing that never succeeds is not
//! "nothing draining": when a sealed drain may be left, the hook ends in an error that names the
//! pods (and `helm uninstall` says so) instead of leaving them isolated in silence.

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

use crate::core::keys::DRAINING_LABEL;
use crate::core::notice::{EventReason, Notice};
use crate::core::schedule::SavedDeleteOptions;
use crate::core::seal::{self, KeySet, Mark};
use crate::k8s::Outcome;
use crate::k8s::events::Events;
use crate::k8s::pod_writes::{self, Version};
use crate::k8s::seal_keys;

pub struct Uninstall {
    pub client: Client,
    pub namespace: String,
    pub instance: String,
    pub webhook_configuration: Option<String>,
    pub deployment: String,
    pub lease_name: String,
    pub delete_secrets: Vec<String>,
    pub wait: Duration,
    pub seal_secret: String,
}

/// Why an uninstall could not leave every drained pod gone.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error(
        "the draining pods could not be listed ({0}); pods may be left isolated: list them with `kubectl get pods -A -l {DRAINING_LABEL}` and delete them"
    )]
    List(kube::Error),
    #[error("these pods are still drained by this installation and could not be deleted: {}; delete them (`kubectl delete pod -n <namespace> <name>`), or put back the labels kept in their pod-graceful-drain.io/removed-labels annotation", .0.join(", "))]
    Left(Vec<String>),
}

const POLL: Duration = Duration::from_secs(1);
/// Tries at a pod that keeps changing under the delete (each re-reads it).
const DELETE_TRIES: usize = 10;
/// Longest the hook keeps trying to list the draining pods after the wait is over.
const LIST_RETRY: Duration = Duration::from_secs(30);
/// Longest wait for the replicas to stop once scaled to zero (their grace period is shorter).
const REPLICAS_STOP: Duration = Duration::from_secs(120);

fn report<T>(step: &str, r: Result<T, kube::Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if crate::k8s::outcome_of(&e) == Some(crate::k8s::Outcome::Gone) => None,
        Err(e) => {
            tracing::warn!(step, error = %e, "uninstall step failed; going on");
            None
        }
    }
}

impl Uninstall {
    /// Runs every step; returns how many draining pods had to be cut short, or why some are left.
    pub async fn run(&self) -> Result<usize, UninstallError> {
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
        let keys = match seal_keys::read(&self.client, &self.namespace, &self.seal_secret).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the seal keys: only drains of the version before seals can be recognised");
                None
            }
        };

        self.wait_for_drains().await;
        let mut cut = self.cut_short_all(keys.as_ref()).await;
        self.stop_replicas().await;
        // A replica answering until it stopped may have started one more drain.
        cut += self.cut_short_all(keys.as_ref()).await;
        let left = self.left(keys.as_ref()).await;

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
        match left {
            Ok(left) if left.is_empty() => {
                tracing::info!(cut_short = cut, "uninstall preparation done");
                Ok(cut)
            }
            Ok(left) => Err(UninstallError::Left(left)),
            Err(e) => Err(e),
        }
    }

    /// The pods labelled as drained by this installation, not yet being deleted.
    async fn draining(&self) -> Result<Vec<Pod>, kube::Error> {
        let lp = ListParams::default().labels(&format!("{DRAINING_LABEL}={}", self.instance));
        let pods = Api::<Pod>::all(self.client.clone()).list(&lp).await?;
        Ok(pods
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// The listing, retried for a while: a failure is not an empty list.
    async fn draining_retried(&self) -> Result<Vec<Pod>, UninstallError> {
        let deadline = Instant::now() + LIST_RETRY;
        loop {
            match self.draining().await {
                Ok(p) => return Ok(p),
                Err(e) if Instant::now() >= deadline => return Err(UninstallError::List(e)),
                Err(e) => tracing::warn!(error = %e, "listing draining pods failed; retrying"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the pod's mark makes of it: the delete options of a drain of ours, or `None` (not
    /// ours to delete).
    fn ours(&self, keys: Option<&KeySet>, pod: &Pod) -> Option<SavedDeleteOptions> {
        let now = jiff::Timestamp::now();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let keys = keys?;
        match seal::mark(
            keys,
            &self.instance,
            uid,
            pod.labels(),
            pod.annotations(),
            now,
        ) {
            Mark::Sealed(s) => Some(s.delete_options),
            Mark::Adopted => Some(SavedDeleteOptions::default()),
            Mark::Unmarked | Mark::Foreign | Mark::Forged(_) => None,
        }
    }

    /// Waits while the leader deletes on schedule, up to the bound.
    async fn wait_for_drains(&self) {
        let deadline = Instant::now() + self.wait;
        let mut last_count = usize::MAX;
        while Instant::now() < deadline {
            match self.draining().await {
                Ok(p) if p.is_empty() => return,
                Ok(p) if p.len() != last_count => {
                    tracing::info!(
                        draining = p.len(),
                        left_s = deadline.saturating_duration_since(Instant::now()).as_secs(),
                        "waiting for running drains to finish"
                    );
                    last_count = p.len();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "listing draining pods failed"),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes every drain of ours still running; how many were deleted.
    async fn cut_short_all(&self, keys: Option<&KeySet>) -> usize {
        let pods = match self.draining_retried().await {
            Ok(p) => p,
            // Reported at the end, by `left`.
            Err(_) => return 0,
        };
        let mut cut = 0;
        for pod in pods {
            if self.cut_short(keys, pod).await {
                cut += 1;
            }
        }
        cut
    }

    /// The drains of ours still there (none being deleted), as `namespace/name`.
    async fn left(&self, keys: Option<&KeySet>) -> Result<Vec<String>, UninstallError> {
        Ok(self
            .draining_retried()
            .await?
            .iter()
            .filter(|p| self.ours(keys, p).is_some())
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect())
    }

    /// Deletes one drained pod now, re-reading it after a conflict; whether it was deleted here.
    async fn cut_short(&self, keys: Option<&KeySet>, mut pod: Pod) -> bool {
        let (Some(ns), name) = (pod.namespace(), pod.name_any()) else {
            return false;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        for _ in 0..DELETE_TRIES {
            if pod.metadata.deletion_timestamp.is_some() {
                return false;
            }
            let Some(options) = self.ours(keys, &pod) else {
                tracing::warn!(pod = %name, namespace = %ns, "labelled draining without this installation's seal: not deleted");
                return false;
            };
            let Some(version) = Version::of(&pod) else {
                return false;
            };
            match pod_writes::delete(&api, &name, &version, &options).await {
                Ok(Outcome::Done) => {
                    tracing::info!(pod = %name, namespace = %ns, "drain cut short by uninstall");
                    Events::new(self.client.clone(), &self.instance)
                        .publish(&pod, Notice::new(EventReason::DrainCutShort, "pod-graceful-drain is being uninstalled: deleted before its delete-at"))
                        .await;
                    return true;
                }
                Ok(Outcome::Gone) => return false,
                Ok(Outcome::Conflict) => {}
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "could not delete a draining pod; retrying")
                }
            }
            // Changed (or the call failed): read it again and look afresh.
            match api.get_opt(&name).await {
                Ok(Some(p)) => pod = p,
                Ok(None) => return false,
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "could not re-read a draining pod")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
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
