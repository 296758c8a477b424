//! The `MeshFederation` custom resource: the public contract of meshfed.
mod key_algorithm;

pub use key_algorithm::KeyAlgorithm;
