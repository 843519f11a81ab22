//! Forged AdmissionReviews sent straight to a replica's pod IP, as anything that can open a TCP
//! connection to port 9443 could (no RBAC needed). Each forgery is tried against an installation
//! that authenticates the API server (`clientAuth.mode=required`: the handshake is refused and the
//! cluster does not change) and against one that does not (`none`: the defences in depth hold:
//! the decision is made on the pod as stored, never on the forged `oldObject`; forged delete
//! options are not kept; nothing happens outside the namespaces the installation selects).

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use pgd_harness::drained::draining;
use pgd_harness::product::{ClientAuth, Install, Options, Scene};
use pgd_harness::{TestEnv, objects, testbed_client_cert};
use pod_graceful_drain::core::keys;
use pod_graceful_drain::core::schedule;
use serde_json::{Value, json};

/// What came back from one forged POST.
#[derive(Debug)]
enum Posted {
    /// The server answered over HTTP.
    Answered { status: u16, body: String },
    /// No HTTP answer: the connection or the TLS handshake was refused (curl's exit code).
    Refused { curl_exit: i32, stderr: String },
}

/// POSTs `body` to `https://<ip>:9443<path>` without verifying the server (an attacker would not
/// bother), optionally presenting a client certificate. Runs on the test's thread, which is in the
/// testbed network.
fn post(ip: &str, path: &str, body: &Value, client_cert: Option<(PathBuf, PathBuf)>) -> Posted {
    let dir = std::env::temp_dir().join(format!("pgd-forged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.json", body["request"]["uid"].as_str().unwrap()));
    std::fs::write(&file, serde_json::to_vec(body).unwrap()).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-k",
        "--max-time",
        "40",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
    ])
    .args(["-H", "Content-Type: application/json", "--data-binary"])
    .arg(format!("@{}", file.display()))
    .arg(format!("https://{ip}:9443{path}"));
    if let Some((crt, key)) = client_cert {
        cmd.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    let out = cmd.output().expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Posted::Refused {
            curl_exit: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
    }
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    Posted::Answered {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

fn review(uid: &str, request: Value) -> Value {
    let mut request = request;
    request["uid"] = json!(uid);
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// `CREATE pods/eviction` for the pod, as the API server would send it.
fn forged_eviction(uid: &str, pod: &Pod) -> Value {
    let (ns, name) = (pod.namespace().unwrap(), pod.name_any());
    review(
        uid,
        json!({
            "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "eviction", "operation": "CREATE",
            "name": name, "namespace": ns,
            "userInfo": {"username": "system:serviceaccount:kube-system:cluster-autoscaler"},
            "object": {"apiVersion": "policy/v1", "kind": "Eviction",
                       "metadata": {"name": name, "namespace": ns}},
            "dryRun": false
        }),
    )
}

/// `DELETE pods` with this oldObject and these options.
fn forged_delete(uid: &str, old_object: Value, options: Value) -> Value {
    review(
        uid,
        json!({
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "DELETE",
            "name": old_object["metadata"]["name"], "namespace": old_object["metadata"]["namespace"],
            "userInfo": {"username": "jane"},
            "oldObject": old_object, "options": options, "dryRun": false
        }),
    )
}

fn grace_zero() -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
}

/// The pod is as it was: same labels, no schedule, not terminating.
fn untouched(before: &Pod, now: &Pod) -> bool {
    now.labels() == before.labels()
        && !now
            .annotations()
            .keys()
            .any(|k| k.starts_with(keys::PREFIX) && k != keys::OPT_OUT)
        && now.metadata.deletion_timestamp.is_none()
}

/// One replica's pod IP.
async fn replica_ip(install: &Install) -> anyhow::Result<String> {
    Ok(install.replica_with_ip().await?.1)
}

/// A namespace with an installation watching it under `client_auth`, and the demo app there (2
/// pods behind a Service).
async fn scene(name: &str, client_auth: ClientAuth) -> anyhow::Result<Scene> {
    let options = Options {
        client_auth,
        ..Options::fast()
    };
    Ok(Scene::new(name, options, 2).await?)
}

/// The forged eviction of a serving pod in a namespace the installation does not select.
async fn forged_eviction_outside_the_selection(mode: ClientAuth) -> anyhow::Result<()> {
    let Scene {
        env: _env, install, ..
    } = scene("forged-evict", mode).await?;
    // A namespace that is not opted in, with a serving app and a budget.
    let outside = TestEnv::new("forged-outside").await?;
    let pdbs: Api<PodDisruptionBudget> = outside.api();
    pdbs.create(
        &PostParams::default(),
        &objects::pdb("web", json!({"maxUnavailable": 1})),
    )
    .await?;
    let pods = outside.serve_demo("web", 2, json!({})).await?;
    let victim = &pods[0];
    let ip = replica_ip(&install).await?;
    let posted = post(
        &ip,
        "/pods/eviction",
        &forged_eviction("forged-evict-1", victim),
        None,
    );
    let api: Api<Pod> = outside.api();
    let now = api.get(&victim.name_any()).await?;
    assert!(
        untouched(victim, &now),
        "a forged eviction outside the selected namespaces changed the pod ({posted:?}): {:?} {:?}",
        now.labels(),
        now.annotations()
    );
    let disrupted = objects::disrupted_pods(&pdbs.get("web").await?);
    assert!(
        disrupted.is_empty(),
        "a forged eviction spent the budget: {disrupted:?}"
    );
    expect_refused_if_required(mode, &posted);
    Ok(())
}

/// A forged DELETE with grace 0 and a stale resourceVersion, of a serving pod in a selected
/// namespace: the first patch conflicts and the pod is re-read. Without authentication the pod
/// may drain (the request cannot be told from a real one), but the forged options are not kept.
async fn forged_grace_zero_delete(mode: ClientAuth) -> anyhow::Result<()> {
    let Scene { env, install, pods } = scene("forged-grace0", mode).await?;
    let victim = &pods[0];
    let mut old = serde_json::to_value(victim)?;
    old["metadata"]["resourceVersion"] = json!("1");
    let ip = replica_ip(&install).await?;
    let posted = post(
        &ip,
        "/pods/delete",
        &forged_delete("forged-grace0-1", old, grace_zero()),
        None,
    );
    let api: Api<Pod> = env.api();
    let now = api.get(&victim.name_any()).await?;
    if mode == ClientAuth::Required {
        assert!(untouched(victim, &now), "{:?}", now.annotations());
    } else {
        // Unauthenticated, the request cannot be told from a real one: the pod drains, but on the
        // pod as stored and without the forged options.
        assert!(draining(&now), "{posted:?}: {:?}", now.labels());
        let saved = now
            .annotations()
            .get(keys::DELETE_OPTIONS)
            .cloned()
            .unwrap_or_default();
        let saved: schedule::SavedDeleteOptions = serde_json::from_str(&saved).unwrap_or_default();
        assert_ne!(
            saved.grace_period_seconds,
            Some(0),
            "the forged grace period 0 was kept for the deferred delete"
        );
        let by = &now.annotations()[keys::REQUESTED_BY];
        assert!(
            by.contains("unverified"),
            "an unauthenticated caller's user name was recorded as if vouched for: {by}"
        );
    }
    expect_refused_if_required(mode, &posted);
    Ok(())
}

/// A forged DELETE carrying the pod's real resourceVersion but a doctored oldObject: the real pod
/// has opted out, the forged one has not and asks for the longest drain.
async fn forged_old_object(mode: ClientAuth) -> anyhow::Result<()> {
    let Scene { env, install, pods } = scene("forged-old", mode).await?;
    let api: Api<Pod> = env.api();
    let name = pods[0].name_any();
    let victim = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {keys::OPT_OUT: "true"}}})),
        )
        .await?;
    let mut old = serde_json::to_value(&victim)?;
    old["metadata"]["annotations"] = json!({keys::DRAIN_SECONDS: "900"});
    let ip = replica_ip(&install).await?;
    let posted = post(
        &ip,
        "/pods/delete",
        &forged_delete(
            "forged-old-1",
            old,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}),
        ),
        None,
    );
    let now = api.get(&name).await?;
    assert!(
        untouched(&victim, &now),
        "the decision was made on the forged oldObject ({posted:?}): {:?} {:?}",
        now.labels(),
        now.annotations()
    );
    expect_refused_if_required(mode, &posted);
    Ok(())
}

/// A forged DELETE of a serving pod in a namespace the installation does not select.
async fn forged_delete_outside_the_selection(mode: ClientAuth) -> anyhow::Result<()> {
    let Scene {
        env: _env, install, ..
    } = scene("forged-ns", mode).await?;
    let outside = TestEnv::new("forged-ns-out").await?;
    let pods = outside.serve_demo("web", 2, json!({})).await?;
    let victim = &pods[0];
    let ip = replica_ip(&install).await?;
    let posted = post(
        &ip,
        "/pods/delete",
        &forged_delete(
            "forged-ns-1",
            serde_json::to_value(victim)?,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}),
        ),
        None,
    );
    let api: Api<Pod> = outside.api();
    let now = api.get(&victim.name_any()).await?;
    assert!(
        untouched(victim, &now),
        "a forged DELETE outside the selected namespaces changed the pod ({posted:?}): {:?}",
        now.labels()
    );
    expect_refused_if_required(mode, &posted);
    Ok(())
}

fn expect_refused_if_required(mode: ClientAuth, posted: &Posted) {
    if mode == ClientAuth::Required {
        assert_refused_at_handshake(posted);
    }
}

/// Refused by TLS: the port was open (not curl's 7, could not connect) and answered at once (not
/// 28, timed out), but no HTTP answer came.
fn assert_refused_at_handshake(posted: &Posted) {
    match posted {
        Posted::Refused { curl_exit, stderr } => assert!(
            ![7, 28].contains(curl_exit),
            "not a TLS refusal (curl exit {curl_exit}): {stderr}"
        ),
        Posted::Answered { status, body } => {
            panic!("answered a caller without an allowed client certificate: {status} {body}")
        }
    }
}

/// Each forgery in each mode, as a table: `name: scenario(mode);`.
macro_rules! forgeries {
    ($($name:ident: $scenario:ident($mode:ident);)*) => {$(
        #[tokio::test]
        async fn $name() -> anyhow::Result<()> {
            $scenario(ClientAuth::$mode).await
        }
    )*};
}

forgeries! {
    without_client_auth_a_forged_eviction_outside_the_selection_changes_nothing:
        forged_eviction_outside_the_selection(None);
    without_client_auth_a_forged_grace_zero_delete_keeps_no_forged_options:
        forged_grace_zero_delete(None);
    without_client_auth_a_forged_old_object_is_not_believed: forged_old_object(None);
    without_client_auth_a_forged_delete_outside_the_selection_changes_nothing:
        forged_delete_outside_the_selection(None);
    with_client_auth_required_a_forged_eviction_outside_the_selection_is_refused_at_the_handshake:
        forged_eviction_outside_the_selection(Required);
    with_client_auth_required_a_forged_grace_zero_delete_is_refused_at_the_handshake:
        forged_grace_zero_delete(Required);
    with_client_auth_required_a_forged_old_object_is_refused_at_the_handshake:
        forged_old_object(Required);
    with_client_auth_required_a_forged_delete_outside_the_selection_is_refused_at_the_handshake:
        forged_delete_outside_the_selection(Required);
}

/// The cluster CA signs every client of the testbed; the admin's certificate is as valid as the
/// API server's, but not on the allow-list: refused at the handshake. The API server's own
/// evictions are served all the while.
#[tokio::test]
async fn with_client_auth_required_another_client_of_the_cluster_ca_is_refused_and_the_api_server_is_served()
-> anyhow::Result<()> {
    let Scene { env, install, pods } = scene("forged-admin", ClientAuth::Required).await?;
    let victim = &pods[0];
    let ip = replica_ip(&install).await?;
    let admin = testbed_client_cert(env.target, "admin")?;
    let posted = post(
        &ip,
        "/pods/eviction",
        &forged_eviction("forged-admin-1", victim),
        Some(admin),
    );
    // A certificate of the cluster CA naming kubernetes-admin.
    assert_refused_at_handshake(&posted);
    let api: Api<Pod> = env.api();
    let now = api.get(&victim.name_any()).await?;
    assert!(untouched(victim, &now), "{:?}", now.labels());
    // The real thing, through the API server: drained.
    api.evict(&victim.name_any(), &Default::default()).await?;
    let now = api.get(&victim.name_any()).await?;
    assert!(
        draining(&now),
        "an eviction through the API server was not served under clientAuth=required"
    );
    assert_eq!(
        now.annotations()[keys::REQUESTED_BY],
        "kubernetes-admin",
        "the API server's word is recorded as it is"
    );
    Ok(())
}

/// Mode `optional` serves a caller without a certificate (so an installation can be switched over
/// without an outage) but as unverified: its options are not kept, its user is marked, and the
/// replica logs it.
#[tokio::test]
async fn with_client_auth_optional_an_unverified_caller_is_served_as_unverified_and_logged()
-> anyhow::Result<()> {
    let Scene { env, install, pods } = scene("forged-optional", ClientAuth::Optional).await?;
    let victim = &pods[0];
    let ip = replica_ip(&install).await?;
    let posted = post(
        &ip,
        "/pods/delete",
        &forged_delete(
            "forged-optional-1",
            serde_json::to_value(victim)?,
            grace_zero(),
        ),
        None,
    );
    let Posted::Answered { status, body } = &posted else {
        panic!("mode optional refused a caller without a certificate: {posted:?}")
    };
    assert_eq!(*status, 200, "{body}");
    let api: Api<Pod> = env.api();
    let now = api.get(&victim.name_any()).await?;
    assert!(draining(&now), "{:?}", now.labels());
    assert!(now.annotations()[keys::REQUESTED_BY].contains("unverified"));
    let saved: schedule::SavedDeleteOptions = serde_json::from_str(
        now.annotations()
            .get(keys::DELETE_OPTIONS)
            .map(String::as_str)
            .unwrap_or("{}"),
    )?;
    assert_eq!(saved.grace_period_seconds, None);
    assert!(
        install.replica_logs().contains("unverified caller"),
        "the unverified caller was not logged"
    );
    Ok(())
}
