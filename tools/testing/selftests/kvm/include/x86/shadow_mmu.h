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
/* Over two thousand shadow pages, in a memslot of 4GiB. */
#define HUGE_NR_REGIONS		2048

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
	/* MAP_4K for the first half of the regions, MAP_2M for the rest. */
	MAP_4K_2M,
	/* MAP_4K_NESTED for the first half, MAP_1G_NESTED for the rest. */
	MAP_4K_1G_NESTED,
};

#define BUSY_VM_SKIP_REASON \
	"TDP is enabled and nested NPT is unavailable: no VM can have shadow pages"

bool have_nested_npt(void);
struct kvm_vm *create_touch_vm(struct kvm_vcpu **vcpu, int nr_regions,
			       enum touch_mapping mapping);
void add_touch_memslot(struct kvm_vm *vm, int nr_regions);
struct kvm_vm *create_touch_vm_vcpus(struct kvm_vcpu **vcpus, int nr_vcpus,
				     int nr_regions, enum touch_mapping mapping);
struct kvm_vm *create_busy_vm(struct kvm_vcpu **vcpu, int nr_regions);
void touch_regions(struct kvm_vcpu *vcpu, int nr);
void touch_regions_from(struct kvm_vcpu *vcpu, int first, int nr);

u64 shadow_pages(struct kvm_vm *vm);
void skip_breakdown_on_count_reads(void);
bool have_kvm_debugfs(void);
int path_errno(const char *path, int mode);
int open_path_or_fail(const char *path, int flags);
ssize_t __write_file(const char *path, const void *buf, size_t len);
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

/*
 * kvm_shadow_stats.ko's breakdown of shadow pages by role, see
 * Documentation/shadow-page-breakdown.rst: the files exist while the module
 * is loaded.  A VM's directory is named <pid>-<fd> like KVM's, unless a VM
 * that outlived its fd holds that name (KVM then gives the new VM none):
 * then <pid>-<fd>.<n>, n the smallest free from 1 up.  Its vm file says
 * which pid and fd the VM has.
 */
#define BREAKDOWN_DEBUGFS	"/sys/kernel/debug/kvm_shadow_stats"

/* The role bits that the breakdown splits shadow pages by. */
#define SP_MAX_LEVEL		5
#define SP_DIRECT		BIT(3)
#define SP_GUEST_MODE		BIT(4)
#define SP_SMM			BIT(5)
#define NR_SP_BUCKETS		64

static inline int sp_bucket(int level, bool direct, bool guest_mode, bool smm)
{
	return level | (direct ? SP_DIRECT : 0) |
	       (guest_mode ? SP_GUEST_MODE : 0) | (smm ? SP_SMM : 0);
}

static inline int sp_bucket_level(int bucket)
{
	return bucket & (SP_DIRECT - 1);
}

/* One line of a pages file; all zeroes if the line is not there. */
struct sp_bucket {
	u64 pages;
	u64 allocated;
	u64 zapped;
	u64 bytes;
};

/* The pages of a bucket that the module found when it attached the VM. */
static inline u64 sp_bucket_found(const struct sp_bucket *sb)
{
	return sb->pages + sb->zapped - sb->allocated;
}

/*
 * A pages file and the totals file, of a VM or of all, and a VM's peak file:
 * the top has no peak, so its peaks stay 0.
 */
struct sp_breakdown {
	struct sp_bucket bucket[NR_SP_BUCKETS];
	struct {
		u64 pages;
		u64 peak;
		u64 allocated;
		u64 zapped;
		u64 bytes;
		u64 page_table_bytes;
	} totals;
	u64 peak;
};

/*
 * How a step is to move each bucket's columns.  A column marked any_* may
 * move any way; all of them must still add up, see assert_breakdown_step().
 */
struct sp_delta {
	s64 pages[NR_SP_BUCKETS];
	s64 allocated[NR_SP_BUCKETS];
	s64 zapped[NR_SP_BUCKETS];
	bool any_pages;
	bool any_allocated;
	bool any_zapped;
};

bool have_breakdown(void);
bool parse_breakdown_vm_name(const char *name, int *pid, int *fd,
			     unsigned int *n);
void assert_breakdown_vm_file(const char *dir, int pid, int fd);
void vm_breakdown_path(struct kvm_vm *vm, const char *file, char *path,
		       size_t size);
bool vm_has_breakdown(struct kvm_vm *vm);
void breakdown_allow_unseen_zaps(void);
void read_breakdown_dir(const char *dir, struct sp_breakdown *bd);
void read_global_breakdown(struct sp_breakdown *bd);
bool read_breakdown_pages(const char *dir, struct sp_breakdown *bd);
bool read_vm_breakdown(struct kvm_vm *vm, struct sp_breakdown *bd);
void assert_global_breakdown(struct sp_breakdown *global);
void assert_breakdown_step(const struct sp_breakdown *before,
			   const struct sp_breakdown *after,
			   const struct sp_delta *expected, const char *what);
void assert_breakdown_pages_equal(const struct sp_breakdown *expected,
				  const struct sp_breakdown *actual,
				  const char *what);
void assert_breakdown_empty(const struct sp_breakdown *bd, const char *what);
int shadow_root_level(struct kvm_vm *vm, bool nested);
void sp_bucket_name(int bucket, char *name, size_t size);

/* /dev/kmsg, positioned after the records logged so far. */
int kmsg_open_at_end(void);
/*
 * Reads the kernel log records after @kmsg_fd's position: true, with the
 * first message holding @needle in @match, if one does.
 */
bool kmsg_read_for(int kmsg_fd, const char *needle, char *match, size_t size);
/*
 * Takes KVM's report of an accountant's miscount, logged since the last read
 * of a count, which would otherwise fail that read: true, with the report in
 * @report, if there is one.
 */
bool take_accountant_report(char *report, size_t size);

#endif /* SELFTEST_KVM_SHADOW_MMU_H */
