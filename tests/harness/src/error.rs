use std::time::Duration;

/// What can go wrong while preparing or observing a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("testbed: {0}")]
    Testbed(String),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("entering the testbed network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("watch while waiting for {what}: {message}")]
    Watch { what: String, message: String },
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Unexpected(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
