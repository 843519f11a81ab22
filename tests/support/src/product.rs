//! Installs pod-graceful-drain from its image into a test namespace, the way a user would run it:
//! a ServiceAccount with only the permissions it needs, a TLS Secret from a CA made here, a
//! multi-replica Deployment behind a Service, and webhook configurations with `service:`
//! clientConfigs. The webhooks only watch the namespaces labelled for this installation, so tests
//! running side by side do not disturb each other. Cluster-scoped objects are removed on drop.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::Target;
use crate::error::{Error, Result};
use crate::namespace::TestEnv;
use crate::wait::{self, conditions};

pub const IMAGE: &str = "localhost/pod-graceful-drain:dev";
/// Label that makes a namespace subject to a given installation's webhooks.
pub const WATCH_LABEL: &str = "pod-graceful-drain.io/test-install";

pub struct Install {
    target: &'static Target,
    name: String,
}

pub struct Options {
    pub replicas: i32,
    pub drain_seconds: u64,
    pub hold_seconds: u64,
    /// PGD_EXCLUDED_NAMESPACES.
    pub excluded_namespaces: String,
    pub extra_env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            replicas: 2,
            drain_seconds: 8,
            hold_seconds: 20,
            excluded_namespaces: "kube-system".into(),
            extra_env: vec![],
        }
    }
}

fn tls_pair(host: &str) -> Result<(String, String, String)> {
    let err = |e: rcgen::Error| Error::Unexpected(format!("certificate: {e}"));
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .map_err(err)?
        .signed_by(&key, &issuer)
        .map_err(err)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("static manifest")
}

/// The permissions the product uses, each for a reason (see SECURITY.md when it lands).
fn cluster_rules() -> Value {
    json!([
        // watch Services and budgets (caches); read the pod of an eviction; isolate and delete pods
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "list", "watch"]},
        // record an eviction's disruption as the eviction handler does
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets/status"], "verbs": ["update"]},
        // a pod's controller's selector
        {"apiGroups": ["apps"], "resources": ["replicasets", "statefulsets", "daemonsets"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]},
        // never delete a pod still ready in an EndpointSlice
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}
    ])
}

impl Install {
    /// Installs into the test's namespace and waits until every replica is ready. Pods in
    /// namespaces labelled `WATCH_LABEL=<namespace>` are then subject to it; the test's own
    /// namespace is labelled.
    pub async fn new(env: &TestEnv, opts: Options) -> Result<Install> {
        let ns = env.namespace.clone();
        let name = format!("pgd-{ns}");
        let client = env.client.clone();
        let install = Install {
            target: env.target,
            name: name.clone(),
        };
        let (ca, cert, key) = tls_pair(&format!("pod-graceful-drain.{ns}.svc"))?;
        let pp = PostParams::default();
        env.api::<ServiceAccount>()
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "pod-graceful-drain"}})),
            )
            .await?;
        Api::<ClusterRole>::all(client.clone())
            .create(
                &pp,
                &obj(json!({"metadata": {"name": name}, "rules": cluster_rules()})),
            )
            .await?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&pp, &obj(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": "pod-graceful-drain", "namespace": ns}]
            })))
            .await?;
        // The Lease lives in the product's own namespace only.
        env.api::<Role>()
            .create(&pp, &obj(json!({"metadata": {"name": "leader-election"}, "rules": [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update", "patch"]}
            ]})))
            .await?;
        env.api::<RoleBinding>()
            .create(&pp, &obj(json!({
                "metadata": {"name": "leader-election"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
                "subjects": [{"kind": "ServiceAccount", "name": "pod-graceful-drain", "namespace": ns}]
            })))
            .await?;
        env.api::<Secret>()
            .create(
                &pp,
                &obj(json!({
                    "metadata": {"name": "pod-graceful-drain-tls"}, "type": "kubernetes.io/tls",
                    "stringData": {"tls.crt": cert, "tls.key": key}
                })),
            )
            .await?;
        let mut env_vars = vec![
            json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
            json!({"name": "PGD_DRAIN_SECONDS", "value": opts.drain_seconds.to_string()}),
            json!({"name": "PGD_DRAIN_MIN_SECONDS", "value": "1"}),
            json!({"name": "PGD_HOLD_SECONDS", "value": opts.hold_seconds.to_string()}),
            json!({"name": "PGD_EXCLUDED_NAMESPACES", "value": opts.excluded_namespaces}),
            json!({"name": "PGD_SHUTDOWN_GRACE_SECONDS", "value": "2"}),
            json!({"name": "PGD_LEASE_SECONDS", "value": "6"}),
            // Installations of parallel tests must not act on each other's pods.
            json!({"name": "PGD_INSTANCE", "value": ns}),
            json!({"name": "RUST_LOG", "value": "info"}),
        ];
        for (k, v) in &opts.extra_env {
            env_vars.push(json!({"name": k, "value": v}));
        }
        let labels = json!({"app.kubernetes.io/name": "pod-graceful-drain"});
        let deployments: Api<Deployment> = env.api();
        deployments
            .create(&pp, &obj(json!({
                "metadata": {"name": "pod-graceful-drain"},
                "spec": {
                    "replicas": opts.replicas,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": {
                        "serviceAccountName": "pod-graceful-drain",
                        "terminationGracePeriodSeconds": opts.hold_seconds + 10,
                        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                        "volumes": [{"name": "tls", "secret": {"secretName": "pod-graceful-drain-tls"}}],
                        "containers": [{
                            "name": "webhook", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                            "env": env_vars,
                            "ports": [{"name": "https", "containerPort": 9443}, {"name": "health", "containerPort": 8081}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 1},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 5},
                            "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}],
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}}
                        }]
                    }}
                }
            })))
            .await?;
        env.api::<Service>()
            .create(&pp, &obj(json!({
                "metadata": {"name": "pod-graceful-drain"},
                "spec": {"selector": labels, "ports": [{"name": "https", "port": 443, "targetPort": "https"}]}
            })))
            .await?;
        wait::until(
            &deployments,
            "pod-graceful-drain",
            "pod-graceful-drain to be Available",
            Duration::from_secs(90),
            conditions::deployment_complete,
        )
        .await?;
        wait::service_endpoints_ready(
            &env.client,
            &ns,
            "pod-graceful-drain",
            opts.replicas as usize,
            Duration::from_secs(30),
        )
        .await?;

        use base64::Engine as _;
        let bundle = base64::engine::general_purpose::STANDARD.encode(ca);
        let webhook = |path: &str, rules: Value| {
            json!({
                "name": format!("{}.pod-graceful-drain.io", path.trim_start_matches('/').replace('/', "-")),
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 30,
                "namespaceSelector": {"matchLabels": {WATCH_LABEL: ns}},
                "rules": rules,
                "clientConfig": {"caBundle": bundle,
                                 "service": {"name": "pod-graceful-drain", "namespace": ns, "port": 443, "path": path}}
            })
        };
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(&pp, &obj(json!({"metadata": {"name": name}, "webhooks": [webhook(
                "/pods/delete",
                json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["pods"]}]),
            )]})))
            .await?;
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&pp, &obj(json!({"metadata": {"name": name}, "webhooks": [webhook(
                "/pods/eviction",
                json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods/eviction"]}]),
            )]})))
            .await?;
        env.label_namespace(WATCH_LABEL, &ns).await?;
        Ok(install)
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let target = self.target;
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(client) = target.client().await else {
                    return;
                };
                let dp = DeleteParams::default();
                let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<ClusterRoleBinding>::all(client.clone())
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<ClusterRole>::all(client).delete(&name, &dp).await;
            })
        })
        .join();
    }
}
