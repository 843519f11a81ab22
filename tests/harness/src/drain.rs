//! `kubectl drain` of a node, as a person runs it, with the node uncordoned again when the test
//! ends (pass or fail) so later tests have it back.

use std::time::{Duration, Instant};

use crate::cluster::{Target, kubectl};
use crate::error::{Error, Result};

/// Uncordons its node when dropped.
pub struct Drained {
    target: &'static Target,
    node: String,
    /// How long `kubectl drain` took.
    pub took: Duration,
}

impl Drop for Drained {
    fn drop(&mut self) {
        let out = kubectl(self.target).args(["uncordon", &self.node]).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("could not uncordon {}: {out:?}", self.node);
        }
    }
}

/// Drains `node` (ignoring DaemonSets, deleting emptyDir data, 120 s timeout), leaving alone the
/// pods `pod_selector` excludes, and fails with kubectl's output if the drain does not complete.
pub fn drain_node(target: &'static Target, node: &str, pod_selector: &str) -> Result<Drained> {
    let started = Instant::now();
    let out = kubectl(target)
        .args([
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
            &format!("--pod-selector={pod_selector}"),
        ])
        .output()
        .map_err(|e| Error::Unexpected(format!("running kubectl drain: {e}")))?;
    // Uncordon even when the drain failed half-way.
    let drained = Drained {
        target,
        node: node.to_string(),
        took: started.elapsed(),
    };
    if !out.status.success() {
        return Err(Error::Unexpected(format!(
            "kubectl drain {node} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(drained)
}
