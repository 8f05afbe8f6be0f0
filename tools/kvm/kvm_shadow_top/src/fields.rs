// SPDX-License-Identifier: GPL-2.0

//! The per-VM numbers the tool shows. Every output walks [`FIELDS`], so a number added there
//! shows up in the table, the JSON document and the Prometheus exposition alike.

/// How a number behaves over time, which decides its Prometheus type and whether a fall
/// between two samples means anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Goes up and down: the change per second may be negative.
    Gauge,
    /// Only grows while the VM lives: a fall means a different VM got the same id.
    Counter,
}

/// One per-VM number.
#[derive(Debug)]
pub struct Field {
    /// KVM's name for it, both in the binary stats file and in the VM's debugfs directory.
    pub stat: &'static str,
    pub kind: Kind,
    /// Table heading of the value, if the table shows the value.
    pub column: Option<&'static str>,
    /// Table heading of the change per second, if the table shows it.
    pub rate_column: Option<&'static str>,
    /// Prometheus metric name, with its unit and, for counters, `_total`.
    pub metric: &'static str,
    /// Prometheus `# HELP` text.
    pub help: &'static str,
}

/// The index in [`FIELDS`] of `mmu_shadow_pages`, by which VMs are sorted.
pub const PAGES: usize = 0;

pub const FIELDS: [Field; 3] = [
    Field {
        stat: "mmu_shadow_pages",
        kind: Kind::Gauge,
        column: Some("PAGES"),
        rate_column: Some("PAGES/S"),
        metric: "kvm_shadow_mmu_pages",
        help: "Pages the VM's shadow MMU holds (KVM stat mmu_shadow_pages).",
    },
    // KVM allocates a shadow page exactly when its lookup misses.
    Field {
        stat: "mmu_cache_miss",
        kind: Kind::Counter,
        column: None,
        rate_column: Some("ALLOC/S"),
        metric: "kvm_shadow_mmu_pages_allocated_total",
        help: "Shadow MMU pages the VM has allocated (KVM stat mmu_cache_miss).",
    },
    Field {
        stat: "mmu_shadow_zapped",
        kind: Kind::Counter,
        column: None,
        rate_column: Some("ZAP/S"),
        metric: "kvm_shadow_mmu_pages_zapped_total",
        help: "Shadow MMU pages the VM has zapped (KVM stat mmu_shadow_zapped).",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_is_mmu_shadow_pages() {
        assert_eq!(FIELDS[PAGES].stat, "mmu_shadow_pages");
    }

    #[test]
    fn metric_names_follow_prometheus_conventions() {
        for field in &FIELDS {
            assert!(
                field.metric.starts_with("kvm_shadow_mmu_"),
                "{}",
                field.metric
            );
            assert_eq!(
                field.metric.ends_with("_total"),
                field.kind == Kind::Counter,
                "{}",
                field.metric
            );
        }
    }
}
