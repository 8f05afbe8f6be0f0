// SPDX-License-Identifier: GPL-2.0

//! Reads KVM's stats from debugfs, the second place besides the binary stats fd where KVM
//! publishes them: `kvm/<stat>` holds the sum over all VMs and `kvm/<pid>-<vm fd>/<stat>` the
//! value of one VM, whose directory KVM names after the creating process and the VM's fd.
//!
//! A VM that outlived its fd keeps its name, and KVM makes no directory for a new VM of the
//! same process that gets the same fd: only kvm_shadow_stats.ko's debugfs has one, named
//! `<pid>-<vm fd>.<n>`, which is why [`VmId`] has a [`VmId::duplicate`].

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// Where KVM's debugfs directory is when debugfs is mounted at its usual place.
pub const KVM_DEBUGFS_DIR: &str = "/sys/kernel/debug/kvm";

/// What can go wrong reading a debugfs stat.
#[derive(Debug)]
pub enum DebugfsError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    /// The file does not hold one decimal number.
    NotANumber {
        path: PathBuf,
        content: String,
    },
}

impl fmt::Display for DebugfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "reading {}: {source}", path.display()),
            Self::NotANumber { path, content } => {
                write!(f, "{} holds {content:?}, not a number", path.display())
            }
        }
    }
}

impl std::error::Error for DebugfsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::NotANumber { .. } => None,
        }
    }
}

/// KVM's debugfs directory.
#[derive(Debug, Clone)]
pub struct KvmDebugfs {
    root: PathBuf,
}

impl Default for KvmDebugfs {
    fn default() -> Self {
        Self::at(KVM_DEBUGFS_DIR)
    }
}

impl KvmDebugfs {
    /// KVM's debugfs directory at `root`, e.g. a copy made for a test.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the directory is there at all: it is not if debugfs is not mounted.
    pub fn is_present(&self) -> bool {
        self.root.is_dir()
    }

    /// The directory of the VM that process `pid` created as fd `vm_fd`.
    pub fn vm_dir(&self, pid: u32, vm_fd: RawFd) -> PathBuf {
        self.root.join(VmId::new(pid, vm_fd).to_string())
    }

    /// The value of `stat` summed over all VMs.
    pub fn global(&self, stat: &str) -> Result<u64, DebugfsError> {
        read_number(&self.root.join(stat))
    }

    /// The value of `stat` for the VM that process `pid` created as fd `vm_fd`.
    pub fn vm_stat(&self, pid: u32, vm_fd: RawFd, stat: &str) -> Result<u64, DebugfsError> {
        read_number(&self.vm_dir(pid, vm_fd).join(stat))
    }

    /// All VMs that have a directory, whoever created them, in the order of their ids: all of
    /// them with a [`VmId::duplicate`] of 0.
    pub fn vms(&self) -> Result<Vec<VmId>, DebugfsError> {
        let io_error = |source| DebugfsError::Io {
            path: self.root.clone(),
            source,
        };
        let mut vms = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            // KVM never names a directory `<pid>-<fd>.<n>`, and its stats are those of
            // `<pid>-<fd>`'s VM.
            let Some(vm) = entry
                .file_name()
                .to_str()
                .and_then(VmId::parse)
                .filter(|vm| vm.duplicate == 0)
            else {
                continue;
            };
            if entry.path().is_dir() {
                vms.push(vm);
            }
        }
        vms.sort();
        Ok(vms)
    }

    /// `stat` added up over the directories of all VMs, to compare with [`Self::global`].
    pub fn sum_over_vms(&self, stat: &str) -> Result<u64, DebugfsError> {
        self.vms()?
            .iter()
            .map(|vm| self.vm_stat(vm.pid, vm.fd, stat))
            .try_fold(0u64, |sum, value| Ok(sum.saturating_add(value?)))
    }
}

/// A VM as its debugfs directory names it: `<pid>-<vm fd>`, the process that created it and
/// the fd it got there, or `<pid>-<vm fd>.<n>` where a VM that outlived its fd holds
/// `<pid>-<vm fd>` (a name only kvm_shadow_stats.ko gives).
///
/// Ordered by pid, fd, then `duplicate`, so that a listing shows a VM's duplicates after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId {
    pub pid: u32,
    pub fd: RawFd,
    /// 0 for `<pid>-<fd>`, `n` for `<pid>-<fd>.<n>`, which starts at 1.
    pub duplicate: u32,
}

impl VmId {
    /// The VM named `<pid>-<fd>`, as KVM names VMs.
    pub const fn new(pid: u32, fd: RawFd) -> Self {
        Self {
            pid,
            fd,
            duplicate: 0,
        }
    }

    /// The VM a directory name stands for, `None` for the other entries, which are stats.
    pub fn parse(name: &str) -> Option<Self> {
        let (pid, rest) = name.split_once('-')?;
        let (fd, duplicate) = match rest.split_once('.') {
            Some((fd, duplicate)) => (fd, duplicate.parse().ok()?),
            None => (rest, 0),
        };
        let fd: u32 = fd.parse().ok()?;
        let vm = Self {
            pid: pid.parse().ok()?,
            fd: fd.try_into().ok()?,
            duplicate,
        };
        // Only the spelling the kernel writes: no sign, no leading zero, no `.0`.
        (vm.to_string() == name).then_some(vm)
    }
}

/// The directory name: `<pid>-<fd>` or `<pid>-<fd>.<n>`.
impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pid, self.fd)?;
        if self.duplicate != 0 {
            write!(f, ".{}", self.duplicate)?;
        }
        Ok(())
    }
}

fn read_number(path: &Path) -> Result<u64, DebugfsError> {
    let content = fs::read_to_string(path).map_err(|source| DebugfsError::Io {
        path: path.to_owned(),
        source,
    })?;
    content
        .trim()
        .parse()
        .map_err(|_| DebugfsError::NotANumber {
            path: path.to_owned(),
            content,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake KVM debugfs directory with two VMs and a vCPU directory inside one.
    fn fake_debugfs(test: &str) -> KvmDebugfs {
        let root =
            std::env::temp_dir().join(format!("kvm-debugfs-test-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (dir, value) in [("", "12\n"), ("100-5", "5\n"), ("100-7", "7\n")] {
            fs::create_dir_all(root.join(dir)).expect("temp dir creatable");
            fs::write(root.join(dir).join("mmu_shadow_pages"), value).expect("writable");
        }
        fs::create_dir_all(root.join("100-7/vcpu0")).expect("temp dir creatable");
        fs::write(root.join("mmu_unsync"), "x\n").expect("writable");
        KvmDebugfs::at(root)
    }

    #[test]
    fn reads_global_and_per_vm_values() {
        let debugfs = fake_debugfs("values");
        assert!(debugfs.is_present());
        assert_eq!(debugfs.global("mmu_shadow_pages").expect("readable"), 12);
        assert_eq!(
            debugfs
                .vm_stat(100, 7, "mmu_shadow_pages")
                .expect("readable"),
            7
        );
        assert_eq!(
            debugfs.sum_over_vms("mmu_shadow_pages").expect("readable"),
            12
        );
        assert_eq!(
            debugfs.vms().expect("listable"),
            [VmId::new(100, 5), VmId::new(100, 7)]
        );
        fs::remove_dir_all(debugfs.root).expect("removable");
    }

    #[test]
    fn a_duplicate_name_in_kvms_directory_is_no_vm() {
        let debugfs = fake_debugfs("duplicate");
        fs::create_dir_all(debugfs.root.join("100-7.1")).expect("temp dir creatable");
        fs::write(debugfs.root.join("100-7.1/mmu_shadow_pages"), "1\n").expect("writable");
        assert_eq!(
            debugfs.vms().expect("listable"),
            [VmId::new(100, 5), VmId::new(100, 7)]
        );
        assert_eq!(
            debugfs.sum_over_vms("mmu_shadow_pages").expect("readable"),
            12
        );
        fs::remove_dir_all(debugfs.root).expect("removable");
    }

    #[test]
    fn reports_missing_and_malformed_files() {
        let debugfs = fake_debugfs("errors");
        assert!(matches!(
            debugfs.vm_stat(100, 9, "mmu_shadow_pages"),
            Err(DebugfsError::Io { .. })
        ));
        assert!(matches!(
            debugfs.global("mmu_unsync"),
            Err(DebugfsError::NotANumber { content, .. }) if content == "x\n"
        ));
        fs::remove_dir_all(debugfs.root).expect("removable");
    }

    #[test]
    fn recognises_vm_directory_names() {
        let vm = VmId::parse("1234-5");
        assert_eq!(vm, Some(VmId::new(1234, 5)));
        assert_eq!(vm.map(|vm| vm.to_string()).as_deref(), Some("1234-5"));
        for name in [
            "mmu_shadow_pages",
            "-5",
            "12-",
            "12-a",
            "+12-5",
            "12-+5",
            "12--5",
            "012-5",
            "12-05",
            "99999999999-5",
            "1-2147483648",
        ] {
            assert_eq!(VmId::parse(name), None, "{name}");
        }
    }

    #[test]
    fn recognises_the_names_of_duplicates() {
        let vm = VmId::parse("1234-5.2");
        assert_eq!(
            vm,
            Some(VmId {
                pid: 1234,
                fd: 5,
                duplicate: 2
            })
        );
        assert_eq!(vm.map(|vm| vm.to_string()).as_deref(), Some("1234-5.2"));
        for name in [
            "1234-5.",
            "1234-5.0",
            "1234-5.01",
            "1234-5.+1",
            "1234-5.-1",
            "1234-5.1.1",
            "1234.1-5",
            "1234-5.x",
        ] {
            assert_eq!(VmId::parse(name), None, "{name}");
        }
        // A VM's duplicates come right after it.
        let mut names = ["1234-6", "1234-5.10", "1234-5.2", "1234-5"].map(VmId::parse);
        names.sort();
        let names = names.map(|vm| vm.map(|vm| vm.to_string()).unwrap_or_default());
        assert_eq!(names, ["1234-5", "1234-5.2", "1234-5.10", "1234-6"]);
    }
}
