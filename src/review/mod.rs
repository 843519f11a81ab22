//! The AdmissionReview boundary: bytes from the API server in, a typed request out; an answer in,
//! bytes out. Everything a caller could send wrong (too large, not JSON, another API version,
//! another resource, a missing object) becomes a [`BadReview`] with a clear message and a 4xx
//! status, never a panic and never a write.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde_json::{Value, json};

use crate::schedule::SavedDeleteOptions;

/// Larger bodies are refused before parsing (a pod with every annotation at its maximum is far
/// below this; the API server itself caps request bodies at 3 MiB).
pub const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024 + 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    #[error("AdmissionReview of {0} bytes is larger than the {MAX_REVIEW_BYTES} accepted")]
    TooLarge(usize),
    #[error("body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(String),
    #[error("AdmissionReview has apiVersion {0:?}; only admission.k8s.io/v1 is served")]
    WrongVersion(String),
    #[error("AdmissionReview carries no request")]
    NoRequest,
    #[error("this webhook serves DELETE pods and CREATE pods/eviction, not {0}")]
    Unexpected(String),
    #[error("the request for {0} carries no usable {1}")]
    MissingObject(String, &'static str),
}

impl BadReview {
    /// HTTP status for the answer: the body was wrong, so 4xx.
    pub fn status(&self) -> u16 {
        match self {
            BadReview::TooLarge(_) => 413,
            _ => 400,
        }
    }
}

/// Who asked, and the request's identity, common to both kinds of request.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub uid: String,
    pub user: String,
    pub dry_run: bool,
    pub namespace: String,
    pub name: String,
}

/// A request this webhook serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// DELETE pods/NAME: the pod as stored (oldObject) and the DeleteOptions the caller sent.
    Delete {
        caller: Caller,
        pod: Box<Pod>,
        options: SavedDeleteOptions,
        /// The caller's resourceVersion/uid preconditions are not repeated by the deferred delete
        /// (the pod's labels change when it is isolated); kept for the record.
        had_preconditions: bool,
    },
    /// CREATE pods/NAME/eviction: the Eviction object; the pod is read from the cache.
    Evict { caller: Caller, eviction: Value },
}

impl Incoming {
    pub fn caller(&self) -> &Caller {
        match self {
            Incoming::Delete { caller, .. } | Incoming::Evict { caller, .. } => caller,
        }
    }
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<Incoming, BadReview> {
    if body.len() > MAX_REVIEW_BYTES {
        return Err(BadReview::TooLarge(body.len()));
    }
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| BadReview::Malformed(e.to_string()))?;
    let version = raw.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if version != "admission.k8s.io/v1" {
        return Err(BadReview::WrongVersion(version.to_string()));
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(raw).map_err(|e| BadReview::Malformed(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> = review.request.ok_or(BadReview::NoRequest)?;
    classify(request)
}

fn classify(req: AdmissionRequest<DynamicObject>) -> Result<Incoming, BadReview> {
    let what = format!(
        "{:?} {}{}",
        req.operation,
        req.resource.resource,
        req.sub_resource
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default()
    );
    let core_pods = req.resource.group.is_empty() && req.resource.resource == "pods";
    let caller = Caller {
        uid: req.uid.clone(),
        user: req.user_info.username.clone().unwrap_or_default(),
        dry_run: req.dry_run,
        namespace: req.namespace.clone().unwrap_or_default(),
        name: req.name.clone(),
    };
    if caller.name.is_empty() || caller.namespace.is_empty() {
        return Err(BadReview::MissingObject(what, "name and namespace"));
    }
    match (req.operation, core_pods, req.sub_resource.as_deref()) {
        (Operation::Delete, true, None) => {
            let old = req
                .old_object
                .ok_or_else(|| BadReview::MissingObject(what.clone(), "oldObject"))?;
            let pod: Pod = serde_json::to_value(old)
                .and_then(serde_json::from_value)
                .map_err(|_| BadReview::MissingObject(what.clone(), "Pod in oldObject"))?;
            let options: Option<DeleteOptions> =
                req.options.and_then(|o| serde_json::from_value(o.0).ok());
            let had_preconditions = options
                .as_ref()
                .and_then(|o| o.preconditions.as_ref())
                .is_some_and(|p| p.resource_version.is_some() || p.uid.is_some());
            let options = options
                .map(|o| SavedDeleteOptions {
                    grace_period_seconds: o.grace_period_seconds,
                    propagation_policy: o.propagation_policy,
                })
                .unwrap_or_default();
            Ok(Incoming::Delete {
                caller,
                pod: Box::new(pod),
                options,
                had_preconditions,
            })
        }
        (Operation::Create, true, Some("eviction")) => {
            let object = req
                .object
                .ok_or_else(|| BadReview::MissingObject(what.clone(), "Eviction object"))?;
            let eviction = serde_json::to_value(object)
                .map_err(|_| BadReview::MissingObject(what.clone(), "Eviction object"))?;
            Ok(Incoming::Evict { caller, eviction })
        }
        _ => Err(BadReview::Unexpected(what)),
    }
}

/// The answer to send back, as an AdmissionReview body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Allow,
    Deny {
        code: u16,
        message: String,
    },
    /// Mutate the Eviction so that it is a dry-run.
    EvictionDryRun {
        eviction_has_options: bool,
    },
}

/// Serializes the answer for request `uid`.
pub fn respond(uid: &str, reply: &Reply) -> Vec<u8> {
    let mut response = json!({"uid": uid, "allowed": true});
    match reply {
        Reply::Allow => {}
        Reply::Deny { code, message } => {
            response["allowed"] = json!(false);
            response["status"] =
                json!({"code": code, "message": message, "reason": reason_for(*code)});
        }
        Reply::EvictionDryRun {
            eviction_has_options,
        } => {
            let patch = if *eviction_has_options {
                json!([{"op": "add", "path": "/deleteOptions/dryRun", "value": ["All"]}])
            } else {
                json!([{"op": "add", "path": "/deleteOptions", "value": {"dryRun": ["All"]}}])
            };
            let bytes = serde_json::to_vec(&patch).expect("static patch serializes");
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response
    }))
    .expect("json value serializes")
}

fn reason_for(code: u16) -> &'static str {
    match code {
        429 => "TooManyRequests",
        409 => "Conflict",
        400 => "BadRequest",
        _ => "Forbidden",
    }
}

/// Whether an Eviction object already carries deleteOptions (decides the patch's path).
pub fn eviction_has_options(eviction: &Value) -> bool {
    eviction.get("deleteOptions").is_some_and(|o| o.is_object())
}

#[cfg(test)]
mod tests;
