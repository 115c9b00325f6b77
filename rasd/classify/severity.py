"""Classification: every event gets a severity (rasd's scale, events.SEVERITY_ORDER),
a containment and the reason, the way the kernel and KVM decide (reference §3, §5).

One function per event kind. They read only the event; what needs several events
(an SEA that firmware claimed, then memory_failure's outcome) is settled by the
correlator, which may raise an incident's severity later.
"""

from __future__ import annotations

from typing import Callable

from .. import events as ev
from ..decode import esr as esr_mod
from ..decode.cper.sections.arm import ArmProcessorSection, read_type
from ..decode.cper.sections.memory import MemorySection
from ..decode.cper.sections.pcie import PcieSection
from ..events import Event

# CPER severity (record/section) -> rasd severity and containment
CPER_SEVERITY = {0: ("recoverable", "pending"), 1: ("fatal", "host_panic"),
                 2: ("corrected", "corrected"), 3: ("info", "none_needed")}
# GHES-scale severities (tracepoint "sev" fields)
GHES_SEVERITY = {0: ("info", "none_needed"), 1: ("corrected", "corrected"),
                 2: ("recoverable", "pending"), 3: ("fatal", "host_panic")}
# memory_failure_event result (enum mf_result)
MF_RESULT = {"Recovered": ("recoverable", "page_isolated"), "Delayed": ("recoverable", "delayed"),
             "Ignored": ("uncorrected", "not_contained"), "Failed": ("uncorrected", "not_contained")}
# ras:mc_event error_type (enum hw_event_mc_err_type)
MC_TYPES = {0: "corrected", 1: "uncorrected", 2: "recoverable", 3: "fatal", 4: "info"}
# ras:aer_event severity: AER_NONFATAL 0, AER_FATAL 1, AER_CORRECTABLE 2
AER_SEVERITY = {0: ("recoverable", "device_recovery"), 1: ("uncorrected", "link_reset"),
                2: ("corrected", "corrected")}
UNLOCATABLE = "unlocatable memory corruption: uncorrected memory error without a valid " \
              "physical address; nobody can know which page, process or guest is affected"


def classify(event: Event) -> Event:
    """Set event.severity, .containment and .reason (never raises; unknown stays unknown)."""
    handler = HANDLERS.get(event.kind)
    try:
        severity, containment, reason = handler(event) if handler else ("info", "none_needed",
                                                                         event.kind)
    except Exception as exc:  # noqa: BLE001 - classification must never drop an event
        severity, containment, reason = "info", "unknown", f"classification failed: {exc}"
    event.severity, event.containment, event.reason = severity, containment, reason
    return event


Verdict = tuple[str, str, str]


# --- CPER (GHES, BERT) ---------------------------------------------------------------

def cper_verdict(record) -> Verdict:
    """The worst section decides; memory without a valid address is critical."""
    if record is None or record.header is None:
        return "info", "unknown", "no CPER record decoded"
    verdict = record.derived.get("verdict")  # a storm repeats identical records
    if verdict is None:
        verdict = record.derived["verdict"] = _cper_verdict(record)
    return verdict


def _cper_verdict(record) -> Verdict:
    block_sev = record.severity if record.severity in CPER_SEVERITY else 1  # >=4: GHES_SEV_PANIC
    severity, containment = CPER_SEVERITY[block_sev]
    reasons = [f"CPER {CPER_SEVERITY[block_sev][0]} record"]
    for sec in record.sections:
        s_sev, s_cont, s_reason = section_verdict(sec, block_sev)
        if ev.SEVERITY_RANK[s_sev] > ev.SEVERITY_RANK[severity]:
            severity, containment = s_sev, s_cont
        reasons.append(s_reason)
    return severity, containment, "; ".join(reasons)


def section_verdict(sec, block_sev: int) -> Verdict:
    sev_value = sec.severity if sec.severity in CPER_SEVERITY else 1
    severity, containment = CPER_SEVERITY[sev_value]
    body = sec.body
    if isinstance(body, MemorySection):
        if sev_value in (0, 1) and not body.physical_addr_valid:
            return "critical", "not_containable", UNLOCATABLE
        where = f"PA {body.physical_addr:#x}" if body.physical_addr_valid else "no address"
        if sev_value == 2 and sec.flags & 0x08:
            return "corrected", "page_soft_offline", f"corrected memory error at {where}, " \
                                                     "threshold exceeded: kernel soft-offlines"
        return severity, containment, f"{severity} memory error at {where}"
    if isinstance(body, ArmProcessorSection):
        kinds = sorted({n for e in body.error_info for n in read_type(e.type, body.type_reading)[0]})
        return severity, containment, f"{severity} ARM processor error ({', '.join(kinds) or 'no entries'})"
    if isinstance(body, PcieSection):
        bdf = body.device_id()["bdf"] if body.validation_bits & 0x8 else "unknown device"
        return severity, containment, f"{severity} PCIe error at {bdf}"
    return severity, containment, f"{severity} {sec.name} section"


def _ghes(event: Event) -> Verdict:
    record = event.cper
    if record is None:
        return "info", "unknown", event.decode_error or "GHES record not captured"
    # a storm's every event: cper_verdict()'s memo, read here first
    return record.derived.get("verdict") or cper_verdict(record)


def _bert(event: Event) -> Verdict:
    severity, containment, reason = cper_verdict(event.cper)
    if severity == "fatal":
        return "fatal", "host_panic", "previous boot ended in a fatal hardware error: " + reason
    return severity, containment, "boot error record of the previous boot: " + reason


# --- memory_failure ------------------------------------------------------------------

def _memory_failure(event: Event) -> Verdict:
    f = event.fields
    if "MF_SOFT_OFFLINE" in f.get("flag_names", ()):
        return "corrected", "page_soft_offline", "page soft-offlined (corrected-error threshold)"
    result = f.get("result")
    if result is None:
        return "recoverable", "pending", "memory_failure started"
    if result in ("handled", "already_poisoned"):
        how = "SIGBUS to the task that touched it" if f.get("action_required") else \
              "mappers unmapped (killed under early-kill)"
        page = f"page {f['pfn']:#x}" if f.get("pfn") is not None else "a page (pfn not seen)"
        return "recoverable", "page_isolated", f"{page} poisoned and isolated; {how}"
    if result == "filtered":
        return "info", "none_needed", "filtered by hwpoison_filter"
    return "uncorrected", "not_contained", f"memory_failure failed ({f.get('ret')}): page still in use"


def _memory_failure_event(event: Event) -> Verdict:
    f = event.fields
    name = f.get("result_name", "")
    severity, containment = MF_RESULT.get(name, ("uncorrected", "unknown"))
    return severity, containment, f"{f.get('page_type', 'page')}: {name or 'unknown result'}"


# --- SEA ---------------------------------------------------------------------------

def _sea_claim(event: Event) -> Verdict:
    f = event.fields
    origin = f.get("origin", "unknown")
    if f.get("claimed"):
        return "recoverable", "pending", f"SEA ({origin}) claimed by firmware-first: the CPER " \
                                         "record and memory_failure decide"
    if origin == "guest":
        return "uncorrected", "vm_contained", "guest SEA not claimed by firmware-first: KVM " \
                                              "injects a virtual SError into the guest"
    return "uncorrected", "process_killed", f"SEA ({origin}) not claimed: the task gets SIGBUS"


def _host_sea(event: Event) -> Verdict:
    if event.fields.get("origin") == "host_kernel":
        return "critical", "host_oops", "synchronous external abort in the kernel: die() " \
                                        "(panic with panic_on_oops)"
    return "uncorrected", "pending", "synchronous external abort in user space: APEI asked first"


def _guest_sea(event: Event) -> Verdict:
    return "uncorrected", "pending", "guest access hit an external abort (stage-2 SEA)"


# --- SError ------------------------------------------------------------------------

def _serror(event: Event, origin: str) -> Verdict:
    if event.esr is None or event.esr.serror is None:
        return "uncorrected", "unknown", f"{origin} SError without a readable syndrome"
    # The RAS path ran (these probes sit behind arm64_is_ras_serror), so FEAT_RAS is present.
    verdict = esr_mod.serror_verdict(event.esr, True, origin)
    outcome = verdict.outcome
    fatal = event.fields.get("fatal")
    if fatal is not None:  # the kernel's own answer beats our re-derivation
        outcome = (esr_mod.Outcome.HOST_PANIC if origin == "host" else
                   esr_mod.Outcome.VSERROR_INJECTED) if fatal else esr_mod.Outcome.CONTINUE
    aet = event.esr.serror.aet.name if event.esr.serror.aet else None
    if outcome in (esr_mod.Outcome.CONTINUE, esr_mod.Outcome.IGNORED):
        # CE: corrected; UEO: uncorrected but not yet consumed, the CPU can go on
        severity, containment = ("corrected", "corrected") if aet == "CE" else \
            ("recoverable", "deferred")
    elif outcome == esr_mod.Outcome.VSERROR_INJECTED:
        severity, containment = "uncorrected", "vm_contained"
    else:
        severity, containment = "fatal", "host_panic"
    return severity, containment, f"{origin} SError: {verdict.reason}"


def _serror_check(event: Event) -> Verdict:
    origin = event.fields.get("origin", "host")
    return _serror(event, "guest" if origin == "guest" else "host")


def _serror_panic(event: Event) -> Verdict:
    return "fatal", "host_panic", "arm64_serror_panic: the host is going down"


def _vserror(event: Event) -> Verdict:
    # On its own this may be emulation or user space (KVM_SET_VCPU_EVENTS); the
    # correlator upgrades it when a RAS event on the same vCPU thread caused it.
    return "info", "vm_contained", "virtual SError injected into a guest"


# --- tracepoints -------------------------------------------------------------------

def _ghes_scale(event: Event) -> Verdict:
    sev = event.fields.get("sev")
    severity, containment = GHES_SEVERITY.get(sev, ("info", "unknown"))
    return severity, containment, f"{event.kind} ({severity})"


def _mc_event(event: Event) -> Verdict:
    severity = MC_TYPES.get(event.fields.get("error_type"), "info")
    cont = {"corrected": "corrected", "fatal": "host_panic"}.get(severity, "pending")
    return severity, cont, f"EDAC {severity} memory error: {event.fields.get('msg', '')}".strip()


def _aer(event: Event) -> Verdict:
    severity, containment = AER_SEVERITY.get(event.fields.get("severity"), ("info", "unknown"))
    return severity, containment, f"PCIe AER {severity} at {event.fields.get('dev_name', '?')}"


# --- SIGBUS: the end of a memory-error chain ------------------------------------------

def _sigbus(event: Event) -> Verdict:
    f = event.fields
    who = f"{f.get('target_comm', '?')}[{f.get('target_tid', '?')}]"
    code = f.get("code_name", "unknown")
    late = "" if f.get("result_name") == "delivered" else f" (signal {f.get('result_name')})"
    if not f.get("mceerr"):
        return "info", "none_needed", f"SIGBUS {code} to {who}: not a memory error{late}"
    what = "touched a poisoned page" if code == "BUS_MCEERR_AR" else \
        "maps a poisoned page (early kill)"
    if f.get("result_name") == "ignored":
        # only the unforced send_sig_mceerr() can be ignored (AO, KVM's hwpoison
        # signal); memory_failure has already unmapped the page from the task
        return "recoverable", "page_isolated", f"SIGBUS {code} to {who} ({what}) ignored: " \
            "the task runs on without the page"
    if f.get("target_vcpu") is not None:
        # QEMU catches it and, with RAS enabled, injects an SEA into the guest:
        # the guest sees the error; the host process lives on
        return "uncorrected", "vm_contained", f"SIGBUS {code} to vCPU thread {who} " \
            f"({what}): the VMM forwards the error into the guest{late}"
    return "uncorrected", "process_killed", f"SIGBUS {code} to {who} ({what}): the task " \
        f"dies unless it handles SIGBUS{late}"


# --- /dev/kmsg (lockdown=confidentiality) ----------------------------------------------

KMSG_SEVERITY = {"corrected": ("corrected", "corrected"), "recoverable": ("recoverable", "pending"),
                 "fatal": ("fatal", "host_panic"), "info": ("info", "none_needed")}


def _kmsg(event: Event) -> Verdict:
    f = event.fields
    kind = f.get("kmsg_kind")
    if kind == "hw_error":
        severity, containment = KMSG_SEVERITY.get(f.get("severity"), ("uncorrected", "unknown"))
        for sec in f.get("sections", ()):
            if "memory" in str(sec.get("section_type", "")) and \
                    sec.get("physical_address") is None and severity in ("recoverable", "fatal"):
                return "critical", "not_containable", UNLOCATABLE + " (from the kernel log)"
        return severity, containment, f"kernel log: {severity} hardware error " \
                                      f"(GHES {f.get('source_id')})"
    if kind == "memory_failure":
        severity, containment = MF_RESULT.get(f.get("result"), ("uncorrected", "unknown"))
        return severity, containment, f"kernel log: {f.get('page_type')}: {f.get('result')}"
    if kind in ("sigbus", "ghes_sigbus"):
        return "uncorrected", "process_killed", f"kernel log: SIGBUS to {f.get('comm')}"
    if kind == "serror":
        return "fatal", "host_panic", "kernel log: SError Interrupt (arm64_serror_panic)"
    return "info", "none_needed", f"kernel log: {kind}"


def _info(reason: str) -> Callable[[Event], Verdict]:
    return lambda event: ("info", "none_needed", reason)


HANDLERS: dict[str, Callable[[Event], Verdict]] = {
    ev.GHES: _ghes,
    ev.BERT: _bert,
    ev.MEMORY_FAILURE: _memory_failure,
    ev.MEMORY_FAILURE_EVENT: _memory_failure_event,
    ev.SEA_CLAIM: _sea_claim,
    ev.HOST_SEA: _host_sea,
    ev.GUEST_SEA: _guest_sea,
    ev.HOST_SERROR: lambda e: _serror(e, "host"),
    ev.GUEST_SERROR: lambda e: _serror(e, "guest"),
    ev.SERROR_CHECK: _serror_check,
    ev.SERROR_PANIC: _serror_panic,
    ev.VSERROR_INJECTED: _vserror,
    ev.ARM_EVENT: _ghes_scale,
    ev.NON_STANDARD: _ghes_scale,
    ev.MC_EVENT: _mc_event,
    ev.AER: _aer,
    ev.KMSG: _kmsg,
    ev.SIGBUS: _sigbus,
    ev.GHES_READ: _info("GHES source read"),
    ev.GHES_IRQ_WORK: _info("GHES irq_work batch"),
    ev.SEA_NOTIFY: _info("SEA-notified GHES sources checked"),
    ev.MEMORY_FAILURE_QUEUE: _info("memory_failure queued from IRQ context"),
}
