// SPDX-License-Identifier: GPL-2.0-only
/*
 * shadow_mmu_accountant_test
 *
 * Loading and unloading shadow page accountants while VMs hold shadow pages:
 * kvm_shadow_stats.ko takes the mmu_shadow_pages stat over from KVM, or
 * hands it back, and every VM's count goes on exactly as in a reference run;
 * a second accountant is refused with EBUSY and the first one keeps counting;
 * a load that fails an allocation leaves the count exact, and a module that
 * cannot keep a VM's breakdown says so and counts the VM all the same.  The
 * modules come from the KVM_SHADOW_STATS_MODULE and KVM_MMU_ACCOUNTANT_SAMPLE
 * paths.
 *
 * kvm_shadow_stats.ko also breaks each VM's count down by role in debugfs.
 * A VM that the module finds at load time, roots zapped while in use
 * included, must be broken down exactly as a twin VM that did the same
 * under the module all along: the module learns of the first VM's pages
 * all at once as it loads, of the twin's one event at a time.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "test_util.h"
#include "kvm_util.h"
#include "processor.h"
#include "shadow_mmu.h"
#include "kselftest_harness.h"

#define MODULE_NAME		"kvm_shadow_stats"
#define MODULE_ENV		"KVM_SHADOW_STATS_MODULE"
#define SAMPLE_NAME		"kvm_mmu_accountant_sample"
#define SAMPLE_ENV		"KVM_MMU_ACCOUNTANT_SAMPLE"

#define FAULT_DEBUGFS		"/sys/kernel/debug"
/* Far more fault-injectable allocations than one module load makes. */
#define MAX_LOAD_ALLOCATIONS	20000
/* What the module logs when its init fails. */
#define MODULE_INIT_FAILED	"cannot take over shadow page accounting"
/* What it logs, after "<pid>-<fd>: ", when it cannot keep a VM's breakdown. */
#define NO_BREAKDOWN		"no breakdown for this VM"
/* Room for all shadow pages of a VM of HUGE_NR_REGIONS: none recycled. */
#define HUGE_AMPLE_MMU_PAGES	(8UL * HUGE_NR_REGIONS)

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

static bool __module_loaded(const char *name)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "/sys/module/%s", name);
	return !access(path, F_OK);
}

static bool module_loaded(void)
{
	return __module_loaded(MODULE_NAME);
}

/* finit_module() of @path: 0 or its errno. */
static int load_module(const char *path)
{
	int fd = open_path_or_exit(path, O_RDONLY | O_CLOEXEC);
	int r = syscall(SYS_finit_module, fd, "", 0);
	int err = errno;

	close(fd);
	return r ? err : 0;
}

static void unload_module(const char *name)
{
	int r = syscall(SYS_delete_module, name, O_NONBLOCK);

	TEST_ASSERT(!r, "delete_module(%s) failed", name);
}

static void toggle_module(const char *path)
{
	bool was_loaded = module_loaded();
	int err;

	if (was_loaded) {
		unload_module(MODULE_NAME);
	} else {
		err = load_module(path);
		TEST_ASSERT(!err, "finit_module(%s) failed: %s", path, strerror(err));
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

/*
 * The breakdown of a VM that the module just loaded with: it holds the
 * pages the module found, and no event since.
 */
static void read_breakdown_at_load(struct kvm_vm *vm, struct sp_breakdown *bd,
				   const char *what)
{
	TEST_ASSERT(read_vm_breakdown(vm, bd),
		    "%s: %s is loaded, but VM %d-%d has no breakdown",
		    what, MODULE_NAME, getpid(), vm->fd);
	TEST_ASSERT(!bd->totals.allocated && !bd->totals.zapped,
		    "%s: %lu pages allocated and %lu zapped since the module loaded, expected none",
		    what, bd->totals.allocated, bd->totals.zapped);
}

/*
 * A handover step with the module loaded before and after it.  Touching
 * more regions adds level 1 pages and nothing else, as many as the count
 * grew: one per region under shadow paging; under nested NPT, also one
 * per 2MiB of memslot 0 that L2 reaches for the first time to walk its own
 * page tables, which KVM does not shadow.  A zap allocates nothing.
 */
static void assert_handover_breakdown_step(struct kvm_vm *vm, int step,
					   const struct sp_breakdown *before,
					   struct sp_breakdown *after)
{
	int bucket = sp_bucket(1, false, kvm_is_tdp_enabled(), false);
	int nr_more = MANY_REGIONS - NR_REGIONS;
	struct sp_delta delta = {};
	char what[64];
	s64 grown;

	TEST_ASSERT(read_vm_breakdown(vm, after), "Step %d: VM %d-%d has no breakdown",
		    step, getpid(), vm->fd);
	snprintf(what, sizeof(what), "Handover step %d", step);
	grown = after->totals.pages - before->totals.pages;

	if (handover_steps[step].nr_touch == MANY_REGIONS &&
	    !handover_steps[step].mmu_page_limit) {
		TEST_ASSERT(grown == nr_more || (kvm_is_tdp_enabled() && grown > nr_more),
			    "%s: %ld more pages, expected %d, one per region touched",
			    what, grown, nr_more);
		delta.pages[bucket] = grown;
		delta.allocated[bucket] = grown;
	} else if (handover_steps[step].mmu_page_limit == KVM_MIN_MMU_PAGES) {
		delta.any_pages = true;
		delta.any_zapped = true;
	} else {
		delta.any_pages = true;
		delta.any_allocated = true;
		delta.any_zapped = true;
	}
	assert_breakdown_step(before, after, &delta, what);
}

TEST(module_handover)
{
	const char *module = getenv(MODULE_ENV);
	u64 expected[ARRAY_SIZE(handover_steps)];
	struct kvm_vcpu *vcpu, *twin_vcpu;
	struct sp_breakdown bd, before;
	struct kvm_vm *vm, *twin;
	bool was_loaded, breakdown;
	u64 global, twin_count;
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
	breakdown = read_vm_breakdown(vm, &bd);
	for (i = 0; i < ARRAY_SIZE(handover_steps); i++) {
		run_handover_step(vcpu, i);
		assert_handover_count(vm, expected[i], i, "after the step");
		if (breakdown) {
			before = bd;
			assert_handover_breakdown_step(vm, i, &before, &bd);
		}
		if (!handover_steps[i].then_toggle_module)
			continue;
		toggle_module(module);
		assert_handover_count(vm, expected[i], i,
				      module_loaded() ? "after loading" : "after unloading");
		breakdown = module_loaded() && have_breakdown();
		if (breakdown)
			read_breakdown_at_load(vm, &bd, "After loading");
		else
			TEST_ASSERT(!vm_has_breakdown(vm),
				    "VM %d-%d kept its breakdown with %s unloaded",
				    getpid(), vm->fd, MODULE_NAME);
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

/*
 * The workload of a VM that holds a root zapped while in use next to over
 * two thousand shadow pages, direct and indirect, half of its regions being
 * mapped with huge pages.  Its two vCPUs share the root of the one set of
 * page tables: the memslot deletion zaps it while both use it, vCPU 0 then
 * builds everything again on a new root, and vCPU 1, which does not run
 * again until the module is loaded, keeps the old one alive.
 */
enum zapped_root_step {
	BUILD,		/* vCPU 0 touches every region, vCPU 1 takes the root */
	ZAP_ALL,	/* memslot deleted and added back, the root in use */
	REBUILD,	/* vCPU 0 again, on a new root */
	LOAD_HERE,	/* where the module loads, and the twin catches up */
	FREE_ROOT,	/* vCPU 1 runs, moves to the new root, frees the old */
	ZAP_OLDEST,	/* the lowest page limit */
	REGROW,		/* the limit lifted, vCPU 0 again */
	NR_ZAPPED_ROOT_STEPS,
};

static const char * const zapped_root_step_names[] = {
	[BUILD] = "building",
	[ZAP_ALL] = "zapping all but the root in use",
	[REBUILD] = "rebuilding on a new root",
	[FREE_ROOT] = "freeing the zapped root",
	[ZAP_OLDEST] = "zapping the oldest pages",
	[REGROW] = "growing back",
};

static void run_zapped_root_step(struct kvm_vcpu **vcpus, int step)
{
	struct kvm_vm *vm = vcpus[0]->vm;

	switch (step) {
	case BUILD:
		touch_regions(vcpus[0], HUGE_NR_REGIONS);
		touch_regions(vcpus[1], 0);
		break;
	case ZAP_ALL:
		vm_mem_region_delete(vm, TEST_SLOT);
		add_touch_memslot(vm, HUGE_NR_REGIONS);
		break;
	case REBUILD:
		touch_regions(vcpus[0], HUGE_NR_REGIONS);
		break;
	case FREE_ROOT:
		touch_regions(vcpus[1], 0);
		break;
	case ZAP_OLDEST:
		vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)KVM_MIN_MMU_PAGES);
		break;
	case REGROW:
		vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)HUGE_AMPLE_MMU_PAGES);
		touch_regions(vcpus[0], HUGE_NR_REGIONS);
		break;
	}
}

static struct kvm_vm *create_zapped_root_vm(struct kvm_vcpu **vcpus)
{
	return create_touch_vm_vcpus(vcpus, 2, HUGE_NR_REGIONS,
				     kvm_is_tdp_enabled() ? MAP_4K_1G_NESTED : MAP_4K_2M);
}

/* @after - @before, as the deltas that a step must give again. */
static void breakdown_delta(const struct sp_breakdown *before,
			    const struct sp_breakdown *after,
			    struct sp_delta *delta)
{
	int b;

	*delta = (struct sp_delta) {};
	for (b = 0; b < NR_SP_BUCKETS; b++) {
		delta->pages[b] = after->bucket[b].pages - before->bucket[b].pages;
		delta->allocated[b] = after->bucket[b].allocated -
				      before->bucket[b].allocated;
		delta->zapped[b] = after->bucket[b].zapped - before->bucket[b].zapped;
	}
}

/*
 * The twin's shadow pages were all allocated under the module's eyes: none
 * was found at load time.
 */
static void assert_nothing_found(const struct sp_breakdown *bd, const char *what)
{
	char name[64];
	int b;

	for (b = 0; b < NR_SP_BUCKETS; b++) {
		sp_bucket_name(b, name, sizeof(name));
		TEST_ASSERT(bd->bucket[b].pages + bd->bucket[b].zapped ==
			    bd->bucket[b].allocated,
			    "%s, %s: %lu pages, %lu allocated, %lu zapped, expected no page found",
			    what, name, bd->bucket[b].pages, bd->bucket[b].allocated,
			    bd->bucket[b].zapped);
	}
}

/*
 * A VM that built over two thousand shadow pages, one of them a root zapped
 * while in use, before the module was loaded must, the moment the load
 * returns, hold in every bucket the pages of a twin that did the same after
 * the load.  Then both must go on in step: the zapped root leaves its
 * bucket as vCPU 1 frees it, as zapped, and zaps and regrowth move both
 * VMs' buckets alike.  Unloading the module hands both counts back to KVM,
 * which goes on with them exactly.
 *
 * Building the two VMs takes minutes on a debug kernel's TCG guest: the
 * fixture is there for the timeout.
 */
FIXTURE(big_vms) {};
FIXTURE_SETUP(big_vms) {}
FIXTURE_TEARDOWN(big_vms) {}

TEST_F_TIMEOUT(big_vms, breakdown_found_at_load, 1800)
{
	const char *module = getenv(MODULE_ENV);
	struct kvm_vcpu *vcpus[2], *twin_vcpus[2];
	struct sp_breakdown bd, twin_bd, before, twin_before;
	bool nested = kvm_is_tdp_enabled(), was_loaded;
	struct kvm_vm *vm, *twin;
	u64 count, twin_count;
	struct sp_delta delta;
	char what[128];
	int root, step;

	if (!module || access(module, R_OK))
		SKIP(return, MODULE_ENV " does not name a readable " MODULE_NAME ".ko");
	if (!have_kvm_debugfs())
		SKIP(return, KVM_DEBUGFS " is missing");
	if (nested && !have_nested_npt())
		SKIP(return, BUSY_VM_SKIP_REASON);

	was_loaded = module_loaded();
	if (was_loaded)
		unload_module(MODULE_NAME);

	vm = create_zapped_root_vm(vcpus);
	root = sp_bucket(shadow_root_level(vm, nested), false, nested, false);
	for (step = 0; step < LOAD_HERE; step++)
		run_zapped_root_step(vcpus, step);
	count = shadow_pages(vm);
	TEST_ASSERT(count > HUGE_NR_REGIONS,
		    "mmu_shadow_pages is %lu, expected over %d, a page per region and more",
		    count, HUGE_NR_REGIONS);

	toggle_module(module);
	TEST_ASSERT_EQ(shadow_pages(vm), count);
	if (!have_breakdown()) {
		kvm_vm_free(vm);
		if (!was_loaded)
			unload_module(MODULE_NAME);
		SKIP(return, MODULE_NAME ".ko keeps no breakdown in " BREAKDOWN_DEBUGFS);
	}
	read_breakdown_at_load(vm, &bd, "Right after loading");
	TEST_ASSERT(bd.bucket[root].pages == 2,
		    "Right after loading: %lu pages in the roots' bucket, expected 2, the root in use and the one zapped in use",
		    bd.bucket[root].pages);

	twin = create_zapped_root_vm(twin_vcpus);
	for (step = 0; step < LOAD_HERE; step++)
		run_zapped_root_step(twin_vcpus, step);
	TEST_ASSERT_EQ(shadow_pages(twin), count);
	TEST_ASSERT(read_vm_breakdown(twin, &twin_bd), "The twin has no breakdown");
	assert_nothing_found(&twin_bd, "The twin, built after the load");
	assert_breakdown_pages_equal(&twin_bd, &bd,
				     "The VM found at load time, against its twin built after");

	for (step = LOAD_HERE + 1; step < NR_ZAPPED_ROOT_STEPS; step++) {
		before = bd;
		twin_before = twin_bd;
		run_zapped_root_step(vcpus, step);
		run_zapped_root_step(twin_vcpus, step);
		shadow_pages(vm);
		shadow_pages(twin);
		read_vm_breakdown(vm, &bd);
		read_vm_breakdown(twin, &twin_bd);

		snprintf(what, sizeof(what), "The twin, %s",
			 zapped_root_step_names[step]);
		if (step == FREE_ROOT) {
			delta = (struct sp_delta) {
				.any_pages = true, .any_allocated = true,
			};
			delta.zapped[root] = 1;
			assert_breakdown_step(&twin_before, &twin_bd, &delta, what);
			TEST_ASSERT(twin_bd.bucket[root].pages == 1,
				    "%s: %lu pages in the roots' bucket, expected 1, the one in use",
				    what, twin_bd.bucket[root].pages);
		}
		breakdown_delta(&twin_before, &twin_bd, &delta);
		snprintf(what, sizeof(what), "The VM found at load time, %s, against its twin",
			 zapped_root_step_names[step]);
		assert_breakdown_step(&before, &bd, &delta, what);
		assert_breakdown_pages_equal(&twin_bd, &bd, what);
	}

	/* KVM takes both counts back and goes on with them exactly. */
	toggle_module(module);
	TEST_ASSERT(!vm_has_breakdown(vm) && !vm_has_breakdown(twin),
		    "The VMs kept their breakdown with %s unloaded", MODULE_NAME);
	for (step = ZAP_OLDEST; step < NR_ZAPPED_ROOT_STEPS; step++) {
		run_zapped_root_step(vcpus, step);
		run_zapped_root_step(twin_vcpus, step);
		count = checked_shadow_pages(vm);
		twin_count = checked_shadow_pages(twin);
		TEST_ASSERT(count == twin_count,
			    "After unloading, %s: mmu_shadow_pages is %lu, expected %lu as in the twin",
			    zapped_root_step_names[step], count, twin_count);
	}

	kvm_vm_free(twin);
	kvm_vm_free(vm);
	if (was_loaded)
		toggle_module(module);
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
 * With one accountant registered, loading another fails with EBUSY and the
 * first goes on counting exactly: a zap and regrow gives the counts it gave
 * before the attempt.  Tried both ways, the Rust module first and the C
 * sample first; leaves the Rust module as it found it.
 */
TEST(second_accountant_busy)
{
	const char *module = getenv(MODULE_ENV), *sample = getenv(SAMPLE_ENV);
	const struct {
		const char *first_name, *first, *second;
	} orders[] = {
		{ MODULE_NAME, module, sample },
		{ SAMPLE_NAME, sample, module },
	};
	u64 expected[2], counts[2];
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	bool was_loaded;
	int i, err;

	if (!module || access(module, R_OK) || !sample || access(sample, R_OK))
		SKIP(return, MODULE_ENV " and " SAMPLE_ENV " do not name readable modules");

	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	was_loaded = module_loaded();
	if (was_loaded)
		unload_module(MODULE_NAME);
	touch_regions(vcpu, MANY_REGIONS);
	zap_and_regrow(vcpu, expected);

	for (i = 0; i < ARRAY_SIZE(orders); i++) {
		err = load_module(orders[i].first);
		TEST_ASSERT(!err, "finit_module(%s) failed: %s", orders[i].first,
			    strerror(err));
		err = load_module(orders[i].second);
		TEST_ASSERT(err == EBUSY,
			    "finit_module(%s) with %s registered: %s, expected EBUSY",
			    orders[i].second, orders[i].first_name,
			    err ? strerror(err) : "loaded");
		zap_and_regrow(vcpu, counts);
		TEST_ASSERT(counts[0] == expected[0] && counts[1] == expected[1],
			    "%s after the refused load: zap and regrow gave %lu and %lu shadow pages, expected %lu and %lu",
			    orders[i].first_name, counts[0], counts[1],
			    expected[0], expected[1]);
		unload_module(orders[i].first_name);
	}

	if (was_loaded)
		toggle_module(module);
	kvm_vm_free(vm);
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
	unsigned int nr_no_breakdown;
	unsigned int nr_hidden;
};

enum breakdown_state {
	BREAKDOWN_SHOWN,
	/* The module could not allocate it, and said so. */
	BREAKDOWN_REPORTED_MISSING,
	/* Kept, but debugfs failed to show it: its callers don't check. */
	BREAKDOWN_HIDDEN,
};

/*
 * With the module loaded, the VM has its breakdown directory, or, if the
 * module could not allocate the breakdown, the module said so, naming the
 * VM.  Only the module's own allocations are reported: debugfs's are not,
 * as kernel code is not meant to check what debugfs_create_*() return.
 */
static enum breakdown_state breakdown_state(struct fault_sweep *sweep,
					    unsigned int nth)
{
	char dir[64], needle[96], report[1024];
	struct kvm_vm *vm = sweep->vcpu->vm;
	bool reported;

	snprintf(dir, sizeof(dir), BREAKDOWN_DEBUGFS "/%d-%d", getpid(), vm->fd);
	snprintf(needle, sizeof(needle), MODULE_NAME ": %d-%d: " NO_BREAKDOWN,
		 getpid(), vm->fd);
	reported = kmsg_read_for(sweep->kmsg_fd, needle, report, sizeof(report));
	if (!access(dir, F_OK)) {
		TEST_ASSERT(!reported,
			    "Allocation %u failing: %s exists, yet the module said: %s",
			    nth, dir, report);
		return BREAKDOWN_SHOWN;
	}
	return reported ? BREAKDOWN_REPORTED_MISSING : BREAKDOWN_HIDDEN;
}

/*
 * With the module gone, nothing of it may be left in debugfs: neither its
 * directory nor, in the debugfs root, files of its that a failed directory
 * left without a parent and that no one would remove.
 */
static void assert_no_breakdown_left(unsigned int nth, const char *when)
{
	static const char * const files[] = { "pages", "totals", "peak" };
	char path[PATH_MAX];
	int i;

	TEST_ASSERT(access(BREAKDOWN_DEBUGFS, F_OK),
		    "Allocation %u failing, %s: %s exists with %s unloaded",
		    nth, when, BREAKDOWN_DEBUGFS, MODULE_NAME);
	for (i = 0; i < ARRAY_SIZE(files); i++) {
		snprintf(path, sizeof(path), FAULT_DEBUGFS "/%s", files[i]);
		TEST_ASSERT(access(path, F_OK),
			    "Allocation %u failing, %s: %s exists, a breakdown file outside %s, left for anyone to open into the unloaded module",
			    nth, when, path, BREAKDOWN_DEBUGFS);
	}
}

/*
 * Loads the module with the @nth allocation failing: the load must fail with
 * ENOMEM and leave nothing loaded, or succeed, and whoever is in charge
 * afterwards must count exactly.  A module that could not allocate the VM's
 * breakdown must still count it, and say which VM it is.  Returns false if
 * the load made fewer than @nth allocations.
 */
static bool faulted_load(struct fault_sweep *sweep, unsigned int nth)
{
	struct kvm_vm *vm = sweep->vcpu->vm;
	unsigned int left;
	char report[1024];
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
		if (kmsg_read_for(sweep->kmsg_fd, MODULE_NAME ": " MODULE_INIT_FAILED,
				  report, sizeof(report)))
			sweep->nr_init_failed++;
		sweep->nr_failed++;
		assert_no_breakdown_left(nth, "after the failed load");
	} else {
		TEST_ASSERT(module_loaded(),
			    "Allocation %u failing: the load succeeded, but %s is not loaded",
			    nth, MODULE_NAME);
		switch (breakdown_state(sweep, nth)) {
		case BREAKDOWN_REPORTED_MISSING:
			sweep->nr_no_breakdown++;
			break;
		case BREAKDOWN_HIDDEN:
			sweep->nr_hidden++;
			break;
		case BREAKDOWN_SHOWN:
			break;
		}
		assert_zap_and_regrow(sweep->vcpu, sweep->expected, nth,
				      "with the module loaded");
		toggle_module(sweep->module);
		assert_no_breakdown_left(nth, "after unloading the loaded module");
		if (!left)
			sweep->nr_loaded++;
	}
	assert_zap_and_regrow(sweep->vcpu, sweep->expected, nth,
			      "after the load");
	return !left;
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
	unsigned int nth;
	u64 again[2];
	struct kvm_vm *vm;
	bool was_loaded;

	/* A failing debugfs allocation may leave a breakdown file out. */
	skip_breakdown_on_count_reads();
	vm = create_busy_vm(&sweep.vcpu, MANY_REGIONS);
	if (!vm)
		SKIP(return, BUSY_VM_SKIP_REASON);
	/* The sweep loads the module itself, from KVM's own accounting. */
	was_loaded = module_loaded();
	if (was_loaded)
		unload_module(MODULE_NAME);

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
	sweep.kmsg_fd = kmsg_open_at_end();

	for (nth = 1; nth < MAX_LOAD_ALLOCATIONS; nth++) {
		if (!faulted_load(&sweep, nth))
			break;
		if (nth % 50 == 0)
			ksft_print_msg("%u loads: %u failed, %u loaded\n",
				       nth, sweep.nr_failed, sweep.nr_loaded);
	}
	TEST_ASSERT(nth < MAX_LOAD_ALLOCATIONS,
		    "Loads made %u allocations or more", MAX_LOAD_ALLOCATIONS);
	TEST_ASSERT(sweep.nr_failed,
		    "None of %u loads failed: no injected failure reached the load",
		    nth);
	TEST_ASSERT(sweep.nr_init_failed,
		    "None of %u loads failed in the module's init, which allocates",
		    nth);
	/*
	 * Which of the module's allocations a given nth hits moves with the
	 * slab and dentry caches' state (a new slab page is an allocation of
	 * its own), so whether the counters' or a dentry's failure is met
	 * varies between boots; that some load left the VM without its
	 * breakdown, and counted it exactly all the same, does not.
	 */
	TEST_ASSERT(sweep.nr_no_breakdown + sweep.nr_hidden,
		    "None of %u loads left the VM without a breakdown: no injected failure reached its allocation",
		    nth);
	ksft_print_msg("%u allocations per load: %u loads failed (%u in the init), %u loaded\n",
		       nth - 1, sweep.nr_failed, sweep.nr_init_failed,
		       sweep.nr_loaded);
	ksft_print_msg("Loaded without the VM's breakdown: %u said so, %u hidden by debugfs\n",
		       sweep.nr_no_breakdown, sweep.nr_hidden);

	close(sweep.kmsg_fd);
	close(sweep.module_fd);
	close(sweep.fail_nth_fd);
	kvm_vm_free(vm);
	if (was_loaded)
		toggle_module(sweep.module);
}

TEST_HARNESS_MAIN
