// SPDX-License-Identifier: GPL-2.0

//! The KVM ioctls this test needs that `kvm-ioctls` does not wrap, declared with
//! `vmm-sys-util`'s ioctl macros.

use std::io;
use std::os::raw::c_ulong;

use kvm_bindings::KVMIO;
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_val;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(KVM_SET_NR_MMU_PAGES, KVMIO, 0x44);

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
