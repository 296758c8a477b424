//! Private keys: generating them per [`KeyAlgorithm`], loading them from PEM, and telling
//! which algorithm a key or certificate uses.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};
use rcgen::{PublicKeyData as _, SignatureAlgorithm};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::der::{AnyRef, Encode as _};
use rsa::pkcs8::{AlgorithmIdentifierRef, EncodePrivateKey as _, ObjectIdentifier, PrivateKeyInfo};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::{PublicKey, RSAPublicKey};
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{Error, pem};
use crate::api::KeyAlgorithm;

/// `id-ecPublicKey` (RFC 5480).
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `prime256v1` / NIST P-256.
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1` / NIST P-384.
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// `rsaEncryption` (RFC 8017).
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The shape of a key this module can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
}

impl KeyKind {
    /// The kind of key generated for `algorithm`.
    pub(crate) fn of(algorithm: KeyAlgorithm) -> KeyKind {
        match algorithm {
            KeyAlgorithm::EcdsaP256 => KeyKind::EcP256,
            KeyAlgorithm::EcdsaP384 => KeyKind::EcP384,
            KeyAlgorithm::Rsa2048 => KeyKind::Rsa { bits: 2048 },
            KeyAlgorithm::Rsa4096 => KeyKind::Rsa { bits: 4096 },
        }
    }

    /// The matching [`KeyAlgorithm`], if the key is one of the listed sizes.
    pub(crate) fn key_algorithm(self) -> Option<KeyAlgorithm> {
        match self {
            KeyKind::EcP256 => Some(KeyAlgorithm::EcdsaP256),
            KeyKind::EcP384 => Some(KeyAlgorithm::EcdsaP384),
            KeyKind::Rsa { bits: 2048 } => Some(KeyAlgorithm::Rsa2048),
            KeyKind::Rsa { bits: 4096 } => Some(KeyAlgorithm::Rsa4096),
            KeyKind::Rsa { .. } => None,
        }
    }

    /// The signature algorithm a key of this kind signs with: SHA-384 for P-384, else SHA-256.
    pub(crate) fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::EcP256 => &PKCS_ECDSA_P256_SHA256,
            KeyKind::EcP384 => &PKCS_ECDSA_P384_SHA384,
            KeyKind::Rsa { .. } => &PKCS_RSA_SHA256,
        }
    }

    /// The kind of the public key in a certificate; `Err` describes an unsupported key.
    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, String> {
        let algorithm = &spki.algorithm;
        if algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == x509_parser::oid_registry::OID_EC_P256 => Ok(KeyKind::EcP256),
                Some(c) if c == x509_parser::oid_registry::OID_NIST_EC_P384 => Ok(KeyKind::EcP384),
                Some(c) => Err(format!("elliptic curve {}", c.to_id_string())),
                None => Err("elliptic curve key without a named curve".to_owned()),
            }
        } else if algorithm.algorithm == x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => Ok(KeyKind::Rsa {
                    bits: modulus_bits(rsa.modulus),
                }),
                _ => Err("malformed RSA public key".to_owned()),
            }
        } else {
            Err(format!(
                "public key algorithm {}",
                algorithm.algorithm.to_id_string()
            ))
        }
    }
}

/// Significant bits of a big-endian unsigned integer.
fn modulus_bits(modulus: &[u8]) -> usize {
    let start = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    match modulus.get(start) {
        Some(first) => (modulus.len() - start) * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// A parsed private key and its kind.
pub(crate) struct LoadedKey {
    /// The key, ready to sign with its kind's signature algorithm.
    pub(crate) pair: KeyPair,
    /// Its kind.
    pub(crate) kind: KeyKind,
}

impl LoadedKey {
    /// Whether this is the private half of `spki`.
    pub(crate) fn matches(&self, spki: &SubjectPublicKeyInfo<'_>) -> bool {
        KeyKind::from_spki(spki).ok() == Some(self.kind)
            && self.pair.der_bytes() == spki.subject_public_key.data.as_ref()
    }
}

/// Generates a fresh key for `algorithm`.
pub(crate) fn generate(algorithm: KeyAlgorithm) -> Result<LoadedKey, Error> {
    let kind = KeyKind::of(algorithm);
    let fail = |reason: String| Error::KeyGeneration { algorithm, reason };
    let pair = match kind {
        KeyKind::EcP256 | KeyKind::EcP384 => {
            KeyPair::generate_for(kind.signature_algorithm()).map_err(|e| fail(e.to_string()))?
        }
        KeyKind::Rsa { bits } => {
            // ring (rcgen's backend) cannot generate RSA keys; the `rsa` crate can.
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| fail(e.to_string()))?;
            let der = key.to_pkcs8_der().map_err(|e| fail(e.to_string()))?;
            KeyPair::from_pkcs8_der_and_sign_algo(&der.as_bytes().into(), &PKCS_RSA_SHA256)
                .map_err(|e| fail(e.to_string()))?
        }
    };
    Ok(LoadedKey { pair, kind })
}

/// Loads the one private key in `key_pem`: PKCS#8 (`PRIVATE KEY`), PKCS#1
/// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`, an `EC PARAMETERS` block is ignored).
pub(crate) fn load(key_pem: &str, what: &'static str) -> Result<LoadedKey, Error> {
    let blocks = pem::blocks(key_pem, what)?;
    let mut keys = blocks.iter().filter(|b| b.label.ends_with("PRIVATE KEY"));
    let Some(block) = keys.next() else {
        return Err(Error::NoPem {
            what,
            expected: "private key",
        });
    };
    let invalid = |reason: String| Error::PrivateKey { what, reason };
    if keys.next().is_some() {
        return Err(invalid("more than one private key".to_owned()));
    }
    match block.label.as_str() {
        "PRIVATE KEY" => load_pkcs8(&block.der, what),
        "RSA PRIVATE KEY" => {
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&block.der)
                .map_err(|e| invalid(format!("invalid PKCS#1 RSA key: {e}")))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| invalid(format!("cannot re-encode RSA key: {e}")))?;
            load_pkcs8(der.as_bytes(), what)
        }
        "EC PRIVATE KEY" => {
            // SEC1 keys name their curve only optionally; the wrong curve is rejected by ring
            // (scalar length, [0] parameters and public point are all checked).
            for curve in [OID_P256, OID_P384] {
                let Ok(der) = sec1_to_pkcs8(&block.der, curve) else {
                    continue;
                };
                if let Ok(key) = load_pkcs8(&der, what) {
                    return Ok(key);
                }
            }
            Err(invalid(
                "invalid SEC1 EC key (only P-256 and P-384 are supported)".to_owned(),
            ))
        }
        "ENCRYPTED PRIVATE KEY" => Err(invalid(
            "encrypted private keys are not supported".to_owned(),
        )),
        other => Err(Error::UnsupportedKey {
            what,
            detail: format!("PEM block {other:?}"),
        }),
    }
}

/// Wraps a SEC1 `ECPrivateKey` into a PKCS#8 `PrivateKeyInfo` for `curve`.
fn sec1_to_pkcs8(sec1: &[u8], curve: ObjectIdentifier) -> Result<Vec<u8>, rsa::pkcs8::der::Error> {
    let algorithm = AlgorithmIdentifierRef {
        oid: OID_EC_PUBLIC_KEY,
        parameters: Some(AnyRef::from(&curve)),
    };
    PrivateKeyInfo::new(algorithm, sec1).to_der()
}

/// Loads a PKCS#8 DER private key, choosing the signature algorithm from its algorithm id.
fn load_pkcs8(der: &[u8], what: &'static str) -> Result<LoadedKey, Error> {
    let invalid = |reason: String| Error::PrivateKey { what, reason };
    let info = PrivateKeyInfo::try_from(der)
        .map_err(|e| invalid(format!("invalid PKCS#8 structure: {e}")))?;
    let signature_algorithm = if info.algorithm.oid == OID_RSA {
        &PKCS_RSA_SHA256
    } else if info.algorithm.oid == OID_EC_PUBLIC_KEY {
        match info.algorithm.parameters_oid() {
            Ok(c) if c == OID_P256 => &PKCS_ECDSA_P256_SHA256,
            Ok(c) if c == OID_P384 => &PKCS_ECDSA_P384_SHA384,
            Ok(c) => {
                return Err(Error::UnsupportedKey {
                    what,
                    detail: format!("elliptic curve {c}"),
                });
            }
            Err(_) => {
                return Err(Error::UnsupportedKey {
                    what,
                    detail: "elliptic curve key without a named curve".to_owned(),
                });
            }
        }
    } else {
        return Err(Error::UnsupportedKey {
            what,
            detail: format!("key algorithm {}", info.algorithm.oid),
        });
    };
    let pair = KeyPair::from_pkcs8_der_and_sign_algo(&der.into(), signature_algorithm)
        .map_err(|e| invalid(e.to_string()))?;
    let kind = if signature_algorithm == &PKCS_RSA_SHA256 {
        let (_, public) = RSAPublicKey::from_der(pair.der_bytes())
            .map_err(|_| invalid("malformed RSA public key".to_owned()))?;
        KeyKind::Rsa {
            bits: modulus_bits(public.modulus),
        }
    } else if signature_algorithm == &PKCS_ECDSA_P256_SHA256 {
        KeyKind::EcP256
    } else {
        KeyKind::EcP384
    };
    Ok(LoadedKey { pair, kind })
}

/// Generates a private key for `algorithm`, PKCS#8 PEM-encoded (`PRIVATE KEY`).
pub fn generate_private_key_pem(algorithm: KeyAlgorithm) -> Result<String, Error> {
    Ok(generate(algorithm)?.pair.serialize_pem())
}

/// The algorithm of a PEM private key (PKCS#8, PKCS#1 or SEC1); `None` for an RSA size
/// that is not a [`KeyAlgorithm`] (e.g. RSA-3072), which can still sign.
pub fn private_key_algorithm(key_pem: &str) -> Result<Option<KeyAlgorithm>, Error> {
    Ok(load(key_pem, "private key")?.kind.key_algorithm())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use std::sync::OnceLock;

    /// One RSA-2048 PKCS#8 PEM key shared by tests that do not care about freshness.
    pub(crate) fn shared_rsa2048_pem() -> &'static str {
        static KEY: OnceLock<String> = OnceLock::new();
        KEY.get_or_init(|| generate_private_key_pem(KeyAlgorithm::Rsa2048).unwrap())
    }

    /// Re-encodes a PKCS#8 PEM key as SEC1 (`EC PRIVATE KEY`).
    pub(crate) fn to_sec1_pem(pkcs8_pem: &str) -> String {
        let block = pem::blocks(pkcs8_pem, "t").unwrap().remove(0);
        let info = PrivateKeyInfo::try_from(block.der.as_slice()).unwrap();
        pem::encode("EC PRIVATE KEY", info.private_key)
    }

    /// Re-encodes a PKCS#8 PEM RSA key as PKCS#1 (`RSA PRIVATE KEY`).
    pub(crate) fn to_pkcs1_pem(pkcs8_pem: &str) -> String {
        use rsa::pkcs8::DecodePrivateKey as _;
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(pkcs8_pem).unwrap();
        key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    }

    #[test]
    fn generated_ecdsa_keys_round_trip_through_pem() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let pem = generate_private_key_pem(algorithm).unwrap();
            assert!(
                pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
                "{algorithm:?}"
            );
            assert_eq!(private_key_algorithm(&pem).unwrap(), Some(algorithm));
            let sec1 = to_sec1_pem(&pem);
            assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
            assert_eq!(private_key_algorithm(&sec1).unwrap(), Some(algorithm));
            // The SEC1 key is the same key.
            assert_eq!(
                load(&sec1, "t").unwrap().pair.der_bytes(),
                load(&pem, "t").unwrap().pair.der_bytes()
            );
        }
    }

    #[test]
    fn sec1_key_with_ec_parameters_block_loads() {
        let pem = generate_private_key_pem(KeyAlgorithm::EcdsaP256).unwrap();
        // What `openssl ecparam -genkey -name prime256v1` prints.
        let text = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            to_sec1_pem(&pem)
        );
        assert_eq!(
            private_key_algorithm(&text).unwrap(),
            Some(KeyAlgorithm::EcdsaP256)
        );
    }

    #[test]
    fn rsa_2048_key_generates_and_loads_as_pkcs8_and_pkcs1() {
        let pem = shared_rsa2048_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(
            private_key_algorithm(pem).unwrap(),
            Some(KeyAlgorithm::Rsa2048)
        );
        let pkcs1 = to_pkcs1_pem(pem);
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        let loaded = load(&pkcs1, "t").unwrap();
        assert_eq!(loaded.kind, KeyKind::Rsa { bits: 2048 });
        assert_eq!(
            loaded.pair.der_bytes(),
            load(pem, "t").unwrap().pair.der_bytes()
        );
        assert_eq!(loaded.pair.algorithm(), &PKCS_RSA_SHA256);
    }

    #[test]
    fn unsupported_and_broken_keys_are_rejected_without_echoing_them() {
        assert!(matches!(
            private_key_algorithm("nothing here"),
            Err(Error::NoPem { .. })
        ));
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem();
        let err = private_key_algorithm(&ed25519).unwrap_err();
        assert!(matches!(err, Error::UnsupportedKey { .. }), "{err}");
        assert!(matches!(
            private_key_algorithm(&pem::encode("ENCRYPTED PRIVATE KEY", b"xx")),
            Err(Error::PrivateKey { .. })
        ));
        let garbage = pem::encode("PRIVATE KEY", b"definitely not a key");
        let err = private_key_algorithm(&garbage).unwrap_err();
        assert!(matches!(err, Error::PrivateKey { .. }), "{err}");
        let p256 = generate_private_key_pem(KeyAlgorithm::EcdsaP256).unwrap();
        let two = format!("{p256}{p256}");
        assert!(matches!(
            private_key_algorithm(&two),
            Err(Error::PrivateKey { .. })
        ));
        // A P-256 SEC1 body mislabelled as RSA fails cleanly.
        let mislabelled = to_sec1_pem(&p256).replace("EC PRIVATE KEY", "RSA PRIVATE KEY");
        let err = private_key_algorithm(&mislabelled).unwrap_err();
        let body: String = p256.lines().nth(1).unwrap().to_owned();
        assert!(!err.to_string().contains(&body), "{err}");
    }

    #[test]
    fn modulus_bits_ignores_leading_zeros() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
        assert_eq!(modulus_bits(&[0x00]), 0);
        assert_eq!(modulus_bits(&[]), 0);
    }
}
