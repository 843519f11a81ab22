//! pod-graceful-drain: keeps deleted and evicted pods serving until load balancers have let go of
//! them.
//!
//! # The layers (each imports only from the ones below it)
//! - [`core`]: pure, no client, no clock, no tokio (`.ci/run` checks): the review's parse
//!   (`review`), the admission decision (`decision`), the deleter's state machine (`deletion`),
//!   whether an EndpointSlice still lists a pod (`endpoints`),
//!   and the rules they use: label selectors, isolation, the eviction handler's budget rules,
//!   the schedule and its seal, clock skew, and every label and annotation of ours (`keys`).
//! - [`k8s`]: every API read and write, each write guarded (uid / resourceVersion) and its 404 /
//!   409 classified in one place: the cluster view (Service cache, live reads), pod writes, budget
//!   writes, events, the seal keys' Secret, the API server's clock.
//! - [`tls`]: the webhook port's TLS: client authentication, the serving certificate's renewal
//!   (pure), its Secret, the resolver.
//! - Runners: [`admission`] (one request), [`server`] (the ports, bounded), [`leader`] (the
//!   election), [`deleter`] (the leader's deferred deletes), [`uninstall`] (the Helm hook),
//!   [`status`] (the operator's read-only view).
//! - Process: [`config`], [`telemetry`] (logs, traces), [`metrics`] (Prometheus), and `main.rs`,
//!   which wires them.
//!
//! # A request's flow
//! TLS (the caller verified, or not) → the server's caps (size, time, count) → `review::parse`
//! (typed, bounded) → the pod re-read from the API (the review's `oldObject` is only a hint) →
//! gather: the cluster view's facts (Services from the cache; controller, budgets, namespace
//! live) → `decision::decide` (pure) → act: budget write, then the isolating patch (a 409 on
//! either re-reads the pod and decides again, up to five times) → one event, in the background →
//! the answer, at once or held until delete-at (outside the cap, within the caller's timeout).
//! Later the leader's deleter reads the sealed schedule back from the pod, and `deletion::next`
//! (pure) says what to do: repair, wait for the endpoints, withhold, or delete (guarded).

pub mod core;
pub mod k8s;
pub mod tls;

pub mod admission;
pub mod config;
pub mod deleter;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod uninstall;
