//! What the fleet should be, decided from facts: pure planners, one module
//! per concern, each with its durable record where a decision must survive
//! a restart. Nothing here talks to a member; the only I/O is the records
//! (and the roots' Secrets) in the operator's namespace.
//!
//! - [`membership`]: who is a member, who left and is not cleaned up yet,
//!   which cluster each held.
//! - [`record`]: the durable records every planner keeps its memory in.
//! - [`ca`] and [`rotation`]: the roots, which one signs, a root rotation's phases.
//! - [`rollout`]: control-plane revisions in waves.
//! - [`failover`]: whom peers must not see.
//! - [`report`]: what a member's worker found, the planners' input.
//! - [`status`]: the federation's status and conditions.
pub mod ca;
pub mod failover;
pub mod membership;
pub mod record;
pub mod report;
pub mod rollout;
pub mod rotation;
pub mod status;
