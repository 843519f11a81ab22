//! The webhook's router, driven in process against the real API server and a real cluster view:
//! AdmissionReviews as the API server sends them go through `server::webhook_router`, and what
//! the product wrote is read back from the cluster. Concurrent evictions of one pod conflict on
//! its writes, re-read it and decide again (the budget is spent once, every answer agrees); once a
//! disruption is recorded the answer is 429 when isolating fails, never an allow; an API that
//! cannot be reached fails open.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use pgd_harness::drained::{delete_at, draining};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{Target, TestEnv, objects};
use pod_graceful_drain::admission::{Admission, MAX_HELD};
use pod_graceful_drain::core::decision::{LongDrain, Policy};
use pod_graceful_drain::core::keys;
use pod_graceful_drain::core::schedule::DrainBounds;
use pod_graceful_drain::core::seal::{KEY_BYTES, Key, KeySet};
use pod_graceful_drain::k8s::clock::Clock;
use pod_graceful_drain::k8s::cluster_view::ClusterView;
use pod_graceful_drain::k8s::events::Events;
use pod_graceful_drain::k8s::seal_keys::SealKeys;
use pod_graceful_drain::metrics::Metrics;
use pod_graceful_drain::server;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const RS_USER: &str = "system:serviceaccount:kube-system:replicaset-controller";
const DRAINER: &str = "system:serviceaccount:kube-system:drainer";

/// The webhook's state as one replica has it, on `client`, draining for `instance`.
fn admission(client: Client, instance: &str) -> Admission {
    let made = Timestamp::now() - SignedDuration::from_hours(1);
    Admission {
        policy: Policy {
            excluded_namespaces: Default::default(),
            namespace_selector: None,
            own_user: "system:serviceaccount:pgd:pod-graceful-drain".into(),
            controller_users: [RS_USER.to_string()].into(),
            bounds: DrainBounds {
                default: Duration::from_secs(60),
                min: Duration::from_secs(1),
                max: Duration::from_secs(120),
            },
            hold_budget: Duration::from_secs(10),
            long_drain: LongDrain::Deny,
        },
        held: Arc::new(tokio::sync::Semaphore::new(MAX_HELD)),
        held_over_cap: Default::default(),
        view: ClusterView::start(client.clone()),
        events: Events::new(client, instance),
        instance: instance.to_string(),
        keys: SealKeys::fixed(KeySet::first(
            Key::new("test".into(), &[9; KEY_BYTES], made),
            None,
        )),
        clock: Clock::system(),
        metrics: Metrics::new(),
    }
}

/// The webhook's router on the test's client, once its Service cache is complete.
async fn webhook(client: Client, instance: &str) -> axum::Router {
    let admission = admission(client, instance);
    admission.view.ready().await;
    server::webhook_router(Arc::new(admission))
}

/// A review of `CREATE pods/eviction` of `pod` by `user`, as the API server sends it.
fn eviction(uid: &str, pod: &Pod, user: &str) -> Value {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "operation": "CREATE", "subResource": "eviction", "namespace": ns, "name": name,
        "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "policy", "version": "v1", "kind": "Eviction"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "requestSubResource": "eviction",
        "userInfo": {"username": user},
        "object": {"apiVersion": "policy/v1", "kind": "Eviction",
                   "metadata": {"name": name, "namespace": ns}},
        "dryRun": false
    }})
}

/// A review of `DELETE pods` of `pod` by `user` (the whole pod as oldObject).
fn delete(uid: &str, pod: &Pod, user: &str) -> Value {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid, "operation": "DELETE", "namespace": ns, "name": name,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "userInfo": {"username": user},
        "oldObject": pod,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"},
        "dryRun": false
    }})
}

/// POSTs a review through the router; the AdmissionReview's `response`.
async fn answer(router: &axum::Router, review: &Value) -> anyhow::Result<Value> {
    let request = Request::post("/pods/eviction")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(review)?))?;
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    anyhow::ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    let reviewed: Value = serde_json::from_slice(&body)?;
    Ok(reviewed["response"].clone())
}

/// Whether the answer lets the request through as it is (no patch, no denial).
fn allowed_as_is(response: &Value) -> bool {
    response["allowed"] == json!(true) && response.get("patch").is_none()
}

/// Two serving pods of one app, behind a Service, with a budget that allows one disruption.
async fn app_with_budget(env: &TestEnv) -> anyhow::Result<Vec<Pod>> {
    let pods = env.serve_demo("web", 2, json!({})).await?;
    let budgets: Api<PodDisruptionBudget> = env.api();
    budgets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}
            }))?,
        )
        .await?;
    wait::until(
        &budgets,
        "web",
        "the budget to allow one disruption",
        Duration::from_secs(30),
        |b: Option<&PodDisruptionBudget>| {
            b.and_then(|b| b.status.as_ref())
                .is_some_and(|s| s.disruptions_allowed == 1 && s.current_healthy == 2)
        },
    )
    .await?;
    Ok(pods)
}

#[tokio::test]
async fn concurrent_evictions_of_one_pod_spend_its_budget_once_and_agree() -> anyhow::Result<()> {
    let env = TestEnv::new("api-evict-race").await?;
    let pods = app_with_budget(&env).await?;
    let router = webhook(env.client.clone(), &env.namespace).await;
    let pod = &pods[0];
    // Every status the budget goes through, from before the race (the disruption controller
    // drops the entry once the isolated pod leaves the budget's selector, so the end state alone
    // says nothing).
    let budgets: Api<PodDisruptionBudget> = env.api();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let seen = tokio::spawn(
        watcher(
            budgets.clone(),
            watcher::Config::default().fields("metadata.name=web"),
        )
        .applied_objects()
        .filter_map(|b| async move { b.ok()?.status })
        .map(|s| {
            (
                s.disruptions_allowed,
                s.disrupted_pods.unwrap_or_default().len(),
            )
        })
        .take_until(stopped)
        .collect::<Vec<_>>(),
    );
    // Eight replicas answering eight drainers at once: their writes conflict, the losers re-read
    // the pod and find it drained.
    let reviews: Vec<Value> = (0..8)
        .map(|i| eviction(&format!("race-{i}"), pod, DRAINER))
        .collect();
    let answers = futures::future::try_join_all(reviews.iter().map(|r| answer(&router, r))).await?;
    for a in &answers {
        assert_eq!(a["allowed"], json!(true), "{a}");
        assert!(
            a.get("patch").is_some(),
            "every answer turns the eviction into a dry-run: {a}"
        );
    }
    let stored: Pod = env.api().get(&pod.name_any()).await?;
    assert!(draining(&stored), "the pod is not isolated");
    delete_at(&stored)?;
    // The disruption controller counts the isolated pod out: the budget is whole again.
    wait::until(
        &budgets,
        "web",
        "the budget to count the isolated pod out",
        Duration::from_secs(30),
        |b: Option<&PodDisruptionBudget>| {
            b.and_then(|b| b.status.as_ref())
                .is_some_and(|s| s.disrupted_pods.as_ref().is_none_or(|d| d.is_empty()))
        },
    )
    .await?;
    let _ = stop.send(());
    check_spent_once(&seen.await?)
}

/// Over the statuses a budget went through: one disruption recorded at most at any time, and
/// never more taken than it allowed.
fn check_spent_once(seen: &[(i32, usize)]) -> anyhow::Result<()> {
    anyhow::ensure!(
        seen.iter()
            .all(|&(allowed, disrupted)| allowed >= 0 && disrupted <= 1),
        "the budget was spent more than once: {seen:?}"
    );
    Ok(())
}

fn admission_api(client: Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    Api::all_with(client, &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// Refuses, in the test's namespace, any write that puts the draining label on a pod: what a
/// policy of the cluster's own (or a broken API) does to the isolating patch.
async fn refuse_isolation(env: &TestEnv) -> anyhow::Result<PolicyGuard> {
    let name = format!("pgd-test-refuse-{}", env.namespace);
    let label = keys::DRAINING_LABEL;
    let guard = PolicyGuard {
        target: env.target,
        name: name.clone(),
    };
    admission_api(
        env.client.clone(),
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
    )
    .create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": [""], "apiVersions": ["v1"],
                    "operations": ["UPDATE"], "resources": ["pods"]}]},
                "validations": [{
                    "expression": format!("!has(object.metadata.labels) || !('{label}' in object.metadata.labels)"),
                    "message": "this test refuses drains"}]
            }
        }))?,
    )
    .await?;
    admission_api(
        env.client.clone(),
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    )
    .create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": env.namespace}}}
            }
        }))?,
    )
    .await?;
    Ok(guard)
}

/// Deletes the cluster-wide policy and binding when the test ends, pass or fail: from a thread
/// and a runtime of its own (the test's may be unwinding), with a client of its own.
struct PolicyGuard {
    target: &'static Target,
    name: String,
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        let (target, name) = (self.target, self.name.clone());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = target.client().await?;
                let dp = DeleteParams::default();
                admission_api(
                    client.clone(),
                    "ValidatingAdmissionPolicyBinding",
                    "validatingadmissionpolicybindings",
                )
                .delete(&name, &dp)
                .await?;
                admission_api(
                    client,
                    "ValidatingAdmissionPolicy",
                    "validatingadmissionpolicies",
                )
                .delete(&name, &dp)
                .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!(
                "could not delete the test's admission policy {}: {e}",
                self.name
            );
        }
    }
}

#[tokio::test]
async fn once_a_disruption_is_recorded_a_failed_isolation_answers_429_never_allow()
-> anyhow::Result<()> {
    let env = TestEnv::new("api-evict-429").await?;
    let pods = app_with_budget(&env).await?;
    let _policy = refuse_isolation(&env).await?;
    // The policy is enforced once the API server has loaded it: probe with a label of ours on a
    // pod until that is refused.
    let api: Api<Pod> = env.api();
    let probe = &pods[1].name_any();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let patch = json!({"metadata": {"labels": {keys::DRAINING_LABEL: "probe"}}});
        match api
            .patch(probe, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 403 => break,
            Err(e) => return Err(e.into()),
            Ok(_) => {
                let undo = json!({"metadata": {"labels": {keys::DRAINING_LABEL: null}}});
                api.patch(probe, &PatchParams::default(), &Patch::Merge(&undo))
                    .await?;
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the refusing policy was not enforced within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let router = webhook(env.client.clone(), &env.namespace).await;
    let pod = &pods[0];
    let a = answer(&router, &eviction("after-record", pod, DRAINER)).await?;
    assert_eq!(a["allowed"], json!(false), "{a}");
    assert_eq!(
        a["status"]["code"],
        json!(429),
        "the caller must retry: {a}"
    );
    let budget: PodDisruptionBudget = env.api().get("web").await?;
    let recorded = budget
        .status
        .and_then(|s| s.disrupted_pods)
        .unwrap_or_default();
    assert!(
        recorded.contains_key(&pod.name_any()),
        "the disruption was recorded before the isolation failed: {recorded:?}"
    );
    let stored = api.get(&pod.name_any()).await?;
    assert!(!draining(&stored), "the refused isolation was applied");
    assert!(stored.metadata.deletion_timestamp.is_none());
    Ok(())
}

#[tokio::test]
async fn an_api_that_cannot_be_reached_fails_open_and_only_selected_pods_are_written()
-> anyhow::Result<()> {
    let env = TestEnv::new("api-fail-open").await?;
    let pods = env.serve_demo("web", 1, json!({})).await?;
    let served = &pods[0];
    let api: Api<Pod> = env.api();
    api.create(
        &PostParams::default(),
        &objects::demo_pod("lone", json!({"role": "lone"})),
    )
    .await?;
    let lone = wait::until(
        &api,
        "lone",
        "the pod no Service selects to be ready",
        Duration::from_secs(60),
        |p: Option<&Pod>| p.is_some_and(conditions::pod_ready),
    )
    .await?
    .expect("pod");

    // The webhook on a client whose API server does not answer: a decision that needs it lets
    // the request through (as failurePolicy Ignore would).
    let mut config = kube::Config::new("https://127.0.0.1:9".parse()?);
    config.connect_timeout = Some(Duration::from_secs(1));
    config.accept_invalid_certs = true;
    let broken = server::webhook_router(Arc::new(admission(
        Client::try_from(config)?,
        &env.namespace,
    )));
    let a = answer(&broken, &eviction("unreachable", served, DRAINER)).await?;
    assert!(
        allowed_as_is(&a),
        "an API error must let the eviction through: {a}"
    );
    assert!(!draining(&api.get(&served.name_any()).await?));

    // On the real API: a pod no Service selects is passed without a write; the Service's pod is
    // drained when its controller deletes it.
    let router = webhook(env.client.clone(), &env.namespace).await;
    let a = answer(&router, &delete("lone-delete", &lone, RS_USER)).await?;
    assert!(allowed_as_is(&a), "{a}");
    let after = api.get("lone").await?;
    assert_eq!(
        after.resource_version(),
        lone.resource_version(),
        "a pod nothing selects was written to"
    );
    let a = answer(&router, &delete("rs-delete", served, RS_USER)).await?;
    assert_eq!(
        a["allowed"],
        json!(false),
        "a controller's DELETE is denied: {a}"
    );
    assert!(draining(&api.get(&served.name_any()).await?));
    Ok(())
}

/// Answers to the client's PATCH requests come back `delay` late: the write is applied by the
/// API server at once, its answer is slow (an API server under load).
#[derive(Clone)]
struct SlowPatchAnswers(Duration);

impl<S> tower::Layer<S> for SlowPatchAnswers {
    type Service = SlowPatchAnswer<S>;
    fn layer(&self, inner: S) -> SlowPatchAnswer<S> {
        SlowPatchAnswer {
            inner,
            delay: self.0,
        }
    }
}

#[derive(Clone)]
struct SlowPatchAnswer<S> {
    inner: S,
    delay: Duration,
}

impl<S, B> tower::Service<axum::http::Request<B>> for SlowPatchAnswer<S>
where
    S: tower::Service<axum::http::Request<B>>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let slow = request.method() == axum::http::Method::PATCH;
        let delay = self.delay;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            if slow {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

/// The hold budget runs out while the isolating patch's answer is on its way: the pod is taken
/// out of its Services and scheduled, so letting the DELETE through would delete it at once,
/// before its delete-at.
#[tokio::test]
async fn a_delete_whose_isolation_outlasts_the_hold_budget_is_not_let_through() -> anyhow::Result<()>
{
    let env = TestEnv::new("api-slow-patch").await?;
    let pods = env.serve_demo("web", 1, json!({})).await?;
    let pod = &pods[0];
    let config = env.target.config().await?;
    let slow = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&SlowPatchAnswers(Duration::from_secs(3)))
        .build();
    let mut admission = admission(slow, &env.namespace);
    admission.policy.hold_budget = Duration::from_secs(1);
    admission.view.ready().await;
    let router = server::webhook_router(Arc::new(admission));
    let a = answer(&router, &delete("person-delete", pod, "jane@example.com")).await?;
    let api: Api<Pod> = env.api();
    let stored = wait::until(
        &api,
        &pod.name_any(),
        "the isolating patch to be applied",
        Duration::from_secs(10),
        |p: Option<&Pod>| p.is_some_and(draining),
    )
    .await?
    .expect("pod");
    let at = delete_at(&stored)?;
    assert!(at > Timestamp::now(), "delete-at {at} is in the past");
    assert_eq!(
        a["allowed"],
        json!(false),
        "the DELETE of a pod being drained (delete-at {at}) was let through: {a}"
    );
    Ok(())
}

/// The value of one series in the metrics' text (0 when it has not been written yet).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap_or(f64::NAN))
}

#[tokio::test]
async fn the_metrics_count_each_answer_by_operation_answer_and_reason() -> anyhow::Result<()> {
    let env = TestEnv::new("api-metrics").await?;
    let pods = env.serve_demo("web", 2, json!({})).await?;
    let admission = admission(env.client.clone(), &env.namespace);
    let metrics = admission.metrics.clone();
    admission.view.ready().await;
    let router = server::webhook_router(Arc::new(admission));
    // An eviction of a serving pod drains it; a DELETE of a pod nothing serves passes untouched.
    let drained = answer(&router, &eviction("m-1", &pods[0], DRAINER)).await?;
    assert!(drained.get("patch").is_some(), "{drained}");
    let mut unexposed = pods[1].clone();
    unexposed.labels_mut().clear();
    let passed = answer(&router, &delete("m-2", &unexposed, DRAINER)).await?;
    assert!(allowed_as_is(&passed), "{passed}");
    let bad = router
        .clone()
        .oneshot(
            Request::post("/pods/delete")
                .header("content-type", "application/json")
                .body(Body::from("{\"kind\": \"AdmissionReview\"}"))?,
        )
        .await?;
    assert!(bad.status().is_client_error(), "{}", bad.status());
    let text = metrics.encode();
    let p = "pod_graceful_drain_admission_requests_total";
    for (labels, want) in [
        (
            r#"{operation="evict",answer="eviction_dry_run",reason="drain"}"#,
            1.0,
        ),
        (
            r#"{operation="delete",answer="allow",reason="not_exposed"}"#,
            1.0,
        ),
        (
            r#"{operation="unknown",answer="bad_request",reason="bad_review"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            series(&text, &format!("{p}{labels}")),
            want,
            "{p}{labels} in:\n{text}"
        );
    }
    assert_eq!(
        series(
            &text,
            r#"pod_graceful_drain_admission_duration_seconds_count{operation="evict"}"#
        ),
        1.0,
        "{text}"
    );
    // The drain's event is counted as it is sent.
    assert_eq!(
        series(
            &text,
            r#"pod_graceful_drain_events_total{reason="Draining",type="Normal"}"#
        ),
        1.0,
        "{text}"
    );
    Ok(())
}
