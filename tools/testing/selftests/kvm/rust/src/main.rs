// SPDX-License-Identifier: GPL-2.0

//! `shadow_mmu_stats`: checks KVM x86's `mmu_shadow_pages` stat, which counts the shadow MMU's
//! pages (never the TDP MMU's), through the binary stats fd and debugfs, with guests whose page
//! tables this program builds so that it knows how many shadow pages they need.
//!
//! Prints kselftest-style TAP and exits 0 if nothing failed, 1 if something did, 4 if every
//! scenario was skipped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::raw::c_ulong;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use kvm_bindings::KVM_CAP_BINARY_STATS_FD;
use kvm_ioctls::Kvm;
use kvm_stats::debugfs::KvmDebugfs;
use kvm_stats::stats::{StatBase, StatKind, StatUnit, Stats};
use kvm_stats::stats_fd::open_stats;
use shadow_mmu_stats_selftest::guest::{TestVm, TouchMapping};
use shadow_mmu_stats_selftest::host::{self, Paging};
use shadow_mmu_stats_selftest::kvm_ext::set_nr_mmu_pages;
use shadow_mmu_stats_selftest::module;
use shadow_mmu_stats_selftest::tap::{EXIT_FAIL, Outcome, TapWriter};

/// The stat under test, as named in the binary stats file and in debugfs.
const STAT: &str = "mmu_shadow_pages";

/// The lowest limit `KVM_SET_NR_MMU_PAGES` accepts (`KVM_MIN_ALLOC_MMU_PAGES`).
const MIN_MMU_PAGES_LIMIT: u64 = 64;

/// Shadow pages a zap may leave counted in a VM with one vCPU: the roots the vCPU still holds,
/// its current one and up to three cached previous ones, stay counted until it drops them.
const ROOTS_ONE_VCPU_MAY_HOLD: u64 = 4;

/// The accounting module, as loaded and unloaded by [`handover`].
const MODULE_NAME: &str = "kvm_shadow_stats";

/// The environment variable that names the module's file.
const MODULE_ENV: &str = "KVM_SHADOW_STATS_MODULE";

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

/// What every scenario needs from the machine it runs on.
struct Host {
    kvm: Kvm,
    debugfs: KvmDebugfs,
    /// The MMU KVM uses, or why this is a configuration the scenarios do not model.
    paging: Result<Paging, String>,
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

    /// The sum over all VMs that debugfs gives, checked against the per-VM files.
    fn global_stat(&self) -> Result<u64, NotPassed> {
        let global = sane(self.debugfs.global(STAT)?, "global debugfs")?;
        let sum = self.debugfs.sum_over_vms(STAT)?;
        ensure!(
            global == sum,
            "global debugfs {STAT} is {global}, the per-VM files add up to {sum}"
        );
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
/// KVM shadows each guest page table the walks reach once, as they are all reached with the
/// same access rights, and backs each 2 MiB guest page with one direct page: exactly `needed`.
/// A page KVM counted twice, or failed to count, is off by one; an accountant's miscount shows
/// in the kernel log instead, as KVM puts its own count back (see [`Host::check_kernel_log`]).
fn check_shadow_count(count: u64, needed: u64) -> ScenarioResult {
    ensure!(
        count == needed,
        "{STAT} is {count}, expected the {needed} shadow pages the guest's walks need"
    );
    Ok(())
}

/// A test VM together with its binary stats file and its debugfs directory.
struct ObservedVm {
    // Dropped first: the stats file holds a reference to the VM that would delay its
    // destruction past the drop of `guest`.
    stats: Stats<File>,
    guest: TestVm,
    pid: u32,
    vm_fd: RawFd,
}

impl ObservedVm {
    fn new(host: &Host, mapping: TouchMapping, touches: u64) -> Result<Self, NotPassed> {
        let guest = TestVm::new(&host.kvm, mapping, touches)?;
        let stats = open_stats(guest.vm_fd())?;
        let vm_fd = guest.vm_fd().as_raw_fd();
        Ok(Self {
            stats,
            guest,
            pid: std::process::id(),
            vm_fd,
        })
    }

    /// The VM's stat, read through the stats fd and checked against its debugfs file.
    fn stat(&self, host: &Host) -> Result<u64, NotPassed> {
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

    /// Checks the stat after a run against what the MMU in use must have counted: a shadow
    /// page per guest page table walked, or nothing at all for the TDP MMU.
    fn check_after_run(&self, host: &Host, paging: Paging) -> Result<u64, NotPassed> {
        let count = self.stat(host)?;
        match paging {
            Paging::Shadow => check_shadow_count(count, self.guest.guest_table_pages())?,
            Paging::TdpMmu => ensure!(count == 0, "{STAT} is {count} under the TDP MMU"),
        }
        Ok(count)
    }
}

/// Notes a scenario makes along the way, printed as TAP diagnostics whatever the outcome.
type Notes = Vec<String>;

fn shadow_paging(host: &Host, notes: &mut Notes) -> ScenarioResult {
    host.require(Paging::Shadow)?;
    ensure!(
        host.vm_count()? == 0,
        "another VM exists, so the global sum cannot be compared"
    );
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 48)?;
    vm.guest.run()?;
    let count = vm.check_after_run(host, Paging::Shadow)?;
    notes.push(format!(
        "{} guest page tables walked, {STAT} {count}",
        vm.guest.guest_table_pages()
    ));
    let global = host.global_stat()?;
    ensure!(
        global == count,
        "global debugfs {STAT} is {global}, the only VM has {count}"
    );
    Ok(())
}

fn tdp_mmu(host: &Host, notes: &mut Notes) -> ScenarioResult {
    host.require(Paging::TdpMmu)?;
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 48)?;
    // Several runs, each checked, as the TDP MMU keeps its pages across runs.
    for _ in 0..3 {
        vm.guest.run()?;
        vm.check_after_run(host, Paging::TdpMmu)?;
    }
    let global = host.global_stat()?;
    ensure!(global == 0, "global debugfs {STAT} is {global}");
    notes.push(format!("{STAT} stayed 0 over 3 runs"));
    Ok(())
}

fn direct_pages(host: &Host, notes: &mut Notes) -> ScenarioResult {
    host.require(Paging::Shadow)?;
    let large_pages = 12;
    let mut vm = ObservedVm::new(host, TouchMapping::Large, large_pages)?;
    vm.guest.run()?;
    let count = vm.stat(host)?;
    let tables = vm.guest.guest_table_pages();
    // Each 2 MiB guest page backed by 4 KiB host pages needs a direct shadow page of its own,
    // besides the shadows of the guest's tables.
    check_shadow_count(count, tables + large_pages)?;
    notes.push(format!(
        "{tables} guest page tables and {large_pages} 2 MiB pages walked, {STAT} {count}"
    ));
    Ok(())
}

fn limits_and_zaps(host: &Host, notes: &mut Notes) -> ScenarioResult {
    host.require(Paging::Shadow)?;
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 160)?;
    vm.guest.run()?;
    let unlimited = vm.check_after_run(host, Paging::Shadow)?;
    ensure!(
        unlimited > MIN_MMU_PAGES_LIMIT,
        "{STAT} is {unlimited}, too few for a limit of {MIN_MMU_PAGES_LIMIT} to matter"
    );

    set_nr_mmu_pages(vm.guest.vm_fd(), MIN_MMU_PAGES_LIMIT)?;
    let limited = vm.stat(host)?;
    ensure!(
        limited <= MIN_MMU_PAGES_LIMIT,
        "{STAT} is {limited} after KVM_SET_NR_MMU_PAGES {MIN_MMU_PAGES_LIMIT}"
    );

    // The guest needs more shadow pages than the limit allows, so KVM must recycle them.
    vm.guest.run()?;
    let rerun = vm.stat(host)?;
    ensure!(
        rerun <= MIN_MMU_PAGES_LIMIT,
        "{STAT} is {rerun} after a run limited to {MIN_MMU_PAGES_LIMIT}"
    );

    vm.guest.delete_memory()?;
    let deleted = vm.stat(host)?;
    ensure!(
        deleted < rerun && deleted <= ROOTS_ONE_VCPU_MAY_HOLD,
        "{STAT} is {deleted} after deleting the memslot, was {rerun}"
    );
    notes.push(format!(
        "{STAT}: {unlimited} unlimited, {limited} after the limit, {rerun} after a limited run, \
         {deleted} after deleting the memslot"
    ));
    Ok(())
}

fn two_vms(host: &Host, notes: &mut Notes) -> ScenarioResult {
    let paging = host.paging()?;
    ensure!(
        host.vm_count()? == 0,
        "another VM exists, so the global sum cannot be compared"
    );
    let mut first = ObservedVm::new(host, TouchMapping::Small, 40)?;
    let mut second = ObservedVm::new(host, TouchMapping::Small, 8)?;
    ensure!(host.vm_count()? == 2, "debugfs does not show both VMs");
    for (which, vm) in [("first", &first), ("second", &second)] {
        let count = vm.stat(host)?;
        ensure!(
            count == 0,
            "{STAT} of the {which} VM is {count} before it ran"
        );
    }

    first.guest.run()?;
    let first_count = first.check_after_run(host, paging)?;
    let idle = second.stat(host)?;
    ensure!(
        idle == 0,
        "{STAT} of the idle VM is {idle} after the other VM ran"
    );
    let global = host.global_stat()?;
    ensure!(
        global == first_count,
        "global debugfs {STAT} is {global}, the VMs have {first_count} and 0"
    );

    second.guest.run()?;
    let second_count = second.check_after_run(host, paging)?;
    let first_again = first.stat(host)?;
    ensure!(
        first_again == first_count,
        "{STAT} of the first VM went from {first_count} to {first_again} when the other VM ran"
    );
    let global = host.global_stat()?;
    ensure!(
        global == first_count + second_count,
        "global debugfs {STAT} is {global}, the VMs have {first_count} and {second_count}"
    );
    notes.push(format!(
        "{STAT}: {first_count} and {second_count}, global {global}"
    ));
    Ok(())
}

fn teardown(host: &Host, notes: &mut Notes) -> ScenarioResult {
    let paging = host.paging()?;
    let global_before = host.global_stat()?;
    let vms_before = host.vm_count()?;
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 32)?;
    let dir = host.debugfs.vm_dir(vm.pid, vm.vm_fd);
    ensure!(
        dir.is_dir(),
        "{} missing while the VM exists",
        dir.display()
    );
    vm.guest.run()?;
    let count = vm.check_after_run(host, paging)?;
    let global = host.global_stat()?;
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
    let vms_after = host.vm_count()?;
    ensure!(
        vms_after == vms_before,
        "debugfs shows {vms_after} VMs after teardown, {vms_before} before"
    );
    let global_after = host.global_stat()?;
    ensure!(
        global_after == global_before,
        "global debugfs {STAT} is {global_after} after teardown, {global_before} before"
    );
    notes.push(format!(
        "global {STAT}: {global_before}, {global} with the VM, {global_after} after"
    ));
    Ok(())
}

fn descriptor(host: &Host, notes: &mut Notes) -> ScenarioResult {
    let mut vm = ObservedVm::new(host, TouchMapping::Small, 16)?;
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
    // `stat` compares the stats fd with debugfs.
    let count = vm.stat(host)?;
    notes.push(format!("{STAT}: {described}; value {count}"));
    Ok(())
}

/// One step of [`handover`]'s workload.
#[derive(Debug, Clone, Copy)]
enum Step {
    Run,
    LimitTo(u64),
    DeleteMemory,
    /// Loads the module if it is unloaded, unloads it if it is loaded.
    ToggleModule,
}

/// The workload of [`handover`]: the module changes hands with shadow pages built, after a zap by
/// the page limit, and before a zap by memslot deletion.
const HANDOVER_STEPS: &[Step] = &[
    Step::Run,
    Step::ToggleModule,
    Step::LimitTo(MIN_MMU_PAGES_LIMIT),
    Step::ToggleModule,
    Step::Run,
    Step::ToggleModule,
    Step::DeleteMemory,
    Step::ToggleModule,
];

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
        Step::DeleteMemory => vm.guest.delete_memory()?,
        Step::ToggleModule => {}
    }
    Ok(())
}

/// Unloads the module for a scenario and, whatever becomes of the scenario, puts it back as it
/// was found, so that the scenarios after it run as configured.
struct ModuleRestorer<'a> {
    path: &'a std::path::Path,
    was_loaded: bool,
}

impl<'a> ModuleRestorer<'a> {
    fn new(path: &'a std::path::Path) -> Result<Self, NotPassed> {
        let was_loaded = module::is_loaded(MODULE_NAME);
        if was_loaded {
            module::unload(MODULE_NAME)?;
        }
        Ok(Self { path, was_loaded })
    }
}

impl Drop for ModuleRestorer<'_> {
    fn drop(&mut self) {
        let restored = match (self.was_loaded, module::is_loaded(MODULE_NAME)) {
            (true, false) => module::load(self.path),
            (false, true) => module::unload(MODULE_NAME),
            _ => Ok(()),
        };
        // Nothing to return it to: say it, as the next scenarios run differently.
        if let Err(error) = restored {
            eprintln!("shadow_mmu_stats: cannot put {MODULE_NAME} back as it was: {error}");
        }
    }
}

/// The module takes the accounting over and hands it back while two VMs hold shadow pages, and
/// after every step both count exactly what a VM counted with KVM alone in charge.
fn handover(host: &Host, notes: &mut Notes) -> ScenarioResult {
    host.require(Paging::Shadow)?;
    let Some(path) = std::env::var_os(MODULE_ENV).map(std::path::PathBuf::from) else {
        return Err(NotPassed::Skip(format!(
            "{MODULE_ENV} does not name {MODULE_NAME}.ko"
        )));
    };
    let _restore = ModuleRestorer::new(&path)?;

    // Two identical VMs in lock-step: their agreement is what makes the counts a reference.
    let mut references = [
        ObservedVm::new(host, TouchMapping::Small, 160)?,
        ObservedVm::new(host, TouchMapping::Small, 160)?,
    ];
    let mut expected = Vec::new();
    for &step in HANDOVER_STEPS {
        run_step(&mut references[0], step)?;
        run_step(&mut references[1], step)?;
        let (first, second) = (references[0].stat(host)?, references[1].stat(host)?);
        ensure!(
            first == second,
            "step {step:?}: identical reference VMs have {first} and {second} shadow pages"
        );
        expected.push(first);
    }
    drop(references);

    let mut vms = [
        ObservedVm::new(host, TouchMapping::Small, 160)?,
        ObservedVm::new(host, TouchMapping::Small, 160)?,
    ];
    for (i, (&step, &want)) in HANDOVER_STEPS.iter().zip(&expected).enumerate() {
        if let Step::ToggleModule = step {
            toggle_module(&path)?;
        }
        for (which, vm) in vms.iter_mut().enumerate() {
            run_step(vm, step)?;
            let count = vm.stat(host)?;
            ensure!(
                count == want,
                "step {i} ({step:?}), VM {which}: {STAT} is {count}, {want} with KVM alone in charge"
            );
        }
    }
    ensure!(
        !module::is_loaded(MODULE_NAME),
        "{MODULE_NAME} is still loaded after an even number of toggles"
    );
    notes.push(format!("{STAT} after each step: {expected:?}"));
    Ok(())
}

type Scenario = fn(&Host, &mut Notes) -> ScenarioResult;

const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "shadow paging: the stat counts the guest page tables walked",
        shadow_paging,
    ),
    ("TDP MMU: the stat stays 0", tdp_mmu),
    (
        "direct pages: 2 MiB guest pages on 4 KiB host pages are counted",
        direct_pages,
    ),
    (
        "limits and zaps: KVM_SET_NR_MMU_PAGES and memslot deletion lower the stat",
        limits_and_zaps,
    ),
    (
        "hand-over: loading and unloading the module with VMs holding shadow pages loses nothing",
        handover,
    ),
    (
        "two VMs: each VM's stat is its own and debugfs adds them up",
        two_vms,
    ),
    (
        "teardown: a destroyed VM leaves debugfs and the global sum",
        teardown,
    ),
    (
        "descriptor: the stat is an instant unitless count equal to debugfs",
        descriptor,
    ),
];

fn run_scenarios(out: impl io::Write) -> io::Result<u8> {
    let mut tap = TapWriter::new(out, SCENARIOS.len())?;
    let host = Host::probe();
    if let Ok(host) = &host {
        tap.diagnostic(match &host.paging {
            Ok(paging) => format!("KVM uses {paging}"),
            Err(reason) => reason.clone(),
        })?;
    }
    for (name, scenario) in SCENARIOS {
        let mut notes = Notes::new();
        let outcome = match &host {
            Err(reason) => Outcome::Skip(reason.clone()),
            Ok(host) => match scenario(host, &mut notes) {
                Ok(()) => Outcome::Pass,
                Err(NotPassed::Fail(reason)) => Outcome::Fail(reason),
                Err(NotPassed::Skip(reason)) => Outcome::Skip(reason),
            },
        };
        for note in &notes {
            tap.diagnostic(note)?;
        }
        tap.report(name, &outcome)?;
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
