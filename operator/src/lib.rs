//! meshfed: joins Kubernetes clusters into one Istio multi-primary mesh.
pub mod api;
pub mod charts;
pub mod cli;
pub mod leader;
pub mod members;
pub mod pki;
pub mod reconcile;
pub mod render;
pub mod telemetry;
