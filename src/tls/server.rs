//! The webhook's serving certificate, served through a resolver that is swapped in place when a
//! new pair arrives (from files, or from the Secret `cert_secret` keeps), so a rotated certificate
//! is picked up without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use crate::tls::client_auth::{self, Allowed, Mode};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} holds no PEM certificate")]
    NoCertificate { origin: String },
    #[error("{origin} holds no usable PEM private key: {reason}")]
    BadKey { origin: String, reason: String },
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Serves whatever certificate was loaded last; none before the first (handshakes then fail and
/// the process is not ready).
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<(Vec<u8>, Vec<u8>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            origin: origin.to_string(),
        });
    }
    let bad_key = |reason: String| TlsError::BadKey {
        origin: origin.to_string(),
        reason,
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad_key(e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| bad_key(format!("the key does not match the certificate: {e}")))?;
    Ok(certified)
}

impl ReloadingCert {
    pub fn empty() -> Arc<ReloadingCert> {
        Arc::new(ReloadingCert {
            current: RwLock::new(None),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            loaded: RwLock::new((Vec::new(), Vec::new())),
        })
    }

    /// When the certificate served now expires (Unix seconds); `None` before the first.
    pub fn not_after(&self) -> Option<i64> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let leaf = current.cert.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(parsed.validity().not_after.timestamp())
    }

    /// Loads the pair from files once; fails when it cannot.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let cert = ReloadingCert::empty();
        cert.reload_files(cert_file, key_file)?;
        Ok(cert)
    }

    /// Serves this pair from now on if it differs from the current one and is valid. Returns
    /// whether a new certificate is now served. A half-written or bad pair is refused (the
    /// previous certificate stays).
    pub fn set_pem(&self, cert_pem: &[u8], key_pem: &[u8], origin: &str) -> Result<bool, TlsError> {
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if loaded.0 == cert_pem && loaded.1 == key_pem && self.has_cert() {
                return Ok(false);
            }
        }
        let key = certified_key(cert_pem, key_pem, origin, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) =
            (cert_pem.to_vec(), key_pem.to_vec());
        Ok(true)
    }

    pub fn has_cert(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Re-reads the files; see `set_pem`.
    pub fn reload_files(&self, cert_file: &Path, key_file: &Path) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(cert_file)?, read(key_file)?);
        self.set_pem(&cert_pem, &key_pem, &cert_file.display().to_string())
    }

    /// Polls the files every `period` until the process ends.
    pub fn watch_files(self: Arc<Self>, cert_file: PathBuf, key_file: PathBuf, period: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match self.reload_files(&cert_file, &key_file) {
                    Ok(true) => {
                        tracing::info!(cert = %cert_file.display(), "serving certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "serving certificate not reloaded; keeping the previous one")
                    }
                }
            }
        });
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1) serving this certificate, with
    /// no client authentication.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        self.server_config_with(None)
    }

    /// The same, verifying client certificates with `verifier` when one is given.
    pub fn server_config_with(
        self: &Arc<Self>,
        verifier: Option<Arc<client_auth::Verifier>>,
    ) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }
}

/// How the webhook listener authenticates its callers.
#[derive(Debug, Clone)]
pub struct ClientAuthConfig {
    pub mode: Mode,
    /// PEM bundle of the CA(s) that sign the API server's client certificate (not read in mode
    /// `none`); re-read every few seconds, so a rotated CA is picked up without a restart.
    pub ca_file: PathBuf,
    pub allowed: Allowed,
}

/// The server configuration every new connection is handshaken with: the reloading serving
/// certificate, and the client verifier built from the client CA file as last read.
pub struct ServerTls {
    cert: Arc<ReloadingCert>,
    auth: ClientAuthConfig,
    /// The configuration, and the client CA file's bytes it was built from.
    current: RwLock<(Arc<ServerConfig>, Vec<u8>)>,
}

impl ServerTls {
    /// Fails when client authentication is on and the client CA cannot be read or holds no CA.
    pub fn new(
        cert: Arc<ReloadingCert>,
        auth: ClientAuthConfig,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let ca = read_ca(&auth)?;
        let config = build(&cert, &auth, &ca)?;
        Ok(Arc::new(ServerTls {
            cert,
            auth,
            current: RwLock::new((Arc::new(config), ca)),
        }))
    }

    pub fn mode(&self) -> Mode {
        self.auth.mode
    }

    pub fn allowed(&self) -> &Allowed {
        &self.auth.allowed
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Re-reads the client CA; returns whether the configuration changed. A file that cannot be
    /// read or holds no CA leaves the previous configuration in place.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if self.auth.mode == Mode::None {
            return Ok(false);
        }
        let pem = read(&self.auth.ca_file)?;
        if self.current.read().unwrap_or_else(|e| e.into_inner()).1 == pem {
            return Ok(false);
        }
        let config = build(&self.cert, &self.auth, &pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(config), pem);
        Ok(true)
    }

    /// Polls the client CA file every `period` until the process ends.
    pub fn watch(self: Arc<Self>, period: Duration) {
        if self.auth.mode == Mode::None {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(true) => {
                        tracing::info!(ca = %self.auth.ca_file.display(), "client CA reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "client CA not reloaded; keeping the previous one")
                    }
                }
            }
        });
    }
}

/// The client CA file's bytes (none in mode `none`, where it is not read).
fn read_ca(auth: &ClientAuthConfig) -> Result<Vec<u8>, TlsError> {
    match auth.mode {
        Mode::None => Ok(Vec::new()),
        Mode::Optional | Mode::Required => read(&auth.ca_file),
    }
}

/// The server configuration for `auth`, its verifier built from `ca_pem`.
fn build(
    cert: &Arc<ReloadingCert>,
    auth: &ClientAuthConfig,
    ca_pem: &[u8],
) -> Result<ServerConfig, TlsError> {
    if auth.mode == Mode::None {
        return cert.server_config_with(None);
    }
    let verifier =
        client_auth::Verifier::new(auth.mode, ca_pem, auth.allowed.clone(), cert.provider())
            .map_err(|e| TlsError::ClientCa {
                path: auth.ca_file.clone(),
                reason: e.to_string(),
            })?;
    cert.server_config_with(Some(verifier))
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn served(c: &ReloadingCert) -> Vec<u8> {
        c.current.read().unwrap().as_ref().unwrap().cert[0].to_vec()
    }

    #[test]
    fn the_expiry_of_the_certificate_served_is_known() {
        let cert = ReloadingCert::empty();
        assert_eq!(cert.not_after(), None);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        cert.set_pem(pem.as_bytes(), key.serialize_pem().as_bytes(), "test")
            .unwrap();
        assert_eq!(cert.not_after(), Some(1_900_000_000));
    }

    #[test]
    fn a_rotated_pair_is_served_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("pgd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let (c1, k1) = pair("one.test");
        std::fs::write(&crt, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let cert = ReloadingCert::load(&crt, &key).unwrap();
        let first = served(&cert);
        assert!(
            !cert.reload_files(&crt, &key).unwrap(),
            "unchanged files are not a rotation"
        );

        let (c2, k2) = pair("two.test");
        std::fs::write(&crt, &c2).unwrap();
        std::fs::write(&key, &k2).unwrap();
        assert!(cert.reload_files(&crt, &key).unwrap());
        let second = served(&cert);
        assert_ne!(first, second);

        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(
            cert.reload_files(&crt, &key),
            Err(TlsError::BadKey { .. })
        ));
        assert_eq!(
            served(&cert),
            second,
            "a broken pair must not replace a good one"
        );
        std::fs::write(&crt, "").unwrap();
        assert!(matches!(
            cert.reload_files(&crt, &key),
            Err(TlsError::NoCertificate { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            ReloadingCert::load(&crt, &key),
            Err(TlsError::Read { .. })
        ));
        assert!(cert.server_config().is_ok());
    }
}
