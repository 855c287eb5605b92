//! CPUs (sockets) from `/proc/cpuinfo`.
//!
//! Every online logical CPU ("processor") has a block of `key\t: value` lines; blocks are
//! separated by blank lines. Processors are grouped into packages by `physical id`; per
//! package, hardware threads are the processors in it and cores the distinct `core id`s (both
//! counted rather than taken from `siblings`/`cpu cores`, which the kernel derives from the same
//! topology but which describe the package's first processor only). Hybrid CPUs (Intel
//! Alder Lake: hyperthreaded P-cores and single-threaded E-cores) come out right this way.

use std::collections::{BTreeMap, BTreeSet};

use proto::cloud::agent::api::Cpu;
use proto::cloud::agent::api::cpu::{Architecture, X8664};

#[derive(Default)]
struct Package {
    threads: i32,
    core_ids: BTreeSet<i64>,
    cpu_cores: Option<i32>,
    vendor: String,
    model: String,
    family: Option<i32>,
    model_number: Option<i32>,
    stepping: Option<i32>,
}

/// Parses `/proc/cpuinfo`: one [`Cpu`] per package, in physical ID order, and warnings.
pub fn parse(text: &str) -> (Vec<Cpu>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut packages: BTreeMap<i64, Package> = BTreeMap::new();
    let mut missing_physical_id = false;

    for block in text.split("\n\n") {
        let fields: BTreeMap<&str, &str> = block
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let Some(processor) = fields.get("processor") else {
            continue;
        };
        // x86 cpuinfo has one block per processor; other architectures append global blocks
        // (e.g. "Hardware") that have no "processor" key and are skipped above.
        let number = |key: &str, warnings: &mut Vec<String>| -> Option<i64> {
            let v = fields.get(key)?;
            match v.parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    warnings.push(format!(
                        "processor {processor}: {key} {v:?} is not a number"
                    ));
                    None
                }
            }
        };
        let physical_id = match number("physical id", &mut warnings) {
            Some(id) => id,
            None => {
                missing_physical_id = true;
                0
            }
        };
        let p = packages.entry(physical_id).or_default();
        p.threads += 1;
        if let Some(core) = number("core id", &mut warnings) {
            p.core_ids.insert(core);
        }
        if p.cpu_cores.is_none() {
            p.cpu_cores = number("cpu cores", &mut warnings).and_then(|n| i32::try_from(n).ok());
        }
        if p.vendor.is_empty() {
            p.vendor = fields.get("vendor_id").unwrap_or(&"").to_string();
        }
        if p.model.is_empty() {
            p.model = fields.get("model name").unwrap_or(&"").to_string();
        }
        if p.family.is_none() {
            p.family = number("cpu family", &mut warnings).and_then(|n| i32::try_from(n).ok());
            p.model_number = number("model", &mut warnings).and_then(|n| i32::try_from(n).ok());
            p.stepping = number("stepping", &mut warnings).and_then(|n| i32::try_from(n).ok());
        }
    }

    if packages.is_empty() {
        warnings.push("no processors found in /proc/cpuinfo".into());
    }
    if missing_physical_id {
        warnings.push("/proc/cpuinfo has no \"physical id\": assuming a single CPU package".into());
    }
    let cpus = packages
        .into_values()
        .map(|p| {
            let cores = if !p.core_ids.is_empty() {
                p.core_ids.len() as i32
            } else {
                p.cpu_cores.unwrap_or(p.threads)
            };
            let architecture = match (p.family, p.model_number, p.stepping) {
                (Some(family), Some(model), Some(stepping)) => Some(Architecture::X8664(X8664 {
                    family,
                    model,
                    stepping,
                })),
                _ => None,
            };
            Cpu {
                architecture,
                hardware_threads: p.threads,
                cores,
                vendor: p.vendor,
                model: p.model,
            }
        })
        .collect();
    (cpus, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(family: i32, model: i32, stepping: i32) -> Option<Architecture> {
        Some(Architecture::X8664(X8664 {
            family,
            model,
            stepping,
        }))
    }

    /// Upstream's TestParseCpuinfoAMD64, on fixtures in real /proc/cpuinfo formatting.
    #[test]
    fn amd_epyc_7402p() {
        let (cpus, warnings) = parse(include_str!("../../testdata/cpuinfo_amd_epyc_7402p.txt"));
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(
            cpus,
            vec![Cpu {
                architecture: x86(23, 49, 0),
                hardware_threads: 48,
                cores: 24,
                vendor: "AuthenticAMD".into(),
                model: "AMD EPYC 7402P 24-Core Processor".into(),
            }]
        );
    }

    #[test]
    fn intel_i9_12900k() {
        let (cpus, warnings) = parse(include_str!("../../testdata/cpuinfo_intel_i9_12900k.txt"));
        assert_eq!(warnings, Vec::<String>::new());
        assert_eq!(
            cpus,
            vec![Cpu {
                architecture: x86(6, 151, 2),
                hardware_threads: 24,
                cores: 16,
                vendor: "GenuineIntel".into(),
                model: "12th Gen Intel(R) Core(TM) i9-12900K".into(),
            }]
        );
    }

    #[test]
    fn qemu_two_sockets() {
        let (cpus, warnings) = parse(include_str!("../../testdata/cpuinfo_qemu.txt"));
        assert_eq!(warnings, Vec::<String>::new());
        let socket = Cpu {
            architecture: x86(15, 107, 1),
            hardware_threads: 2,
            cores: 2,
            vendor: "AuthenticAMD".into(),
            model: "QEMU Virtual CPU version 2.5+".into(),
        };
        assert_eq!(cpus, vec![socket.clone(), socket]);
    }

    #[test]
    fn without_topology() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: X\n\n\
                    processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: X\n";
        let (cpus, warnings) = parse(text);
        assert_eq!(cpus.len(), 1);
        assert_eq!((cpus[0].cores, cpus[0].hardware_threads), (2, 2));
        assert_eq!(cpus[0].architecture, None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn garbage() {
        let (cpus, warnings) = parse("this is not cpuinfo\n\0\u{fffd}");
        assert!(cpus.is_empty());
        assert!(!warnings.is_empty());
    }
}
