//! Fixtures for test suites that run against either this fake or a real
//! Firecracker.
//!
//! A real Firecracker refuses to start a guest without a loadable kernel, and
//! CI hosts cannot boot a real Linux guest. [`halt_kernel`] is the smallest
//! kernel image both backends accept: the fake only opens it, Firecracker
//! loads and runs it.

/// A minimal `x86_64` ELF "kernel": one `PT_LOAD` segment at 16 MiB whose code
/// is `cli; hlt; jmp hlt`.
///
/// Firecracker loads and starts it like a vmlinux; the vCPU halts at once and
/// stays halted, so a real Firecracker can run, pause, resume and snapshot it
/// on any KVM host (nested virtualisation included) without a real guest. The
/// guest never reacts to `SendCtrlAltDel`.
///
/// # Examples
///
/// ```
/// let elf = fake_firecracker::testing::halt_kernel();
/// assert_eq!(&elf[..4], b"\x7fELF");
/// ```
pub fn halt_kernel() -> Vec<u8> {
    const LOAD_ADDR: u64 = 0x100_0000;
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    let code: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];
    let headers = u64::from(EHDR + PHDR);
    let total = headers + code.len() as u64;
    let mut elf = Vec::new();
    // e_ident: magic, 64-bit, little endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: executable
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(LOAD_ADDR + headers).to_le_bytes()); // e_entry
    elf.extend_from_slice(&u64::from(EHDR).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&EHDR.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&PHDR.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // Program header: PT_LOAD, R+X, the whole file at LOAD_ADDR.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&total.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&total.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(&code);
    assert_eq!(elf.len() as u64, total);
    elf
}

#[cfg(test)]
mod tests {
    #[test]
    fn halt_kernel_is_one_load_segment_with_the_halt_loop_at_its_entry() {
        let elf = super::halt_kernel();
        assert_eq!(elf.len(), 64 + 56 + 4);
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, 0x100_0000 + 120);
        assert_eq!(&elf[120..], &[0xfa, 0xf4, 0xeb, 0xfd]);
    }
}
