// SPDX-License-Identifier: GPL-2.0

//! Takes a [`Sample`] of the host: the VMs that KVM's debugfs lists, each read through its own
//! binary stats fd where its owner has one open for this process to borrow, and through
//! debugfs otherwise.
//!
//! KVM refuses every ioctl on a VM fd from a process other than the one that created the VM,
//! so a borrowed VM fd cannot give a stats fd; a stats fd the owner opened itself can be read
//! by anyone who holds it.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use kvm_stats::debugfs::{DebugfsError, KvmDebugfs, VmId};
use kvm_stats::stats::Stats;

use crate::fields::FIELDS;
use crate::pidfd;
use crate::process;
use crate::sample::{Reading, Sample, Source, Vm};

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
    proc_root: PathBuf,
}

impl Collector {
    /// A collector of the VMs listed in `debugfs`, whose owners are in the procfs at
    /// `proc_root`.
    pub fn new(debugfs: KvmDebugfs, proc_root: impl Into<PathBuf>) -> Self {
        Self {
            debugfs,
            proc_root: proc_root.into(),
        }
    }

    /// Every VM, skipping those that are destroyed while they are read.
    pub fn sample(&self) -> Result<Sample, CollectError> {
        let ids = self.debugfs.vms().map_err(|error| self.explain(error))?;
        let mut vms_per_owner = HashMap::<u32, usize>::new();
        for id in &ids {
            *vms_per_owner.entry(id.pid).or_default() += 1;
        }
        let mut vms = Vec::with_capacity(ids.len());
        for id in ids {
            // A stats fd tells which process created its VM, not which of its VMs it is.
            let stats = (vms_per_owner.get(&id.pid) == Some(&1))
                .then(|| self.borrow_vm_stats(id.pid))
                .flatten();
            if let Some(vm) = self.read_vm(id, stats).map_err(CollectError::Debugfs)? {
                vms.push(vm);
            }
        }
        Ok(Sample::new(SystemTime::now(), Instant::now(), vms))
    }

    /// Reads one VM from `stats` where they have a value and from debugfs otherwise, or gives
    /// `None` if the VM no longer exists.
    fn read_vm(&self, id: VmId, stats: Option<Stats<File>>) -> Result<Option<Vm>, DebugfsError> {
        let mut readings = [None; FIELDS.len()];
        for (reading, field) in readings.iter_mut().zip(&FIELDS) {
            if let Some(value) = stats.as_ref().and_then(|s| s.read_single(field.stat).ok()) {
                *reading = Some(Reading {
                    value,
                    source: Source::StatsFd,
                });
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
        let (comm, guest) = process::owner(&self.proc_root, id.pid);
        Ok(Some(Vm {
            id,
            comm,
            guest,
            readings,
            rates: [None; FIELDS.len()],
        }))
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

        fn collector(&self) -> Collector {
            Collector::new(KvmDebugfs::at(&self.dir), "/proc")
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

    #[test]
    fn a_vm_that_is_gone_is_skipped() {
        let fake = FakeDebugfs::new("gone");
        let collector = fake.collector();
        assert_eq!(
            collector.read_vm(VmId { pid: NO_PID, fd: 3 }, None).ok(),
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
        let collector = Collector::new(KvmDebugfs::at(&fake.dir), "/nonexistent");
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
        let collector = Collector::new(KvmDebugfs::at(&fake.dir), &proc_root);
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
