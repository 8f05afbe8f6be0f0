// SPDX-License-Identifier: GPL-2.0

//! Which MMU KVM uses for a guest's memory, from the module parameters in sysfs.

use std::fmt;
use std::fs;
use std::path::Path;

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
}
