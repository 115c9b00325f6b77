"""The event model every pipeline stage passes along.

A source turns what the kernel handed over into a source record; the decode stage
turns that into an ``Event``; classification and correlation add to it (severity,
containment, incident) and never drop what came before: the raw bytes stay.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Event kinds: one per kernel signal (rasd/sources/probes.py says which probe yields which).
GHES = "ghes"  # a GHES status block (CPER) handed to ghes_do_proc
GHES_READ = "ghes_read"  # ghes_proc read a block (return value)
GHES_IRQ_WORK = "ghes_irq_work"  # ghes_proc_in_irq drained the NMI-like queue
SEA_CLAIM = "sea_claim"  # apei_claim_sea returned: claimed or not, host or guest
SEA_NOTIFY = "sea_notify"  # ghes_notify_sea returned
MEMORY_FAILURE = "memory_failure"  # memory_failure(pfn, flags) and its return value
MEMORY_FAILURE_QUEUE = "memory_failure_queue"
MEMORY_FAILURE_EVENT = "memory_failure_event"  # tracepoint: page type and result
GUEST_SERROR = "guest_serror"  # handle_exit_early with an SError pending
GUEST_SEA = "guest_sea"  # kvm_handle_guest_abort / kvm_handle_guest_sea with an SEA FSC
VSERROR_INJECTED = "vserror_injected"  # kvm_inject_vabt / kvm_inject_serror_esr
HOST_SERROR = "host_serror"  # do_serror
SERROR_CHECK = "serror_check"  # arm64_is_fatal_ras_serror (regs NULL: guest)
SERROR_PANIC = "serror_panic"  # arm64_serror_panic
HOST_SEA = "host_sea"  # do_sea
ARM_EVENT = "arm_event"
MC_EVENT = "mc_event"
NON_STANDARD = "non_standard"
AER = "aer"
SIGBUS = "sigbus"  # signal:signal_generate with sig 7: fields name the target thread
BERT = "bert"  # a boot error record read at start
KMSG = "kmsg"  # a kernel log line group, when nothing better can be had (lockdown)


@dataclass(slots=True)
class Task:
    tgid: int
    tid: int
    comm: str

    def to_dict(self) -> dict:
        return {"tgid": self.tgid, "tid": self.tid, "comm": self.comm}


@dataclass(slots=True)
class Event:
    kind: str
    source: str  # probe name, "tracefs:<sys>:<event>", "bert", "kmsg", "replay:<probe>"
    wall_ns: int  # CLOCK_REALTIME
    mono_ns: int | None = None  # kernel ktime (CLOCK_MONOTONIC), when the kernel stamped it
    cpu: int | None = None
    task: Task | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # probe/tracepoint fields, decoded
    raw: bytes = b""  # status block, trace entry, or whatever bytes came with it
    cper: Any = None  # rasd.decode.cper.Record when raw held CPER
    esr: Any = None  # rasd.decode.esr.Esr when an ESR came with it
    decode_error: str | None = None
    truncated: bool = False  # the kernel side cut the bytes (e.g. a block over 4 KiB)
    id: int | None = None  # assigned by the pipeline, in arrival order
    # filled by classification and correlation
    severity: str | None = None
    containment: str | None = None
    reason: str | None = None
    incident_id: int | None = None
    # (physical address, memory location, MPIDR) as correlation reads them from the
    # CPER or fields; computed once per event (correlate.incidents.where)
    place: tuple | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d: dict = {"id": self.id, "kind": self.kind, "source": self.source, "wall_ns": self.wall_ns,
                   "mono_ns": self.mono_ns, "cpu": self.cpu,
                   "task": self.task.to_dict() if self.task else None,
                   "fields": self.fields, "truncated": self.truncated,
                   "decode_error": self.decode_error}
        if self.esr is not None:
            d["esr"] = self.esr.to_dict()
        if self.cper is not None:
            d["cper"] = self.cper.to_dict()
        if self.raw:
            d["raw"] = base64.b64encode(self.raw).decode()
        for name in ("severity", "containment", "reason", "incident_id"):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        return d


# Severity scale rasd assigns (classification), least to worst. Kernel and CPER
# severities are inputs to it; this is what an operator pages on.
SEVERITY_ORDER = ("info", "corrected", "recoverable", "uncorrected", "critical", "fatal")
SEVERITY_RANK = {name: i for i, name in enumerate(SEVERITY_ORDER)}


def worse(a: str | None, b: str | None) -> str | None:
    """The worse of two rasd severities (None counts as nothing known)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if SEVERITY_RANK.get(a, 0) >= SEVERITY_RANK.get(b, 0) else b


MAX_EVENT_IDS = 1000


@dataclass(slots=True)
class Incident:
    """One real-world fault: the events it produced, how bad it is and what it touches."""

    kind: str  # alert kind: uncorrected_memory, unlocatable_memory_corruption, guest_sea, ...
    key: str  # what correlated its events: "page:0x81234", "cpu:3", "vm:4242", ...
    first_wall_ns: int
    last_wall_ns: int
    severity: str = "info"
    containment: str = "unknown"
    summary: str = ""
    id: int | None = None  # assigned by the store
    # The first MAX_EVENT_IDS member ids; every member counts in event_count and kind_counts.
    # A storm keeps one incident open for hours: its memory must not grow with it (the
    # store's events name their incident themselves, so no member is lost to the cap).
    event_ids: list[int] = field(default_factory=list)
    kind_counts: Counter = field(default_factory=Counter)
    event_count: int = 0
    pfn: int | None = None
    phys_addr: int | None = None
    location: dict[str, Any] | None = None  # memory location (node/card/module/...), DIMM label
    cpu: int | None = None
    mpidr: int | None = None
    vm: dict[str, Any] | None = None  # {"name", "tgid", "vcpu", "how"}
    blast_radius: dict[str, Any] | None = None  # {"scope", "detail", ...}
    esr: int | None = None  # the first syndrome seen (SError/SEA)
    aet: str | None = None
    sections: list[str] = field(default_factory=list)  # CPER section types seen
    disagreements: list[str] = field(default_factory=list)
    closed: bool = False
    merged_into: int | None = None  # set when a later event showed it was part of another

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "key": self.key,
                "first_wall_ns": self.first_wall_ns, "last_wall_ns": self.last_wall_ns,
                "severity": self.severity, "containment": self.containment,
                "summary": self.summary, "event_ids": list(self.event_ids),
                "event_count": self.event_count, "event_kinds": dict(self.kind_counts),
                "pfn": self.pfn,
                "phys_addr": None if self.phys_addr is None else hex(self.phys_addr),
                "location": self.location, "cpu": self.cpu,
                "mpidr": None if self.mpidr is None else hex(self.mpidr), "vm": self.vm,
                "blast_radius": self.blast_radius,
                "esr": None if self.esr is None else hex(self.esr), "aet": self.aet,
                "sections": list(self.sections), "disagreements": list(self.disagreements),
                "closed": self.closed, "merged_into": self.merged_into}

    def add_member(self, event_id: int | None, kind: str) -> None:
        # (Correlator._add writes this out for its per-event path: change both)
        if event_id is not None and len(self.event_ids) < MAX_EVENT_IDS:
            self.event_ids.append(event_id)
        self.kind_counts[kind] += 1
        self.event_count += 1

    def absorb_members(self, other: "Incident") -> None:
        """Take a merged incident's members."""
        room = MAX_EVENT_IDS - len(self.event_ids)
        if room > 0:
            self.event_ids.extend(other.event_ids[:room])
        self.kind_counts.update(other.kind_counts)
        self.event_count += other.event_count
