//! What an ELF executable needs to start: its program interpreter.
//!
//! A dynamically linked executable names its loader in a `PT_INTERP`
//! program header; the kernel starts that loader, so a binary copied into
//! a tree (a guest image, the jailer's chroot) without its loader cannot
//! start there. `image build` and `doctor` ask this module.

use std::path::Path;

/// The program interpreter (`PT_INTERP`) an ELF file asks for: `Some` for
/// a dynamically linked executable, `None` for a static one or a file
/// that is not ELF (a script, which the kernel runs through its `#!`
/// line). 32- and 64-bit, either byte order.
///
/// ```
/// assert_eq!(firehost::elf::interpreter(b"#!/bin/sh\n"), None);
/// ```
pub fn interpreter(bytes: &[u8]) -> Option<String> {
    const PT_INTERP: u32 = 3;
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let wide = match bytes.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let big_endian = *bytes.get(5)? == 2;
    let uint = |at: usize, len: usize| -> Option<u64> {
        let raw = bytes.get(at..at.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if big_endian { raw[i] } else { raw[len - 1 - i] };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    let word = if wide { 8 } else { 4 };
    let (phoff, phentsize, phnum) = if wide {
        (uint(0x20, 8)?, uint(0x36, 2)?, uint(0x38, 2)?)
    } else {
        (uint(0x1c, 4)?, uint(0x2a, 2)?, uint(0x2c, 2)?)
    };
    for i in 0..phnum {
        let header = usize::try_from(phoff.checked_add(i.checked_mul(phentsize)?)?).ok()?;
        if uint(header, 4)? != u64::from(PT_INTERP) {
            continue;
        }
        // p_offset follows p_type (and p_flags on 64-bit); p_filesz comes
        // after p_vaddr and p_paddr.
        let (offset, size) = if wide {
            (uint(header + 8, word)?, uint(header + 0x20, word)?)
        } else {
            (uint(header + 4, word)?, uint(header + 16, word)?)
        };
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        let text = bytes.get(start..end)?;
        let text = text.split(|&b| b == 0).next().unwrap_or_default();
        return Some(String::from_utf8_lossy(text).into_owned());
    }
    None
}

/// [`interpreter`] of the file at `path`.
///
/// # Errors
///
/// The file cannot be read.
pub fn file_interpreter(path: &Path) -> std::io::Result<Option<String>> {
    Ok(interpreter(&std::fs::read(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header with one program header of type
    /// `p_type`, whose segment holds `segment`.
    fn elf64(p_type: u32, segment: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes()); // e_phentsize
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 0x40;
        elf[ph..ph + 4].copy_from_slice(&p_type.to_le_bytes());
        let offset = elf.len() as u64;
        elf[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        elf[ph + 0x20..ph + 0x28].copy_from_slice(&(segment.len() as u64).to_le_bytes());
        elf.extend_from_slice(segment);
        elf
    }

    #[test]
    fn dynamic_elf_files_name_their_interpreter() {
        let dynamic = elf64(3, b"/lib64/ld-linux-x86-64.so.2\0");
        assert_eq!(
            interpreter(&dynamic).as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(interpreter(&elf64(1, b"code")), None, "PT_LOAD only");
        assert_eq!(interpreter(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(interpreter(b"\x7fEL"), None);
        let mut truncated = dynamic.clone();
        truncated.truncate(0x50);
        assert_eq!(interpreter(&truncated), None);
    }

    #[test]
    fn a_file_is_read_for_its_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog");
        std::fs::write(&path, elf64(3, b"/lib/ld.so\0")).unwrap();
        assert_eq!(
            file_interpreter(&path).unwrap().as_deref(),
            Some("/lib/ld.so")
        );
        assert!(file_interpreter(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_host_shell_is_dynamic_or_not_elf() {
        // On glibc hosts /bin/sh is dynamically linked: a real-world check
        // of the 64-bit parser. A static shell is fine too.
        let Ok(bytes) = std::fs::read("/bin/sh") else {
            return;
        };
        if let Some(interpreter) = interpreter(&bytes) {
            assert!(interpreter.contains("ld"), "{interpreter}");
        }
    }
}
