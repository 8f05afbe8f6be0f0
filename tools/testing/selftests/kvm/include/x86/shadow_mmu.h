/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Helpers of the shadow MMU selftests, see lib/x86/shadow_mmu.c.
 */
#ifndef SELFTEST_KVM_SHADOW_MMU_H
#define SELFTEST_KVM_SHADOW_MMU_H

#include "kvm_util.h"

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

enum touch_mapping {
	/* One 4KiB page per region: one guest page table each. */
	MAP_4K,
	/* 2MiB guest pages over 4KiB host pages: no guest page table below. */
	MAP_2M,
	/* MAP_4K, touched by L2, through one L1 NPT page table per region. */
	MAP_4K_NESTED,
	/* MAP_4K, touched by L2, through one 1GiB L1 NPT page for them all. */
	MAP_1G_NESTED,
};

#define BUSY_VM_SKIP_REASON \
	"TDP is enabled and nested NPT is unavailable: no VM can have shadow pages"

bool have_nested_npt(void);
struct kvm_vm *create_touch_vm(struct kvm_vcpu **vcpu, int nr_regions,
			       enum touch_mapping mapping);
struct kvm_vm *create_busy_vm(struct kvm_vcpu **vcpu, int nr_regions);
void touch_regions(struct kvm_vcpu *vcpu, int nr);

u64 shadow_pages(struct kvm_vm *vm);
bool have_kvm_debugfs(void);
void write_file(const char *path, const char *value);
void read_file(const char *path, char *buf, size_t size);
u64 read_debugfs_count(const char *path);
void vm_debugfs_path(struct kvm_vm *vm, const char *file, char *path,
		     size_t size);
u64 vm_debugfs_shadow_pages(struct kvm_vm *vm);
u64 global_shadow_pages(void);
int sum_vm_debugfs_shadow_pages(u64 *sum);
u64 checked_shadow_pages(struct kvm_vm *vm);
int assert_global_is_sum_of_vms(void);

/* /dev/kmsg, positioned after the records logged so far. */
int kmsg_open_at_end(void);
/*
 * Reads the kernel log records after @kmsg_fd's position: true, with the
 * first message holding @needle in @match, if one does.
 */
bool kmsg_read_for(int kmsg_fd, const char *needle, char *match, size_t size);

#endif /* SELFTEST_KVM_SHADOW_MMU_H */
