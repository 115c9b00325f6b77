"""The decode stage: a source record (what a BPF program or tracepoint emitted) -> Event.

One small handler per probe, the way rasdaemon keeps one handler per event: each
names the event kind and turns raw fields into meaningful ones (ESR decoded, MF_*
flags named, CPER bytes decoded, tracepoint fields decoded with the kernel's own
format file). Decoding never raises: a failure is kept in ``event.decode_error``
next to the raw bytes.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from .. import events as ev
from ..events import Event, Task
from ..sources.probes import BY_NAME
from . import cper, esr
from .common import guid_str
from .cper.model import GHES_SEVERITIES
from .cper.sections.arm import ERR_INFO, ArmErrorInfo

# enum mf_flags (include/linux/mm.h)
MF_FLAGS = {1 << 0: "MF_COUNT_INCREASED", 1 << 1: "MF_ACTION_REQUIRED", 1 << 2: "MF_MUST_KILL",
            1 << 3: "MF_SOFT_OFFLINE", 1 << 4: "MF_UNPOISON", 1 << 5: "MF_SW_SIMULATED",
            1 << 6: "MF_NO_RETRY", 1 << 7: "MF_MEM_PRE_REMOVE"}
MF_ACTION_REQUIRED = 1 << 1
# enum mf_result, stable across versions
MF_RESULTS = {0: "ignored", 1: "failed", 2: "delayed", 3: "recovered"}
# memory_failure() return values (errno, negated) that mean something specific
MF_RETURNS = {0: "handled", -6: "outside_kernel_control", -95: "filtered",
              -133: "already_poisoned"}  # ENXIO, EOPNOTSUPP, EHWPOISON
APEI_CLAIM_RETURNS = {0: "claimed", -2: "not_claimed", -115: "queued_not_completed"}
# ACPI HEST notification types (enum acpi_hest_notify_types)
NOTIFY_TYPES = {0: "polled", 1: "external", 2: "local", 3: "sci", 4: "nmi", 5: "cmci",
                6: "mce", 7: "gpio", 8: "sea", 9: "sei", 10: "gsiv", 11: "sdei"}
ARM_EXIT_SERROR_BIT = 1 << 31  # ARM_EXIT_WITH_SERROR_BIT in kvm_asm.h
ARM_EXCEPTION_EL1_SERROR = 1
# si_code of SIGBUS (include/uapi/asm-generic/siginfo.h), then the sender-kind codes a
# SIGBUS from kill()/tgkill()/sigqueue() carries (never a hardware error)
BUS_CODES = {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR", 4: "BUS_MCEERR_AR",
             5: "BUS_MCEERR_AO"}
SI_CODES = {0: "SI_USER", 0x80: "SI_KERNEL", -1: "SI_QUEUE", -2: "SI_TIMER", -3: "SI_MESGQ",
            -4: "SI_ASYNCIO", -6: "SI_TKILL"}
BUS_MCEERR = (4, 5)
# enum trace_signal_result (include/trace/events/signal.h)
SIGNAL_RESULTS = {0: "delivered", 1: "ignored", 2: "already_pending", 3: "overflow_fail",
                  4: "lose_info"}
# QEMU names its vCPU threads "CPU <n>/KVM" (debug-threads=on, which libvirt sets); it is
# the VMM known to catch SIGBUS BUS_MCEERR_* and forward the error into the guest
QEMU_VCPU_COMM = re.compile(r"CPU (\d+)/KVM\Z")


def flag_list(value: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in names.items() if value & bit]


class CperCache:
    """Decoded CPER records by their exact bytes, most recent ``size`` kept.

    A corrected-error storm repeats the same status block for the same page over and
    over; decoding it once and handing the same ``Record`` to every event with those
    bytes saves the decode and lets later stages keep what they derive from it in
    ``Record.derived``. Only byte-identical input hits: a block that differs anywhere
    (a timestamp, a count) is decoded on its own. Records handed out are shared, so
    nothing downstream may modify one.
    """

    def __init__(self, size: int = 2048) -> None:
        self.size = size  # ~1 kB a record: a couple of MB at most
        self._records: dict[bytes, Any] = {}
        # the record already decoded from these bytes, or None: a C-level dict lookup,
        # asked per event before calling decode()
        self.lookup: Callable[[bytes], Any] = self._records.get
        self.hits = self.misses = 0  # decode()'s answers (lookup() keeps no count)

    def decode(self, raw: bytes) -> Any:
        rec = self._records.get(raw)
        if rec is not None:
            self.hits += 1
            return rec
        self.misses += 1
        rec = cper.try_decode(raw)
        if len(self._records) >= self.size:
            del self._records[next(iter(self._records))]  # the oldest insertion
        self._records[raw] = rec
        return rec


TASK_MEMO_MAX = 4096
GHES = ev.GHES


class EventDecoder:
    """Turns source records into Events.

    ``formats``: tracefs event formats by "system:event" (field layouts and the
    symbolic tables of their print fmt); ``wall_offset_ns``: CLOCK_REALTIME minus
    CLOCK_MONOTONIC, to give kernel ktime stamps a wall time.
    """

    def __init__(self, formats: dict[str, Any] | None = None, wall_offset_ns: int = 0) -> None:
        self.formats = formats or {}
        self.wall_offset_ns = wall_offset_ns
        self._symbols: dict[str, dict[str, dict[int, str]]] = {}
        self.errors = 0
        self.cper_cache = CperCache()
        self.handlers = {**HANDLERS, "ghes_do_proc": ghes_handler(self.cper_cache.decode,
                                                                  self.cper_cache.lookup)}
        self._tasks: dict[tuple[int, int, str], Task] = {}

    def decode(self, rec: Any) -> Event:
        # Event's fields by position: binding its keywords was a fifth of a storm event's
        # decode. The order is Event's own: kind, source, wall_ns, mono_ns, cpu, task,
        # fields, raw, cper, esr, decode_error, truncated.
        event = Event(rec.probe, rec.probe, rec.ktime_ns + self.wall_offset_ns, rec.ktime_ns,
                      rec.cpu, self._tasks.get((rec.tgid, rec.tid, rec.comm)) or self._task(rec),
                      dict(rec.fields), bytes(rec.blob), None, None, None,
                      "truncated" in rec.flags)
        handler = self.handlers.get(rec.probe)
        try:
            if rec.kind == "tp":
                self._decode_tracepoint(rec, event)
            if handler is not None:
                handler(event, rec.flags)
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not lose the event
            event.decode_error = f"{type(exc).__name__}: {exc}"
        if event.decode_error:
            self.errors += 1
        return event

    def _task(self, rec: Any) -> Task:
        """The record's task, one shared Task per (tgid, tid, comm): a storm comes from a few
        threads, and later stages compare tasks by value (equal ones are then the same
        object). The memo is dropped when it grows past TASK_MEMO_MAX: threads come and go."""
        if len(self._tasks) >= TASK_MEMO_MAX:
            self._tasks.clear()
        task = self._tasks[rec.tgid, rec.tid, rec.comm] = Task(rec.tgid, rec.tid, rec.comm)
        return task

    def _decode_tracepoint(self, rec: Any, event: Event) -> None:
        fmt = self.format_for(rec.probe)
        if fmt is None:
            event.decode_error = f"no tracefs format known for {rec.probe}"
            return
        event.source = f"tracefs:{fmt.system}:{fmt.name}"
        fields = {k: v for k, v in fmt.decode(rec.blob).items() if not k.startswith("common_")}
        event.fields.update(fields)
        event.fields["_symbols"] = self._symbol_tables(fmt)

    def format_for(self, probe: str) -> Any:
        """The tracefs format a probe's tracepoint records are laid out by (None: unknown)."""
        # the probe table says which event a probe reads (sigbus <- signal:signal_generate)
        spec = BY_NAME.get(probe)
        for key in spec.events if spec else ():
            if key in self.formats:
                return self.formats[key]
        for key, fmt in self.formats.items():
            if key.split(":")[-1] == probe:
                return fmt
        return None

    def _symbol_tables(self, fmt: Any) -> dict[str, dict[int, str]]:
        key = f"{fmt.system}:{fmt.name}"
        if key not in self._symbols:
            self._symbols[key] = print_symbolic_tables(fmt.print_fmt)
        return self._symbols[key]


_SYMBOLIC = re.compile(r"__print_symbolic\(REC->(\w+),(.*?)\)\s*(?:,|$)", re.S)
_PAIR = re.compile(r"\{\s*(-?(?:0x)?[0-9a-fA-F]+)\s*,\s*\"([^\"]*)\"\s*\}")


def print_symbolic_tables(print_fmt: str) -> dict[str, dict[int, str]]:
    """Number -> name tables from a tracefs print fmt's __print_symbolic() calls.

    The kernel resolves TRACE_DEFINE_ENUM values to numbers in the format file, so
    these are the running kernel's own numbering (memory_failure_event's page types
    change between versions: never hard-code them)."""
    tables: dict[str, dict[int, str]] = {}
    for m in _SYMBOLIC.finditer(print_fmt):
        tables[m.group(1)] = {int(v, 0): name for v, name in _PAIR.findall(m.group(2))}
    return tables


# --- one handler per probe -------------------------------------------------------------

def _nothing_known(raw: bytes) -> None:
    return None


def ghes_handler(decode_cper: Callable[[bytes], Any],
                 known: Callable[[bytes], Any] = _nothing_known
                 ) -> Callable[[Event, frozenset], None]:
    """The ghes_do_proc handler, decoding the status block with ``decode_cper``
    (``cper.try_decode``, or an EventDecoder's CperCache) unless ``known`` has its
    record (CperCache.lookup)."""
    def handler(event: Event, flags: frozenset) -> None:
        event.kind = GHES
        f = event.fields
        f["notify"] = NOTIFY_TYPES.get(f.get("notify_type"), "unknown")
        # kernel pointers: no use downstream, don't leak them
        f.pop("ghes", None)
        f.pop("estatus", None)
        raw = event.raw
        rec = (known(raw) or decode_cper(raw)) if raw else None
        event.cper = rec
        if rec is None:
            event.decode_error = "no status block bytes captured"
        elif rec.error is not None and not (event.truncated
                                            and rec.error.offset >= len(event.raw)):
            event.decode_error = str(rec.error)
    return handler


def _ghes_read(event: Event, flags: frozenset) -> None:
    event.kind = ev.GHES_READ
    event.fields["notify"] = NOTIFY_TYPES.get(event.fields.get("notify_type"), "unknown")
    event.fields.pop("ghes", None)


def _ghes_irq_work(event: Event, flags: frozenset) -> None:
    event.kind = ev.GHES_IRQ_WORK


def _apei_claim_sea(event: Event, flags: frozenset) -> None:
    event.kind = ev.SEA_CLAIM
    f = event.fields
    ret = f.get("ret")
    f["claimed"] = ret == 0
    f["result"] = APEI_CLAIM_RETURNS.get(ret, "error")
    f["origin"] = "guest" if "no_regs" in flags or not f.get("regs") else (
        "host_user" if "user" in flags else "host_kernel")
    f.pop("regs", None)


def _sea_notify(event: Event, flags: frozenset) -> None:
    event.kind = ev.SEA_NOTIFY
    event.fields["had_record"] = event.fields.get("ret") == 0


def _memory_failure(event: Event, flags: frozenset) -> None:
    event.kind = ev.MEMORY_FAILURE
    f = event.fields
    if "no_entry" in flags:
        # only the return was seen: pfn and flags are unknown, not 0 (page 0 is a real page)
        f.pop("pfn", None)
        f.pop("flags", None)
        f["entry_missed"] = True
    f["flag_names"] = flag_list(f.get("flags", 0), MF_FLAGS)
    f["action_required"] = bool(f.get("flags", 0) & MF_ACTION_REQUIRED)
    if "ret" in f:
        f["result"] = MF_RETURNS.get(f["ret"], "failed")


def _memory_failure_queue(event: Event, flags: frozenset) -> None:
    event.kind = ev.MEMORY_FAILURE_QUEUE
    event.fields["flag_names"] = flag_list(event.fields.get("flags", 0), MF_FLAGS)


def _esr64(value: int) -> Any:
    """Decode a register value as ESR_ELx (BPF ships it as a u64; a signed read wraps)."""
    return esr.decode_esr(value & (1 << 64) - 1)


def _serror_syndrome(iss: int) -> Any:
    """The EC 0x2F (SError) syndrome with this ISS, as disr_to_esr() and the vSError
    injection build it: IL set, ISS[24:0]."""
    return esr.decode_esr(0x2F << 26 | 1 << 25 | iss & 0x1FFFFFF)


def _vcpu_esr(event: Event, flags: frozenset, esr_value: int | None) -> None:
    if esr_value is not None and "vcpu_fault" in flags:
        event.esr = _esr64(esr_value)
    event.fields.pop("vcpu", None)


def _handle_exit_early(event: Event, flags: frozenset) -> None:
    event.kind = ev.GUEST_SERROR
    f = event.fields
    index = f.get("exception_index", 0)
    f["serror_pending"] = bool(index & ARM_EXIT_SERROR_BIT)
    # A pending SError is described by DISR_EL1 (deferred, via ESB), an SError exit
    # by ESR_EL2; disr_to_esr() builds an EC 0x2F syndrome from DISR's low bits.
    if f["serror_pending"] and "disr_el1" in f and "vcpu_fault" in flags:
        disr = f["disr_el1"]
        iss = disr & 0x1FFFFFF if disr >> 24 & 1 else disr & 0x1FFF
        event.esr = _serror_syndrome(iss)
    else:
        _vcpu_esr(event, flags, f.get("esr_el2"))
    f.pop("vcpu", None)


def _guest_sea(event: Event, flags: frozenset) -> None:
    event.kind = ev.GUEST_SEA
    _vcpu_esr(event, flags, event.fields.get("esr_el2"))


def _vserror(event: Event, flags: frozenset) -> None:
    event.kind = ev.VSERROR_INJECTED
    f = event.fields
    f["via"] = event.source
    if "esr" in f:  # kvm_inject_serror_esr / kvm_set_sei_esr: the syndrome the guest sees
        event.esr = _serror_syndrome(f["esr"])
    f.pop("vcpu", None)


def _host_serror(event: Event, flags: frozenset) -> None:
    event.kind = {"do_serror": ev.HOST_SERROR, "arm64_serror_panic": ev.SERROR_PANIC}.get(
        event.source, ev.SERROR_CHECK)
    f = event.fields
    f["origin"] = "guest" if not f.get("regs") else ("host_user" if "user" in flags
                                                     else "host_kernel")
    f.pop("regs", None)
    if "fatal" in f:
        f["fatal"] = bool(f["fatal"])
    if "esr" in f:
        event.esr = _esr64(f["esr"])


def _do_sea(event: Event, flags: frozenset) -> None:
    event.kind = ev.HOST_SEA
    f = event.fields
    f["origin"] = "host_user" if "user" in flags else "host_kernel"
    f.pop("regs", None)
    if "esr" in f:
        event.esr = _esr64(f["esr"])


def _tp_arm_event(event: Event, flags: frozenset) -> None:
    event.kind = ev.ARM_EVENT
    f = event.fields
    if "sev" in f:  # the GHES scale, not CPER (reference §2)
        f["severity"] = GHES_SEVERITIES.get(f["sev"], "unknown")
    pei = f.pop("pei_buf", None)
    if isinstance(pei, (bytes, bytearray)):
        f["error_info"] = [ArmErrorInfo(*ERR_INFO.unpack_from(pei, off)).to_dict()
                           for off in range(0, len(pei) - ERR_INFO.size + 1, ERR_INFO.size)]
    for name in ("ctx_buf", "oem_buf"):
        if isinstance(f.get(name), (bytes, bytearray)):
            f[name] = f[name].hex()
    f.pop("_symbols", None)


def _tp_non_standard(event: Event, flags: frozenset) -> None:
    event.kind = ev.NON_STANDARD
    f = event.fields
    for name in ("sec_type", "fru_id"):
        if isinstance(f.get(name), (bytes, bytearray)) and len(f[name]) == 16:
            f[name] = guid_str(bytes(f[name]))
    if "sev" in f:
        f["severity"] = GHES_SEVERITIES.get(f["sev"], "unknown")
    if isinstance(f.get("buf"), (bytes, bytearray)):
        f["buf"] = bytes(f["buf"]).hex()
    f.pop("_symbols", None)


def _tp_memory_failure_event(event: Event, flags: frozenset) -> None:
    event.kind = ev.MEMORY_FAILURE_EVENT
    f = event.fields
    tables = f.pop("_symbols", {})
    if "type" in f:
        f["page_type"] = tables.get("type", {}).get(f["type"], "unknown")
    if "result" in f:
        f["result_name"] = tables.get("result", MF_RESULTS).get(f["result"],
                                                                MF_RESULTS.get(f["result"], "unknown"))


def _sigbus(event: Event, flags: frozenset) -> None:
    """signal_generate runs in the sender's context: event.task is the sender (the
    victim itself for BUS_MCEERR_AR and KVM's hwpoison signal, memory_failure's
    thread for BUS_MCEERR_AO); the fields name the target thread."""
    event.kind = ev.SIGBUS
    f = event.fields
    f.pop("_symbols", None)  # signal_generate's print fmt has no tables
    code = f.get("code")
    comm = f.get("comm", b"")
    if isinstance(comm, (bytes, bytearray)):  # char comm[16] decodes as raw bytes
        comm = bytes(comm).split(b"\0", 1)[0].decode("utf-8", "replace")
    f["comm"] = comm
    f["target_tid"] = f.get("pid")  # task->pid: a thread id, not the process id
    f["target_comm"] = comm
    f["code_name"] = BUS_CODES.get(code) or SI_CODES.get(code, "unknown")
    f["mceerr"] = code in BUS_MCEERR
    f["result_name"] = SIGNAL_RESULTS.get(f.get("result"), "unknown")
    m = QEMU_VCPU_COMM.match(f["target_comm"])
    if m:
        f["target_vcpu"] = int(m.group(1))


def _tp_plain(kind: str) -> Callable[[Event, frozenset], None]:
    def handler(event: Event, flags: frozenset) -> None:
        event.kind = kind
        f = event.fields
        tables = f.pop("_symbols", {})
        for name, table in tables.items():
            if isinstance(f.get(name), int):
                f[f"{name}_name"] = table.get(f[name], "unknown")
        for name, value in list(f.items()):
            if isinstance(value, (bytes, bytearray)):
                f[name] = bytes(value).hex()
    return handler


HANDLERS: dict[str, Callable[[Event, frozenset], None]] = {
    "ghes_do_proc": ghes_handler(cper.try_decode),
    "ghes_proc": _ghes_read,
    "ghes_proc_in_irq": _ghes_irq_work,
    "apei_claim_sea": _apei_claim_sea,
    "ghes_notify_sea": _sea_notify,
    "memory_failure": _memory_failure,
    "memory_failure_queue": _memory_failure_queue,
    "handle_exit_early": _handle_exit_early,
    "kvm_handle_guest_abort": _guest_sea,
    "kvm_handle_guest_sea": _guest_sea,
    "kvm_inject_vabt": _vserror,
    "kvm_inject_serror_esr": _vserror,
    "kvm_set_sei_esr": _vserror,
    "do_serror": _host_serror,
    "arm64_is_fatal_ras_serror": _host_serror,
    "arm64_serror_panic": _host_serror,
    "do_sea": _do_sea,
    "arm_event": _tp_arm_event,
    "non_standard_event": _tp_non_standard,
    "memory_failure_event": _tp_memory_failure_event,
    "mc_event": _tp_plain(ev.MC_EVENT),
    "aer_event": _tp_plain(ev.AER),
    "sigbus": _sigbus,
}
