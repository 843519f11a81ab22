//! pod-graceful-drain: keeps deleted and evicted pods serving until load balancers have let go of
//! them. The library holds the pure decision logic (no I/O), tested on its own; the binary wires
//! it to the API server.

pub mod admission;
pub mod budget_writes;
pub mod cluster_view;
pub mod config;
pub mod decision;
pub mod deleter;
pub mod events;
pub mod eviction;
pub mod facts;
pub mod isolation;
pub mod leader;
pub mod pod_writes;
pub mod review;
pub mod schedule;
pub mod selector;
pub mod tls;
