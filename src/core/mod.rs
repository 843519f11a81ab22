//! The pure core: no client, no clock, no tokio, no I/O of any kind (`.ci/run` checks). Everything
//! here is a function of its arguments, so every rule is unit-tested row by row; the Kubernetes
//! edges (`k8s`) gather what these functions read and carry out what they decide.

pub mod budget_rules;
pub mod decision;
pub mod deletion;
pub mod endpoints;
pub mod facts;
pub mod isolation;
pub mod keys;
pub mod notice;
pub mod pod_state;
pub mod review;
pub mod schedule;
pub mod seal;
pub mod selector;
pub mod skew;

#[cfg(test)]
pub(crate) mod test_support;
