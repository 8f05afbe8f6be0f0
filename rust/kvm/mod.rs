// SPDX-License-Identifier: GPL-2.0

//! Safe abstractions over KVM x86's shadow MMU page accountant hook.
//!
//! C header: [`arch/x86/include/asm/kvm_mmu_accountant.h`](srctree/arch/x86/include/asm/kvm_mmu_accountant.h)
//!
//! KVM attaches every VM to the registered accountant, shows it the shadow pages the VM already
//! holds, and then calls it once for every shadow page it allocates and once for every shadow
//! page it zaps, with the VM's `mmu_lock` held for write, checking the VM's `mmu_shadow_pages`
//! stat after each call. A [`LockedVm`] is only ever lent to an [`Accountant`] for the duration
//! of such a call, so holding one is proof that the lock is held: the borrow checker, not a
//! comment, keeps it from escaping.

use core::{ffi::c_void, ops::Deref};
use kernel::{
    bindings, container_of, error::to_result, prelude::*, str::CStrExt, types::ForeignOwnable,
    types::Opaque,
};

/// A VM, as KVM lends it to an [`Accountant`] to attach or detach it.
///
/// # Invariants
///
/// While a `&Vm` exists, it refers to the `kvm_mmu_accountant_vm` of a live VM, whose `name` is a
/// NUL-terminated string and whose `pid` and `fd` KVM does not change while the VM lives.
#[repr(transparent)]
pub struct Vm(Opaque<bindings::kvm_mmu_accountant_vm>);

impl Vm {
    /// Borrows the `kvm_mmu_accountant_vm` that KVM passes to an accountant callback.
    ///
    /// # Safety
    ///
    /// `ptr` must point to the `kvm_mmu_accountant_vm` of a VM that lives for all of `'a`.
    unsafe fn from_raw<'a>(ptr: *const bindings::kvm_mmu_accountant_vm) -> &'a Self {
        // INVARIANT: Guaranteed by the caller; KVM sets the name, pid and fd before it hands the
        // VM to an accountant and never changes them.
        // SAFETY: `Vm` is a transparent wrapper of the C struct, which the caller guarantees to be
        // valid for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    /// The VM's name in KVM's own messages, `kvm-<pid>`.
    pub fn name(&self) -> &CStr {
        // SAFETY: By the type invariant `name` is a NUL-terminated string that lives as long as
        // the VM.
        unsafe { CStr::from_char_ptr((*self.0.get()).name) }
    }

    /// The process that created the VM.
    pub fn pid(&self) -> i32 {
        // SAFETY: By the type invariant `self.0` is a valid `kvm_mmu_accountant_vm` whose `pid`
        // does not change.
        unsafe { (*self.0.get()).pid }
    }

    /// The VM's file descriptor in the process that created it, when it was created.
    ///
    /// KVM names the VM's debugfs directory `<pid>-<fd>`, unless a VM that outlived its file
    /// descriptor holds that name already: two VMs may have the same pid and fd.
    pub fn fd(&self) -> i32 {
        // SAFETY: As in `pid()`.
        unsafe { (*self.0.get()).fd }
    }

    fn data(&self) -> *mut c_void {
        // SAFETY: By the type invariant `self.0` is a valid `kvm_mmu_accountant_vm`; KVM only
        // writes `priv` outside the callbacks that read it.
        unsafe { (*self.0.get()).priv_ }
    }
}

/// A VM whose `mmu_lock` is held for write, as KVM lends it to an [`Accountant`] callback for
/// one of its shadow pages.
///
/// # Invariants
///
/// While a `&LockedVm` exists, the VM's `mmu_lock` is held for write, and `shadow_pages` points
/// to the VM's `mmu_shadow_pages` stat.
#[repr(transparent)]
pub struct LockedVm(Vm);

impl LockedVm {
    /// # Safety
    ///
    /// `ptr` must point to the `kvm_mmu_accountant_vm` of a live VM whose `mmu_lock` is held for
    /// write for all of `'a`, during a page callback.
    unsafe fn from_raw<'a>(ptr: *const bindings::kvm_mmu_accountant_vm) -> &'a Self {
        // INVARIANT: Guaranteed by the caller; KVM sets `shadow_pages` before the first page
        // callback of a VM and clears it only after the last, with `mmu_lock` held.
        // SAFETY: `LockedVm` is a transparent wrapper of `Vm`, whose requirements the caller
        // meets.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn stat(&self) -> *mut u64 {
        // SAFETY: By the type invariant `self.0` is a valid `kvm_mmu_accountant_vm`, whose
        // `shadow_pages` KVM does not change while the lock is held.
        unsafe { (*self.0 .0.get()).shadow_pages }
    }

    /// The VM's `mmu_shadow_pages` stat: all the pages the VM holds, shown to the accountant or
    /// not.
    #[inline]
    pub fn shadow_pages(&self) -> u64 {
        // SAFETY: By the type invariant the stat is a valid, aligned `u64`. Its writers are
        // serialized by `mmu_lock`, held by the type invariant, so this is the only writer's own
        // view of it.
        unsafe { self.stat().read_volatile() }
    }
}

impl Deref for LockedVm {
    type Target = Vm;

    fn deref(&self) -> &Vm {
        &self.0
    }
}

/// A VM as KVM lends it to [`Accountant::account`] and [`Accountant::unaccount`], which keep its
/// `mmu_shadow_pages` stat.
///
/// # Invariants
///
/// The invariants of [`LockedVm`], during a call that must move the stat by one.
#[repr(transparent)]
pub struct AccountingVm(LockedVm);

impl AccountingVm {
    /// # Safety
    ///
    /// As for [`LockedVm::from_raw`], during a call of `account` or `unaccount`.
    unsafe fn from_raw<'a>(ptr: *const bindings::kvm_mmu_accountant_vm) -> &'a Self {
        // INVARIANT: Guaranteed by the caller.
        // SAFETY: `AccountingVm` is a transparent wrapper of `LockedVm`, whose requirements the
        // caller meets.
        unsafe { &*ptr.cast::<Self>() }
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
        // SAFETY: As in `LockedVm::shadow_pages()`: a valid, aligned `u64` whose only writer is
        // the holder of `mmu_lock`, held by the type invariant; lockless readers load the whole
        // word at once.
        unsafe { self.0.stat().write_volatile(pages) }
    }
}

impl Deref for AccountingVm {
    type Target = LockedVm;

    fn deref(&self) -> &LockedVm {
        &self.0
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

    /// The role whose `union kvm_mmu_page_role` word is `word`.
    pub fn from_word(word: u32) -> Self {
        Self(bindings::kvm_mmu_page_role { word })
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

/// The per-VM data of the accountant `T`, as its callbacks borrow it.
pub type VmData<'a, T> = <<T as Accountant>::VmData as ForeignOwnable>::Borrowed<'a>;

/// Maintains KVM's `mmu_shadow_pages` stat in place of KVM's own accounting.
///
/// KVM attaches every VM to the accountant, those that exist when it registers and those created
/// later, and detaches them when they are destroyed or the accountant unregisters. Between the
/// two, KVM shows the accountant every shadow page that the VM held when it was attached, then
/// every one it allocates or zaps; the accountant keeps per-VM data of its own.
///
/// The page callbacks run with the VM's `mmu_lock` held for write and must not sleep; callbacks
/// for different VMs run concurrently. [`Accountant::account`] and [`Accountant::unaccount`] must
/// move the stat by exactly one; KVM checks it after every call and restores its own count
/// otherwise.
pub trait Accountant: Send + Sync + Sized + 'static {
    /// What the accountant keeps per VM.
    type VmData: ForeignOwnable + Send + Sync;

    /// Sets up the accountant's data for `vm`. May sleep. On error KVM keeps counting the VM's
    /// pages itself and none of the VM's pages is shown to the accountant.
    fn attach(&self, vm: &Vm) -> Result<Self::VmData>;

    /// Takes back the data of `vm` as the VM's destruction begins or when the accountant
    /// unregisters, also when its module goes away with the [`Registration`] leaked. May sleep.
    fn detach(&self, vm: &Vm, data: Self::VmData);

    /// Called once for every shadow page that `vm` holds when it is attached, with the VM's
    /// `mmu_lock` held. KVM drops the lock every few hundred pages of this walk, so calls of
    /// [`Accountant::account`] and [`Accountant::unaccount`] for the pages allocated and zapped
    /// meanwhile may come in between; each page is shown once, here or to `account`, before it
    /// is unaccounted. The stat already counts these pages, so `vm` only reads it.
    fn adopt(vm: &LockedVm, data: VmData<'_, Self>, role: PageRole, gfn: u64);

    /// Called once for every shadow page KVM allocates, after the page's role and gfn are set.
    fn account(vm: &AccountingVm, data: VmData<'_, Self>, role: PageRole, gfn: u64);

    /// Called once for every shadow page shown to the accountant that KVM zaps, with the role
    /// and gfn it was accounted or adopted with.
    fn unaccount(vm: &AccountingVm, data: VmData<'_, Self>, role: PageRole, gfn: u64);
}

/// The accountant `T` with the C ops table KVM knows it by, which its callbacks find it from.
struct Ops<T> {
    ops: bindings::kvm_mmu_page_accountant,
    accountant: T,
}

impl<T: Accountant> Ops<T> {
    const OPS: bindings::kvm_mmu_page_accountant = bindings::kvm_mmu_page_accountant {
        attach: Some(Self::attach),
        detach: Some(Self::detach),
        adopt: Some(Self::adopt),
        account: Some(Self::account),
        unaccount: Some(Self::unaccount),
    };

    /// # Safety
    ///
    /// `acct` must be the `ops` field of an `Ops<T>` that lives for all of `'a`.
    unsafe fn from_ops<'a>(acct: *const bindings::kvm_mmu_page_accountant) -> &'a Self {
        // SAFETY: Guaranteed by the caller.
        unsafe { &*container_of!(acct, Self, ops) }
    }

    /// # Safety
    ///
    /// Only to be called by KVM as a `kvm_mmu_page_accountant` callback of `Ops<T>`.
    unsafe extern "C" fn attach(
        acct: *const bindings::kvm_mmu_page_accountant,
        vm: *const bindings::kvm_mmu_accountant_vm,
    ) -> *mut c_void {
        // SAFETY: KVM passes the accountant that `Registration::<T>::new()` registered, an `Ops<T>`
        // that stays alive until unregistered, and a VM that lives for the call.
        let (this, vm) = unsafe { (Self::from_ops(acct), Vm::from_raw(vm)) };
        match this.accountant.attach(vm) {
            Ok(data) => data.into_foreign(),
            Err(err) => err.to_ptr(),
        }
    }

    /// # Safety
    ///
    /// Only to be called by KVM as a `kvm_mmu_page_accountant` callback of `Ops<T>`.
    unsafe extern "C" fn detach(
        acct: *const bindings::kvm_mmu_page_accountant,
        vm: *const bindings::kvm_mmu_accountant_vm,
    ) {
        // SAFETY: As in `attach()`.
        let (this, vm) = unsafe { (Self::from_ops(acct), Vm::from_raw(vm)) };
        // SAFETY: KVM detaches only a VM that `attach()` succeeded for, once, with `priv` set to
        // what `into_foreign()` returned there, and after its last page callback for the VM.
        let data = unsafe { T::VmData::from_foreign(vm.data()) };
        this.accountant.detach(vm, data)
    }

    /// # Safety
    ///
    /// Only to be called by KVM as a page callback of `Ops<T>`, for a VM that `attach()`
    /// succeeded for and that is not detached yet.
    unsafe fn data<'a>(vm: &'a Vm) -> VmData<'a, T> {
        // SAFETY: `priv` is what `attach()` returned from `into_foreign()`, and `detach()`, which
        // takes it back, only runs after the last page callback. KVM tells a failed `attach()` by
        // `IS_ERR()`, which no pointer from `into_foreign()` is: those point to allocations, never
        // to the last page of the address space.
        unsafe { T::VmData::borrow(vm.data()) }
    }

    /// # Safety
    ///
    /// Only to be called by KVM as a `kvm_mmu_page_accountant` callback of `Ops<T>`.
    unsafe extern "C" fn adopt(
        vm: *const bindings::kvm_mmu_accountant_vm,
        role: bindings::kvm_mmu_page_role,
        gfn: bindings::gfn_t,
    ) {
        // SAFETY: KVM makes page callbacks with the VM's `mmu_lock` held for write until the call
        // returns, for a VM being attached.
        let (vm, data) = unsafe {
            let vm = LockedVm::from_raw(vm);
            (vm, Self::data(vm))
        };
        T::adopt(vm, data, PageRole(role), gfn)
    }

    /// # Safety
    ///
    /// Only to be called by KVM as a `kvm_mmu_page_accountant` callback of `Ops<T>`.
    unsafe extern "C" fn account(
        vm: *const bindings::kvm_mmu_accountant_vm,
        role: bindings::kvm_mmu_page_role,
        gfn: bindings::gfn_t,
    ) {
        // SAFETY: As in `adopt()`, for a call that must move the stat by one.
        let (vm, data) = unsafe {
            let vm = AccountingVm::from_raw(vm);
            (vm, Self::data(vm))
        };
        T::account(vm, data, PageRole(role), gfn)
    }

    /// # Safety
    ///
    /// Only to be called by KVM as a `kvm_mmu_page_accountant` callback of `Ops<T>`.
    unsafe extern "C" fn unaccount(
        vm: *const bindings::kvm_mmu_accountant_vm,
        role: bindings::kvm_mmu_page_role,
        gfn: bindings::gfn_t,
    ) {
        // SAFETY: As in `adopt()`, for a call that must move the stat by one.
        let (vm, data) = unsafe {
            let vm = AccountingVm::from_raw(vm);
            (vm, Self::data(vm))
        };
        T::unaccount(vm, data, PageRole(role), gfn)
    }
}

/// Keeps the accountant `T` registered with KVM until dropped.
///
/// Leaking a `Registration` is sound: the accountant's memory is then never freed, and as the
/// owning module goes, after its exit function and before its code is freed, KVM unregisters the
/// accountant itself, with a warning, detaching every VM with [`Accountant::detach`], which drops
/// the VM's data. So per-VM data that refers to the module's code, such as debugfs files whose
/// operations are the module's, never outlives the module, leaked or not.
///
/// # Invariants
///
/// `ops.ops` is registered with KVM, at this address, for as long as the `Registration` exists.
pub struct Registration<T: Accountant> {
    ops: Pin<KBox<Ops<T>>>,
}

impl<T: Accountant> Registration<T> {
    /// Hands the accounting of every VM, existing and future, to `accountant`, once it has
    /// attached the existing ones.
    ///
    /// Fails with `EBUSY` if another accountant is registered.
    pub fn new(module: &'static ThisModule, accountant: T) -> Result<Self> {
        let ops = KBox::pin(
            Ops {
                ops: Ops::<T>::OPS,
                accountant,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: `ops` is pinned and freed only by `drop()`, after it is unregistered, or never.
        // Its callbacks are `T`'s, instantiated in the crate that calls this, which is `module`:
        // safe code can only get a `&ThisModule` of its own. So, should `self` be leaked, KVM
        // unregisters them before their code is freed, and calls `detach()` for every VM first,
        // with `T`, which the leak keeps alive, and the VM's data, which KVM holds: each VM's
        // data is dropped, as on unregistration. A wrong count from `T` is no memory unsafety:
        // KVM restores its own. Sleeping in atomic context is, as everywhere in the kernel's Rust,
        // left to `T` and to tools such as klint.
        to_result(unsafe {
            bindings::__kvm_mmu_register_page_accountant(&ops.ops, module.as_ptr())
        })?;
        // INVARIANT: `ops.ops` has just been registered at this address.
        Ok(Self { ops })
    }

    /// The accountant.
    pub fn accountant(&self) -> &T {
        &self.ops.accountant
    }
}

impl<T: Accountant> Drop for Registration<T> {
    /// Detaches every VM and hands the accounting back to KVM; no CPU runs `T`'s callbacks once
    /// this returns.
    fn drop(&mut self) {
        // SAFETY: By the type invariant `self.ops.ops` is the registered accountant, at the
        // address it was registered with.
        unsafe { bindings::kvm_mmu_unregister_page_accountant(&self.ops.ops) };
    }
}
