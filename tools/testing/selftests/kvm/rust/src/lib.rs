// SPDX-License-Identifier: GPL-2.0

//! Support for the `shadow_mmu_stats` selftest, which checks KVM x86's `mmu_shadow_pages` stat
//! against guests whose page tables it builds itself.
//!
//! - [`breakdown`]: what `kvm_shadow_stats.ko`'s breakdown of the shadow pages by role must say.
//! - [`guest`]: a long-mode guest with test-built page tables that touches chosen addresses.
//! - [`kvm_ext`]: the KVM ioctls `kvm-ioctls` lacks.
//! - [`host`]: which MMU KVM uses, from its module parameters.
//! - [`module`]: loading and unloading kernel modules.
//! - [`tap`]: kselftest-style TAP output.

pub mod breakdown;
pub mod guest;
pub mod host;
pub mod kvm_ext;
pub mod module;
pub mod tap;
