"""BERT reader against a tables directory built in tmp_path (reference §5.3, ACPI 6.5 18.3.1).

/sys/firmware/acpi/tables/BERT: 36-byte ACPI header, region_length u32 @36, address u64 @40
(48 bytes); /sys/firmware/acpi/tables/data/BERT: the Boot Error Region, Generic Error Status
Blocks back to back (§4.1). The kernel zeroes block_status of each block it printed, so a
block with block_status 0 and sane lengths is still a record ("consumed by the kernel").
"""

from __future__ import annotations

import struct

import pytest

from rasd.decode import bert
from rasd.decode.cper import decode_all
from rasd.decode.errors import DecodeError
from vectors import handbuilt as H


def bert_table(region_length: int, address: int = 0x8_F000_0000, checksum_ok: bool = True,
               signature: bytes = b"BERT") -> bytes:
    # ACPI table header (36 bytes): signature[4], length u32, revision u8, checksum u8,
    # oem_id[6], oem_table_id[8], oem_revision u32, creator_id[4], creator_revision u32
    head = signature + struct.pack("<IBB", 48, 1, 0) + b"RASDOE" + b"RASDTBL " \
        + struct.pack("<I", 7) + b"RASD" + struct.pack("<I", 0x20260101)
    assert len(head) == 36
    table = bytearray(head + struct.pack("<IQ", region_length, address))
    assert len(table) == 48
    table[9] = (-sum(table)) & 0xFF  # checksum: all bytes sum to 0 mod 256
    if not checksum_ok:
        table[9] ^= 0x5A
    return bytes(table)


def consumed(block: bytes) -> bytes:
    """What the kernel leaves behind after printing a block: block_status = 0."""
    return bytes(4) + block[4:]


def memory_block(pa: int) -> bytes:
    v = dict(H.MEM_VALUES, physical_addr=pa)
    e = H.entry_header(H.G_PLATFORM_MEM, 1, 0x300, 0, 1, 80, timestamp=H.TS_PRECISE) + \
        H.memory80(v)
    return H.status_header(0x1 | 1 << 4, 0, 0, len(e), 1) + e


BLOCKS = [memory_block(0x1000), memory_block(0x2000), H.status_block_arm(), memory_block(0x3000)]
# the first two were printed (and zeroed) by the kernel at boot, the others were not
REGION = consumed(BLOCKS[0]) + consumed(BLOCKS[1]) + BLOCKS[2] + BLOCKS[3] + bytes(64)


def make_tables(tmp_path, region: bytes = REGION, table: bytes | None = None):
    (tmp_path / "data").mkdir()
    (tmp_path / "BERT").write_bytes(table if table is not None else bert_table(len(region)))
    (tmp_path / "data" / "BERT").write_bytes(region)
    return tmp_path


def test_parse_table_fields_and_checksum():
    t = bert.parse_table(bert_table(0x1234, 0xABCD_0000))
    assert (t.signature, t.length, t.revision, t.oem_id, t.oem_table_id, t.oem_revision,
            t.creator_id, t.creator_revision, t.region_length, t.address, t.checksum_ok) == \
        (b"BERT", 48, 1, "RASDOE", "RASDTBL", 7, "RASD", 0x20260101, 0x1234, 0xABCD_0000, True)
    assert t.to_dict() == {"signature": "BERT", "length": 48, "revision": 1, "checksum_ok": True,
                           "oem_id": "RASDOE", "oem_table_id": "RASDTBL",
                           "region_length": 0x1234, "address": "0xabcd0000"}
    bad = bert.parse_table(bert_table(0x1234, checksum_ok=False))
    assert bad.checksum_ok is False and bad.to_dict()["checksum_ok"] is False


def test_parse_table_rejects_short_or_foreign_tables():
    with pytest.raises(DecodeError):
        bert.parse_table(bert_table(16)[:47])
    with pytest.raises(DecodeError) as info:
        bert.parse_table(bert_table(16, signature=b"HEST"))
    assert info.value.offset == 0


def test_tables_directory_all_blocks_decoded_including_consumed(tmp_path):
    report = bert.read_bert(make_tables(tmp_path))
    assert report.table is not None and report.table.checksum_ok
    assert report.table.region_length == len(REGION) == report.region_length
    assert report.error is None
    recs = report.records
    assert len(recs) == 4  # the zero padding at the end is not a record
    assert [r.empty for r in recs] == [True, True, False, False]
    assert [r.error for r in recs] == [None] * 4
    assert [r.raw for r in recs] == [consumed(BLOCKS[0]), consumed(BLOCKS[1]), BLOCKS[2],
                                     BLOCKS[3]]
    assert [r.sections[0].body.physical_addr for r in (recs[0], recs[1], recs[3])] == \
        [0x1000, 0x2000, 0x3000]
    assert recs[2].sections[0].name == "processor_arm"
    # the content digest ignores block_status: a zeroed block dedups with its earlier self
    assert report.record_digest(recs[0]) == report.record_digest(decode_all(BLOCKS[0])[0])
    assert report.record_digest(recs[0]) != report.record_digest(recs[1])


def test_bad_checksum_is_flagged_but_region_still_read(tmp_path):
    report = bert.read_bert(make_tables(tmp_path, table=bert_table(len(REGION), checksum_ok=False)))
    assert report.table.checksum_ok is False
    assert len(report.records) == 4


def test_missing_directory_gives_empty_report(tmp_path):
    report = bert.read_bert(tmp_path / "does-not-exist")
    assert report.table is None and report.records == [] and report.error is None
    empty_dir = tmp_path / "tables"
    empty_dir.mkdir()
    report = bert.read_bert(empty_dir)
    assert report.table is None and report.records == []


def test_table_without_region_file(tmp_path):
    (tmp_path / "BERT").write_bytes(bert_table(4096))
    report = bert.read_bert(tmp_path)
    assert report.table.region_length == 4096 and report.records == []


def test_region_file_path_directly(tmp_path):
    path = tmp_path / "region.bin"
    path.write_bytes(REGION)
    report = bert.read_bert(path)
    assert report.table is None
    assert [r.raw for r in report.records] == [consumed(BLOCKS[0]), consumed(BLOCKS[1]),
                                               BLOCKS[2], BLOCKS[3]]
    assert bert.read_bert(str(path)).records == report.records


def test_truncated_region(tmp_path):
    region = consumed(BLOCKS[0]) + BLOCKS[1] + BLOCKS[2][:100]
    report = bert.read_bert(make_tables(tmp_path, region=region))
    recs = report.records
    assert len(recs) == 3
    assert recs[0].error is None and recs[1].error is None
    assert recs[2].error is not None and recs[2].raw == BLOCKS[2][:100]
    assert recs[2].error.offset <= len(region)
    # truncated inside the first block's header
    path = tmp_path / "short.bin"
    path.write_bytes(BLOCKS[0][:10])
    recs = bert.read_bert(path).records
    assert len(recs) == 1 and recs[0].error is not None


def test_region_of_only_consumed_empty_blocks_and_zeros(tmp_path):
    path = tmp_path / "zeros.bin"
    path.write_bytes(bytes(4096))
    records = bert.read_bert(path).records
    assert all(r.empty and not r.sections and r.error is None for r in records)


def test_region_length_beyond_read_limit_is_reported(tmp_path):
    report = bert.read_bert(make_tables(tmp_path, table=bert_table(bert.MAX_REGION + 1)))
    assert report.error is not None and "read limit" in report.error.reason
    assert len(report.records) == 4


def test_unreadable_table_raises(tmp_path):
    make_tables(tmp_path, table=b"BERT\x00")
    with pytest.raises(DecodeError):
        bert.read_bert(tmp_path)


def test_truncated_consumed_block_is_reported_not_taken_for_padding(tmp_path):
    # block 1 was zeroed by the kernel and the region ends 50 bytes into it: its lengths
    # say it has data, so it is a truncated record, not the zero padding after the last one
    path = tmp_path / "region.bin"
    path.write_bytes(consumed(BLOCKS[0]) + consumed(BLOCKS[1])[:50])
    recs = bert.read_bert(path).records
    assert len(recs) == 2
    assert recs[0].error is None and recs[0].empty
    assert recs[1].empty and recs[1].error is not None
    assert recs[1].raw == consumed(BLOCKS[1])[:50]
