//! meshfed: joins Kubernetes clusters into one Istio multi-primary mesh.
pub mod api;
pub mod pki;
