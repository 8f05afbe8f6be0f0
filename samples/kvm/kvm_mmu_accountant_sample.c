// SPDX-License-Identifier: GPL-2.0
/*
 * The smallest shadow page accountant: counts exactly like KVM's built-in
 * accounting, from C.  It shows the hook API without the Rust abstractions
 * and serves the tests as a second accountant, which KVM must turn away
 * with -EBUSY while kvm_shadow_stats.ko is registered.
 */
#include <linux/kvm_host.h>
#include <linux/module.h>

#include <asm/kvm_mmu_accountant.h>

/* Callers hold kvm->mmu_lock for write; lockless readers get one store. */
static void sample_account(struct kvm *kvm, const struct kvm_mmu_page *sp)
{
	WRITE_ONCE(kvm->stat.mmu_shadow_pages, kvm->stat.mmu_shadow_pages + 1);
}

static void sample_unaccount(struct kvm *kvm, const struct kvm_mmu_page *sp)
{
	u64 pages = kvm->stat.mmu_shadow_pages;

	if (WARN_ONCE(!pages, "%s: mmu_shadow_pages would underflow\n", kvm->stats_id))
		return;
	WRITE_ONCE(kvm->stat.mmu_shadow_pages, pages - 1);
}

static const struct kvm_mmu_page_accountant sample_accountant = {
	.owner = THIS_MODULE,
	.account = sample_account,
	.unaccount = sample_unaccount,
};

static int __init sample_init(void)
{
	int nr_vms = kvm_mmu_register_page_accountant(&sample_accountant);

	if (nr_vms < 0)
		return nr_vms;
	pr_info("accounting shadow pages; took over %d VMs\n", nr_vms);
	return 0;
}

static void __exit sample_exit(void)
{
	int nr_vms = kvm_mmu_unregister_page_accountant(&sample_accountant);

	pr_info("shadow page accounting handed back to KVM for %d VMs\n", nr_vms);
}

module_init(sample_init);
module_exit(sample_exit);
MODULE_DESCRIPTION("Sample KVM shadow MMU page accountant");
MODULE_LICENSE("GPL");
