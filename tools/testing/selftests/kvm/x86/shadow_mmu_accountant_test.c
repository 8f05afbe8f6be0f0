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
#define BREAKDOWN_DEBUGFS	"/sys/kernel/debug/kvm_shadow_stats"

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
	TEST_ASSERT(sweep.nr_no_breakdown,
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
