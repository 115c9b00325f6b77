"""Input format detection for rasdctl decode: binary, hex text, base64 (rasd.decode.inputs)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rasd.decode.cper import decode
from rasd.decode.inputs import to_bytes
from vectors import handbuilt as H

BLOCK = H.status_block_memory()
RECORD = H.cper_record()


def test_binary_status_block_stays_binary():
    assert to_bytes(BLOCK) == (BLOCK, "binary")


def test_binary_cper_record_starting_with_cper_stays_binary():
    assert RECORD.startswith(b"CPER")
    assert to_bytes(RECORD) == (RECORD, "binary")
    assert decode(to_bytes(RECORD)[0]).framing == "cper_record"


def test_empty_input_is_binary():
    assert to_bytes(b"") == (b"", "binary")


@pytest.mark.parametrize("text", [
    BLOCK.hex(),
    BLOCK.hex().upper(),
    BLOCK.hex() + "\n",
    "\n".join(BLOCK.hex()[i:i + 60] for i in range(0, len(BLOCK) * 2, 60)) + "\n",  # xxd -p
    " ".join(f"{b:02x}" for b in BLOCK),
    "\t".join(f"{b:02X}" for b in BLOCK) + "\r\n",
    ", ".join(f"0x{b:02x}" for b in BLOCK),  # C array body
    ",\n".join(f"0X{b:02X}" for b in BLOCK),
    ":".join(f"{b:02x}" for b in BLOCK),
    "0x" + BLOCK.hex(),
], ids=["plain", "upper", "newline", "xxd-p", "spaces", "tabs-crlf", "0x-commas",
        "0X-comma-newline", "colons", "one-0x-prefix"])
def test_hex_forms(text):
    assert to_bytes(text.encode()) == (BLOCK, "hex")


@pytest.mark.parametrize("text", ["abc", "0x1", "de ad b", "0x1, 0x2", "0x123,0x45"])
def test_odd_hex_digits_are_an_error(text):
    # "0x1, 0x2" must not become the single byte 0x12
    with pytest.raises(ValueError, match="odd"):
        to_bytes(text.encode())


@pytest.mark.parametrize("text", [
    base64.b64encode(BLOCK),
    base64.b64encode(BLOCK) + b"\n",
    base64.encodebytes(BLOCK),  # 76-column lines, like `base64`
    b"\n".join(base64.b64encode(RECORD)[i:i + 64] for i in range(0, 2000, 64)),
    base64.urlsafe_b64encode(BLOCK),
    base64.b64encode(BLOCK).rstrip(b"="),  # padding dropped
], ids=["plain", "newline", "mime-lines", "record-64-lines", "urlsafe", "unpadded"])
def test_base64_forms(text):
    expected = RECORD if text.startswith(base64.b64encode(RECORD)[:8]) else BLOCK
    assert to_bytes(text) == (expected, "base64")


def test_bad_base64_is_an_error():
    with pytest.raises(ValueError, match="base64"):
        to_bytes(b"QUJD" + b"Q")  # 5 characters: one left over


def test_non_text_after_text_prefix_is_binary():
    data = b"CPER" + bytes([0x01, 0x01, 0xFF, 0xFF])
    assert to_bytes(data) == (data, "binary")
    assert to_bytes(b"deadbeef\x00") == (b"deadbeef\x00", "binary")


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.binary(min_size=1, max_size=300).filter(lambda b: any(c > 0x7F or c < 9 for c in b)))
def test_any_binary_with_non_text_bytes_is_kept(data):
    assert to_bytes(data) == (data, "binary")


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.sampled_from(["", " ", "\n", ", ", ":"]))
def test_any_bytes_as_hex_round_trip(data, sep):
    text = sep.join(f"{b:02x}" for b in data).encode()
    assert to_bytes(text) == (data, "hex")


# base64 that uses only hex-digit characters: 'B' then 'A's sets block_status = 4, 'a' at
# char 16 sets data_length = 104, and 168 chars decode to 126 bytes: a plausible status block.
HEXLIKE_B64 = "B" + "A" * 15 + "a" + "A" * 151


def test_base64_made_of_hex_digits_reads_as_the_cper_it_encodes():
    blob, fmt = to_bytes(HEXLIKE_B64.encode())
    assert fmt == "base64" and blob == base64.b64decode(HEXLIKE_B64)
    assert int.from_bytes(blob[:4], "little") == 4 and int.from_bytes(blob[12:16], "little") == 104
    # read as hex it would be block_status 0xaaaaaaba with an absurd data_length: not CPER
    assert to_bytes(HEXLIKE_B64.encode(), "hex")[1] == "hex"


def test_real_hex_stays_hex_even_when_it_is_also_base64():
    block = BLOCK + b"\0" * (len(BLOCK) % 2)  # trailing padding: GHES buffers have it
    text = block.hex().encode()
    assert len(text) % 4 == 0  # a valid base64 length too
    assert to_bytes(text) == (block, "hex")


def test_forced_formats():
    assert to_bytes(BLOCK.hex().encode(), "base64")[1] == "base64"
    assert to_bytes(b"QUJD", "binary") == (b"QUJD", "binary")
    with pytest.raises(ValueError, match="not hex"):
        to_bytes(b"QUJD", "hex")
