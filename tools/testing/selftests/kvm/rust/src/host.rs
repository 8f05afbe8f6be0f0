// SPDX-License-Identifier: GPL-2.0

//! Which MMU KVM uses for a guest's memory, from the module parameters in sysfs.

use std::fmt;
use std::fs;
use std::path::Path;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;

/// `kvm_amd.npt`: whether SVM uses nested page tables (TDP) rather than shadow paging.
const NPT_PARAMETER: &str = "/sys/module/kvm_amd/parameters/npt";

/// `kvm.tdp_mmu`: whether TDP page tables are kept by the TDP MMU rather than the shadow MMU.
const TDP_MMU_PARAMETER: &str = "/sys/module/kvm/parameters/tdp_mmu";

/// How KVM maps guest memory, as far as the `mmu_shadow_pages` stat is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// `kvm_amd.npt=0`: KVM shadows the guest's page tables, one shadow page per guest table.
    Shadow,
    /// `kvm_amd.npt=1` with the TDP MMU, whose pages the stat never counts.
    TdpMmu,
}

impl fmt::Display for Paging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Shadow => "shadow paging (kvm_amd.npt=N)",
            Self::TdpMmu => "the TDP MMU (kvm_amd.npt=Y)",
        })
    }
}

/// Reads how KVM maps guest memory, or says why this is not a configuration the test knows.
pub fn paging() -> Result<Paging, String> {
    match read_bool_parameter(NPT_PARAMETER)? {
        false => Ok(Paging::Shadow),
        true if read_bool_parameter(TDP_MMU_PARAMETER)? => Ok(Paging::TdpMmu),
        true => Err(format!(
            "{TDP_MMU_PARAMETER} is N: TDP pages are kept by the shadow MMU, which no scenario models"
        )),
    }
}

/// Whether KVM offers its guests nested SVM with NPT: SVM in CPUID leaf 0x8000_0001 (ECX bit
/// 2) and nested paging in leaf 0x8000_000a (EDX bit 0) of what it supports, which KVM only
/// says with `kvm_amd.nested` and `kvm_amd.npt` both on.
pub fn has_nested_npt(kvm: &Kvm) -> Result<bool, String> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|error| format!("KVM_GET_SUPPORTED_CPUID: {error}"))?;
    let has = |function: u32, register: fn(&kvm_bindings::kvm_cpuid_entry2) -> u32, bit: u32| {
        cpuid
            .as_slice()
            .iter()
            .any(|entry| entry.function == function && register(entry) & (1 << bit) != 0)
    };
    Ok(has(0x8000_0001, |entry| entry.ecx, 2) && has(0x8000_000a, |entry| entry.edx, 0))
}

/// Whether the host runs with 5-level paging, which it shows as the `la57` flag of
/// /proc/cpuinfo; a host that cannot read that file is taken to have 4 levels.
pub fn has_5level_paging() -> bool {
    fs::read_to_string("/proc/cpuinfo").is_ok_and(|cpuinfo| cpuinfo_has_flag(&cpuinfo, "la57"))
}

fn cpuinfo_has_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .filter_map(|line| line.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == flag))
}

fn read_bool_parameter(path: &str) -> Result<bool, String> {
    let content = fs::read_to_string(Path::new(path))
        .map_err(|error| format!("cannot read {path}: {error}"))?;
    parse_bool_parameter(&content).ok_or_else(|| format!("{path} holds {content:?}, not Y or N"))
}

/// Parses a boolean module parameter as the kernel prints it (`Y`/`N`), or as an int (`1`/`0`).
fn parse_bool_parameter(content: &str) -> Option<bool> {
    match content.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_module_parameters() {
        assert_eq!(parse_bool_parameter("Y\n"), Some(true));
        assert_eq!(parse_bool_parameter("N\n"), Some(false));
        assert_eq!(parse_bool_parameter("1"), Some(true));
        assert_eq!(parse_bool_parameter("0\n"), Some(false));
        assert_eq!(parse_bool_parameter("maybe"), None);
    }

    #[test]
    fn finds_whole_cpuinfo_flags() {
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu la57 svm\nbugs\t\t: la57x\n";
        assert!(cpuinfo_has_flag(cpuinfo, "la57"));
        assert!(cpuinfo_has_flag(cpuinfo, "svm"));
        assert!(!cpuinfo_has_flag(cpuinfo, "la5"));
        assert!(!cpuinfo_has_flag(cpuinfo, "la57x"));
    }
}
