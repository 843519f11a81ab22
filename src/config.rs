//! The process's configuration: every flag also from the environment (`PGD_*`), validated once
//! into the values the rest of the program uses.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::core::decision::{LongDrain, Policy};
use crate::core::schedule::DrainBounds;
use crate::core::selector::Selector;
use crate::tls::client_auth;

/// The API server gives up on a webhook after at most 30 s; a held answer must come before that.
pub const WEBHOOK_TIMEOUT_CEILING: Duration = Duration::from_secs(30);

/// Users whose DELETEs are a controller's when kube-controller-manager runs with
/// `--use-service-account-credentials` (each controller its own ServiceAccount), and the
/// controller-manager's own identity when it does not.
pub const DEFAULT_CONTROLLER_USERS: &str = "system:serviceaccount:kube-system:replicaset-controller,\
system:serviceaccount:kube-system:statefulset-controller,\
system:serviceaccount:kube-system:daemon-set-controller,\
system:serviceaccount:kube-system:job-controller,\
system:serviceaccount:kube-system:generic-garbage-collector,\
system:serviceaccount:kube-system:cronjob-controller,\
system:serviceaccount:kube-system:node-controller,\
system:serviceaccount:kube-system:pod-garbage-collector,\
system:kube-controller-manager";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLongDrain {
    Deny,
    Allow,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "pod-graceful-drain",
    version,
    about = "Keeps deleted and evicted pods serving until load balancers have let go of them"
)]
pub struct Args {
    /// HTTPS address of the admission webhook.
    #[arg(long, env = "PGD_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// Plain-HTTP address of /healthz and /readyz.
    #[arg(long, env = "PGD_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// Serve the certificate held by this Secret of our namespace (keys tls.crt, tls.key) instead
    /// of files; re-read every few seconds.
    #[arg(long, env = "PGD_TLS_SECRET")]
    pub tls_secret: Option<String>,
    /// Create, renew and rotate the CA and serving certificate in --tls-secret ourselves and keep
    /// the webhook configurations' CA bundle in step (off: cert-manager or a person does it).
    #[arg(long, env = "PGD_TLS_MANAGE", action = clap::ArgAction::Set, default_value_t = false)]
    pub tls_manage: bool,
    /// Name of the validating and the mutating webhook configuration (both carry it).
    #[arg(long, env = "PGD_WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,
    /// The Service the API server calls: the serving certificate names `<it>.<namespace>.svc`.
    #[arg(long, env = "PGD_SERVICE_NAME", default_value = "pod-graceful-drain")]
    pub service_name: String,
    /// Lifetime of a serving certificate we issue; renewed in its last third.
    #[arg(long, env = "PGD_CERT_SECONDS", default_value_t = 365 * 24 * 3600)]
    pub cert_seconds: i64,
    /// Lifetime of a CA we create; its successor is trusted ahead of use in its last third.
    #[arg(long, env = "PGD_CA_SECONDS", default_value_t = 10 * 365 * 24 * 3600)]
    pub ca_seconds: i64,
    /// Serving certificate (PEM) when no --tls-secret is given, reloaded when the file changes.
    #[arg(long, env = "PGD_TLS_CERT_FILE", default_value = "/tls/tls.crt")]
    pub tls_cert_file: PathBuf,
    /// Serving key (PEM), reloaded when the file changes.
    #[arg(long, env = "PGD_TLS_KEY_FILE", default_value = "/tls/tls.key")]
    pub tls_key_file: PathBuf,
    /// Whether callers must present the API server's client certificate: `required` refuses the
    /// TLS handshake otherwise; `optional` serves them as unverified (counted and logged);
    /// `none` verifies nobody. Unverified requests are served without trusting their body.
    #[arg(long, env = "PGD_CLIENT_AUTH", value_enum, default_value = "none")]
    pub client_auth: client_auth::Mode,
    /// PEM bundle of the CA that signs the API server's client certificate (re-read when it
    /// changes).
    #[arg(long, env = "PGD_CLIENT_CA_FILE", default_value = "/client-ca/ca.crt")]
    pub client_ca_file: PathBuf,
    /// Identities (certificate CN or DNS SAN) allowed to call, comma-separated: a cluster CA
    /// signs many clients, only the API server's may call.
    #[arg(long, env = "PGD_CLIENT_ALLOWED_NAMES", value_delimiter = ',')]
    pub client_allowed_names: Vec<String>,
    /// The namespaces served, as a JSON LabelSelector on their labels (the webhooks'
    /// namespaceSelector, applied here too). Empty: every namespace not excluded.
    #[arg(long, env = "PGD_NAMESPACE_SELECTOR", default_value = "")]
    pub namespace_selector: String,
    /// Drain length when a pod does not ask for another, in seconds.
    #[arg(long, env = "PGD_DRAIN_SECONDS", default_value_t = 90)]
    pub drain_seconds: u64,
    /// Shortest drain a pod may ask for (annotation pod-graceful-drain.io/drain-seconds).
    #[arg(long, env = "PGD_DRAIN_MIN_SECONDS", default_value_t = 5)]
    pub drain_min_seconds: u64,
    /// Longest drain a pod may ask for; also the latest a pod with a mangled schedule lives.
    #[arg(long, env = "PGD_DRAIN_MAX_SECONDS", default_value_t = 900)]
    pub drain_max_seconds: u64,
    /// How long a person's DELETE may be held before it is answered (below the webhook timeout).
    #[arg(long, env = "PGD_HOLD_SECONDS", default_value_t = 25)]
    pub hold_seconds: u64,
    /// What a held DELETE is answered at the deadline when the drain is longer.
    #[arg(long, env = "PGD_ON_LONG_DRAIN", value_enum, default_value = "deny")]
    pub on_long_drain: OnLongDrain,
    /// Namespaces never drained (comma-separated).
    #[arg(
        long,
        env = "PGD_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub excluded_namespaces: Vec<String>,
    /// Users whose DELETEs are answered at once (comma-separated).
    #[arg(long, env = "PGD_CONTROLLER_USERS", value_delimiter = ',', default_value = DEFAULT_CONTROLLER_USERS)]
    pub controller_users: Vec<String>,
    /// This process's own namespace (the Lease and the own-ServiceAccount check use it).
    #[arg(long, env = "POD_NAMESPACE", default_value = "pod-graceful-drain")]
    pub namespace: String,
    /// This process's ServiceAccount name.
    #[arg(
        long,
        env = "PGD_SERVICE_ACCOUNT",
        default_value = "pod-graceful-drain"
    )]
    pub service_account: String,
    /// Identity in leader election (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "pod-graceful-drain")]
    pub identity: String,
    /// This installation's name: the value of the draining label on the pods it drains (its
    /// deleter acts on those only).
    #[arg(long, env = "PGD_INSTANCE", default_value = "default")]
    pub instance: String,
    /// Name of the coordination.k8s.io Lease that elects the deleter.
    #[arg(long, env = "PGD_LEASE_NAME", default_value = "pod-graceful-drain")]
    pub lease_name: String,
    /// Lease duration of the leader election, in seconds.
    #[arg(long, env = "PGD_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// After SIGTERM: how long to keep answering while not ready (our own endpoints drain).
    #[arg(long, env = "PGD_SHUTDOWN_GRACE_SECONDS", default_value_t = 5)]
    pub shutdown_grace_seconds: u64,
    /// Longest the deleter waits, past delete-at, for a pod to leave every EndpointSlice.
    #[arg(long, env = "PGD_ENDPOINT_WAIT_MAX_SECONDS", default_value_t = 60)]
    pub endpoint_wait_max_seconds: u64,
    /// The Secret of our namespace that holds the keys sealing drain schedules (created empty by
    /// the chart; filled and rotated by the replicas).
    #[arg(
        long,
        env = "PGD_SEAL_SECRET",
        default_value = "pod-graceful-drain-seal"
    )]
    pub seal_secret: String,
    /// A new seal key is made when the newest is this old (older keys still verify until no
    /// drain can be using them).
    #[arg(long, env = "PGD_SEAL_ROTATION_SECONDS", default_value_t = 30 * 24 * 3600)]
    pub seal_rotation_seconds: u64,
    /// When the first seal key is made and the Lease already exists (an upgrade from a version
    /// before seals), drains without a seal are adopted for this long; 0: never.
    #[arg(long, env = "PGD_SEAL_ADOPT_UNSEALED_SECONDS", default_value_t = 0)]
    pub seal_adopt_unsealed_seconds: u64,
    /// Longest offset between this replica's clock and the API server's with which it may lead
    /// (it corrects for the offset either way; a larger one means a broken clock).
    #[arg(long, env = "PGD_MAX_CLOCK_SKEW_SECONDS", default_value_t = 5)]
    pub max_clock_skew_seconds: u64,
    /// Tests only: pretend the system clock is off by this many seconds.
    #[arg(
        long,
        env = "PGD_CLOCK_OFFSET_FOR_TESTS_SECONDS",
        default_value_t = 0,
        hide = true,
        allow_hyphen_values = true
    )]
    pub clock_offset_for_tests_seconds: i64,
    /// Log format.
    #[arg(long, env = "PGD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve admission reviews and run the deleter (the default).
    Serve,
    /// Run by the chart before `helm uninstall` removes anything: stop new drains, let the
    /// running ones finish (up to --wait-seconds, then delete what is left at once), stop the
    /// replicas and remove the Lease.
    Uninstall(UninstallArgs),
    /// Which pods are draining, until when, why and at whose request, and who leads each
    /// installation (read-only; also `kubectl pgd status` through a `kubectl-pgd` link).
    Status(StatusArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Only the draining pods of this namespace (default: every namespace).
    #[arg(short = 'n', long = "namespace")]
    pub pods_namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: crate::status::Output,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// The product's Deployment (in --namespace), scaled to zero before the Lease is removed.
    #[arg(long, env = "PGD_DEPLOYMENT")]
    pub deployment: String,
    /// Longest wait for running drains to finish on their own.
    #[arg(long, env = "PGD_UNINSTALL_WAIT_SECONDS", default_value_t = 120)]
    pub wait_seconds: u64,
    /// Secrets of our namespace to delete last (cert-manager's, which it leaves behind).
    #[arg(long, env = "PGD_UNINSTALL_DELETE_SECRETS", value_delimiter = ',')]
    pub delete_secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "drain bounds must satisfy min <= default <= max, got {min} <= {default} <= {max} seconds"
    )]
    DrainBounds { min: u64, default: u64, max: u64 },
    #[error(
        "--hold-seconds must be at least 1 and below the 30 s webhook timeout ceiling, got {0}"
    )]
    Hold(u64),
    #[error("--lease-seconds must be at least 3, got {0}")]
    Lease(u64),
    #[error("--{0} must not be empty")]
    Empty(&'static str),
    #[error("--cert-seconds must be at least 60 and at most --ca-seconds, got {cert} and {ca}")]
    CertLifetimes { cert: i64, ca: i64 },
    #[error("--tls-manage needs --tls-secret")]
    ManageWithoutSecret,
    #[error("--client-auth {0:?} needs --client-allowed-names (a cluster CA signs many clients)")]
    NoAllowedClients(client_auth::Mode),
    #[error("--namespace-selector is not a valid LabelSelector: {0}")]
    NamespaceSelector(String),
}

impl Args {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (min, default, max) = (
            self.drain_min_seconds,
            self.drain_seconds,
            self.drain_max_seconds,
        );
        if !(min <= default && default <= max) || max == 0 {
            return Err(ConfigError::DrainBounds { min, default, max });
        }
        if self.lease_seconds < 3 {
            return Err(ConfigError::Lease(self.lease_seconds));
        }
        if self.hold_seconds == 0 || self.hold_seconds >= WEBHOOK_TIMEOUT_CEILING.as_secs() {
            return Err(ConfigError::Hold(self.hold_seconds));
        }
        if self.cert_seconds < 60 || self.cert_seconds > self.ca_seconds {
            return Err(ConfigError::CertLifetimes {
                cert: self.cert_seconds,
                ca: self.ca_seconds,
            });
        }
        if self.tls_manage && self.tls_secret.is_none() {
            return Err(ConfigError::ManageWithoutSecret);
        }
        if self.client_auth != client_auth::Mode::None && self.allowed_clients().is_empty() {
            return Err(ConfigError::NoAllowedClients(self.client_auth));
        }
        self.namespace_selector()?;
        for (name, value) in [
            ("namespace", &self.namespace),
            ("service-name", &self.service_name),
            ("service-account", &self.service_account),
            ("identity", &self.identity),
            ("lease-name", &self.lease_name),
            ("instance", &self.instance),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Empty(name));
            }
        }
        Ok(())
    }

    pub fn allowed_clients(&self) -> client_auth::Allowed {
        client_auth::Allowed::new(&self.client_allowed_names)
    }

    /// The namespace selector (`None`: every namespace).
    pub fn namespace_selector(&self) -> Result<Option<Selector>, ConfigError> {
        let text = self.namespace_selector.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let parsed: LabelSelector = serde_json::from_str(text)
            .map_err(|e| ConfigError::NamespaceSelector(e.to_string()))?;
        let empty = parsed.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && parsed
                .match_expressions
                .as_ref()
                .is_none_or(|e| e.is_empty());
        if empty {
            return Ok(None);
        }
        Selector::from_label_selector(&parsed)
            .map_err(|e| ConfigError::NamespaceSelector(e.to_string()))
    }

    /// The user name this process's requests arrive with.
    pub fn own_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// The names the API server may use for our Service.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service_name, &self.namespace);
        vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
        ]
    }

    pub fn policy(&self) -> Policy {
        let set = |v: &[String]| -> BTreeSet<String> {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Policy {
            excluded_namespaces: set(&self.excluded_namespaces),
            // Checked by validate().
            namespace_selector: self.namespace_selector().ok().flatten(),
            own_user: self.own_user(),
            controller_users: set(&self.controller_users),
            bounds: DrainBounds {
                default: Duration::from_secs(self.drain_seconds),
                min: Duration::from_secs(self.drain_min_seconds),
                max: Duration::from_secs(self.drain_max_seconds),
            },
            hold_budget: Duration::from_secs(self.hold_seconds),
            long_drain: match self.on_long_drain {
                OnLongDrain::Deny => LongDrain::Deny,
                OnLongDrain::Allow => LongDrain::Allow,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["pod-graceful-drain"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_sensible() {
        let a = args(&[]);
        a.validate().unwrap();
        let p = a.policy();
        assert_eq!(p.bounds.default, Duration::from_secs(90));
        assert!(p.excluded_namespaces.contains("kube-system"));
        assert!(
            p.controller_users
                .contains("system:serviceaccount:kube-system:replicaset-controller")
        );
        assert_eq!(
            p.own_user,
            "system:serviceaccount:pod-graceful-drain:pod-graceful-drain"
        );
        assert_eq!(p.long_drain, LongDrain::Deny);
    }

    #[test]
    fn lists_and_enums_parse() {
        let a = args(&[
            "--excluded-namespaces",
            "kube-system, monitoring",
            "--on-long-drain",
            "allow",
            "--log-format",
            "json",
        ]);
        let p = a.policy();
        assert_eq!(
            p.excluded_namespaces,
            BTreeSet::from(["kube-system".to_string(), "monitoring".to_string()])
        );
        assert_eq!(p.long_drain, LongDrain::Allow);
        assert_eq!(a.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_are_refused_with_a_clear_message() {
        let e = args(&["--drain-seconds", "5", "--drain-min-seconds", "10"])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("min <= default <= max"));
        assert_eq!(
            args(&["--hold-seconds", "30"]).validate(),
            Err(ConfigError::Hold(30))
        );
        assert_eq!(
            args(&["--namespace", " "]).validate(),
            Err(ConfigError::Empty("namespace"))
        );
        assert!(Args::try_parse_from(["pgd", "--drain-seconds", "-1"]).is_err());
        assert!(Args::try_parse_from(["pgd", "--on-long-drain", "maybe"]).is_err());
        assert_eq!(
            args(&["--cert-seconds", "30"]).validate(),
            Err(ConfigError::CertLifetimes {
                cert: 30,
                ca: 10 * 365 * 24 * 3600
            })
        );
        assert_eq!(
            args(&["--tls-manage", "true"]).validate(),
            Err(ConfigError::ManageWithoutSecret)
        );
    }

    #[test]
    fn client_auth_needs_an_allow_list_and_the_namespace_selector_must_parse() {
        assert_eq!(
            args(&["--client-auth", "required"]).validate(),
            Err(ConfigError::NoAllowedClients(client_auth::Mode::Required))
        );
        let a = args(&[
            "--client-auth",
            "optional",
            "--client-allowed-names",
            "kube-apiserver-webhook-client, other",
        ]);
        a.validate().unwrap();
        assert!(!a.allowed_clients().is_empty());
        let a = args(&[
            "--namespace-selector",
            r#"{"matchLabels":{"team":"shop"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["batch"]}]}"#,
        ]);
        a.validate().unwrap();
        let s = a.namespace_selector().unwrap().unwrap();
        let labels = |v: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s.matches(&labels(&[("team", "shop")])));
        assert!(!s.matches(&labels(&[("team", "shop"), ("tier", "batch")])));
        assert!(!s.matches(&labels(&[])));
        assert!(
            args(&["--namespace-selector", r#"{"matchLabels":{}}"#])
                .namespace_selector()
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            args(&["--namespace-selector", "{not json"]).validate(),
            Err(ConfigError::NamespaceSelector(_))
        ));
    }

    #[test]
    fn the_uninstall_subcommand_parses() {
        let a = args(&["--instance", "x", "uninstall", "--deployment", "pgd"]);
        match a.command {
            Some(Command::Uninstall(u)) => {
                assert_eq!(u.deployment, "pgd");
                assert_eq!(u.wait_seconds, 120);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.instance, "x");
        assert!(args(&["serve"]).command.is_some());
        assert_eq!(
            args(&[
                "--tls-secret",
                "s",
                "--tls-manage",
                "true",
                "--service-name",
                "web"
            ])
            .dns_names()[0],
            "web.pod-graceful-drain.svc"
        );
    }
}
