// SPDX-License-Identifier: GPL-2.0

//! The command line, parsed with `lexopt`: short options take their value attached or as the
//! next argument (`-p123`, `-p 123`), long ones after `=` or as the next argument, and `--`
//! ends the options.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kvm_stats::debugfs::VmId;

pub const USAGE: &str = "\
usage: kvm_shadow_top [--once | --interval SECONDS]
                      [--json | --prometheus | --textfile PATH | --breakdown]
                      [--sources] [-p PID[-FD[.N]][,...]] [-g GUEST]
       kvm_shadow_top --record FILE [--interval SECONDS] [--until-exit PID]
                      [--duration SECONDS] [-p PID[-FD[.N]][,...]] [-g GUEST]

Shows how many shadow MMU pages each KVM VM on this host holds (KVM's
mmu_shadow_pages), busiest first, with a total, refreshed every second.
While kvm_shadow_stats.ko is loaded, also which pages they are.

  -1, --once           one sample, then exit
  --interval SECONDS   sample every SECONDS (default 1); with --json or
                       --textfile, keep sampling instead of exiting
  --json               one JSON document per sample, one per line
  --prometheus         one Prometheus text exposition on standard output
  --textfile PATH      write the Prometheus exposition to PATH, a file
                       ending in .prom in node_exporter's textfile
                       directory, replacing it whole on every sample
  --breakdown          each VM's shadow pages by role (level, direct, L2,
                       SMM), from kvm_shadow_stats.ko
  --record FILE        append one JSON line per sample to FILE, each VM's
                       breakdown by role with KVM's stats, every SECONDS
                       (default 1), until SIGINT or SIGTERM
  --until-exit PID     with --record: stop once process PID has exited,
                       after one last sample
  --duration SECONDS   with --record: stop after SECONDS
  --sources            say where each number came from: the VM's binary
                       stats fd or debugfs (JSON always says)
  -p, --pid PID[-FD[.N]][,...]
                       only the VMs of these processes, or with -FD only
                       the VM of debugfs directory PID-FD, with .N only
                       that of PID-FD.N; may be repeated
  -g, --guest GUEST    only the VMs of the processes whose guest name (QEMU's
                       -name) is GUEST; may be repeated, and adds to -p
  -h, --help           show this text
  -V, --version        show the version
";

/// The program's name and version, for `--version`.
pub const VERSION: &str = concat!("kvm_shadow_top ", env!("CARGO_PKG_VERSION"), "\n");

/// What is printed for each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Prometheus,
    /// Each VM's table of shadow pages by role.
    Breakdown,
    /// One JSON line per sample for a later look: each VM's breakdown with KVM's stats.
    Record,
}

impl Format {
    /// Whether it is for people, and so refreshed every second unless told otherwise.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Table | Self::Breakdown)
    }
}

/// Where each sample goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// A file that each sample replaces whole, for node_exporter's textfile collector.
    Textfile(PathBuf),
    /// A file to which each sample is appended.
    Record(PathBuf),
}

/// When `--record` stops on its own, besides on SIGINT or SIGTERM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stop {
    /// Once this process has exited.
    pub until_exit: Option<u32>,
    /// This long after the first sample.
    pub duration: Option<Duration>,
}

/// Which VMs to show: those that one of these picks, or every VM if there are none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection(Vec<Selector>);

/// A process, one VM of it, or the processes of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every VM the process created.
    Process(u32),
    /// The VM of this debugfs directory name, and not the duplicates of its name.
    Vm(VmId),
    /// Every VM of the processes whose guest name, as `kvm_stat -g` finds it, is this.
    Guest(String),
}

impl Selection {
    /// Whether `vm`, whose owner's guest name is `guest`, is one of those picked.
    pub fn contains(&self, vm: VmId, guest: Option<&str>) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|selector| match selector {
                Selector::Process(pid) => *pid == vm.pid,
                Selector::Vm(wanted) => *wanted == vm,
                Selector::Guest(name) => guest == Some(name.as_str()),
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    pub output: Output,
    /// Time between samples, or `None` for a single sample.
    pub interval: Option<Duration>,
    pub sources: bool,
    pub selection: Selection,
    pub stop: Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
    Version,
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

impl From<lexopt::Error> for UsageError {
    fn from(error: lexopt::Error) -> Self {
        Self(error.to_string())
    }
}

fn usage_error(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Parses the arguments after the program name.
///
/// Every argument is parsed before `--help` or `--version` is honoured, so that an argument
/// it does not take is an error wherever it stands.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    use lexopt::prelude::*;

    let mut info = None;
    let mut format = None;
    let mut textfile = None;
    let mut record = None;
    let mut stop = Stop::default();
    let mut once = false;
    let mut interval = None;
    let mut sources = false;
    let mut selection = Selection::default();
    let mut set_format = |wanted| match format.replace(wanted) {
        Some(other) if other != wanted => Err(usage_error(
            "--json, --prometheus or --textfile, --breakdown and --record exclude each other",
        )),
        _ => Ok(()),
    };
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                info.get_or_insert(Command::Help);
            }
            Short('V') | Long("version") => {
                info.get_or_insert(Command::Version);
            }
            Short('1') | Long("once") => once = true,
            Long("json") => set_format(Format::Json)?,
            Long("prometheus") => set_format(Format::Prometheus)?,
            Long("breakdown") => set_format(Format::Breakdown)?,
            Long("textfile") => {
                set_format(Format::Prometheus)?;
                textfile = Some(parse_textfile(parser.value()?)?);
            }
            Long("record") => {
                set_format(Format::Record)?;
                record = Some(parse_record(parser.value()?)?);
            }
            Long("until-exit") => {
                let pid = parser.value()?.string()?;
                stop.until_exit = Some(parse_pid(&pid).ok_or_else(|| {
                    usage_error(format!("--until-exit takes a process id, not '{pid}'"))
                })?);
            }
            Long("duration") => {
                stop.duration = Some(parse_seconds("--duration", &parser.value()?.string()?)?);
            }
            Long("sources") => sources = true,
            Long("interval") => interval = Some(parse_interval(&parser.value()?.string()?)?),
            Short('p') | Long("pid") => {
                let option = if arg == Short('p') { "-p" } else { "--pid" };
                for selector in parser.value()?.string()?.split(',') {
                    selection.0.push(parse_selector(option, selector)?);
                }
            }
            Short('g') | Long("guest") => {
                let guest = parser.value()?.string()?;
                // No process has an empty guest name: kvm_stat -g finds none either.
                if guest.is_empty() {
                    return Err(usage_error("-g takes a guest name, not ''"));
                }
                selection.0.push(Selector::Guest(guest));
            }
            _ => return Err(arg.unexpected().into()),
        }
    }
    if let Some(info) = info {
        return Ok(info);
    }
    let format = format.unwrap_or(Format::Table);
    if once && interval.is_some() {
        return Err(usage_error("--once and --interval exclude each other"));
    }
    if sources && format == Format::Prometheus {
        // A label whose value changes would split a VM's series in two.
        return Err(usage_error("--sources has no place in Prometheus output"));
    }
    if sources && format == Format::Breakdown {
        // Only kvm_shadow_stats.ko's debugfs files have it.
        return Err(usage_error("--sources has no place in --breakdown output"));
    }
    if format == Format::Record && (once || sources) {
        return Err(usage_error(
            "--record samples until stopped and has no --sources; --once and --sources have no place with it",
        ));
    }
    if format != Format::Record && stop != Stop::default() {
        return Err(usage_error(
            "--until-exit and --duration stop a --record, and need it",
        ));
    }
    let output = match (textfile, record) {
        (Some(path), _) => Output::Textfile(path),
        (_, Some(path)) => Output::Record(path),
        (None, None) => Output::Stdout,
    };
    if format == Format::Prometheus && output == Output::Stdout && interval.is_some() {
        // Expositions one after another are no exposition: the second repeats every family.
        return Err(usage_error(
            "--prometheus writes one exposition; to keep one up to date, use --textfile PATH --interval SECONDS",
        ));
    }
    let interval = match (format.is_live() || format == Format::Record, once) {
        (_, true) => None,
        (true, false) => interval.or(Some(Duration::from_secs(1))),
        (false, false) => interval,
    };
    Ok(Command::Run(Options {
        format,
        output,
        interval,
        sources,
        selection,
        stop,
    }))
}

/// The file of `--record`, which must be named.
fn parse_record(path: OsString) -> Result<PathBuf, UsageError> {
    if path.is_empty() {
        return Err(usage_error("--record takes a file to write, not ''"));
    }
    Ok(PathBuf::from(path))
}

/// The path of `--textfile`: node_exporter's textfile collector reads only files whose name
/// ends in `.prom`, and would never see another.
fn parse_textfile(path: OsString) -> Result<PathBuf, UsageError> {
    let path = PathBuf::from(path);
    if path.extension().is_none_or(|extension| extension != "prom") {
        return Err(usage_error(format!(
            "--textfile takes a file whose name ends in .prom, which node_exporter reads, not {}",
            path.display()
        )));
    }
    Ok(path)
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

/// A process id as the kernel gives them: digits only, 1 to `i32::MAX`.
fn parse_pid(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = text.parse().ok()?;
    (1..=i32::MAX as u32).contains(&pid).then_some(pid)
}

fn parse_interval(value: &str) -> Result<Duration, UsageError> {
    parse_seconds("--interval", value)
}

/// A positive number of seconds, fractions allowed, for `option`.
fn parse_seconds(option: &str, value: &str) -> Result<Duration, UsageError> {
    let invalid = || {
        usage_error(format!(
            "{option} takes a positive number of seconds, not '{value}'"
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
            output: Output::Stdout,
            interval,
            sources,
            selection: Selection::default(),
            stop: Stop::default(),
        })
    }

    fn textfile(path: &str, interval: Option<Duration>) -> Command {
        Command::Run(Options {
            format: Format::Prometheus,
            output: Output::Textfile(PathBuf::from(path)),
            interval,
            sources: false,
            selection: Selection::default(),
            stop: Stop::default(),
        })
    }

    fn record(path: &str, interval: Duration, stop: Stop) -> Command {
        Command::Run(Options {
            format: Format::Record,
            output: Output::Record(PathBuf::from(path)),
            interval: Some(interval),
            sources: false,
            selection: Selection::default(),
            stop,
        })
    }

    fn selection_of(args: &[&str]) -> Selection {
        match parse_strs(args) {
            Ok(Command::Run(options)) => options.selection,
            other => panic!("{args:?}: {other:?}"),
        }
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
    fn json_samples_once_unless_given_an_interval() {
        assert_eq!(parse_strs(&["--json"]), Ok(run(Format::Json, None, false)));
        assert_eq!(
            parse_strs(&["--json", "--sources", "--once"]),
            Ok(run(Format::Json, None, true))
        );
        assert_eq!(
            parse_strs(&["--interval", "15", "--json"]),
            Ok(run(Format::Json, Some(Duration::from_secs(15)), false))
        );
        assert_eq!(
            parse_strs(&["--json", "--json"]),
            Ok(run(Format::Json, None, false))
        );
    }

    #[test]
    fn prometheus_on_stdout_is_one_exposition() {
        assert_eq!(
            parse_strs(&["--prometheus"]),
            Ok(run(Format::Prometheus, None, false))
        );
        assert_eq!(
            parse_strs(&["--prometheus", "--once"]),
            Ok(run(Format::Prometheus, None, false))
        );
        assert_eq!(
            parse_strs(&["--prometheus", "--interval", "15"]),
            Err(UsageError(
                "--prometheus writes one exposition; to keep one up to date, use --textfile PATH --interval SECONDS"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn textfile_writes_once_or_every_interval() {
        let path = "/var/lib/prometheus/node-exporter/kvm_shadow_mmu.prom";
        assert_eq!(parse_strs(&["--textfile", path]), Ok(textfile(path, None)));
        assert_eq!(
            parse_strs(&[&format!("--textfile={path}"), "--interval", "15"]),
            Ok(textfile(path, Some(Duration::from_secs(15))))
        );
        assert_eq!(
            parse_strs(&["--prometheus", "--textfile", "x.prom", "--once"]),
            Ok(textfile("x.prom", None))
        );
        assert_eq!(
            parse_strs(&["--textfile", "kvm.txt"]),
            Err(UsageError(
                "--textfile takes a file whose name ends in .prom, which node_exporter reads, not kvm.txt"
                    .to_owned()
            ))
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
    fn record_samples_every_second_until_stopped() {
        assert_eq!(
            parse_strs(&["--record", "out.jsonl"]),
            Ok(record("out.jsonl", Duration::from_secs(1), Stop::default()))
        );
        assert_eq!(
            parse_strs(&[
                "--interval=0.25",
                "--record=a b",
                "--until-exit",
                "4242",
                "--duration",
                "90"
            ]),
            Ok(record(
                "a b",
                Duration::from_millis(250),
                Stop {
                    until_exit: Some(4242),
                    duration: Some(Duration::from_secs(90)),
                }
            ))
        );
        let Ok(Command::Run(options)) =
            parse_strs(&["--record", "rec.jsonl", "-p", "7", "-g", "web1"])
        else {
            panic!("parsed");
        };
        assert_eq!(options.output, Output::Record(PathBuf::from("rec.jsonl")));
        assert!(options.selection.contains(VmId::new(7, 3), None));
        assert!(options.selection.contains(VmId::new(8, 3), Some("web1")));
        assert!(!options.selection.contains(VmId::new(8, 3), None));
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
        let picks = |pid, fd| selection.contains(vm(pid, fd), None);
        assert!(picks(4242, 11) && picks(4242, 12));
        assert!(picks(77, 9) && !picks(77, 10));
        assert!(picks(100, 3) && picks(5, 0));
        assert!(!picks(6, 0) && !picks(42, 11));
        // Nothing selected is everything.
        assert!(Selection::default().contains(vm(1, 2), None));
    }

    #[test]
    fn a_short_option_takes_its_value_attached() {
        let selection = selection_of(&["-p4242", "-p=77-9", "-gweb1"]);
        assert!(selection.contains(VmId::new(4242, 3), None));
        assert!(selection.contains(VmId::new(77, 9), None));
        assert!(selection.contains(VmId::new(1, 2), Some("web1")));
        assert!(!selection.contains(VmId::new(1, 2), None));
        // A value that looks like an option is a value.
        assert!(parse_strs(&["-p", "-5"]).is_err());
        assert_eq!(
            selection_of(&["-g", "--json"]),
            Selection(vec![Selector::Guest("--json".to_owned())])
        );
    }

    #[test]
    fn guest_selects_by_name_and_adds_to_pid() {
        let selection = selection_of(&["-g", "web1", "--guest=db, one", "-p", "7"]);
        let vm = VmId::new(1000, 10);
        assert!(selection.contains(vm, Some("web1")));
        assert!(selection.contains(vm, Some("db, one")));
        assert!(!selection.contains(vm, Some("web")));
        assert!(!selection.contains(vm, Some("web1 ")));
        assert!(!selection.contains(vm, None));
        assert!(selection.contains(VmId::new(7, 10), None));
    }

    #[test]
    fn pid_tells_a_vm_from_the_duplicates_of_its_name() {
        let selection = selection_of(&["-p", "4242,77-9,5-1.2"]);
        let duplicate = |pid, fd, duplicate| VmId { pid, fd, duplicate };
        let picks = |vm| selection.contains(vm, None);
        assert!(picks(duplicate(4242, 11, 0)));
        assert!(picks(duplicate(4242, 11, 3)));
        assert!(picks(duplicate(77, 9, 0)));
        assert!(!picks(duplicate(77, 9, 1)));
        assert!(picks(duplicate(5, 1, 2)));
        assert!(!picks(duplicate(5, 1, 0)));
        assert!(!picks(duplicate(5, 1, 1)));
    }

    #[test]
    fn double_dash_ends_the_options() {
        assert_eq!(
            parse_strs(&["--once", "--"]),
            Ok(run(Format::Table, None, false))
        );
        assert_eq!(
            parse_strs(&["--", "--once"]),
            Err(UsageError("unexpected argument \"--once\"".to_owned()))
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["-h"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["--once", "-h", "--json"]), Ok(Command::Help));
        assert_eq!(parse_strs(&["-V"]), Ok(Command::Version));
        assert_eq!(parse_strs(&["--version", "--help"]), Ok(Command::Version));
        assert!(VERSION.starts_with("kvm_shadow_top ") && VERSION.ends_with('\n'));
    }

    /// An argument it does not take is an error before and after `--help` alike.
    #[test]
    fn a_bad_argument_is_an_error_wherever_help_stands() {
        for args in [
            &["-h", "--bogus"][..],
            &["--bogus", "-h"],
            &["--help", "once"],
            &["-V", "--interval"],
            &["--version", "-p", "x"],
        ] {
            assert!(parse_strs(args).is_err(), "{args:?}");
        }
        assert_eq!(
            parse_strs(&["-h", "--bogus"]),
            Err(UsageError("invalid option '--bogus'".to_owned()))
        );
        assert_eq!(
            parse_strs(&["-h", "--bogus"]),
            parse_strs(&["--bogus", "-h"])
        );
    }

    #[test]
    fn bad_input_is_refused() {
        for args in [
            &["--bogus"][..],
            &["-x"],
            &["once"],
            &["--once", "--interval", "2"],
            &["--json", "--prometheus"],
            &["--json", "--textfile", "a.prom"],
            &["--textfile", "a.prom", "--breakdown"],
            &["--prometheus", "--sources"],
            &["--textfile", "a.prom", "--sources"],
            &["--textfile"],
            &["--textfile", "a.prom.tmp"],
            &["--textfile", ""],
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
            &["-g"],
            &["-g", ""],
            &["--guest="],
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
            &["-1=2"],
            &["--record"],
            &["--record", ""],
            &["--record", "a", "--json"],
            &["--breakdown", "--record", "a"],
            &["--record", "a", "--textfile", "b.prom"],
            &["--record", "a", "--once"],
            &["--record", "a", "--sources"],
            &["--record", "a", "--until-exit"],
            &["--record", "a", "--until-exit", "0"],
            &["--record", "a", "--until-exit", "-1"],
            &["--record", "a", "--until-exit", "12x"],
            &["--record", "a", "--until-exit", "2147483648"],
            &["--record", "a", "--duration", "0"],
            &["--record", "a", "--duration", "forever"],
            &["--until-exit", "1"],
            &["--json", "--duration", "5"],
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
            parse_strs(&["--record", "a", "--until-exit", "qemu"]),
            Err(UsageError(
                "--until-exit takes a process id, not 'qemu'".to_owned()
            ))
        );
        assert_eq!(
            parse_strs(&["--record", "a", "--duration", "-5"]),
            Err(UsageError(
                "--duration takes a positive number of seconds, not '-5'".to_owned()
            ))
        );
        assert_eq!(
            parse_strs(&["--duration", "5"]),
            Err(UsageError(
                "--until-exit and --duration stop a --record, and need it".to_owned()
            ))
        );
        assert_eq!(
            parse_strs(&["-p", "12,web1"]),
            Err(UsageError(
                "-p takes PID, PID-FD or PID-FD.N, not 'web1'".to_owned()
            ))
        );
        assert_eq!(
            parse_strs(&["--pid", "x"]),
            Err(UsageError(
                "--pid takes PID, PID-FD or PID-FD.N, not 'x'".to_owned()
            ))
        );
    }

    /// The options a line of the usage text or of the man page defines, where that line starts
    /// with them.
    fn leading_options(line: &str) -> impl Iterator<Item = String> + '_ {
        line.split(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .filter(|word| !word.is_empty())
            .skip_while(|word| word.starts_with('.'))
            .take_while(|word| word.starts_with('-'))
            .map(str::to_owned)
    }

    /// The man page documents the options that `--help` lists, and no others.
    #[test]
    fn the_man_page_has_the_options_of_the_usage_text() {
        use std::collections::BTreeSet;

        let in_usage: BTreeSet<String> = USAGE
            .lines()
            .filter(|line| line.starts_with("  -"))
            .flat_map(leading_options)
            .collect();
        let man = include_str!("../kvm_shadow_top.8").replace("\\-", "-");
        let lines: Vec<&str> = man.lines().collect();
        // Each option is the tag of a paragraph: the line after `.TP`.
        let in_man: BTreeSet<String> = lines
            .windows(2)
            .filter(|pair| pair[0] == ".TP")
            .flat_map(|pair| leading_options(pair[1]))
            .collect();
        assert!(in_usage.len() >= 16, "{in_usage:?}");
        assert_eq!(in_man, in_usage);
    }

    #[test]
    fn arguments_that_are_not_utf8_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        let arg = OsString::from_vec(vec![b'-', 0xff]);
        assert!(parse([arg]).is_err());
        let value = OsString::from_vec(vec![b'1', 0xff]);
        assert!(parse([OsString::from("-p"), value]).is_err());
    }
}
