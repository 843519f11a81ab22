//! The webhook's own certificate authority and serving certificate, kept in one Secret: what to
//! (re)issue and when. Pure apart from key generation: the caller reads the Secret, asks `renew`
//! what it should hold at `now`, and writes the answer back under a resourceVersion precondition.
//!
//! Why a CA and not one self-signed certificate: the API server trusts the CA bundle injected into
//! the webhook configurations, so the serving certificate can be renewed often without touching
//! them. Why the CA rotates in two steps: a new CA is first only *trusted* (added to the bundle,
//! which the API server reloads within seconds) and signs nothing until it has been trusted for
//! `PROMOTE_AFTER`; a serving certificate from a CA the API server does not trust yet would fail
//! every call, and with `failurePolicy: Ignore` that silently turns the webhook off.
//!
//! Secret keys: `ca.crt` (the bundle: every still-valid CA), `ca.key` (the signing CA's key),
//! `next-ca.key` (the key of a CA trusted ahead of use, while there is one), `tls.crt`, `tls.key`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub const CA_BUNDLE: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NEXT_CA_KEY: &str = "next-ca.key";
pub const CERT: &str = "tls.crt";
pub const KEY: &str = "tls.key";

/// Certificates start this long before they are made: clocks of the API server and the nodes
/// may lag ours. (A serving certificate of a very short life, as in tests, is backdated by a
/// tenth of its life at most.)
pub const BACKDATE_SECONDS: i64 = 300;
/// A new CA signs nothing until it has been in the bundle this long (counted from its start).
pub const PROMOTE_AFTER_SECONDS: i64 = 15 * 60;

/// The Secret's data.
pub type Data = BTreeMap<String, Vec<u8>>;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("time out of range: {0}")]
    Time(String),
}

/// What the Secret should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Names the API server uses to reach the Service (`<svc>.<ns>.svc` and friends).
    pub dns_names: Vec<String>,
    pub ca_seconds: i64,
    pub serving_seconds: i64,
}

#[derive(Debug)]
pub enum Outcome {
    Unchanged,
    Rewritten {
        data: Data,
        reasons: Vec<&'static str>,
    },
}

/// One parsed certificate, with what the decisions need.
#[derive(Debug, Clone)]
struct Parsed {
    der: Vec<u8>,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    not_before: i64,
    not_after: i64,
    public_key: Vec<u8>,
    dns_names: BTreeSet<String>,
}

fn parse_pems(bytes: &[u8]) -> Vec<Parsed> {
    x509_parser::pem::Pem::iter_from_buffer(bytes)
        .filter_map(Result::ok)
        .filter(|pem| pem.label == "CERTIFICATE")
        .filter_map(|pem| parse_der(&pem.contents))
        .collect()
}

fn parse_der(der: &[u8]) -> Option<Parsed> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let dns_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Parsed {
        der: der.to_vec(),
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        dns_names,
    })
}

/// PEM text of a DER certificate.
fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn key(data: &Data, name: &str) -> Option<KeyPair> {
    let text = std::str::from_utf8(data.get(name)?).ok()?;
    KeyPair::from_pem(text).ok()
}

fn offset(unix: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CertError::Time(e.to_string()))
}

/// A CA the Secret holds the key of.
struct Authority {
    cert: Parsed,
    key: KeyPair,
}

impl Authority {
    fn generate(now: i64, seconds: i64) -> Result<Authority, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        // A distinct name per CA: the serving certificate names its issuer by it.
        let tag: String = key.public_key_raw()[1..5]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        dn.push(
            DnType::CommonName,
            format!("pod-graceful-drain CA {now}-{tag}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = offset(now - BACKDATE_SECONDS)?;
        params.not_after = offset(now + seconds)?;
        let cert = params.self_signed(&key)?;
        let cert = parse_der(cert.der()).ok_or(CertError::Time("unparsable new CA".into()))?;
        Ok(Authority { cert, key })
    }

    /// The CA in `cas` whose public key is `key`'s.
    fn find(cas: &[Parsed], key: Option<KeyPair>) -> Option<Authority> {
        let key = key?;
        let cert = cas
            .iter()
            .find(|c| c.public_key == key.public_key_raw())?
            .clone();
        Some(Authority { cert, key })
    }

    fn issue(&self, want: &Want, now: i64) -> Result<(String, String), CertError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert.der.clone().into(), &self.key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(want.dns_names.clone())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            want.dns_names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = offset(now - BACKDATE_SECONDS.min(want.serving_seconds / 10))?;
        // Never outlive the CA that vouches for it.
        params.not_after = offset((now + want.serving_seconds).min(self.cert.not_after))?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Why the serving certificate must be reissued, if it must.
fn serving_problem(data: &Data, signer: &Parsed, want: &Want, now: i64) -> Option<&'static str> {
    let Some(cert) = data
        .get(CERT)
        .and_then(|b| parse_pems(b).into_iter().next())
    else {
        return Some("no serving certificate");
    };
    let Some(key) = key(data, KEY) else {
        return Some("no usable serving key");
    };
    if cert.public_key != key.public_key_raw() {
        return Some("the serving key does not match its certificate");
    }
    if cert.issuer != signer.subject {
        return Some("the serving certificate is not from the signing CA");
    }
    let wanted: BTreeSet<String> = want.dns_names.iter().cloned().collect();
    if cert.dns_names != wanted {
        return Some("the serving certificate names other hosts");
    }
    if now < cert.not_before {
        return Some("the serving certificate is not valid yet");
    }
    let lifetime = (cert.not_after - cert.not_before).max(0);
    if cert.not_after - now < lifetime / 3 {
        return Some("the serving certificate is in the last third of its life");
    }
    None
}

/// What the Secret must hold at `now`, given what it holds (`data`, possibly empty or mangled).
pub fn renew(data: &Data, want: &Want, now: i64) -> Result<Outcome, CertError> {
    let original: Vec<Parsed> = data
        .get(CA_BUNDLE)
        .map(|b| parse_pems(b))
        .unwrap_or_default();
    // Expired CAs vouch for nothing; drop them (and duplicates).
    let mut cas: Vec<Parsed> = Vec::new();
    for c in original.iter().filter(|c| c.not_after > now) {
        if !cas.iter().any(|k| k.der == c.der) {
            cas.push(c.clone());
        }
    }
    let mut reasons = Vec::new();
    let mut signer = Authority::find(&cas, key(data, CA_KEY));
    let mut next = Authority::find(&cas, key(data, NEXT_CA_KEY));
    if data.contains_key(NEXT_CA_KEY) && next.is_none() {
        reasons.push("dropping an unusable next CA key");
    }

    match (&signer, &next) {
        (None, Some(_)) => {
            reasons.push("the signing CA is gone or expired: the next CA signs from now on");
            signer = next.take();
        }
        (Some(_), Some(n))
            if now >= n.cert.not_before + BACKDATE_SECONDS + PROMOTE_AFTER_SECONDS =>
        {
            reasons.push("the next CA has been trusted long enough: it signs from now on");
            signer = next.take();
        }
        _ => {}
    }
    let signer = match signer {
        Some(s) => s,
        None => {
            reasons.push("no usable CA");
            let ca = Authority::generate(now, want.ca_seconds)?;
            cas.push(ca.cert.clone());
            ca
        }
    };
    let ca_lifetime = (signer.cert.not_after - signer.cert.not_before).max(0);
    if next.is_none() && signer.cert.not_after - now < ca_lifetime / 3 {
        reasons
            .push("the CA is in the last third of its life: the next one is trusted ahead of use");
        let n = Authority::generate(now, want.ca_seconds)?;
        cas.push(n.cert.clone());
        next = Some(n);
    }

    let serving = match serving_problem(data, &signer.cert, want, now) {
        Some(reason) => {
            reasons.push(reason);
            Some(signer.issue(want, now)?)
        }
        None => None,
    };

    let bundle_changed =
        cas.len() != original.len() || cas.iter().zip(&original).any(|(a, b)| a.der != b.der);
    if reasons.is_empty() && !bundle_changed {
        return Ok(Outcome::Unchanged);
    }
    if reasons.is_empty() {
        reasons.push("dropping expired CAs from the bundle");
    }
    let mut out = Data::new();
    let bundle: String = cas.iter().map(|c| pem(&c.der)).collect();
    out.insert(CA_BUNDLE.into(), bundle.into_bytes());
    out.insert(CA_KEY.into(), signer.key.serialize_pem().into_bytes());
    if let Some(n) = &next {
        out.insert(NEXT_CA_KEY.into(), n.key.serialize_pem().into_bytes());
    }
    let (cert, key) = match serving {
        Some((c, k)) => (c.into_bytes(), k.into_bytes()),
        None => (
            data.get(CERT).cloned().unwrap_or_default(),
            data.get(KEY).cloned().unwrap_or_default(),
        ),
    };
    out.insert(CERT.into(), cert);
    out.insert(KEY.into(), key);
    Ok(Outcome::Rewritten { data: out, reasons })
}

/// The not-after time of the certificate in `pem` (for logs and tests).
pub fn not_after(pem: &[u8]) -> Option<i64> {
    parse_pems(pem).first().map(|c| c.not_after)
}

#[cfg(test)]
mod tests;
