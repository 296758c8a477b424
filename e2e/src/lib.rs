//! End-to-end test bed for meshfed: real, containerless multi-cluster
//! Kubernetes fleets on 127.0.0.1 (see `docs/testbed.md`).

pub mod bridge;
pub mod cacerts;
pub mod chart;
pub mod fleet;
pub mod injection;
pub mod istiod;
pub mod mesh;
pub mod proxy;
pub mod workload;
pub mod writes;

pub use fleet::{Cluster, Fleet, FleetOptions, LogTailGuard};
