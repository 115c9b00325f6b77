"""Plain-text tables and times for rasdctl's store queries.

Shell-friendly on purpose: no colour, no terminal-width guessing, the same columns
in the same order whatever the data (an empty cell is "-"), one record per line,
cells never contain a line break. Times are UTC, ISO 8601 with milliseconds.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """Wall time in ns from ISO 8601 (naive means UTC), ``@EPOCH_SECONDS``, ``now`` or a
    relative age: ``90s``, ``30m``, ``1h``, ``2d``, ``1w`` (that long before now)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return now_ns - int(float(m.group(1)) * _UNIT_S[m.group(2)] * 10**9)
    if text == "now":
        return now_ns
    if text.startswith("@"):
        return int(float(text[1:]) * 10**9)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO 8601 like 2026-11-25T04:00:00Z, "
                         "@EPOCH, or an age like 30m, 1h, 2d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def fmt_time(ns: int | None) -> str:
    if ns is None:
        return "-"
    dt = datetime.fromtimestamp(ns // 10**9, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9 // 10**6:03d}Z"


def cell(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) \
        else str(value)
    return text.replace("\n", " ").replace("\t", " ")


def hex_or_dash(value: int | None) -> str:
    return "-" if value is None else f"{value:#x}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns separated by two spaces, left-aligned; the last column is not padded
    (it holds free text: a reason, a summary)."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in [list(headers)] + cells:
        padded = [text.ljust(widths[i]) for i, text in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"
