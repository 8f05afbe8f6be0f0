// SPDX-License-Identifier: GPL-2.0

//! Readers of the statistics KVM keeps for each VM and vCPU, for tools and tests alike.
//!
//! - [`stats`]: a typed reader of the binary stats file, the stable ABI.
//! - [`stats_fd`]: opening that file for a VM or vCPU fd (`KVM_GET_STATS_FD`).
//! - [`debugfs`]: a reader of KVM's stats in debugfs, globally and per VM.
//! - [`breakdown`]: a reader of where the shadow pages are, by role, per VM, as
//!   `kvm_shadow_stats.ko` keeps it in debugfs while it is loaded.

pub mod breakdown;
pub mod debugfs;
pub mod stats;
pub mod stats_fd;
