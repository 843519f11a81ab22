//! The product's writes to pods, on the real cluster: the isolating patch takes a serving pod out
//! of its Service and its ReplicaSet (a replacement starts at once) while it keeps running and
//! serving; writes against a stale or replaced pod are refused (409) and change nothing; deleting
//! a pod that is already gone counts as done.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pgd_harness::fetch::{self, Traffic};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, objects};
use pod_graceful_drain::core::decision::{
    self, Answer, Decision, Facts, LongDrain, Operation, Origin, PodView, Policy, Request,
};
use pod_graceful_drain::core::facts;
use pod_graceful_drain::core::isolation::Selecting;
use pod_graceful_drain::core::keys;
use pod_graceful_drain::core::pod_state::PodState;
use pod_graceful_drain::core::schedule::{self, DrainBounds, SavedDeleteOptions};
use pod_graceful_drain::k8s::Outcome;
use pod_graceful_drain::k8s::pod_writes::{self, Version};
use serde_json::json;

const RS_USER: &str = "system:serviceaccount:kube-system:replicaset-controller";

fn policy() -> Policy {
    Policy {
        excluded_namespaces: Default::default(),
        namespace_selector: None,
        own_user: "system:serviceaccount:pgd:pod-graceful-drain".into(),
        controller_users: [RS_USER.to_string()].into(),
        bounds: DrainBounds {
            default: Duration::from_secs(90),
            min: Duration::from_secs(5),
            max: Duration::from_secs(900),
        },
        hold_budget: Duration::from_secs(25),
        long_drain: LongDrain::Deny,
    }
}

#[tokio::test]
async fn isolating_patch_takes_a_serving_pod_out_of_service_and_controller() -> anyhow::Result<()> {
    let env = TestEnv::new("isolate").await?;
    env.api::<Service>()
        .create(&PostParams::default(), &objects::service("web"))
        .await?;
    let deployments: Api<Deployment> = env.api();
    deployments
        .create(&PostParams::default(), &objects::demo_deployment("web", 2))
        .await?;
    wait::until(
        &deployments,
        "web",
        "2 replicas Available",
        Duration::from_secs(90),
        conditions::deployment_complete,
    )
    .await?;
    env.service_url("web", 2).await?;

    // Gather the facts as the webhook will, from live objects.
    let pods: Api<Pod> = env.api();
    let pod = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .into_iter()
        .next()
        .expect("a pod");
    let name = pod.name_any();
    let service = env.api::<Service>().get("web").await?;
    let service_selector = facts::service_selector(&service).expect("a selector");
    let (kind, rs_name) = facts::controller_ref(&pod).expect("a controller");
    assert_eq!(kind, "ReplicaSet");
    let rs = env.api::<ReplicaSet>().get(rs_name).await?;
    let rs_selector =
        facts::controller_selector(&rs.spec.as_ref().expect("spec").selector)?.expect("a selector");
    let labels = pod.labels().clone();
    let annotations = pod.annotations().clone();
    let view = PodView {
        namespace: &env.namespace,
        name: &name,
        state: PodState::of(&pod),
        labels: &labels,
        annotations: &annotations,
        own: false,
        namespace_terminating: false,
        namespace_selected: true,
        mark: &pod_graceful_drain::core::seal::Mark::Unmarked,
    };
    let found = Facts {
        services: vec![Selecting {
            what: "Service web".into(),
            selector: service_selector,
        }],
        controller: Some(Selecting {
            what: format!("ReplicaSet {rs_name}"),
            selector: rs_selector,
        }),
        budgets: vec![],
    };
    let request = Request {
        operation: Operation::Delete(SavedDeleteOptions::default()),
        dry_run: false,
        user: RS_USER,
        origin: Origin::ApiServer,
        traceparent: None,
    };
    let Decision::Drain {
        isolate: Some(plan),
        answer: Answer::Deny(_),
        ..
    } = decision::decide(&policy(), &request, &view, &found, Timestamp::now())
    else {
        panic!("expected an isolating deny for a controller's delete");
    };
    let version = Version::of(&pod).expect("uid and resourceVersion");
    let outcome =
        pod_writes::isolate(&pods, &name, &version, &plan, "test", "v1.test.seal.tag").await?;
    assert_eq!(outcome, Outcome::Done);

    // The ReplicaSet replaces it at once: two ready owned pods again, neither of them this one.
    wait::until_list(
        &pods,
        watcher::Config::default().labels("app=web"),
        "a replacement for the isolated pod",
        Duration::from_secs(60),
        |ps: &[Pod]| {
            ps.iter().filter(|p| conditions::pod_ready(p)).count() == 2
                && ps.iter().all(|p| p.name_any() != name)
        },
    )
    .await?;
    // The Service no longer routes to it.
    let slices: Api<EndpointSlice> = env.api();
    wait::until_list(
        &slices,
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
        "the isolated pod to leave the Service's endpoints",
        Duration::from_secs(30),
        |s: &[EndpointSlice]| {
            let targets: Vec<String> = s
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .filter_map(|e| e.target_ref.as_ref()?.name.clone())
                .collect();
            targets.len() == 2 && !targets.contains(&name)
        },
    )
    .await?;
    // The controller lets go of it (no owner), and it keeps running with its other labels.
    let released = wait::until(
        &pods,
        &name,
        "the ReplicaSet to release the isolated pod",
        Duration::from_secs(30),
        |p: Option<&Pod>| p.is_some_and(|p| p.owner_references().is_empty()),
    )
    .await?
    .expect("the pod");
    assert!(conditions::pod_ready(&released), "the isolated pod stopped");
    let labels = released.labels();
    assert!(!labels.contains_key("app"), "app label still there");
    assert_eq!(
        labels.get(keys::DRAINING_LABEL).map(String::as_str),
        Some("test")
    );
    assert!(
        labels.contains_key("pod-template-hash"),
        "labels outside the isolated set must stay: {labels:?}"
    );
    let a = released.annotations();
    assert_eq!(a.get(keys::REQUESTED_BY).map(String::as_str), Some(RS_USER));
    assert_eq!(
        a.get(keys::REMOVED_LABELS).map(String::as_str),
        Some(r#"{"app":"web"}"#)
    );
    // And it still serves, straight to its pod IP.
    let ip = released
        .status
        .and_then(|s| s.pod_ip)
        .expect("the pod's IP");
    let url = format!("http://{ip}:8080/");
    let results = fetch::fetch(
        &pods,
        "direct",
        Traffic {
            url: &url,
            node: None,
            count: 5,
            interval: Duration::from_millis(50),
        },
    )
    .await?;
    assert!(
        results
            .iter()
            .all(|r| r.ok() && r.served_by.as_deref() == Some(name.as_str())),
        "the isolated pod did not answer: {results:?}"
    );
    Ok(())
}

#[tokio::test]
async fn stale_writes_are_refused_and_gone_pods_count_as_done() -> anyhow::Result<()> {
    let env = TestEnv::new("guarded").await?;
    let pods: Api<Pod> = env.api();
    let created = pods
        .create(
            &PostParams::default(),
            &objects::demo_pod("victim", json!({"app": "x"})),
        )
        .await?;
    // The kubelet keeps updating a starting pod's status (each update a new resourceVersion): let
    // it settle, so that the only change below is the one this test makes.
    let uid = created.uid().expect("uid");
    let settled = wait::until(
        &pods,
        "victim",
        "the pod to be ready",
        Duration::from_secs(60),
        |p: Option<&Pod>| p.is_some_and(conditions::pod_ready),
    )
    .await?
    .expect("the pod");
    assert_eq!(settled.uid().as_deref(), Some(uid.as_str()));
    let stale = Version::of(&settled).expect("version");
    // Someone else changes the pod.
    let changed = pods
        .patch(
            "victim",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await?;
    let current = Version::of(&changed).expect("version");
    assert_ne!(stale, current);

    let plan = decision::Isolation {
        remove: ["app".to_string()].into(),
        schedule: schedule::Schedule {
            started_at: Timestamp::now(),
            delete_at: Timestamp::now(),
            requested_by: "test".into(),
            reason: schedule::Reason::Delete,
            delete_options: SavedDeleteOptions::default(),
            traceparent: None,
            removed_labels: [("app".to_string(), "x".to_string())].into(),
        },
    };
    assert_eq!(
        pod_writes::isolate(&pods, "victim", &stale, &plan, "test", "v1.test.seal.tag").await?,
        Outcome::Conflict
    );
    let untouched = pods.get("victim").await?;
    assert!(
        !untouched.labels().contains_key(keys::DRAINING_LABEL),
        "a refused patch changed the pod"
    );
    assert_eq!(
        pod_writes::isolate(&pods, "victim", &current, &plan, "test", "v1.test.seal.tag").await?,
        Outcome::Done
    );

    let now = Version::of(&pods.get("victim").await?).expect("version");
    let options = SavedDeleteOptions {
        grace_period_seconds: Some(1),
        propagation_policy: None,
    };
    assert_eq!(
        pod_writes::delete(&pods, "victim", &current, &options).await?,
        Outcome::Conflict,
        "a delete with a stale resourceVersion must be refused"
    );
    let wrong_uid = Version {
        uid: "00000000-0000-0000-0000-000000000000".into(),
        ..now.clone()
    };
    assert_eq!(
        pod_writes::delete(&pods, "victim", &wrong_uid, &options).await?,
        Outcome::Conflict,
        "a delete aimed at another pod of the same name must be refused"
    );
    assert_eq!(
        pod_writes::delete(&pods, "victim", &now, &options).await?,
        Outcome::Done
    );
    wait::until(
        &pods,
        "victim",
        "the pod to be gone",
        Duration::from_secs(60),
        kube::runtime::wait::conditions::is_deleted(&uid),
    )
    .await?;
    assert_eq!(
        pod_writes::delete(&pods, "victim", &now, &options).await?,
        Outcome::Gone
    );
    Ok(())
}
