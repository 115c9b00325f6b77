/* hwpoison: memory_failure(pfn, flags) paired with its return value, and
 * memory_failure_queue(pfn, flags) (the IRQ-safe producer GHES uses).
 * The memory_failure_event tracepoint is generic (tracepoints.c). */
#include "common.h"

int rasd_memory_failure_entry(struct pt_regs *ctx)
{
    rasd_stash_tid_put(RASD_P_MEMORY_FAILURE, PT_REGS_PARM1(ctx), (u32)PT_REGS_PARM2(ctx), 0, 0);
    return 0;
}

int rasd_memory_failure_return(struct pt_regs *ctx)
{
    struct rasd_stash s = {};
    u16 flags = RASD_F_RETURN;

    if (!rasd_stash_tid_take(RASD_P_MEMORY_FAILURE, &s))
        flags |= RASD_F_NO_ENTRY;
    return rasd_emit_call(RASD_P_MEMORY_FAILURE, flags, s.arg[0], s.arg[1], 0, 0,
                          (s64)(int)PT_REGS_RC(ctx), 0, 0, 0, 0);
}

int rasd_memory_failure_queue(struct pt_regs *ctx)
{
    return rasd_emit_call(RASD_P_MEMORY_FAILURE_QUEUE, 0, PT_REGS_PARM1(ctx),
                          (u32)PT_REGS_PARM2(ctx), 0, 0, 0, 0, 0, 0, 0);
}
