"""The one exception the decoders raise."""

from __future__ import annotations

from typing import Any

from .common import json_str


class DecodeError(Exception):
    """Input bytes that cannot be decoded, with where and why.

    ``offset`` is the byte offset in the input at which decoding failed,
    ``reason`` says what was wrong, ``partial`` holds whatever decoded before the
    fault (a record with the sections that did decode) and ``raw`` the input bytes,
    so nothing is lost when a record is bad.
    """

    def __init__(self, reason: str, offset: int, partial: Any = None, raw: bytes = b"") -> None:
        super().__init__(f"{reason} (at byte offset {offset})")
        self.reason = reason
        self.offset = offset
        self.partial = partial
        self.raw = raw

    def to_dict(self) -> dict:
        return {"offset": self.offset, "reason": self.reason}

    def to_json(self) -> str:
        """json_text(self.to_dict()), written directly (see rasd.decode.common)."""
        return f'{{"offset":{self.offset},"reason":{json_str(self.reason)}}}'
