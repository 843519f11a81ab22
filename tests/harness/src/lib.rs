//! Test harness for pod-graceful-drain's integration tests.
//!
//! Every behaviour that involves Kubernetes is tested on a real cluster: by default the project's
//! own testbed (`testbed/up`, brought up on first use), or any cluster named by the environment
//! variable `PGD_TEST_KUBECONFIG` (a developer's kind cluster, say). A test asks for a [`TestEnv`]:
//! a `kube::Client` and a fresh namespace that is deleted when the test ends, pass or fail.
//! Waiting is done on watches with deadlines ([`wait`]), never with fixed sleeps.

mod apps;
mod cluster;
pub mod drain;
pub mod drained;
mod error;
pub mod faults;
pub mod fetch;
pub mod jaeger;
mod namespace;
mod netns;
pub mod objects;
pub mod product;
pub mod prometheus;
pub mod wait;

pub use cluster::{
    Target, as_cluster_user, helm, helm_offline, kubectl, nodes_ready_schedulable, target,
    testbed_client_cert, testbed_script,
};
pub use error::{Error, Result};
pub use namespace::TestEnv;
