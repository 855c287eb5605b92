//! The hardware report (`cloud.agent.api.Node`) of the machine the agent runs on.
//!
//! Sources, all read-only: `/proc/cpuinfo` (CPUs), the SMBIOS table
//! `/sys/firmware/dmi/tables/DMI` (manufacturer, product, serial, installed memory, UEFI
//! support; root-only on real machines, so `/sys/class/dmi/id` is the fallback), sysfs memory
//! blocks and `/proc/meminfo` (memory), `/sys/class/block` (disks), `/sys/class/net` (NICs)
//! and `/sys/firmware/efi/runtime` (EFI).
//!
//! Gathering never fails: whatever cannot be read or parsed becomes a human-readable string
//! in the report's `warning` list and the field stays unset. Not collected (upstream read
//! them with NVMe/SCSI/ATA commands and ethtool, which need device access we do not assume):
//! disk health (critical warning, media errors, spare and wear ratios) and the supported link
//! speeds of NICs.
//!
//! A report must fit the server's size limit ([`fit`]): a machine with thousands of odd
//! devices, or a kernel with something to complain about on every one of them, would otherwise
//! have its report refused over and over.

pub mod block;
pub mod cpuinfo;
pub mod memory;
pub mod net;
pub mod smbios;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use prost::Message;
use proto::cloud::agent::api::{EfiSupport, Node};
use proto::cloud::bmaas::server::api::AgentHardwareReport;

/// Where the kernel's interfaces are mounted (tests point these at fixture trees).
#[derive(Debug, Clone)]
pub struct Sources {
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// The report of this machine.
pub fn gather() -> AgentHardwareReport {
    gather_from(&Sources::default())
}

/// The report from the given procfs and sysfs.
pub fn gather_from(src: &Sources) -> AgentHardwareReport {
    let mut warnings = Vec::new();
    let mut node = Node::default();

    match fs::read_to_string(src.proc.join("cpuinfo")) {
        Ok(text) => {
            let (cpus, w) = cpuinfo::parse(&text);
            node.cpu = cpus;
            warnings.extend(w);
        }
        Err(e) => warnings.push(format!("reading /proc/cpuinfo: {e}")),
    }

    let dmi_path = src.sys.join("firmware/dmi/tables/DMI");
    let smbios = match fs::read(&dmi_path) {
        Ok(table) => match smbios::parse(&table) {
            Ok(s) => Some(s),
            Err(e) => {
                warnings.push(format!("parsing SMBIOS table: {e}"));
                None
            }
        },
        Err(e) => {
            warnings.push(format!(
                "reading SMBIOS table {}: {e}; using /sys/class/dmi/id",
                dmi_path.display()
            ));
            None
        }
    };
    match smbios.as_ref().and_then(|s| s.system.clone()) {
        Some(system) => {
            node.manufacturer = system.manufacturer;
            node.product = system.product;
            node.serial_number = system.serial_number;
        }
        None => {
            let dmi = src.sys.join("class/dmi/id");
            node.manufacturer = dmi_attribute(&dmi, "sys_vendor", &mut warnings);
            node.product = dmi_attribute(&dmi, "product_name", &mut warnings);
            node.serial_number = dmi_attribute(&dmi, "product_serial", &mut warnings);
        }
    }

    let memory = memory::gather(
        src,
        smbios.as_ref().and_then(|s| s.memory_bytes),
        &mut warnings,
    );
    node.memory_installed_bytes = memory.installed_bytes;
    node.memory_usable_ratio = memory.usable_ratio;

    node.block_device = block::gather(&src.sys, &mut warnings);
    node.network_interface = net::gather(&src.sys, &mut warnings);

    node.efi_support = efi_support(&src.sys, smbios.as_ref().and_then(|s| s.uefi_supported)) as i32;

    AgentHardwareReport {
        report: Some(node),
        warning: warnings,
    }
}

/// Warnings a trimmed report keeps (the first ones).
const TRIMMED_WARNINGS: usize = 64;
/// Characters a warning of a trimmed report keeps.
const TRIMMED_WARNING_CHARS: usize = 512;

/// `report`, made to fit in `limit` bytes (serialized) if it does not: first the warnings are
/// cut down (the first [`TRIMMED_WARNINGS`], each to [`TRIMMED_WARNING_CHARS`] characters),
/// then, if that is not enough, the hardware details are dropped. A warning says what was
/// done, so whoever reads the report knows it is not complete.
pub fn fit(mut report: AgentHardwareReport, limit: usize) -> AgentHardwareReport {
    let original = report.encoded_len();
    if original <= limit {
        return report;
    }
    let dropped = report.warning.len().saturating_sub(TRIMMED_WARNINGS);
    report.warning.truncate(TRIMMED_WARNINGS);
    for w in &mut report.warning {
        if let Some((end, _)) = w.char_indices().nth(TRIMMED_WARNING_CHARS) {
            w.truncate(end);
            w.push('…');
        }
    }
    let note = format!(
        "report trimmed by the agent: {original} bytes are more than the server accepts \
         ({limit}); {dropped} warnings left out, the others cut to {TRIMMED_WARNING_CHARS} \
         characters"
    );
    report.warning.push(note.clone());
    if report.encoded_len() <= limit {
        return report;
    }
    let note = format!("{note}; the hardware details were left out too");
    report.report = None;
    if let Some(last) = report.warning.last_mut() {
        last.clone_from(&note);
    }
    if report.encoded_len() > limit {
        report.warning = vec![note];
    }
    report
}

/// ENABLED if EFI runtime services are there, else what the firmware (SMBIOS) claims.
fn efi_support(sys: &Path, uefi_supported: Option<bool>) -> EfiSupport {
    if sys.join("firmware/efi/runtime").exists() {
        return EfiSupport::Enabled;
    }
    match uefi_supported {
        Some(true) => EfiSupport::Supported,
        Some(false) => EfiSupport::Unsupported,
        None => EfiSupport::Unknown,
    }
}

/// A `/sys/class/dmi/id` attribute; empty with a warning if unreadable (absent is normal on
/// machines without DMI, e.g. some VMs, and gives a single warning for the directory).
fn dmi_attribute(dir: &Path, name: &str, warnings: &mut Vec<String>) -> String {
    match fs::read_to_string(dir.join(name)) {
        Ok(v) => v.trim().to_string(),
        Err(e) if e.kind() == ErrorKind::NotFound && !dir.exists() => {
            let w = format!("no DMI information ({} does not exist)", dir.display());
            if !warnings.contains(&w) {
                warnings.push(w);
            }
            String::new()
        }
        Err(e) => {
            warnings.push(format!("reading {}: {e}", dir.join(name).display()));
            String::new()
        }
    }
}

/// Reads a sysfs attribute: `Ok(None)` if it does not exist, the trimmed value otherwise.
pub(crate) fn read_attr(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(v) => Ok(Some(v.trim().to_string())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use proto::cloud::agent::api::block_device::Protocol;

    use super::*;

    fn write(root: &Path, rel: &str, contents: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    #[test]
    fn fitting_a_report() {
        let cpu = |model: String| proto::cloud::agent::api::Cpu {
            model,
            ..Default::default()
        };
        let small = AgentHardwareReport {
            report: Some(Node {
                cpu: vec![cpu("small".into())],
                ..Default::default()
            }),
            warning: vec!["one".into()],
        };
        assert_eq!(
            fit(small.clone(), 1 << 20),
            small,
            "reports that fit are kept as they are"
        );

        // Too many warnings: trimmed, the details kept.
        let mut chatty = small.clone();
        chatty.warning = vec!["w".repeat(2000); 1000];
        let fitted = fit(chatty, 1 << 20);
        assert!(fitted.encoded_len() <= 1 << 20);
        assert_eq!(fitted.report, small.report);
        assert_eq!(fitted.warning.len(), TRIMMED_WARNINGS + 1);
        assert!(
            fitted
                .warning
                .last()
                .unwrap()
                .contains("936 warnings left out")
        );

        // Too many details: dropped, with a warning saying so.
        let mut huge = small.clone();
        huge.report = Some(Node {
            cpu: vec![cpu("m".repeat(1000)); 2000],
            ..Default::default()
        });
        let fitted = fit(huge, 1 << 20);
        assert!(fitted.encoded_len() <= 1 << 20);
        assert_eq!(fitted.report, None);
        assert!(
            fitted
                .warning
                .last()
                .unwrap()
                .contains("details were left out")
        );
        assert!(fitted.warning.contains(&"one".to_string()));
    }

    /// A fake procfs/sysfs of a small server: NVMe and SATA disks, a loop device and a
    /// partition (skipped), a 10G NIC and loopback (skipped), EFI, DMI attributes but no
    /// readable SMBIOS table.
    #[test]
    fn fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (proc, sys) = (dir.path().join("proc"), dir.path().join("sys"));
        write(
            &proc,
            "cpuinfo",
            include_str!("../../testdata/cpuinfo_qemu.txt"),
        );
        write(
            &proc,
            "meminfo",
            "MemTotal:        1000000 kB\nMemFree: 1 kB\n",
        );
        write(&sys, "devices/system/memory/block_size_bytes", "8000000\n");
        for i in 0..8 {
            fs::create_dir_all(sys.join(format!("devices/system/memory/memory{i}"))).unwrap();
        }
        write(&sys, "firmware/efi/runtime", "");
        write(&sys, "class/dmi/id/sys_vendor", "Supermicro\n");
        write(&sys, "class/dmi/id/product_name", "SYS-5019C-MR\n");
        write(&sys, "class/dmi/id/product_serial", "S123456\n");

        let nvme = "class/block/nvme0n1";
        write(&sys, &format!("{nvme}/size"), "1953525168\n");
        write(&sys, &format!("{nvme}/queue/logical_block_size"), "512\n");
        write(&sys, &format!("{nvme}/queue/physical_block_size"), "512\n");
        write(&sys, &format!("{nvme}/queue/rotational"), "0\n");
        write(&sys, &format!("{nvme}/wwid"), "eui.0025388b91b2c3d4\n");
        write(
            &sys,
            &format!("{nvme}/device/model"),
            "Samsung SSD 980 PRO 1TB\n",
        );
        write(&sys, &format!("{nvme}/device/serial"), "S5GXNF0R123456\n");
        write(&sys, "class/block/nvme0n1p1/partition", "1\n");
        let sda = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda";
        write(&sys, &format!("{sda}/size"), "7814037168\n");
        write(&sys, &format!("{sda}/queue/logical_block_size"), "512\n");
        write(&sys, &format!("{sda}/queue/physical_block_size"), "4096\n");
        write(&sys, &format!("{sda}/queue/rotational"), "1\n");
        write(&sys, &format!("{sda}/device/vendor"), "ATA     \n");
        write(&sys, &format!("{sda}/device/model"), "ST4000NM0035-1V4\n");
        write(
            &sys,
            &format!("{sda}/device/wwid"),
            "naa.5000c500a1b2c3d4\n",
        );
        symlink(sys.join(sda), sys.join("class/block/sda")).unwrap();
        write(&sys, "devices/virtual/block/loop0/size", "0\n");
        symlink(
            sys.join("devices/virtual/block/loop0"),
            sys.join("class/block/loop0"),
        )
        .unwrap();

        write(&sys, "class/net/eth0/address", "0c:c4:7a:12:34:56\n");
        write(&sys, "class/net/eth0/carrier", "1\n");
        write(&sys, "class/net/eth0/speed", "10000\n");
        fs::create_dir_all(sys.join("bus/pci/drivers/ixgbe")).unwrap();
        fs::create_dir_all(sys.join("class/net/eth0/device")).unwrap();
        symlink(
            sys.join("bus/pci/drivers/ixgbe"),
            sys.join("class/net/eth0/device/driver"),
        )
        .unwrap();
        write(&sys, "class/net/lo/address", "00:00:00:00:00:00\n");

        let report = gather_from(&Sources { proc, sys });
        let node = report.report.unwrap();
        assert_eq!(report.warning.len(), 1, "{:?}", report.warning);
        assert!(report.warning[0].contains("SMBIOS"));
        assert_eq!(
            (
                node.manufacturer.as_str(),
                node.product.as_str(),
                node.serial_number.as_str()
            ),
            ("Supermicro", "SYS-5019C-MR", "S123456")
        );
        assert_eq!(node.efi_support(), EfiSupport::Enabled);
        assert_eq!(node.cpu.len(), 2);
        assert_eq!(node.memory_installed_bytes, 1 << 30);
        assert!((node.memory_usable_ratio - 1_024_000_000.0 / (1u64 << 30) as f32).abs() < 1e-6);

        assert_eq!(node.block_device.len(), 2, "{:?}", node.block_device);
        let nvme = &node.block_device[0];
        assert_eq!(nvme.device_model, "Samsung SSD 980 PRO 1TB");
        assert_eq!(nvme.serial_number, "S5GXNF0R123456");
        assert_eq!(nvme.capacity_bytes, 1953525168 * 512);
        assert_eq!(
            nvme.wwn,
            vec![0x00, 0x25, 0x38, 0x8b, 0x91, 0xb2, 0xc3, 0xd4]
        );
        assert_eq!(nvme.protocol(), Protocol::Nvme);
        assert!(!nvme.rotational);
        let sda = &node.block_device[1];
        assert_eq!(
            (sda.vendor.as_str(), sda.device_model.as_str()),
            ("ATA", "ST4000NM0035-1V4")
        );
        assert_eq!(
            (sda.logical_block_size_bytes, sda.physical_block_size_bytes),
            (512, 4096)
        );
        assert_eq!(sda.protocol(), Protocol::Ata);
        assert!(sda.rotational);
        assert_eq!(sda.wwn.len(), 8);

        assert_eq!(node.network_interface.len(), 1);
        let nic = &node.network_interface[0];
        assert_eq!(nic.mac, vec![0x0c, 0xc4, 0x7a, 0x12, 0x34, 0x56]);
        assert_eq!(nic.driver, "ixgbe");
        assert!(nic.link_up);
        assert_eq!(nic.current_speed_bytes, 10_000_000_000 / 8);
    }

    /// Nothing readable at all: an empty report full of warnings, not a failure.
    #[test]
    fn nothing_readable() {
        let dir = tempfile::tempdir().unwrap();
        let report = gather_from(&Sources {
            proc: dir.path().join("nope"),
            sys: dir.path().join("nope"),
        });
        let node = report.report.unwrap();
        assert!(node.cpu.is_empty() && node.block_device.is_empty());
        assert_eq!(node.efi_support(), EfiSupport::Unknown);
        assert!(report.warning.len() >= 4, "{:?}", report.warning);
    }

    /// The report of the machine running the tests: never fails, and finds at least a CPU and
    /// some memory on any Linux machine.
    #[test]
    fn this_machine() {
        let report = gather();
        let node = report.report.unwrap_or_default();
        assert!(!node.cpu.is_empty(), "warnings: {:?}", report.warning);
        assert!(
            node.cpu
                .iter()
                .all(|c| c.hardware_threads >= c.cores && c.cores > 0)
        );
        assert!(
            node.memory_installed_bytes > 0,
            "warnings: {:?}",
            report.warning
        );
        assert!(node.memory_usable_ratio > 0.0);
        assert_ne!(node.efi_support, EfiSupport::Invalid as i32);
    }
}
