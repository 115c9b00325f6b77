"""Compiled-probe cache: a restart on the same kernel loads bytecode instead of compiling.

bcc compiles the probes with clang at every start: 1-2 s on a server, 1-2 minutes on a
small or emulated one (the arm64 lab under TCG), and ~130 MB of LLVM in the loader
child. What it produces depends only on the program text, the compile flags, bcc and
the kernel (headers and build) it compiled for. So after a compile whose probes all
attached, the loader child stores, per program, its instructions and type, and per map
its attributes ([bpf] cache_dir). The next start that computes the same key recreates
the maps, loads the programs (the kernel's verifier checks them again) and attaches
them with perf_event_open / BPF links: bcc is never imported.

Map references: bcc bakes each map's file descriptor into the immediate of an ld_imm64
instruction (src_reg BPF_PSEUDO_MAP_FD). An entry records those instructions by map
name; loading patches in the new fds. Programs whose bytecode needs anything else
resolved at load time (BTF ids, subprogram calls) are not cached.

Trust: the kernel runs what is loaded, so the cache must be as trusted as bpf/*.c:
the directory and every entry must belong to rasd's user and be writable by nobody
else, or the cache is not used. Anything unexpected (a corrupt entry, a load the
kernel refuses) is a miss: the compile runs and the entry is rewritten.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import platform
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bpfsys

FORMAT = 1
SUFFIX = ".bpfcache.json"
KEEP_ENTRIES = 8                  # per directory: a few kernels x config variants
MAX_ENTRY_BYTES = 16 << 20
BPF_PROG_TYPE_TRACING = 26
ATTACH_FENTRY, ATTACH_FEXIT = 24, 25
_LD_IMM64 = 0x18                  # BPF_LD | BPF_IMM | BPF_DW
_CALL = 0x85                      # BPF_JMP | BPF_CALL
_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE = 1, 2


class CacheRefused(Exception):
    """The cache cannot be trusted here (owner, mode): leave it alone, compile."""


class EntryUnusable(CacheRefused):
    """One entry is damaged or the kernel refuses it: compile, and rewrite it."""


# --------------------------------------------------------------------------
# the key


def kernel_identity(release: str | None = None) -> dict[str, object]:
    """What the bytecode was compiled for: the running kernel's build (/proc/version
    names the exact package build) and the headers bcc compiled against."""
    release = release or platform.release()
    ident: dict[str, object] = {"release": release}
    try:
        ident["version"] = Path("/proc/version").read_text().strip()
    except OSError:
        ident["version"] = ""
    build = Path("/lib/modules", release, "build")
    ident["headers"] = os.path.realpath(build)
    for rel in ("include/generated/autoconf.h", "Makefile"):
        try:
            st = (build / rel).stat()
            ident[rel] = [st.st_size, st.st_mtime_ns]
        except OSError:
            ident[rel] = None
    return ident


def bcc_version() -> str:
    """bcc's version, read from its package without importing it (the import loads
    LLVM: seconds on a small machine, and the point of a hit is not to)."""
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        return "none"
    if spec is None or not spec.origin:
        return "none"
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return "unknown"
    return text.strip().rpartition("=")[2].strip().strip("'\"")


def entry_key(text: str, cflags: list[str], plans: list[dict], options: dict) -> str:
    """Everything the loaded programs depend on: the C text and flags, the probe plans
    (which programs get loaded and how), loader options, bcc and the kernel."""
    h = hashlib.sha256()
    for part in (text, json.dumps(cflags), json.dumps(plans, sort_keys=True, default=str),
                 json.dumps(options, sort_keys=True), bcc_version(),
                 json.dumps(kernel_identity(), sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------
# entries


@dataclass
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass
class ProgSpec:
    name: str                     # bcc's function name (what plans refer to)
    kernel_name: str              # the name the kernel shows (bpftool, prog_info)
    type: int
    insns: bytes
    map_refs: list[tuple[int, str]]   # (instruction index, map name)
    attach_type: int = 0              # BPF_TRACE_FENTRY/FEXIT for tracing programs
    btf_func: str | None = None       # the kernel function a tracing program attaches to


@dataclass
class Entry:
    key: str
    license: str
    kern_version: int
    maps: list[MapSpec]
    programs: dict[str, ProgSpec]
    release: str = ""
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return {"format": FORMAT, "key": self.key, "release": self.release,
                "created": self.created, "license": self.license,
                "kern_version": self.kern_version,
                "maps": [vars(m) for m in self.maps],
                "programs": {n: {"kernel_name": p.kernel_name, "type": p.type,
                                 "insns": base64.b64encode(p.insns).decode(),
                                 "map_refs": p.map_refs, "attach_type": p.attach_type,
                                 "btf_func": p.btf_func}
                             for n, p in self.programs.items()}}

    @classmethod
    def from_json(cls, doc: dict) -> "Entry":
        """Validating: a damaged entry raises EntryUnusable, never loads half a program."""
        try:
            if doc["format"] != FORMAT:
                raise EntryUnusable(f"entry format {doc['format']} (this rasd reads {FORMAT})")
            maps = [MapSpec(str(m["name"]), *(int(m[k]) for k in
                                              ("type", "key_size", "value_size",
                                               "max_entries", "flags")))
                    for m in doc["maps"]]
            names = {m.name for m in maps}
            progs = {}
            for name, p in doc["programs"].items():
                insns = base64.b64decode(p["insns"], validate=True)
                refs = [(int(i), str(m)) for i, m in p["map_refs"]]
                if not insns or len(insns) % 8 or any(
                        not 0 <= i < len(insns) // 8 - 1 or m not in names for i, m in refs):
                    raise EntryUnusable(f"program {name}: bad instructions or map references")
                progs[name] = ProgSpec(name, str(p["kernel_name"]), int(p["type"]), insns,
                                       refs, int(p["attach_type"]), p.get("btf_func"))
            return cls(str(doc["key"]), str(doc["license"]), int(doc["kern_version"]), maps,
                       progs, str(doc.get("release", "")), float(doc.get("created", 0)))
        except EntryUnusable:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EntryUnusable(f"damaged entry ({type(exc).__name__}: {exc})") from None


def map_references(insns: bytes, fd_names: dict[int, str]) -> list[tuple[int, str]]:
    """(index, map name) of every ld_imm64 that loads a map fd. Raises EntryUnusable on
    an instruction that needs other load-time resolution, or an fd of no known map."""
    refs = []
    i, n = 0, len(insns) // 8
    while i < n:
        op, regs, _off, imm = struct.unpack_from("<BBhi", insns, i * 8)
        src = regs >> 4
        if op == _LD_IMM64:
            if src in (_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE):
                if imm not in fd_names:
                    raise EntryUnusable(f"instruction {i} loads fd {imm}, which is no map of "
                                       "this program text")
                refs.append((i, fd_names[imm]))
            elif src:
                raise EntryUnusable(f"instruction {i}: ld_imm64 src_reg {src} (BTF id or "
                                   "subprogram address)")
            i += 2
            continue
        if op == _CALL and src:
            raise EntryUnusable(f"instruction {i}: a call resolved at load time (src_reg {src})")
        i += 1
    return refs


def patch_map_fds(insns: bytes, refs: list[tuple[int, str]], fds: dict[str, int]) -> bytes:
    out = bytearray(insns)
    for i, name in refs:
        struct.pack_into("<i", out, i * 8 + 4, fds[name])
    return bytes(out)


# --------------------------------------------------------------------------
# the directory


class CacheDir:
    """Entries as <release>-<key>.bpfcache.json, written atomically, newest kept."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def check(self, create: bool = False) -> None:
        """Raise CacheRefused unless the directory is rasd's own and nobody else's to write."""
        if create:
            try:
                self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheRefused(f"cannot create {self.path}: {exc.strerror}") from None
        try:
            st = self.path.stat()
        except OSError as exc:
            raise CacheRefused(f"{self.path}: {exc.strerror}") from None
        _check_owner(self.path, st)

    def file_for(self, key: str, release: str | None = None) -> Path:
        return self.path / f"{release or platform.release()}-{key}{SUFFIX}"

    def has_release(self, release: str | None = None) -> bool:
        """Any entry for this kernel: a hit is likely, so the loader defers bcc's import."""
        try:
            prefix = f"{release or platform.release()}-"
            return any(p.name.startswith(prefix) for p in self.path.glob(f"*{SUFFIX}"))
        except OSError:
            return False

    def get(self, key: str) -> Entry | None:
        """The entry for key, None when there is none; EntryUnusable when it is damaged,
        CacheRefused when it is not rasd's alone."""
        path = self.file_for(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheRefused(f"{path.name}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            _check_owner(path, os.fstat(f.fileno()))
            data = f.read(MAX_ENTRY_BYTES + 1)
        if len(data) > MAX_ENTRY_BYTES:
            raise EntryUnusable(f"{path.name}: larger than {MAX_ENTRY_BYTES} bytes")
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise EntryUnusable(f"{path.name}: not JSON ({exc})") from None
        entry = Entry.from_json(doc)
        if entry.key != key:
            raise EntryUnusable(f"{path.name}: holds key {entry.key[:12]}, not its own")
        return entry

    def put(self, entry: Entry) -> Path:
        self.check(create=True)
        path = self.file_for(entry.key, entry.release)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(entry.to_json(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self.prune()
        return path

    def drop(self, key: str) -> None:
        self.file_for(key).unlink(missing_ok=True)

    def prune(self, keep: int = KEEP_ENTRIES) -> None:
        entries = sorted(self.path.glob(f"*{SUFFIX}"), key=_mtime, reverse=True)
        for old in entries[keep:]:
            old.unlink(missing_ok=True)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _check_owner(path: Path, st: os.stat_result) -> None:
    if st.st_uid != os.geteuid():
        raise CacheRefused(f"{path} belongs to uid {st.st_uid}, not rasd's {os.geteuid()}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheRefused(f"{path} is writable by group or others "
                           f"(mode {stat.S_IMODE(st.st_mode):o})")


# --------------------------------------------------------------------------
# capture (after a bcc compile) and load (instead of one)


def capture(b, key: str, fentry_targets: dict[str, str]) -> Entry:
    """An entry from a bcc BPF object whose programs are loaded and attached.
    fentry_targets: tracing program name -> kernel function it attaches to."""
    import ctypes

    from bcc import lib  # noqa: deferred: only the loader child has bcc imported

    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_ulonglong]
    maps, fd_names = [], {}
    for i in range(lib.bpf_num_tables(b.module)):
        name = lib.bpf_table_name(b.module, i).decode()
        fd = b[name].map_fd
        info = bpfsys.map_info(fd)
        maps.append(MapSpec(name, info.type, info.key_size, info.value_size,
                            info.max_entries, info.flags))
        fd_names[fd] = name
    programs = {}
    for fn, func in b.funcs.items():
        insns = ctypes.string_at(lib.bpf_function_start(b.module, fn),
                                 lib.bpf_function_size(b.module, fn))
        info = bpfsys.prog_info(func.fd)
        name = fn.decode()
        attach_type, btf_func = 0, None
        if info.type == BPF_PROG_TYPE_TRACING:
            if name not in fentry_targets:
                raise EntryUnusable(f"tracing program {name}: target unknown")
            attach_type = ATTACH_FEXIT if name.startswith("kretfunc__") else ATTACH_FENTRY
            btf_func = fentry_targets[name]
        programs[name] = ProgSpec(name, info.name, info.type, insns,
                                  map_references(insns, fd_names), attach_type, btf_func)
    return Entry(key, lib.bpf_module_license(b.module).decode(),
                 lib.bpf_module_kern_version(b.module), maps, programs, platform.release())


class CachedObject:
    """The maps and programs of one entry, created and loaded through bpf(2); attaches
    probes the way the loader's bcc path does. Same fds, same names, no bcc."""

    def __init__(self, entry: Entry):
        self.entry = entry
        self.maps: dict[str, int] = {}
        self.funcs: dict[str, int] = {}
        self.links: list[int] = []

    @classmethod
    def load(cls, entry: Entry, btf=None, needed: set[str] = frozenset()) -> "CachedObject":
        """Create every map and load every program; on any refusal close what was made
        and raise EntryUnusable (the caller compiles instead)."""
        missing = needed - set(entry.programs)
        if missing:
            raise EntryUnusable(f"entry lacks program(s) {sorted(missing)}")
        obj = cls(entry)
        try:
            for m in entry.maps:
                obj.maps[m.name] = bpfsys.map_create(m.type, m.key_size, m.value_size,
                                                     m.max_entries, m.flags, m.name)
            for p in entry.programs.values():
                obj.funcs[p.name] = obj._load_prog(p, btf)
        except (OSError, EntryUnusable) as exc:
            obj.close()
            if isinstance(exc, EntryUnusable):
                raise
            raise EntryUnusable(f"kernel refused the cached object: {exc}") from None
        return obj

    def _load_prog(self, p: ProgSpec, btf) -> int:
        btf_id = 0
        if p.btf_func:
            from .btf import K_FUNC
            btf_id = btf.find(p.btf_func, K_FUNC) if btf is not None else None
            if not btf_id:
                raise EntryUnusable(f"{p.name}: {p.btf_func} is no BTF function here")
        try:
            return bpfsys.prog_load(p.type, patch_map_fds(p.insns, p.map_refs, self.maps),
                                    self.entry.license, self.entry.kern_version,
                                    p.kernel_name, p.attach_type, btf_id, log_size=1 << 16)
        except OSError as exc:
            raise EntryUnusable(f"program {p.name}: {exc}") from None

    def attach(self, plan: dict, tracefs: Path | None) -> tuple[bool, str, str, list[int]]:
        """Attach one probe plan; returns (ok, kind, reason, attachment fds) like the
        bcc path. Every fd made before a failure is closed again."""
        made: list[int] = []
        sym = plan["symbol"]
        try:
            if plan.get("fentry_fn"):
                made.append(bpfsys.raw_tracepoint_open(self.funcs[plan["fentry_fn"]]))
                return True, "fentry", "", made
            if plan["kind"] == "tracepoint":
                if tracefs is None:
                    raise OSError("tracefs is not mounted")
                system, _, event = sym.partition(":")
                tp_id = int((tracefs / "events" / system / event / "id").read_text())
                made.append(bpfsys.perf_event_attach(bpfsys.PERF_TYPE_TRACEPOINT, tp_id,
                                                     self.funcs[plan["entry_fn"]]))
                return True, "tracepoint", "", made
            if plan["entry_fn"]:
                made.append(bpfsys.kprobe_attach(sym, self.funcs[plan["entry_fn"]]))
            if plan["exit_fn"]:
                made.append(bpfsys.kprobe_attach(sym, self.funcs[plan["exit_fn"]],
                                                 retprobe=True))
            return True, plan["kind"].replace("fentry", "kprobe"), "", made
        except (OSError, ValueError, KeyError) as exc:
            for fd in made:
                os.close(fd)
            return False, plan["kind"], f"{type(exc).__name__}: {exc}"[:300], []

    def close(self) -> None:
        for fd in [*self.links, *self.funcs.values(), *self.maps.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.links, self.funcs, self.maps = [], {}, {}


def cacheable(plans: list[dict]) -> bool:
    """Plans the cache's loader can attach: kprobes (through the kprobe PMU),
    tracepoints and fentry. uprobes (tests only) need bcc's ELF symbol lookup."""
    if any(p["kind"] in ("uprobe", "uretprobe") for p in plans):
        return False
    kprobes = any(p["kind"] not in ("tracepoint",) and not p.get("fentry_fn") for p in plans)
    return not kprobes or Path("/sys/bus/event_source/devices/kprobe/type").exists()
