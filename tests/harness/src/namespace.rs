//! A fresh namespace per test, deleted when the test ends (also when it fails or panics).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::cluster::{Target, target};
use crate::error::{Error, Result};
use crate::wait;

/// Set to keep test namespaces after the run, for a person to look at.
pub const KEEP_NAMESPACES_ENV: &str = "PGD_TEST_KEEP_NAMESPACES";
/// Label on every namespace the harness creates, so leftovers are easy to find and remove.
pub const TEST_NAMESPACE_LABEL: &str = "pod-graceful-drain.io/test";

/// What a test gets: the cluster, a client for it and a namespace of its own.
pub struct TestEnv {
    pub target: &'static Target,
    pub client: Client,
    pub namespace: String,
    _guard: NamespaceGuard,
}

impl TestEnv {
    /// Prepares the cluster (bringing the testbed up when needed) and creates the namespace
    /// `pgd-<name>-<suffix>`, ready to use (its default ServiceAccount exists).
    pub async fn new(name: &str) -> Result<Self> {
        let target = target()?;
        let client = target.client().await?;
        let suffix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() % 1_000_000)
            .unwrap_or(0);
        let namespace = format!("pgd-{name}-{suffix:06}");
        let guard = create_namespace(target, &client, &namespace).await?;
        Ok(TestEnv {
            target,
            client,
            namespace,
            _guard: guard,
        })
    }

    /// An Api for namespaced objects of kind K in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

impl TestEnv {
    /// A ServiceAccount `name` of the test's namespace that may get, list and patch pods and
    /// their status there, and nothing else (no delete): the user a forger would be. Returns its
    /// user name, for `kubectl --as`.
    pub async fn patch_only_user(&self, name: &str) -> Result<String> {
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let pp = PostParams::default();
        fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
            serde_json::from_value(v).map_err(|e| Error::Unexpected(e.to_string()))
        }
        self.api::<ServiceAccount>()
            .create(&pp, &parse(json!({"metadata": {"name": name}}))?)
            .await?;
        self.api::<Role>()
            .create(
                &pp,
                &parse(json!({
                    "metadata": {"name": name},
                    "rules": [{"apiGroups": [""], "resources": ["pods", "pods/status"],
                               "verbs": ["get", "list", "patch"]}]
                }))?,
            )
            .await?;
        self.api::<RoleBinding>()
            .create(
                &pp,
                &parse(json!({
                    "metadata": {"name": name},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.namespace}]
                }))?,
            )
            .await?;
        Ok(format!("system:serviceaccount:{}:{name}", self.namespace))
    }

    /// `kubectl patch pod <pod> --type merge` (of its status subresource when `status`), as
    /// `user` (`None`: the admin); its output, for the caller to judge.
    pub fn patch_pod_as(
        &self,
        user: Option<&str>,
        pod: &str,
        status: bool,
        patch: &serde_json::Value,
    ) -> std::io::Result<std::process::Output> {
        let mut cmd = crate::kubectl(self.target);
        if let Some(u) = user {
            cmd.arg(format!("--as={u}"));
        }
        cmd.args([
            "-n",
            &self.namespace,
            "patch",
            "pod",
            pod,
            "--type",
            "merge",
        ]);
        if status {
            cmd.arg("--subresource=status");
        }
        cmd.arg("-p").arg(patch.to_string());
        cmd.output()
    }

    /// `kubectl delete pod <pod> --wait=false` in the test's namespace, then `extra`: a person's
    /// DELETE, which returns once the API server (and the webhook) answered it, not once the pod
    /// is gone. Returned unrun, for the caller to time, run or spawn.
    pub fn kubectl_delete_pod(&self, pod: &str, extra: &[&str]) -> std::process::Command {
        let mut cmd = crate::kubectl(self.target);
        cmd.args(["-n", &self.namespace, "delete", "pod", pod, "--wait=false"])
            .args(extra);
        cmd
    }

    /// Adds a label to the test's namespace.
    pub async fn label_namespace(&self, key: &str, value: &str) -> Result<()> {
        use kube::api::{Patch, PatchParams};
        Api::<Namespace>::all(self.client.clone())
            .patch(
                &self.namespace,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
            )
            .await?;
        Ok(())
    }

    /// `http://<ClusterIP>/` of a Service in the test's namespace, once its EndpointSlices list
    /// `ready_endpoints` ready endpoints.
    pub async fn service_url(&self, service: &str, ready_endpoints: usize) -> Result<String> {
        let ip = self
            .api::<Service>()
            .get(service)
            .await?
            .spec
            .and_then(|s| s.cluster_ip)
            .ok_or_else(|| Error::Unexpected(format!("Service {service} has no ClusterIP")))?;
        wait::service_endpoints_ready(
            &self.client,
            &self.namespace,
            service,
            ready_endpoints,
            Duration::from_secs(30),
        )
        .await?;
        Ok(format!("http://{ip}/"))
    }
}

/// Creates a labelled namespace, ready for pods, deleted when the guard drops.
pub(crate) async fn create_namespace(
    target: &'static Target,
    client: &Client,
    namespace: &str,
) -> Result<NamespaceGuard> {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": namespace, "labels": {TEST_NAMESPACE_LABEL: "true"}}
    }))
    .expect("static namespace manifest");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let guard = NamespaceGuard {
        target,
        name: namespace.to_string(),
    };
    // Pods cannot be created before the ServiceAccount controller has made `default`.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait::until(
        &sas,
        "default",
        "the namespace's default ServiceAccount",
        Duration::from_secs(30),
        |sa: Option<&ServiceAccount>| sa.is_some(),
    )
    .await?;
    Ok(guard)
}

pub(crate) struct NamespaceGuard {
    target: &'static Target,
    name: String,
}

impl Drop for NamespaceGuard {
    /// Deletes the namespace without waiting for it to be gone. Runs on a thread of its own with a
    /// runtime of its own, because the test's runtime may already be unwinding.
    fn drop(&mut self) {
        if std::env::var_os(KEEP_NAMESPACES_ENV).is_some() {
            eprintln!("keeping test namespace {}", self.name);
            return;
        }
        let target = self.target;
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for namespace cleanup");
            rt.block_on(async move {
                let client = target.client().await?;
                Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await?;
                Ok::<_, crate::Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("could not delete test namespace {}: {e}", self.name);
        }
    }
}
