// SPDX-License-Identifier: GPL-2.0
/*
 * A shadow page accountant with a bug chosen at load time, for tests that
 * KVM survives it: its MMU page limit still holds, the mmu_shadow_pages
 * stat stays exact, and the guest keeps running.
 *
 *   bug=skip_account	  accounting leaves the stat alone
 *   bug=skip_unaccount	  unaccounting leaves the stat alone
 *   bug=double_leaf	  a last-level (4KiB PTE) page is counted twice
 *   bug=forget_unregister the module exits with the accountant registered
 *   bug=none		  counts right, for stray_write
 *
 * Writing N to the parameter stray_write adds N to the stat of the VM whose
 * page was accounted last, outside any callback, as a module must not.  The
 * writer must keep that VM alive.
 */
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/string.h>

#include <asm/kvm_mmu_accountant.h>

enum accountant_bug {
	SKIP_ACCOUNT,
	SKIP_UNACCOUNT,
	DOUBLE_LEAF,
	FORGET_UNREGISTER,
	NO_BUG,
};

static const char * const bug_names[] = {
	[SKIP_ACCOUNT] = "skip_account",
	[SKIP_UNACCOUNT] = "skip_unaccount",
	[DOUBLE_LEAF] = "double_leaf",
	[FORGET_UNREGISTER] = "forget_unregister",
	[NO_BUG] = "none",
};

static char *bug;
module_param(bug, charp, 0444);
MODULE_PARM_DESC(bug, "skip_account, skip_unaccount, double_leaf, forget_unregister or none");

static enum accountant_bug active_bug;

/* Written under the VM's mmu_lock, read by stray_write. */
static u64 *last_stat;

static int stray_write_set(const char *val, const struct kernel_param *kp)
{
	u64 *stat = READ_ONCE(last_stat);
	int delta, r;

	r = kstrtoint(val, 0, &delta);
	if (r)
		return r;
	if (!stat)
		return -ENODEV;
	WRITE_ONCE(*stat, READ_ONCE(*stat) + delta);
	return 0;
}

static const struct kernel_param_ops stray_write_ops = {
	.set = stray_write_set,
};
module_param_cb(stray_write, &stray_write_ops, NULL, 0200);
MODULE_PARM_DESC(stray_write, "adds to the stat of the VM accounted last, outside any callback");

static void add_pages(const struct kvm_mmu_accountant_vm *vm, s64 delta)
{
	WRITE_ONCE(*vm->shadow_pages, *vm->shadow_pages + delta);
}

static void buggy_account(const struct kvm_mmu_accountant_vm *vm,
			  union kvm_mmu_page_role role, gfn_t gfn)
{
	WRITE_ONCE(last_stat, vm->shadow_pages);
	if (active_bug == SKIP_ACCOUNT)
		return;
	add_pages(vm, active_bug == DOUBLE_LEAF && role.level == PG_LEVEL_4K ? 2 : 1);
}

static void buggy_unaccount(const struct kvm_mmu_accountant_vm *vm,
			    union kvm_mmu_page_role role, gfn_t gfn)
{
	if (active_bug != SKIP_UNACCOUNT)
		add_pages(vm, -1);
}

static const struct kvm_mmu_page_accountant buggy_accountant = {
	.account = buggy_account,
	.unaccount = buggy_unaccount,
};

static int __init buggy_init(void)
{
	int i = bug ? match_string(bug_names, ARRAY_SIZE(bug_names), bug) : -EINVAL;

	if (i < 0) {
		pr_err("bug= must be one of skip_account, skip_unaccount, double_leaf, forget_unregister, none\n");
		return -EINVAL;
	}
	active_bug = i;
	return kvm_mmu_register_page_accountant(&buggy_accountant);
}

static void __exit buggy_exit(void)
{
	if (active_bug != FORGET_UNREGISTER)
		kvm_mmu_unregister_page_accountant(&buggy_accountant);
}

module_init(buggy_init);
module_exit(buggy_exit);
MODULE_DESCRIPTION("Deliberately broken KVM shadow MMU page accountants, for tests");
MODULE_LICENSE("GPL");
