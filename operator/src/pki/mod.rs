//! Certificate authority material for an Istio multi-primary mesh with a shared root.
//!
//! One root CA per federation signs one intermediate CA per member cluster. The
//! intermediate is installed in the cluster as the `cacerts` Secret (Istio's "plug-in CA"
//! layout, see [`CacertsBundle`]). Everything here is a pure function of its inputs: no
//! I/O, no Kubernetes, and the current time is always passed in.
//!
//! Certificate profile (Istio's `tools/certs` reference layout):
//! - root: `O=Istio, OU=<federation>, CN=Root CA`, critical `CA:TRUE` (no path length
//!   limit), critical keyUsage `digitalSignature, nonRepudiation, keyEncipherment,
//!   keyCertSign`;
//! - intermediate: `O=Istio, CN=Intermediate CA, L=<cluster>`, critical `CA:TRUE,
//!   pathlen:0`, the same keyUsage, SAN `DNS:istiod.istio-system.svc`, and an authority
//!   key identifier pointing at the root;
//! - 20-byte random positive serial numbers; signatures use SHA-256 for RSA and P-256
//!   signers and SHA-384 for P-384 signers.

mod inspect;
mod issue;
mod keys;
mod pem;
mod renewal;
#[cfg(test)]
mod testutil;

use jiff::Timestamp;

pub use inspect::{CertInfo, inspect, inspect_bundle};
pub use issue::{
    CLOCK_SKEW, CacertsBundle, ISTIOD_DNS_NAME, IntermediatePolicy, RootCa, issue_intermediate,
};
pub use keys::{generate_private_key_pem, private_key_algorithm};
pub use renewal::{
    LIFETIME_TOLERANCE, ReissueReason, certificate_set, chain_root_pem, chains_to, reissue_reason,
};

/// Failures of the PKI functions; messages never contain key material.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input holds no PEM block of the expected kind.
    #[error("{what}: no PEM-encoded {expected} found")]
    NoPem {
        /// Which input was being read.
        what: &'static str,
        /// The kind of PEM block that was looked for.
        expected: &'static str,
    },
    /// The input is not valid PEM (bad armour or base64).
    #[error("{what}: invalid PEM: {reason}")]
    Pem {
        /// Which input was being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The input holds a different number of certificates than expected.
    #[error("{what}: expected exactly one certificate, found {found}")]
    CertificateCount {
        /// Which input was being read.
        what: &'static str,
        /// How many certificates it holds.
        found: usize,
    },
    /// A certificate could not be parsed as X.509.
    #[error("{what}: cannot parse certificate: {reason}")]
    Certificate {
        /// Which input was being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key could not be parsed.
    #[error("{what}: cannot parse private key: {reason}")]
    PrivateKey {
        /// Which input was being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A key is of a type this module cannot sign with.
    #[error(
        "{what}: unsupported key type ({detail}); supported are ECDSA P-256, ECDSA P-384 and RSA"
    )]
    UnsupportedKey {
        /// Which input was being read.
        what: &'static str,
        /// The key type found.
        detail: String,
    },
    /// The supplied root certificate is not a CA certificate.
    #[error("root CA certificate is not a CA (basicConstraints CA:TRUE is missing)")]
    RootNotCa,
    /// The supplied root certificate may not sign certificates.
    #[error("root CA certificate lacks the keyCertSign key usage")]
    RootCannotSign,
    /// A certificate of a signing chain is not signed by the next one.
    #[error(
        "signing certificate chain is broken: a certificate is not signed by the next one (tls.crt: signing certificate first, then its issuers; ca.crt: the root)"
    )]
    ChainBroken,
    /// The supplied root certificate forbids intermediate CAs below it.
    #[error("root CA certificate has pathLenConstraint 0 and cannot issue intermediate CAs")]
    RootPathLenZero,
    /// The supplied root's subject name cannot be copied into issued certificates verbatim.
    #[error("root CA certificate subject cannot be used as an issuer name: {reason}")]
    RootSubjectUnsupported {
        /// Why the name is unusable.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("root CA private key does not match the certificate's public key")]
    KeyMismatch,
    /// The root certificate has expired.
    #[error("root CA certificate expired at {not_after}")]
    RootExpired {
        /// The root's notAfter.
        not_after: Timestamp,
    },
    /// The root certificate is not valid yet (beyond the tolerated clock skew).
    #[error("root CA certificate is not valid before {not_before}")]
    RootNotYetValid {
        /// The root's notBefore.
        not_before: Timestamp,
    },
    /// The trust bundle does not contain the root that signs the intermediate.
    #[error("trust bundle does not contain the root CA certificate")]
    RootNotInTrustBundle,
    /// An argument is out of range (empty name, zero lifetime, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The system random number generator failed.
    #[error("random number generation failed: {0}")]
    Randomness(String),
    /// Generating a key failed.
    #[error("{algorithm:?} key generation failed: {reason}")]
    KeyGeneration {
        /// The algorithm that was asked for.
        algorithm: crate::api::KeyAlgorithm,
        /// What failed.
        reason: String,
    },
    /// Building or signing a certificate failed.
    #[error("certificate signing failed: {0}")]
    Signing(String),
}

#[cfg(test)]
mod chain_tests {
    use super::testutil::{policy, root, t0};
    use super::*;
    use crate::api::KeyAlgorithm;

    #[test]
    fn an_intermediate_chains_to_the_root_that_signed_it_not_to_one_it_merely_trusts() {
        let old = root(KeyAlgorithm::EcdsaP256);
        let new = root(KeyAlgorithm::EcdsaP256);
        let both = format!("{}{}", old.cert_pem, new.cert_pem);
        let p = policy(KeyAlgorithm::EcdsaP256);
        let under_old = issue_intermediate(&old, &both, "east", &p, t0()).unwrap();
        assert!(chains_to(&under_old, &old.cert_pem));
        assert!(!chains_to(&under_old, &new.cert_pem), "trusted, not signed");
        let under_new = issue_intermediate(&new, &both, "east", &p, t0()).unwrap();
        assert!(chains_to(&under_new, &new.cert_pem));
        let broken = CacertsBundle {
            cert_chain_pem: old.cert_pem.clone(),
            ..under_old.clone()
        };
        assert!(
            !chains_to(&broken, &old.cert_pem),
            "a root alone is no chain"
        );
        assert!(!chains_to(&under_old, "not a certificate"));
    }
}
