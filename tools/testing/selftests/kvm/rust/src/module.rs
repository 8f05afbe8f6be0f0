// SPDX-License-Identifier: GPL-2.0

//! Loading and unloading kernel modules, for the scenarios that hand accounting over.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Whether the module `name` is loaded.
pub fn is_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// Loads the module file at `path`, with no parameters.
pub fn load(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: finit_module() reads the open file and the NUL-terminated empty parameter string,
    // both of which outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unloads the module `name`, failing rather than waiting if it is in use.
pub fn unload(name: &str) -> io::Result<()> {
    let name =
        CString::new(name).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    // SAFETY: delete_module() reads the NUL-terminated name, which outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
