// SPDX-License-Identifier: GPL-2.0-only
/*
 * Watch KVM's mmu_shadow_pages stat follow a guest that builds up and tears
 * down shadow page tables.
 *
 * The guest writes to one address in each of a growing number of 2MiB
 * regions.  Each region has its own guest page table, which KVM must shadow
 * with a shadow page of its own when it runs on the shadow MMU
 * (kvm_amd.npt=0 or kvm_intel.ept=0).  On the TDP MMU, where only nested
 * guests have shadow pages, an L1 runs the same guest as its L2 under
 * nested NPT, every region in L2 memory of its own that L1's NPT maps with
 * a table per region, which KVM shadows one each.  The host then squeezes
 * the VM with KVM_SET_NR_MMU_PAGES, which zaps shadow pages and keeps
 * zapping while the guest goes on touching all the regions (nested, the
 * limit is lifted first, see demo()), and finally destroys the VM.
 * After each step the stat is printed as read from the VM's binary stats fd,
 * the VM's debugfs file and the global debugfs file; with kvm_shadow_stats.ko
 * loaded, its breakdown of the VM's pages follows the table.
 *
 * With "--churn ROUNDS" (0: until killed) it is instead a quiet workload for
 * benchmarks and stress tests: every round the guest touches all regions
 * under one of two page-table roots, and the host zaps through the page
 * limit and, every few rounds, by deleting and re-adding the data memslot.
 * It prints how long the rounds took by CLOCK_MONOTONIC and how many shadow
 * page events they made.  With "--hold [REGIONS]" it builds the shadow page
 * tables of the first REGIONS regions (the demo's 256 by default, up to
 * 262144, about one shadow page each) once and then keeps the VM until killed,
 * so that VMs of different sizes can be watched side by side.
 *
 * With "--steps" it goes through the zaps that an accounting of shadow pages
 * must follow, stopping itself (SIGSTOP) after each step, named on stdout
 * before the stop, so that its count can be compared with KVM's while the VM
 * does not run: the guest touches every region, the data memslot is deleted,
 * which zaps the root the vCPU still holds (KVM counts it until the vCPU
 * drops it, when the guest runs next), the guest touches every region
 * again, KVM_SET_NR_MMU_PAGES squeezes the VM to 64 pages, and the guest
 * touches every region under that limit.  The bench compares the module's
 * breakdown and the BPF alternative's (tools/kvm/kvm_shadow_bpf.bt) with it.
 *
 * "--hold [REGIONS] --probe" also measures how long the VM's mmu_lock keeps
 * a vCPU waiting, for the hand-over benchmark: a thread calls
 * KVM_SET_NR_MMU_PAGES with the VM's own page limit again and again, which
 * zaps nothing but takes mmu_lock for write each time, and times each call
 * by CLOCK_MONOTONIC.  Each SIGUSR1 prints the longest of the calls that
 * ended since the previous report (or since the probe started), and how
 * many there were, and starts over.
 *
 * Built with the KVM selftest library; the stat means the same whether KVM
 * or a registered accountant such as kvm_shadow_stats.ko maintains it.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <linux/sizes.h>

#include "kvm_util.h"
#include "processor.h"
#include "svm_util.h"

#define DEMO_GVA		0x40000000UL
/* Where L2's regions are under nested NPT, past any memslot. */
#define DEMO_L2_GPA		BIT_ULL(36)
/* Where the data page is, unless memslot 0 reaches that far (create_vm()). */
#define DEMO_DATA_GPA		0x10000000UL
#define DEMO_DATA_SLOT		1
/* The regions of the demo and of the churn workload. */
#define DEMO_MAX_REGIONS	256
/*
 * A VM kept by --hold may be bigger, for hand-over benchmarks: 262144 regions
 * are about 262144 shadow pages, some 3 GiB of the host's memory with the
 * guest page tables they shadow.
 */
#define HOLD_MAX_REGIONS	262144
#define DEMO_MIN_MMU_PAGES	64	/* KVM_MIN_ALLOC_MMU_PAGES */
/* A page limit that leaves a VM of that many regions all its shadow pages. */
#define DEMO_MMU_PAGES(regions)	(4 * (regions))
#define CHURN_SLOT_EVERY	8

/* Number of 2MiB regions the guest touches on its next pass. */
static u64 nr_regions;
/* Two page-table roots with the same mappings, or 0 to stay on one. */
static u64 root_a, root_b;
/* The guest physical address of the data page. */
static u64 data_gpa = DEMO_DATA_GPA;
/* Whether the guest runs as L2 under nested NPT, see create_vm(). */
static bool nested;

static void guest_code(void)
{
	u64 i;

	for (;;) {
		for (i = 0; i < READ_ONCE(nr_regions); i++)
			WRITE_ONCE(*(u64 *)(DEMO_GVA + i * SZ_2M), i);
		GUEST_SYNC(nr_regions);
		/* A new CR3 makes KVM find or build another shadow root. */
		if (root_a)
			set_cr3(get_cr3() == root_a ? root_b : root_a);
	}
}

/* L1 runs guest_code() as its L2, which neither calls L1 nor exits to it. */
static void l1_guest_code(struct svm_test_data *svm)
{
	generic_svm_setup(svm, guest_code);
	run_guest(svm->vmcb, svm->vmcb_gpa);
	GUEST_FAIL("L2 exited to L1, exit code 0x%lx", svm->vmcb->control.exit_code);
}

static u64 read_debugfs_stat(const char *dir)
{
	char path[PATH_MAX], buf[32] = "";
	int fd;

	snprintf(path, sizeof(path), "/sys/kernel/debug/kvm/%s/mmu_shadow_pages", dir);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return (u64)-1;
	TEST_ASSERT(read(fd, buf, sizeof(buf) - 1) > 0, "reading %s failed", path);
	close(fd);
	return strtoull(buf, NULL, 10);
}

static void show(struct kvm_vm *vm, const char *step)
{
	char vm_dir[32];

	snprintf(vm_dir, sizeof(vm_dir), "%d-%d", getpid(), vm->fd);
	printf("%-44s %12lu %12lu %12lu\n", step, vm_get_stat(vm, mmu_shadow_pages),
	       read_debugfs_stat(vm_dir), read_debugfs_stat("."));
	fflush(stdout);
}

/*
 * kvm_shadow_stats.ko's files about the VM, if it is loaded: where the
 * shadow pages are, their memory, the peak and the churn.  Read into @buf,
 * to be shown after the table; empty without the module.
 */
static void read_breakdown(struct kvm_vm *vm, char *buf, size_t size)
{
	static const char * const files[] = { "pages", "totals" };
	char dir[64], path[PATH_MAX], line[256];
	size_t len = 0;
	FILE *file;
	int i;

	buf[0] = '\0';
	snprintf(dir, sizeof(dir), "/sys/kernel/debug/kvm_shadow_stats/%d-%d",
		 getpid(), vm->fd);
	for (i = 0; i < ARRAY_SIZE(files); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		file = fopen(path, "r");
		if (!file)
			return;
		if (!len)
			len = snprintf(buf, size, "\n%s/{pages,totals} before the VM went:\n",
				       dir);
		while (fgets(line, sizeof(line), file) && len < size)
			len += snprintf(buf + len, size - len, "  %s", line);
		fclose(file);
	}
}

static void run_pass(struct kvm_vm *vm, struct kvm_vcpu *vcpu, u64 nr)
{
	struct ucall uc;

	nr_regions = nr;
	sync_global_to_guest(vm, nr_regions);
	vcpu_run(vcpu);
	TEST_ASSERT(get_ucall(vcpu, &uc) == UCALL_SYNC,
		    "guest stopped with ucall %lu instead of a sync", uc.cmd);
}

static void set_mmu_pages(struct kvm_vm *vm, u64 limit)
{
	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)limit);
}

/* A VM with REGIONS regions mapped, none of them touched yet. */
static struct kvm_vm *create_vm(struct kvm_vcpu **vcpu, u64 regions)
{
	struct kvm_userspace_memory_region2 *slot0;
	struct kvm_vm *vm;
	gva_t svm_gva;
	u64 i, end;

	/*
	 * The library sizes the room for guest page tables by the memory a
	 * test says it will map; one page table maps 2MiB of 4KiB pages, and
	 * nested, one NPT table as much again.
	 */
	nested = kvm_is_tdp_enabled() && kvm_cpu_has(X86_FEATURE_SVM) && kvm_cpu_has_npt();
	vm = __vm_create_with_one_vcpu(vcpu, (nested ? 2 : 1) * regions * (SZ_2M / PAGE_SIZE),
				       nested ? (void *)l1_guest_code : guest_code);
	if (nested) {
		vm_enable_tdp(vm);
		vcpu_alloc_svm(vm, &svm_gva);
		vcpu_args_set(*vcpu, 1, svm_gva);
	}
	/*
	 * Every region maps the same data page, in a memslot of its own so
	 * that deleting it zaps shadow pages without touching the page tables.
	 * Memslot 0 grows with the room for page tables: past 32,000 regions
	 * or so, the data page goes after it.
	 */
	slot0 = &memslot2region(vm, 0)->region;
	end = slot0->guest_phys_addr + slot0->memory_size;
	data_gpa = end > DEMO_DATA_GPA ? (end + SZ_2M - 1) & ~(SZ_2M - 1UL) : DEMO_DATA_GPA;
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, data_gpa, DEMO_DATA_SLOT, 1, 0);
	for (i = 0; i < regions; i++)
		virt_pg_map(vm, DEMO_GVA + i * SZ_2M,
			    nested ? DEMO_L2_GPA + i * SZ_2M : data_gpa);
	if (nested) {
		/*
		 * L2 runs on L1's page tables, all of them built by now, in
		 * L1's memory, but for its regions.
		 */
		tdp_identity_map_default_memslots(vm);
		for (i = 0; i < regions; i++)
			tdp_map(vm, DEMO_L2_GPA + i * SZ_2M, data_gpa, PAGE_SIZE);
	}
	set_mmu_pages(vm, DEMO_MMU_PAGES(regions));
	return vm;
}

static void demo(void)
{
	struct kvm_vcpu *vcpu;
	char breakdown[4096];
	struct kvm_vm *vm;
	char step[64];
	u64 nr;

	printf("%-44s %12s %12s %12s\n", "mmu_shadow_pages after", "stats fd",
	       "debugfs VM", "debugfs all");
	vm = create_vm(&vcpu, DEMO_MAX_REGIONS);
	show(vm, "VM created");
	for (nr = DEMO_MAX_REGIONS / 4; nr <= DEMO_MAX_REGIONS; nr *= 4) {
		run_pass(vm, vcpu, nr);
		snprintf(step, sizeof(step), "guest touched %lu regions of 2MiB", nr);
		show(vm, step);
	}
	set_mmu_pages(vm, DEMO_MIN_MMU_PAGES);
	show(vm, "KVM_SET_NR_MMU_PAGES 64");
	/*
	 * Nested, the squeeze zaps the shadows of L1's NPT tables with all
	 * that is below them, and KVM takes the few pages left as the limit
	 * (kvm_mmu_change_mmu_pages()): no room for L2 to fault in, KVM_RUN
	 * would fail with ENOSPC, until the limit is lifted.
	 */
	if (nested) {
		set_mmu_pages(vm, DEMO_MMU_PAGES(DEMO_MAX_REGIONS));
		show(vm, "KVM_SET_NR_MMU_PAGES 1024");
		run_pass(vm, vcpu, DEMO_MAX_REGIONS);
		show(vm, "guest touched 256 regions again");
	} else {
		run_pass(vm, vcpu, DEMO_MAX_REGIONS);
		show(vm, "guest touched 256 regions under that limit");
	}
	read_breakdown(vm, breakdown, sizeof(breakdown));
	kvm_vm_free(vm);
	printf("%-44s %12s %12s %12lu\n", "VM destroyed", "-", "-", read_debugfs_stat("."));
	fputs(breakdown, stdout);
}

static u64 now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void run_churn(u64 rounds)
{
	u64 round, start, elapsed, misses, pages;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;

	vm = create_vm(&vcpu, DEMO_MAX_REGIONS);
	root_a = vm->mmu.pgd;
	root_b = vm_alloc_page_table(vm);
	memcpy(addr_gpa2hva(vm, root_b), addr_gpa2hva(vm, root_a), PAGE_SIZE);
	/* Newer than L1's NPT, which maps the pages in use when it was built. */
	if (nested)
		tdp_map(vm, root_b, root_b, PAGE_SIZE);
	sync_global_to_guest(vm, root_a);
	sync_global_to_guest(vm, root_b);
	/* Warm up: fault in everything once before the clock starts. */
	run_pass(vm, vcpu, DEMO_MAX_REGIONS);

	misses = vm_get_stat(vm, mmu_cache_miss);
	pages = vm_get_stat(vm, mmu_shadow_pages);
	start = now_ns();
	for (round = 1; !rounds || round <= rounds; round++) {
		run_pass(vm, vcpu, DEMO_MAX_REGIONS);
		set_mmu_pages(vm, DEMO_MIN_MMU_PAGES);
		set_mmu_pages(vm, DEMO_MMU_PAGES(DEMO_MAX_REGIONS));
		if (round % CHURN_SLOT_EVERY)
			continue;
		vm_mem_region_delete(vm, DEMO_DATA_SLOT);
		vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, data_gpa,
					    DEMO_DATA_SLOT, 1, 0);
	}
	elapsed = now_ns() - start;
	/*
	 * KVM counts a cache miss for every shadow page it allocates, and
	 * every page allocated and not still there was zapped: together the
	 * shadow page events of the timed rounds, counted by KVM itself.
	 */
	misses = vm_get_stat(vm, mmu_cache_miss) - misses;
	pages = vm_get_stat(vm, mmu_shadow_pages) - pages;
	printf("churn: %lu rounds in %lu ns, mmu_shadow_pages %lu, %lu shadow page events\n",
	       rounds, elapsed, vm_get_stat(vm, mmu_shadow_pages), 2 * misses - pages);
	kvm_vm_free(vm);
}

/* The --probe thread, and its report of the calls since the last one. */
struct probe {
	struct kvm_vm *vm;
	/* The VM's page limit, as create_vm() set it. */
	u64 limit;
	pthread_mutex_t lock;
	pthread_cond_t reported;
	/* Set to ask for a report, cleared by the thread with the report. */
	bool asked;
	u64 longest_ns;
	u64 calls;
};

/*
 * KVM_SET_NR_MMU_PAGES with the VM's own limit, in a loop: each call takes
 * mmu_lock for write and, the VM holding fewer pages than the limit, zaps
 * nothing (kvm_mmu_change_mmu_pages()).  So the longest call is the longest
 * a vCPU faulting in a page would have waited for mmu_lock, plus the
 * call's own cost, about a microsecond, and whatever kept the thread off its
 * CPU (under QEMU -icount, the other vCPU's turns: scripts/bench says how
 * long).  KVM_GET_NR_MMU_PAGES, which would read the limit back, is gone
 * from the kernel; the limit is the one this program set.  The report is
 * made between two calls, so that a call counts in the report that follows
 * its end: after SIGSTOP and SIGCONT, the call that spanned the stop is in
 * the next report.
 */
static void *probe_mmu_lock(void *arg)
{
	u64 start, ns, longest = 0, calls = 0;
	struct probe *probe = arg;
	int ret;

	for (;;) {
		start = now_ns();
		ret = ioctl(probe->vm->fd, KVM_SET_NR_MMU_PAGES, probe->limit);
		ns = now_ns() - start;
		TEST_ASSERT(!ret, "KVM_SET_NR_MMU_PAGES %lu failed: %s", probe->limit,
			    strerror(errno));
		if (ns > longest)
			longest = ns;
		calls++;
		if (!__atomic_load_n(&probe->asked, __ATOMIC_ACQUIRE))
			continue;
		pthread_mutex_lock(&probe->lock);
		probe->longest_ns = longest;
		probe->calls = calls;
		probe->asked = false;
		pthread_cond_signal(&probe->reported);
		pthread_mutex_unlock(&probe->lock);
		longest = 0;
		calls = 0;
	}
	return NULL;
}

/*
 * Start the probe thread, then print its report on each SIGUSR1:
 * "probe: longest KVM_SET_NR_MMU_PAGES NS ns of CALLS calls".
 */
static void probe_until_killed(struct kvm_vm *vm, u64 limit, u64 pages)
{
	struct probe probe = {
		.vm = vm,
		.limit = limit,
		.lock = PTHREAD_MUTEX_INITIALIZER,
		.reported = PTHREAD_COND_INITIALIZER,
	};
	pthread_t thread;
	sigset_t usr1;
	u64 now;

	/* The thread inherits the mask: the signal is this thread's. */
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	TEST_ASSERT(!pthread_sigmask(SIG_BLOCK, &usr1, NULL), "blocking SIGUSR1 failed");
	TEST_ASSERT(!pthread_create(&thread, NULL, probe_mmu_lock, &probe),
		    "creating the probe thread failed");
	printf("probing mmu_lock: KVM_SET_NR_MMU_PAGES %lu in a loop, SIGUSR1 reports\n", limit);
	printf("holding %lu shadow pages\n", pages);
	fflush(stdout);
	for (;;) {
		/* SIGSTOP and SIGCONT make it fail with EINTR (signal(7)). */
		if (sigwaitinfo(&usr1, NULL) < 0) {
			TEST_ASSERT(errno == EINTR, "sigwaitinfo failed: %s", strerror(errno));
			continue;
		}
		pthread_mutex_lock(&probe.lock);
		__atomic_store_n(&probe.asked, true, __ATOMIC_RELEASE);
		while (probe.asked)
			pthread_cond_wait(&probe.reported, &probe.lock);
		printf("probe: longest KVM_SET_NR_MMU_PAGES %lu ns of %lu calls\n",
		       probe.longest_ns, probe.calls);
		pthread_mutex_unlock(&probe.lock);
		fflush(stdout);
		/* The probe must not have changed what it measures. */
		now = vm_get_stat(vm, mmu_shadow_pages);
		TEST_ASSERT(now == pages, "the VM holds %lu shadow pages instead of %lu", now,
			    pages);
	}
}

static void hold_regions(u64 nr, bool probe)
{
	u64 size = nr > DEMO_MAX_REGIONS ? nr : DEMO_MAX_REGIONS;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;

	TEST_ASSERT(nr && nr <= HOLD_MAX_REGIONS, "--hold takes 1 to %d regions, not %lu",
		    HOLD_MAX_REGIONS, nr);
	/* Up to the demo's size, the very VM of the demo. */
	vm = create_vm(&vcpu, size);
	run_pass(vm, vcpu, nr);
	if (probe)
		probe_until_killed(vm, DEMO_MMU_PAGES(size), vm_get_stat(vm, mmu_shadow_pages));
	printf("holding %lu shadow pages\n", vm_get_stat(vm, mmu_shadow_pages));
	fflush(stdout);
	pause();
}

static void stop_after(const char *step, struct kvm_vm *vm)
{
	printf("step: %s: mmu_shadow_pages %lu\n", step, vm_get_stat(vm, mmu_shadow_pages));
	fflush(stdout);
	raise(SIGSTOP);
}

static void run_steps(void)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;

	vm = create_vm(&vcpu, DEMO_MAX_REGIONS);
	run_pass(vm, vcpu, DEMO_MAX_REGIONS);
	stop_after("touched", vm);
	vm_mem_region_delete(vm, DEMO_DATA_SLOT);
	stop_after("memslot deleted, root in use", vm);
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, data_gpa, DEMO_DATA_SLOT, 1, 0);
	run_pass(vm, vcpu, DEMO_MAX_REGIONS);
	stop_after("touched again, root dropped", vm);
	set_mmu_pages(vm, DEMO_MIN_MMU_PAGES);
	stop_after("squeezed", vm);
	run_pass(vm, vcpu, DEMO_MAX_REGIONS);
	stop_after("touched under the limit", vm);
	kvm_vm_free(vm);
}

int main(int argc, char *argv[])
{
	bool probe = argc > 2 && !strcmp(argv[argc - 1], "--probe");

	if (argc == 3 && !probe && !strcmp(argv[1], "--churn"))
		run_churn(strtoull(argv[2], NULL, 0));
	else if (argc - probe >= 2 && argc - probe <= 3 && !strcmp(argv[1], "--hold"))
		hold_regions(argc - probe == 3 ? strtoull(argv[2], NULL, 0) : DEMO_MAX_REGIONS,
			     probe);
	else if (argc == 2 && !strcmp(argv[1], "--steps"))
		run_steps();
	else if (argc == 1)
		demo();
	else
		TEST_FAIL("usage: %s [--churn ROUNDS | --hold [REGIONS] [--probe] | --steps]",
			  argv[0]);
	return 0;
}
