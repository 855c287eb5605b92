//! Network interfaces from `/sys/class/net`.
//!
//! Only interfaces backed by a device (a `device` link) are hardware; loopback, bridges,
//! tunnels, veths and the like are skipped. Speeds in sysfs are Mbit/s; the report wants bytes
//! per second.

use std::fs;
use std::path::Path;

use proto::cloud::agent::api::NetworkInterface;

use super::read_attr;

/// Every hardware network interface.
pub fn gather(sys: &Path, warnings: &mut Vec<String>) -> Vec<NetworkInterface> {
    let class = sys.join("class/net");
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
        .filter(|n| class.join(n).join("device").exists())
        .map(|name| interface(&class.join(name), name, warnings))
        .collect()
}

fn interface(dir: &Path, name: &str, warnings: &mut Vec<String>) -> NetworkInterface {
    let mac = match read_attr(&dir.join("address")) {
        Ok(Some(a)) => parse_mac(&a).unwrap_or_else(|| {
            warnings.push(format!("interface {name}: address {a:?} does not parse"));
            Vec::new()
        }),
        Ok(None) => Vec::new(),
        Err(e) => {
            warnings.push(format!("interface {name}: reading address: {e}"));
            Vec::new()
        }
    };
    let driver = fs::read_link(dir.join("device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Reading carrier or speed of an interface that is down fails with EINVAL: not a problem,
    // just "no link".
    let link_up = matches!(read_attr(&dir.join("carrier")), Ok(Some(c)) if c == "1");
    let speed_mbps = match read_attr(&dir.join("speed")) {
        Ok(Some(s)) => s.parse::<i64>().unwrap_or(-1),
        _ => -1,
    };
    NetworkInterface {
        mac,
        driver,
        supported_speed_bytes: Vec::new(),
        link_up,
        current_speed_bytes: if speed_mbps > 0 {
            speed_mbps.saturating_mul(1_000_000) / 8
        } else {
            0
        },
    }
}

/// `aa:bb:cc:dd:ee:ff` (any length: InfiniBand addresses have 20 bytes).
pub fn parse_mac(s: &str) -> Option<Vec<u8>> {
    s.split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).ok()
            } else {
                None
            }
        })
        .collect()
}
