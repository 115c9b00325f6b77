/* KVM arm64 guest RAS paths. The task fields of the header (tgid/tid/comm) name
 * the VMM and its vCPU thread. handle_exit_early and kvm_handle_guest_abort run
 * on every VM exit: they filter in their first instructions, and the loader
 * prefers their fentry form (no BRK per hit) where BTF trampolines work. */
#include "common.h"

#define ARM_EXIT_WITH_SERROR_BIT  0x80000000U
#define ARM_EXCEPTION_EL1_SERROR  1

/* vcpu->arch.fault.{esr_el2,disr_el1,far_el2,hpfar_el2}; offsets come from BTF. */
static __always_inline u16 rasd_vcpu_fault(void *vcpu, u64 *esr, u64 *disr, u64 *far, u64 *hpfar)
{
    u16 flags = 0;
    *esr = *disr = *far = *hpfar = 0;
#if defined(RASD_OFF_VCPU_ESR_EL2) && defined(RASD_SZ_VCPU_ESR_EL2)
    flags |= RASD_F_VCPU_FAULT;
    /* esr_el2 was u32 on older kernels; read exactly its width */
    if (bpf_probe_read_kernel(esr, RASD_SZ_VCPU_ESR_EL2, vcpu + RASD_OFF_VCPU_ESR_EL2))
        flags |= RASD_F_READ_FAULT;
#endif
#ifdef RASD_OFF_VCPU_DISR_EL1
    if (bpf_probe_read_kernel(disr, 8, vcpu + RASD_OFF_VCPU_DISR_EL1))
        flags |= RASD_F_READ_FAULT;
#endif
#ifdef RASD_OFF_VCPU_FAR_EL2
    if (bpf_probe_read_kernel(far, 8, vcpu + RASD_OFF_VCPU_FAR_EL2))
        flags |= RASD_F_READ_FAULT;
#endif
#ifdef RASD_OFF_VCPU_HPFAR_EL2
    if (bpf_probe_read_kernel(hpfar, 8, vcpu + RASD_OFF_VCPU_HPFAR_EL2))
        flags |= RASD_F_READ_FAULT;
#endif
    return flags;
}

/* kvm_vcpu_abt_issea(): FSC of a synchronous external abort (incl. table walks). */
static __always_inline int rasd_fsc_is_sea(u64 esr)
{
    u32 fsc = esr & 0x3f;
    return fsc == 0x10 || (fsc >= 0x13 && fsc <= 0x18) || (fsc >= 0x1b && fsc <= 0x1f);
}

/* handle_exit_early(vcpu, exception_index): only SError exits pass the filter. */
static __always_inline int rasd_exit_early(void *vcpu, u32 idx, u16 flags)
{
    u64 esr, disr, far, hpfar;

    if (!(idx & ARM_EXIT_WITH_SERROR_BIT) && idx != ARM_EXCEPTION_EL1_SERROR)
        return 0;
    flags |= rasd_vcpu_fault(vcpu, &esr, &disr, &far, &hpfar);
    return rasd_emit_call(RASD_P_HANDLE_EXIT_EARLY, flags, (u64)vcpu, idx, 0, RASD_VMM_CGROUP, 0,
                          esr, disr, far, hpfar);
}

int rasd_handle_exit_early(struct pt_regs *ctx)
{
    return rasd_exit_early((void *)PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), 0);
}

#ifdef RASD_FENTRY_HANDLE_EXIT_EARLY
KFUNC_PROBE(handle_exit_early, void *vcpu, int exception_index)
{
    return rasd_exit_early(vcpu, (u32)exception_index, RASD_F_FENTRY);
}
#endif

/* kvm_handle_guest_abort(vcpu): only SEA fault status codes are emitted.
 * Without the esr_el2 offset there is no cheap filter, so nothing is emitted
 * (the loader does not attach it then). */
static __always_inline int rasd_guest_abort(void *vcpu, u16 flags)
{
    u64 esr = 0, disr, far, hpfar;

#if defined(RASD_OFF_VCPU_ESR_EL2) && defined(RASD_SZ_VCPU_ESR_EL2)
    /* Every MMIO and stage-2 fault exit comes here: one read for the filter, the other
     * three registers only for an SEA (the arm64 lab measured each read under TCG). */
    if (bpf_probe_read_kernel(&esr, RASD_SZ_VCPU_ESR_EL2, vcpu + RASD_OFF_VCPU_ESR_EL2) ||
        !rasd_fsc_is_sea(esr))
        return 0;
#else
    return 0;
#endif
    flags |= rasd_vcpu_fault(vcpu, &esr, &disr, &far, &hpfar);
    if (!(flags & RASD_F_VCPU_FAULT) || !rasd_fsc_is_sea(esr))
        return 0;
    return rasd_emit_call(RASD_P_KVM_HANDLE_GUEST_ABORT, flags, (u64)vcpu, 0, 0, RASD_VMM_CGROUP, 0,
                          esr, disr, far, hpfar);
}

int rasd_kvm_handle_guest_abort(struct pt_regs *ctx)
{
    return rasd_guest_abort((void *)PT_REGS_PARM1(ctx), 0);
}

#ifdef RASD_FENTRY_KVM_HANDLE_GUEST_ABORT
KFUNC_PROBE(kvm_handle_guest_abort, void *vcpu)
{
    return rasd_guest_abort(vcpu, RASD_F_FENTRY);
}
#endif

/* kvm_handle_guest_sea(vcpu), 6.17+ only (inline before): a rare path, no filter. */
int rasd_kvm_handle_guest_sea(struct pt_regs *ctx)
{
    void *vcpu = (void *)PT_REGS_PARM1(ctx);
    u64 esr, disr, far, hpfar;
    u16 flags = rasd_vcpu_fault(vcpu, &esr, &disr, &far, &hpfar);

    return rasd_emit_call(RASD_P_KVM_HANDLE_GUEST_SEA, flags, (u64)vcpu, 0, 0, RASD_VMM_CGROUP, 0,
                          esr, disr, far, hpfar);
}

/* kvm_inject_vabt(vcpu) (<=6.16); also reached from non-RAS paths (user space). */
int rasd_kvm_inject_vabt(struct pt_regs *ctx)
{
    return rasd_emit_call(RASD_P_KVM_INJECT_VABT, 0, PT_REGS_PARM1(ctx), 0, 0, RASD_VMM_CGROUP, 0,
                          0, 0, 0, 0);
}

/* kvm_set_sei_esr(vcpu, esr) (<=6.16): KVM_SET_VCPU_EVENTS with serror_has_esr calls it
 * directly; kvm_inject_vabt's own call is inlined on the lab's 6.1 and 6.12 builds. */
int rasd_kvm_set_sei_esr(struct pt_regs *ctx)
{
    return rasd_emit_call(RASD_P_KVM_SET_SEI_ESR, 0, PT_REGS_PARM1(ctx),
                          RASD_ESR(RASD_P_KVM_SET_SEI_ESR, PT_REGS_PARM2(ctx)),
                          0, RASD_VMM_CGROUP, 0, 0, 0, 0, 0);
}

/* kvm_inject_serror_esr(vcpu, esr) (6.17+). */
int rasd_kvm_inject_serror_esr(struct pt_regs *ctx)
{
    return rasd_emit_call(RASD_P_KVM_INJECT_SERROR_ESR, 0, PT_REGS_PARM1(ctx),
                          RASD_ESR(RASD_P_KVM_INJECT_SERROR_ESR, PT_REGS_PARM2(ctx)),
                          0, RASD_VMM_CGROUP, 0, 0, 0, 0, 0);
}
