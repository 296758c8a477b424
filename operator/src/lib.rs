//! meshfed: joins Kubernetes clusters into one Istio multi-primary mesh.
//!
//! Model code is pure: [`api`] (the resource), [`pki`] (certificates),
//! [`render`] (objects from spec and facts) and [`fleet`] (what the fleet
//! should be: membership, CA and rotation, rollout, failover, status). The
//! [`controller`] runs the federation's pass over [`fleet`]'s planners and
//! hands each member's work to its worker in [`member`], which writes
//! through [`apply`] over [`connection`]s to the members.
pub mod api;
pub mod apply;
pub mod charts;
pub mod connection;
pub mod controller;
pub mod events;
pub mod fleet;
pub mod leader;
pub mod member;
pub mod pki;
pub mod plugin;
pub mod render;
pub mod settings;
pub mod telemetry;
