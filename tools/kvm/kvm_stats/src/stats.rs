// SPDX-License-Identifier: GPL-2.0

//! A typed reader of KVM's binary statistics file (`KVM_GET_STATS_FD`).
//!
//! The file holds a header at offset 0 and, at offsets the header gives, a block of descriptors
//! (a fixed part followed by a `name_size`-byte name each) and a block of 64-bit values (see
//! `KVM_GET_STATS_FD` in Documentation/virt/kvm/api.rst). The header and descriptors are read
//! once; values are read again at their offsets whenever asked for, as KVM updates them in place.
//!
//! Everything comes from the kernel, i.e. from outside this program, so nothing here trusts it: a
//! malformed file gives a [`StatsError`] naming what is wrong, never a panic. Reading is done
//! through [`StatsSource`], which is positional (`pread` for a file) so that reading a value
//! never disturbs a file offset, and which a byte buffer also implements so the parser can be
//! tested on crafted input.

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_BASE_MASK, KVM_STATS_BASE_POW2, KVM_STATS_BASE_POW10, KVM_STATS_TYPE_CUMULATIVE,
    KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_LINEAR_HIST, KVM_STATS_TYPE_LOG_HIST,
    KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK, KVM_STATS_UNIT_BOOLEAN, KVM_STATS_UNIT_BYTES,
    KVM_STATS_UNIT_CYCLES, KVM_STATS_UNIT_MASK, KVM_STATS_UNIT_NONE, KVM_STATS_UNIT_SECONDS,
    kvm_stats_desc, kvm_stats_header,
};

/// Size of `struct kvm_stats_header` as laid out at offset 0 of the file.
pub const HEADER_SIZE: usize = size_of::<kvm_stats_header>();

/// Size of the fixed part of `struct kvm_stats_desc`, which the name follows.
pub const DESCRIPTOR_FIXED_SIZE: usize = size_of::<kvm_stats_desc>();

/// More descriptors than this is taken as a corrupt header rather than an allocation to attempt:
/// KVM has a few dozen stats per VM or vCPU.
pub const MAX_DESCRIPTORS: u32 = 1024;

/// Longest name, including its NUL, accepted before the header is taken as corrupt: KVM uses 48.
pub const MAX_NAME_SIZE: u32 = 1024;

/// Each value in the data block is a `u64`.
const VALUE_SIZE: u64 = size_of::<u64>() as u64;

/// What can be wrong when reading a binary stats file.
#[derive(Debug)]
pub enum StatsError {
    /// Reading the file failed; `block` tells which part was being read.
    Io {
        block: &'static str,
        source: io::Error,
    },
    /// The file is shorter than a header.
    TruncatedHeader { available: usize },
    /// The header claims more descriptors than [`MAX_DESCRIPTORS`].
    TooManyDescriptors { num_desc: u32 },
    /// The header's `name_size` is 0 (no room for the NUL) or above [`MAX_NAME_SIZE`].
    BadNameSize { name_size: u32 },
    /// The descriptor block at `offset`, `len` bytes long, is not all inside the file.
    DescriptorsOutOfRange { offset: u64, len: u64 },
    /// Descriptor `index` has a name that fills `name_size` bytes without a terminating NUL.
    NameWithoutNul { index: u32 },
    /// Descriptor `index` has a name that is not UTF-8.
    NameNotUtf8 { index: u32 },
    /// The id, `name_size` bytes at `offset`, is not all inside the file.
    IdOutOfRange { offset: u64, len: u64 },
    /// The id fills `name_size` bytes without a terminating NUL.
    IdWithoutNul,
    /// The id is not UTF-8.
    IdNotUtf8,
    /// The values of stat `name`, `len` bytes at `offset`, are not all inside the file.
    DataOutOfRange { name: String, offset: u64, len: u64 },
    /// No descriptor has this name.
    NotFound { name: String },
    /// The stat has `size` values where one was asked for.
    NotSingleValue { name: String, size: u16 },
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { block, source } => write!(f, "reading the stats {block}: {source}"),
            Self::TruncatedHeader { available } => write!(
                f,
                "stats header truncated: {available} bytes, {HEADER_SIZE} needed"
            ),
            Self::TooManyDescriptors { num_desc } => write!(
                f,
                "stats header claims {num_desc} descriptors, more than {MAX_DESCRIPTORS}"
            ),
            Self::BadNameSize { name_size } => write!(
                f,
                "stats header name_size {name_size} is outside 1..={MAX_NAME_SIZE}"
            ),
            Self::DescriptorsOutOfRange { offset, len } => write!(
                f,
                "stats descriptors ({len} bytes at offset {offset}) extend past the end of the file"
            ),
            Self::NameWithoutNul { index } => {
                write!(f, "stats descriptor {index} has a name without a NUL")
            }
            Self::NameNotUtf8 { index } => {
                write!(f, "stats descriptor {index} has a name that is not UTF-8")
            }
            Self::IdOutOfRange { offset, len } => write!(
                f,
                "stats id ({len} bytes at offset {offset}) extends past the end of the file"
            ),
            Self::IdWithoutNul => write!(f, "stats id has no NUL"),
            Self::IdNotUtf8 => write!(f, "stats id is not UTF-8"),
            Self::DataOutOfRange { name, offset, len } => write!(
                f,
                "values of stat {name} ({len} bytes at offset {offset}) extend past the end of the file"
            ),
            Self::NotFound { name } => write!(f, "no stat named {name}"),
            Self::NotSingleValue { name, size } => {
                write!(f, "stat {name} has {size} values, not one")
            }
        }
    }
}

impl std::error::Error for StatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Positional reads from a stats file or a buffer standing in for one.
pub trait StatsSource {
    /// Reads into `buf` from `offset` until `buf` is full or the source ends, and returns how
    /// many bytes were read, so that a short count means "past the end".
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl StatsSource for File {
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            // No file reaches past u64::MAX, so an offset that would is simply past the end.
            let Some(position) = offset.checked_add(filled as u64) else {
                break;
            };
            match self.read_at(&mut buf[filled..], position) {
                Ok(0) => break,
                Ok(read) => filled += read,
                // A signal interrupted the read; retrying it loses nothing.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }
}

impl StatsSource for &[u8] {
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let available = &self[start..];
        let read = available.len().min(buf.len());
        buf[..read].copy_from_slice(&available[..read]);
        Ok(read)
    }
}

/// `struct kvm_stats_header`, with its counts checked to be sane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsHeader {
    pub flags: u32,
    pub name_size: u32,
    pub num_desc: u32,
    pub id_offset: u32,
    pub desc_offset: u32,
    pub data_offset: u32,
}

impl StatsHeader {
    /// Parses and checks the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, StatsError> {
        let truncated = || StatsError::TruncatedHeader {
            available: bytes.len(),
        };
        let mut fields = NativeFields::new(bytes);
        let mut next = || fields.u32().ok_or_else(truncated);
        let header = Self {
            flags: next()?,
            name_size: next()?,
            num_desc: next()?,
            id_offset: next()?,
            desc_offset: next()?,
            data_offset: next()?,
        };
        if header.num_desc > MAX_DESCRIPTORS {
            return Err(StatsError::TooManyDescriptors {
                num_desc: header.num_desc,
            });
        }
        if header.name_size == 0 || header.name_size > MAX_NAME_SIZE {
            return Err(StatsError::BadNameSize {
                name_size: header.name_size,
            });
        }
        Ok(header)
    }

    /// Bytes from one descriptor to the next: the fixed part plus the name.
    fn descriptor_stride(&self) -> usize {
        DESCRIPTOR_FIXED_SIZE + self.name_size as usize
    }
}

/// What a stat measures, from bits 0-3 of its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Cumulative,
    Instant,
    Peak,
    LinearHistogram,
    LogHistogram,
    Unknown(u32),
}

/// The unit of a stat, from bits 4-7 of its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatUnit {
    None,
    Bytes,
    Seconds,
    Cycles,
    Boolean,
    Unknown(u32),
}

/// The base that a stat's exponent scales its unit by, from bits 8-11 of its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatBase {
    Pow10,
    Pow2,
    Unknown(u32),
}

/// One `struct kvm_stats_desc` with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDescriptor {
    pub name: String,
    pub flags: u32,
    pub exponent: i16,
    /// Number of `u64` values the stat has.
    pub size: u16,
    /// Offset of the first value from the start of the data block.
    pub offset: u32,
    pub bucket_size: u32,
}

impl StatDescriptor {
    pub fn kind(&self) -> StatKind {
        match self.flags & KVM_STATS_TYPE_MASK {
            KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
            KVM_STATS_TYPE_INSTANT => StatKind::Instant,
            KVM_STATS_TYPE_PEAK => StatKind::Peak,
            KVM_STATS_TYPE_LINEAR_HIST => StatKind::LinearHistogram,
            KVM_STATS_TYPE_LOG_HIST => StatKind::LogHistogram,
            other => StatKind::Unknown(other),
        }
    }

    pub fn unit(&self) -> StatUnit {
        match self.flags & KVM_STATS_UNIT_MASK {
            KVM_STATS_UNIT_NONE => StatUnit::None,
            KVM_STATS_UNIT_BYTES => StatUnit::Bytes,
            KVM_STATS_UNIT_SECONDS => StatUnit::Seconds,
            KVM_STATS_UNIT_CYCLES => StatUnit::Cycles,
            KVM_STATS_UNIT_BOOLEAN => StatUnit::Boolean,
            other => StatUnit::Unknown(other),
        }
    }

    pub fn base(&self) -> StatBase {
        match self.flags & KVM_STATS_BASE_MASK {
            KVM_STATS_BASE_POW10 => StatBase::Pow10,
            KVM_STATS_BASE_POW2 => StatBase::Pow2,
            other => StatBase::Unknown(other),
        }
    }

    /// Parses descriptor `index` from its fixed part and the `name_size` bytes that follow it.
    fn parse(
        index: u32,
        fixed: &[u8; DESCRIPTOR_FIXED_SIZE],
        name: &[u8],
    ) -> Result<Self, StatsError> {
        // Destructuring the array makes every field access infallible and checked at compile
        // time against the size of `struct kvm_stats_desc`.
        let [
            f0,
            f1,
            f2,
            f3,
            e0,
            e1,
            s0,
            s1,
            o0,
            o1,
            o2,
            o3,
            b0,
            b1,
            b2,
            b3,
        ] = *fixed;
        let flags = u32::from_ne_bytes([f0, f1, f2, f3]);
        let exponent = i16::from_ne_bytes([e0, e1]);
        let size = u16::from_ne_bytes([s0, s1]);
        let offset = u32::from_ne_bytes([o0, o1, o2, o3]);
        let bucket_size = u32::from_ne_bytes([b0, b1, b2, b3]);
        let name = nul_terminated(name)
            .map_err(|error| match error {
                StringError::WithoutNul => StatsError::NameWithoutNul { index },
                StringError::NotUtf8 => StatsError::NameNotUtf8 { index },
            })?
            .to_owned();
        Ok(Self {
            name,
            flags,
            exponent,
            size,
            offset,
            bucket_size,
        })
    }
}

/// A binary stats file with its header and descriptors read, ready to read values.
pub struct Stats<S> {
    source: S,
    header: StatsHeader,
    descriptors: Vec<StatDescriptor>,
}

impl<S: StatsSource> Stats<S> {
    /// Reads and checks the header and all descriptors of `source`.
    pub fn new(source: S) -> Result<Self, StatsError> {
        let mut header_bytes = [0u8; HEADER_SIZE];
        let read = source
            .read_at_most(&mut header_bytes, 0)
            .map_err(|source| StatsError::Io {
                block: "header",
                source,
            })?;
        let header = StatsHeader::parse(&header_bytes[..read])?;

        let stride = header.descriptor_stride();
        // Both factors are bounded by the header checks, so this is at most about 1 MiB.
        let block_len = stride * header.num_desc as usize;
        let offset = u64::from(header.desc_offset);
        let block = read_block(&source, "descriptors", offset, block_len, || {
            StatsError::DescriptorsOutOfRange {
                offset,
                len: block_len as u64,
            }
        })?;
        let descriptors = block
            .chunks_exact(stride)
            .zip(0..)
            .map(|(bytes, index)| {
                // Every chunk is a whole stride, longer than the fixed part, so the split
                // always succeeds; were it not to, the block is as good as cut short.
                let (fixed, name) =
                    bytes
                        .split_first_chunk()
                        .ok_or(StatsError::DescriptorsOutOfRange {
                            offset,
                            len: block_len as u64,
                        })?;
                StatDescriptor::parse(index, fixed, name)
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Self {
            source,
            header,
            descriptors,
        })
    }

    pub fn header(&self) -> &StatsHeader {
        &self.header
    }

    /// The id KVM gave the file: `kvm-<pid>` for a VM and `kvm-<pid>/vcpu-<index>` for a vCPU,
    /// with the pid of the process that created the VM.
    pub fn id(&self) -> Result<String, StatsError> {
        let offset = u64::from(self.header.id_offset);
        // Bounded by the header checks.
        let len = self.header.name_size as usize;
        let bytes = read_block(&self.source, "id", offset, len, || {
            StatsError::IdOutOfRange {
                offset,
                len: len as u64,
            }
        })?;
        let id = nul_terminated(&bytes).map_err(|error| match error {
            StringError::WithoutNul => StatsError::IdWithoutNul,
            StringError::NotUtf8 => StatsError::IdNotUtf8,
        })?;
        Ok(id.to_owned())
    }

    /// The descriptor of the stat called `name`.
    pub fn descriptor(&self, name: &str) -> Result<&StatDescriptor, StatsError> {
        self.descriptors
            .iter()
            .find(|descriptor| descriptor.name == name)
            .ok_or_else(|| StatsError::NotFound {
                name: name.to_owned(),
            })
    }

    /// Reads the current values of the stat `descriptor` describes.
    pub fn read_values(&self, descriptor: &StatDescriptor) -> Result<Vec<u64>, StatsError> {
        // u32 + u32 and u16 * 8 cannot overflow a u64.
        let offset = u64::from(self.header.data_offset) + u64::from(descriptor.offset);
        let len = u64::from(descriptor.size) * VALUE_SIZE;
        let out_of_range = || StatsError::DataOutOfRange {
            name: descriptor.name.clone(),
            offset,
            len,
        };
        let len = usize::try_from(len).map_err(|_| out_of_range())?;
        let bytes = read_block(&self.source, "data", offset, len, out_of_range)?;
        let mut fields = NativeFields::new(&bytes);
        Ok(std::iter::from_fn(|| fields.u64()).collect())
    }

    /// Reads the current value of the single-valued stat called `name`.
    pub fn read_single(&self, name: &str) -> Result<u64, StatsError> {
        let descriptor = self.descriptor(name)?;
        match self.read_values(descriptor)?.as_slice() {
            [value] => Ok(*value),
            _ => Err(StatsError::NotSingleValue {
                name: name.to_owned(),
                size: descriptor.size,
            }),
        }
    }
}

/// Reads the `len` bytes of `block` at `offset`, or fails with `out_of_range()` if `source`
/// ends before them.
fn read_block(
    source: &impl StatsSource,
    block: &'static str,
    offset: u64,
    len: usize,
    out_of_range: impl FnOnce() -> StatsError,
) -> Result<Vec<u8>, StatsError> {
    let mut bytes = vec![0u8; len];
    let read = source
        .read_at_most(&mut bytes, offset)
        .map_err(|source| StatsError::Io { block, source })?;
    if read < len {
        return Err(out_of_range());
    }
    Ok(bytes)
}

/// Why the bytes of a name or id do not hold one.
enum StringError {
    WithoutNul,
    NotUtf8,
}

/// The UTF-8 string that `bytes` hold up to their first NUL, as KVM pads names and ids.
fn nul_terminated(bytes: &[u8]) -> Result<&str, StringError> {
    let length = bytes
        .iter()
        .position(|&byte| byte == 0)
        .ok_or(StringError::WithoutNul)?;
    std::str::from_utf8(&bytes[..length]).map_err(|_| StringError::NotUtf8)
}

/// Consumes native-endian integers from the front of a byte slice, `None` once it runs out.
struct NativeFields<'a> {
    rest: &'a [u8],
}

impl<'a> NativeFields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (field, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*field)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_ne_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_ne_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KVM's own name size, so the crafted files look like the real ones.
    const NAME_SIZE: u32 = 48;

    struct CraftedStat {
        name: Vec<u8>,
        flags: u32,
        exponent: i16,
        values: Vec<u64>,
    }

    fn stat(name: &str, flags: u32, values: &[u64]) -> CraftedStat {
        CraftedStat {
            name: name.as_bytes().to_vec(),
            flags,
            exponent: 0,
            values: values.to_vec(),
        }
    }

    /// Header fields that a test may override; the rest follow from the stats.
    #[derive(Default)]
    struct Overrides {
        num_desc: Option<u32>,
        name_size: Option<u32>,
        desc_offset: Option<u32>,
        data_offset: Option<u32>,
    }

    /// Lays out a stats file as KVM does: header, id, descriptors, data.
    fn craft(stats: &[CraftedStat], overrides: Overrides) -> Vec<u8> {
        let id_offset = HEADER_SIZE as u32;
        let desc_offset = id_offset + NAME_SIZE;
        let stride = DESCRIPTOR_FIXED_SIZE as u32 + NAME_SIZE;
        let data_offset = desc_offset + stride * stats.len() as u32;

        let mut file = Vec::new();
        for field in [
            0,
            overrides.name_size.unwrap_or(NAME_SIZE),
            overrides.num_desc.unwrap_or(stats.len() as u32),
            id_offset,
            overrides.desc_offset.unwrap_or(desc_offset),
            overrides.data_offset.unwrap_or(data_offset),
        ] {
            file.extend_from_slice(&field.to_ne_bytes());
        }
        let mut id = b"kvm-1234".to_vec();
        id.resize(NAME_SIZE as usize, 0);
        file.extend_from_slice(&id);

        let mut value_offset = 0u32;
        for stat in stats {
            file.extend_from_slice(&stat.flags.to_ne_bytes());
            file.extend_from_slice(&stat.exponent.to_ne_bytes());
            file.extend_from_slice(&(stat.values.len() as u16).to_ne_bytes());
            file.extend_from_slice(&value_offset.to_ne_bytes());
            file.extend_from_slice(&0u32.to_ne_bytes());
            let mut name = stat.name.clone();
            name.resize(NAME_SIZE as usize, 0);
            file.extend_from_slice(&name);
            value_offset += stat.values.len() as u32 * 8;
        }
        for value in stats.iter().flat_map(|stat| &stat.values) {
            file.extend_from_slice(&value.to_ne_bytes());
        }
        file
    }

    fn good_stats() -> Vec<CraftedStat> {
        vec![
            stat(
                "mmu_cache_miss",
                KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10,
                &[7],
            ),
            stat(
                "mmu_shadow_pages",
                KVM_STATS_TYPE_INSTANT | KVM_STATS_UNIT_NONE | KVM_STATS_BASE_POW10,
                &[42],
            ),
            stat(
                "halt_poll_fail_hist",
                KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS | KVM_STATS_BASE_POW10,
                &[1, 2, 3],
            ),
        ]
    }

    #[test]
    fn good_file_parses_and_reads_values() {
        let file = craft(&good_stats(), Overrides::default());
        let stats = Stats::new(file.as_slice()).expect("a well-formed file parses");

        assert_eq!(stats.header().num_desc, 3);
        assert_eq!(stats.header().name_size, NAME_SIZE);
        let shadow = stats.descriptor("mmu_shadow_pages").expect("present");
        assert_eq!(shadow.kind(), StatKind::Instant);
        assert_eq!(shadow.unit(), StatUnit::None);
        assert_eq!(shadow.base(), StatBase::Pow10);
        assert_eq!(shadow.exponent, 0);
        assert_eq!(shadow.size, 1);
        assert_eq!(stats.read_single("mmu_shadow_pages").expect("readable"), 42);
        assert_eq!(stats.read_single("mmu_cache_miss").expect("readable"), 7);

        let histogram = stats.descriptor("halt_poll_fail_hist").expect("present");
        assert_eq!(histogram.kind(), StatKind::LogHistogram);
        assert_eq!(histogram.unit(), StatUnit::Seconds);
        assert_eq!(stats.read_values(histogram).expect("readable"), [1, 2, 3]);
    }

    #[test]
    fn id_is_read_and_checked() {
        let id_of = |file: &[u8]| Stats::new(file).expect("descriptors are intact").id();
        let mut file = craft(&good_stats(), Overrides::default());
        assert_eq!(id_of(&file).expect("readable"), "kvm-1234");

        let id = HEADER_SIZE..HEADER_SIZE + NAME_SIZE as usize;
        file[id.clone()].fill(b'x');
        assert!(matches!(id_of(&file), Err(StatsError::IdWithoutNul)));
        file[id.start..id.start + 2].copy_from_slice(&[0xff, 0]);
        assert!(matches!(id_of(&file), Err(StatsError::IdNotUtf8)));

        // id_offset is the header's fourth field.
        file[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            id_of(&file),
            Err(StatsError::IdOutOfRange { offset, len })
                if offset == u64::from(u32::MAX) && len == u64::from(NAME_SIZE)
        ));
    }

    #[test]
    fn file_source_reads_like_a_buffer() {
        let bytes = craft(&good_stats(), Overrides::default());
        let path = std::env::temp_dir().join(format!("kvm-stats-test-{}", std::process::id()));
        std::fs::write(&path, &bytes).expect("temp file writable");
        let file = File::open(&path).expect("temp file readable");
        std::fs::remove_file(&path).expect("temp file removable");

        let stats = Stats::new(file).expect("a well-formed file parses");
        assert_eq!(stats.read_single("mmu_shadow_pages").expect("readable"), 42);
        assert!(matches!(
            stats.read_single("no_such_stat"),
            Err(StatsError::NotFound { name }) if name == "no_such_stat"
        ));
    }

    #[test]
    fn truncated_header_is_reported() {
        let file = craft(&good_stats(), Overrides::default());
        for len in [0, 1, HEADER_SIZE - 1] {
            assert!(matches!(
                Stats::new(&file[..len]),
                Err(StatsError::TruncatedHeader { available }) if available == len
            ));
        }
    }

    #[test]
    fn name_without_nul_is_reported() {
        let mut stats = good_stats();
        stats[1].name = vec![b'x'; NAME_SIZE as usize];
        let file = craft(&stats, Overrides::default());
        assert!(matches!(
            Stats::new(file.as_slice()),
            Err(StatsError::NameWithoutNul { index: 1 })
        ));
    }

    #[test]
    fn name_not_utf8_is_reported() {
        let mut stats = good_stats();
        stats[2].name = vec![0xff, 0xfe, 0];
        let file = craft(&stats, Overrides::default());
        assert!(matches!(
            Stats::new(file.as_slice()),
            Err(StatsError::NameNotUtf8 { index: 2 })
        ));
    }

    #[test]
    fn descriptors_past_the_end_are_reported() {
        let file = craft(
            &good_stats(),
            Overrides {
                desc_offset: Some(u32::MAX - 7),
                ..Overrides::default()
            },
        );
        assert!(matches!(
            Stats::new(file.as_slice()),
            Err(StatsError::DescriptorsOutOfRange { offset, .. }) if offset == u64::from(u32::MAX - 7)
        ));

        // A file cut inside the descriptor block is the same error.
        let file = craft(&good_stats(), Overrides::default());
        let cut = HEADER_SIZE + NAME_SIZE as usize + DESCRIPTOR_FIXED_SIZE;
        assert!(matches!(
            Stats::new(&file[..cut]),
            Err(StatsError::DescriptorsOutOfRange { .. })
        ));
    }

    #[test]
    fn data_past_the_end_is_reported() {
        let file = craft(
            &good_stats(),
            Overrides {
                data_offset: Some(u32::MAX - 7),
                ..Overrides::default()
            },
        );
        let stats = Stats::new(file.as_slice()).expect("descriptors are intact");
        assert!(matches!(
            stats.read_single("mmu_shadow_pages"),
            Err(StatsError::DataOutOfRange { name, .. }) if name == "mmu_shadow_pages"
        ));

        // A descriptor whose own offset points past the data block.
        let file = craft(&good_stats(), Overrides::default());
        let stats = Stats::new(file.as_slice()).expect("a well-formed file parses");
        let mut stray = stats.descriptor("mmu_cache_miss").expect("present").clone();
        stray.offset = 4096;
        assert!(matches!(
            stats.read_values(&stray),
            Err(StatsError::DataOutOfRange { offset, len: 8, .. })
                if offset == u64::from(stats.header().data_offset) + 4096
        ));
    }

    #[test]
    fn absurd_counts_are_reported() {
        let file = craft(
            &good_stats(),
            Overrides {
                num_desc: Some(u32::MAX),
                ..Overrides::default()
            },
        );
        assert!(matches!(
            Stats::new(file.as_slice()),
            Err(StatsError::TooManyDescriptors { num_desc: u32::MAX })
        ));

        for name_size in [0, MAX_NAME_SIZE + 1, u32::MAX] {
            let file = craft(
                &good_stats(),
                Overrides {
                    name_size: Some(name_size),
                    ..Overrides::default()
                },
            );
            assert!(matches!(
                Stats::new(file.as_slice()),
                Err(StatsError::BadNameSize { name_size: reported }) if reported == name_size
            ));
        }
    }

    #[test]
    fn multi_valued_stat_is_not_read_as_single() {
        let file = craft(&good_stats(), Overrides::default());
        let stats = Stats::new(file.as_slice()).expect("a well-formed file parses");
        assert!(matches!(
            stats.read_single("halt_poll_fail_hist"),
            Err(StatsError::NotSingleValue { size: 3, .. })
        ));
    }

    #[test]
    fn errors_explain_themselves() {
        let error = StatsError::NameWithoutNul { index: 3 };
        assert_eq!(
            error.to_string(),
            "stats descriptor 3 has a name without a NUL"
        );
    }
}
