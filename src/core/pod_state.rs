//! What every rule reads of a pod's state, read once from the pod: its phase, readiness and
//! whether it is being deleted.

use k8s_openapi::api::core::v1::Pod;

/// `status.phase`. An absent phase is Pending (the API server's default); a phase this version
/// does not know is `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl Phase {
    pub fn parse(phase: Option<&str>) -> Phase {
        match phase {
            None | Some("Pending") => Phase::Pending,
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            Some(_) => Phase::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodState {
    pub phase: Phase,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// It carries a deletionTimestamp.
    pub terminating: bool,
}

impl PodState {
    pub fn of(pod: &Pod) -> PodState {
        let status = pod.status.as_ref();
        PodState {
            phase: Phase::parse(status.and_then(|s| s.phase.as_deref())),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Running, ready and not being deleted: the only pods that can serve traffic.
    pub fn serving(self) -> bool {
        self.phase == Phase::Running && self.ready && !self.terminating
    }

    /// A serving pod, for tests and fixtures.
    pub const SERVING: PodState = PodState {
        phase: Phase::Running,
        ready: true,
        terminating: false,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_state_is_read_from_phase_ready_condition_and_deletion_timestamp() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "deletionTimestamp": "2026-11-25T10:00:00Z"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let state = PodState::of(&pod);
        assert_eq!(
            state,
            PodState {
                phase: Phase::Running,
                ready: true,
                terminating: true
            }
        );
        assert!(!state.serving(), "a terminating pod serves no new traffic");
        assert_eq!(PodState::of(&Pod::default()), PodState::default());
        assert_eq!(PodState::default().phase, Phase::Pending);
        assert_eq!(Phase::parse(Some("Lost")), Phase::Unknown);
        assert!(PodState::SERVING.serving());
    }
}
