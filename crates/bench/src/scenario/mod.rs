//! The seven scenarios of the benchmark issue, each measuring our path and the raw store
//! underneath it in the same run.

pub mod bmaas;
pub mod failover;
pub mod getnodes;
pub mod hb_client;
pub mod heartbeat;
pub mod memory;
pub mod registration;
pub mod restart;
