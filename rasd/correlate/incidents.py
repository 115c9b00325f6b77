"""Correlation: the events of one real-world fault become one incident.

One SEA on a poisoned page produces several events, in this order on the kernels
read (reference §1, §5): ``apei_claim_sea`` (the faulting task) → the GHES record
(processed inside that call, in the faulting task's context) → ``memory_failure``
(the task's own task_work, or a kworker) → the tracepoint with the outcome →
SIGBUS; or, for a guest, KVM's stage-2 abort → the same chain on the vCPU thread
→ (unclaimed) a virtual SError into the guest. A host chain ends in SIGBUS
BUS_MCEERR_AR to the thread that touched the page (for a guest: to the VMM's vCPU
thread, which QEMU forwards into the guest). Events are joined when they share a
key — the page, the faulting thread, the CPU, the device — within a time window.

The correlator is a pipeline stage: it sets ``event.incident_id`` and keeps the
open incidents; ``expire()`` closes those whose window has passed. Listeners
(``on_change``) hear of every incident that opened or changed: the store and the
alerting sinks; ``on_count`` (the store) of the events that changed nothing but an
incident's counts and times (a storm's repeats).
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Iterator

from .. import events as ev
from ..decode.cper.sections.arm import ArmProcessorSection, read_type
from ..decode.cper.sections.memory import MemorySection
from ..decode.cper.sections.pcie import PcieSection
from ..events import MAX_EVENT_IDS, Event, Incident, worse

PAGE_SHIFT = (os.sysconf("SC_PAGE_SIZE") - 1).bit_length()
DEFAULT_WINDOW_NS = 10 * 10**9  # SEA -> memory_failure_event took ~20 ms in the lab; be generous

# Events that join an incident but never open one on their own.
FOLLOWERS = {ev.GHES_READ, ev.GHES_IRQ_WORK, ev.SEA_NOTIFY, ev.MEMORY_FAILURE_QUEUE}
# Events from a vCPU thread: attribute them to a VM.
KVM_KINDS = {ev.GUEST_SEA, ev.GUEST_SERROR, ev.VSERROR_INJECTED}
# Events that run in the faulting task's own context (see _in_faulting_task).
TASK_KINDS = {ev.SEA_CLAIM, ev.GUEST_SEA, ev.HOST_SEA, ev.VSERROR_INJECTED, ev.GUEST_SERROR,
              ev.SERROR_CHECK}
# A kernel thread's context says nothing about which task a fault hit.
KERNEL_COMMS = ("swapper", "kworker", "ksoftirqd", "migration", "irq/")

# How final a containment statement is: an incident keeps its most final one.
CONTAINMENT_ORDER = ("unknown", "none_needed", "pending", "corrected", "deferred", "delayed",
                     "page_soft_offline", "device_recovery", "page_isolated", "link_reset",
                     "vm_contained", "process_killed", "not_contained", "host_oops",
                     "not_containable", "host_panic")
CONTAINMENT_RANK = {name: i for i, name in enumerate(CONTAINMENT_ORDER)}
CPER_KINDS = {ev.GHES, ev.BERT, ev.KMSG}  # KMSG: the kernel's print of the same CPER
ESR_KINDS = {ev.GUEST_SEA, ev.GUEST_SERROR, ev.HOST_SERROR, ev.SERROR_CHECK, ev.HOST_SEA}
GHES = ev.GHES


class Correlator:
    def __init__(self, window_ns: int = DEFAULT_WINDOW_NS,
                 ids: Iterator[int] | None = None,
                 blast_radius: Callable[[int], Any] | None = None,
                 vm_of: Callable[[int, int, str, int | None], Any] | None = None,
                 on_change: Callable[[Incident], None] | None = None,
                 on_count: Callable[[Incident], None] | None = None,
                 netdevs_of: Callable[[str], list] | None = None,
                 dimm_of: Callable[[int], dict | None] | None = None) -> None:
        self.window_ns = window_ns
        self.ids = ids or itertools.count(1)
        self.blast_radius = blast_radius  # pfn -> dict (read /proc/kpageflags at once)
        self.vm_of = vm_of  # (tgid, tid, comm, cgroup id or None) -> dict or None
        self.netdevs_of = netdevs_of  # PCI "ssss:bb:dd.f" -> [NetdevInfo]: which NIC it is
        self.dimm_of = dimm_of  # SMBIOS type 17 handle -> {"label", "locator", ...}
        self.on_change = on_change
        # hears of events that changed nothing but counts and times (_repeat); without
        # it, on_change hears of those too
        self.on_count = on_count or on_change
        self.open: dict[int, Incident] = {}
        self.index: dict[str, int] = {}  # key -> open incident id
        self._state: dict[int, _Evidence] = {}
        self._keys: dict[int, list[str]] = {}  # incident id -> its keys in the index
        self._last_expire_ns = 0
        # Closing scans the open incidents: in a storm do it a few times per window,
        # not per event. An incident may then stay open up to window/8 longer.
        self._expire_every_ns = window_ns // 8
        # this instance's entry in Record.derived: (incident, _details()) of the last
        # event of that record here (see _repeat)
        self._memo = object()

    # --- the stage ------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if event.wall_ns - self._last_expire_ns > self._expire_every_ns:
            self.expire(event.wall_ns)
        if event.cper is not None and self._repeat(event):
            return
        keys = event_keys(event)
        if len(keys) == 1:  # the storm's case: one page key, at most one incident
            incident = self.open.get(self.index.get(keys[0]))  # type: ignore[arg-type]
        else:
            incident = self._find(keys)
        if incident is None:
            if _follows_only(event) or not keys:
                return
            incident = self._new(event)
        self._add(incident, event, keys)
        if event.cper is not None:
            event.cper.derived[self._memo] = (incident, _details(event))
        if event.kind in MEMORY_FAILURE_KINDS:
            self._forget_key(incident.id, _worker_key(event))
        if self.on_change is not None:
            self.on_change(incident)

    def _repeat(self, event: Event) -> bool:
        """A corrected-error storm is mostly one record again and again: the same decoded
        record (the decode stage shares one Record among byte-identical blocks), kind,
        classification, task and fields as the record's last event here. Such an event
        has that event's keys, so it joins the same incident while that is open (closed
        and merged ones are not), and it can change nothing there but counts and times:
        no keys, absorbing, locating or attributing."""
        seen = event.cper.derived.get(self._memo)
        if seen is None:
            return False
        incident, details = seen
        # (_details(event) written out: this runs per event)
        if incident.closed or details != (event.kind, event.severity, event.containment,
                                          event.reason, event.task, event.fields):
            return False
        self._count(incident, event)
        if self.on_count is not None:
            self.on_count(incident)
        return True

    def _forget_key(self, incident_id: int, key: str | None) -> None:
        """A single-use key: a kernel worker's next memory_failure is another fault."""
        if key is None or self.index.get(key) != incident_id:
            return
        del self.index[key]
        keys = self._keys.get(incident_id)
        if keys and key in keys:
            keys.remove(key)

    def expire(self, now_ns: int) -> list[Incident]:
        """Close incidents whose window passed with no new event."""
        self._last_expire_ns = now_ns
        done = [i for i in self.open.values() if now_ns - i.last_wall_ns > self.window_ns]
        for incident in done:
            incident.closed = True
            del self.open[incident.id]
            self._state.pop(incident.id, None)
            for key in self._keys.pop(incident.id, ()):
                if self.index.get(key) == incident.id:
                    del self.index[key]
            if self.on_change is not None:
                self.on_change(incident)
        return done

    # --- internals ------------------------------------------------------------------------
    def _find(self, keys: list[str]) -> Incident | None:
        """The open incident these keys point at; when they point at several, the event
        proved them one fault: the later ones merge into the earliest."""
        found = sorted({self.index[k] for k in keys if self.index.get(k) in self.open})
        if not found:
            return None
        survivor = self.open[found[0]]
        for iid in found[1:]:
            self._merge(survivor, self.open[iid])
        return survivor

    def _merge(self, survivor: Incident, other: Incident) -> None:
        del self.open[other.id]
        evidence = self._state.pop(other.id)
        for key in self._keys.pop(other.id, ()):
            self.index[key] = survivor.id
            self._keys.setdefault(survivor.id, []).append(key)
        survivor.absorb_members(other)
        survivor.first_wall_ns = min(survivor.first_wall_ns, other.first_wall_ns)
        survivor.last_wall_ns = max(survivor.last_wall_ns, other.last_wall_ns)
        for name in ("pfn", "phys_addr", "location", "cpu", "mpidr", "vm", "blast_radius", "esr",
                     "aet"):
            if getattr(survivor, name) is None:
                setattr(survivor, name, getattr(other, name))
        self._state[survivor.id].merge(evidence)
        other.closed, other.merged_into = True, survivor.id
        if self.on_change is not None:
            self.on_change(other)

    def _new(self, event: Event) -> Incident:
        incident = Incident(kind=event.kind, key="", first_wall_ns=event.wall_ns,
                            last_wall_ns=event.wall_ns, id=next(self.ids))
        self.open[incident.id] = incident
        self._state[incident.id] = _Evidence()
        return incident

    def _add(self, incident: Incident, event: Event, keys: list[str]) -> None:
        self._count(incident, event)
        index = self.index
        for key in keys:
            if key not in index:
                index[key] = incident.id
                self._keys.setdefault(incident.id, []).append(key)
        if not incident.key:
            incident.key = keys[0]
        evidence = self._state[incident.id]
        evidence.absorb(event)
        self._locate(incident, event)
        self._attribute(incident, event)
        evidence.settle(incident)

    @staticmethod
    def _count(incident: Incident, event: Event) -> None:
        """The event is the incident's: its id, kind and time (what every event adds)."""
        event.incident_id = incident.id
        # Incident.add_member(event.id, event.kind) written out: this runs per event
        if event.id is not None and len(incident.event_ids) < MAX_EVENT_IDS:
            incident.event_ids.append(event.id)
        incident.kind_counts[event.kind] += 1
        incident.event_count += 1
        wall = event.wall_ns
        if wall < incident.first_wall_ns:  # (no min()/max(): this runs per event)
            incident.first_wall_ns = wall
        if wall > incident.last_wall_ns:
            incident.last_wall_ns = wall

    def _locate(self, incident: Incident, event: Event) -> None:
        pa, location, mpidr = _where(event)
        if incident.phys_addr is None and pa is not None:
            incident.phys_addr = pa
        if incident.location is None and location:
            incident.location = location
            handle = location.get("dimm_handle")
            if handle is not None and self.dimm_of is not None:
                dimm = self.dimm_of(handle)
                if dimm and dimm.get("label"):
                    incident.location = {**incident.location, "dimm": dimm["label"]}
            if "pcie" in location and self.netdevs_of is not None:
                nics = self.netdevs_of(location["pcie"])
                if nics:
                    incident.location = {**location, "netdev": ",".join(
                        f"{n.name}({n.operstate or '?'})" for n in nics)}
        if incident.mpidr is None and mpidr is not None:
            incident.mpidr = mpidr
        pfn = event.fields.get("pfn")
        if pfn is None and pa is not None:
            pfn = pa >> PAGE_SHIFT
        if incident.pfn is None and pfn is not None:
            incident.pfn = pfn
            # the page's state changes once memory_failure ran: read it now
            if self.blast_radius is not None and event.severity != "corrected":
                radius = self.blast_radius(pfn)
                incident.blast_radius = radius.to_dict() if hasattr(radius, "to_dict") else radius
        if incident.esr is None and event.esr is not None:
            incident.esr = event.esr.value
            if event.esr.serror is not None and event.esr.serror.aet is not None:
                incident.aet = event.esr.serror.aet.name
        if event.cper is not None:
            for name in cper_where(event.cper)[4]:
                if name not in incident.sections:
                    incident.sections.append(name)
        if incident.cpu is None and event.cpu is not None and event.kind in (
                ev.HOST_SERROR, ev.SERROR_CHECK, ev.SERROR_PANIC, ev.HOST_SEA):
            incident.cpu = event.cpu

    def _attribute(self, incident: Incident, event: Event) -> None:
        if incident.vm is not None or event.task is None or self.vm_of is None:
            return
        if event.kind in KVM_KINDS or event.fields.get("origin") == "guest" or \
                _sigbus_to_own_vcpu(event):
            incident.vm = self.vm_of(event.task.tgid, event.task.tid, event.task.comm,
                                     event.fields.get("cgroup_id"))


def _details(event: Event) -> tuple:
    """What Correlator._repeat() compares besides the record. The task is compared as
    itself: the decode stage hands equal tasks out as one object, which == takes without
    calling Task's __eq__ (which compares the values, as it does for tasks from
    elsewhere). _repeat() builds the same tuple itself."""
    return (event.kind, event.severity, event.containment, event.reason, event.task,
            event.fields)


class _Evidence:
    """What an incident's events said, kept apart so CPER can overrule ESR/AET."""

    def __init__(self) -> None:
        self.cper: str | None = None
        self.esr: str | None = None
        self.other: str | None = None
        self.containment = "unknown"
        self.kinds: set[str] = set()
        self.unlocatable = False
        self.memory = False  # a CPER memory section (or a memory_failure) is among the events
        self.guest = False  # a guest took the fault
        self.vserror_after_ras = False
        self.reasons: list[str] = []
        self.sigbus: list[str] = []  # "SIGBUS to comm[tid] (code)", for the summary
        self.mceerr = False  # a SIGBUS BUS_MCEERR_* is among the events
        self.summary_inputs: tuple | None = None  # what the incident's summary was made from

    def merge(self, other: "_Evidence") -> None:
        for name in ("cper", "esr", "other"):
            setattr(self, name, worse(getattr(self, name), getattr(other, name)))
        if CONTAINMENT_RANK.get(other.containment, 0) > CONTAINMENT_RANK.get(self.containment, 0):
            self.containment = other.containment
        self.kinds |= other.kinds
        self.unlocatable |= other.unlocatable
        self.memory |= other.memory
        self.guest |= other.guest
        self.vserror_after_ras |= other.vserror_after_ras
        self.reasons.extend(other.reasons)
        self.sigbus.extend(s for s in other.sigbus if s not in self.sigbus)
        self.mceerr |= other.mceerr

    def absorb(self, event: Event) -> None:
        if event.kind == ev.VSERROR_INJECTED and self.kinds & (ESR_KINDS | {ev.SEA_CLAIM}):
            # injected because of a RAS event on this vCPU thread: the guest took the error
            event.severity, self.vserror_after_ras = "uncorrected", True
        self.kinds.add(event.kind)
        if event.fields.get("origin") == "guest" or event.kind in (ev.GUEST_SEA, ev.GUEST_SERROR):
            self.guest = True
        if event.cper is not None and cper_where(event.cper)[3]:
            self.memory = True
        if event.kind == ev.KMSG and any("memory" in str(s.get("section_type", ""))
                                         for s in event.fields.get("sections", ())):
            self.memory = True
        if event.kind in CPER_KINDS:
            self.cper = worse(self.cper, event.severity)
        elif event.kind in ESR_KINDS:
            self.esr = worse(self.esr, event.severity)
        else:
            self.other = worse(self.other, event.severity)
        if event.containment and CONTAINMENT_RANK.get(event.containment, 0) > \
                CONTAINMENT_RANK.get(self.containment, 0):
            self.containment = event.containment
        if event.containment == "not_containable":
            self.unlocatable = True
        if event.reason and event.reason not in self.reasons[-8:]:  # a storm repeats one
            self.reasons.append(event.reason)
        if event.kind == ev.SIGBUS:
            f = event.fields
            note = f"SIGBUS to {f.get('target_comm')}[{f.get('target_tid')}] " \
                   f"({f.get('code_name')})"
            if note not in self.sigbus:
                self.sigbus.append(note)
            self.mceerr |= bool(f.get("mceerr"))

    def settle(self, incident: Incident) -> None:
        # firmware-first: where CPER and the ESR both speak, CPER decides
        base = self.cper if self.cper is not None else self.esr
        incident.severity = worse(base, self.other) or "info"
        if self.cper and self.esr and self.cper != self.esr:
            note = f"ESR/AET says {self.esr}, CPER says {self.cper} (CPER taken)"
            if note not in incident.disagreements:
                incident.disagreements.append(note)
        incident.containment = self.containment
        incident.kind = self.alert_kind()
        # a storm adds thousands of events that change nothing the summary says
        inputs = _summary_inputs(incident, self)
        if inputs != self.summary_inputs:
            self.summary_inputs = inputs
            incident.summary = summarize(incident, self)

    def alert_kind(self) -> str:
        k = self.kinds
        if self.unlocatable:
            return "unlocatable_memory_corruption"
        if ev.BERT in k:
            return "boot_error_record"
        if self.guest or self.vserror_after_ras:
            return "guest_serror" if ev.GUEST_SERROR in k or ev.SERROR_CHECK in k else "guest_sea"
        if k & {ev.SERROR_PANIC, ev.HOST_SERROR, ev.SERROR_CHECK}:
            return "host_serror"
        if self.memory:
            return "corrected_memory" if self.cper == "corrected" else "uncorrected_memory"
        if ev.HOST_SEA in k or ev.SEA_CLAIM in k:
            return "host_sea"
        if ev.VSERROR_INJECTED in k:
            return "virtual_serror"
        if k & {ev.MEMORY_FAILURE, ev.MEMORY_FAILURE_EVENT}:
            return "hwpoison"
        if ev.AER in k:
            return "pcie_error"
        if ev.ARM_EVENT in k or ev.GHES in k:
            return "processor_error" if ev.ARM_EVENT in k else "hardware_error"
        if ev.NON_STANDARD in k:
            return "vendor_error"
        if ev.MC_EVENT in k:
            return "corrected_memory" if self.other == "corrected" else "uncorrected_memory"
        if ev.SIGBUS in k:
            return "memory_error_sigbus" if self.mceerr else "sigbus"
        return "hardware_error"


# --- keys and locations -----------------------------------------------------------------

def event_keys(event: Event) -> list[str]:
    """What can tie this event to others of the same fault, most specific first. (The
    list may be shared between events: never modify it.)"""
    record = event.cper
    if event.kind == GHES and record is not None and "pfn" not in event.fields:
        # a storm's every event: its record's keys, read here rather than in _ghes_keys
        found = record.derived.get("correlate_keys")
        if found is not None and not _in_faulting_task(event) and found[0]:
            return found[0]
        return _ghes_keys(event)
    keys: list[str] = []
    pa, location, mpidr = _where(event)
    pfn = event.fields.get("pfn")
    if pfn is None and pa is not None:
        pfn = pa >> PAGE_SHIFT
    if pfn is not None:
        keys.append(f"page:{pfn:#x}")
    if _in_faulting_task(event):
        keys.append(f"tid:{event.task.tid}")
    if event.kind == ev.SIGBUS and _sigbus_joins(event):
        # the target, not the sender: BUS_MCEERR_AO comes from memory_failure's thread
        keys.append(f"tid:{event.fields['target_tid']}")
    worker = _worker_key(event)
    if worker is not None:
        keys.append(worker)
    if event.kind in (ev.HOST_SERROR, ev.SERROR_CHECK, ev.SERROR_PANIC) and \
            event.fields.get("origin") != "guest" and event.cpu is not None:
        keys.append(f"cpu:{event.cpu}")
    if event.kind == ev.BERT:
        keys.append(f"bert:{event.fields.get('digest', event.id)}")
    if event.kind == ev.AER:
        keys.append(f"pcie:{event.fields.get('dev_name')}")
    if mpidr is not None and event.kind == ev.ARM_EVENT:
        keys.append(f"mpidr:{mpidr:#x}")
    if location and pfn is None:
        keys.append("loc:" + ",".join(f"{k}={v}" for k, v in location.items()))
    if not keys and event.kind not in FOLLOWERS:
        keys.append(f"event:{event.kind}:{event.wall_ns}")  # stands alone
    return keys


def _ghes_keys(event: Event) -> list[str]:
    """event_keys() of a GHES event with a CPER record (a storm's every event): its page
    or location key comes from the record alone, made once per record; only the
    faulting thread's key is the event's own."""
    found = event.cper.derived.get("correlate_keys")
    record_keys, page, location, cpu = found if found is not None else _record_keys(event.cper)
    if not _in_faulting_task(event):
        if record_keys:
            return record_keys  # shared by the record's events (see event_keys)
        return [f"event:{event.kind}:{event.wall_ns}"]  # stands alone
    keys = [page] if page is not None else []
    keys.append(f"tid:{event.task.tid}")
    keys += [k for k in (location, cpu) if k is not None]
    return keys


def _record_keys(record: Any) -> tuple[list[str], str | None, str | None, str | None]:
    """The page key (or, with no address, the location key) event_keys() gives an event
    whose place is its CPER record's, and the MPIDR key of an ARM processor section (the
    kernel emits ras:arm_event for that section, which has no other key in common with
    the record): as the list of an event not in the faulting task, and one by one. Kept
    in the record (_ghes_keys reads it there)."""
    pa, location, mpidr = cper_where(record)[:3]
    page = loc = cpu = None
    if pa is not None:
        page = f"page:{pa >> PAGE_SHIFT:#x}"
    elif location:
        loc = "loc:" + ",".join(f"{k}={v}" for k, v in location.items())
    if mpidr is not None:
        cpu = f"mpidr:{mpidr:#x}"
    found = record.derived["correlate_keys"] = (
        [k for k in (page, loc, cpu) if k is not None], page, loc, cpu)
    return found


MEMORY_FAILURE_KINDS = (ev.MEMORY_FAILURE, ev.MEMORY_FAILURE_EVENT)


def _worker_key(event: Event) -> str | None:
    """Action-optional memory_failure runs in a kernel worker (memory_failure_queue) and
    signals every process mapping the page from there: BUS_MCEERR_AO carries no address,
    only its sender. kill_procs() runs inside memory_failure(), so the SIGBUS records
    come first and the worker's memory_failure records (which have the page) close the
    link; the key is then forgotten, since that worker soon handles other work."""
    task = event.task
    if task is None or not task.tid or not task.comm.startswith(KERNEL_COMMS):
        return None
    if event.kind in MEMORY_FAILURE_KINDS or (
            event.kind == ev.SIGBUS and event.fields.get("mceerr")):
        return f"worker:{task.tid}"
    return None


def _sigbus_joins(event: Event) -> bool:
    """A SIGBUS that ends a fault chain: BUS_MCEERR_* (memory_failure, KVM hwpoison) or
    BUS_OBJERR (arm64: an SEA firmware did not claim). Others are not RAS."""
    f = event.fields
    return f.get("target_tid") is not None and (
        bool(f.get("mceerr")) or f.get("code_name") == "BUS_OBJERR")


def _follows_only(event: Event) -> bool:
    """Joins an open incident, never opens one: BUS_OBJERR also comes from drivers
    and is RAS only after an SEA on the same thread."""
    return event.kind in FOLLOWERS or (event.kind == ev.SIGBUS and
                                       event.fields.get("code_name") == "BUS_OBJERR")


def _sigbus_to_own_vcpu(event: Event) -> bool:
    """A SIGBUS a vCPU thread sent itself (KVM's hwpoison signal, kill_me_maybe): only
    then is the sender's tgid the VMM's, so the VM can be named."""
    f = event.fields
    return event.kind == ev.SIGBUS and f.get("target_vcpu") is not None and \
        event.task is not None and event.task.tid == f.get("target_tid")


def _in_faulting_task(event: Event) -> bool:
    """Whether the event ran in the context of the task that took the fault.

    Only then does its thread id link it to the SEA: a polled or IRQ-driven GHES
    record runs on whatever task the timer interrupted."""
    task = event.task
    if task is None or not task.tid or task.comm.startswith(KERNEL_COMMS):
        return False
    if event.kind in TASK_KINDS:
        return event.kind != ev.SERROR_CHECK or event.fields.get("origin") == "guest"
    if event.kind == ev.GHES:
        return event.fields.get("notify") == "sea"  # processed inside apei_claim_sea
    if event.kind == ev.MEMORY_FAILURE:
        # task_work on the faulting task; or MADV_HWPOISON, which poisons the caller's
        # own page in the caller's context: its re-touch then takes SIGBUS BUS_MCEERR_AR
        # from the fault path, which carries no page (seen in the arm64 lab)
        return bool(event.fields.get("action_required")) or \
            "MF_SW_SIMULATED" in event.fields.get("flag_names", ())
    return False


def _where(event: Event) -> tuple[int | None, dict | None, int | None]:
    """Physical address, memory location and MPIDR the event's CPER (or fields) give;
    several stages ask, so it is computed once and kept on the event."""
    if event.place is None:
        event.place = _read_where(event)
    return event.place


def _read_where(event: Event) -> tuple[int | None, dict | None, int | None]:
    pa = location = mpidr = None
    if event.cper is not None:
        pa, location, mpidr = cper_where(event.cper)[:3]
    if event.kind == ev.KMSG:
        for sec in event.fields.get("sections", ()):
            if pa is None and sec.get("physical_address") is not None:
                pa = sec["physical_address"]
            location = location or sec.get("location") or None
    if mpidr is None and event.kind == ev.ARM_EVENT and event.fields.get("mpidr"):
        mpidr = event.fields["mpidr"]
    return pa, location, mpidr


def cper_where(record: Any) -> tuple:
    """(physical address, memory location, MPIDR, has a memory section, section names) of
    a CPER record; computed once per record (a storm's identical records are one shared
    object, see CperCache). Shared: never modify the location dict."""
    where = record.derived.get("where")
    if where is None:
        where = record.derived["where"] = _read_cper_where(record)
    return where


def _read_cper_where(record: Any) -> tuple:
    pa = location = mpidr = None
    memory = False
    for sec in record.sections:
        body = sec.body
        if isinstance(body, MemorySection):
            memory = True
            if body.physical_addr_valid and pa is None:
                pa = body.physical_addr
            location = location or body.location() or None
            if body.is_valid("mem_dev_handle") and location is not None:
                location = {**location, "dimm_handle": body.mem_dev_handle}
        elif isinstance(body, ArmProcessorSection):
            if body.validation_bits & 1:
                mpidr = body.mpidr
            for info in body.error_info:
                if info.physical_fault_addr_valid and pa is None and \
                        "cache" in read_type(info.type, body.type_reading)[0]:
                    pa = info.physical_fault_addr
        elif isinstance(body, PcieSection) and body.validation_bits & 0x8:
            location = location or {"pcie": body.device_id()["bdf"]}
    return pa, location, mpidr, memory, tuple(dict.fromkeys(s.name for s in record.sections))


def summarize(incident: Incident, evidence: _Evidence) -> str:
    """One line a person can act on."""
    parts = [ALERT_TITLES.get(incident.kind, incident.kind)]
    if incident.phys_addr is not None:
        parts.append(f"at PA {incident.phys_addr:#x}")
    elif incident.pfn is not None:
        parts.append(f"at PFN {incident.pfn:#x}")
    if incident.location:
        parts.append("(" + " ".join(f"{k} {v}" for k, v in incident.location.items()) + ")")
    if incident.cpu is not None:
        parts.append(f"on CPU {incident.cpu}")
    if incident.vm and incident.vm.get("name"):
        vcpu = incident.vm.get("vcpu")
        parts.append(f"in VM {incident.vm['name']}" + (f" vCPU {vcpu}" if vcpu is not None else ""))
    line = " ".join(parts)
    line += f": {incident.severity}, {incident.containment.replace('_', ' ')}"
    if evidence.sigbus:
        line += "; " + ", ".join(evidence.sigbus[:3])
    radius = incident.blast_radius or {}
    if radius.get("detail") or radius.get("summary"):
        line += f"; touches {radius.get('detail') or radius.get('summary')}"
    if incident.disagreements:
        line += f"; {incident.disagreements[0]}"
    return line


def _summary_inputs(incident: Incident, evidence: _Evidence) -> tuple:
    """What summarize() reads, cheaply: lists by length (they are only appended to);
    dicts as they are (they are replaced, never modified in place)."""
    return (incident.kind, incident.severity, incident.containment, incident.phys_addr,
            incident.pfn, incident.location, incident.cpu, incident.vm, incident.blast_radius,
            len(incident.disagreements), len(evidence.sigbus))


ALERT_TITLES = {
    "unlocatable_memory_corruption": "Unlocatable memory corruption (uncorrected, no valid "
                                     "physical address)",
    "boot_error_record": "Hardware error recorded in the previous boot (BERT)",
    "guest_sea": "Guest synchronous external abort",
    "guest_serror": "Guest SError",
    "host_serror": "Host SError",
    "host_sea": "Synchronous external abort",
    "virtual_serror": "Virtual SError injected into a guest (not RAS-driven: emulation or "
                      "user space)",
    "hwpoison": "Page poisoned (memory_failure)",
    "pcie_error": "PCIe error",
    "processor_error": "ARM processor error",
    "vendor_error": "Vendor-specific hardware error",
    "corrected_memory": "Corrected memory error",
    "uncorrected_memory": "Uncorrected memory error",
    "hardware_error": "Hardware error",
    "memory_error_sigbus": "Memory error signalled to a task (SIGBUS BUS_MCEERR)",
    "sigbus": "SIGBUS (not a hardware error)",
}
