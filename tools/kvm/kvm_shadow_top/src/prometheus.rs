// SPDX-License-Identifier: GPL-2.0

//! The Prometheus text exposition format, for node_exporter's textfile collector: one metric
//! family per field, one sample per VM that has the value, labelled with the VM's owner.
//!
//! While kvm_shadow_stats.ko is loaded, three more families say which pages they are, for the
//! VMs it has a breakdown of.
//!
//! There is no total: it is `sum()` of the family, and a series that repeats the sum of others
//! would be counted twice by every such query.

use kvm_stats::breakdown::Bucket;

use crate::fields::{FIELDS, Kind};
use crate::sample::{Sample, Vm};

pub const PAGES_BY_ROLE: &str = "kvm_shadow_mmu_pages_by_role";
pub const BYTES: &str = "kvm_shadow_mmu_bytes";
pub const PEAK_PAGES: &str = "kvm_shadow_mmu_peak_pages";

pub fn render(sample: &Sample) -> String {
    let mut out = String::new();
    for (index, field) in FIELDS.iter().enumerate() {
        push_header(&mut out, field.metric, field.kind, field.help);
        for vm in &sample.vms {
            if let Some(reading) = vm.readings[index] {
                push_sample(&mut out, field.metric, &labels(vm, None), reading.value);
            }
        }
    }

    let breakdowns = || {
        sample
            .vms
            .iter()
            .filter_map(|vm| vm.breakdown.as_ref().map(|breakdown| (vm, breakdown)))
    };
    push_header(
        &mut out,
        PAGES_BY_ROLE,
        Kind::Gauge,
        "Shadow MMU pages the VM holds, by page table level, direct (no guest page table \
         behind them), guest_mode (an L2 guest's) and smm (kvm_shadow_stats.ko's breakdown).",
    );
    for (vm, breakdown) in breakdowns() {
        for bucket in breakdown.buckets() {
            push_sample(
                &mut out,
                PAGES_BY_ROLE,
                &labels(vm, Some(bucket)),
                bucket.pages,
            );
        }
    }
    push_header(
        &mut out,
        BYTES,
        Kind::Gauge,
        "Host memory the VM's shadow MMU pages hold: their page tables and the shadowed \
         translations of indirect ones (kvm_shadow_stats.ko's breakdown).",
    );
    for (vm, breakdown) in breakdowns() {
        push_sample(
            &mut out,
            BYTES,
            &labels(vm, None),
            breakdown.totals.sums.bytes,
        );
    }
    push_header(
        &mut out,
        PEAK_PAGES,
        Kind::Gauge,
        "Most shadow MMU pages the VM held since kvm_shadow_stats.ko attached it or its peak \
         was last reset (kvm_shadow_stats.ko's breakdown).",
    );
    for (vm, breakdown) in breakdowns() {
        push_sample(
            &mut out,
            PEAK_PAGES,
            &labels(vm, None),
            breakdown.totals.peak,
        );
    }
    out
}

fn push_header(out: &mut String, metric: &str, kind: Kind, help: &str) {
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    out.push_str(&format!(
        "# HELP {metric} {}\n# TYPE {metric} {kind}\n",
        escape(help, false)
    ));
}

fn push_sample(out: &mut String, metric: &str, labels: &str, value: u64) {
    out.push_str(&format!("{metric}{labels} {value}\n"));
}

/// `pid`, `fd` and `duplicate` name the VM as its debugfs directory does, so they are unique;
/// `comm` and `guest` say what it is, empty where unknown. A `bucket`'s role follows, each part
/// as kvm_shadow_stats' `pages` file writes it.
fn labels(vm: &Vm, bucket: Option<&Bucket>) -> String {
    let role = bucket.map_or_else(String::new, |bucket| {
        format!(
            ",level=\"{}\",direct=\"{}\",guest_mode=\"{}\",smm=\"{}\"",
            bucket.role.level,
            u8::from(bucket.role.direct),
            u8::from(bucket.role.guest_mode),
            u8::from(bucket.role.smm)
        )
    });
    format!(
        "{{pid=\"{}\",fd=\"{}\",duplicate=\"{}\",comm=\"{}\",guest=\"{}\"{role}}}",
        vm.id.pid,
        vm.id.fd,
        vm.id.duplicate,
        escape(vm.comm.as_deref().unwrap_or_default(), true),
        escape(vm.guest.as_deref().unwrap_or_default(), true)
    )
}

/// Escapes `text` for a `# HELP` line or, if `quoted`, for a label value, which also escapes
/// its double quotes.
fn escape(text: &str, quoted: bool) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' if quoted => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::sample::fixtures;

    const TWO_VMS: &str = r#"# HELP kvm_shadow_mmu_pages Pages the VM's shadow MMU holds (KVM stat mmu_shadow_pages).
# TYPE kvm_shadow_mmu_pages gauge
kvm_shadow_mmu_pages{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 1000
kvm_shadow_mmu_pages{pid="77",fd="9",duplicate="0",comm="",guest=""} 3
# HELP kvm_shadow_mmu_pages_allocated_total Shadow MMU pages the VM has allocated (KVM stat mmu_cache_miss).
# TYPE kvm_shadow_mmu_pages_allocated_total counter
kvm_shadow_mmu_pages_allocated_total{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 90230
kvm_shadow_mmu_pages_allocated_total{pid="77",fd="9",duplicate="0",comm="",guest=""} 3
# HELP kvm_shadow_mmu_pages_zapped_total Shadow MMU pages the VM has zapped (KVM stat mmu_shadow_zapped).
# TYPE kvm_shadow_mmu_pages_zapped_total counter
kvm_shadow_mmu_pages_zapped_total{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 89230
# HELP kvm_shadow_mmu_pages_by_role Shadow MMU pages the VM holds, by page table level, direct (no guest page table behind them), guest_mode (an L2 guest's) and smm (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_pages_by_role gauge
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="1",direct="0",guest_mode="0",smm="0"} 600
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="2",direct="0",guest_mode="0",smm="0"} 40
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="3",direct="0",guest_mode="0",smm="0"} 4
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="4",direct="0",guest_mode="0",smm="0"} 2
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="1",direct="1",guest_mode="0",smm="0"} 200
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="1",direct="0",guest_mode="1",smm="0"} 150
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="4",direct="1",guest_mode="1",smm="0"} 3
kvm_shadow_mmu_pages_by_role{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx",level="1",direct="0",guest_mode="0",smm="1"} 1
# HELP kvm_shadow_mmu_bytes Host memory the VM's shadow MMU pages hold: their page tables and the shadowed translations of indirect ones (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_bytes gauge
kvm_shadow_mmu_bytes{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 7352320
# HELP kvm_shadow_mmu_peak_pages Most shadow MMU pages the VM held since kvm_shadow_stats.ko attached it or its peak was last reset (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_peak_pages gauge
kvm_shadow_mmu_peak_pages{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 1100
"#;

    #[test]
    fn exposition_of_two_vms() {
        assert_eq!(render(&fixtures::two_vms()), TWO_VMS);
    }

    #[test]
    fn a_duplicate_of_a_name_has_series_of_its_own() {
        let text = render(&fixtures::duplicate_name());
        let labels = |duplicate| {
            format!(
                "{{pid=\"5\",fd=\"10\",duplicate=\"{duplicate}\",comm=\"qemu-system-x86\",guest=\"\""
            )
        };
        let samples: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                format!("kvm_shadow_mmu_pages{}}} 3", labels(0)),
                format!(
                    "kvm_shadow_mmu_pages_by_role{},level=\"1\",direct=\"0\",guest_mode=\"0\",smm=\"0\"}} 2",
                    labels(1)
                ),
                format!("kvm_shadow_mmu_bytes{}}} 16384", labels(1)),
                format!("kvm_shadow_mmu_peak_pages{}}} 2", labels(1)),
            ]
        );
    }

    #[test]
    fn without_the_module_the_breakdown_families_are_empty() {
        let mut sample = fixtures::two_vms();
        for vm in &mut sample.vms {
            vm.breakdown = None;
        }
        let text = render(&sample);
        assert!(
            text.starts_with(
                TWO_VMS
                    .split("# HELP kvm_shadow_mmu_pages_by_role")
                    .next()
                    .unwrap_or_default()
            )
        );
        for metric in [PAGES_BY_ROLE, BYTES, PEAK_PAGES] {
            assert!(
                text.contains(&format!("\n# TYPE {metric} gauge\n")),
                "{metric}"
            );
            assert!(!text.contains(&format!("\n{metric}{{")), "{metric}");
        }
    }

    #[test]
    fn help_escapes_backslashes_and_newlines_only() {
        assert_eq!(escape("a\\b\n\"c\"", false), "a\\\\b\\n\"c\"");
        assert_eq!(escape("a\\b\n\"c\"", true), "a\\\\b\\n\\\"c\\\"");
    }

    /// `promtool check metrics` parses the exposition and lints its names, types and help:
    /// with kvm_shadow_stats.ko's families filled, and empty as they are without it.
    #[test]
    #[ignore = "needs promtool, from Debian's prometheus package; scripts/test runs it"]
    fn promtool_accepts_the_exposition() {
        let mut without_module = fixtures::two_vms();
        for vm in &mut without_module.vms {
            vm.breakdown = None;
        }
        for sample in [fixtures::two_vms(), without_module] {
            let mut promtool = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("promtool runs");
            promtool
                .stdin
                .take()
                .expect("promtool's stdin")
                .write_all(render(&sample).as_bytes())
                .expect("promtool reads its input");
            let output = promtool.wait_with_output().expect("promtool finishes");
            assert!(
                output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
                "promtool check metrics: {}\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
