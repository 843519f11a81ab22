//! The chart on the real testbed: a default install is highly available and PSS-restricted, the
//! API server reaches it through its Service, an upgrade under load loses no schedule and keeps the
//! certificate, a rotated certificate is served without restarts, uninstall leaves nothing, and
//! bad values are refused.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{EvictParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use pgd_harness::drained::{self, delete_at, deleted_between, draining};
use pgd_harness::fetch::{FetchPod, Traffic};
use pgd_harness::product::{Install, Options, Scene, chart_dir};
use pgd_harness::{TestEnv, helm, testbed_script, wait};
use pod_graceful_drain::core::keys;
use pod_graceful_drain::core::notice::EventReason;
use serde_json::json;

/// Evicts `name` and returns the pod as it is once draining.
async fn evict_and_wait_draining(api: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    api.evict(name, &EvictParams::default()).await?;
    let pod = wait::until(
        api,
        name,
        "the evicted pod to drain",
        Duration::from_secs(10),
        |p: Option<&Pod>| p.is_some_and(draining),
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("{name} vanished"))?;
    Ok(pod)
}

#[tokio::test]
async fn a_default_install_is_highly_available_and_drains_a_rollout() -> anyhow::Result<()> {
    let env = TestEnv::new("chart-default").await?;
    // Default values: only the image, this test's namespace scoping and client authentication
    // (required) differ.
    let install = Install::new(&env, Options::chart_defaults()).await?;
    let ns_api: Api<Namespace> = Api::all(env.client.clone());
    // The replicas satisfy the restricted Pod Security Standard: enforce it and restart them all.
    ns_api
        .patch(
            &install.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted"}}})),
        )
        .await?;
    upgrade_to_this_chart(&install, &["--reuse-values", "--wait", "--timeout", "120s"]).await?;
    let deployments: Api<Deployment> = install.api();
    deployments
        .patch(
            &install.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "test/restarted": Timestamp::now().to_string()}}}}})),
        )
        .await?;
    install.wait_ready(3).await?;
    let running = install.replicas().await?;
    assert_eq!(running.len(), 3, "three replicas under enforce=restricted");
    for p in &running {
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some(install.name.as_str())
        );
        assert!(spec.termination_grace_period_seconds >= Some(30));
    }
    let pdb: Api<PodDisruptionBudget> = install.api();
    assert!(pdb.get_opt(&install.name).await?.is_some(), "a PDB");
    assert!(
        Api::<PriorityClass>::all(env.client.clone())
            .get_opt(&install.name)
            .await?
            .is_some()
    );
    let webhook = Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .get(&install.name)
        .await?;
    let w = &webhook.webhooks.as_ref().expect("webhooks")[0];
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(w.side_effects, "NoneOnDryRun");
    assert!(
        w.client_config.service.is_some(),
        "called through the Service"
    );
    assert_eq!(
        w.match_conditions.as_ref().map(Vec::len),
        Some(3),
        "matchConditions on a 1.35 API server"
    );

    // A rollout: every old pod is isolated and kept for its drain (the pods ask for 5 s).
    let app: Api<Pod> = env.api();
    let pods = env.serve_demo("web", 3, json!({})).await?;
    for p in &pods {
        app.patch(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {keys::DRAIN_SECONDS: "5"}}})),
        )
        .await?;
    }
    let t = Instant::now();
    Api::<Deployment>::namespaced(env.client.clone(), &env.namespace)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "test/rev": "2"}}}}})),
        )
        .await?;
    // Each old pod drains then goes, at its own pace: follow them all at once.
    futures::future::try_join_all(pods.iter().map(|p| {
        let app = app.clone();
        async move {
            let name = p.name_any();
            let drained = wait::until(
                &app,
                &name,
                "the old pod to drain",
                Duration::from_secs(30),
                |q: Option<&Pod>| q.is_some_and(draining),
            )
            .await?
            .expect("draining pod");
            let at = delete_at(&drained)?;
            deleted_between(
                &app,
                &drained,
                at,
                at.checked_add(jiff::SignedDuration::from_secs(5))?,
            )
            .await?;
            anyhow::Ok(())
        }
    }))
    .await?;
    eprintln!(
        "default install: rollout of 3 drained and deleted in {:?}",
        t.elapsed()
    );
    Ok(())
}

/// `helm upgrade` of the release to this checkout's chart, with `args` (values, `--wait`...).
async fn upgrade_to_this_chart(
    install: &Install,
    args: &[&str],
) -> pgd_harness::Result<std::process::Output> {
    let chart = chart_dir().display().to_string();
    let mut all = vec!["upgrade", install.release.as_str(), chart.as_str()];
    all.extend_from_slice(args);
    install.run_helm(&all).await
}

/// The pod IP of a running replica, to talk to it past the Service.
fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP")
}

/// The certificate a replica serves: its serial and whether it verifies against `bundle` for the
/// Service's name (openssl from the host, run inside the testbed network like this thread).
fn served_certificate(
    ip: &str,
    bundle: &std::path::Path,
    host: &str,
) -> anyhow::Result<(String, bool)> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {ip}:9443 -servername {host} -CAfile {} -verify_hostname {host} </dev/null 2>/dev/null",
            bundle.display()
        ))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verified = text.contains("Verify return code: 0 (ok)");
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())?;
    let serial = String::from_utf8_lossy(&child.wait_with_output()?.stdout)
        .trim()
        .to_string();
    anyhow::ensure!(!serial.is_empty(), "no certificate served by {ip}: {text}");
    Ok((serial, verified))
}

fn write_bundle(install: &Install, secret: &Secret) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("{}-ca.crt", install.name));
    let data = secret.data.as_ref().expect("data");
    std::fs::write(&path, &data["ca.crt"].0)?;
    Ok(path)
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restarts() -> anyhow::Result<()> {
    let env = TestEnv::new("chart-rotate").await?;
    // A 60 s certificate is renewed in its last third: about every 40 s.
    let install = Install::new(
        &env,
        Options {
            values: vec![("tls.certSeconds".into(), "60".into())],
            ..Options::fast()
        },
    )
    .await?;
    let secrets: Api<Secret> = install.api();
    let secret_name = format!("{}-tls", install.name);
    let first = secrets.get(&secret_name).await?;
    let bundle = write_bundle(&install, &first)?;
    let host = format!("{}.{}.svc", install.name, install.namespace);
    let before = install.replicas().await?;
    let mut serials = Vec::new();
    for p in &before {
        let ip = pod_ip(p);
        let (serial, verified) = served_certificate(&ip, &bundle, &host)?;
        assert!(
            verified,
            "{} serves a certificate the bundle does not verify",
            p.name_any()
        );
        serials.push(serial);
    }
    let t = Instant::now();
    // Every replica moves to a new certificate, still verified by the same (unchanged) bundle.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (p, old) in before.iter().zip(&serials) {
        let ip = pod_ip(p);
        loop {
            let (serial, verified) = served_certificate(&ip, &bundle, &host)?;
            if &serial != old {
                assert!(verified, "the rotated certificate does not verify");
                eprintln!(
                    "{} serves {serial} (was {old}) after {:?}",
                    p.name_any(),
                    t.elapsed()
                );
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} kept serving {old}",
                p.name_any()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let after = secrets.get(&secret_name).await?;
    assert_eq!(
        after.data.as_ref().expect("data")["ca.crt"],
        first.data.as_ref().expect("data")["ca.crt"],
        "the CA bundle must not change when the serving certificate rotates"
    );
    // Same pods, no restarts.
    let now = install.replicas().await?;
    let uids = |ps: &[Pod]| {
        ps.iter()
            .map(|p| p.uid().unwrap_or_default())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(uids(&before), uids(&now));
    for p in &now {
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        assert_eq!(restarts, 0, "{} restarted", p.name_any());
    }
    // The API server still calls the webhook: an eviction drains.
    let pods = env.serve_demo("web", 2, json!({})).await?;
    evict_and_wait_draining(&env.api(), &pods[0].name_any()).await?;
    let _ = std::fs::remove_file(bundle);
    Ok(())
}

#[tokio::test]
async fn an_upgrade_under_load_loses_no_schedule_and_keeps_the_certificate() -> anyhow::Result<()> {
    let Scene { env, install, pods } = Scene::new(
        "chart-upgrade",
        Options {
            replicas: 3,
            drain_seconds: 25,
            ..Options::fast()
        },
        4,
    )
    .await?;
    let secrets: Api<Secret> = install.api();
    let secret_name = format!("{}-tls", install.name);
    let cert_before = secrets.get(&secret_name).await?.data;
    let bundle_of = |v: &ValidatingWebhookConfiguration| {
        v.webhooks
            .as_ref()
            .and_then(|w| w[0].client_config.ca_bundle.clone())
    };
    let vwc: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    let bundle_before = bundle_of(&vwc.get(&install.name).await?);

    let app: Api<Pod> = env.api();
    let url = env.service_url("web", 4).await?;
    // Steady traffic through the Service for the whole upgrade.
    let traffic = FetchPod::start(
        &app,
        "load",
        Traffic {
            url: &url,
            node: None,
            count: 300,
            interval: Duration::from_millis(100),
        },
    )
    .await?;
    let mut drains = Vec::new();
    for p in &pods[..2] {
        let d = evict_and_wait_draining(&app, &p.name_any()).await?;
        drains.push((delete_at(&d)?, d));
    }
    // A new image (the same bits under a new tag) rolls every replica while the pods drain.
    let mut tag = testbed_script(env.target, "images/tag")?;
    tag.args([
        "localhost/pod-graceful-drain:dev",
        "localhost/pod-graceful-drain:next",
    ]);
    anyhow::ensure!(tag.status()?.success(), "tagging the image failed");
    let t = Instant::now();
    upgrade_to_this_chart(
        &install,
        &[
            "--reuse-values",
            "--set",
            "image.tag=next",
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await?;
    eprintln!("helm upgrade to a new image took {:?}", t.elapsed());
    let images: BTreeSet<String> = install
        .replicas()
        .await?
        .iter()
        .filter_map(|p| {
            p.spec
                .as_ref()
                .map(|s| s.containers[0].image.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        images,
        BTreeSet::from(["localhost/pod-graceful-drain:next".to_string()])
    );
    // A drain started during or after the upgrade works as well.
    let late = evict_and_wait_draining(&app, &pods[2].name_any()).await?;
    drains.push((delete_at(&late)?, late));
    for (at, pod) in &drains {
        deleted_between(
            &app,
            pod,
            *at,
            at.checked_add(jiff::SignedDuration::from_secs(5))?,
        )
        .await?;
    }
    assert_eq!(
        secrets.get(&secret_name).await?.data,
        cert_before,
        "helm upgrade changed the certificate Secret"
    );
    assert_eq!(
        bundle_of(&vwc.get(&install.name).await?),
        bundle_before,
        "helm upgrade changed the injected CA bundle"
    );
    let results = traffic.results().await?;
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    eprintln!(
        "traffic during the upgrade: {} requests, {} failed",
        results.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the upgrade: {failed:?}"
    );
    Ok(())
}

/// Whether `name` no longer exists.
async fn absent<K>(api: Api<K>, name: &str) -> anyhow::Result<bool>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?.is_none())
}

#[tokio::test]
async fn uninstall_leaves_nothing_behind_and_no_pod_isolated() -> anyhow::Result<()> {
    let Scene { env, install, pods } = Scene::new(
        "chart-uninstall",
        Options {
            drain_seconds: 300,
            values: vec![("uninstall.waitSeconds".into(), "15".into())],
            ..Options::fast()
        },
        3,
    )
    .await?;
    let app: Api<Pod> = env.api();
    // One drain ends within the uninstall's wait, one does not.
    app.patch(
        &pods[0].name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {keys::DRAIN_SECONDS: "6"}}})),
    )
    .await?;
    let short = evict_and_wait_draining(&app, &pods[0].name_any()).await?;
    let long = evict_and_wait_draining(&app, &pods[1].name_any()).await?;
    let short_at = delete_at(&short)?;

    let (client, name, ns) = (
        env.client.clone(),
        install.name.clone(),
        install.namespace.clone(),
    );
    let release = install.release.clone();
    let t = Instant::now();
    let out = install.uninstall().await?;
    eprintln!(
        "helm uninstall took {:?}: {}",
        t.elapsed(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // The short drain ran to its end; the long one was cut short, with an event.
    deleted_between(
        &app,
        &short,
        short_at,
        Timestamp::now() + jiff::SignedDuration::from_secs(5),
    )
    .await?;
    deleted_between(
        &app,
        &long,
        Timestamp::now() - jiff::SignedDuration::from_secs(600),
        Timestamp::now() + jiff::SignedDuration::from_secs(5),
    )
    .await?;
    let cut = !drained::events_about(&env, &long.name_any(), EventReason::DrainCutShort)
        .await?
        .is_empty();
    assert!(
        cut,
        "no DrainCutShort event for the pod whose drain was cut short"
    );
    let isolated = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{}={}", keys::DRAINING_LABEL, env.namespace)))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    assert_eq!(isolated, 0, "pods left isolated after uninstall");

    // Nothing of the release is left.
    let left = [
        (
            "ValidatingWebhookConfiguration",
            absent(
                Api::<ValidatingWebhookConfiguration>::all(client.clone()),
                &name,
            )
            .await?,
        ),
        (
            "MutatingWebhookConfiguration",
            absent(
                Api::<MutatingWebhookConfiguration>::all(client.clone()),
                &name,
            )
            .await?,
        ),
        (
            "ClusterRole",
            absent(Api::<ClusterRole>::all(client.clone()), &name).await?,
        ),
        (
            "ClusterRoleBinding",
            absent(Api::<ClusterRoleBinding>::all(client.clone()), &name).await?,
        ),
        (
            "PriorityClass",
            absent(Api::<PriorityClass>::all(client.clone()), &name).await?,
        ),
        (
            "Lease",
            absent(Api::<Lease>::namespaced(client.clone(), &ns), &name).await?,
        ),
    ];
    for (kind, gone) in left {
        assert!(gone, "the {kind} {name} is left");
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    assert!(
        secrets.items.is_empty(),
        "Secrets left: {:?}",
        secrets
            .items
            .iter()
            .map(|s| s.name_any())
            .collect::<Vec<_>>()
    );
    let left = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    let live: Vec<String> = left
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    assert!(
        live.is_empty(),
        "pods left in the release namespace: {live:?}"
    );
    let mut list = helm(env.target);
    list.args(["list", "-n", &ns, "-q"]);
    let listed = String::from_utf8_lossy(&list.output()?.stdout).into_owned();
    assert!(!listed.contains(&release), "helm still lists the release");
    let _ = pods;
    Ok(())
}

/// A writer that keeps changing a draining pod while `helm uninstall` cuts its drain short (every
/// delete then meets a pod newer than the one listed): the uninstall re-reads and deletes it, or
/// fails saying which pod is left. It never reports success with the pod left isolated.
#[tokio::test]
async fn an_uninstall_raced_by_a_writer_ends_with_the_pod_gone_or_in_an_error() -> anyhow::Result<()>
{
    let Scene { env, install, pods } = Scene::new(
        "chart-uninstall-race",
        Options {
            drain_seconds: 300,
            values: vec![("uninstall.waitSeconds".into(), "2".into())],
            ..Options::fast()
        },
        2,
    )
    .await?;
    let app: Api<Pod> = env.api();
    let drained = evict_and_wait_draining(&app, &pods[0].name_any()).await?;
    // Four writers back to back: the pod's resourceVersion moves every few milliseconds.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let app = app.clone();
            let name = drained.name_any();
            tokio::spawn(async move {
                for i in 0u64.. {
                    let patch =
                        json!({"metadata": {"annotations": {format!("example.com/tick-{w}"): i.to_string()}}});
                    if let Err(kube::Error::Api(e)) = app
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        && e.code == 404
                    {
                        return i;
                    }
                }
                0
            })
        })
        .collect();
    let out = install.try_uninstall().await?;
    for w in &writers {
        w.abort();
    }
    let stored = app.get_opt(&drained.name_any()).await?;
    let gone = stored.as_ref().is_none_or(|p| {
        p.metadata.deletion_timestamp.is_some() || p.metadata.uid != drained.metadata.uid
    });
    eprintln!(
        "helm uninstall: success {}, pod gone {gone}: {}{}",
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(
        gone || !out.status.success(),
        "helm uninstall succeeded and left the drained pod isolated"
    );
    Ok(())
}

#[tokio::test]
async fn bad_values_are_refused_with_a_message_naming_them() -> anyhow::Result<()> {
    let env = TestEnv::new("chart-values").await?;
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "drain.seconds=-5"], "/drain/seconds"),
        (&["--set", "drainSeconds=5"], "drainSeconds"),
        (&["--set", "drain.minSeconds=100"], "drain.minSeconds (100)"),
        (&["--set", "holdSeconds=40"], "/holdSeconds"),
        (&["--set", "log.format=xml"], "/log/format"),
    ];
    for (args, named) in cases {
        let out = helm(env.target)
            .args(["install", "bad", "-n", &env.namespace])
            .arg(chart_dir())
            .args(args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(named),
            "{args:?}: the message does not name {named}: {err}"
        );
    }
    let mut list = helm(env.target);
    list.args(["list", "-n", &env.namespace, "-q"]);
    assert!(
        String::from_utf8_lossy(&list.output()?.stdout)
            .trim()
            .is_empty()
    );
    Ok(())
}

/// The chart as it landed before client authentication and the process's own namespace
/// selection: an installation of it is upgraded in place.
const PREVIOUS_CHART_COMMIT: &str = "f1b30ea";

/// `helm upgrade` from the previous chart to this one, switching client authentication on: the
/// replicas roll, a drain scheduled under the old chart is carried out on time, and the API
/// server's evictions are served (as verified calls) under `clientAuth.mode=required`.
#[tokio::test]
async fn an_upgrade_from_the_previous_chart_switches_client_auth_on_and_keeps_schedules()
-> anyhow::Result<()> {
    let env = TestEnv::new("chart-prev").await?;
    let dir = std::env::temp_dir().join(format!("pgd-prev-chart-{}", env.namespace));
    std::fs::create_dir_all(&dir)?;
    let repo = chart_dir().join("..");
    let archive = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["archive", "--format=tar", PREVIOUS_CHART_COMMIT, "chart"])
        .output()?;
    anyhow::ensure!(
        archive.status.success(),
        "git archive {PREVIOUS_CHART_COMMIT}: {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let tar = dir.join("chart.tar");
    std::fs::write(&tar, &archive.stdout)?;
    anyhow::ensure!(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&dir)
            .status()?
            .success(),
        "unpacking the previous chart"
    );
    // The image under test is the current one (the previous chart's image is not built here), and
    // it seals every schedule with keys from a Secret the previous chart neither renders nor grants.
    // Provide both as the current chart would, the Secret carrying Helm's ownership so that the
    // upgrade adopts it (and the drains sealed before the upgrade stay verifiable after it).
    let release = env.namespace.clone();
    let release_ns = format!("{release}-pgd");
    let fullname = format!("{release}-pod-graceful-drain");
    let seal_secret = format!("{fullname}-seal");
    let provision = {
        let client = env.client.clone();
        let (release, release_ns, fullname, seal_secret) = (
            release.clone(),
            release_ns.clone(),
            fullname.clone(),
            seal_secret.clone(),
        );
        tokio::spawn(async move {
            let namespaces: Api<Namespace> = Api::all(client.clone());
            wait::until(
                &namespaces,
                &release_ns,
                "the release namespace",
                Duration::from_secs(60),
                |n: Option<&Namespace>| n.is_some(),
            )
            .await?;
            let pp = kube::api::PostParams::default();
            Api::<Secret>::namespaced(client.clone(), &release_ns)
                .create(
                    &pp,
                    &serde_json::from_value(json!({"metadata": {
                        "name": seal_secret,
                        "labels": {"app.kubernetes.io/managed-by": "Helm"},
                        "annotations": {"meta.helm.sh/release-name": release,
                                        "meta.helm.sh/release-namespace": release_ns}},
                        "type": "Opaque"}))?,
                )
                .await?;
            Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), &release_ns)
                .create(
                    &pp,
                    &serde_json::from_value(json!({"metadata": {"name": "seal-keys"},
                        "rules": [{"apiGroups": [""], "resources": ["secrets"],
                                   "resourceNames": [seal_secret], "verbs": ["get", "update"]}]}))?,
                )
                .await?;
            Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client, &release_ns)
                .create(
                    &pp,
                    &serde_json::from_value(json!({"metadata": {"name": "seal-keys"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "seal-keys"},
                        "subjects": [{"kind": "ServiceAccount", "name": fullname, "namespace": release_ns}]}))?,
                )
                .await?;
            anyhow::Ok(())
        })
    };
    let install = Install::new(
        &env,
        Options {
            chart: Some(dir.join("chart")),
            client_auth: pgd_harness::product::ClientAuth::None,
            drain_seconds: 40,
            extra_env: vec![("PGD_SEAL_SECRET".into(), seal_secret.clone())],
            ..Options::fast()
        },
    )
    .await?;
    provision.await??;
    let pods = env.serve_demo("web", 3, json!({})).await?;
    let api: Api<Pod> = env.api();
    let before = evict_and_wait_draining(&api, &pods[0].name_any()).await?;
    let before_at = delete_at(&before)?;

    upgrade_to_this_chart(
        &install,
        &[
            "--reset-then-reuse-values",
            "--set",
            "clientAuth.mode=required",
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await?;
    install.wait_ready(2).await?;
    let deployment: Deployment = install.api().get(&install.name).await?;
    let env_vars = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        env_vars
            .iter()
            .any(|e| e.name == "PGD_CLIENT_AUTH" && e.value.as_deref() == Some("required")),
        "the upgrade did not switch client authentication on"
    );
    // A drain under the new chart: served, and as the API server's verified word.
    let after = evict_and_wait_draining(&api, &pods[1].name_any()).await?;
    assert!(
        !after.annotations()[keys::REQUESTED_BY].contains("unverified"),
        "{:?}",
        after.annotations()
    );
    // The drain scheduled under the old chart is carried out on time by the new replicas.
    deleted_between(
        &api,
        &before,
        before_at,
        before_at + jiff::SignedDuration::from_secs(20),
    )
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn changing_the_instance_on_upgrade_is_refused_and_the_drains_go_on() -> anyhow::Result<()> {
    let Scene { env, install, pods } = Scene::new(
        "chart-instance",
        Options {
            replicas: 1,
            drain_seconds: 20,
            ..Options::fast()
        },
        2,
    )
    .await?;
    let api: Api<Pod> = env.api();
    let draining = evict_and_wait_draining(&api, &pods[0].name_any()).await?;
    let at = delete_at(&draining)?;
    let refused =
        upgrade_to_this_chart(&install, &["--reuse-values", "--set", "instance=another"]).await;
    let message = match refused {
        Ok(out) => panic!(
            "the instance changed on upgrade: {}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("instance cannot change on upgrade")
            && message.contains("--set instance="),
        "{message}"
    );
    // The running release is untouched: its replicas still carry the drain out on time.
    deleted_between(
        &api,
        &draining,
        at,
        at + jiff::SignedDuration::from_secs(10),
    )
    .await?;
    Ok(())
}
