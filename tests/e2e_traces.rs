//! One drain's whole story in a real trace backend (Jaeger, `testbed/jaeger`, to which the
//! testbed's API server sends its own spans): the API server's span of the eviction, our
//! admission span as its child, and, after the leader was killed mid-drain, the deferred delete
//! by the new leader in a span linked to the admission span.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use kube::api::EvictParams;
use kube::{Api, ResourceExt};
use pgd_harness::drained::{delete_at, deleted_within};
use pgd_harness::jaeger::{APISERVER_SERVICE, Jaeger, TESTBED_OTLP_HTTP_URL, TraceQuery};
use pgd_harness::product::{Options, Scene};

#[tokio::test]
async fn a_drain_is_one_linked_trace_from_the_api_server_to_the_deferred_delete_across_a_leader_change()
-> anyhow::Result<()> {
    let jaeger = Jaeger::testbed();
    let since = Timestamp::now();
    // A service name of this test's own: its spans are the only ones asked for.
    let service = format!("pgd-traces-{}", std::process::id());
    // As a user sets it: the chart's otlp values (spans sent every 500 ms, not 5 s).
    let options = Options {
        values: vec![
            ("otlp.endpoint".into(), TESTBED_OTLP_HTTP_URL.into()),
            ("otlp.serviceName".into(), service.clone()),
        ],
        extra_env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "500".into())],
        ..Options::fast()
    };
    let scene = Scene::new("traces", options, 2).await?;
    let api: Api<Pod> = scene.pods_api();
    let victim = scene.pods[0].clone();
    api.evict(&victim.name_any(), &EvictParams::default())
        .await?;
    let due = delete_at(&api.get(&victim.name_any()).await?)?;
    let killed = scene.install.kill_leader().await?;
    deleted_within(&api, &victim, due, SignedDuration::from_secs(3)).await?;

    // The deferred delete, by a replica other than the one killed.
    let deletes = jaeger
        .wait_for_traces(
            &TraceQuery::service(&service)
                .operation("deferred_delete")
                .tag("outcome", "deleted")
                .since(since),
            "the deferred delete's span",
            Duration::from_secs(60),
            |t| !t.is_empty(),
        )
        .await?;
    let (trace, delete) = deletes
        .iter()
        .flat_map(|t| t.spans_named("deferred_delete").map(move |s| (t, s)))
        .find(|(_, s)| s.tag_str("name").as_deref() == Some(victim.name_any().as_str()))
        .unwrap_or_else(|| panic!("no deferred_delete span for {}", victim.name_any()));
    let by = trace
        .processes
        .get(&delete.process_id)
        .and_then(|p| p.tag("k8s.pod.name"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        !by.is_empty(),
        "no k8s.pod.name on the deleting replica's spans"
    );
    assert_ne!(by, killed, "the killed leader cannot have deleted the pod");
    assert!(delete.tag("late_ms").is_some() && delete.tag("delete_at").is_some());

    // Linked to the admission span of the eviction, in the API server's trace.
    let link = delete
        .links()
        .next()
        .unwrap_or_else(|| panic!("the deferred delete is linked to nothing: {delete:?}"));
    // The linked trace, by its id: the admission span and, above it, the API server's.
    let story = pgd_harness::wait::poll(
        "the trace of the eviction, with the admission span",
        Duration::from_secs(60),
        Duration::from_millis(250),
        async || {
            Ok(jaeger
                .trace(&link.trace_id)
                .await?
                .filter(|t| t.span(&link.span_id).is_some()))
        },
    )
    .await?;
    let admission = story.span(&link.span_id).expect("polled for");
    assert_eq!(admission.operation_name, "admission");
    assert_eq!(story.service_of(admission), Some(service.as_str()));
    assert!(
        admission
            .tag_str("pod")
            .is_some_and(|p| p.ends_with(&victim.name_any())),
        "{admission:?}"
    );
    let parent = story
        .parent_of(admission)
        .unwrap_or_else(|| panic!("the admission span has no parent in the API server's trace"));
    assert_eq!(
        story.service_of(parent),
        Some(APISERVER_SERVICE),
        "{parent:?}"
    );
    Ok(())
}
