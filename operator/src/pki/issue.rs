//! Issuing the federation root CA and the per-cluster intermediate CAs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber,
};
use rsa::rand_core::{OsRng, RngCore as _};
use x509_parser::certificate::X509Certificate;

use super::inspect::{self, CertInfo};
use super::keys::{self, KeyKind, LoadedKey};
use super::{Error, pem};
use crate::api::KeyAlgorithm;

/// How far before "now" issued certificates start, to tolerate clock skew between clusters.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The DNS SAN Istio expects on a plugged-in intermediate CA.
pub const ISTIOD_DNS_NAME: &str = "istiod.istio-system.svc";

/// Longest accepted federation or cluster name (X.520 upper bound for a locality name).
const MAX_NAME_LEN: usize = 128;

/// The federation's root CA: certificate, key, and what was parsed from them.
#[derive(Clone)]
pub struct RootCa {
    /// The root certificate, canonical PEM (one `CERTIFICATE` block, `\n` line endings).
    pub cert_pem: String,
    /// The root private key, PKCS#8 PEM (`PRIVATE KEY`) whatever format it was supplied in.
    pub key_pem: String,
    /// Parsed certificate facts.
    info: CertInfo,
    /// The certificate, DER.
    cert_der: Vec<u8>,
    /// The signing key (issuing uses this, not `key_pem`).
    key: Arc<LoadedKey>,
    /// For a signing intermediate below an offline root: the certificates
    /// above it, its issuer first, up to and including the root (PEM);
    /// empty for a self-signed root.
    chain_pem: String,
    /// The trust anchor intermediates chain to: the certificate itself for
    /// a self-signed root, else the offline root (DER).
    anchor_der: Vec<u8>,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// Generates a self-signed root `O=Istio, OU=<federation>, CN=Root CA`, valid from
    /// `now - CLOCK_SKEW` to `now + lifetime`.
    pub fn generate(
        federation: &str,
        algorithm: KeyAlgorithm,
        lifetime: Duration,
        now: Timestamp,
    ) -> Result<RootCa, Error> {
        check_name("federation name", federation)?;
        let lifetime = whole_seconds("root lifetime", lifetime)?;
        if lifetime == 0 {
            return Err(Error::InvalidArgument(
                "root lifetime must be at least one second".to_owned(),
            ));
        }
        let now = now.as_second();
        let not_after = now
            .checked_add(lifetime)
            .ok_or_else(|| Error::InvalidArgument("root lifetime is too long".to_owned()))?;

        let key = keys::generate(algorithm)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&[
            (DnType::OrganizationName, "Istio"),
            (DnType::OrganizationalUnitName, federation),
            (DnType::CommonName, "Root CA"),
        ]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = ca_key_usages();
        params.serial_number = Some(random_serial()?);
        params.not_before = offset_date_time(now - SKEW_SECONDS)?;
        params.not_after = offset_date_time(not_after)?;
        let cert = params
            .self_signed(&key.pair)
            .map_err(|e| Error::Signing(e.to_string()))?;
        RootCa::from_parts(cert.der().to_vec(), key)
    }

    /// Loads a user-supplied root: exactly one CA certificate with keyCertSign and without
    /// `pathlen:0`, valid at `now` (notBefore may be up to [`CLOCK_SKEW`] ahead), and its
    /// private key (PKCS#8, PKCS#1 RSA or SEC1 EC PEM). The PEM is re-encoded canonically.
    pub fn from_pem(cert_pem: &str, key_pem: &str, now: Timestamp) -> Result<RootCa, Error> {
        const WHAT: &str = "root certificate";
        let der = pem::single_certificate(cert_pem, WHAT)?;
        let cert = inspect::parse_der(&der, WHAT)?;
        let info = inspect::info_from_cert(&cert, &der, WHAT)?;
        if !info.is_ca {
            return Err(Error::RootNotCa);
        }
        if !info.key_cert_sign {
            return Err(Error::RootCannotSign);
        }
        if info.path_len == Some(0) {
            return Err(Error::RootPathLenZero);
        }
        KeyKind::from_spki(cert.public_key())
            .map_err(|detail| Error::UnsupportedKey { what: WHAT, detail })?;
        let key = keys::load(key_pem, "root private key")?;
        if !key.matches(cert.public_key()) {
            return Err(Error::KeyMismatch);
        }
        if now >= info.not_after {
            return Err(Error::RootExpired {
                not_after: info.not_after,
            });
        }
        if now.as_second().saturating_add(SKEW_SECONDS) < info.not_before.as_second() {
            return Err(Error::RootNotYetValid {
                not_before: info.not_before,
            });
        }
        for rdn in cert.subject().iter() {
            if rdn.iter().count() != 1 {
                return Err(Error::RootSubjectUnsupported {
                    reason: "multi-valued or empty relative distinguished name".to_owned(),
                });
            }
        }
        let root = RootCa::from_parts(der, key)?;
        // Prove now, not at the first issuance, that the root can sign with a verbatim
        // issuer name: sign a throwaway certificate for the root's own public key.
        let mut trial = CertificateParams::default();
        trial.serial_number = Some(random_serial()?);
        root.sign(&trial, &root.key.pair)?;
        Ok(root)
    }

    /// Parsed facts about the root certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Loads a signing CA below an offline root: `chain_pem` holds the
    /// signing certificate first, then any certificates above it; the
    /// root, if not last there, is `anchor_pem` (its key stays offline).
    /// The signing certificate is checked as [`RootCa::from_pem`] checks a
    /// root, and every link up to the root must verify. Without an anchor
    /// and with a single certificate, it is a self-signed root.
    pub fn from_signing_pem(
        chain_pem: &str,
        key_pem: &str,
        anchor_pem: Option<&str>,
        now: Timestamp,
    ) -> Result<RootCa, Error> {
        let mut certs = pem::certificates(chain_pem, "signing certificate chain")?;
        if let Some(anchor) = anchor_pem {
            let anchor = pem::single_certificate(anchor, "root certificate (ca.crt)")?;
            if certs.last() != Some(&anchor) {
                certs.push(anchor);
            }
        }
        let signer = certs.remove(0);
        let mut root = RootCa::from_pem(&pem::encode(pem::CERTIFICATE, &signer), key_pem, now)?;
        if certs.is_empty() {
            return Ok(root);
        }
        let mut child = signer;
        for issuer in &certs {
            let (c, i) = (
                inspect::parse_der(&child, "signing certificate chain")?,
                inspect::parse_der(issuer, "signing certificate chain")?,
            );
            if !signed_by(&c, &i) {
                return Err(Error::ChainBroken);
            }
            child = issuer.clone();
        }
        root.chain_pem = certs
            .iter()
            .map(|der| pem::encode(pem::CERTIFICATE, der))
            .collect();
        root.anchor_der = certs.last().expect("not empty").clone();
        Ok(root)
    }

    /// The trust anchor intermediates chain to (PEM): this root, or the
    /// offline root above a signing intermediate.
    pub fn anchor_pem(&self) -> String {
        pem::encode(pem::CERTIFICATE, &self.anchor_der)
    }

    /// What `cert-chain.pem` holds above a member's intermediate: the
    /// signing certificate and the certificates above it, up to the root.
    pub fn issuer_chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.chain_pem)
    }

    /// Builds a root from a DER certificate and its (already matched) key.
    fn from_parts(cert_der: Vec<u8>, key: LoadedKey) -> Result<RootCa, Error> {
        let info = inspect::info_from_der(&cert_der, "root certificate")?;
        Ok(RootCa {
            cert_pem: pem::encode(pem::CERTIFICATE, &cert_der),
            key_pem: key.pair.serialize_pem(),
            info,
            anchor_der: cert_der.clone(),
            cert_der,
            key: Arc::new(key),
            chain_pem: String::new(),
        })
    }

    /// The root certificate, DER.
    pub(crate) fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Signs `params` for `subject_key` and checks the result chains to this root: the
    /// issuer name is byte-identical to the root's subject and the signature verifies.
    fn sign(
        &self,
        params: &CertificateParams,
        subject_key: &impl PublicKeyData,
    ) -> Result<Vec<u8>, Error> {
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key.pair)
            .map_err(|e| Error::RootSubjectUnsupported {
                reason: e.to_string(),
            })?;
        let der = params
            .signed_by(subject_key, &issuer)
            .map_err(|e| Error::Signing(e.to_string()))?
            .der()
            .to_vec();
        let root = inspect::parse_der(&self.cert_der, "root certificate")?;
        let issued = inspect::parse_der(&der, "issued certificate")?;
        if issued.issuer().as_raw() != root.subject().as_raw() {
            return Err(Error::RootSubjectUnsupported {
                reason: "its encoding does not survive being copied into the issuer field"
                    .to_owned(),
            });
        }
        if !signed_by(&issued, &root) {
            return Err(Error::Signing(
                "the issued certificate's signature does not verify".to_owned(),
            ));
        }
        Ok(der)
    }
}

/// Whether `cert` carries a valid signature by `issuer`'s key under `issuer`'s name.
pub(crate) fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// The contents of Istio's `cacerts` Secret for one cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct CacertsBundle {
    /// `ca-cert.pem`: the cluster's intermediate CA certificate.
    pub ca_cert_pem: String,
    /// `ca-key.pem`: the intermediate's private key, PKCS#8 PEM.
    pub ca_key_pem: String,
    /// `root-cert.pem`: the trust bundle (one or more roots).
    pub root_cert_pem: String,
    /// `cert-chain.pem`: the intermediate followed by the root that signed it.
    pub cert_chain_pem: String,
}

impl fmt::Debug for CacertsBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacertsBundle")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"[elided]")
            .field("root_cert_pem", &self.root_cert_pem)
            .field("cert_chain_pem", &self.cert_chain_pem)
            .finish()
    }
}

impl CacertsBundle {
    /// Secret key of [`CacertsBundle::ca_cert_pem`].
    pub const CA_CERT: &'static str = "ca-cert.pem";
    /// Secret key of [`CacertsBundle::ca_key_pem`].
    pub const CA_KEY: &'static str = "ca-key.pem";
    /// Secret key of [`CacertsBundle::root_cert_pem`].
    pub const ROOT_CERT: &'static str = "root-cert.pem";
    /// Secret key of [`CacertsBundle::cert_chain_pem`].
    pub const CERT_CHAIN: &'static str = "cert-chain.pem";

    /// The four Secret entries as `(key, value)` pairs.
    pub fn entries(&self) -> [(&'static str, &str); 4] {
        [
            (Self::CA_CERT, &self.ca_cert_pem),
            (Self::CA_KEY, &self.ca_key_pem),
            (Self::ROOT_CERT, &self.root_cert_pem),
            (Self::CERT_CHAIN, &self.cert_chain_pem),
        ]
    }

    /// Rebuilds a bundle from Secret entries looked up by key; `None` if none of the four
    /// is present, missing ones become empty (and so are reported by [`super::reissue_reason`]).
    pub fn from_entries(mut get: impl FnMut(&str) -> Option<String>) -> Option<CacertsBundle> {
        let mut any = false;
        let mut take = |key: &str| {
            let value = get(key);
            any |= value.is_some();
            value.unwrap_or_default()
        };
        let bundle = CacertsBundle {
            ca_cert_pem: take(Self::CA_CERT),
            ca_key_pem: take(Self::CA_KEY),
            root_cert_pem: take(Self::ROOT_CERT),
            cert_chain_pem: take(Self::CERT_CHAIN),
        };
        any.then_some(bundle)
    }
}

/// How intermediates are issued and when they are renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntermediatePolicy {
    /// Key algorithm of the intermediate (its signature algorithm follows the root's key).
    pub algorithm: KeyAlgorithm,
    /// Validity after issuance (whole seconds; the certificate also starts [`CLOCK_SKEW`] early).
    pub lifetime: Duration,
    /// Renew once less than this much validity is left.
    pub renew_before: Duration,
}

impl IntermediatePolicy {
    /// Checks `lifetime` is at least a second and longer than `renew_before`.
    pub fn validate(&self) -> Result<(), Error> {
        let lifetime = whole_seconds("intermediate lifetime", self.lifetime)?;
        if lifetime == 0 {
            return Err(Error::InvalidArgument(
                "intermediate lifetime must be at least one second".to_owned(),
            ));
        }
        if self.renew_before >= self.lifetime {
            return Err(Error::InvalidArgument(format!(
                "renewBefore ({}s) must be shorter than the intermediate lifetime ({lifetime}s)",
                self.renew_before.as_secs()
            )));
        }
        Ok(())
    }
}

/// Issues the intermediate CA `O=Istio, CN=Intermediate CA, L=<cluster>` for one cluster,
/// signed by `root`, valid from `now - CLOCK_SKEW` to `now + lifetime` clamped to the
/// root's notAfter, with `trust_bundle_pem` (which must contain `root`) as `root-cert.pem`.
pub fn issue_intermediate(
    root: &RootCa,
    trust_bundle_pem: &str,
    cluster: &str,
    policy: &IntermediatePolicy,
    now: Timestamp,
) -> Result<CacertsBundle, Error> {
    check_name("cluster name", cluster)?;
    policy.validate()?;
    if now >= root.info.not_after {
        return Err(Error::RootExpired {
            not_after: root.info.not_after,
        });
    }
    let bundle = pem::certificates(trust_bundle_pem, "trust bundle")?;
    for der in &bundle {
        inspect::parse_der(der, "trust bundle")?;
    }
    if !bundle.contains(&root.anchor_der) {
        return Err(Error::RootNotInTrustBundle);
    }

    let now = now.as_second();
    let key = keys::generate(policy.algorithm)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&[
        (DnType::OrganizationName, "Istio"),
        (DnType::CommonName, "Intermediate CA"),
        (DnType::LocalityName, cluster),
    ]);
    params.subject_alt_names = vec![SanType::DnsName(
        ISTIOD_DNS_NAME
            .try_into()
            .map_err(|e: rcgen::Error| Error::Signing(e.to_string()))?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = ca_key_usages();
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = offset_date_time(now - SKEW_SECONDS)?;
    params.not_after = offset_date_time(intermediate_not_after(
        now,
        policy.lifetime,
        root.info.not_after,
    ))?;
    let der = root.sign(&params, &key.pair)?;
    let ca_cert_pem = pem::encode(pem::CERTIFICATE, &der);
    Ok(CacertsBundle {
        cert_chain_pem: format!("{ca_cert_pem}{}", root.issuer_chain_pem()),
        ca_cert_pem,
        ca_key_pem: key.pair.serialize_pem(),
        root_cert_pem: trust_bundle_pem.to_owned(),
    })
}

/// notAfter (Unix seconds) of an intermediate issued at `now` (Unix seconds).
pub(crate) fn intermediate_not_after(
    now: i64,
    lifetime: Duration,
    root_not_after: Timestamp,
) -> i64 {
    let root_not_after = root_not_after.as_second();
    i64::try_from(lifetime.as_secs())
        .ok()
        .and_then(|lifetime| now.checked_add(lifetime))
        .map_or(root_not_after, |wanted| wanted.min(root_not_after))
}

/// [`CLOCK_SKEW`] in seconds.
pub(crate) const SKEW_SECONDS: i64 = CLOCK_SKEW.as_secs() as i64;

/// The key usages of both CA levels (Istio's reference layout).
fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ]
}

/// A distinguished name from `(type, UTF-8 value)` pairs, in order.
fn name(attributes: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in attributes {
        dn.push(ty.clone(), *value);
    }
    dn
}

/// A random positive 20-byte serial number (158 random bits; the top byte is `01xxxxxx` so
/// the DER INTEGER is always exactly 20 bytes).
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 20];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Randomness(e.to_string()))?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Rejects empty, over-long, or control-character names.
fn check_name(what: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if value.chars().count() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "{what} must be at most {MAX_NAME_LEN} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// `duration` in whole seconds as `i64`.
fn whole_seconds(what: &str, duration: Duration) -> Result<i64, Error> {
    i64::try_from(duration.as_secs())
        .map_err(|_| Error::InvalidArgument(format!("{what} is too long")))
}

/// Unix seconds to the time type rcgen wants; fails beyond year 9999.
fn offset_date_time(unix_seconds: i64) -> Result<time::OffsetDateTime, Error> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds).map_err(|_| {
        Error::InvalidArgument(format!(
            "validity bound {unix_seconds} (Unix seconds) is not representable in a certificate"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::keys::tests::{shared_rsa2048_pem, to_pkcs1_pem, to_sec1_pem};
    use crate::pki::testutil::*;
    use crate::pki::{generate_private_key_pem, inspect, reissue_reason};
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::{
        OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
        OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    };

    const O: &str = "2.5.4.10";
    const OU: &str = "2.5.4.11";
    const CN: &str = "2.5.4.3";
    const L: &str = "2.5.4.7";

    /// keyUsage flags as x509-parser stores them: bit 0 digitalSignature, 1 nonRepudiation,
    /// 2 keyEncipherment, 5 keyCertSign.
    const ISTIO_CA_KEY_USAGE: u16 = 0b10_0111;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The signature algorithm a certificate signed by a key of `algorithm` must carry.
    fn expected_signature_oid(algorithm: KeyAlgorithm) -> x509_parser::oid_registry::Oid<'static> {
        match algorithm {
            KeyAlgorithm::EcdsaP256 => OID_SIG_ECDSA_WITH_SHA256,
            KeyAlgorithm::EcdsaP384 => OID_SIG_ECDSA_WITH_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 => OID_PKCS1_SHA256WITHRSA,
        }
    }

    fn assert_istio_ca_extensions(cert: &X509Certificate<'_>, path_len: Option<u32>) {
        let bc = extension(cert, &OID_X509_EXT_BASIC_CONSTRAINTS);
        assert!(bc.critical, "basicConstraints must be critical");
        let ParsedExtension::BasicConstraints(bc) = bc.parsed_extension() else {
            panic!("basicConstraints unparsed");
        };
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, path_len);
        let ku = extension(cert, &OID_X509_EXT_KEY_USAGE);
        assert!(ku.critical, "keyUsage must be critical");
        let ParsedExtension::KeyUsage(ku) = ku.parsed_extension() else {
            panic!("keyUsage unparsed");
        };
        assert_eq!(ku.flags, ISTIO_CA_KEY_USAGE, "{ku}");
        assert!(ku.digital_signature() && ku.non_repudiation());
        assert!(ku.key_encipherment() && ku.key_cert_sign());
    }

    fn assert_random_serial(cert: &X509Certificate<'_>) {
        let raw = cert.raw_serial();
        assert_eq!(raw.len(), 20, "serial must be 20 bytes");
        assert_eq!(
            raw[0] & 0xc0,
            0x40,
            "serial must be positive and not zero-padded"
        );
    }

    fn check_root_profile(root: &RootCa, algorithm: KeyAlgorithm, lifetime: Duration) {
        let der = der(&root.cert_pem);
        let cert = x509(&der);
        assert_eq!(
            subject_attributes(&cert),
            attrs(&[(O, "Istio"), (OU, "fed-a"), (CN, "Root CA")])
        );
        assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw());
        cert.verify_signature(None)
            .expect("self-signature verifies");
        assert_eq!(
            cert.signature_algorithm.algorithm,
            expected_signature_oid(algorithm)
        );
        assert_istio_ca_extensions(&cert, None);
        assert!(!subject_key_id(&cert).is_empty());
        assert_random_serial(&cert);
        let info = root.info();
        assert_eq!(info.not_before, at(t0(), -300));
        assert_eq!(
            info.not_after,
            at(t0(), i64::try_from(lifetime.as_secs()).unwrap())
        );
        assert_eq!(info.key_algorithm, Some(algorithm));
        assert_eq!(info.subject_organizational_unit.as_deref(), Some("fed-a"));
        assert!(info.self_issued && info.is_ca && info.key_cert_sign);
        assert_eq!(info.path_len, None);
        assert_eq!(info, &inspect(&root.cert_pem).unwrap());
        // key_pem is the key of cert_pem.
        let key = keys::load(&root.key_pem, "t").unwrap();
        assert!(key.matches(cert.public_key()));
        assert!(root.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }

    /// Checks the full profile of `bundle` as issued by `root` at [`t0`] under `policy`,
    /// and that a workload certificate under it validates with webpki.
    fn check_intermediate_profile(
        root: &RootCa,
        bundle: &CacertsBundle,
        policy: &IntermediatePolicy,
    ) {
        let root_der = der(&root.cert_pem);
        let root_cert = x509(&root_der);
        let der = der(&bundle.ca_cert_pem);
        let cert = x509(&der);
        assert_eq!(
            subject_attributes(&cert),
            attrs(&[(O, "Istio"), (CN, "Intermediate CA"), (L, "east")])
        );
        assert_eq!(cert.issuer().as_raw(), root_cert.subject().as_raw());
        cert.verify_signature(Some(root_cert.public_key()))
            .expect("signed by the root key");
        let root_algorithm = root.info().key_algorithm.unwrap();
        assert_eq!(
            cert.signature_algorithm.algorithm,
            expected_signature_oid(root_algorithm),
            "signature algorithm follows the root key"
        );
        assert_istio_ca_extensions(&cert, Some(0));
        let san = extension(&cert, &OID_X509_EXT_SUBJECT_ALT_NAME);
        let ParsedExtension::SubjectAlternativeName(san) = san.parsed_extension() else {
            panic!("SAN unparsed");
        };
        assert_eq!(
            san.general_names,
            vec![GeneralName::DNSName("istiod.istio-system.svc")]
        );
        assert_eq!(authority_key_id(&cert), subject_key_id(&root_cert));
        assert_random_serial(&cert);

        let info = inspect(&bundle.ca_cert_pem).unwrap();
        assert_eq!(
            info.not_before,
            at(t0(), -300),
            "notBefore allows 5 minutes of skew"
        );
        let wanted = at(t0(), i64::try_from(policy.lifetime.as_secs()).unwrap());
        assert_eq!(info.not_after, wanted.min(root.info().not_after));
        assert_eq!(info.key_algorithm, Some(policy.algorithm));
        assert_eq!(info.subject_locality.as_deref(), Some("east"));
        assert_eq!(info.path_len, Some(0));
        assert!(info.is_ca && info.key_cert_sign && !info.self_issued);
        assert_eq!(info.dns_names, vec![ISTIOD_DNS_NAME.to_owned()]);
        assert_eq!(info.issuer, root.info().subject);

        let key = keys::load(&bundle.ca_key_pem, "t").unwrap();
        assert!(key.matches(cert.public_key()));
        assert_eq!(key.kind.key_algorithm(), Some(policy.algorithm));
        assert!(
            bundle
                .ca_key_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert_eq!(
            bundle.cert_chain_pem,
            format!("{}{}", bundle.ca_cert_pem, root.cert_pem)
        );
        assert_eq!(ders(&bundle.cert_chain_pem), vec![der.clone(), root_der]);

        let leaf = issue_leaf(bundle, t0());
        webpki_verify(&leaf, &[der], &bundle.root_cert_pem, t0())
            .expect("workload chain validates");
        assert_eq!(
            reissue_reason(
                Some(bundle),
                root,
                &bundle.root_cert_pem,
                "east",
                policy,
                t0()
            ),
            None,
            "a fresh bundle needs no reissue"
        );
    }

    #[test]
    fn root_and_intermediate_profiles_for_each_fast_algorithm() {
        for algorithm in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let root = root(algorithm);
            check_root_profile(&root, algorithm, days(3650));
            let policy = policy(algorithm);
            let first = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
            check_intermediate_profile(&root, &first, &policy);
            let second = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
            let (a, b) = (
                inspect(&first.ca_cert_pem).unwrap(),
                inspect(&second.ca_cert_pem).unwrap(),
            );
            assert_ne!(a.serial, b.serial, "{algorithm:?}: serials must be unique");
            assert_ne!(
                first.ca_key_pem, second.ca_key_pem,
                "{algorithm:?}: keys must be fresh"
            );
        }
    }

    #[test]
    fn serials_are_unique_across_many_issuances() {
        let root = root(KeyAlgorithm::EcdsaP256);
        let policy = policy(KeyAlgorithm::EcdsaP256);
        let mut serials = std::collections::HashSet::new();
        for _ in 0..32 {
            let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
            let info = inspect(&bundle.ca_cert_pem).unwrap();
            assert_eq!(info.serial.len(), 40, "20 bytes, no leading zero nibble");
            assert!(serials.insert(info.serial));
        }
    }

    #[test]
    fn mixed_algorithms_follow_the_policy_for_the_key_and_the_root_for_the_signature() {
        let rsa_root = RootCa::from_pem(
            &rcgen_root_pem(shared_rsa2048_pem(), true, None),
            shared_rsa2048_pem(),
            t0(),
        )
        .unwrap();
        for (root, intermediate) in [
            (rsa_root, KeyAlgorithm::EcdsaP256),
            (root(KeyAlgorithm::EcdsaP256), KeyAlgorithm::EcdsaP384),
            (root(KeyAlgorithm::EcdsaP384), KeyAlgorithm::EcdsaP256),
        ] {
            let policy = policy(intermediate);
            let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
            let cert_der = der(&bundle.ca_cert_pem);
            let cert = x509(&cert_der);
            assert_eq!(
                cert.signature_algorithm.algorithm,
                expected_signature_oid(root.info().key_algorithm.unwrap())
            );
            assert_eq!(
                inspect(&bundle.ca_cert_pem).unwrap().key_algorithm,
                Some(intermediate)
            );
            let leaf = issue_leaf(&bundle, t0());
            webpki_verify(&leaf, &[cert_der], &bundle.root_cert_pem, t0()).unwrap();
        }
    }

    /// RSA-4096 generation is slow in pure Rust, so this is the only test that does it
    /// (once, for the root, which then signs an ECDSA intermediate).
    #[test]
    fn rsa_4096_root_matches_the_istio_reference_layout() {
        let root = RootCa::generate("fed-a", KeyAlgorithm::Rsa4096, days(3650), t0()).unwrap();
        check_root_profile(&root, KeyAlgorithm::Rsa4096, days(3650));
        assert_eq!(root.info().key_algorithm, Some(KeyAlgorithm::Rsa4096));
        let policy = policy(KeyAlgorithm::EcdsaP256);
        let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
        check_intermediate_profile(&root, &bundle, &policy);
    }

    #[test]
    fn intermediate_not_after_is_clamped_to_the_root() {
        let root = RootCa::generate("fed-a", KeyAlgorithm::EcdsaP256, days(100), t0()).unwrap();
        let policy = policy(KeyAlgorithm::EcdsaP256);
        let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
        let info = inspect(&bundle.ca_cert_pem).unwrap();
        assert_eq!(info.not_after, root.info().not_after);
        assert_eq!(info.not_before, at(t0(), -300));
        check_intermediate_profile(&root, &bundle, &policy);
        // Later issuance is clamped too, down to the last second of the root.
        let late = at(root.info().not_after, -1);
        let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, late).unwrap();
        let info = inspect(&bundle.ca_cert_pem).unwrap();
        assert_eq!(info.not_after, root.info().not_after);
        assert_eq!(info.not_before, at(late, -300));
    }

    #[test]
    fn sub_second_now_and_lifetime_are_truncated_to_whole_seconds() {
        let root = root(KeyAlgorithm::EcdsaP256);
        let now = t0()
            .checked_add(jiff::SignedDuration::from_millis(999))
            .unwrap();
        let mut policy = policy(KeyAlgorithm::EcdsaP256);
        policy.lifetime += Duration::from_millis(700);
        let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, now).unwrap();
        let info = inspect(&bundle.ca_cert_pem).unwrap();
        assert_eq!(info.not_before, at(t0(), -300));
        assert_eq!(info.not_after, at(t0(), 365 * 86_400));
    }

    #[test]
    fn chains_validate_only_under_their_own_root() {
        let root_a = root(KeyAlgorithm::EcdsaP256);
        let root_b = root(KeyAlgorithm::EcdsaP256); // same subject name, different key
        let policy = policy(KeyAlgorithm::EcdsaP256);
        let bundle = issue_intermediate(&root_a, &root_a.cert_pem, "east", &policy, t0()).unwrap();
        let inter = der(&bundle.ca_cert_pem);
        let leaf = issue_leaf(&bundle, t0());

        webpki_verify(&leaf, std::slice::from_ref(&inter), &root_a.cert_pem, t0()).unwrap();
        let err =
            webpki_verify(&leaf, std::slice::from_ref(&inter), &root_b.cert_pem, t0()).unwrap_err();
        assert!(
            matches!(
                err,
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey
            ),
            "{err:?}"
        );
        // Without the intermediate, the leaf does not chain to the root directly.
        assert!(webpki_verify(&leaf, &[], &root_a.cert_pem, t0()).is_err());
        // Outside the validity window the chain is rejected.
        assert!(
            webpki_verify(
                &leaf,
                std::slice::from_ref(&inter),
                &root_a.cert_pem,
                at(t0(), 2 * 86_400)
            )
            .is_err()
        );

        // A trust bundle with both roots (root rotation) validates chains under either.
        let both = format!("{}{}", root_b.cert_pem, root_a.cert_pem);
        let rotated = issue_intermediate(&root_a, &both, "east", &policy, t0()).unwrap();
        assert_eq!(rotated.root_cert_pem, both);
        let leaf = issue_leaf(&rotated, t0());
        webpki_verify(&leaf, &[der(&rotated.ca_cert_pem)], &both, t0()).unwrap();
        let bundle_b = issue_intermediate(&root_b, &both, "west", &policy, t0()).unwrap();
        let leaf_b = issue_leaf(&bundle_b, t0());
        webpki_verify(&leaf_b, &[der(&bundle_b.ca_cert_pem)], &both, t0()).unwrap();
        // cert-chain.pem holds only the signing root, not the whole bundle.
        assert_eq!(ders(&bundle_b.cert_chain_pem).len(), 2);
    }

    #[test]
    fn pathlen_zero_stops_a_ca_issued_by_the_intermediate() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let root = root(algorithm);
            let bundle =
                issue_intermediate(&root, &root.cert_pem, "east", &policy(algorithm), t0())
                    .unwrap();
            let (sub_ca, leaf) = issue_sub_ca_and_leaf(&bundle, t0());
            let err = webpki_verify(
                &leaf,
                &[sub_ca, der(&bundle.ca_cert_pem)],
                &root.cert_pem,
                t0(),
            )
            .unwrap_err();
            assert!(
                matches!(err, webpki::Error::PathLenConstraintViolated),
                "{err:?}"
            );
            // Control: the same kind of sub-CA directly under the (unconstrained) root is
            // accepted, so the failure above is the intermediate's pathlen at work.
            let root_as_issuer = CacertsBundle {
                ca_cert_pem: root.cert_pem.clone(),
                ca_key_pem: root.key_pem.clone(),
                root_cert_pem: root.cert_pem.clone(),
                cert_chain_pem: root.cert_pem.clone(),
            };
            let (sub_ca, leaf) = issue_sub_ca_and_leaf(&root_as_issuer, t0());
            webpki_verify(&leaf, &[sub_ca], &root.cert_pem, t0()).unwrap();
        }
    }

    #[test]
    fn issue_intermediate_rejects_bad_inputs() {
        let other = root(KeyAlgorithm::EcdsaP256);
        let root = root(KeyAlgorithm::EcdsaP256);
        let policy = policy(KeyAlgorithm::EcdsaP256);
        let issue = |bundle: &str, cluster: &str, policy: &IntermediatePolicy, now| {
            issue_intermediate(&root, bundle, cluster, policy, now)
        };
        assert_eq!(
            issue(&other.cert_pem, "east", &policy, t0()),
            Err(Error::RootNotInTrustBundle)
        );
        assert!(matches!(
            issue("garbage", "east", &policy, t0()),
            Err(Error::NoPem { .. })
        ));
        let with_junk = format!(
            "{}{}",
            root.cert_pem,
            pem::encode(pem::CERTIFICATE, b"junk")
        );
        assert!(matches!(
            issue(&with_junk, "east", &policy, t0()),
            Err(Error::Certificate {
                what: "trust bundle",
                ..
            })
        ));
        for cluster in ["", "  ", "a\nb", &"x".repeat(129)] {
            assert!(
                matches!(
                    issue(&root.cert_pem, cluster, &policy, t0()),
                    Err(Error::InvalidArgument(_))
                ),
                "{cluster:?}"
            );
        }
        let too_eager = IntermediatePolicy {
            renew_before: policy.lifetime,
            ..policy
        };
        assert!(matches!(
            issue(&root.cert_pem, "east", &too_eager, t0()),
            Err(Error::InvalidArgument(_))
        ));
        let zero = IntermediatePolicy {
            lifetime: Duration::from_millis(500),
            renew_before: Duration::ZERO,
            ..policy
        };
        assert!(matches!(
            issue(&root.cert_pem, "east", &zero, t0()),
            Err(Error::InvalidArgument(_))
        ));
        let expired_at = root.info().not_after;
        assert_eq!(
            issue(&root.cert_pem, "east", &policy, expired_at),
            Err(Error::RootExpired {
                not_after: expired_at
            })
        );
        // An absurd lifetime is rejected; a merely huge one (past year 9999) is clamped.
        let absurd = IntermediatePolicy {
            lifetime: Duration::MAX,
            ..policy
        };
        assert!(matches!(
            issue(&root.cert_pem, "east", &absurd, t0()),
            Err(Error::InvalidArgument(_))
        ));
        let forever = IntermediatePolicy {
            lifetime: days(365 * 10_000),
            ..policy
        };
        let bundle = issue(&root.cert_pem, "east", &forever, t0()).unwrap();
        assert_eq!(
            inspect(&bundle.ca_cert_pem).unwrap().not_after,
            root.info().not_after
        );
    }

    #[test]
    fn root_generation_rejects_bad_inputs() {
        assert!(matches!(
            RootCa::generate("", KeyAlgorithm::EcdsaP256, days(1), t0()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            RootCa::generate("fed", KeyAlgorithm::EcdsaP256, Duration::ZERO, t0()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            RootCa::generate("fed", KeyAlgorithm::EcdsaP256, days(365 * 10_000), t0()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            RootCa::generate("fed", KeyAlgorithm::EcdsaP256, Duration::MAX, t0()),
            Err(Error::InvalidArgument(_))
        ));
    }

    // ---- user-supplied roots ----

    /// A self-signed certificate for `key_pem` made with rcgen directly: a CA with the
    /// given keyCertSign/pathlen when `ca`, else a leaf; validity t0-1d .. t0+1y.
    fn rcgen_root_pem(key_pem: &str, ca: bool, path_len: Option<u8>) -> String {
        let key = keys::load(key_pem, "t").unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&[(DnType::CommonName, "User Root")]);
        if ca {
            params.is_ca = IsCa::Ca(match path_len {
                Some(n) => BasicConstraints::Constrained(n),
                None => BasicConstraints::Unconstrained,
            });
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        params.not_before = offset_date_time(at(t0(), -86_400).as_second()).unwrap();
        params.not_after = offset_date_time(at(t0(), 365 * 86_400).as_second()).unwrap();
        params.self_signed(&key.pair).unwrap().pem()
    }

    #[test]
    fn from_pem_round_trips_a_generated_root() {
        let root = root(KeyAlgorithm::EcdsaP384);
        let loaded = RootCa::from_pem(&root.cert_pem, &root.key_pem, t0()).unwrap();
        assert_eq!(loaded.cert_pem, root.cert_pem);
        assert_eq!(loaded.key_pem, root.key_pem);
        assert_eq!(loaded.info(), root.info());
        // Surrounding text (e.g. `openssl x509 -text` output) and CRLF are tolerated and
        // the stored PEM is canonical.
        let messy = format!(
            "Certificate:\r\n    junk\r\n{}",
            root.cert_pem.replace('\n', "\r\n")
        );
        let loaded = RootCa::from_pem(&messy, &root.key_pem, t0()).unwrap();
        assert_eq!(loaded.cert_pem, root.cert_pem);
    }

    #[test]
    fn from_pem_accepts_pkcs1_and_sec1_keys_and_openssl_style_names() {
        // PKCS#1 RSA key, as `openssl genrsa` (1.x) writes it.
        let rsa_cert = rcgen_root_pem(shared_rsa2048_pem(), true, None);
        let rsa = RootCa::from_pem(&rsa_cert, &to_pkcs1_pem(shared_rsa2048_pem()), t0()).unwrap();
        assert_eq!(rsa.info().key_algorithm, Some(KeyAlgorithm::Rsa2048));
        assert_eq!(rsa.key_pem, shared_rsa2048_pem());

        // SEC1 EC key and a name with PrintableString values and several attributes, as
        // `openssl req` writes it; the issuer name must be copied byte for byte.
        let ec_key = generate_private_key_pem(KeyAlgorithm::EcdsaP256).unwrap();
        let key = keys::load(&ec_key, "t").unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CountryName,
            rcgen::DnValue::PrintableString("US".try_into().unwrap()),
        );
        dn.push(
            DnType::OrganizationName,
            rcgen::DnValue::PrintableString("Example Corp".try_into().unwrap()),
        );
        dn.push(DnType::CommonName, "Example Mesh Root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(2));
        params.key_usages = ca_key_usages();
        params.not_before = offset_date_time(at(t0(), -86_400).as_second()).unwrap();
        params.not_after = offset_date_time(at(t0(), 365 * 86_400).as_second()).unwrap();
        let ec_cert = params.self_signed(&key.pair).unwrap().pem();
        let ec = RootCa::from_pem(&ec_cert, &to_sec1_pem(&ec_key), t0()).unwrap();
        assert_eq!(ec.key_pem, ec_key, "key is re-encoded as PKCS#8");
        assert_eq!(ec.info().path_len, Some(2));

        for root in [rsa, ec] {
            let policy = policy(KeyAlgorithm::EcdsaP256);
            let bundle = issue_intermediate(&root, &root.cert_pem, "east", &policy, t0()).unwrap();
            let inter = der(&bundle.ca_cert_pem);
            let root_der = der(&root.cert_pem);
            assert_eq!(
                x509(&inter).issuer().as_raw(),
                x509(&root_der).subject().as_raw()
            );
            let leaf = issue_leaf(&bundle, t0());
            webpki_verify(&leaf, &[inter], &root.cert_pem, t0()).unwrap();
        }
    }

    #[test]
    fn from_pem_rejects_unusable_roots_with_clear_errors() {
        let key = generate_private_key_pem(KeyAlgorithm::EcdsaP256).unwrap();
        let good = rcgen_root_pem(&key, true, None);
        RootCa::from_pem(&good, &key, t0()).unwrap();

        // Not a CA.
        let leaf = rcgen_root_pem(&key, false, None);
        assert_eq!(
            RootCa::from_pem(&leaf, &key, t0()).unwrap_err(),
            Error::RootNotCa
        );
        // A CA that may not sign certificates.
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::CrlSign];
        let no_cert_sign = params
            .self_signed(&keys::load(&key, "t").unwrap().pair)
            .unwrap()
            .pem();
        assert_eq!(
            RootCa::from_pem(&no_cert_sign, &key, t0()).unwrap_err(),
            Error::RootCannotSign
        );
        // A CA that may not have intermediates.
        let pathlen0 = rcgen_root_pem(&key, true, Some(0));
        assert_eq!(
            RootCa::from_pem(&pathlen0, &key, t0()).unwrap_err(),
            Error::RootPathLenZero
        );
        // Someone else's key, of the same and of another algorithm.
        let other = generate_private_key_pem(KeyAlgorithm::EcdsaP256).unwrap();
        assert_eq!(
            RootCa::from_pem(&good, &other, t0()).unwrap_err(),
            Error::KeyMismatch
        );
        let other = generate_private_key_pem(KeyAlgorithm::EcdsaP384).unwrap();
        assert_eq!(
            RootCa::from_pem(&good, &other, t0()).unwrap_err(),
            Error::KeyMismatch
        );
        // Garbage.
        assert!(matches!(
            RootCa::from_pem("hello", &key, t0()),
            Err(Error::NoPem {
                expected: "certificate",
                ..
            })
        ));
        let bad_der = pem::encode(pem::CERTIFICATE, b"not DER");
        assert!(matches!(
            RootCa::from_pem(&bad_der, &key, t0()),
            Err(Error::Certificate { .. })
        ));
        assert!(matches!(
            RootCa::from_pem(&good, "hello", t0()),
            Err(Error::NoPem {
                expected: "private key",
                ..
            })
        ));
        assert!(matches!(
            RootCa::from_pem(&good, &pem::encode("PRIVATE KEY", b"junk"), t0()),
            Err(Error::PrivateKey { .. })
        ));
        assert!(matches!(
            RootCa::from_pem(&format!("{good}{good}"), &key, t0()),
            Err(Error::CertificateCount { found: 2, .. })
        ));
        // The key given where the certificate belongs (and vice versa).
        assert!(matches!(
            RootCa::from_pem(&key, &good, t0()),
            Err(Error::NoPem { .. })
        ));
        // Expired (and exactly at notAfter), and not yet valid beyond the skew allowance.
        let expired = RootCa::generate(
            "fed",
            KeyAlgorithm::EcdsaP256,
            days(365),
            at(t0(), -2 * 365 * 86_400),
        )
        .unwrap();
        let not_after = expired.info().not_after;
        assert_eq!(
            RootCa::from_pem(&expired.cert_pem, &expired.key_pem, t0()).unwrap_err(),
            Error::RootExpired { not_after }
        );
        assert_eq!(
            RootCa::from_pem(&expired.cert_pem, &expired.key_pem, not_after).unwrap_err(),
            Error::RootExpired { not_after }
        );
        RootCa::from_pem(&expired.cert_pem, &expired.key_pem, at(not_after, -1)).unwrap();
        let future =
            RootCa::generate("fed", KeyAlgorithm::EcdsaP256, days(365), at(t0(), 86_400)).unwrap();
        assert!(matches!(
            RootCa::from_pem(&future.cert_pem, &future.key_pem, t0()),
            Err(Error::RootNotYetValid { .. })
        ));
        // Three minutes ahead of us is within the clock-skew allowance.
        let skewed =
            RootCa::generate("fed", KeyAlgorithm::EcdsaP256, days(365), at(t0(), 480)).unwrap();
        RootCa::from_pem(&skewed.cert_pem, &skewed.key_pem, t0()).unwrap();
    }

    #[test]
    fn errors_and_debug_output_never_contain_key_material() {
        let root = root(KeyAlgorithm::EcdsaP256);
        let bundle = issue_intermediate(
            &root,
            &root.cert_pem,
            "east",
            &policy(KeyAlgorithm::EcdsaP256),
            t0(),
        )
        .unwrap();
        let secret_lines = |pem: &str| -> Vec<String> {
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned)
                .collect()
        };
        let mut outputs = vec![format!("{root:?}"), format!("{bundle:?}")];
        let truncated: String = root.key_pem.chars().take(root.key_pem.len() - 40).collect();
        let other = generate_private_key_pem(KeyAlgorithm::EcdsaP256).unwrap();
        for (cert, key) in [
            (root.cert_pem.as_str(), other.as_str()),
            (root.cert_pem.as_str(), truncated.as_str()),
            (root.key_pem.as_str(), root.key_pem.as_str()),
            (
                root.cert_pem.as_str(),
                &bundle.ca_key_pem.replace("PRIVATE KEY", "RSA PRIVATE KEY"),
            ),
            (
                root.cert_pem.as_str(),
                &bundle.ca_key_pem.replace("PRIVATE KEY", "EC PRIVATE KEY"),
            ),
        ] {
            let err = RootCa::from_pem(cert, key, t0()).unwrap_err();
            outputs.push(err.to_string());
            outputs.push(format!("{err:?}"));
        }
        for output in &outputs {
            for secret in [&root.key_pem, &bundle.ca_key_pem, &other] {
                for line in secret_lines(secret) {
                    assert!(!output.contains(&line), "leaked key material in {output}");
                }
            }
        }
    }

    #[test]
    fn public_types_can_be_shared_across_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<RootCa>();
        assert_send_sync::<CacertsBundle>();
        assert_send_sync::<IntermediatePolicy>();
        assert_send_sync::<Error>();
        assert_send_sync::<crate::pki::ReissueReason>();
        assert_send_sync::<CertInfo>();
    }

    #[test]
    fn bundle_entries_round_trip() {
        let root = root(KeyAlgorithm::EcdsaP256);
        let bundle = issue_intermediate(
            &root,
            &root.cert_pem,
            "east",
            &policy(KeyAlgorithm::EcdsaP256),
            t0(),
        )
        .unwrap();
        let map: std::collections::BTreeMap<&str, String> = bundle
            .entries()
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect();
        assert_eq!(
            map.keys().copied().collect::<Vec<_>>(),
            [
                "ca-cert.pem",
                "ca-key.pem",
                "cert-chain.pem",
                "root-cert.pem"
            ]
        );
        assert_eq!(
            CacertsBundle::from_entries(|k| map.get(k).cloned()),
            Some(bundle.clone())
        );
        assert_eq!(CacertsBundle::from_entries(|_| None), None);
        let partial = CacertsBundle::from_entries(|k| {
            (k == "ca-cert.pem").then(|| bundle.ca_cert_pem.clone())
        })
        .unwrap();
        assert_eq!(partial.ca_key_pem, "");
    }

    /// A signing CA `CN=Signing CA` below `root`, able to issue intermediates
    /// (pathlen 1), and its key: what a user keeps when the root is offline.
    fn signing_ca(root: &RootCa) -> (String, String) {
        let key = keys::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&[(DnType::CommonName, "Signing CA")]);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = ca_key_usages();
        params.serial_number = Some(random_serial().unwrap());
        params.not_before = offset_date_time(t0().as_second() - 60).unwrap();
        params.not_after = offset_date_time(t0().as_second() + 86400 * 365).unwrap();
        let der = root.sign(&params, &key.pair).unwrap();
        (
            pem::encode(pem::CERTIFICATE, &der),
            key.pair.serialize_pem(),
        )
    }

    #[test]
    fn an_offline_root_signs_through_its_signing_intermediate() {
        let offline = root(KeyAlgorithm::EcdsaP256);
        let (signing_pem, signing_key) = signing_ca(&offline);
        let signer =
            RootCa::from_signing_pem(&signing_pem, &signing_key, Some(&offline.cert_pem), t0())
                .unwrap();
        assert_eq!(
            signer.anchor_pem(),
            offline.cert_pem,
            "trust goes to the root"
        );
        assert_eq!(signer.cert_pem, signing_pem);
        // The root also accepted at the end of tls.crt instead of as ca.crt.
        let appended = format!("{signing_pem}{}", offline.cert_pem);
        let same = RootCa::from_signing_pem(&appended, &signing_key, None, t0()).unwrap();
        assert_eq!(same.anchor_pem(), offline.cert_pem);
        let policy = policy(KeyAlgorithm::EcdsaP256);
        let bundle = issue_intermediate(&signer, &offline.cert_pem, "east", &policy, t0()).unwrap();
        assert_eq!(
            bundle.cert_chain_pem,
            format!("{}{signing_pem}{}", bundle.ca_cert_pem, offline.cert_pem),
            "cert-chain.pem: intermediate, signing CA, root"
        );
        let leaf = issue_leaf(&bundle, t0());
        webpki_verify(
            &leaf,
            &[der(&bundle.ca_cert_pem), der(&signing_pem)],
            &offline.cert_pem,
            t0(),
        )
        .unwrap();
        assert_eq!(
            crate::pki::reissue_reason(
                Some(&bundle),
                &signer,
                &offline.cert_pem,
                "east",
                &policy,
                t0()
            ),
            None,
            "stable once issued"
        );
        // Intermediates must chain to the root in the bundle, not the signer.
        assert_eq!(
            issue_intermediate(&signer, &signing_pem, "east", &policy, t0()).unwrap_err(),
            Error::RootNotInTrustBundle
        );
    }

    #[test]
    fn a_signing_chain_that_does_not_reach_its_root_is_refused() {
        let offline = root(KeyAlgorithm::EcdsaP256);
        let other = root(KeyAlgorithm::EcdsaP256);
        let (signing_pem, signing_key) = signing_ca(&offline);
        assert_eq!(
            RootCa::from_signing_pem(&signing_pem, &signing_key, Some(&other.cert_pem), t0())
                .unwrap_err(),
            Error::ChainBroken
        );
        let (_, foreign_key) = signing_ca(&offline);
        assert_eq!(
            RootCa::from_signing_pem(&signing_pem, &foreign_key, Some(&offline.cert_pem), t0())
                .unwrap_err(),
            Error::KeyMismatch
        );
    }
}
