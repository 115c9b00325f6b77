/* Tracepoint programs: one generic body copies the raw trace entry (common
 * fields, fixed fields and the __data_loc payloads such as arm_event's
 * pei/ctx/oem buffers or non_standard_event's buf) into the ring buffer.
 * User space decodes the fields with the event's tracefs format, so field
 * lists that change between kernels need no new C.
 *
 * The loader instantiates one program per event present on the kernel:
 *   RASD_TP_PROGRAM(fn, probe_id, fixed_size, dl0, dl1, dl2, dl3)
 * fixed_size = end of the last fixed field; dlN = offset of a __data_loc
 * field or -1. The dynamic data lives after the fixed part, so the entry
 * ends at max(fixed_size, max(dl offset + dl length)).
 *
 * Events that fire for far more than RAS (signal:signal_generate: every
 * signal on the machine) take a filter, also generated from the format:
 *   RASD_TP_PROGRAM_IF(fn, probe_id, fixed_size, dl0..dl3, f_off, f_size, f_val)
 * The entry is dropped unless the integer field at f_off (f_size bytes) equals
 * f_val, tested before anything else: a rejected hit costs one load and a
 * compare, no map lookup, no copy, no ring-buffer traffic. */
#include "common.h"

/* End of one __data_loc payload: the u32 is (length << 16) | offset. */
static __always_inline u64 rasd_dl_end(void *ctx, int off)
{
    u32 loc = 0;

    if (off < 0 || bpf_probe_read_kernel(&loc, sizeof(loc), ctx + off))
        return 0;
    return (u64)(loc & 0xffff) + (loc >> 16);
}

static __always_inline int rasd_tp_copy(void *ctx, u16 probe, u32 fixed,
                                        int dl0, int dl1, int dl2, int dl3)
{
    u32 zero = 0;
    u64 len = fixed, cap, end;
    u16 flags = 0;
    struct rasd_blob_event *e = rasd_tp_scratch.lookup(&zero);

    if (!e)
        return 0;
    end = rasd_dl_end(ctx, dl0); if (end > len) len = end;
    end = rasd_dl_end(ctx, dl1); if (end > len) len = end;
    end = rasd_dl_end(ctx, dl2); if (end > len) len = end;
    end = rasd_dl_end(ctx, dl3); if (end > len) len = end;
    cap = len;
    if (cap > RASD_MAX_BLOB) {
        cap = RASD_MAX_BLOB;
        flags |= RASD_F_TRUNCATED;
    }
    cap &= RASD_BLOB_MASK;
    if (bpf_probe_read_kernel(e->data, cap, ctx)) {
        cap = 0;
        flags |= RASD_F_READ_FAULT;
    }
    /* perf hands BPF the entry with its first 8 bytes (common_type..common_pid)
     * overwritten by a struct pt_regs pointer: never ship a kernel address */
    *(u64 *)e->data = 0;
    e->tp.entry_len = len;
    e->tp.captured_len = cap;
    rasd_fill_hdr(&e->h, RASD_KIND_TP, probe, flags, sizeof(e->tp) + cap);
    rasd_output_blob(e, sizeof(e->h) + sizeof(e->tp) + cap);
    return 0;
}

#define RASD_TP_PROGRAM(fn, probe, fixed, dl0, dl1, dl2, dl3) \
    int fn(void *ctx) { return rasd_tp_copy(ctx, probe, fixed, dl0, dl1, dl2, dl3); }

/* The field read straight from the context: tracepoint programs may load any
 * aligned offset >= 8 of the entry (the loader checks alignment and range), so
 * no helper call is needed. Compared at the field's own width, so a signed
 * field matches its value's two's complement. f_size is a constant: the
 * conditional folds to one load at compile time. */
#define RASD_TP_FIELD_EQ(ctx, f_off, f_size, f_val)                              \
    ((f_size) == 1 ? *(u8 *)((char *)(ctx) + (f_off)) == (u8)(f_val) :          \
     (f_size) == 2 ? *(u16 *)((char *)(ctx) + (f_off)) == (u16)(f_val) :        \
     (f_size) == 4 ? *(u32 *)((char *)(ctx) + (f_off)) == (u32)(f_val) :        \
                     *(u64 *)((char *)(ctx) + (f_off)) == (u64)(f_val))

#define RASD_TP_PROGRAM_IF(fn, probe, fixed, dl0, dl1, dl2, dl3, f_off, f_size, f_val) \
    int fn(void *ctx)                                                             \
    {                                                                             \
        if (!RASD_TP_FIELD_EQ(ctx, f_off, f_size, f_val))                         \
            return 0;                                                             \
        return rasd_tp_copy(ctx, probe, fixed, dl0, dl1, dl2, dl3);               \
    }
