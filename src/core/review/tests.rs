//! Every kind of bad input gets a clear error; the served requests parse; answers serialize.

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

fn pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "app", "image": "x"}]},
           "status": {"phase": "Running"}})
}

fn review(request: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request
    }))
    .unwrap()
}

fn delete_request() -> Value {
    json!({
        "uid": "req-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "web-1", "namespace": "shop", "operation": "DELETE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "oldObject": pod(), "object": null, "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 7,
                    "preconditions": {"uid": "u-1"}}
    })
}

fn eviction_request() -> Value {
    json!({
        "uid": "req-2",
        "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "subResource": "eviction",
        "name": "web-1", "namespace": "shop", "operation": "CREATE",
        "userInfo": {"username": "jane"},
        "object": {"apiVersion": "policy/v1", "kind": "Eviction",
                   "metadata": {"name": "web-1", "namespace": "shop"}},
        "dryRun": true
    })
}

#[test]
fn a_pod_delete_parses_with_its_options() {
    let Incoming::Delete {
        caller,
        pod,
        options,
        had_preconditions,
    } = parse(&review(delete_request())).unwrap()
    else {
        panic!("expected a delete")
    };
    assert_eq!(caller.uid, "req-1");
    assert_eq!(
        caller.user,
        "system:serviceaccount:kube-system:replicaset-controller"
    );
    assert_eq!(
        (caller.namespace.as_str(), caller.name.as_str()),
        ("shop", "web-1")
    );
    assert!(!caller.dry_run);
    assert_eq!(pod.metadata.uid.as_deref(), Some("u-1"));
    assert_eq!(options.grace_period_seconds, Some(7));
    assert!(had_preconditions);
}

#[test]
fn an_eviction_parses_with_its_dry_run_flag() {
    let parsed = parse(&review(eviction_request())).unwrap();
    let Incoming::Evict {
        caller,
        has_options,
    } = parsed
    else {
        panic!("expected an eviction")
    };
    assert!(caller.dry_run);
    assert!(!has_options);
    let mut r = eviction_request();
    r["dryRun"] = json!(false);
    r["object"]["deleteOptions"] = json!({"gracePeriodSeconds": 3});
    let Incoming::Evict {
        caller,
        has_options,
    } = parse(&review(r.clone())).unwrap()
    else {
        panic!("expected an eviction")
    };
    assert!(has_options && !caller.dry_run);
    // kubectl drain --dry-run=server: the dry-run is inside the Eviction.
    r["object"]["deleteOptions"] = json!({"dryRun": ["All"]});
    let Incoming::Evict { caller, .. } = parse(&review(r)).unwrap() else {
        panic!("expected an eviction")
    };
    assert!(
        caller.dry_run,
        "a dry-run in the Eviction's deleteOptions is a dry-run"
    );
}

#[test]
fn oversized_bodies_are_refused_before_parsing() {
    let body = vec![b' '; MAX_REVIEW_BYTES + 1];
    let err = parse(&body).unwrap_err();
    assert_eq!(err, BadReview::TooLarge(MAX_REVIEW_BYTES + 1));
    assert_eq!(err.status(), 413);
}

#[test]
fn garbage_and_wrong_shapes_are_400s() {
    for (body, what) in [
        (b"not json".to_vec(), "malformed"),
        (b"[]".to_vec(), "version"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(),
            "version",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (review(json!({"uid": 5})), "malformed"),
    ] {
        let err = parse(&body).unwrap_err();
        assert_eq!(err.status(), 400, "{what}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn other_resources_and_operations_are_refused() {
    let mut r = delete_request();
    r["resource"]["resource"] = json!("configmaps");
    assert!(matches!(parse(&review(r)), Err(BadReview::Unexpected(_))));
    let mut r = delete_request();
    r["operation"] = json!("UPDATE");
    assert!(matches!(parse(&review(r)), Err(BadReview::Unexpected(_))));
    let mut r = eviction_request();
    r["subResource"] = json!("binding");
    assert!(matches!(parse(&review(r)), Err(BadReview::Unexpected(_))));
    let mut r = delete_request();
    r["resource"]["group"] = json!("apps");
    assert!(matches!(parse(&review(r)), Err(BadReview::Unexpected(_))));
}

#[test]
fn missing_or_wrong_objects_are_refused() {
    let mut r = delete_request();
    r["oldObject"] = Value::Null;
    assert!(matches!(
        parse(&review(r)),
        Err(BadReview::MissingObject(..))
    ));
    let mut r = delete_request();
    r["oldObject"] =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": 5});
    assert!(matches!(
        parse(&review(r)),
        Err(BadReview::MissingObject(..))
    ));
    let mut r = eviction_request();
    r["object"] = Value::Null;
    assert!(matches!(
        parse(&review(r)),
        Err(BadReview::MissingObject(..))
    ));
    let mut r = delete_request();
    r["oldObject"]["metadata"]["name"] = json!("another-pod");
    assert!(
        matches!(parse(&review(r)), Err(BadReview::MissingObject(..))),
        "an oldObject naming another pod than the request"
    );
    let mut r = delete_request();
    r["namespace"] = json!("");
    assert!(matches!(
        parse(&review(r)),
        Err(BadReview::MissingObject(..))
    ));
}

fn response(bytes: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    v["response"].clone()
}

#[test]
fn answers_serialize_as_the_api_server_expects() {
    let allow = response(&respond("u", &Reply::Allow));
    assert_eq!(allow, json!({"uid": "u", "allowed": true}));

    let deny = response(&respond(
        "u",
        &Reply::Deny {
            code: 403,
            message: "draining until 10:01".into(),
        },
    ));
    assert_eq!(deny["allowed"], false);
    assert_eq!(deny["status"]["code"], 403);
    assert_eq!(deny["status"]["message"], "draining until 10:01");

    for (has, path) in [(false, "/deleteOptions"), (true, "/deleteOptions/dryRun")] {
        let r = response(&respond(
            "u",
            &Reply::EvictionDryRun {
                eviction_has_options: has,
            },
        ));
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(patch[0]["op"], "add");
        assert_eq!(patch[0]["path"], path);
    }
}

#[test]
fn names_kubernetes_would_refuse_are_refused() {
    for (ns, name) in [
        ("Shop", "web-1"),
        ("shop", "web_1"),
        ("shop", "-web"),
        ("sh.op", "web-1"),
        ("shop", "web/../../x"),
    ] {
        let mut r = delete_request();
        r["namespace"] = json!(ns);
        r["name"] = json!(name);
        r["oldObject"]["metadata"]["namespace"] = json!(ns);
        r["oldObject"]["metadata"]["name"] = json!(name);
        assert!(
            matches!(parse(&review(r)), Err(BadReview::BadName(..))),
            "{ns}/{name}"
        );
    }
    let long = "a".repeat(254);
    assert!(!is_dns1123(&long, 253, true));
    assert!(is_dns1123("web-7d9f.x", 253, true));
    assert!(!is_dns1123("a.b", 63, false));
    let mut r = eviction_request();
    r["uid"] = json!("u".repeat(600));
    assert_eq!(parse(&review(r)).unwrap_err().status(), 400);
}

#[test]
fn the_callers_timeout_is_read_from_the_query_as_a_go_duration() {
    use std::time::Duration;
    assert_eq!(
        caller_timeout(Some("timeout=14s")),
        Some(Duration::from_secs(14))
    );
    assert_eq!(
        caller_timeout(Some("a=b&timeout=1m4.5s")),
        Some(Duration::from_millis(64_500))
    );
    assert_eq!(
        caller_timeout(Some("timeout=500ms")),
        Some(Duration::from_millis(500))
    );
    assert_eq!(caller_timeout(Some("timeout=0")), Some(Duration::ZERO));
    for bad in [
        "timeout=",
        "timeout=s",
        "timeout=14",
        "timeout=-1s",
        "timeout=25h",
        "timeout=1e9s",
        "x=1",
    ] {
        assert_eq!(caller_timeout(Some(bad)), None, "{bad}");
    }
    assert_eq!(
        caller_timeout(Some(&format!("timeout={}", "9".repeat(40)))),
        None
    );
    assert_eq!(caller_timeout(None), None);
}
