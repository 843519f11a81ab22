//! What the tests read of a pod pod-graceful-drain drains, one helper each: whether it drains,
//! its delete-at, when it goes, and the events the product published about it.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::runtime::conditions::is_deleted;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pod_graceful_drain::core::keys;
use pod_graceful_drain::core::notice::EventReason;

use crate::error::{Error, Result};
use crate::{TestEnv, wait};

/// The pod carries the draining label (whoever wrote it).
pub fn draining(pod: &Pod) -> bool {
    pod.labels().contains_key(keys::DRAINING_LABEL)
}

/// The pod's readable delete-at.
pub fn delete_at(pod: &Pod) -> Result<Timestamp> {
    let raw = pod.annotations().get(keys::DELETE_AT).ok_or_else(|| {
        Error::Unexpected(format!("{} has no {}", pod.name_any(), keys::DELETE_AT))
    })?;
    raw.parse()
        .map_err(|e| Error::Unexpected(format!("{}: {raw:?}: {e}", keys::DELETE_AT)))
}

/// Waits until `pod` (this very uid) is gone, at the latest `slack` after `by`.
async fn gone_by(api: &Api<Pod>, pod: &Pod, by: Timestamp, slack: Duration) -> Result<()> {
    let name = pod.name_any();
    let left = Duration::try_from(by.duration_since(Timestamp::now())).unwrap_or_default();
    wait::until(
        api,
        &name,
        &format!("{name} to be deleted by {by}"),
        left + slack,
        is_deleted(&pod.uid().unwrap_or_default()),
    )
    .await?;
    Ok(())
}

/// Waits until `pod` is deleted, at the latest a second after `by`.
pub async fn deleted_by(api: &Api<Pod>, pod: &Pod, by: Timestamp) -> Result<()> {
    gone_by(api, pod, by, Duration::from_secs(1)).await
}

/// Waits until `pod` is deleted, at the latest `late` after `at` (its delete-at, say) and a
/// second more, as [`deleted_by`] allows.
pub async fn deleted_within(
    api: &Api<Pod>,
    pod: &Pod,
    at: Timestamp,
    late: SignedDuration,
) -> Result<()> {
    let by = at
        .checked_add(late)
        .map_err(|e| Error::Unexpected(format!("{at} + {late}: {e}")))?;
    deleted_by(api, pod, by).await
}

/// Waits until `pod` is deleted, at the latest half a second after `by`, and fails if it went
/// before `not_before` (a deletion is observed a moment after it happens, so a pod gone before
/// its delete-at would be seen well before it).
pub async fn deleted_between(
    api: &Api<Pod>,
    pod: &Pod,
    not_before: Timestamp,
    by: Timestamp,
) -> Result<()> {
    gone_by(api, pod, by, Duration::from_millis(500)).await?;
    let now = Timestamp::now();
    if now < not_before {
        return Err(Error::Unexpected(format!(
            "{} was deleted at {now}, before its delete-at {not_before}",
            pod.name_any()
        )));
    }
    Ok(())
}

/// Whether `event` is about the pod named `pod` and has `reason`.
pub fn is_about(event: &Event, pod: &str, reason: EventReason) -> bool {
    event.reason.as_deref() == Some(reason.as_str())
        && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
}

/// The events of the test's namespace about `pod` with `reason`, as listed now.
pub async fn events_about(env: &TestEnv, pod: &str, reason: EventReason) -> Result<Vec<Event>> {
    let events: Api<Event> = env.api();
    Ok(events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| is_about(e, pod, reason))
        .collect())
}

/// Waits (up to `timeout`) for an event about `pod` with `reason`, and returns it.
pub async fn event_about(
    env: &TestEnv,
    pod: &str,
    reason: EventReason,
    timeout: Duration,
) -> Result<Event> {
    let events: Api<Event> = env.api();
    let found = wait::until_list(
        &events,
        watcher::Config::default(),
        &format!("a {reason} event about {pod}"),
        timeout,
        |evs: &[Event]| evs.iter().any(|e| is_about(e, pod, reason)),
    )
    .await?;
    found
        .into_iter()
        .find(|e| is_about(e, pod, reason))
        .ok_or_else(|| Error::Unexpected(format!("the {reason} event about {pod} vanished")))
}
