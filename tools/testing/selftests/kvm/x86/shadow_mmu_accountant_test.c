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
 * all at once as it loads, of the twin's one event at a time.  So must a VM
 * whose vCPU kept allocating and zapping pages while the load walked its
 * pages, dropping mmu_lock on the way, once it has built all its pages anew.
 *
 * Every VM is attached and shown, also the one that got the fd number of a
 * VM that outlived its fd, which KVM's debugfs has no directory for: the
 * module's totals count every VM, as KVM's global count does.
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
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

/*
 * finit_module() of @module_fd with @params: 0 or its errno, with errno
 * cleared, see path_errno().
 */
static int finit_module_errno(int module_fd, const char *params)
{
	int err = syscall(SYS_finit_module, module_fd, params, 0) ? errno : 0;

	errno = 0;
	return err;
}

static int load_module_params(const char *path, const char *params)
{
	int fd = open_path_or_fail(path, O_RDONLY | O_CLOEXEC);
	int err = finit_module_errno(fd, params);

	close(fd);
	return err;
}

static int load_module(const char *path)
{
	return load_module_params(path, "");
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

/*
 * What a test that loads and unloads the module found, to leave it so.
 * The fixtures below put it back from the parent, so that a test that
 * fails halfway leaves the module as found too.  A timeout kills the
 * parent along with the test: in a boot that loaded the module,
 * run-selftests then loads it again.
 */
struct module_state {
	const char *path;
	bool was_loaded;
	/*
	 * Another accountant that the test loads, if any: KVM refuses the
	 * module while it is registered, so it goes first.
	 */
	const char *accountant;
};

/* Why a test of the module with VMs that hold shadow pages cannot run here. */
static const char *module_test_skip_reason(void)
{
	const char *module = getenv(MODULE_ENV);

	if (!module || access(module, R_OK))
		return MODULE_ENV " does not name a readable " MODULE_NAME ".ko";
	if (!have_kvm_debugfs())
		return KVM_DEBUGFS " is missing";
	if (kvm_is_tdp_enabled() && !have_nested_npt())
		return BUSY_VM_SKIP_REASON;
	return NULL;
}

/*
 * A fixture's setup: skips the test if it cannot run here, else saves the
 * module's state for the teardown to restore.
 */
static bool setup_module_test(struct __test_metadata *_metadata,
			      struct module_state *state)
{
	const char *reason = module_test_skip_reason();

	if (reason)
		SKIP(return false, "%s", reason);
	state->path = getenv(MODULE_ENV);
	state->was_loaded = module_loaded();
	return true;
}

static void set_module_loaded(const struct module_state *state, bool loaded)
{
	if (module_loaded() != loaded)
		toggle_module(state->path);
}

static void restore_module_state(const struct module_state *state)
{
	if (state->accountant && __module_loaded(state->accountant))
		unload_module(state->accountant);
	set_module_loaded(state, state->was_loaded);
}

/* For a test that loads and unloads the module and nothing else. */
FIXTURE(module_restored) {
	struct module_state module;
};

FIXTURE_SETUP(module_restored)
{
	setup_module_test(_metadata, &self->module);
}

FIXTURE_TEARDOWN_PARENT(module_restored)
{
	restore_module_state(&self->module);
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

TEST_F(module_restored, module_handover)
{
	u64 expected[ARRAY_SIZE(handover_steps)];
	struct kvm_vcpu *vcpu, *twin_vcpu;
	struct sp_breakdown bd, before;
	struct kvm_vm *vm, *twin;
	u64 global, twin_count;
	bool breakdown;
	int i;

	global = global_shadow_pages();

	/*
	 * Whoever keeps the count keeps it for every VM, so a reference VM
	 * alive across the handover would go through it too.  Record the
	 * reference counts beforehand instead, from two identical VMs run in
	 * lock-step: their agreement is what makes the counts a reference.
	 */
	vm = create_busy_vm(&vcpu, MANY_REGIONS);
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
		toggle_module(self->module.path);
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

	TEST_ASSERT(module_loaded() == self->module.was_loaded,
		    MODULE_NAME " is %s, expected it %s as found",
		    module_loaded() ? "loaded" : "unloaded",
		    self->module.was_loaded ? "loaded" : "unloaded");
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
 * Building the two VMs takes minutes on a debug kernel's TCG guest.
 */
TEST_F_TIMEOUT(module_restored, breakdown_found_at_load, 1800)
{
	struct kvm_vcpu *vcpus[2], *twin_vcpus[2];
	struct sp_breakdown bd, twin_bd, before, twin_before;
	bool nested = kvm_is_tdp_enabled();
	struct kvm_vm *vm, *twin;
	u64 count, twin_count;
	struct sp_delta delta;
	char what[128];
	int root, step;

	set_module_loaded(&self->module, false);
	vm = create_zapped_root_vm(vcpus);
	root = sp_bucket(shadow_root_level(vm, nested), false, nested, false);
	for (step = 0; step < LOAD_HERE; step++)
		run_zapped_root_step(vcpus, step);
	count = shadow_pages(vm);
	TEST_ASSERT(count > HUGE_NR_REGIONS,
		    "mmu_shadow_pages is %lu, expected over %d, a page per region and more",
		    count, HUGE_NR_REGIONS);

	toggle_module(self->module.path);
	TEST_ASSERT_EQ(shadow_pages(vm), count);
	if (!have_breakdown())
		SKIP(return, MODULE_NAME ".ko keeps no breakdown in " BREAKDOWN_DEBUGFS);
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
	toggle_module(self->module.path);
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
}

/* Far above the fds a test opens otherwise, far below RLIMIT_NOFILE. */
#define MOVED_FD_MIN		512

static int move_fd_up(int fd)
{
	int moved = fcntl(fd, F_DUPFD, MOVED_FD_MIN);

	TEST_ASSERT(moved >= MOVED_FD_MIN, "fcntl(%d, F_DUPFD, %d) failed",
		    fd, MOVED_FD_MIN);
	TEST_ASSERT(!close(fd), "close(%d) failed", fd);
	return moved;
}

/*
 * @vm outlives its fd number, which KVM named it after: its fd moves up,
 * and so does the /dev/kvm fd it was created from, as the library opens
 * /dev/kvm right before KVM_CREATE_VM.  The next VM then gets both numbers
 * back, and the VM's name.  Returns that fd number.
 */
static int vm_give_up_fd(struct kvm_vm *vm)
{
	int fd = vm->fd;

	vm->kvm_fd = move_fd_up(vm->kvm_fd);
	vm->fd = move_fd_up(vm->fd);
	return fd;
}

/* The breakdown directory @dir must be @what's, with @what's @count pages. */
static void assert_vm_dir(const char *dir, int fd, u64 count, const char *what)
{
	struct sp_breakdown bd;

	TEST_ASSERT(!path_errno(dir, F_OK), "%s has no breakdown: %s is missing",
		    what, dir);
	read_breakdown_dir(dir, &bd);
	assert_breakdown_vm_file(dir, getpid(), fd);
	TEST_ASSERT(bd.totals.pages == count,
		    "%s/totals: pages %lu, expected %lu, the mmu_shadow_pages of %s",
		    dir, bd.totals.pages, count, what);
}

/*
 * VM A outlives its fd number: the fd moves elsewhere, and VM B, created
 * next, gets the number.  KVM names a VM's debugfs directory <pid>-<fd>
 * after the number the VM was created with, so it has "<pid>-<fd>" for A
 * and, logging "duplicate directory", none for B; its global count has
 * both.  The module must attach and show both VMs all the same, whether it
 * was loaded before they were created or after: A, attached first, under
 * KVM's name, B under <pid>-<fd>.1, each with its own pages, and its
 * global totals must count both, as KVM's global count does.  The VMs touch
 * different numbers of regions, so that their pages tell them apart.  When
 * they go, so do their directories.
 */
FIXTURE(vm_name_taken) {
	struct module_state module;
};

FIXTURE_VARIANT(vm_name_taken) {
	bool load_after_vms;
};

FIXTURE_VARIANT_ADD(vm_name_taken, module_loaded_first) {
	.load_after_vms = false,
};

FIXTURE_VARIANT_ADD(vm_name_taken, module_loaded_last) {
	.load_after_vms = true,
};

FIXTURE_SETUP(vm_name_taken)
{
	setup_module_test(_metadata, &self->module);
}

FIXTURE_TEARDOWN_PARENT(vm_name_taken)
{
	restore_module_state(&self->module);
}

/* A debug kernel's TCG guest is ten times slower than the harness's 30 s allow. */
TEST_F_TIMEOUT(vm_name_taken, fd_reuse, 600)
{
	static const char * const names[2] = { "VM A", "VM B" };
	const int nr_regions[2] = { NR_REGIONS, 2 * NR_REGIONS };
	char dirs[2][PATH_MAX], path[PATH_MAX];
	u64 counts[2], baseline, count;
	struct kvm_vcpu *vcpus[2];
	struct sp_breakdown top;
	struct kvm_vm *vms[2];
	int fd, i;

	set_module_loaded(&self->module, !variant->load_after_vms);
	baseline = global_shadow_pages();

	vms[0] = create_busy_vm(&vcpus[0], nr_regions[0]);
	touch_regions(vcpus[0], nr_regions[0]);
	fd = vm_give_up_fd(vms[0]);
	vms[1] = create_busy_vm(&vcpus[1], nr_regions[1]);
	TEST_ASSERT(vms[1]->fd == fd,
		    "VM B got fd %d, expected %d, the number VM A gave up",
		    vms[1]->fd, fd);
	touch_regions(vcpus[1], nr_regions[1]);

	/*
	 * The counts come from the stats fds alone: the library finds a VM's
	 * directories by vm->fd, which names neither of these VMs' own.
	 */
	for (i = 0; i < 2; i++)
		counts[i] = vm_get_stat(vms[i], mmu_shadow_pages);
	TEST_ASSERT(counts[0] && counts[1] > counts[0],
		    "VM A has %lu shadow pages, VM B %lu, expected more in B, which touched %d regions to A's %d",
		    counts[0], counts[1], nr_regions[1], nr_regions[0]);

	/* What KVM shows: A under the name, B nowhere but in the global count. */
	snprintf(path, sizeof(path), KVM_DEBUGFS "/%d-%d/mmu_shadow_pages",
		 getpid(), fd);
	count = read_debugfs_count(path);
	TEST_ASSERT(count == counts[0],
		    "%s is %lu, expected %lu, the count of VM A, created first",
		    path, count, counts[0]);
	count = global_shadow_pages();
	TEST_ASSERT(count == baseline + counts[0] + counts[1],
		    "Global mmu_shadow_pages is %lu, expected %lu, VM A's %lu and VM B's %lu more than before",
		    count, baseline + counts[0] + counts[1], counts[0], counts[1]);

	if (variant->load_after_vms)
		toggle_module(self->module.path);
	if (!have_breakdown())
		SKIP(return, MODULE_NAME ".ko keeps no breakdown in " BREAKDOWN_DEBUGFS);

	/* Attached in the order they were created, at load time too. */
	snprintf(dirs[0], sizeof(dirs[0]), BREAKDOWN_DEBUGFS "/%d-%d", getpid(), fd);
	snprintf(dirs[1], sizeof(dirs[1]), BREAKDOWN_DEBUGFS "/%d-%d.1", getpid(), fd);
	for (i = 0; i < 2; i++)
		assert_vm_dir(dirs[i], fd, counts[i], names[i]);
	snprintf(path, sizeof(path), BREAKDOWN_DEBUGFS "/%d-%d.2", getpid(), fd);
	TEST_ASSERT(path_errno(path, F_OK) == ENOENT,
		    "%s exists, expected two VMs named after fd %d, not three",
		    path, fd);

	read_global_breakdown(&top);
	TEST_ASSERT(top.totals.pages == count,
		    "%s/totals: pages %lu, expected %lu, KVM's global mmu_shadow_pages, with VM A's %lu and VM B's %lu",
		    BREAKDOWN_DEBUGFS,
		    top.totals.pages, count, counts[0], counts[1]);
	assert_global_breakdown(NULL);

	/* B's directory goes with B, A's stays, then goes with A. */
	kvm_vm_free(vms[1]);
	TEST_ASSERT(path_errno(dirs[1], F_OK) == ENOENT,
		    "%s is left after VM B is gone", dirs[1]);
	assert_vm_dir(dirs[0], fd, counts[0], names[0]);
	kvm_vm_free(vms[0]);
	TEST_ASSERT(path_errno(dirs[0], F_OK) == ENOENT,
		    "%s is left after VM A is gone", dirs[0]);
	read_global_breakdown(&top);
	TEST_ASSERT(top.totals.pages == baseline,
		    "%s/totals: pages %lu with both VMs gone, expected %lu as before",
		    BREAKDOWN_DEBUGFS,
		    top.totals.pages, baseline);
}

/*
 * The VM of the paused walk touches more regions than its page limit lets
 * it hold, round and round, so that every touch faults and allocates a
 * shadow page, and every twenty or so zap the oldest pages, at the end of
 * the list where the walk that attaches the VM ends: pages zapped before
 * the walk reaches them, pages allocated behind it.  It holds thousands of
 * pages all the while, and the walk drops mmu_lock every
 * KVM_MMU_ACCOUNTANT_WALK_BATCH (512) of them.
 */
#define CHURN_REGIONS		(4 * HUGE_NR_REGIONS)
#define CHURN_MMU_PAGES		(3UL * CHURN_REGIONS / 4)
#define CHURN_AMPLE_MMU_PAGES	(2UL * CHURN_REGIONS)
#define CHURN_BURST		16
#define CHURN_BURSTS_PER_PASS	(CHURN_REGIONS / CHURN_BURST)
#define CHURN_NAP_NS		100000
#define WATCH_NAP_NS		20000
/*
 * The pages a load must find for its walk to pause at least four times.
 * Under nested NPT, zapping the oldest pages zaps the children they leave
 * without a parent too, and the VM's count drops by thousands now and then.
 */
#define MIN_WALK_PAGES		(4 * 512)
/*
 * KVM zaps the oldest pages once fewer than KVM_MIN_FREE_MMU_PAGES (5) are
 * left below the limit, until KVM_REFILL_PAGES (25) are: a limit this far
 * above the count makes the next fault zap 21 pages.
 */
#define ZAP_ON_NEXT_FAULT	4
/*
 * Loads that may miss the walk before the test gives up, and the bursts
 * between two.  In a TCG guest, the walk of a few thousand pages takes
 * less time than a sleeping thread takes to wake up: the vCPU thread runs
 * into the walk of about one load in four.  Under nested NPT, the churn may zap all but a
 * few pages at once: the test waits until they are back, for a while.
 */
#define MAX_CHURN_LOADS		40
#define CHURN_BURSTS_PER_LOAD	16
#define MAX_CHURN_WAITS		(4 * CHURN_BURSTS_PER_PASS / CHURN_BURSTS_PER_LOAD)

/*
 * The vCPU thread runs as a real-time thread.  Outside module loads, it
 * touches regions a burst at a time, and sleeps a little in between, so
 * that the loading thread gets to run.  During a load, it only looks
 * at the VM's breakdown, until it sees the walk under way: then it touches
 * a region, and looks again.  It sleeps a little between looks, on the
 * CPU of the loading thread, which it preempts as soon as it wakes up and
 * the load may be preempted: if the load is in the walk, between two
 * batches, where it drops mmu_lock.  So all the events of the load come
 * while the walk is paused.
 */
struct churn {
	struct kvm_vcpu *vcpu;
	pthread_t thread;
	int first;
	bool stop;
	bool watch;
	u64 nr_bursts;
	u64 nr_looks;
	/* The VM's breakdown directory, and the bucket of its root. */
	char dir[PATH_MAX];
	int root_bucket;
	/* Touches made while the walk of the last load was under way. */
	u64 nr_walk_touches;
};

/* Touches the next @nr regions, or fewer, up to the last. */
static void touch_next_regions(struct churn *churn, int nr)
{
	nr = min(nr, CHURN_REGIONS - churn->first);
	touch_regions_from(churn->vcpu, churn->first, nr);
	churn->first = (churn->first + nr) % CHURN_REGIONS;
}

static u64 breakdown_found(const struct sp_breakdown *bd)
{
	u64 found = 0;
	int b;

	for (b = 0; b < NR_SP_BUCKETS; b++)
		found += sp_bucket_found(&bd->bucket[b]);
	return found;
}

/*
 * The walk shows the root last, as the page that the VM has held longest:
 * it is under way if it has shown pages, but not the root.
 */
static void watch_walk(struct churn *churn)
{
	struct sp_breakdown bd;

	if (read_breakdown_pages(churn->dir, &bd) && breakdown_found(&bd) &&
	    !sp_bucket_found(&bd.bucket[churn->root_bucket])) {
		touch_next_regions(churn, 1);
		churn->nr_walk_touches++;
	}
	__atomic_store_n(&churn->nr_looks, churn->nr_looks + 1, __ATOMIC_RELEASE);
}

static void *churn_regions(void *arg)
{
	struct timespec watch_nap = { .tv_nsec = WATCH_NAP_NS };
	struct timespec nap = { .tv_nsec = CHURN_NAP_NS };
	struct sched_param param = { .sched_priority = 1 };
	struct churn *churn = arg;
	int r;

	r = pthread_setschedparam(pthread_self(), SCHED_FIFO, &param);
	TEST_ASSERT(!r, "Failed to make the vCPU thread SCHED_FIFO: %s",
		    strerror(r));
	while (!READ_ONCE(churn->stop)) {
		if (READ_ONCE(churn->watch)) {
			watch_walk(churn);
			nanosleep(&watch_nap, NULL);
			continue;
		}
		touch_next_regions(churn, CHURN_BURST);
		__atomic_store_n(&churn->nr_bursts, churn->nr_bursts + 1,
				 __ATOMIC_RELEASE);
		nanosleep(&nap, NULL);
	}
	return NULL;
}

/* Returns once the vCPU thread has counted @nr more in @counter. */
static void wait_for_count(u64 *counter, u64 nr)
{
	u64 end = __atomic_load_n(counter, __ATOMIC_ACQUIRE) + nr;

	while (__atomic_load_n(counter, __ATOMIC_ACQUIRE) < end)
		usleep(1000);
}

/*
 * From touching regions to watching the walk, or back: two looks, or two
 * bursts, after asking, the one under way when asked is over.
 */
static void churn_watch(struct churn *churn, bool watch)
{
	WRITE_ONCE(churn->watch, watch);
	wait_for_count(watch ? &churn->nr_looks : &churn->nr_bursts, 2);
}

/*
 * The vCPU thread shares the loading thread's CPU: on a CPU of its own, it
 * could not run into a walk of a few thousand pages, which is over before
 * the vCPU faults once it has seen it begin.
 */
static void start_churn(struct churn *churn)
{
	cpu_set_t cpus;

	CPU_ZERO(&cpus);
	CPU_SET(sched_getcpu(), &cpus);
	TEST_ASSERT(!sched_setaffinity(0, sizeof(cpus), &cpus),
		    "Failed to keep the test on one CPU");
	pthread_create(&churn->thread, NULL, churn_regions, churn);
}

static void stop_churn(struct churn *churn)
{
	WRITE_ONCE(churn->stop, true);
	pthread_join(churn->thread, NULL);
}

/* KVM's own stats of a VM's shadow page events, module or not. */
struct sp_events {
	/* Lookups that found no page, each followed by an allocation. */
	u64 cache_misses;
	u64 zapped;
	u64 pages;
};

static void read_sp_events(struct kvm_vm *vm, struct sp_events *events)
{
	events->cache_misses = vm_get_stat(vm, mmu_cache_miss);
	events->zapped = vm_get_stat(vm, mmu_shadow_zapped);
	events->pages = vm_get_stat(vm, mmu_shadow_pages);
}

/*
 * Zaps all of the VM's shadow pages, the root in use included, lifts the
 * limit and touches every region once more: the VM then holds the same
 * pages whatever it did before.
 */
static void settle_churn_vm(struct kvm_vcpu *vcpu)
{
	struct kvm_vm *vm = vcpu->vm;

	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)CHURN_AMPLE_MMU_PAGES);
	vm_mem_region_delete(vm, TEST_SLOT);
	add_touch_memslot(vm, CHURN_REGIONS);
	touch_regions(vcpu, CHURN_REGIONS);
}

/*
 * The module loads while a vCPU faults and zaps shadow pages in a VM of
 * thousands, as the walk that attaches the VM drops mmu_lock between its
 * batches.  The vCPU is still from before the load until it sees the walk
 * under way, and still again once the walk is over, so the walk starts with
 * the pages held before the load, and the breakdown must tell every event of
 * the load exactly: each page allocated was shown to the module as
 * allocated, each page zapped was either shown and then zapped, or never
 * shown, and the pages found are the pages held before the load less those
 * zapped unshown.  Only a fault while the walk is paused zaps pages that it
 * has not shown yet (the oldest, which it shows last) before allocating
 * one: unless one did, the load is tried again, a few times at most.  The
 * churn then goes on under the module and stops: the pages found stay as
 * they were, and the buckets still sum to the count.  A page the walk missed
 * or showed twice stays in its bucket's count until the VM has zapped every
 * page and built them all again: its buckets must then hold the pages of a
 * twin that did the same after the load.
 */
TEST_F_TIMEOUT(module_restored, paused_walk, 1800)
{
	u64 allocated, zapped, unshown, found, count, twin_count;
	struct sp_breakdown bd, twin_bd;
	struct sp_events before, after;
	bool nested = kvm_is_tdp_enabled();
	struct churn churn = {};
	struct kvm_vcpu *twin_vcpu;
	struct kvm_vm *vm, *twin;
	int load, waits, err;

	set_module_loaded(&self->module, false);
	vm = create_busy_vm(&churn.vcpu, CHURN_REGIONS);
	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)CHURN_MMU_PAGES);
	snprintf(churn.dir, sizeof(churn.dir), BREAKDOWN_DEBUGFS "/%d-%d",
		 getpid(), vm->fd);
	churn.root_bucket = sp_bucket(shadow_root_level(vm, nested), false,
				      nested, false);
	/* A page zapped before the walk shows it leaves a count the peak had. */
	breakdown_allow_unseen_zaps();
	/* Reads the stats fd's descriptors, before another thread runs. */
	read_sp_events(vm, &before);
	start_churn(&churn);
	/* After a pass, the VM holds all it may and faults on every touch. */
	wait_for_count(&churn.nr_bursts, CHURN_BURSTS_PER_PASS);

	for (load = 1;; load++) {
		TEST_ASSERT(load <= MAX_CHURN_LOADS,
			    "In %d loads of %s, the vCPU never zapped pages not shown yet and allocated one while the walk was paused",
			    MAX_CHURN_LOADS, MODULE_NAME);
		for (waits = 0;; waits++) {
			TEST_ASSERT(waits < MAX_CHURN_WAITS,
				    "The VM held %d shadow pages or fewer for %d bursts, expected more, for the walk to pause at least 4 times",
				    MIN_WALK_PAGES,
				    MAX_CHURN_WAITS * CHURN_BURSTS_PER_LOAD);
			churn_watch(&churn, true);
			read_sp_events(vm, &before);
			if (before.pages > MIN_WALK_PAGES)
				break;
			churn_watch(&churn, false);
			wait_for_count(&churn.nr_bursts, CHURN_BURSTS_PER_LOAD);
		}
		churn.nr_walk_touches = 0;

		vm_ioctl(vm, KVM_SET_NR_MMU_PAGES,
			 (void *)(before.pages + ZAP_ON_NEXT_FAULT));
		err = load_module(self->module.path);
		TEST_ASSERT(!err, "finit_module(%s) failed: %s", self->module.path,
			    strerror(err));
		if (!have_breakdown()) {
			stop_churn(&churn);
			kvm_vm_free(vm);
			SKIP(return, MODULE_NAME ".ko keeps no breakdown in " BREAKDOWN_DEBUGFS);
		}
		/* Looking again, it sees the walk over, and touches no more. */
		wait_for_count(&churn.nr_looks, 2);
		read_sp_events(vm, &after);
		TEST_ASSERT(read_vm_breakdown(vm, &bd), "VM %d-%d has no breakdown",
			    getpid(), vm->fd);
		vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)CHURN_MMU_PAGES);
		churn_watch(&churn, false);

		allocated = after.cache_misses - before.cache_misses;
		zapped = after.zapped - before.zapped;
		found = breakdown_found(&bd);
		ksft_print_msg("Load %d: %lu pages, %lu touches in the walk, +%lu -%lu pages\n",
			       load, before.pages, churn.nr_walk_touches, allocated,
			       zapped);
		TEST_ASSERT(bd.totals.allocated == allocated,
			    "Load %d: %lu pages allocated since the load, expected %lu, all those allocated while the walk was paused",
			    load, bd.totals.allocated, allocated);
		TEST_ASSERT(found <= before.pages,
			    "Load %d: the walk found %lu pages, expected at most the %lu held before",
			    load, found, before.pages);
		unshown = before.pages - found;
		TEST_ASSERT(bd.totals.zapped + unshown == zapped,
			    "Load %d: %lu pages zapped since the load and %lu of %lu held before not found, expected %lu, all those zapped while the walk was paused",
			    load, bd.totals.zapped, unshown, before.pages, zapped);
		if (allocated && unshown)
			break;
		unload_module(MODULE_NAME);
		wait_for_count(&churn.nr_bursts, CHURN_BURSTS_PER_LOAD);
	}

	/* A pass under the module, then the churn stops. */
	wait_for_count(&churn.nr_bursts, CHURN_BURSTS_PER_PASS);
	stop_churn(&churn);
	count = shadow_pages(vm);
	TEST_ASSERT(read_vm_breakdown(vm, &bd), "VM %d-%d has no breakdown",
		    getpid(), vm->fd);
	ksft_print_msg("After the churn: %lu pages, %lu found, %lu allocated, %lu zapped\n",
		       count, breakdown_found(&bd), bd.totals.allocated,
		       bd.totals.zapped);
	TEST_ASSERT(breakdown_found(&bd) == found,
		    "After the churn, %lu pages found at load time, expected %lu as right after the load",
		    breakdown_found(&bd), found);

	settle_churn_vm(churn.vcpu);
	count = shadow_pages(vm);
	read_vm_breakdown(vm, &bd);

	/* The twin: the same workload, from the start under the module. */
	twin = create_busy_vm(&twin_vcpu, CHURN_REGIONS);
	vm_ioctl(twin, KVM_SET_NR_MMU_PAGES, (void *)CHURN_MMU_PAGES);
	touch_regions(twin_vcpu, CHURN_REGIONS);
	settle_churn_vm(twin_vcpu);
	twin_count = shadow_pages(twin);
	TEST_ASSERT(twin_count == count,
		    "Settled, the twin has %lu shadow pages, expected %lu as the VM walked while it churned",
		    twin_count, count);
	TEST_ASSERT(read_vm_breakdown(twin, &twin_bd), "The twin has no breakdown");
	assert_nothing_found(&twin_bd, "The twin, built after the load");
	assert_breakdown_pages_equal(&twin_bd, &bd,
				     "The VM walked while it churned, settled, against its twin");

	kvm_vm_free(twin);
	kvm_vm_free(vm);
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

/* test_kvm_mmu_accountant.ko, found next to kvm_shadow_stats.ko. */
#define BUGGY_NAME		"test_kvm_mmu_accountant"
#define STRAY_WRITE_PARAM	"/sys/module/" BUGGY_NAME "/parameters/stray_write"
#define STRAY_PAGES		1000
/* Room below the limit for the regions touched after the stray write. */
#define STRAY_ROOM		64

FIXTURE(stray) {
	struct module_state module;
	char buggy[PATH_MAX];
};

FIXTURE_SETUP(stray)
{
	const char *module = getenv(MODULE_ENV);

	if (!setup_module_test(_metadata, &self->module))
		return;
	self->module.accountant = BUGGY_NAME;
	snprintf(self->buggy, sizeof(self->buggy), "%.*s/" BUGGY_NAME ".ko",
		 (int)(strrchr(module, '/') - module), module);
	if (access(self->buggy, R_OK))
		SKIP(return, "no " BUGGY_NAME ".ko next to " MODULE_NAME ".ko");
}

FIXTURE_TEARDOWN_PARENT(stray)
{
	restore_module_state(&self->module);
}

/*
 * KVM's MMU page limit goes by KVM's own count, not by the stat that an
 * accountant keeps.  An accountant that adds 1000 to the stat from outside
 * its callbacks, with the VM a few pages below its limit, makes KVM zap no
 * page, and the stat is put right at the VM's next shadow page event, with
 * a report naming the module: the VM ends up with the very count of a twin
 * that nobody wrote to.  Were the limit read from the stat, the VM's next
 * fault would find no room and zap its oldest pages.
 */
TEST_F_TIMEOUT(stray, stray_write, 600)
{
	struct kvm_vcpu *vcpu, *twin_vcpu;
	u64 pages, twin_pages, recycled;
	struct kvm_vm *vm, *twin;
	char match[512], value[32];
	int err;

	set_module_loaded(&self->module, false);
	err = load_module_params(self->buggy, "bug=none");
	TEST_ASSERT(!err, "finit_module(%s) failed: %s", self->buggy, strerror(err));

	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	twin = create_busy_vm(&twin_vcpu, MANY_REGIONS);
	touch_regions(vcpu, NR_REGIONS);
	touch_regions(twin_vcpu, NR_REGIONS);
	pages = checked_shadow_pages(vm);
	TEST_ASSERT_EQ(checked_shadow_pages(twin), pages);
	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)(pages + STRAY_ROOM));
	vm_ioctl(twin, KVM_SET_NR_MMU_PAGES, (void *)(pages + STRAY_ROOM));
	recycled = vm_get_stat(vm, mmu_recycled);

	/* The stray write goes to the VM of the page accounted last. */
	touch_regions_from(twin_vcpu, NR_REGIONS, 1);
	touch_regions_from(vcpu, NR_REGIONS, 1);
	pages = shadow_pages(vm);
	snprintf(value, sizeof(value), "%d", STRAY_PAGES);
	write_file(STRAY_WRITE_PARAM, value);
	TEST_ASSERT(shadow_pages(vm) == pages + STRAY_PAGES,
		    "mmu_shadow_pages is %lu after the stray write, expected %lu",
		    shadow_pages(vm), pages + STRAY_PAGES);

	touch_regions_from(vcpu, NR_REGIONS + 1, NR_REGIONS);
	touch_regions_from(twin_vcpu, NR_REGIONS + 1, NR_REGIONS);
	TEST_ASSERT(take_accountant_report(match, sizeof(match)) &&
		    strstr(match, "accountant of " BUGGY_NAME " left mmu_shadow_pages at"),
		    "KVM did not report the stray write");
	pages = checked_shadow_pages(vm);
	twin_pages = checked_shadow_pages(twin);
	TEST_ASSERT(pages == twin_pages,
		    "mmu_shadow_pages is %lu after the stray write and %d more regions, expected %lu as in the twin",
		    pages, NR_REGIONS, twin_pages);
	TEST_ASSERT(vm_get_stat(vm, mmu_recycled) == recycled,
		    "KVM zapped %lu pages for its page limit after the stray write, expected none",
		    vm_get_stat(vm, mmu_recycled) - recycled);

	kvm_vm_free(twin);
	kvm_vm_free(vm);
}

/*
 * With one accountant registered, loading another fails with EBUSY and the
 * first goes on counting exactly: a zap and regrow gives the counts it gave
 * before the attempt.  Tried both ways, the Rust module first and the C
 * sample first.
 */
TEST_F(module_restored, second_accountant_busy)
{
	const char *module = self->module.path, *sample = getenv(SAMPLE_ENV);
	const struct {
		const char *first_name, *first, *second;
	} orders[] = {
		{ MODULE_NAME, module, sample },
		{ SAMPLE_NAME, sample, module },
	};
	u64 expected[2], counts[2];
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int i, err;

	if (!sample || access(sample, R_OK))
		SKIP(return, SAMPLE_ENV " does not name a readable " SAMPLE_NAME ".ko");
	self->module.accountant = SAMPLE_NAME;

	vm = create_busy_vm(&vcpu, MANY_REGIONS);
	set_module_loaded(&self->module, false);
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
	int len, err;

	len = snprintf(buf, sizeof(buf), "%u", nth);
	TEST_ASSERT(pwrite(fail_nth_fd, buf, len, 0) == len,
		    "Failed to write %u to fail-nth", nth);
	err = finit_module_errno(module_fd, "");

	/* The countdown stops at 0 on the failure it injects. */
	len = pread(fail_nth_fd, buf, sizeof(buf) - 1, 0);
	TEST_ASSERT(len > 0, "Failed to read fail-nth");
	buf[len] = '\0';
	*left = strtoul(buf, NULL, 10);
	TEST_ASSERT(pwrite(fail_nth_fd, "0", 1, 0) == 1,
		    "Failed to reset fail-nth");
	return err;
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
	if (!path_errno(dir, F_OK)) {
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

	TEST_ASSERT(path_errno(BREAKDOWN_DEBUGFS, F_OK) == ENOENT,
		    "Allocation %u failing, %s: %s exists with %s unloaded",
		    nth, when, BREAKDOWN_DEBUGFS, MODULE_NAME);
	for (i = 0; i < ARRAY_SIZE(files); i++) {
		snprintf(path, sizeof(path), FAULT_DEBUGFS "/%s", files[i]);
		TEST_ASSERT(path_errno(path, F_OK) == ENOENT,
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
	struct module_state module;
	char saved[ARRAY_SIZE(fault_attrs)][16];
	int nr_changed;
};

FIXTURE_SETUP(module_load_faults)
{
	int i;

	if (!setup_module_test(_metadata, &self->module))
		return;
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

/*
 * In the parent, so that a test that died halfway changes nothing either.
 * The module first, which every test after this one depends on, and which
 * no fault is injected into: fail-nth is the test's, and gone with it.
 */
FIXTURE_TEARDOWN_PARENT(module_load_faults)
{
	int i;

	restore_module_state(&self->module);
	for (i = 0; i < self->nr_changed; i++)
		write_file(fault_attrs[i].file, self->saved[i]);
}

/* A debug kernel's TCG guest takes about a second per load and check. */
TEST_F_TIMEOUT(module_load_faults, every_allocation, 3600)
{
	struct fault_sweep sweep = { .module = self->module.path };
	unsigned int nth;
	u64 again[2];
	struct kvm_vm *vm;

	/* A failing debugfs allocation may leave a breakdown file out. */
	skip_breakdown_on_count_reads();
	vm = create_busy_vm(&sweep.vcpu, MANY_REGIONS);
	/* The sweep loads the module itself, from KVM's own accounting. */
	set_module_loaded(&self->module, false);

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

	sweep.fail_nth_fd = open_path_or_fail("/proc/thread-self/fail-nth", O_RDWR);
	sweep.module_fd = open_path_or_fail(sweep.module, O_RDONLY | O_CLOEXEC);
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
}

TEST_HARNESS_MAIN
