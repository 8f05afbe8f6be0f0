// SPDX-License-Identifier: GPL-2.0

//! Opens the binary stats file of a VM or vCPU with `KVM_GET_STATS_FD`.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use kvm_bindings::KVMIO;

use crate::stats::{Stats, StatsError};

/// `_IO(KVMIO, 0xce)`: an ioctl with no argument, so the number is only type and command.
const KVM_GET_STATS_FD: libc::Ioctl = ((KVMIO << 8) | 0xce) as libc::Ioctl;

/// What can go wrong opening a stats file: the ioctl, or what it returned.
#[derive(Debug)]
pub enum OpenStatsError {
    Ioctl(io::Error),
    Parse(StatsError),
}

impl fmt::Display for OpenStatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// Opens the binary stats file of a VM or vCPU.
fn stats_file(vm_or_vcpu: &impl AsRawFd) -> io::Result<File> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and touches no memory of ours; it returns a
    // new fd or a negative value.
    let fd = unsafe { libc::ioctl(vm_or_vcpu.as_raw_fd(), KVM_GET_STATS_FD) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created by the ioctl and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Opens and parses the binary stats of a VM or vCPU.
///
/// `vm_or_vcpu` must be a KVM VM or vCPU fd: the same ioctl number may mean something else to
/// another driver.
pub fn open_stats(vm_or_vcpu: &impl AsRawFd) -> Result<Stats<File>, OpenStatsError> {
    let file = stats_file(vm_or_vcpu).map_err(OpenStatsError::Ioctl)?;
    Stats::new(file).map_err(OpenStatsError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_is_kvms() {
        // The value of KVM_GET_STATS_FD in <linux/kvm.h>, as strace shows it.
        assert_eq!(KVM_GET_STATS_FD as u32, 0xaece);
    }

    #[test]
    fn a_file_that_is_not_kvms_is_refused() {
        let file = File::open("/dev/null").expect("/dev/null opens");
        assert!(matches!(open_stats(&file), Err(OpenStatsError::Ioctl(_))));
    }
}
