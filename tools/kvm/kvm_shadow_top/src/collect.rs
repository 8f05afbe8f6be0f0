// SPDX-License-Identifier: GPL-2.0

//! Takes a [`Sample`] of the host: the VMs that KVM's debugfs lists, each read through its own
//! binary stats fd where its owner has one open for this process to borrow, and through
//! debugfs otherwise, with the breakdown of its shadow pages that kvm_shadow_stats.ko keeps in
//! debugfs while it is loaded.
//!
//! A VM created while a VM that outlived its fd held the name `<pid>-<fd>` it would get has no
//! directory in KVM's debugfs; kvm_shadow_stats.ko names it `<pid>-<fd>.<n>`. While the module
//! is loaded, such a VM is sampled too, from its stats fd and its breakdown alone: the stats in
//! KVM's `<pid>-<fd>` are another VM's.
//!
//! KVM refuses every ioctl on a VM fd from a process other than the one that created the VM,
//! so a borrowed VM fd cannot give a stats fd; a stats fd the owner opened itself can be read
//! by anyone who holds it.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use kvm_stats::breakdown::{BreakdownError, Scope, ShadowStatsDebugfs};
use kvm_stats::debugfs::{DebugfsError, KvmDebugfs, VmId};
use kvm_stats::stats::Stats;

use crate::args::Selection;
use crate::fields::FIELDS;
use crate::pidfd;
use crate::process::{self, Owner};
use crate::sample::{Breakdown, PerField, Reading, Sample, Source, Vm};

/// What `/proc/<pid>/fd/<fd>` links to for a VM's binary stats fd.
const VM_STATS_LINK: &str = "anon_inode:kvm-vm-stats";

/// Why no sample could be taken.
#[derive(Debug)]
pub enum CollectError {
    /// Nothing is mounted where KVM's debugfs directory would be.
    NoDebugfs {
        mount_point: PathBuf,
    },
    /// debugfs is there, KVM's directory is not.
    NoKvm {
        dir: PathBuf,
    },
    /// debugfs is mounted 0700, and lockdown refuses it even to root.
    NoPermission {
        dir: PathBuf,
    },
    Debugfs(DebugfsError),
    /// A breakdown was asked for, and kvm_shadow_stats.ko's directory is not there.
    NoBreakdown {
        dir: PathBuf,
    },
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDebugfs { mount_point } => write!(
                f,
                "debugfs is not mounted on {0} (mount -t debugfs none {0})",
                mount_point.display()
            ),
            Self::NoKvm { dir } => write!(
                f,
                "KVM is not loaded: there is no {} (modprobe kvm_intel or kvm_amd)",
                dir.display()
            ),
            Self::NoPermission { dir } => write!(
                f,
                "permission denied reading {}: run as root",
                dir.display()
            ),
            Self::Debugfs(error) => error.fmt(f),
            Self::NoBreakdown { dir } => write!(
                f,
                "kvm_shadow_stats.ko is not loaded: there is no {} (modprobe kvm_shadow_stats)",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for CollectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Debugfs(error) => Some(error),
            _ => None,
        }
    }
}

pub struct Collector {
    debugfs: KvmDebugfs,
    shadow_stats: ShadowStatsDebugfs,
    proc_root: PathBuf,
    selection: Selection,
    require_breakdown: bool,
    check_in_step: bool,
}

impl Collector {
    /// A collector of the VMs listed in `debugfs`, with their breakdowns in `shadow_stats`
    /// where it has them, whose owners are in the procfs at `proc_root`.
    pub fn new(
        debugfs: KvmDebugfs,
        shadow_stats: ShadowStatsDebugfs,
        proc_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            debugfs,
            shadow_stats,
            proc_root: proc_root.into(),
            selection: Selection::default(),
            require_breakdown: false,
            check_in_step: false,
        }
    }

    /// Reads only the VMs of `selection`.
    pub fn select(self, selection: Selection) -> Self {
        Self { selection, ..self }
    }

    /// Fails every sample while kvm_shadow_stats.ko is not loaded.
    pub fn require_breakdown(self) -> Self {
        Self {
            require_breakdown: true,
            ..self
        }
    }

    /// Reads each VM's KVM stats again after its breakdown, to tell whether the two are of one
    /// moment: [`Vm::in_step`].
    pub fn check_in_step(self) -> Self {
        Self {
            check_in_step: true,
            ..self
        }
    }

    /// Every VM, skipping those that are destroyed while they are read.
    ///
    /// kvm_shadow_stats.ko's files are not ABI: one that cannot be read or says what this tool
    /// does not understand costs its VM the breakdown, with a warning in the sample, and
    /// never the stats that KVM keeps.
    pub fn sample(&self) -> Result<Sample, CollectError> {
        let in_kvm_debugfs: BTreeSet<VmId> = self
            .debugfs
            .vms()
            .map_err(|error| self.explain(error))?
            .into_iter()
            .collect();
        let module_loaded = self.shadow_stats.is_present();
        if self.require_breakdown && !module_loaded {
            return Err(CollectError::NoBreakdown {
                dir: self.shadow_stats.root().to_owned(),
            });
        }
        let mut warnings = Vec::new();
        let in_module = self.module_vms().unwrap_or_else(|error| {
            warnings.push(format!("{error}; no VM has a breakdown in this sample"));
            Vec::new()
        });
        let ids: BTreeSet<VmId> = in_kvm_debugfs.iter().chain(&in_module).copied().collect();
        let mut vms_per_owner = HashMap::<u32, usize>::new();
        for id in &ids {
            *vms_per_owner.entry(id.pid).or_default() += 1;
        }
        let mut vms = Vec::with_capacity(ids.len());
        for id in ids {
            let owner = process::owner(&self.proc_root, id.pid);
            if !self.selection.contains(id, owner.guest.as_deref()) {
                continue;
            }
            // A stats fd tells which process created its VM, not which of its VMs it is.
            let stats = (vms_per_owner.get(&id.pid) == Some(&1))
                .then(|| self.borrow_vm_stats(id.pid))
                .flatten();
            let listed_by_kvm = in_kvm_debugfs.contains(&id);
            let Some(mut vm) = self
                .read_vm(id, owner, listed_by_kvm, stats.as_ref())
                .map_err(CollectError::Debugfs)?
            else {
                continue;
            };
            vm.breakdown = self.read_breakdown(id).unwrap_or_else(|error| {
                warnings.push(format!("VM {id}: {error}; its breakdown is left out"));
                None
            });
            if self.check_in_step && vm.breakdown.is_some() {
                // A VM destroyed meanwhile has no stats to compare: not in step.
                let again = self
                    .read_readings(id, listed_by_kvm, stats.as_ref())
                    .map_err(CollectError::Debugfs)?;
                vm.in_step = Some(again.is_some_and(|again| in_step(&vm.readings, &again)));
            }
            // Without a directory in KVM's debugfs, only the module's can tell that the VM was
            // destroyed meanwhile, or that the module went away.
            if !listed_by_kvm
                && vm.breakdown.is_none()
                && !self.shadow_stats.dir(Scope::Vm(id)).is_dir()
            {
                continue;
            }
            vms.push(vm);
        }
        let mut sample = Sample::new(SystemTime::now(), Instant::now(), vms);
        // A module that went away during the sample took the breakdowns after it along.
        sample.shadow_stats_loaded = module_loaded && self.shadow_stats.is_present();
        sample.warnings = warnings;
        Ok(sample)
    }

    /// The VMs kvm_shadow_stats.ko has a directory for: none while it is not loaded.
    fn module_vms(&self) -> Result<Vec<VmId>, BreakdownError> {
        match self.shadow_stats.vms() {
            Err(BreakdownError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            listed => listed,
        }
    }

    /// Reads one VM, whose process is `owner`, from `stats` where they have a value and, if
    /// `listed_by_kvm`, from the VM's directory in KVM's debugfs otherwise; `None` if that
    /// directory is gone, as the VM no longer exists.
    fn read_vm(
        &self,
        id: VmId,
        owner: Owner,
        listed_by_kvm: bool,
        stats: Option<&Stats<File>>,
    ) -> Result<Option<Vm>, DebugfsError> {
        let Some(readings) = self.read_readings(id, listed_by_kvm, stats)? else {
            return Ok(None);
        };
        Ok(Some(Vm {
            id,
            comm: owner.comm,
            guest: owner.guest,
            readings,
            rates: [None; FIELDS.len()],
            breakdown: None,
            in_step: None,
        }))
    }

    /// The KVM stats of [`Self::read_vm`]; `None` if the VM is gone.
    fn read_readings(
        &self,
        id: VmId,
        listed_by_kvm: bool,
        stats: Option<&Stats<File>>,
    ) -> Result<Option<PerField<Option<Reading>>>, DebugfsError> {
        let mut readings = [None; FIELDS.len()];
        for (reading, field) in readings.iter_mut().zip(&FIELDS) {
            if let Some(value) = stats.and_then(|s| s.read_single(field.stat).ok()) {
                *reading = Some(Reading {
                    value,
                    source: Source::StatsFd,
                });
                continue;
            }
            if !listed_by_kvm {
                continue;
            }
            match self.debugfs.vm_stat(id.pid, id.fd, field.stat) {
                Ok(value) => {
                    *reading = Some(Reading {
                        value,
                        source: Source::Debugfs,
                    });
                }
                // Whatever failed, a VM whose directory is gone was destroyed meanwhile.
                Err(_) if !self.debugfs.vm_dir(id.pid, id.fd).is_dir() => return Ok(None),
                // A kernel that does not have this stat.
                Err(DebugfsError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(Some(readings))
    }

    /// The VM's breakdown, `None` if kvm_shadow_stats.ko has none: it is not loaded, it could
    /// not allocate the VM's counters, or the VM or the module went away meanwhile.
    fn read_breakdown(&self, id: VmId) -> Result<Option<Breakdown>, BreakdownError> {
        let scope = Scope::Vm(id);
        let read = || -> Result<Breakdown, BreakdownError> {
            Ok(Breakdown {
                pages: self.shadow_stats.pages(scope)?,
                totals: self.shadow_stats.vm_totals(id)?,
            })
        };
        match read() {
            Ok(breakdown) => Ok(Some(breakdown)),
            // The module makes a VM's directory before its files.
            Err(BreakdownError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            // debugfs fails a read with EIO once the file is being removed, which may be
            // before its directory is gone: the VM or the module is going away.
            Err(BreakdownError::Io { source, .. }) if source.raw_os_error() == Some(libc::EIO) => {
                Ok(None)
            }
            // Whatever else failed, a directory that is gone now means no breakdown.
            Err(BreakdownError::Io { .. }) if !self.shadow_stats.dir(scope).is_dir() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The binary stats of the only VM process `pid` created, if the process has them open and
    /// this process may borrow them (root, or `CAP_SYS_PTRACE`).
    ///
    /// Borrowed anew for every sample and closed before the next one: a stats fd kept open
    /// here would keep the VM, and its memory, alive after its owner let go. Reads are
    /// positional, so the owner's file offset stays where it was.
    fn borrow_vm_stats(&self, pid: u32) -> Option<Stats<File>> {
        let fd = self.only_vm_stats_fd(pid)?;
        let file = File::from(pidfd::get_fd(pid, fd).ok()?);
        // The owner may have closed the fd and reused its number since it was listed.
        let link = self.proc_root.join(format!("self/fd/{}", file.as_raw_fd()));
        if !links_to(&link, VM_STATS_LINK) {
            return None;
        }
        let stats = Stats::new(file).ok()?;
        // A stats fd may have been passed over from the process that created its VM.
        (stats.id().ok()? == format!("kvm-{pid}")).then_some(stats)
    }

    /// The fd of process `pid` that is a VM's binary stats, if it has exactly one.
    fn only_vm_stats_fd(&self, pid: u32) -> Option<RawFd> {
        let fds = fs::read_dir(self.proc_root.join(pid.to_string()).join("fd")).ok()?;
        let mut found = None;
        for entry in fds {
            let entry = entry.ok()?;
            if !links_to(&entry.path(), VM_STATS_LINK) {
                continue;
            }
            if found.is_some() {
                return None;
            }
            found = Some(entry.file_name().to_str()?.parse().ok()?);
        }
        found
    }

    /// Turns a failure to list the VMs into the reason an operator can act on.
    fn explain(&self, error: DebugfsError) -> CollectError {
        let DebugfsError::Io { source, .. } = &error else {
            return CollectError::Debugfs(error);
        };
        let dir = self.debugfs.root().to_owned();
        match source.kind() {
            io::ErrorKind::PermissionDenied => CollectError::NoPermission { dir },
            io::ErrorKind::NotFound => {
                let mount_point = dir.parent().unwrap_or(Path::new("/")).to_owned();
                let mounts = fs::read_to_string(self.proc_root.join("self/mounts"));
                // Without a mount table to tell, the directory is what is missing.
                if mounts.is_ok_and(|mounts| !is_debugfs_mount(&mounts, &mount_point)) {
                    CollectError::NoDebugfs { mount_point }
                } else {
                    CollectError::NoKvm { dir }
                }
            }
            _ => CollectError::Debugfs(error),
        }
    }
}

/// Whether KVM's stats read `before` and `after` a breakdown say that no shadow page came or
/// went in between: the pages, the allocations and the zaps all read, and unchanged. The pages
/// alone could hide an allocation undone by a zap.
fn in_step(before: &PerField<Option<Reading>>, after: &PerField<Option<Reading>>) -> bool {
    before.iter().zip(after).all(|(before, after)| {
        matches!((before, after), (Some(before), Some(after)) if before.value == after.value)
    })
}

fn links_to(link: &Path, target: &str) -> bool {
    fs::read_link(link).is_ok_and(|found| found.as_os_str() == target)
}

/// Whether `mounts`, in the format of `/proc/self/mounts`, has a debugfs on `mount_point`.
fn is_debugfs_mount(mounts: &str, mount_point: &Path) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split(' ').skip(1);
        fields
            .next()
            .is_some_and(|path| Path::new(path) == mount_point)
            && fields.next() == Some("debugfs")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory laid out like KVM's debugfs directory, removed when dropped.
    struct FakeDebugfs {
        dir: PathBuf,
    }

    impl FakeDebugfs {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("kvm-shadow-top-{}-{test}", std::process::id()))
                .join("kvm");
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir creatable");
            fs::write(dir.join("mmu_shadow_pages"), "0\n").expect("writable");
            Self { dir }
        }

        fn add_vm(&self, name: &str, stats: &[(&str, &str)]) {
            let vm = self.dir.join(name);
            fs::create_dir_all(vm.join("vcpu0")).expect("temp dir creatable");
            for (stat, value) in stats {
                fs::write(vm.join(stat), value).expect("writable");
            }
        }

        /// Where kvm_shadow_stats.ko's directory would be, next to KVM's.
        fn shadow_stats(&self) -> ShadowStatsDebugfs {
            ShadowStatsDebugfs::at(self.dir.with_file_name("kvm_shadow_stats"))
        }

        /// Loads the module, as far as its directory goes.
        fn load_module(&self) {
            fs::create_dir_all(self.shadow_stats().root()).expect("temp dir creatable");
        }

        /// Gives VM `name` a breakdown directory with these files.
        fn add_breakdown(&self, name: &str, pages: &str, totals: &str) {
            let dir = self.shadow_stats().root().join(name);
            fs::create_dir_all(&dir).expect("temp dir creatable");
            fs::write(dir.join("pages"), pages).expect("writable");
            fs::write(dir.join("totals"), totals).expect("writable");
            fs::write(dir.join("peak"), "1\n").expect("writable");
        }

        fn collector(&self) -> Collector {
            Collector::new(KvmDebugfs::at(&self.dir), self.shadow_stats(), "/proc")
        }
    }

    impl Drop for FakeDebugfs {
        fn drop(&mut self) {
            if let Some(parent) = self.dir.parent() {
                let _ = fs::remove_dir_all(parent);
            }
        }
    }

    /// Larger than any pid the kernel hands out, so that no process owns these VMs and their
    /// stats can only come from debugfs.
    const NO_PID: u32 = 1 << 23;

    fn debugfs_readings(values: [Option<u64>; 3]) -> [Option<Reading>; 3] {
        values.map(|value| {
            value.map(|value| Reading {
                value,
                source: Source::Debugfs,
            })
        })
    }

    #[test]
    fn falls_back_to_debugfs_and_sorts() {
        let fake = FakeDebugfs::new("fallback");
        let all = [
            ("mmu_shadow_pages", "5\n"),
            ("mmu_cache_miss", "9\n"),
            ("mmu_shadow_zapped", "4\n"),
        ];
        fake.add_vm(&format!("{NO_PID}-12"), &all);
        // A kernel without the two counters.
        fake.add_vm(&format!("{NO_PID}-13"), &[("mmu_shadow_pages", "40\n")]);

        let sample = fake.collector().sample().expect("a sample");
        let vms: Vec<_> = sample
            .vms
            .iter()
            .map(|vm| (vm.id.fd, vm.comm.clone(), vm.readings))
            .collect();
        assert_eq!(
            vms,
            [
                (13, None, debugfs_readings([Some(40), None, None])),
                (12, None, debugfs_readings([Some(5), Some(9), Some(4)])),
            ]
        );
    }

    const PAGES: &str = "level direct guest_mode smm pages allocated zapped bytes\n\
                         1 0 0 0 3 4 1 24576\n\
                         4 1 0 0 1 1 0 4096\n";
    const TOTALS: &str = "pages 4\npeak 5\nallocated 5\nzapped 1\nbytes 28672\n\
                          page_table_bytes 16384\n";

    #[test]
    fn reads_the_breakdowns_the_module_has() {
        let fake = FakeDebugfs::new("breakdown");
        let stats = [("mmu_shadow_pages", "4\n")];
        fake.add_vm(&format!("{NO_PID}-12"), &stats);
        fake.add_vm(&format!("{NO_PID}-13"), &stats);
        // Without the module, nothing has one.
        let sample = fake.collector().sample().expect("a sample");
        assert!(sample.vms.iter().all(|vm| vm.breakdown.is_none()));

        fake.load_module();
        fake.add_breakdown(&format!("{NO_PID}-12"), PAGES, TOTALS);
        let sample = fake.collector().sample().expect("a sample");
        let breakdowns: Vec<_> = sample
            .vms
            .iter()
            .map(|vm| (vm.id.fd, vm.breakdown.as_ref().map(|b| b.buckets().len())))
            .collect();
        assert_eq!(breakdowns, [(12, Some(2)), (13, None)]);
        let breakdown = sample.vms[0].breakdown.as_ref().expect("a breakdown");
        assert_eq!(
            (breakdown.direct_pages(), breakdown.guest_mode_pages()),
            (1, 0)
        );
        assert_eq!(
            (breakdown.totals.peak, breakdown.totals.sums.bytes),
            (5, 28672)
        );
    }

    #[test]
    fn stats_that_held_still_over_the_breakdown_are_in_step() {
        let fake = FakeDebugfs::new("in-step");
        let stats = [
            ("mmu_shadow_pages", "4\n"),
            ("mmu_cache_miss", "5\n"),
            ("mmu_shadow_zapped", "1\n"),
        ];
        fake.add_vm(&format!("{NO_PID}-12"), &stats);
        fake.add_vm(&format!("{NO_PID}-13"), &stats);
        fake.load_module();
        fake.add_breakdown(&format!("{NO_PID}-12"), PAGES, TOTALS);
        // Checked only when asked for.
        let sample = fake.collector().sample().expect("a sample");
        assert!(sample.vms.iter().all(|vm| vm.in_step.is_none()));
        let sample = fake.collector().check_in_step().sample().expect("a sample");
        let in_step: Vec<_> = sample.vms.iter().map(|vm| (vm.id.fd, vm.in_step)).collect();
        // Only a VM with a breakdown has something to be in step with.
        assert_eq!(in_step, [(12, Some(true)), (13, None)]);
    }

    #[test]
    fn stats_that_moved_or_are_missing_are_not_in_step() {
        let reading = |value| {
            Some(Reading {
                value,
                source: Source::Debugfs,
            })
        };
        let before = [reading(4), reading(5), reading(1)];
        assert!(in_step(&before, &before));
        // An allocation undone by a zap leaves the pages as they were.
        assert!(!in_step(&before, &[reading(4), reading(6), reading(2)]));
        assert!(!in_step(&before, &[reading(5), reading(6), reading(1)]));
        let unread = [reading(4), reading(5), None];
        assert!(!in_step(&unread, &unread));
    }

    /// The module's files are not ABI: one it cannot make sense of costs that VM its breakdown,
    /// with a warning, and no VM its KVM stats nor another VM its breakdown.
    #[test]
    fn a_broken_breakdown_is_a_warning() {
        let fake = FakeDebugfs::new("broken-breakdown");
        for fd in [12, 13] {
            fake.add_vm(&format!("{NO_PID}-{fd}"), &[("mmu_shadow_pages", "4\n")]);
        }
        fake.add_breakdown(&format!("{NO_PID}-12"), PAGES, "pages 4\n");
        fake.add_breakdown(&format!("{NO_PID}-13"), PAGES, TOTALS);
        let sample = fake.collector().sample().expect("a sample");
        let vms: Vec<_> = sample
            .vms
            .iter()
            .map(|vm| (vm.id.fd, vm.readings[0], vm.breakdown.is_some()))
            .collect();
        let four = debugfs_readings([Some(4), None, None])[0];
        assert_eq!(vms, [(12, four, false), (13, four, true)]);
        assert!(sample.shadow_stats_loaded);
        assert_eq!(sample.warnings.len(), 1, "{:?}", sample.warnings);
        let warning = &sample.warnings[0];
        assert!(
            warning.starts_with(&format!("VM {NO_PID}-12: "))
                && warning.contains("totals")
                && warning.ends_with("; its breakdown is left out"),
            "{warning}"
        );
        // --breakdown shows the VM without one too.
        let sample = fake.collector().require_breakdown().sample();
        assert_eq!(sample.expect("a sample").warnings.len(), 1);
    }

    #[test]
    fn without_the_module_nothing_is_loaded_and_nothing_is_wrong() {
        let fake = FakeDebugfs::new("no-module");
        fake.add_vm(&format!("{NO_PID}-12"), &[("mmu_shadow_pages", "4\n")]);
        let sample = fake.collector().sample().expect("a sample");
        assert!(!sample.shadow_stats_loaded);
        assert!(sample.warnings.is_empty());
        fake.load_module();
        let sample = fake.collector().sample().expect("a sample");
        assert!(sample.shadow_stats_loaded);
        assert_eq!(sample.vms[0].breakdown, None);
        assert!(sample.warnings.is_empty(), "{:?}", sample.warnings);
    }

    #[test]
    fn a_breakdown_directory_without_its_files_yet_is_no_breakdown() {
        let fake = FakeDebugfs::new("empty-breakdown");
        fake.add_vm(&format!("{NO_PID}-12"), &[("mmu_shadow_pages", "4\n")]);
        let vm = VmId::new(NO_PID, 12);
        fs::create_dir_all(fake.shadow_stats().dir(Scope::Vm(vm))).expect("temp dir creatable");
        let sample = fake.collector().sample().expect("a sample");
        assert_eq!(sample.vms.len(), 1);
        assert_eq!(sample.vms[0].breakdown, None);
    }

    #[test]
    fn a_breakdown_can_be_required() {
        let fake = FakeDebugfs::new("required");
        fake.add_vm(&format!("{NO_PID}-12"), &[("mmu_shadow_pages", "4\n")]);
        let collector = fake.collector().require_breakdown();
        let error = collector.sample().expect_err("no module");
        assert!(
            matches!(&error, CollectError::NoBreakdown { dir } if *dir == fake.shadow_stats().root()),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .starts_with("kvm_shadow_stats.ko is not loaded: there is no ")
        );
        fake.load_module();
        assert_eq!(collector.sample().expect("a sample").vms.len(), 1);
    }

    /// The VM of [`NO_PID`] named `<pid>-<fd>`, or `<pid>-<fd>.<duplicate>`.
    fn vm_named(fd: i32, duplicate: u32) -> VmId {
        VmId {
            pid: NO_PID,
            fd,
            duplicate,
        }
    }

    #[test]
    fn a_vm_kvm_has_no_directory_for_is_sampled_on_its_own() {
        let fake = FakeDebugfs::new("duplicate");
        fake.add_vm(
            &format!("{NO_PID}-12"),
            &[("mmu_shadow_pages", "4\n"), ("mmu_cache_miss", "5\n")],
        );
        fake.add_breakdown(&format!("{NO_PID}-12"), PAGES, TOTALS);
        fake.add_breakdown(
            &format!("{NO_PID}-12.1"),
            "level direct guest_mode smm pages allocated zapped bytes\n2 0 0 0 1 1 0 8192\n",
            "pages 1\npeak 2\nallocated 1\nzapped 0\nbytes 8192\npage_table_bytes 4096\n",
        );
        let sample = fake.collector().sample().expect("a sample");
        let vms: Vec<_> = sample
            .vms
            .iter()
            .map(|vm| {
                let breakdown = vm.breakdown.as_ref().expect("a breakdown");
                (vm.id, vm.readings, breakdown.totals.peak)
            })
            .collect();
        assert_eq!(
            vms,
            [
                (
                    vm_named(12, 0),
                    debugfs_readings([Some(4), Some(5), None]),
                    5
                ),
                // Not the stats of the other's directory in KVM's debugfs.
                (vm_named(12, 1), [None; 3], 2),
            ]
        );
    }

    #[test]
    fn a_duplicate_without_its_files_yet_is_still_a_vm() {
        let fake = FakeDebugfs::new("duplicate-empty");
        fake.add_vm(&format!("{NO_PID}-12"), &[("mmu_shadow_pages", "4\n")]);
        fs::create_dir_all(fake.shadow_stats().dir(Scope::Vm(vm_named(12, 1))))
            .expect("temp dir creatable");
        let sample = fake.collector().sample().expect("a sample");
        let vms: Vec<_> = sample
            .vms
            .iter()
            .map(|vm| (vm.id, vm.breakdown.is_some()))
            .collect();
        assert_eq!(vms, [(vm_named(12, 0), false), (vm_named(12, 1), false)]);
    }

    #[test]
    fn reads_only_the_vms_selected() {
        let fake = FakeDebugfs::new("select");
        for fd in [12, 13] {
            fake.add_vm(&format!("{NO_PID}-{fd}"), &[("mmu_shadow_pages", "4\n")]);
        }
        fake.add_vm(
            &format!("{}-12", NO_PID + 1),
            &[("mmu_shadow_pages", "4\n")],
        );
        let ids = |args: &[&str]| {
            let parsed = crate::args::parse(args.iter().map(std::ffi::OsString::from));
            let Ok(crate::args::Command::Run(options)) = parsed else {
                panic!("{args:?} parse");
            };
            let sample = fake
                .collector()
                .select(options.selection)
                .sample()
                .expect("a sample");
            sample
                .vms
                .iter()
                .map(|vm| vm.id.to_string())
                .collect::<Vec<_>>()
        };
        let (a, b, c) = (
            format!("{NO_PID}-12"),
            format!("{NO_PID}-13"),
            format!("{}-12", NO_PID + 1),
        );
        assert_eq!(ids(&[]), [&*a, &*b, &*c]);
        assert_eq!(ids(&["-p", &NO_PID.to_string()]), [&*a, &*b]);
        assert_eq!(ids(&["-p", &b]), [&*b]);
        assert_eq!(ids(&["-p", &format!("{b},{}", NO_PID + 1)]), [&*b, &*c]);
        assert!(ids(&["-p", "1"]).is_empty());

        fake.load_module();
        let d = format!("{NO_PID}-12.1");
        fake.add_breakdown(&d, PAGES, TOTALS);
        assert_eq!(ids(&[]), [&*a, &*b, &*c, &*d]);
        assert_eq!(ids(&["-p", &NO_PID.to_string()]), [&*a, &*b, &*d]);
        assert_eq!(ids(&["-p", &a]), [&*a]);
        assert_eq!(ids(&["-p", &d]), [&*d]);
    }

    #[test]
    fn guest_selects_by_the_name_on_the_owners_command_line() {
        let fake = FakeDebugfs::new("guest");
        for owner in [NO_PID, NO_PID + 1] {
            fake.add_vm(&format!("{owner}-12"), &[("mmu_shadow_pages", "4\n")]);
        }
        let proc_root = fake.dir.with_file_name("proc");
        let process = proc_root.join(NO_PID.to_string());
        fs::create_dir_all(&process).expect("temp dir creatable");
        fs::write(process.join("comm"), "qemu-system-x86\n").expect("writable");
        fs::write(
            process.join("cmdline"),
            "qemu-system-x86_64\0-name\0guest=web1,debug-threads=on\0",
        )
        .expect("writable");
        let ids = |args: &[&str]| {
            let parsed = crate::args::parse(args.iter().map(std::ffi::OsString::from));
            let Ok(crate::args::Command::Run(options)) = parsed else {
                panic!("{args:?} parse");
            };
            let collector =
                Collector::new(KvmDebugfs::at(&fake.dir), fake.shadow_stats(), &proc_root);
            let sample = collector
                .select(options.selection)
                .sample()
                .expect("a sample");
            sample
                .vms
                .iter()
                .map(|vm| (vm.id.pid, vm.guest.clone()))
                .collect::<Vec<_>>()
        };
        let web1 = || (NO_PID, Some("web1".to_owned()));
        assert_eq!(ids(&["-g", "web1"]), [web1()]);
        assert!(ids(&["-g", "web"]).is_empty());
        assert_eq!(
            ids(&["-g", "web1", "-p", &(NO_PID + 1).to_string()]),
            [web1(), (NO_PID + 1, None)]
        );
    }

    #[test]
    fn a_vm_that_is_gone_is_skipped() {
        let fake = FakeDebugfs::new("gone");
        let collector = fake.collector();
        assert_eq!(
            collector
                .read_vm(VmId::new(NO_PID, 3), Owner::default(), true, None)
                .ok(),
            Some(None)
        );
    }

    #[test]
    fn a_broken_stat_is_an_error() {
        let fake = FakeDebugfs::new("broken");
        fake.add_vm(&format!("{NO_PID}-12"), &[("mmu_shadow_pages", "many\n")]);
        assert!(matches!(
            fake.collector().sample(),
            Err(CollectError::Debugfs(DebugfsError::NotANumber { .. }))
        ));
    }

    #[test]
    fn a_missing_kvm_directory_is_explained() {
        let fake = FakeDebugfs::new("missing");
        fs::remove_dir_all(&fake.dir).expect("removable");
        let error = fake.collector().sample().expect_err("no directory");
        // A temporary directory is no debugfs mount.
        assert!(
            matches!(&error, CollectError::NoDebugfs { mount_point } if Some(mount_point.as_path()) == fake.dir.parent())
        );
        assert!(error.to_string().starts_with("debugfs is not mounted on "));

        // Where the mount table cannot be read, the directory is what is missing.
        let collector = Collector::new(
            KvmDebugfs::at(&fake.dir),
            fake.shadow_stats(),
            "/nonexistent",
        );
        assert!(matches!(
            collector.sample(),
            Err(CollectError::NoKvm { .. })
        ));
    }

    #[test]
    fn finds_the_only_vm_stats_fd() {
        let fake = FakeDebugfs::new("proc");
        let proc_root = fake.dir.with_file_name("proc");
        let fds = proc_root.join("1234/fd");
        fs::create_dir_all(&fds).expect("temp dir creatable");
        let link = |fd: &str, target: &str| {
            std::os::unix::fs::symlink(target, fds.join(fd)).expect("symlink creatable");
        };
        link("0", "/dev/null");
        link("4", "anon_inode:kvm-vm");
        link("6", "anon_inode:kvm-vcpu-stats:0");
        let collector = Collector::new(KvmDebugfs::at(&fake.dir), fake.shadow_stats(), &proc_root);
        assert_eq!(collector.only_vm_stats_fd(1234), None);
        link("5", VM_STATS_LINK);
        assert_eq!(collector.only_vm_stats_fd(1234), Some(5));
        // Which of two is whose cannot be told.
        link("9", VM_STATS_LINK);
        assert_eq!(collector.only_vm_stats_fd(1234), None);
        assert_eq!(collector.only_vm_stats_fd(NO_PID), None);
    }

    #[test]
    fn recognises_debugfs_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      debugfs /sys/kernel/debug debugfs rw,relatime 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n";
        assert!(is_debugfs_mount(mounts, Path::new("/sys/kernel/debug")));
        assert!(!is_debugfs_mount(mounts, Path::new("/tmp")));
        assert!(!is_debugfs_mount(mounts, Path::new("/sys")));
        assert!(!is_debugfs_mount("", Path::new("/sys/kernel/debug")));
    }
}
