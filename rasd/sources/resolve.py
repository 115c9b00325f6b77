"""Resolve the probe table against one kernel.

A ``KernelView`` is everything resolution needs to know about a kernel: its
architecture, text symbols (kallsyms), tracefs event formats, the kprobe
blacklist (or None = unknown), BTF presence, kprobe support and the lockdown
mode. It is built from the live host (``KernelView.from_host``) or from a
recorded fixture directory (``KernelView.from_fixture``), so tests resolve
against real 6.1/6.12 arm64 kernels on an x86 machine.

``resolve(view)`` gives one ``Resolution`` per probe. Statuses:
  pending         resolvable; the loader turns it into attached or failed
  attached        (set by the loader)
  missing_symbol  no candidate symbol / tracepoint on this kernel
  blacklisted     the symbol is in the kprobe blacklist
  wrong_arch      the probe exists only on another architecture
  failed          resolvable in principle, but cannot work here (reason says why)
  lockdown        lockdown=confidentiality refuses kprobes, BPF reads and tracefs
  disabled        a per-VM-exit probe switched off by configuration ([bpf] vm_exit_probes)
"""
from __future__ import annotations

import gzip
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .probes import PROBES, TRACE_SYSTEMS, Probe
from . import lockdown as lockdown_mod
from .tracefs import EventFormat, find_tracefs, parse_format

PENDING, ATTACHED, MISSING, BLACKLISTED, WRONG_ARCH, FAILED, LOCKDOWN, DISABLED = (
    "pending", "attached", "missing_symbol", "blacklisted", "wrong_arch", "failed", "lockdown",
    "disabled")
HOT_PATHS = ("off", "fentry", "kprobe")  # [bpf] vm_exit_probes

_TEXT_TYPES = frozenset("tTwW")
_ARCH_ALIASES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}
# Symbols the feature detection (reference §6.3) looks at, besides probe targets.
FEATURE_SYMBOLS = ("memory_failure_cb", "ghes_kick_task_work", "kvm_inject_serror_esr",
                   "kvm_inject_vabt", "kvm_handle_guest_sea")


class NoProbesError(RuntimeError):
    """Startup error: not a single probe can be attached on this kernel."""


@dataclass
class KernelView:
    arch: str  # "arm64", "x86_64", ...
    release: str
    symbols: dict[str, str]  # text symbol name -> kallsyms type (module symbols included)
    events: dict[str, EventFormat]  # "system:event" -> format
    blacklist: frozenset[str] | None  # None: unknown (debugfs closed or not mounted)
    btf: bool
    kprobes: bool | None  # kernel kprobe support; None: unknown
    lockdown: str  # "none", "integrity", "confidentiality" or "unknown" (lockdown.py)
    notes: list[str] = field(default_factory=list)
    # fentry needs ftrace direct calls (BPF trampolines); arm64 has them from 6.4 on, so
    # Debian's 6.1 arm64 kernel has BTF but no fentry. None: the config is not readable.
    direct_calls: bool | None = None

    # --- construction ------------------------------------------------------
    @classmethod
    def from_host(cls, symbol_filter: re.Pattern[str] | None = None) -> "KernelView":
        """Read the running kernel. Only symbols matching ``symbol_filter`` (default:
        every probe candidate and feature symbol) are kept, to keep memory small."""
        flt = symbol_filter or candidate_filter()
        # the default filter's names have literal beginnings: kallsyms is searched for
        # those (a custom filter: every line is parsed)
        prefixes = None if symbol_filter else candidate_prefixes()
        notes: list[str] = []
        tracefs = find_tracefs()
        if tracefs is None:
            notes.append("tracefs is not mounted at /sys/kernel/tracing: no tracepoints")
        return cls(
            arch=normalize_arch(platform.machine()),
            release=platform.release(),
            symbols=_read_symbols(tracefs, flt, notes, prefixes),
            events=_read_events(tracefs / "events") if tracefs else {},
            blacklist=_read_blacklist(Path("/sys/kernel/debug/kprobes/blacklist"), notes),
            btf=Path("/sys/kernel/btf/vmlinux").exists(),
            kprobes=_host_kprobes(tracefs),
            lockdown=lockdown_mod.read_mode(),
            notes=notes,
            direct_calls=direct_calls(read_kernel_config(platform.release())),
        )

    @classmethod
    def from_fixture(cls, directory: str | os.PathLike[str], arch: str = "arm64",
                     lockdown: str | None = None, blacklist_readable: bool = True) -> "KernelView":
        """Read a recorded kernel (tests/fixtures/arm64-kernels/<release>/ layout:
        kallsyms.txt without addresses, kprobe_blacklist.txt, uname.txt, btf.txt,
        events/<sys>/<event>/format)."""
        d = Path(directory)
        notes: list[str] = []
        bl_path = d / "kprobe_blacklist.txt"
        blacklist = None
        if blacklist_readable and bl_path.exists():
            blacklist = frozenset(_names(bl_path.read_text()))
        else:
            notes.append("kprobe blacklist unknown")
        btf_txt = (d / "btf.txt").read_text() if (d / "btf.txt").exists() else ""
        uname = (d / "uname.txt").read_text() if (d / "uname.txt").exists() else ""
        return cls(
            arch=arch,
            release=d.name,
            symbols=_parse_kallsyms_lines((d / "kallsyms.txt").read_text().splitlines(),
                                          addr=False),
            events=_read_events(d / "events"),
            blacklist=blacklist,
            btf="vmlinux: present" in btf_txt,
            kprobes=True,
            lockdown=lockdown or lockdown_mod.mode_from_text(uname),
            notes=notes,
            direct_calls=direct_calls(_read_text(d / "config.txt")),
        )

    # --- queries ------------------------------------------------------------
    def event(self, key: str) -> EventFormat | None:
        return self.events.get(key)

    def match_symbol(self, candidates: Iterable[str]) -> str | None:
        """First candidate present; regex candidates ("re:...") pick the shortest
        (the plain name if present, else the lowest clone suffix)."""
        for cand in candidates:
            if cand.startswith("re:"):
                rx = re.compile(cand[3:] + r"\Z")
                hits = sorted((s for s in self.symbols if rx.match(s)), key=lambda s: (len(s), s))
                if hits:
                    return hits[0]
            elif cand in self.symbols:
                return cand
        return None


def read_kernel_config(release: str, root: Path = Path("/")) -> str | None:
    """The running kernel's build config: Debian's /boot/config-<release>, else
    /proc/config.gz (CONFIG_IKCONFIG_PROC), else the .config of the headers bcc compiles
    against (/lib/modules/<release>/build: the kernel's own build, or bcc could not
    work at all; it is there where /boot is not, e.g. a kernel booted by a hypervisor or
    network loader); None when none is readable."""
    text = _read_text(root / "boot" / f"config-{release}")
    if text is not None:
        return text
    try:
        return gzip.decompress((root / "proc/config.gz").read_bytes()).decode(errors="replace")
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    return _read_text(root / "lib/modules" / release / "build/.config")


def direct_calls(config: str | None) -> bool | None:
    if config is None:
        return None
    return "\nCONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y" in "\n" + config


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def normalize_arch(machine: str) -> str:
    return _ARCH_ALIASES.get(machine, machine)


def _candidates(probes: Iterable[Probe]) -> Iterator[tuple[str, bool]]:
    """Every name the feature detection and the probes look for: (text, is a regex)."""
    for s in FEATURE_SYMBOLS:
        yield s, False
    for p in probes:
        for s in p.symbols:
            yield (s[3:], True) if s.startswith("re:") else (s, False)


def candidate_filter(probes: Iterable[Probe] = PROBES) -> re.Pattern[str]:
    parts = [s if is_regex else re.escape(s) for s, is_regex in _candidates(probes)]
    return re.compile("(?:" + "|".join(parts) + r")\Z")


def candidate_prefixes(probes: Iterable[Probe] = PROBES) -> tuple[str, ...] | None:
    """The literal beginning of every name candidate_filter() takes; None if one has
    none that is sure (then there is nothing to search for)."""
    out = set()
    for s, is_regex in _candidates(probes):
        lead = _literal_lead(s) if is_regex else s
        if not lead:
            return None
        out.add(lead)
    return tuple(sorted(out))


def _literal_lead(pattern: str) -> str:
    """The word characters every match of ``pattern`` begins with; "" when that is not
    sure: a quantifier on the last of them, or an alternative at the top level."""
    lead = re.match(r"\w*", pattern).group()
    if pattern[len(lead):len(lead) + 1] in ("?", "*", "{") or _top_level_bar(pattern):
        return ""
    return lead


def _top_level_bar(pattern: str) -> bool:
    """Whether ``pattern`` has a "|" outside groups and character classes."""
    depth, i, in_class = 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":  # a "]" first in a class is itself
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


def _kallsyms_entry(line: str, addr: bool) -> tuple[str, str] | None:
    """(name, type) of a text symbol's line ("addr type name [module]"), else None."""
    parts = line.split()
    if addr:
        parts = parts[1:]
    if len(parts) < 2 or parts[0] not in _TEXT_TYPES:
        return None
    return parts[1], parts[0]


def _parse_kallsyms_lines(lines: Iterable[str], addr: bool,
                          flt: re.Pattern[str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        entry = _kallsyms_entry(line, addr)
        if entry is not None and (flt is None or flt.match(entry[0])):
            out.setdefault(*entry)
    return out


def _search_kallsyms_text(text: str, flt: re.Pattern[str], prefixes: Iterable[str]
                          ) -> dict[str, str]:
    """_parse_kallsyms_lines() of only the lines whose name begins with one of
    ``prefixes``, found by one regex pass (C speed) for " <text type> <prefix>": an
    arm64 kallsyms has ~150,000 lines, parsing each in Python was a quarter of rasd's
    start here and seconds on a slow or emulated CPU. The same names with the same types
    come out (per name, its first line)."""
    rx = re.compile(f" [{''.join(sorted(_TEXT_TYPES))}] (?:{'|'.join(map(re.escape, prefixes))})")
    out: dict[str, str] = {}
    for m in rx.finditer(text):
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        entry = _kallsyms_entry(text[start:len(text) if end == -1 else end], addr=True)
        if entry is not None and flt.match(entry[0]):
            out.setdefault(*entry)
    return out


def _read_kallsyms(path: Path, flt: re.Pattern[str], prefixes: Iterable[str] | None = None
                   ) -> dict[str, str]:
    if prefixes is not None:
        return _search_kallsyms_text(path.read_text(errors="replace"), flt, prefixes)
    with path.open() as f:
        return _parse_kallsyms_lines(f, addr=True, flt=flt)


def _read_symbols(tracefs: Path | None, flt: re.Pattern[str], notes: list[str],
                  prefixes: Iterable[str] | None = None) -> dict[str, str]:
    """kallsyms, or -- where it is hidden (systemd's ProtectKernelTunables= makes
    /proc/kallsyms inaccessible, as systemd-nspawn does) -- the functions tracefs says
    ftrace can trace: the ones fentry and ftrace-based kprobes attach to, with their
    real names (.isra/.constprop suffixes included)."""
    try:
        return _read_kallsyms(Path("/proc/kallsyms"), flt, prefixes)
    except PermissionError:
        if tracefs is None:
            raise
    out: dict[str, str] = {}
    with (tracefs / "available_filter_functions").open() as f:
        for line in f:
            name = line.split(maxsplit=1)[0] if line.strip() else ""
            if name and flt.match(name):
                out.setdefault(name, "t")
    notes.append("/proc/kallsyms unreadable: probe symbols from tracefs "
                 "available_filter_functions (functions ftrace cannot trace are missed)")
    return out


def _read_events(events_dir: Path) -> dict[str, EventFormat]:
    """Formats of the systems the probe table uses (ras, memory_failure, signal);
    others are not read."""
    out: dict[str, EventFormat] = {}
    for system in TRACE_SYSTEMS:
        sysdir = events_dir / system
        if not sysdir.is_dir():
            continue
        for evdir in sorted(sysdir.iterdir()):
            fmt = evdir / "format"
            try:
                out[f"{system}:{evdir.name}"] = parse_format(fmt.read_text(), system, evdir.name)
            except OSError:
                continue  # not an event directory, or unreadable (lockdown)
    return out


def _names(text: str) -> list[str]:
    """Symbol names from blacklist lines ("0xa-0xb\tname" live, "name" in fixtures)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts:
            out.append(parts[-1] if len(parts) > 1 and parts[0].startswith("0x") else parts[0])
    return out


def _read_blacklist(path: Path, notes: list[str]) -> frozenset[str] | None:
    """The blacklist lives in debugfs. rasd never mounts debugfs; when it is not
    mounted or closed by lockdown the blacklist is unknown, which is not an error."""
    try:
        return frozenset(_names(path.read_text()))
    except OSError as e:
        notes.append(f"kprobe blacklist unknown ({path}: {e.strerror or e})")
        return None


def _host_kprobes(tracefs: Path | None) -> bool:
    """kprobe PMU (perf_event_open) or kprobe_events in tracefs."""
    if Path("/sys/bus/event_source/devices/kprobe/type").exists():
        return True
    return bool(tracefs and (tracefs / "kprobe_events").exists())


@dataclass
class Resolution:
    probe: str
    status: str
    kind: str = ""  # attach kind chosen: kprobe, kretprobe, kprobe+kretprobe, fentry, tracepoint
    symbol: str | None = None  # kernel symbol or "system:event"
    reason: str = ""
    fentry: bool = False  # the loader should try the fentry form first

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _kprobe_kind(p: Probe) -> str:
    if p.entry_fn and p.exit_fn:
        return "kprobe+kretprobe"
    return "kretprobe" if p.exit_fn else "kprobe"


HOT_OFF_REASON = ("runs on every VM exit; off by configuration ([bpf] vm_exit_probes = "
                  "\"off\"): guest SErrors and SEAs are seen on their rare paths")
HOT_KPROBE_REASON = ("hot path (every VM exit): fentry unavailable and a kprobe would trap "
                     "on each exit; allow with [bpf] vm_exit_probes = \"kprobe\"")


def resolve_probe(p: Probe, view: KernelView, hot_paths: str = "fentry") -> Resolution:
    """hot_paths: "off", "fentry" or "kprobe" for the per-VM-exit probes ([bpf]
    vm_exit_probes; "kprobe": fentry, else a kprobe)."""
    if view.lockdown == "confidentiality":
        return Resolution(p.name, LOCKDOWN, reason="lockdown=confidentiality refuses kprobes, "
                          "BPF kernel reads and tracefs")
    if p.is_tracepoint:
        for key in p.events:
            if key in view.events:
                return Resolution(p.name, PENDING, "tracepoint", key)
        return Resolution(p.name, MISSING, "tracepoint",
                          reason="no tracepoint " + " or ".join(p.events))
    if "any" not in p.arch and view.arch not in p.arch:
        return Resolution(p.name, WRONG_ARCH, _kprobe_kind(p),
                          reason=f"{'/'.join(p.arch)} only; this kernel is {view.arch}")
    sym = view.match_symbol(p.symbols)
    if sym is None:
        return Resolution(p.name, MISSING, _kprobe_kind(p),
                          reason=f"{_describe(p.symbols)} not in kallsyms (inlined, not built, "
                                 "or another kernel version)")
    if view.blacklist is not None and sym in view.blacklist:
        return Resolution(p.name, BLACKLISTED, _kprobe_kind(p), sym,
                          reason=f"{sym} is in the kprobe blacklist")
    if p.hot and hot_paths == "off":
        return Resolution(p.name, DISABLED, _kprobe_kind(p), sym, reason=HOT_OFF_REASON)
    fentry = bool(p.fentry_fn and view.btf and "." not in sym and view.direct_calls is not False)
    if p.hot and not fentry and hot_paths != "kprobe":
        why = HOT_KPROBE_REASON
        if p.fentry_fn and view.direct_calls is False:
            why = ("kernel built without CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS (no fentry); "
                   + HOT_KPROBE_REASON)
        return Resolution(p.name, FAILED, _kprobe_kind(p), sym, reason=why)
    if not view.kprobes and not fentry:
        return Resolution(p.name, FAILED, _kprobe_kind(p), sym,
                          reason="kernel has no kprobe support (CONFIG_KPROBES off)")
    reason = "" if view.blacklist is not None else "kprobe blacklist unknown"
    return Resolution(p.name, PENDING, "fentry" if fentry else _kprobe_kind(p), sym, reason,
                      fentry=fentry)


def _describe(symbols: tuple[str, ...]) -> str:
    return " / ".join(s[3:] if s.startswith("re:") else s for s in symbols)


def resolve(view: KernelView, probes: Iterable[Probe] = PROBES,
            hot_paths: str = "fentry") -> list[Resolution]:
    """hot_paths: see resolve_probe."""
    return [resolve_probe(p, view, hot_paths) for p in probes]


@dataclass(frozen=True)
class Features:
    """Runtime feature detection (reference §6.3), instead of version numbers."""
    ghes_model: str  # "task_work_cb" (>=6.17), "kick_task_work" (5.8-6.16), "legacy" (<=5.7)
    kvm_inject: str | None  # "kvm_inject_serror_esr", "kvm_inject_vabt" or None
    kvm_handle_guest_sea_symbol: bool
    arm_event_extended: bool  # ras:arm_event has pei_len/pei_buf/ctx/oem
    memory_failure_event: str | None  # "ras:memory_failure_event" / "memory_failure:..."
    lockdown: str
    btf: bool
    kprobe_blacklist_known: bool
    # BPF trampolines (fentry) for the per-VM-exit probes: BTF and a kernel built with
    # direct calls (None: config unreadable, so it is tried)
    fentry: bool | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def detect_features(view: KernelView) -> Features:
    syms = view.symbols
    if "memory_failure_cb" in syms:
        model = "task_work_cb"
    elif "ghes_kick_task_work" in syms:
        model = "kick_task_work"
    else:
        model = "legacy"
    inject = next((s for s in ("kvm_inject_serror_esr", "kvm_inject_vabt") if s in syms), None)
    arm = view.event("ras:arm_event")
    mfe = next((k for k in ("ras:memory_failure_event", "memory_failure:memory_failure_event")
                if k in view.events), None)
    return Features(
        ghes_model=model,
        kvm_inject=inject,
        kvm_handle_guest_sea_symbol="kvm_handle_guest_sea" in syms,
        arm_event_extended=bool(arm and arm.has_field("pei_len")),
        memory_failure_event=mfe,
        lockdown=view.lockdown,
        btf=view.btf,
        kprobe_blacklist_known=view.blacklist is not None,
        fentry=(False if not view.btf or view.direct_calls is False
                else None if view.direct_calls is None else True),
    )


def require_some(results: Iterable[Resolution]) -> None:
    """Raise NoProbesError when nothing at all is attached (call after loading)."""
    results = list(results)
    if not any(r.status == ATTACHED for r in results):
        summary = "; ".join(f"{r.probe}: {r.status} {r.reason}".strip() for r in results)
        raise NoProbesError("no probe could be attached on this kernel: " + summary)
