"""journald alerts: one per incident, rate-limited per key, with structured fields and
a MESSAGE_ID per alert kind (etc/catalog/rasd.catalog explains each for `journalctl -x`).

An incident is alerted when it closes (its story complete), except critical and fatal
ones, which are alerted the moment they are seen: the host may not live to close them.
Without journald (a plain foreground run) the same alerts go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import defaultdict, deque
from typing import Callable

from ..events import SEVERITY_RANK, Incident

log = logging.getLogger("rasd.journal")
JOURNAL_SOCKET = "/run/systemd/journal/socket"

# syslog priorities: what the severity asks of an operator
PRIORITY = {"fatal": 1, "critical": 2, "uncorrected": 3, "recoverable": 4, "corrected": 5,
            "info": 6}
# One MESSAGE_ID per alert kind; the catalog (etc/catalog/rasd.catalog) is keyed by them.
MESSAGE_IDS = {
    "unlocatable_memory_corruption": "5b1d0f5e8c7f4f0c9a3e6d2b7c4a1e90",
    "uncorrected_memory": "7d3c2a1b9e8f4d6c8b5a4e3f2d1c0b91",
    "corrected_memory": "2c4e6a8b0d1f4e3c9a7b5d3f1e2c4a92",
    "predictive_failure": "9e8d7c6b5a4f4e3d8c2b1a0f9e8d7c93",
    "guest_sea": "4a5b6c7d8e9f40a1b2c3d4e5f6a7b894",
    "guest_serror": "6f5e4d3c2b1a40f9e8d7c6b5a4f3e295",
    "host_serror": "8a9b0c1d2e3f4a5b9c6d7e8f0a1b2c96",
    "host_sea": "1f2e3d4c5b6a47988a9b0c1d2e3f4a97",
    "virtual_serror": "3b4c5d6e7f8049a1b2c3d4e5f6a7b898",
    "boot_error_record": "0e1d2c3b4a5f46e7d8c9b0a1f2e3d499",
    "hwpoison": "5c6d7e8f9a0b41c2d3e4f5a6b7c8d9a0",
    "pcie_error": "7e8f9a0b1c2d43e4f5a6b7c8d9e0f1a1",
    "processor_error": "9a0b1c2d3e4f45a6b7c8d9e0f1a2b3a2",
    "vendor_error": "b1c2d3e4f5a647b8c9d0e1f2a3b4c5a3",
    "hardware_error": "d3e4f5a6b7c849d0e1f2a3b4c5d6e7a4",
}
IMMEDIATE = SEVERITY_RANK["critical"]


class JournalAlerts:
    """Incident listener: turns incidents into alerts (journald or stderr)."""

    def __init__(self, rate_limit: int = 5, interval_s: float = 600, enabled: bool = True,
                 send: Callable[..., None] | None = None,
                 on_outcome: Callable[[str, str], None] | None = None) -> None:
        self.rate_limit = rate_limit
        self.interval_s = interval_s
        self.enabled = enabled
        self.send = send or _sender()
        self.on_outcome = on_outcome or (lambda kind, outcome: None)
        self.recent: dict[str, deque[float]] = defaultdict(deque)
        self.suppressed: dict[str, int] = defaultdict(int)
        self.alerted: set[int] = set()
        self.sent = 0
        self.send_failures = 0

    def incident(self, incident: Incident) -> None:
        # Asked on every change of every incident (in a storm, per event): the commonest
        # answer, an open incident below critical, is checked first.
        if not (incident.closed or SEVERITY_RANK.get(incident.severity, 0) >= IMMEDIATE):
            return
        if not self.enabled or incident.merged_into is not None or incident.id in self.alerted:
            return
        self.alerted.add(incident.id)
        if len(self.alerted) > 100_000:
            self.alerted.clear()  # ids only grow; a stale set costs memory, not correctness
        key = alert_key(incident)
        if not self._allow(key):
            self.suppressed[key] += 1
            self.on_outcome(incident.kind, "suppressed")
            return
        fields = self.fields(incident, self.suppressed.pop(key, 0))
        try:
            self.send(**fields)
        except OSError as exc:
            # journald restarting or gone (ECONNREFUSED, EAGAIN when its queue is full): the
            # alert still reaches the daemon's stderr, which the unit hands to journald later.
            self.send_failures += 1
            if self.send_failures == 1 or self.send_failures % 1000 == 0:
                log.warning("journald refused an alert (%s); %d alert(s) went to stderr",
                            exc, self.send_failures)
            _to_stderr(**fields)
            self.on_outcome(incident.kind, "stderr")
            return
        self.sent += 1
        self.on_outcome(incident.kind, "sent")

    def _allow(self, key: str) -> bool:
        now = time.monotonic()
        times = self.recent[key]
        while times and now - times[0] > self.interval_s:
            times.popleft()
        if len(times) >= self.rate_limit:
            return False
        times.append(now)
        return True

    def fields(self, incident: Incident, suppressed: int = 0) -> dict[str, str]:
        message = f"[{incident.severity}] {incident.summary}"
        if suppressed:
            message += f" ({suppressed} similar alert(s) suppressed by the rate limit)"
        f = {"MESSAGE": message,
             "PRIORITY": str(PRIORITY.get(incident.severity, 6)),
             "MESSAGE_ID": MESSAGE_IDS.get(incident.kind, MESSAGE_IDS["hardware_error"]),
             "SYSLOG_IDENTIFIER": "rasd",
             "RASD_INCIDENT_ID": str(incident.id), "RASD_ALERT_KIND": incident.kind,
             "RASD_SEVERITY": incident.severity, "RASD_CONTAINMENT": incident.containment,
             "RASD_EVENT_COUNT": str(incident.event_count),
             "RASD_EVENT_KINDS": ",".join(sorted(incident.kind_counts)),
             "RASD_SUPPRESSED": str(suppressed)}
        optional = {
            "RASD_BLAST_RADIUS": (incident.blast_radius or {}).get("scope"),
            "RASD_BLAST_DETAIL": (incident.blast_radius or {}).get("summary"),
            "RASD_PFN": None if incident.pfn is None else hex(incident.pfn),
            "RASD_PHYS_ADDR": None if incident.phys_addr is None else hex(incident.phys_addr),
            "RASD_LOCATION": " ".join(f"{k}={v}" for k, v in (incident.location or {}).items())
                             or None,
            "RASD_CPU": incident.cpu, "RASD_MPIDR": None if incident.mpidr is None
            else hex(incident.mpidr),
            "RASD_VM": (incident.vm or {}).get("name"),
            "RASD_VM_PID": (incident.vm or {}).get("tgid"),
            "RASD_VCPU": (incident.vm or {}).get("vcpu"),
            "RASD_ESR": None if incident.esr is None else hex(incident.esr),
            "RASD_AET": incident.aet,
            "RASD_CPER_SECTIONS": ",".join(incident.sections) or None,
            "RASD_DISAGREEMENT": "; ".join(incident.disagreements) or None,
        }
        f.update({k: str(v) for k, v in optional.items() if v is not None})
        return f


def alert_key(incident: Incident) -> str:
    """Alerts of one kind about one place share a rate limit: a storm on one DIMM stays
    readable, a second DIMM still gets its own alert."""
    where = incident.location or incident.pfn or incident.cpu or (incident.vm or {}).get("name")
    return f"{incident.kind}:{where}"


def _sender() -> Callable[..., None]:
    if os.path.exists(JOURNAL_SOCKET):
        try:
            from systemd import journal  # python3-systemd

            def send(**fields: str) -> None:
                message = fields.pop("MESSAGE")
                journal.send(message, **fields)
            return send
        except ImportError:
            log.warning("python3-systemd missing: alerts go to stderr")
    return _to_stderr


def _to_stderr(**fields: str) -> None:
    extra = " ".join(f"{k}={v}" for k, v in fields.items()
                     if k.startswith("RASD_") and k != "RASD_SUPPRESSED")
    print(f"rasd alert <{fields['PRIORITY']}> {fields['MESSAGE']} [{extra}]", file=sys.stderr,
          flush=True)
