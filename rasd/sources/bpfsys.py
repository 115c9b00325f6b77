"""The few bpf(2) commands the daemon needs, through ctypes (no bcc in the daemon).

BPF_MAP_LOOKUP_ELEM (the per-CPU lost counter), BPF_OBJ_GET_INFO_BY_FD (map
sizes for mmap, per-program run_time_ns/run_cnt for the benchmark), and what
loading from the compile cache takes instead of bcc (bpf_cache.py): BPF_MAP_CREATE,
BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN (fentry links) and perf_event_open(2) with
the PERF_EVENT_IOC_SET_BPF/ENABLE ioctls (kprobes, tracepoints).
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

_NR_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "arm64": 241}
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_OBJ_NAME_LEN = 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _NR_BPF[platform.machine()]
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


def possible_cpus() -> int:
    """Number of possible CPUs (per-CPU map values are sized by it)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


def lookup_percpu_u64(map_fd: int, key: int = 0) -> list[int]:
    """Per-CPU values of a BPF_PERCPU_ARRAY(u64) element."""
    ncpu = possible_cpus()
    keybuf = ctypes.create_string_buffer(struct.pack("<I", key))
    valbuf = ctypes.create_string_buffer(8 * ncpu)
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIQQQ", attr, 0, map_fd, 0, ctypes.addressof(keybuf),
                     ctypes.addressof(valbuf), 0)
    _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    return list(struct.unpack_from(f"<{ncpu}Q", valbuf.raw))


def _obj_info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<IIQ", attr, 0, fd, size, ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info.raw


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str
    flags: int = 0


def map_info(fd: int) -> MapInfo:
    raw = _obj_info(fd, 88)
    mtype, mid, ks, vs, me, flags = struct.unpack_from("<6I", raw)
    name = raw[24:40].split(b"\0", 1)[0].decode()
    return MapInfo(mtype, mid, ks, vs, me, name, flags)


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    name: str
    run_time_ns: int
    run_cnt: int


def prog_info(fd: int) -> ProgInfo:
    """run_time_ns/run_cnt are counted only while kernel.bpf_stats_enabled=1."""
    raw = _obj_info(fd, 256)
    ptype, pid = struct.unpack_from("<II", raw)
    name = raw[64:80].split(b"\0", 1)[0].decode()
    run_time_ns, run_cnt = struct.unpack_from("<QQ", raw, 192)
    return ProgInfo(ptype, pid, name, run_time_ns, run_cnt)


BPF_MAP_UPDATE_ELEM = 2


def update_elem(map_fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """BPF_MAP_UPDATE_ELEM with raw key/value bytes (tests fill fake kernel data)."""
    keybuf = ctypes.create_string_buffer(key, len(key))
    valbuf = ctypes.create_string_buffer(value, len(value))
    attr = ctypes.create_string_buffer(32)
    struct.pack_into("<IIQQQ", attr, 0, map_fd, 0, ctypes.addressof(keybuf),
                     ctypes.addressof(valbuf), flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


# --------------------------------------------------------------------------
# creating maps and programs, attaching them (the compile cache's loader)

def _name16(name: str) -> bytes:
    return name.encode()[:BPF_OBJ_NAME_LEN - 1]


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0, name: str = "") -> int:
    """BPF_MAP_CREATE; returns the map fd (close-on-exec, as every bpf(2) fd)."""
    attr = ctypes.create_string_buffer(72)
    struct.pack_into("<5I", attr, 0, map_type, key_size, value_size, max_entries, flags)
    attr[28:28 + len(_name16(name))] = _name16(name)
    return _bpf(BPF_MAP_CREATE, attr)


def prog_load(prog_type: int, insns: bytes, license: str = "GPL", kern_version: int = 0,
              name: str = "", expected_attach_type: int = 0, attach_btf_id: int = 0,
              log_size: int = 0) -> int:
    """BPF_PROG_LOAD; returns the program fd. With log_size the verifier's log is
    asked for and carried in the OSError's message when the kernel refuses."""
    code = ctypes.create_string_buffer(bytes(insns), len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(lic), 1 if log else 0, log_size,
                     ctypes.addressof(log) if log else 0, kern_version, 0)
    attr[48:48 + len(_name16(name))] = _name16(name)
    struct.pack_into("<I", attr, 68, expected_attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        if log is not None and log.value:
            tail = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise OSError(exc.errno, f"{exc.strerror}: {' | '.join(tail)}") from None
        raise


def raw_tracepoint_open(prog_fd: int) -> int:
    """BPF_RAW_TRACEPOINT_OPEN without a name: attaches an fentry/fexit program to the
    function its attach_btf_id names; returns the link fd (closing it detaches)."""
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, 0, prog_fd)
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)


PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400            # _IO('$', 0)
PERF_EVENT_IOC_SET_BPF = 0x40042408       # _IOW('$', 8, __u32)
_PERF_ATTR_SIZE = 112                     # PERF_ATTR_SIZE_VER5


def perf_event_attach(pmu_type: int, config: int, prog_fd: int, config1: int = 0,
                      config2: int = 0) -> int:
    """perf_event_open(pid=-1, cpu=0) of one trace event (a tracepoint, or a kprobe of
    the kprobe PMU), with the BPF program set and the event enabled, as bcc does: a
    trace event runs its program on every CPU whatever CPU the perf event is on.
    Returns the perf-event fd (closing it detaches)."""
    attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, pmu_type, _PERF_ATTR_SIZE, config, 1)  # sample_period 1
    struct.pack_into("<I", attr, 48, 1)                                       # wakeup_events
    struct.pack_into("<QQ", attr, 56, config1, config2)
    nr = _NR_PERF_EVENT_OPEN[platform.machine()]
    fd = _libc.syscall(ctypes.c_long(nr), attr, ctypes.c_int(-1), ctypes.c_int(0),
                       ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open: {os.strerror(err)}")
    try:
        import fcntl
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def kprobe_attach(symbol: str, prog_fd: int, retprobe: bool = False,
                  pmu_dir: Path = Path("/sys/bus/event_source/devices/kprobe")) -> int:
    """A kprobe (or kretprobe) on ``symbol`` through the kprobe PMU (kernel >= 4.17),
    which leaves nothing behind in tracefs when its fd closes."""
    pmu_type = int((pmu_dir / "type").read_text())
    config = 0
    if retprobe:   # format/retprobe reads "config:<bit>"
        config = 1 << int((pmu_dir / "format/retprobe").read_text().split(":")[1])
    func = ctypes.create_string_buffer(symbol.encode())
    return perf_event_attach(pmu_type, config, prog_fd, ctypes.addressof(func), 0)
