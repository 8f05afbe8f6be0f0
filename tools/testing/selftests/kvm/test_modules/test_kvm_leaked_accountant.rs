// SPDX-License-Identifier: GPL-2.0

//! A shadow page accountant whose [`Registration`] is leaked on purpose, for the test that
//! leaking one is sound.
//!
//! Each VM gets a debugfs directory, `test_kvm_leaked_accountant/<pid>-<fd>`, with a file, `pages`,
//! whose operations are this module's. The module forgets its registration when it loads and
//! never unregisters, so KVM unregisters the accountant as the module goes, after its exit
//! function: it must detach every VM with [`Accountant::detach`], which drops the VM's files,
//! before the module's code is freed. A file left behind would be opened into freed memory.

#[path = "../../../../../rust/kvm/mod.rs"]
pub mod kvm;

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use kernel::{
    debugfs::{Dir, Scope},
    fmt,
    prelude::*,
    str::CString,
    sync::Arc,
};
use kvm::{Accountant, AccountingVm, LockedVm, PageRole, Registration, Vm, VmData};

module! {
    type: LeakedAccountant,
    name: "test_kvm_leaked_accountant",
    authors: ["kvm-shadow-stats developers"],
    description: "A KVM shadow page accountant whose registration is leaked, for tests",
    license: "GPL",
}

/// Counts shadow pages like KVM, in the stat and per VM, with a debugfs directory per VM.
struct FileKeeper {
    dir: Dir,
}

fn write_pages(pages: &AtomicU64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", pages.load(Relaxed))
}

impl Accountant for FileKeeper {
    type VmData = Arc<Scope<AtomicU64>>;

    fn attach(&self, vm: &Vm) -> Result<Self::VmData> {
        let name = CString::try_from_fmt(fmt!("{}-{}", vm.pid(), vm.fd()))?;
        let scope = self.dir.scope(AtomicU64::new(0), &name, |pages, dir| {
            dir.read_callback_file(c"pages", pages, &write_pages);
        });
        Arc::pin_init(scope, GFP_KERNEL)
    }

    fn detach(&self, _vm: &Vm, _data: Self::VmData) {}

    fn adopt(_vm: &LockedVm, data: VmData<'_, Self>, _role: PageRole, _gfn: u64) {
        data.store(data.load(Relaxed) + 1, Relaxed);
    }

    fn account(vm: &AccountingVm, data: VmData<'_, Self>, _role: PageRole, _gfn: u64) {
        vm.set_shadow_pages(vm.shadow_pages().wrapping_add(1));
        data.store(data.load(Relaxed).wrapping_add(1), Relaxed);
    }

    fn unaccount(vm: &AccountingVm, data: VmData<'_, Self>, _role: PageRole, _gfn: u64) {
        vm.set_shadow_pages(vm.shadow_pages().wrapping_sub(1));
        data.store(data.load(Relaxed).wrapping_sub(1), Relaxed);
    }
}

struct LeakedAccountant;

impl kernel::Module for LeakedAccountant {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let keeper = FileKeeper {
            dir: Dir::new(c"test_kvm_leaked_accountant"),
        };
        core::mem::forget(Registration::new(module, keeper)?);
        Ok(Self)
    }
}
