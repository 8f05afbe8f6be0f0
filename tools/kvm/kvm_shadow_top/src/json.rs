// SPDX-License-Identifier: GPL-2.0

//! One JSON document per sample, on a line of its own. Documentation/kvm-shadow-top.rst
//! describes the schema; the tests below hold this code to it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::fields::FIELDS;
use crate::sample::{Sample, Vm};

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
        "{{\"pid\":{},\"fd\":{},\"comm\":",
        vm.id.pid, vm.id.fd
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
    out.push_str("}}");
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
            let vm = object(vm, &["pid", "fd", "comm", "guest", "stats"]);
            assert!(vm["pid"].is_u64() && vm["fd"].is_i64());
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
        assert_eq!(vms[0]["guest"], "web \"one\", \\ctl\nx");
        assert_eq!(vms[0]["stats"]["mmu_shadow_pages"]["value"], 1000);
        assert_eq!(vms[0]["stats"]["mmu_shadow_pages"]["per_second"], -21.0);
        assert_eq!(vms[0]["stats"]["mmu_cache_miss"]["source"], "stats_fd");
        assert_eq!(vms[1]["comm"], Value::Null);
        assert_eq!(vms[1]["stats"]["mmu_shadow_zapped"], Value::Null);
        assert_eq!(vms[1]["stats"]["mmu_cache_miss"]["source"], "debugfs");
        assert_eq!(document["total"]["mmu_shadow_pages"]["value"], 1003);
        assert_eq!(document["total"]["mmu_shadow_zapped"]["per_second"], 31.0);
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
