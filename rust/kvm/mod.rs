// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over KVM x86's shadow MMU page accountant hook.
//!
//! C header: [`arch/x86/include/asm/kvm_mmu_accountant.h`](srctree/arch/x86/include/asm/kvm_mmu_accountant.h)
//!
//! KVM calls the registered accountant once for every shadow page it allocates and once for every
//! shadow page it zaps, with the VM's `mmu_lock` held for write, and checks the VM's
//! `mmu_shadow_pages` stat after each call. A [`Vm`] is only ever lent to an [`Accountant`] for
//! the duration of such a call, so holding one is proof that the lock is held: the borrow
//! checker, not a comment, keeps it from escaping.

use core::marker::PhantomData;
use kernel::{bindings, error::to_result, prelude::*, str::CStrExt, types::Opaque};

/// A VM, as KVM lends it to an [`Accountant`] callback.
///
/// # Invariants
///
/// While a `&Vm` exists, it refers to the `kvm_mmu_accountant_vm` of a live VM whose `mmu_lock`
/// is held for write, whose `shadow_pages` points to the VM's `mmu_shadow_pages` stat and whose
/// `name` points to the VM's NUL-terminated `stats_id`.
#[repr(transparent)]
pub struct Vm(Opaque<bindings::kvm_mmu_accountant_vm>);

impl Vm {
    /// Borrows the `kvm_mmu_accountant_vm` that KVM passes to an accountant callback.
    ///
    /// # Safety
    ///
    /// `ptr` must point to the `kvm_mmu_accountant_vm` of a live VM whose `mmu_lock` is held for
    /// write for all of `'a`.
    unsafe fn from_raw<'a>(ptr: *const bindings::kvm_mmu_accountant_vm) -> &'a Self {
        // INVARIANT: Guaranteed by the caller; KVM sets `shadow_pages` and `name` when it creates
        // the VM and never changes them.
        // SAFETY: `Vm` is a transparent wrapper of the C struct, which the caller guarantees to be
        // valid for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn stat(&self) -> *mut u64 {
        // SAFETY: By the type invariant `self.0` is a valid `kvm_mmu_accountant_vm`, whose fields
        // KVM does not change while the VM lives.
        unsafe { (*self.0.get()).shadow_pages }
    }

    /// The VM's `mmu_shadow_pages` stat.
    #[inline]
    pub fn shadow_pages(&self) -> u64 {
        // SAFETY: By the type invariant the stat is a valid, aligned `u64`. Its writers are
        // serialized by `mmu_lock`, held by the type invariant, so this is the only writer's own
        // view of it.
        unsafe { self.stat().read_volatile() }
    }

    /// Sets the VM's `mmu_shadow_pages` stat.
    ///
    /// The binary stats fd and debugfs load the stat without taking `mmu_lock`, and KVM reads it
    /// back after every callback with `READ_ONCE()`, so the store is a single volatile one of the
    /// aligned word, C's `WRITE_ONCE()`. `Atomic::from_ptr()` would do the same through
    /// out-of-line C helpers, unless the kernel is built with clang to inline them
    /// (`CONFIG_RUST_INLINE_HELPERS`): two calls more on every shadow page event.
    #[inline]
    pub fn set_shadow_pages(&self, pages: u64) {
        // SAFETY: As in `shadow_pages()`: a valid, aligned `u64` whose only writer is the holder of
        // `mmu_lock`, held by the type invariant; lockless readers load the whole word at once.
        unsafe { self.stat().write_volatile(pages) }
    }

    /// The VM's name in KVM's own messages, `kvm-<pid>`.
    pub fn name(&self) -> &CStr {
        // SAFETY: By the type invariant `name` is the VM's NUL-terminated `stats_id`, which KVM
        // writes before the VM has any shadow page and which lives as long as the VM.
        unsafe { CStr::from_char_ptr((*self.0.get()).name) }
    }
}

/// The role of a shadow page: what KVM uses it for.
///
/// KVM clears the `invalid` bit before handing out a role, and every other bit is fixed when the
/// page is allocated, so a page is unaccounted with the very role it was accounted with.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct PageRole(bindings::kvm_mmu_page_role);

impl PageRole {
    fn bits(&self) -> bindings::kvm_mmu_page_role__bindgen_ty_1 {
        // SAFETY: Both fields of the union are plain integers of the same size, so every bit
        // pattern is valid for either.
        unsafe { self.0.__bindgen_anon_1 }
    }

    /// Page table level, 1 (4KiB PTEs) to 5.
    pub fn level(&self) -> u32 {
        self.bits().level()
    }

    /// No guest page table backs the page, e.g. a guest huge page shadowed with 4KiB pages.
    pub fn direct(&self) -> bool {
        self.bits().direct() != 0
    }

    /// The page belongs to an L2 guest: it shadows L1's nested page tables (nested NPT/EPT), or
    /// L2's own page tables when L1 runs L2 on shadow paging.
    pub fn guest_mode(&self) -> bool {
        self.bits().guest_mode() != 0
    }

    /// The page belongs to the SMM address space.
    pub fn smm(&self) -> bool {
        self.bits().smm() != 0
    }

    /// The role as KVM's `union kvm_mmu_page_role` word, for messages.
    pub fn word(&self) -> u32 {
        // SAFETY: As in `bits()`.
        unsafe { self.0.word }
    }
}

impl core::fmt::Debug for PageRole {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageRole")
            .field("word", &format_args!("{:#x}", self.word()))
            .field("level", &self.level())
            .field("direct", &self.direct())
            .field("guest_mode", &self.guest_mode())
            .field("smm", &self.smm())
            .finish()
    }
}

/// Maintains KVM's `mmu_shadow_pages` stat in place of KVM's own accounting.
///
/// The callbacks run with the VM's `mmu_lock` held for write and must not sleep; callbacks for
/// different VMs run concurrently. Each must move the stat by exactly one; KVM checks it after
/// every call and restores its own count otherwise. Pages that exist when the accountant
/// registers were accounted by KVM: counts an accountant keeps of its own only cover the pages
/// allocated after it registered.
pub trait Accountant {
    /// Called once for every shadow page KVM allocates, after the page's role and gfn are set.
    fn account(vm: &Vm, role: PageRole, gfn: u64);

    /// Called once for every shadow page KVM zaps, with the role and gfn it was accounted with.
    fn unaccount(vm: &Vm, role: PageRole, gfn: u64);
}

/// The C ops table of the accountant `T`, a constant in the module's read-only data.
struct OpsTable<T>(PhantomData<T>);

impl<T: Accountant> OpsTable<T> {
    const OPS: bindings::kvm_mmu_page_accountant = bindings::kvm_mmu_page_accountant {
        account: Some(Self::account),
        unaccount: Some(Self::unaccount),
    };

    /// # Safety
    ///
    /// Only to be called by KVM as a `kvm_mmu_page_accountant` callback.
    unsafe extern "C" fn account(
        vm: *const bindings::kvm_mmu_accountant_vm,
        role: bindings::kvm_mmu_page_role,
        gfn: bindings::gfn_t,
    ) {
        // SAFETY: KVM calls accountants with the `kvm_mmu_accountant_vm` of a live VM whose
        // `mmu_lock` it holds for write until the call returns.
        T::account(unsafe { Vm::from_raw(vm) }, PageRole(role), gfn)
    }

    /// # Safety
    ///
    /// Only to be called by KVM as a `kvm_mmu_page_accountant` callback.
    unsafe extern "C" fn unaccount(
        vm: *const bindings::kvm_mmu_accountant_vm,
        role: bindings::kvm_mmu_page_role,
        gfn: bindings::gfn_t,
    ) {
        // SAFETY: As in `account()`.
        T::unaccount(unsafe { Vm::from_raw(vm) }, PageRole(role), gfn)
    }
}

/// Keeps the accountant `T` registered with KVM until dropped.
///
/// Leaking a `Registration` is sound: KVM unregisters the accountant itself, with a warning,
/// before the owning module's code is freed. The callbacks only use the `&Vm` they are lent and
/// the accountant's statics, which live as long as that code.
///
/// # Invariants
///
/// `ops` is registered with KVM, at this address, for as long as the `Registration` exists.
pub struct Registration<T: Accountant> {
    ops: &'static bindings::kvm_mmu_page_accountant,
    _accountant: PhantomData<T>,
}

impl<T: Accountant> Registration<T> {
    /// Hands the accounting of every VM, existing and future, to `T`.
    ///
    /// Fails with `EBUSY` if another accountant is registered.
    pub fn new(module: &'static ThisModule) -> Result<Self> {
        let ops = &OpsTable::<T>::OPS;
        // SAFETY: `ops` is `'static` and its callbacks are `T`'s, instantiated in the crate that
        // calls this, which is `module`: safe code can only get a `&ThisModule` of its own. So
        // KVM unregisters them before their code is freed, should `self` be leaked. A wrong count
        // from `T` is no memory unsafety: KVM restores its own. Sleeping in atomic context is, as
        // everywhere in the kernel's Rust, left to `T` and to tools such as klint.
        to_result(unsafe { bindings::__kvm_mmu_register_page_accountant(ops, module.as_ptr()) })?;
        // INVARIANT: `ops` has just been registered at this address.
        Ok(Self {
            ops,
            _accountant: PhantomData,
        })
    }
}

impl<T: Accountant> Drop for Registration<T> {
    /// Hands the accounting back to KVM; no CPU runs `T`'s callbacks once this returns. Sleeps
    /// for an RCU grace period.
    fn drop(&mut self) {
        // SAFETY: By the type invariant `self.ops` is the registered accountant, at the address
        // it was registered with.
        unsafe { bindings::kvm_mmu_unregister_page_accountant(self.ops) };
    }
}
