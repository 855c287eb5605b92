//! Loopback address blocks for tests: every test cluster gets a `127.x.y.0/24` block of its
//! own, so clusters with fixed ports (a node's curator, etcd peer and NodeManagement ports
//! never move) run side by side.
//!
//! Blocks are handed out across processes, not only threads: nextest runs every test in a
//! process of its own, all in parallel. A block is taken by holding an exclusive `flock` on
//! `<temp dir>/metropolis-test-loopback/127.x.y.lock`; the kernel drops the lock when the
//! holder exits, however it exits, so a killed test leaves nothing to clean up. A block whose
//! fixed ports are bound anyway (a process outside this scheme, or a straggler of a killed
//! test) is skipped.
//!
//! The blocks come from `127.100.0.0` to `127.163.255.0`: away from `127.0.0.0/24` (which
//! other software uses) and from the fixed blocks of `launch-cluster` (`127.77.0`) and
//! `bench`.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Second octets of the blocks handed out: 64 × 256 = 16384 blocks, far more than any test run
/// holds at once, so a scan finds a free one within a few tries.
const SECOND_OCTETS: std::ops::RangeInclusive<u8> = 100..=163;
const BLOCKS: usize = 64 * 256;
/// The fixed Metropolis ports a block's nodes bind (etcd peer, curator, NodeManagement).
const FIXED_PORTS: [u16; 3] = [7834, 7835, 7839];
/// Hosts of a block whose fixed ports are probed before it is handed out: the first nodes of a
/// cluster, the ones every test starts.
const PROBED_HOSTS: std::ops::RangeInclusive<u8> = 1..=3;

/// Where the next scan of this process starts. Starting at a random point spreads concurrent
/// processes over the range; moving on after every allocation keeps a process from getting a
/// block it has just released (whose sockets may still be closing).
static CURSOR: OnceLock<AtomicUsize> = OnceLock::new();

/// An exclusively held `127.x.y.0/24` block; released when dropped.
pub struct LoopbackBlock {
    second: u8,
    third: u8,
    path: PathBuf,
    // Holds the lock; closing it releases the lock.
    lock: File,
}

impl LoopbackBlock {
    /// Takes a free block; panics if none can be taken (the temporary directory is not
    /// writable, or every block is held).
    #[track_caller]
    pub fn allocate() -> Self {
        match Self::try_allocate() {
            Ok(block) => block,
            Err(e) => panic!("cannot allocate a loopback block for the test: {e}"),
        }
    }

    /// Takes a free block.
    pub fn try_allocate() -> io::Result<Self> {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).map_err(|e| annotate(e, "creating", &dir))?;
        let cursor = CURSOR.get_or_init(|| AtomicUsize::new(random_start()));
        for _ in 0..BLOCKS {
            let index = cursor.fetch_add(1, Ordering::Relaxed) % BLOCKS;
            let second = SECOND_OCTETS.start() + (index / 256) as u8;
            let third = (index % 256) as u8;
            if let Some(block) = Self::try_take(&dir, second, third)? {
                if block.ports_free() {
                    return Ok(block);
                }
                tracing::warn!(
                    "loopback block {block} is free by its lock but its ports are bound; skipping it"
                );
            }
        }
        Err(io::Error::other(format!(
            "all {BLOCKS} loopback blocks are held (lock files in {})",
            dir.display()
        )))
    }

    /// Takes the particular block `127.x.y` (given as `prefix`), if nobody holds it. For tests of
    /// the allocation itself, and for callers that must use a known block.
    pub fn take(prefix: &str) -> io::Result<Option<Self>> {
        let invalid = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{prefix:?} is not a block of the form 127.x.y"),
            )
        };
        let octets: Vec<u8> = prefix
            .split('.')
            .map(|o| o.parse().map_err(|_| invalid()))
            .collect::<io::Result<_>>()?;
        let [127, second, third] = octets[..] else {
            return Err(invalid());
        };
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).map_err(|e| annotate(e, "creating", &dir))?;
        Self::try_take(&dir, second, third)
    }

    /// Locks the block's file, if nobody holds it.
    fn try_take(dir: &Path, second: u8, third: u8) -> io::Result<Option<Self>> {
        let path = dir.join(format!("127.{second}.{third}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| annotate(e, "opening", &path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(annotate(e, "locking", &path)),
        }
        // A releasing holder unlinks the file before it unlocks it, so the lock may be on a
        // file that is no longer at `path`, while a third process creates and locks a new one
        // there: the block is ours only if the locked file is still the one at `path`.
        let locked = lock.metadata().map_err(|e| annotate(e, "reading", &path))?;
        match std::fs::metadata(&path) {
            Ok(current) if current.dev() == locked.dev() && current.ino() == locked.ino() => {}
            _ => return Ok(None),
        }
        Ok(Some(Self {
            second,
            third,
            path,
            lock,
        }))
    }

    /// Whether the fixed ports of the block's first hosts can be bound.
    fn ports_free(&self) -> bool {
        PROBED_HOSTS
            .flat_map(|host| FIXED_PORTS.map(|port| (host, port)))
            .all(|(host, port)| {
                // std sets SO_REUSEADDR, so a port of a closed socket still in TIME_WAIT binds:
                // only a live listener makes this fail.
                TcpListener::bind((self.addr(host), port)).is_ok()
            })
    }

    /// The first three octets, `127.x.y`, as `launch::ClusterOptions` takes them.
    pub fn prefix(&self) -> String {
        format!("127.{}.{}", self.second, self.third)
    }

    /// Host `host` of the block, `127.x.y.<host>`.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.second, self.third, host)
    }

    /// `addr(host)` as a string.
    pub fn host(&self, host: u8) -> String {
        self.addr(host).to_string()
    }
}

impl fmt::Display for LoopbackBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "127.{}.{}.0/24", self.second, self.third)
    }
}

impl fmt::Debug for LoopbackBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoopbackBlock({self})")
    }
}

impl Drop for LoopbackBlock {
    fn drop(&mut self) {
        // Unlink first, unlock after (when `lock` is closed): see try_take for why the order
        // matters. A failed unlink leaves a file that the next holder simply locks.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.lock.unlock();
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("metropolis-test-loopback")
}

/// A start position that differs between processes started at the same moment.
fn random_start() -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as usize % BLOCKS
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
