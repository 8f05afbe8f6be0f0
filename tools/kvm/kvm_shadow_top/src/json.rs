// SPDX-License-Identifier: GPL-2.0

//! One JSON document per sample, on a line of its own. Documentation/kvm-shadow-top.rst
//! describes the schema; the tests below hold this code to it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::fields::FIELDS;
use crate::sample::{Breakdown, Sample, Vm};

pub fn render(sample: &Sample) -> String {
    let mut out = String::from("{\"time\":");
    push_time(&mut out, sample.time);
    out.push_str(",\"vms\":[");
    for (index, vm) in sample.vms.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_vm(&mut out, vm);
    }
    out.push_str("],\"total\":{");
    let totals = sample.totals();
    for (index, field) in FIELDS.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_string(&mut out, field.stat);
        out.push_str(&format!(
            ":{{\"value\":{},\"per_second\":",
            totals.values[index]
        ));
        push_rate(&mut out, totals.rates[index]);
        out.push('}');
    }
    out.push_str("}}\n");
    out
}

fn push_vm(out: &mut String, vm: &Vm) {
    out.push_str(&format!(
        "{{\"pid\":{},\"fd\":{},\"duplicate\":{},\"comm\":",
        vm.id.pid, vm.id.fd, vm.id.duplicate
    ));
    push_optional_string(out, vm.comm.as_deref());
    out.push_str(",\"guest\":");
    push_optional_string(out, vm.guest.as_deref());
    out.push_str(",\"stats\":{");
    for (index, field) in FIELDS.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_string(out, field.stat);
        out.push(':');
        let Some(reading) = vm.readings[index] else {
            out.push_str("null");
            continue;
        };
        out.push_str(&format!("{{\"value\":{},\"source\":", reading.value));
        push_string(out, reading.source.name());
        out.push_str(",\"per_second\":");
        push_rate(out, vm.rates[index]);
        out.push('}');
    }
    out.push_str("},\"breakdown\":");
    match &vm.breakdown {
        Some(breakdown) => push_breakdown(out, breakdown),
        None => out.push_str("null"),
    }
    out.push('}');
}

/// kvm_shadow_stats' `pages` file as `buckets`, its `totals` file as `totals`, with the keys
/// this tool knows.
fn push_breakdown(out: &mut String, breakdown: &Breakdown) {
    out.push_str("{\"buckets\":[");
    for (index, bucket) in breakdown.buckets().iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let role = bucket.role;
        out.push_str(&format!(
            "{{\"level\":{},\"direct\":{},\"guest_mode\":{},\"smm\":{},\"pages\":{},\"allocated\":{},\"zapped\":{},\"bytes\":{}}}",
            role.level,
            role.direct,
            role.guest_mode,
            role.smm,
            bucket.pages,
            bucket.allocated,
            bucket.zapped,
            bucket.bytes
        ));
    }
    let (sums, peak) = (&breakdown.totals.sums, breakdown.totals.peak);
    out.push_str(&format!(
        "],\"totals\":{{\"pages\":{},\"peak\":{},\"allocated\":{},\"zapped\":{},\"bytes\":{},\"page_table_bytes\":{}}}}}",
        sums.pages, peak, sums.allocated, sums.zapped, sums.bytes, sums.page_table_bytes
    ));
}

/// Seconds since the epoch, to the millisecond.
fn push_time(out: &mut String, time: SystemTime) {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => out.push_str(&format!("{}.{:03}", since.as_secs(), since.subsec_millis())),
        Err(_) => out.push_str("null"),
    }
}

fn push_rate(out: &mut String, rate: Option<f64>) {
    match rate {
        // Rust prints floats without exponents, which JSON's grammar also accepts.
        Some(rate) if rate.is_finite() => out.push_str(&rate.to_string()),
        _ => out.push_str("null"),
    }
}

fn push_optional_string(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => push_string(out, text),
        None => out.push_str("null"),
    }
}

fn push_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};

    use super::*;
    use crate::sample::fixtures;

    /// Checks `document` against the documented schema and returns its VMs.
    fn check_schema(document: &Value) -> &Vec<Value> {
        let top = object(document, &["time", "vms", "total"]);
        assert!(top["time"].is_number());
        let vms = top["vms"].as_array().expect("vms is an array");
        let stats: Vec<&str> = FIELDS.iter().map(|field| field.stat).collect();
        for vm in vms {
            let vm = object(
                vm,
                &[
                    "pid",
                    "fd",
                    "duplicate",
                    "comm",
                    "guest",
                    "stats",
                    "breakdown",
                ],
            );
            if !vm["breakdown"].is_null() {
                check_breakdown(&vm["breakdown"]);
            }
            assert!(vm["pid"].is_u64() && vm["fd"].is_i64() && vm["duplicate"].is_u64());
            assert!(vm["comm"].is_string() || vm["comm"].is_null());
            assert!(vm["guest"].is_string() || vm["guest"].is_null());
            for stat in object(&vm["stats"], &stats).values() {
                if stat.is_null() {
                    continue;
                }
                let stat = object(stat, &["value", "source", "per_second"]);
                assert!(stat["value"].is_u64());
                assert!(
                    ["stats_fd", "debugfs"].contains(&stat["source"].as_str().expect("a string"))
                );
                assert!(stat["per_second"].is_number() || stat["per_second"].is_null());
            }
        }
        for total in object(&top["total"], &stats).values() {
            let total = object(total, &["value", "per_second"]);
            assert!(total["value"].is_u64());
            assert!(total["per_second"].is_number() || total["per_second"].is_null());
        }
        vms
    }

    /// Checks a VM's `breakdown` object against the schema: the buckets add up to the totals.
    fn check_breakdown(breakdown: &Value) {
        let breakdown = object(breakdown, &["buckets", "totals"]);
        // The keys are those of the module's totals file of a VM.
        let totals = object(&breakdown["totals"], &kvm_stats::breakdown::VM_TOTALS_KEYS);
        assert!(totals.values().all(Value::is_u64));
        let mut sums = Map::new();
        for bucket in breakdown["buckets"]
            .as_array()
            .expect("buckets is an array")
        {
            // The keys are the columns of the module's pages file.
            let bucket = object(bucket, &kvm_stats::breakdown::PAGES_COLUMNS);
            assert!((1..=5).contains(&bucket["level"].as_u64().expect("a level")));
            for flag in ["direct", "guest_mode", "smm"] {
                assert!(bucket[flag].is_boolean(), "{flag}");
            }
            for key in ["pages", "allocated", "zapped", "bytes"] {
                let sum = sums.get(key).and_then(Value::as_u64).unwrap_or(0);
                let value = bucket[key].as_u64().expect("a count");
                sums.insert(key.to_owned(), Value::from(sum + value));
            }
        }
        for (key, sum) in &sums {
            assert_eq!(&totals[key], sum, "{key}");
        }
    }

    /// `value` as an object with exactly `keys`.
    fn object<'a>(value: &'a Value, keys: &[&str]) -> &'a Map<String, Value> {
        let object = value.as_object().expect("an object");
        let mut found: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut expected = keys.to_vec();
        found.sort_unstable();
        expected.sort_unstable();
        assert_eq!(found, expected);
        object
    }

    #[test]
    fn document_follows_the_schema() {
        let text = render(&fixtures::two_vms());
        assert_eq!(text.lines().count(), 1);
        let document: Value = serde_json::from_str(&text).expect("valid JSON");
        let vms = check_schema(&document);

        assert_eq!(document["time"].as_f64(), Some(1_700_000_000.25));
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0]["pid"], 4242);
        assert_eq!(vms[0]["duplicate"], 0);
        assert_eq!(vms[0]["guest"], "web \"one\", \\ctl\nx");
        assert_eq!(vms[0]["stats"]["mmu_shadow_pages"]["value"], 1000);
        assert_eq!(vms[0]["stats"]["mmu_shadow_pages"]["per_second"], -21.0);
        assert_eq!(vms[0]["stats"]["mmu_cache_miss"]["source"], "stats_fd");
        assert_eq!(vms[1]["comm"], Value::Null);
        assert_eq!(vms[1]["stats"]["mmu_shadow_zapped"], Value::Null);
        assert_eq!(vms[1]["stats"]["mmu_cache_miss"]["source"], "debugfs");
        assert_eq!(document["total"]["mmu_shadow_pages"]["value"], 1003);
        assert_eq!(document["total"]["mmu_shadow_zapped"]["per_second"], 31.0);

        let breakdown = &vms[0]["breakdown"];
        assert_eq!(breakdown["buckets"].as_array().map(Vec::len), Some(8));
        assert_eq!(
            breakdown["buckets"][0],
            serde_json::json!({
                "level": 1, "direct": false, "guest_mode": false, "smm": false,
                "pages": 600, "allocated": 662, "zapped": 62, "bytes": 4_915_200
            })
        );
        assert_eq!(breakdown["buckets"][6]["direct"], true);
        assert_eq!(breakdown["buckets"][6]["guest_mode"], true);
        assert_eq!(breakdown["buckets"][6]["bytes"], 3 * 4096);
        assert_eq!(breakdown["buckets"][7]["smm"], true);
        assert_eq!(
            breakdown["totals"],
            serde_json::json!({
                "pages": 1000, "peak": 1100, "allocated": 1062, "zapped": 62,
                "bytes": 7_352_320, "page_table_bytes": 4_096_000
            })
        );
        assert_eq!(vms[1]["breakdown"], Value::Null);
    }

    #[test]
    fn a_duplicate_of_a_name_is_told_apart() {
        let text = render(&fixtures::duplicate_name());
        let document: Value = serde_json::from_str(&text).expect("valid JSON");
        let vms = check_schema(&document);
        let ids: Vec<_> = vms
            .iter()
            .map(|vm| (&vm["pid"], &vm["fd"], &vm["duplicate"]))
            .collect();
        assert_eq!(
            ids,
            [
                (&Value::from(5), &Value::from(10), &Value::from(0)),
                (&Value::from(5), &Value::from(10), &Value::from(1))
            ]
        );
        assert_eq!(vms[1]["stats"]["mmu_shadow_pages"], Value::Null);
        assert_eq!(vms[1]["breakdown"]["totals"]["peak"], 2);
    }

    #[test]
    fn first_sample_and_empty_host() {
        let sample = Sample::new(UNIX_EPOCH, std::time::Instant::now(), Vec::new());
        let text = render(&sample);
        let document: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(check_schema(&document).is_empty());
        assert_eq!(document["total"]["mmu_shadow_pages"]["value"], 0);
        assert_eq!(
            document["total"]["mmu_shadow_pages"]["per_second"],
            Value::Null
        );
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        push_string(&mut out, "a\"b\\c\n\t\u{1}\u{7f}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\t\\u0001\u{7f}é\"");
        assert_eq!(
            serde_json::from_str::<String>(&out).expect("valid JSON"),
            "a\"b\\c\n\t\u{1}\u{7f}é"
        );
    }
}
