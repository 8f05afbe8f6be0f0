// SPDX-License-Identifier: GPL-2.0

//! Reads where a VM's shadow pages are, by role, as `kvm_shadow_stats.ko` keeps it in debugfs
//! while it is loaded (Documentation/shadow-page-breakdown.rst):
//!
//! ```text
//! /sys/kernel/debug/kvm_shadow_stats/{pages,totals}                      all VMs
//! /sys/kernel/debug/kvm_shadow_stats/<pid>-<fd>/{pages,totals,peak}      one VM
//! /sys/kernel/debug/kvm_shadow_stats/<pid>-<fd>.<n>/{pages,totals,peak}  one VM, <pid>-<fd> taken
//! ```
//!
//! Only a VM has a peak: [`Totals`] is what the `totals` of all VMs hold, [`VmTotals`] a VM's.
//!
//! The files are not ABI, so parsing is strict about what the documentation promises and
//! tolerant only where it says readers must be: `pages` is found by its header line, whose
//! known columns may come in any order and be joined by new ones, and `totals` may gain keys.
//! Anything else that is off, a missing column, a row one field short, a sign, a level of 7, a
//! bucket listed twice or out of order, is a [`ParseError`] that names the line and the fault.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::debugfs::VmId;

/// Where the module's directory is when debugfs is mounted at its usual place.
pub const SHADOW_STATS_DEBUGFS_DIR: &str = "/sys/kernel/debug/kvm_shadow_stats";

/// The columns of `pages` this reader knows, in the order the module writes them.
pub const PAGES_COLUMNS: [&str; 8] = [
    "level",
    "direct",
    "guest_mode",
    "smm",
    "pages",
    "allocated",
    "zapped",
    "bytes",
];

// Indices into `PAGES_COLUMNS`.
const LEVEL: usize = 0;
const DIRECT: usize = 1;
const GUEST_MODE: usize = 2;
const SMM: usize = 3;
const PAGES: usize = 4;
const ALLOCATED: usize = 5;
const ZAPPED: usize = 6;
const BYTES: usize = 7;

/// The keys of the `totals` file of all VMs this reader knows, in the order the module writes
/// them.
pub const TOTALS_KEYS: [&str; 5] = ["pages", "allocated", "zapped", "bytes", "page_table_bytes"];

/// The keys of a VM's `totals` file this reader knows, in the order the module writes them:
/// those of [`TOTALS_KEYS`] and the VM's peak.
pub const VM_TOTALS_KEYS: [&str; 6] = [
    "pages",
    "peak",
    "allocated",
    "zapped",
    "bytes",
    "page_table_bytes",
];

/// Shadow page table levels: 1 maps 4 KiB pages, 5 is the root of 5-level paging.
pub const LEVELS: std::ops::RangeInclusive<u8> = 1..=5;

const PAGE_SIZE: u64 = 4096;

/// The role bits that pick a bucket: which shadow pages a line of `pages` counts.
///
/// Ordered as the lines of `pages` are sorted: by `smm`, `guest_mode`, `direct`, then `level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Role {
    /// Page table level, in [`LEVELS`].
    pub level: u8,
    /// No guest page table backs the page: KVM built it itself.
    pub direct: bool,
    /// The page belongs to an L2 guest.
    pub guest_mode: bool,
    /// The page belongs to the System Management Mode address space.
    pub smm: bool,
}

impl Role {
    /// A page that shadows a guest page table of `level`, of an L1 guest outside SMM: what a
    /// guest on shadow paging needs for each of its own page tables.
    pub const fn indirect(level: u8) -> Self {
        Self {
            level,
            direct: false,
            guest_mode: false,
            smm: false,
        }
    }

    /// A page of `level` that KVM built itself, of an L1 guest outside SMM.
    pub const fn direct(level: u8) -> Self {
        Self {
            level,
            direct: true,
            guest_mode: false,
            smm: false,
        }
    }

    /// Host memory KVM allocates for each page of this role, leaving out its slab header: the
    /// page table, plus a page of shadowed translations for an indirect page of level 1 to 3.
    pub fn bytes_per_page(&self) -> u64 {
        if !self.direct && self.level <= 3 {
            2 * PAGE_SIZE
        } else {
            PAGE_SIZE
        }
    }

    fn sort_key(&self) -> (bool, bool, bool, u8) {
        (self.smm, self.guest_mode, self.direct, self.level)
    }
}

impl Ord for Role {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl PartialOrd for Role {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `level 2 indirect L1 non-SMM`, `level 1 direct L2 SMM`: what the four columns say, in words.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level {} {} {} {}",
            self.level,
            if self.direct { "direct" } else { "indirect" },
            if self.guest_mode { "L2" } else { "L1" },
            if self.smm { "SMM" } else { "non-SMM" },
        )
    }
}

/// One line of `pages`: the counts of one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub role: Role,
    /// Pages of the role the VMs hold now.
    pub pages: u64,
    /// Pages allocated since the VM was attached.
    pub allocated: u64,
    /// Pages zapped since the VM was attached.
    pub zapped: u64,
    /// Host memory the pages hold, see [`Role::bytes_per_page`].
    pub bytes: u64,
}

/// A `pages` file: the buckets that hold pages or saw events, in the file's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pages {
    buckets: Vec<Bucket>,
    /// Columns of the header this reader does not know, which it skips.
    unknown_columns: Vec<String>,
}

impl Pages {
    /// Parses the text of a `pages` file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line));
        let Some((_, header)) = lines.next() else {
            return Err(ParseError::new(1, "", Problem::Empty));
        };
        let columns = PagesHeader::parse(header)?;
        let mut buckets: Vec<Bucket> = Vec::new();
        for (number, line) in lines {
            let error = |problem| ParseError::new(number, line, problem);
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() != columns.count {
                return Err(error(Problem::FieldCount {
                    expected: columns.count,
                    found: fields.len(),
                }));
            }
            let field = |column: usize| {
                let name = PAGES_COLUMNS[column];
                parse_decimal(fields[columns.index[column]]).map_err(|text| {
                    error(Problem::NotANumber {
                        what: name.to_owned(),
                        text,
                    })
                })
            };
            let flag = |column: usize| match field(column)? {
                0 => Ok(false),
                1 => Ok(true),
                value => Err(error(Problem::NotAFlag {
                    column: PAGES_COLUMNS[column],
                    value,
                })),
            };
            let level = field(LEVEL)?;
            let level = u8::try_from(level)
                .ok()
                .filter(|level| LEVELS.contains(level))
                .ok_or_else(|| error(Problem::BadLevel { level }))?;
            let bucket = Bucket {
                role: Role {
                    level,
                    direct: flag(DIRECT)?,
                    guest_mode: flag(GUEST_MODE)?,
                    smm: flag(SMM)?,
                },
                pages: field(PAGES)?,
                allocated: field(ALLOCATED)?,
                zapped: field(ZAPPED)?,
                bytes: field(BYTES)?,
            };
            if let Some(previous) = buckets.last() {
                if previous.role >= bucket.role {
                    return Err(error(Problem::OutOfOrder {
                        previous: previous.role,
                        role: bucket.role,
                    }));
                }
            }
            buckets.push(bucket);
        }
        Ok(Self {
            buckets,
            unknown_columns: columns.unknown,
        })
    }

    /// The buckets, sorted by role as the file sorts them.
    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// The header's columns that this reader skipped.
    pub fn unknown_columns(&self) -> &[String] {
        &self.unknown_columns
    }

    /// The bucket of `role`, if the file lists it.
    pub fn bucket(&self, role: Role) -> Option<&Bucket> {
        self.buckets.iter().find(|bucket| bucket.role == role)
    }

    /// Pages held of `role`: 0 for a role the file does not list.
    pub fn pages_of(&self, role: Role) -> u64 {
        self.bucket(role).map_or(0, |bucket| bucket.pages)
    }

    /// The `pages` column by role, leaving out the buckets that hold no page: what two VMs
    /// with the same shadow pages have in common, whatever events each saw.
    pub fn held(&self) -> BTreeMap<Role, u64> {
        self.buckets
            .iter()
            .filter(|bucket| bucket.pages != 0)
            .map(|bucket| (bucket.role, bucket.pages))
            .collect()
    }

    /// Pages held, all roles together: a VM's `mmu_shadow_pages`.
    pub fn pages(&self) -> u64 {
        self.sum(|bucket| bucket.pages)
    }

    pub fn allocated(&self) -> u64 {
        self.sum(|bucket| bucket.allocated)
    }

    pub fn zapped(&self) -> u64 {
        self.sum(|bucket| bucket.zapped)
    }

    pub fn bytes(&self) -> u64 {
        self.sum(|bucket| bucket.bytes)
    }

    fn sum(&self, column: impl Fn(&Bucket) -> u64) -> u64 {
        self.buckets.iter().map(column).fold(0, u64::saturating_add)
    }

    /// The buckets of several files added up role by role, as the module's top-level file adds
    /// up those of the VMs.
    pub fn sum_of<'a>(files: impl IntoIterator<Item = &'a Pages>) -> Pages {
        let mut sums: BTreeMap<Role, Bucket> = BTreeMap::new();
        for bucket in files.into_iter().flat_map(|file| &file.buckets) {
            let sum = sums.entry(bucket.role).or_insert(Bucket {
                role: bucket.role,
                pages: 0,
                allocated: 0,
                zapped: 0,
                bytes: 0,
            });
            sum.pages = sum.pages.saturating_add(bucket.pages);
            sum.allocated = sum.allocated.saturating_add(bucket.allocated);
            sum.zapped = sum.zapped.saturating_add(bucket.zapped);
            sum.bytes = sum.bytes.saturating_add(bucket.bytes);
        }
        Pages {
            buckets: sums.into_values().collect(),
            unknown_columns: Vec::new(),
        }
    }
}

impl FromStr for Pages {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::parse(text)
    }
}

/// Where the known columns are in a `pages` header.
struct PagesHeader {
    /// `index[i]` is the field of [`PAGES_COLUMNS`]`[i]`.
    index: [usize; PAGES_COLUMNS.len()],
    /// Fields per line.
    count: usize,
    unknown: Vec<String>,
}

impl PagesHeader {
    fn parse(line: &str) -> Result<Self, ParseError> {
        let error = |problem| ParseError::new(1, line, problem);
        let names: Vec<&str> = line.split_whitespace().collect();
        let mut index = [usize::MAX; PAGES_COLUMNS.len()];
        let mut unknown = Vec::new();
        for (field, &name) in names.iter().enumerate() {
            if names[..field].contains(&name) {
                return Err(error(Problem::DuplicateName(name.to_owned())));
            }
            match PAGES_COLUMNS.iter().position(|&known| known == name) {
                Some(column) => index[column] = field,
                None => unknown.push(name.to_owned()),
            }
        }
        if let Some(column) = index.iter().position(|&field| field == usize::MAX) {
            return Err(error(Problem::MissingName(PAGES_COLUMNS[column])));
        }
        Ok(Self {
            index,
            count: names.len(),
            unknown,
        })
    }
}

/// The sums of `pages` that a `totals` file holds: all of the `totals` file of all VMs, and all
/// of a VM's but its peak.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub pages: u64,
    pub allocated: u64,
    pub zapped: u64,
    pub bytes: u64,
    /// The part of `bytes` that is page tables: `pages` times 4096.
    pub page_table_bytes: u64,
    /// Keys this reader does not know, with their values, in the file's order.
    pub unknown: Vec<(String, u64)>,
}

impl Totals {
    /// Parses the text of the `totals` file of all VMs. A `peak` in it is an error: the peaks
    /// of VMs, reached at different times, add up to no peak of all of them.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let file = TotalsFile::parse(text)?;
        file.refuse("peak")?;
        let [pages, allocated, zapped, bytes, page_table_bytes] = file.values(TOTALS_KEYS)?;
        Ok(Self {
            pages,
            allocated,
            zapped,
            bytes,
            page_table_bytes,
            unknown: file.unknown(&TOTALS_KEYS),
        })
    }
}

impl FromStr for Totals {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::parse(text)
    }
}

/// A VM's `totals` file: the sums of its `pages` and its peak.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmTotals {
    pub sums: Totals,
    /// The most pages the VM held since it was attached or its peak was last reset: what its
    /// `peak` file says.
    pub peak: u64,
}

impl VmTotals {
    /// Parses the text of a VM's `totals` file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let file = TotalsFile::parse(text)?;
        let [pages, peak, allocated, zapped, bytes, page_table_bytes] =
            file.values(VM_TOTALS_KEYS)?;
        Ok(Self {
            sums: Totals {
                pages,
                allocated,
                zapped,
                bytes,
                page_table_bytes,
                unknown: file.unknown(&VM_TOTALS_KEYS),
            },
            peak,
        })
    }
}

impl FromStr for VmTotals {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        Self::parse(text)
    }
}

/// The `key value` lines of a `totals` file, each key once, before the keys the file must
/// have are looked for.
struct TotalsFile<'a> {
    entries: Vec<TotalsEntry<'a>>,
    lines: usize,
}

struct TotalsEntry<'a> {
    /// 1-based.
    number: usize,
    line: &'a str,
    key: &'a str,
    value: u64,
}

impl<'a> TotalsFile<'a> {
    fn parse(text: &'a str) -> Result<Self, ParseError> {
        let mut entries: Vec<TotalsEntry<'a>> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let error = |problem| ParseError::new(index + 1, line, problem);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [key, value] = fields[..] else {
                return Err(error(Problem::FieldCount {
                    expected: 2,
                    found: fields.len(),
                }));
            };
            if entries.iter().any(|entry| entry.key == key) {
                return Err(error(Problem::DuplicateName(key.to_owned())));
            }
            let value = parse_decimal(value).map_err(|text| {
                error(Problem::NotANumber {
                    what: key.to_owned(),
                    text,
                })
            })?;
            entries.push(TotalsEntry {
                number: index + 1,
                line,
                key,
                value,
            });
        }
        Ok(Self {
            entries,
            lines: text.lines().count(),
        })
    }

    /// The values of `keys`, in their order; the first key missing is the error.
    fn values<const N: usize>(&self, keys: [&'static str; N]) -> Result<[u64; N], ParseError> {
        let mut values = [0; N];
        for (value, key) in values.iter_mut().zip(keys) {
            *value = self
                .entries
                .iter()
                .find(|entry| entry.key == key)
                .ok_or_else(|| ParseError::new(self.lines + 1, "", Problem::MissingName(key)))?
                .value;
        }
        Ok(values)
    }

    /// Fails on the line of `key`, if the file has it.
    fn refuse(&self, key: &'static str) -> Result<(), ParseError> {
        match self.entries.iter().find(|entry| entry.key == key) {
            Some(entry) => Err(ParseError::new(
                entry.number,
                entry.line,
                Problem::UnexpectedName(key),
            )),
            None => Ok(()),
        }
    }

    /// The keys other than `known`, with their values, in the file's order.
    fn unknown(&self, known: &[&str]) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .filter(|entry| !known.contains(&entry.key))
            .map(|entry| (entry.key.to_owned(), entry.value))
            .collect()
    }
}

/// Parses the text of a `peak` file: one decimal number.
pub fn parse_peak(text: &str) -> Result<u64, ParseError> {
    let mut lines = text.lines();
    let line = lines.next().unwrap_or("");
    let error = |number, line, problem| ParseError::new(number, line, problem);
    if let Some(extra) = lines.next() {
        return Err(error(2, extra, Problem::TrailingLine));
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [value] = fields[..] else {
        return Err(error(
            1,
            line,
            Problem::FieldCount {
                expected: 1,
                found: fields.len(),
            },
        ));
    };
    parse_decimal(value).map_err(|text| {
        error(
            1,
            line,
            Problem::NotANumber {
                what: "peak".to_owned(),
                text,
            },
        )
    })
}

/// A decimal `u64` as the module prints it: digits only, so no sign, no space, no `0x`.
fn parse_decimal(text: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(text.to_owned());
    }
    text.parse().map_err(|_| text.to_owned())
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file has no header line.
    Empty,
    /// A column of the header, or a key of `totals`, is not there.
    MissingName(&'static str),
    /// A column of the header, or a key of `totals`, is there twice.
    DuplicateName(String),
    /// A key the file must not have: `peak` in the `totals` of all VMs.
    UnexpectedName(&'static str),
    /// The line does not have as many fields as it must.
    FieldCount { expected: usize, found: usize },
    /// A field that must be a decimal number is not.
    NotANumber { what: String, text: String },
    /// A level outside [`LEVELS`].
    BadLevel { level: u64 },
    /// A flag column that is neither 0 nor 1.
    NotAFlag { column: &'static str, value: u64 },
    /// A bucket that does not come after the previous one in the documented order, which
    /// includes a bucket listed twice.
    OutOfOrder { previous: Role, role: Role },
    /// A line after the single line of a `peak` file.
    TrailingLine,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the file is empty, not even a header"),
            Self::MissingName(name) => write!(f, "no {name}"),
            Self::DuplicateName(name) => write!(f, "{name} is there twice"),
            Self::UnexpectedName(name) => write!(f, "{name} has no place in this file"),
            Self::FieldCount { expected, found } => {
                write!(f, "{found} fields, {expected} expected")
            }
            Self::NotANumber { what, text } => {
                write!(f, "{what} is {text:?}, not a decimal number")
            }
            Self::BadLevel { level } => write!(
                f,
                "level {level} is outside {}..={}",
                LEVELS.start(),
                LEVELS.end()
            ),
            Self::NotAFlag { column, value } => write!(f, "{column} is {value}, not 0 or 1"),
            Self::OutOfOrder { previous, role } => {
                if previous == role {
                    write!(f, "{role} is listed twice")
                } else {
                    write!(
                        f,
                        "{role} comes after {previous}: lines must be sorted by smm, \
                         guest_mode, direct, then level"
                    )
                }
            }
            Self::TrailingLine => write!(f, "a line after the value"),
        }
    }
}

/// A file that does not say what the documentation says it does, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based; one past the last line for a name missing from the whole file.
    pub line: usize,
    pub text: String,
    pub problem: Problem,
}

impl ParseError {
    fn new(line: usize, text: &str, problem: Problem) -> Self {
        Self {
            line,
            text: text.to_owned(),
            problem,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            // Not on any one line.
            Problem::Empty | Problem::MissingName(_) if self.text.is_empty() => self.problem.fmt(f),
            _ => write!(f, "line {} {:?}: {}", self.line, self.text, self.problem),
        }
    }
}

impl std::error::Error for ParseError {}

/// What can go wrong reading or writing a breakdown file.
#[derive(Debug)]
pub enum BreakdownError {
    Io { path: PathBuf, source: io::Error },
    Parse { path: PathBuf, source: ParseError },
}

impl BreakdownError {
    /// The error of the system call, if that is what failed: `EINVAL` for a rejected write.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            Self::Parse { .. } => None,
        }
    }
}

impl fmt::Display for BreakdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Parse { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for BreakdownError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Parse { source, .. } => Some(source),
        }
    }
}

/// Which files: those that sum over all VMs, or one VM's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    AllVms,
    Vm(VmId),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AllVms => f.write_str("all VMs"),
            Self::Vm(vm) => write!(f, "VM {vm}"),
        }
    }
}

/// The module's debugfs directory.
#[derive(Debug, Clone)]
pub struct ShadowStatsDebugfs {
    root: PathBuf,
}

impl Default for ShadowStatsDebugfs {
    fn default() -> Self {
        Self::at(SHADOW_STATS_DEBUGFS_DIR)
    }
}

impl ShadowStatsDebugfs {
    /// The directory at `root`, e.g. a copy made for a test.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the directory is there: only while the module is loaded.
    pub fn is_present(&self) -> bool {
        self.root.is_dir()
    }

    /// The directory of `scope`'s files.
    pub fn dir(&self, scope: Scope) -> PathBuf {
        match scope {
            Scope::AllVms => self.root.clone(),
            Scope::Vm(vm) => self.root.join(vm.to_string()),
        }
    }

    /// The VMs that have a directory, in the order of their ids: those KVM has a directory for
    /// too and, named `<pid>-<fd>.<n>`, those it has none for.
    pub fn vms(&self) -> Result<Vec<VmId>, BreakdownError> {
        let io_error = |source| BreakdownError::Io {
            path: self.root.clone(),
            source,
        };
        let mut vms = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let Some(vm) = entry.file_name().to_str().and_then(VmId::parse) else {
                continue;
            };
            if entry.path().is_dir() {
                vms.push(vm);
            }
        }
        vms.sort();
        Ok(vms)
    }

    pub fn pages(&self, scope: Scope) -> Result<Pages, BreakdownError> {
        self.read(scope, "pages", Pages::parse)
    }

    /// The `totals` file of all VMs.
    pub fn all_vms_totals(&self) -> Result<Totals, BreakdownError> {
        self.read(Scope::AllVms, "totals", Totals::parse)
    }

    pub fn vm_totals(&self, vm: VmId) -> Result<VmTotals, BreakdownError> {
        self.read(Scope::Vm(vm), "totals", VmTotals::parse)
    }

    pub fn peak(&self, vm: VmId) -> Result<u64, BreakdownError> {
        self.read(Scope::Vm(vm), "peak", parse_peak)
    }

    /// Sets the peak of `vm` to the pages it holds now.
    pub fn reset_peak(&self, vm: VmId) -> Result<(), BreakdownError> {
        self.write_peak(vm, b"0")
    }

    /// Writes `bytes` to the `peak` file of `vm` in one write, as `echo` would: anything but a
    /// reset fails with `EINVAL`.
    pub fn write_peak(&self, vm: VmId, bytes: &[u8]) -> Result<(), BreakdownError> {
        let path = self.dir(Scope::Vm(vm)).join("peak");
        let io_error = |source| BreakdownError::Io {
            path: path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error)?;
        let written = file.write(bytes).map_err(io_error)?;
        if written != bytes.len() {
            return Err(io_error(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("{written} of {} bytes written", bytes.len()),
            )));
        }
        Ok(())
    }

    fn read<T>(
        &self,
        scope: Scope,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, BreakdownError> {
        let path = self.dir(scope).join(name);
        let text = fs::read_to_string(&path).map_err(|source| BreakdownError::Io {
            path: path.clone(),
            source,
        })?;
        parse(&text).map_err(|source| BreakdownError::Parse { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Documentation/shadow-page-breakdown.rst as the module writes it: the
    /// example there lists the direct bucket before the indirect ones of higher levels, against
    /// the order its text gives and the module keeps, and says 8192 bytes for the level-4 page,
    /// against its section Bytes; its totals follow.
    const SAMPLE_PAGES: &str = "\
level direct guest_mode smm pages allocated zapped bytes
1 0 0 0 160 160 0 1310720
2 0 0 0 1 1 0 8192
4 0 0 0 1 1 0 4096
1 1 0 0 512 512 0 2097152
";

    const SAMPLE_TOTALS: &str = "\
pages 674
peak 674
allocated 674
zapped 0
bytes 3420160
page_table_bytes 2760704
";

    /// The same VM's totals as the file of all VMs gives them while it is the only VM.
    const SAMPLE_ALL_VMS_TOTALS: &str = "\
pages 674
allocated 674
zapped 0
bytes 3420160
page_table_bytes 2760704
";

    fn bucket(role: Role, pages: u64, allocated: u64, zapped: u64) -> Bucket {
        Bucket {
            role,
            pages,
            allocated,
            zapped,
            bytes: pages * role.bytes_per_page(),
        }
    }

    fn problem(result: Result<impl fmt::Debug, ParseError>) -> (usize, Problem) {
        let error = result.expect_err("malformed input is refused");
        (error.line, error.problem)
    }

    #[test]
    fn sample_pages_parse() {
        let pages = Pages::parse(SAMPLE_PAGES).expect("the sample parses");
        assert_eq!(
            pages.buckets(),
            [
                bucket(Role::indirect(1), 160, 160, 0),
                bucket(Role::indirect(2), 1, 1, 0),
                bucket(Role::indirect(4), 1, 1, 0),
                bucket(Role::direct(1), 512, 512, 0),
            ]
        );
        assert_eq!(pages.pages(), 674);
        assert_eq!(pages.allocated(), 674);
        assert_eq!(pages.zapped(), 0);
        assert_eq!(pages.pages_of(Role::direct(1)), 512);
        assert_eq!(pages.pages_of(Role::direct(2)), 0);
        assert!(pages.unknown_columns().is_empty());
    }

    #[test]
    fn sample_totals_parse() {
        let sums = Totals {
            pages: 674,
            allocated: 674,
            zapped: 0,
            bytes: 3420160,
            page_table_bytes: 2760704,
            unknown: Vec::new(),
        };
        let totals = VmTotals::parse(SAMPLE_TOTALS).expect("the sample parses");
        assert_eq!(
            totals,
            VmTotals {
                sums: sums.clone(),
                peak: 674
            }
        );
        assert_eq!(
            Totals::parse(SAMPLE_ALL_VMS_TOTALS).expect("the sample parses"),
            sums
        );
        let pages = Pages::parse(SAMPLE_PAGES).expect("the sample parses");
        assert_eq!(sums.bytes, pages.bytes());
        assert_eq!(sums.page_table_bytes, sums.pages * PAGE_SIZE);
    }

    #[test]
    fn a_vm_with_no_shadow_pages_has_only_the_header() {
        let pages = Pages::parse("level direct guest_mode smm pages allocated zapped bytes\n")
            .expect("a header alone parses");
        assert!(pages.buckets().is_empty());
        assert_eq!(pages.pages(), 0);
        assert!(pages.held().is_empty());
    }

    #[test]
    fn new_columns_and_keys_are_tolerated() {
        let pages = Pages::parse(
            "pages level extra direct guest_mode smm allocated zapped bytes\n\
             7 1 x 0 0 1 9 2 57344\n",
        )
        .expect("moved and new columns parse");
        let smm = Role {
            smm: true,
            ..Role::indirect(1)
        };
        assert_eq!(pages.buckets(), [bucket(smm, 7, 9, 2)]);
        assert_eq!(pages.unknown_columns(), ["extra"]);

        let totals =
            VmTotals::parse(&format!("slab_bytes 123\n{SAMPLE_TOTALS}")).expect("a new key parses");
        assert_eq!(totals.sums.unknown, [("slab_bytes".to_owned(), 123)]);
        assert_eq!(totals.peak, 674);
        let totals = Totals::parse(&format!("{SAMPLE_ALL_VMS_TOTALS}slab_bytes 123\n"))
            .expect("a new key parses");
        assert_eq!(totals.unknown, [("slab_bytes".to_owned(), 123)]);
    }

    #[test]
    fn malformed_pages_are_refused_with_the_line() {
        let header = "level direct guest_mode smm pages allocated zapped bytes";
        let cases: &[(&str, usize, Problem)] = &[
            ("", 1, Problem::Empty),
            (
                "level direct guest_mode pages allocated zapped bytes\n",
                1,
                Problem::MissingName("smm"),
            ),
            (
                "level direct guest_mode smm pages pages allocated zapped bytes\n",
                1,
                Problem::DuplicateName("pages".to_owned()),
            ),
            (
                "1 0 0 0 1 1 0",
                2,
                Problem::FieldCount {
                    expected: 8,
                    found: 7,
                },
            ),
            (
                "1 0 0 0 -1 1 0 8192",
                2,
                Problem::NotANumber {
                    what: "pages".to_owned(),
                    text: "-1".to_owned(),
                },
            ),
            (
                "1 0 0 0 1 +1 0 8192",
                2,
                Problem::NotANumber {
                    what: "allocated".to_owned(),
                    text: "+1".to_owned(),
                },
            ),
            (
                "1 0 0 0 1 1 0 99999999999999999999",
                2,
                Problem::NotANumber {
                    what: "bytes".to_owned(),
                    text: "99999999999999999999".to_owned(),
                },
            ),
            ("0 0 0 0 1 1 0 8192", 2, Problem::BadLevel { level: 0 }),
            ("6 0 0 0 1 1 0 8192", 2, Problem::BadLevel { level: 6 }),
            (
                "1 2 0 0 1 1 0 8192",
                2,
                Problem::NotAFlag {
                    column: "direct",
                    value: 2,
                },
            ),
            (
                "1 0 0 0 1 1 0 8192\n1 0 0 0 1 1 0 8192",
                3,
                Problem::OutOfOrder {
                    previous: Role::indirect(1),
                    role: Role::indirect(1),
                },
            ),
            (
                "2 0 0 0 1 1 0 8192\n1 0 0 0 1 1 0 8192",
                3,
                Problem::OutOfOrder {
                    previous: Role::indirect(2),
                    role: Role::indirect(1),
                },
            ),
            (
                // Sorted by level alone, which puts a direct page before an indirect one.
                "1 1 0 0 1 1 0 4096\n2 0 0 0 1 1 0 8192",
                3,
                Problem::OutOfOrder {
                    previous: Role::direct(1),
                    role: Role::indirect(2),
                },
            ),
        ];
        for (text, line, expected) in cases {
            // The cases after the first three are rows under a good header.
            let text = if *line == 1 {
                text.to_string()
            } else {
                format!("{header}\n{text}\n")
            };
            assert_eq!(
                problem(Pages::parse(&text)),
                (*line, expected.clone()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_totals_are_refused_with_the_line() {
        let without_peak = SAMPLE_TOTALS.replace("peak 674\n", "");
        assert_eq!(without_peak, SAMPLE_ALL_VMS_TOTALS);
        assert_eq!(
            problem(VmTotals::parse(&without_peak)),
            (6, Problem::MissingName("peak"))
        );
        let without_zapped = SAMPLE_ALL_VMS_TOTALS.replace("zapped 0\n", "");
        assert_eq!(
            problem(Totals::parse(&without_zapped)),
            (5, Problem::MissingName("zapped"))
        );
        let vm: fn(&str) -> Result<(), ParseError> = |text| VmTotals::parse(text).map(drop);
        let all_vms: fn(&str) -> Result<(), ParseError> = |text| Totals::parse(text).map(drop);
        for (parse, sample) in [(vm, SAMPLE_TOTALS), (all_vms, SAMPLE_ALL_VMS_TOTALS)] {
            let line_of = |key: &str| {
                1 + sample
                    .lines()
                    .position(|line| line.split(' ').next() == Some(key))
                    .expect("the key is in the sample")
            };
            let twice = format!("{sample}pages 1\n");
            assert_eq!(
                problem(parse(&twice)),
                (
                    sample.lines().count() + 1,
                    Problem::DuplicateName("pages".to_owned())
                )
            );
            let three_fields = sample.replace("zapped 0", "zapped 0 0");
            assert_eq!(
                problem(parse(&three_fields)),
                (
                    line_of("zapped"),
                    Problem::FieldCount {
                        expected: 2,
                        found: 3
                    }
                )
            );
            let not_a_number = sample.replace("bytes 3420160", "bytes 4M");
            assert_eq!(
                problem(parse(&not_a_number)),
                (
                    line_of("bytes"),
                    Problem::NotANumber {
                        what: "bytes".to_owned(),
                        text: "4M".to_owned()
                    }
                )
            );
        }
    }

    #[test]
    fn the_totals_of_all_vms_have_no_peak() {
        assert_eq!(
            problem(Totals::parse(SAMPLE_TOTALS)),
            (2, Problem::UnexpectedName("peak"))
        );
        // Wherever it stands, and before any key that is missing.
        assert_eq!(
            problem(Totals::parse("pages 1\nallocated 1\npeak 1\n")),
            (3, Problem::UnexpectedName("peak"))
        );
    }

    #[test]
    fn peak_is_one_number() {
        assert_eq!(parse_peak("674\n"), Ok(674));
        assert_eq!(parse_peak("0"), Ok(0));
        assert_eq!(
            problem(parse_peak("")),
            (
                1,
                Problem::FieldCount {
                    expected: 1,
                    found: 0
                }
            )
        );
        assert_eq!(problem(parse_peak("1\n2\n")), (2, Problem::TrailingLine));
        assert_eq!(
            problem(parse_peak("0x10\n")),
            (
                1,
                Problem::NotANumber {
                    what: "peak".to_owned(),
                    text: "0x10".to_owned()
                }
            )
        );
    }

    #[test]
    fn errors_explain_themselves() {
        let error = Pages::parse(
            "level direct guest_mode smm pages allocated zapped bytes\n1 0 0 0 1 1 0 8192\n\
             1 0 0 0 1 1 0 8192\n",
        )
        .expect_err("a bucket twice is refused");
        assert_eq!(
            error.to_string(),
            "line 3 \"1 0 0 0 1 1 0 8192\": level 1 indirect L1 non-SMM is listed twice"
        );
        let error = VmTotals::parse("pages 1\n").expect_err("keys are missing");
        assert_eq!(error.to_string(), "no peak");
        let error = Totals::parse("pages 1\n").expect_err("keys are missing");
        assert_eq!(error.to_string(), "no allocated");
        let error = Totals::parse("pages 1\npeak 1\n").expect_err("a peak");
        assert_eq!(
            error.to_string(),
            "line 2 \"peak 1\": peak has no place in this file"
        );
        assert_eq!(
            Role {
                level: 3,
                direct: true,
                guest_mode: true,
                smm: true
            }
            .to_string(),
            "level 3 direct L2 SMM"
        );
    }

    #[test]
    fn roles_sort_as_the_file_does() {
        let mut roles = vec![
            Role {
                smm: true,
                ..Role::indirect(1)
            },
            Role {
                guest_mode: true,
                ..Role::indirect(1)
            },
            Role::direct(1),
            Role::indirect(4),
            Role::indirect(1),
        ];
        roles.sort();
        assert_eq!(
            roles,
            [
                Role::indirect(1),
                Role::indirect(4),
                Role::direct(1),
                Role {
                    guest_mode: true,
                    ..Role::indirect(1)
                },
                Role {
                    smm: true,
                    ..Role::indirect(1)
                },
            ]
        );
    }

    #[test]
    fn bytes_per_page_follow_what_kvm_allocates() {
        assert_eq!(Role::indirect(1).bytes_per_page(), 8192);
        assert_eq!(Role::indirect(3).bytes_per_page(), 8192);
        assert_eq!(Role::indirect(4).bytes_per_page(), 4096);
        assert_eq!(Role::direct(1).bytes_per_page(), 4096);
    }

    #[test]
    fn files_of_vms_add_up() {
        let first = Pages::parse(SAMPLE_PAGES).expect("parses");
        let second = Pages::parse(
            "level direct guest_mode smm pages allocated zapped bytes\n\
             1 0 0 0 2 5 3 16384\n3 0 0 0 1 1 0 8192\n",
        )
        .expect("parses");
        let sum = Pages::sum_of([&first, &second]);
        assert_eq!(sum.pages(), first.pages() + second.pages());
        assert_eq!(
            sum.bucket(Role::indirect(1)),
            Some(&bucket(Role::indirect(1), 162, 165, 3))
        );
        assert_eq!(sum.pages_of(Role::indirect(3)), 1);
        let roles: Vec<Role> = sum.buckets().iter().map(|bucket| bucket.role).collect();
        let mut sorted = roles.clone();
        sorted.sort();
        assert_eq!(roles, sorted);
        assert_eq!(
            sum.held(),
            BTreeMap::from([
                (Role::indirect(1), 162),
                (Role::indirect(2), 1),
                (Role::indirect(3), 1),
                (Role::indirect(4), 1),
                (Role::direct(1), 512),
            ])
        );
    }

    /// A fake module directory with the files of all VMs and of two VMs that KVM gave the same
    /// name.
    fn fake_debugfs(test: &str) -> ShadowStatsDebugfs {
        let root =
            std::env::temp_dir().join(format!("kvm-breakdown-test-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("temp dir creatable");
        fs::write(root.join("pages"), SAMPLE_PAGES).expect("writable");
        fs::write(root.join("totals"), SAMPLE_ALL_VMS_TOTALS).expect("writable");
        // The second, created after the first, holds no shadow page yet.
        let no_pages = "level direct guest_mode smm pages allocated zapped bytes\n";
        let no_totals = "pages 0\npeak 0\nallocated 0\nzapped 0\nbytes 0\npage_table_bytes 0\n";
        for (dir, pages, totals, peak) in [
            ("100-7", SAMPLE_PAGES, SAMPLE_TOTALS, "674\n"),
            ("100-7.1", no_pages, no_totals, "0\n"),
        ] {
            fs::create_dir_all(root.join(dir)).expect("temp dir creatable");
            fs::write(root.join(dir).join("pages"), pages).expect("writable");
            fs::write(root.join(dir).join("totals"), totals).expect("writable");
            fs::write(root.join(dir).join("peak"), peak).expect("writable");
        }
        fs::create_dir_all(root.join("not-a-vm")).expect("temp dir creatable");
        ShadowStatsDebugfs::at(root)
    }

    #[test]
    fn reads_the_files_of_all_vms_and_of_each() {
        let debugfs = fake_debugfs("read");
        assert!(debugfs.is_present());
        let vm = VmId::new(100, 7);
        let duplicate = VmId { duplicate: 1, ..vm };
        assert_eq!(debugfs.vms().expect("listable"), [vm, duplicate]);
        assert_eq!(
            debugfs.dir(Scope::Vm(duplicate)),
            debugfs.root().join("100-7.1")
        );
        for scope in [Scope::AllVms, Scope::Vm(vm)] {
            assert_eq!(debugfs.pages(scope).expect("readable").pages(), 674);
        }
        let all_vms = debugfs.all_vms_totals().expect("readable");
        assert_eq!(all_vms.pages, 674);
        let totals = debugfs.vm_totals(vm).expect("readable");
        assert_eq!((totals.sums, totals.peak), (all_vms, 674));
        assert_eq!(debugfs.peak(vm).expect("readable"), 674);
        // The duplicate's files are its own.
        assert_eq!(
            debugfs
                .pages(Scope::Vm(duplicate))
                .expect("readable")
                .pages(),
            0
        );
        assert_eq!(debugfs.vm_totals(duplicate).expect("readable").peak, 0);
        assert_eq!(debugfs.peak(duplicate).expect("readable"), 0);

        // One write of "0" at the start of the file, which a regular file keeps as it is.
        debugfs.reset_peak(vm).expect("writable");
        let peak = debugfs.dir(Scope::Vm(vm)).join("peak");
        assert_eq!(fs::read_to_string(peak).expect("readable"), "074\n");

        let missing = VmId::new(100, 9);
        let error = debugfs.pages(Scope::Vm(missing)).expect_err("no such VM");
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
        fs::write(debugfs.dir(Scope::Vm(vm)).join("peak"), "-1\n").expect("writable");
        let error = debugfs.peak(vm).expect_err("malformed");
        assert!(
            matches!(&error, BreakdownError::Parse { path, .. } if path.ends_with("100-7/peak")),
            "{error}"
        );
        // The totals of a VM in the place of those of all VMs.
        fs::write(debugfs.root().join("totals"), SAMPLE_TOTALS).expect("writable");
        let error = debugfs.all_vms_totals().expect_err("a peak");
        assert!(
            matches!(&error, BreakdownError::Parse { source, .. }
                if source.problem == Problem::UnexpectedName("peak")),
            "{error}"
        );
        fs::remove_dir_all(debugfs.root()).expect("removable");
    }
}
