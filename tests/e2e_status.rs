//! `pod-graceful-drain status`, as an operator runs it (also as `kubectl pgd status`, through a
//! `kubectl-pgd` link on the PATH), on a cluster with drains in flight: every draining pod with
//! its schedule as its annotations say, and the installation's leader.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::PostParams;
use pgd_harness::as_cluster_user;
use pgd_harness::drained::{delete_at, draining};
use pgd_harness::product::{Options, Scene};
use pod_graceful_drain::core::keys;
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_pod-graceful-drain");

/// Runs `program args` as a cluster user; its stdout, or an error with its stderr.
fn run(scene: &Scene, program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = as_cluster_user(scene.env.target, program)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn status_lists_the_draining_pods_with_their_schedule_and_the_leader() -> anyhow::Result<()> {
    // Drains long enough to be seen in flight by every command below.
    let options = Options {
        drain_seconds: 120,
        ..Options::fast()
    };
    let scene = Scene::new("status", options, 3).await?;
    let api = scene.pods_api();
    let ns = scene.env.namespace.clone();
    // Nothing drains in this namespace yet.
    let quiet = run(&scene, Path::new(BINARY), &["status", "-n", &ns])?;
    assert!(quiet.contains("no pod is draining"), "{quiet}");
    // Two evictions (what `kubectl drain` sends): both pods drain, nothing is deleted yet.
    let mut victims: Vec<Pod> = Vec::new();
    for p in &scene.pods[..2] {
        let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": p.name_any(), "namespace": ns}});
        let _: Value = api
            .create_subresource("eviction", &p.name_any(), &PostParams::default(), &eviction)
            .await?;
        let now = api.get(&p.name_any()).await?;
        assert!(draining(&now), "{} is not draining", p.name_any());
        victims.push(now);
    }

    let json: Value = serde_json::from_str(&run(
        &scene,
        Path::new(BINARY),
        &["status", "-n", &ns, "-o", "json"],
    )?)?;
    let rows = json["draining"]
        .as_array()
        .expect("a list of draining pods");
    assert_eq!(rows.len(), 2, "{json:#}");
    for v in &victims {
        let row = rows
            .iter()
            .find(|r| r["pod"] == json!(v.name_any()))
            .unwrap_or_else(|| panic!("{} is not listed: {json:#}", v.name_any()));
        assert_eq!(row["namespace"], json!(ns));
        assert_eq!(
            row["instance"].as_str(),
            v.labels().get(keys::DRAINING_LABEL).map(String::as_str)
        );
        assert_eq!(row["reason"], json!("eviction"));
        assert_eq!(
            row["requested_by"].as_str(),
            v.annotations().get(keys::REQUESTED_BY).map(String::as_str)
        );
        assert_eq!(row["delete_at"], json!(delete_at(v)?.to_string()));
        assert_eq!(row["sealed"], json!(true));
        assert_eq!(row["terminating"], json!(false));
    }
    // The installation of this test, with its elected leader (one of its replicas).
    let install = json["installations"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|i| i["namespace"] == json!(scene.install.namespace))
        })
        .unwrap_or_else(|| panic!("the test's installation is not listed: {json:#}"));
    let replicas: Vec<String> = scene
        .install
        .api::<Pod>()
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    let leader = install["leader"].as_str().unwrap_or_default();
    assert!(
        replicas.iter().any(|r| r == leader),
        "leader {leader:?} is not one of {replicas:?}: {install:#}"
    );

    // The same as a kubectl plugin, in the table people read.
    let plugins = tempdir()?;
    std::os::unix::fs::symlink(BINARY, plugins.join("kubectl-pgd"))?;
    let kubectl = plugins.join("kubectl");
    // kubectl finds plugins on the PATH: the testbed's kubectl, with the link's folder first.
    std::os::unix::fs::symlink(which_kubectl(&scene)?, &kubectl)?;
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = as_cluster_user(scene.env.target, &kubectl)
        .env("PATH", path)
        .args(["pgd", "status", "-n", &ns])
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl pgd status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("NAMESPACE ") && l.ends_with("ENDPOINTS")),
        "no header in:\n{table}"
    );
    for v in &victims {
        let line = table
            .lines()
            .find(|l| l.contains(&v.name_any()))
            .unwrap_or_else(|| panic!("{} missing in:\n{table}", v.name_any()));
        assert!(line.contains("eviction"), "{line}");
        assert!(
            line.ends_with("out") || line.ends_with("still listed"),
            "{line}"
        );
    }
    assert!(table.contains(&format!("leader {leader}")), "{table}");
    std::fs::remove_dir_all(&plugins)?;
    Ok(())
}

/// A fresh folder under the system's temporary one.
fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "pgd-plugin-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The kubectl a cluster user runs (the testbed's own, on the testbed).
fn which_kubectl(scene: &Scene) -> anyhow::Result<std::path::PathBuf> {
    let out = as_cluster_user(scene.env.target, Path::new("sh"))
        .args(["-c", "command -v kubectl"])
        .output()?;
    anyhow::ensure!(out.status.success(), "no kubectl on the PATH");
    Ok(String::from_utf8(out.stdout)?.trim().into())
}
