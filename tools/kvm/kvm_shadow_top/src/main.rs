// SPDX-License-Identifier: GPL-2.0

//! `kvm_shadow_top`: how many shadow MMU pages each KVM VM on this host holds, and how fast
//! they come and go, as a live table, JSON or Prometheus metrics.
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

use std::env;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::thread;

use kvm_stats::breakdown::ShadowStatsDebugfs;
use kvm_stats::debugfs::KvmDebugfs;

use crate::args::{Command, Format, Options, USAGE};
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
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Collect(error) => error.fmt(f),
            Self::Write(error) => write!(f, "writing the output: {error}"),
        }
    }
}

/// Samples and prints, once or until killed.
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
    let mut stdout = io::stdout().lock();
    let live_screen =
        options.format == Format::Table && options.interval.is_some() && stdout.is_terminal();
    let mut previous: Option<Sample> = None;
    loop {
        let mut sample = collector.sample().map_err(RunError::Collect)?;
        if let Some(previous) = &previous {
            sample.set_rates_since(previous);
        }
        let mut text = String::new();
        if live_screen {
            text.push_str(CLEAR_SCREEN);
        } else if previous.is_some() && options.format != Format::Json {
            // Tables and expositions in a stream are told apart by a blank line; JSON documents
            // are one per line already.
            text.push('\n');
        }
        text.push_str(&match options.format {
            Format::Table => table::render(&sample, options.sources),
            Format::Json => json::render(&sample),
            Format::Prometheus => prometheus::render(&sample),
            Format::Breakdown => breakdown::render(&sample),
        });
        match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => {}
            // Whoever reads the output has seen enough, as with `kvm_shadow_top | head`.
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(RunError::Write(error)),
        }
        let Some(interval) = options.interval else {
            return Ok(());
        };
        previous = Some(sample);
        thread::sleep(interval);
    }
}
