// SPDX-License-Identifier: GPL-2.0

//! A 64-bit guest whose page tables this program builds, so that the test knows exactly which
//! guest page tables a run walks and thus how many shadow pages KVM needs for it.
//!
//! The guest starts directly in long mode (the vCPU's registers are set up from here, so there
//! is no boot code) and runs a few instructions of machine code: for each address in a table it
//! writes that address to itself, then signals completion with an `out` to [`DONE_PORT`]. Each
//! address is in its own 2 MiB region, so that each is reached through its own guest page table
//! page ([`TouchMapping::Small`]) or its own 2 MiB guest page ([`TouchMapping::Large`]).
//!
//! Guest physical memory is one memslot:
//!
//! | guest physical      | what                                              |
//! |---------------------|---------------------------------------------------|
//! | `GDT_GPA`           | GDT: null, 64-bit code, data, 64-bit TSS          |
//! | `TSS_GPA`           | TSS, only there because a vCPU needs a valid TR   |
//! | `CODE_GPA`          | the guest code                                    |
//! | `TOUCH_TABLE_GPA`   | the addresses to touch, one `u64` each            |
//! | `ALLOCATOR_START`.. | page tables and the data pages of small touches   |
//! | `LARGE_DATA_GPA`..  | the 2 MiB data regions of large touches           |
//!
//! Everything below `ALLOCATOR_START` is identity-mapped; touched addresses start at
//! [`TOUCH_BASE_GVA`]. The code uses no stack, so there is none.
//!
//! Under the TDP MMU, KVM only builds shadow pages for an L2 guest under nested NPT, so there
//! the touches can be made by an L2 ([`RunsAs::L2`]): the guest, now L1, enters with `vmrun` an
//! L2 that runs the same touching code through the same page tables, whose guest physical
//! addresses L1's NPT tables, which the test builds too, map to L1's memory. KVM then shadows
//! L1's NPT tables instead of the guest's page tables, one page per NPT table that L2's accesses
//! walk. For that, L1 has:
//!
//! | L1 guest physical   | what                                              |
//! |---------------------|---------------------------------------------------|
//! | `VMCB_GPA`          | the VMCB of L2, in which the test puts L2's state |
//! | `HOST_SAVE_GPA`     | the host save area that `vmrun` needs             |
//! | `L1_CODE_GPA`       | L1's code: `vmrun`, then report an exit from L2   |
//! | `ALLOCATOR_START`.. | L1's NPT tables too, after the guest page tables  |
//!
//! L2's small touches each go to an L2 guest physical page of their own 2 MiB from
//! `NESTED_TOUCH_GPA` on, each of which L1's NPT maps to the data page of the touch, so that
//! each needs an NPT page table of its own, as each needs a guest page table at `npt=0`.

use std::fmt;
use std::io;
use std::os::raw::c_void;
use std::ptr::NonNull;

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, Msrs, kvm_msr_entry, kvm_regs, kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::host;

const PAGE_SIZE: u64 = 4096;
const LARGE_PAGE_SIZE: u64 = 2 << 20;

const GDT_GPA: u64 = 0x1000;
const TSS_GPA: u64 = 0x2000;
const CODE_GPA: u64 = 0x3000;
const TOUCH_TABLE_GPA: u64 = 0x4000;
const TOUCH_TABLE_PAGES: u64 = 2;
const ALLOCATOR_START: u64 = 0x10000;
const LARGE_DATA_GPA: u64 = 32 << 20;
/// 64 MiB: room for 1024 small touches below `LARGE_DATA_GPA` and 16 large ones above, and
/// enough pages that KVM's default shadow page limit (one per 50 memslot pages, so 327) leaves
/// the stat alone unless a test lowers it. Only the pages the test touches are ever allocated.
const MEMORY_SIZE: u64 = 64 << 20;

/// Most touches one run can make: as many addresses as fit in the table.
pub const MAX_SMALL_TOUCHES: u64 = TOUCH_TABLE_PAGES * PAGE_SIZE / 8;
/// Most large touches: each needs its own 2 MiB region above `LARGE_DATA_GPA`.
pub const MAX_LARGE_TOUCHES: u64 = (MEMORY_SIZE - LARGE_DATA_GPA) / LARGE_PAGE_SIZE;

/// The first touched guest virtual address, clear of the identity-mapped low memory.
pub const TOUCH_BASE_GVA: u64 = 1 << 30;

/// The I/O port the guest writes to when it has touched every address.
pub const DONE_PORT: u16 = 0xe9;
// The guest uses the `out imm8, al` form, which only reaches ports below 256.
const _: () = assert!(DONE_PORT <= 0xff);

/// The guest program. On entry RSI points to the table of addresses and RCX holds their count.
#[rustfmt::skip]
const GUEST_CODE: [u8; 15] = [
    0xe3, 0x0a,             // next: jrcxz done
    0x48, 0xad,             //       lodsq               ; rax = *rsi++
    0x48, 0x89, 0x00,       //       mov [rax], rax      ; the touch
    0x48, 0xff, 0xc9,       //       dec rcx
    0xeb, 0xf4,             //       jmp next
    0xe6, DONE_PORT as u8,  // done: out DONE_PORT, al
    0xf4,                   //       hlt                 ; stops the vCPU should it be resumed
];

/// Where L2 runs: the L2 state that L1's `vmrun` loads, L1's host save area and L1's code, all
/// in the identity-mapped low memory.
const VMCB_GPA: u64 = 0x6000;
const HOST_SAVE_GPA: u64 = 0x7000;
const L1_CODE_GPA: u64 = 0x8000;
/// The first of the L2 guest physical pages of small touches, one per 2 MiB, past L1's memory.
const NESTED_TOUCH_GPA: u64 = 1 << 32;
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// The I/O port L1 writes to if L2 ever exits to it, which L2 never does unless it fails.
const L2_EXITED_PORT: u16 = 0xea;
const _: () = assert!(L2_EXITED_PORT <= 0xff);

/// L1's program. On entry RAX holds `VMCB_GPA`, and RSI and RCX what L2's touching code wants
/// in them, which `vmrun` leaves alone. L1 only runs again if L2 exits to it.
#[rustfmt::skip]
const L1_CODE: [u8; 6] = [
    0x0f, 0x01, 0xd8,           // vmrun                    ; L2 until it exits to L1
    0xe6, L2_EXITED_PORT as u8, // out L2_EXITED_PORT, al   ; tells the host, which reads why
    0xf4,                       // hlt
];

/// SMRAM, just above the guest's memory, which SMM's real-address mode reaches: SMBASE, whose
/// handler starts at `SMBASE + 0x8000` and whose state save area ends at `SMBASE + 0x10000`.
const SMRAM_GPA: u64 = MEMORY_SIZE;
const SMRAM_SIZE: u64 = 64 << 10;
const SMI_HANDLER_OFFSET: u64 = 0x8000;
/// Memslots of KVM's SMM address space: SMRAM, and the guest's memory as SMM sees it.
const SMM_ADDRESS_SPACE: u32 = 1 << 16;
const SMRAM_SLOT: u32 = SMM_ADDRESS_SPACE;
const SMM_MEMORY_SLOT: u32 = SMM_ADDRESS_SPACE | 1;
const MSR_IA32_SMBASE: u32 = 0x9e;
/// The byte the SMI handler writes to each region it touches.
const SMM_TOUCH_MARK: u8 = 0xa5;

/// The I/O port the SMI handler reads from when it has touched every region, still in SMM.
pub const SMM_SYNC_PORT: u16 = 0xe;
/// Most regions the SMI handler can touch: the 2 MiB regions from `LARGE_DATA_GPA` on.
pub const MAX_SMM_TOUCHES: u64 = MAX_LARGE_TOUCHES;

/// The SMI handler, 16-bit code for SMM's real-address mode, whose segments reach 4 GiB: it
/// writes [`SMM_TOUCH_MARK`] to the first byte of each of `regions` 2 MiB regions from
/// `LARGE_DATA_GPA` on, reads from [`SMM_SYNC_PORT`] and returns with `rsm`.
fn smi_handler(regions: u16) -> Vec<u8> {
    let mut code = vec![0xb0, SMM_TOUCH_MARK, 0xb9]; //  mov al, MARK; mov cx, regions
    code.extend_from_slice(&regions.to_le_bytes());
    code.extend_from_slice(&[0x66, 0xbb]); //               mov ebx, LARGE_DATA_GPA
    code.extend_from_slice(&(LARGE_DATA_GPA as u32).to_le_bytes());
    code.extend_from_slice(&[0x67, 0x88, 0x03]); //         next: mov [ebx], al
    code.extend_from_slice(&[0x66, 0x81, 0xc3]); //         add ebx, LARGE_PAGE_SIZE
    code.extend_from_slice(&(LARGE_PAGE_SIZE as u32).to_le_bytes());
    code.extend_from_slice(&[0xe2, 0xf4]); //               loop next
    code.extend_from_slice(&[0xe4, SMM_SYNC_PORT as u8]); // in al, SMM_SYNC_PORT
    code.extend_from_slice(&[0x0f, 0xaa]); //               rsm
    code
}
// Both are immediates of 32 bits in the handler, and the port one of 8.
const _: () = assert!(LARGE_DATA_GPA + MAX_SMM_TOUCHES * LARGE_PAGE_SIZE <= 1 << 32);
const _: () = assert!(SMM_SYNC_PORT <= 0xff);

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
/// NPT treats every access as a user access, so every NPT entry allows them.
const PTE_USER: u64 = 1 << 2;
const PTE_LARGE: u64 = 1 << 7;
/// Bits 12-51 of an entry: the physical address it points to.
const PTE_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Makes `vmrun` available to L1; KVM also wants it set in L2's EFER.
const EFER_SVME: u64 = 1 << 12;
/// RFLAGS bit 1 is reserved and always 1; everything else, notably DF and IF, is clear.
const RFLAGS_RESERVED: u64 = 1 << 1;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;
/// The null, code and data descriptors and the two halves of the 64-bit TSS descriptor.
const GDT_ENTRIES: usize = 5;
const TSS_LIMIT: u32 = 0x67;

/// How a touched address is mapped by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchMapping {
    /// A 4 KiB page, so each touch adds a guest page table page, which KVM shadows.
    Small,
    /// A 2 MiB page with no guest page table below it; KVM, backing it with 4 KiB host pages,
    /// needs a direct shadow page for each.
    Large,
}

/// Which guest touches the addresses, and so which page tables KVM shadows for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsAs {
    /// The guest itself, through its page tables, which KVM shadows on shadow paging.
    L1,
    /// An L2 that the guest enters with `vmrun`, through the same page tables, whose guest
    /// physical addresses L1's NPT tables map: KVM shadows those, which it does on the TDP MMU
    /// too, as pages of an L2 guest (role `guest_mode`).
    L2,
}

/// What can go wrong setting up or running the guest.
#[derive(Debug)]
pub enum GuestError {
    Kvm {
        action: &'static str,
        source: kvm_ioctls::Error,
    },
    Mmap(io::Error),
    TooManyTouches {
        requested: u64,
        max: u64,
    },
    /// The page table allocator ran into the large-page data area.
    OutOfGuestMemory,
    /// An access to guest memory outside the memslot, i.e. a bug in the layout.
    OutsideGuestMemory {
        gpa: u64,
        len: usize,
    },
    /// The vCPU stopped for another reason than the guest signalling completion.
    UnexpectedExit {
        exit: String,
        rip: u64,
    },
    /// After a run, a touched location does not hold the value the guest writes there.
    TouchMissed {
        gva: u64,
        gpa: u64,
        found: u64,
    },
    /// L2 exited to L1, as it only does if it fails; with what the VMCB says about the exit
    /// (AMD APM vol. 2, appendix C): e.g. 0x400 for a nested page fault at guest physical
    /// `info2`, 0x7f for a shutdown, -1 for a VMCB that `vmrun` refused.
    L2Exited {
        code: u64,
        info1: u64,
        info2: u64,
    },
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kvm { action, source } => write!(f, "{action}: {source}"),
            Self::Mmap(error) => write!(f, "allocating guest memory: {error}"),
            Self::TooManyTouches { requested, max } => {
                write!(f, "{requested} touches requested, at most {max} possible")
            }
            Self::OutOfGuestMemory => write!(f, "guest page table area exhausted"),
            Self::OutsideGuestMemory { gpa, len } => {
                write!(
                    f,
                    "{len} bytes at guest physical {gpa:#x} are outside guest memory"
                )
            }
            Self::UnexpectedExit { exit, rip } => {
                write!(f, "unexpected vCPU exit {exit} at rip {rip:#x}")
            }
            Self::TouchMissed { gva, gpa, found } => write!(
                f,
                "guest did not write {gva:#x} (guest physical {gpa:#x}), found {found:#x}"
            ),
            Self::L2Exited { code, info1, info2 } => write!(
                f,
                "L2 exited to L1 with exit code {code:#x}, exit info {info1:#x} and {info2:#x}"
            ),
        }
    }
}

impl std::error::Error for GuestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Kvm { source, .. } => Some(source),
            Self::Mmap(error) => Some(error),
            _ => None,
        }
    }
}

/// Shorthand to attach what was being done to a `kvm-ioctls` error.
fn kvm_error(action: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> GuestError {
    move |source| GuestError::Kvm { action, source }
}

/// Anonymous host memory backing the guest's physical memory.
struct GuestMemory {
    host: NonNull<u8>,
    size: usize,
}

impl GuestMemory {
    fn new(size: usize) -> Result<Self, GuestError> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing replaces
        // nothing; the result is checked before use.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(GuestError::Mmap(io::Error::last_os_error()));
        }
        let host = NonNull::new(address.cast::<u8>())
            .ok_or_else(|| GuestError::Mmap(io::Error::from(io::ErrorKind::AddrNotAvailable)))?;
        // Owned from here on, so that an error below unmaps it.
        let memory = Self { host, size };
        // Large touches count on KVM backing each 2 MiB guest page with 4 KiB host pages, which
        // it only does if the host memory is not a transparent huge page.
        // SAFETY: the range is the mapping just made; the advice changes no contents.
        if unsafe { libc::madvise(address, size, libc::MADV_NOHUGEPAGE) } != 0 {
            let error = io::Error::last_os_error();
            // EINVAL: a kernel without transparent huge pages, whose pages are all 4 KiB anyway.
            if error.raw_os_error() != Some(libc::EINVAL) {
                return Err(GuestError::Mmap(error));
            }
        }
        Ok(memory)
    }

    /// The host pointer to `len` bytes at `gpa`, if they are all inside the memory.
    fn host_range(&self, gpa: u64, len: usize) -> Result<*mut u8, GuestError> {
        let outside = || GuestError::OutsideGuestMemory { gpa, len };
        let start = usize::try_from(gpa).map_err(|_| outside())?;
        let end = start.checked_add(len).ok_or_else(outside)?;
        if end > self.size {
            return Err(outside());
        }
        // SAFETY: `start + len` is within the mapping, as just checked.
        Ok(unsafe { self.host.as_ptr().add(start) })
    }

    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), GuestError> {
        self.write_bytes(gpa, &value.to_ne_bytes())
    }

    fn write_bytes(&self, gpa: u64, bytes: &[u8]) -> Result<(), GuestError> {
        let destination = self.host_range(gpa, bytes.len())?;
        // SAFETY: the range is inside the mapping (checked above) and cannot overlap `bytes`,
        // which Rust owns. The guest writes this memory only during KVM_RUN, which runs on this
        // thread, so nothing writes it concurrently.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), destination, bytes.len()) };
        Ok(())
    }

    fn read_u64(&self, gpa: u64) -> Result<u64, GuestError> {
        let mut bytes = [0u8; 8];
        let source = self.host_range(gpa, bytes.len())?;
        // SAFETY: as in `write_bytes`, the range is inside the mapping and not written
        // concurrently.
        unsafe { std::ptr::copy_nonoverlapping(source, bytes.as_mut_ptr(), bytes.len()) };
        Ok(u64::from_ne_bytes(bytes))
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more: the
        // VM that used it is dropped first (see the field order of `TestVm`). A failure would
        // only leak the mapping, so the result is not checked.
        unsafe { libc::munmap(self.host.as_ptr().cast::<c_void>(), self.size) };
    }
}

/// A page table the test built, where it is and at which level: 4 for a PML4, 1 for a page
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TablePage {
    gpa: u64,
    level: u8,
}

/// Builds 4-level page tables in guest memory, the guest's own or L1's NPT tables, taking pages
/// from a bump allocator.
struct PageTableBuilder<'m> {
    memory: &'m GuestMemory,
    pml4: u64,
    next_free: u64,
    /// The bits besides the address of every entry the builder writes.
    entry_flags: u64,
    /// Each table, in the order the tables were made.
    tables: Vec<TablePage>,
}

impl<'m> PageTableBuilder<'m> {
    /// Guest page tables, the first of the guest memory allocated.
    fn new(memory: &'m GuestMemory) -> Result<Self, GuestError> {
        Self::starting_at(memory, ALLOCATOR_START, PTE_PRESENT | PTE_WRITABLE)
    }

    /// NPT tables, allocated after the pages that `guest_tables` took.
    fn new_npt(memory: &'m GuestMemory, guest_tables: &Self) -> Result<Self, GuestError> {
        Self::starting_at(
            memory,
            guest_tables.next_free,
            PTE_PRESENT | PTE_WRITABLE | PTE_USER,
        )
    }

    fn starting_at(
        memory: &'m GuestMemory,
        next_free: u64,
        entry_flags: u64,
    ) -> Result<Self, GuestError> {
        let mut builder = Self {
            memory,
            pml4: 0,
            next_free,
            entry_flags,
            tables: Vec::new(),
        };
        builder.pml4 = builder.allocate_table(4)?;
        Ok(builder)
    }

    /// The level of each table, in the order the tables were made.
    fn levels(&self) -> Vec<u8> {
        self.tables.iter().map(|table| table.level).collect()
    }

    /// A zeroed page: fresh anonymous memory reads as zeros and each page is handed out once.
    fn allocate_page(&mut self) -> Result<u64, GuestError> {
        if self.next_free >= LARGE_DATA_GPA {
            return Err(GuestError::OutOfGuestMemory);
        }
        let page = self.next_free;
        self.next_free += PAGE_SIZE;
        Ok(page)
    }

    /// A page table of `level`, 1 to 4.
    fn allocate_table(&mut self, level: u8) -> Result<u64, GuestError> {
        let gpa = self.allocate_page()?;
        self.tables.push(TablePage { gpa, level });
        Ok(gpa)
    }

    /// The table that entry `index` of `table`, of level `level + 1`, points to, created if the
    /// entry is empty.
    fn next_table(&mut self, table: u64, index: u64, level: u8) -> Result<u64, GuestError> {
        let entry_gpa = table + index * 8;
        let entry = self.memory.read_u64(entry_gpa)?;
        if entry & PTE_PRESENT != 0 {
            return Ok(entry & PTE_ADDRESS_MASK);
        }
        let next = self.allocate_table(level)?;
        self.memory.write_u64(entry_gpa, next | self.entry_flags)?;
        Ok(next)
    }

    /// Maps `address` (guest virtual, or for NPT tables L2 guest physical) to `gpa` with a page
    /// of the size `mapping` says.
    fn map(&mut self, address: u64, gpa: u64, mapping: TouchMapping) -> Result<(), GuestError> {
        let index = |level: u32| (address >> (12 + 9 * (level - 1))) & 0x1ff;
        let pdpt = self.next_table(self.pml4, index(4), 3)?;
        let pd = self.next_table(pdpt, index(3), 2)?;
        match mapping {
            TouchMapping::Small => {
                let pt = self.next_table(pd, index(2), 1)?;
                self.memory
                    .write_u64(pt + index(1) * 8, gpa | self.entry_flags)
            }
            TouchMapping::Large => self
                .memory
                .write_u64(pd + index(2) * 8, gpa | self.entry_flags | PTE_LARGE),
        }
    }
}

/// A segment of the flat model: base 0, all 4 GiB, ring 0.
fn flat_segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: u32::MAX,
        selector,
        type_,
        present: 1,
        dpl: 0,
        // A 64-bit code segment must have D clear; data segments are 32-bit sized.
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        ..Default::default()
    }
}

/// Execute/read, accessed.
fn code_segment() -> kvm_segment {
    flat_segment(CODE_SELECTOR, 0xb, true)
}

/// Read/write, accessed.
fn data_segment() -> kvm_segment {
    flat_segment(DATA_SELECTOR, 0x3, false)
}

/// A busy 64-bit TSS: a vCPU entering long mode must have a valid task register.
fn tss_segment() -> kvm_segment {
    kvm_segment {
        base: TSS_GPA,
        limit: TSS_LIMIT,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        ..Default::default()
    }
}

/// The GDT descriptor (the low 8 bytes of it, for a system segment) of `segment`, so that the
/// GDT in guest memory says what the vCPU's segment registers hold.
fn gdt_descriptor(segment: &kvm_segment) -> u64 {
    let limit = if segment.g != 0 {
        segment.limit >> 12
    } else {
        segment.limit
    };
    let limit = u64::from(limit);
    (limit & 0xffff)
        | (segment.base & 0xff_ffff) << 16
        | u64::from(segment.type_ & 0xf) << 40
        | u64::from(segment.s & 1) << 44
        | u64::from(segment.dpl & 3) << 45
        | u64::from(segment.present & 1) << 47
        | (limit >> 16 & 0xf) << 48
        | u64::from(segment.avl & 1) << 52
        | u64::from(segment.l & 1) << 53
        | u64::from(segment.db & 1) << 54
        | u64::from(segment.g & 1) << 55
        | (segment.base >> 24 & 0xff) << 56
}

/// One touched address and where it lands in guest physical memory.
#[derive(Debug, Clone, Copy)]
struct Touch {
    gva: u64,
    gpa: u64,
}

/// Guest memory with everything the guest needs in place: page tables, GDT, code and the
/// table of addresses to touch, and for [`RunsAs::L2`] L1's code, NPT tables and L2's VMCB.
struct GuestImage {
    memory: GuestMemory,
    touches: Vec<Touch>,
    mapping: TouchMapping,
    pml4: u64,
    /// The levels of the tables KVM shadows, as the test built them: the guest's page tables
    /// for [`RunsAs::L1`], L1's NPT tables for [`RunsAs::L2`].
    shadowed_levels: Vec<u8>,
}

impl GuestImage {
    fn build(mapping: TouchMapping, count: u64, runs_as: RunsAs) -> Result<Self, GuestError> {
        let max = match mapping {
            TouchMapping::Small => MAX_SMALL_TOUCHES,
            TouchMapping::Large => MAX_LARGE_TOUCHES,
        };
        if count > max {
            return Err(GuestError::TooManyTouches {
                requested: count,
                max,
            });
        }

        let memory = GuestMemory::new(MEMORY_SIZE as usize)?;
        let mut tables = PageTableBuilder::new(&memory)?;
        for page in (GDT_GPA..ALLOCATOR_START).step_by(PAGE_SIZE as usize) {
            tables.map(page, page, TouchMapping::Small)?;
        }
        let mut touches = Vec::new();
        // Where the guest's page tables map each touch: L2's guest physical page of it.
        let mut mapped_gpas = Vec::new();
        for index in 0..count {
            let gva = TOUCH_BASE_GVA + index * LARGE_PAGE_SIZE;
            let gpa = match mapping {
                TouchMapping::Small => tables.allocate_page()?,
                TouchMapping::Large => LARGE_DATA_GPA + index * LARGE_PAGE_SIZE,
            };
            let mapped_gpa = match (runs_as, mapping) {
                (RunsAs::L2, TouchMapping::Small) => NESTED_TOUCH_GPA + index * LARGE_PAGE_SIZE,
                _ => gpa,
            };
            tables.map(gva, mapped_gpa, mapping)?;
            memory.write_u64(TOUCH_TABLE_GPA + index * 8, gva)?;
            touches.push(Touch { gva, gpa });
            mapped_gpas.push(mapped_gpa);
        }
        let pml4 = tables.pml4;
        let shadowed_levels = match runs_as {
            RunsAs::L1 => tables.levels(),
            RunsAs::L2 => {
                let npt = build_npt(&memory, &tables, count, mapping, &touches, &mapped_gpas)?;
                memory.write_bytes(VMCB_GPA, &l2_vmcb(pml4, npt.pml4))?;
                memory.write_bytes(L1_CODE_GPA, &L1_CODE)?;
                npt.levels()
            }
        };

        let gdt: [u64; GDT_ENTRIES] = [
            0,
            gdt_descriptor(&code_segment()),
            gdt_descriptor(&data_segment()),
            gdt_descriptor(&tss_segment()),
            // The upper half of the 16-byte TSS descriptor: bits 32-63 of the base.
            TSS_GPA >> 32,
        ];
        for (slot, descriptor) in (0u64..).zip(gdt) {
            memory.write_u64(GDT_GPA + slot * 8, descriptor)?;
        }
        memory.write_bytes(CODE_GPA, &GUEST_CODE)?;

        Ok(Self {
            memory,
            touches,
            mapping,
            pml4,
            shadowed_levels,
        })
    }
}

/// L1's NPT tables, which map exactly the L2 guest physical pages that L2's run reads or
/// writes, so that L2 walks every NPT table the test built: each of the guest's page tables,
/// which the CPU walks and sets accessed bits in, its code, the pages of the touch table it
/// reads, and the touches, `mapped_gpas`, in the guest's tables. Those of small touches go to
/// their data pages, a 4 KiB page each, which takes an NPT page table per touch; large touches
/// are mapped as they are, with a 2 MiB NPT page each.
fn build_npt<'m>(
    memory: &'m GuestMemory,
    guest_tables: &PageTableBuilder<'m>,
    count: u64,
    mapping: TouchMapping,
    touches: &[Touch],
    mapped_gpas: &[u64],
) -> Result<PageTableBuilder<'m>, GuestError> {
    let mut npt = PageTableBuilder::new_npt(memory, guest_tables)?;
    let touch_table_pages = (count * 8).div_ceil(PAGE_SIZE);
    let read_pages = guest_tables
        .tables
        .iter()
        .map(|table| table.gpa)
        .chain([CODE_GPA])
        .chain((0..touch_table_pages).map(|page| TOUCH_TABLE_GPA + page * PAGE_SIZE));
    for gpa in read_pages {
        npt.map(gpa, gpa, TouchMapping::Small)?;
    }
    for (touch, &mapped_gpa) in touches.iter().zip(mapped_gpas) {
        npt.map(mapped_gpa, touch.gpa, mapping)?;
    }
    Ok(npt)
}

/// The offsets in the VMCB of the fields the test sets or reads: the control area, then from
/// 0x400 the state save area (arch/x86/include/asm/svm.h; AMD APM vol. 2, appendix B).
mod vmcb {
    /// Intercept word 3, bit 31: a shutdown (triple fault) of L2 exits to L1, which tells the
    /// host, rather than end the VM.
    pub const INTERCEPTS_3: usize = 0x0c;
    pub const INTERCEPT_SHUTDOWN: u32 = 1 << 31;
    /// Intercept word 4, bit 0: KVM refuses a VMCB that does not intercept `vmrun`.
    pub const INTERCEPTS_4: usize = 0x10;
    pub const INTERCEPT_VMRUN: u32 = 1 << 0;
    /// Must not be 0.
    pub const ASID: usize = 0x58;
    pub const EXIT_CODE: usize = 0x70;
    pub const EXIT_INFO_1: usize = 0x78;
    pub const EXIT_INFO_2: usize = 0x80;
    pub const MISC_CTL: usize = 0x90;
    pub const ENABLE_NPT: u64 = 1 << 0;
    pub const NESTED_CR3: usize = 0xb0;
    const SAVE: usize = 0x400;
    /// ES, CS, SS, DS, FS, GS, GDTR, LDTR, IDTR and TR, 16 bytes each.
    pub const ES: usize = SAVE;
    pub const CS: usize = SAVE + 0x10;
    pub const SS: usize = SAVE + 0x20;
    pub const DS: usize = SAVE + 0x30;
    pub const FS: usize = SAVE + 0x40;
    pub const GS: usize = SAVE + 0x50;
    pub const GDTR: usize = SAVE + 0x60;
    pub const LDTR: usize = SAVE + 0x70;
    pub const IDTR: usize = SAVE + 0x80;
    pub const TR: usize = SAVE + 0x90;
    pub const EFER: usize = SAVE + 0xd0;
    pub const CR4: usize = SAVE + 0x148;
    pub const CR3: usize = SAVE + 0x150;
    pub const CR0: usize = SAVE + 0x158;
    pub const DR7: usize = SAVE + 0x160;
    pub const DR6: usize = SAVE + 0x168;
    pub const RFLAGS: usize = SAVE + 0x170;
    pub const RIP: usize = SAVE + 0x178;
    pub const G_PAT: usize = SAVE + 0x268;
}

/// The values DR6, DR7 and PAT have at reset, which KVM checks L2's against.
const DR6_RESET: u64 = 0xffff_0ff0;
const DR7_RESET: u64 = 0x400;
const PAT_RESET: u64 = 0x0007_0406_0007_0406;

/// A segment as the VMCB holds it: selector, attributes (the descriptor's type, S, DPL, P,
/// AVL, L, D/B and G bits, packed), limit in bytes and base.
fn vmcb_segment(segment: &kvm_segment) -> [u8; 16] {
    let attributes = if segment.unusable != 0 {
        0
    } else {
        u16::from(segment.type_ & 0xf)
            | u16::from(segment.s & 1) << 4
            | u16::from(segment.dpl & 3) << 5
            | u16::from(segment.present & 1) << 7
            | u16::from(segment.avl & 1) << 8
            | u16::from(segment.l & 1) << 9
            | u16::from(segment.db & 1) << 10
            | u16::from(segment.g & 1) << 11
    };
    let mut bytes = [0u8; 16];
    bytes[0..2].copy_from_slice(&segment.selector.to_le_bytes());
    bytes[2..4].copy_from_slice(&attributes.to_le_bytes());
    bytes[4..8].copy_from_slice(&segment.limit.to_le_bytes());
    bytes[8..16].copy_from_slice(&segment.base.to_le_bytes());
    bytes
}

/// L2's VMCB: L2 starts at the touching code in the long mode L1 is in (see
/// [`enter_long_mode`]), on the guest's page tables at `guest_pml4`, and its guest physical
/// addresses go through L1's NPT tables at `npt_pml4`.
fn l2_vmcb(guest_pml4: u64, npt_pml4: u64) -> Vec<u8> {
    fn put(vmcb: &mut [u8], offset: usize, bytes: &[u8]) {
        vmcb[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    let mut vmcb = vec![0u8; PAGE_SIZE as usize];
    put(
        &mut vmcb,
        vmcb::INTERCEPTS_3,
        &vmcb::INTERCEPT_SHUTDOWN.to_le_bytes(),
    );
    put(
        &mut vmcb,
        vmcb::INTERCEPTS_4,
        &vmcb::INTERCEPT_VMRUN.to_le_bytes(),
    );
    put(&mut vmcb, vmcb::ASID, &1u32.to_le_bytes());
    put(&mut vmcb, vmcb::MISC_CTL, &vmcb::ENABLE_NPT.to_le_bytes());
    put(&mut vmcb, vmcb::NESTED_CR3, &npt_pml4.to_le_bytes());

    let data = vmcb_segment(&data_segment());
    for offset in [vmcb::ES, vmcb::SS, vmcb::DS, vmcb::FS, vmcb::GS] {
        put(&mut vmcb, offset, &data);
    }
    put(&mut vmcb, vmcb::CS, &vmcb_segment(&code_segment()));
    put(&mut vmcb, vmcb::TR, &vmcb_segment(&tss_segment()));
    put(&mut vmcb, vmcb::LDTR, &vmcb_segment(&unusable_segment()));
    let gdtr = kvm_segment {
        base: GDT_GPA,
        limit: GDT_LIMIT,
        ..Default::default()
    };
    put(&mut vmcb, vmcb::GDTR, &vmcb_segment(&gdtr));
    // No IDT, as for L1: an exception becomes a shutdown, which exits to L1.
    put(&mut vmcb, vmcb::IDTR, &[0; 16]);
    for (offset, value) in [
        (vmcb::EFER, LONG_MODE_EFER | EFER_SVME),
        (vmcb::CR4, LONG_MODE_CR4),
        (vmcb::CR3, guest_pml4),
        (vmcb::CR0, LONG_MODE_CR0),
        (vmcb::DR7, DR7_RESET),
        (vmcb::DR6, DR6_RESET),
        (vmcb::RFLAGS, RFLAGS_RESERVED),
        (vmcb::RIP, CODE_GPA),
        (vmcb::G_PAT, PAT_RESET),
    ] {
        put(&mut vmcb, offset, &value.to_le_bytes());
    }
    vmcb
}

const LONG_MODE_CR0: u64 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
const LONG_MODE_CR4: u64 = CR4_PAE;
const LONG_MODE_EFER: u64 = EFER_LME | EFER_LMA;
const GDT_LIMIT: u32 = (GDT_ENTRIES * 8 - 1) as u32;

/// The LDT: none.
fn unusable_segment() -> kvm_segment {
    kvm_segment {
        unusable: 1,
        ..Default::default()
    }
}

/// Puts `vcpu` in 64-bit mode with the flat segments of the GDT and paging rooted at `pml4`,
/// with `extra_efer` bits besides long mode's.
fn enter_long_mode(vcpu: &VcpuFd, pml4: u64, extra_efer: u64) -> Result<(), GuestError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm_error("KVM_GET_SREGS"))?;
    let data = data_segment();
    sregs.cs = code_segment();
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = tss_segment();
    sregs.ldt = unusable_segment();
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = GDT_LIMIT as u16;
    // No IDT: any exception becomes a triple fault, which shows up as an unexpected exit.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = LONG_MODE_CR0;
    sregs.cr3 = pml4;
    sregs.cr4 = LONG_MODE_CR4;
    sregs.efer = LONG_MODE_EFER | extra_efer;
    vcpu.set_sregs(&sregs).map_err(kvm_error("KVM_SET_SREGS"))
}

/// Sets the MSR `index` of `vcpu` to `value`.
fn set_msr(vcpu: &VcpuFd, index: u32, value: u64) -> Result<(), GuestError> {
    let entry = kvm_msr_entry {
        index,
        data: value,
        ..Default::default()
    };
    // One entry is always within the wrapper's limit.
    let msrs = Msrs::from_entries(&[entry])
        .map_err(|_| kvm_error("KVM_SET_MSRS")(kvm_ioctls::Error::new(libc::E2BIG)))?;
    // KVM_SET_MSRS stops at the first MSR it refuses and returns how many it set.
    match vcpu.set_msrs(&msrs).map_err(kvm_error("KVM_SET_MSRS"))? {
        1 => Ok(()),
        _ => Err(kvm_error("KVM_SET_MSRS")(kvm_ioctls::Error::new(
            libc::EINVAL,
        ))),
    }
}

/// The number of levels of KVM's own NPT, which the root KVM gives L2 has: SVM's NPT walks as
/// many levels as the host's paging has, so KVM forces its root level to that (get_npt_level(),
/// kvm_configure_mmu()), 5 on a host with 5-level paging, else 4.
fn nested_root_level() -> u8 {
    if host::has_5level_paging() { 5 } else { 4 }
}

/// A VM with one vCPU running the touching guest.
pub struct TestVm {
    // Field order is drop order: the vCPU and the VM go before the memory they use.
    vcpu: VcpuFd,
    vm: VmFd,
    smram: Option<GuestMemory>,
    memory: GuestMemory,
    touches: Vec<Touch>,
    mapping: TouchMapping,
    runs_as: RunsAs,
    shadowed_levels: Vec<u8>,
    /// Whether the vCPU is in L2, where it stays once L1 entered it, between the runs too.
    in_l2: bool,
}

impl TestVm {
    /// A VM whose guest, or its L2 as `runs_as` says, touches `count` addresses mapped as
    /// `mapping` says.
    pub fn new(
        kvm: &Kvm,
        mapping: TouchMapping,
        count: u64,
        runs_as: RunsAs,
    ) -> Result<Self, GuestError> {
        let image = GuestImage::build(mapping, count, runs_as)?;

        let vm = kvm.create_vm().map_err(kvm_error("KVM_CREATE_VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEMORY_SIZE,
            userspace_addr: image.memory.host.as_ptr() as u64,
        };
        // SAFETY: the region is the mapping `image.memory` owns, which outlives the VM (field
        // order of `TestVm`), so KVM never sees it unmapped while the guest can run.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION"))?;

        let vcpu = vm.create_vcpu(0).map_err(kvm_error("KVM_CREATE_VCPU"))?;
        // KVM refuses long mode in the sregs unless the vCPU's CPUID has it, and EFER.SVME
        // unless it has SVM.
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_error("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(kvm_error("KVM_SET_CPUID2"))?;
        let mut shadowed_levels = image.shadowed_levels;
        match runs_as {
            RunsAs::L1 => enter_long_mode(&vcpu, image.pml4, 0)?,
            RunsAs::L2 => {
                enter_long_mode(&vcpu, image.pml4, EFER_SVME)?;
                set_msr(&vcpu, MSR_VM_HSAVE_PA, HOST_SAVE_GPA)?;
                // KVM's root for L2 has the level of its own NPT, whatever L1's (see
                // kvm_init_shadow_npt_mmu()): a 5-level one over the test's 4-level NPT
                // tables is a page of its own, above the one that shadows the NPT's PML4.
                if nested_root_level() == 5 {
                    shadowed_levels.insert(0, 5);
                }
            }
        }

        Ok(Self {
            vcpu,
            vm,
            smram: None,
            memory: image.memory,
            touches: image.touches,
            mapping: image.mapping,
            runs_as,
            shadowed_levels,
            in_l2: false,
        })
    }

    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Which guest touches the addresses.
    pub fn runs_as(&self) -> RunsAs {
        self.runs_as
    }

    /// How many page tables KVM shadows for the run: the guest's own (PML4, PDPTs, PDs, PTs)
    /// for [`RunsAs::L1`], L1's NPT tables for [`RunsAs::L2`].
    pub fn shadowed_table_pages(&self) -> u64 {
        self.shadowed_levels.len() as u64
    }

    /// The level of each page table KVM shadows for the run, in the order the test built them,
    /// root first. For [`RunsAs::L1`], that is the order in which the run first walks them:
    /// the PML4, the tables of the low memory its code is in, then those of each touch in turn.
    /// For [`RunsAs::L2`], on a host whose NPT has 5 levels, a level-5 root comes first, which
    /// shadows no table of the test's (see [`TestVm::new`]).
    pub fn shadowed_table_levels(&self) -> &[u8] {
        &self.shadowed_levels
    }

    /// How the touched addresses are mapped.
    pub fn mapping(&self) -> TouchMapping {
        self.mapping
    }

    /// How many addresses the guest touches, each in a 2 MiB region of its own.
    pub fn touches(&self) -> u64 {
        self.touches.len() as u64
    }

    /// Runs the guest from the start until it has touched every address, and checks that
    /// every touch reached guest memory. For [`RunsAs::L2`], the first run starts in L1, which
    /// enters L2 at the touching code; later ones start that code over in L2, where the vCPU
    /// stays, as the registers that KVM_SET_REGS sets are L2's while it is in L2.
    pub fn run(&mut self) -> Result<(), GuestError> {
        // Cleared first so that a second run is checked as strictly as the first.
        for touch in &self.touches {
            self.memory.write_u64(touch.gpa, 0)?;
        }
        let enter_l2 = self.runs_as == RunsAs::L2 && !self.in_l2;
        let regs = kvm_regs {
            rip: if enter_l2 { L1_CODE_GPA } else { CODE_GPA },
            rax: if enter_l2 { VMCB_GPA } else { 0 },
            rsi: TOUCH_TABLE_GPA,
            rcx: self.touches.len() as u64,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        };
        self.vcpu
            .set_regs(&regs)
            .map_err(kvm_error("KVM_SET_REGS"))?;

        self.run_until(|exit| matches!(exit, VcpuExit::IoOut(DONE_PORT, _)))?;
        // Only L2 runs the touching code that writes to DONE_PORT.
        self.in_l2 = self.runs_as == RunsAs::L2;

        for touch in &self.touches {
            let found = self.memory.read_u64(touch.gpa)?;
            if found != touch.gva {
                return Err(GuestError::TouchMissed {
                    gva: touch.gva,
                    gpa: touch.gpa,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Adds `region` to the VM's memslots.
    ///
    /// # Safety
    ///
    /// `region` must be memory that outlives the VM, as the fields of `TestVm` do.
    unsafe fn add_memory(&self, region: kvm_userspace_memory_region) -> Result<(), GuestError> {
        // SAFETY: the caller's promise.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Takes an SMI after a [`Self::run`]: the handler writes to `regions` 2 MiB regions of the
    /// guest's memory through the SMM address space, with paging off, and the vCPU stops in SMM
    /// as the handler reads from [`SMM_SYNC_PORT`]. Checks that every write reached memory.
    pub fn take_smi(&mut self, regions: u64) -> Result<(), GuestError> {
        if regions > MAX_SMM_TOUCHES {
            return Err(GuestError::TooManyTouches {
                requested: regions,
                max: MAX_SMM_TOUCHES,
            });
        }
        let touched = |index: u64| LARGE_DATA_GPA + index * LARGE_PAGE_SIZE;
        for index in 0..regions {
            self.memory.write_u64(touched(index), 0)?;
        }
        if self.smram.is_none() {
            self.add_smram()?;
        }
        if let Some(smram) = &self.smram {
            smram.write_bytes(SMI_HANDLER_OFFSET, &smi_handler(regions as u16))?;
        }
        self.vcpu.smi().map_err(kvm_error("KVM_SMI"))?;
        self.run_until(|exit| matches!(exit, VcpuExit::IoIn(SMM_SYNC_PORT, _)))?;

        for index in 0..regions {
            let found = self.memory.read_u64(touched(index))?;
            if found != u64::from(SMM_TOUCH_MARK) {
                return Err(GuestError::TouchMissed {
                    gva: touched(index),
                    gpa: touched(index),
                    found,
                });
            }
        }
        Ok(())
    }

    /// Gives the VM SMRAM, at SMBASE, and the SMM address space a view of the guest's memory.
    fn add_smram(&mut self) -> Result<(), GuestError> {
        let smram = self.smram.insert(GuestMemory::new(SMRAM_SIZE as usize)?);
        let smram_region = kvm_userspace_memory_region {
            slot: SMRAM_SLOT,
            flags: 0,
            guest_phys_addr: SMRAM_GPA,
            memory_size: SMRAM_SIZE,
            userspace_addr: smram.host.as_ptr() as u64,
        };
        let memory_region = kvm_userspace_memory_region {
            slot: SMM_MEMORY_SLOT,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEMORY_SIZE,
            userspace_addr: self.memory.host.as_ptr() as u64,
        };
        // SAFETY: `smram`, never replaced once set, and `memory` are owned by `self` and
        // outlive the VM (field order of `TestVm`).
        unsafe {
            self.add_memory(smram_region)?;
            self.add_memory(memory_region)?;
        }
        set_msr(&self.vcpu, MSR_IA32_SMBASE, SMRAM_GPA)
    }

    /// Whether the vCPU is in SMM.
    pub fn in_smm(&self) -> Result<bool, GuestError> {
        let events = self
            .vcpu
            .get_vcpu_events()
            .map_err(kvm_error("KVM_GET_VCPU_EVENTS"))?;
        Ok(events.smi.smm != 0)
    }

    /// Lets the SMI handler return, to the `hlt` after the guest's last run.
    pub fn leave_smm(&mut self) -> Result<(), GuestError> {
        self.run_until(|exit| matches!(exit, VcpuExit::Hlt))
    }

    /// Runs the vCPU until an exit that `expected` accepts; any other is an error.
    fn run_until(&mut self, expected: impl Fn(&VcpuExit) -> bool) -> Result<(), GuestError> {
        loop {
            let exit = match self.vcpu.run() {
                Ok(exit) if expected(&exit) => return Ok(()),
                Ok(VcpuExit::IoOut(L2_EXITED_PORT, _)) => {
                    self.in_l2 = false;
                    return Err(self.l2_exit());
                }
                Ok(exit) => format!("{exit:?}"),
                // A signal interrupted KVM_RUN; the guest simply goes on.
                Err(error) if error.errno() == libc::EINTR => continue,
                Err(error) => return Err(kvm_error("KVM_RUN")(error)),
            };
            let rip = self.vcpu.get_regs().map_err(kvm_error("KVM_GET_REGS"))?.rip;
            return Err(GuestError::UnexpectedExit { exit, rip });
        }
    }

    /// Why L2 exited to L1, from the VMCB.
    fn l2_exit(&self) -> GuestError {
        let field = |offset: usize| self.memory.read_u64(VMCB_GPA + offset as u64);
        match (
            field(vmcb::EXIT_CODE),
            field(vmcb::EXIT_INFO_1),
            field(vmcb::EXIT_INFO_2),
        ) {
            (Ok(code), Ok(info1), Ok(info2)) => GuestError::L2Exited { code, info1, info2 },
            (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => error,
        }
    }

    /// Deletes the SMM address space's view of the guest's memory, which makes KVM zap every
    /// shadow page, as any memslot deletion does.
    pub fn delete_smm_memory(&self) -> Result<(), GuestError> {
        let region = kvm_userspace_memory_region {
            slot: SMM_MEMORY_SLOT,
            memory_size: 0,
            ..Default::default()
        };
        // SAFETY: a zero-sized region deletes the slot; KVM stops using the memory.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION (delete)"))
    }

    /// Deletes the guest's only memslot, which makes KVM zap the shadow pages of its memory.
    /// The guest cannot run afterwards.
    pub fn delete_memory(&self) -> Result<(), GuestError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            memory_size: 0,
            ..Default::default()
        };
        // SAFETY: a zero-sized region deletes the slot; KVM stops using the memory.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_error("KVM_SET_USER_MEMORY_REGION (delete)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_descriptors_match_the_classic_encodings() {
        assert_eq!(gdt_descriptor(&code_segment()), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_descriptor(&data_segment()), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_descriptor(&tss_segment()), 0x0000_8b00_2000_0067);
    }

    #[test]
    fn small_touches_each_add_a_page_table() {
        let memory = GuestMemory::new(MEMORY_SIZE as usize).expect("mmap");
        let mut tables = PageTableBuilder::new(&memory).expect("builder");
        tables
            .map(GDT_GPA, GDT_GPA, TouchMapping::Small)
            .expect("map");
        // PML4, PDPT, PD and PT for the low memory.
        assert_eq!(tables.levels(), [4, 3, 2, 1]);
        for index in 0..3 {
            let gva = TOUCH_BASE_GVA + index * LARGE_PAGE_SIZE;
            tables.map(gva, 0x8000, TouchMapping::Small).expect("map");
        }
        // A PD for the second GiB and a PT per touch.
        assert_eq!(tables.levels(), [4, 3, 2, 1, 2, 1, 1, 1]);
        for index in 3..6 {
            let gva = TOUCH_BASE_GVA + index * LARGE_PAGE_SIZE;
            tables
                .map(gva, LARGE_DATA_GPA, TouchMapping::Large)
                .expect("map");
        }
        // Large pages need no page table below the PD.
        assert_eq!(tables.levels(), [4, 3, 2, 1, 2, 1, 1, 1]);
    }

    #[test]
    fn l2_touches_each_add_an_npt_page_table() {
        let small = GuestImage::build(TouchMapping::Small, 3, RunsAs::L2).expect("image");
        // L1's NPT PML4, PDPT, PD and page table of the low memory, where the guest's tables,
        // code and touch table are, a PD for L2's touches from 4 GiB on and a page table each.
        assert_eq!(small.shadowed_levels, [4, 3, 2, 1, 2, 1, 1, 1]);
        let large = GuestImage::build(TouchMapping::Large, 3, RunsAs::L2).expect("image");
        // 2 MiB NPT pages, in the PD of the low memory, need no NPT page table.
        assert_eq!(large.shadowed_levels, [4, 3, 2, 1]);
        // Shadow paging shadows the guest's own tables instead.
        let l1 = GuestImage::build(TouchMapping::Small, 3, RunsAs::L1).expect("image");
        assert_eq!(l1.shadowed_levels, [4, 3, 2, 1, 2, 1, 1, 1]);
    }

    #[test]
    fn l2_touches_land_on_their_data_pages() {
        let image = GuestImage::build(TouchMapping::Small, 2, RunsAs::L2).expect("image");
        let npt_pml4 = image
            .memory
            .read_u64(VMCB_GPA + vmcb::NESTED_CR3 as u64)
            .expect("nested CR3");
        // Walks the NPT for the L2 guest physical page of touch 1.
        let mut table = npt_pml4;
        let l2_gpa = NESTED_TOUCH_GPA + LARGE_PAGE_SIZE;
        for level in (1..=4).rev() {
            let index = (l2_gpa >> (12 + 9 * (level - 1))) & 0x1ff;
            let entry = image.memory.read_u64(table + index * 8).expect("entry");
            assert_eq!(
                entry & 7,
                PTE_PRESENT | PTE_WRITABLE | PTE_USER,
                "level {level}"
            );
            table = entry & PTE_ADDRESS_MASK;
        }
        assert_eq!(table, image.touches[1].gpa);
    }

    #[test]
    fn vmcb_segments_say_what_the_gdt_says() {
        for segment in [code_segment(), data_segment(), tss_segment()] {
            let descriptor = gdt_descriptor(&segment);
            let vmcb = vmcb_segment(&segment);
            let attributes = u64::from(u16::from_le_bytes([vmcb[2], vmcb[3]]));
            assert_eq!(
                attributes,
                (descriptor >> 40 & 0xff) | (descriptor >> 52 & 0xf) << 8,
                "{segment:?}"
            );
        }
        assert_eq!(vmcb_segment(&unusable_segment()), [0; 16]);
    }

    #[test]
    fn guest_memory_accesses_are_bounds_checked() {
        let memory = GuestMemory::new(MEMORY_SIZE as usize).expect("mmap");
        memory.write_u64(MEMORY_SIZE - 8, 7).expect("last word");
        assert_eq!(memory.read_u64(MEMORY_SIZE - 8).expect("last word"), 7);
        assert!(matches!(
            memory.read_u64(MEMORY_SIZE - 4),
            Err(GuestError::OutsideGuestMemory { .. })
        ));
        assert!(matches!(
            memory.write_u64(u64::MAX, 0),
            Err(GuestError::OutsideGuestMemory { .. })
        ));
    }
}
