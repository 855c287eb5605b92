//! fuzz-targets: the bodies of the fuzz targets, one `pub fn <target>(data: &[u8])` each.
//!
//! The libFuzzer harness (`fuzz/`, nightly, built by `make fuzz`) calls these functions, and
//! this crate's replay test runs them over every checked-in corpus file on stable Rust within
//! the normal test suite, so an input that once crashed stays a regression test. A target
//! panics only when it finds a bug: a crash of the code under test, or a broken property
//! (stated next to each target). Inputs that do not decode are simply rejected.

pub mod certs;
pub mod curator;
pub mod hw;
pub mod logs;
pub mod node;

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its harness binary and its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("cert_verify", certs::cert_verify),
    ("crl", certs::crl),
    ("pkcs8", certs::pkcs8),
    ("crypt_open", node::crypt_open),
    ("node_params", node::node_params),
    ("logtree_dn", logs::logtree_dn),
    ("logtree_read", logs::logtree_read),
    ("etcd_log_line", logs::etcd_log_line),
    ("smbios", hw::smbios),
    ("hwreport_text", hw::hwreport_text),
    ("clusternet", curator::clusternet),
    ("filter", curator::filter),
    ("authz", certs::authz),
    ("node_record", curator::node_record),
    ("watch_event", curator::watch_event),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
