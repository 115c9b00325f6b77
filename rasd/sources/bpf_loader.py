"""Compile, load and attach the BPF programs in a short-lived child process.

Why a child: bcc keeps LLVM/clang in process (~130 MB RSS after a compile); the
daemon must idle at <= 60 MB. The child (``python -m rasd.sources.bpf_loader``)
imports bcc, compiles bpf/*.c as one unit (one shared ring buffer), loads and
attaches what the resolver found, then hands the parent over a SOCK_SEQPACKET
socketpair (SCM_RIGHTS) the file descriptors that keep everything alive:

  ring-buffer map fd, lost-counter map fd, and per probe its program fds and
  attachment fds (perf-event fds for kprobes/kretprobes/tracepoints, BPF link
  fds for fentry), plus a JSON description. The child then exits with
  os._exit() so bcc's atexit cleanup never detaches anything; attachments live
  as long as the parent holds the fds. (bcc uses the kprobe PMU via
  perf_event_open; on kernels without it bcc falls back to tracefs
  kprobe_events, whose entries would outlive the daemon; the JSON says which.)

Daemon entry point: ``load_probes()`` -> ``LoadedProbes``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from . import bpf_cache
from .probes import BPF_SOURCES, BPF_TEST_SOURCE, PROBES, TEST_PROBE_ID, Probe
from .records import Record, parse_record
from .resolve import (ATTACHED, FAILED, HOT_KPROBE_REASON, PENDING, Features, KernelView,
                      Resolution, detect_features, require_some, resolve)
from .ringbuf import LostCounter, RingBuffer
from .tracefs import EventFormat, find_tracefs, parse_format

if TYPE_CHECKING:
    from .btf import Btf

def _bpf_dir() -> Path:
    """bpf/*.c: $RASD_BPF_DIR, else the checkout's bpf/ next to the rasd package, else
    the Debian package's /usr/share/rasd/bpf."""
    if os.environ.get("RASD_BPF_DIR"):
        return Path(os.environ["RASD_BPF_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "bpf"
    return checkout if (checkout / "common.h").is_file() else Path("/usr/share/rasd/bpf")


BPF_DIR = _bpf_dir()
_MAX_MSG = 1 << 20


class LoaderError(RuntimeError):
    """The loader child failed as a whole (compile error, crash, protocol)."""


@dataclass(frozen=True)
class ExtraAttach:
    """A test/bench-only program in the same compile unit, writing into the same
    ring buffer: on a tracepoint ("system:event", e.g. a syscall) or, with
    kind="uprobe"/"uretprobe", on "path:symbol" (perf-event attachments like
    bcc's kprobes; the kprobe programs' pt_regs bodies run unchanged there).
    With ``copy_tp`` the generic tracepoint body (tracepoints.c) is instantiated
    for that event under the name ``fn``."""
    fn: str
    target: str
    copy_tp: bool = False
    kind: str = "tracepoint"


@dataclass
class LoadedProbes:
    """What the daemon holds after loading: readers plus the fds that keep the
    programs attached. close() detaches everything."""
    results: list[Resolution]
    features: Features
    ringbuf: RingBuffer
    lost: LostCounter
    prog_fds: dict[str, int]  # BPF function name -> program fd
    link_fds: dict[str, list[int]]  # probe name -> attachment fds
    map_fds: dict[str, int]  # BPF map name -> map fd
    stats: dict[str, float]  # child timings and RSS
    notes: list[str] = field(default_factory=list)  # BTF/fentry fallbacks, from the child
    _all_fds: list[int] = field(default_factory=list, repr=False)

    def attached(self) -> list[str]:
        return [r.probe for r in self.results if r.status == ATTACHED]

    def fileno(self) -> int:
        """The ring-buffer map fd: register it (EPOLLIN) in the daemon's own loop."""
        return self.ringbuf.fd

    def status(self) -> dict[str, object]:
        """Probe table and counters for status/metrics (JSON-able)."""
        return {"probes": [r.to_json() for r in self.results],
                "features": self.features.to_json(),
                "lost_events": self.lost.total(),
                "ringbuf_bytes": self.ringbuf.size,
                "loader": self.stats, "notes": self.notes}

    def read(self) -> Iterable[Record]:
        for raw in self.ringbuf.records():
            yield parse_record(raw)

    def close(self) -> None:
        self.ringbuf.close()
        for fd in self._all_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._all_fds.clear()


# --------------------------------------------------------------------------
# parent side


def tp_instance(fn: str, probe_id: int, fmt: EventFormat,
                tp_filter: tuple[str, int] | None = None) -> str:
    """C line instantiating the generic tracepoint program for one event format;
    with ``tp_filter`` (field, value) the program drops every other entry first."""
    dls = (fmt.data_loc_offsets + [-1, -1, -1, -1])[:4]
    if len(fmt.data_loc_offsets) > 4:
        raise ValueError(f"{fmt.key}: more than 4 __data_loc fields")
    args = f"{fn}, {probe_id}, {fmt.fixed_size}, {', '.join(map(str, dls))}"
    if tp_filter is None:
        return f"RASD_TP_PROGRAM({args})"
    off, size, value = tp_filter_args(fmt, *tp_filter)
    return f"RASD_TP_PROGRAM_IF({args}, {off}, {size}, {value})"


def tp_filter_args(fmt: EventFormat, name: str, value: int) -> tuple[int, int, int]:
    """Offset, size and value for RASD_TP_FIELD_EQ: a plain integer field the
    program can load straight from its context (the verifier allows aligned
    reads at offset >= 8 only, i.e. past the common_* header)."""
    f = fmt.field(name)
    if f is None:
        raise ValueError(f"{fmt.key}: no field {name!r} to filter on")
    if f.is_data_loc or f.is_rel_loc or f.array_len is not None or f.size not in (1, 2, 4, 8):
        raise ValueError(f"{fmt.key}: {f.decl} is not an integer field")
    if f.offset < 8 or f.offset % f.size:
        raise ValueError(f"{fmt.key}: {name} at offset {f.offset} cannot be read from ctx")
    return f.offset, f.size, value


def _probe_plan(p: Probe, r: Resolution, view: KernelView) -> dict[str, object]:
    plan: dict[str, object] = {"name": p.name, "kind": r.kind, "symbol": r.symbol,
                               "entry_fn": p.entry_fn, "exit_fn": p.exit_fn,
                               "fentry_fn": p.fentry_fn if r.fentry else None,
                               "fentry_macro": p.fentry_macro if r.fentry else None,
                               "needs_vcpu_esr": p.needs_vcpu_esr, "id": p.id,
                               "source": p.source, "hot": p.hot,
                               "esr_param": p.esr_param}
    if p.is_tracepoint:
        plan["c"] = tp_instance(p.entry_fn or "", p.id, view.events[r.symbol or ""],
                                p.tp_filter)
    return plan


def _probe_plans(probes: list[Probe], results: list[Resolution],
                 view: KernelView) -> list[dict[str, object]]:
    """Plans for the pending probes. A format the generic tracepoint program cannot
    take (e.g. a filter field that changed type) fails that probe alone."""
    plans = []
    for p, r in zip(probes, results):
        if r.status != PENDING:
            continue
        try:
            plans.append(_probe_plan(p, r, view))
        except ValueError as e:
            r.status, r.reason = FAILED, str(e)
    return plans


def _test_plan(t: ExtraAttach) -> dict[str, object]:
    plan: dict[str, object] = {"name": f"test:{t.fn}", "kind": t.kind,
                               "symbol": t.target, "entry_fn": t.fn, "exit_fn": None,
                               "fentry_fn": None, "fentry_macro": None, "test": True}
    if t.copy_tp:
        tracefs = find_tracefs()
        if tracefs is None:
            raise LoaderError("tracefs is not mounted")
        sysname, ev = t.target.split(":")
        fmt = parse_format((tracefs / "events" / sysname / ev / "format").read_text(), sysname, ev)
        plan["c"] = tp_instance(t.fn, TEST_PROBE_ID, fmt)
    return plan


def load_probes(view: KernelView | None = None, ringbuf_pages: int = 64,
                probes: Iterable[Probe] = PROBES, test_attach: Iterable[ExtraAttach] = (),
                require_any: bool = True, timeout: float = 120.0,
                extra_cflags: Iterable[str] = (), hot_paths: str = "fentry",
                cache_dir: str | None = None) -> LoadedProbes:
    """Resolve, then compile/load/attach in a child; return readers and fds.

    Raises NoProbesError when nothing attached (unless require_any=False) and
    LoaderError when the child fails as a whole. hot_paths: "off", "fentry" or
    "kprobe" for the per-VM-exit probes ([bpf] vm_exit_probes; "kprobe" allows a kprobe
    where fentry does not work). cache_dir: the compiled-probe cache ([bpf] cache_dir;
    None: always compile). extra_cflags: tests only."""
    if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
        raise ValueError("ringbuf_pages must be a power of two")
    child = _LoaderChild(defer_bcc=bool(cache_dir) and bpf_cache.CacheDir(cache_dir).has_release())
    try:
        view = view or KernelView.from_host()
        probes = list(probes)
        results = resolve(view, probes, hot_paths)
        plans = _probe_plans(probes, results, view)
        if not plans and require_any:
            require_some(results)  # nothing to load: say why, no compile
        plans += [_test_plan(t) for t in test_attach]
    except BaseException:
        child.abort()
        raise
    request = {"bpf_dir": str(BPF_DIR), "ringbuf_pages": ringbuf_pages, "arch": view.arch,
               "btf": view.btf, "probes": plans, "extra_cflags": list(extra_cflags),
               "testing": bool(test_attach), "hot_kprobes": hot_paths == "kprobe",
               "cache_dir": cache_dir}
    reply, fds = child.run(request, timeout)
    loaded = _assemble(results, reply, fds, detect_features(view))
    if require_any:
        try:
            require_some(r for r in loaded.results if not r.probe.startswith("test:"))
        except Exception:
            loaded.close()
            raise
    return loaded


class _LoaderChild:
    """The child process, started before resolution so that Python start-up and
    the bcc import overlap with reading kallsyms in the parent."""

    def __init__(self, defer_bcc: bool = False) -> None:
        self.sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
        with child_sock:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rasd.sources.bpf_loader", "--child",
                 str(child_sock.fileno())] + (["--defer-bcc"] if defer_bcc else []),
                pass_fds=(child_sock.fileno(),), env=env, stderr=subprocess.PIPE)

    def abort(self) -> None:
        self.sock.close()  # the child sees EOF and exits
        self.proc.kill()
        self.proc.communicate()

    def run(self, request: dict[str, object], timeout: float) -> tuple[dict, list[int]]:
        with self.sock:
            try:
                self.sock.sendall(json.dumps(request).encode())
                self.sock.settimeout(timeout)
                msg, fds, _flags, _addr = socket.recv_fds(self.sock, _MAX_MSG, 253)
            except OSError as e:  # socket.timeout is an OSError
                self.proc.kill()
                raise LoaderError(f"loader child: {e}") from e
            finally:
                _, err = self.proc.communicate(timeout=timeout)
        if not msg:
            raise LoaderError("loader child exited without a reply: "
                              + err.decode(errors="replace")[-2000:])
        reply = json.loads(msg)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise LoaderError(reply["error"] + _diagnostics(err))
        return reply, fds


def _diagnostics(stderr: bytes) -> str:
    """The child's clang/bcc complaints: bcc's exception says only "Failed to compile
    BPF module", the reason (a missing kernel header, a C error) is on stderr."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines()
             if "error" in ln or "Unable to find kernel headers" in ln]
    return (": " + " | ".join(dict.fromkeys(lines[-4:])))[:600] if lines else ""


def _assemble(results: list[Resolution], reply: dict, fds: list[int],
              features: Features) -> LoadedProbes:
    by_name = {r.probe: r for r in results}
    link_fds: dict[str, list[int]] = {}
    for entry in reply["probes"]:
        name = entry["name"]
        links = [fds[i] for i in entry["link_fd_idx"]]
        link_fds[name] = links
        r = by_name.get(name)
        if r is None:  # test attachment
            results.append(r := Resolution(name, "", entry["kind"], entry["symbol"]))
        r.status = ATTACHED if entry["ok"] else FAILED
        r.kind = entry.get("kind", r.kind)
        r.fentry = r.kind == "fentry"
        if entry.get("reason"):
            r.reason = entry["reason"]
    prog_fds = {n: fds[i] for n, i in reply["prog_fd_idx"].items()}
    map_fds = {n: fds[i] for n, i in reply["map_fd_idx"].items()}
    loaded = LoadedProbes(results, features, RingBuffer(map_fds["rasd_events"]),
                          LostCounter(map_fds["rasd_lost"]), prog_fds, link_fds, map_fds,
                          reply["stats"], reply.get("notes", []), list(fds))
    return loaded


def compile_all_programs(extra_c: Iterable[str] = (), cflags: Iterable[str] = ()) -> list[str]:
    """(Test helper, in-process, imports bcc.) Compile every program in bpf/ and
    load each with the verifier without attaching; returns the function names."""
    from bcc import BPF, lib  # noqa: deferred: only tests/children import bcc
    text = _source_text(str(BPF_DIR), list(extra_c), testing=True)
    b = BPF(text=text.encode(), cflags=_base_cflags(str(BPF_DIR), 8) + list(cflags))
    names = [lib.bpf_function_name(b.module, i).decode()
             for i in range(lib.bpf_num_functions(b.module))]
    for n in names:
        is_tp = n.startswith(("rasd_tp_", "rasd_test"))
        b.load_func(n.encode(), BPF.TRACEPOINT if is_tp else BPF.KPROBE)
    b.cleanup()
    return names


# --------------------------------------------------------------------------
# child side (imports bcc)


def _base_cflags(bpf_dir: str, pages: int) -> list[str]:
    return [f"-I{bpf_dir}", f"-DRASD_RINGBUF_PAGES={pages}"]


def _source_text(bpf_dir: str, extra: list[str], testing: bool = False,
                 sources: Iterable[str] | None = None) -> str:
    """common.h first, then the .c files (all, or those in ``sources``, in
    BPF_SOURCES order): bcc compiles only its main file as BPF code. Compiling
    only what is attached keeps start-up short."""
    parts = [Path(bpf_dir, "common.h").read_text()]
    wanted = set(BPF_SOURCES if sources is None or testing else sources)
    files = tuple(f for f in BPF_SOURCES if f in wanted) + ((BPF_TEST_SOURCE,) if testing else ())
    parts += [Path(bpf_dir, f).read_text() for f in files]
    parts += extra
    return "\n".join(parts) + "\n"


def _btf_cflags(request: dict) -> tuple[list[str], Btf | None, list[str]]:
    """Struct offsets and esr parameter widths from the running kernel's BTF;
    also its function names (fentry targets must be BTF functions)."""
    plans = request["probes"]
    if not any(p.get("fentry_fn") or p.get("esr_param") is not None
               or p.get("source") in ("ghes.c", "kvm_arm.c") for p in plans):
        return [], None, []  # tracepoints only: parsing BTF (~0.3 s) buys nothing
    if not request["btf"]:
        return [], None, ["no BTF: kvm_vcpu fault fields unknown, fentry unavailable"]
    from .btf import Btf
    btf = Btf.from_file()
    flags, notes = [], []
    ghes = btf.member("ghes", "generic")
    if ghes:
        flags.append(f"-DRASD_OFF_GHES_GENERIC={ghes.offset}")
    if request["arch"] == "arm64":
        for fld, macro in (("esr_el2", "ESR_EL2"), ("disr_el1", "DISR_EL1"),
                           ("far_el2", "FAR_EL2"), ("hpfar_el2", "HPFAR_EL2")):
            m = btf.member("kvm_vcpu", f"arch.fault.{fld}")
            if m is None:
                notes.append(f"BTF lacks kvm_vcpu.arch.fault.{fld}")
                continue
            flags.append(f"-DRASD_OFF_VCPU_{macro}={m.offset}")
            if fld == "esr_el2":
                flags.append(f"-DRASD_SZ_VCPU_{macro}={m.size}")
    esr32 = _esr32_mask(btf, request["probes"])
    if esr32:
        flags.append(f"-DRASD_ESR32_PROBES={esr32:#x}ULL")
    return flags, btf, notes


def _esr32_mask(btf, plans: list[dict]) -> int:
    """Bit per probe id whose esr parameter is 32-bit in the BTF prototype."""
    mask = 0
    for p in plans:
        if p.get("esr_param") is None or not p.get("symbol"):
            continue
        sizes = btf.func_param_sizes(p["symbol"].split(".", 1)[0])
        if sizes and len(sizes) > p["esr_param"] and sizes[p["esr_param"]] == 4:
            mask |= 1 << p["id"]
    return mask


def _program(request: dict, plans: list[dict], cflags: list[str]) -> tuple[str, list[str]]:
    """The C text and compile flags bcc gets for these plans."""
    extra = [p["c"] for p in plans if p.get("c")]
    macros = [f"-D{p['fentry_macro']}" for p in plans if p.get("fentry_macro")]
    text = _source_text(request["bpf_dir"], extra, request.get("testing", False),
                        {p["source"] for p in plans if p.get("source")})
    return text, (_base_cflags(request["bpf_dir"], request["ringbuf_pages"])
                  + cflags + macros + request.get("extra_cflags", []))


def _compile(request: dict, plans: list[dict], cflags: list[str]):
    from bcc import BPF
    text, flags = _program(request, plans, cflags)
    return BPF(text=text.encode(), cflags=flags)


def _all_attach_fds(b) -> set[int]:
    """Every attachment fd bcc holds (its dict layouts differ per probe type)."""
    fds = set(b.tracepoint_fds.values()) | set(b.uprobe_fds.values())
    fds |= set(b.kfunc_entry_fds.values()) | set(b.kfunc_exit_fds.values())
    for per_fn in b.kprobe_fds.values():
        fds |= set(per_fn.values())
    return fds


def _attach_one(b, plan: dict) -> tuple[bool, str, str, list[int]]:
    """Attach one probe; returns (ok, kind, reason, new attachment fds)."""
    sym = plan["symbol"]
    if plan.get("fentry_fn"):
        fd = b.kfunc_entry_fds.get(plan["fentry_fn"].encode())
        if fd is not None:  # bcc's autoload attached it when compiling
            return True, "fentry", "", [fd]
    before = _all_attach_fds(b)
    try:
        if plan["kind"] == "tracepoint":
            b.attach_tracepoint(tp=sym, fn_name=plan["entry_fn"])
        elif plan["kind"] in ("uprobe", "uretprobe"):
            path, _, func = sym.rpartition(":")
            attach = b.attach_uprobe if plan["kind"] == "uprobe" else b.attach_uretprobe
            attach(name=path, sym=func, fn_name=plan["entry_fn"])
        else:
            if plan["entry_fn"]:
                b.attach_kprobe(event=sym, fn_name=plan["entry_fn"])
            if plan["exit_fn"]:
                b.attach_kretprobe(event=sym, fn_name=plan["exit_fn"])
        kind = plan["kind"].replace("fentry", "kprobe")
        return True, kind, "", sorted(_all_attach_fds(b) - before)
    except Exception as e:  # bcc raises plain Exception; keep the first line
        return False, plan["kind"], str(e).splitlines()[0][:300], []


def _map_names(b) -> list[str]:
    import ctypes

    from bcc import lib
    lib.bpf_table_name.restype = ctypes.c_char_p  # not declared by bcc's wrapper
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    return [lib.bpf_table_name(b.module, i).decode() for i in range(lib.bpf_num_tables(b.module))]


def _skip_reason(p: dict, request: dict, vcpu_esr: bool) -> str | None:
    """Why a planned probe is not attached at all (same answer on both load paths)."""
    if p.get("hot") and not p.get("fentry_fn") and not request.get("hot_kprobes"):
        return HOT_KPROBE_REASON
    if p.get("needs_vcpu_esr") and not vcpu_esr:
        return NO_SEA_FILTER_REASON
    return None


NO_SEA_FILTER_REASON = "BTF lacks kvm_vcpu.arch.fault.esr_el2: no SEA filter"


def _cache_key(request: dict, plans: list[dict], cflags: list[str]) -> str:
    text, flags = _program(request, plans, cflags)
    # where bpf/ is installed (checkout, /usr/share/rasd/bpf) changes no byte of the
    # program: its only header, common.h, is part of the text
    include = f"-I{request['bpf_dir']}"
    flags = ["-I<bpf>" if f == include else f for f in flags]
    return bpf_cache.entry_key(text, flags, plans,
                               {"hot_kprobes": bool(request.get("hot_kprobes"))})


def needed_programs(plans: list[dict], request: dict, vcpu_esr: bool) -> set[str]:
    """The BPF functions the attached probes run: a probe going in by fentry runs its
    KFUNC program only (its kprobe function is never loaded, so no entry holds it)."""
    needed = set()
    for p in plans:
        if _skip_reason(p, request, vcpu_esr):
            continue
        fns = (p["fentry_fn"],) if p.get("fentry_fn") else (p.get("entry_fn"), p.get("exit_fn"))
        needed.update(fn for fn in fns if fn)
    return needed


def _from_cache(request: dict, plans: list[dict], cflags: list[str], btf,
                vcpu_esr: bool, notes: list[str]):
    """(cache dir or None, key, the loaded CachedObject or None, state)."""
    if not request.get("cache_dir"):
        return None, None, None, "off"
    cache = bpf_cache.CacheDir(request["cache_dir"])
    if not bpf_cache.cacheable(plans):
        return None, None, None, "not cacheable"
    key = _cache_key(request, plans, cflags)
    needed = needed_programs(plans, request, vcpu_esr)
    if not cache.path.exists():
        return cache, key, None, "miss"      # the first compile creates it
    try:
        cache.check()
        entry = cache.get(key)
        if entry is None:
            return cache, key, None, "miss"
        return cache, key, bpf_cache.CachedObject.load(entry, btf, needed), "hit"
    except bpf_cache.EntryUnusable as exc:
        notes.append(f"compile cache entry unusable: {exc}; compiling")
        cache.drop(key)                      # rewritten after the compile
        return cache, key, None, "entry unusable"
    except bpf_cache.CacheRefused as exc:    # not ours alone: never read or write it
        notes.append(f"compile cache not used: {exc}")
        return None, key, None, "refused"


def _bcc_load(request: dict, plans: list[dict], cflags: list[str], notes: list[str]):
    try:
        return _compile(request, plans, cflags)
    except Exception as e:
        if not any(p.get("fentry_macro") for p in plans):
            raise
        notes.append(f"fentry unavailable ({str(e).splitlines()[0]}); using kprobes")
        for p in plans:
            p["fentry_fn"] = p["fentry_macro"] = None
        return _compile(request, plans, cflags)


def _store(cache, b, request: dict, plans: list[dict], cflags: list[str],
           out_probes: list[dict], notes: list[str]) -> str:
    """After a compile whose probes all attached: write the cache entry."""
    if cache is None or not bpf_cache.cacheable(plans):
        return ""
    if any(not o["ok"] and o["reason"] not in (HOT_KPROBE_REASON, NO_SEA_FILTER_REASON)
           for o in out_probes):
        return "not written: a probe failed to attach"   # the next start tries again
    try:
        key = _cache_key(request, plans, cflags)   # plans may have lost fentry
        targets = {p["fentry_fn"]: p["symbol"] for p in plans if p.get("fentry_fn")}
        cache.put(bpf_cache.capture(b, key, targets))
        return "written"
    except (bpf_cache.CacheRefused, OSError) as exc:
        notes.append(f"compile cache entry not written: {exc}")
        return "not written"


def _child_load(request: dict) -> tuple[dict, list[int]]:
    t0 = time.monotonic()
    cflags, btf, notes = _btf_cflags(request)
    plans = request["probes"]
    for p in plans:
        if p.get("fentry_fn") and (btf is None or not btf.has_function(p["symbol"])):
            p["fentry_fn"] = p["fentry_macro"] = None
            p["kind"] = "kprobe"
    vcpu_esr = any("RASD_OFF_VCPU_ESR_EL2" in f for f in cflags)
    t1 = time.monotonic()
    cache, _, cached, cache_state = _from_cache(request, plans, cflags, btf, vcpu_esr, notes)
    b = None if cached is not None else _bcc_load(request, plans, cflags, notes)
    t_compile = time.monotonic() - t1
    tracefs = find_tracefs()
    fds: list[int] = []

    def idx(fd: int) -> int:
        fds.append(fd)
        return len(fds) - 1

    out_probes = []
    for p in plans:
        skip = _skip_reason(p, request, vcpu_esr)
        if skip:
            kind = "kprobe" if skip == HOT_KPROBE_REASON else p["kind"]
            out_probes.append({"name": p["name"], "symbol": p["symbol"], "ok": False,
                               "kind": kind, "link_fd_idx": [], "reason": skip})
            continue
        ok, kind, reason, links = (cached.attach(p, tracefs) if cached is not None
                                   else _attach_one(b, p))
        out_probes.append({"name": p["name"], "symbol": p["symbol"], "ok": ok, "kind": kind,
                           "reason": reason, "link_fd_idx": [idx(fd) for fd in links]})
    if cached is not None:
        prog_idx = {fn: idx(fd) for fn, fd in cached.funcs.items()}
        map_idx = {name: idx(fd) for name, fd in cached.maps.items()}
    else:
        prog_idx = {fn.decode(): idx(f.fd) for fn, f in b.funcs.items()}
        map_idx = {name: idx(b[name].map_fd) for name in _map_names(b)}
        written = _store(cache, b, request, plans, cflags, out_probes, notes)
        if written:
            cache_state += f", {written}"
    reply = {
        "probes": out_probes,
        "prog_fd_idx": prog_idx,
        "map_fd_idx": map_idx,
        "notes": notes,
        "stats": {"compile_s": 0.0 if cached is not None else t_compile,
                  "cache": cache_state,
                  "cache_load_s": t_compile if cached is not None else 0.0,
                  "btf_s": t1 - t0,
                  "total_s": time.monotonic() - t0,
                  "child_maxrss_kb": _peak_rss_kb(),
                  "bcc_imported": "bcc" in sys.modules},
    }
    return reply, fds


def _peak_rss_kb() -> int:
    """This process image's peak RSS. (getrusage's ru_maxrss would also count the parent's
    RSS at fork: Linux carries the pre-exec high-water mark across execve.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child_main(sock_fd: int, defer_bcc: bool = False) -> None:
    sock = socket.socket(fileno=sock_fd)
    try:
        if not defer_bcc:   # a compile is likely: import LLVM while the parent resolves
            import bcc  # noqa: F401
        data = sock.recv(_MAX_MSG)
        if not data:  # parent aborted
            os._exit(0)
        request = json.loads(data)
        reply, fds = _child_load(request)
        socket.send_fds(sock, [json.dumps(reply).encode()], fds)
    except BaseException as e:  # report anything to the parent, then exit
        sock.send(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()[:_MAX_MSG])
    sys.stderr.flush()
    # Skip bcc's atexit cleanup: it would detach the probes the parent now owns.
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", type=int, required=True, metavar="FD",
                    help="socket fd to the parent (internal)")
    ap.add_argument("--defer-bcc", action="store_true",
                    help="import bcc only if the compile cache misses (internal)")
    args = ap.parse_args(argv)
    _child_main(args.child, args.defer_bcc)


if __name__ == "__main__":
    main()
