//! The loader: the first thing `metropolis-node` does, before anything else runs. Whatever
//! starts a node (launch-cluster, the test harness, a systemd unit, a person) always runs the
//! same binary, the stable entry point, with the same arguments; the loader reads the boot
//! state on the node's ESP and, if it names a slot, `exec`s that slot's binary in place (same
//! PID, same arguments) with [`SLOT_ENV`] set, so the slot's binary knows it is the one to
//! run. Without a boot state (a node never updated) the entry point runs as the node itself:
//! the *base* binary.
//!
//! A slot that was installed but not yet confirmed (on probation) is started at most
//! [`MAX_BOOT_ATTEMPTS`] times; every start counts, and a start after that boots the last
//! confirmed slot (or the base) again. A boot is confirmed once the node enrolled and
//! reported its status ([`confirm_boot`]).
//!
//! KEXEC activation ends in [`exec_entry`]: the node has stopped its services and the
//! process becomes the entry point again, which boots the new slot.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::slots::{self, Slot, Slots};

/// Set by the loader for a slot's binary: the slot it runs from (`a` or `b`).
pub const SLOT_ENV: &str = "METROPOLIS_SLOT";
/// Set by the loader for a slot's binary: the entry point to `exec` for a kexec.
pub const ENTRY_ENV: &str = "METROPOLIS_ENTRY";
/// Starts of an unconfirmed slot before the loader gives up on it.
pub const MAX_BOOT_ATTEMPTS: u32 = 3;

/// What this process runs as, decided once by [`boot`].
static RUNNING: OnceLock<Option<Slot>> = OnceLock::new();
/// The entry point to exec for a kexec.
static ENTRY: OnceLock<Option<PathBuf>> = OnceLock::new();
/// A kexec was asked for: `main` execs the entry point once the node stopped.
static KEXEC: AtomicBool = AtomicBool::new(false);

/// The slot this process runs from; `None`: the base binary.
pub fn running_slot() -> Option<Slot> {
    RUNNING.get().copied().flatten()
}

/// The ESP directory of a state directory.
pub fn esp_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("esp").join("metropolis")
}

/// Decides what to run. Returns when this process is to run as the node (it was started by
/// the loader already, or the base binary is to run); otherwise `exec`s the slot's binary
/// and does not return. Failures are printed on stderr and fall back to running this binary:
/// a node that cannot read its boot state still boots.
pub fn boot(state_dir: &Path) {
    if let Some(value) = std::env::var_os(SLOT_ENV) {
        let slot = match value.to_str() {
            Some("a") => Some(Slot::A),
            Some("b") => Some(Slot::B),
            _ => None,
        };
        let _ = RUNNING.set(slot);
        let _ = ENTRY.set(std::env::var_os(ENTRY_ENV).map(PathBuf::from));
        return;
    }
    let _ = RUNNING.set(None);
    let entry = std::env::current_exe().ok();
    let _ = ENTRY.set(entry.clone());
    let slots = Slots::new(&esp_dir(state_dir));
    let mut state = match slots.state() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("metropolis-node: loader: {e}; booting the base binary");
            return;
        }
    };
    let target = if state.on_probation() {
        if state.attempts >= MAX_BOOT_ATTEMPTS {
            eprintln!(
                "metropolis-node: loader: {} was started {} times without a confirmed boot; \
                 rolling back to {}",
                slots::describe(state.next),
                state.attempts,
                slots::describe(state.active)
            );
            if let Some(slot) = state.next {
                state.rolled_back = Some(slots::RolledBack {
                    slot,
                    attempts: state.attempts,
                    at_unix_seconds: slots::now_unix_seconds(),
                });
            }
            state.next = state.active;
            state.attempts = 0;
        } else {
            state.attempts += 1;
        }
        if let Err(e) = slots.write_state(&state) {
            // Without a record of this attempt, a crashing slot could be started forever.
            eprintln!(
                "metropolis-node: loader: cannot record the boot attempt ({e}); booting {}",
                slots::describe(state.active)
            );
            state.active
        } else {
            state.next
        }
    } else {
        state.active
    };
    let Some(slot) = target else {
        return;
    };
    // The binary is run by path, without checking it against the manifest's digest again:
    // it was verified when installed, and whoever can rewrite it there can rewrite its
    // manifest (and the boot state) in the same directory, so a re-check would catch
    // accidental damage at most, at the cost of reading the whole binary on every start.
    let binary = slots.binary(slot);
    let mut cmd = Command::new(&binary);
    cmd.args(std::env::args_os().skip(1))
        .env(SLOT_ENV, slot_value(slot));
    if let Some(entry) = &entry {
        cmd.env(ENTRY_ENV, entry);
    }
    // Only returns on failure.
    let err = cmd.exec();
    eprintln!(
        "metropolis-node: loader: cannot start slot {slot} ({}): {err}; booting the base binary",
        binary.display()
    );
}

fn slot_value(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "a",
        Slot::B => "b",
    }
}

/// Confirms the running boot if it is a slot on probation: it becomes the active slot.
/// Called once the node enrolled and reported its status.
pub fn confirm_boot(esp: &Path) {
    let running = running_slot();
    let slots = Slots::new(esp);
    match slots.state() {
        Ok(state) if state.next == running && state.active != running => {
            match slots.confirm(running) {
                Ok(_) => tracing::info!("boot of {} confirmed", slots::describe(running)),
                Err(e) => tracing::warn!("cannot confirm the boot: {e}"),
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the boot state: {e}"),
    }
}

/// Logs (into the node's log tree) that the loader rolled back from a slot that never booted,
/// if it did since the last install.
pub fn report_rollback(esp: &Path) {
    if let Ok(state) = Slots::new(esp).state()
        && let Some(r) = state.rolled_back
    {
        tracing::warn!(
            "rolled back: slot {} was started {} times without a successful boot and was \
             abandoned; running {}",
            r.slot,
            r.attempts,
            slots::describe(running_slot())
        );
    }
}

/// Asks `main` to exec the entry point once the node stopped.
pub fn request_kexec() {
    KEXEC.store(true, Ordering::SeqCst);
}

/// Whether a kexec was asked for.
pub fn kexec_requested() -> bool {
    KEXEC.load(Ordering::SeqCst)
}

/// Replaces this process with the entry point, same arguments, loader variables cleared, so
/// that it boots whatever the boot state names now. Returns only on failure.
pub fn exec_entry() -> std::io::Error {
    let entry = ENTRY
        .get()
        .cloned()
        .flatten()
        .or_else(|| std::env::current_exe().ok());
    let Some(entry) = entry else {
        return std::io::Error::other("the entry point's path is unknown");
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    Command::new(entry)
        .args(args)
        .env_remove(SLOT_ENV)
        .env_remove(ENTRY_ENV)
        .exec()
}
