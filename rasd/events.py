"""The event model every pipeline stage passes along.

A source turns what the kernel handed over into a source record; the decode stage
turns that into an ``Event``; classification and correlation add to it (severity,
containment, incident) and never drop what came before: the raw bytes stay.
"""

from __future__ import annotations

import base64
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
    # filled by classification and correlation (issue 4)
    severity: str | None = None
    containment: str | None = None
    reason: str | None = None
    incident_id: int | None = None

    def to_dict(self) -> dict:
        d: dict = {"kind": self.kind, "source": self.source, "wall_ns": self.wall_ns,
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
