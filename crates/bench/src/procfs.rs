//! CPU time and memory of processes, read from /proc.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Clock ticks per second of the utime/stime fields. USER_HZ is 100 on every Linux
/// architecture we run on (it is fixed in the kernel ABI, independent of CONFIG_HZ), which
/// spares us a sysconf(_SC_CLK_TCK) call.
const TICKS_PER_SECOND: f64 = 100.0;

/// `self` or a pid, as /proc names them.
fn dir(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    }
}

/// User + system CPU seconds the process (all its threads, not its children) has used.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = format!("{}/stat", dir(pid));
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')'
    // are plain. utime and stime are fields 14 and 15, i.e. 12th and 13th after the name.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .context("short stat")?
            .parse::<u64>()
            .context("stat field")? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status_kb(pid: Option<u32>, field: &str) -> Result<f64> {
    let path = format!("{}/status", dir(pid));
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|l| l.strip_prefix(':')) {
            let kb: f64 = v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("{field} in {path}"))?;
            return Ok(kb * 1024.0);
        }
    }
    bail!("no {field} in {path}")
}

/// Resident set size in bytes.
pub fn rss(pid: Option<u32>) -> Result<f64> {
    status_kb(pid, "VmRSS")
}

/// Peak resident set size in bytes.
pub fn peak_rss(pid: Option<u32>) -> Result<f64> {
    status_kb(pid, "VmHWM")
}

/// Processes whose command line contains every one of `needles` (as whole arguments or
/// substrings of one), e.g. a node's `--state-dir <dir>`.
pub fn find_processes(needles: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if needles.iter().all(|n| args.iter().any(|a| a.contains(n))) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// The executable name of a process (`comm`).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The parent pid of a process.
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Children (direct) of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent(*p) == Some(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds(None).expect("cpu") >= 0.0);
        assert!(rss(None).expect("rss") > 0.0);
        assert!(peak_rss(None).expect("hwm") >= rss(None).expect("rss") * 0.5);
        let me = std::process::id();
        assert_eq!(
            parent(me),
            std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()
                })
        );
    }
}
