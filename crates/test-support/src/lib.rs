//! test-support: what the project's tests share, in one place that production binaries never
//! link (it is a dev-dependency only; `bench` alone uses it as a normal dependency, for the
//! throwaway etcd it measures against).
//!
//! - [`eventually`]: poll a condition with a deadline on tokio's clock, failing with the last
//!   reason it did not hold. Tests never sleep a fixed time to wait for something.
//! - [`logging::init`]: `tracing` output into the test's captured output, `RUST_LOG` honoured.
//! - [`LoopbackBlock`]: a `127.x.y.0/24` block of its own for every test cluster, unique
//!   across the parallel test processes nextest runs.
//! - [`etcd::TestEtcd`]: a throwaway single-member etcd, the real binary.
//! - [`process`] and [`fs`]: looking at processes and state directories from the outside.
//! - `node` (feature `node`): real `metropolis-node` processes through launch's process
//!   harness, with the tests' defaults.

#![forbid(unsafe_code)]

pub mod etcd;
pub mod eventually;
pub mod fs;
pub mod logging;
pub mod loopback;
#[cfg(feature = "mirror")]
pub mod mirror;
#[cfg(feature = "node")]
pub mod node;
pub mod process;

pub use eventually::{Timeout, eventually};
pub use loopback::LoopbackBlock;
