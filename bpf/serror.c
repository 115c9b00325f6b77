/* Host SError and SEA (arch/arm64/kernel/traps.c, arch/arm64/mm/fault.c).
 * do_serror / arm64_is_fatal_ras_serror run in NMI context: ring buffer and
 * per-CPU maps only. ESR is u32 on older kernels: RASD_ESR() masks it then. */
#include "common.h"

/* do_serror(struct pt_regs *regs, unsigned long esr) */
int rasd_do_serror(struct pt_regs *ctx)
{
    void *regs = (void *)PT_REGS_PARM1(ctx);
    u64 pc, mode;
    u16 flags = rasd_read_regs(regs, &pc, &mode);

    return rasd_emit_call(RASD_P_DO_SERROR, flags, (u64)regs,
                          RASD_ESR(RASD_P_DO_SERROR, PT_REGS_PARM2(ctx)), 0, 0, 0,
                          pc, mode, 0, 0);
}

/* arm64_is_fatal_ras_serror(regs, esr): regs == NULL is the KVM guest path.
 * Same CPU from entry to return (NMI, or KVM with preemption off): per-CPU stash. */
int rasd_arm64_is_fatal_ras_serror_entry(struct pt_regs *ctx)
{
    u32 zero = 0;
    struct rasd_stash *s = rasd_stash_cpu.lookup(&zero);

    if (s) {
        s->arg[0] = PT_REGS_PARM1(ctx);
        s->arg[1] = RASD_ESR(RASD_P_ARM64_IS_FATAL_RAS_SERROR, PT_REGS_PARM2(ctx));
        s->arg[2] = 1;  /* valid */
    }
    return 0;
}

int rasd_arm64_is_fatal_ras_serror_return(struct pt_regs *ctx)
{
    u32 zero = 0;
    struct rasd_stash *s = rasd_stash_cpu.lookup(&zero);
    u64 regs = 0, esr = 0, pc = 0, mode = 0;
    u16 flags = RASD_F_RETURN;

    if (s && s->arg[2]) {
        regs = s->arg[0];
        esr = s->arg[1];
        s->arg[2] = 0;
        flags |= rasd_read_regs((void *)regs, &pc, &mode);
    } else {
        flags |= RASD_F_NO_ENTRY;
    }
    return rasd_emit_call(RASD_P_ARM64_IS_FATAL_RAS_SERROR, flags, regs, esr, 0, 0,
                          (s64)(PT_REGS_RC(ctx) & 0xff), pc, mode, 0, 0);
}

/* arm64_serror_panic(regs, esr): noreturn; best effort before the panic. */
int rasd_arm64_serror_panic(struct pt_regs *ctx)
{
    void *regs = (void *)PT_REGS_PARM1(ctx);
    u64 pc, mode;
    u16 flags = rasd_read_regs(regs, &pc, &mode);

    return rasd_emit_call(RASD_P_ARM64_SERROR_PANIC, flags, (u64)regs,
                          RASD_ESR(RASD_P_ARM64_SERROR_PANIC, PT_REGS_PARM2(ctx)),
                          0, 0, 0, pc, mode, 0, 0);
}

/* do_sea(unsigned long far, unsigned long esr, struct pt_regs *regs) */
int rasd_do_sea(struct pt_regs *ctx)
{
    void *regs = (void *)PT_REGS_PARM3(ctx);
    u64 pc, mode;
    u16 flags = rasd_read_regs(regs, &pc, &mode);

    return rasd_emit_call(RASD_P_DO_SEA, flags, PT_REGS_PARM1(ctx),
                          RASD_ESR(RASD_P_DO_SEA, PT_REGS_PARM2(ctx)),
                          (u64)regs, 0, 0, pc, mode, 0, 0);
}
