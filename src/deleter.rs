//! The leader's deleter: watches draining pods (metadata only, by the draining label) and deletes
//! each at its delete-at, with the saved delete options and uid + resourceVersion preconditions.
//! Every pass re-reads the pod before acting; 404 and 409 are not errors (gone, or changed: look
//! again next pass). A pod still listed as ready in an EndpointSlice waits, up to a maximum.
//! Nothing is kept but what the annotations say, so a new leader carries on where the last stopped.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::events::Events;
use crate::leader::Leadership;
use crate::pod_writes::{self, Outcome, Version};
use crate::schedule::{self, DRAINING_LABEL, DrainBounds, Reading};

/// How often due pods are looked for: deletes happen within this of their delete-at.
pub const TICK: Duration = Duration::from_millis(250);

pub struct Deleter {
    pub client: Client,
    pub leadership: Leadership,
    pub events: Events,
    pub bounds: DrainBounds,
    pub endpoint_wait_max: Duration,
    pub field_manager: String,
    /// Only pods drained by this installation (draining label value) are deleted here.
    pub instance: String,
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
        let mut announced: HashSet<(String, &'static str)> = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if !self.leadership.is_leading() || store.wait_until_ready().await.is_err() {
                continue;
            }
            self.pass(&store, &mut announced).await;
        }
    }

    async fn pass(
        &self,
        store: &Store<PartialObjectMeta<Pod>>,
        announced: &mut HashSet<(String, &'static str)>,
    ) {
        let now = Timestamp::now();
        for meta in store.state() {
            let reading = schedule::read(meta.annotations(), now, self.bounds);
            let damaged = matches!(reading, Reading::Damaged { .. });
            if reading.delete_at() > now && !damaged {
                continue;
            }
            let (Some(ns), name) = (meta.namespace(), meta.name_any()) else {
                continue;
            };
            if let Err(e) = self.handle(&ns, &name, announced).await {
                tracing::warn!(pod = %name, namespace = %ns, error = %e, "deferred delete failed; retrying");
            }
        }
    }

    #[tracing::instrument(name = "deferred_delete", skip(self, announced))]
    async fn handle(
        &self,
        ns: &str,
        name: &str,
        announced: &mut HashSet<(String, &'static str)>,
    ) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        // Re-read before acting: the cache may be behind, another leader may have acted.
        let Some(pod) = api.get_opt(name).await? else {
            return Ok(());
        };
        if pod.labels().get(DRAINING_LABEL) != Some(&self.instance) {
            return Ok(());
        }
        // Already being deleted (by another would-be leader, or by the holder of a DELETE we
        // allowed): deleting again would succeed but do nothing.
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(version) = Version::of(&pod) else {
            return Ok(());
        };
        let uid = version.uid.clone();
        let now = Timestamp::now();
        let reading = schedule::read(pod.annotations(), now, self.bounds);
        if let Reading::Damaged {
            delete_at,
            problems,
            partial,
        } = &reading
        {
            if !self.leadership.is_leading() {
                return Ok(());
            }
            let fixed = schedule::Schedule {
                delete_at: *delete_at,
                ..partial.clone()
            };
            if pod_writes::rewrite_schedule(&api, name, &version, &fixed, &self.field_manager)
                .await?
                == Outcome::Done
            {
                self.events
                    .publish(
                        &pod,
                        true,
                        "DrainScheduleRepaired",
                        format!("The drain annotations were damaged ({}); the pod will be deleted at {delete_at}", problems.join("; ")),
                    )
                    .await;
            }
            return Ok(());
        }
        let Reading::Intact(schedule) = reading else {
            return Ok(());
        };
        if schedule.delete_at > now {
            return Ok(());
        }
        // Never pull a pod that load balancers may still be sending to, up to a limit.
        if self.still_ready_in_endpoints(ns, &pod).await? {
            let limit = schedule
                .delete_at
                .checked_add(SignedDuration::try_from(self.endpoint_wait_max).unwrap_or_default())
                .unwrap_or(Timestamp::MAX);
            if now < limit {
                if announced.insert((uid.clone(), "StillInEndpoints")) {
                    self.events
                        .publish(&pod, false, "WaitingForEndpoints", format!("Still listed as ready in an EndpointSlice; waiting up to {limit} before deleting")).await;
                }
                return Ok(());
            }
            if announced.insert((uid.clone(), "EndpointsTimeout")) {
                self.events
                    .publish(&pod, true, "EndpointsWaitExceeded", "Still listed as ready in an EndpointSlice after the maximum wait; deleting anyway".into()).await;
            }
        }
        if !self.leadership.is_leading() {
            return Ok(());
        }
        match pod_writes::delete(&api, name, &version, &schedule.delete_options).await? {
            Outcome::Done => {
                let late = now.duration_since(schedule.delete_at);
                tracing::info!(pod = %name, namespace = %ns, late_ms = late.as_millis(), "deleted at the end of its drain");
                self.events
                    .publish(
                        &pod,
                        false,
                        "Deleted",
                        format!(
                            "Drain over; deleted {} ms after its delete-at",
                            late.as_millis()
                        ),
                    )
                    .await;
            }
            Outcome::Gone => {}
            Outcome::Conflict => tracing::debug!(pod = %name, "changed since read; next pass"),
        }
        Ok(())
    }

    async fn still_ready_in_endpoints(&self, ns: &str, pod: &Pod) -> Result<bool, kube::Error> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let name = pod.name_any();
        let uid = pod.uid();
        Ok(slices
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .filter_map(|e| e.target_ref.as_ref())
            .any(|r| {
                r.kind.as_deref() == Some("Pod")
                    && r.name.as_deref() == Some(name.as_str())
                    && (r.uid.is_none() || r.uid == uid)
            }))
    }
}
