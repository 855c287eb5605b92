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
    /// Held while an update or rollback changes the slots, by the task doing it (not by the
    /// RPC handler, which may be cancelled while the work goes on).
    busy: Arc<tokio::sync::Mutex<()>>,
}

/// Removes the partial download when the install ends, however it ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("slots", &self.slots)
            .finish()
    }
}

impl Updater {
    /// An updater for the slots in `slots`; `stop` ends the node process with an exit. Made
    /// once per node process (its lock must cover every caller): what an install interrupted
    /// by the previous process left on the ESP is removed here.
    pub fn new(
        slots: Slots,
        fetch: FetchConfig,
        limits: Limits,
        stop: impl Fn(Exit) + Send + Sync + 'static,
    ) -> Arc<Self> {
        slots.discard_leftovers();
        Arc::new(Updater {
            slots,
            fetch,
            limits,
            stop: Arc::new(stop),
            busy: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// UpdateNode: fetch, verify and install the bundle at `url`, then activate it.
    ///
    /// The work runs in a task of its own that holds the update lock until it is done; this
    /// call only waits for it. A download may take up to [`DOWNLOAD_TIMEOUT`], longer than the
    /// RPC server lets a handler run (`rpc::serve::REQUEST_TIMEOUT`) and than many clients'
    /// deadlines: when the call is cancelled, the install still completes (and activates as
    /// asked), only its answer is lost, and further UpdateNode or Reboot calls are refused
    /// until it is done. Callers with big bundles or slow mirrors should allow a deadline long
    /// enough, or check the node's reported version afterwards.
    pub async fn update(self: &Arc<Self>, url: &str, mode: i32) -> Result<(), Status> {
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
        let Ok(busy) = self.busy.clone().try_lock_owned() else {
            return Err(Status::aborted("an update is already running on this node"));
        };
        let this = self.clone();
        tokio::spawn(async move { this.install(busy, uri, mode).await })
            .await
            .map_err(|e| Status::internal(format!("installing: {e}")))?
    }

    /// The body of [`update`](Self::update), holding the update lock `busy`.
    async fn install(
        &self,
        busy: tokio::sync::OwnedMutexGuard<()>,
        uri: http::Uri,
        mode: ActivationMode,
    ) -> Result<(), Status> {
        let shown = fetch::redacted(&uri);
        let running = loader::running_slot();
        tracing::info!(
            "UpdateNode: fetching {shown} (running {}, activation {})",
            slots::describe(running),
            mode.as_str_name()
        );
        let download = self.slots_dir().join(slots::DOWNLOAD);
        let _ = std::fs::remove_file(&download);
        if let Err(e) = crate::storage::create_dir(&self.slots_dir()) {
            return Err(Status::internal(e.to_string()));
        }
        let cleanup = RemoveOnDrop(download.clone());
        let fetched = fetch::fetch_to_file(&uri, &self.fetch, &download).await;
        let installed = match fetched {
            Ok(size) => {
                tracing::info!("UpdateNode: downloaded {size} bytes; installing");
                let slots = self.slots.clone();
                let limits = self.limits;
                let path = download.clone();
                // The lock and the download's cleanup go with the blocking work: should this
                // task be dropped (runtime shutdown), they stay until the slots are left alone.
                tokio::task::spawn_blocking(move || {
                    let _busy = busy;
                    let _cleanup = cleanup;
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
                        Status::invalid_argument(format!("the bundle at {shown} was refused: {b}"))
                    }
                    other => Status::internal(format!("installing the bundle: {other}")),
                })
            }
            Err(FetchError::InvalidUrl(m)) => Err(Status::invalid_argument(m)),
            Err(FetchError::Failed(m)) => Err(Status::unavailable(m)),
        };
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
        let Ok(busy) = self.busy.clone().try_lock_owned() else {
            return Err(Status::aborted("an update is already running on this node"));
        };
        let running = loader::running_slot();
        let next = if next_boot == NextBoot::StartRollback {
            let slots = self.slots.clone();
            // The lock goes with the blocking work, which a cancelled call does not stop.
            let target = tokio::task::spawn_blocking(move || {
                let _busy = busy;
                slots.roll_back(running)
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An updater whose downloads go to a server that accepts connections and never answers,
    /// so an install stays in its download until `timeout`.
    async fn stalled(timeout: Duration) -> (tempfile::TempDir, Arc<Updater>, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let fetch = FetchConfig {
            roots: Arc::new(rustls::RootCertStore::empty()),
            timeout,
            max_bytes: 1 << 20,
        };
        let updater = Updater::new(
            Slots::new(&dir.path().join("esp")),
            fetch,
            Limits::default(),
            |_| {},
        );
        (dir, updater, format!("https://127.0.0.1:{port}/bundle.tar"))
    }

    #[tokio::test]
    async fn a_cancelled_update_keeps_the_lock_until_it_ends() {
        let (_dir, updater, url) = stalled(Duration::from_secs(2)).await;
        let mode = ActivationMode::ActivationNone as i32;
        // The caller gives up (as the RPC server's timeout would) while the download runs.
        let first = tokio::time::timeout(Duration::from_millis(200), updater.update(&url, mode));
        assert!(first.await.is_err(), "the stalled download answered");
        let second = updater.update(&url, mode).await.expect_err("refused");
        assert_eq!(second.code(), tonic::Code::Aborted, "{second:?}");
        assert!(second.message().contains("already running"), "{second:?}");
        // Once the first install ends (its download times out), updates are taken again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = tokio::time::timeout(Duration::from_millis(500), updater.update(&url, mode));
            match r.await {
                Ok(Err(s)) if s.code() == tonic::Code::Aborted => {}
                // Taken: it is stalled in its own download now (or failed it).
                _ => break,
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lock was never released"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_download_leaves_no_file_behind() {
        let (dir, updater, url) = stalled(Duration::from_millis(300)).await;
        let err = updater
            .update(&url, ActivationMode::ActivationNone as i32)
            .await
            .expect_err("timed out");
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(!dir.path().join("esp").join(slots::DOWNLOAD).exists());
    }

    #[tokio::test]
    async fn leftovers_are_removed_when_the_updater_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(esp.join("slot-b.new")).expect("mkdir");
        std::fs::write(esp.join(slots::DOWNLOAD), b"partial").expect("write");
        let fetch = FetchConfig {
            roots: Arc::new(rustls::RootCertStore::empty()),
            timeout: Duration::from_secs(1),
            max_bytes: 1,
        };
        let _updater = Updater::new(Slots::new(&esp), fetch, Limits::default(), |_| {});
        assert!(!esp.join(slots::DOWNLOAD).exists());
        assert!(!esp.join("slot-b.new").exists());
    }
}
