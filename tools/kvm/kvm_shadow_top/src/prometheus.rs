// SPDX-License-Identifier: GPL-2.0

//! The Prometheus text exposition format, for node_exporter's textfile collector.
//!
//! Every value series is labelled with the VM's identity alone, `pid`, `fd` and `duplicate`,
//! which do not change while the VM lives; what may change, the owner's command name and guest
//! name, is in the info series `kvm_shadow_mmu_vm_info`, to be joined on the identity. One
//! family per field, then, while kvm_shadow_stats.ko is loaded, whether each VM's breakdown
//! could be read and what it says, a fixed set of series per VM.
//!
//! There is no total: it is `sum()` of the family, and a series that repeats the sum of others
//! would be counted twice by every such query.

use kvm_stats::breakdown::LEVELS;
use kvm_stats::debugfs::VmId;

use crate::fields::{FIELDS, Kind};
use crate::sample::{Breakdown, Sample, Vm};

pub const VM_INFO: &str = "kvm_shadow_mmu_vm_info";
pub const BREAKDOWN_UP: &str = "kvm_shadow_mmu_breakdown_up";
pub const LEVEL_PAGES: &str = "kvm_shadow_mmu_level_pages";

/// A number of a VM's breakdown, one series per VM that has one.
struct BreakdownGauge {
    metric: &'static str,
    help: &'static str,
    value: fn(&Breakdown) -> u64,
}

const BREAKDOWN_GAUGES: [BreakdownGauge; 5] = [
    BreakdownGauge {
        metric: "kvm_shadow_mmu_direct_pages",
        help: "Shadow MMU pages of the VM that no guest page table backs \
               (kvm_shadow_stats.ko's breakdown).",
        value: Breakdown::direct_pages,
    },
    BreakdownGauge {
        metric: "kvm_shadow_mmu_l2_pages",
        help: "Shadow MMU pages of the VM's L2 (nested) guests, role guest_mode \
               (kvm_shadow_stats.ko's breakdown).",
        value: Breakdown::guest_mode_pages,
    },
    BreakdownGauge {
        metric: "kvm_shadow_mmu_smm_pages",
        help: "Shadow MMU pages of the VM in System Management Mode \
               (kvm_shadow_stats.ko's breakdown).",
        value: Breakdown::smm_pages,
    },
    BreakdownGauge {
        metric: "kvm_shadow_mmu_memory_bytes",
        help: "Host memory the VM's shadow MMU pages hold: their page tables and the shadowed \
               translations of indirect ones (kvm_shadow_stats.ko's breakdown).",
        value: |breakdown| breakdown.totals.sums.bytes,
    },
    BreakdownGauge {
        metric: "kvm_shadow_mmu_peak_pages",
        help: "Most shadow MMU pages the VM held since kvm_shadow_stats.ko attached it or its \
               peak was last reset (kvm_shadow_stats.ko's breakdown).",
        value: |breakdown| breakdown.totals.peak,
    },
];

pub fn render(sample: &Sample) -> String {
    let mut out = String::new();
    push_family(
        &mut out,
        VM_INFO,
        Kind::Gauge,
        "Always 1: a VM, named by pid, fd and duplicate as in debugfs, with its owner's \
         command name (comm) and guest name (guest, from QEMU's -name), which may change and \
         so label no other series.",
        sample.vms.iter().map(|vm| (info_labels(vm), 1)),
    );
    for (index, field) in FIELDS.iter().enumerate() {
        push_family(
            &mut out,
            field.metric,
            field.kind,
            field.help,
            sample.vms.iter().filter_map(|vm| {
                let reading = vm.readings[index]?;
                Some((vm_labels(vm.id, ""), reading.value))
            }),
        );
    }
    push_family(
        &mut out,
        BREAKDOWN_UP,
        Kind::Gauge,
        "While kvm_shadow_stats.ko is loaded, 1 if the VM's breakdown was read, 0 if it could \
         not be (kvm_shadow_top says why on standard error).",
        sample
            .vms
            .iter()
            .filter(|_| sample.shadow_stats_loaded)
            .map(|vm| (vm_labels(vm.id, ""), u64::from(vm.breakdown.is_some()))),
    );
    let breakdowns = || {
        sample
            .vms
            .iter()
            .filter_map(|vm| Some((vm.id, vm.breakdown.as_ref()?)))
    };
    for gauge in &BREAKDOWN_GAUGES {
        push_family(
            &mut out,
            gauge.metric,
            Kind::Gauge,
            gauge.help,
            breakdowns().map(|(id, breakdown)| (vm_labels(id, ""), (gauge.value)(breakdown))),
        );
    }
    push_family(
        &mut out,
        LEVEL_PAGES,
        Kind::Gauge,
        "Shadow MMU pages of the VM by page table level, 1 mapping 4 KiB pages, up to 5, the \
         root of 5-level paging; every level always has a series (kvm_shadow_stats.ko's \
         breakdown).",
        breakdowns().flat_map(|(id, breakdown)| {
            LEVELS.map(move |level| {
                (
                    vm_labels(id, &format!(",level=\"{level}\"")),
                    breakdown.pages_where(|role| role.level == level),
                )
            })
        }),
    );
    out
}

/// `# HELP` and `# TYPE` of `metric`, always there, then its `samples`, pairs of labels and
/// value.
fn push_family(
    out: &mut String,
    metric: &str,
    kind: Kind,
    help: &str,
    samples: impl Iterator<Item = (String, u64)>,
) {
    let kind = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter => "counter",
    };
    out.push_str(&format!(
        "# HELP {metric} {}\n# TYPE {metric} {kind}\n",
        escape(help, false)
    ));
    for (labels, value) in samples {
        out.push_str(&format!("{metric}{labels} {value}\n"));
    }
}

/// The VM's identity, `pid`, `fd` and `duplicate`, as its debugfs directory names it, so that
/// no two VMs share it and it holds for the VM's life; then `more` labels.
fn vm_labels(id: VmId, more: &str) -> String {
    format!(
        "{{pid=\"{}\",fd=\"{}\",duplicate=\"{}\"{more}}}",
        id.pid, id.fd, id.duplicate
    )
}

/// The VM's identity and what it is: `comm` and `guest`, empty where unknown.
fn info_labels(vm: &Vm) -> String {
    vm_labels(
        vm.id,
        &format!(
            ",comm=\"{}\",guest=\"{}\"",
            escape(vm.comm.as_deref().unwrap_or_default(), true),
            escape(vm.guest.as_deref().unwrap_or_default(), true)
        ),
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

    /// [`fixtures::two_vms`] by hand: the web VM's 1000 pages hold 203 direct (200 + 3), 153
    /// of L2 (150 + 3) and 1 in SMM, 951 at level 1 (600 + 200 + 150 + 1), 40, 4 and 5 (2 + 3)
    /// at levels 2 to 4; the idle VM has no breakdown while the module is loaded.
    const TWO_VMS: &str = r#"# HELP kvm_shadow_mmu_vm_info Always 1: a VM, named by pid, fd and duplicate as in debugfs, with its owner's command name (comm) and guest name (guest, from QEMU's -name), which may change and so label no other series.
# TYPE kvm_shadow_mmu_vm_info gauge
kvm_shadow_mmu_vm_info{pid="4242",fd="11",duplicate="0",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 1
kvm_shadow_mmu_vm_info{pid="77",fd="9",duplicate="0",comm="",guest=""} 1
# HELP kvm_shadow_mmu_pages Pages the VM's shadow MMU holds (KVM stat mmu_shadow_pages).
# TYPE kvm_shadow_mmu_pages gauge
kvm_shadow_mmu_pages{pid="4242",fd="11",duplicate="0"} 1000
kvm_shadow_mmu_pages{pid="77",fd="9",duplicate="0"} 3
# HELP kvm_shadow_mmu_pages_allocated_total Shadow MMU pages the VM has allocated (KVM stat mmu_cache_miss).
# TYPE kvm_shadow_mmu_pages_allocated_total counter
kvm_shadow_mmu_pages_allocated_total{pid="4242",fd="11",duplicate="0"} 90230
kvm_shadow_mmu_pages_allocated_total{pid="77",fd="9",duplicate="0"} 3
# HELP kvm_shadow_mmu_pages_zapped_total Shadow MMU pages the VM has zapped (KVM stat mmu_shadow_zapped).
# TYPE kvm_shadow_mmu_pages_zapped_total counter
kvm_shadow_mmu_pages_zapped_total{pid="4242",fd="11",duplicate="0"} 89230
# HELP kvm_shadow_mmu_breakdown_up While kvm_shadow_stats.ko is loaded, 1 if the VM's breakdown was read, 0 if it could not be (kvm_shadow_top says why on standard error).
# TYPE kvm_shadow_mmu_breakdown_up gauge
kvm_shadow_mmu_breakdown_up{pid="4242",fd="11",duplicate="0"} 1
kvm_shadow_mmu_breakdown_up{pid="77",fd="9",duplicate="0"} 0
# HELP kvm_shadow_mmu_direct_pages Shadow MMU pages of the VM that no guest page table backs (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_direct_pages gauge
kvm_shadow_mmu_direct_pages{pid="4242",fd="11",duplicate="0"} 203
# HELP kvm_shadow_mmu_l2_pages Shadow MMU pages of the VM's L2 (nested) guests, role guest_mode (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_l2_pages gauge
kvm_shadow_mmu_l2_pages{pid="4242",fd="11",duplicate="0"} 153
# HELP kvm_shadow_mmu_smm_pages Shadow MMU pages of the VM in System Management Mode (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_smm_pages gauge
kvm_shadow_mmu_smm_pages{pid="4242",fd="11",duplicate="0"} 1
# HELP kvm_shadow_mmu_memory_bytes Host memory the VM's shadow MMU pages hold: their page tables and the shadowed translations of indirect ones (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_memory_bytes gauge
kvm_shadow_mmu_memory_bytes{pid="4242",fd="11",duplicate="0"} 7352320
# HELP kvm_shadow_mmu_peak_pages Most shadow MMU pages the VM held since kvm_shadow_stats.ko attached it or its peak was last reset (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_peak_pages gauge
kvm_shadow_mmu_peak_pages{pid="4242",fd="11",duplicate="0"} 1100
# HELP kvm_shadow_mmu_level_pages Shadow MMU pages of the VM by page table level, 1 mapping 4 KiB pages, up to 5, the root of 5-level paging; every level always has a series (kvm_shadow_stats.ko's breakdown).
# TYPE kvm_shadow_mmu_level_pages gauge
kvm_shadow_mmu_level_pages{pid="4242",fd="11",duplicate="0",level="1"} 951
kvm_shadow_mmu_level_pages{pid="4242",fd="11",duplicate="0",level="2"} 40
kvm_shadow_mmu_level_pages{pid="4242",fd="11",duplicate="0",level="3"} 4
kvm_shadow_mmu_level_pages{pid="4242",fd="11",duplicate="0",level="4"} 5
kvm_shadow_mmu_level_pages{pid="4242",fd="11",duplicate="0",level="5"} 0
"#;

    /// The metrics of kvm_shadow_stats.ko's breakdown.
    fn breakdown_metrics() -> Vec<&'static str> {
        let mut metrics = vec![BREAKDOWN_UP, LEVEL_PAGES];
        metrics.extend(BREAKDOWN_GAUGES.iter().map(|gauge| gauge.metric));
        metrics
    }

    #[test]
    fn exposition_of_two_vms() {
        assert_eq!(render(&fixtures::two_vms()), TWO_VMS);
    }

    #[test]
    fn a_duplicate_of_a_name_has_series_of_its_own() {
        let text = render(&fixtures::duplicate_name());
        let samples: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        let first = r#"{pid="5",fd="10",duplicate="0""#;
        let second = r#"{pid="5",fd="10",duplicate="1""#;
        assert_eq!(
            samples,
            [
                format!(r#"kvm_shadow_mmu_vm_info{first},comm="qemu-system-x86",guest=""}} 1"#),
                format!(r#"kvm_shadow_mmu_vm_info{second},comm="qemu-system-x86",guest=""}} 1"#),
                format!("kvm_shadow_mmu_pages{first}}} 3"),
                format!("kvm_shadow_mmu_breakdown_up{first}}} 0"),
                format!("kvm_shadow_mmu_breakdown_up{second}}} 1"),
                format!("kvm_shadow_mmu_direct_pages{second}}} 0"),
                format!("kvm_shadow_mmu_l2_pages{second}}} 0"),
                format!("kvm_shadow_mmu_smm_pages{second}}} 0"),
                format!("kvm_shadow_mmu_memory_bytes{second}}} 16384"),
                format!("kvm_shadow_mmu_peak_pages{second}}} 2"),
                format!(r#"kvm_shadow_mmu_level_pages{second},level="1"}} 2"#),
                format!(r#"kvm_shadow_mmu_level_pages{second},level="2"}} 0"#),
                format!(r#"kvm_shadow_mmu_level_pages{second},level="3"}} 0"#),
                format!(r#"kvm_shadow_mmu_level_pages{second},level="4"}} 0"#),
                format!(r#"kvm_shadow_mmu_level_pages{second},level="5"}} 0"#),
            ]
        );
    }

    #[test]
    fn without_the_module_the_breakdown_families_are_empty() {
        let mut sample = fixtures::two_vms();
        sample.shadow_stats_loaded = false;
        for vm in &mut sample.vms {
            vm.breakdown = None;
        }
        let text = render(&sample);
        let kvm_part = TWO_VMS
            .split("# HELP kvm_shadow_mmu_breakdown_up")
            .next()
            .unwrap_or_default();
        assert!(text.starts_with(kvm_part));
        for metric in breakdown_metrics() {
            assert!(
                text.contains(&format!("\n# TYPE {metric} gauge\n")),
                "{metric}"
            );
            assert!(!text.contains(&format!("\n{metric}{{")), "{metric}");
        }
    }

    /// Only the info series has labels that may change while a VM lives.
    #[test]
    fn value_series_carry_the_vm_identity_alone() {
        for line in render(&fixtures::two_vms()).lines() {
            if line.starts_with('#') || line.starts_with(VM_INFO) {
                continue;
            }
            let labels = &line[line.find('{').expect("labels")..line.find('}').expect("labels")];
            assert!(
                labels.starts_with("{pid=\"")
                    && !labels.contains("comm")
                    && !labels.contains("guest"),
                "{line}"
            );
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
        without_module.shadow_stats_loaded = false;
        for vm in &mut without_module.vms {
            vm.breakdown = None;
        }
        for sample in [
            fixtures::two_vms(),
            fixtures::duplicate_name(),
            without_module,
        ] {
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
