// SPDX-License-Identifier: GPL-2.0

//! Shows where a host's shadow MMU pages are: KVM's `mmu_shadow_pages` for all VMs together and
//! for each VM, busiest first, from debugfs, every second (with `--once`, one table).
//!
//! debugfs names a VM's directory `<pid>-<vm fd>`, so the pid tells which process owns it.

use std::cmp::Reverse;
use std::io::ErrorKind;
use std::process::ExitCode;
use std::time::Duration;
use std::{env, thread};

use shadow_mmu_stats_selftest::debugfs::{DebugfsError, KvmDebugfs};

const STAT: &str = "mmu_shadow_pages";

fn print_table(debugfs: &KvmDebugfs) -> Result<(), DebugfsError> {
    let mut vms = Vec::new();
    for dir in debugfs.vm_dirs()? {
        match debugfs.stat_in(&dir, STAT) {
            Ok(pages) => vms.push((pages, dir)),
            // The VM went away between listing and reading.
            Err(DebugfsError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    vms.sort_by_key(|(pages, _)| Reverse(*pages));
    println!("{:>12}  all VMs", debugfs.global(STAT)?);
    for (pages, dir) in vms {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        println!("{pages:>12}  VM {name}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let once = match env::args().nth(1).as_deref() {
        None => false,
        Some("--once") => true,
        Some(_) => {
            eprintln!("usage: shadow_pages_top [--once]");
            return ExitCode::from(2);
        }
    };
    let debugfs = KvmDebugfs::default();
    loop {
        if let Err(error) = print_table(&debugfs) {
            eprintln!("shadow_pages_top: {error}");
            return ExitCode::FAILURE;
        }
        if once {
            return ExitCode::SUCCESS;
        }
        println!();
        thread::sleep(Duration::from_secs(1));
    }
}
