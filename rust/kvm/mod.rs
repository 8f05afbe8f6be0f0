// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over KVM x86's shadow MMU page accountant hook.
//!
//! C header: [`arch/x86/include/asm/kvm_mmu_accountant.h`](srctree/arch/x86/include/asm/kvm_mmu_accountant.h)
//!
//! KVM calls the registered accountant once for every shadow page it allocates and once for every
//! shadow page it zaps, with the VM's `mmu_lock` held for write. [`Vm`] and [`ShadowPage`] are
//! only ever lent to an [`Accountant`] for the duration of such a call, so holding one is proof
//! that the lock is held: the borrow checker, not a comment, keeps them from escaping.

use core::marker::PhantomData;
use kernel::{bindings, error::to_result, prelude::*, str::CStrExt};

/// A VM, lent to an [`Accountant`] callback.
///
/// # Invariants
///
/// `kvm` points to a live `struct kvm` whose `mmu_lock` is held for write for all of `'a`, and
/// `shadow_pages` points to that VM's `mmu_shadow_pages` stat.
pub struct Vm<'a> {
    kvm: *mut bindings::kvm,
    shadow_pages: *mut u64,
    _mmu_lock: PhantomData<&'a mut bindings::kvm>,
}

impl Vm<'_> {
    /// Wraps the `kvm` that KVM passes to an accountant callback.
    ///
    /// # Safety
    ///
    /// `kvm` must point to a live VM whose `mmu_lock` is held for write for the lifetime of the
    /// returned value.
    unsafe fn from_raw(kvm: *mut bindings::kvm) -> Self {
        // INVARIANT: `kvm` is guaranteed by the caller. The stat's address is looked up once per
        // callback, as the helper that knows it cannot be inlined into a module.
        Self {
            kvm,
            // SAFETY: The caller guarantees that `kvm` is a live VM.
            shadow_pages: unsafe { bindings::kvm_mmu_shadow_pages_stat(kvm) },
            _mmu_lock: PhantomData,
        }
    }

    /// The VM's `mmu_shadow_pages` stat.
    pub fn shadow_pages(&self) -> u64 {
        // SAFETY: The stat is a valid, aligned `u64` inside the live VM. Writers are serialized by
        // `mmu_lock`, held by the type invariant, so the value cannot change under us.
        unsafe { self.shadow_pages.read_volatile() }
    }

    /// Sets the VM's `mmu_shadow_pages` stat.
    ///
    /// The stat is read without locks by the binary stats fd and debugfs, hence a single
    /// volatile store, the equivalent of C's `WRITE_ONCE()`.
    pub fn set_shadow_pages(&mut self, pages: u64) {
        // SAFETY: As in `shadow_pages()`; `&mut self` makes this the only writer for the duration
        // of the store, and lockless readers only ever load the whole aligned word.
        unsafe { self.shadow_pages.write_volatile(pages) }
    }

    /// The VM's name in KVM's own messages, `kvm-<pid>`.
    pub fn name(&self) -> &CStr {
        // SAFETY: By the type invariant `self.kvm` is a live VM. Its `stats_id` is a NUL-terminated
        // string that KVM writes once, when it creates the VM, so it outlives the borrow of `self`.
        unsafe { CStr::from_char_ptr(bindings::kvm_stats_id(self.kvm)) }
    }
}

/// The role of a shadow page: what KVM uses it for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRole {
    /// Page table level, 1 (4KiB PTEs) to 5.
    pub level: u8,
    /// No guest page table backs the page, e.g. a guest huge page shadowed with 4KiB pages.
    pub direct: bool,
    /// The page belongs to an L2 guest's MMU, i.e. it shadows nested page tables.
    pub guest_mode: bool,
    /// The page stands in for a guest PAE PDPTE or a missing guest paging level.
    pub passthrough: bool,
    /// The page was zapped while in use as a root.
    pub invalid: bool,
    /// The page belongs to the SMM address space.
    pub smm: bool,
}

/// A shadow page, lent to an [`Accountant`] callback.
///
/// # Invariants
///
/// `sp` points to a `struct kvm_mmu_page` whose gfn and role are set and which KVM keeps alive,
/// under `mmu_lock`, for all of `'a`.
pub struct ShadowPage<'a> {
    sp: *const bindings::kvm_mmu_page,
    _mmu_lock: PhantomData<&'a bindings::kvm_mmu_page>,
}

impl ShadowPage<'_> {
    /// Wraps the `sp` that KVM passes to an accountant callback.
    ///
    /// # Safety
    ///
    /// `sp` must point to a shadow page with its gfn and role set that stays alive, under
    /// `mmu_lock`, for the lifetime of the returned value.
    unsafe fn from_raw(sp: *const bindings::kvm_mmu_page) -> Self {
        // INVARIANT: Guaranteed by the caller.
        Self {
            sp,
            _mmu_lock: PhantomData,
        }
    }

    fn info(&self) -> bindings::kvm_mmu_page_info {
        let mut info = bindings::kvm_mmu_page_info::default();
        // SAFETY: By the type invariant `self.sp` is a live shadow page, and `info` is a valid
        // place for KVM to fill in.
        unsafe { bindings::kvm_mmu_page_get_info(self.sp, &mut info) };
        info
    }

    /// The guest frame number the page shadows, or maps directly if the role is direct.
    pub fn gfn(&self) -> u64 {
        self.info().gfn
    }

    /// The page's role.
    pub fn role(&self) -> PageRole {
        let info = self.info();
        PageRole {
            level: info.level,
            direct: info.direct,
            guest_mode: info.guest_mode,
            passthrough: info.passthrough,
            invalid: info.invalid,
            smm: info.smm,
        }
    }
}

/// Maintains KVM's `mmu_shadow_pages` stat in place of the built-in C accounting.
///
/// The callbacks run with the VM's `mmu_lock` held for write: they must not sleep, and they are
/// the only writers of the stat while the accountant is registered. KVM's MMU page limit is
/// enforced against the stat, so an accountant must keep it exact.
pub trait Accountant {
    /// Called once for every shadow page KVM allocates, after the page's role and gfn are set.
    fn account(vm: &mut Vm<'_>, page: &ShadowPage<'_>);

    /// Called once for every shadow page KVM zaps.
    fn unaccount(vm: &mut Vm<'_>, page: &ShadowPage<'_>);
}

/// # Safety
///
/// Only to be called by KVM as a `kvm_mmu_page_accountant` callback.
unsafe extern "C" fn account_callback<T: Accountant>(
    kvm: *mut bindings::kvm,
    sp: *const bindings::kvm_mmu_page,
) {
    // SAFETY: KVM calls accountants with a live VM whose `mmu_lock` it holds for write until the
    // call returns, and with a live shadow page whose gfn and role are set.
    let (mut vm, page) = unsafe { (Vm::from_raw(kvm), ShadowPage::from_raw(sp)) };
    T::account(&mut vm, &page);
}

/// # Safety
///
/// Only to be called by KVM as a `kvm_mmu_page_accountant` callback.
unsafe extern "C" fn unaccount_callback<T: Accountant>(
    kvm: *mut bindings::kvm,
    sp: *const bindings::kvm_mmu_page,
) {
    // SAFETY: As in `account_callback`.
    let (mut vm, page) = unsafe { (Vm::from_raw(kvm), ShadowPage::from_raw(sp)) };
    T::unaccount(&mut vm, &page);
}

/// Keeps the accountant `T` registered with KVM until dropped or [`Registration::unregister`]ed.
///
/// # Invariants
///
/// While `ops` is `Some`, the accountant it holds is registered with KVM and its address is the
/// one that was registered.
pub struct Registration<T: Accountant> {
    ops: Option<KBox<bindings::kvm_mmu_page_accountant>>,
    vms_taken_over: u32,
    _accountant: PhantomData<T>,
}

// SAFETY: KVM only reads the registered accountant, and registration and unregistration may
// happen on any thread in process context, so the handle can be moved between threads.
unsafe impl<T: Accountant> Send for Registration<T> {}

// SAFETY: No method mutates shared state through `&self`.
unsafe impl<T: Accountant> Sync for Registration<T> {}

impl<T: Accountant> Registration<T> {
    /// Hands the accounting of every VM, existing and future, to `T`.
    ///
    /// Fails with `EBUSY` if another accountant is registered.
    pub fn new(module: &'static ThisModule) -> Result<Self> {
        let ops = KBox::new(
            bindings::kvm_mmu_page_accountant {
                owner: module.as_ptr(),
                account: Some(account_callback::<T>),
                unaccount: Some(unaccount_callback::<T>),
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `ops` is a valid accountant whose callbacks meet KVM's contract. It is heap
        // allocated and only freed in `release()`, after it has been unregistered.
        let ret = unsafe { bindings::kvm_mmu_register_page_accountant(&*ops) };
        to_result(ret)?;
        // INVARIANT: `ops` has just been registered at its current address.
        Ok(Self {
            ops: Some(ops),
            vms_taken_over: ret.unsigned_abs(),
            _accountant: PhantomData,
        })
    }

    /// The number of VMs that existed when `T` took over.
    pub fn vms_taken_over(&self) -> u32 {
        self.vms_taken_over
    }

    /// Hands accounting back to KVM; returns the number of VMs handed back.
    ///
    /// Once this returns, no CPU runs `T`'s callbacks any more.
    pub fn unregister(mut self) -> u32 {
        self.release()
    }

    fn release(&mut self) -> u32 {
        let Some(ops) = self.ops.take() else {
            return 0;
        };
        // SAFETY: By the type invariant `ops` is the registered accountant, at the address it was
        // registered with.
        let ret = unsafe { bindings::kvm_mmu_unregister_page_accountant(&*ops) };
        // KVM has waited for the last callback into `T` to finish; `ops` may now be freed.
        drop(ops);
        // Only fails for an accountant that is not registered, which the invariant rules out.
        ret.try_into().unwrap_or(0)
    }
}

impl<T: Accountant> Drop for Registration<T> {
    fn drop(&mut self) {
        self.release();
    }
}
