//! The Kubernetes edges: every read and write of the API server. Writes are guarded (uid and
//! resourceVersion preconditions, or a resourceVersion in the patch), so a stale view, a second
//! "leader" or a retried request can never do harm; their outcomes are classified here, once.

pub mod budget_writes;
pub mod clock;
pub mod cluster_view;
pub mod events;
pub mod pod_writes;
pub mod seal_keys;

/// The field manager of every write of ours.
pub const FIELD_MANAGER: &str = "pod-graceful-drain";

/// How a guarded write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The write was applied.
    Done,
    /// The object no longer exists (someone else finished the job).
    Gone,
    /// The object changed (or was replaced) since it was read: re-read and decide again.
    Conflict,
}

/// Classifies a write's result: 404 is [`Outcome::Gone`], 409 [`Outcome::Conflict`], any other
/// error is an error.
pub fn classify<T>(result: Result<T, kube::Error>) -> Result<Outcome, kube::Error> {
    match result {
        Ok(_) => Ok(Outcome::Done),
        Err(e) => outcome_of(&e).ok_or(e),
    }
}

/// What a failed call means for a guarded write: `Some` for 404 (gone) and 409 (changed).
pub fn outcome_of(error: &kube::Error) -> Option<Outcome> {
    match error {
        kube::Error::Api(s) if s.code == 404 => Some(Outcome::Gone),
        kube::Error::Api(s) if s.code == 409 => Some(Outcome::Conflict),
        _ => None,
    }
}

/// The kind of a failed API call, for the metrics' `kind` label.
pub fn error_kind(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(s) => match s.code {
            401 | 403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            429 => "throttled",
            500..=599 => "server",
            _ => "client",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "transport",
        _ => "other",
    }
}

/// Retries `attempt` with a doubling delay (from 200 ms up to `max_delay`) until it succeeds,
/// logging each failure as `what`: for what a replica cannot serve without (its certificate, the
/// seal keys, the clock's offset), so it stays unready rather than failing.
pub async fn until_ok<T, E, F, Fut>(what: &str, max_delay: std::time::Duration, mut attempt: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => tracing::warn!(error = %e, "{what}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max_delay);
    }
}
