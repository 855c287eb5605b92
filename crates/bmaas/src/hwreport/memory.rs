//! Installed and usable memory.
//!
//! Installed: the sum of SMBIOS memory devices if the table was readable, else the sysfs
//! memory blocks (`/sys/devices/system/memory/memoryN`, each `block_size_bytes`), which cover
//! all RAM the kernel knows about including what it reserved. Usable: `MemTotal` of
//! `/proc/meminfo` (what sysinfo(2) reports as total RAM).

use std::fs;

use super::Sources;

/// Memory figures for the report.
#[derive(Debug, Default, PartialEq)]
pub struct Memory {
    /// Installed bytes (0 if unknown).
    pub installed_bytes: i64,
    /// Usable / installed (0 if unknown).
    pub usable_ratio: f32,
}

/// Gathers memory figures; `smbios_bytes` is the SMBIOS sum if known.
pub fn gather(src: &Sources, smbios_bytes: Option<u64>, warnings: &mut Vec<String>) -> Memory {
    let usable = match fs::read_to_string(src.proc.join("meminfo")) {
        Ok(text) => match mem_total_bytes(&text) {
            Some(b) => Some(b),
            None => {
                warnings.push("/proc/meminfo has no parsable MemTotal".into());
                None
            }
        },
        Err(e) => {
            warnings.push(format!("reading /proc/meminfo: {e}"));
            None
        }
    };
    let installed = match smbios_bytes.filter(|b| *b > 0) {
        Some(b) => Some(b),
        None => match sysfs_memory_bytes(src) {
            Ok(b) => Some(b),
            Err(e) => {
                warnings.push(format!("sysfs memory blocks: {e}"));
                usable.inspect(|_| {
                    warnings.push("installed memory unknown, reporting usable memory".into())
                })
            }
        },
    };
    let installed_bytes = installed.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let usable_ratio = match (usable, installed) {
        (Some(u), Some(i)) if i > 0 => (u as f64 / i as f64) as f32,
        _ => 0.0,
    };
    Memory {
        installed_bytes,
        usable_ratio,
    }
}

/// `MemTotal` of /proc/meminfo in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

fn sysfs_memory_bytes(src: &Sources) -> Result<u64, String> {
    let dir = src.sys.join("devices/system/memory");
    let block_size = fs::read_to_string(dir.join("block_size_bytes"))
        .map_err(|e| format!("reading block_size_bytes: {e}"))?;
    let block_size = u64::from_str_radix(block_size.trim(), 16).map_err(|_| {
        format!(
            "block_size_bytes {:?} is not hexadecimal",
            block_size.trim()
        )
    })?;
    let blocks = fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("memory"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64;
    if blocks == 0 {
        return Err("no memory blocks".into());
    }
    Ok(blocks * block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        assert_eq!(
            mem_total_bytes("MemTotal:       24683656 kB\nMemFree: 1 kB\n"),
            Some(24683656 * 1024)
        );
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
    }
}
