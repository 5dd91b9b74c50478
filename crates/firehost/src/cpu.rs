//! The host's CPU as a guest sees it: its vendor, model and CPUID feature
//! bits, so that a snapshot taken on one host is not restored on a host
//! that lacks a feature its guest may be using.
//!
//! A guest reads its features once, at boot, and uses them from then on;
//! restored on a CPU without one of them, it fails with an invalid-opcode
//! fault at some later point, far from the cause. Firehost records the
//! feature bits of the host a snapshot was taken on
//! ([`SnapshotManifest::host_cpu`](crate::snapshot::SnapshotManifest::host_cpu))
//! and refuses, before anything starts, a restore on a host missing any of
//! them ([`VmError::CpuMismatch`](crate::VmError::CpuMismatch)).
//!
//! The check is conservative: a CPU template hides features from the
//! guest, but the check compares the hosts' own bits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A CPU's identity and feature bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpu {
    /// `GenuineIntel`, `AuthenticAMD`, or the architecture elsewhere.
    pub vendor: String,
    /// The model name (`/proc/cpuinfo`).
    pub model: String,
    /// The family, model and stepping (CPUID leaf 1's EAX, without the
    /// processor type and reserved bits); 0 where there is no CPUID.
    #[serde(default)]
    pub signature: u32,
    /// CPUID feature registers by `leaf.register` (`1.ecx`, `7.ebx`,
    /// `80000001.edx`…), with the bits an OS sets or a hypervisor adds
    /// rather than the CPU has cleared.
    pub features: BTreeMap<String, u32>,
}

/// Bits that say something about the OS or the hypervisor, not the CPU:
/// OSXSAVE (1.ecx 27), the hypervisor bit (1.ecx 31), OSPKE (7.ecx 4).
const NOT_FEATURES: [(&str, u32); 2] = [("1.ecx", (1 << 27) | (1 << 31)), ("7.ecx", 1 << 4)];

/// Names of the feature bits that matter most to compiled code.
const NAMES: &[(&str, u32, &str)] = &[
    ("1.ecx", 0, "sse3"),
    ("1.ecx", 1, "pclmulqdq"),
    ("1.ecx", 9, "ssse3"),
    ("1.ecx", 12, "fma"),
    ("1.ecx", 13, "cx16"),
    ("1.ecx", 19, "sse4_1"),
    ("1.ecx", 20, "sse4_2"),
    ("1.ecx", 22, "movbe"),
    ("1.ecx", 23, "popcnt"),
    ("1.ecx", 25, "aes"),
    ("1.ecx", 26, "xsave"),
    ("1.ecx", 28, "avx"),
    ("1.ecx", 29, "f16c"),
    ("1.ecx", 30, "rdrand"),
    ("1.edx", 25, "sse"),
    ("1.edx", 26, "sse2"),
    ("7.ebx", 0, "fsgsbase"),
    ("7.ebx", 3, "bmi1"),
    ("7.ebx", 5, "avx2"),
    ("7.ebx", 8, "bmi2"),
    ("7.ebx", 9, "erms"),
    ("7.ebx", 16, "avx512f"),
    ("7.ebx", 17, "avx512dq"),
    ("7.ebx", 18, "rdseed"),
    ("7.ebx", 19, "adx"),
    ("7.ebx", 23, "clflushopt"),
    ("7.ebx", 24, "clwb"),
    ("7.ebx", 28, "avx512cd"),
    ("7.ebx", 29, "sha_ni"),
    ("7.ebx", 30, "avx512bw"),
    ("7.ebx", 31, "avx512vl"),
    ("7.ecx", 1, "avx512vbmi"),
    ("7.ecx", 6, "avx512_vbmi2"),
    ("7.ecx", 8, "gfni"),
    ("7.ecx", 9, "vaes"),
    ("7.ecx", 10, "vpclmulqdq"),
    ("7.ecx", 11, "avx512_vnni"),
    ("7.ecx", 22, "rdpid"),
    ("7.edx", 4, "fsrm"),
    ("80000001.ecx", 0, "lahf_lm"),
    ("80000001.ecx", 5, "abm"),
    ("80000001.ecx", 6, "sse4a"),
    ("80000001.ecx", 8, "3dnowprefetch"),
    ("80000001.edx", 20, "nx"),
    ("80000001.edx", 26, "pdpe1gb"),
    ("80000001.edx", 27, "rdtscp"),
    ("80000001.edx", 29, "lm"),
];

impl HostCpu {
    /// This host's CPU.
    pub fn detect() -> HostCpu {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let vendor = match field("vendor_id") {
            v if v.is_empty() => std::env::consts::ARCH.to_owned(),
            v => v,
        };
        HostCpu {
            vendor,
            model: field("model name"),
            signature: signature(),
            features: features(),
        }
    }

    /// The features of `self` that `host` lacks, by name (`avx512f`) or,
    /// for bits without one, by place (`7.ebx bit 21`).
    pub fn missing_on(&self, host: &HostCpu) -> Vec<String> {
        let mut missing = Vec::new();
        for (register, bits) in &self.features {
            let have = host.features.get(register).copied().unwrap_or(0);
            let lacking = bits & !have;
            for bit in (0..32).filter(|b| lacking & (1 << b) != 0) {
                let name = NAMES
                    .iter()
                    .find(|(r, b, _)| r == register && *b == bit)
                    .map_or_else(
                        || format!("{register} bit {bit}"),
                        |(_, _, n)| (*n).to_owned(),
                    );
                missing.push(name);
            }
        }
        missing
    }
}

/// The bits of CPUID leaf 1's EAX that name a CPU model: extended family
/// and model, family, model and stepping.
pub const SIGNATURE_MASK: u32 = 0x0FFF_0FFF;

#[cfg(target_arch = "x86_64")]
fn signature() -> u32 {
    std::arch::x86_64::__cpuid(1).eax & SIGNATURE_MASK
}

#[cfg(not(target_arch = "x86_64"))]
fn signature() -> u32 {
    0
}

/// The CPUID feature registers, without the bits in [`NOT_FEATURES`].
#[cfg(target_arch = "x86_64")]
fn features() -> BTreeMap<String, u32> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let max_leaf = __cpuid(0).eax;
    let max_ext = __cpuid(0x8000_0000).eax;
    let mut regs = BTreeMap::new();
    let leaf1 = __cpuid(1);
    regs.insert("1.ecx".to_owned(), leaf1.ecx);
    regs.insert("1.edx".to_owned(), leaf1.edx);
    if max_leaf >= 7 {
        let leaf7 = __cpuid_count(7, 0);
        regs.insert("7.ebx".to_owned(), leaf7.ebx);
        regs.insert("7.ecx".to_owned(), leaf7.ecx);
        regs.insert("7.edx".to_owned(), leaf7.edx);
    }
    if max_ext >= 0x8000_0001 {
        let ext = __cpuid(0x8000_0001);
        regs.insert("80000001.ecx".to_owned(), ext.ecx);
        regs.insert("80000001.edx".to_owned(), ext.edx);
    }
    for (register, mask) in NOT_FEATURES {
        if let Some(bits) = regs.get_mut(register) {
            *bits &= !mask;
        }
    }
    regs
}

/// Elsewhere there is no CPUID to read; the vendor check still applies.
#[cfg(not(target_arch = "x86_64"))]
fn features() -> BTreeMap<String, u32> {
    BTreeMap::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_with_every_bit_misses_nothing_and_a_lesser_one_is_named() {
        let here = HostCpu::detect();
        assert!(!here.vendor.is_empty());
        assert!(here.missing_on(&here).is_empty());
        let mut richer = here.clone();
        richer
            .features
            .insert("7.ebx".into(), (1 << 16) | (1 << 21));
        let mut poorer = here.clone();
        poorer.features.insert("7.ebx".into(), 0);
        assert_eq!(richer.missing_on(&poorer), ["avx512f", "7.ebx bit 21"]);
        // A register the other host does not report counts as all zero.
        poorer.features.remove("7.ebx");
        assert_eq!(richer.missing_on(&poorer).len(), 2);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn os_and_hypervisor_bits_are_not_features() {
        let here = HostCpu::detect();
        assert_eq!(here.features["1.ecx"] & (1 << 31), 0, "the hypervisor bit");
        assert_ne!(
            here.features["1.edx"] & (1 << 26),
            0,
            "every x86_64 has sse2"
        );
    }
}
