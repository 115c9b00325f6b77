// SPDX-License-Identifier: GPL-2.0
/*
 * labsea: TEST-ONLY module for the rasd lab (never load it anywhere else).
 *
 * Makes a real KVM guest SEA reachable under QEMU TCG (see
 * ../shared/reference/arm64-lab.md §7.1): QEMU routes an external abort to
 * EL2 only when it happens while walking the stage-2 tables.  So, when the
 * L2 guest of tests/lab/guest/kvm/labvmm.c rings its "arm" doorbell (an MMIO
 * exit at doorbell_ipa), a kprobe on kvm_handle_guest_abort walks that VM's
 * stage-2 tables and points the level-2 table descriptor covering
 * target_ipa at an unassigned physical address (hole_pa).  The guest's next
 * load from target_ipa makes QEMU's walker read the hole: ESR_EL2 DFSC 0x17
 * (SEA on a level-3 table walk) → kvm_handle_guest_abort → apei_claim_sea.
 *
 * The descriptor is put back in a pre-handler on apei_claim_sea, before any
 * GHES or memory_failure work: memory_failure's MMU notifier walks the same
 * tables and would otherwise oops.  It is also put back on kvm_inject_vabt,
 * when the VM's stage-2 is freed, and on unload.
 */
#include <linux/kprobes.h>
#include <linux/kvm_host.h>
#include <linux/module.h>
#include <linux/version.h>
#include <asm/kvm_arm.h>
#include <asm/kvm_pgtable.h>

static unsigned long target_ipa = 0x20001000;
static unsigned long doorbell_ipa = 0x30001000;
static unsigned long hole_pa = 0x09100000;
module_param(target_ipa, ulong, 0444);
module_param(doorbell_ipa, ulong, 0444);
module_param(hole_pa, ulong, 0444);

static DEFINE_SPINLOCK(lock);
static kvm_pte_t *saved_ptep;
static kvm_pte_t saved_pte;
static struct kvm *saved_kvm;
static void *saved_vcpu;
static atomic_t redirects = ATOMIC_INIT(0), restores = ATOMIC_INIT(0);
module_param_named(redirect_count, redirects.counter, int, 0444);
module_param_named(restore_count, restores.counter, int, 0444);
/* every kvm_handle_guest_abort this kprobe saw, and the thread of the last one: the
 * lab's proof that MMIO exits go through it on the vCPU thread (a tracefs kprobe
 * registered at run time took minutes on a loaded TCG host) */
static atomic_t aborts = ATOMIC_INIT(0);
static int last_abort_tid;
module_param_named(abort_count, aborts.counter, int, 0444);
module_param_named(abort_tid, last_abort_tid, int, 0444);

static u64 pte_pa(kvm_pte_t pte)
{
	return kvm_pte_to_phys(pte);
}

static kvm_pte_t pte_with_pa(kvm_pte_t pte, u64 pa)
{
#ifdef KVM_PTE_ADDR_MASK_LPA2
	/* 6.12: the output address has LPA2-dependent bits; attributes are the rest */
	return (pte ^ kvm_phys_to_pte(kvm_pte_to_phys(pte))) | kvm_phys_to_pte(pa);
#else
	return (pte & ~KVM_PTE_ADDR_MASK) | (pa & KVM_PTE_ADDR_MASK);
#endif
}

static kvm_pte_t *pgd_of(struct kvm_pgtable *pgt)
{
	return (__force kvm_pte_t *)pgt->pgd;
}

/* Pointer to the level-2 descriptor covering ipa, or NULL. */
static kvm_pte_t *find_l2(struct kvm_pgtable *pgt, u64 ipa)
{
	kvm_pte_t *table = pgd_of(pgt);
	int level = pgt->start_level;

	for (; level <= 2; level++) {
		int shift = PAGE_SHIFT + (3 - level) * (PAGE_SHIFT - 3);
		u64 idx = ipa >> shift;
		kvm_pte_t pte;

		/* the start level's table may be concatenated: all remaining IA bits */
		if (level != pgt->start_level)
			idx &= (1UL << (PAGE_SHIFT - 3)) - 1;
		else
			idx &= (1UL << (pgt->ia_bits - shift)) - 1;
		if (level == 2)
			return table + idx;
		pte = READ_ONCE(table[idx]);
		if ((pte & 3) != 3) {
			pr_info("labsea: level %d entry for ipa %llx is not a table: %llx\n",
				level, ipa, (u64)pte);
			return NULL;
		}
		table = __va(pte_pa(pte));
	}
	return NULL;
}

static void restore(const char *why)
{
	unsigned long flags;

	spin_lock_irqsave(&lock, flags);
	if (saved_ptep) {
		WRITE_ONCE(*saved_ptep, saved_pte);
		dsb(ishst);
		saved_ptep = NULL;
		saved_kvm = NULL;
		atomic_inc(&restores);
		pr_info("labsea: restored stage-2 descriptor (%s)\n", why);
	}
	spin_unlock_irqrestore(&lock, flags);
}

static int on_guest_abort(struct kprobe *p, struct pt_regs *regs)
{
	struct kvm_vcpu *vcpu = (struct kvm_vcpu *)regs->regs[0];
	u64 esr = vcpu->arch.fault.esr_el2;
	u64 ipa = (vcpu->arch.fault.hpfar_el2 & HPFAR_MASK) << 8;
	struct kvm_pgtable *pgt;
	kvm_pte_t *ptep, old, new;
	unsigned long flags;

	atomic_inc(&aborts);
	WRITE_ONCE(last_abort_tid, current->pid);
	if (vcpu == saved_vcpu && ((esr & 0x3f) == 0x10 || ((esr & 0x3f) >= 0x13 &&
							       (esr & 0x3f) <= 0x17)))
		pr_info("labsea: SEA exit esr_el2=%llx far_el2=%llx tgid=%d comm=%s\n",
			esr, (u64)vcpu->arch.fault.far_el2, current->tgid, current->comm);
	if (ipa != doorbell_ipa)
		return 0;
	pgt = vcpu->kvm->arch.mmu.pgt;
	ptep = pgt ? find_l2(pgt, target_ipa) : NULL;
	if (!ptep)
		return 0;
	spin_lock_irqsave(&lock, flags);
	old = READ_ONCE(*ptep);
	if (saved_ptep || (old & 3) != 3) {
		spin_unlock_irqrestore(&lock, flags);
		pr_info("labsea: not redirecting (busy or level-2 entry %llx not a table)\n",
			(u64)old);
		return 0;
	}
	new = pte_with_pa(old, hole_pa);
	saved_ptep = ptep;
	saved_pte = old;
	saved_kvm = vcpu->kvm;
	saved_vcpu = vcpu;
	WRITE_ONCE(*ptep, new);
	dsb(ishst);
	atomic_inc(&redirects);
	spin_unlock_irqrestore(&lock, flags);
	pr_info("labsea: ia_bits=%u start_level=%d: level-2 descriptor for ipa %lx "
		"%llx -> %llx (tgid %d)\n", pgt->ia_bits, (int)pgt->start_level, target_ipa,
		(u64)old, (u64)new, current->tgid);
	return 0;
}

static int on_claim_sea(struct kprobe *p, struct pt_regs *regs)
{
	if (!regs->regs[0])  /* regs == NULL: called by KVM */
		restore("apei_claim_sea");
	return 0;
}

static int on_vabt(struct kprobe *p, struct pt_regs *regs)
{
	restore("kvm_inject_vabt");
	return 0;
}

static int on_free_pgd(struct kprobe *p, struct pt_regs *regs)
{
	struct kvm_s2_mmu *mmu = (struct kvm_s2_mmu *)regs->regs[0];

	if (saved_kvm && mmu == &saved_kvm->arch.mmu)
		restore("stage-2 freed");
	return 0;
}

static struct kprobe probes[] = {
	{ .symbol_name = "kvm_handle_guest_abort", .pre_handler = on_guest_abort },
	{ .symbol_name = "apei_claim_sea", .pre_handler = on_claim_sea },
	{ .symbol_name = "kvm_inject_vabt", .pre_handler = on_vabt },
	{ .symbol_name = "kvm_free_stage2_pgd", .pre_handler = on_free_pgd },
};
static bool registered[ARRAY_SIZE(probes)];

static int __init labsea_init(void)
{
	int i, err, n = 0;

	for (i = 0; i < ARRAY_SIZE(probes); i++) {
		err = register_kprobe(&probes[i]);
		registered[i] = !err;
		n += !err;
		pr_info("labsea: kprobe %s: %d\n", probes[i].symbol_name, err);
	}
	if (!registered[0] || !registered[1]) {
		for (i = 0; i < ARRAY_SIZE(probes); i++)
			if (registered[i])
				unregister_kprobe(&probes[i]);
		return -ENOENT;
	}
	pr_info("labsea: TEST-ONLY module loaded: target ipa %lx doorbell %lx hole %lx\n",
		target_ipa, doorbell_ipa, hole_pa);
	return 0;
}

static void __exit labsea_exit(void)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(probes); i++)
		if (registered[i])
			unregister_kprobe(&probes[i]);
	restore("unload");
}

module_init(labsea_init);
module_exit(labsea_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("rasd lab: synthetic stage-2 walk abort for a KVM guest SEA (test only)");
