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

    /// Whether the directory is there at all: it is not if debugfs is not mounted.
    pub fn is_present(&self) -> bool {
        self.root.is_dir()
    }

    /// The directory of the VM that process `pid` created as fd `vm_fd`.
    pub fn vm_dir(&self, pid: u32, vm_fd: RawFd) -> PathBuf {
        self.root.join(format!("{pid}-{vm_fd}"))
    }

    /// The value of `stat` summed over all VMs.
    pub fn global(&self, stat: &str) -> Result<u64, DebugfsError> {
        read_number(&self.root.join(stat))
    }

    /// The value of `stat` for the VM that process `pid` created as fd `vm_fd`.
    pub fn vm_stat(&self, pid: u32, vm_fd: RawFd, stat: &str) -> Result<u64, DebugfsError> {
        read_number(&self.vm_dir(pid, vm_fd).join(stat))
    }

    /// The directories of all VMs, whoever created them.
    pub fn vm_dirs(&self) -> Result<Vec<PathBuf>, DebugfsError> {
        let io_error = |source| DebugfsError::Io {
            path: self.root.clone(),
            source,
        };
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let name = entry.file_name();
            if name.to_str().is_some_and(is_vm_dir_name) && entry.path().is_dir() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    /// The value of `stat` in `vm_dir`, one of the directories [`Self::vm_dirs`] lists.
    pub fn stat_in(&self, vm_dir: &Path, stat: &str) -> Result<u64, DebugfsError> {
        read_number(&vm_dir.join(stat))
    }

    /// `stat` added up over the directories of all VMs, to compare with [`Self::global`].
    pub fn sum_over_vms(&self, stat: &str) -> Result<u64, DebugfsError> {
        self.vm_dirs()?
            .iter()
            .map(|dir| self.stat_in(dir, stat))
            .try_fold(0u64, |sum, value| Ok(sum.saturating_add(value?)))
    }
}

/// Whether `name` is `<pid>-<fd>`, as KVM names a VM's directory; other entries are stats.
fn is_vm_dir_name(name: &str) -> bool {
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    name.split_once('-')
        .is_some_and(|(pid, fd)| all_digits(pid) && all_digits(fd))
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
        assert_eq!(debugfs.vm_dirs().expect("listable").len(), 2);
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
        assert!(is_vm_dir_name("1234-5"));
        assert!(!is_vm_dir_name("mmu_shadow_pages"));
        assert!(!is_vm_dir_name("-5"));
        assert!(!is_vm_dir_name("12-"));
        assert!(!is_vm_dir_name("12-a"));
    }
}
