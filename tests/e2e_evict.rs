//! Evictions (what `kubectl drain` and autoscalers send) through pod-graceful-drain: an allowed
//! eviction isolates the pod, spends the budget exactly as the API server would and succeeds while
//! the pod keeps serving until its delete-at; a forbidden one is refused with 429 untouched; ten
//! parallel evictions against a budget of one disrupt exactly one pod. Pods that are not exposed,
//! dry-runs and opted-out pods pass at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use pgd_harness::drained::draining;
use pgd_harness::product::{Install, Options, Scene};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, objects};
use pod_graceful_drain::core::keys;
use serde_json::json;

async fn app(env: &TestEnv, replicas: i32, budget: serde_json::Value) -> anyhow::Result<Vec<Pod>> {
    let pdbs: Api<PodDisruptionBudget> = env.api();
    pdbs.create(&PostParams::default(), &objects::pdb("web", budget))
        .await?;
    let pods = env.serve_demo("web", replicas, json!({})).await?;
    // The eviction handler trusts the budget only once its controller has counted the pods.
    wait::until(
        &pdbs,
        "web",
        "the budget to be current",
        Duration::from_secs(60),
        move |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| Some((p.metadata.generation, p.status.as_ref()?)))
                .is_some_and(|(g, s)| s.observed_generation == g && s.current_healthy == replicas)
        },
    )
    .await?;
    Ok(pods)
}

/// What most tests here start from: a [`Scene`] (the product installed with fast options) whose
/// demo app runs under the budget `budget`, created before its pods and current once this returns.
async fn budgeted_scene(
    name: &str,
    replicas: i32,
    budget: serde_json::Value,
) -> anyhow::Result<Scene> {
    let env = TestEnv::new(name).await?;
    let install = Install::new(&env, Options::fast()).await?;
    let pods = app(&env, replicas, budget).await?;
    Ok(Scene { install, env, pods })
}

#[tokio::test]
async fn an_allowed_eviction_isolates_spends_the_budget_and_keeps_the_pod_serving()
-> anyhow::Result<()> {
    let scene = budgeted_scene("evict", 3, json!({"maxUnavailable": 1})).await?;
    let api = scene.pods_api();
    let victim = scene.pods[0].name_any();
    api.evict(&victim, &EvictParams::default()).await?;
    let now = api.get(&victim).await?;
    assert!(
        draining(&now),
        "the evicted pod was not isolated: {:?}",
        now.labels()
    );
    assert!(
        now.metadata.deletion_timestamp.is_none(),
        "the eviction deleted the pod at once"
    );
    assert!(
        conditions::pod_ready(&now),
        "the evicted pod stopped serving"
    );
    assert_eq!(now.annotations()[keys::REASON], "eviction");
    // (The disruption recorded in the budget's disruptedPods is dropped by the disruption
    // controller as soon as it sees the pod no longer selected; the race test below shows the
    // budget is spent exactly once.)
    // A second eviction of the same pod gets the same answer.
    api.evict(&victim, &EvictParams::default()).await?;
    // And the deleter removes it at its delete-at.
    let uid = now.uid().unwrap();
    wait::until(
        &api,
        &victim,
        "the evicted pod to be deleted at its delete-at",
        Duration::from_secs(40),
        kube::runtime::wait::conditions::is_deleted(&uid),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn parallel_evictions_spend_a_budget_of_one_exactly_once_and_the_rest_get_429()
-> anyhow::Result<()> {
    let scene = budgeted_scene("evict-race", 10, json!({"maxUnavailable": 1})).await?;
    let api = scene.pods_api();
    let tries = scene.pods.iter().map(|p| {
        let api = api.clone();
        let name = p.name_any();
        async move {
            (
                name.clone(),
                api.evict(&name, &EvictParams::default()).await,
            )
        }
    });
    let results = futures::future::join_all(tries).await;
    let allowed: Vec<&String> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| n)
        .collect();
    let refused: Vec<u16> = results
        .iter()
        .filter_map(|(_, r)| match r {
            Err(kube::Error::Api(s)) => Some(s.code),
            _ => None,
        })
        .collect();
    eprintln!(
        "10 parallel evictions, budget 1: {} allowed, refused with {refused:?}",
        allowed.len()
    );
    assert_eq!(
        allowed.len(),
        1,
        "a budget of one was spent {} times",
        allowed.len()
    );
    assert!(
        refused.iter().all(|c| *c == 429),
        "refusals other than 429: {refused:?}"
    );
    let now = api.list(&ListParams::default()).await?.items;
    assert_eq!(
        now.iter().filter(|p| draining(p)).count(),
        1,
        "exactly one pod drains"
    );
    Ok(())
}

#[tokio::test]
async fn a_forbidden_eviction_gets_429_and_changes_nothing() -> anyhow::Result<()> {
    let scene = budgeted_scene("evict-no", 2, json!({"minAvailable": 2})).await?;
    let api = scene.pods_api();
    match api
        .evict(&scene.pods[0].name_any(), &EvictParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 429, "{s:?}"),
        other => panic!("the eviction was not refused: {other:?}"),
    }
    let now = api.get(&scene.pods[0].name_any()).await?;
    assert!(!draining(&now), "a refused eviction isolated the pod");
    assert_eq!(now.labels().get("app").map(String::as_str), Some("web"));
    Ok(())
}

#[tokio::test]
async fn pods_not_serving_dry_runs_and_opted_out_pods_pass_at_once() -> anyhow::Result<()> {
    let scene = budgeted_scene("pass", 3, json!({"maxUnavailable": 3})).await?;
    let api = scene.pods_api();
    let quick = Duration::from_secs(3);

    // A dry-run delete.
    let t = Instant::now();
    api.delete(
        &scene.pods[0].name_any(),
        &DeleteParams {
            dry_run: true,
            ..DeleteParams::default()
        },
    )
    .await?;
    assert!(t.elapsed() < quick);
    assert!(!draining(&api.get(&scene.pods[0].name_any()).await?));

    // An opted-out pod.
    let opted = scene.pods[1].name_any();
    api.patch(
        &opted,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {keys::OPT_OUT: "true"}}})),
    )
    .await?;
    let t = Instant::now();
    api.delete(&opted, &DeleteParams::default()).await?;
    assert!(t.elapsed() < quick, "an opted-out pod was held");
    let gone = api.get_opt(&opted).await?;
    assert!(gone.is_none_or(|p| p.metadata.deletion_timestamp.is_some() && !draining(&p)));

    // A pod that serves no Service.
    let lonely = api
        .create(
            &PostParams::default(),
            &objects::demo_pod("lonely", json!({"role": "batch"})),
        )
        .await?;
    wait::until(
        &api,
        "lonely",
        "the lonely pod to be ready",
        Duration::from_secs(60),
        |p: Option<&Pod>| p.is_some_and(conditions::pod_ready),
    )
    .await?;
    let t = Instant::now();
    api.delete("lonely", &DeleteParams::default()).await?;
    assert!(t.elapsed() < quick, "a pod without Service was held");
    let _ = lonely;
    Ok(())
}

#[tokio::test]
async fn excluded_namespaces_pass_at_once() -> anyhow::Result<()> {
    let env = TestEnv::new("excluded").await?;
    let opts = Options {
        excluded_namespaces: vec![env.namespace.clone()],
        ..Options::fast()
    };
    let _install = Install::new(&env, opts).await?;
    let pods = app(&env, 2, json!({"maxUnavailable": 2})).await?;
    let api: Api<Pod> = env.api();
    let t = Instant::now();
    api.delete(&pods[0].name_any(), &DeleteParams::default())
        .await?;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a pod of an excluded namespace was held"
    );
    api.evict(&pods[1].name_any(), &EvictParams::default())
        .await?;
    for p in &pods {
        let now = api.get_opt(&p.name_any()).await?;
        assert!(
            now.is_none_or(|p| !draining(&p)),
            "a pod of an excluded namespace was drained"
        );
    }
    Ok(())
}

/// `kubectl drain --dry-run=server` puts the dry-run inside the Eviction's deleteOptions, not in
/// the request's query (so the AdmissionReview's `dryRun` is false): nothing may change, neither
/// the pod's labels nor the budget, and the pod is never deleted.
#[tokio::test]
async fn a_dry_run_inside_the_eviction_changes_nothing() -> anyhow::Result<()> {
    let scene = budgeted_scene("evict-dry", 3, json!({"maxUnavailable": 1})).await?;
    let api = scene.pods_api();
    let victim = scene.pods[0].name_any();
    // As kubectl sends it (kube's EvictParams names the field delete_options, which the API server
    // ignores, so the body is written out here).
    let eviction = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": victim, "namespace": scene.env.namespace},
        "deleteOptions": {"dryRun": ["All"]}
    });
    let _: serde_json::Value = api
        .create_subresource("eviction", &victim, &PostParams::default(), &eviction)
        .await?;
    let now = api.get(&victim).await?;
    assert!(
        !draining(&now),
        "a dry-run eviction isolated the pod: {:?}",
        now.labels()
    );
    assert_eq!(now.labels(), scene.pods[0].labels());
    assert!(now.metadata.deletion_timestamp.is_none());
    let disrupted =
        objects::disrupted_pods(&scene.env.api::<PodDisruptionBudget>().get("web").await?);
    assert!(
        disrupted.is_empty(),
        "a dry-run eviction spent the budget: {disrupted:?}"
    );
    Ok(())
}

/// The budgets an eviction must respect are read when it arrives: one created just before (not
/// yet counted by its controller, so the API server itself would refuse with 429) is honoured,
/// and the pod is left untouched.
#[tokio::test]
async fn a_budget_created_just_before_an_eviction_is_honoured() -> anyhow::Result<()> {
    let Scene {
        env,
        install: _install,
        pods,
    } = Scene::new("evict-new-pdb", Options::fast(), 3).await?;
    let api: Api<Pod> = env.api();
    let victim = pods[0].name_any();
    env.api::<PodDisruptionBudget>()
        .create(
            &PostParams::default(),
            &objects::pdb("web", json!({"minAvailable": 3})),
        )
        .await?;
    let refused = api.evict(&victim, &EvictParams::default()).await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 429),
        "an eviction the budget forbids went ahead: {refused:?}"
    );
    let now = api.get(&victim).await?;
    assert!(!draining(&now), "the pod was isolated: {:?}", now.labels());
    assert!(now.metadata.deletion_timestamp.is_none());
    Ok(())
}
