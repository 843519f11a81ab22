//! With the standard OTEL_* variables naming an OTLP endpoint, pod-graceful-drain exports its
//! traces there (to a real OTLP/HTTP receiver running as a pod); without them it exports nothing.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{EvictParams, LogParams, PostParams};
use kube::{Api, ResourceExt};
use pgd_harness::product::{Install, Options};
use pgd_harness::{TestEnv, objects};
use serde_json::json;

#[tokio::test]
async fn traces_are_exported_over_otlp_when_an_endpoint_is_configured() -> anyhow::Result<()> {
    let env = TestEnv::new("otlp").await?;
    let pp = PostParams::default();
    // The receiver.
    let sink: Pod = serde_json::from_value(json!({
        "metadata": {"name": "otlp-sink", "labels": {"role": "otlp-sink"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "sink", "image": objects::DEMO_IMAGE, "imagePullPolicy": "IfNotPresent",
            "args": ["otlp-sink"], "ports": [{"name": "otlp", "containerPort": 4318}],
            "readinessProbe": {"tcpSocket": {"port": "otlp"}, "periodSeconds": 1}
        }]}
    }))?;
    let pods: Api<Pod> = env.api();
    pods.create(&pp, &sink).await?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "otlp-sink"},
        "spec": {"selector": {"role": "otlp-sink"}, "ports": [{"port": 4318, "targetPort": "otlp"}]}
    }))?;
    env.api::<Service>().create(&pp, &svc).await?;
    // service_url gives http://<ClusterIP>/ once the receiver is an endpoint; the exporter wants
    // the base URL with the OTLP port.
    let url = env.service_url("otlp-sink", 1).await?;
    let ip = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    let _install = Install::new(
        &env,
        Options {
            extra_env: vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    format!("http://{ip}:4318"),
                ),
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "500".into()),
                ("OTEL_SERVICE_NAME".into(), "pgd-under-test".into()),
            ],
            ..Options::fast()
        },
    )
    .await?;
    // Something to trace: an eviction of a pod that serves traffic.
    let victim = env.serve_demo("web", 2, json!({})).await?[0].name_any();
    pods.evict(&victim, &EvictParams::default()).await?;
    // The schedule carries the request's trace context.
    let traceparent =
        pods.get(&victim).await?.annotations()[pod_graceful_drain::core::keys::TRACEPARENT].clone();
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "not a W3C traceparent: {traceparent}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = pods.logs("otlp-sink", &LogParams::default()).await?;
        if log.lines().any(|l| {
            l.contains("POST /v1/traces")
                && l.contains("application/x-protobuf")
                && !l.contains("bytes=0")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trace export arrived; sink log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
