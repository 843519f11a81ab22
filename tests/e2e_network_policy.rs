//! The chart's NetworkPolicy, enforced for real (the testbed's NetworkPolicy agent, kube-router in
//! firewall mode, one per node): a pod of another namespace reaches the webhook port and the health
//! port before the policy is on and neither after, while the API server's calls are still served
//! and the kubelet's probes keep the replica ready.
//!
//! The replica is pinned to node 2: the API server runs on node 1 and reaches it from the node's
//! address (10.200.0.1), and the agent never filters a node's traffic to its own pods.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, PostParams};
use kube::{Api, ResourceExt};
use pgd_harness::product::{Install, Options};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, objects};
use pod_graceful_drain::core::keys;
use serde_json::json;

const REPLICA_NODE: &str = "pgd-node-2";
const PROBE_NODE: &str = "pgd-node-1";
const API_SERVER_SOURCE: &str = "10.200.0.1/32";
const NODES: &str = "10.200.0.0/24";

/// What a probe pod saw of one URL.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    /// Something answered: an HTTP status, or a TLS server (whose certificate the probe does not
    /// trust: that is the webhook's port open).
    Reached,
    /// Refused or timed out: the policy dropped or rejected it.
    Blocked,
}

/// Runs `demo-app fetch` once against each URL from a pod on `PROBE_NODE` in `env`'s namespace.
async fn probe(env: &TestEnv, name: &str, urls: &[String]) -> anyhow::Result<Vec<Reach>> {
    let api: Api<Pod> = env.api();
    // The demo image has no shell: one container per URL, run in order as init containers.
    let containers: Vec<serde_json::Value> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            json!({"name": format!("probe-{i}"), "image": objects::DEMO_IMAGE,
                   "imagePullPolicy": "IfNotPresent",
                   "args": ["fetch", "-url", u, "-count", "1", "-timeout", "3s"],
                   "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                       "capabilities": {"drop": ["ALL"]}}})
        })
        .collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "nodeSelector": {"kubernetes.io/hostname": PROBE_NODE},
                 "initContainers": containers[..containers.len() - 1],
                 "containers": [containers[containers.len() - 1].clone()]}
    }))?;
    api.create(&PostParams::default(), &pod).await?;
    wait::until(
        &api,
        name,
        "the probe pod to finish",
        Duration::from_secs(90),
        conditions::pod_finished,
    )
    .await?;
    let mut seen = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let log = api
            .logs(
                name,
                &LogParams {
                    container: Some(format!("probe-{i}")),
                    ..LogParams::default()
                },
            )
            .await?;
        let line = log
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_default()
            .to_string();
        let result: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let status = result["status"].as_u64().unwrap_or(0);
        let error = result["error"].as_str().unwrap_or_default();
        let reached = status != 0
            || [
                "certificate",
                "x509",
                "tls:",
                "malformed HTTP",
                "EOF",
                "reset by peer",
            ]
            .iter()
            .any(|s| error.contains(s));
        seen.push(if reached {
            Reach::Reached
        } else {
            assert!(
                ["refused", "timeout", "deadline", "unreachable"]
                    .iter()
                    .any(|s| error.contains(s)),
                "{url} neither answered nor was refused: {log}"
            );
            Reach::Blocked
        });
    }
    Ok(seen)
}

#[tokio::test]
async fn the_network_policy_lets_only_the_api_server_reach_the_webhook_and_the_nodes_the_health_port()
-> anyhow::Result<()> {
    let env = TestEnv::new("netpol").await?;
    let install = Install::new(
        &env,
        Options {
            replicas: 1,
            values: vec![(
                "nodeSelector.kubernetes\\.io/hostname".into(),
                REPLICA_NODE.into(),
            )],
            ..Options::fast()
        },
    )
    .await?;
    let (replica, ip) = install.replica_with_ip().await?;
    assert_eq!(
        replica.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(REPLICA_NODE)
    );
    let urls = [
        format!("https://{ip}:9443/"),
        format!("http://{ip}:8081/healthz"),
    ];
    // Another namespace, no policy yet: both ports answer.
    let elsewhere = TestEnv::new("netpol-elsewhere").await?;
    assert_eq!(
        probe(&elsewhere, "before", &urls).await?,
        vec![Reach::Reached, Reach::Reached],
        "without the policy the probe must reach both ports (else the test proves nothing)"
    );

    install
        .run_helm(&[
            "upgrade",
            &install.release,
            pgd_harness::product::chart_dir().to_str().unwrap(),
            "--reuse-values",
            "--wait",
            "--set",
            "networkPolicy.enabled=true",
            "--set-json",
            &format!("networkPolicy.apiServerCIDRs=[\"{API_SERVER_SOURCE}\"]"),
            "--set-json",
            &format!("networkPolicy.healthCIDRs=[\"{NODES}\"]"),
        ])
        .await?;
    assert_eq!(
        probe(&elsewhere, "after", &urls).await?,
        vec![Reach::Blocked, Reach::Blocked],
        "a pod of another namespace reached the replica through the policy"
    );

    // The API server still reaches the webhook (a new connection: the policy is in force).
    let pods = env.serve_demo("web", 2, json!({})).await?;
    let api: Api<Pod> = env.api();
    let victim = pods[0].name_any();
    api.evict(&victim, &Default::default()).await?;
    let now = api.get(&victim).await?;
    assert!(
        now.labels().contains_key(keys::DRAINING_LABEL),
        "the API server's eviction was not served through the policy: {:?}",
        now.labels()
    );
    // And the kubelet's probes keep the replica ready.
    let replica_now = install.replicas().await?.remove(0);
    assert_eq!(replica_now.uid(), replica.uid(), "the replica was replaced");
    assert!(
        conditions::pod_ready(&replica_now),
        "the replica is not ready"
    );
    Ok(())
}
