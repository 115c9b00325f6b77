"""The few bpf(2) commands the daemon needs, through ctypes (no bcc in the daemon).

BPF_MAP_LOOKUP_ELEM (the per-CPU lost counter), BPF_OBJ_GET_INFO_BY_FD (map
sizes for mmap, per-program run_time_ns/run_cnt for the benchmark).
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct
from dataclasses import dataclass
from pathlib import Path

_NR_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}
BPF_MAP_LOOKUP_ELEM = 1
BPF_OBJ_GET_INFO_BY_FD = 15

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


def map_info(fd: int) -> MapInfo:
    raw = _obj_info(fd, 88)
    mtype, mid, ks, vs, me, _flags = struct.unpack_from("<6I", raw)
    name = raw[24:40].split(b"\0", 1)[0].decode()
    return MapInfo(mtype, mid, ks, vs, me, name)


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
