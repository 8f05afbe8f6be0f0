// SPDX-License-Identifier: GPL-2.0

//! The command line.

use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

pub const USAGE: &str = "\
usage: kvm_shadow_top [--once | --interval SECONDS] [--json | --prometheus] [--sources]

Shows how many shadow MMU pages each KVM VM on this host holds (KVM's
mmu_shadow_pages), busiest first, with a total, refreshed every second.

  -1, --once           one sample, then exit
  --interval SECONDS   sample every SECONDS (default 1); with --json or
                       --prometheus, keep sampling instead of exiting
  --json               one JSON document per sample, one per line
  --prometheus         Prometheus text format, for node_exporter's textfile
                       collector
  --sources            say where each number came from: the VM's binary
                       stats fd or debugfs (JSON always says)
  -h, --help           show this text
";

/// What is printed for each sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Prometheus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub format: Format,
    /// Time between samples, or `None` for a single sample.
    pub interval: Option<Duration>,
    pub sources: bool,
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
            Some(other) if other != wanted => {
                Err(usage_error("--json and --prometheus exclude each other"))
            }
            _ => Ok(()),
        };
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "-1" | "--once" => once = true,
            "--json" => set_format(Format::Json)?,
            "--prometheus" => set_format(Format::Prometheus)?,
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
    let interval = match (format, once) {
        (_, true) => None,
        (Format::Table, false) => interval.or(Some(Duration::from_secs(1))),
        (Format::Json | Format::Prometheus, false) => interval,
    };
    Ok(Command::Run(Options {
        format,
        interval,
        sources,
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
    }

    #[test]
    fn arguments_that_are_not_utf8_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        let arg = OsString::from_vec(vec![b'-', 0xff]);
        assert!(parse([arg]).is_err());
    }
}
