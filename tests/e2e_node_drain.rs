//! `kubectl drain` of one node of a two-node testbed with pod-graceful-drain installed: the drain
//! completes, each drained pod keeps serving until its delete-at while its replacement starts on
//! the other node. Alone in its test binary: a drain disturbs every pod on the node.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pgd_harness::drain::drain_node;
use pgd_harness::product::{Install, Options};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, nodes_ready_schedulable, objects};
use pod_graceful_drain::core::notice::EventReason;
use serde_json::json;

#[tokio::test]
async fn kubectl_drain_completes_and_drained_pods_serve_until_delete_at() -> anyhow::Result<()> {
    let env = TestEnv::new("node-drain").await?;
    let nodes = nodes_ready_schedulable(&env.client).await?;
    assert!(
        nodes.len() >= 2,
        "needs two schedulable nodes, has {nodes:?}"
    );
    let (keep, drain) = (nodes[0].clone(), nodes[1].clone());
    let _install = Install::new(&env, Options::fast()).await?;
    let pp = PostParams::default();
    env.api::<PodDisruptionBudget>()
        .create(&pp, &objects::pdb("web", json!({"maxUnavailable": 1})))
        .await?;
    let spread = json!({
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
            "labelSelector": {"matchLabels": {"app": "web"}}}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [&keep, &drain]}]}]}}}
    });
    let pods: Api<Pod> = env.api();
    let on_drained: Vec<Pod> = env
        .serve_demo("web", 4, spread)
        .await?
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(&drain))
        .collect();
    assert!(!on_drained.is_empty(), "no app pod on {drain}");

    // Pods an earlier test left draining on the node (released by their controller, in a
    // namespace being deleted) would stop `kubectl drain` ("declare no controller": issue 15):
    // they are not this test's, so it starts once they are gone.
    leftovers_gone(&env, &drain).await?;
    let drained = drain_node(
        env.target,
        &drain,
        // The webhook's own replicas are left where they are: this test follows the app.
        "app.kubernetes.io/name!=pod-graceful-drain",
    )?;
    let took = drained.took;
    eprintln!("kubectl drain {drain} with pod-graceful-drain (drain 8 s): {took:?}");

    // Each drained pod was isolated, served until its delete-at, and is gone now; replacements
    // run on the node that stays.
    let events = kube::Api::<k8s_openapi::api::events::v1::Event>::namespaced(
        env.client.clone(),
        &env.namespace,
    );
    let mut deleted_at: BTreeMap<String, Timestamp> = BTreeMap::new();
    for e in events.list(&ListParams::default()).await?.items {
        if e.reason.as_deref() == Some(EventReason::Deleted.as_str())
            && let (Some(name), Some(t)) = (e.regarding.and_then(|r| r.name), e.event_time)
        {
            deleted_at.insert(name, t.0);
        }
    }
    for p in &on_drained {
        assert!(
            deleted_at.contains_key(&p.name_any()),
            "{} was not deleted by pod-graceful-drain (events: {deleted_at:?})",
            p.name_any()
        );
    }
    wait::until_list(
        &pods,
        watcher::Config::default().labels("app=web"),
        "4 ready replicas on the remaining node",
        Duration::from_secs(60),
        |ps: &[Pod]| {
            let ready: Vec<_> = ps.iter().filter(|p| conditions::pod_ready(p)).collect();
            ready.len() == 4
                && ready
                    .iter()
                    .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(&keep))
        },
    )
    .await?;
    assert!(
        took >= Duration::from_secs(7),
        "the drain finished before the pods' delete-at ({took:?}): they were not kept serving"
    );
    Ok(())
}

/// Waits until no pod of another namespace on `node` is draining.
async fn leftovers_gone(env: &TestEnv, node: &str) -> anyhow::Result<()> {
    let all: Api<Pod> = Api::all(env.client.clone());
    let params = ListParams::default()
        .labels(pod_graceful_drain::core::keys::DRAINING_LABEL)
        .fields(&format!("spec.nodeName={node}"));
    pgd_harness::wait::poll(
        "earlier tests' draining pods to leave the node",
        Duration::from_secs(120),
        Duration::from_millis(500),
        async || {
            let left = all.list_metadata(&params).await?;
            Ok(left
                .items
                .iter()
                .all(|p| p.namespace().as_deref() == Some(env.namespace.as_str()))
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}
