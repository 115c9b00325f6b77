/* Test and benchmark programs only; the daemon never attaches them. They run
 * the production bodies from syscall tracepoints, where this x86 development
 * host can fire them (it has no RAS hardware and no kprobes). */
#include "common.h"

/* RASD_TEST_TGID restricts the test programs to the test process, so counts are exact. */
#ifdef RASD_TEST_TGID
#define RASD_TEST_ONLY_ME() \
    if ((bpf_get_current_pid_tgid() >> 32) != RASD_TEST_TGID) return 0
#else
#define RASD_TEST_ONLY_ME()
#endif

/* A CALL record per hit (the body of every kprobe program). */
int rasd_test_call(void *ctx)
{
    RASD_TEST_ONLY_ME();
    return rasd_emit_call(RASD_P_TEST, 0, 1, 2, 3, 4, -5, 6, 7, 8, 9);
}

/* A CALL record as the KVM probes make it: arg3 = the task's cgroup v2 id. */
int rasd_test_vmm_call(void *ctx)
{
    RASD_TEST_ONLY_ME();
    return rasd_emit_call(RASD_P_TEST, 0, 1, 0, 0, RASD_VMM_CGROUP, 0, 0, 0, 0, 0);
}

/* The minimal program probe costs are compared against: one reserve + submit. */
int rasd_test_baseline(void *ctx)
{
    u64 *p = rasd_events.ringbuf_reserve(sizeof(u64));

    if (!p) {
        rasd_count_lost();
        return 0;
    }
    *p = 0;
    rasd_events.ringbuf_submit(p, 0);
    return 0;
}

/* The GHES record body on a fake struct ghes / acpi_hest_generic / status block
 * that user space writes into this map (map values are kernel memory, so the
 * same bpf_probe_read_kernel paths run as on a real GHES). */
struct rasd_test_ghes {
    u64 generic_ptr;                      /* struct ghes: generic at offset 0 */
    u8 generic[64];                       /* struct acpi_hest_generic */
    u8 estatus[RASD_MAX_BLOB + 1024];     /* status block, longer than the cap */
};
BPF_ARRAY(rasd_test_ghes_mem, struct rasd_test_ghes, 1);

/* The GHES body on test memory; isra: pass ghes->generic as the first argument, as
 * Debian 6.1's ghes_do_proc.isra.0 is called, instead of the ghes. */
static __always_inline int rasd_test_ghes_body(int isra)
{
    u32 zero = 0;
    struct rasd_test_ghes *m;

    RASD_TEST_ONLY_ME();
    m = rasd_test_ghes_mem.lookup(&zero);
    if (!m)
        return 0;
    m->generic_ptr = (u64)m->generic;
    return rasd_ghes_record(RASD_P_TEST, 0, isra ? (void *)m->generic : (void *)m, m->estatus);
}

int rasd_test_ghes(void *ctx)
{
    return rasd_test_ghes_body(0);
}

int rasd_test_ghes_isra(void *ctx)
{
    return rasd_test_ghes_body(1);
}
