// SPDX-License-Identifier: GPL-2.0

//! One look at every VM on the host: what each VM's numbers are, where they came from and,
//! given the previous look, how fast they change.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use kvm_stats::breakdown::{Bucket, Pages, Role, VmTotals};
use kvm_stats::debugfs::VmId;

use crate::fields::{FIELDS, Kind, PAGES};

/// Where a number was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The VM's binary stats file, the stable ABI.
    StatsFd,
    /// The VM's debugfs directory.
    Debugfs,
}

impl Source {
    /// How every output names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::StatsFd => "stats_fd",
            Self::Debugfs => "debugfs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub value: u64,
    pub source: Source,
}

/// One value per entry of [`FIELDS`].
pub type PerField<T> = [T; FIELDS.len()];

/// One VM as sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct Vm {
    pub id: VmId,
    /// The owner's command name, if its process could be read.
    pub comm: Option<String>,
    /// The guest name in the owner's command line, as `kvm_stat -g` finds it.
    pub guest: Option<String>,
    /// `None` where neither source has the stat.
    pub readings: PerField<Option<Reading>>,
    /// Change per second since the previous sample, where both have the value.
    pub rates: PerField<Option<f64>>,
    /// Which shadow pages the VM holds, from kvm_shadow_stats.ko's debugfs directory, if the
    /// module is loaded and has one for the VM.
    pub breakdown: Option<Breakdown>,
    /// Whether KVM's stats were the same just before and just after the breakdown was read, so
    /// that the breakdown counts the pages of `readings`; `None` where this was not checked.
    pub in_step: Option<bool>,
}

impl Vm {
    fn pages(&self) -> Option<u64> {
        self.readings[PAGES].map(|reading| reading.value)
    }
}

/// A VM's shadow pages by role, from kvm_shadow_stats.ko's debugfs directory:
/// `Documentation/shadow-page-breakdown.rst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breakdown {
    /// The `pages` file: one bucket per role, sorted by `smm`, `guest_mode`, `direct`, `level`.
    pub pages: Pages,
    /// The `totals` file, read just after: its `peak` is the `peak` file.
    pub totals: VmTotals,
}

impl Breakdown {
    pub fn buckets(&self) -> &[Bucket] {
        self.pages.buckets()
    }

    /// Pages of the buckets whose role `wanted` picks.
    pub fn pages_where(&self, wanted: impl Fn(&Role) -> bool) -> u64 {
        self.buckets()
            .iter()
            .filter(|bucket| wanted(&bucket.role))
            .fold(0, |sum, bucket| sum.saturating_add(bucket.pages))
    }

    /// Pages that no guest page table backs.
    pub fn direct_pages(&self) -> u64 {
        self.pages_where(|role| role.direct)
    }

    /// Pages of L2 guests.
    pub fn guest_mode_pages(&self) -> u64 {
        self.pages_where(|role| role.guest_mode)
    }

    /// Pages of guests in System Management Mode.
    pub fn smm_pages(&self) -> u64 {
        self.pages_where(|role| role.smm)
    }
}

/// Every VM at one moment, busiest first.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Wall-clock time, for the JSON document.
    pub time: SystemTime,
    /// Monotonic time, for the rates.
    pub taken: Instant,
    pub vms: Vec<Vm>,
    /// Whether kvm_shadow_stats.ko's directory was there from the start of the sample to its
    /// end, so that a VM without a breakdown is one the module could not tell about.
    pub shadow_stats_loaded: bool,
    /// What went wrong without spoiling the sample, for standard error.
    pub warnings: Vec<String>,
}

/// The total row: values summed over the VMs that have them, rates over the VMs seen twice.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    pub values: PerField<u64>,
    pub rates: PerField<Option<f64>>,
}

impl Sample {
    /// Sorts `vms` by `mmu_shadow_pages`, most first; ties, and VMs without the stat, last, go
    /// by id so that rows do not swap places between refreshes.
    pub fn new(time: SystemTime, taken: Instant, mut vms: Vec<Vm>) -> Self {
        vms.sort_by_key(|vm| (Reverse(vm.pages()), vm.id));
        Self {
            time,
            taken,
            vms,
            shadow_stats_loaded: false,
            warnings: Vec::new(),
        }
    }

    /// Fills in each VM's rates from `previous`, the sample before this one.
    pub fn set_rates_since(&mut self, previous: &Sample) {
        let seconds = self
            .taken
            .saturating_duration_since(previous.taken)
            .as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let before: HashMap<VmId, &Vm> = previous.vms.iter().map(|vm| (vm.id, vm)).collect();
        for vm in &mut self.vms {
            let Some(old) = before.get(&vm.id) else {
                continue;
            };
            for (index, field) in FIELDS.iter().enumerate() {
                let (Some(now), Some(then)) = (vm.readings[index], old.readings[index]) else {
                    continue;
                };
                vm.rates[index] = rate(field.kind, then.value, now.value, seconds);
            }
        }
    }

    pub fn totals(&self) -> Totals {
        let mut totals = Totals {
            values: [0; FIELDS.len()],
            rates: [None; FIELDS.len()],
        };
        for vm in &self.vms {
            for index in 0..FIELDS.len() {
                if let Some(reading) = vm.readings[index] {
                    totals.values[index] = totals.values[index].saturating_add(reading.value);
                }
                if let Some(rate) = vm.rates[index] {
                    totals.rates[index] = Some(totals.rates[index].unwrap_or(0.0) + rate);
                }
            }
        }
        totals
    }
}

/// Change per second from `then` to `now`, `seconds` apart.
fn rate(kind: Kind, then: u64, now: u64, seconds: f64) -> Option<f64> {
    let change = now.abs_diff(then) as f64 / seconds;
    match (kind, now >= then) {
        (_, true) => Some(change),
        (Kind::Gauge, false) => Some(-change),
        // A counter that fell belongs to another VM that got the same pid and fd.
        (Kind::Counter, false) => None,
    }
}

/// Samples for the tests of this module and of the outputs.
#[cfg(test)]
pub mod fixtures {
    use std::time::Duration;

    use super::*;

    /// A VM whose stats all came from `source`; `None` values were not readable.
    pub fn vm(pid: u32, fd: i32, values: [Option<u64>; 3], source: Source) -> Vm {
        Vm {
            id: VmId::new(pid, fd),
            comm: Some("qemu-system-x86".to_owned()),
            guest: None,
            readings: values.map(|value| value.map(|value| Reading { value, source })),
            rates: [None; FIELDS.len()],
            breakdown: None,
            in_step: None,
        }
    }

    /// The breakdown of a `pages` file, `pages`, as kvm_shadow_stats.ko writes it, with the
    /// totals it gives and a peak of `peak`.
    pub fn breakdown(pages: &str, peak: u64) -> Breakdown {
        let pages = Pages::parse(pages).expect("a pages file as the module writes it");
        let totals = VmTotals {
            sums: kvm_stats::breakdown::Totals {
                pages: pages.pages(),
                allocated: pages.allocated(),
                zapped: pages.zapped(),
                bytes: pages.bytes(),
                page_table_bytes: pages.pages() * 4096,
                unknown: Vec::new(),
            },
            peak,
        };
        Breakdown { pages, totals }
    }

    /// The breakdown of [`two_vms`]' busy VM: 1000 pages, of L1 and L2, of every level, 203
    /// of them direct, one in SMM; 62 zapped since the module attached it.
    pub fn web_breakdown() -> Breakdown {
        breakdown(
            "\
level direct guest_mode smm pages allocated zapped bytes
1 0 0 0 600 662 62 4915200
2 0 0 0 40 40 0 327680
3 0 0 0 4 4 0 32768
4 0 0 0 2 2 0 8192
1 1 0 0 200 200 0 819200
1 0 1 0 150 150 0 1228800
4 1 1 0 3 3 0 12288
1 0 0 1 1 1 0 8192
",
            1100,
        )
    }

    /// A VM, `5-10`, and one its process created later as fd 10 again while the first lived
    /// on: `5-10.1`, of which only kvm_shadow_stats.ko has a directory.
    pub fn duplicate_name() -> Sample {
        let first = vm(5, 10, [Some(3), None, None], Source::Debugfs);
        let mut duplicate = vm(5, 10, [None; 3], Source::Debugfs);
        duplicate.id.duplicate = 1;
        duplicate.breakdown = Some(breakdown(
            "level direct guest_mode smm pages allocated zapped bytes\n1 0 0 0 2 2 0 16384\n",
            2,
        ));
        let mut sample = Sample::new(
            SystemTime::UNIX_EPOCH,
            Instant::now(),
            vec![duplicate, first],
        );
        sample.shadow_stats_loaded = true;
        sample
    }

    /// A second sample of two VMs, one named, taken at a fixed time: the outputs must render it
    /// the same way on every run.
    pub fn two_vms() -> Sample {
        let start = Instant::now();
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let web = |values| {
            let mut web = vm(4242, 11, values, Source::StatsFd);
            web.guest = Some("web \"one\", \\ctl\nx".to_owned());
            web
        };
        // kvm_shadow_stats.ko is loaded, but has no breakdown of this VM.
        let mut idle = vm(77, 9, [Some(3), Some(3), None], Source::Debugfs);
        idle.comm = None;
        let before = Sample::new(
            time,
            start,
            vec![web([Some(1042), Some(90210), Some(89168)]), idle.clone()],
        );
        // 20 pages allocated and 62 zapped in the 2 s between the samples.
        let mut after = web([Some(1000), Some(90230), Some(89230)]);
        after.breakdown = Some(web_breakdown());
        let mut sample = Sample::new(time, start + Duration::from_secs(2), vec![idle, after]);
        sample.set_rates_since(&before);
        sample.shadow_stats_loaded = true;
        sample
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::fixtures::vm;
    use super::*;

    fn ids(sample: &Sample) -> Vec<(u32, i32)> {
        sample.vms.iter().map(|vm| (vm.id.pid, vm.id.fd)).collect()
    }

    #[test]
    fn busiest_vm_comes_first_and_ties_go_by_id() {
        let sample = Sample::new(
            SystemTime::UNIX_EPOCH,
            Instant::now(),
            vec![
                vm(30, 5, [Some(7), None, None], Source::Debugfs),
                vm(20, 9, [None, None, None], Source::Debugfs),
                vm(10, 5, [Some(7), None, None], Source::Debugfs),
                vm(40, 5, [Some(900), None, None], Source::StatsFd),
                vm(10, 4, [Some(0), None, None], Source::Debugfs),
            ],
        );
        assert_eq!(ids(&sample), [(40, 5), (10, 5), (30, 5), (10, 4), (20, 9)]);
    }

    #[test]
    fn rates_follow_the_same_vm_between_samples() {
        let start = Instant::now();
        let before = Sample::new(
            SystemTime::UNIX_EPOCH,
            start,
            vec![
                vm(1, 10, [Some(100), Some(1000), Some(900)], Source::StatsFd),
                vm(2, 10, [Some(50), Some(60), Some(10)], Source::StatsFd),
                vm(3, 10, [Some(5), Some(5), Some(0)], Source::StatsFd),
            ],
        );
        let mut after = Sample::new(
            SystemTime::UNIX_EPOCH,
            start + Duration::from_secs(2),
            vec![
                // Lost 20 pages: allocated 30, zapped 50.
                vm(1, 10, [Some(80), Some(1030), Some(950)], Source::StatsFd),
                // Counters that fell: another VM with the same id.
                vm(2, 10, [Some(4), Some(6), Some(2)], Source::Debugfs),
                // New since the first sample.
                vm(4, 10, [Some(1), Some(1), Some(0)], Source::StatsFd),
            ],
        );
        after.set_rates_since(&before);

        let rates: Vec<_> = after.vms.iter().map(|vm| (vm.id.pid, vm.rates)).collect();
        assert_eq!(
            rates,
            [
                (1, [Some(-10.0), Some(15.0), Some(25.0)]),
                (2, [Some(-23.0), None, None]),
                (4, [None, None, None]),
            ]
        );
        let totals = after.totals();
        assert_eq!(totals.values, [85, 1037, 952]);
        assert_eq!(totals.rates, [Some(-33.0), Some(15.0), Some(25.0)]);
    }

    #[test]
    fn a_first_sample_has_no_rates() {
        let sample = Sample::new(
            SystemTime::UNIX_EPOCH,
            Instant::now(),
            vec![vm(1, 10, [Some(3), None, Some(1)], Source::Debugfs)],
        );
        let totals = sample.totals();
        assert_eq!(totals.values, [3, 0, 1]);
        assert_eq!(totals.rates, [None; 3]);
    }

    #[test]
    fn no_time_between_samples_gives_no_rates() {
        let now = Instant::now();
        let before = Sample::new(
            SystemTime::UNIX_EPOCH,
            now,
            vec![vm(1, 10, [Some(3), Some(3), Some(0)], Source::Debugfs)],
        );
        let mut after = before.clone();
        after.set_rates_since(&before);
        assert_eq!(after.vms[0].rates, [None; 3]);
    }
}
