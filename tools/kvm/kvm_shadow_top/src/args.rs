// SPDX-License-Identifier: GPL-2.0

//! The command line.

use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

use kvm_stats::debugfs::VmId;

pub const USAGE: &str = "\
usage: kvm_shadow_top [--once | --interval SECONDS]
                      [--json | --prometheus | --breakdown] [--sources]
                      [-p PID[-FD[.N]][,...]]

Shows how many shadow MMU pages each KVM VM on this host holds (KVM's
mmu_shadow_pages), busiest first, with a total, refreshed every second.
While kvm_shadow_stats.ko is loaded, also which pages they are.

  -1, --once           one sample, then exit
  --interval SECONDS   sample every SECONDS (default 1); with --json or
                       --prometheus, keep sampling instead of exiting
  --json               one JSON document per sample, one per line
  --prometheus         Prometheus text format, for node_exporter's textfile
                       collector
  --breakdown          each VM's shadow pages by role (level, direct, L2,
                       SMM), from kvm_shadow_stats.ko
  --sources            say where each number came from: the VM's binary
                       stats fd or debugfs (JSON always says)
  -p, --pid PID[-FD[.N]][,...]
                       only the VMs of these processes, or with -FD only
                       the VM of debugfs directory PID-FD, with .N only
                       that of PID-FD.N; may be repeated
  -h, --help           show this text
";

/// What is printed for each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Prometheus,
    /// Each VM's table of shadow pages by role.
    Breakdown,
}

impl Format {
    /// Whether it is for people, and so refreshed every second unless told otherwise.
    fn is_live(self) -> bool {
        matches!(self, Self::Table | Self::Breakdown)
    }
}

/// Which VMs to show: those that one of these picks, or every VM if there are none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection(Vec<Selector>);

/// A process, or one VM of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// Every VM the process created.
    Process(u32),
    /// The VM of this debugfs directory name, and not the duplicates of its name.
    Vm(VmId),
}

impl Selection {
    pub fn contains(&self, vm: VmId) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|selector| match *selector {
                Selector::Process(pid) => pid == vm.pid,
                Selector::Vm(wanted) => wanted == vm,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    /// Time between samples, or `None` for a single sample.
    pub interval: Option<Duration>,
    pub sources: bool,
    pub selection: Selection,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
}

/// What is wrong with the command line, for the line above the usage text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for UsageError {}

fn usage_error(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut format = None;
    let mut once = false;
    let mut interval = None;
    let mut sources = false;
    let mut selection = Selection::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|arg| usage_error(format!("unknown argument {arg:?}")))?;
        let (name, mut inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut set_format = |wanted| match format.replace(wanted) {
            Some(other) if other != wanted => Err(usage_error(
                "--json, --prometheus and --breakdown exclude each other",
            )),
            _ => Ok(()),
        };
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "-1" | "--once" => once = true,
            "--json" => set_format(Format::Json)?,
            "--prometheus" => set_format(Format::Prometheus)?,
            "--breakdown" => set_format(Format::Breakdown)?,
            "--sources" => sources = true,
            "--interval" => {
                let value = match inline_value.take() {
                    Some(value) => value,
                    None => args
                        .next()
                        .and_then(|value| value.into_string().ok())
                        .ok_or_else(|| usage_error("--interval needs a number of seconds"))?,
                };
                interval = Some(parse_interval(&value)?);
            }
            "-p" | "--pid" => {
                let value = match inline_value.take() {
                    Some(value) => value,
                    None => args
                        .next()
                        .and_then(|value| value.into_string().ok())
                        .ok_or_else(|| usage_error(format!("{name} needs a PID or PID-FD")))?,
                };
                for selector in value.split(',') {
                    selection.0.push(parse_selector(name, selector)?);
                }
            }
            _ => return Err(usage_error(format!("unknown argument '{arg}'"))),
        }
        if inline_value.is_some() {
            return Err(usage_error(format!("{name} takes no value")));
        }
    }
    let format = format.unwrap_or(Format::Table);
    if once && interval.is_some() {
        return Err(usage_error("--once and --interval exclude each other"));
    }
    if sources && format == Format::Prometheus {
        // A label whose value changes would split a VM's series in two.
        return Err(usage_error("--sources has no place in --prometheus output"));
    }
    if sources && format == Format::Breakdown {
        // Only kvm_shadow_stats.ko's debugfs files have it.
        return Err(usage_error("--sources has no place in --breakdown output"));
    }
    let interval = match (format.is_live(), once) {
        (_, true) => None,
        (true, false) => interval.or(Some(Duration::from_secs(1))),
        (false, false) => interval,
    };
    Ok(Command::Run(Options {
        format,
        interval,
        sources,
        selection,
    }))
}

/// One `PID`, `PID-FD` or `PID-FD.N` of `-p`, in the digits-only spelling of debugfs directory
/// names.
fn parse_selector(option: &str, text: &str) -> Result<Selector, UsageError> {
    let invalid = || {
        usage_error(format!(
            "{option} takes PID, PID-FD or PID-FD.N, not '{text}'"
        ))
    };
    let number = |part: &str| -> Result<u32, UsageError> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        part.parse().map_err(|_| invalid())
    };
    let Some((pid, vm)) = text.split_once('-') else {
        return Ok(Selector::Process(number(text)?));
    };
    let (fd, duplicate) = match vm.split_once('.') {
        Some((fd, duplicate)) => (fd, number(duplicate)?),
        None => (vm, 0),
    };
    // No directory is named `PID-FD.0`.
    if vm.contains('.') && duplicate == 0 {
        return Err(invalid());
    }
    Ok(Selector::Vm(VmId {
        pid: number(pid)?,
        fd: i32::try_from(number(fd)?).map_err(|_| invalid())?,
        duplicate,
    }))
}

fn parse_interval(value: &str) -> Result<Duration, UsageError> {
    let invalid = || {
        usage_error(format!(
            "--interval takes a positive number of seconds, not '{value}'"
        ))
    };
    let seconds: f64 = value.parse().map_err(|_| invalid())?;
    // Refuses negative, infinite and NaN seconds as well as too many.
    let interval = Duration::try_from_secs_f64(seconds).map_err(|_| invalid())?;
    if interval.is_zero() {
        return Err(invalid());
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(format: Format, interval: Option<Duration>, sources: bool) -> Command {
        Command::Run(Options {
            format,
            interval,
            sources,
            selection: Selection::default(),
        })
    }

    const SECOND: Option<Duration> = Some(Duration::from_secs(1));

    #[test]
    fn table_refreshes_every_second_by_default() {
        assert_eq!(parse_strs(&[]), Ok(run(Format::Table, SECOND, false)));
        assert_eq!(parse_strs(&["--once"]), Ok(run(Format::Table, None, false)));
        assert_eq!(
            parse_strs(&["-1", "--sources"]),
            Ok(run(Format::Table, None, true))
        );
        assert_eq!(
            parse_strs(&["--interval", "0.5"]),
            Ok(run(Format::Table, Some(Duration::from_millis(500)), false))
        );
        assert_eq!(
            parse_strs(&["--interval=10"]),
            Ok(run(Format::Table, Some(Duration::from_secs(10)), false))
        );
    }

    #[test]
    fn json_and_prometheus_sample_once_unless_given_an_interval() {
        assert_eq!(parse_strs(&["--json"]), Ok(run(Format::Json, None, false)));
        assert_eq!(
            parse_strs(&["--json", "--sources", "--once"]),
            Ok(run(Format::Json, None, true))
        );
        assert_eq!(
            parse_strs(&["--prometheus"]),
            Ok(run(Format::Prometheus, None, false))
        );
        assert_eq!(
            parse_strs(&["--interval", "15", "--prometheus"]),
            Ok(run(
                Format::Prometheus,
                Some(Duration::from_secs(15)),
                false
            ))
        );
        assert_eq!(
            parse_strs(&["--json", "--json"]),
            Ok(run(Format::Json, None, false))
        );
    }

    #[test]
    fn breakdown_refreshes_like_the_table() {
        assert_eq!(
            parse_strs(&["--breakdown"]),
            Ok(run(Format::Breakdown, SECOND, false))
        );
        assert_eq!(
            parse_strs(&["--breakdown", "--once"]),
            Ok(run(Format::Breakdown, None, false))
        );
        assert_eq!(
            parse_strs(&["--interval=3", "--breakdown"]),
            Ok(run(Format::Breakdown, Some(Duration::from_secs(3)), false))
        );
    }

    #[test]
    fn pid_selects_processes_and_vms() {
        let Ok(Command::Run(options)) = parse_strs(&[
            "-p",
            "4242",
            "--pid=77-9,100",
            "--breakdown",
            "--pid",
            "5-0",
        ]) else {
            panic!("parsed");
        };
        assert_eq!(options.format, Format::Breakdown);
        let selection = options.selection;
        let vm = |pid, fd| VmId::new(pid, fd);
        assert!(selection.contains(vm(4242, 11)) && selection.contains(vm(4242, 12)));
        assert!(selection.contains(vm(77, 9)) && !selection.contains(vm(77, 10)));
        assert!(selection.contains(vm(100, 3)) && selection.contains(vm(5, 0)));
        assert!(!selection.contains(vm(6, 0)) && !selection.contains(vm(42, 11)));
        // Nothing selected is everything.
        assert!(Selection::default().contains(vm(1, 2)));
    }

    #[test]
    fn pid_tells_a_vm_from_the_duplicates_of_its_name() {
        let Ok(Command::Run(options)) = parse_strs(&["-p", "4242,77-9,5-1.2"]) else {
            panic!("parsed");
        };
        let duplicate = |pid, fd, duplicate| VmId { pid, fd, duplicate };
        let selection = options.selection;
        assert!(selection.contains(duplicate(4242, 11, 0)));
        assert!(selection.contains(duplicate(4242, 11, 3)));
        assert!(selection.contains(duplicate(77, 9, 0)));
        assert!(!selection.contains(duplicate(77, 9, 1)));
        assert!(selection.contains(duplicate(5, 1, 2)));
        assert!(!selection.contains(duplicate(5, 1, 0)));
        assert!(!selection.contains(duplicate(5, 1, 1)));
    }

    #[test]
    fn help() {
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["--once", "-h", "--bogus"]), Ok(Command::Help));
    }

    #[test]
    fn bad_input_is_refused() {
        for args in [
            &["--bogus"][..],
            &["once"],
            &["--once", "--interval", "2"],
            &["--json", "--prometheus"],
            &["--prometheus", "--sources"],
            &["--breakdown", "--json"],
            &["--prometheus", "--breakdown"],
            &["--breakdown", "--sources"],
            &["--breakdown=1"],
            &["-p"],
            &["--pid"],
            &["-p", ""],
            &["-p", "1,"],
            &["-p", "x"],
            &["-p", "-5"],
            &["-p", "+5"],
            &["-p", "5-"],
            &["-p", "5-1-2"],
            &["-p", "5--1"],
            &["-p", "99999999999"],
            &["-p", "1-2147483648"],
            &["-p", "5.1"],
            &["-p", "5-1."],
            &["-p", "5-1.0"],
            &["-p", "5-1.x"],
            &["-p", "5-1.1.1"],
            &["-p", "5-.1"],
            &["--pid=", "1"],
            &["--interval"],
            &["--interval", "0"],
            &["--interval", "-1"],
            &["--interval", "nan"],
            &["--interval", "inf"],
            &["--interval", "1e300"],
            &["--interval", "soon"],
            &["--interval="],
            &["--once=yes"],
            &["--json=1"],
        ] {
            assert!(parse_strs(args).is_err(), "{args:?}");
        }
        assert_eq!(
            parse_strs(&["--interval", "-1"]),
            Err(UsageError(
                "--interval takes a positive number of seconds, not '-1'".to_owned()
            ))
        );
        assert_eq!(
            parse_strs(&["-p", "12,web1"]),
            Err(UsageError(
                "-p takes PID, PID-FD or PID-FD.N, not 'web1'".to_owned()
            ))
        );
    }

    #[test]
    fn arguments_that_are_not_utf8_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        let arg = OsString::from_vec(vec![b'-', 0xff]);
        assert!(parse([arg]).is_err());
    }
}
