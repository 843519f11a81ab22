//! pod-graceful-drain: keeps deleted and evicted pods serving until load balancers have let go of
//! them.
//!
//! Pure (no I/O, unit-tested): `selector`, `isolation`, `eviction`, `schedule`, `facts`,
//! `decision`, `review`, `config`, `certs`, `client_auth` (who is calling: the API server's client
//! certificate, or an unverified caller). Edges (Kubernetes and network): `cluster_view`,
//! `pod_writes`, `budget_writes`, `events`, `cert_secret`, `admission`, `leader`, `deleter`,
//! `uninstall`, `tls`, `server` (bounded accept loops), `telemetry`.
//! A request flows one way: TLS (caller verified or not) → server caps → review (typed, bounded)
//! → the pod re-read from the API → cluster_view → decision → budget/pod writes (a 409 re-reads
//! and decides again) → one event in the background → answer (held, if asked, outside the cap).

pub mod admission;
pub mod budget_writes;
pub mod cert_secret;
pub mod certs;
pub mod client_auth;
pub mod clock;
pub mod cluster_view;
pub mod config;
pub mod decision;
pub mod deleter;
pub mod deletion;
pub mod events;
pub mod eviction;
pub mod facts;
pub mod isolation;
pub mod leader;
pub mod pod_writes;
pub mod review;
pub mod schedule;
pub mod seal;
pub mod seal_keys;
pub mod selector;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod uninstall;

#[cfg(test)]
mod test_support;
