"""The declarative probe table: what rasd attaches, where, and what each yields.

One ``Probe`` per kernel signal. The resolver (resolve.py) matches ``symbols``
against the running kernel; the loader (bpf_loader.py) attaches ``entry_fn``
(kprobe or tracepoint program) and ``exit_fn`` (kretprobe program), or the
fentry program ``fentry_fn`` for hot paths when BTF trampolines work.

``id`` is the probe number in every ring-buffer record; it must equal the
RASD_P_* constant in bpf/common.h (tests/unit/test_probe_resolve.py checks).
``call_fields`` names the slots of a CALL record (records.py): ``arg0..arg3``,
``ret``, ``x0..x3``; empty names are unused slots.
"""
from __future__ import annotations

from dataclasses import dataclass

ARM64 = ("arm64",)
ANY = ("any",)
SIGBUS = 7  # same number on arm64 and x86_64 (asm-generic / x86 signal.h)


@dataclass(frozen=True)
class Probe:
    name: str
    id: int
    kind: str  # "kprobe" (entry and/or return programs) or "tracepoint"
    source: str  # file in bpf/
    arch: tuple[str, ...] = ANY
    # kprobe targets: exact names, or regexes written "re:<pattern>" (anchored)
    symbols: tuple[str, ...] = ()
    # tracepoint targets: "system:event" alternatives, first present wins
    events: tuple[str, ...] = ()
    entry_fn: str | None = None  # kprobe / tracepoint program
    exit_fn: str | None = None  # kretprobe program
    fentry_fn: str | None = None  # KFUNC_PROBE form, compiled only when chosen
    fentry_macro: str | None = None  # -D macro that compiles the fentry form
    hot: bool = False  # runs on every VM exit: prefer fentry, filter early
    needs_vcpu_esr: bool = False  # useless without BTF offset of vcpu->arch.fault.esr_el2
    call_fields: tuple[str, ...] = ()  # names for arg0..3, ret, x0..3 of CALL records
    esr_param: int | None = None  # 0-based index of an `esr` parameter (u32 on old kernels)
    # tracepoints that fire for far more than RAS: (integer field, value) the BPF
    # program's first instructions require, offset/size taken from the tracefs format
    tp_filter: tuple[str, int] | None = None
    yields: str = ""

    @property
    def is_tracepoint(self) -> bool:
        return self.kind == "tracepoint"


def _cf(args: tuple[str, ...] = (), ret: str = "", x: tuple[str, ...] = ()) -> tuple[str, ...]:
    """call_fields helper: 4 arg names, the return name, 4 extra names."""
    return tuple(args + ("",) * (4 - len(args))) + (ret,) + tuple(x + ("",) * (4 - len(x)))


_SUFFIX = r"(\.(isra|constprop|part|cold|llvm)\.\w+)*"
_VCPU_FAULT = ("esr_el2", "disr_el1", "far_el2", "hpfar_el2")
_REGS_MODE = ("pc", "pstate")
_CGROUP = "cgroup_id"  # the vCPU thread's cgroup v2 id (classify/vm.py: VM after VMM exit)

PROBES: tuple[Probe, ...] = (
    # --- APEI / GHES -------------------------------------------------------
    Probe("ghes_do_proc", 1, "kprobe", "ghes.c", ARM64,
          symbols=(rf"re:ghes_do_proc{_SUFFIX}",), entry_fn="rasd_ghes_do_proc",
          yields="GHES record: HEST source id, type, notify type, status block bytes"),
    Probe("ghes_proc", 2, "kprobe", "ghes.c", ARM64,
          symbols=(rf"re:ghes_proc{_SUFFIX}",), entry_fn="rasd_ghes_proc_entry",
          exit_fn="rasd_ghes_proc_return",
          call_fields=_cf(("ghes",), "ret", ("source_id", "hest_type", "notify_type",
                                              "error_block_length")),
          yields="GHES read outcome (not emitted for -ENOENT idle polls)"),
    Probe("ghes_proc_in_irq", 3, "kprobe", "ghes.c", ARM64,
          symbols=(rf"re:ghes_proc_in_irq{_SUFFIX}",), entry_fn="rasd_ghes_proc_in_irq",
          call_fields=_cf(), yields="one irq_work batch of NMI-like GHES records"),
    Probe("apei_claim_sea", 4, "kprobe", "ghes.c", ARM64,
          symbols=("apei_claim_sea",), entry_fn="rasd_apei_claim_sea_entry",
          exit_fn="rasd_apei_claim_sea_return",
          call_fields=_cf(("regs",), "ret", _REGS_MODE),
          yields="SEA claimed by firmware-first (ret 0) or not; regs NULL = KVM guest"),
    Probe("ghes_notify_sea", 5, "kprobe", "ghes.c", ARM64,
          symbols=("ghes_notify_sea",), exit_fn="rasd_ghes_notify_sea_return",
          call_fields=_cf((), "ret"), yields="SEA-notified GHES had a record (ret 0)"),
    # --- memory_failure ----------------------------------------------------
    Probe("memory_failure", 6, "kprobe", "memory_failure.c", ANY,
          symbols=("memory_failure",), entry_fn="rasd_memory_failure_entry",
          exit_fn="rasd_memory_failure_return",
          call_fields=_cf(("pfn", "flags"), "ret"),
          yields="hwpoison action: pfn, MF_* flags, return value"),
    Probe("memory_failure_queue", 7, "kprobe", "memory_failure.c", ANY,
          symbols=("memory_failure_queue",), entry_fn="rasd_memory_failure_queue",
          call_fields=_cf(("pfn", "flags")), yields="hwpoison queued from IRQ context (GHES)"),
    # --- KVM arm64 ---------------------------------------------------------
    Probe("handle_exit_early", 8, "kprobe", "kvm_arm.c", ARM64,
          symbols=("handle_exit_early",), entry_fn="rasd_handle_exit_early",
          fentry_fn="kfunc__handle_exit_early", fentry_macro="RASD_FENTRY_HANDLE_EXIT_EARLY",
          hot=True, call_fields=_cf(("vcpu", "exception_index", "", _CGROUP), "", _VCPU_FAULT),
          yields="guest SError exit (bit 31 or code 1) with vcpu fault registers"),
    Probe("kvm_handle_guest_abort", 9, "kprobe", "kvm_arm.c", ARM64,
          symbols=("kvm_handle_guest_abort",), entry_fn="rasd_kvm_handle_guest_abort",
          fentry_fn="kfunc__kvm_handle_guest_abort",
          fentry_macro="RASD_FENTRY_KVM_HANDLE_GUEST_ABORT", hot=True, needs_vcpu_esr=True,
          call_fields=_cf(("vcpu", "", "", _CGROUP), "", _VCPU_FAULT), yields="guest SEA (FSC filter in BPF)"),
    Probe("kvm_handle_guest_sea", 10, "kprobe", "kvm_arm.c", ARM64,
          symbols=("kvm_handle_guest_sea",), entry_fn="rasd_kvm_handle_guest_sea",
          call_fields=_cf(("vcpu", "", "", _CGROUP), "", _VCPU_FAULT), yields="guest SEA (6.17+ function)"),
    Probe("kvm_inject_vabt", 11, "kprobe", "kvm_arm.c", ARM64,
          symbols=("kvm_inject_vabt",), entry_fn="rasd_kvm_inject_vabt",
          call_fields=_cf(("vcpu", "", "", _CGROUP)), yields="virtual SError injected (<=6.16)"),
    Probe("kvm_inject_serror_esr", 12, "kprobe", "kvm_arm.c", ARM64,
          symbols=("kvm_inject_serror_esr",), entry_fn="rasd_kvm_inject_serror_esr",
          call_fields=_cf(("vcpu", "esr", "", _CGROUP)), esr_param=1, yields="virtual SError injected (6.17+)"),
    Probe("kvm_set_sei_esr", 23, "kprobe", "kvm_arm.c", ARM64,
          symbols=("kvm_set_sei_esr",), entry_fn="rasd_kvm_set_sei_esr",
          call_fields=_cf(("vcpu", "esr", "", _CGROUP)), esr_param=1,
          yields="virtual SError with a chosen syndrome (<=6.16, KVM_SET_VCPU_EVENTS)"),
    # --- host SError / SEA -------------------------------------------------
    Probe("do_serror", 13, "kprobe", "serror.c", ARM64,
          symbols=("do_serror",), entry_fn="rasd_do_serror",
          call_fields=_cf(("regs", "esr"), "", _REGS_MODE), esr_param=1,
          yields="host SError (NMI context)"),
    Probe("arm64_is_fatal_ras_serror", 14, "kprobe", "serror.c", ARM64,
          symbols=("arm64_is_fatal_ras_serror",), entry_fn="rasd_arm64_is_fatal_ras_serror_entry",
          exit_fn="rasd_arm64_is_fatal_ras_serror_return",
          call_fields=_cf(("regs", "esr"), "fatal", _REGS_MODE), esr_param=1,
          yields="RAS SError classified; regs NULL = guest"),
    Probe("arm64_serror_panic", 15, "kprobe", "serror.c", ARM64,
          symbols=("arm64_serror_panic",), entry_fn="rasd_arm64_serror_panic",
          call_fields=_cf(("regs", "esr"), "", _REGS_MODE), esr_param=1,
          yields="fatal SError (best effort)"),
    Probe("do_sea", 16, "kprobe", "serror.c", ARM64,
          symbols=(rf"re:do_sea{_SUFFIX}",), entry_fn="rasd_do_sea",
          call_fields=_cf(("far", "esr", "regs"), "", _REGS_MODE), esr_param=1,
          yields="synchronous external abort; user/kernel from pstate"),
    # --- tracepoints (any arch) --------------------------------------------
    Probe("arm_event", 17, "tracepoint", "tracepoints.c", events=("ras:arm_event",),
          entry_fn="rasd_tp_arm_event", yields="ARM processor error (pei/ctx/oem when present)"),
    Probe("mc_event", 18, "tracepoint", "tracepoints.c", events=("ras:mc_event",),
          entry_fn="rasd_tp_mc_event", yields="EDAC memory error"),
    Probe("non_standard_event", 19, "tracepoint", "tracepoints.c",
          events=("ras:non_standard_event",), entry_fn="rasd_tp_non_standard_event",
          yields="non-standard CPER section (buf bounded)"),
    Probe("aer_event", 20, "tracepoint", "tracepoints.c", events=("ras:aer_event",),
          entry_fn="rasd_tp_aer_event", yields="PCIe AER error"),
    Probe("memory_failure_event", 21, "tracepoint", "tracepoints.c",
          events=("ras:memory_failure_event", "memory_failure:memory_failure_event"),
          entry_fn="rasd_tp_memory_failure_event", yields="hwpoison page type and result"),
    # --- the end of a memory-error chain (any arch) ---------------------------
    # signal_generate fires for every signal on the machine, in the sender's
    # context; its fields name the target (pid = target thread id). Only SIGBUS
    # leaves the kernel: BUS_MCEERR_AR/AO from memory_failure / KVM, BUS_OBJERR
    # from an unclaimed SEA.
    Probe("sigbus", 22, "tracepoint", "tracepoints.c", events=("signal:signal_generate",),
          entry_fn="rasd_tp_sigbus", tp_filter=("sig", SIGBUS),
          yields="SIGBUS sent: target thread and comm, si_code, delivery result"),
)

# Test/bench-only program id (RASD_P_TEST); never in PROBES.
TEST_PROBE_ID = 63

BY_NAME: dict[str, Probe] = {p.name: p for p in PROBES}
# tracefs event systems the probes use: the resolver reads only these formats
TRACE_SYSTEMS: tuple[str, ...] = tuple(sorted({key.split(":", 1)[0] for p in PROBES
                                               for key in p.events}))
BY_ID: dict[int, Probe] = {p.id: p for p in PROBES}
BPF_SOURCES: tuple[str, ...] = ("ghes.c", "memory_failure.c", "kvm_arm.c", "serror.c",
                                "tracepoints.c")
# Test/bench-only programs (compiled only when a test attachment asks for them).
BPF_TEST_SOURCE = "testing.c"
