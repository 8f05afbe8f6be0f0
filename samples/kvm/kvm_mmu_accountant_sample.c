// SPDX-License-Identifier: GPL-2.0
/*
 * The smallest shadow page accountant: counts exactly like KVM's built-in
 * accounting, from C.  It shows the hook API without the Rust abstractions,
 * is the baseline the Rust accountant is benchmarked against, and serves
 * the tests as a second accountant, which KVM must turn away with -EBUSY
 * while kvm_shadow_stats.ko is registered.
 */
#include <linux/module.h>

#include <asm/kvm_mmu_accountant.h>

/*
 * Callers hold mmu_lock for write, which serializes every writer of the
 * stat; the binary stats fd and debugfs read it without the lock.
 */
static void sample_account(const struct kvm_mmu_accountant_vm *vm,
			   union kvm_mmu_page_role role, gfn_t gfn)
{
	WRITE_ONCE(*vm->shadow_pages, *vm->shadow_pages + 1);
}

static void sample_unaccount(const struct kvm_mmu_accountant_vm *vm,
			     union kvm_mmu_page_role role, gfn_t gfn)
{
	WRITE_ONCE(*vm->shadow_pages, *vm->shadow_pages - 1);
}

static const struct kvm_mmu_page_accountant sample_accountant = {
	.account = sample_account,
	.unaccount = sample_unaccount,
};

static int __init sample_init(void)
{
	return kvm_mmu_register_page_accountant(&sample_accountant);
}

static void __exit sample_exit(void)
{
	kvm_mmu_unregister_page_accountant(&sample_accountant);
}

module_init(sample_init);
module_exit(sample_exit);
MODULE_DESCRIPTION("Sample KVM shadow MMU page accountant");
MODULE_LICENSE("GPL");
