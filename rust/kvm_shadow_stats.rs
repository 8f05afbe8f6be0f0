// SPDX-License-Identifier: GPL-2.0

//! Keeps KVM x86's `mmu_shadow_pages` stat in Rust.
//!
//! On load the module takes over the accounting of shadow MMU pages (direct and indirect shadow
//! pages, never TDP MMU pages) for every VM, running or yet to come, continuing each VM's count
//! where KVM left it; on unload it hands the accounting back. The stat is the one KVM exposes
//! through the binary stats fd and debugfs, and the one its MMU page limit is enforced against.

use kernel::prelude::*;
use kernel::sync::atomic::{AtomicFlag, Relaxed};

pub mod kvm;

use kvm::{Accountant, Registration, ShadowPage, Vm};

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

impl Accountant for ShadowPageCounter {
    fn account(vm: &mut Vm<'_>, _page: &ShadowPage<'_>) {
        vm.set_shadow_pages(vm.shadow_pages().saturating_add(1));
    }

    fn unaccount(vm: &mut Vm<'_>, page: &ShadowPage<'_>) {
        if let Some(pages) = vm.shadow_pages().checked_sub(1) {
            vm.set_shadow_pages(pages);
            return;
        }
        // A zap of a page that was never counted: the stat stays at 0 rather than wrapping to
        // 2^64 - 1, which would make KVM's page limit zap every shadow page on the next fault.
        if !UNDERFLOW_REPORTED.xchg(true, Relaxed) {
            pr_err!(
                "mmu_shadow_pages would underflow: {}, gfn {:#x}, role {:?}\n",
                vm.name(),
                page.gfn(),
                page.role()
            );
            kernel::warn_on!(true);
        }
    }
}

struct KvmShadowStats {
    registration: Option<Registration<ShadowPageCounter>>,
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
        pr_info!(
            "accounting shadow pages; took over {} VMs\n",
            registration.vms_taken_over()
        );
        Ok(Self {
            registration: Some(registration),
        })
    }
}

impl Drop for KvmShadowStats {
    fn drop(&mut self) {
        if let Some(registration) = self.registration.take() {
            let vms = registration.unregister();
            pr_info!(
                "shadow page accounting handed back to KVM for {} VMs\n",
                vms
            );
        }
    }
}
