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
 *
 * With the module loaded, every count read also checks its breakdown by
 * role in debugfs against the count, and the scenarios pin each bucket:
 * a region's page lands at level 1, direct or not as the region's mapping
 * says, in guest mode under nested NPT; a zap takes pages from the buckets
 * they were in and counts them as zapped; a root zapped while in use stays
 * in its bucket until it is freed.  Without the module the breakdown
 * checks are skipped, with a message, unless the boot loaded it
 * (KVM_SHADOW_STATS_EXPECTED=1): then they fail, see have_breakdown().
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "test_util.h"
#include "kvm_util.h"
#include "processor.h"
#include "shadow_mmu.h"
#include "smm.h"
#include "kselftest_harness.h"

/*
 * The VM's breakdown, which it must have if kvm_shadow_stats.ko is loaded.
 * False without the module, having said once per test that the breakdown
 * goes unchecked.
 */
static bool vm_breakdown(struct kvm_vm *vm, struct sp_breakdown *bd)
{
	static bool said;

	if (!have_breakdown()) {
		if (!said)
			ksft_print_msg("No %s: kvm_shadow_stats.ko is not loaded, %s\n",
				       BREAKDOWN_DEBUGFS, "breakdown checks skipped");
		said = true;
		return false;
	}
	TEST_ASSERT(read_vm_breakdown(vm, bd),
		    "kvm_shadow_stats.ko is loaded, but VM %d-%d has no breakdown",
		    getpid(), vm->fd);
	assert_global_breakdown(NULL);
	return true;
}

/* Only @bucket grows, by @nr pages, all of them newly allocated. */
static void expect_growth(struct sp_delta *delta, int bucket, s64 nr)
{
	*delta = (struct sp_delta) {};
	delta->pages[bucket] = nr;
	delta->allocated[bucket] = nr;
}

/*
 * Touch one region, then @nr: each region beyond the first must add exactly
 * one shadow page, in @bucket, and nothing may have been recycled under the
 * page limit.
 */
static void assert_one_page_per_region(struct kvm_vcpu *vcpu, int nr,
				       int bucket, const char *what)
{
	struct sp_breakdown before, after;
	struct sp_delta delta;
	bool breakdown;
	u64 first, all;

	touch_regions(vcpu, 1);
	first = shadow_pages(vcpu->vm);
	breakdown = vm_breakdown(vcpu->vm, &before);
	touch_regions(vcpu, nr);
	all = shadow_pages(vcpu->vm);
	TEST_ASSERT_EQ(vm_get_stat(vcpu->vm, mmu_recycled), 0);
	TEST_ASSERT(all - first == nr - 1,
		    "mmu_shadow_pages went from %lu for 1 region to %lu for %d, expected %d more (%s)",
		    first, all, nr, nr - 1, what);

	if (!breakdown)
		return;
	vm_breakdown(vcpu->vm, &after);
	expect_growth(&delta, bucket, nr - 1);
	assert_breakdown_step(&before, &after, &delta, what);
}

/*
 * Indirect shadow pages: the guest's page tables under shadow paging, L1's
 * NPT tables for L2 under TDP.  One region each needs one more table.
 */
TEST(indirect_shadow_pages)
{
	bool nested = kvm_is_tdp_enabled();
	struct sp_breakdown bd;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 count, global;

	if (nested && !have_nested_npt())
		SKIP(return, "TDP is on and nested NPT is unavailable: no indirect shadow pages");
	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	vm = create_touch_vm(&vcpu, NR_REGIONS, nested ? MAP_4K_NESTED : MAP_4K);
	TEST_ASSERT_EQ(shadow_pages(vm), 0);
	if (vm_breakdown(vm, &bd))
		assert_breakdown_empty(&bd, "A VM that never ran");
	assert_one_page_per_region(vcpu, NR_REGIONS, sp_bucket(1, false, nested, false),
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
	struct sp_breakdown bd;
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
	/* Not a single TDP MMU page may have reached the accountant. */
	if (vm_breakdown(vm, &bd))
		assert_breakdown_empty(&bd, "A VM on the TDP MMU");
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
	assert_one_page_per_region(vcpu, NR_REGIONS, sp_bucket(1, true, nested, false),
				   nested ? "one direct L2 page per region of L1's 1GiB NPT page" :
					    "one direct page per 2MiB guest page");
	kvm_vm_free(vm);
}

/* Every page of @before is zapped, but those of a root in use, in @root. */
static void expect_all_zapped_but(struct sp_delta *delta,
				  const struct sp_breakdown *before, int root)
{
	int b;

	*delta = (struct sp_delta) {};
	for (b = 0; b < NR_SP_BUCKETS; b++) {
		if (b == root)
			continue;
		delta->pages[b] = -before->bucket[b].pages;
		delta->zapped[b] = before->bucket[b].pages;
	}
}

/*
 * The pages of a zap come out of the buckets they were in, as zapped, and
 * nothing is allocated; a root in use stays where it is.
 */
static void assert_zap_step(const struct sp_breakdown *before,
			    const struct sp_breakdown *after, int root,
			    const char *what)
{
	struct sp_delta delta = { .any_pages = true, .any_zapped = true };

	assert_breakdown_step(before, after, &delta, what);
	TEST_ASSERT(after->bucket[root].pages == 1 &&
		    after->bucket[root].zapped == before->bucket[root].zapped,
		    "%s: the root's bucket holds %lu pages, %lu zapped, expected 1 and %lu as before, the root in use",
		    what, after->bucket[root].pages, after->bucket[root].zapped,
		    before->bucket[root].zapped);
}

/*
 * Lowering the page limit zaps the oldest pages; deleting a memslot zaps
 * every page, but roots in use only leave the active list, to be freed
 * (and unaccounted) once the vCPU has moved to new roots.  After either,
 * running the same pass again must give back exactly the count that the
 * pass gave before, and the same pages in every bucket of the breakdown.
 * The vCPU's one root is zapped while in use by the memslot deletion: it
 * stays counted, in its bucket, until the vCPU runs again and frees it.
 */
TEST(limit_and_memslot_zap)
{
	bool nested = kvm_is_tdp_enabled(), breakdown;
	struct sp_breakdown full_bd, before, bd;
	struct sp_delta delta;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 full, limit, count;
	int root, b;

	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	root = sp_bucket(shadow_root_level(vm, nested), false, nested, false);
	touch_regions(vcpu, MANY_REGIONS);
	full = shadow_pages(vm);
	limit = full / 2;
	TEST_ASSERT(limit >= KVM_MIN_MMU_PAGES,
		    "mmu_shadow_pages is %lu, expected at least %u to halve",
		    full, 2 * KVM_MIN_MMU_PAGES);
	breakdown = vm_breakdown(vm, &full_bd);
	if (breakdown)
		TEST_ASSERT(full_bd.bucket[root].pages == 1,
			    "%lu pages in the root's bucket, expected 1, the vCPU's root",
			    full_bd.bucket[root].pages);

	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)limit);
	count = shadow_pages(vm);
	TEST_ASSERT(count <= limit,
		    "mmu_shadow_pages is %lu after lowering the limit from %lu, expected at most %lu",
		    count, full, limit);
	if (breakdown) {
		vm_breakdown(vm, &bd);
		assert_zap_step(&full_bd, &bd, root, "Lowering the page limit");
	}

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
	if (breakdown) {
		vm_breakdown(vm, &before);
		assert_breakdown_pages_equal(&full_bd, &before,
					     "The pass rerun with the limit lifted");
		/* The count never went above the first pass's since. */
		TEST_ASSERT(before.peak == full,
			    "Peak is %lu after the rerun, expected %lu, the first pass's count",
			    before.peak, full);
	}

	/* Every page goes but the root, zapped while in use, still counted. */
	vm_mem_region_delete(vm, TEST_SLOT);
	count = shadow_pages(vm);
	TEST_ASSERT(count == 1,
		    "mmu_shadow_pages is %lu after deleting a memslot, expected 1, the vCPU's root",
		    count);
	if (breakdown) {
		vm_breakdown(vm, &bd);
		expect_all_zapped_but(&delta, &before, root);
		assert_zap_step(&before, &bd, root, "Deleting the memslot");
		assert_breakdown_step(&before, &bd, &delta, "Deleting the memslot");
		before = bd;
	}

	/* The zapped root is freed as the vCPU loads a new one, and no sooner. */
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, TEST_GPA, TEST_SLOT,
				    MANY_REGIONS * REGION_SIZE / PAGE_SIZE, 0);
	TEST_ASSERT_EQ(shadow_pages(vm), 1);
	if (breakdown) {
		vm_breakdown(vm, &bd);
		delta = (struct sp_delta) {};
		assert_breakdown_step(&before, &bd, &delta, "Adding the memslot back");
	}

	touch_regions(vcpu, MANY_REGIONS);
	count = shadow_pages(vm);
	TEST_ASSERT(count == full,
		    "mmu_shadow_pages is %lu after the memslot came back and the pass was rerun, expected %lu as before",
		    count, full);
	if (breakdown) {
		vm_breakdown(vm, &bd);
		delta = (struct sp_delta) {};
		for (b = 0; b < NR_SP_BUCKETS; b++) {
			delta.pages[b] = full_bd.bucket[b].pages;
			delta.allocated[b] = full_bd.bucket[b].pages;
		}
		/* The old root out, a new one in. */
		delta.pages[root] = 0;
		delta.allocated[root] = 1;
		delta.zapped[root] = 1;
		assert_breakdown_step(&before, &bd, &delta,
				      "The pass rerun with the memslot back");
		TEST_ASSERT(bd.peak == full,
			    "Peak is %lu after the rerun, expected %lu, the first pass's count",
			    bd.peak, full);
	}

	kvm_vm_free(vm);
}

/*
 * SMRAM where the test's memslots leave room for it, below TEST_GPA and
 * in the same 4GiB that SMM's real-address mode reaches.
 */
#define SMM_SMRAM_GPA		(TEST_GPA - SMRAM_SIZE)
/* The test memslot, mirrored into the SMM address space (SMRAM is slot 1). */
#define SMM_TEST_SLOT		((1 << 16) | (TEST_SLOT + 1))
#define SMM_SYNC_PORT		0xe
/* The 2MiB holding SMRAM, then one per region, each in a direct table. */
#define SMM_LEAF_PAGES		(1 + NR_REGIONS)
/* Paging off, KVM maps with PAE roots: one per GiB of the 4GiB. */
#define SMM_ROOT_PAGES		4

/*
 * The SMI handler, run from SMBASE + 0x8000 in SMM's real-address mode,
 * whose segments reach 4GiB: it writes the first byte of each region
 * through the SMM address space, tells the host on SMM_SYNC_PORT, and
 * returns.  The immediates are fields of their own, little-endian as the
 * instructions take them.
 */
static const struct __packed {
	u8 mov_cx;			/* mov $nr_regions, %cx */
	u16 nr_regions;
	u8 mov_ebx[2];			/* mov $gpa, %ebx */
	u32 gpa;
	u8 touch_add_ebx[6];		/* 1: mov %al, (%ebx); add $size, %ebx */
	u32 region_size;
	u8 loop_sync_rsm[6];		/* loop 1b; in $SMM_SYNC_PORT, %al; rsm */
} smi_touch_handler = {
	.mov_cx = 0xb9,
	.nr_regions = NR_REGIONS,
	.mov_ebx = { 0x66, 0xbb },
	.gpa = TEST_GPA,
	.touch_add_ebx = { 0x67, 0x88, 0x03, 0x66, 0x81, 0xc3 },
	.region_size = REGION_SIZE,
	.loop_sync_rsm = { 0xe2, 0xf4, 0xe4, SMM_SYNC_PORT, 0x0f, 0xaa },
};

static bool vcpu_in_smm(struct kvm_vcpu *vcpu)
{
	struct kvm_vcpu_events events;

	vcpu_events_get(vcpu, &events);
	return events.smi.smm;
}

/*
 * SMM has pages of its own, smm=1 in their role: with paging off in SMM,
 * KVM maps SMRAM and whatever the handler touches with direct pages under
 * four PAE roots, apart from the pages of the interrupted 64-bit guest,
 * which SMM leaves as they are.  A memslot deletion zaps them all with
 * the others; none of them is a root in use once the vCPU left SMM.
 */
TEST(smm_shadow_pages)
{
	/* A PAE root is a page directory. */
	int smm_root = sp_bucket(PG_LEVEL_2M, true, false, true);
	int smm_leaf = sp_bucket(PG_LEVEL_4K, true, false, true);
	struct sp_breakdown before, in_smm, after;
	struct sp_delta delta;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 count, smm_count;
	bool breakdown;
	int root;

	if (!kvm_has_cap(KVM_CAP_X86_SMM))
		SKIP(return, "KVM_CAP_X86_SMM is unavailable");
	if (kvm_is_tdp_enabled())
		SKIP(return, "TDP is on: SMM runs on TDP pages, not on PAE roots");
	/*
	 * Without EPT, VMX has no unrestricted guest: it emulates SMM's real
	 * mode, whose 4GiB segments it cannot run, and the emulator writes
	 * guest memory without a fault, hence without a shadow page.
	 */
	if (host_cpu_is_intel)
		SKIP(return, "VMX emulates SMM's real mode: its writes build no shadow page");

	vm = create_touch_vm(&vcpu, NR_REGIONS, MAP_4K);
	setup_smram(vm, vcpu, SMM_SMRAM_GPA, &smi_touch_handler,
		    sizeof(smi_touch_handler));
	vm_set_user_memory_region(vm, SMM_TEST_SLOT, 0, TEST_GPA,
				  NR_REGIONS * REGION_SIZE,
				  addr_gpa2hva(vm, TEST_GPA));
	root = sp_bucket(shadow_root_level(vm, false), false, false, false);

	touch_regions(vcpu, NR_REGIONS);
	count = shadow_pages(vm);
	breakdown = vm_breakdown(vm, &before);

	vcpu_ioctl(vcpu, KVM_SMI, NULL);
	vcpu_run(vcpu);
	TEST_ASSERT(vcpu->run->exit_reason == KVM_EXIT_IO &&
		    vcpu->run->io.port == SMM_SYNC_PORT,
		    "Exit %s, port 0x%x, expected the SMI handler's IO on port 0x%x",
		    exit_reason_str(vcpu->run->exit_reason), vcpu->run->io.port,
		    SMM_SYNC_PORT);
	TEST_ASSERT(vcpu_in_smm(vcpu), "The SMI handler ran outside SMM");
	smm_count = shadow_pages(vm);
	TEST_ASSERT(smm_count == count + SMM_ROOT_PAGES + SMM_LEAF_PAGES,
		    "mmu_shadow_pages is %lu in SMM, expected %lu: %lu before, %d PAE roots and %d direct tables",
		    smm_count, count + SMM_ROOT_PAGES + SMM_LEAF_PAGES, count,
		    SMM_ROOT_PAGES, SMM_LEAF_PAGES);
	if (breakdown) {
		vm_breakdown(vm, &in_smm);
		expect_growth(&delta, smm_root, SMM_ROOT_PAGES);
		delta.pages[smm_leaf] = SMM_LEAF_PAGES;
		delta.allocated[smm_leaf] = SMM_LEAF_PAGES;
		assert_breakdown_step(&before, &in_smm, &delta,
				      "The SMI handler touching every region");
	}

	/* RSM back to the guest, which touches its regions again. */
	touch_regions(vcpu, NR_REGIONS);
	TEST_ASSERT(!vcpu_in_smm(vcpu), "The vCPU is still in SMM after RSM");
	count = shadow_pages(vm);
	TEST_ASSERT(count == smm_count,
		    "mmu_shadow_pages is %lu after RSM and a pass, expected %lu as in SMM",
		    count, smm_count);
	if (breakdown) {
		vm_breakdown(vm, &after);
		delta = (struct sp_delta) {};
		assert_breakdown_step(&in_smm, &after, &delta,
				      "RSM and a pass over the regions");
	}

	/* Every page goes, SMM's too, but the 64-bit guest's root in use. */
	vm_set_user_memory_region(vm, SMM_TEST_SLOT, 0, TEST_GPA, 0, NULL);
	count = shadow_pages(vm);
	TEST_ASSERT(count == 1,
		    "mmu_shadow_pages is %lu after deleting SMM's memslot, expected 1, the vCPU's root",
		    count);
	if (breakdown) {
		before = after;
		vm_breakdown(vm, &after);
		expect_all_zapped_but(&delta, &before, root);
		assert_breakdown_step(&before, &after, &delta,
				      "Deleting SMM's memslot");
	}

	kvm_vm_free(vm);
}

TEST(two_vms)
{
	struct sp_breakdown bd, global;
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

	/* Each VM has its own breakdown; the global one is their sum. */
	if (vm_breakdown(idle, &bd)) {
		assert_breakdown_empty(&bd, "The idle VM");
		vm_breakdown(busy, &bd);
		assert_global_breakdown(&global);
		assert_breakdown_pages_equal(&bd, &global,
					     "The global breakdown beside an idle VM");
	}

	kvm_vm_free(idle);
	kvm_vm_free(busy);
}

TEST(teardown)
{
	struct sp_breakdown bd, global_before, global_bd;
	char dir[PATH_MAX], breakdown_dir[PATH_MAX];
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 before, global, count;
	bool breakdown;

	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");

	before = global_shadow_pages();
	if (have_breakdown())
		assert_global_breakdown(&global_before);
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
	TEST_ASSERT(!path_errno(dir, F_OK), "%s is missing", dir);
	breakdown = vm_breakdown(vm, &bd);
	vm_breakdown_path(vm, "", breakdown_dir, sizeof(breakdown_dir));

	kvm_vm_free(vm);

	TEST_ASSERT(path_errno(dir, F_OK) == ENOENT, "%s outlived its VM", dir);
	global = global_shadow_pages();
	TEST_ASSERT(global == before,
		    "Global mmu_shadow_pages is %lu after the VM's end, expected %lu",
		    global, before);

	/* The VM's pages and events leave the global breakdown too. */
	if (breakdown) {
		TEST_ASSERT(path_errno(breakdown_dir, F_OK) == ENOENT,
			    "%s outlived its VM", breakdown_dir);
		assert_global_breakdown(&global_bd);
		TEST_ASSERT(!memcmp(global_bd.bucket, global_before.bucket,
				    sizeof(global_bd.bucket)),
			    "The global breakdown holds %lu pages, %lu allocated, %lu zapped after the VM's end, expected %lu, %lu, %lu as before it",
			    global_bd.totals.pages, global_bd.totals.allocated,
			    global_bd.totals.zapped, global_before.totals.pages,
			    global_before.totals.allocated,
			    global_before.totals.zapped);
	}
}

/* A reset's "0\n", then newlines up to a page: longer than any reset. */
static const char long_reset[PAGE_SIZE] = { '0', [1 ... PAGE_SIZE - 1] = '\n' };

/* Named by the literal as it is spelt, escapes and all, for the messages. */
#define PEAK_WRITE(s)	{ #s, s, sizeof(s) - 1 }

static const struct {
	const char *what;
	const void *buf;
	size_t len;
} refused_peak_writes[] = {
	PEAK_WRITE("1"),
	PEAK_WRITE("abc"),
	PEAK_WRITE("-1"),
	PEAK_WRITE("0x1"),
	PEAK_WRITE("00000"),
	PEAK_WRITE("0\n\n\n\n"),
	/*
	 * Neither vfs_write() nor debugfs' proxy nor the Rust debugfs file
	 * operations return early on 0 bytes: the module gets the empty
	 * write, and refuses it as any but a reset.
	 */
	PEAK_WRITE(""),
	{ "a page of \"0\\n\" then newlines", long_reset, sizeof(long_reset) },
};

/* Each write of refused_peak_writes must fail on @path and leave @peak. */
static void assert_peak_write_refusals(const char *path, u64 peak)
{
	ssize_t r;
	u64 now;
	int i;

	for (i = 0; i < ARRAY_SIZE(refused_peak_writes); i++) {
		r = __write_file(path, refused_peak_writes[i].buf,
				 refused_peak_writes[i].len);
		now = read_debugfs_count(path);
		TEST_ASSERT(r == -EINVAL, "Writing %s to %s: %s, expected EINVAL",
			    refused_peak_writes[i].what, path,
			    r < 0 ? strerror(-r) : "accepted");
		TEST_ASSERT(now == peak,
			    "%s is %lu after writing %s, expected %lu as before",
			    path, now, refused_peak_writes[i].what, peak);
	}
}

/*
 * Nothing at the top resets the VM's peak, in @peak_path: the top has no
 * peak, which debugfs would not let a write create, and its other files
 * take no write.
 */
static void assert_top_resets_no_peak(const char *peak_path, u64 peak)
{
	static const struct {
		const char *file;
		/* The write's errno; 0 for any. */
		int err;
	} top[] = { { "peak", ENOENT }, { "totals" }, { "pages" } };
	char path[PATH_MAX];
	ssize_t r;
	u64 now;
	int i;

	for (i = 0; i < ARRAY_SIZE(top); i++) {
		snprintf(path, sizeof(path), BREAKDOWN_DEBUGFS "/%s", top[i].file);
		r = __write_file(path, "0", 1);
		now = read_debugfs_count(peak_path);
		TEST_ASSERT(r < 0 && (!top[i].err || r == -top[i].err),
			    "Writing '0' to %s: %s, expected %s", path,
			    r < 0 ? strerror(-r) : "accepted",
			    top[i].err ? strerror(top[i].err) : "a failure");
		TEST_ASSERT(now == peak,
			    "%s is %lu after writing '0' to %s, expected %lu as before",
			    peak_path, now, path, peak);
	}
}

/*
 * The peak is the highest count since the VM was attached or the peak
 * reset: a zap leaves it, only "0" resets it, to the count of the moment,
 * and growth lifts it again.  Nothing at the top resets it: the VMs peak at
 * different times, so the top has no peak.
 */
TEST(breakdown_peak)
{
	struct sp_delta zap = { .any_pages = true, .any_zapped = true };
	struct sp_delta growth = { .any_pages = true, .any_allocated = true };
	struct sp_breakdown bd, before;
	char peak_path[PATH_MAX];
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	u64 full, count;
	ssize_t r;

	if (!have_breakdown())
		SKIP(return, "No " BREAKDOWN_DEBUGFS ": kvm_shadow_stats.ko is not loaded");
	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	vm_breakdown_path(vm, "peak", peak_path, sizeof(peak_path));

	touch_regions(vcpu, MANY_REGIONS);
	full = shadow_pages(vm);
	vm_breakdown(vm, &before);
	TEST_ASSERT(before.peak == full, "Peak is %lu, expected %lu, the count",
		    before.peak, full);

	/* Zapping leaves the peak. */
	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)KVM_MIN_MMU_PAGES);
	count = shadow_pages(vm);
	TEST_ASSERT(count < full, "mmu_shadow_pages is %lu under the lowest limit, expected < %lu",
		    count, full);
	vm_breakdown(vm, &bd);
	assert_breakdown_step(&before, &bd, &zap, "Lowering the page limit");

	/* Above the count, the peak shows any reset. */
	assert_top_resets_no_peak(peak_path, full);
	assert_peak_write_refusals(peak_path, full);
	r = __write_file(peak_path, "0", 1);
	TEST_ASSERT(r == 1, "Writing '0' to %s: %s, expected a reset", peak_path,
		    r < 0 ? strerror(-r) : "short write");
	vm_breakdown(vm, &bd);
	TEST_ASSERT(bd.peak == count,
		    "Peak is %lu after a reset, expected %lu, the count", bd.peak, count);

	/* Growth lifts it again, to the count, nothing being zapped. */
	before = bd;
	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)AMPLE_MMU_PAGES);
	touch_regions(vcpu, MANY_REGIONS);
	TEST_ASSERT_EQ(shadow_pages(vm), full);
	vm_breakdown(vm, &bd);
	assert_breakdown_step(&before, &bd, &growth, "Growing after a peak reset");
	TEST_ASSERT(bd.peak == full, "Peak is %lu after growing back, expected %lu",
		    bd.peak, full);

	kvm_vm_free(vm);
}

/*
 * The kernel's count of secondary page tables, in bytes, with the per-CPU
 * deltas folded in first so that it is exact.
 */
static u64 sec_page_tables_bytes(void)
{
	char line[128];
	u64 kib = 0;
	bool found = false;
	FILE *meminfo;

	write_file("/proc/sys/vm/stat_refresh", "1");
	meminfo = fopen("/proc/meminfo", "r");
	TEST_ASSERT(meminfo, "Failed to open /proc/meminfo");
	while (!found && fgets(line, sizeof(line), meminfo))
		found = sscanf(line, "SecPageTables: %lu kB", &kib) == 1;
	fclose(meminfo);
	TEST_ASSERT(found, "No SecPageTables in /proc/meminfo");
	return kib * 1024;
}

static void assert_page_table_bytes_step(const struct sp_breakdown *before,
					 u64 sec_before,
					 const struct sp_breakdown *after,
					 u64 sec_after, const char *what)
{
	s64 breakdown = after->totals.page_table_bytes -
			before->totals.page_table_bytes;
	s64 sec = sec_after - sec_before;

	TEST_ASSERT(breakdown && breakdown == sec,
		    "%s: page_table_bytes moved by %ld, SecPageTables by %ld, expected the same, not 0",
		    what, breakdown, sec);
}

/*
 * The memory cgroup this test charges its VM to, so that the kernel's own
 * count of that VM's memory can be read: created under the cgroup2 root,
 * which is mounted at the usual place if it is not yet.
 */
#define CGROUP_ROOT	"/sys/fs/cgroup"
#define TEST_CGROUP	CGROUP_ROOT "/shadow_mmu_stats_test"

/*
 * The interval of the kernel's periodic flush of memory cgroup statistics
 * (FLUSH_TIME in mm/memcontrol.c), in seconds.  A read of memory.stat
 * flushes only past a threshold of updates, so a figure is exact only once
 * a periodic flush has run after its last update.
 */
#define MEMCG_FLUSH_SECONDS	2

static void enter_test_cgroup(void)
{
	char pid[16];

	if (path_errno(CGROUP_ROOT "/cgroup.controllers", F_OK))
		TEST_ASSERT(!mount("none", CGROUP_ROOT, "cgroup2", 0, NULL),
			    "Failed to mount cgroup2 on %s: %s", CGROUP_ROOT,
			    strerror(errno));
	write_file(CGROUP_ROOT "/cgroup.subtree_control", "+memory");
	TEST_ASSERT(!mkdir(TEST_CGROUP, 0755) || errno == EEXIST,
		    "Failed to create %s: %s", TEST_CGROUP, strerror(errno));
	errno = 0;
	snprintf(pid, sizeof(pid), "%d", getpid());
	write_file(TEST_CGROUP "/cgroup.procs", pid);
}

static void leave_test_cgroup(void)
{
	char pid[16];

	snprintf(pid, sizeof(pid), "%d", getpid());
	write_file(CGROUP_ROOT "/cgroup.procs", pid);
	TEST_ASSERT(!rmdir(TEST_CGROUP), "Failed to remove %s: %s", TEST_CGROUP,
		    strerror(errno));
}

/*
 * Memory the test cgroup's memory.stat counts as "kernel" but in none of
 * the kernel's finer counts: slab objects, secondary and process page
 * tables, stacks, per-CPU and vmalloc memory.  Of a VM whose pages are
 * mapped already, that is the pages KVM allocates with
 * __get_free_page(GFP_KERNEL_ACCOUNT) for itself, of which the shadow MMU
 * has sp->shadowed_translation and the vCPU's caches of unused page tables.
 */
static s64 memcg_other_kernel_bytes(void)
{
	static const char * const finer[] = {
		"slab", "sec_pagetables", "pagetables", "kernel_stack",
		"percpu", "vmalloc",
	};
	char buf[8192], *line;
	u64 value, kernel = 0, rest = 0;
	bool found_kernel = false;
	int nr_finer = 0, i;
	char name[32];

	sleep(MEMCG_FLUSH_SECONDS + 1);
	read_file(TEST_CGROUP "/memory.stat", buf, sizeof(buf));
	for (line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
		if (sscanf(line, "%31s %lu", name, &value) != 2)
			continue;
		if (!strcmp(name, "kernel")) {
			kernel = value;
			found_kernel = true;
		}
		for (i = 0; i < ARRAY_SIZE(finer); i++) {
			if (!strcmp(name, finer[i])) {
				rest += value;
				nr_finer++;
			}
		}
	}
	TEST_ASSERT(found_kernel && nr_finer == ARRAY_SIZE(finer),
		    "%s has %s and %d of its %lu finer counts, expected all",
		    TEST_CGROUP "/memory.stat", found_kernel ? "kernel" : "no kernel",
		    nr_finer, ARRAY_SIZE(finer));
	return kernel - rest;
}

/*
 * A zap frees each page's shadowed_translation at once and allocates
 * nothing, so it must take as much from the cgroup's other kernel memory as
 * from bytes beyond page_table_bytes, up to what the per-CPU slab charge
 * caches may hold: kernel counts slab objects in whole pages, slab in bytes,
 * each CPU may keep up to two pages of charged bytes unassigned
 * (refill_obj_stock()) and the cgroup less than one more.
 */
static void assert_shadowed_translation_step(const struct sp_breakdown *before,
					     s64 memcg_before,
					     const struct sp_breakdown *after,
					     s64 memcg_after, const char *what)
{
	s64 slack = (2 * sysconf(_SC_NPROCESSORS_ONLN) + 1) * PAGE_SIZE;
	s64 breakdown = (after->totals.bytes - after->totals.page_table_bytes) -
			(before->totals.bytes - before->totals.page_table_bytes);
	s64 memcg = memcg_after - memcg_before;

	ksft_print_msg("%s: bytes beyond page tables %+ld, cgroup's other kernel memory %+ld\n",
		       what, breakdown, memcg);
	TEST_ASSERT(breakdown && llabs(breakdown - memcg) <= slack,
		    "%s: bytes beyond page_table_bytes moved by %ld, the cgroup's other kernel memory by %ld, expected the same within %ld, not 0",
		    what, breakdown, memcg, slack);
}

/*
 * The VM's bytes move with the kernel's own counts when only shadow pages
 * come and go: page_table_bytes with SecPageTables, both ways, and the rest
 * with the memory cgroup's kernel memory outside its finer counts, on a zap
 * down to the lowest limit.  That is once the VM's memory, and with npt=1
 * L1's TDP MMU page tables, are in place.  Regrowth faults, and the vCPU
 * refills its caches of unused pages by up to 40 pages each
 * (KVM_ARCH_NR_OBJS_PER_MEMORY_CACHE) as it does, more than the 128
 * regions' pages it brings back, so only SecPageTables is held to it.
 */
TEST(bytes_are_the_kernels_counts)
{
	struct sp_breakdown before, after;
	u64 sec_before, sec_after;
	s64 memcg_before, memcg_after;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;

	if (!have_breakdown())
		SKIP(return, "No " BREAKDOWN_DEBUGFS ": kvm_shadow_stats.ko is not loaded");
	enter_test_cgroup();
	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	if (!vm) {
		leave_test_cgroup();
		SKIP(return, BUSY_VM_SKIP_REASON);
	}
	touch_regions(vcpu, MANY_REGIONS);

	vm_breakdown(vm, &before);
	sec_before = sec_page_tables_bytes();
	memcg_before = memcg_other_kernel_bytes();
	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)KVM_MIN_MMU_PAGES);
	vm_breakdown(vm, &after);
	sec_after = sec_page_tables_bytes();
	memcg_after = memcg_other_kernel_bytes();
	assert_page_table_bytes_step(&before, sec_before, &after, sec_after,
				     "Lowering the page limit");
	assert_shadowed_translation_step(&before, memcg_before, &after,
					 memcg_after, "Lowering the page limit");

	before = after;
	sec_before = sec_after;
	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)AMPLE_MMU_PAGES);
	touch_regions(vcpu, MANY_REGIONS);
	vm_breakdown(vm, &after);
	sec_after = sec_page_tables_bytes();
	assert_page_table_bytes_step(&before, sec_before, &after, sec_after,
				     "Growing back");

	kvm_vm_free(vm);
	leave_test_cgroup();
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
