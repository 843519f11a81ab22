//! The webhook's serving certificate: read from files, served through a resolver that is swapped in
//! place when the files change, so a rotated certificate is picked up without a restart.

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
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_file: PathBuf,
    key_file: PathBuf,
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
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: key_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(CertifiedKey::new(certs, signing))
}

impl ReloadingCert {
    /// Loads the pair once; fails when it cannot (the process is not ready without a certificate).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = (read(cert_file)?, read(key_file)?);
        let key = certified_key(&cert_pem, &key_pem, cert_file, key_file, &provider)?;
        Ok(Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(key)),
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            loaded: RwLock::new((cert_pem, key_pem)),
        }))
    }

    /// Re-reads the files; swaps the certificate when they changed and form a valid pair.
    /// Returns whether a new certificate is now served. A half-written or bad pair is ignored
    /// (the previous certificate stays) and reported.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert_file)?, read(&self.key_file)?);
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if loaded.0 == cert_pem && loaded.1 == key_pem {
                return Ok(false);
            }
        }
        let key = certified_key(
            &cert_pem,
            &key_pem,
            &self.cert_file,
            &self.key_file,
            &self.provider,
        )?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = (cert_pem, key_pem);
        Ok(true)
    }

    /// Polls the files every `period` until the process ends.
    pub fn watch(self: Arc<Self>, period: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                match self.reload() {
                    Ok(true) => {
                        tracing::info!(cert = %self.cert_file.display(), "serving certificate reloaded")
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
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
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
        c.current.read().unwrap().cert[0].to_vec()
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
            !cert.reload().unwrap(),
            "unchanged files are not a rotation"
        );

        let (c2, k2) = pair("two.test");
        std::fs::write(&crt, &c2).unwrap();
        std::fs::write(&key, &k2).unwrap();
        assert!(cert.reload().unwrap());
        let second = served(&cert);
        assert_ne!(first, second);

        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(cert.reload(), Err(TlsError::BadKey { .. })));
        assert_eq!(
            served(&cert),
            second,
            "a broken pair must not replace a good one"
        );
        std::fs::write(&crt, "").unwrap();
        assert!(matches!(cert.reload(), Err(TlsError::NoCertificate { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            ReloadingCert::load(&crt, &key),
            Err(TlsError::Read { .. })
        ));
        assert!(cert.server_config().is_ok());
    }
}
