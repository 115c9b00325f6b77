"""Turn user-supplied input into bytes: raw binary, hex text or base64, auto-detected."""

from __future__ import annotations

import base64
import binascii
import re

_HEX_NOISE = re.compile(rb"0[xX]|[\s,:;]")
_HEX = re.compile(rb"[0-9a-fA-F]*")
_B64 = re.compile(rb"[A-Za-z0-9+/=_-]*")
_WS = re.compile(rb"\s")
# a 0x-prefixed value with an odd number of digits ("0x1, 0x2"): not bytes, do not merge
_ODD_PREFIXED = re.compile(rb"0[xX](?:[0-9a-fA-F]{2})*[0-9a-fA-F](?![0-9a-fA-F])")


def _is_text(data: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in data[:4096])


def to_bytes(data: bytes) -> tuple[bytes, str]:
    """Return (bytes, format) where format is "binary", "hex" or "base64".

    Text that is only hex digits (after dropping whitespace, commas, colons and 0x
    prefixes) is hex; text in the base64 alphabet is base64; anything else, and any
    input with non-text bytes, is binary. A CPER record starts with the text "CPER"
    but continues in binary, so it stays binary.
    """
    if not data or not _is_text(data):
        return data, "binary"
    digits = _HEX_NOISE.sub(b"", data)
    if digits and _HEX.fullmatch(digits):
        if len(digits) % 2:
            raise ValueError("hex input has an odd number of digits")
        odd = _ODD_PREFIXED.search(data)
        if odd:
            raise ValueError(f"hex value {odd.group().decode()!r} has an odd number of digits")
        return binascii.unhexlify(digits), "hex"
    compact = _WS.sub(b"", data)
    if compact and _B64.fullmatch(compact):
        try:
            return base64.b64decode(compact + b"=" * (-len(compact) % 4),
                                    altchars=b"-_" if b"-" in compact or b"_" in compact else None,
                                    validate=True), "base64"
        except binascii.Error as exc:
            raise ValueError(f"input looks like base64 but is not: {exc}") from None
    return data, "binary"
