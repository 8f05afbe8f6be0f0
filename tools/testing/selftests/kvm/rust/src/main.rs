// SPDX-License-Identifier: GPL-2.0

//! `shadow_mmu_stats`: checks KVM x86's `mmu_shadow_pages` stat, which counts the shadow MMU's
//! pages (never the TDP MMU's), through the binary stats fd and debugfs, with guests whose page
//! tables this program builds so that it knows how many shadow pages they need.
//!
//! On the TDP MMU (`kvm_amd.npt=1`), the scenarios about shadow pages run their guest as an L2
//! under nested NPT, whose NPT tables, built by this program too, KVM shadows: the counts are
//! those of L1's NPT tables that L2 walks, in the L2 (`guest_mode`) buckets of the breakdown.
//!
//! While `kvm_shadow_stats.ko` is loaded, every scenario also checks the module's breakdown of
//! the shadow pages by role (Documentation/shadow-page-breakdown.rst) after each step: exact
//! buckets where the test knows its pages, events that explain every change, files that add
//! up. Those checks are a test of their own, reported after the scenario's and skipped, with
//! the reason, while the module is not loaded; in a boot that loaded it
//! (`KVM_SHADOW_STATS_EXPECTED=1`), they fail instead.
//!
//! Prints kselftest-style TAP and exits 0 if nothing failed, 1 if something did, 4 if every
//! scenario was skipped.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::raw::c_ulong;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use kvm_bindings::KVM_CAP_BINARY_STATS_FD;
use kvm_ioctls::{Cap, Kvm};
use kvm_stats::breakdown::{Pages, Role, Scope, ShadowStatsDebugfs};
use kvm_stats::debugfs::{KvmDebugfs, VmId};
use kvm_stats::stats::{StatBase, StatKind, StatUnit, Stats};
use kvm_stats::stats_fd::open_stats;
use shadow_mmu_stats_selftest::breakdown::{
    Held, after_oldest_zapped, check_files, check_sum, check_vm_files, check_zap, compare_held,
    found_by_role, needed_by_role, shadow_role, show, show_pages,
};
use shadow_mmu_stats_selftest::guest::{RunsAs, TestVm, TouchMapping};
use shadow_mmu_stats_selftest::host::{self, Paging};
use shadow_mmu_stats_selftest::kvm_ext::set_nr_mmu_pages;
use shadow_mmu_stats_selftest::module;
use shadow_mmu_stats_selftest::tap::{EXIT_FAIL, Outcome, TapWriter};

/// The stat under test, as named in the binary stats file and in debugfs.
const STAT: &str = "mmu_shadow_pages";

/// The stat of the pages KVM's page limit made it zap, oldest first.
const RECYCLED_STAT: &str = "mmu_recycled";

/// The lowest limit `KVM_SET_NR_MMU_PAGES` accepts (`KVM_MIN_ALLOC_MMU_PAGES`).
const MIN_MMU_PAGES_LIMIT: u64 = 64;

/// A limit above what any of these guests needs, whose memory has 16,384 pages, and whose
/// page tables, or L1's NPT tables, a few more than the 1,024 touches a guest makes at most.
const LIFTED_MMU_PAGES_LIMIT: u64 = 4096;

/// Shadow pages a zap may leave counted in a VM with one vCPU: the roots the vCPU still holds,
/// its current one and up to three cached previous ones, stay counted until it drops them.
const ROOTS_ONE_VCPU_MAY_HOLD: u64 = 4;

/// The accounting module, as loaded and unloaded by [`handover`].
const MODULE_NAME: &str = "kvm_shadow_stats";

/// With paging off, as SMM starts, KVM maps the SMM address space with four PAE roots, page
/// directories of one GiB each.
const SMM_PAE_ROOTS: u64 = 4;

/// The environment variable that names the module's file.
const MODULE_ENV: &str = "KVM_SHADOW_STATS_MODULE";

/// The environment variable set to 1 in a boot that loaded the module.
const EXPECTED_ENV: &str = "KVM_SHADOW_STATS_EXPECTED";

/// Why a scenario did not pass.
#[derive(Debug)]
enum NotPassed {
    Fail(String),
    Skip(String),
}

/// Any error from the library fails the scenario with the error's message.
impl<E: std::error::Error> From<E> for NotPassed {
    fn from(error: E) -> Self {
        Self::Fail(error.to_string())
    }
}

type ScenarioResult = Result<(), NotPassed>;

/// Fails the scenario with a formatted message unless the condition holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(NotPassed::Fail(format!($($message)+)));
        }
    };
}

/// A failure whose reason a check of [`shadow_mmu_stats_selftest::breakdown`] gave.
fn failed(reason: String) -> NotPassed {
    NotPassed::Fail(reason)
}

/// A scenario's checks of the module's breakdown, reported as a test of their own: made while
/// the module is loaded, skipped while it is not. The first failure stops them, not the
/// scenario, whose counts go on being checked.
struct BreakdownChecks {
    files: ShadowStatsDebugfs,
    made: usize,
    failure: Option<String>,
}

impl BreakdownChecks {
    /// The checks of a scenario about to run. In a boot that loaded the module (`expected`), they
    /// have failed already if its files are missing: skipped, they would pass the module's
    /// configuration untested.
    fn new(files: ShadowStatsDebugfs, expected: bool) -> Self {
        let failure = (expected && !files.is_present()).then(|| {
            format!(
                "no {}, though {EXPECTED_ENV}=1 says the boot loaded {MODULE_NAME}",
                files.root().display()
            )
        });
        Self {
            files,
            made: 0,
            failure,
        }
    }

    /// Makes `check` on the module's files if the module is loaded and no check failed yet,
    /// and returns what it gives, or `None` if it was not made or failed.
    fn run<T>(
        &mut self,
        check: impl FnOnce(&ShadowStatsDebugfs) -> Result<T, NotPassed>,
    ) -> Option<T> {
        if self.failure.is_some() || !module::is_loaded(MODULE_NAME) {
            return None;
        }
        self.made += 1;
        match check(&self.files) {
            Ok(value) => Some(value),
            Err(NotPassed::Fail(reason) | NotPassed::Skip(reason)) => {
                self.failure = Some(reason);
                None
            }
        }
    }

    /// How the checks went, given how the scenario went.
    fn outcome(&self, scenario: &Outcome) -> Outcome {
        match (scenario, &self.failure) {
            (_, Some(reason)) => Outcome::Fail(reason.clone()),
            (Outcome::Skip(reason), None) => Outcome::Skip(reason.clone()),
            _ if self.made == 0 => Outcome::Skip(format!(
                "{MODULE_NAME} is not loaded, so there is no breakdown to check"
            )),
            (Outcome::Fail(_), None) => Outcome::Skip(format!(
                "the scenario failed after {} breakdown checks, before the rest",
                self.made
            )),
            (Outcome::Pass, None) => Outcome::Pass,
        }
    }
}

/// A VM's breakdown as read after a step, before its peak was reset.
struct Breakdown {
    pages: Pages,
    peak: u64,
}

/// A reset's `0\n`, then newlines up to a page: longer than any reset.
const LONG_RESET: [u8; 4096] = {
    let mut bytes = [b'\n'; 4096];
    bytes[0] = b'0';
    bytes
};

/// Writes a `peak` file must refuse: all but `0` and `0\n`. The empty one too: neither
/// `vfs_write()` nor debugfs, in C or Rust, returns early on 0 bytes, so the module sees it.
const REFUSED_PEAK_WRITES: [&[u8]; 8] = [
    b"1",
    b"abc",
    b"-1",
    b"0x1",
    b"00000",
    b"0\n\n\n\n",
    b"",
    &LONG_RESET,
];

/// `bytes`, escaped, for a message; only the first few of many.
fn show_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 8;
    match bytes.get(..SHOWN) {
        Some(head) if bytes.len() > SHOWN => {
            format!("{} bytes \"{}...\"", bytes.len(), head.escape_ascii())
        }
        _ => format!("\"{}\"", bytes.escape_ascii()),
    }
}

/// Checks that nothing at the top resets `vm`'s `peak`: all VMs have no `peak` file, and their
/// `totals` and `pages` take no write.
fn check_top_resets_no_peak(files: &ShadowStatsDebugfs, vm: VmId, peak: u64) -> ScenarioResult {
    for name in ["peak", "totals", "pages"] {
        let path = files.dir(Scope::AllVms).join(name);
        let written = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut file| file.write(b"0"));
        match written {
            Ok(_) => {
                return Err(failed(format!(
                    "{}: a write of 0 succeeded, expected it to fail",
                    path.display()
                )));
            }
            Err(error) if name == "peak" && error.kind() != io::ErrorKind::NotFound => {
                return Err(failed(format!(
                    "{}: {error}, expected ENOENT: all VMs have no peak",
                    path.display()
                )));
            }
            Err(_) => {}
        }
        let now = files.peak(vm)?;
        ensure!(
            now == peak,
            "VM {vm}: the peak went from {peak} to {now} on a write of 0 to {}",
            path.display()
        );
    }
    Ok(())
}

/// Checks the writes `vm`'s `peak` file takes: nothing at the top changes it, each of
/// [`REFUSED_PEAK_WRITES`] fails with `EINVAL` and changes nothing, `0` sets the peak to the
/// `held` pages.
fn check_peak_reset(files: &ShadowStatsDebugfs, vm: VmId, held: u64) -> ScenarioResult {
    let peak = files.peak(vm)?;
    check_top_resets_no_peak(files, vm, peak)?;
    for bytes in REFUSED_PEAK_WRITES {
        let what = show_bytes(bytes);
        match files.write_peak(vm, bytes) {
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {}
            Err(error) => {
                return Err(failed(format!(
                    "{error}, expected EINVAL for a write of {what}"
                )));
            }
            Ok(()) => {
                return Err(failed(format!(
                    "VM {vm}: a write of {what} to the peak succeeded, expected EINVAL"
                )));
            }
        }
        let unchanged = files.peak(vm)?;
        ensure!(
            unchanged == peak,
            "VM {vm}: the peak went from {peak} to {unchanged} on a refused write of {what}"
        );
    }
    files.reset_peak(vm)?;
    let reset = files.peak(vm)?;
    ensure!(
        reset == held,
        "VM {vm}: the peak is {reset} after a write of 0, expected the {held} pages held"
    );
    Ok(())
}

/// The files of all VMs, checked against the files of each VM and KVM's global stat `count`:
/// every VM KVM lists has a directory and no other does, and the buckets are the VMs' added
/// up.
fn all_vms_breakdown(
    files: &ShadowStatsDebugfs,
    debugfs: &KvmDebugfs,
    count: u64,
) -> Result<Pages, NotPassed> {
    let list = |vms: &[VmId]| {
        let names: Vec<String> = vms.iter().map(VmId::to_string).collect();
        format!("[{}]", names.join(", "))
    };
    let kvm_vms = debugfs.vms()?;
    let vms = files.vms()?;
    ensure!(
        vms == kvm_vms,
        "{} has directories for VMs {}, {} for VMs {}",
        files.root().display(),
        list(&vms),
        debugfs.root().display(),
        list(&kvm_vms)
    );
    let mut per_vm = Vec::new();
    for &vm in &vms {
        per_vm.push(files.pages(Scope::Vm(vm))?);
    }
    let all = files.pages(Scope::AllVms)?;
    check_sum(&all, &per_vm).map_err(failed)?;
    let totals = files.all_vms_totals()?;
    check_files(&all, &totals, count, &format!("global debugfs {STAT}"))
        .map_err(|reason| failed(format!("all VMs: {reason}")))?;
    Ok(all)
}

/// What every scenario needs from the machine it runs on.
struct Host {
    kvm: Kvm,
    debugfs: KvmDebugfs,
    /// The MMU KVM uses, or why this is a configuration the scenarios do not model.
    paging: Result<Paging, String>,
    /// Whether KVM offers its guests nested SVM with NPT, for an L2 under nested NPT.
    nested_npt: Result<bool, String>,
    /// The kernel log from the start of the program on, see [`Host::check_kernel_log`].
    kmsg: File,
}

impl Host {
    /// The host, or why no scenario can run on it.
    fn probe() -> Result<Self, String> {
        let kvm = Kvm::new().map_err(|error| format!("cannot open /dev/kvm: {error}"))?;
        if kvm.check_extension_raw(c_ulong::from(KVM_CAP_BINARY_STATS_FD)) <= 0 {
            return Err("KVM lacks KVM_CAP_BINARY_STATS_FD".to_owned());
        }
        let debugfs = KvmDebugfs::default();
        if !debugfs.is_present() {
            return Err("no KVM directory in debugfs: is debugfs mounted?".to_owned());
        }
        let mut kmsg = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .map_err(|error| format!("cannot open /dev/kmsg: {error}"))?;
        kmsg.seek(SeekFrom::End(0))
            .map_err(|error| format!("cannot skip the kernel log so far: {error}"))?;
        Ok(Self {
            nested_npt: host::has_nested_npt(&kvm),
            kvm,
            debugfs,
            paging: host::paging(),
            kmsg,
        })
    }

    /// Fails on a report, logged since the last call, that KVM caught a shadow page accountant
    /// miscounting: KVM puts its own count back, so with an accountant loaded the log shows what
    /// the count cannot.
    fn check_kernel_log(&self) -> ScenarioResult {
        let mut record = [0u8; 8192];
        loop {
            match (&self.kmsg).read(&mut record) {
                Ok(0) => return Ok(()),
                Ok(len) => {
                    let text = String::from_utf8_lossy(&record[..len]);
                    let message = text.split_once(';').map_or(&*text, |(_, m)| m).trim_end();
                    ensure!(
                        !message.contains(" left mmu_shadow_pages at "),
                        "KVM caught a shadow page accountant miscounting: {message}"
                    );
                }
                // Records overwritten before they were read: go on after them.
                Err(error) if error.raw_os_error() == Some(libc::EPIPE) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The MMU KVM uses; skips the scenario if it is none the scenarios model.
    fn paging(&self) -> Result<Paging, NotPassed> {
        self.paging.clone().map_err(NotPassed::Skip)
    }

    /// Skips the scenario unless KVM uses the `wanted` MMU.
    fn require(&self, wanted: Paging) -> ScenarioResult {
        match self.paging()? {
            actual if actual == wanted => Ok(()),
            actual => Err(NotPassed::Skip(format!(
                "needs {wanted}, KVM uses {actual}"
            ))),
        }
    }

    /// Which guest touches the addresses of a scenario about shadow pages, for KVM to build
    /// them: the guest itself on shadow paging; on the TDP MMU, whose pages are no shadow pages,
    /// an L2 under nested NPT, whose NPT tables KVM shadows. Skips the scenario if the TDP MMU
    /// is in use and KVM offers no nested SVM with NPT.
    fn shadow_workload(&self) -> Result<RunsAs, NotPassed> {
        match self.paging()? {
            Paging::Shadow => Ok(RunsAs::L1),
            Paging::TdpMmu => match &self.nested_npt {
                Ok(true) => Ok(RunsAs::L2),
                Ok(false) => Err(NotPassed::Skip(format!(
                    "needs shadow paging (kvm_amd.npt=N) or an L2 under nested NPT, KVM uses \
                     {} and offers no nested SVM with NPT (kvm_amd.nested=N or no SVM in the CPU)",
                    Paging::TdpMmu
                ))),
                Err(reason) => Err(NotPassed::Fail(reason.clone())),
            },
        }
    }

    /// The sum over all VMs that debugfs gives, checked against the per-VM files, and the
    /// breakdown of all VMs against the VMs'.
    fn global_stat(&self, checks: &mut BreakdownChecks) -> Result<u64, NotPassed> {
        let global = sane(self.debugfs.global(STAT)?, "global debugfs")?;
        let sum = self.debugfs.sum_over_vms(STAT)?;
        ensure!(
            global == sum,
            "global debugfs {STAT} is {global}, the per-VM files add up to {sum}"
        );
        checks.run(|files| all_vms_breakdown(files, &self.debugfs, global));
        Ok(global)
    }

    /// How many VMs debugfs shows, to tell whether this program's are the only ones.
    fn vm_count(&self) -> Result<usize, NotPassed> {
        Ok(self.debugfs.vms()?.len())
    }
}

/// Rejects a count that only a decrement below zero could produce: the stat is a `u64` that
/// KVM decrements, so a negative count shows up as a number near 2^64.
fn sane(count: u64, source: &str) -> Result<u64, NotPassed> {
    ensure!(
        i64::try_from(count).is_ok(),
        "{STAT} from {source} is {count:#x}: a count that went below zero"
    );
    Ok(count)
}

/// Checks a shadow paging count against the `needed` shadow pages the guest's walks require.
///
/// KVM shadows each page table the walks reach once, the guest's or for an L2 L1's NPT
/// tables, as they are all reached with the same access rights, and backs each 2 MiB guest or
/// NPT page with one direct page: exactly `needed`.
/// A page KVM counted twice, or failed to count, is off by one; an accountant's miscount shows
/// in the kernel log instead, as KVM puts its own count back (see [`Host::check_kernel_log`]).
fn check_shadow_count(count: u64, needed: u64) -> ScenarioResult {
    ensure!(
        count == needed,
        "{STAT} is {count}, expected the {needed} shadow pages the guest's walks need"
    );
    Ok(())
}

/// A test VM together with its binary stats file and its debugfs directories.
struct ObservedVm {
    // Dropped first: the stats file holds a reference to the VM that would delay its
    // destruction past the drop of `guest`.
    stats: Stats<File>,
    guest: TestVm,
    pid: u32,
    vm_fd: RawFd,
    /// The pages `kvm_shadow_stats` found in the VM when it attached it, by role: none if the
    /// VM was created while the module was loaded, `None` until read after a load.
    found: RefCell<Option<BTreeMap<Role, i128>>>,
}

impl ObservedVm {
    fn new(
        host: &Host,
        mapping: TouchMapping,
        touches: u64,
        runs_as: RunsAs,
    ) -> Result<Self, NotPassed> {
        let attached = module::is_loaded(MODULE_NAME);
        let guest = TestVm::new(&host.kvm, mapping, touches, runs_as)?;
        let stats = open_stats(guest.vm_fd())?;
        let vm_fd = guest.vm_fd().as_raw_fd();
        Ok(Self {
            stats,
            guest,
            pid: std::process::id(),
            vm_fd,
            found: RefCell::new(attached.then(BTreeMap::new)),
        })
    }

    fn id(&self) -> VmId {
        VmId::new(self.pid, self.vm_fd)
    }

    /// Forgets the pages found at attach, as the module was loaded or unloaded.
    fn module_changed(&self) {
        self.found.replace(None);
    }

    /// Whether KVM's shadow pages for the guest are an L2's.
    fn guest_mode(&self) -> bool {
        self.guest.runs_as() == RunsAs::L2
    }

    /// The shadow pages the guest's first run needs, by role, if KVM shadows its page tables,
    /// or L1's NPT tables for its L2. A large touch needs a direct page either way: of its 2 MiB
    /// guest page, or of the 2 MiB NPT page that maps L2's 2 MiB page.
    fn needed(&self) -> Held {
        let large_pages = match self.guest.mapping() {
            TouchMapping::Small => 0,
            TouchMapping::Large => self.guest.touches(),
        };
        needed_by_role(
            self.guest.shadowed_table_levels(),
            large_pages,
            self.guest_mode(),
        )
    }

    /// The role of the root of KVM's shadow pages for the guest, which its vCPU holds.
    fn root_role(&self) -> Role {
        let level = self.guest.shadowed_table_levels().first().copied();
        shadow_role(level.unwrap_or(0), false, self.guest_mode())
    }

    /// What `needed` counts, in words, for notes.
    fn shadowed_tables(&self) -> String {
        let tables = match self.guest.runs_as() {
            RunsAs::L1 => "guest page tables",
            RunsAs::L2 => "L1 NPT tables (of L2)",
        };
        format!("{} {tables}", self.guest.shadowed_table_pages())
    }

    /// The VM's stat, read through the stats fd and checked against its debugfs file.
    fn stat(&self, host: &Host, checks: &mut BreakdownChecks) -> Result<u64, NotPassed> {
        Ok(self.observe(host, checks)?.0)
    }

    /// The VM's stat, as [`Self::stat`] reads it, and while the module is loaded its breakdown,
    /// checked after the step: see [`Self::check_breakdown`].
    fn observe(
        &self,
        host: &Host,
        checks: &mut BreakdownChecks,
    ) -> Result<(u64, Option<Breakdown>), NotPassed> {
        let count = self.read_stat(host)?;
        let breakdown = checks.run(|files| self.check_breakdown(host, files, count));
        Ok((count, breakdown))
    }

    /// Reads and checks the VM's breakdown after a step in which the VM came to hold `count`
    /// pages: the buckets add up to the count and to `totals`, events explain every change
    /// since the module attached the VM, the peak takes a reset and nothing else, and the files
    /// of all VMs still add up.
    fn check_breakdown(
        &self,
        host: &Host,
        files: &ShadowStatsDebugfs,
        count: u64,
    ) -> Result<Breakdown, NotPassed> {
        let (id, scope) = (self.id(), Scope::Vm(self.id()));
        ensure!(
            files.dir(scope).is_dir(),
            "VM {id} has no directory in {} while {MODULE_NAME} is loaded",
            files.root().display()
        );
        let pages = files.pages(scope)?;
        let totals = files.vm_totals(id)?;
        let peak = files.peak(id)?;
        check_vm_files(&pages, &totals, peak, count, STAT)
            .map_err(|reason| failed(format!("VM {id}: {reason}")))?;
        let found = found_by_role(&pages);
        let mut known = self.found.borrow_mut();
        match &*known {
            None => *known = Some(found),
            Some(before) => ensure!(
                *before == found,
                "VM {id}: pages + zapped - allocated, the pages found when the module attached \
                 the VM, went from {} to {} by role: {}",
                show(before),
                show(&found),
                show_pages(&pages)
            ),
        }
        check_peak_reset(files, id, count)?;
        all_vms_breakdown(files, &host.debugfs, host.debugfs.global(STAT)?)?;
        Ok(Breakdown { pages, peak })
    }

    fn read_stat(&self, host: &Host) -> Result<u64, NotPassed> {
        host.check_kernel_log()?;
        let from_fd = sane(self.stats.read_single(STAT)?, "the stats fd")?;
        let from_debugfs = sane(
            host.debugfs.vm_stat(self.pid, self.vm_fd, STAT)?,
            "per-VM debugfs",
        )?;
        ensure!(
            from_fd == from_debugfs,
            "{STAT} is {from_fd} in the stats fd but {from_debugfs} in per-VM debugfs"
        );
        Ok(from_fd)
    }

    /// Checks the stat after the guest's first run against what the MMU in use must have
    /// counted: a shadow page per page table walked that KVM shadows (the guest's, or L1's NPT
    /// tables for an L2) and per 2 MiB page, or nothing at all for a guest by itself on the TDP
    /// MMU; and the breakdown, which must hold exactly those pages in their buckets, none of
    /// them zapped on the way.
    fn check_after_run(
        &self,
        host: &Host,
        checks: &mut BreakdownChecks,
    ) -> Result<(u64, Option<Breakdown>), NotPassed> {
        let paging = host.paging()?;
        let (count, breakdown) = self.observe(host, checks)?;
        let tdp_mmu_alone = paging == Paging::TdpMmu && self.guest.runs_as() == RunsAs::L1;
        let needed = if tdp_mmu_alone {
            ensure!(count == 0, "{STAT} is {count} under the TDP MMU");
            Held::new()
        } else {
            let needed = self.needed();
            check_shadow_count(count, needed.values().sum())?;
            needed
        };
        if let Some(Breakdown { pages, .. }) = &breakdown {
            checks.run(|_| {
                let id = self.id();
                compare_held(&format!("VM {id}"), &needed, &pages.held()).map_err(failed)?;
                ensure!(
                    pages.zapped() == 0,
                    "VM {id}: {} pages zapped in a run that builds each page once: {}",
                    pages.zapped(),
                    show_pages(pages)
                );
                if tdp_mmu_alone {
                    ensure!(
                        pages.buckets().is_empty(),
                        "VM {id}: the TDP MMU's pages are not shadow pages, yet the breakdown \
                         lists {}",
                        show_pages(pages)
                    );
                }
                Ok(())
            });
        }
        Ok((count, breakdown))
    }
}

/// What a scenario leaves besides its outcome: notes, printed as TAP diagnostics whatever the
/// outcome, and its breakdown checks, reported as a test of their own.
struct Record {
    notes: Vec<String>,
    breakdown: BreakdownChecks,
}

/// One shadow page per page table that KVM shadows: the guest's own on shadow paging; on the
/// TDP MMU, L1's NPT tables, of which L2's touches take one page table each, as the guest's
/// touches take one of their own page tables each.
fn shadow_paging(host: &Host, record: &mut Record) -> ScenarioResult {
    let runs_as = host.shadow_workload()?;
    ensure!(
        host.vm_count()? == 0,
        "another VM exists, so the global sum cannot be compared"
    );
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 48, runs_as)?;
    vm.guest.run()?;
    let (count, _) = vm.check_after_run(host, &mut record.breakdown)?;
    record.notes.push(format!(
        "{} walked, {STAT} {count}; needed by role: {}",
        vm.shadowed_tables(),
        show(&vm.needed())
    ));
    let global = host.global_stat(&mut record.breakdown)?;
    ensure!(
        global == count,
        "global debugfs {STAT} is {global}, the only VM has {count}"
    );
    Ok(())
}

fn tdp_mmu(host: &Host, record: &mut Record) -> ScenarioResult {
    host.require(Paging::TdpMmu)?;
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 48, RunsAs::L1)?;
    // Several runs, each checked, as the TDP MMU keeps its pages across runs.
    for _ in 0..3 {
        vm.guest.run()?;
        vm.check_after_run(host, &mut record.breakdown)?;
    }
    let global = host.global_stat(&mut record.breakdown)?;
    ensure!(global == 0, "global debugfs {STAT} is {global}");
    record.notes.push(format!("{STAT} stayed 0 over 3 runs"));
    Ok(())
}

fn direct_pages(host: &Host, record: &mut Record) -> ScenarioResult {
    let runs_as = host.shadow_workload()?;
    let large_pages = 12;
    let mut vm = ObservedVm::new(host, TouchMapping::Large, large_pages, runs_as)?;
    vm.guest.run()?;
    // Each 2 MiB page backed by 4 KiB host pages needs a direct level-1 shadow page of its own,
    // besides the shadows of the tables: the guest's own 2 MiB pages on shadow paging, the
    // 2 MiB NPT pages that map L2's under nested NPT, where L2's own page sizes do not matter.
    let (count, _) = vm.check_after_run(host, &mut record.breakdown)?;
    record.notes.push(format!(
        "{} and {large_pages} 2 MiB pages walked, {STAT} {count}; needed by role: {}",
        vm.shadowed_tables(),
        show(&vm.needed())
    ));
    Ok(())
}

/// Checks the breakdown after a step that only zapped: `zap` says what zapped, `lost` how many
/// pages the VM lost, `recycled`, for a zap by the page limit, how far KVM's `mmu_recycled`
/// moved, which counts the pages that limit made KVM zap.
fn check_zap_step(
    zap: &str,
    before: &Breakdown,
    after: &Breakdown,
    lost: u64,
    recycled: Option<u64>,
) -> ScenarioResult {
    check_zap(&before.pages, &after.pages, lost)
        .map_err(|reason| failed(format!("{zap}: {reason}")))?;
    if let Some(recycled) = recycled {
        let zapped = i128::from(after.pages.zapped()) - i128::from(before.pages.zapped());
        ensure!(
            zapped == i128::from(recycled),
            "{zap}: the zapped columns grew by {zapped}, KVM's {RECYCLED_STAT} by {recycled}"
        );
    }
    // The peak, reset to the pages held before the step, stays there: a zap allocates nothing.
    let held_before = before.pages.pages();
    ensure!(
        after.peak == held_before,
        "{zap}: the peak is {}, expected the {held_before} pages held before",
        after.peak
    );
    Ok(())
}

/// The guest runs again after KVM's page limit zapped most of its pages. On shadow paging it
/// runs under that limit, so that KVM must recycle pages as it goes.
///
/// Not so an L2: the limit leaves it the root alone (see [`after_oldest_zapped`]), and KVM takes
/// the pages left, not the limit asked for, as its new limit (kvm_mmu_change_mmu_pages()), which
/// leaves L2 no page to fault in (KVM_RUN fails with ENOSPC). So the limit is lifted first, and
/// the run must build every page the first run built, in the same buckets, and zap none.
fn rerun_after_limit(
    host: &Host,
    vm: &mut ObservedVm,
    checks: &mut BreakdownChecks,
    first_run: (u64, &Option<Breakdown>),
    after_limit: &Option<Breakdown>,
) -> Result<(u64, Option<Breakdown>), NotPassed> {
    let (unlimited, ran) = first_run;
    if vm.guest_mode() {
        set_nr_mmu_pages(vm.guest.vm_fd(), LIFTED_MMU_PAGES_LIMIT)?;
    }
    let recycled_before = vm.stats.read_single(RECYCLED_STAT)?;
    vm.guest.run()?;
    let (rerun, after_rerun) = vm.observe(host, checks)?;
    let recycled_by_run = vm.stats.read_single(RECYCLED_STAT)? - recycled_before;
    if vm.guest_mode() {
        ensure!(
            rerun == unlimited && recycled_by_run == 0,
            "{STAT} is {rerun} and {RECYCLED_STAT} grew by {recycled_by_run} after L2's run with \
             the limit lifted, expected {unlimited}, as after its first run, and 0"
        );
    } else {
        // The guest needs more shadow pages than the limit allows, so KVM must recycle them.
        ensure!(
            rerun <= MIN_MMU_PAGES_LIMIT,
            "{STAT} is {rerun} after a run limited to {MIN_MMU_PAGES_LIMIT}"
        );
    }
    if let (Some(before), Some(after)) = (after_limit, &after_rerun) {
        checks.run(|_| {
            // Each change of a bucket is its own allocations and zaps, as observe() checks.
            let zapped = i128::from(after.pages.zapped()) - i128::from(before.pages.zapped());
            ensure!(
                zapped == i128::from(recycled_by_run),
                "a run after the limit: the zapped columns grew by {zapped}, KVM's \
                 {RECYCLED_STAT} by {recycled_by_run}"
            );
            if let (true, Some(ran)) = (vm.guest_mode(), ran) {
                compare_held(
                    "L2's run with the limit lifted, against its first run",
                    &ran.pages.held(),
                    &after.pages.held(),
                )
                .map_err(failed)?;
            }
            Ok(())
        });
    }
    Ok((rerun, after_rerun))
}

fn limits_and_zaps(host: &Host, record: &mut Record) -> ScenarioResult {
    let runs_as = host.shadow_workload()?;
    let checks = &mut record.breakdown;
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 160, runs_as)?;
    vm.guest.run()?;
    let (unlimited, ran) = vm.check_after_run(host, checks)?;
    ensure!(
        unlimited > MIN_MMU_PAGES_LIMIT,
        "{STAT} is {unlimited}, too few for a limit of {MIN_MMU_PAGES_LIMIT} to matter"
    );

    // KVM is asked to zap all but MIN_MMU_PAGES_LIMIT pages, the oldest first but never the
    // root the vCPU uses: which stay follows from the tables the first run walked, and for an
    // L2 only the root does (see after_oldest_zapped()).
    let zap = format!("KVM_SET_NR_MMU_PAGES {MIN_MMU_PAGES_LIMIT}");
    let left = after_oldest_zapped(
        vm.guest.shadowed_table_levels(),
        unlimited - MIN_MMU_PAGES_LIMIT,
        vm.guest_mode(),
    );
    let recycled_before = vm.stats.read_single(RECYCLED_STAT)?;
    set_nr_mmu_pages(vm.guest.vm_fd(), MIN_MMU_PAGES_LIMIT)?;
    let (limited, after_limit) = vm.observe(host, checks)?;
    let left_count: u64 = left.values().sum();
    ensure!(
        limited == left_count,
        "{STAT} is {limited} after {zap}, expected {left_count}: {}",
        show(&left)
    );
    let recycled_by_limit = vm.stats.read_single(RECYCLED_STAT)? - recycled_before;
    if let (Some(before), Some(after)) = (&ran, &after_limit) {
        checks.run(|_| {
            // KVM's mmu_recycled counts the pages an L2's zap takes along below the page it
            // zaps as one per child of that page, not one per page (mmu_page_zap_pte() gives
            // back kvm_mmu_prepare_zap_page()'s bool): it says nothing exact about the pages
            // lost, which check_zap_step() and the buckets below check exactly instead.
            let recycled = (!vm.guest_mode()).then_some(recycled_by_limit);
            check_zap_step(&zap, before, after, unlimited - limited, recycled)?;
            compare_held(
                &format!("{zap}, which zaps the oldest pages but the root"),
                &left,
                &after.pages.held(),
            )
            .map_err(failed)
        });
    }

    let (rerun, after_rerun) =
        rerun_after_limit(host, &mut vm, checks, (unlimited, &ran), &after_limit)?;

    vm.guest.delete_memory()?;
    let (deleted, after_delete) = vm.observe(host, checks)?;
    ensure!(
        deleted < rerun && deleted <= ROOTS_ONE_VCPU_MAY_HOLD,
        "{STAT} is {deleted} after deleting the memslot, was {rerun}"
    );
    if let (Some(before), Some(after)) = (&after_rerun, &after_delete) {
        checks.run(|_| {
            // Not the page limit's: the memslot's pages go, not the oldest.
            check_zap_step("deleting the memslot", before, after, rerun - deleted, None)?;
            let roots = Held::from([(vm.root_role(), deleted)]);
            compare_held(
                "after deleting the memslot, only the roots the vCPU holds stay",
                &roots,
                &after.pages.held(),
            )
            .map_err(failed)
        });
    }
    let rerun_is = match vm.guest_mode() {
        false => "a limited run",
        true => "a run with the limit lifted",
    };
    record.notes.push(format!(
        "{STAT}: {unlimited} unlimited, {limited} after the limit, {rerun} after {rerun_is}, \
         {deleted} after deleting the memslot"
    ));
    if let (Some(ran), Some(limit)) = (&ran, &after_limit) {
        record.notes.push(format!(
            "breakdown: {} unlimited, {} after the limit",
            show(&ran.pages.held()),
            show(&limit.pages.held())
        ));
    }
    Ok(())
}

/// An SMM page of `level`: direct, as SMM's paging is off, and of an L1 guest.
fn smm_direct(level: u8) -> Role {
    Role {
        smm: true,
        ..Role::direct(level)
    }
}

fn smm_pages(host: &Host, record: &mut Record) -> ScenarioResult {
    // The TDP MMU's only shadow pages are those of an L2 under nested NPT, and an SMI leaves
    // guest mode: SMM never runs on them.
    if host.paging()? == Paging::TdpMmu {
        return Err(NotPassed::Skip(format!(
            "needs shadow paging (kvm_amd.npt=N), KVM uses {}: its only shadow pages are an \
             L2's under nested NPT, and an SMI leaves guest mode, so SMM never runs on them",
            Paging::TdpMmu
        )));
    }
    if !host.kvm.check_extension(Cap::X86Smm) {
        return Err(NotPassed::Skip("KVM_CAP_X86_SMM is unavailable".into()));
    }
    let checks = &mut record.breakdown;
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 8, RunsAs::L1)?;
    vm.guest.run()?;
    let (ran, before) = vm.check_after_run(host, checks)?;

    // A direct level-1 page for SMRAM's 2 MiB, whose handler SMM fetches, and one per region.
    let regions = 12;
    vm.guest.take_smi(regions)?;
    ensure!(vm.guest.in_smm()?, "the SMI handler ran outside SMM");
    let (in_smm, during) = vm.observe(host, checks)?;
    let smm_needed = SMM_PAE_ROOTS + 1 + regions;
    ensure!(
        in_smm == ran + smm_needed,
        "{STAT} is {in_smm} in SMM, expected {ran} + {SMM_PAE_ROOTS} PAE roots + {} direct tables",
        1 + regions
    );
    if let (Some(before), Some(during)) = (&before, &during) {
        checks.run(|_| {
            let mut expected = before.pages.held();
            expected.insert(smm_direct(2), SMM_PAE_ROOTS);
            expected.insert(smm_direct(1), 1 + regions);
            compare_held(
                "in SMM, SMM's own pages beside the guest's",
                &expected,
                &during.pages.held(),
            )
            .map_err(failed)?;
            ensure!(
                during.pages.zapped() == before.pages.zapped(),
                "an SMI zapped pages: {}",
                show_pages(&during.pages)
            );
            Ok(())
        });
    }

    vm.guest.leave_smm()?;
    ensure!(!vm.guest.in_smm()?, "the vCPU is still in SMM after rsm");
    let (returned, after) = vm.observe(host, checks)?;
    ensure!(
        returned == in_smm,
        "{STAT} is {returned} after rsm, was {in_smm} in SMM"
    );
    if let (Some(during), Some(after)) = (&during, &after) {
        checks.run(|_| {
            compare_held("after rsm", &during.pages.held(), &after.pages.held()).map_err(failed)
        });
    }

    // Every page goes, SMM's with the rest, but the root the vCPU holds, not SMM's.
    vm.guest.delete_smm_memory()?;
    let (deleted, after_delete) = vm.observe(host, checks)?;
    ensure!(
        deleted == 1,
        "{STAT} is {deleted} after deleting SMM's memslot, expected 1, the vCPU's root"
    );
    if let (Some(after), Some(after_delete)) = (&after, &after_delete) {
        checks.run(|_| {
            check_zap_step(
                "deleting SMM's memslot",
                after,
                after_delete,
                returned - deleted,
                None,
            )?;
            compare_held(
                "after deleting SMM's memslot, only the root the vCPU holds stays",
                &Held::from([(Role::indirect(4), 1)]),
                &after_delete.pages.held(),
            )
            .map_err(failed)
        });
    }
    record.notes.push(format!(
        "{STAT}: {ran} after a run, {in_smm} in SMM, {returned} after rsm, {deleted} after \
         deleting SMM's memslot"
    ));
    Ok(())
}

fn two_vms(host: &Host, record: &mut Record) -> ScenarioResult {
    // Skips where the scenarios know no count to expect.
    host.paging()?;
    let checks = &mut record.breakdown;
    ensure!(
        host.vm_count()? == 0,
        "another VM exists, so the global sum cannot be compared"
    );
    let mut first = ObservedVm::new(host, TouchMapping::Small, 40, RunsAs::L1)?;
    let mut second = ObservedVm::new(host, TouchMapping::Small, 8, RunsAs::L1)?;
    ensure!(host.vm_count()? == 2, "debugfs does not show both VMs");
    for (which, vm) in [("first", &first), ("second", &second)] {
        let count = vm.stat(host, checks)?;
        ensure!(
            count == 0,
            "{STAT} of the {which} VM is {count} before it ran"
        );
    }

    first.guest.run()?;
    let (first_count, _) = first.check_after_run(host, checks)?;
    let idle = second.stat(host, checks)?;
    ensure!(
        idle == 0,
        "{STAT} of the idle VM is {idle} after the other VM ran"
    );
    let global = host.global_stat(checks)?;
    ensure!(
        global == first_count,
        "global debugfs {STAT} is {global}, the VMs have {first_count} and 0"
    );

    second.guest.run()?;
    let (second_count, _) = second.check_after_run(host, checks)?;
    let first_again = first.stat(host, checks)?;
    ensure!(
        first_again == first_count,
        "{STAT} of the first VM went from {first_count} to {first_again} when the other VM ran"
    );
    let global = host.global_stat(checks)?;
    ensure!(
        global == first_count + second_count,
        "global debugfs {STAT} is {global}, the VMs have {first_count} and {second_count}"
    );
    record.notes.push(format!(
        "{STAT}: {first_count} and {second_count}, global {global}"
    ));
    Ok(())
}

fn teardown(host: &Host, record: &mut Record) -> ScenarioResult {
    // Skips where the scenarios know no count to expect.
    host.paging()?;
    let checks = &mut record.breakdown;
    let global_before = host.global_stat(checks)?;
    let vms_before = host.vm_count()?;
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 32, RunsAs::L1)?;
    let (id, dir) = (vm.id(), host.debugfs.vm_dir(vm.pid, vm.vm_fd));
    ensure!(
        dir.is_dir(),
        "{} missing while the VM exists",
        dir.display()
    );
    vm.guest.run()?;
    let (count, _) = vm.check_after_run(host, checks)?;
    let global = host.global_stat(checks)?;
    ensure!(
        global == global_before + count,
        "global debugfs {STAT} is {global}, expected {global_before} + {count}"
    );

    drop(vm);
    ensure!(
        !dir.exists(),
        "{} still exists after the VM was destroyed",
        dir.display()
    );
    checks.run(|files| {
        let dir = files.dir(Scope::Vm(id));
        ensure!(
            !dir.exists(),
            "{} still exists after the VM was destroyed",
            dir.display()
        );
        Ok(())
    });
    let vms_after = host.vm_count()?;
    ensure!(
        vms_after == vms_before,
        "debugfs shows {vms_after} VMs after teardown, {vms_before} before"
    );
    // Checks the files of all VMs, which no longer count the VM, against the global stat.
    let global_after = host.global_stat(checks)?;
    ensure!(
        global_after == global_before,
        "global debugfs {STAT} is {global_after} after teardown, {global_before} before"
    );
    record.notes.push(format!(
        "global {STAT}: {global_before}, {global} with the VM, {global_after} after"
    ));
    Ok(())
}

fn descriptor(host: &Host, record: &mut Record) -> ScenarioResult {
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 16, RunsAs::L1)?;
    vm.guest.run()?;
    let descriptor = vm.stats.descriptor(STAT)?;
    let described = format!(
        "{:?}, unit {:?}, base {:?}, exponent {}, size {}",
        descriptor.kind(),
        descriptor.unit(),
        descriptor.base(),
        descriptor.exponent,
        descriptor.size
    );
    ensure!(
        descriptor.kind() == StatKind::Instant
            && descriptor.unit() == StatUnit::None
            && descriptor.base() == StatBase::Pow10
            && descriptor.exponent == 0
            && descriptor.size == 1,
        "{STAT} is described as {described}, not Instant, unit None, base Pow10, exponent 0, size 1"
    );
    // `stat` compares the stats fd with debugfs, and the breakdown with both.
    let count = vm.stat(host, &mut record.breakdown)?;
    record
        .notes
        .push(format!("{STAT}: {described}; value {count}"));
    Ok(())
}

/// One step of [`handover`]'s workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Run,
    LimitTo(u64),
    /// Lifts the page limit if an L2 touches: it can only run again after the limit once the
    /// limit is lifted (see [`rerun_after_limit`]). An L1 runs under the limit.
    LiftLimitForL2,
    DeleteMemory,
    /// Loads the module if it is unloaded, unloads it if it is loaded.
    ToggleModule,
}

/// The workload of [`handover`]: the module changes hands with shadow pages built, after a zap by
/// the page limit, before a zap by memslot deletion, and after it, when the VM holds only the
/// root its vCPU still uses, which the zap took from the VM's pages but KVM still counts.
const HANDOVER_STEPS: &[Step] = &[
    Step::Run,
    Step::ToggleModule,
    Step::LimitTo(MIN_MMU_PAGES_LIMIT),
    Step::ToggleModule,
    Step::LiftLimitForL2,
    Step::Run,
    Step::ToggleModule,
    Step::DeleteMemory,
    Step::ToggleModule,
    Step::ToggleModule,
    Step::ToggleModule,
];

/// Touches of each of [`handover`]'s VMs.
const HANDOVER_TOUCHES: u64 = 160;

/// Two identical VMs of [`handover`]'s, whose `runs_as` touches.
fn handover_pair(host: &Host, runs_as: RunsAs) -> Result<[ObservedVm; 2], NotPassed> {
    Ok([
        ObservedVm::new(host, TouchMapping::Small, HANDOVER_TOUCHES, runs_as)?,
        ObservedVm::new(host, TouchMapping::Small, HANDOVER_TOUCHES, runs_as)?,
    ])
}

fn toggle_module(path: &std::path::Path) -> ScenarioResult {
    if module::is_loaded(MODULE_NAME) {
        module::unload(MODULE_NAME)
            .map_err(|error| NotPassed::Fail(format!("unloading {MODULE_NAME}: {error}")))
    } else {
        module::load(path)
            .map_err(|error| NotPassed::Fail(format!("loading {}: {error}", path.display())))
    }
}

/// Runs `step` on `vm`; a module toggle is for the caller to make, as it acts on every VM.
fn run_step(vm: &mut ObservedVm, step: Step) -> ScenarioResult {
    match step {
        Step::Run => vm.guest.run()?,
        Step::LimitTo(pages) => set_nr_mmu_pages(vm.guest.vm_fd(), pages)?,
        Step::LiftLimitForL2 if vm.guest_mode() => {
            set_nr_mmu_pages(vm.guest.vm_fd(), LIFTED_MMU_PAGES_LIMIT)?;
        }
        Step::LiftLimitForL2 => {}
        Step::DeleteMemory => vm.guest.delete_memory()?,
        Step::ToggleModule => {}
    }
    Ok(())
}

/// Unloads the module for a scenario and puts it back as it was found, so that the scenarios
/// after it run as configured: [`Self::restore`] at the scenario's end, whose failure fails the
/// scenario, or `Drop` on the way out of a panic.
struct ModuleRestorer<'a> {
    path: &'a std::path::Path,
    was_loaded: bool,
    restored: bool,
}

impl<'a> ModuleRestorer<'a> {
    fn new(path: &'a std::path::Path) -> Result<Self, NotPassed> {
        let was_loaded = module::is_loaded(MODULE_NAME);
        if was_loaded {
            module::unload(MODULE_NAME)?;
        }
        Ok(Self {
            path,
            was_loaded,
            restored: false,
        })
    }

    fn put_back(&self) -> Result<(), String> {
        match (self.was_loaded, module::is_loaded(MODULE_NAME)) {
            (true, false) => module::load(self.path),
            (false, true) => module::unload(MODULE_NAME),
            _ => Ok(()),
        }
        .map_err(|error| format!("cannot put {MODULE_NAME} back as it was: {error}"))
    }

    /// Puts the module back as it was found, or says why it could not.
    fn restore(mut self) -> Result<(), String> {
        self.restored = true;
        self.put_back()
    }
}

/// Only a panic gets past [`ModuleRestorer::restore`]. No scenario is left then to fail, and a
/// panic need not end the program (one may be caught), so a module that cannot be put back ends
/// it here, with a failure, rather than leave the scenarios after it to run in another
/// configuration than the boot's.
impl Drop for ModuleRestorer<'_> {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        if let Err(reason) = self.put_back() {
            eprintln!("shadow_mmu_stats: {reason}");
            std::process::exit(EXIT_FAIL.into());
        }
    }
}

/// Runs [`HANDOVER_STEPS`] on two twin VMs created while the module is loaded, which it stays
/// for all their steps, and returns the pages by role they hold after each step: what the VMs
/// that run the same steps while the module comes and goes must hold whenever it is loaded.
/// The twins count as KVM alone counted (`counts`), agree with each other, and after their
/// first run hold what their page tables need.
fn handover_twins(
    host: &Host,
    checks: &mut BreakdownChecks,
    runs_as: RunsAs,
    counts: &[u64],
) -> Result<Vec<Option<Held>>, NotPassed> {
    let mut twins = handover_pair(host, runs_as)?;
    let needed = twins[0].needed();
    let mut held_after = Vec::new();
    for (i, (&step, &want)) in HANDOVER_STEPS.iter().zip(counts).enumerate() {
        let mut held = Vec::new();
        for (which, twin) in twins.iter_mut().enumerate() {
            // The module stays loaded: a toggle is no step for the twins.
            run_step(twin, step)?;
            let (count, breakdown) = twin.observe(host, checks)?;
            ensure!(
                count == want,
                "step {i} ({step:?}), twin {which} under {MODULE_NAME}: {STAT} is {count}, \
                 {want} with KVM alone in charge"
            );
            held.push(breakdown.map(|breakdown| breakdown.pages.held()));
        }
        if let [Some(first), Some(second)] = &held[..] {
            checks.run(|_| {
                compare_held(
                    &format!("step {i} ({step:?}), twin 1 against twin 0"),
                    first,
                    second,
                )
                .map_err(failed)?;
                if i == 0 {
                    compare_held("the twins' first run", &needed, first).map_err(failed)?;
                }
                Ok(())
            });
        }
        held_after.push(held.swap_remove(0));
    }
    Ok(held_after)
}

/// Checks a VM's breakdown right after `insmod`, before any event: every page the VM holds
/// adopted, in the buckets its `twin` holds them in, none allocated or zapped yet, the peak at
/// the pages found.
fn check_adopted(
    files: &ShadowStatsDebugfs,
    vm: &ObservedVm,
    twin: &Held,
    what: &str,
) -> ScenarioResult {
    let pages = files.pages(Scope::Vm(vm.id()))?;
    compare_held(
        &format!("{what}, right after insmod, against its twin"),
        twin,
        &pages.held(),
    )
    .map_err(failed)?;
    ensure!(
        pages.allocated() == 0 && pages.zapped() == 0,
        "{what}, right after insmod: events before any: {}",
        show_pages(&pages)
    );
    let peak = files.peak(vm.id())?;
    ensure!(
        peak == pages.pages(),
        "{what}, right after insmod: the peak is {peak}, the pages found {}",
        pages.pages()
    );
    Ok(())
}

/// The module takes the accounting over and hands it back while two VMs hold shadow pages, and
/// after every step both count exactly what a VM counted with KVM alone in charge; right
/// after each load, and after each step while loaded, both hold the pages by role that a twin
/// under the module all along holds. Whatever the outcome, the module is put back as it was
/// found, and the scenario fails if it cannot be.
fn handover(host: &Host, record: &mut Record) -> ScenarioResult {
    let runs_as = host.shadow_workload()?;
    let Some(path) = std::env::var_os(MODULE_ENV).map(std::path::PathBuf::from) else {
        return Err(NotPassed::Skip(format!(
            "{MODULE_ENV} does not name {MODULE_NAME}.ko"
        )));
    };
    let restorer = ModuleRestorer::new(&path)?;
    let handed_over = run_handover(host, record, &path, runs_as);
    match (handed_over, restorer.restore()) {
        (result, Ok(())) => result,
        (Err(NotPassed::Fail(reason)), Err(unrestored)) => {
            Err(NotPassed::Fail(format!("{reason}; then {unrestored}")))
        }
        (_, Err(unrestored)) => Err(NotPassed::Fail(unrestored)),
    }
}

/// [`handover`] with the module unloaded at the start and after an even number of toggles.
fn run_handover(
    host: &Host,
    record: &mut Record,
    path: &std::path::Path,
    runs_as: RunsAs,
) -> ScenarioResult {
    let checks = &mut record.breakdown;

    // Two identical VMs in lock-step: their agreement is what makes the counts a reference.
    let mut references = handover_pair(host, runs_as)?;
    let mut expected = Vec::new();
    for &step in HANDOVER_STEPS {
        run_step(&mut references[0], step)?;
        run_step(&mut references[1], step)?;
        let (first, second) = (
            references[0].stat(host, checks)?,
            references[1].stat(host, checks)?,
        );
        ensure!(
            first == second,
            "step {step:?}: identical reference VMs have {first} and {second} shadow pages"
        );
        expected.push(first);
    }
    drop(references);

    toggle_module(path)?;
    let twins = handover_twins(host, checks, runs_as, &expected)?;
    toggle_module(path)?;

    let mut vms = handover_pair(host, runs_as)?;
    let mut adopted = Vec::new();
    for (i, ((&step, &want), twin)) in HANDOVER_STEPS.iter().zip(&expected).zip(&twins).enumerate()
    {
        if step == Step::ToggleModule {
            toggle_module(path)?;
            for vm in &vms {
                vm.module_changed();
            }
            let loaded = module::is_loaded(MODULE_NAME);
            ensure!(
                loaded == checks.files.is_present(),
                "{} is {} while {MODULE_NAME} is {}",
                checks.files.root().display(),
                if loaded { "missing" } else { "still there" },
                if loaded { "loaded" } else { "unloaded" }
            );
        }
        let just_loaded = step == Step::ToggleModule && module::is_loaded(MODULE_NAME);
        for (which, vm) in vms.iter_mut().enumerate() {
            run_step(vm, step)?;
            let what = format!("step {i} ({step:?}), VM {which}");
            if let (true, Some(twin)) = (just_loaded, twin) {
                // Before observe(), which resets the peak.
                if checks
                    .run(|files| check_adopted(files, vm, twin, &what))
                    .is_some()
                {
                    adopted.push(show(twin));
                }
            }
            let (count, breakdown) = vm.observe(host, checks)?;
            ensure!(
                count == want,
                "{what}: {STAT} is {count}, {want} with KVM alone in charge"
            );
            if let (Some(breakdown), Some(twin)) = (breakdown, twin) {
                checks.run(|_| {
                    compare_held(
                        &format!("{what}, against its twin"),
                        twin,
                        &breakdown.pages.held(),
                    )
                    .map_err(failed)
                });
            }
        }
    }
    ensure!(
        !module::is_loaded(MODULE_NAME),
        "{MODULE_NAME} is still loaded after an even number of toggles"
    );
    record
        .notes
        .push(format!("{STAT} after each step: {expected:?}"));
    adopted.dedup();
    for held in adopted {
        record
            .notes
            .push(format!("adopted at an insmod, as by a twin: {held}"));
    }
    Ok(())
}

type Scenario = fn(&Host, &mut Record) -> ScenarioResult;

/// Each scenario, with the name of its test and that of its breakdown checks.
const SCENARIOS: &[(&str, &str, Scenario)] = &[
    (
        "shadow paging: the stat counts the page tables walked, the guest's or L1's NPT tables for an L2",
        "shadow paging, breakdown: one indirect non-SMM page per table, at its level, L1's or L2's",
        shadow_paging,
    ),
    (
        "TDP MMU: the stat stays 0",
        "TDP MMU, breakdown: no bucket at all",
        tdp_mmu,
    ),
    (
        "direct pages: 2 MiB guest or NPT pages on 4 KiB host pages are counted",
        "direct pages, breakdown: one direct level-1 page per 2 MiB guest or NPT page",
        direct_pages,
    ),
    (
        "limits and zaps: KVM_SET_NR_MMU_PAGES and memslot deletion lower the stat",
        "limits and zaps, breakdown: each zap takes from the buckets whose zapped column grows",
        limits_and_zaps,
    ),
    (
        "hand-over: loading and unloading the module with VMs holding shadow pages loses nothing",
        "hand-over, breakdown: the pages at insmod are adopted into the buckets of a twin under the module",
        handover,
    ),
    (
        "SMM: an SMI's own shadow pages are counted, and zapped with a memslot",
        "SMM, breakdown: four direct PAE roots and a direct table per region, all smm=1",
        smm_pages,
    ),
    (
        "two VMs: each VM's stat is its own and debugfs adds them up",
        "two VMs, breakdown: each VM's buckets are its own and the files of all VMs add them up",
        two_vms,
    ),
    (
        "teardown: a destroyed VM leaves debugfs and the global sum",
        "teardown, breakdown: a destroyed VM's directory goes and the files of all VMs drop it",
        teardown,
    ),
    (
        "descriptor: the stat is an instant unitless count equal to debugfs",
        "descriptor, breakdown: buckets, totals and peak agree with the stat",
        descriptor,
    ),
];

fn run_scenarios(out: impl io::Write) -> io::Result<u8> {
    let mut tap = TapWriter::new(out, 2 * SCENARIOS.len())?;
    let module_expected = std::env::var_os(EXPECTED_ENV).is_some_and(|value| value == "1");
    let host = Host::probe();
    if let Ok(host) = &host {
        tap.diagnostic(match &host.paging {
            Ok(paging) => format!("KVM uses {paging}"),
            Err(reason) => reason.clone(),
        })?;
    }
    for (name, breakdown_name, scenario) in SCENARIOS {
        let mut record = Record {
            notes: Vec::new(),
            breakdown: BreakdownChecks::new(ShadowStatsDebugfs::default(), module_expected),
        };
        let outcome = match &host {
            Err(reason) => Outcome::Skip(reason.clone()),
            Ok(host) => match scenario(host, &mut record) {
                Ok(()) => Outcome::Pass,
                Err(NotPassed::Fail(reason)) => Outcome::Fail(reason),
                Err(NotPassed::Skip(reason)) => Outcome::Skip(reason),
            },
        };
        for note in &record.notes {
            tap.diagnostic(note)?;
        }
        tap.report(name, &outcome)?;
        tap.report(breakdown_name, &record.breakdown.outcome(&outcome))?;
    }
    tap.finish()
}

fn main() -> ExitCode {
    match run_scenarios(io::stdout().lock()) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // Nothing else can carry the news once stdout fails.
            eprintln!("shadow_mmu_stats: writing the TAP report: {error}");
            ExitCode::from(EXIT_FAIL)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(root: &str, expected: bool) -> BreakdownChecks {
        BreakdownChecks::new(ShadowStatsDebugfs::at(root), expected)
    }

    #[test]
    fn a_missing_module_fails_where_the_boot_loaded_it() {
        let missing = "/nonexistent/kvm_shadow_stats";
        for scenario in [
            Outcome::Pass,
            Outcome::Skip("needs the shadow MMU".into()),
            Outcome::Fail("off by one".into()),
        ] {
            match checks(missing, true).outcome(&scenario) {
                Outcome::Fail(reason) => assert!(reason.contains(missing), "{reason}"),
                outcome => panic!("{scenario:?}: {outcome:?}, expected a failure"),
            }
        }
    }

    #[test]
    fn a_missing_module_skips_elsewhere() {
        let outcome = checks("/nonexistent/kvm_shadow_stats", false).outcome(&Outcome::Pass);
        assert!(matches!(outcome, Outcome::Skip(_)), "{outcome:?}");
    }

    #[test]
    fn a_present_module_leaves_the_outcome_to_the_checks() {
        let skip = Outcome::Skip("needs the shadow MMU".into());
        assert_eq!(checks(".", true).outcome(&skip), skip);
    }
}
