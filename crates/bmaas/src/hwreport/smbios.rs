//! A minimal SMBIOS structure table parser (`/sys/firmware/dmi/tables/DMI`): system
//! identification (type 1), installed memory (type 17) and UEFI support (type 0).
//!
//! Layout (DMTF DSP0134): each structure is a header (type u8, length u8, handle u16), the
//! rest of its formatted area (`length` bytes in total), then a set of NUL-terminated strings
//! ended by an extra NUL (two NULs if there are none). String fields are 1-based indices into
//! that set, 0 meaning "none". Type 127 ends the table.

/// System identification from the type 1 structure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct System {
    pub manufacturer: String,
    pub product: String,
    pub serial_number: String,
}

/// What the report uses from SMBIOS.
#[derive(Debug, Default, PartialEq)]
pub struct Smbios {
    pub system: Option<System>,
    /// Sum of the sizes of installed memory devices, if any were described.
    pub memory_bytes: Option<u64>,
    /// BIOS characteristics extension: UEFI specification supported.
    pub uefi_supported: Option<bool>,
}

const MIB: u64 = 1 << 20;

/// Parses a structure table.
pub fn parse(table: &[u8]) -> Result<Smbios, String> {
    let mut out = Smbios::default();
    let mut memory: Option<u64> = None;
    let mut i = 0;
    while i + 4 <= table.len() {
        let kind = table[i];
        let len = usize::from(table[i + 1]);
        if len < 4 || i + len > table.len() {
            return Err(format!("structure at offset {i} has a bad length {len}"));
        }
        let formatted = &table[i..i + len];
        let (strings, next) = strings(table, i + len)
            .ok_or_else(|| format!("unterminated strings of the structure at offset {i}"))?;
        let string = |offset: usize| -> String {
            formatted
                .get(offset)
                .and_then(|&n| usize::from(n).checked_sub(1))
                .and_then(|n| strings.get(n))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        match kind {
            0 if len > 0x13 => {
                out.uefi_supported = Some(formatted[0x13] & (1 << 3) != 0);
            }
            1 if len > 7 => {
                out.system = Some(System {
                    manufacturer: string(4),
                    product: string(5),
                    serial_number: string(7),
                });
            }
            17 if len > 0x0d => {
                let size = u16::from_le_bytes([formatted[0x0c], formatted[0x0d]]);
                let bytes = match size {
                    0 | 0xffff => None,
                    0x7fff if len >= 0x20 => {
                        let ext = u32::from_le_bytes([
                            formatted[0x1c],
                            formatted[0x1d],
                            formatted[0x1e],
                            formatted[0x1f],
                        ]);
                        Some(u64::from(ext & 0x7fff_ffff) * MIB)
                    }
                    s if s & 0x8000 != 0 => Some(u64::from(s & 0x7fff) * 1024),
                    s => Some(u64::from(s) * MIB),
                };
                if let Some(b) = bytes {
                    memory = Some(memory.unwrap_or(0).saturating_add(b));
                }
            }
            127 => break,
            _ => {}
        }
        i = next;
    }
    out.memory_bytes = memory;
    Ok(out)
}

/// The strings starting at `start` and the offset after their terminator.
fn strings(table: &[u8], start: usize) -> Option<(Vec<String>, usize)> {
    let rest = table.get(start..)?;
    if rest.starts_with(&[0, 0]) {
        return Some((Vec::new(), start + 2));
    }
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let nul = rest.get(pos..)?.iter().position(|&b| b == 0)?;
        out.push(String::from_utf8_lossy(&rest[pos..pos + nul]).into_owned());
        pos += nul + 1;
        if *rest.get(pos)? == 0 {
            return Some((out, start + pos + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structure(kind: u8, formatted_rest: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut s = vec![kind, (4 + formatted_rest.len()) as u8, 0, 0];
        s.extend_from_slice(formatted_rest);
        if strings.is_empty() {
            s.extend_from_slice(&[0, 0]);
        } else {
            for st in strings {
                s.extend_from_slice(st.as_bytes());
                s.push(0);
            }
            s.push(0);
        }
        s
    }

    fn memory_device(size: u16, extended: u32) -> Vec<u8> {
        let mut f = vec![0u8; 0x22 - 4];
        f[0x0c - 4..0x0e - 4].copy_from_slice(&size.to_le_bytes());
        f[0x1c - 4..0x20 - 4].copy_from_slice(&extended.to_le_bytes());
        structure(17, &f, &["DIMM A1"])
    }

    #[test]
    fn system_memory_and_uefi() {
        let mut bios = vec![0u8; 0x18 - 4];
        bios[0x13 - 4] = 1 << 3;
        let mut table = structure(0, &bios, &["Vendor", "1.0"]);
        table.extend(structure(
            1,
            &[1, 2, 0, 3, 0, 0, 0, 0],
            &["Supermicro", "SYS-1019", "S123"],
        ));
        table.extend(memory_device(16384, 0)); // 16 GiB in MiB
        table.extend(memory_device(0x7fff, 65536)); // 64 GiB, extended size
        table.extend(memory_device(0x8000 | 512, 0)); // 512 KiB in KiB units
        table.extend(memory_device(0, 0)); // empty slot
        table.extend(structure(127, &[], &[]));
        let s = parse(&table).unwrap_or_default();
        assert_eq!(
            s.system,
            Some(System {
                manufacturer: "Supermicro".into(),
                product: "SYS-1019".into(),
                serial_number: "S123".into(),
            })
        );
        assert_eq!(s.memory_bytes, Some((16 + 64) * 1024 * MIB + 512 * 1024));
        assert_eq!(s.uefi_supported, Some(true));
    }

    #[test]
    fn truncated_tables_are_errors() {
        let table = structure(1, &[1, 2, 0, 3], &["a", "b", "c"]);
        assert!(parse(&table[..table.len() - 3]).is_err());
        assert!(parse(&[1, 200, 0, 0]).is_err());
        assert_eq!(parse(&[]), Ok(Smbios::default()));
    }
}
