//! Every label and annotation the product reads or writes, in one place: what a person sees on
//! a pod, what the chart's ValidatingAdmissionPolicy guards (everything under [`PREFIX`]), and
//! what SECURITY.md describes.

/// Every key of ours starts with this; only the product's ServiceAccount may add or change them.
pub const PREFIX: &str = "pod-graceful-drain.io/";
/// Label on every draining pod; its value names the installation whose deleter acts on the pod
/// (two installations in one cluster never fight over a pod).
pub const DRAINING_LABEL: &str = "pod-graceful-drain.io/draining";
pub const STARTED_AT: &str = "pod-graceful-drain.io/drain-started-at";
pub const DELETE_AT: &str = "pod-graceful-drain.io/delete-at";
pub const REQUESTED_BY: &str = "pod-graceful-drain.io/requested-by";
pub const REASON: &str = "pod-graceful-drain.io/reason";
pub const DELETE_OPTIONS: &str = "pod-graceful-drain.io/delete-options";
pub const TRACEPARENT: &str = "pod-graceful-drain.io/traceparent";
pub const REMOVED_LABELS: &str = "pod-graceful-drain.io/removed-labels";
/// The schedule as the product wrote it, sealed with its key: the only part the product acts on.
pub const SEAL: &str = "pod-graceful-drain.io/seal";
/// Set by users: "true" opts a pod out of draining.
pub const OPT_OUT: &str = "pod-graceful-drain.io/disabled";
/// Set by users: the drain length for this pod, in seconds (within configured bounds).
pub const DRAIN_SECONDS: &str = "pod-graceful-drain.io/drain-seconds";

/// Label that marks the product's own pods (never drained).
pub const OWN_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "pod-graceful-drain");
/// Label the EndpointSlice controller puts on a Service's slices: how the deleter asks for the
/// slices of a draining pod's Services only.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
