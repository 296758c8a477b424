//! Shared helpers for the pki tests: fixed clocks, leaf issuance, and real path validation.

use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{ParsedExtension, X509Extension};
use x509_parser::oid_registry::Oid;

use super::{CacertsBundle, IntermediatePolicy, RootCa, pem};
use crate::api::KeyAlgorithm;

/// A fixed "now" for tests.
pub(crate) fn t0() -> Timestamp {
    "2025-03-01T12:00:00Z".parse().unwrap()
}

/// `n` days.
pub(crate) fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// `ts` moved by `seconds`.
pub(crate) fn at(ts: Timestamp, seconds: i64) -> Timestamp {
    ts.checked_add(jiff::SignedDuration::from_secs(seconds))
        .unwrap()
}

/// One year of intermediate lifetime, renewed 30 days before expiry.
pub(crate) fn policy(algorithm: KeyAlgorithm) -> IntermediatePolicy {
    IntermediatePolicy {
        algorithm,
        lifetime: days(365),
        renew_before: days(30),
    }
}

/// A ten-year root for federation `fed-a` generated at [`t0`].
pub(crate) fn root(algorithm: KeyAlgorithm) -> RootCa {
    RootCa::generate("fed-a", algorithm, days(3650), t0()).unwrap()
}

/// DER of the single certificate in `pem_text`.
pub(crate) fn der(pem_text: &str) -> Vec<u8> {
    pem::single_certificate(pem_text, "test").unwrap()
}

/// DERs of every certificate in `pem_text`.
pub(crate) fn ders(pem_text: &str) -> Vec<Vec<u8>> {
    pem::certificates(pem_text, "test").unwrap()
}

/// Parses a DER certificate.
pub(crate) fn x509(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    assert!(rest.is_empty());
    cert
}

/// The extension `oid` of `cert`; panics if absent or duplicated.
pub(crate) fn extension<'a>(cert: &'a X509Certificate<'a>, oid: &Oid<'_>) -> &'a X509Extension<'a> {
    cert.get_extension_unique(oid)
        .unwrap()
        .unwrap_or_else(|| panic!("extension {oid} missing"))
}

/// The subjectKeyIdentifier of `cert`.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .expect("subjectKeyIdentifier")
}

/// The authorityKeyIdentifier keyIdentifier of `cert`.
pub(crate) fn authority_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
        .expect("authorityKeyIdentifier")
}

/// `(attribute OID, value)` of every subject attribute, in order.
pub(crate) fn subject_attributes(cert: &X509Certificate<'_>) -> Vec<(String, String)> {
    cert.subject()
        .iter_attributes()
        .map(|a| (a.attr_type().to_id_string(), a.as_str().unwrap().to_owned()))
        .collect()
}

/// An rcgen issuer for the intermediate in `bundle`.
fn intermediate_issuer(bundle: &CacertsBundle) -> Issuer<'static, KeyPair> {
    let key = KeyPair::from_pem(&bundle.ca_key_pem).unwrap();
    Issuer::from_ca_cert_pem(&bundle.ca_cert_pem, key).unwrap()
}

/// Validity of issued test certificates: an hour before `now` to a day after.
fn short_validity(params: &mut CertificateParams, now: Timestamp) {
    params.not_before = time::OffsetDateTime::from_unix_timestamp(now.as_second() - 3600).unwrap();
    params.not_after = time::OffsetDateTime::from_unix_timestamp(now.as_second() + 86_400).unwrap();
}

/// Params of an Istio-like workload certificate (empty subject, SPIFFE URI SAN).
fn workload_params(now: Timestamp) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://cluster.local/ns/default/sa/x".try_into().unwrap(),
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    short_validity(&mut params, now);
    params
}

/// A workload certificate (DER) signed by the intermediate in `bundle`.
pub(crate) fn issue_leaf(bundle: &CacertsBundle, now: Timestamp) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    workload_params(now)
        .signed_by(&key, &intermediate_issuer(bundle))
        .unwrap()
        .der()
        .to_vec()
}

/// A sub-CA under the intermediate in `bundle` (violating its pathlen 0) and a workload
/// certificate under that sub-CA: `(sub_ca_der, leaf_der)`.
pub(crate) fn issue_sub_ca_and_leaf(bundle: &CacertsBundle, now: Timestamp) -> (Vec<u8>, Vec<u8>) {
    let sub_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Rogue Sub CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    short_validity(&mut params, now);
    let sub_ca = params
        .signed_by(&sub_key, &intermediate_issuer(bundle))
        .unwrap();
    let sub_issuer = Issuer::new(params, sub_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = workload_params(now)
        .signed_by(&leaf_key, &sub_issuer)
        .unwrap();
    (sub_ca.der().to_vec(), leaf.der().to_vec())
}

/// Validates `leaf` with rustls-webpki for both serverAuth and clientAuth, trusting every
/// certificate in `trust_bundle_pem` and offering `intermediates`.
pub(crate) fn webpki_verify(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    trust_bundle_pem: &str,
    now: Timestamp,
) -> Result<(), webpki::Error> {
    let anchor_ders: Vec<CertificateDer<'static>> = ders(trust_bundle_pem)
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let anchors: Vec<_> = anchor_ders
        .iter()
        .map(|d| webpki::anchor_from_trusted_cert(d).unwrap())
        .collect();
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let leaf = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    let time =
        UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now.as_second()).unwrap()));
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}
