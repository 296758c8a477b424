use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Key type and size for the root and intermediate CAs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256 (default: small, fast, accepted by Istio).
    #[default]
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    #[serde(rename = "ECDSA-P384")]
    EcdsaP384,
    /// RSA 2048 with SHA-256.
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    /// RSA 4096 with SHA-256 (Istio's reference layout; slow to generate).
    #[serde(rename = "RSA-4096")]
    Rsa4096,
}
