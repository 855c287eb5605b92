//! Looking at processes from the outside: whether one is still alive, which ones run with a
//! given argument. Tests use these to prove that nothing outlives what should have taken it
//! down (an etcd member after its node, a node's children after the node).

use std::time::Duration;

use crate::eventually::eventually;

/// Whether process `pid` exists and is not a zombie (a zombie has exited; only its parent has
/// not reaped it yet, or it is an orphan init has not reaped yet).
pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may itself contain
    // spaces and parentheses: the last ')' ends it.
    let state = stat
        .rsplit(')')
        .next()
        .map(str::trim_start)
        .and_then(|s| s.chars().next());
    state.is_some_and(|s| s != 'Z')
}

/// Waits until process `pid` has exited (see [`is_alive`]); on timeout, says so.
pub async fn wait_until_dead(pid: u32, timeout: Duration) -> Result<(), String> {
    eventually(timeout, async || !is_alive(pid))
        .await
        .map_err(|e| format!("process {pid} still alive: {e}"))
}

/// PIDs of the processes whose command line contains `needle` (e.g. a node's etcd data
/// directory, to find the etcd member a node started).
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}
