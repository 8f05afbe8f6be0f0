// SPDX-License-Identifier: GPL-2.0

//! Shadow pages by role: counted one event at a time, summed and formatted only when read.
//!
//! A bucket holds the pages of one combination of the role bits that say where a page is:
//! its level, whether it is direct, whether it belongs to an L2 guest and whether to SMM.
//! Documentation/shadow-page-breakdown.rst describes the files this is formatted into.

use core::{
    fmt,
    sync::atomic::{
        AtomicU64,
        Ordering::{Acquire, Relaxed, Release},
    },
};

use crate::kvm::PageRole;
use kernel::{
    error::{code::EINVAL, Result},
    prelude::kunit_tests,
};

/// One bucket per value of `level | direct << 3 | guest_mode << 4 | smm << 5`.
pub(crate) const NR_BUCKETS: usize = 64;

const PAGE_SIZE: u64 = 4096;

// The bits of `union kvm_mmu_page_role` that pick a bucket: `level` (its low three bits, as
// levels go up to 5), `direct`, `guest_mode` and the low bit of `smm`.
const ROLE_BUCKET_BITS: u32 = 0x7 | 1 << 7 | 1 << 17 | 1 << 24;
// Multiplying the masked role by this moves bits 0-2, 7, 17 and 24 to bits 58-63, in that order,
// with no two partial products overlapping there or carrying into them; the KUnit test below
// checks every combination.
const ROLE_BUCKET_MAGIC: u64 = 1 << 58 | 1 << 54 | 1 << 45 | 1 << 39;

/// The bucket of a page with `role`: four instructions, as it runs on every shadow page event.
#[inline(always)]
pub(crate) fn bucket_of(role: PageRole) -> usize {
    ((u64::from(role.word() & ROLE_BUCKET_BITS)).wrapping_mul(ROLE_BUCKET_MAGIC) >> 58) as usize
}

fn level(bucket: usize) -> usize {
    bucket & 7
}

fn direct(bucket: usize) -> usize {
    bucket >> 3 & 1
}

fn guest_mode(bucket: usize) -> usize {
    bucket >> 4 & 1
}

fn smm(bucket: usize) -> usize {
    bucket >> 5 & 1
}

/// Host memory that KVM allocates for a shadow page of `bucket`: the page table, plus, for pages
/// that shadow a guest page table of level 1 to 3, a page of `shadowed_translation` (see
/// `kvm_mmu_alloc_shadow_page()`). The `struct kvm_mmu_page` header is left out.
pub(crate) fn page_bytes(bucket: usize) -> u64 {
    if direct(bucket) == 0 && level(bucket) <= 3 {
        2 * PAGE_SIZE
    } else {
        PAGE_SIZE
    }
}

/// Adds one to a counter that only one CPU at a time writes, and others may read.
///
/// A relaxed load and store, not an atomic add: the writer holds the VM's `mmu_lock`, so this
/// is C's `WRITE_ONCE(x, x + 1)`, inline, without a locked instruction.
#[inline(always)]
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

/// The counters of one VM.
///
/// Written by the VM's shadow page events, which KVM serializes with the VM's `mmu_lock`, and
/// read at any time by the debugfs files. Sums may be momentarily off while the VM runs; each
/// counter is exact.
pub(crate) struct Counters {
    /// Pages found in the VM when it was attached.
    found: [AtomicU64; NR_BUCKETS],
    allocated: [AtomicU64; NR_BUCKETS],
    zapped: [AtomicU64; NR_BUCKETS],
    peak: AtomicU64,
}

impl Counters {
    pub(crate) const fn new() -> Self {
        Self {
            found: [const { AtomicU64::new(0) }; NR_BUCKETS],
            allocated: [const { AtomicU64::new(0) }; NR_BUCKETS],
            zapped: [const { AtomicU64::new(0) }; NR_BUCKETS],
            peak: AtomicU64::new(0),
        }
    }

    /// A page the VM held when it was attached, which holds `pages` pages now, counting those not
    /// shown yet. KVM may allocate and zap other pages between two of these.
    pub(crate) fn found(&self, bucket: usize, pages: u64) {
        bump(&self.found[bucket]);
        self.raise_peak(pages);
    }

    #[inline(always)]
    fn raise_peak(&self, pages: u64) {
        if pages > self.peak.load(Relaxed) {
            self.peak.store(pages, Relaxed);
        }
    }

    /// A page allocated, after which the VM holds `pages` pages.
    #[inline(always)]
    pub(crate) fn allocated(&self, bucket: usize, pages: u64) {
        bump(&self.allocated[bucket]);
        self.raise_peak(pages);
    }

    /// A page zapped.
    ///
    /// A release store, a plain store on x86: a reader that sees this zap sees the find or
    /// allocation of the page too, see [`Snapshot::add`].
    #[inline(always)]
    pub(crate) fn zapped(&self, bucket: usize) {
        let zapped = &self.zapped[bucket];
        zapped.store(zapped.load(Relaxed).wrapping_add(1), Release);
    }

    /// The most pages the VM held since it was attached or its peak was last reset.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Relaxed)
    }

    /// Sets the peak to the pages held now.
    ///
    /// Not under the VM's `mmu_lock`: an allocation that raises the peak at the same time may
    /// be forgotten by the reset, or undo it, as Documentation/shadow-page-breakdown.rst says.
    pub(crate) fn reset_peak(&self) {
        let mut now = Snapshot::default();
        now.add(self);
        self.peak.store(now.pages(), Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.add(self);
        snapshot
    }
}

/// The counters of one VM, or their sums over several, as read at one time.
///
/// Without the peak: the sum of several VMs' peaks is the peak of nothing, as the VMs peak at
/// different times, and it drops when one of them goes.
pub(crate) struct Snapshot {
    found: [u64; NR_BUCKETS],
    allocated: [u64; NR_BUCKETS],
    zapped: [u64; NR_BUCKETS],
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            found: [0; NR_BUCKETS],
            allocated: [0; NR_BUCKETS],
            zapped: [0; NR_BUCKETS],
        }
    }
}

impl Snapshot {
    /// Adds a VM's counters.
    pub(crate) fn add(&mut self, counters: &Counters) {
        for bucket in 0..NR_BUCKETS {
            // The zaps first, with an acquire load that pairs with the release store of
            // `Counters::zapped()`: a page is found or allocated before it is zapped, under the
            // VM's `mmu_lock`, so the finds and allocations loaded after it count every page that
            // the zaps loaded undo, and the bucket cannot read below zero. Loaded the other way
            // round, an allocation and its zap made between the two loads would make it wrap.
            let zapped = counters.zapped[bucket].load(Acquire);
            self.found[bucket] += counters.found[bucket].load(Relaxed);
            self.allocated[bucket] += counters.allocated[bucket].load(Relaxed);
            self.zapped[bucket] += zapped;
        }
    }

    /// Pages of `bucket` held when read. [`Snapshot::add`] loads the counters so that this cannot
    /// go below zero; should a bug elsewhere make it, it wraps rather than panics.
    fn bucket_pages(&self, bucket: usize) -> u64 {
        self.found[bucket]
            .wrapping_add(self.allocated[bucket])
            .wrapping_sub(self.zapped[bucket])
    }

    fn sum(&self, f: impl Fn(usize) -> u64) -> u64 {
        (0..NR_BUCKETS).map(f).fold(0, u64::wrapping_add)
    }

    pub(crate) fn pages(&self) -> u64 {
        self.sum(|bucket| self.bucket_pages(bucket))
    }

    /// The `pages` file: a header, then one line per bucket that holds pages or saw events.
    pub(crate) fn write_pages(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "level direct guest_mode smm pages allocated zapped bytes"
        )?;
        for bucket in 0..NR_BUCKETS {
            let pages = self.bucket_pages(bucket);
            if pages == 0 && self.allocated[bucket] == 0 && self.zapped[bucket] == 0 {
                continue;
            }
            writeln!(
                f,
                "{} {} {} {} {} {} {} {}",
                level(bucket),
                direct(bucket),
                guest_mode(bucket),
                smm(bucket),
                pages,
                self.allocated[bucket],
                self.zapped[bucket],
                pages.wrapping_mul(page_bytes(bucket))
            )?;
        }
        Ok(())
    }

    /// The `totals` file: one `key value` line per key, with a VM's `peak` after its `pages`.
    pub(crate) fn write_totals(
        &self,
        f: &mut fmt::Formatter<'_>,
        peak: Option<u64>,
    ) -> fmt::Result {
        let pages = self.pages();
        writeln!(f, "pages {pages}")?;
        if let Some(peak) = peak {
            writeln!(f, "peak {peak}")?;
        }
        writeln!(f, "allocated {}", self.sum(|bucket| self.allocated[bucket]))?;
        writeln!(f, "zapped {}", self.sum(|bucket| self.zapped[bucket]))?;
        writeln!(
            f,
            "bytes {}",
            self.sum(|bucket| self.bucket_pages(bucket).wrapping_mul(page_bytes(bucket)))
        )?;
        writeln!(f, "page_table_bytes {}", pages.wrapping_mul(PAGE_SIZE))
    }
}

/// Checks that a write of `len` bytes to a `peak` file asks for a reset: `0`, optionally with a
/// trailing newline. `copy` copies the bytes written into the buffer it is given, which is only
/// as long as a reset, so that a longer write fails before anything is copied.
pub(crate) fn check_peak_reset(len: usize, copy: impl FnOnce(&mut [u8]) -> Result) -> Result {
    let mut buf = [0u8; 2];
    let written = buf.get_mut(..len).ok_or(EINVAL)?;
    copy(written)?;
    match &*written {
        b"0" | b"0\n" => Ok(()),
        _ => Err(EINVAL),
    }
}

#[kunit_tests(kvm_shadow_stats_breakdown)]
mod tests {
    use super::*;
    use kernel::{error::code::EFAULT, str::CString};

    fn role(word: u32) -> PageRole {
        PageRole::from_word(word)
    }

    fn role_of(level: u32, direct: u32, guest_mode: u32, smm: u32) -> PageRole {
        role(level | direct << 7 | guest_mode << 17 | smm << 24)
    }

    /// The role of a page in `bucket`, built from the bit positions of KVM's header.
    fn role_in(bucket: usize) -> PageRole {
        role_of(
            level(bucket) as u32,
            direct(bucket) as u32,
            guest_mode(bucket) as u32,
            smm(bucket) as u32,
        )
    }

    #[test]
    fn every_role_has_its_own_bucket() {
        for bucket in 0..NR_BUCKETS {
            let page = role_in(bucket);
            assert_eq!(bucket_of(page), bucket);
            assert_eq!(page.level(), level(bucket) as u32);
            assert_eq!(page.direct(), direct(bucket) == 1);
            assert_eq!(page.guest_mode(), guest_mode(bucket) == 1);
            assert_eq!(page.smm(), smm(bucket) == 1);
        }
    }

    #[test]
    fn other_role_bits_do_not_move_a_page() {
        // has_4_byte_gpte, quadrant, access, invalid ... cr4_smep and the unused bits: all that
        // levels 1 to 5, direct, guest_mode and smm 0 or 1 leave clear.
        let others: u32 = 0x00fd_ff70;
        for bucket in 0..NR_BUCKETS {
            assert_eq!(bucket_of(role(role_in(bucket).word() | others)), bucket);
        }
    }

    #[test]
    fn bytes_follow_what_kvm_allocates() {
        // Indirect pages of level 1 to 3 have a shadowed_translation page, others do not.
        assert_eq!(page_bytes(bucket_of(role_of(1, 0, 0, 0))), 8192);
        assert_eq!(page_bytes(bucket_of(role_of(3, 0, 1, 0))), 8192);
        assert_eq!(page_bytes(bucket_of(role_of(4, 0, 0, 0))), 4096);
        assert_eq!(page_bytes(bucket_of(role_of(5, 0, 0, 1))), 4096);
        assert_eq!(page_bytes(bucket_of(role_of(1, 1, 0, 0))), 4096);
        assert_eq!(page_bytes(bucket_of(role_of(3, 1, 1, 1))), 4096);
    }

    struct Pages<'a>(&'a Snapshot);

    impl fmt::Display for Pages<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.write_pages(f)
        }
    }

    struct Totals<'a>(&'a Snapshot, Option<u64>);

    impl fmt::Display for Totals<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.write_totals(f, self.1)
        }
    }

    fn text(args: fmt::Arguments<'_>) -> Result<CString> {
        CString::try_from_fmt(args)
    }

    #[test]
    fn files_show_found_allocated_and_zapped_pages() -> Result {
        let vm = Counters::new();
        let root = bucket_of(role_of(4, 0, 0, 0));
        let leaf = bucket_of(role_of(1, 0, 0, 0));
        let direct_l2 = bucket_of(role_of(1, 1, 1, 0));
        vm.found(root, 1);
        vm.found(leaf, 2);
        vm.allocated(leaf, 3);
        vm.allocated(direct_l2, 4);
        vm.zapped(leaf);
        let snapshot = vm.snapshot();
        assert_eq!(snapshot.pages(), 3);
        assert_eq!(
            text(format_args!("{}", Pages(&snapshot)))?.to_bytes(),
            b"level direct guest_mode smm pages allocated zapped bytes\n\
              1 0 0 0 1 1 1 8192\n\
              4 0 0 0 1 0 0 4096\n\
              1 1 1 0 1 1 0 4096\n"
        );
        assert_eq!(
            text(format_args!("{}", Totals(&snapshot, Some(vm.peak()))))?.to_bytes(),
            b"pages 3\npeak 4\nallocated 2\nzapped 1\nbytes 16384\npage_table_bytes 12288\n"
        );
        assert_eq!(
            text(format_args!("{}", Totals(&snapshot, None)))?.to_bytes(),
            b"pages 3\nallocated 2\nzapped 1\nbytes 16384\npage_table_bytes 12288\n"
        );
        Ok(())
    }

    #[test]
    fn peak_is_kept_and_reset_to_the_pages_held() {
        let vm = Counters::new();
        let leaf = bucket_of(role_of(1, 0, 0, 0));
        vm.found(leaf, 1);
        vm.allocated(leaf, 2);
        vm.allocated(leaf, 3);
        vm.zapped(leaf);
        vm.allocated(leaf, 3);
        vm.zapped(leaf);
        vm.zapped(leaf);
        assert_eq!(vm.peak(), 3);
        vm.reset_peak();
        assert_eq!(vm.peak(), 1);
    }

    /// What `check_peak_reset()` makes of `written`, copied as a write would.
    fn peak_write(written: &[u8]) -> Result {
        check_peak_reset(written.len(), |buf| {
            buf.copy_from_slice(written);
            Ok(())
        })
    }

    #[test]
    fn only_a_zero_resets_the_peak() {
        assert_eq!(peak_write(b"0"), Ok(()));
        assert_eq!(peak_write(b"0\n"), Ok(()));
        for refused in [&b""[..], b"1", b"00", b"\n", b"0 ", b"00000", b"0\n\n\n\n"] {
            assert_eq!(peak_write(refused), Err(EINVAL));
        }
    }

    #[test]
    fn a_long_write_fails_before_it_is_copied() {
        let mut copied = false;
        let result = check_peak_reset(4096, |_| {
            copied = true;
            Ok(())
        });
        assert_eq!(result, Err(EINVAL));
        assert!(!copied);
    }

    #[test]
    fn a_failed_copy_fails_the_write() {
        assert_eq!(check_peak_reset(1, |_| Err(EFAULT)), Err(EFAULT));
    }

    #[test]
    fn all_vms_sum_up() {
        let (a, b) = (Counters::new(), Counters::new());
        let leaf = bucket_of(role_of(1, 0, 0, 0));
        a.found(leaf, 1);
        b.allocated(leaf, 1);
        b.allocated(leaf, 2);
        let mut all = Snapshot::default();
        all.add(&a);
        all.add(&b);
        assert_eq!(all.pages(), 3);
    }
}
