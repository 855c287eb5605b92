//! Block devices (disks) from `/sys/class/block`.
//!
//! Partitions and virtual devices (loop, zram, device-mapper, md: anything under
//! `/sys/devices/virtual`) are skipped: the report is about hardware an OS could be installed
//! on. Sizes in sysfs are in 512-byte sectors whatever the device's block size.

use std::fs;
use std::path::Path;

use proto::cloud::agent::api::BlockDevice;
use proto::cloud::agent::api::block_device::Protocol;

use super::read_attr;

/// Every physical block device.
pub fn gather(sys: &Path, warnings: &mut Vec<String>) -> Vec<BlockDevice> {
    let class = sys.join("class/block");
    let mut names: Vec<String> = match fs::read_dir(&class) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) => {
            warnings.push(format!("reading {}: {e}", class.display()));
            return Vec::new();
        }
    };
    names.sort();
    names
        .iter()
        .filter_map(|name| device(&class.join(name), name, warnings))
        .collect()
}

fn device(dir: &Path, name: &str, warnings: &mut Vec<String>) -> Option<BlockDevice> {
    if dir.join("partition").exists() {
        return None;
    }
    let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let real = real.to_string_lossy();
    if real.contains("/devices/virtual/") {
        return None;
    }
    let sectors = number(dir, name, "size", warnings);
    if sectors.is_none() {
        warnings.push(format!("block device {name}: capacity unknown"));
    }
    let logical = number(dir, name, "queue/logical_block_size", warnings);
    let physical = number(dir, name, "queue/physical_block_size", warnings);
    let rotational = number(dir, name, "queue/rotational", warnings) == Some(1);
    let vendor = text(dir, name, "device/vendor", warnings).unwrap_or_default();
    let model = text(dir, name, "device/model", warnings).unwrap_or_default();
    let serial = text(dir, name, "device/serial", warnings)
        .or_else(|| text(dir, name, "serial", warnings))
        .unwrap_or_default();
    let wwid = text(dir, name, "wwid", warnings)
        .or_else(|| text(dir, name, "device/wwid", warnings))
        .unwrap_or_default();
    Some(BlockDevice {
        vendor,
        device_model: model,
        serial_number: serial,
        wwn: wwn(&wwid),
        rotational,
        capacity_bytes: sectors.map_or(0, |s| s.saturating_mul(512)),
        logical_block_size_bytes: logical.and_then(|v| i32::try_from(v).ok()).unwrap_or(0),
        physical_block_size_bytes: physical.and_then(|v| i32::try_from(v).ok()).unwrap_or(0),
        protocol: protocol(name, &real) as i32,
        ..Default::default()
    })
}

/// A text attribute; `None` if absent or empty, a warning if unreadable.
fn text(dir: &Path, name: &str, rel: &str, warnings: &mut Vec<String>) -> Option<String> {
    match read_attr(&dir.join(rel)) {
        Ok(v) => v.filter(|v| !v.is_empty()),
        Err(e) => {
            warnings.push(format!("block device {name}: reading {rel}: {e}"));
            None
        }
    }
}

/// A numeric attribute; `None` if absent, a warning if unreadable or not a number.
fn number(dir: &Path, name: &str, rel: &str, warnings: &mut Vec<String>) -> Option<i64> {
    let v = text(dir, name, rel, warnings)?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            warnings.push(format!("block device {name}: {rel} {v:?} is not a number"));
            None
        }
    }
}

/// The World Wide Name from a sysfs `wwid` (`naa.5000c500a1b2c3d4`, `eui.0025388b91b2c3d4`);
/// other designators (t10 vendor strings) are not WWNs.
pub fn wwn(wwid: &str) -> Vec<u8> {
    let hex_part = wwid
        .strip_prefix("naa.")
        .or_else(|| wwid.strip_prefix("eui."))
        .or_else(|| wwid.strip_prefix("0x"));
    match hex_part {
        Some(h) if h.len() % 2 == 0 => hex::decode(h).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn protocol(name: &str, real_path: &str) -> Protocol {
    if name.starts_with("nvme") {
        Protocol::Nvme
    } else if name.starts_with("mmcblk") {
        Protocol::Mmc
    } else if real_path.contains("/ata") {
        Protocol::Ata
    } else if name.starts_with("sd") {
        Protocol::Scsi
    } else {
        Protocol::Unknown
    }
}
