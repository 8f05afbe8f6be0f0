// SPDX-License-Identifier: GPL-2.0

//! Borrowing another process's fd: `pidfd_open()` and `pidfd_getfd()`, which the kernel allows
//! to whoever may ptrace that process (root, or `CAP_SYS_PTRACE`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A pidfd of process `pid`: it stays that process's however its pid is reused, and polls
/// readable once the process has exited.
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open() takes two integers and touches no memory of ours.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// Returns a new fd in this process for the file that process `pid` has as fd `fd`.
pub fn get_fd(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    let pidfd = open(pid)?;
    // SAFETY: pidfd_getfd() takes three integers and touches no memory of ours; `pidfd` stays
    // open for the call.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    owned(fd)
}

/// Takes ownership of the fd a syscall returned, or of its error.
fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the syscall has just created `fd` for this process and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};

    use super::*;

    #[test]
    fn gets_an_fd_of_this_process() {
        let file = File::open("/proc/self/cmdline").expect("readable");
        let copy = get_fd(std::process::id(), file.as_raw_fd()).expect("own fd");
        assert_ne!(copy.as_raw_fd(), file.as_raw_fd());
        assert_eq!(
            fs::read_link(format!("/proc/self/fd/{}", copy.as_raw_fd())).expect("a link"),
            fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("a link"),
        );
    }

    #[test]
    fn a_missing_process_or_fd_is_an_error() {
        assert!(get_fd(1 << 23, 0).is_err());
        assert!(get_fd(u32::MAX, 0).is_err());
        assert!(get_fd(std::process::id(), RawFd::MAX).is_err());
    }
}
