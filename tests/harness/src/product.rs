//! Installs pod-graceful-drain from its chart (`chart/`), the way a user does: `helm install` of
//! the image built by `testbed/images/build-product`, into a release namespace of its own
//! (`<test namespace>-pgd`), so every product test runs under the chart's ServiceAccount and RBAC.
//! The webhooks only watch namespaces labelled for this installation, so tests running side by
//! side do not disturb each other. Dropping the Install removes the release and its namespace.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams};

use crate::cluster::{Target, helm};
use crate::error::{Error, Result};
use crate::namespace::{NamespaceGuard, TestEnv, create_namespace};
use crate::wait::{self, conditions};

pub const IMAGE_REPOSITORY: &str = "localhost/pod-graceful-drain";
pub const IMAGE_TAG: &str = "dev";
/// Label that makes a namespace subject to a given installation's webhooks.
pub const WATCH_LABEL: &str = "pod-graceful-drain.io/test-install";
/// Label of the product's own pods.
pub const PRODUCT_PODS: &str =
    "app.kubernetes.io/name=pod-graceful-drain,app.kubernetes.io/component=webhook";

pub fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../chart")
}

/// Whether the replicas demand the API server's client certificate (chart value clientAuth.mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

pub struct Options {
    /// The chart to install (default: `chart/` of this checkout). An older chart knows no
    /// `clientAuth` values: with one, `client_auth` must be `None` and is not passed.
    pub chart: Option<PathBuf>,
    pub replicas: i32,
    /// How the replicas authenticate their callers.
    pub client_auth: ClientAuth,
    pub drain_seconds: u64,
    pub hold_seconds: u64,
    /// Namespaces excluded besides kube-system and the release namespace.
    pub excluded_namespaces: Vec<String>,
    /// Extra `--set key=value` chart values.
    pub values: Vec<(String, String)>,
    /// Extra environment of the replicas (chart value extraEnv).
    pub extra_env: Vec<(String, String)>,
    pub timings: Timings,
}

/// How long the replicas take over the steps that are not what a test is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timings {
    /// Short: a 1 s shortest drain, 2 s of shutdown grace, a 6 s Lease, a 30 s uninstall wait.
    Fast,
    /// The chart's own.
    Chart,
}

impl Options {
    /// What most tests install: two replicas, short drains and timings, so a test takes seconds.
    pub fn fast() -> Options {
        Options {
            chart: None,
            replicas: 2,
            // The testbed's API server presents its webhook client certificate: every product
            // test runs as a careful operator would install it.
            client_auth: ClientAuth::Required,
            drain_seconds: 8,
            hold_seconds: 20,
            excluded_namespaces: vec![],
            values: vec![],
            extra_env: vec![],
            timings: Timings::Fast,
        }
    }

    /// The chart's defaults (replicas, drain, hold and every timing), but for client
    /// authentication: required, as the testbed's API server is set up for it.
    pub fn chart_defaults() -> Options {
        Options {
            replicas: 3,
            drain_seconds: 90,
            hold_seconds: 25,
            timings: Timings::Chart,
            ..Options::fast()
        }
    }
}

pub struct Install {
    target: &'static Target,
    pub client: kube::Client,
    /// The release (and the Lease, Deployment, Service... name: the chart's fullname).
    pub release: String,
    pub name: String,
    /// The release namespace.
    pub namespace: String,
    removed: bool,
    _namespace: NamespaceGuard,
}

/// Runs a command off the async runtime; fails with its output when it fails.
async fn run(what: String, mut cmd: Command) -> Result<Output> {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| Error::Unexpected(format!("{what}: {e}")))?
        .map_err(|e| Error::Unexpected(format!("{what}: {e}")))?;
    check(&what, out)
}

fn check(what: &str, out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Unexpected(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Install {
    /// `helm install` with values for tests (short drains and leases), waiting until every
    /// replica is ready and the CA bundle is injected. Pods in namespaces labelled
    /// `WATCH_LABEL=<test namespace>` are then subject to it; the test's own namespace is labelled.
    pub async fn new(env: &TestEnv, opts: Options) -> Result<Install> {
        let namespace = format!("{}-pgd", env.namespace);
        let guard = create_namespace(env.target, &env.client, &namespace).await?;
        let release = env.namespace.clone();
        let install = Install {
            target: env.target,
            client: env.client.clone(),
            name: format!("{release}-pod-graceful-drain"),
            release,
            namespace,
            removed: false,
            _namespace: guard,
        };
        let mut sets: Vec<(String, String)> = vec![
            ("image.repository".into(), IMAGE_REPOSITORY.into()),
            ("image.tag".into(), IMAGE_TAG.into()),
            ("replicaCount".into(), opts.replicas.to_string()),
            ("drain.seconds".into(), opts.drain_seconds.to_string()),
            ("holdSeconds".into(), opts.hold_seconds.to_string()),
            // Installations of parallel tests must not act on each other's pods.
            ("instance".into(), env.namespace.clone()),
        ];
        if opts.timings == Timings::Fast {
            sets.extend(
                [
                    ("drain.minSeconds", "1"),
                    ("shutdownGraceSeconds", "2"),
                    ("leaderElection.leaseSeconds", "6"),
                    ("uninstall.waitSeconds", "30"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
        }
        if opts.chart.is_none() {
            sets.push(("clientAuth.mode".into(), opts.client_auth.as_str().into()));
        } else if opts.client_auth != ClientAuth::None {
            return Err(Error::Unexpected(
                "an older chart is installed without client authentication".into(),
            ));
        }
        sets.extend(opts.values.iter().cloned());
        let mut cmd = install.helm();
        cmd.args(["install", &install.release])
            .arg(opts.chart.clone().unwrap_or_else(chart_dir))
            .args(["--wait", "--timeout", "120s"]);
        for (k, v) in &sets {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        let env_json: Vec<serde_json::Value> = opts
            .extra_env
            .iter()
            .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
            .collect();
        cmd.arg("--set-json")
            .arg(format!("extraEnv={}", serde_json::Value::from(env_json)))
            .arg("--set-json")
            .arg(format!(
                "excludedNamespaces={}",
                serde_json::Value::from(opts.excluded_namespaces.clone())
            ))
            .arg("--set-json")
            .arg(format!(
                "namespaceSelector.matchLabels={}",
                serde_json::json!({WATCH_LABEL: env.namespace})
            ));
        run("helm install".into(), cmd).await?;
        install.wait_ready(opts.replicas as usize).await?;
        env.label_namespace(WATCH_LABEL, &env.namespace).await?;
        Ok(install)
    }

    /// A helm command on this release's namespace.
    pub fn helm(&self) -> Command {
        let mut c = helm(self.target);
        c.args(["--namespace", &self.namespace]);
        c
    }

    /// Runs helm with these arguments; fails with its output when it fails.
    pub async fn run_helm(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.helm();
        cmd.args(args);
        run(
            format!("helm {}", args.first().copied().unwrap_or_default()),
            cmd,
        )
        .await
    }

    /// An Api for namespaced objects in the release namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The replicas that are not terminating.
    pub async fn replicas(&self) -> Result<Vec<Pod>> {
        Ok(self
            .api::<Pod>()
            .list(&ListParams::default().labels(PRODUCT_PODS))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// The cluster it is installed on.
    pub fn target(&self) -> &'static Target {
        self.target
    }

    /// A running replica and its pod IP (to talk to it directly, past its Service).
    pub async fn replica_with_ip(&self) -> Result<(Pod, String)> {
        self.replicas()
            .await?
            .into_iter()
            .find_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((p, ip))
            })
            .ok_or_else(|| Error::Unexpected("no replica with a pod IP".into()))
    }

    /// Kills the replica that holds the Lease (waiting up to 30 s for one to), the hard way:
    /// grace period 0, so it neither handles SIGTERM nor releases the Lease. Returns its name.
    pub async fn kill_leader(&self) -> Result<String> {
        let leases: Api<Lease> = self.api();
        let leader = wait::until(
            &leases,
            &self.name,
            "a leader",
            Duration::from_secs(30),
            |l: Option<&Lease>| {
                l.and_then(|l| l.spec.as_ref()?.holder_identity.as_ref())
                    .is_some()
            },
        )
        .await?
        .and_then(|l| l.spec?.holder_identity)
        .ok_or_else(|| Error::Unexpected("the Lease has no holder".into()))?;
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        self.api::<Pod>().delete(&leader, &dp).await?;
        Ok(leader)
    }

    /// Every replica ready and behind the Service, no replica of an earlier revision left (one
    /// that is shutting down still answers the connections the API server holds open to it for
    /// its shutdown grace), and the CA bundle in both webhooks.
    pub async fn wait_ready(&self, replicas: usize) -> Result<()> {
        let deployments: Api<Deployment> = self.api();
        wait::until(
            &deployments,
            &self.name,
            "pod-graceful-drain to be Available",
            Duration::from_secs(120),
            conditions::deployment_complete,
        )
        .await?;
        wait::until_list(
            &self.api::<Pod>(),
            kube::runtime::watcher::Config::default().labels(PRODUCT_PODS),
            &format!("only {replicas} replicas of pod-graceful-drain, none shutting down"),
            Duration::from_secs(180),
            |pods: &[Pod]| pods.len() == replicas,
        )
        .await?;
        wait::service_endpoints_ready(
            &self.client,
            &self.namespace,
            &self.name,
            replicas,
            Duration::from_secs(60),
        )
        .await?;
        let injected = |b: Option<&k8s_openapi::ByteString>| b.is_some_and(|b| !b.0.is_empty());
        wait::until(
            &Api::<ValidatingWebhookConfiguration>::all(self.client.clone()),
            &self.name,
            "the CA bundle in the validating webhook",
            Duration::from_secs(60),
            |v: Option<&ValidatingWebhookConfiguration>| {
                v.and_then(|v| v.webhooks.as_ref()).is_some_and(|w| {
                    w.iter()
                        .all(|w| injected(w.client_config.ca_bundle.as_ref()))
                })
            },
        )
        .await?;
        wait::until(
            &Api::<MutatingWebhookConfiguration>::all(self.client.clone()),
            &self.name,
            "the CA bundle in the mutating webhook",
            Duration::from_secs(60),
            |v: Option<&MutatingWebhookConfiguration>| {
                v.and_then(|v| v.webhooks.as_ref()).is_some_and(|w| {
                    w.iter()
                        .all(|w| injected(w.client_config.ca_bundle.as_ref()))
                })
            },
        )
        .await?;
        Ok(())
    }

    /// `helm uninstall` with its hooks, whatever it ends with (for a test that judges the exit).
    pub async fn try_uninstall(mut self) -> Result<Output> {
        let mut cmd = self.helm();
        cmd.args(["uninstall", &self.release, "--wait", "--timeout", "300s"]);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| Error::Unexpected(format!("helm uninstall: {e}")))?
            .map_err(|e| Error::Unexpected(format!("helm uninstall: {e}")))?;
        if out.status.success() {
            self.removed = true;
        }
        Ok(out)
    }

    /// `helm uninstall` with its hooks (the way a user uninstalls), waiting for it to finish.
    pub async fn uninstall(mut self) -> Result<Output> {
        let out = self
            .run_helm(&[
                "uninstall",
                &self.release.clone(),
                "--wait",
                "--timeout",
                "300s",
            ])
            .await?;
        self.removed = true;
        Ok(out)
    }
}

impl Install {
    /// The logs of the running replicas.
    pub fn replica_logs(&self) -> String {
        let out = crate::cluster::kubectl(self.target)
            .args(["-n", &self.namespace, "logs", "-l", PRODUCT_PODS])
            .args(["--tail=-1", "--prefix", "--max-log-requests=10"])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("(kubectl logs failed: {e})"),
        }
    }
}

impl Drop for Install {
    /// Fails the test when a replica was refused anything by RBAC (the chart's ServiceAccount
    /// must hold every permission the code uses). Then removes the release without its hooks
    /// (fast); the namespace guard deletes the release namespace.
    fn drop(&mut self) {
        if self.removed || std::env::var_os(crate::namespace::KEEP_NAMESPACES_ENV).is_some() {
            return;
        }
        let forbidden: Vec<String> = self
            .replica_logs()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .map(str::to_string)
            .collect();
        let mut cmd = self.helm();
        cmd.args([
            "uninstall",
            &self.release,
            "--no-hooks",
            "--wait",
            "--timeout",
            "60s",
        ]);
        let _ = std::thread::spawn(move || cmd.output()).join();
        if !forbidden.is_empty() && !std::thread::panicking() {
            panic!(
                "the product was refused by RBAC under the chart's ServiceAccount:\n{}",
                forbidden.join("\n")
            );
        }
    }
}

/// What most end-to-end tests start from: a fresh namespace, the product installed there with
/// some options, and the demo app (Service and Deployment `web`) rolled out.
pub struct Scene {
    // Dropped in this order: the release first, then the test's namespace.
    pub install: Install,
    pub env: TestEnv,
    /// The app's pods once it is Available.
    pub pods: Vec<Pod>,
}

impl Scene {
    pub async fn new(name: &str, options: Options, replicas: i32) -> Result<Scene> {
        let env = TestEnv::new(name).await?;
        let install = Install::new(&env, options).await?;
        let pods = env
            .serve_demo("web", replicas, serde_json::json!({}))
            .await?;
        Ok(Scene { install, env, pods })
    }

    /// The pods of the test's namespace.
    pub fn pods_api(&self) -> kube::Api<Pod> {
        self.env.api()
    }
}
