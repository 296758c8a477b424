//! The `MeshFederation` custom resource: the public contract of meshfed.
mod federation;
mod key_algorithm;

pub use federation::*;
pub use key_algorithm::KeyAlgorithm;
