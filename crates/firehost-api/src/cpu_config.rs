//! Custom CPU templates: `PUT /cpu-config`.
//!
//! A [`CpuConfig`] lists changes to what the guest's vCPUs see: KVM
//! capabilities on both architectures, CPUID leaves ([`CpuidLeafModifier`],
//! each made of [`CpuidRegisterModifier`]s) and MSRs ([`MsrModifier`]) on
//! `x86_64`, registers ([`ArmRegisterModifier`]) and vCPU features
//! ([`VcpuFeatures`]) on aarch64.
//!
//! Addresses and indices are strings in hexadecimal (`0x`), binary (`0b`) or
//! decimal; bitmaps are `0b` followed by one character per bit, `0` to
//! clear, `1` to set and `x` to leave alone. This crate carries them as
//! strings, exactly as sent; Firecracker parses them.

use serde::{Deserialize, Serialize};

/// A custom CPU template: body of `PUT /cpu-config`.
///
/// # Examples
///
/// ```
/// use firehost_api::{CpuConfig, MsrModifier};
///
/// let config = CpuConfig {
///     kvm_capabilities: Some(vec!["!56".into()]),
///     msr_modifiers: Some(vec![MsrModifier {
///         addr: "0x10a".into(),
///         bitmap: format!("0b{}", "x".repeat(63) + "0"),
///     }]),
///     ..CpuConfig::default()
/// };
/// let json = serde_json::to_value(&config).unwrap();
/// assert_eq!(json["kvm_capabilities"][0], "!56");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// KVM capabilities as decimal strings; a leading `!` removes the
    /// capability instead of adding it (both architectures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_capabilities: Option<Vec<String>>,
    /// CPUID leaf modifiers (`x86_64` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuid_modifiers: Option<Vec<CpuidLeafModifier>>,
    /// Model specific register modifiers (`x86_64` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msr_modifiers: Option<Vec<MsrModifier>>,
    /// Register modifiers (aarch64 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reg_modifiers: Option<Vec<ArmRegisterModifier>>,
    /// vCPU feature modifiers (aarch64 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_features: Option<Vec<VcpuFeatures>>,
}

/// Changes to one CPUID leaf and subleaf (`x86_64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    /// Leaf index, as a hexadecimal, binary or decimal string.
    pub leaf: String,
    /// Subleaf index, as a hexadecimal, binary or decimal string.
    pub subleaf: String,
    /// KVM CPUID entry flags for this leaf and subleaf (a bit set).
    pub flags: u32,
    /// The registers of this leaf to change.
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// A change to one register of a CPUID leaf (`x86_64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    /// Which register of the leaf to change.
    pub register: CpuidRegister,
    /// `0b` followed by 32 characters from `0`, `1` and `x`.
    pub bitmap: String,
}

/// The four registers a CPUID leaf returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuidRegister {
    /// `eax`.
    #[serde(rename = "eax")]
    Eax,
    /// `ebx`.
    #[serde(rename = "ebx")]
    Ebx,
    /// `ecx`.
    #[serde(rename = "ecx")]
    Ecx,
    /// `edx`.
    #[serde(rename = "edx")]
    Edx,
}

/// A change to one model specific register (`x86_64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    /// 32-bit MSR address, as a hexadecimal, binary or decimal string.
    pub addr: String,
    /// `0b` followed by 64 characters from `0`, `1` and `x`; underscores
    /// may separate groups.
    pub bitmap: String,
}

/// A change to one aarch64 register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmRegisterModifier {
    /// 64-bit register address, as a hexadecimal, binary or decimal string.
    pub addr: String,
    /// `0b` followed by up to 128 characters from `0`, `1` and `x`;
    /// underscores may separate groups.
    pub bitmap: String,
}

/// A change to one word of aarch64's `kvm_vcpu_init.features` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuFeatures {
    /// Index into the features array.
    pub index: u32,
    /// `0b` followed by 32 characters from `0`, `1` and `x`.
    pub bitmap: String,
}
