/* rasd wire format and shared maps, included by every program in bpf/.
 *
 * Each ring-buffer record = struct rasd_hdr followed by one kind-specific payload.
 * rasd/sources/records.py parses it; keep both in step (RASD_WIRE_VERSION).
 *
 * bcc only treats functions and map-method calls (rasd_events.ringbuf_reserve...)
 * in its main file as BPF code, so the loader concatenates this header and the
 * selected .c files into one text; the #include "common.h" lines then expand to
 * nothing (include guard) and keep each file readable on its own.
 *
 * Compile-time knobs (set by rasd/sources/bpf_loader.py):
 *   RASD_RINGBUF_PAGES      ring size in pages (power of two)
 *   RASD_OFF_GHES_GENERIC   offset of struct ghes::generic (BTF; 0 on every kernel seen)
 *   RASD_OFF_VCPU_ESR_EL2, RASD_SZ_VCPU_ESR_EL2, RASD_OFF_VCPU_DISR_EL1,
 *   RASD_OFF_VCPU_FAR_EL2, RASD_OFF_VCPU_HPFAR_EL2
 *                           struct kvm_vcpu -> arch.fault.* (BTF); absent = unknown
 *   RASD_ESR32_PROBES       bit N set: probe id N's esr parameter is 32-bit on this
 *                           kernel (BTF prototype), so the register's upper half is junk
 */
#ifndef RASD_COMMON_H
#define RASD_COMMON_H

/* struct pt_regs for PT_REGS_PARMn: the arch ABI, not a kernel-internal layout */
#include <uapi/linux/ptrace.h>

#define RASD_WIRE_VERSION 1

#ifndef RASD_RINGBUF_PAGES
#define RASD_RINGBUF_PAGES 64
#endif
#ifndef RASD_OFF_GHES_GENERIC
#define RASD_OFF_GHES_GENERIC 0
#endif

/* Largest blob copied into one record (GHES status block, raw trace entry). */
#define RASD_MAX_BLOB 4096
#define RASD_BLOB_MASK (2 * RASD_MAX_BLOB - 1)

/* Record kinds: select the payload struct. */
#define RASD_KIND_GHES 1   /* struct rasd_ghes + status-block bytes */
#define RASD_KIND_CALL 2   /* struct rasd_call: function args/return */
#define RASD_KIND_TP   3   /* struct rasd_tp + raw trace entry bytes */

/* Header flags. */
#define RASD_F_TRUNCATED  0x0001 /* blob cut at RASD_MAX_BLOB */
#define RASD_F_RETURN     0x0002 /* ret field is valid */
#define RASD_F_NO_ENTRY   0x0004 /* return seen without its entry (args are 0) */
#define RASD_F_READ_FAULT 0x0008 /* a kernel read failed; some fields are 0 */
#define RASD_F_USER       0x0010 /* regs say the exception came from user mode */
#define RASD_F_NO_REGS    0x0020 /* regs == NULL (KVM guest path) */
#define RASD_F_VCPU_FAULT 0x0040 /* x[] holds vcpu->arch.fault (BTF offsets known) */
#define RASD_F_FENTRY     0x0080 /* emitted by an fentry/fexit program */

/* Probe ids: must match rasd/sources/probes.py (a unit test checks). */
#define RASD_P_GHES_DO_PROC            1
#define RASD_P_GHES_PROC               2
#define RASD_P_GHES_PROC_IN_IRQ        3
#define RASD_P_APEI_CLAIM_SEA          4
#define RASD_P_GHES_NOTIFY_SEA         5
#define RASD_P_MEMORY_FAILURE          6
#define RASD_P_MEMORY_FAILURE_QUEUE    7
#define RASD_P_HANDLE_EXIT_EARLY       8
#define RASD_P_KVM_HANDLE_GUEST_ABORT  9
#define RASD_P_KVM_HANDLE_GUEST_SEA   10
#define RASD_P_KVM_INJECT_VABT        11
#define RASD_P_KVM_INJECT_SERROR_ESR  12
#define RASD_P_DO_SERROR              13
#define RASD_P_ARM64_IS_FATAL_RAS_SERROR 14
#define RASD_P_ARM64_SERROR_PANIC     15
#define RASD_P_DO_SEA                 16
#define RASD_P_TP_ARM_EVENT           17
#define RASD_P_TP_MC_EVENT            18
#define RASD_P_TP_NON_STANDARD_EVENT  19
#define RASD_P_TP_AER_EVENT           20
#define RASD_P_TP_MEMORY_FAILURE_EVENT 21
#define RASD_P_TP_SIGBUS             22  /* signal:signal_generate, sig == SIGBUS only */
#define RASD_P_KVM_SET_SEI_ESR       23  /* <=6.16: vSError with a chosen syndrome */
#define RASD_P_TEST                   63  /* test/bench-only programs */

struct rasd_hdr {            /* 48 bytes */
    u16 kind;
    u16 probe;
    u16 flags;
    u16 version;             /* RASD_WIRE_VERSION */
    u32 cpu;
    u32 tgid;
    u32 tid;
    u32 payload_len;         /* bytes after this header */
    u64 ktime_ns;            /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
    char comm[16];
};

struct rasd_call {           /* 72 bytes; meaning of each slot per probe in probes.py */
    u64 arg[4];
    s64 ret;
    u64 x[4];
};

struct rasd_ghes {           /* 32 bytes, then captured status-block bytes */
    u16 source_id;           /* acpi_hest_header.source_id */
    u8 hest_type;            /* 9 GHES, 10 GHESv2 */
    u8 notify_type;          /* acpi_hest_notify.type */
    u32 error_block_length;
    u32 estatus_len;         /* cper_estatus_len() of the block */
    u32 captured_len;        /* bytes that follow */
    u64 ghes;                /* kernel pointers, for correlation only */
    u64 estatus;
};

struct rasd_tp {             /* 32 bytes (same as rasd_ghes: the blob follows the
                              * union in rasd_blob_event), then the raw trace entry */
    u32 entry_len;           /* full entry size computed from the format */
    u32 captured_len;
    u64 reserved[3];
};

struct rasd_blob_event {     /* per-CPU scratch for variable-size records */
    struct rasd_hdr h;
    union {
        struct rasd_ghes ghes;
        struct rasd_tp tp;
    };
    /* twice the cap: lengths are also masked with RASD_BLOB_MASK, a bound the
     * verifier keeps whichever register copy clang picks */
    u8 data[2 * RASD_MAX_BLOB];
};

struct rasd_call_event {
    struct rasd_hdr h;
    struct rasd_call c;
};

/* Entry arguments kept until the matching return (kretprobe pairs). */
struct rasd_stash {
    u64 arg[4];
};

BPF_RINGBUF_OUTPUT(rasd_events, RASD_RINGBUF_PAGES);
/* Reserve/output failures, per CPU: the exact count of lost records. */
BPF_PERCPU_ARRAY(rasd_lost, u64, 1);
/* Separate scratch per program family so an IRQ-nested GHES program cannot
 * clobber a tracepoint record being built on the same CPU. */
BPF_PERCPU_ARRAY(rasd_ghes_scratch, struct rasd_blob_event, 1);
BPF_PERCPU_ARRAY(rasd_tp_scratch, struct rasd_blob_event, 1);
/* Per-thread stash for sleeping/process-context pairs (memory_failure, apei_claim_sea),
 * keyed by (probe id << 32 | tid): an interrupt on the same task (a polled GHES source's
 * timer runs ghes_proc in softirq on whatever task it interrupts) must not take or
 * overwrite another probe's entry (seen in the arm64 lab: memory_failure in a kworker
 * lost its pfn to a nested ghes_proc pair). */
BPF_HASH(rasd_stash_tid, u64, struct rasd_stash, 1024);
/* Per-CPU stash for NMI-context pairs (arm64_is_fatal_ras_serror): no hash locks in NMI. */
BPF_PERCPU_ARRAY(rasd_stash_cpu, struct rasd_stash, 1);

#ifndef RASD_ESR32_PROBES
#define RASD_ESR32_PROBES 0ULL
#endif
/* An esr argument at the width the kernel declares it (folded at compile time). */
#define RASD_ESR(probe, v) \
    ((((u64)(RASD_ESR32_PROBES) >> (probe)) & 1) ? (u64)(u32)(v) : (u64)(v))

/* pt_regs layouts are kernel ABI (arm64 user_pt_regs: regs[31], sp, pc, pstate). */
#if defined(__aarch64__)
#define RASD_PTREGS_PC_OFF   256
#define RASD_PTREGS_MODE_OFF 264
#define RASD_MODE_IS_USER(m) (((m) & 0xf) == 0)  /* PSR_MODE_EL0t */
#elif defined(__x86_64__)
#define RASD_PTREGS_PC_OFF   128                 /* ip */
#define RASD_PTREGS_MODE_OFF 136                 /* cs */
#define RASD_MODE_IS_USER(m) (((m) & 3) == 3)
#else
#define RASD_PTREGS_PC_OFF   0
#define RASD_PTREGS_MODE_OFF 0
#define RASD_MODE_IS_USER(m) 0
#endif

static __always_inline void rasd_count_lost(void)
{
    u32 zero = 0;
    u64 *n = rasd_lost.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void rasd_fill_hdr(struct rasd_hdr *h, u16 kind, u16 probe,
                                          u16 flags, u32 payload_len)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();

    h->kind = kind;
    h->probe = probe;
    h->flags = flags;
    h->version = RASD_WIRE_VERSION;
    h->cpu = bpf_get_smp_processor_id();
    h->tgid = pid_tgid >> 32;
    h->tid = (u32)pid_tgid;
    h->payload_len = payload_len;
    h->ktime_ns = bpf_ktime_get_ns();
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* KVM events run in a vCPU thread: its cgroup v2 id (a CALL record's arg3, for every
 * KVM probe) names the VM even when the VMM has exited before rasd reads /proc (one
 * that quits right after a virtual SError, or is killed by the SIGBUS). Taken after
 * each filter: no cost on the VM exits that are dropped. */
#define RASD_VMM_CGROUP bpf_get_current_cgroup_id()

/* Emit a CALL record; reserve failure is counted, never silent. */
static __always_inline int rasd_emit_call(u16 probe, u16 flags,
                                          u64 a0, u64 a1, u64 a2, u64 a3, s64 ret,
                                          u64 x0, u64 x1, u64 x2, u64 x3)
{
    struct rasd_call_event *e = rasd_events.ringbuf_reserve(sizeof(*e));
    if (!e) {
        rasd_count_lost();
        return 0;
    }
    rasd_fill_hdr(&e->h, RASD_KIND_CALL, probe, flags, sizeof(e->c));
    e->c.arg[0] = a0;
    e->c.arg[1] = a1;
    e->c.arg[2] = a2;
    e->c.arg[3] = a3;
    e->c.ret = ret;
    e->c.x[0] = x0;
    e->c.x[1] = x1;
    e->c.x[2] = x2;
    e->c.x[3] = x3;
    rasd_events.ringbuf_submit(e, 0);
    return 0;
}

/* Send the first `len` bytes of a scratch record; len is bounded by the caller. */
static __always_inline void rasd_output_blob(struct rasd_blob_event *e, u64 len)
{
    if (len > sizeof(*e))
        len = sizeof(*e);
    if (rasd_events.ringbuf_output(e, len, 0) < 0)
        rasd_count_lost();
}

static __always_inline u64 rasd_stash_key(u32 probe)
{
    return (u64)probe << 32 | (u32)bpf_get_current_pid_tgid();
}

static __always_inline void rasd_stash_tid_put(u32 probe, u64 a0, u64 a1, u64 a2, u64 a3)
{
    u64 key = rasd_stash_key(probe);
    struct rasd_stash s = { .arg = { a0, a1, a2, a3 } };
    rasd_stash_tid.update(&key, &s);
}

/* Copy the stashed args out and drop the entry; returns 0 when none was stashed. */
static __always_inline int rasd_stash_tid_take(u32 probe, struct rasd_stash *out)
{
    u64 key = rasd_stash_key(probe);
    struct rasd_stash *s = rasd_stash_tid.lookup(&key);
    if (!s)
        return 0;
    __builtin_memcpy(out, s, sizeof(*out));
    rasd_stash_tid.delete(&key);
    return 1;
}

/* Read pc and mode (pstate / cs) from a struct pt_regs pointer; returns flags. */
static __always_inline u16 rasd_read_regs(void *regs, u64 *pc, u64 *mode)
{
    *pc = 0;
    *mode = 0;
    if (!regs)
        return RASD_F_NO_REGS;
    if (bpf_probe_read_kernel(pc, sizeof(*pc), regs + RASD_PTREGS_PC_OFF) ||
        bpf_probe_read_kernel(mode, sizeof(*mode), regs + RASD_PTREGS_MODE_OFF))
        return RASD_F_READ_FAULT;
    return RASD_MODE_IS_USER(*mode) ? RASD_F_USER : 0;
}

#endif /* RASD_COMMON_H */
