// SPDX-License-Identifier: GPL-2.0-only
/*
 * shadow_mmu_stats_test
 *
 * Test the mmu_shadow_pages VM stat, KVM x86's count of shadow MMU pages:
 * direct and indirect shadow pages, never TDP MMU pages.  The count must
 * follow what KVM shadows (the guest's page tables under shadow paging, L1's
 * NPT tables under nested NPT, guest huge pages that small host pages back),
 * drop when KVM zaps, agree between the binary stats fd and debugfs, vanish
 * with its VM, and stay exact when kvm_shadow_stats.ko takes the accounting
 * over from KVM, or hands it back, while VMs hold shadow pages, or fails to
 * load because an allocation failed.
 *
 * Every guest touches the first page of each of a number of 2MiB regions, so
 * that each touch needs a page table (or, under a 2MiB guest mapping, a
 * direct shadow page) of its own, and a count can be checked against the
 * page tables the test itself built.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "test_util.h"
#include "kvm_util.h"
#include "processor.h"
#include "svm_util.h"
#include "kselftest_harness.h"

#define TEST_SLOT		1
#define TEST_GPA		BIT_ULL(30)
/* A PML4 entry of its own: the tables below it serve the test alone. */
#define TEST_GVA		BIT_ULL(39)
#define REGION_SIZE		PG_SIZE_2M

#define NR_REGIONS		16
#define MANY_REGIONS		128

/* KVM_SET_NR_MMU_PAGES refuses anything lower. */
#define KVM_MIN_MMU_PAGES	64
/* Room for all shadow pages of any VM here: nothing gets recycled. */
#define AMPLE_MMU_PAGES		(8UL * MANY_REGIONS)

/* Far above any real count, far below one that went "negative". */
#define SANE_SHADOW_PAGES	BIT_ULL(40)

#define KVM_DEBUGFS		"/sys/kernel/debug/kvm"
#define MODULE_NAME		"kvm_shadow_stats"
#define MODULE_ENV		"KVM_SHADOW_STATS_MODULE"

#define FAULT_DEBUGFS		"/sys/kernel/debug"
/* Far more fault-injectable allocations than one module load makes. */
#define MAX_LOAD_ALLOCATIONS	20000
/* How many of a load's last allocations, how often, to fail at most. */
#define TAIL_ALLOCATIONS	32
#define TAIL_ROUNDS		16
/* What the module logs when its init fails. */
#define MODULE_INIT_FAILED	"cannot take over shadow page accounting"

enum touch_mapping {
	/* One 4KiB page per region: one guest page table each. */
	MAP_4K,
	/* 2MiB guest pages over 4KiB host pages: no guest page table below. */
	MAP_2M,
	/* MAP_4K, touched by L2, through one L1 NPT page table per region. */
	MAP_4K_NESTED,
};

/* How many regions the next pass touches, written by the host. */
static int nr_touch;

/* One pass over the regions per GUEST_SYNC, in L1 or in L2 alike. */
static void guest_touch_regions(void)
{
	int i;

	for (;;) {
		for (i = 0; i < READ_ONCE(nr_touch); i++)
			READ_ONCE(*(u64 *)(TEST_GVA + i * REGION_SIZE));
		GUEST_SYNC(i);
	}
}

static void l1_guest_code(struct svm_test_data *svm)
{
	generic_svm_setup(svm, guest_touch_regions);
	run_guest(svm->vmcb, svm->vmcb_gpa);

	/* L2 neither calls L1 nor does anything L1 intercepts. */
	GUEST_FAIL("L2 exited to L1, exit code 0x%lx",
		   svm->vmcb->control.exit_code);
}

static bool have_nested_npt(void)
{
	return kvm_cpu_has(X86_FEATURE_SVM) && kvm_cpu_has_npt();
}

static struct kvm_vm *create_touch_vm(struct kvm_vcpu **vcpu, int nr_regions,
				      enum touch_mapping mapping)
{
	bool nested = mapping == MAP_4K_NESTED;
	u64 slot_pages = nr_regions * REGION_SIZE / PAGE_SIZE;
	struct kvm_vm *vm;
	gva_t svm_gva;
	int i;

	/*
	 * The extra pages only size memslot 0's room for page tables, which
	 * holds a stage-1 and, if nested, an NPT table page per region.
	 */
	vm = __vm_create_with_one_vcpu(vcpu, 2 * slot_pages,
				       nested ? (void *)l1_guest_code :
						(void *)guest_touch_regions);
	if (nested) {
		vm_enable_tdp(vm);
		vcpu_alloc_svm(vm, &svm_gva);
		vcpu_args_set(*vcpu, 1, svm_gva);
	}

	/* Anonymous memory is madvised NOHUGEPAGE: KVM maps it 4KiB at most. */
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, TEST_GPA,
				    TEST_SLOT, slot_pages, 0);

	if (mapping == MAP_2M)
		virt_map_level(vm, TEST_GVA, TEST_GPA, nr_regions * REGION_SIZE,
			       PG_LEVEL_2M);
	else
		for (i = 0; i < nr_regions; i++)
			virt_pg_map(vm, TEST_GVA + i * REGION_SIZE,
				    TEST_GPA + i * REGION_SIZE);

	/* L2 uses L1's page tables, so L2 and L1 GPAs must be the same. */
	if (nested) {
		tdp_identity_map_default_memslots(vm);
		for (i = 0; i < nr_regions; i++)
			tdp_map(vm, TEST_GPA + i * REGION_SIZE,
				TEST_GPA + i * REGION_SIZE, PAGE_SIZE);
	}
	return vm;
}

static void touch_regions(struct kvm_vcpu *vcpu, int nr)
{
	struct ucall uc;

	nr_touch = nr;
	sync_global_to_guest(vcpu->vm, nr_touch);
	vcpu_run(vcpu);

	switch (get_ucall(vcpu, &uc)) {
	case UCALL_SYNC:
		TEST_ASSERT(uc.args[1] == nr,
			    "Guest touched %lu regions, expected %d",
			    uc.args[1], nr);
		break;
	case UCALL_ABORT:
		REPORT_GUEST_ASSERT(uc);
	default:
		TEST_FAIL("Unexpected exit: %s",
			  exit_reason_str(vcpu->run->exit_reason));
	}
}

/*
 * Count the distinct page-table pages, root included, that @mmu walks for
 * the first @nr regions from @base.
 */
static int count_table_pages(struct kvm_vm *vm, struct kvm_mmu *mmu, u64 base,
			     int nr)
{
	gpa_t tables[MANY_REGIONS * PG_LEVEL_256T];
	int nr_tables = 0, level, i, t;
	gpa_t table;
	u64 addr, *pte;

	TEST_ASSERT(nr <= MANY_REGIONS, "Cannot walk %d regions", nr);

	for (i = 0; i < nr; i++) {
		addr = base + i * REGION_SIZE;
		table = mmu->pgd;

		for (level = mmu->pgtable_levels; ; level--) {
			for (t = 0; t < nr_tables && tables[t] != table; t++)
				;
			if (t == nr_tables)
				tables[nr_tables++] = table;

			pte = (u64 *)addr_gpa2hva(vm, table) +
			      ((addr >> PG_LEVEL_SHIFT(level)) & 0x1ff);
			TEST_ASSERT(is_present_pte(mmu, pte),
				    "No level-%d entry for 0x%lx", level, addr);
			if (level == PG_LEVEL_4K || is_huge_pte(mmu, pte))
				break;
			table = PTE_GET_PA(*pte);
		}
	}
	return nr_tables;
}

static u64 shadow_pages(struct kvm_vm *vm)
{
	u64 count = vm_get_stat(vm, mmu_shadow_pages);

	TEST_ASSERT(count < SANE_SHADOW_PAGES,
		    "mmu_shadow_pages is 0x%lx, expected < 0x%llx: it went below zero",
		    count, SANE_SHADOW_PAGES);
	return count;
}

static void assert_shadow_pages_at_least(struct kvm_vm *vm, u64 min,
					 const char *why)
{
	u64 count = shadow_pages(vm);

	/* Recycling under the page limit could legitimately undercut @min. */
	TEST_ASSERT_EQ(vm_get_stat(vm, mmu_recycled), 0);
	TEST_ASSERT(count >= min,
		    "mmu_shadow_pages is %lu, expected at least %lu (%s)",
		    count, min, why);
}

static bool have_kvm_debugfs(void)
{
	return !access(KVM_DEBUGFS "/mmu_shadow_pages", R_OK);
}

static void write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	ssize_t len = strlen(value);

	TEST_ASSERT(fd >= 0, "Failed to open %s", path);
	TEST_ASSERT(write(fd, value, len) == len,
		    "Failed to write '%s' to %s", value, path);
	close(fd);
}

static void read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t len;

	TEST_ASSERT(fd >= 0, "Failed to open %s", path);
	len = read(fd, buf, size - 1);
	TEST_ASSERT(len > 0, "Failed to read %s", path);
	buf[len] = '\0';
	close(fd);
}

static u64 read_debugfs_count(const char *path)
{
	char buf[32], *end;
	u64 count;

	read_file(path, buf, sizeof(buf));
	errno = 0;
	count = strtoull(buf, &end, 10);
	TEST_ASSERT(!errno && end != buf && *end == '\n',
		    "%s holds '%s', expected a decimal count", path, buf);
	TEST_ASSERT(count < SANE_SHADOW_PAGES,
		    "%s is 0x%lx, expected < 0x%llx: it went below zero",
		    path, count, SANE_SHADOW_PAGES);
	return count;
}

/* KVM names a VM's debugfs directory after its creator's PID and VM fd. */
static void vm_debugfs_path(struct kvm_vm *vm, const char *file, char *path,
			    size_t size)
{
	snprintf(path, size, KVM_DEBUGFS "/%d-%d/%s", getpid(), vm->fd, file);
}

static u64 vm_debugfs_shadow_pages(struct kvm_vm *vm)
{
	char path[PATH_MAX];

	vm_debugfs_path(vm, "mmu_shadow_pages", path, sizeof(path));
	return read_debugfs_count(path);
}

static u64 global_shadow_pages(void)
{
	return read_debugfs_count(KVM_DEBUGFS "/mmu_shadow_pages");
}

/* Return how many VMs have a debugfs directory, and their counts' sum. */
static int sum_vm_debugfs_shadow_pages(u64 *sum)
{
	char path[PATH_MAX], tail;
	struct dirent *dent;
	int nr_vms = 0, pid, fd;
	DIR *dir;

	dir = opendir(KVM_DEBUGFS);
	TEST_ASSERT(dir, "Failed to open " KVM_DEBUGFS);

	*sum = 0;
	while ((dent = readdir(dir))) {
		if (sscanf(dent->d_name, "%d-%d%c", &pid, &fd, &tail) != 2)
			continue;
		snprintf(path, sizeof(path), KVM_DEBUGFS "/%s/mmu_shadow_pages",
			 dent->d_name);
		*sum += read_debugfs_count(path);
		nr_vms++;
	}
	closedir(dir);
	return nr_vms;
}

/* Return the VM's count, once its debugfs file agrees with its stats fd. */
static u64 checked_shadow_pages(struct kvm_vm *vm)
{
	u64 count = shadow_pages(vm), vm_debugfs = vm_debugfs_shadow_pages(vm);

	TEST_ASSERT(vm_debugfs == count,
		    "Per-VM debugfs mmu_shadow_pages is %lu, expected %lu as in the stats fd",
		    vm_debugfs, count);
	return count;
}

/* Return how many VMs the global count sums up. */
static int assert_global_is_sum_of_vms(void)
{
	u64 global = global_shadow_pages(), sum;
	int nr_vms = sum_vm_debugfs_shadow_pages(&sum);

	TEST_ASSERT(global == sum,
		    "Global mmu_shadow_pages is %lu, expected %lu, the sum over %d VMs",
		    global, sum, nr_vms);
	return nr_vms;
}

/*
 * The VM that makes shadow pages in this configuration: the guest's own page
 * tables under shadow paging, L1's NPT tables for L2 under TDP.  NULL if
 * neither is possible.
 */
static struct kvm_vm *create_busy_vm(struct kvm_vcpu **vcpu, int nr_regions)
{
	if (!kvm_is_tdp_enabled())
		return create_touch_vm(vcpu, nr_regions, MAP_4K);
	if (!have_nested_npt())
		return NULL;
	return create_touch_vm(vcpu, nr_regions, MAP_4K_NESTED);
}

#define BUSY_VM_SKIP_REASON \
	"TDP is enabled and nested NPT is unavailable: no VM can have shadow pages"

TEST(shadow_paging)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 count, global;
	int nr_tables;

	if (kvm_is_tdp_enabled())
		SKIP(return, "Needs shadow paging, i.e. kvm_amd.npt=0 or kvm_intel.ept=0");
	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	vm = create_touch_vm(&vcpu, NR_REGIONS, MAP_4K);
	TEST_ASSERT_EQ(shadow_pages(vm), 0);

	touch_regions(vcpu, NR_REGIONS);
	nr_tables = count_table_pages(vm, &vm->mmu, TEST_GVA, NR_REGIONS);
	assert_shadow_pages_at_least(vm, nr_tables,
				     "one per guest page table walked");

	count = checked_shadow_pages(vm);
	if (assert_global_is_sum_of_vms() == 1) {
		global = global_shadow_pages();
		TEST_ASSERT(global == count,
			    "Global mmu_shadow_pages is %lu, expected %lu, the only VM's",
			    global, count);
	}

	kvm_vm_free(vm);
}

TEST(tdp_mmu)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 count;
	int pass;

	if (!kvm_is_tdp_enabled())
		SKIP(return, "Needs TDP, i.e. kvm_amd.npt=1 or kvm_intel.ept=1");
	if (!get_kvm_param_bool("tdp_mmu"))
		SKIP(return, "kvm.tdp_mmu=0: TDP pages are shadow MMU pages");

	vm = create_touch_vm(&vcpu, NR_REGIONS, MAP_4K);
	for (pass = 0; pass < 2; pass++) {
		touch_regions(vcpu, NR_REGIONS);
		count = shadow_pages(vm);
		TEST_ASSERT(count == 0,
			    "mmu_shadow_pages is %lu after pass %d, expected 0",
			    count, pass);
	}
	kvm_vm_free(vm);
}

TEST(nested_npt)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int nr_tables;

	if (!kvm_is_tdp_enabled())
		SKIP(return, "Needs TDP, i.e. kvm_amd.npt=1");
	if (!have_nested_npt())
		SKIP(return, "Needs nested SVM with NPT (kvm_amd.nested=1)");

	vm = create_touch_vm(&vcpu, NR_REGIONS, MAP_4K_NESTED);
	TEST_ASSERT_EQ(shadow_pages(vm), 0);

	touch_regions(vcpu, NR_REGIONS);
	nr_tables = count_table_pages(vm, &vm->stage2_mmu, TEST_GPA, NR_REGIONS);
	assert_shadow_pages_at_least(vm, nr_tables,
				     "one per L1 NPT page table walked");

	kvm_vm_free(vm);
}

TEST(direct_shadow_pages)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int nr_tables;

	if (kvm_is_tdp_enabled())
		SKIP(return, "Needs shadow paging, i.e. kvm_amd.npt=0 or kvm_intel.ept=0");

	vm = create_touch_vm(&vcpu, NR_REGIONS, MAP_2M);
	touch_regions(vcpu, NR_REGIONS);

	/*
	 * Counting only the guest's page tables would stop at a few pages: the
	 * 2MiB mapping has none below its page directory.  Each region needs
	 * a direct shadow page on top, to map it with 4KiB host pages.
	 */
	nr_tables = count_table_pages(vm, &vm->mmu, TEST_GVA, NR_REGIONS);
	assert_shadow_pages_at_least(vm, nr_tables + NR_REGIONS,
				     "the guest page tables walked plus a direct page per region");

	kvm_vm_free(vm);
}

TEST(limit_and_memslot_zap)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 before, limit, count;

	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	touch_regions(vcpu, MANY_REGIONS);

	before = shadow_pages(vm);
	limit = before / 2;
	TEST_ASSERT(limit >= KVM_MIN_MMU_PAGES,
		    "mmu_shadow_pages is %lu, expected at least %u to halve",
		    before, 2 * KVM_MIN_MMU_PAGES);

	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)limit);
	count = shadow_pages(vm);
	TEST_ASSERT(count <= limit,
		    "mmu_shadow_pages is %lu after lowering the limit from %lu, expected at most %lu",
		    count, before, limit);

	/*
	 * Faults recycle pages to stay under the limit, but only ensure one
	 * free page before a walk that may allocate a page per paging level.
	 * Not so for L2: zapping a nested TDP page zaps its subtree along, and
	 * KVM adopts the count left over, not the limit asked for, as the new
	 * limit, which leaves L2 no room to fault (KVM_RUN fails, ENOSPC).
	 */
	if (!kvm_is_tdp_enabled()) {
		touch_regions(vcpu, MANY_REGIONS);
		count = shadow_pages(vm);
		TEST_ASSERT(count <= limit + vm->mmu.pgtable_levels - 1,
			    "mmu_shadow_pages is %lu after touching all regions again, expected at most %lu",
			    count, limit + vm->mmu.pgtable_levels - 1);
	}

	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)AMPLE_MMU_PAGES);
	touch_regions(vcpu, MANY_REGIONS);
	before = shadow_pages(vm);

	/*
	 * Deleting any memslot zaps every shadow page but in-use roots
	 * (KVM_X86_QUIRK_SLOT_ZAP_ALL), a lowest-level one per region among
	 * them.
	 */
	vm_mem_region_delete(vm, TEST_SLOT);
	count = shadow_pages(vm);
	TEST_ASSERT(count + MANY_REGIONS <= before,
		    "mmu_shadow_pages is %lu after deleting a memslot, expected at most %lu - %u",
		    count, before, MANY_REGIONS);

	kvm_vm_free(vm);
}

TEST(two_vms)
{
	struct kvm_vcpu *busy_vcpu, *idle_vcpu;
	struct kvm_vm *busy, *idle;
	u64 count;

	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	busy = create_busy_vm(&busy_vcpu, NR_REGIONS);
	if (!busy)
		SKIP(return, BUSY_VM_SKIP_REASON);
	idle = create_touch_vm(&idle_vcpu, NR_REGIONS, MAP_4K);

	touch_regions(busy_vcpu, NR_REGIONS);

	count = checked_shadow_pages(busy);
	TEST_ASSERT(count > 0, "Busy VM's mmu_shadow_pages is 0, expected > 0");
	count = checked_shadow_pages(idle);
	TEST_ASSERT(count == 0, "Idle VM's mmu_shadow_pages is %lu, expected 0",
		    count);
	assert_global_is_sum_of_vms();

	kvm_vm_free(idle);
	kvm_vm_free(busy);
}

TEST(teardown)
{
	char dir[PATH_MAX];
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 before, global, count;

	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	before = global_shadow_pages();
	vm = create_busy_vm(&vcpu, NR_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);

	touch_regions(vcpu, NR_REGIONS);
	count = shadow_pages(vm);
	global = global_shadow_pages();
	TEST_ASSERT(global == before + count,
		    "Global mmu_shadow_pages is %lu, expected %lu + this VM's %lu",
		    global, before, count);

	vm_debugfs_path(vm, "", dir, sizeof(dir));
	TEST_ASSERT(!access(dir, F_OK), "%s is missing", dir);

	kvm_vm_free(vm);

	TEST_ASSERT(access(dir, F_OK) && errno == ENOENT,
		    "%s outlived its VM", dir);
	global = global_shadow_pages();
	TEST_ASSERT(global == before,
		    "Global mmu_shadow_pages is %lu after the VM's end, expected %lu",
		    global, before);
}

TEST(stats_descriptor)
{
	struct kvm_stats_header header;
	struct kvm_stats_desc *descs, *desc = NULL;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 value, vm_debugfs;
	int stats_fd, i;
	ssize_t ret;

	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	vm = create_busy_vm(&vcpu, NR_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	touch_regions(vcpu, NR_REGIONS);

	stats_fd = vm_get_stats_fd(vm);
	read_stats_header(stats_fd, &header);
	descs = read_stats_descriptors(stats_fd, &header);
	for (i = 0; i < header.num_desc && !desc; i++)
		if (!strcmp(get_stats_descriptor(descs, i, &header)->name,
			    "mmu_shadow_pages"))
			desc = get_stats_descriptor(descs, i, &header);
	TEST_ASSERT(desc, "No mmu_shadow_pages among %u stats", header.num_desc);

	TEST_ASSERT((desc->flags & KVM_STATS_TYPE_MASK) == KVM_STATS_TYPE_INSTANT,
		    "Type is 0x%x, expected KVM_STATS_TYPE_INSTANT (0x%x)",
		    desc->flags & KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_INSTANT);
	TEST_ASSERT((desc->flags & KVM_STATS_UNIT_MASK) == KVM_STATS_UNIT_NONE,
		    "Unit is 0x%x, expected KVM_STATS_UNIT_NONE (0x%x)",
		    desc->flags & KVM_STATS_UNIT_MASK, KVM_STATS_UNIT_NONE);
	TEST_ASSERT((desc->flags & KVM_STATS_BASE_MASK) == KVM_STATS_BASE_POW10,
		    "Base is 0x%x, expected KVM_STATS_BASE_POW10 (0x%x)",
		    desc->flags & KVM_STATS_BASE_MASK, KVM_STATS_BASE_POW10);
	TEST_ASSERT(desc->exponent == 0, "Exponent is %d, expected 0",
		    desc->exponent);
	TEST_ASSERT(desc->size == 1, "Size is %u, expected 1", desc->size);

	ret = pread(stats_fd, &value, sizeof(value),
		    header.data_offset + desc->offset);
	TEST_ASSERT(ret == sizeof(value), "Read %ld bytes of the value, expected %lu",
		    ret, sizeof(value));
	vm_debugfs = vm_debugfs_shadow_pages(vm);
	TEST_ASSERT(value == vm_debugfs,
		    "Binary stats value is %lu, expected %lu as in debugfs",
		    value, vm_debugfs);

	free(descs);
	close(stats_fd);
	kvm_vm_free(vm);
}

/*
 * The workload around a handover: grow, grow more, zap down to the lowest
 * limit, then lift the limit and grow back.  The module changes hands after
 * the first and the third step, with shadow pages on either side of each.
 */
static const struct {
	int nr_touch;
	unsigned long mmu_page_limit;
	bool then_toggle_module;
} handover_steps[] = {
	{ .nr_touch = NR_REGIONS, .then_toggle_module = true },
	{ .nr_touch = MANY_REGIONS },
	{ .mmu_page_limit = KVM_MIN_MMU_PAGES, .then_toggle_module = true },
	{ .nr_touch = MANY_REGIONS, .mmu_page_limit = AMPLE_MMU_PAGES },
};

static void run_handover_step(struct kvm_vcpu *vcpu, int step)
{
	if (handover_steps[step].mmu_page_limit)
		vm_ioctl(vcpu->vm, KVM_SET_NR_MMU_PAGES,
			 (void *)handover_steps[step].mmu_page_limit);
	if (handover_steps[step].nr_touch)
		touch_regions(vcpu, handover_steps[step].nr_touch);
}

static bool module_loaded(void)
{
	return !access("/sys/module/" MODULE_NAME, F_OK);
}

static void toggle_module(const char *path)
{
	bool was_loaded = module_loaded();
	int fd, r;

	if (was_loaded) {
		r = syscall(SYS_delete_module, MODULE_NAME, O_NONBLOCK);
		TEST_ASSERT(!r, "delete_module(" MODULE_NAME ") failed");
	} else {
		fd = open(path, O_RDONLY | O_CLOEXEC);
		TEST_ASSERT(fd >= 0, "Failed to open %s", path);
		r = syscall(SYS_finit_module, fd, "", 0);
		TEST_ASSERT(!r, "finit_module(%s) failed", path);
		close(fd);
	}
	TEST_ASSERT(module_loaded() != was_loaded,
		    MODULE_NAME " is still %s", was_loaded ? "loaded" : "unloaded");
}

static void assert_handover_count(struct kvm_vm *vm, u64 expected, int step,
				  const char *when)
{
	u64 count = checked_shadow_pages(vm);

	TEST_ASSERT(count == expected,
		    "Step %d, %s: mmu_shadow_pages is %lu, expected %lu as in the reference run",
		    step, when, count, expected);
}

TEST(module_handover)
{
	const char *module = getenv(MODULE_ENV);
	u64 expected[ARRAY_SIZE(handover_steps)];
	struct kvm_vcpu *vcpu, *twin_vcpu;
	struct kvm_vm *vm, *twin;
	u64 global, twin_count;
	bool was_loaded;
	int i;

	if (!module || access(module, R_OK))
		SKIP(return, MODULE_ENV " does not name a readable " MODULE_NAME ".ko");
	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	was_loaded = module_loaded();
	global = global_shadow_pages();

	/*
	 * Whoever keeps the count keeps it for every VM, so a reference VM
	 * alive across the handover would go through it too.  Record the
	 * reference counts beforehand instead, from two identical VMs run in
	 * lock-step: their agreement is what makes the counts a reference.
	 */
	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	twin = create_busy_vm(&twin_vcpu, MANY_REGIONS);
	for (i = 0; i < ARRAY_SIZE(handover_steps); i++) {
		run_handover_step(vcpu, i);
		run_handover_step(twin_vcpu, i);
		expected[i] = shadow_pages(vm);
		twin_count = shadow_pages(twin);
		TEST_ASSERT(twin_count == expected[i],
			    "Step %d: identical VMs have %lu and %lu shadow pages, expected equal counts",
			    i, expected[i], twin_count);
	}
	kvm_vm_free(twin);
	kvm_vm_free(vm);

	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	for (i = 0; i < ARRAY_SIZE(handover_steps); i++) {
		run_handover_step(vcpu, i);
		assert_handover_count(vm, expected[i], i, "after the step");
		if (!handover_steps[i].then_toggle_module)
			continue;
		toggle_module(module);
		assert_handover_count(vm, expected[i], i,
				      module_loaded() ? "after loading" : "after unloading");
	}
	kvm_vm_free(vm);

	TEST_ASSERT(module_loaded() == was_loaded,
		    MODULE_NAME " is %s, expected it %s as found",
		    module_loaded() ? "loaded" : "unloaded",
		    was_loaded ? "loaded" : "unloaded");
	TEST_ASSERT(global_shadow_pages() == global,
		    "Global mmu_shadow_pages is %lu with the test's VMs gone, expected %lu",
		    global_shadow_pages(), global);
}

/* Zap down to KVM's lowest page limit, then lift it and grow back. */
static void zap_and_regrow(struct kvm_vcpu *vcpu, u64 counts[2])
{
	vm_ioctl(vcpu->vm, KVM_SET_NR_MMU_PAGES, (void *)KVM_MIN_MMU_PAGES);
	counts[0] = checked_shadow_pages(vcpu->vm);
	vm_ioctl(vcpu->vm, KVM_SET_NR_MMU_PAGES, (void *)AMPLE_MMU_PAGES);
	touch_regions(vcpu, MANY_REGIONS);
	counts[1] = checked_shadow_pages(vcpu->vm);
}

static void assert_zap_and_regrow(struct kvm_vcpu *vcpu, const u64 expected[2],
				  unsigned int nth, const char *when)
{
	u64 counts[2];

	zap_and_regrow(vcpu, counts);
	TEST_ASSERT(counts[0] == expected[0] && counts[1] == expected[1],
		    "Allocation %u failing, %s: zap and regrow gave %lu and %lu shadow pages, expected %lu and %lu as in the reference run",
		    nth, when, counts[0], counts[1], expected[0], expected[1]);
}

/*
 * Fault injection through /proc/thread-self/fail-nth fails only the nth
 * allocation of this task, whatever the fault attributes' probability, but
 * by default not one that may sleep, nor a single page.
 */
static const struct {
	const char *file;
	const char *value;
} fault_attrs[] = {
	{ FAULT_DEBUGFS "/failslab/ignore-gfp-wait", "N" },
	{ FAULT_DEBUGFS "/fail_page_alloc/ignore-gfp-wait", "N" },
	{ FAULT_DEBUGFS "/fail_page_alloc/ignore-gfp-highmem", "N" },
	{ FAULT_DEBUGFS "/fail_page_alloc/min-order", "0" },
	{ FAULT_DEBUGFS "/failslab/verbose", "0" },
	{ FAULT_DEBUGFS "/fail_page_alloc/verbose", "0" },
};

/*
 * finit_module() with the @nth fault-injectable allocation of this task made
 * to fail.  Returns 0 or the load's errno, and in *@left how many allocations
 * short of @nth the load stopped: 0 if a failure was injected.
 */
static int load_module_failing_nth(int module_fd, int fail_nth_fd,
				   unsigned int nth, unsigned int *left)
{
	char buf[16];
	int len, r, err;

	len = snprintf(buf, sizeof(buf), "%u", nth);
	TEST_ASSERT(pwrite(fail_nth_fd, buf, len, 0) == len,
		    "Failed to write %u to fail-nth", nth);
	r = syscall(SYS_finit_module, module_fd, "", 0);
	err = errno;

	/* The countdown stops at 0 on the failure it injects. */
	len = pread(fail_nth_fd, buf, sizeof(buf) - 1, 0);
	TEST_ASSERT(len > 0, "Failed to read fail-nth");
	buf[len] = '\0';
	*left = strtoul(buf, NULL, 10);
	TEST_ASSERT(pwrite(fail_nth_fd, "0", 1, 0) == 1,
		    "Failed to reset fail-nth");
	return r ? err : 0;
}

/* True if the module logged, since the last call, that its init failed. */
static bool module_init_failed_since(int kmsg_fd)
{
	char record[8192];
	bool found = false;
	ssize_t len;

	for (;;) {
		len = read(kmsg_fd, record, sizeof(record) - 1);
		/* Records overwritten before they were read: go on after them. */
		if (len < 0 && errno == EPIPE)
			continue;
		if (len <= 0)
			break;
		record[len] = '\0';
		if (strstr(record, MODULE_NAME ": " MODULE_INIT_FAILED))
			found = true;
	}
	TEST_ASSERT(len < 0 && errno == EAGAIN, "Failed to read /dev/kmsg");
	return found;
}

struct fault_sweep {
	struct kvm_vcpu *vcpu;
	const char *module;
	int module_fd;
	int fail_nth_fd;
	int kmsg_fd;
	/* The VM's count after a zap, and after the regrow. */
	u64 expected[2];
	unsigned int nr_failed;
	unsigned int nr_init_failed;
	unsigned int nr_loaded;
};

/*
 * Loads the module with the @nth allocation failing: the load must fail with
 * ENOMEM and leave nothing loaded, or succeed, and whoever is in charge
 * afterwards must count exactly.  Returns false if the load made fewer than
 * @nth allocations.
 */
static bool faulted_load(struct fault_sweep *sweep, unsigned int nth)
{
	struct kvm_vm *vm = sweep->vcpu->vm;
	unsigned int left;
	u64 count;
	int err;

	err = load_module_failing_nth(sweep->module_fd, sweep->fail_nth_fd,
				      nth, &left);
	count = checked_shadow_pages(vm);
	TEST_ASSERT(count == sweep->expected[1],
		    "Allocation %u failing: mmu_shadow_pages is %lu after the load, expected %lu as before",
		    nth, count, sweep->expected[1]);
	if (err) {
		TEST_ASSERT(err == ENOMEM && !left,
			    "Allocation %u failing: the load failed with %s, expected ENOMEM",
			    nth, strerror(err));
		TEST_ASSERT(!module_loaded(),
			    "Allocation %u failing: the load failed, but %s is loaded",
			    nth, MODULE_NAME);
		sweep->nr_failed++;
		if (module_init_failed_since(sweep->kmsg_fd))
			sweep->nr_init_failed++;
	} else {
		TEST_ASSERT(module_loaded(),
			    "Allocation %u failing: the load succeeded, but %s is not loaded",
			    nth, MODULE_NAME);
		assert_zap_and_regrow(sweep->vcpu, sweep->expected, nth,
				      "with the module loaded");
		toggle_module(sweep->module);
		if (!left)
			sweep->nr_loaded++;
	}
	assert_zap_and_regrow(sweep->vcpu, sweep->expected, nth,
			      "after the load");
	return !left;
}

/* The number of fault-injectable allocations of a load without failures. */
static unsigned int load_allocations(struct fault_sweep *sweep)
{
	unsigned int left;
	int err;

	err = load_module_failing_nth(sweep->module_fd, sweep->fail_nth_fd,
				      MAX_LOAD_ALLOCATIONS, &left);
	TEST_ASSERT(!err, "Loading " MODULE_NAME " failed: %s", strerror(err));
	toggle_module(sweep->module);
	TEST_ASSERT(left, "A load made %u allocations or more",
		    MAX_LOAD_ALLOCATIONS);
	return MAX_LOAD_ALLOCATIONS - left;
}

FIXTURE(module_load_faults) {
	char saved[ARRAY_SIZE(fault_attrs)][16];
	int nr_changed;
};

FIXTURE_SETUP(module_load_faults)
{
	const char *module = getenv(MODULE_ENV);
	int i;

	if (!module || access(module, R_OK))
		SKIP(return, MODULE_ENV " does not name a readable " MODULE_NAME ".ko");
	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");
	if (access(FAULT_DEBUGFS "/failslab", F_OK) ||
	    access(FAULT_DEBUGFS "/fail_page_alloc", F_OK))
		SKIP(return,
		     "No failslab or fail_page_alloc in debugfs: needs CONFIG_FAILSLAB, CONFIG_FAIL_PAGE_ALLOC and CONFIG_FAULT_INJECTION_DEBUG_FS");
	if (module_loaded())
		SKIP(return, MODULE_NAME " is loaded: the test loads it itself");

	for (i = 0; i < ARRAY_SIZE(fault_attrs); i++) {
		read_file(fault_attrs[i].file, self->saved[i],
			  sizeof(self->saved[i]));
		write_file(fault_attrs[i].file, fault_attrs[i].value);
		self->nr_changed++;
	}
}

/* In the parent, so that a test that died halfway changes nothing either. */
FIXTURE_TEARDOWN_PARENT(module_load_faults)
{
	int i;

	for (i = 0; i < self->nr_changed; i++)
		write_file(fault_attrs[i].file, self->saved[i]);
}

/* A debug kernel's TCG guest takes about a second per load and check. */
TEST_F_TIMEOUT(module_load_faults, every_allocation, 3600)
{
	struct fault_sweep sweep = { .module = getenv(MODULE_ENV) };
	unsigned int nth, total, back, round;
	u64 again[2];
	struct kvm_vm *vm;

	vm = create_busy_vm(&sweep.vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);

	/*
	 * KVM's C keeps the reference count: the second zap and regrow must
	 * repeat the first, or there is no reference to hold the others to.
	 */
	touch_regions(sweep.vcpu, MANY_REGIONS);
	zap_and_regrow(sweep.vcpu, sweep.expected);
	zap_and_regrow(sweep.vcpu, again);
	TEST_ASSERT(again[0] == sweep.expected[0] &&
		    again[1] == sweep.expected[1],
		    "Two zaps and regrows gave %lu/%lu and %lu/%lu shadow pages, expected equal counts",
		    sweep.expected[0], sweep.expected[1], again[0], again[1]);

	sweep.fail_nth_fd = open("/proc/thread-self/fail-nth", O_RDWR);
	TEST_ASSERT(sweep.fail_nth_fd >= 0,
		    "Failed to open /proc/thread-self/fail-nth");
	sweep.module_fd = open(sweep.module, O_RDONLY | O_CLOEXEC);
	TEST_ASSERT(sweep.module_fd >= 0, "Failed to open %s", sweep.module);
	sweep.kmsg_fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
	TEST_ASSERT(sweep.kmsg_fd >= 0, "Failed to open /dev/kmsg");
	TEST_ASSERT(lseek(sweep.kmsg_fd, 0, SEEK_END) >= 0,
		    "Failed to skip the kernel log so far");

	for (nth = 1; nth < MAX_LOAD_ALLOCATIONS; nth++) {
		if (!faulted_load(&sweep, nth))
			break;
		if (nth % 50 == 0)
			ksft_print_msg("%u loads: %u failed (%u in the init), %u loaded\n",
				       nth, sweep.nr_failed,
				       sweep.nr_init_failed, sweep.nr_loaded);
	}
	TEST_ASSERT(nth < MAX_LOAD_ALLOCATIONS,
		    "Loads made %u allocations or more", MAX_LOAD_ALLOCATIONS);
	TEST_ASSERT(sweep.nr_failed,
		    "None of %u loads failed: no injected failure reached the load",
		    nth);
	ksft_print_msg("%u allocations per load: %u loads failed (%u in the init), %u loaded\n",
		       nth - 1, sweep.nr_failed, sweep.nr_init_failed,
		       sweep.nr_loaded);

	/*
	 * The number of allocations before the module's init varies from
	 * load to load (slab refills, KASAN's quarantine), so the sweep may
	 * have missed the init's own.  Only the loader's uevent follows the
	 * init: fail each of the last allocations of a load, counted by a
	 * load just before, until one fails in the init.
	 */
	for (round = 0; round < TAIL_ROUNDS && !sweep.nr_init_failed; round++) {
		for (back = 0; back < TAIL_ALLOCATIONS; back++) {
			total = load_allocations(&sweep);
			faulted_load(&sweep, total - back);
			if (sweep.nr_init_failed)
				break;
		}
		ksft_print_msg("Round %u over the last %u allocations: %u failed in the init\n",
			       round + 1, TAIL_ALLOCATIONS,
			       sweep.nr_init_failed);
	}
	TEST_ASSERT(sweep.nr_init_failed,
		    "No injected failure made the module's init fail");

	close(sweep.kmsg_fd);
	close(sweep.module_fd);
	close(sweep.fail_nth_fd);
	kvm_vm_free(vm);
}

TEST_HARNESS_MAIN
