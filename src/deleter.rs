//! The leader's deleter: watches draining pods (metadata only, by the draining label) and deletes
//! each at its sealed delete-at, with the sealed delete options and uid + resourceVersion
//! preconditions. What to do with a pod is decided by `deletion::next` (pure); this file gathers
//! the facts it asks for and acts. Every pass re-reads the pod before acting; 404 and 409 are not
//! errors (gone, or changed: look again next pass). Due pods are handled concurrently (bounded),
//! every API call with a timeout. Nothing is kept but what the annotations say (and which
//! warnings were already given), so a new leader carries on where the last stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{OnceCell, watch};

use crate::core::decision::Policy;
use crate::core::deletion::{self, Step, Withheld};
use crate::core::endpoints::{PodRef, lists_ready};
use crate::core::keys::{DRAINING_LABEL, OPT_OUT};
use crate::core::notice::{self, EventReason, Notice};
use crate::core::schedule::{Reason, Schedule};
use crate::core::seal::{self, KeySet, Mark, Unsealed};
use crate::k8s::Outcome;
use crate::k8s::clock::Clock;
use crate::k8s::cluster_view::ClusterView;
use crate::k8s::events::Events;
use crate::k8s::pod_writes::{self, Version};
use crate::k8s::seal_keys::SealKeys;
use crate::leader::Leadership;
use crate::metrics::{Component, DrainCounts, Metrics};

/// How often due pods are looked for: deletes happen within this of their delete-at.
pub const TICK: Duration = Duration::from_millis(250);
/// Due pods handled at once.
pub const CONCURRENCY: usize = 32;
/// Longest any one API call of the deleter may take before it is given up (and retried next
/// pass).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DeleterError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("an API call took longer than {CALL_TIMEOUT:?}")]
    Timeout,
}

impl DeleterError {
    /// The metrics' `kind` label.
    fn kind(&self) -> &'static str {
        match self {
            DeleterError::Api(e) => crate::k8s::error_kind(e),
            DeleterError::Timeout => "timeout",
        }
    }
}

/// An API call, bounded in time.
async fn call<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, DeleterError> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .map_err(|_| DeleterError::Timeout)?
        .map_err(DeleterError::Api)
}

pub struct Deleter {
    pub client: Client,
    pub leadership: Leadership,
    pub events: Events,
    /// The exclusions, opt-out and bounds are judged again before deleting.
    pub policy: Policy,
    pub endpoint_wait_max: Duration,
    /// Only pods drained by this installation (draining label value) are deleted here.
    pub instance: String,
    pub keys: SealKeys,
    /// The Service cache: which Services' EndpointSlices to ask about a due pod.
    pub view: ClusterView,
    /// "Due yet?" is judged by the earliest the API server's time can be: never early.
    pub clock: Clock,
    pub metrics: Metrics,
}

/// Warnings given once per pod (by uid) and kind, for as long as the pod is watched.
#[derive(Default)]
struct Announced(Mutex<HashSet<(String, &'static str)>>);

impl Announced {
    fn first(&self, uid: &str, kind: &'static str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((uid.to_string(), kind))
    }
    fn given(&self, uid: &str, kind: &'static str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(uid.to_string(), kind))
    }
    fn keep_only(&self, uids: &HashSet<String>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(u, _)| uids.contains(u));
    }
}

impl Deleter {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (store, writer) = reflector::store();
        // Metadata only: the deleter needs labels and annotations, never whole pods.
        let api = Api::<PartialObjectMeta<Pod>>::all(self.client.clone());
        let config =
            watcher::Config::default().labels(&format!("{DRAINING_LABEL}={}", self.instance));
        let stream = watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| futures::future::ready(()));
        tokio::spawn(stream);
        // The Service cache says whose EndpointSlices to ask about: complete before any delete.
        self.view.ready().await;
        let announced = Announced::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if !self.leadership.is_leading() || store.wait_until_ready().await.is_err() {
                self.metrics.drains_seen(None);
                continue;
            }
            let Some(keys) = self.keys.get() else {
                continue;
            };
            self.pass(&store, &keys, &announced).await;
        }
    }

    async fn pass(
        &self,
        store: &Store<PartialObjectMeta<Pod>>,
        keys: &KeySet,
        announced: &Announced,
    ) {
        let now = self.clock.earliest();
        let pods = store.state();
        announced.keep_only(&pods.iter().filter_map(|m| m.uid()).collect());
        // Each cached pod's seal is checked once per pass; the counts, the filter and the
        // EndpointSlice owners all read that one mark.
        let marked: Vec<(&PartialObjectMeta<Pod>, Mark)> = pods
            .iter()
            .map(|meta| {
                let mark = self.mark(
                    keys,
                    meta.uid().as_deref(),
                    meta.labels(),
                    meta.annotations(),
                    now,
                );
                (meta.as_ref(), mark)
            })
            .collect();
        self.metrics.drains_seen(Some(&self.count(&marked, now)));
        // From the cache: only pods with something to do now are re-read.
        let todo: Vec<_> = marked
            .iter()
            .filter(|(meta, mark)| {
                let step = deletion::next(
                    &deletion::Pod {
                        mark,
                        annotations: meta.annotations(),
                        terminating: meta.metadata.deletion_timestamp.is_some(),
                        withheld: Some(None),
                        still_listed: Some(false),
                    },
                    now,
                    self.policy.bounds,
                    self.endpoint_wait_max,
                );
                match step {
                    Step::Nothing => false,
                    // Reported once; the re-read is skipped after that.
                    Step::ReportForged(_) => {
                        meta.uid().is_some_and(|u| !announced.given(&u, "Forged"))
                    }
                    _ => true,
                }
            })
            .filter_map(|(meta, mark)| {
                let ns = meta.namespace()?;
                let owners = match mark {
                    Mark::Sealed(schedule) => self.slice_owners(&ns, meta.labels(), schedule),
                    _ => BTreeSet::new(),
                };
                Some((ns, meta.name_any(), owners))
            })
            .collect();
        // One read of EndpointSlices per namespace and pass, whatever the number of due pods.
        let mut slices = PassSlices::default();
        for (ns, _, owners) in &todo {
            slices.want(ns, owners);
        }
        let slices = &slices;
        futures::stream::iter(todo)
            .for_each_concurrent(CONCURRENCY, |(ns, name, _)| async move {
                if let Err(e) = self.handle(&ns, &name, keys, announced, slices).await {
                    self.metrics.api_error(Component::Deleter, e.kind());
                    tracing::warn!(pod = %name, namespace = %ns, error = %e, "deferred delete failed; retrying");
                }
            })
            .await;
    }

    /// The drains of this installation in the cache, for the metrics.
    fn count(&self, marked: &[(&PartialObjectMeta<Pod>, Mark)], now: Timestamp) -> DrainCounts {
        let mut counts = DrainCounts::default();
        for (_, mark) in marked {
            let Mark::Sealed(schedule) = mark else {
                continue;
            };
            match schedule.reason {
                Reason::Delete => counts.delete += 1,
                Reason::Eviction => counts.eviction += 1,
            }
            let overdue_from = schedule.due_at(self.policy.bounds) + self.endpoint_wait_max;
            if now > overdue_from {
                counts.overdue += 1;
            }
        }
        counts
    }

    /// Publishes an event on the pod, counted.
    async fn tell(&self, pod: &Pod, notice: Notice) {
        self.metrics.event(notice.reason);
        self.events.publish(pod, notice).await;
    }

    fn mark(
        &self,
        keys: &KeySet,
        uid: Option<&str>,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Mark {
        let mark = seal::mark(
            keys,
            &self.instance,
            uid.unwrap_or_default(),
            labels,
            annotations,
            now,
        );
        if let Mark::Forged(Unsealed::UnknownKey(_)) = &mark {
            self.keys.reread_soon();
        }
        mark
    }

    /// One look at one pod; its span is linked to the admission span that scheduled the drain
    /// (the traceparent sealed in the schedule), with delete-at, lateness and outcome.
    #[tracing::instrument(
        name = "deferred_delete",
        skip(self, keys, announced, slices),
        fields(delete_at, late_ms, outcome)
    )]
    async fn handle(
        &self,
        ns: &str,
        name: &str,
        keys: &KeySet,
        announced: &Announced,
        slices: &PassSlices,
    ) -> Result<(), DeleterError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        // Re-read before acting: the cache may be behind, another leader may have acted.
        let Some(pod) = call(api.get_opt(name)).await? else {
            return Ok(());
        };
        let Some(version) = Version::of(&pod) else {
            return Ok(());
        };
        let uid = version.uid.clone();
        let now = self.clock.earliest();
        let mark = self.mark(keys, Some(&uid), pod.labels(), pod.annotations(), now);
        if let Mark::Sealed(s) = &mark {
            crate::telemetry::link_to(s.traceparent.as_deref());
            tracing::Span::current().record("delete_at", s.delete_at.to_string());
        }
        let mut facts = deletion::Pod {
            mark: &mark,
            annotations: pod.annotations(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            withheld: None,
            still_listed: None,
        };
        loop {
            let step = deletion::next(&facts, now, self.policy.bounds, self.endpoint_wait_max);
            match step {
                Step::Nothing => return Ok(()),
                Step::AskWithheld => facts.withheld = Some(self.withheld(&pod).await?),
                Step::AskEndpoints => {
                    let Mark::Sealed(s) = &mark else {
                        return Ok(());
                    };
                    facts.still_listed =
                        Some(self.still_ready_in_endpoints(ns, &pod, s, slices).await?);
                }
                Step::ReportForged(why) => {
                    if announced.first(&uid, "Forged") {
                        tracing::warn!(pod = %name, namespace = %ns, %why, "draining label without our seal: not deleting");
                        self.tell(&pod, notice::forged(&self.instance, &why)).await;
                    }
                    return Ok(());
                }
                Step::Adopt(schedule) => {
                    let sealed = keys.seal(&uid, &self.instance, &schedule, now);
                    if self
                        .rewrite(&api, name, &version, &schedule, Some(&sealed))
                        .await?
                    {
                        tracing::info!(pod = %name, namespace = %ns, delete_at = %schedule.delete_at, "adopted a drain of the version before seals");
                    }
                    return Ok(());
                }
                Step::Repair(schedule) => {
                    if self.rewrite(&api, name, &version, &schedule, None).await?
                        && announced.first(&uid, "Repaired")
                    {
                        self.tell(&pod, Notice::new(EventReason::DrainScheduleRepaired, format!("The drain annotations were changed by someone else; put back as pod-graceful-drain sealed them (the pod is deleted at {})", schedule.delete_at)))
                            .await;
                    }
                    return Ok(());
                }
                Step::Withhold(why) => {
                    if announced.first(&uid, "Withheld") {
                        self.tell(&pod, Notice::new(EventReason::DrainNotCarriedOut, format!("Due, but not deleted: {}. It stays out of its Services; put back the labels in {} or delete it", why.describe(), crate::core::keys::REMOVED_LABELS)))
                            .await;
                    }
                    return Ok(());
                }
                Step::WaitForEndpoints { until } => {
                    if announced.first(&uid, "StillInEndpoints") {
                        self.metrics.endpoint_wait(false);
                        self.tell(&pod, Notice::new(EventReason::WaitingForEndpoints, format!("Still listed as ready in an EndpointSlice; waiting up to {until} before deleting"))).await;
                    }
                    return Ok(());
                }
                Step::Delete { schedule, forced } => {
                    if forced && announced.first(&uid, "EndpointsTimeout") {
                        self.metrics.endpoint_wait(true);
                        self.tell(&pod, Notice::new(EventReason::EndpointsWaitExceeded, "Still listed as ready in an EndpointSlice after the maximum wait; deleting anyway")).await;
                    }
                    return self.delete(&api, &pod, &version, &schedule, now).await;
                }
            }
        }
    }

    /// Writes the readable schedule back (and a seal, when adopting), if still leading.
    async fn rewrite(
        &self,
        api: &Api<Pod>,
        name: &str,
        version: &Version,
        schedule: &Schedule,
        seal: Option<&str>,
    ) -> Result<bool, DeleterError> {
        if !self.leadership.is_leading() {
            return Ok(false);
        }
        let done = call(pod_writes::rewrite_schedule(
            api, name, version, schedule, seal,
        ))
        .await?;
        Ok(done == Outcome::Done)
    }

    async fn delete(
        &self,
        api: &Api<Pod>,
        pod: &Pod,
        version: &Version,
        schedule: &Schedule,
        now: Timestamp,
    ) -> Result<(), DeleterError> {
        if !self.leadership.is_leading() {
            return Ok(());
        }
        let name = pod.name_any();
        match call(pod_writes::delete(
            api,
            &name,
            version,
            &schedule.delete_options,
        ))
        .await?
        {
            Outcome::Done => {
                let late = now.duration_since(schedule.due_at(self.policy.bounds));
                let span = tracing::Span::current();
                span.record("late_ms", late.as_millis());
                span.record("outcome", "deleted");
                self.metrics
                    .deleted(Duration::try_from(late).unwrap_or_default());
                tracing::info!(pod = %name, namespace = ?pod.namespace(), late_ms = late.as_millis(), "deleted at the end of its drain");
                self.tell(
                    pod,
                    Notice::new(
                        EventReason::Deleted,
                        format!(
                            "Drain over; deleted {} ms after its delete-at",
                            late.as_millis()
                        ),
                    ),
                )
                .await;
            }
            Outcome::Gone => {
                tracing::Span::current().record("outcome", "gone");
            }
            Outcome::Conflict => {
                tracing::Span::current().record("outcome", "changed");
                tracing::debug!(pod = %name, "changed since read; next pass");
            }
        }
        Ok(())
    }

    /// Whether the pod must not be deleted by us after all: the same exclusions admission applies,
    /// judged again now (the configuration or the pod may have changed during the drain).
    async fn withheld(&self, pod: &Pod) -> Result<Option<Withheld>, DeleterError> {
        let ns = pod.namespace().unwrap_or_default();
        if self.policy.excluded_namespaces.contains(&ns) {
            return Ok(Some(Withheld::Namespace));
        }
        if pod
            .annotations()
            .get(OPT_OUT)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Ok(Some(Withheld::OptedOut));
        }
        let (k, v) = crate::core::keys::OWN_POD_LABEL;
        if pod.labels().get(k).map(String::as_str) == Some(v) {
            return Ok(Some(Withheld::OwnPod));
        }
        if let Some(selector) = &self.policy.namespace_selector {
            let facts = call(self.view.namespace(&ns, Some(selector))).await?;
            if !facts.selected && !facts.terminating {
                return Ok(Some(Withheld::Namespace));
            }
        }
        Ok(None)
    }

    /// The Services whose EndpointSlices may list the pod: those that selected it before its
    /// drain, and those without a selector.
    fn slice_owners(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
        schedule: &Schedule,
    ) -> BTreeSet<String> {
        let mut before = labels.clone();
        before.extend(schedule.removed_labels.clone());
        self.view.slice_owners(ns, &before).into_iter().collect()
    }

    /// Whether an EndpointSlice of a Service that selected the pod before its drain (or of one
    /// without a selector, whose slices anyone may keep) still lists it ready. Only those
    /// Services' slices are asked for (label `kubernetes.io/service-name`): from the pass's one
    /// read of the namespace when it covers them, else on their own (the pod changed since the
    /// cache said which Services to read).
    async fn still_ready_in_endpoints(
        &self,
        ns: &str,
        pod: &Pod,
        schedule: &Schedule,
        slices: &PassSlices,
    ) -> Result<bool, DeleterError> {
        let owners = self.slice_owners(ns, pod.labels(), schedule);
        if owners.is_empty() {
            return Ok(false);
        }
        let target = PodRef {
            name: pod.name_any(),
            uid: pod.uid(),
        };
        if let Some((services, read)) = slices.covering(ns, &owners) {
            let listed = read
                .get_or_try_init(|| self.list_slices(ns, services))
                .await?;
            return Ok(lists_ready(listed, Some(&owners), &target));
        }
        Ok(lists_ready(
            &self.list_slices(ns, &owners).await?,
            Some(&owners),
            &target,
        ))
    }

    async fn list_slices(
        &self,
        ns: &str,
        services: &BTreeSet<String>,
    ) -> Result<Vec<EndpointSlice>, DeleterError> {
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let params = ListParams::default().labels(&slice_selector(services));
        Ok(call(api.list(&params)).await?.items)
    }
}

/// Above this many Services, a namespace's slices are read whole rather than named one by one
/// (a label selector naming thousands of Services is a URL of tens of kilobytes).
const MOST_NAMED_SERVICES: usize = 100;

/// The label selector for the EndpointSlices of these Services.
fn slice_selector(services: &BTreeSet<String>) -> String {
    const KEY: &str = crate::core::keys::SERVICE_NAME_LABEL;
    if services.len() > MOST_NAMED_SERVICES {
        return KEY.to_string();
    }
    let names: Vec<&str> = services.iter().map(String::as_str).collect();
    format!("{KEY} in ({})", names.join(","))
}

/// The EndpointSlices one pass reads: per namespace, the Services its due pods need, read once
/// (lazily, by the first pod that asks) and shared by all of them.
#[derive(Default)]
struct PassSlices(HashMap<String, (BTreeSet<String>, OnceCell<Vec<EndpointSlice>>)>);

impl PassSlices {
    fn want(&mut self, ns: &str, owners: &BTreeSet<String>) {
        if owners.is_empty() {
            return;
        }
        self.0
            .entry(ns.to_string())
            .or_default()
            .0
            .extend(owners.iter().cloned());
    }

    /// The namespace's shared read, if it covers all of these Services.
    fn covering(
        &self,
        ns: &str,
        owners: &BTreeSet<String>,
    ) -> Option<(&BTreeSet<String>, &OnceCell<Vec<EndpointSlice>>)> {
        let (services, read) = self.0.get(ns)?;
        owners.is_subset(services).then_some((services, read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_few_services_are_named_and_many_read_whole() {
        assert_eq!(
            slice_selector(&set(&["a", "b"])),
            "kubernetes.io/service-name in (a,b)"
        );
        let many: BTreeSet<String> = (0..=MOST_NAMED_SERVICES).map(|i| format!("s{i}")).collect();
        assert_eq!(slice_selector(&many), "kubernetes.io/service-name");
    }

    #[test]
    fn a_pass_reads_a_namespace_once_for_the_services_its_pods_need() {
        let mut pass = PassSlices::default();
        pass.want("a", &set(&["web"]));
        pass.want("a", &set(&["api", "web"]));
        pass.want("b", &set(&[]));
        let (services, _) = pass.covering("a", &set(&["api"])).expect("covered");
        assert_eq!(services, &set(&["api", "web"]));
        // A pod whose Services changed since the cache was read asks on its own.
        assert!(pass.covering("a", &set(&["new"])).is_none());
        assert!(pass.covering("b", &set(&["web"])).is_none());
    }
}
