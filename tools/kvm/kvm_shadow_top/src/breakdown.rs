// SPDX-License-Identifier: GPL-2.0

//! `--breakdown`: for each VM, busiest first, which shadow pages it holds, one row per role as
//! kvm_shadow_stats.ko's `pages` file lists them, and a total row.

use kvm_stats::breakdown::Bucket;

use crate::sample::{Breakdown, Sample, Vm};
use crate::table::{self, Align, Column, NONE};

pub fn render(sample: &Sample) -> String {
    if sample.vms.is_empty() {
        return "no VMs\n".to_owned();
    }
    let mut out = String::new();
    for (index, vm) in sample.vms.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        push_vm(&mut out, vm);
    }
    out
}

/// A heading line saying which VM it is and what its pages add up to, then its table.
fn push_vm(out: &mut String, vm: &Vm) {
    let name = |text: Option<&str>| table::name(text).unwrap_or_else(|| NONE.to_owned());
    out.push_str(&format!(
        "VM {}  {}  {}: ",
        vm.id,
        name(vm.comm.as_deref()),
        name(vm.guest.as_deref())
    ));
    let Some(breakdown) = &vm.breakdown else {
        out.push_str("no breakdown\n");
        return;
    };
    let totals = &breakdown.totals;
    out.push_str(&format!(
        "{} pages, peak {}, {} MiB\n",
        totals.sums.pages,
        totals.peak,
        table::format_mib(totals.sums.bytes)
    ));
    out.push_str(&buckets(breakdown));
}

/// One row per bucket, then the totals. Flags are 0 or 1, as in the module's `pages` file;
/// memory is in KiB, which every bucket holds a whole number of.
fn buckets(breakdown: &Breakdown) -> String {
    let flag = |set: bool| u8::from(set).to_string();
    let rows = breakdown.buckets();
    let totals = &breakdown.totals.sums;
    let column = |heading, cell: &dyn Fn(&Bucket) -> String, total: String| Column {
        heading,
        align: Align::Right,
        cells: rows.iter().map(cell).chain([total]).collect(),
    };
    let columns = [
        column(
            "LEVEL",
            &|bucket| bucket.role.level.to_string(),
            "total".to_owned(),
        ),
        column("DIRECT", &|bucket| flag(bucket.role.direct), String::new()),
        column("L2", &|bucket| flag(bucket.role.guest_mode), String::new()),
        column("SMM", &|bucket| flag(bucket.role.smm), String::new()),
        column(
            "PAGES",
            &|bucket| bucket.pages.to_string(),
            totals.pages.to_string(),
        ),
        column(
            "ALLOC",
            &|bucket| bucket.allocated.to_string(),
            totals.allocated.to_string(),
        ),
        column(
            "ZAPPED",
            &|bucket| bucket.zapped.to_string(),
            totals.zapped.to_string(),
        ),
        column(
            "KIB",
            &|bucket| (bucket.bytes / 1024).to_string(),
            (totals.bytes / 1024).to_string(),
        ),
    ];
    table::lay_out(&columns, rows.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::fixtures;

    #[test]
    fn a_table_per_vm() {
        assert_eq!(
            render(&fixtures::two_vms()),
            "\
VM 4242-11  qemu-system-x86  web \"one\", \\ctl?x: 1000 pages, peak 1100, 7.0 MiB
LEVEL  DIRECT  L2  SMM  PAGES  ALLOC  ZAPPED   KIB
    1       0   0    0    600    662      62  4800
    2       0   0    0     40     40       0   320
    3       0   0    0      4      4       0    32
    4       0   0    0      2      2       0     8
    1       1   0    0    200    200       0   800
    1       0   1    0    150    150       0  1200
    4       1   1    0      3      3       0    12
    1       0   0    1      1      1       0     8
total                    1000   1062      62  7180

VM 77-9  -  -: no breakdown
"
        );
    }

    #[test]
    fn a_duplicate_of_a_name_has_a_table_of_its_own() {
        assert_eq!(
            render(&fixtures::duplicate_name()),
            "\
VM 5-10  qemu-system-x86  -: no breakdown

VM 5-10.1  qemu-system-x86  -: 2 pages, peak 2, 0.0 MiB
LEVEL  DIRECT  L2  SMM  PAGES  ALLOC  ZAPPED  KIB
    1       0   0    0      2      2       0   16
total                       2      2       0   16
"
        );
    }

    #[test]
    fn no_vms() {
        let sample = Sample::new(
            std::time::SystemTime::UNIX_EPOCH,
            std::time::Instant::now(),
            Vec::new(),
        );
        assert_eq!(render(&sample), "no VMs\n");
    }

    #[test]
    fn a_vm_with_no_buckets_yet() {
        let mut sample = fixtures::two_vms();
        sample.vms.truncate(1);
        sample.vms[0].breakdown = Some(fixtures::breakdown(
            "level direct guest_mode smm pages allocated zapped bytes\n",
            0,
        ));
        assert_eq!(
            render(&sample),
            "\
VM 4242-11  qemu-system-x86  web \"one\", \\ctl?x: 0 pages, peak 0, 0.0 MiB
LEVEL  DIRECT  L2  SMM  PAGES  ALLOC  ZAPPED  KIB
total                       0      0       0    0
"
        );
    }
}
