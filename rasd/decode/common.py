"""Small shared helpers for the decoders: GUIDs, enums, flags, BCD timestamps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

_GUID_CACHE: dict[bytes, str] = {}


def guid_str(raw: bytes) -> str:
    """UEFI GUID bytes (first three fields little-endian) as the canonical upper-case string."""
    text = _GUID_CACHE.get(raw)
    if text is None:
        text = str(uuid.UUID(bytes_le=bytes(raw))).upper()
        if len(_GUID_CACHE) < 4096:  # section types repeat; FRU ids may not: stay bounded
            _GUID_CACHE[bytes(raw)] = text
    return text


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


def fixed_text(raw: bytes) -> str:
    """A fixed-size, NUL-padded ASCII field as text (non-ASCII bytes kept as escapes)."""
    return bytes(raw).split(b"\0", 1)[0].decode("ascii", "backslashreplace")


def _bcd(byte: int) -> int | None:
    hi, lo = byte >> 4, byte & 0xF
    return None if hi > 9 or lo > 9 else hi * 10 + lo


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is 3x slower, and this is hot
class Timestamp:
    """The 8-byte CPER/GHES BCD timestamp: sec, min, hour, flags, day, month, year, century."""

    raw: int  # the 8 bytes as a little-endian u64, kept so an invalid stamp loses nothing

    @property
    def precise(self) -> bool:
        return bool(self.raw >> 24 & 1)

    def iso(self) -> str | None:
        """ISO 8601 (no offset: CPER does not say which time zone firmware used)."""
        b = self.raw.to_bytes(8, "little")
        sec, minute, hour, day, month, year, century = (_bcd(b[i]) for i in (0, 1, 2, 4, 5, 6, 7))
        if None in (sec, minute, hour, day, month, year, century):
            return None
        if not (sec < 60 and minute < 60 and hour < 24 and 1 <= day <= 31 and 1 <= month <= 12):
            return None
        return f"{century * 100 + year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{sec:02d}"

    def to_dict(self) -> dict:
        return {"iso": self.iso(), "precise": self.precise, "raw": hex64(self.raw)}

    @classmethod
    def from_fields(cls, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
                    second: int = 0, precise: bool = False) -> "Timestamp":
        def bcd(v: int) -> int:
            return (v // 10) << 4 | v % 10
        parts = [bcd(second), bcd(minute), bcd(hour), int(precise), bcd(day), bcd(month),
                 bcd(year % 100), bcd(year // 100)]
        return cls(int.from_bytes(bytes(parts), "little"))
