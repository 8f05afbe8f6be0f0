// SPDX-License-Identifier: GPL-2.0

//! The table for people: one row per VM, busiest first, and a total row.

use kvm_stats::debugfs::VmId;

use crate::fields::FIELDS;
use crate::sample::{Breakdown, Reading, Sample, Vm};

/// Shown where there is nothing to show: a value that could not be read, a rate before the
/// second sample, a process without a guest name.
pub const NONE: &str = "-";

pub enum Align {
    Left,
    Right,
}

pub struct Column {
    pub heading: &'static str,
    pub align: Align,
    /// One cell per row: here one per VM, then the total row's.
    pub cells: Vec<String>,
}

/// The table of `sample`, with a SOURCE column if `sources`.
pub fn render(sample: &Sample, sources: bool) -> String {
    let totals = sample.totals();
    let mut columns = vec![
        column(
            "PID",
            Align::Right,
            sample,
            |vm| Some(vm.id.pid.to_string()),
            "total",
        ),
        column("FD", Align::Right, sample, |vm| Some(fd_cell(vm.id)), ""),
        column(
            "COMM",
            Align::Left,
            sample,
            |vm| name(vm.comm.as_deref()),
            "",
        ),
        column(
            "GUEST",
            Align::Left,
            sample,
            |vm| name(vm.guest.as_deref()),
            "",
        ),
    ];
    for (index, field) in FIELDS.iter().enumerate() {
        if let Some(heading) = field.column {
            columns.push(column(
                heading,
                Align::Right,
                sample,
                |vm| vm.readings[index].map(|reading| reading.value.to_string()),
                &totals.values[index].to_string(),
            ));
        }
        if let Some(heading) = field.rate_column {
            columns.push(column(
                heading,
                Align::Right,
                sample,
                |vm| vm.rates[index].map(format_rate),
                &totals.rates[index].map_or_else(|| NONE.to_owned(), format_rate),
            ));
        }
    }
    // From kvm_shadow_stats.ko, for the VMs it has a breakdown of.
    for breakdown_column in BREAKDOWN_COLUMNS {
        let BreakdownColumn {
            heading,
            value,
            format,
            adds_up,
        } = breakdown_column;
        let total = if adds_up {
            sample
                .vms
                .iter()
                .filter_map(|vm| vm.breakdown.as_ref().map(value))
                .reduce(u64::saturating_add)
                .map_or_else(|| NONE.to_owned(), format)
        } else {
            String::new()
        };
        columns.push(column(
            heading,
            Align::Right,
            sample,
            |vm| {
                vm.breakdown
                    .as_ref()
                    .map(|breakdown| format(value(breakdown)))
            },
            &total,
        ));
    }
    if sources {
        columns.push(column(
            "SOURCE",
            Align::Left,
            sample,
            |vm| Some(sources_of(vm)),
            "",
        ));
    }
    lay_out(&columns, sample.vms.len() + 1)
}

/// A column with `cell` of each VM, [`NONE`] where it gives nothing, and `total` last.
fn column(
    heading: &'static str,
    align: Align,
    sample: &Sample,
    cell: impl Fn(&Vm) -> Option<String>,
    total: &str,
) -> Column {
    let cells = sample
        .vms
        .iter()
        .map(|vm| cell(vm).unwrap_or_else(|| NONE.to_owned()))
        .chain([total.to_owned()])
        .collect();
    Column {
        heading,
        align,
        cells,
    }
}

/// A name from another process, which may hold anything, with its control characters replaced
/// so that it cannot move the cursor or end the row.
pub fn name(text: Option<&str>) -> Option<String> {
    let text = text.filter(|text| !text.is_empty())?;
    Some(
        text.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// A column from a VM's breakdown.
struct BreakdownColumn {
    heading: &'static str,
    value: fn(&Breakdown) -> u64,
    format: fn(u64) -> String,
    /// Whether the total row adds up the VMs that have a breakdown, or stays blank.
    adds_up: bool,
}

/// The columns from a VM's breakdown: pages no guest page table backs, pages of L2 guests,
/// the host memory they hold and the most pages held. Peaks reached at different times add up
/// to no peak of the host, so PEAK has no total.
const BREAKDOWN_COLUMNS: [BreakdownColumn; 4] = [
    BreakdownColumn {
        heading: "DIRECT",
        value: Breakdown::direct_pages,
        format: count,
        adds_up: true,
    },
    BreakdownColumn {
        heading: "L2",
        value: Breakdown::guest_mode_pages,
        format: count,
        adds_up: true,
    },
    BreakdownColumn {
        heading: "MIB",
        value: |breakdown| breakdown.totals.sums.bytes,
        format: format_mib,
        adds_up: true,
    },
    BreakdownColumn {
        heading: "PEAK",
        value: |breakdown| breakdown.totals.peak,
        format: count,
        adds_up: false,
    },
];

/// What follows `<pid>-` in the VM's directory name: the fd, and `.<n>` for a duplicate.
fn fd_cell(vm: VmId) -> String {
    match vm.duplicate {
        0 => vm.fd.to_string(),
        n => format!("{}.{n}", vm.fd),
    }
}

fn count(value: u64) -> String {
    value.to_string()
}

fn format_rate(rate: f64) -> String {
    format!("{rate:.1}")
}

/// `bytes` in MiB to one decimal, rounded half up; in integers, so that a script can check it
/// exactly: `(bytes * 10 + 2^19) / 2^20` tenths.
pub fn format_mib(bytes: u64) -> String {
    let tenths = (u128::from(bytes) * 10 + (1 << 19)) >> 20;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Where a VM's numbers came from: one source if they share it, else each stat's.
fn sources_of(vm: &Vm) -> String {
    let read: Vec<(&str, Reading)> = FIELDS
        .iter()
        .zip(&vm.readings)
        .filter_map(|(field, reading)| reading.map(|reading| (field.stat, reading)))
        .collect();
    match read.as_slice() {
        [] => NONE.to_owned(),
        [(_, first), rest @ ..] if rest.iter().all(|(_, r)| r.source == first.source) => {
            first.source.name().to_owned()
        }
        _ => read
            .iter()
            .map(|(stat, reading)| format!("{stat}={}", reading.source.name()))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Pads every column to its widest cell, two spaces apart.
pub fn lay_out(columns: &[Column], rows: usize) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .map(|column| {
            column
                .cells
                .iter()
                .map(|cell| cell.chars().count())
                .fold(column.heading.len(), usize::max)
        })
        .collect();
    let mut table = String::new();
    push_line(&mut table, columns, &widths, |column| column.heading);
    for row in 0..rows {
        push_line(&mut table, columns, &widths, |column| {
            column.cells.get(row).map_or("", String::as_str)
        });
    }
    table
}

fn push_line<'a>(
    table: &mut String,
    columns: &'a [Column],
    widths: &[usize],
    cell: impl Fn(&'a Column) -> &'a str,
) {
    let mut line = String::new();
    for (column, &width) in columns.iter().zip(widths) {
        if !line.is_empty() {
            line.push_str("  ");
        }
        let cell = cell(column);
        let pad = " ".repeat(width.saturating_sub(cell.chars().count()));
        match column.align {
            Align::Left => line.extend([cell, &pad]),
            Align::Right => line.extend([&pad, cell]),
        }
    }
    table.push_str(line.trim_end());
    table.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Source, fixtures};

    fn lines(lines: &[&str]) -> String {
        lines.iter().map(|line| format!("{line}\n")).collect()
    }

    #[test]
    fn second_sample_with_rates() {
        assert_eq!(
            render(&fixtures::two_vms(), false),
            lines(&[
                "  PID  FD  COMM             GUEST              PAGES  PAGES/S  ALLOC/S  ZAP/S  DIRECT   L2  MIB  PEAK",
                " 4242  11  qemu-system-x86  web \"one\", \\ctl?x   1000    -21.0     10.0   31.0     203  153  7.0  1100",
                "   77   9  -                -                      3      0.0      0.0      -       -    -    -     -",
                "total                                           1003    -21.0     10.0   31.0     203  153  7.0",
            ])
        );
    }

    #[test]
    fn breakdowns_add_up_in_the_total_row() {
        let mut sample = fixtures::two_vms();
        sample.vms[1].breakdown = Some(fixtures::breakdown(
            "level direct guest_mode smm pages allocated zapped bytes\n\
             1 0 0 0 2 2 0 16384\n\
             4 0 0 0 1 1 0 4096\n",
            9,
        ));
        let table = render(&sample, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[2].ends_with("  0    0  0.0     9"), "{table}");
        // Peaks reached at different times add up to no peak: PEAK has no total.
        assert!(lines[3].ends_with("  203  153  7.0"), "{table}");
    }

    #[test]
    fn a_duplicate_of_a_name_has_a_row_of_its_own() {
        assert_eq!(
            render(&fixtures::duplicate_name(), false),
            lines(&[
                "  PID    FD  COMM             GUEST  PAGES  PAGES/S  ALLOC/S  ZAP/S  DIRECT  L2  MIB  PEAK",
                "    5    10  qemu-system-x86  -          3        -        -      -       -   -    -     -",
                "    5  10.1  qemu-system-x86  -          -        -        -      -       0   0  0.0     2",
                "total                                    3        -        -      -       0   0  0.0",
            ])
        );
    }

    #[test]
    fn mib_to_one_decimal_rounded_half_up() {
        for (bytes, mib) in [
            (0, "0.0"),
            (4096, "0.0"),
            // 0.05 MiB and a byte less.
            (52_429, "0.1"),
            (52_428, "0.0"),
            (1 << 20, "1.0"),
            (7_352_320, "7.0"),
            // 2.25 MiB: half up, not to even.
            (2_359_296, "2.3"),
            (u64::MAX, "17592186044416.0"),
        ] {
            assert_eq!(format_mib(bytes), mib, "{bytes}");
        }
    }

    #[test]
    fn sources_column() {
        let table = render(&fixtures::two_vms(), true);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("PEAK  SOURCE"), "{table}");
        assert!(lines[1].ends_with("  stats_fd"), "{table}");
        assert!(lines[2].ends_with("  debugfs"), "{table}");
    }

    #[test]
    fn mixed_sources_are_named_per_stat() {
        let mut vm = fixtures::vm(1, 2, [Some(1), Some(2), None], Source::StatsFd);
        vm.readings[1] = vm.readings[1].map(|reading| Reading {
            source: Source::Debugfs,
            ..reading
        });
        assert_eq!(
            sources_of(&vm),
            "mmu_shadow_pages=stats_fd,mmu_cache_miss=debugfs"
        );
        vm.readings = [None; 3];
        assert_eq!(sources_of(&vm), "-");
    }

    #[test]
    fn empty_host() {
        let sample = Sample::new(
            std::time::SystemTime::UNIX_EPOCH,
            std::time::Instant::now(),
            Vec::new(),
        );
        assert_eq!(
            render(&sample, false),
            lines(&[
                "  PID  FD  COMM  GUEST  PAGES  PAGES/S  ALLOC/S  ZAP/S  DIRECT  L2  MIB  PEAK",
                "total                       0        -        -      -       -   -    -",
            ])
        );
    }
}
