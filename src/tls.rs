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

    /// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1) serving this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
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
