// SPDX-License-Identifier: GPL-2.0

//! `kvm_shadow_top`: how many shadow MMU pages each KVM VM on this host holds, and how fast
//! they come and go, as a live table, JSON or Prometheus metrics, the last also as a file that
//! node_exporter's textfile collector serves.
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
mod sample;
mod table;
mod textfile;

use std::env;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;

use kvm_stats::breakdown::ShadowStatsDebugfs;
use kvm_stats::debugfs::KvmDebugfs;

use crate::args::{Command, Format, Options, Output, USAGE, VERSION};
use crate::collect::{CollectError, Collector};
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
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Collect(error) => error.fmt(f),
            Self::Write(error) => write!(f, "writing the output: {error}"),
            Self::Textfile(path, error) => write!(f, "writing {}: {error}", path.display()),
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
