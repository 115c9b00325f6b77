"""The JSON fast path writes exactly what json of to_dict() writes, byte for byte.

``rasdctl decode --json`` and bench/decode.py write records with the to_json() methods
(rasd.decode.common explains why); the daemon and the store keep using to_dict(). The
two forms are written separately, so this pins them together on a generated corpus:
every section kind with varying field values, both framings, and thousands of damaged
inputs (truncated, bit-flipped, overwritten, absurd lengths, random bytes), under every
option that changes the text (--raw, --arm-type).
"""

from __future__ import annotations

import random
import struct

import pytest

from rasd.cli.rasdctl import DecodeOptions, record_json_line, render_bert, render_input
from rasd.decode.common import JsonMemo, Timestamp, json_text
from rasd.decode.cper import decode_all
from rasd.decode.cper.sections.arm import CONTEXT_REGISTERS, ERR_INFO, ArmContext, ArmErrorInfo
from rasd.encode import cper as enc
from test_cper_fuzz import CORPUS, length_fields
from vectors import handbuilt as H

READINGS = ("auto", "enum", "bitmask")


def varied_records(rnd: random.Random, n: int) -> list[bytes]:
    """Valid records of every kind with random field values and validation bits."""
    out = []
    for i in range(n):
        sections = [_varied_section(rnd) for _ in range(rnd.choice((1, 1, 2, 3)))]
        if i % 2:
            notification = rnd.choice(("cmc", "sea", "12345678-1234-5678-1234-567812345678"))
            out.append(enc.encode_cper_record(sections, record_id=rnd.getrandbits(64),
                                              notification=notification))
        else:
            out.append(enc.encode_status_block(sections, raw_data=rnd.choice((b"", b"rd"))))
    return out


def _varied_section(rnd: random.Random):
    kind = rnd.randrange(6)
    if kind == 0:
        fields = dict(physical_addr=rnd.getrandbits(48), node=rnd.randrange(4),
                      module=rnd.randrange(16), bank_group=rnd.randrange(4),
                      row=rnd.getrandbits(18), error_type=rnd.randrange(20),
                      error_status=rnd.getrandbits(16), mem_dev_handle=rnd.randrange(64))
        fields = {k: v for k, v in fields.items() if rnd.random() < 0.7}
        body = enc.memory_error(rnd.choice(("mem1", "mem2")), **fields)
    elif kind == 1:
        infos = [enc.arm_error_info(rnd.choice((0, 1, 2, 3, 4, 8, 0x10, 0x06, 0xFF)),
                                    error_info=rnd.getrandbits(64) if rnd.random() < 0.5
                                    else rnd.getrandbits(12) | rnd.getrandbits(44) << 16,
                                    flags=rnd.randrange(32), multiple_error=rnd.randrange(3),
                                    virt_fault_addr=rnd.getrandbits(48))
                 for _ in range(rnd.randrange(4))]
        ctxs = [enc.arm_context(t, [rnd.getrandbits(8 * CONTEXT_REGISTERS[t][0])
                                    for _ in range(len(CONTEXT_REGISTERS[t][1]))])
                for t in rnd.sample(sorted(CONTEXT_REGISTERS), rnd.randrange(3))]
        body = enc.arm_processor(infos, ctxs, mpidr=rnd.getrandbits(40), midr=rnd.getrandbits(32),
                                 running_state=rnd.choice((None, 1)), vendor=rnd.randbytes(3),
                                 context_stride=rnd.choice(("packed", "aligned16")))
    elif kind == 2:
        body = enc.pcie(port_type=rnd.randrange(12), version=(1, rnd.randrange(3)),
                        command=rnd.getrandbits(16), serial_number=rnd.getrandbits(64),
                        device=dict(bus=rnd.randrange(256), device=rnd.randrange(32),
                                    function=rnd.randrange(8), vendor_id=rnd.getrandbits(16)),
                        aer=dict(uncor_status=rnd.getrandbits(32), cor_status=rnd.getrandbits(16),
                                 header_log=tuple(rnd.getrandbits(32) for _ in range(4))))
    elif kind == 3:
        body = enc.GenericProcessorSection(rnd.getrandbits(13), proc_type=rnd.randrange(4),
                                           ip=rnd.getrandbits(64))
    elif kind == 4:
        body = enc.FirmwareErrorRecordRef(record_type=rnd.randrange(4))
    else:
        return enc.raw_section("12345678-1234-5678-1234-567812345678", rnd.randbytes(20))
    stamp = Timestamp(rnd.getrandbits(64)) if rnd.random() < 0.3 else \
        Timestamp.from_fields(2026, 1, 2, 3, 4, rnd.randrange(60), rnd.random() < 0.5)
    return enc.section(body, rnd.randrange(5), flags=rnd.randrange(256),
                       fru_text=rnd.choice((None, "DIMM_A1", 'q"\\\x01\x7f')),
                       fru_id=rnd.choice((None, "12345678-9ABC-DEF0-0123-456789ABCDEF")),
                       timestamp=stamp if rnd.random() < 0.7 else None)


def damaged(rnd: random.Random, valid: list[bytes], n: int) -> list[bytes]:
    """Truncated, overwritten, bit-flipped and length-patched copies, and random bytes."""
    fields = [(d, length_fields(d)) for d in CORPUS]
    out = []
    for i in range(n):
        data = bytearray(rnd.choice(valid))
        how = i % 5
        if how == 0:
            del data[rnd.randrange(len(data) + 1):]
        elif how == 1:
            for _ in range(rnd.randint(1, 8)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif how == 2:
            for _ in range(rnd.randint(1, 16)):
                bit = rnd.randrange(len(data) * 8)
                data[bit // 8] ^= 1 << bit % 8
        elif how == 3:
            data, where = rnd.choice(fields)
            data = bytearray(data)
            offset, fmt = rnd.choice(where)
            struct.pack_into(fmt, data, offset, rnd.choice((0, 1, 8, 31, 64, 0xFFFF))
                             & (1 << 8 * struct.calcsize(fmt)) - 1)
        else:
            data = bytearray(rnd.choice((b"", b"CPER\x01\x01\xff\xff\xff\xff"))
                             + rnd.randbytes(rnd.choice((19, 20, 64, 200, 1000))))
        out.append(bytes(data))
    return out


def corpus() -> list[bytes]:
    rnd = random.Random(2026)
    valid = varied_records(rnd, 300) + list(CORPUS)
    valid += [H.status_block_memory(), H.status_block_misc(), H.cper_record(),
              H.status_block_arm(False), H.status_block_arm(True)]
    return valid + damaged(rnd, valid, 1500)


CORPUS_ALL = corpus()


def set_reading(rec, reading: str) -> None:
    for sec in rec.sections:
        if hasattr(sec.body, "type_reading"):
            sec.body.type_reading = reading


def test_corpus_has_what_it_claims():
    records = [r for data in CORPUS_ALL for r in decode_all(data)]
    kinds = {s.body.KIND for r in records for s in r.sections if s.body is not None}
    assert kinds == {"memory", "arm_processor", "pcie", "generic_processor",
                     "firmware_error_record_reference", "non_standard"}
    assert sum(r.error is not None for r in records) > 500
    assert any(s.body is None for r in records for s in r.sections)  # bodies that failed
    assert any(s.error is not None and s.body is not None for r in records for s in r.sections)


@pytest.mark.parametrize("reading", READINGS)
def test_record_to_json_is_json_of_to_dict(reading):
    checked = 0
    for data in CORPUS_ALL:
        for rec in decode_all(data):
            set_reading(rec, reading)
            for raw in (False, True):
                assert rec.to_json(include_raw=raw) == json_text(rec.to_dict(include_raw=raw))
                checked += 1
    assert checked > 3000


def test_rasdctl_lines_are_json_of_to_dict_with_source_and_index():
    opts = DecodeOptions(json=True, raw=False, arm_type="enum")
    for i, data in enumerate(CORPUS_ALL[::7]):
        name = f"in\u00e9 {i}\udcff\".bin"  # non-ASCII, a lone surrogate (undecodable), a quote
        res = render_input((name, data, opts))
        want = []
        for index, rec in enumerate(decode_all(data)):
            set_reading(rec, "enum")
            want.append(json_text({"source": name, "index": index, **rec.to_dict()}) + "\n")
        if want:  # (an empty input gives an input-error line instead)
            assert res.out == "".join(want)
    rec = decode_all(H.status_block_memory())[0]
    assert record_json_line("BERT x", 3, rec, True, consumed=True) == json_text(
        {"source": "BERT x", "index": 3, **rec.to_dict(include_raw=True),
         "consumed_by_kernel": True}) + "\n"


def test_bert_lines(tmp_path):
    region = bytes(4) + H.status_block_memory()[4:] + H.status_block_arm() + bytes(64)
    res = render_bert(str(_region_file(tmp_path, region)), DecodeOptions(True, False, "auto"))
    lines = res.out.splitlines()
    records = decode_all(region)
    assert len(lines) == len(records) == 2
    for index, (line, rec) in enumerate(zip(lines, records)):
        d = {"source": f"BERT {tmp_path / 'region'}", "index": index, **rec.to_dict()}
        if rec.empty:
            d["consumed_by_kernel"] = True
        assert line == json_text(d)


def _region_file(tmp_path, region: bytes):
    path = tmp_path / "region"
    path.write_bytes(region)
    return path


def test_timestamps_any_bytes():
    rnd = random.Random(5)
    bcd = [v // 10 << 4 | v % 10 for v in range(100)]
    for _ in range(5000):
        raw = int.from_bytes(bytes(rnd.choice(bcd + [rnd.randrange(256), 0x60, 0x24, 0x32, 0x13, 0])
                                   for _ in range(8)), "little")
        stamp = Timestamp(raw)
        assert stamp.to_json() == json_text(stamp.to_dict())


def test_arm_error_info_and_contexts_any_bytes():
    rnd = random.Random(6)
    for _ in range(3000):
        info = ArmErrorInfo(*ERR_INFO.unpack(rnd.randbytes(32)))
        for reading in READINGS:
            assert info.to_json(reading) == json_text(info.to_dict(reading))
    for ctype in list(range(10)) + [0xFFFF]:
        for size in (0, 1, 4, 7, 8, 9, 64, 131, 256, 300):
            ctx = ArmContext(rnd.randrange(3), ctype, rnd.randbytes(size))
            assert ctx.to_json() == json_text(ctx.to_dict())


def test_json_memo_stays_bounded_and_right_past_its_limit():
    memo = JsonMemo(lambda v: {"value": v, "name": str(v)}, limit=4)
    for v in range(10):
        assert memo[v] == json_text({"value": v, "name": str(v)})
    assert len(memo) == 4
