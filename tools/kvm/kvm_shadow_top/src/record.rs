// SPDX-License-Identifier: GPL-2.0

//! `--record FILE`: one JSON line per sample, appended to a file for a later look, such as a
//! plot of a VM's shadow pages by role over its life. Documentation/kvm-shadow-top.rst
//! describes the lines; the tests below hold this code to it.
//!
//! Each line is written whole with one `write()` to a file opened for appending, so that a
//! recording cut short by whatever stops it ends with its last whole sample.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvm_stats::breakdown::LEVELS;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::fields::FIELDS;
use crate::json::{Identity, seconds_since_epoch};
use crate::sample::{Breakdown, Sample, Vm};

/// The version of a line's layout: raised when a key changes its meaning or goes away, not
/// when one is added.
pub const RECORD: u32 = 1;

/// One sample as a line, `since_start` after the recording's first sample.
pub fn render(sample: &Sample, since_start: Duration) -> String {
    let line = Line {
        record: RECORD,
        t: milliseconds(since_start),
        time: seconds_since_epoch(sample.time),
        vms: sample.vms.iter().map(VmLine::from).collect(),
    };
    let mut out = serde_json::to_string(&line).expect("the line holds only JSON types");
    out.push('\n');
    out
}

#[derive(Serialize)]
struct Line<'a> {
    record: u32,
    /// Seconds since the first sample, monotonic.
    t: f64,
    /// Seconds since the epoch.
    time: Option<f64>,
    vms: Vec<VmLine<'a>>,
}

#[derive(Serialize)]
struct VmLine<'a> {
    #[serde(flatten)]
    identity: Identity<'a>,
    /// KVM's stats by their names, `null` where neither source has them.
    stats: Map<String, Value>,
    /// Whether `stats` were the same just after `breakdown` was read.
    in_step: Option<bool>,
    breakdown: Option<Roles>,
}

impl<'a> From<&'a Vm> for VmLine<'a> {
    fn from(vm: &'a Vm) -> Self {
        let stats = FIELDS
            .iter()
            .zip(&vm.readings)
            .map(|(field, reading)| {
                let value = reading.map_or(Value::Null, |reading| Value::from(reading.value));
                (field.stat.to_owned(), value)
            })
            .collect();
        Self {
            identity: Identity::from(vm),
            stats,
            in_step: vm.in_step,
            breakdown: vm.breakdown.as_ref().map(Roles::from),
        }
    }
}

/// A VM's pages split by each part of their role, ready to plot: `indirect` and `direct` add up
/// to `pages`, as do the `levels`; `guest_mode` and `smm` are the pages of L2 guests and of
/// SMM, whichever else they are.
#[derive(Serialize)]
struct Roles {
    pages: u64,
    indirect: u64,
    direct: u64,
    guest_mode: u64,
    smm: u64,
    /// Pages of level 1 to 5.
    levels: Vec<u64>,
    bytes: u64,
    page_table_bytes: u64,
    peak: u64,
    allocated: u64,
    zapped: u64,
}

impl From<&Breakdown> for Roles {
    fn from(breakdown: &Breakdown) -> Self {
        let sums = &breakdown.totals.sums;
        let direct = breakdown.direct_pages();
        Self {
            pages: sums.pages,
            // Of the pages file, as the other splits are, and not of the totals file after it.
            indirect: breakdown.pages_where(|role| !role.direct),
            direct,
            guest_mode: breakdown.guest_mode_pages(),
            smm: breakdown.smm_pages(),
            levels: LEVELS
                .map(|level| breakdown.pages_where(|role| role.level == level))
                .collect(),
            bytes: sums.bytes,
            page_table_bytes: sums.page_table_bytes,
            peak: breakdown.totals.peak,
            allocated: sums.allocated,
            zapped: sums.zapped,
        }
    }
}

fn milliseconds(duration: Duration) -> f64 {
    duration.as_millis() as f64 / 1000.0
}

/// Set by SIGINT and SIGTERM once [`catch_stop_signals`] has run.
static STOP_SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP_SIGNALLED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM end the recording after the line being written rather than in
/// the middle of it. Without `SA_RESTART`, they also cut [`wait`]'s `poll()` short.
pub fn catch_stop_signals() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is a valid one: no flags, an empty mask.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and
        // `action` outlives the call.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM asked the recording to stop.
pub fn stop_signalled() -> bool {
    STOP_SIGNALLED.load(Ordering::SeqCst)
}

/// What ended a [`wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The time was up.
    Timeout,
    /// The process of the pidfd exited.
    Exited,
    /// SIGINT or SIGTERM.
    Signalled,
}

/// Waits `timeout`, less if the process of `pidfd` exits or a stop signal comes meanwhile.
pub fn wait(timeout: Duration, pidfd: Option<&OwnedFd>) -> io::Result<Wake> {
    let deadline = Instant::now() + timeout;
    let mut fds: Vec<libc::pollfd> = pidfd
        .map(|pidfd| libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .into_iter()
        .collect();
    loop {
        if stop_signalled() {
            return Ok(Wake::Signalled);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so that a wait is never cut to nothing by rounding.
        let milliseconds =
            libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` holds `fds.len()` pollfds and outlives the call.
        let ready =
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, milliseconds) };
        match ready {
            0 => return Ok(Wake::Timeout),
            ready if ready > 0 => return Ok(Wake::Exited),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::json::tests::{IDENTITY_KEYS, object};
    use crate::pidfd;
    use crate::sample::fixtures;

    #[test]
    fn a_line_has_each_vms_pages_by_role() {
        let mut sample = fixtures::two_vms();
        sample.vms[0].in_step = Some(true);
        let text = render(&sample, Duration::from_millis(2500));
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with("}\n"));
        let line: Value = serde_json::from_str(&text).expect("valid JSON");
        let top = object(&line, &["record", "t", "time", "vms"]);
        assert_eq!(top["record"], RECORD);
        assert_eq!(top["t"].as_f64(), Some(2.5));
        assert_eq!(top["time"].as_f64(), Some(1_700_000_000.25));
        let vms = top["vms"].as_array().expect("an array");
        assert_eq!(vms.len(), 2);
        let vm_keys: Vec<&str> = IDENTITY_KEYS
            .into_iter()
            .chain(["stats", "in_step", "breakdown"])
            .collect();
        let web = object(&vms[0], &vm_keys);
        assert_eq!(
            (&web["pid"], &web["fd"]),
            (&Value::from(4242), &Value::from(11))
        );
        assert_eq!(
            web["stats"],
            serde_json::json!({
                "mmu_shadow_pages": 1000, "mmu_cache_miss": 90230, "mmu_shadow_zapped": 89230
            })
        );
        assert_eq!(web["in_step"], true);
        // The fixture's pages file: 1000 pages, 203 direct, 153 of L2, 1 in SMM.
        assert_eq!(
            web["breakdown"],
            serde_json::json!({
                "pages": 1000, "indirect": 797, "direct": 203, "guest_mode": 153, "smm": 1,
                "levels": [951, 40, 4, 5, 0], "bytes": 7_352_320,
                "page_table_bytes": 4_096_000, "peak": 1100, "allocated": 1062, "zapped": 62
            })
        );
        let idle = object(&vms[1], &vm_keys);
        assert_eq!(idle["comm"], Value::Null);
        assert_eq!(idle["stats"]["mmu_shadow_zapped"], Value::Null);
        assert_eq!(
            (&idle["in_step"], &idle["breakdown"]),
            (&Value::Null, &Value::Null)
        );
    }

    #[test]
    fn the_splits_add_up_to_the_pages() {
        let line: Value =
            serde_json::from_str(&render(&fixtures::two_vms(), Duration::ZERO)).expect("JSON");
        let roles = &line["vms"][0]["breakdown"];
        let count = |key: &str| roles[key].as_u64().expect("a count");
        assert_eq!(count("indirect") + count("direct"), count("pages"));
        let levels: u64 = roles["levels"]
            .as_array()
            .expect("an array")
            .iter()
            .map(|pages| pages.as_u64().expect("a count"))
            .sum();
        assert_eq!(levels, count("pages"));
    }

    #[test]
    fn a_host_without_vms_is_a_line_too() {
        let sample = Sample::new(std::time::UNIX_EPOCH, Instant::now(), Vec::new());
        assert_eq!(
            render(&sample, Duration::from_secs(1)),
            "{\"record\":1,\"t\":1.0,\"time\":0.0,\"vms\":[]}\n"
        );
    }

    #[test]
    fn a_wait_ends_with_its_time_or_its_process() {
        let start = Instant::now();
        assert_eq!(
            wait(Duration::from_millis(50), None).ok(),
            Some(Wake::Timeout)
        );
        assert!(start.elapsed() >= Duration::from_millis(50));

        let mut child = Command::new("sleep")
            .arg("0.1")
            .spawn()
            .expect("sleep runs");
        let pidfd = pidfd::open(child.id()).expect("a pidfd of a child");
        let start = Instant::now();
        assert_eq!(
            wait(Duration::from_secs(30), Some(&pidfd)).ok(),
            Some(Wake::Exited)
        );
        assert!(start.elapsed() < Duration::from_secs(20));
        child.wait().expect("reaped");
        // A process that has exited already ends a wait at once.
        assert_eq!(
            wait(Duration::from_secs(30), Some(&pidfd)).ok(),
            Some(Wake::Exited)
        );
    }
}
