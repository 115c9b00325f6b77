"""Minimal reader of kernel BTF (/sys/kernel/btf/vmlinux): struct member offsets
and the set of BTF functions. Used by the loader child, so the BPF programs read
kernel-internal structs (kvm_vcpu) at the running kernel's offsets instead of
the build headers' (which may belong to another kernel version)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

BTF_MAGIC = 0xEB9F
K_INT, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
K_VOLATILE, K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC = 9, 10, 11, 12, 13, 14, 15
K_FLOAT, K_DECL_TAG, K_TYPE_TAG, K_ENUM64 = 16, 17, 18, 19
_INDEXED = frozenset((K_STRUCT, K_FUNC))  # the kinds looked up by name
_MODIFIERS = (K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT, K_TYPE_TAG)
# bytes after the 12-byte common header: fixed part, per-vlen part
_TRAILER = {K_INT: (4, 0), K_ARRAY: (12, 0), K_STRUCT: (0, 12), K_UNION: (0, 12),
            K_ENUM: (0, 8), K_FUNC_PROTO: (0, 8), K_VAR: (4, 0), K_DATASEC: (0, 12),
            K_DECL_TAG: (4, 0), K_ENUM64: (0, 12)}


@dataclass(frozen=True)
class Member:
    offset: int  # bytes from the start of the outermost struct
    size: int  # bytes (0 when unknown)


class Btf:
    def __init__(self, data: bytes):
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise ValueError("not BTF data")
        self._data = data
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        # One pass: type id -> byte offset of its record (id 0 is void), and the
        # named structs and functions by (kind, name offset). Lookups then cost a
        # string search in C, not a scan decoding every name: under TCG emulation
        # (the arm64 lab) the scans took ~10 s of the daemon's start.
        self._pos: list[int] = [0]
        self._named: dict[tuple[int, int], int] = {}
        header = struct.Struct("<II").unpack_from
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        append, named, trailer = self._pos.append, self._named, _TRAILER
        while pos < end:
            append(pos)
            name_off, info = header(data, pos)
            kind = (info >> 24) & 0x1F
            if kind in _INDEXED and name_off:
                named.setdefault((kind, name_off), len(self._pos) - 1)
            fixed, per = trailer.get(kind, (0, 0))
            pos += 12 + fixed + per * (info & 0xFFFF)

    @classmethod
    def from_file(cls, path: str | Path = "/sys/kernel/btf/vmlinux") -> "Btf":
        return cls(Path(path).read_bytes())

    def _str(self, off: int) -> str:
        end = self._data.index(b"\0", self._strs + off)
        return self._data[self._strs + off:end].decode()

    def _type(self, tid: int) -> tuple[str, int, int, int, int, int]:
        """(name, kind, vlen, kflag, size_or_type, record offset)"""
        pos = self._pos[tid]
        name_off, info, st = struct.unpack_from("<III", self._data, pos)
        return (self._str(name_off), (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, st, pos)

    def _name_offsets(self, name: str):
        """Offsets of ``name`` in the string section (every string is NUL-preceded:
        the section starts with the empty string). Normally one: strings are deduplicated."""
        needle = b"\0" + name.encode() + b"\0"
        at = self._data.find(needle, self._strs, self._str_end)
        while at >= 0:
            yield at + 1 - self._strs
            at = self._data.find(needle, at + 1, self._str_end)

    def find(self, name: str, kind: int) -> int | None:
        if kind in _INDEXED:
            hits = (self._named.get((kind, off)) for off in self._name_offsets(name))
            return next((tid for tid in hits if tid is not None), None)
        for tid in range(1, len(self._pos)):
            t = self._type(tid)
            if t[1] == kind and t[0] == name:
                return tid
        return None

    def has_function(self, name: str) -> bool:
        return self.find(name, K_FUNC) is not None

    def func_param_sizes(self, name: str) -> list[int] | None:
        """Byte sizes of a BTF function's parameters, or None if not a BTF function."""
        tid = self.find(name, K_FUNC)
        if tid is None:
            return None
        proto = self._type(tid)[4]
        _n, kind, vlen, _k, _st, pos = self._type(proto)
        if kind != K_FUNC_PROTO:
            return None
        return [self.sizeof(struct.unpack_from("<II", self._data, pos + 12 + 8 * i)[1])
                for i in range(vlen)]

    def _strip(self, tid: int) -> int:
        while tid and self._type(tid)[1] in _MODIFIERS:
            tid = self._type(tid)[4]
        return tid

    def sizeof(self, tid: int) -> int:
        tid = self._strip(tid)
        if not tid:
            return 0
        _n, kind, _v, _k, st, pos = self._type(tid)
        if kind in (K_INT, K_STRUCT, K_UNION, K_ENUM, K_ENUM64, K_FLOAT):
            return st
        if kind == K_PTR:
            return 8
        if kind == K_ARRAY:
            elem, _idx, nelems = struct.unpack_from("<III", self._data, pos + 12)
            return self.sizeof(elem) * nelems
        return 0

    def _members(self, tid: int):
        _n, _kind, vlen, kflag, _st, pos = self._type(tid)
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
            bits = off & 0xFFFFFF if kflag else off
            yield self._str(name_off), mtype, bits // 8

    def _member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(byte offset, type id) of `name`, looking through anonymous struct/unions."""
        for mname, mtype, off in self._members(tid):
            if mname == name:
                return off, mtype
            inner = self._strip(mtype)
            if not mname and self._type(inner)[1] in (K_STRUCT, K_UNION):
                hit = self._member(inner, name)
                if hit:
                    return off + hit[0], hit[1]
        return None

    def member(self, struct_name: str, path: str) -> Member | None:
        """Offset and size of e.g. member("kvm_vcpu", "arch.fault.esr_el2")."""
        tid = self.find(struct_name, K_STRUCT)
        if tid is None:
            return None
        offset = 0
        for part in path.split("."):
            tid = self._strip(tid)
            if self._type(tid)[1] not in (K_STRUCT, K_UNION):
                return None
            hit = self._member(tid, part)
            if hit is None:
                return None
            offset += hit[0]
            tid = hit[1]
        return Member(offset, self.sizeof(tid))
