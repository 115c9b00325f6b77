"""Tracefs event formats: parse ``events/<sys>/<event>/format`` and decode raw entries.

The BPF tracepoint programs ship the raw trace entry; this module turns it into a
dict using the running kernel's own format, so field changes between kernels
(e.g. ``ras:arm_event`` gaining ``pei_len``/``pei_buf``) need no code change.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);"
)


@dataclass(frozen=True)
class Field:
    name: str
    decl: str  # C declaration as tracefs prints it, e.g. "__data_loc u8[] pei_buf"
    offset: int
    size: int
    signed: bool

    @property
    def is_data_loc(self) -> bool:
        return self.decl.startswith("__data_loc")

    @property
    def is_rel_loc(self) -> bool:
        return self.decl.startswith("__rel_loc")

    @property
    def array_len(self) -> int | None:
        m = re.search(r"\[(\d+)\]\s*$", self.decl)
        return int(m.group(1)) if m else None


@dataclass
class EventFormat:
    system: str
    name: str
    id: int | None
    fields: list[Field] = field(default_factory=list)
    print_fmt: str = ""

    @property
    def key(self) -> str:
        return f"{self.system}:{self.name}"

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def has_field(self, name: str) -> bool:
        return self.field(name) is not None

    @property
    def fixed_size(self) -> int:
        """End of the last fixed-size field: dynamic payloads start at or after it."""
        return max((f.offset + f.size for f in self.fields), default=0)

    @property
    def data_loc_offsets(self) -> list[int]:
        return [f.offset for f in self.fields if f.is_data_loc]

    def decode(self, raw: bytes) -> dict[str, object]:
        """Decode a raw trace entry; common_* fields are skipped. __data_loc char[]
        gives str, other __data_loc arrays bytes, fixed char[N] bytes, fixed
        integer arrays lists, integers int; fields past a truncated entry None."""
        out: dict[str, object] = {}
        for f in self.fields:
            if f.name.startswith("common_"):
                continue
            out[f.name] = _decode_field(f, raw)
        return out


def _decl_name(decl: str) -> str:
    name = decl.strip().split()[-1]
    return name.split("[", 1)[0]


def parse_format(text: str, system: str = "", name: str = "") -> EventFormat:
    """Parse a tracefs ``format`` file."""
    ev_id: int | None = None
    fields: list[Field] = []
    print_fmt = ""
    for line in text.splitlines():
        if line.startswith("name:") and not name:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("ID:"):
            ev_id = int(line.split(":", 1)[1])
        elif line.startswith("print fmt:"):
            print_fmt = line.split(":", 1)[1].strip()
        else:
            m = _FIELD_RE.match(line)
            if m:
                decl = m.group("decl").strip()
                fields.append(Field(_decl_name(decl), decl, int(m.group("off")),
                                    int(m.group("size")), m.group("signed") == "1"))
    return EventFormat(system, name, ev_id, fields, print_fmt)


def _decode_field(f: Field, raw: bytes) -> object:
    if f.offset + f.size > len(raw):
        return None  # truncated entry
    if f.is_data_loc or f.is_rel_loc:
        (loc,) = struct.unpack_from("<I", raw, f.offset)
        start, length = loc & 0xFFFF, loc >> 16
        if f.is_rel_loc:
            start += f.offset + f.size
        data = raw[start:start + length]
        return _cstr(data) if "char" in f.decl else bytes(data)
    data = raw[f.offset:f.offset + f.size]
    if f.array_len is not None:
        # fixed char[N] stays bytes: the ras events keep raw GUIDs in them (sec_type, fru_id)
        elem = f.size // f.array_len
        if elem in (1, 2, 4, 8) and "char" not in f.decl:
            fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[elem]
            return list(struct.unpack_from(f"<{f.array_len}{fmt}", data))
        return bytes(data)
    if f.size in (1, 2, 4, 8):
        fmt = {1: "b", 2: "h", 4: "i", 8: "q"}[f.size]
        return struct.unpack_from("<" + (fmt if f.signed else fmt.upper()), data)[0]
    return bytes(data)


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def find_tracefs() -> Path | None:
    """The mounted tracefs, or None. rasd never mounts or relies on debugfs itself;
    the debugfs path is only used when something else already mounted it."""
    for p in TRACEFS_MOUNTS:
        if (p / "events").is_dir():
            return p
    return None
