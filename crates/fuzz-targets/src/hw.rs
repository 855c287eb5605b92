//! BMaaS agent hardware report parsers: SMBIOS tables, /proc/cpuinfo, /proc/meminfo, MAC
//! addresses and WWIDs, all read from a machine the agent does not control.

use bmaas::hwreport::{block, cpuinfo, memory, net, smbios as table};

/// SMBIOS table parsing. Property: no panic; a parsed memory size is a whole number of KiB
/// (the table's smallest unit).
pub fn smbios(data: &[u8]) {
    if let Ok(s) = table::parse(data)
        && let Some(bytes) = s.memory_bytes
    {
        assert_eq!(bytes % 1024, 0, "memory size {bytes} is not whole KiB");
    }
}

/// The text parsers (cpuinfo, meminfo, MAC, WWID) over the same input. Property: no panic; a
/// parsed MAC has one byte per colon-separated pair.
pub fn hwreport_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = cpuinfo::parse(&text);
    let _ = memory::mem_total_bytes(&text);
    if let Some(mac) = net::parse_mac(&text) {
        assert_eq!(
            mac.len(),
            text.split(':').count(),
            "MAC {text:?} parsed to {mac:?}"
        );
    }
    let _ = block::wwn(&text);
}
