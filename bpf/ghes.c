/* APEI GHES probes: ghes_do_proc (the CPER content), ghes_proc, ghes_proc_in_irq,
 * apei_claim_sea and ghes_notify_sea (was an SEA claimed by firmware-first?). */
#include "common.h"

/* ACPI-defined layouts (ACPI 6.x HEST, Generic Hardware Error Source); stable. */
#define ACPI_HEST_SOURCE_ID_OFF   2   /* acpi_hest_header.source_id (u16) */
#define ACPI_HEST_NOTIFY_TYPE_OFF 32  /* acpi_hest_generic.notify.type (u8) */
#define ACPI_HEST_EBL_OFF         60  /* acpi_hest_generic.error_block_length (u32) */
#define CPER_ESTATUS_HDR_LEN      20  /* struct acpi_hest_generic_status */

struct rasd_estatus_hdr {
    u32 block_status;
    u32 raw_data_offset;
    u32 raw_data_length;
    u32 data_length;
    u32 error_severity;
};

/* cper_estatus_len(): apei-internal.h is not shipped, so the rule lives here. */
static __always_inline u64 rasd_estatus_len(const struct rasd_estatus_hdr *s)
{
    if (s->raw_data_length)
        return (u64)s->raw_data_offset + s->raw_data_length;
    return CPER_ESTATUS_HDR_LEN + (u64)s->data_length;
}

/* A HEST GHES (type 9) or GHESv2 (type 10) entry at `generic`: fills g, returns 1. */
static __always_inline int rasd_hest_at(void *generic, struct rasd_ghes *g)
{
    u16 hdr[2] = {};

    if (!generic || bpf_probe_read_kernel(hdr, sizeof(hdr), generic) ||
        (hdr[0] != 9 && hdr[0] != 10))
        return 0;
    if (bpf_probe_read_kernel(&g->notify_type, 1, generic + ACPI_HEST_NOTIFY_TYPE_OFF) ||
        bpf_probe_read_kernel(&g->error_block_length, 4, generic + ACPI_HEST_EBL_OFF)) {
        g->notify_type = 0;
        g->error_block_length = 0;
        return 0;
    }
    g->hest_type = (u8)hdr[0];
    g->source_id = hdr[1];
    return 1;
}

/* Source id, HEST type, notify type and block length from ghes->generic.  Debian
 * 6.1's ghes_do_proc.isra.0 is passed ghes->generic itself (IPA-SRA: the function only
 * reads ghes->generic), seen in the arm64 lab: so when `ghes` does not lead to a HEST
 * entry, `ghes` is tried as the entry (its type at offset 0 tells them apart: a struct
 * ghes starts with an 8-byte-aligned pointer, never 9 or 10 in its low half-word). */
static __always_inline u16 rasd_read_hest(void *ghes, struct rasd_ghes *g)
{
    void *generic = NULL;

    if (!bpf_probe_read_kernel(&generic, sizeof(generic), ghes + RASD_OFF_GHES_GENERIC) &&
        rasd_hest_at(generic, g))
        return 0;
    if (rasd_hest_at(ghes, g))
        return 0;
    return RASD_F_READ_FAULT;
}

/* One GHES record: the HEST identity plus a bounded copy of the status block. */
static __always_inline int rasd_ghes_record(u16 probe, u16 flags, void *ghes, void *estatus)
{
    u32 zero = 0;
    struct rasd_blob_event *e = rasd_ghes_scratch.lookup(&zero);
    struct rasd_estatus_hdr sh = {};
    u64 len, cap;

    if (!e)
        return 0;
    e->ghes.ghes = (u64)ghes;
    e->ghes.estatus = (u64)estatus;
    e->ghes.source_id = 0;
    e->ghes.hest_type = 0;
    e->ghes.notify_type = 0;
    e->ghes.error_block_length = 0;
    flags |= rasd_read_hest(ghes, &e->ghes);

    if (bpf_probe_read_kernel(&sh, sizeof(sh), estatus))
        flags |= RASD_F_READ_FAULT;
    len = rasd_estatus_len(&sh);
    cap = len;
    if (cap > RASD_MAX_BLOB) {
        cap = RASD_MAX_BLOB;
        flags |= RASD_F_TRUNCATED;
    }
    cap &= RASD_BLOB_MASK;
    if (cap && bpf_probe_read_kernel(e->data, cap, estatus)) {
        cap = 0;
        flags |= RASD_F_READ_FAULT;
    }
    e->ghes.estatus_len = len > 0xffffffffULL ? 0xffffffff : (u32)len;
    e->ghes.captured_len = cap;
    rasd_fill_hdr(&e->h, RASD_KIND_GHES, probe, flags, sizeof(e->ghes) + cap);
    rasd_output_blob(e, sizeof(e->h) + sizeof(e->ghes) + cap);
    return 0;
}

/* ghes_do_proc(struct ghes *ghes, const struct acpi_hest_generic_status *estatus);
 * attached by symbol, so the .isra.N clone of 6.1 is the same program. */
int rasd_ghes_do_proc(struct pt_regs *ctx)
{
    return rasd_ghes_record(RASD_P_GHES_DO_PROC, 0,
                            (void *)PT_REGS_PARM1(ctx), (void *)PT_REGS_PARM2(ctx));
}

/* ghes_proc(struct ghes *): entry stashes the ghes, return reports the outcome.
 * -ENOENT (no record) is the idle poll result and is not emitted. */
int rasd_ghes_proc_entry(struct pt_regs *ctx)
{
    rasd_stash_tid_put(RASD_P_GHES_PROC, PT_REGS_PARM1(ctx), 0, 0, 0);
    return 0;
}

int rasd_ghes_proc_return(struct pt_regs *ctx)
{
    struct rasd_stash s = {};
    s64 ret = (s64)(int)PT_REGS_RC(ctx);
    u16 flags = RASD_F_RETURN;
    struct rasd_ghes g = {};

    if (!rasd_stash_tid_take(RASD_P_GHES_PROC, &s))
        flags |= RASD_F_NO_ENTRY;
    if (ret == -2 /* -ENOENT */)
        return 0;
    if (s.arg[0])
        flags |= rasd_read_hest((void *)s.arg[0], &g);
    return rasd_emit_call(RASD_P_GHES_PROC, flags, s.arg[0], 0, 0, 0, ret,
                          g.source_id, g.hest_type, g.notify_type, g.error_block_length);
}

/* ghes_proc_in_irq(struct irq_work *): one irq_work batch of queued NMI-like records. */
int rasd_ghes_proc_in_irq(struct pt_regs *ctx)
{
    return rasd_emit_call(RASD_P_GHES_PROC_IN_IRQ, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
}

/* apei_claim_sea(struct pt_regs *regs): regs == NULL means the KVM guest path.
 * Returns 0 claimed, -ENOENT not claimed, -EINPROGRESS (N) work queued. */
int rasd_apei_claim_sea_entry(struct pt_regs *ctx)
{
    rasd_stash_tid_put(RASD_P_APEI_CLAIM_SEA, PT_REGS_PARM1(ctx), 0, 0, 0);
    return 0;
}

int rasd_apei_claim_sea_return(struct pt_regs *ctx)
{
    struct rasd_stash s = {};
    u16 flags = RASD_F_RETURN;
    u64 pc = 0, mode = 0;

    if (!rasd_stash_tid_take(RASD_P_APEI_CLAIM_SEA, &s))
        flags |= RASD_F_NO_ENTRY;
    else
        flags |= rasd_read_regs((void *)s.arg[0], &pc, &mode);
    return rasd_emit_call(RASD_P_APEI_CLAIM_SEA, flags, s.arg[0], 0, 0, 0,
                          (s64)(int)PT_REGS_RC(ctx), pc, mode, 0, 0);
}

/* ghes_notify_sea(void): NMI context; only the return value matters. */
int rasd_ghes_notify_sea_return(struct pt_regs *ctx)
{
    return rasd_emit_call(RASD_P_GHES_NOTIFY_SEA, RASD_F_RETURN, 0, 0, 0, 0,
                          (s64)(int)PT_REGS_RC(ctx), 0, 0, 0, 0);
}
