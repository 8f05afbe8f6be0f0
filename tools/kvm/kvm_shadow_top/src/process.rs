// SPDX-License-Identifier: GPL-2.0

//! What the tool shows of the process that created a VM: its command name and the guest name
//! on its command line.

use std::fs;
use std::path::Path;

/// What the tool shows of the process that created a VM, `None` for what cannot be read, e.g.
/// because the process has exited while its VM lives on in another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// `/proc/<pid>/comm`.
    pub comm: Option<String>,
    /// The guest name on its command line, as [`guest_name`] finds it.
    pub guest: Option<String>,
}

/// Process `pid` of the procfs at `proc_root`.
pub fn owner(proc_root: &Path, pid: u32) -> Owner {
    let dir = proc_root.join(pid.to_string());
    let comm = fs::read(dir.join("comm"))
        .ok()
        .map(|bytes| String::from_utf8_lossy(bytes.trim_ascii_end()).into_owned());
    let guest = fs::read(dir.join("cmdline")).ok().and_then(|cmdline| {
        let args: Vec<_> = cmdline
            .split(|&byte| byte == 0)
            .map(String::from_utf8_lossy)
            .collect();
        guest_name(args.iter().map(|arg| arg.as_ref()))
    });
    Owner { comm, guest }
}

/// The guest name given to QEMU with `-name`, found the way `kvm_stat -g` finds it: the value
/// of the first `-name` argument, whose first parameter without `=` is the name, or else whose
/// last `guest=` parameter is. `None` if there is no `-name` or it names nothing.
pub fn guest_name<'a>(mut args: impl Iterator<Item = &'a str>) -> Option<String> {
    args.find(|&arg| arg == "-name")?;
    let params = split_params(args.next()?);
    let plain = params.iter().find(|param| !param.contains('='));
    let name = match plain {
        Some(name) => name.as_str(),
        None => params
            .iter()
            .rev()
            .find_map(|param| param.strip_prefix("guest="))?,
    };
    (!name.is_empty()).then(|| name.to_owned())
}

/// Splits a QEMU option value at its commas, where `,,` stands for a comma inside a parameter.
fn split_params(value: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut param = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.next_if_eq(&',').is_some() => param.push(','),
            ',' => params.push(std::mem::take(&mut param)),
            c => param.push(c),
        }
    }
    params.push(param);
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_in(cmdline: &[&str]) -> Option<String> {
        guest_name(cmdline.iter().copied())
    }

    #[test]
    fn plain_name() {
        assert_eq!(
            name_in(&["qemu-system-x86_64", "-m", "1G", "-name", "web1"]).as_deref(),
            Some("web1")
        );
    }

    #[test]
    fn guest_parameter() {
        let cmdline = ["qemu", "-name", "guest=db,debug-threads=on", "-S"];
        assert_eq!(name_in(&cmdline).as_deref(), Some("db"));
    }

    #[test]
    fn plain_name_wins_over_guest_parameter_wherever_it_stands() {
        let cmdline = ["qemu", "-name", "guest=a,process=p,b"];
        assert_eq!(name_in(&cmdline).as_deref(), Some("b"));
        let cmdline = ["qemu", "-name", "b,guest=a"];
        assert_eq!(name_in(&cmdline).as_deref(), Some("b"));
    }

    #[test]
    fn last_guest_parameter_wins() {
        let cmdline = ["qemu", "-name", "guest=a,guest=b"];
        assert_eq!(name_in(&cmdline).as_deref(), Some("b"));
    }

    #[test]
    fn doubled_commas_are_commas() {
        let cmdline = ["qemu", "-name", "guest=a,,b,,,,c,debug-threads=on"];
        assert_eq!(name_in(&cmdline).as_deref(), Some("a,b,,c"));
        assert_eq!(split_params("x,,,y"), ["x,".to_owned(), "y".to_owned()]);
    }

    #[test]
    fn first_name_option_counts() {
        let cmdline = ["qemu", "-name", "first", "-name", "second"];
        assert_eq!(name_in(&cmdline).as_deref(), Some("first"));
    }

    #[test]
    fn no_name() {
        assert_eq!(name_in(&[]), None);
        assert_eq!(name_in(&["qemu", "-m", "1G"]), None);
        // QEMU's spelling with two dashes is not what kvm_stat looks for.
        assert_eq!(name_in(&["qemu", "--name", "x"]), None);
        assert_eq!(name_in(&["qemu", "-name"]), None);
        assert_eq!(name_in(&["qemu", "-name", ""]), None);
        assert_eq!(name_in(&["qemu", "-name", "guest=,process=p"]), None);
        assert_eq!(name_in(&["qemu", "-name", "process=p"]), None);
    }

    #[test]
    fn reads_this_process() {
        let Owner { comm, guest } = owner(Path::new("/proc"), std::process::id());
        // The test harness names its threads, so only the main thread's comm is certain to be
        // a prefix of the executable's name.
        let exe = std::env::current_exe().expect("own executable");
        let exe = exe.file_name().expect("a file name").to_string_lossy();
        assert!(exe.starts_with(comm.as_deref().expect("own comm")));
        assert_eq!(guest, None);
    }

    #[test]
    fn a_process_that_is_gone_has_nothing() {
        // Above the largest pid_max the kernel allows.
        assert_eq!(owner(Path::new("/proc"), 1 << 23), Owner::default());
    }
}
