// SPDX-License-Identifier: GPL-2.0

//! One JSON document per sample, on a line of its own. Documentation/kvm-shadow-top.rst
//! describes the schema; the tests below hold this code to it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::fields::FIELDS;
use crate::sample::{Breakdown, Reading, Sample, Vm};

/// The version of the document's layout: raised when a key changes its meaning or goes
/// away, not when one is added. Version 1 had no `schema`, and `total` where 2 has `totals`.
pub const SCHEMA: u32 = 2;

pub fn render(sample: &Sample) -> String {
    let totals = sample.totals();
    let document = Document {
        schema: SCHEMA,
        time: seconds_since_epoch(sample.time),
        vms: sample.vms.iter().map(VmObject::from).collect(),
        totals: ByStat(
            totals
                .values
                .iter()
                .zip(totals.rates)
                .map(|(&value, per_second)| {
                    Some(Total {
                        value,
                        per_second: finite(per_second),
                    })
                })
                .collect(),
        ),
    };
    let mut out = serde_json::to_string(&document).expect("the document holds only JSON types");
    out.push('\n');
    out
}

#[derive(Serialize)]
struct Document<'a> {
    schema: u32,
    time: Option<f64>,
    vms: Vec<VmObject<'a>>,
    totals: ByStat<Total>,
}

/// Which VM an object is of, in the keys that lead every output's VM objects.
#[derive(Serialize)]
pub struct Identity<'a> {
    pid: u32,
    fd: i32,
    duplicate: u32,
    comm: Option<&'a str>,
    guest: Option<&'a str>,
}

impl<'a> From<&'a Vm> for Identity<'a> {
    fn from(vm: &'a Vm) -> Self {
        Self {
            pid: vm.id.pid,
            fd: vm.id.fd,
            duplicate: vm.id.duplicate,
            comm: vm.comm.as_deref(),
            guest: vm.guest.as_deref(),
        }
    }
}

#[derive(Serialize)]
struct VmObject<'a> {
    #[serde(flatten)]
    identity: Identity<'a>,
    stats: ByStat<Stat>,
    breakdown: Option<BreakdownObject>,
}

impl<'a> From<&'a Vm> for VmObject<'a> {
    fn from(vm: &'a Vm) -> Self {
        Self {
            identity: Identity::from(vm),
            stats: ByStat(
                vm.readings
                    .iter()
                    .zip(vm.rates)
                    .map(|(reading, rate)| reading.map(|reading| Stat::new(reading, rate)))
                    .collect(),
            ),
            breakdown: vm.breakdown.as_ref().map(BreakdownObject::from),
        }
    }
}

/// One entry per field of [`FIELDS`], keyed by KVM's name of the stat, in [`FIELDS`]' order;
/// `null` where there is no value.
struct ByStat<T>(Vec<Option<T>>);

impl<T: Serialize> Serialize for ByStat<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(FIELDS.len()))?;
        for (field, entry) in FIELDS.iter().zip(&self.0) {
            map.serialize_entry(field.stat, entry)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Stat {
    value: u64,
    source: &'static str,
    per_second: Option<f64>,
}

impl Stat {
    fn new(reading: Reading, rate: Option<f64>) -> Self {
        Self {
            value: reading.value,
            source: reading.source.name(),
            per_second: finite(rate),
        }
    }
}

#[derive(Serialize)]
struct Total {
    value: u64,
    per_second: Option<f64>,
}

/// kvm_shadow_stats' `pages` file as `buckets`, its `totals` file as `totals`, with the keys
/// this tool knows.
#[derive(Serialize)]
struct BreakdownObject {
    buckets: Vec<BucketObject>,
    totals: BreakdownTotals,
}

#[derive(Serialize)]
struct BucketObject {
    level: u8,
    direct: bool,
    guest_mode: bool,
    smm: bool,
    pages: u64,
    allocated: u64,
    zapped: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct BreakdownTotals {
    pages: u64,
    peak: u64,
    allocated: u64,
    zapped: u64,
    bytes: u64,
    page_table_bytes: u64,
}

impl From<&Breakdown> for BreakdownObject {
    fn from(breakdown: &Breakdown) -> Self {
        let buckets = breakdown
            .buckets()
            .iter()
            .map(|bucket| BucketObject {
                level: bucket.role.level,
                direct: bucket.role.direct,
                guest_mode: bucket.role.guest_mode,
                smm: bucket.role.smm,
                pages: bucket.pages,
                allocated: bucket.allocated,
                zapped: bucket.zapped,
                bytes: bucket.bytes,
            })
            .collect();
        let (sums, peak) = (&breakdown.totals.sums, breakdown.totals.peak);
        Self {
            buckets,
            totals: BreakdownTotals {
                pages: sums.pages,
                peak,
                allocated: sums.allocated,
                zapped: sums.zapped,
                bytes: sums.bytes,
                page_table_bytes: sums.page_table_bytes,
            },
        }
    }
}

/// Seconds since the epoch, to the millisecond.
pub fn seconds_since_epoch(time: SystemTime) -> Option<f64> {
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    Some(since.as_millis() as f64 / 1000.0)
}

/// A rate JSON can hold: it has no infinities nor NaN.
fn finite(rate: Option<f64>) -> Option<f64> {
    rate.filter(|rate| rate.is_finite())
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Map, Value};

    use super::*;
    use crate::sample::fixtures;

    /// Checks `document` against the documented schema and returns its VMs.
    fn check_schema(document: &Value) -> &Vec<Value> {
        let top = object(document, &["schema", "time", "vms", "totals"]);
        assert_eq!(top["schema"], SCHEMA);
        assert!(top["time"].is_number());
        let vms = top["vms"].as_array().expect("vms is an array");
        let stats: Vec<&str> = FIELDS.iter().map(|field| field.stat).collect();
        for vm in vms {
            let keys: Vec<&str> = IDENTITY_KEYS
                .into_iter()
                .chain(["stats", "breakdown"])
                .collect();
            let vm = object(vm, &keys);
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
        for total in object(&top["totals"], &stats).values() {
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

    /// The keys of [`Identity`], which lead every VM object.
    pub(crate) const IDENTITY_KEYS: [&str; 5] = ["pid", "fd", "duplicate", "comm", "guest"];

    /// `value` as an object with exactly `keys`.
    pub(crate) fn object<'a>(value: &'a Value, keys: &[&str]) -> &'a Map<String, Value> {
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
        assert_eq!(document["totals"]["mmu_shadow_pages"]["value"], 1003);
        assert_eq!(document["totals"]["mmu_shadow_zapped"]["per_second"], 31.0);

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
        assert_eq!(document["totals"]["mmu_shadow_pages"]["value"], 0);
        assert_eq!(
            document["totals"]["mmu_shadow_pages"]["per_second"],
            Value::Null
        );
    }

    #[test]
    fn names_are_given_back_as_they_were() {
        let mut sample = fixtures::two_vms();
        let awkward = "a\"b\\c\n\t\u{1}\u{7f}é";
        sample.vms[0].comm = Some(awkward.to_owned());
        let text = render(&sample);
        assert_eq!(text.lines().count(), 1);
        let document: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(document["vms"][0]["comm"], awkward);
    }

    #[test]
    fn rates_json_cannot_hold_are_null() {
        let mut sample = fixtures::two_vms();
        sample.vms[0].rates[0] = Some(f64::NAN);
        sample.vms[1].rates[0] = Some(f64::INFINITY);
        let document: Value = serde_json::from_str(&render(&sample)).expect("valid JSON");
        check_schema(&document);
        for vm in 0..2 {
            assert_eq!(
                document["vms"][vm]["stats"]["mmu_shadow_pages"]["per_second"],
                Value::Null
            );
        }
    }

    /// Tools that match a VM's stats as text, with no JSON parser at hand, rely on the order.
    #[test]
    fn stats_come_in_the_order_of_the_fields() {
        let text = render(&fixtures::two_vms());
        let positions: Vec<usize> = FIELDS
            .iter()
            .map(|field| {
                text.find(&format!("\"{}\":{{\"value\"", field.stat))
                    .expect("the stat")
            })
            .collect();
        assert!(positions.is_sorted(), "{positions:?}");
        assert!(text.starts_with("{\"schema\":2,\"time\":1700000000.25,\"vms\":[{\"pid\":4242,"));
    }
}
