//! Updating the node (NodeManagement.UpdateNode): bundles ([`bundle`]), the A/B slots and
//! boot state on the ESP ([`slots`]), the loader that boots the slot the boot state names
//! ([`loader`]) and the bundle download ([`fetch`]). [`Updater`] ties them together: fetch
//! over HTTPS, verify and install into the slot that is not running, then activate as asked.

pub mod bundle;
pub mod fetch;
pub mod loader;
pub mod slots;

use std::sync::Arc;
use std::time::Duration;

use proto::api::ActivationMode;
use proto::api::reboot_request::{NextBoot, Type as RebootType};
use tonic::Status;

use crate::exit::{Exit, ExitCode};
use bundle::Limits;
use fetch::{FetchConfig, FetchError};
use slots::{SlotError, Slots};

/// Bound on a whole bundle download.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the node waits after answering a REBOOT or KEXEC request before it stops, so the
/// response reaches the caller before the NodeManagement listener closes.
const ANSWER_GRACE: Duration = Duration::from_millis(300);

/// At most 80 characters of `s`, marked when cut, for messages that quote untrusted input.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// Installs updates for UpdateNode, one at a time.
pub struct Updater {
    slots: Slots,
    fetch: FetchConfig,
    limits: Limits,
    /// Ends the node process (a clean stop with the given exit).
    stop: Arc<dyn Fn(Exit) + Send + Sync>,
    busy: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("slots", &self.slots)
            .finish()
    }
}

impl Updater {
    /// An updater for the slots in `slots`; `stop` ends the node process with an exit.
    pub fn new(
        slots: Slots,
        fetch: FetchConfig,
        limits: Limits,
        stop: impl Fn(Exit) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Updater {
            slots,
            fetch,
            limits,
            stop: Arc::new(stop),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// UpdateNode: fetch, verify and install the bundle at `url`, then activate it.
    pub async fn update(&self, url: &str, mode: i32) -> Result<(), Status> {
        let mode = ActivationMode::try_from(mode)
            .ok()
            .filter(|m| *m != ActivationMode::ActivationInvalid)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "activation_mode {mode} is not ACTIVATION_NONE, ACTIVATION_REBOOT or \
                     ACTIVATION_KEXEC"
                ))
            })?;
        let uri = fetch::check_url(url).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(Status::aborted(
                "another update is being installed on this node",
            ));
        };
        let running = loader::running_slot();
        tracing::info!(
            "UpdateNode: fetching {uri} (running {}, activation {})",
            slots::describe(running),
            mode.as_str_name()
        );
        let download = self.slots_dir().join("bundle.download");
        let _ = std::fs::remove_file(&download);
        if let Err(e) = crate::storage::create_dir(&self.slots_dir()) {
            return Err(Status::internal(e.to_string()));
        }
        let fetched = fetch::fetch_to_file(&uri, &self.fetch, &download).await;
        let installed = match fetched {
            Ok(size) => {
                tracing::info!("UpdateNode: downloaded {size} bytes; installing");
                let slots = self.slots.clone();
                let limits = self.limits;
                let path = download.clone();
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path).map_err(|e| SlotError::Io {
                        path: path.clone(),
                        source: e,
                    })?;
                    slots.install(running, std::io::BufReader::new(file), &limits)
                })
                .await
                .map_err(|e| Status::internal(format!("installing: {e}")))?
                .map_err(|e| match e {
                    SlotError::Refused(m) => Status::failed_precondition(m),
                    SlotError::Bundle(b) => {
                        Status::invalid_argument(format!("the bundle at {uri} was refused: {b}"))
                    }
                    other => Status::internal(format!("installing the bundle: {other}")),
                })
            }
            Err(FetchError::InvalidUrl(m)) => Err(Status::invalid_argument(m)),
            Err(FetchError::Failed(m)) => Err(Status::unavailable(m)),
        };
        let _ = std::fs::remove_file(&download);
        let (slot, manifest) = installed.inspect_err(|s| {
            tracing::warn!("UpdateNode failed: {}", s.message());
        })?;
        let version = manifest.version.to_proto();
        tracing::info!("UpdateNode: installed version {version} into slot {slot}");
        match mode {
            ActivationMode::ActivationNone | ActivationMode::ActivationInvalid => {}
            ActivationMode::ActivationReboot => self.stop_later(Exit {
                code: ExitCode::Reboot,
                message: format!("rebooting into slot {slot} (version {version})"),
            }),
            ActivationMode::ActivationKexec => {
                loader::request_kexec();
                self.stop_later(Exit {
                    code: ExitCode::Reboot,
                    message: format!("kexec into slot {slot} (version {version})"),
                });
            }
        }
        Ok(())
    }

    /// Reboot: restart (FIRMWARE), replace in place (KEXEC) or stop for good (POWER_OFF),
    /// booting the other slot next with START_ROLLBACK.
    pub async fn reboot(&self, kind: i32, next_boot: i32) -> Result<(), Status> {
        let kind = RebootType::try_from(kind)
            .ok()
            .filter(|k| *k != RebootType::Invalid)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "type {kind} is not TYPE_FIRMWARE, TYPE_KEXEC or TYPE_POWER_OFF"
                ))
            })?;
        let next_boot = NextBoot::try_from(next_boot)
            .map_err(|_| Status::unimplemented(format!("next_boot {next_boot} is not known")))?;
        match (kind, next_boot) {
            (RebootType::Kexec, NextBoot::StartFirmwareUi) => {
                return Err(Status::invalid_argument(
                    "a kexec cannot start the firmware's setup interface",
                ));
            }
            (_, NextBoot::StartFirmwareUi) => {
                return Err(Status::unimplemented(
                    "this node has no firmware setup interface",
                ));
            }
            _ => {}
        }
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(Status::aborted("an update is being installed on this node"));
        };
        let running = loader::running_slot();
        let next = if next_boot == NextBoot::StartRollback {
            let slots = self.slots.clone();
            let target = tokio::task::spawn_blocking(move || slots.roll_back(running))
                .await
                .map_err(|e| Status::internal(format!("rolling back: {e}")))?
                .map_err(|e| match e {
                    SlotError::Refused(m) => Status::failed_precondition(m),
                    other => Status::internal(format!("rolling back: {other}")),
                })?;
            tracing::info!("Reboot: the next start boots {}", slots::describe(target));
            target
        } else {
            running
        };
        let to = slots::describe(next);
        match kind {
            RebootType::Firmware | RebootType::Invalid => self.stop_later(Exit {
                code: ExitCode::Reboot,
                message: format!("rebooting into {to} (Reboot)"),
            }),
            RebootType::Kexec => {
                loader::request_kexec();
                self.stop_later(Exit {
                    code: ExitCode::Reboot,
                    message: format!("kexec into {to} (Reboot)"),
                });
            }
            RebootType::PowerOff => self.stop_later(Exit {
                code: ExitCode::Stopped,
                message: "powered off (Reboot with TYPE_POWER_OFF)".to_string(),
            }),
        }
        Ok(())
    }

    fn slots_dir(&self) -> std::path::PathBuf {
        self.slots.esp().to_path_buf()
    }

    /// Stops the node with `exit` shortly after the response went out.
    fn stop_later(&self, exit: Exit) {
        tracing::info!("UpdateNode: {}", exit.message);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ANSWER_GRACE).await;
            stop(exit);
        });
    }
}
