// SPDX-License-Identifier: GPL-2.0

//! The table for people: one row per VM, busiest first, and a total row.

use crate::fields::FIELDS;
use crate::sample::{Reading, Sample, Vm};

/// Shown where there is nothing to show: a value that could not be read, a rate before the
/// second sample, a process without a guest name.
const NONE: &str = "-";

enum Align {
    Left,
    Right,
}

struct Column {
    heading: &'static str,
    align: Align,
    /// One cell per VM, then the total row's.
    cells: Vec<String>,
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
        column(
            "FD",
            Align::Right,
            sample,
            |vm| Some(vm.id.fd.to_string()),
            "",
        ),
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
fn name(text: Option<&str>) -> Option<String> {
    let text = text.filter(|text| !text.is_empty())?;
    Some(
        text.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

fn format_rate(rate: f64) -> String {
    format!("{rate:.1}")
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
fn lay_out(columns: &[Column], rows: usize) -> String {
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
    use crate::sample::fixtures;

    fn lines(lines: &[&str]) -> String {
        lines.iter().map(|line| format!("{line}\n")).collect()
    }

    #[test]
    fn second_sample_with_rates() {
        assert_eq!(
            render(&fixtures::two_vms(), false),
            lines(&[
                "  PID  FD  COMM             GUEST              PAGES  PAGES/S  ALLOC/S  ZAP/S",
                " 4242  11  qemu-system-x86  web \"one\", \\ctl?x   1000    -21.0     10.0   31.0",
                "   77   9  -                -                      3      0.0      0.0      -",
                "total                                           1003    -21.0     10.0   31.0",
            ])
        );
    }

    #[test]
    fn sources_column() {
        let table = render(&fixtures::two_vms(), true);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("ZAP/S  SOURCE"), "{table}");
        assert!(lines[1].ends_with("  stats_fd"), "{table}");
        assert!(lines[2].ends_with("  debugfs"), "{table}");
    }

    #[test]
    fn mixed_sources_are_named_per_stat() {
        let mut vm = fixtures::vm(
            1,
            2,
            [Some(1), Some(2), None],
            crate::sample::Source::StatsFd,
        );
        vm.readings[1] = vm.readings[1].map(|reading| Reading {
            source: crate::sample::Source::Debugfs,
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
                "  PID  FD  COMM  GUEST  PAGES  PAGES/S  ALLOC/S  ZAP/S",
                "total                       0        -        -      -",
            ])
        );
    }
}
