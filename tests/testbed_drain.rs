//! Two nodes: `kubectl drain` of one moves the demo pods to the other, requests through the
//! Service reach pods on both nodes before the drain and keep being answered during and after it.
//! Needs a cluster with two schedulable nodes (the testbed brings up two by default).
//! Alone in its test binary: a drain disturbs every pod on the drained node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pgd_harness::drain::drain_node;
use pgd_harness::fetch::{self, FetchPod, Traffic};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, nodes_ready_schedulable, objects};
use serde_json::json;

fn node_of(pods: &[Pod]) -> BTreeMap<String, String> {
    pods.iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            Some((p.name_any(), node))
        })
        .collect()
}

#[tokio::test]
async fn drain_moves_pods_and_the_service_keeps_answering() -> anyhow::Result<()> {
    let env = TestEnv::new("drain").await?;
    let nodes = nodes_ready_schedulable(&env.client).await?;
    assert!(
        nodes.len() >= 2,
        "this test needs 2 schedulable nodes, the cluster has {nodes:?} (testbed/up 2)"
    );
    let (keep, drain) = (nodes[0].clone(), nodes[1].clone());

    // 4 replicas spread over the nodes (a cordoned node no longer counts as a domain), at most
    // one disrupted at a time.
    let spread = json!({
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
            "labelSelector": {"matchLabels": {"app": "web"}}
        }],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [&keep, &drain]}
            ]}]
        }}}
    });
    env.api::<PodDisruptionBudget>()
        .create(
            &PostParams::default(),
            &objects::pdb("web", json!({"maxUnavailable": 1})),
        )
        .await?;
    env.api::<Service>()
        .create(&PostParams::default(), &objects::service("web"))
        .await?;
    let deployments: Api<Deployment> = env.api();
    deployments
        .create(
            &PostParams::default(),
            &objects::deployment_with("web", 4, spread),
        )
        .await?;
    wait::until(
        &deployments,
        "web",
        "4 replicas Available",
        Duration::from_secs(90),
        conditions::deployment_complete,
    )
    .await?;
    let pods: Api<Pod> = env.api();
    let before = pods.list(&ListParams::default().labels("app=web")).await?;
    let placement = node_of(&before.items);
    let per_node: BTreeSet<&String> = placement.values().collect();
    assert_eq!(
        per_node.len(),
        2,
        "pods should be spread over both nodes: {placement:?}"
    );

    let url = env.service_url("web", 4).await?;
    let from_keep = |count, interval_ms| Traffic {
        url: &url,
        node: Some(&keep),
        count,
        interval: Duration::from_millis(interval_ms),
    };

    // Before: from the node that stays, the Service reaches pods on both nodes.
    let results = fetch::fetch(&pods, "before", from_keep(40, 25)).await?;
    assert!(
        results.iter().all(|r| r.ok()),
        "requests failed before the drain: {:?}",
        results.iter().filter(|r| !r.ok()).collect::<Vec<_>>()
    );
    let nodes_served: BTreeSet<&String> = results
        .iter()
        .filter_map(|r| placement.get(r.served_by.as_ref()?))
        .collect();
    assert_eq!(
        nodes_served.len(),
        2,
        "answers came only from {nodes_served:?}"
    );

    // During: traffic from the node that stays while the other is drained.
    let during = FetchPod::start(&pods, "during", from_keep(300, 50)).await?;
    wait::until(
        &pods,
        "during",
        "the traffic pod to run",
        Duration::from_secs(30),
        |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph != "Pending")
        },
    )
    .await?;
    let drained = drain_node(env.target, &drain, "role!=fetch")?;
    let drain_time = drained.took;
    eprintln!("kubectl drain {drain} took {drain_time:?}");

    // After: every replica is Ready on the node that stays.
    let moved = wait::until_list(
        &pods,
        watcher::Config::default().labels("app=web"),
        "4 ready replicas, all on the remaining node",
        Duration::from_secs(90),
        |pods: &[Pod]| {
            let ready: Vec<_> = pods.iter().filter(|p| conditions::pod_ready(p)).collect();
            ready.len() == 4
                && ready
                    .iter()
                    .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()) == Some(&keep))
        },
    )
    .await?;
    let moved_names: BTreeSet<String> = moved.iter().map(|p| p.name_any()).collect();

    let during = during.results().await?;
    let failed = during.iter().filter(|r| !r.ok()).count();
    eprintln!(
        "during the drain: {} requests, {failed} failed (no mitigation: failures here are what the product removes)",
        during.len()
    );
    assert!(
        during.iter().filter(|r| r.ok()).count() > during.len() / 2,
        "the Service stopped answering during the drain"
    );

    let after = fetch::fetch(&pods, "after", from_keep(20, 25)).await?;
    assert!(
        after.iter().all(|r| r.ok()),
        "requests failed after the drain: {after:?}"
    );
    assert!(
        after.iter().all(|r| r
            .served_by
            .as_ref()
            .is_some_and(|p| moved_names.contains(p))),
        "answers after the drain came from pods not on {keep}: {after:?}"
    );
    Ok(())
}
