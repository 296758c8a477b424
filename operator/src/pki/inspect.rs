//! Reading the facts the operator cares about out of a certificate.

use jiff::Timestamp;
use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Name;

use super::keys::KeyKind;
use super::{Error, pem};
use crate::api::KeyAlgorithm;

/// Facts about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lowercase hex without leading zeros or separators.
    pub serial: String,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// Subject distinguished name, e.g. `O=Istio, CN=Intermediate CA, L=east`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// First subject common name (CN).
    pub subject_common_name: Option<String>,
    /// First subject organization (O).
    pub subject_organization: Option<String>,
    /// First subject organizational unit (OU).
    pub subject_organizational_unit: Option<String>,
    /// First subject locality (L); meshfed puts the member cluster name here.
    pub subject_locality: Option<String>,
    /// DNS names in the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// Whether basicConstraints says `CA:TRUE`.
    pub is_ca: bool,
    /// basicConstraints pathLenConstraint, if any.
    pub path_len: Option<u32>,
    /// Whether keyUsage allows keyCertSign.
    pub key_cert_sign: bool,
    /// Key algorithm, if it is one meshfed generates.
    pub key_algorithm: Option<KeyAlgorithm>,
    /// Whether issuer and subject names are byte-identical.
    pub self_issued: bool,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256_fingerprint: String,
}

/// Parses the single certificate in `cert_pem`.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, Error> {
    let der = pem::single_certificate(cert_pem, "certificate")?;
    info_from_der(&der, "certificate")
}

/// Parses every certificate in `bundle_pem` (e.g. a trust bundle or chain), in order.
pub fn inspect_bundle(bundle_pem: &str) -> Result<Vec<CertInfo>, Error> {
    pem::certificates(bundle_pem, "certificate bundle")?
        .iter()
        .map(|der| info_from_der(der, "certificate bundle"))
        .collect()
}

/// Parses a DER certificate, rejecting trailing bytes.
pub(crate) fn parse_der<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<X509Certificate<'a>, Error> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Error::Certificate {
            what,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(Error::Certificate {
            what,
            reason: "trailing data after the certificate".to_owned(),
        });
    }
    Ok(cert)
}

/// [`CertInfo`] of a DER certificate.
pub(crate) fn info_from_der(der: &[u8], what: &'static str) -> Result<CertInfo, Error> {
    let cert = parse_der(der, what)?;
    info_from_cert(&cert, der, what)
}

/// [`CertInfo`] of a parsed certificate whose DER is `der`.
pub(crate) fn info_from_cert(
    cert: &X509Certificate<'_>,
    der: &[u8],
    what: &'static str,
) -> Result<CertInfo, Error> {
    let bad = |reason: String| Error::Certificate { what, reason };
    let basic_constraints = cert
        .basic_constraints()
        .map_err(|e| bad(format!("basicConstraints: {e}")))?
        .map(|ext| ext.value.clone());
    let key_usage = cert
        .key_usage()
        .map_err(|e| bad(format!("keyUsage: {e}")))?
        .map(|ext| ext.value.key_cert_sign());
    let dns_names = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("subjectAltName: {e}")))?
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    Ok(CertInfo {
        serial: cert.serial.to_str_radix(16),
        not_before: timestamp(validity.not_before, what)?,
        not_after: timestamp(validity.not_after, what)?,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        subject_common_name: first(cert.subject(), |n| n.iter_common_name()),
        subject_organization: first(cert.subject(), |n| n.iter_organization()),
        subject_organizational_unit: first(cert.subject(), |n| n.iter_organizational_unit()),
        subject_locality: first(cert.subject(), |n| n.iter_locality()),
        dns_names,
        is_ca: basic_constraints.as_ref().is_some_and(|bc| bc.ca),
        path_len: basic_constraints.and_then(|bc| bc.path_len_constraint),
        key_cert_sign: key_usage.unwrap_or(false),
        key_algorithm: KeyKind::from_spki(cert.public_key())
            .ok()
            .and_then(KeyKind::key_algorithm),
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        sha256_fingerprint: pem::hex(&Sha256::digest(der)),
    })
}

/// Converts an X.509 time to a [`Timestamp`].
pub(crate) fn timestamp(time: ASN1Time, what: &'static str) -> Result<Timestamp, Error> {
    Timestamp::from_second(time.timestamp()).map_err(|e| Error::Certificate {
        what,
        reason: format!("validity time out of range: {e}"),
    })
}

/// The first value of one attribute type in `name`, if it is a string.
fn first<'a, 'n, I>(
    name: &'n X509Name<'a>,
    attributes: impl FnOnce(&'n X509Name<'a>) -> I,
) -> Option<String>
where
    I: Iterator<Item = &'n x509_parser::x509::AttributeTypeAndValue<'a>>,
    'a: 'n,
{
    attributes(name)
        .next()
        .and_then(|attr| attr.as_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::testutil::*;
    use crate::pki::{IntermediatePolicy, issue_intermediate};

    #[test]
    fn inspect_reports_the_intermediate_facts() {
        let root = root(KeyAlgorithm::EcdsaP256);
        let policy = IntermediatePolicy {
            algorithm: KeyAlgorithm::EcdsaP384,
            lifetime: days(90),
            renew_before: days(10),
        };
        let bundle = issue_intermediate(&root, &root.cert_pem, "west-1", &policy, t0()).unwrap();
        let info = inspect(&bundle.ca_cert_pem).unwrap();
        let der = der(&bundle.ca_cert_pem);
        let cert = x509(&der);
        assert_eq!(info.serial, pem::hex(cert.raw_serial()));
        assert_eq!(info.serial, info.serial.to_lowercase());
        assert_eq!(info.not_before, at(t0(), -300));
        assert_eq!(info.not_after, at(t0(), 90 * 86_400));
        assert_eq!(info.subject, "O=Istio, CN=Intermediate CA, L=west-1");
        assert_eq!(info.issuer, "O=Istio, OU=fed-a, CN=Root CA");
        assert_eq!(info.subject_common_name.as_deref(), Some("Intermediate CA"));
        assert_eq!(info.subject_organization.as_deref(), Some("Istio"));
        assert_eq!(info.subject_organizational_unit, None);
        assert_eq!(info.subject_locality.as_deref(), Some("west-1"));
        assert_eq!(info.dns_names, vec!["istiod.istio-system.svc".to_owned()]);
        assert!(info.is_ca && info.key_cert_sign && !info.self_issued);
        assert_eq!(info.path_len, Some(0));
        assert_eq!(info.key_algorithm, Some(KeyAlgorithm::EcdsaP384));
        assert_eq!(info.sha256_fingerprint, pem::hex(&Sha256::digest(&der)));
        assert_eq!(info.sha256_fingerprint.len(), 64);

        let chain = inspect_bundle(&bundle.cert_chain_pem).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0], info);
        assert_eq!(&chain[1], root.info());
    }

    #[test]
    fn inspect_serial_drops_leading_zeros() {
        // A certificate whose serial is 0x00ff (DER needs the zero to stay positive).
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0xff]));
        let pem = params.self_signed(&key).unwrap().pem();
        let info = inspect(&pem).unwrap();
        assert_eq!(info.serial, "ff");
        assert!(!info.is_ca);
        assert_eq!(info.path_len, None);
        assert!(!info.key_cert_sign);
        assert!(info.self_issued);
        assert_eq!(info.subject_locality, None);
    }

    #[test]
    fn inspect_rejects_garbage_and_multiple_certificates() {
        assert!(matches!(inspect("nope"), Err(Error::NoPem { .. })));
        assert!(matches!(
            inspect(&pem::encode(pem::CERTIFICATE, b"\x30\x03\x02\x01\x01")),
            Err(Error::Certificate { .. })
        ));
        let root = root(KeyAlgorithm::EcdsaP256);
        let mut trailing = der(&root.cert_pem);
        trailing.push(0);
        assert!(matches!(
            inspect(&pem::encode(pem::CERTIFICATE, &trailing)),
            Err(Error::Certificate { .. })
        ));
        let two = format!("{}{}", root.cert_pem, root.cert_pem);
        assert!(matches!(
            inspect(&two),
            Err(Error::CertificateCount { found: 2, .. })
        ));
        assert_eq!(inspect_bundle(&two).unwrap().len(), 2);
    }
}
