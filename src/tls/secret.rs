//! Keeps the serving certificate in a Secret of the product's namespace and serves what it holds.
//!
//! Every replica polls the Secret. When managing (the default in the chart), any replica that finds
//! it empty, mangled or due for renewal writes the renewed material under a resourceVersion
//! precondition: two replicas racing produce one write, the loser re-reads and serves the
//! winner's certificate. The same replicas keep the CA bundle of both webhook configurations equal
//! to the Secret's, so the API server trusts what is served. Nothing here ever creates the Secret
//! or the webhook configurations: the chart owns them, so `helm uninstall` removes them and a
//! replica still shutting down cannot bring them back.
//!
//! Not managing (cert-manager writes the Secret and injects the bundle), replicas only read.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::tls::renewal::{self, Outcome, Want};
use crate::tls::{ReloadingCert, TlsError};

/// How often the Secret is read: a rotated certificate is served within this.
pub const POLL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CertSecretError {
    #[error("Secret {0} does not exist (the chart creates it)")]
    Missing(String),
    #[error("Secret {0} holds no certificate yet")]
    Empty(String),
    #[error("reading or writing Kubernetes objects: {0}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Certs(#[from] renewal::CertError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What to do besides serving.
#[derive(Debug, Clone)]
pub struct Manage {
    pub want: Want,
    /// Name of both webhook configurations whose CA bundle follows the Secret.
    pub webhook_configuration: Option<String>,
}

pub struct CertSecret {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub manage: Option<Manage>,
    pub cert: Arc<ReloadingCert>,
}

impl CertSecret {
    /// One round: read, renew when managing, serve, inject the bundle. Returns whether a new
    /// certificate is now served.
    pub async fn round(&self) -> Result<bool, CertSecretError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let origin = format!("Secret {}/{}", self.namespace, self.name);
        let mut secret = api
            .get_opt(&self.name)
            .await?
            .ok_or_else(|| CertSecretError::Missing(origin.clone()))?;
        if let Some(manage) = &self.manage {
            let data: renewal::Data = secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            let now = jiff::Timestamp::now().as_second();
            if let Outcome::Rewritten { data, reasons } = renewal::renew(&data, &manage.want, now)?
            {
                secret.data = Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
                secret.string_data = None;
                // The resourceVersion read above guards the write: one replica wins a race.
                let pp = PostParams {
                    field_manager: Some(crate::k8s::FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                match api.replace(&self.name, &pp, &secret).await {
                    Ok(written) => {
                        tracing::info!(secret = %origin, ?reasons, "certificates renewed");
                        secret = written;
                    }
                    Err(e) if crate::k8s::outcome_of(&e) == Some(crate::k8s::Outcome::Conflict) => {
                        tracing::debug!("another replica renewed the certificates first");
                        secret = api
                            .get_opt(&self.name)
                            .await?
                            .ok_or_else(|| CertSecretError::Missing(origin.clone()))?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if let (Some(name), Some(bundle)) = (
                &manage.webhook_configuration,
                secret.data.as_ref().and_then(|d| d.get(renewal::CA_BUNDLE)),
            ) {
                inject(&self.client, name, bundle).await?;
            }
        }
        let data = secret.data.unwrap_or_default();
        let (Some(cert), Some(key)) = (data.get(renewal::CERT), data.get(renewal::KEY)) else {
            return Err(CertSecretError::Empty(origin));
        };
        Ok(self.cert.set_pem(&cert.0, &key.0, &origin)?)
    }

    /// Rounds until the first certificate is served: a replica is not ready without one.
    pub async fn first_certificate(&self) {
        crate::k8s::until_ok("no serving certificate yet", POLL, || self.round()).await;
    }

    /// Rounds every `POLL` until the process ends; failures keep the certificate served so far.
    pub fn spawn(self) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.round().await {
                    Ok(true) => tracing::info!(secret = %self.name, "serving a new certificate"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate round failed; keeping what is served")
                    }
                }
            }
        });
    }
}

/// Sets every webhook's caBundle in both configurations named `name` to `bundle`, each with the
/// resourceVersion it was read at. A configuration that does not exist (not installed yet, or
/// being uninstalled) is left alone.
async fn inject(client: &Client, name: &str, bundle: &ByteString) -> Result<(), kube::Error> {
    let pp = PostParams {
        field_manager: Some(crate::k8s::FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    inject_into(
        Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        name,
        bundle,
        &pp,
        |v| {
            v.webhooks
                .iter_mut()
                .flatten()
                .map(|w| &mut w.client_config)
                .collect()
        },
    )
    .await?;
    inject_into(
        Api::<MutatingWebhookConfiguration>::all(client.clone()),
        name,
        bundle,
        &pp,
        |m| {
            m.webhooks
                .iter_mut()
                .flatten()
                .map(|w| &mut w.client_config)
                .collect()
        },
    )
    .await
}

async fn inject_into<K>(
    api: Api<K>,
    name: &str,
    bundle: &ByteString,
    pp: &PostParams,
    client_configs: fn(&mut K) -> Vec<&mut WebhookClientConfig>,
) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
{
    let Some(mut config) = api.get_opt(name).await? else {
        return Ok(());
    };
    let mut changed = false;
    for c in client_configs(&mut config) {
        if c.ca_bundle.as_ref() != Some(bundle) {
            c.ca_bundle = Some(bundle.clone());
            changed = true;
        }
    }
    if changed {
        ignore_conflict(api.replace(name, pp, &config).await)?;
        tracing::info!(configuration = name, kind = %K::kind(&()), "CA bundle injected");
    }
    Ok(())
}

/// A conflict means someone changed the configuration since we read it; the next round re-reads.
fn ignore_conflict<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if crate::k8s::outcome_of(&e) == Some(crate::k8s::Outcome::Conflict) => Ok(()),
        Err(e) => Err(e),
    }
}
