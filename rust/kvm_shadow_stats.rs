// SPDX-License-Identifier: GPL-2.0

//! Keeps KVM x86's `mmu_shadow_pages` stat in Rust, and where the shadow pages are in debugfs.
//!
//! On load the module takes over the accounting of shadow MMU pages (direct and indirect shadow
//! pages, never TDP MMU pages) for every VM, running or yet to come, continuing each VM's count
//! where KVM left it; on unload it hands the accounting back. The stat is the one KVM exposes
//! through the binary stats fd and debugfs; KVM checks it after every event, so its MMU page
//! limit never depends on this module.
//!
//! Next to the stat it keeps, per VM, the pages by role, their memory, the peak and the pages
//! allocated and zapped, in `/sys/kernel/debug/kvm_shadow_stats/`; the layout is described in
//! Documentation/shadow-page-breakdown.rst, and is not ABI.

use kernel::{
    debugfs::{Dir, File, Scope},
    fmt, new_mutex,
    prelude::*,
    str::CString,
    sync::{
        atomic::{AtomicFlag, Relaxed},
        Arc, Mutex,
    },
    uaccess::UserSliceReader,
};

mod breakdown;
pub mod kvm;

use breakdown::{bucket_of, check_peak_reset, Counters, Snapshot};
use kvm::{Accountant, AccountingVm, LockedVm, PageRole, Registration, Vm, VmData};

module! {
    type: KvmShadowStats,
    name: "kvm_shadow_stats",
    authors: ["kvm-shadow-stats developers"],
    description: "Accounts KVM x86 shadow MMU pages, by role, per VM",
    license: "GPL",
}

/// Which VM a directory is about.
///
/// KVM names a VM's debugfs directory `<pid>-<fd>`, and so does this module, unless a VM that
/// outlived its file descriptor holds that name: KVM then makes no directory for the new VM, and
/// this module calls it `<pid>-<fd>.<n>`, with the smallest `n` from 1 up that is free.
#[derive(Clone, Copy, PartialEq)]
struct VmName {
    pid: i32,
    fd: i32,
    n: u32,
}

impl VmName {
    fn to_cstring(self) -> Result<CString> {
        if self.n == 0 {
            CString::try_from_fmt(fmt!("{}-{}", self.pid, self.fd))
        } else {
            CString::try_from_fmt(fmt!("{}-{}.{}", self.pid, self.fd, self.n))
        }
    }
}

/// What the module keeps of a VM.
struct AttachedVm {
    name: VmName,
    counters: Counters,
}

/// A VM's counters and its debugfs directory, which is removed before the counters are freed.
type VmEntry = Scope<AttachedVm>;

/// A file that sums over all VMs.
type AllVmsFile = Pin<KBox<File<Arc<Registry>>>>;

/// The VMs attached, each in a directory of its own, for the files that sum over them.
#[pin_data]
struct Registry {
    dir: Dir,
    #[pin]
    vms: Mutex<KVec<Arc<VmEntry>>>,
}

impl Registry {
    fn new(name: &CStr) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                dir: Dir::new(name),
                vms <- new_mutex!(KVec::new()),
            }),
            GFP_KERNEL,
        )
    }

    /// Lists the VM that process `pid` created as `fd`, in a directory named after it.
    fn attach(&self, pid: i32, fd: i32) -> Result<Arc<VmEntry>> {
        // KVM attaches and detaches one VM at a time, so no other VM takes the name chosen
        // here before the VM is listed, and the directory of a VM detached before is gone.
        let mut vms = self.vms.lock();
        let mut name = VmName { pid, fd, n: 0 };
        while vms.iter().any(|listed| listed.name == name) {
            name.n += 1;
        }
        let dir_name = name.to_cstring()?;
        let attached = AttachedVm {
            name,
            counters: Counters::new(),
        };
        let dir = self.dir.scope(attached, &dir_name, |vm, dir| {
            dir.read_callback_file(c"vm", vm, &write_vm);
            dir.read_callback_file(c"pages", vm, &write_pages);
            dir.read_callback_file(c"totals", vm, &write_totals);
            dir.read_write_callback_file(c"peak", vm, &write_peak, &reset_peak);
        });
        // Charged to the VM's creator, or to whoever loads the module.
        let entry = Arc::pin_init(dir, GFP_KERNEL_ACCOUNT)?;
        vms.push(entry.clone(), GFP_KERNEL_ACCOUNT)?;
        Ok(entry)
    }

    /// Unlists a VM; its files go with the last reference to `entry`.
    fn detach(&self, entry: Arc<VmEntry>) {
        let listed = {
            let mut vms = self.vms.lock();
            let i = vms.iter().position(|vm| Arc::ptr_eq(vm, &entry));
            i.and_then(|i| vms.remove(i).ok())
        };
        // The last reference, `listed` or `entry`, removes the VM's files, which waits for their
        // readers: not under the lock that the readers of the files of all VMs take.
        drop(listed);
    }

    fn sum(&self) -> Snapshot {
        let mut all = Snapshot::default();
        for vm in self.vms.lock().iter() {
            all.add(&vm.counters);
        }
        all
    }
}

/// Counts shadow pages in each VM's `mmu_shadow_pages` stat, exactly as KVM's built-in C does,
/// and by role in the VM's [`Counters`].
struct ShadowPageCounter {
    registry: Arc<Registry>,
}

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

fn write_pages(vm: &AttachedVm, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    vm.counters.snapshot().write_pages(f)
}

fn write_totals(vm: &AttachedVm, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let snapshot = vm.counters.snapshot();
    snapshot.write_totals(f, Some(vm.counters.peak()))
}

fn write_peak(vm: &AttachedVm, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", vm.counters.peak())
}

/// The `vm` file: which VM the directory is about, whatever its name.
fn write_vm(vm: &AttachedVm, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "pid {}", vm.name.pid)?;
    writeln!(f, "fd {}", vm.name.fd)
}

fn reset_peak(vm: &AttachedVm, input: &mut UserSliceReader) -> Result {
    check_peak_reset(input.len(), |buf| input.read_slice(buf))?;
    vm.counters.reset_peak();
    Ok(())
}

fn write_all_pages(registry: &Arc<Registry>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    registry.sum().write_pages(f)
}

fn write_all_totals(registry: &Arc<Registry>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    registry.sum().write_totals(f, None)
}

impl Accountant for ShadowPageCounter {
    type VmData = Arc<VmEntry>;

    fn attach(&self, vm: &Vm) -> Result<Arc<VmEntry>> {
        self.registry.attach(vm.pid(), vm.fd()).inspect_err(|err| {
            pr_warn!(
                "{}-{}: no breakdown for this VM: error {}\n",
                vm.pid(),
                vm.fd(),
                err.to_errno()
            );
        })
    }

    fn detach(&self, _vm: &Vm, data: Arc<VmEntry>) {
        self.registry.detach(data);
    }

    fn adopt(vm: &LockedVm, data: VmData<'_, Self>, role: PageRole, _gfn: u64) {
        data.counters.found(bucket_of(role), vm.shadow_pages());
    }

    #[inline]
    fn account(vm: &AccountingVm, data: VmData<'_, Self>, role: PageRole, _gfn: u64) {
        let pages = vm.shadow_pages().wrapping_add(1);
        vm.set_shadow_pages(pages);
        data.counters.allocated(bucket_of(role), pages);
    }

    #[inline]
    fn unaccount(vm: &AccountingVm, data: VmData<'_, Self>, role: PageRole, gfn: u64) {
        let pages = vm.shadow_pages();
        vm.set_shadow_pages(pages.wrapping_sub(1));
        data.counters.zapped(bucket_of(role));
        // Last, so that the check costs a test and a branch, with nothing to keep for the call.
        if pages == 0 {
            report_underflow(vm, role, gfn);
        }
    }
}

struct KvmShadowStats {
    // Dropped first: detaching every VM removes their directories.
    _registration: Registration<ShadowPageCounter>,
    _pages: AllVmsFile,
    _totals: AllVmsFile,
}

impl KvmShadowStats {
    fn new(module: &'static ThisModule) -> Result<Self> {
        let registry = Registry::new(c"kvm_shadow_stats")?;
        let dir = &registry.dir;
        let all = || registry.clone();
        let pages = dir.read_callback_file(c"pages", all(), &write_all_pages);
        let totals = dir.read_callback_file(c"totals", all(), &write_all_totals);
        Ok(Self {
            _pages: KBox::pin_init(pages, GFP_KERNEL)?,
            _totals: KBox::pin_init(totals, GFP_KERNEL)?,
            _registration: Registration::new(module, ShadowPageCounter { registry })?,
        })
    }
}

impl kernel::Module for KvmShadowStats {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // The loader reports only the errno: say what failed.
        let this = Self::new(module).inspect_err(|err| {
            pr_err!(
                "cannot take over shadow page accounting: error {}\n",
                err.to_errno()
            );
        })?;
        pr_info!("accounting shadow pages\n");
        Ok(this)
    }
}

impl Drop for KvmShadowStats {
    fn drop(&mut self) {
        // The registration, dropped right after this, hands the accounting back to KVM.
        pr_info!("handing shadow page accounting back to KVM\n");
    }
}

#[kunit_tests(kvm_shadow_stats_registry)]
mod tests {
    use super::*;

    /// A registry beside the module's, whose directory the suite's run at load already holds.
    fn registry() -> Result<Arc<Registry>> {
        Registry::new(c"kvm_shadow_stats_kunit")
    }

    fn name_of(vm: &Arc<VmEntry>) -> Result<CString> {
        vm.name.to_cstring()
    }

    #[test]
    fn a_taken_name_gets_the_smallest_free_number() -> Result {
        let registry = registry()?;
        let first = registry.attach(42, 7)?;
        let second = registry.attach(42, 7)?;
        let third = registry.attach(42, 7)?;
        assert_eq!(name_of(&first)?.to_bytes(), b"42-7");
        assert_eq!(name_of(&second)?.to_bytes(), b"42-7.1");
        assert_eq!(name_of(&third)?.to_bytes(), b"42-7.2");
        assert_eq!(name_of(&registry.attach(42, 8)?)?.to_bytes(), b"42-8");
        assert_eq!(name_of(&registry.attach(43, 7)?)?.to_bytes(), b"43-7");

        registry.detach(second);
        assert_eq!(name_of(&registry.attach(42, 7)?)?.to_bytes(), b"42-7.1");
        registry.detach(first);
        assert_eq!(name_of(&registry.attach(42, 7)?)?.to_bytes(), b"42-7");
        Ok(())
    }

    #[test]
    fn a_detached_vm_leaves_the_sums() -> Result {
        let registry = registry()?;
        let (a, b) = (registry.attach(42, 7)?, registry.attach(42, 8)?);
        let leaf = 1;
        a.counters.allocated(leaf, 1);
        b.counters.allocated(leaf, 1);
        b.counters.allocated(leaf, 2);
        assert_eq!(registry.sum().pages(), 3);

        registry.detach(b);
        assert_eq!(registry.sum().pages(), 1);
        assert_eq!(registry.vms.lock().len(), 1);
        registry.detach(a);
        assert_eq!(registry.sum().pages(), 0);
        assert!(registry.vms.lock().is_empty());
        Ok(())
    }
}
