//! Which cluster the tests run on, and how to reach it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::error::{Error, Result};
use crate::netns;

/// Names a kubeconfig for an existing cluster; when set, the testbed is not used at all.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "PGD_TEST_KUBECONFIG";
/// How many nodes the harness asks for when it has to bring the testbed up itself.
pub const TESTBED_NODES_ENV: &str = "PGD_TESTBED_NODES";
/// The network namespace of testbed node 1 (API server, ClusterIPs, pod routes to every node).
const TESTBED_NETNS: &str = "/run/netns/pgd-n1";

/// The cluster under test.
#[derive(Debug, Clone)]
pub enum Target {
    /// The project's own testbed, driven by the scripts in `testbed/`.
    Testbed {
        kubeconfig: PathBuf,
        scripts: PathBuf,
    },
    /// An existing cluster given by `PGD_TEST_KUBECONFIG`.
    External { kubeconfig: PathBuf },
}

impl Target {
    pub fn kubeconfig(&self) -> &Path {
        match self {
            Target::Testbed { kubeconfig, .. } | Target::External { kubeconfig } => kubeconfig,
        }
    }

    pub fn is_testbed(&self) -> bool {
        matches!(self, Target::Testbed { .. })
    }

    /// Joins the cluster's network on this thread (testbed only; a no-op elsewhere).
    pub fn enter_network(&self) -> Result<()> {
        match self {
            Target::Testbed { .. } => netns::enter(TESTBED_NETNS),
            Target::External { .. } => Ok(()),
        }
    }

    /// A client for the cluster, made on (and usable from) the calling thread's runtime.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// The configuration [`Target::client`] uses, for a client with layers of its own.
    pub async fn config(&self) -> Result<Config> {
        self.enter_network()?;
        let path = self.kubeconfig();
        let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
        // Tests must see the server's answers as they are: kube retries 429/503/504 by default,
        // which turns an eviction refused by a PodDisruptionBudget into minutes of backoff.
        config.default_retry = false;
        Ok(config)
    }
}

/// The cluster under test, resolved once per test process. On the testbed this brings the cluster
/// up when none is healthy (an existing cluster is used as it is, whatever its node count).
pub fn target() -> Result<&'static Target> {
    static TARGET: OnceLock<std::result::Result<Target, String>> = OnceLock::new();
    TARGET
        .get_or_init(|| resolve().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Testbed(e.clone()))
}

fn resolve() -> Result<Target> {
    if let Some(path) = std::env::var_os(EXTERNAL_KUBECONFIG_ENV) {
        return Ok(Target::External {
            kubeconfig: PathBuf::from(path),
        });
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testbed");
    let scripts = scripts
        .canonicalize()
        .map_err(|e| Error::Testbed(format!("{}: {e}", scripts.display())))?;
    let health = Command::new(scripts.join("lib/health"))
        .output()
        .map_err(|e| Error::Testbed(format!("running testbed/lib/health: {e}")))?;
    // A healthy testbed is used as it is, whatever its node count (a person may have brought it up);
    // otherwise `up` brings one up (cleaning any leftovers first).
    let out = if health.status.success() {
        health
    } else {
        let nodes = std::env::var(TESTBED_NODES_ENV).unwrap_or_else(|_| "2".into());
        Command::new(scripts.join("up"))
            .arg(&nodes)
            .output()
            .map_err(|e| Error::Testbed(format!("running testbed/up: {e}")))?
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Testbed(format!(
            "testbed/up failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let kubeconfig = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export KUBECONFIG="))
        .next_back()
        .ok_or_else(|| {
            Error::Testbed(format!("testbed/up printed no KUBECONFIG line:\n{stdout}"))
        })?;
    Ok(Target::Testbed {
        kubeconfig: PathBuf::from(kubeconfig),
        scripts,
    })
}

/// A `kubectl` command for the cluster under test (the testbed's own kubectl, run inside its
/// network; or `kubectl` from PATH with the external kubeconfig).
pub fn kubectl(target: &Target) -> Command {
    match target {
        Target::Testbed { scripts, .. } => Command::new(scripts.join("kubectl")),
        Target::External { kubeconfig } => {
            let mut c = Command::new("kubectl");
            c.arg("--kubeconfig").arg(kubeconfig);
            c
        }
    }
}

/// `program` as a user of the cluster runs it: with the cluster's kubeconfig, and on the testbed
/// inside its network (where the API server is reachable), the testbed's kubectl on the PATH.
pub fn as_cluster_user(target: &Target, program: &Path) -> Command {
    match target {
        Target::Testbed { scripts, .. } => {
            let mut c = Command::new(scripts.join("exec"));
            c.arg(program);
            c
        }
        Target::External { kubeconfig } => {
            let mut c = Command::new(program);
            c.env("KUBECONFIG", kubeconfig);
            c
        }
    }
}

/// One of the testbed's own scripts (`images/tag`, say); an error on another cluster.
pub fn testbed_script(target: &Target, path: &str) -> Result<Command> {
    match target {
        Target::Testbed { scripts, .. } => Ok(Command::new(scripts.join(path))),
        Target::External { .. } => Err(Error::Unexpected(format!(
            "testbed/{path} needs the testbed, not an external cluster"
        ))),
    }
}

/// The certificate and key of one of the testbed PKI's clients (`admin`, say), signed by the
/// cluster CA; an error on another cluster.
pub fn testbed_client_cert(target: &Target, name: &str) -> Result<(PathBuf, PathBuf)> {
    match target {
        Target::Testbed { .. } => {
            let dir = Path::new("/var/lib/pgd-testbed/pki");
            Ok((
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            ))
        }
        Target::External { .. } => Err(Error::Unexpected(format!(
            "the client certificate {name} is the testbed's, not an external cluster's"
        ))),
    }
}

/// A `helm` command for the cluster under test (the testbed's own helm, run inside its network;
/// or `helm` from PATH with the external kubeconfig).
pub fn helm(target: &Target) -> Command {
    match target {
        Target::Testbed { scripts, .. } => Command::new(scripts.join("helm")),
        Target::External { kubeconfig } => {
            let mut c = Command::new("helm");
            c.arg("--kubeconfig").arg(kubeconfig);
            c
        }
    }
}

/// A `helm` command for what needs no cluster (`lint`, `template`): the testbed's build of helm
/// (never bringing the testbed up), or `helm` from PATH when the tests run on another cluster.
pub fn helm_offline() -> Command {
    if std::env::var_os(EXTERNAL_KUBECONFIG_ENV).is_some() {
        return Command::new("helm");
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testbed");
    let mut c = Command::new("bash");
    c.args([
        "-c",
        r#"source "$0/lib/common.sh" && exec "$HELM_BIN/helm" "$@""#,
    ])
    .arg(scripts);
    c
}

/// Names of the nodes that are Ready, schedulable and untainted (where test pods can go), sorted.
pub async fn nodes_ready_schedulable(client: &Client) -> Result<Vec<String>> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut names: Vec<String> = nodes
        .items
        .iter()
        .filter(|n| {
            let spec = n.spec.as_ref();
            let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
            let tainted = spec
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.effect == "NoSchedule"));
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready && !unschedulable && !tainted
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    names.sort();
    Ok(names)
}
