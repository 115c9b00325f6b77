"""Kernel lockdown mode and what rasd can still use under it.

Secure Boot machines run with lockdown. ``integrity`` (Debian's default under
Secure Boot) closes debugfs, /dev/mem and module/ACPI-table tampering, but
kprobes, BPF kernel reads and tracefs still work. ``confidentiality`` also
refuses kprobes, BPF reads of kernel memory, perf and tracefs, so rasd is left
with BERT and the kernel's own printk lines in /dev/kmsg. The daemon reads the
mode once at start, says it plainly, and picks its sources from ``capabilities``.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

LOCKDOWN_PATH = Path("/sys/kernel/security/lockdown")

NONE, INTEGRITY, CONFIDENTIALITY, UNKNOWN = "none", "integrity", "confidentiality", "unknown"
_ORDER = {NONE: 0, INTEGRITY: 1, CONFIDENTIALITY: 2}


def read_mode(path: Path | str | None = None) -> str:
    """The active mode: the bracketed word of ``[none] integrity confidentiality``.

    "unknown" when the file is missing or unreadable: no lockdown LSM, or securityfs
    not mounted. rasd then behaves as under "none" and lets the first refusal
    (EPERM) tell the truth.
    """
    try:
        text = Path(LOCKDOWN_PATH if path is None else path).read_text()
    except OSError:
        return UNKNOWN
    return mode_from_text(text)


def mode_from_text(text: str) -> str:
    """The bracketed mode in a lockdown file's text (or a recorded copy of it)."""
    m = re.search(r"\[(\w+)\]", text)
    if m is None or m.group(1) not in _ORDER:
        return UNKNOWN
    return m.group(1)


@dataclass(frozen=True)
class Capabilities:
    mode: str
    kprobes: bool  # kprobes/kretprobes/fentry on kernel functions
    bpf_kernel_read: bool  # bpf_probe_read_kernel (GHES status blocks, regs, vcpu)
    tracefs: bool  # tracefs files, the rasd trace instance, tracepoint formats
    debugfs: bool  # only used for the kprobe blacklist; never required
    kmsg: bool  # /dev/kmsg printk scraping (always available to root)
    bert: bool  # /sys/firmware/acpi/tables/data/BERT
    assumed: bool  # mode unknown: the flags are a guess (as for "none")

    @property
    def degraded(self) -> bool:
        """True when only the last-resort sources (kmsg, BERT) remain."""
        return not (self.kprobes or self.tracefs)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def capabilities(mode: str) -> Capabilities:
    level = _ORDER.get(mode, 0)  # unknown → like none
    return Capabilities(
        mode=mode,
        kprobes=level < 2,
        bpf_kernel_read=level < 2,
        tracefs=level < 2,
        debugfs=level < 1,
        kmsg=True,
        bert=True,
        assumed=mode not in _ORDER,
    )


def summary(mode: str) -> str:
    """One line for the startup log, status and metrics labels."""
    caps = capabilities(mode)
    if caps.degraded:
        return (f"lockdown={mode}: kprobes, BPF kernel reads and tracefs are refused; "
                "delivering BERT and /dev/kmsg [Hardware Error]/Memory failure lines only")
    closed = "" if caps.debugfs else "; debugfs closed (kprobe blacklist treated as unknown)"
    guess = " (mode unknown, assuming none)" if caps.assumed else ""
    return f"lockdown={mode}{guess}: kprobes, BPF kernel reads and tracefs available{closed}"
