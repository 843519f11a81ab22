//! The cluster the product will be tested on behaves like a real one: nodes Ready, Deployments
//! served through ClusterIP Services by kube-proxy, deleted pods sent SIGTERM and replaced by their
//! ReplicaSet, admission webhooks called through a Service, PodDisruptionBudgets enforced on
//! eviction. Runs on the testbed (brought up on demand) or on the cluster in PGD_TEST_KUBECONFIG.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, EvictParams, ListParams, LogParams, PostParams};
use kube::runtime::wait::conditions::is_deleted;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use pgd_harness::fetch::{self, Traffic};
use pgd_harness::wait::{self, conditions};
use pgd_harness::{TestEnv, objects};
use serde_json::json;

const ROLLOUT: Duration = Duration::from_secs(90);

async fn deploy_demo(env: &TestEnv, name: &str, replicas: i32) -> anyhow::Result<Vec<Pod>> {
    let deployments: Api<Deployment> = env.api();
    deployments
        .create(
            &PostParams::default(),
            &objects::demo_deployment(name, replicas),
        )
        .await?;
    wait::until(
        &deployments,
        name,
        &format!("deployment {name} to be Available"),
        ROLLOUT,
        conditions::deployment_complete,
    )
    .await?;
    let pods: Api<Pod> = env.api();
    let list = pods
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(conditions::pod_ready)
        .collect())
}

#[tokio::test]
async fn every_node_is_ready() -> anyhow::Result<()> {
    let env = TestEnv::new("nodes").await?;
    let nodes = Api::<Node>::all(env.client.clone())
        .list(&ListParams::default())
        .await?;
    assert!(!nodes.items.is_empty(), "the cluster has no node");
    for node in &nodes.items {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        assert_eq!(
            ready.as_deref(),
            Some("True"),
            "node {} is not Ready",
            node.name_any()
        );
    }
    if env.target.is_testbed() {
        // The testbed labels its nodes so tests can pin pods.
        for node in &nodes.items {
            assert!(
                node.labels()
                    .contains_key("testbed.pod-graceful-drain.io/node"),
                "node {} lacks the testbed node label",
                node.name_any()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn deployment_answers_200_through_its_cluster_ip() -> anyhow::Result<()> {
    let env = TestEnv::new("serve").await?;
    let services: Api<Service> = env.api();
    services
        .create(&PostParams::default(), &objects::service("web"))
        .await?;
    let pods = deploy_demo(&env, "web", 3).await?;
    assert_eq!(pods.len(), 3, "3 ready replicas expected");
    let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();

    let url = env.service_url("web", 3).await?;
    let traffic = Traffic {
        url: &url,
        node: None,
        count: 30,
        interval: Duration::from_millis(50),
    };
    let results = fetch::fetch(&env.api(), "client", traffic).await?;
    assert_eq!(results.len(), 30);
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "requests to {url} failed: {failed:?}");
    let served: BTreeSet<String> = results.iter().filter_map(|r| r.served_by.clone()).collect();
    assert!(
        served.is_subset(&names),
        "answers from pods that are not the deployment's: {served:?} vs {names:?}"
    );
    // kube-proxy spreads new connections at random: 30 of them all landing on one of 3 pods
    // would mean the Service is not load-balancing.
    assert!(
        served.len() >= 2,
        "all answers came from {served:?}: the Service does not spread"
    );
    Ok(())
}

#[tokio::test]
async fn deleted_pod_gets_sigterm_and_is_replaced() -> anyhow::Result<()> {
    let env = TestEnv::new("replace").await?;
    let pods = deploy_demo(&env, "web", 2).await?;
    let victim = pods[0].clone();
    let victim_name = victim.name_any();
    let victim_uid = victim.uid().expect("uid");
    let api: Api<Pod> = env.api();

    // Follow the log before deleting: once the pod is gone, so is its log.
    let params = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = api.log_stream(&victim_name, &params).await?.lines();
    api.delete(&victim_name, &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    let read = async {
        while let Some(line) = lines.try_next().await? {
            seen.push(line.clone());
            if line.contains("shutdown complete") {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(45), read).await??;
    assert!(
        seen.iter()
            .any(|l| l.contains("received terminated: shutting down gracefully")),
        "the app never logged SIGTERM; its log: {seen:#?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("shutdown complete")),
        "the app did not finish its graceful shutdown; its log: {seen:#?}"
    );

    wait::until(
        &api,
        &victim_name,
        "the deleted pod to be gone",
        Duration::from_secs(60),
        is_deleted(&victim_uid),
    )
    .await?;
    let ready = wait::until_list(
        &api,
        watcher::Config::default().labels("app=web"),
        "the ReplicaSet to replace the deleted pod",
        ROLLOUT,
        |pods: &[Pod]| {
            let ready: Vec<_> = pods.iter().filter(|p| conditions::pod_ready(p)).collect();
            ready.len() == 2 && ready.iter().all(|p| p.name_any() != victim_name)
        },
    )
    .await?;
    let owner = |p: &Pod| {
        p.owner_references()
            .first()
            .map(|o| (o.kind.clone(), o.name.clone()))
    };
    let replacement = ready
        .iter()
        .find(|p| p.name_any() != pods[1].name_any())
        .expect("a replacement pod");
    assert_eq!(
        owner(replacement),
        owner(&victim),
        "the replacement is owned by the same ReplicaSet"
    );
    Ok(())
}

/// A webhook pod behind a ClusterIP Service, TLS from a CA made here; registered with a
/// `service:` clientConfig, so the API server must go Service -> kube-proxy -> pod to call it.
#[tokio::test]
async fn apiserver_calls_a_webhook_through_its_service() -> anyhow::Result<()> {
    let env = TestEnv::new("webhook").await?;
    let ns = env.namespace.clone();
    let host = format!("probe-webhook.{ns}.svc");

    // A CA and a serving certificate for the Service's DNS name.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pgd test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec![host.clone()])?.signed_by(&key, &issuer)?;

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "probe-webhook-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()}
    }))?;
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "probe-webhook"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "probe-webhook"}},
            "template": {
                "metadata": {"labels": {"app": "probe-webhook"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "volumes": [{"name": "tls", "secret": {"secretName": "probe-webhook-tls"}}],
                    "containers": [{
                        "name": "webhook",
                        "image": objects::PROBE_WEBHOOK_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": 8443, "name": "https"}],
                        "readinessProbe": {"tcpSocket": {"port": "https"}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}]
                    }]
                }
            }
        }
    }))?;
    let deployments: Api<Deployment> = env.api();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "probe-webhook"},
        "spec": {"selector": {"app": "probe-webhook"}, "ports": [{"port": 443, "targetPort": "https"}]}
    }))?;
    env.api::<Service>()
        .create(&PostParams::default(), &service)
        .await?;
    wait::until(
        &deployments,
        "probe-webhook",
        "the probe webhook to be Available",
        ROLLOUT,
        conditions::deployment_complete,
    )
    .await?;

    // Only pods of this namespace that ask for it are denied, so nothing else is disturbed.
    let config_name = format!("pgd-test-probe-{ns}");
    let webhook = support_webhook::register(&env, &config_name, &ns, &ca.pem()).await?;
    let pods: Api<Pod> = env.api();
    pods.create(
        &PostParams::default(),
        &objects::demo_pod("victim", json!({"probe.testbed/deny": "true"})),
    )
    .await?;
    let webhook_pod = pods
        .list(&ListParams::default().labels("app=probe-webhook"))
        .await?
        .items
        .into_iter()
        .next()
        .expect("the webhook's pod")
        .name_any();

    // The API server picks up a new webhook configuration within about a second; retry the DELETE
    // until the webhook answers, within a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let message = loop {
        match pods.delete("victim", &DeleteParams::default()).await {
            Err(kube::Error::Api(status)) if status.message.contains("denied by probe-webhook") => {
                break status.message;
            }
            Ok(_) => anyhow::bail!("the DELETE was allowed: the webhook was not called"),
            Err(e) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("the webhook never answered the DELETE: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert!(
        message.contains(&format!("denied by probe-webhook pod {webhook_pod}")),
        "unexpected denial: {message}"
    );
    let log = pods.logs(&webhook_pod, &LogParams::default()).await?;
    assert!(
        log.contains(&format!("op=DELETE object={ns}/victim")),
        "the webhook did not log the call; its log:\n{log}"
    );
    // Unregister before the namespace goes, or its deletion would be denied too.
    drop(webhook);
    Ok(())
}

mod support_webhook {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use kube::Api;
    use kube::api::{DeleteParams, PostParams};
    use pgd_harness::TestEnv;
    use serde_json::json;

    /// Deletes the (cluster-scoped) webhook configuration when dropped, also on failure.
    pub struct Registered {
        api: Api<ValidatingWebhookConfiguration>,
        name: String,
    }

    impl Drop for Registered {
        fn drop(&mut self) {
            let api = self.api.clone();
            let name = self.name.clone();
            let target = pgd_harness::target().expect("target resolved");
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let _ = target.enter_network();
                rt.block_on(async move {
                    let client = target.client().await.ok();
                    let api = client.map(Api::all).unwrap_or(api);
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                })
            })
            .join();
        }
    }

    pub async fn register(
        env: &TestEnv,
        name: &str,
        namespace: &str,
        ca_pem: &str,
    ) -> anyhow::Result<Registered> {
        use base64::Engine as _;
        let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "probe.testbed.pod-graceful-drain.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"probe.testbed/deny": "true"}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["pods"]}],
                "clientConfig": {
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
                    "service": {"name": "probe-webhook", "namespace": namespace, "port": 443}
                }
            }]
        }))?;
        let api: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
        api.create(&PostParams::default(), &config).await?;
        Ok(Registered {
            api,
            name: name.to_string(),
        })
    }
}

#[tokio::test]
async fn pod_disruption_budget_refuses_eviction_with_429() -> anyhow::Result<()> {
    let env = TestEnv::new("pdb").await?;
    let pdbs: Api<PodDisruptionBudget> = env.api();
    pdbs.create(
        &PostParams::default(),
        &objects::pdb("web", json!({"minAvailable": 2})),
    )
    .await?;
    let pods = deploy_demo(&env, "web", 2).await?;
    // The eviction handler trusts the budget only once its controller has processed it.
    wait::until(
        &pdbs,
        "web",
        "the budget to count 2 healthy pods and allow no disruption",
        Duration::from_secs(60),
        |p: Option<&PodDisruptionBudget>| {
            let Some(p) = p else { return false };
            let Some(st) = p.status.as_ref() else {
                return false;
            };
            st.observed_generation == p.metadata.generation
                && st.current_healthy == 2
                && st.disruptions_allowed == 0
        },
    )
    .await?;
    let api: Api<Pod> = env.api();
    let victim = pods[0].name_any();
    match api.evict(&victim, &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "expected 429, got {status:?}");
            assert!(
                status.message.contains("disruption budget"),
                "unexpected message: {}",
                status.message
            );
        }
        other => panic!("the eviction was not refused: {other:?}"),
    }
    let still = api.get(&victim).await?;
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "the pod was deleted despite the refusal"
    );
    Ok(())
}
