"""Replay: recorded source records (JSON lines) fed through the same pipeline as the kernel's.

Format, one JSON object per line:
- an optional first line ``{"rasd_replay": 1, "formats": {"ras:arm_event": "<tracefs format
  text>", ...}, "wall_offset_ns": N, "kernel": "..."}``: what the recording machine's
  kernel said, so tracepoint entries decode as they did there (post-mortem elsewhere);
- then records exactly as the BPF side emitted them (``sources.records.Record.to_json``):
  kind, probe, probe_id, cpu, tgid, tid, comm, ktime_ns, flags, fields, blob (hex;
  the raw CPER status block or trace entry).
``rasd --record PATH`` writes this format; ``rasd --replay PATH`` reads it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import IO, Iterator

from .records import Record
from .tracefs import EventFormat, parse_format

REPLAY_VERSION = 1


class ReplayError(ValueError):
    """A replay line that is not a record (the line number is in the message)."""


def record_from_json(d: dict) -> Record:
    try:
        return Record(d["kind"], d["probe"], int(d.get("probe_id", 0)), frozenset(d.get("flags", ())),
                      int(d.get("cpu", 0)), int(d.get("tgid", 0)), int(d.get("tid", 0)),
                      str(d.get("comm", "")), int(d["ktime_ns"]), dict(d.get("fields", {})),
                      bytes.fromhex(d.get("blob", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ReplayError(f"not a source record: {exc}") from None


class ReplayFile:
    """Iterate the records of a replay file; ``formats`` and ``wall_offset_ns`` come from
    its header line when it has one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.formats: dict[str, EventFormat] = {}
        self.wall_offset_ns: int | None = None
        self.errors: list[str] = []

    def records(self) -> Iterator[Record]:
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    if lineno == 1 and "rasd_replay" in d:
                        self._header(d)
                        continue
                    yield record_from_json(d)
                except (ValueError, ReplayError) as exc:
                    # a bad line is counted and skipped: one torn write must not stop a replay
                    self.errors.append(f"{self.path}:{lineno}: {exc}")

    def _header(self, d: dict) -> None:
        for key, text in d.get("formats", {}).items():
            system, _, name = key.partition(":")
            self.formats[key] = parse_format(text, system, name)
        self.wall_offset_ns = d.get("wall_offset_ns")


class RecordWriter:
    """Append source records to a replay file (header first when the file is new)."""

    def __init__(self, path: str | Path, formats: dict[str, str], wall_offset_ns: int) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file: IO[str] = open(self.path, "a", encoding="utf-8")
        if new:
            self.file.write(json.dumps({"rasd_replay": REPLAY_VERSION, "formats": formats,
                                        "wall_offset_ns": wall_offset_ns,
                                        "kernel": platform.release()}) + "\n")

    def write(self, rec: Record) -> None:
        self.file.write(json.dumps(rec.to_json()) + "\n")

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def encode_trace_entry(fmt: EventFormat, values: dict, common_type: int | None = None) -> bytes:
    """A raw trace entry laid out as the kernel would for ``fmt`` (the inverse of
    ``EventFormat.decode``): fixed fields at their offsets, ``__data_loc`` arrays
    appended with (length << 16 | offset) locators. For synthetic recordings, tests
    and benchmarks."""
    import struct
    fixed = bytearray(fmt.fixed_size)
    tail = bytearray()
    values = {"common_type": fmt.id if common_type is None else common_type, **values}
    for f in fmt.fields:
        if f.name not in values:
            continue
        value = values[f.name]
        if f.is_data_loc:
            data = value.encode() + b"\0" if isinstance(value, str) else bytes(value)
            loc = len(data) << 16 | (len(fixed) + len(tail))
            struct.pack_into("<I", fixed, f.offset, loc)
            tail += data
        elif isinstance(value, (bytes, bytearray, str)):
            data = value.encode() if isinstance(value, str) else bytes(value)
            fixed[f.offset:f.offset + f.size] = data[:f.size].ljust(f.size, b"\0")
        else:
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[f.size]
            struct.pack_into("<" + (code if f.signed else code.upper()), fixed, f.offset, value)
    return bytes(fixed + tail)
