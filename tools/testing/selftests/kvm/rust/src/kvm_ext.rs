// SPDX-License-Identifier: GPL-2.0

//! The KVM ioctls this test needs that `kvm-ioctls` does not wrap, declared with
//! `vmm-sys-util`'s ioctl macros.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_ulong;

use kvm_bindings::KVMIO;
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_val};
use vmm_sys_util::ioctl_io_nr;

use crate::stats::{Stats, StatsError};

ioctl_io_nr!(KVM_SET_NR_MMU_PAGES, KVMIO, 0x44);
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// Limits the VM to `pages` shadow pages (KVM refuses fewer than 64), zapping the oldest ones
/// if it has more.
pub fn set_nr_mmu_pages(vm: &VmFd, pages: u64) -> io::Result<()> {
    let pages =
        c_ulong::try_from(pages).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: KVM_SET_NR_MMU_PAGES takes its argument by value and touches no memory of ours;
    // `vm` is a VM fd for as long as the borrow lasts.
    let ret = unsafe { ioctl_with_val(vm, KVM_SET_NR_MMU_PAGES(), pages) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the binary stats file of a VM or vCPU.
fn stats_file(vm_or_vcpu: &impl AsRawFd) -> io::Result<File> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and touches no memory of ours; it returns a
    // new fd or a negative value.
    let fd = unsafe { ioctl(vm_or_vcpu, KVM_GET_STATS_FD()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created by the ioctl and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// What can go wrong opening a stats file: the ioctl, or what it returned.
#[derive(Debug)]
pub enum OpenStatsError {
    Ioctl(io::Error),
    Parse(StatsError),
}

impl std::fmt::Display for OpenStatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ioctl(error) => write!(f, "KVM_GET_STATS_FD: {error}"),
            Self::Parse(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for OpenStatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Ioctl(error) => Some(error),
            Self::Parse(error) => Some(error),
        }
    }
}

/// Opens and parses the binary stats of a VM or vCPU.
pub fn open_stats(vm_or_vcpu: &impl AsRawFd) -> Result<Stats<File>, OpenStatsError> {
    let file = stats_file(vm_or_vcpu).map_err(OpenStatsError::Ioctl)?;
    Stats::new(file).map_err(OpenStatsError::Parse)
}
