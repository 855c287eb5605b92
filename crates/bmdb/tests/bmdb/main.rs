//! BMDB integration tests against a real throwaway PostgreSQL (one server per test process,
//! one fresh database per test; see `bmdb::throwaway`).

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod common;
mod migrations;
mod queries;
mod sessions;
mod throwaway;
mod work;
