"""Optional actions on predictive failures: soft-offline a page, offline a CPU.

Off by default. "dry-run" logs and records what would be done; "on" does it,
within limits: at most ``max_pages_per_day`` pages, never more than
``max_cpu_share`` of the CPUs offline, never CPU 0 (the boot CPU is often not
hot-pluggable and holds things the kernel won't move).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..events import Incident

log = logging.getLogger("rasd.actions")
MODES = ("off", "dry-run", "on")
DAY_S = 86400


@dataclass
class ActionRecord:
    what: str  # "soft_offline_page" / "offline_cpu"
    target: str
    mode: str
    done: bool
    reason: str
    wall: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


class Actions:
    def __init__(self, page_mode: str = "off", cpu_mode: str = "off",
                 max_pages_per_day: int = 64, max_cpu_share: float = 0.125,
                 sysfs: str | Path = "/sys") -> None:
        if page_mode not in MODES or cpu_mode not in MODES:
            raise ValueError(f"action modes are {', '.join(MODES)}")
        self.page_mode, self.cpu_mode = page_mode, cpu_mode
        self.max_pages_per_day = max_pages_per_day
        self.max_cpu_share = max_cpu_share
        self.sysfs = Path(sysfs)
        self.page_times: deque[float] = deque()
        self.history: list[ActionRecord] = []

    def on_predictive(self, incident: Incident, event=None) -> ActionRecord | None:
        if incident.kind != "predictive_failure":
            return None
        if incident.pfn is not None and incident.phys_addr is not None:
            return self._record(self.soft_offline_page(incident.phys_addr))
        if incident.cpu is not None:
            return self._record(self.offline_cpu(incident.cpu))
        return None

    def _record(self, rec: ActionRecord | None) -> ActionRecord | None:
        if rec is not None:
            self.history.append(rec)
            log.warning("action %s %s (%s): %s", rec.what, rec.target, rec.mode,
                        "done" if rec.done else rec.reason)
        return rec

    # --- pages ---------------------------------------------------------------------------
    def soft_offline_page(self, phys_addr: int) -> ActionRecord | None:
        if self.page_mode == "off":
            return None
        target = f"{phys_addr:#x}"
        now = time.time()
        while self.page_times and now - self.page_times[0] > DAY_S:
            self.page_times.popleft()
        if len(self.page_times) >= self.max_pages_per_day:
            return ActionRecord("soft_offline_page", target, self.page_mode, False,
                                f"limit of {self.max_pages_per_day} pages a day reached")
        if self.page_mode == "dry-run":
            return ActionRecord("soft_offline_page", target, "dry-run", False, "dry run")
        path = self.sysfs / "devices/system/memory/soft_offline_page"
        try:
            path.write_text(target)  # the kernel migrates the content, then retires the page
        except OSError as exc:
            return ActionRecord("soft_offline_page", target, "on", False, f"{path}: {exc}")
        self.page_times.append(now)
        return ActionRecord("soft_offline_page", target, "on", True, "soft-offlined")

    # --- CPUs ----------------------------------------------------------------------------
    def offline_cpu(self, cpu: int) -> ActionRecord | None:
        if self.cpu_mode == "off":
            return None
        target = f"cpu{cpu}"
        refusal = self._cpu_refusal(cpu)
        if refusal:
            return ActionRecord("offline_cpu", target, self.cpu_mode, False, refusal)
        if self.cpu_mode == "dry-run":
            return ActionRecord("offline_cpu", target, "dry-run", False, "dry run")
        path = self.sysfs / f"devices/system/cpu/cpu{cpu}/online"
        try:
            path.write_text("0")
        except OSError as exc:
            return ActionRecord("offline_cpu", target, "on", False, f"{path}: {exc}")
        return ActionRecord("offline_cpu", target, "on", True, "offlined")

    def _cpu_refusal(self, cpu: int) -> str | None:
        if cpu == 0:
            return "never offline CPU 0"
        cpus = sorted(self.sysfs.glob("devices/system/cpu/cpu[0-9]*"))
        total = len(cpus)
        offline = sum(1 for c in cpus if (c / "online").exists() and
                      (c / "online").read_text().strip() == "0")
        if not (self.sysfs / f"devices/system/cpu/cpu{cpu}/online").exists():
            return f"cpu{cpu} cannot be offlined (no online control)"
        if total == 0 or (offline + 1) / total > self.max_cpu_share:
            return f"would put {offline + 1} of {total} CPUs offline, over the " \
                   f"{self.max_cpu_share:.0%} limit"
        return None
