// SPDX-License-Identifier: GPL-2.0

//! Reads KVM's stats from debugfs, the second place besides the binary stats fd where KVM
//! publishes them: `kvm/<stat>` holds the sum over all VMs and `kvm/<pid>-<vm fd>/<stat>` the
//! value of one VM, whose directory KVM names after the creating process and the VM's fd.

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
        self.root.join(VmId { pid, fd: vm_fd }.to_string())
    }

    /// The value of `stat` summed over all VMs.
    pub fn global(&self, stat: &str) -> Result<u64, DebugfsError> {
        read_number(&self.root.join(stat))
    }

    /// The value of `stat` for the VM that process `pid` created as fd `vm_fd`.
    pub fn vm_stat(&self, pid: u32, vm_fd: RawFd, stat: &str) -> Result<u64, DebugfsError> {
        read_number(&self.vm_dir(pid, vm_fd).join(stat))
    }

    /// All VMs that have a directory, whoever created them, in the order of their ids.
    pub fn vms(&self) -> Result<Vec<VmId>, DebugfsError> {
        let io_error = |source| DebugfsError::Io {
            path: self.root.clone(),
            source,
        };
        let mut vms = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let Some(vm) = entry.file_name().to_str().and_then(VmId::parse) else {
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

/// A VM as KVM names its debugfs directory: `<pid>-<vm fd>`, the process that created it and
/// the fd it got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId {
    pub pid: u32,
    pub fd: RawFd,
}

impl VmId {
    /// The VM a directory name stands for, `None` for the other entries, which are stats.
    pub fn parse(name: &str) -> Option<Self> {
        let (pid, fd) = name.split_once('-')?;
        // `parse` alone would take a sign, which KVM never writes.
        let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(pid) || !all_digits(fd) {
            return None;
        }
        Some(Self {
            pid: pid.parse().ok()?,
            fd: fd.parse().ok()?,
        })
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pid, self.fd)
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
            [VmId { pid: 100, fd: 5 }, VmId { pid: 100, fd: 7 }]
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
        assert_eq!(vm, Some(VmId { pid: 1234, fd: 5 }));
        assert_eq!(vm.map(|vm| vm.to_string()).as_deref(), Some("1234-5"));
        for name in [
            "mmu_shadow_pages",
            "-5",
            "12-",
            "12-a",
            "+12-5",
            "12--5",
            "99999999999-5",
        ] {
            assert_eq!(VmId::parse(name), None, "{name}");
        }
    }
}
