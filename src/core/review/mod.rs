//! The AdmissionReview boundary: bytes from the API server in, a typed request out; an answer in,
//! bytes out. Everything a caller could send wrong (too large, not JSON, another API version,
//! another resource, a missing object, a name Kubernetes would not accept) becomes a [`BadReview`]
//! with a clear message and a 4xx status, never a panic and never a write. The body is parsed
//! once, into typed fields; the objects are kept as slices of it until the request is known to be
//! one we serve, so no allocation proportional to the body happens before that.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::core::schedule::SavedDeleteOptions;

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
    #[error("namespace {0:?} or name {1:?} is not a valid Kubernetes name")]
    BadName(String, String),
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
    /// CREATE pods/NAME/eviction; the pod is read from the API. `has_options`: the Eviction
    /// carries deleteOptions (decides the dry-run patch's path).
    Evict { caller: Caller, has_options: bool },
}

impl Incoming {
    pub fn caller(&self) -> &Caller {
        match self {
            Incoming::Delete { caller, .. } | Incoming::Evict { caller, .. } => caller,
        }
    }
}

/// Longest uid, user name, or resource name accepted from a review (Kubernetes' own limits are
/// far below; a longer one is not a request of the API server's).
const MAX_FIELD: usize = 512;

/// The AdmissionReview as sent, typed. The objects stay unparsed slices of the body (no copy)
/// until the request is known to be one we serve.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(borrow, default)]
    request: Option<WireRequest<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    uid: String,
    #[serde(default)]
    resource: WireResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    user_info: WireUser,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(borrow, default)]
    options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct WireResource {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resource: String,
}

#[derive(Deserialize, Default)]
struct WireUser {
    #[serde(default)]
    username: Option<String>,
}

/// Of an Eviction, only whether it carries deleteOptions (where the dry-run patch goes).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEviction<'a> {
    #[serde(borrow, default)]
    delete_options: Option<&'a RawValue>,
}

/// A JSON `null` and an absent field are the same to us.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get().trim() != "null")
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<Incoming, BadReview> {
    if body.len() > MAX_REVIEW_BYTES {
        return Err(BadReview::TooLarge(body.len()));
    }
    let review: WireReview<'_> =
        serde_json::from_slice(body).map_err(|e| BadReview::Malformed(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" {
        return Err(BadReview::WrongVersion(review.api_version));
    }
    classify(review.request.ok_or(BadReview::NoRequest)?)
}

/// A DNS-1123 subdomain (pod names) or label (namespaces), as the API server validates them.
pub fn is_dns1123(name: &str, max: usize, dots: bool) -> bool {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    !name.is_empty()
        && name.len() <= max
        && name.chars().all(ok_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn classify(req: WireRequest<'_>) -> Result<Incoming, BadReview> {
    let sub = req.sub_resource.as_deref().filter(|s| !s.is_empty());
    let what = format!(
        "{} {}{}",
        req.operation,
        req.resource.resource,
        sub.map(|s| format!("/{s}")).unwrap_or_default()
    )
    .chars()
    .take(MAX_FIELD)
    .collect::<String>();
    let core_pods = req.resource.group.is_empty() && req.resource.resource == "pods";
    let caller = Caller {
        uid: req.uid,
        user: req.user_info.username.unwrap_or_default(),
        dry_run: req.dry_run.unwrap_or(false),
        namespace: req.namespace.unwrap_or_default(),
        name: req.name,
    };
    if caller.name.is_empty() || caller.namespace.is_empty() {
        return Err(BadReview::MissingObject(what, "name and namespace"));
    }
    if !is_dns1123(&caller.name, 253, true) || !is_dns1123(&caller.namespace, 63, false) {
        return Err(BadReview::BadName(
            caller.namespace.chars().take(64).collect(),
            caller.name.chars().take(254).collect(),
        ));
    }
    if caller.uid.is_empty() || caller.uid.len() > MAX_FIELD || caller.user.len() > MAX_FIELD {
        return Err(BadReview::Malformed(
            "uid or user name empty or too long".into(),
        ));
    }
    match (req.operation.as_str(), core_pods, sub) {
        ("DELETE", true, None) => {
            let old = present(req.old_object)
                .ok_or_else(|| BadReview::MissingObject(what.clone(), "oldObject"))?;
            let pod: Pod = serde_json::from_str(old.get())
                .map_err(|_| BadReview::MissingObject(what.clone(), "Pod in oldObject"))?;
            if pod.metadata.name.as_deref() != Some(caller.name.as_str())
                || pod.metadata.namespace.as_deref() != Some(caller.namespace.as_str())
            {
                return Err(BadReview::MissingObject(
                    what,
                    "oldObject naming the request's pod",
                ));
            }
            let options: Option<DeleteOptions> =
                present(req.options).and_then(|o| serde_json::from_str(o.get()).ok());
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
        ("CREATE", true, Some("eviction")) => {
            let object = present(req.object)
                .ok_or_else(|| BadReview::MissingObject(what.clone(), "Eviction object"))?;
            let eviction: WireEviction<'_> = serde_json::from_str(object.get())
                .map_err(|_| BadReview::MissingObject(what.clone(), "Eviction object"))?;
            let options = present(eviction.delete_options);
            let has_options = options.is_some_and(|o| o.get().trim_start().starts_with('{'));
            // `kubectl drain --dry-run=server` puts the dry-run here, not in the request's query:
            // it is as much a dry-run as the other.
            let inner_dry_run = options
                .and_then(|o| serde_json::from_str::<DeleteOptions>(o.get()).ok())
                .and_then(|o| o.dry_run)
                .is_some_and(|d| !d.is_empty());
            let caller = Caller {
                dry_run: caller.dry_run || inner_dry_run,
                ..caller
            };
            Ok(Incoming::Evict {
                caller,
                has_options,
            })
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

/// The time the API server gives this call, from the `timeout` query parameter it adds to a
/// webhook's URL (a Go duration: `14s`, `1m4.5s`, `500ms`). It is the webhook's `timeoutSeconds`,
/// or less when the request itself has less left: the API server calls a validating webhook a
/// second time when its first answer denied a request judged on a stale object, and that call
/// gets only what remains. `None` for anything else (absent, malformed, absurd).
pub fn caller_timeout(query: Option<&str>) -> Option<std::time::Duration> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("timeout="))?;
    go_duration(value)
}

/// A Go `time.Duration` string, non-negative, at most a day (nothing a webhook call is given).
fn go_duration(s: &str) -> Option<std::time::Duration> {
    const UNITS: [(&str, f64); 7] = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("\u{b5}s", 1e-6),
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
    ];
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // Longest unit first: "ms" before "m", "s".
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())?;
        total += number * scale;
        rest = &rest[unit.len()..];
    }
    (total <= 86_400.0).then(|| std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests;
