// SPDX-License-Identifier: GPL-2.0-only
/*
 * Watch KVM's mmu_shadow_pages stat follow a guest that builds up and tears
 * down shadow page tables.
 *
 * The guest writes to one address in each of a growing number of 2MiB
 * regions.  Each region has its own guest page table, which KVM must shadow
 * with a shadow page of its own when it runs on the shadow MMU
 * (kvm_amd.npt=0 or kvm_intel.ept=0).  The host then squeezes the VM with
 * KVM_SET_NR_MMU_PAGES, which zaps shadow pages and keeps zapping while the
 * guest goes on touching all the regions, and finally destroys the VM.
 * After each step the stat is printed as read from the VM's binary stats fd,
 * the VM's debugfs file and the global debugfs file.
 *
 * Built with the KVM selftest library; the stat means the same whether KVM
 * or a registered accountant such as kvm_shadow_stats.ko maintains it.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <linux/sizes.h>

#include "kvm_util.h"
#include "processor.h"

#define DEMO_GVA		0x40000000UL
#define DEMO_MAX_REGIONS	256
#define DEMO_MIN_MMU_PAGES	64	/* KVM_MIN_ALLOC_MMU_PAGES */

/* Number of 2MiB regions the guest touches on its next pass. */
static u64 nr_regions;

static void guest_code(void)
{
	u64 i;

	for (;;) {
		for (i = 0; i < READ_ONCE(nr_regions); i++)
			WRITE_ONCE(*(u64 *)(DEMO_GVA + i * SZ_2M), i);
		GUEST_SYNC(nr_regions);
	}
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

static void touch_regions(struct kvm_vm *vm, struct kvm_vcpu *vcpu, u64 nr)
{
	struct ucall uc;
	char step[64];

	nr_regions = nr;
	sync_global_to_guest(vm, nr_regions);
	vcpu_run(vcpu);
	TEST_ASSERT_EQ(get_ucall(vcpu, &uc), UCALL_SYNC);
	snprintf(step, sizeof(step), "guest touched %lu regions of 2MiB", nr);
	show(vm, step);
}

static void limit_mmu_pages(struct kvm_vm *vm, u64 limit)
{
	char step[64];

	vm_ioctl(vm, KVM_SET_NR_MMU_PAGES, (void *)limit);
	snprintf(step, sizeof(step), "KVM_SET_NR_MMU_PAGES %lu", limit);
	show(vm, step);
}

int main(void)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	gpa_t data_gpa;
	u64 i;

	/*
	 * The library sizes the room for guest page tables by the memory a
	 * test says it will map; one page table maps 2MiB of 4KiB pages.
	 */
	vm = __vm_create_with_one_vcpu(&vcpu, DEMO_MAX_REGIONS * (SZ_2M / PAGE_SIZE),
				       guest_code);
	/* Every region maps the same data page: only the page tables differ. */
	data_gpa = addr_gva2gpa(vm, vm_alloc_page(vm));
	for (i = 0; i < DEMO_MAX_REGIONS; i++)
		virt_pg_map(vm, DEMO_GVA + i * SZ_2M, data_gpa);

	printf("%-44s %12s %12s %12s\n", "mmu_shadow_pages after", "stats fd",
	       "debugfs VM", "debugfs all");
	show(vm, "VM created");
	/* KVM's default limit for a VM this small is the minimum, 64. */
	limit_mmu_pages(vm, 4 * DEMO_MAX_REGIONS);
	touch_regions(vm, vcpu, DEMO_MAX_REGIONS / 4);
	touch_regions(vm, vcpu, DEMO_MAX_REGIONS);
	limit_mmu_pages(vm, DEMO_MIN_MMU_PAGES);
	touch_regions(vm, vcpu, DEMO_MAX_REGIONS);
	kvm_vm_free(vm);
	printf("%-44s %12s %12s %12lu\n", "VM destroyed", "-", "-", read_debugfs_stat("."));
	return 0;
}
