"""Small shared helpers for the decoders: GUIDs, enums, flags, BCD timestamps."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable


class _GuidText(dict):
    """UEFI GUID bytes -> canonical text, memoized: ``GUID_TEXT[raw]`` costs one subscript
    in the decoders' hot paths. Section types repeat; FRU ids may not: stay bounded."""

    def __missing__(self, raw: bytes) -> str:
        text = str(uuid.UUID(bytes_le=bytes(raw))).upper()
        if len(self) < 4096:
            self[bytes(raw)] = text
        return text


GUID_TEXT = _GuidText()


def guid_str(raw: bytes) -> str:
    """UEFI GUID bytes (first three fields little-endian) as the canonical upper-case string."""
    return GUID_TEXT[raw]


def guid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


NULL_GUID = "00000000-0000-0000-0000-000000000000"


def enum(value: int, names: dict[int, str]) -> dict:
    """The JSON form of an enumerated field: its value and its name."""
    return {"value": value, "name": names.get(value, "unknown")}


def flag_names(value: int, names: dict[int, str]) -> list[str]:
    """Names of the set bits of ``value``; unnamed bits appear as ``bit<N>``."""
    if value == 1 and 1 in names:  # the common case: a lone "primary" section flag
        return [names[1]]
    return [names.get(1 << bit, f"bit{bit}") for bit in range(value.bit_length()) if value >> bit & 1]


def flags(value: int, names: dict[int, str]) -> dict:
    """The JSON form of a bit-flag field: its value and the names of the set bits."""
    return {"value": value, "names": flag_names(value, names)}


# 64-bit quantities are hex strings in JSON ("0x1f"): many JSON readers hold numbers as
# doubles and would round addresses. The builtin is the fastest way to that form.
hex64 = hex


# --- JSON text ------------------------------------------------------------------------------
# `rasdctl decode --json` (and bench/decode.py) write decoded records straight to JSON text
# with the to_json() methods that sit beside each to_dict(), instead of building dicts for
# json to walk: that was two thirds of the time per record. The text must stay byte for
# byte json_text(obj.to_dict()); tests/unit/test_cper_json_identity.py pins it. Integers
# go in with f-strings (str(int) is what json writes for an int), strings through json_str.

json_text = json.JSONEncoder(separators=(",", ":")).encode  # the reference form
json_str = json.encoder.encode_basestring_ascii  # what json_text writes for a str


class Memo(dict):
    """``memo[key]`` is ``make(key)``, made once per key.

    A dict, so that a hit costs one subscript and no Python call. Keys come from untrusted
    input, so at most ``limit`` are kept; later ones are made each time.
    """

    def __init__(self, make: Callable[[Any], Any], limit: int = 1024) -> None:
        super().__init__()
        self.make = make
        self.limit = limit

    def __missing__(self, key: Any) -> Any:
        value = self.make(key)
        if len(self) < self.limit:
            self[key] = value
        return value


class JsonMemo(Memo):
    """The JSON text of ``form(key)``, memoized per key: ``memo[key]``.

    Enumerations, flag sets, GUID/name pairs: a handful of values fill most records, so
    their text is made once, by json_text itself (equal to the dict form by construction).
    """

    def __init__(self, form: Callable[[Any], Any], limit: int = 1024) -> None:
        super().__init__(lambda key: json_text(form(key)), limit)


def enum_json(names: dict[int, str]) -> JsonMemo:
    """Memoized JSON text of enum(value, names)."""
    return JsonMemo(lambda value: enum(value, names))


def flags_json(names: dict[int, str]) -> JsonMemo:
    """Memoized JSON text of flags(value, names)."""
    return JsonMemo(lambda value: flags(value, names))


def fixed_text(raw: bytes) -> str:
    """A fixed-size, NUL-padded ASCII field as text (non-ASCII bytes kept as escapes)."""
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "backslashreplace")


def _bcd(byte: int) -> int | None:
    hi, lo = byte >> 4, byte & 0xF
    return None if hi > 9 or lo > 9 else hi * 10 + lo


def _iso_date(raw: int) -> str | None:
    """Day, month, year, century (BCD bytes, low first) as YYYY-MM-DD, None when invalid."""
    day, month, year, century = (_bcd(raw >> shift & 0xFF) for shift in (0, 8, 16, 24))
    if None in (day, month, year, century) or not (1 <= day <= 31 and 1 <= month <= 12):
        return None
    return f"{century * 100 + year:04d}-{month:02d}-{day:02d}"


def _iso_time(raw: int) -> str | None:
    """Second, minute, hour (BCD bytes, low first) as HH:MM:SS, None when invalid."""
    sec, minute, hour = (_bcd(raw >> shift & 0xFF) for shift in (0, 8, 16))
    if None in (sec, minute, hour) or not (sec < 60 and minute < 60 and hour < 24):
        return None
    return f"{hour:02d}:{minute:02d}:{sec:02d}"


# Records come in storms: they share a date, and times repeat (the text is made once)
_ISO_DATES = Memo(_iso_date, limit=4096)
_ISO_TIMES = Memo(_iso_time, limit=4096)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is 3x slower, and this is hot
class Timestamp:
    """The 8-byte CPER/GHES BCD timestamp: sec, min, hour, flags, day, month, year, century."""

    raw: int  # the 8 bytes as a little-endian u64, kept so an invalid stamp loses nothing

    @property
    def precise(self) -> bool:
        return bool(self.raw >> 24 & 1)

    def iso(self) -> str | None:
        """ISO 8601 (no offset: CPER does not say which time zone firmware used)."""
        date, time = _ISO_DATES[self.raw >> 32], _ISO_TIMES[self.raw & 0xFFFFFF]
        return None if date is None or time is None else f"{date}T{time}"

    def to_dict(self) -> dict:
        return {"iso": self.iso(), "precise": self.precise, "raw": hex64(self.raw)}

    def to_json(self) -> str:
        iso = self.iso()
        iso_text = "null" if iso is None else f'"{iso}"'
        precise = "true" if self.raw >> 24 & 1 else "false"
        return f'{{"iso":{iso_text},"precise":{precise},"raw":"{hex64(self.raw)}"}}'

    @classmethod
    def from_fields(cls, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
                    second: int = 0, precise: bool = False) -> "Timestamp":
        def bcd(v: int) -> int:
            return (v // 10) << 4 | v % 10
        parts = [bcd(second), bcd(minute), bcd(hour), int(precise), bcd(day), bcd(month),
                 bcd(year % 100), bcd(year // 100)]
        return cls(int.from_bytes(bytes(parts), "little"))
