// SPDX-License-Identifier: GPL-2.0

//! The Prometheus text exposition format, for node_exporter's textfile collector: one metric
//! family per field, one sample per VM that has the value, labelled with the VM's owner.
//!
//! There is no total: it is `sum()` of the family, and a series that repeats the sum of others
//! would be counted twice by every such query.

use crate::fields::{FIELDS, Kind};
use crate::sample::{Sample, Vm};

pub fn render(sample: &Sample) -> String {
    let mut out = String::new();
    for (index, field) in FIELDS.iter().enumerate() {
        let kind = match field.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} {kind}\n",
            field.metric,
            escape(field.help, false),
            field.metric
        ));
        for vm in &sample.vms {
            if let Some(reading) = vm.readings[index] {
                out.push_str(&format!(
                    "{}{} {}\n",
                    field.metric,
                    labels(vm),
                    reading.value
                ));
            }
        }
    }
    out
}

/// `pid` and `fd` name the VM as its debugfs directory does, so they are unique; `comm` and
/// `guest` say what it is, empty where unknown.
fn labels(vm: &Vm) -> String {
    format!(
        "{{pid=\"{}\",fd=\"{}\",comm=\"{}\",guest=\"{}\"}}",
        vm.id.pid,
        vm.id.fd,
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
kvm_shadow_mmu_pages{pid="4242",fd="11",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 1000
kvm_shadow_mmu_pages{pid="77",fd="9",comm="",guest=""} 3
# HELP kvm_shadow_mmu_pages_allocated_total Shadow MMU pages the VM has allocated (KVM stat mmu_cache_miss).
# TYPE kvm_shadow_mmu_pages_allocated_total counter
kvm_shadow_mmu_pages_allocated_total{pid="4242",fd="11",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 90230
kvm_shadow_mmu_pages_allocated_total{pid="77",fd="9",comm="",guest=""} 3
# HELP kvm_shadow_mmu_pages_zapped_total Shadow MMU pages the VM has zapped (KVM stat mmu_shadow_zapped).
# TYPE kvm_shadow_mmu_pages_zapped_total counter
kvm_shadow_mmu_pages_zapped_total{pid="4242",fd="11",comm="qemu-system-x86",guest="web \"one\", \\ctl\nx"} 89230
"#;

    #[test]
    fn exposition_of_two_vms() {
        assert_eq!(render(&fixtures::two_vms()), TWO_VMS);
    }

    #[test]
    fn help_escapes_backslashes_and_newlines_only() {
        assert_eq!(escape("a\\b\n\"c\"", false), "a\\\\b\\n\"c\"");
        assert_eq!(escape("a\\b\n\"c\"", true), "a\\\\b\\n\\\"c\\\"");
    }

    /// `promtool check metrics` parses the exposition and lints its names, types and help.
    #[test]
    #[ignore = "needs promtool, from Debian's prometheus package; scripts/test runs it"]
    fn promtool_accepts_the_exposition() {
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
            .write_all(render(&fixtures::two_vms()).as_bytes())
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
