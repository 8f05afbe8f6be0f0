// SPDX-License-Identifier: GPL-2.0

//! Keeps KVM x86's `mmu_shadow_pages` stat in Rust.
//!
//! On load the module takes over the accounting of shadow MMU pages (direct and indirect shadow
//! pages, never TDP MMU pages) for every VM, running or yet to come, continuing each VM's count
//! where KVM left it; on unload it hands the accounting back. The stat is the one KVM exposes
//! through the binary stats fd and debugfs; KVM checks it after every event, so its MMU page
//! limit never depends on this module.

use kernel::prelude::*;
use kernel::sync::atomic::{AtomicFlag, Relaxed};

pub mod kvm;

use kvm::{Accountant, PageRole, Registration, Vm};

module! {
    type: KvmShadowStats,
    name: "kvm_shadow_stats",
    authors: ["kvm-shadow-stats developers"],
    description: "Accounts KVM x86 shadow MMU pages in the mmu_shadow_pages stat",
    license: "GPL",
}

/// Counts shadow pages in each VM's `mmu_shadow_pages` stat, exactly as KVM's built-in C does.
struct ShadowPageCounter;

/// Set once an underflow has been reported, so that a broken count cannot flood the log.
static UNDERFLOW_REPORTED: AtomicFlag = AtomicFlag::new(false);

/// A zap of a page that KVM never accounted: a bug in KVM's MMU, which KVM's own check of the
/// stat cannot see, as its count wraps just like this one.
#[cold]
fn report_underflow(vm: &Vm, role: PageRole, gfn: u64) {
    if !UNDERFLOW_REPORTED.xchg(true, Relaxed) {
        pr_err!(
            "{}: mmu_shadow_pages underflows on unaccounting gfn {:#x}, {:?}\n",
            vm.name(),
            gfn,
            role
        );
        kernel::warn_on!(true);
    }
}

impl Accountant for ShadowPageCounter {
    fn account(vm: &Vm, _role: PageRole, _gfn: u64) {
        vm.set_shadow_pages(vm.shadow_pages().wrapping_add(1));
    }

    fn unaccount(vm: &Vm, role: PageRole, gfn: u64) {
        let pages = vm.shadow_pages();
        if pages == 0 {
            report_underflow(vm, role, gfn);
        }
        vm.set_shadow_pages(pages.wrapping_sub(1));
    }
}

struct KvmShadowStats {
    _registration: Registration<ShadowPageCounter>,
}

impl kernel::Module for KvmShadowStats {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // The loader reports only the errno: say what failed.
        let registration = Registration::new(module).inspect_err(|err| {
            pr_err!(
                "cannot take over shadow page accounting: error {}\n",
                err.to_errno()
            );
        })?;
        pr_info!("accounting shadow pages\n");
        Ok(Self {
            _registration: registration,
        })
    }
}

impl Drop for KvmShadowStats {
    fn drop(&mut self) {
        // The registration, dropped right after this, hands the accounting back to KVM.
        pr_info!("handing shadow page accounting back to KVM\n");
    }
}
