// SPDX-License-Identifier: GPL-2.0-only
/*
 * shadow_mmu_stats_test
 *
 * Test the mmu_shadow_pages VM stat, KVM x86's count of shadow MMU pages:
 * direct and indirect shadow pages, never TDP MMU pages.  Every guest
 * touches the first page of each of a number of 2MiB regions, so that each
 * region needs exactly one shadow page of its own: the page that shadows its
 * guest page table under shadow paging, the one that shadows its L1 NPT
 * table under nested NPT, or a direct one where a huge guest or NPT page is
 * mapped with 4KiB host pages.  Touching one region and then N must add
 * exactly N - 1 pages, whatever the fixed cost of the guest's code and
 * stack; zaps must take pages away and a rerun must give back the same
 * count.  The stat must also agree between the binary stats fd and debugfs
 * and vanish with its VM.
 *
 * The same holds with kvm_shadow_stats.ko keeping the count: KVM checks
 * every update an accountant makes and logs a mismatch, which the test
 * runner treats as a failure.  shadow_mmu_accountant_test covers loading
 * and unloading accountants.
 */
#include <errno.h>
#include <limits.h>
#include <unistd.h>

#include "test_util.h"
#include "kvm_util.h"
#include "processor.h"
#include "shadow_mmu.h"
#include "kselftest_harness.h"

/*
 * Touch one region, then @nr: each region beyond the first must add exactly
 * one shadow page, and nothing may have been recycled under the page limit.
 */
static void assert_one_page_per_region(struct kvm_vcpu *vcpu, int nr,
				       const char *what)
{
	u64 first, all;

	touch_regions(vcpu, 1);
	first = shadow_pages(vcpu->vm);
	touch_regions(vcpu, nr);
	all = shadow_pages(vcpu->vm);
	TEST_ASSERT_EQ(vm_get_stat(vcpu->vm, mmu_recycled), 0);
	TEST_ASSERT(all - first == nr - 1,
		    "mmu_shadow_pages went from %lu for 1 region to %lu for %d, expected %d more (%s)",
		    first, all, nr, nr - 1, what);
}

/*
 * Indirect shadow pages: the guest's page tables under shadow paging, L1's
 * NPT tables for L2 under TDP.  One region each needs one more table.
 */
TEST(indirect_shadow_pages)
{
	bool nested = kvm_is_tdp_enabled();
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 count, global;

	if (nested && !have_nested_npt())
		SKIP(return, "TDP is on and nested NPT is unavailable: no indirect shadow pages");
	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	vm = create_touch_vm(&vcpu, NR_REGIONS, nested ? MAP_4K_NESTED : MAP_4K);
	TEST_ASSERT_EQ(shadow_pages(vm), 0);
	assert_one_page_per_region(vcpu, NR_REGIONS,
				   nested ? "one L2 page per L1 NPT page table" :
					    "one page per guest page table");

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

/*
 * Huge pages over 4KiB host pages (anonymous memory is madvised
 * NOHUGEPAGE): 2MiB guest pages under shadow paging, a 1GiB L1 NPT page
 * under nested NPT.  Neither has a page table below it to shadow, so each
 * region takes a direct shadow page to map it with 4KiB pages.
 */
TEST(direct_shadow_pages)
{
	bool nested = kvm_is_tdp_enabled();
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;

	if (nested && !have_nested_npt())
		SKIP(return, "TDP is on and nested NPT is unavailable: no direct shadow pages");

	vm = create_touch_vm(&vcpu, NR_REGIONS, nested ? MAP_1G_NESTED : MAP_2M);
	assert_one_page_per_region(vcpu, NR_REGIONS,
				   nested ? "one direct L2 page per region of L1's 1GiB NPT page" :
					    "one direct page per 2MiB guest page");
	kvm_vm_free(vm);
}

/*
 * Lowering the page limit zaps the oldest pages; deleting a memslot zaps
 * every page, but roots in use only leave the active list, to be freed
 * (and unaccounted) once the vCPU has moved to new roots.  After either,
 * running the same pass again must give back exactly the count that the
 * pass gave before.
 */
TEST(limit_and_memslot_zap)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 full, limit, count;

	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	touch_regions(vcpu, MANY_REGIONS);
	full = shadow_pages(vm);
	limit = full / 2;
	TEST_ASSERT(limit >= KVM_MIN_MMU_PAGES,
		    "mmu_shadow_pages is %lu, expected at least %u to halve",
		    full, 2 * KVM_MIN_MMU_PAGES);

	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)limit);
	count = shadow_pages(vm);
	TEST_ASSERT(count <= limit,
		    "mmu_shadow_pages is %lu after lowering the limit from %lu, expected at most %lu",
		    count, full, limit);

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
	count = shadow_pages(vm);
	TEST_ASSERT(count == full,
		    "mmu_shadow_pages is %lu after the limit was lifted and the pass rerun, expected %lu as before",
		    count, full);

	/* At least the page per region goes; in-use roots stay counted. */
	vm_mem_region_delete(vm, TEST_SLOT);
	count = shadow_pages(vm);
	TEST_ASSERT(count + MANY_REGIONS <= full,
		    "mmu_shadow_pages is %lu after deleting a memslot, expected at most %lu - %u",
		    count, full, MANY_REGIONS);

	/* The zapped roots are freed as the vCPU loads new ones. */
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, TEST_GPA, TEST_SLOT,
				    MANY_REGIONS * REGION_SIZE / PAGE_SIZE, 0);
	touch_regions(vcpu, MANY_REGIONS);
	count = shadow_pages(vm);
	TEST_ASSERT(count == full,
		    "mmu_shadow_pages is %lu after the memslot came back and the pass was rerun, expected %lu as before",
		    count, full);

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

TEST_HARNESS_MAIN
