//! The A/B slots and the boot state on the node's ESP:
//!
//! ```text
//! esp/metropolis/slot-a/{manifest.json, metropolis-node}
//! esp/metropolis/slot-b/{manifest.json, metropolis-node}
//! esp/metropolis/boot_state.json
//! ```
//!
//! A node that was never updated runs its *base* binary, the one whatever starts the node
//! runs (the stable entry point); slots only exist once a bundle was installed. The boot state
//! says which slot last booted successfully (`active`, `None` for the base), which one the next
//! start boots (`next`), how often that one was started without being confirmed (`attempts`)
//! and when and into what the last successful boot was.
//!
//! Installing writes the slot that is not running, and only then, with one atomic write of the
//! boot state, makes it `next`: a crash at any point leaves either the old state (the new
//! slot is ignored, half-written or not) or the new one (the slot is complete). The running
//! slot is never written: a node on probation (running `next`, not yet confirmed) refuses
//! to install until it is confirmed, since the only other slot is the one it would fall
//! back to.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bundle::{self, BundleError, Limits, Manifest, NODE_BINARY};

/// File name of the boot state.
pub const BOOT_STATE: &str = "boot_state.json";
/// File name of a bundle being downloaded.
pub const DOWNLOAD: &str = "bundle.download";
/// Largest boot state file read (it has a few lines).
const MAX_BOOT_STATE_BYTES: u64 = 16 << 10;

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The slot that is not `running` (the base counts as neither: it installs into A).
    pub fn other(running: Option<Slot>) -> Slot {
        match running {
            Some(Slot::A) => Slot::B,
            Some(Slot::B) | None => Slot::A,
        }
    }

    fn dir_name(self) -> &'static str {
        match self {
            Slot::A => "slot-a",
            Slot::B => "slot-b",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// `slot A`, `slot B` or `the base binary`.
pub fn describe(slot: Option<Slot>) -> String {
    match slot {
        Some(s) => format!("slot {s}"),
        None => "the base binary".to_string(),
    }
}

/// A boot that was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuccessfulBoot {
    /// What booted (`None`: the base binary).
    pub slot: Option<Slot>,
    /// When it was confirmed (seconds since the Unix epoch).
    pub at_unix_seconds: u64,
}

/// The boot state (`boot_state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootState {
    /// The slot that last booted successfully; `None`: the base binary.
    pub active: Option<Slot>,
    /// What the next start boots. Differs from `active` while a new slot is on probation.
    pub next: Option<Slot>,
    /// Starts of `next` since it was installed that were not confirmed yet.
    pub attempts: u32,
    /// The last confirmed boot.
    pub last_successful: Option<SuccessfulBoot>,
    /// The last slot the loader gave up on, until the next install.
    #[serde(default)]
    pub rolled_back: Option<RolledBack>,
}

/// A slot that was abandoned because it never booted successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolledBack {
    /// The abandoned slot.
    pub slot: Slot,
    /// How often it was started.
    pub attempts: u32,
    /// When the loader gave up on it (seconds since the Unix epoch).
    pub at_unix_seconds: u64,
}

/// Seconds since the Unix epoch.
pub fn now_unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BootState {
    /// Whether `next` is a newly installed slot that has not been confirmed yet.
    pub fn on_probation(&self) -> bool {
        self.next != self.active
    }
}

/// Why slots or the boot state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Identity(#[from] identity::Error),
    #[error("{path}: not a valid boot state: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path, source: std::io::Error) -> SlotError {
    SlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The slots and boot state of one node's ESP (`<state>/esp/metropolis`).
#[derive(Debug, Clone)]
pub struct Slots {
    esp: PathBuf,
}

impl Slots {
    /// The slots in the ESP directory `esp`; nothing is touched yet.
    pub fn new(esp: &Path) -> Self {
        Slots {
            esp: esp.to_path_buf(),
        }
    }

    /// The ESP directory holding the slots.
    pub fn esp(&self) -> &Path {
        &self.esp
    }

    /// The directory of `slot`.
    pub fn dir(&self, slot: Slot) -> PathBuf {
        self.esp.join(slot.dir_name())
    }

    /// The node binary of `slot`.
    pub fn binary(&self, slot: Slot) -> PathBuf {
        self.dir(slot).join(NODE_BINARY)
    }

    /// The manifest `slot` was installed from, if the slot holds one.
    pub fn manifest(&self, slot: Slot) -> Result<Option<Manifest>, SlotError> {
        let path = self.dir(slot).join(bundle::MANIFEST);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| SlotError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// The boot state; the default (base binary, nothing pending) if there is none.
    pub fn state(&self) -> Result<BootState, SlotError> {
        let path = self.esp.join(BOOT_STATE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BootState::default()),
            Err(e) => return Err(io(&path, e)),
        };
        let mut data = Vec::new();
        file.take(MAX_BOOT_STATE_BYTES)
            .read_to_end(&mut data)
            .map_err(|e| io(&path, e))?;
        serde_json::from_slice(&data).map_err(|e| SlotError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Replaces the boot state in one atomic write.
    pub fn write_state(&self, state: &BootState) -> Result<(), SlotError> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| SlotError::Corrupt {
            path: self.esp.join(BOOT_STATE),
            reason: e.to_string(),
        })?;
        crate::storage::create_dir(&self.esp).map_err(|e| SlotError::Refused(e.to_string()))?;
        identity::files::write_atomic(&self.esp.join(BOOT_STATE), &json, 0o600)?;
        Ok(())
    }

    /// Removes what an interrupted install leaves behind: a partial download and staged or
    /// replaced slot directories (`slot-*.new`, `slot-*.old`). Neither is ever booted; call
    /// only while no install runs.
    pub fn discard_leftovers(&self) {
        let _ = std::fs::remove_file(self.esp.join(DOWNLOAD));
        for slot in [Slot::A, Slot::B] {
            for suffix in ["new", "old"] {
                bundle::discard(&self.esp.join(format!("{}.{suffix}", slot.dir_name())));
            }
        }
    }

    /// Installs the bundle read from `input` into the slot that is not `running` and makes
    /// it the next to boot; returns that slot and the bundle's manifest. On any error the
    /// boot state is as it was and the running slot untouched; the other slot may have been
    /// cleared (it was not going to be booted: it is not `next`).
    pub fn install(
        &self,
        running: Option<Slot>,
        input: impl Read,
        limits: &Limits,
    ) -> Result<(Slot, Manifest), SlotError> {
        let mut state = self.state()?;
        if state.on_probation() && state.next == running {
            return Err(SlotError::Refused(format!(
                "{} is on probation (not yet confirmed by a successful boot); the other slot is \
                 the fallback and cannot be overwritten",
                describe(running)
            )));
        }
        let target = Slot::other(running);
        // Something installed earlier but never booted may sit in the target: stop pointing
        // at it before it is replaced.
        // The target may also be `active` while something else runs (the base binary after
        // the active slot failed to start, or after a rollback to the base that was not
        // confirmed yet): it stops being `active` too, so the new build goes on probation
        // instead of counting as known good (and never being rolled back).
        let mut changed = false;
        if state.active == Some(target) {
            state.active = running;
            changed = true;
        }
        if state.next == Some(target) {
            state.next = state.active;
            state.attempts = 0;
            changed = true;
        }
        if changed {
            self.write_state(&state)?;
        }
        crate::storage::create_dir(&self.esp).map_err(|e| SlotError::Refused(e.to_string()))?;
        let dir = self.dir(target);
        let staging = self.esp.join(format!("{}.new", target.dir_name()));
        bundle::discard(&staging);
        std::fs::create_dir(&staging).map_err(|e| io(&staging, e))?;
        let manifest = match bundle::read_into(input, &staging, limits) {
            Ok(m) => m,
            Err(e) => {
                bundle::discard(&staging);
                return Err(e.into());
            }
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| SlotError::Corrupt {
            path: staging.join(bundle::MANIFEST),
            reason: e.to_string(),
        })?;
        identity::files::write_atomic(&staging.join(bundle::MANIFEST), &json, 0o644)?;
        // The staged files' directory entries must be durable before the rename publishes them.
        sync_dir(&staging)?;
        // Swap the staged slot in: the old contents of the target go first (it is not
        // running and not `next`), then the complete new one takes its name.
        let old = self.esp.join(format!("{}.old", target.dir_name()));
        bundle::discard(&old);
        match std::fs::rename(&dir, &old) {
            Ok(()) => bundle::discard(&old),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir, e)),
        }
        std::fs::rename(&staging, &dir).map_err(|e| io(&dir, e))?;
        sync_dir(&self.esp)?;
        state.next = Some(target);
        state.attempts = 0;
        state.rolled_back = None;
        self.write_state(&state)?;
        Ok((target, manifest))
    }

    /// Makes the next start boot the other system than `running`: the other slot if it holds
    /// a binary, else the base binary; returns it. Like an install, the target is then on
    /// probation until it boots successfully. Refused when there is nothing else to boot.
    pub fn roll_back(&self, running: Option<Slot>) -> Result<Option<Slot>, SlotError> {
        let other = Slot::other(running);
        let target = if self.binary(other).is_file() && Some(other) != running {
            Some(other)
        } else if running.is_some() {
            None
        } else {
            return Err(SlotError::Refused(
                "nothing to roll back to: no update was ever installed".to_string(),
            ));
        };
        let mut state = self.state()?;
        state.next = target;
        state.attempts = 0;
        self.write_state(&state)?;
        Ok(target)
    }

    /// Records that `slot` booted successfully: it becomes `active` (and stays `next`).
    pub fn confirm(&self, slot: Option<Slot>) -> Result<BootState, SlotError> {
        let mut state = self.state()?;
        let now = now_unix_seconds();
        state.active = slot;
        if state.next == slot {
            state.attempts = 0;
        }
        state.last_successful = Some(SuccessfulBoot {
            slot,
            at_unix_seconds: now,
        });
        self.write_state(&state)?;
        Ok(state)
    }
}

fn sync_dir(dir: &Path) -> Result<(), SlotError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Version;

    fn bundle_of(contents: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let v = Version::parse_semver("0.2.0-g00aa11bb").expect("version");
        bundle::write(&mut out, &v, &[(NODE_BINARY, contents, 0o755)]).expect("bundle");
        out
    }

    fn slots() -> (tempfile::TempDir, Slots) {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = Slots::new(&dir.path().join("esp").join("metropolis"));
        (dir, slots)
    }

    #[test]
    fn install_writes_the_other_slot_and_marks_it_next() {
        let (_dir, slots) = slots();
        assert_eq!(slots.state().expect("state"), BootState::default());
        let (slot, m) = slots
            .install(None, &bundle_of(b"one")[..], &Limits::default())
            .expect("install");
        assert_eq!(slot, Slot::A);
        assert_eq!(m.version.major, 0);
        assert_eq!(std::fs::read(slots.binary(Slot::A)).expect("read"), b"one");
        let state = slots.state().expect("state");
        assert_eq!(state.next, Some(Slot::A));
        assert_eq!(state.active, None);
        assert!(state.on_probation());
        assert_eq!(slots.manifest(Slot::A).expect("manifest"), Some(m));

        // Slot A confirmed and running: the next install goes to B, A stays as it is.
        slots.confirm(Some(Slot::A)).expect("confirm");
        let (slot, _) = slots
            .install(Some(Slot::A), &bundle_of(b"two")[..], &Limits::default())
            .expect("install");
        assert_eq!(slot, Slot::B);
        assert_eq!(std::fs::read(slots.binary(Slot::A)).expect("read"), b"one");
        assert_eq!(std::fs::read(slots.binary(Slot::B)).expect("read"), b"two");
        let state = slots.state().expect("state");
        assert_eq!((state.active, state.next), (Some(Slot::A), Some(Slot::B)));

        // Installing again before B ever booted replaces B.
        slots
            .install(Some(Slot::A), &bundle_of(b"three")[..], &Limits::default())
            .expect("install");
        assert_eq!(
            std::fs::read(slots.binary(Slot::B)).expect("read"),
            b"three"
        );
        assert_eq!(std::fs::read(slots.binary(Slot::A)).expect("read"), b"one");
        // No staging or old directories are left behind.
        let mut names: Vec<String> = std::fs::read_dir(slots.esp.clone())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![BOOT_STATE, "slot-a", "slot-b"]);
    }

    #[test]
    fn a_bad_bundle_leaves_slots_and_state_alone() {
        let (_dir, slots) = slots();
        slots
            .install(None, &bundle_of(b"good")[..], &Limits::default())
            .expect("install");
        slots.confirm(Some(Slot::A)).expect("confirm");
        let before = slots.state().expect("state");
        let mut bad = bundle_of(b"evil contents");
        let at = bad.windows(4).position(|w| w == b"evil").expect("contents");
        bad[at] = b'E';
        let err = slots
            .install(Some(Slot::A), &bad[..], &Limits::default())
            .expect_err("tampered bundle");
        assert!(err.to_string().contains("SHA-256"), "{err}");
        assert_eq!(slots.state().expect("state"), before);
        assert_eq!(std::fs::read(slots.binary(Slot::A)).expect("read"), b"good");
        assert!(!slots.dir(Slot::B).exists());
        assert!(!slots.esp.join("slot-b.new").exists());
    }

    #[test]
    fn probation_blocks_overwriting_the_fallback() {
        let (_dir, slots) = slots();
        slots.confirm(Some(Slot::A)).expect("confirm");
        slots
            .install(Some(Slot::A), &bundle_of(b"b")[..], &Limits::default())
            .expect("install");
        // Now running B on probation: installing would have to overwrite A, the fallback.
        let err = slots
            .install(Some(Slot::B), &bundle_of(b"c")[..], &Limits::default())
            .expect_err("refused");
        assert!(matches!(err, SlotError::Refused(_)), "{err}");
        slots.confirm(Some(Slot::B)).expect("confirm");
        let (slot, _) = slots
            .install(Some(Slot::B), &bundle_of(b"c")[..], &Limits::default())
            .expect("install after confirmation");
        assert_eq!(slot, Slot::A);
    }

    #[test]
    fn installing_over_the_active_slot_from_the_base_puts_it_on_probation() {
        let (_dir, slots) = slots();
        slots
            .install(None, &bundle_of(b"a")[..], &Limits::default())
            .expect("install");
        slots.confirm(Some(Slot::A)).expect("confirm");
        // The base binary runs although A is active (A failed to start, or a rollback to the
        // base is not confirmed yet): an install goes to A, which must not stay `active`, or
        // the new build would never be on probation and never be rolled back.
        let (slot, _) = slots
            .install(None, &bundle_of(b"new")[..], &Limits::default())
            .expect("install");
        assert_eq!(slot, Slot::A);
        let state = slots.state().expect("state");
        assert_eq!((state.active, state.next), (None, Some(Slot::A)));
        assert!(state.on_probation());
    }

    #[test]
    fn leftovers_of_interrupted_installs_are_discarded() {
        let (_dir, slots) = slots();
        slots
            .install(None, &bundle_of(b"a")[..], &Limits::default())
            .expect("install");
        std::fs::write(slots.esp.join(DOWNLOAD), b"partial").expect("write");
        for name in ["slot-a.new", "slot-b.old"] {
            std::fs::create_dir(slots.esp.join(name)).expect("mkdir");
            std::fs::write(slots.esp.join(name).join(NODE_BINARY), b"x").expect("write");
        }
        slots.discard_leftovers();
        let mut names: Vec<String> = std::fs::read_dir(slots.esp.clone())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![BOOT_STATE, "slot-a"]);
        assert_eq!(std::fs::read(slots.binary(Slot::A)).expect("read"), b"a");
    }

    #[test]
    fn state_file_survives_crashed_writes() {
        let (_dir, slots) = slots();
        let state = BootState {
            active: Some(Slot::A),
            next: Some(Slot::B),
            attempts: 2,
            last_successful: Some(SuccessfulBoot {
                slot: Some(Slot::A),
                at_unix_seconds: 1_700_000_000,
            }),
            rolled_back: None,
        };
        slots.write_state(&state).expect("write");
        // A write that died before its rename leaves only a temporary sibling behind: the
        // state read is the complete old one.
        std::fs::write(
            slots.esp.join(format!(".{BOOT_STATE}.tmp-1-2")),
            b"{\"active\": \"b\", \"ne",
        )
        .expect("stray temp file");
        assert_eq!(slots.state().expect("state"), state);
        // Writes replace the file whole.
        let next = BootState {
            attempts: 3,
            ..state
        };
        slots.write_state(&next).expect("write");
        assert_eq!(slots.state().expect("state"), next);
        // A file damaged by something else is reported, not guessed at.
        std::fs::write(slots.esp.join(BOOT_STATE), b"{\"active\": \"c\"}").expect("write");
        assert!(matches!(slots.state(), Err(SlotError::Corrupt { .. })));
    }
}
