// SPDX-License-Identifier: GPL-2.0

//! `kvm_shadow_top`: how many shadow MMU pages each KVM VM on this host holds, and how fast
//! they come and go, as a live table, JSON or Prometheus metrics, the last also as a file that
//! node_exporter's textfile collector serves; or which pages they are over time, recorded as
//! JSON lines for a later look.
//!
//! VMs are found in KVM's debugfs directory, where each has a directory `<pid>-<vm fd>`, and
//! while kvm_shadow_stats.ko is loaded in its directory too, which also has the VMs KVM made no
//! directory for, as `<pid>-<vm fd>.<n>`. Each VM's numbers are read from its binary stats fd,
//! borrowed from its owner with `pidfd_getfd()`, and from debugfs where that is refused. See
//! Documentation/kvm-shadow-top.rst.

mod args;
mod breakdown;
mod collect;
mod fields;
mod json;
mod pidfd;
mod process;
mod prometheus;
mod record;
mod sample;
mod table;
mod textfile;

use std::env;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::Instant;

use kvm_stats::breakdown::ShadowStatsDebugfs;
use kvm_stats::debugfs::KvmDebugfs;

use crate::args::{Command, Format, Options, Output, Stop, USAGE, VERSION};
use crate::collect::{CollectError, Collector};
use crate::record::Wake;
use crate::sample::Sample;

/// Exit status for a command line that makes no sense, as for other command-line tools.
const EXIT_USAGE: u8 = 2;

/// Moves the cursor home and clears the screen, so that a live table replaces the last one.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

fn main() -> ExitCode {
    let options = match args::parse(env::args_os().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            print!("{VERSION}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprint!("kvm_shadow_top: {error}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvm_shadow_top: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
enum RunError {
    Collect(CollectError),
    Write(io::Error),
    Textfile(PathBuf, io::Error),
    Record(PathBuf, io::Error),
    /// The process of `--until-exit` could not be watched.
    UntilExit(u32, io::Error),
    /// Waiting between samples failed, or the stop signals could not be caught.
    Wait(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Collect(error) => error.fmt(f),
            Self::Write(error) => write!(f, "writing the output: {error}"),
            Self::Textfile(path, error) => write!(f, "writing {}: {error}", path.display()),
            Self::Record(path, error) => write!(f, "recording to {}: {error}", path.display()),
            Self::UntilExit(pid, error) if error.raw_os_error() == Some(libc::ESRCH) => {
                write!(f, "--until-exit {pid}: no such process")
            }
            Self::UntilExit(pid, error) => write!(f, "--until-exit {pid}: {error}"),
            Self::Wait(error) => write!(f, "waiting for the next sample: {error}"),
        }
    }
}

/// Samples and prints, once or until killed.
///
/// A textfile kept up to date every interval outlives what fails after its first sample, as a
/// service must: KVM unloaded and loaded again, a full disk. The file keeps its last sample
/// meanwhile, and its age, node_exporter's `node_textfile_mtime_seconds`, tells how stale it
/// is.
fn run(options: &Options) -> Result<(), RunError> {
    let mut collector = Collector::new(
        KvmDebugfs::default(),
        ShadowStatsDebugfs::default(),
        "/proc",
    )
    .select(options.selection.clone());
    if options.format == Format::Breakdown {
        collector = collector.require_breakdown();
    }
    if let Output::Record(path) = &options.output {
        let interval = options.interval.expect("--record always has an interval");
        return record(&collector.check_in_step(), path, interval, options.stop);
    }
    let mut previous: Option<Sample> = None;
    let mut written = false;
    loop {
        match sample_and_write(&collector, options, previous.as_ref()) {
            Ok(Some(sample)) => {
                written = true;
                previous = Some(sample);
            }
            // Whoever reads the output has seen enough, as with `kvm_shadow_top | head`.
            Ok(None) => return Ok(()),
            Err(error) if written && matches!(options.output, Output::Textfile(_)) => {
                eprintln!("kvm_shadow_top: {error}; trying again in the next interval");
            }
            Err(error) => return Err(error),
        }
        let Some(interval) = options.interval else {
            return Ok(());
        };
        thread::sleep(interval);
    }
}

/// Appends a line per sample to `path` every `interval` until a stop signal, or what `stop`
/// says. A process of `--until-exit` that exits, or a `--duration` that ends, gets one last
/// sample, which shows what its exit left behind. Every line is written before the next
/// sample is taken, so whatever stops the recording, the file holds every sample but the one
/// being taken.
fn record(
    collector: &Collector,
    path: &Path,
    interval: std::time::Duration,
    stop: Stop,
) -> Result<(), RunError> {
    let record_error = |error| RunError::Record(path.to_owned(), error);
    let target = stop
        .until_exit
        .map(|pid| pidfd::open(pid).map_err(|error| RunError::UntilExit(pid, error)))
        .transpose()?;
    // Opened once the first sample is taken: a host whose VMs cannot be looked at must not
    // leave a file that looks like a recording either.
    let mut file = None;
    record::catch_stop_signals().map_err(RunError::Wait)?;
    let start = Instant::now();
    let deadline = stop.duration.map(|duration| start + duration);
    let mut last = false;
    loop {
        let sample = collector.sample().map_err(RunError::Collect)?;
        for warning in &sample.warnings {
            eprintln!("kvm_shadow_top: warning: {warning}");
        }
        let line = record::render(&sample, sample.taken.saturating_duration_since(start));
        let file = match &mut file {
            Some(file) => file,
            None => file.insert(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .map_err(record_error)?,
            ),
        };
        // One write() of a whole line, unbuffered: on disk for a reader at once.
        file.write_all(line.as_bytes()).map_err(record_error)?;
        if last || record::stop_signalled() {
            return Ok(());
        }
        let mut timeout = interval;
        if let Some(deadline) = deadline {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        match record::wait(timeout, target.as_ref()).map_err(RunError::Wait)? {
            Wake::Signalled => return Ok(()),
            Wake::Exited => last = true,
            Wake::Timeout => last = deadline.is_some_and(|deadline| Instant::now() >= deadline),
        }
    }
}

/// Takes one sample and writes it out; `None` once standard output is closed.
fn sample_and_write(
    collector: &Collector,
    options: &Options,
    previous: Option<&Sample>,
) -> Result<Option<Sample>, RunError> {
    let mut sample = collector.sample().map_err(RunError::Collect)?;
    for warning in &sample.warnings {
        eprintln!("kvm_shadow_top: warning: {warning}");
    }
    if let Some(previous) = previous {
        sample.set_rates_since(previous);
    }
    let rendered = match options.format {
        Format::Table => table::render(&sample, options.sources),
        Format::Json => json::render(&sample),
        Format::Prometheus => prometheus::render(&sample),
        Format::Breakdown => breakdown::render(&sample),
        Format::Record => unreachable!("--record writes through record()"),
    };
    if let Output::Textfile(path) = &options.output {
        textfile::replace(path, rendered.as_bytes())
            .map_err(|error| RunError::Textfile(path.clone(), error))?;
        return Ok(Some(sample));
    }
    let mut stdout = io::stdout().lock();
    let live_screen =
        options.format.is_live() && options.interval.is_some() && stdout.is_terminal();
    let mut text = String::new();
    if live_screen {
        text.push_str(CLEAR_SCREEN);
    } else if previous.is_some() && options.format.is_live() {
        // Tables in a stream are told apart by a blank line; JSON documents are one per line
        // already.
        text.push('\n');
    }
    text.push_str(&rendered);
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(Some(sample)),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(None),
        Err(error) => Err(RunError::Write(error)),
    }
}
