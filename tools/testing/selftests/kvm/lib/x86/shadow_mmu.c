// SPDX-License-Identifier: GPL-2.0-only
/*
 * Guests whose every touch of a 2MiB region needs a page table of its own,
 * and the readers of the mmu_shadow_pages stat, for the shadow MMU tests.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include "test_util.h"
#include "kvm_util.h"
#include "processor.h"
#include "svm_util.h"
#include "shadow_mmu.h"

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

bool have_nested_npt(void)
{
	return kvm_cpu_has(X86_FEATURE_SVM) && kvm_cpu_has_npt();
}

int kmsg_open_at_end(void)
{
	int kmsg_fd = open_path_or_exit("/dev/kmsg", O_RDONLY | O_NONBLOCK);

	TEST_ASSERT(lseek(kmsg_fd, 0, SEEK_END) >= 0,
		    "Failed to skip the kernel log so far");
	return kmsg_fd;
}

bool kmsg_read_for(int kmsg_fd, const char *needle, char *match, size_t size)
{
	char record[8192], *message;
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
		if (found || !strstr(record, needle))
			continue;
		found = true;
		message = strchr(record, ';');
		snprintf(match, size, "%s", message ? message + 1 : record);
	}
	TEST_ASSERT(len < 0 && errno == EAGAIN, "Failed to read /dev/kmsg");
	return found;
}

/*
 * KVM puts its own count back when a shadow page accountant gets it wrong,
 * and says so in the kernel log: with an accountant loaded, the log shows
 * what the count cannot.  So every read of the count also fails on such a
 * report logged since the test created its first VM.
 */
static void assert_no_accountant_report(void)
{
	static int kmsg_fd = -1;
	char report[1024];

	if (kmsg_fd < 0) {
		kmsg_fd = kmsg_open_at_end();
		return;
	}
	TEST_ASSERT(!kmsg_read_for(kmsg_fd, " left mmu_shadow_pages at ", report,
				   sizeof(report)),
		    "KVM caught a shadow page accountant miscounting: %s", report);
}

struct kvm_vm *create_touch_vm(struct kvm_vcpu **vcpu, int nr_regions,
			       enum touch_mapping mapping)
{
	bool nested = mapping == MAP_4K_NESTED || mapping == MAP_1G_NESTED;
	u64 slot_pages = nr_regions * REGION_SIZE / PAGE_SIZE;
	struct kvm_vm *vm;
	gva_t svm_gva;
	int i;

	assert_no_accountant_report();

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
	if (nested)
		tdp_identity_map_default_memslots(vm);
	if (mapping == MAP_4K_NESTED)
		for (i = 0; i < nr_regions; i++)
			tdp_map(vm, TEST_GPA + i * REGION_SIZE,
				TEST_GPA + i * REGION_SIZE, PAGE_SIZE);
	else if (mapping == MAP_1G_NESTED)
		tdp_identity_map_1g(vm, TEST_GPA, PG_SIZE_1G);
	return vm;
}

void touch_regions(struct kvm_vcpu *vcpu, int nr)
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

u64 shadow_pages(struct kvm_vm *vm)
{
	u64 count = vm_get_stat(vm, mmu_shadow_pages);

	assert_no_accountant_report();
	TEST_ASSERT(count < SANE_SHADOW_PAGES,
		    "mmu_shadow_pages is 0x%lx, expected < 0x%llx: it went below zero",
		    count, SANE_SHADOW_PAGES);
	return count;
}

bool have_kvm_debugfs(void)
{
	return !access(KVM_DEBUGFS "/mmu_shadow_pages", R_OK);
}

void write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	ssize_t len = strlen(value);

	TEST_ASSERT(fd >= 0, "Failed to open %s", path);
	TEST_ASSERT(write(fd, value, len) == len,
		    "Failed to write '%s' to %s", value, path);
	close(fd);
}

void read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t len;

	TEST_ASSERT(fd >= 0, "Failed to open %s", path);
	len = read(fd, buf, size - 1);
	TEST_ASSERT(len > 0, "Failed to read %s", path);
	buf[len] = '\0';
	close(fd);
}

u64 read_debugfs_count(const char *path)
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
void vm_debugfs_path(struct kvm_vm *vm, const char *file, char *path,
		     size_t size)
{
	snprintf(path, size, KVM_DEBUGFS "/%d-%d/%s", getpid(), vm->fd, file);
}

u64 vm_debugfs_shadow_pages(struct kvm_vm *vm)
{
	char path[PATH_MAX];

	vm_debugfs_path(vm, "mmu_shadow_pages", path, sizeof(path));
	return read_debugfs_count(path);
}

u64 global_shadow_pages(void)
{
	return read_debugfs_count(KVM_DEBUGFS "/mmu_shadow_pages");
}

/* Return how many VMs have a debugfs directory, and their counts' sum. */
int sum_vm_debugfs_shadow_pages(u64 *sum)
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
u64 checked_shadow_pages(struct kvm_vm *vm)
{
	u64 count = shadow_pages(vm), vm_debugfs = vm_debugfs_shadow_pages(vm);

	TEST_ASSERT(vm_debugfs == count,
		    "Per-VM debugfs mmu_shadow_pages is %lu, expected %lu as in the stats fd",
		    vm_debugfs, count);
	return count;
}

/* Return how many VMs the global count sums up. */
int assert_global_is_sum_of_vms(void)
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
struct kvm_vm *create_busy_vm(struct kvm_vcpu **vcpu, int nr_regions)
{
	if (!kvm_is_tdp_enabled())
		return create_touch_vm(vcpu, nr_regions, MAP_4K);
	if (!have_nested_npt())
		return NULL;
	return create_touch_vm(vcpu, nr_regions, MAP_4K_NESTED);
}
