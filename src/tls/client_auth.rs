//! Who is calling: the API server, proven by the client certificate it presents to webhooks when
//! its admission configuration names one, or somebody we cannot tell from it.
//!
//! The product holds cluster-wide rights to patch and delete pods and to spend budgets, so it
//! must act only on the API server's word. Three modes:
//! - `required`: the TLS handshake is refused unless the client presents a certificate from the
//!   client CA whose identity is on the allow-list (a cluster CA signs many clients: kubelets,
//!   admins, controllers; only the API server's own name may call);
//! - `optional`: the same check, but a caller without such a certificate is still served, counted
//!   and logged as unverified (for switching an existing installation over without an outage);
//! - `none`: nobody is verified, every request is served as unverified.
//!
//! An unverified request is still served (the product must work where the control plane cannot be
//! configured), but nothing in its body is trusted beyond the pod's name: see `admission`.
//!
//! Pure apart from rustls's own verification: no client, no clock of our own.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    None,
    Optional,
    Required,
}

/// The names a client certificate may carry to be let in (its subject CN or a DNS SAN).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed(BTreeSet<String>);

impl Allowed {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> Allowed {
        Allowed(
            names
                .into_iter()
                .map(|n| n.as_ref().trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        )
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The first of the certificate's names that is allowed.
    fn admits<'a>(&self, names: &'a [String]) -> Option<&'a String> {
        names.iter().find(|n| self.0.contains(n.as_str()))
    }
}

/// The caller of one connection, as TLS established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Presented a certificate of the client CA that names an allowed identity.
    Verified { identity: String },
    /// Anybody: the product cannot tell this caller from the API server.
    Unverified(Unverified),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// Client authentication is off.
    NotAsked,
    /// No client certificate was presented.
    NoCertificate,
    /// A certificate of the client CA, but for somebody else.
    NotAllowed { names: Vec<String> },
}

impl Caller {
    pub fn is_verified(&self) -> bool {
        matches!(self, Caller::Verified { .. })
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Verified { identity } => write!(f, "verified client {identity}"),
            Caller::Unverified(Unverified::NotAsked) => write!(f, "unverified (client auth off)"),
            Caller::Unverified(Unverified::NoCertificate) => {
                write!(f, "unverified (no client certificate)")
            }
            Caller::Unverified(Unverified::NotAllowed { names }) => {
                write!(f, "unverified (certificate for {names:?}, not allowed)")
            }
        }
    }
}

/// The identities a certificate names: its subject common names, then its DNS SANs. Unparsable
/// certificates name nobody.
pub fn names_of(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                names.push(d.to_string());
            }
        }
    }
    names
}

/// Who the caller of a connection is, given the certificates it presented (already verified
/// against the client CA by the handshake; `None` when it presented none).
pub fn classify(mode: Mode, presented: Option<&[CertificateDer<'_>]>, allowed: &Allowed) -> Caller {
    if mode == Mode::None {
        return Caller::Unverified(Unverified::NotAsked);
    }
    let Some(end_entity) = presented.and_then(|c| c.first()) else {
        return Caller::Unverified(Unverified::NoCertificate);
    };
    let names = names_of(end_entity);
    match allowed.admits(&names) {
        Some(identity) => Caller::Verified {
            identity: identity.clone(),
        },
        None => Caller::Unverified(Unverified::NotAllowed { names }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("the client CA holds no usable certificate")]
    NoCa,
    #[error("client CA: {0}")]
    Verifier(#[from] VerifierBuilderError),
}

/// Verifies client certificates against the client CA (rustls's WebPKI verifier) and, in mode
/// `required`, also refuses identities that are not allowed, so such a client fails at the
/// handshake. In mode `optional` a client may present nothing at all.
#[derive(Debug)]
pub struct Verifier {
    inner: Arc<dyn ClientCertVerifier>,
    mode: Mode,
    allowed: Allowed,
}

impl Verifier {
    /// `mode` must not be `None` (then no verifier is installed at all).
    pub fn new(
        mode: Mode,
        ca_pem: &[u8],
        allowed: Allowed,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Verifier>, ClientAuthError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem).filter_map(Result::ok) {
            // A bad certificate among good ones is skipped; none at all is an error below.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(ClientAuthError::NoCa);
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let inner = match mode {
            Mode::Required | Mode::None => builder.build()?,
            Mode::Optional => builder.allow_unauthenticated().build()?,
        };
        Ok(Arc::new(Verifier {
            inner,
            mode,
            allowed,
        }))
    }
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == Mode::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.mode == Mode::Required && self.allowed.admits(&names_of(end_entity)).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        key: rcgen::KeyPair,
        cert: rcgen::Certificate,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let cert = params.self_signed(&key).unwrap();
        Ca { key, cert }
    }

    fn client(ca: &Ca, cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert.der(), &ca.key).unwrap();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn a_certificate_names_its_common_name_then_its_dns_names() {
        let ca = ca();
        let cert = client(&ca, "kube-apiserver-webhook-client", &["apiserver.example"]);
        assert_eq!(
            names_of(&cert),
            vec!["kube-apiserver-webhook-client", "apiserver.example"]
        );
        assert!(names_of(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }

    #[test]
    fn callers_are_classified_by_mode_certificate_and_allow_list() {
        let ca = ca();
        let allowed = Allowed::new(["kube-apiserver-webhook-client"]);
        let api = [client(&ca, "kube-apiserver-webhook-client", &[])];
        let admin = [client(&ca, "kubernetes-admin", &[])];
        let by_san = [client(&ca, "x", &["kube-apiserver-webhook-client"])];
        assert_eq!(
            classify(Mode::None, Some(&api), &allowed),
            Caller::Unverified(Unverified::NotAsked)
        );
        for mode in [Mode::Optional, Mode::Required] {
            assert_eq!(
                classify(mode, Some(&api), &allowed),
                Caller::Verified {
                    identity: "kube-apiserver-webhook-client".into()
                }
            );
            assert!(classify(mode, Some(&by_san), &allowed).is_verified());
            assert_eq!(
                classify(mode, None, &allowed),
                Caller::Unverified(Unverified::NoCertificate)
            );
            assert_eq!(
                classify(mode, Some(&admin), &allowed),
                Caller::Unverified(Unverified::NotAllowed {
                    names: vec!["kubernetes-admin".into()]
                })
            );
        }
    }

    #[test]
    fn required_refuses_other_identities_of_the_same_ca_and_optional_lets_them_be_classified() {
        let ca = ca();
        let other = ca_other();
        let pem = ca.cert.pem();
        let allowed = Allowed::new(["kube-apiserver-webhook-client"]);
        let required =
            Verifier::new(Mode::Required, pem.as_bytes(), allowed.clone(), provider()).unwrap();
        let optional = Verifier::new(Mode::Optional, pem.as_bytes(), allowed, provider()).unwrap();
        assert!(required.client_auth_mandatory());
        assert!(!optional.client_auth_mandatory());
        let now = UnixTime::now();
        let api = client(&ca, "kube-apiserver-webhook-client", &[]);
        let admin = client(&ca, "kubernetes-admin", &[]);
        let stranger = client(&other, "kube-apiserver-webhook-client", &[]);
        assert!(required.verify_client_cert(&api, &[], now).is_ok());
        assert!(required.verify_client_cert(&admin, &[], now).is_err());
        assert!(
            required.verify_client_cert(&stranger, &[], now).is_err(),
            "the right name from another CA is nobody"
        );
        assert!(optional.verify_client_cert(&admin, &[], now).is_ok());
        assert!(optional.verify_client_cert(&stranger, &[], now).is_err());
    }

    fn ca_other() -> Ca {
        ca()
    }

    #[test]
    fn a_client_ca_without_certificates_is_refused() {
        assert!(matches!(
            Verifier::new(Mode::Required, b"nothing", Allowed::default(), provider()),
            Err(ClientAuthError::NoCa)
        ));
    }
}
