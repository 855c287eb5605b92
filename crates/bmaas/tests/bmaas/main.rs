//! bmaas integration tests: the server in-process against a real throwaway PostgreSQL and
//! real TLS (agent callback, operator API, debug page, the agent's loop), and end to end with
//! the real
//! `bmaas-server` and `bmaas-agent` binaries.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod agent;
mod agent_callback;
mod common;
mod e2e;
mod metrics;
mod operator;
mod webug;
