"""The compiled-probe cache on this host's kernel, with real bcc and the real verifier:
a second start loads the cached bytecode (no clang, no bcc import), attaches the same
probes and delivers the same records; damaged, refused and untrusted entries fall
back to a compile and never stop the load."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from rasd.sources import bpf_cache
from rasd.sources.bpf_cache import CacheDir, EntryUnusable, map_references
from rasd.sources.bpf_loader import ExtraAttach, load_probes
from rasd.sources.probes import TEST_PROBE_ID
from rasd.sources.tracefs import find_tracefs

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loads eBPF programs"),
    pytest.mark.skipif(find_tracefs() is None, reason="needs tracefs at /sys/kernel/tracing"),
]

# the same text and flags in every load of this test process: the same key
TEST_ATTACH = [ExtraAttach("rasd_test_call", "syscalls:sys_enter_getppid")]
TGID_FLAGS = [f"-DRASD_TEST_TGID={os.getpid()}"]


def _load(cache: Path, **kw):
    return load_probes(ringbuf_pages=8, test_attach=TEST_ATTACH, extra_cflags=TGID_FLAGS,
                       cache_dir=str(cache), **kw)


def _records_from_getppid(lp, n: int = 3) -> list:
    for _ in range(n):
        os.getppid()
    assert lp.ringbuf.poll(1.0)
    return [r for r in lp.read() if r.tgid == os.getpid()]


def _table(lp) -> dict:
    return {r.probe: (r.status, r.kind, r.symbol) for r in lp.results}


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob(f"*{bpf_cache.SUFFIX}"))


def test_second_load_hits_without_bcc_and_delivers_the_same_records(tmp_path):
    cache = tmp_path / "cache"
    first = _load(cache)
    try:
        assert first.stats["cache"] == "miss, written"
        assert first.stats["compile_s"] > 0
        recs_compiled = _records_from_getppid(first)
        table_compiled = _table(first)
    finally:
        first.close()
    (entry,) = _entries(cache)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700

    second = _load(cache)
    try:
        assert second.stats["cache"] == "hit"
        assert second.stats["compile_s"] == 0
        # the child never imported bcc/LLVM (a compiling child holds >100 MB)
        assert first.stats["bcc_imported"] and not second.stats["bcc_imported"]
        assert second.stats["child_maxrss_kb"] < 60 * 1024 < first.stats["child_maxrss_kb"]
        assert _table(second) == table_compiled
        assert "test:rasd_test_call" in second.attached()
        recs = _records_from_getppid(second)
        assert len(recs) == len(recs_compiled) == 3
        assert (recs[0].kind, recs[0].probe_id) == ("call", TEST_PROBE_ID)
        assert recs[0].fields == recs_compiled[0].fields
        assert second.lost.total() == 0
    finally:
        second.close()


def test_cached_programs_keep_their_kernel_names(tmp_path):
    from rasd.sources.bpfsys import prog_info
    cache = tmp_path / "cache"
    first = _load(cache)
    names_compiled = sorted(prog_info(fd).name for fd in first.prog_fds.values())
    first.close()
    second = _load(cache)
    try:
        assert sorted(prog_info(fd).name for fd in second.prog_fds.values()) == names_compiled
    finally:
        second.close()


def test_close_detaches_cached_programs(tmp_path):
    """Closing the attachment fds detaches: the ring buffer (kept open through a dup)
    receives nothing afterwards."""
    from rasd.sources.ringbuf import RingBuffer
    cache = tmp_path / "cache"
    _load(cache).close()
    lp = _load(cache)
    assert lp.stats["cache"] == "hit"
    assert len(_records_from_getppid(lp)) == 3
    map_fd = os.dup(lp.map_fds["rasd_events"])
    ring = RingBuffer(map_fd)
    lp.close()
    try:
        for _ in range(3):
            os.getppid()
        assert not ring.poll(0.1)
        assert list(ring.records()) == []
    finally:
        ring.close()
        os.close(map_fd)


def _damage_json(path: Path) -> None:
    path.write_text(path.read_text()[:100])


def _damage_program(path: Path) -> None:
    """Valid JSON the kernel must refuse: every program starts with an invalid opcode."""
    doc = json.loads(path.read_text())
    for p in doc["programs"].values():
        import base64
        code = bytearray(base64.b64decode(p["insns"]))
        code[0] = 0xFF
        p["insns"] = base64.b64encode(bytes(code)).decode()
    path.write_text(json.dumps(doc))


def _damage_map_ref(path: Path) -> None:
    doc = json.loads(path.read_text())
    prog = next(p for p in doc["programs"].values() if p["map_refs"])
    prog["map_refs"][0][1] = "no_such_map"
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", [_damage_json, _damage_program, _damage_map_ref],
                         ids=["truncated", "refused-by-verifier", "unknown-map"])
def test_unusable_entry_compiles_and_is_rewritten(tmp_path, damage):
    cache = tmp_path / "cache"
    _load(cache).close()
    (entry,) = _entries(cache)
    damage(entry)
    lp = _load(cache)
    try:
        assert lp.stats["cache"] == "entry unusable, written"
        assert any("compile cache entry unusable" in n for n in lp.notes), lp.notes
        assert len(_records_from_getppid(lp)) == 3
    finally:
        lp.close()
    again = _load(cache)
    try:
        assert again.stats["cache"] == "hit"
    finally:
        again.close()


def test_untrusted_directory_is_neither_read_nor_written(tmp_path):
    cache = tmp_path / "cache"
    _load(cache).close()
    (entry,) = _entries(cache)
    before = entry.read_bytes()
    cache.chmod(0o777)
    lp = _load(cache)
    try:
        assert lp.stats["cache"] == "refused"
        assert any("writable by group or others" in n for n in lp.notes), lp.notes
        assert lp.stats["compile_s"] > 0
        assert len(_records_from_getppid(lp)) == 3
    finally:
        lp.close()
    assert _entries(cache) == [entry] and entry.read_bytes() == before


def test_entry_of_another_user_is_refused(tmp_path):
    cache = tmp_path / "cache"
    _load(cache).close()
    (entry,) = _entries(cache)
    os.chown(entry, 65534, 65534)
    lp = _load(cache)
    try:
        assert lp.stats["cache"] == "refused"
        assert any("belongs to uid 65534" in n for n in lp.notes), lp.notes
    finally:
        lp.close()


def test_another_program_text_is_another_entry(tmp_path):
    cache = tmp_path / "cache"
    _load(cache).close()
    lp = load_probes(ringbuf_pages=16, test_attach=TEST_ATTACH, extra_cflags=TGID_FLAGS,
                     cache_dir=str(cache))    # another ring-buffer size: other flags
    try:
        assert lp.stats["cache"] == "miss, written"
    finally:
        lp.close()
    assert len(_entries(cache)) == 2


def test_uprobes_are_never_cached(tmp_path):
    libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6")
                if Path(p).exists())
    cache = tmp_path / "cache"
    lp = load_probes(ringbuf_pages=8, cache_dir=str(cache),
                     test_attach=[ExtraAttach("rasd_test_call", f"{libc}:getppid", kind="uprobe")])
    try:
        assert lp.stats["cache"] == "not cacheable"
    finally:
        lp.close()
    assert not cache.exists()


def test_no_cache_dir_always_compiles(tmp_path):
    lp = load_probes(ringbuf_pages=8, test_attach=TEST_ATTACH, extra_cflags=TGID_FLAGS)
    try:
        assert lp.stats["cache"] == "off" and lp.stats["compile_s"] > 0
    finally:
        lp.close()


# ---- the byte-level parts, on hand-made instructions --------------------------------

def _insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, dst | src << 4, off, imm)


def test_map_references_are_found_and_patched():
    code = (_insn(0xB7, 1, imm=7)                        # r1 = 7
            + _insn(0x18, 1, 1, imm=42) + _insn(0)       # r1 = map fd 42 (ld_imm64)
            + _insn(0x18, 2, 0, imm=5) + _insn(0)        # r2 = 5 (plain 64-bit constant)
            + _insn(0x85, imm=131)                       # call a helper
            + _insn(0x95))                               # exit
    refs = map_references(code, {42: "rasd_events"})
    assert refs == [(1, "rasd_events")]
    patched = bpf_cache.patch_map_fds(code, refs, {"rasd_events": 9})
    assert struct.unpack_from("<i", patched, 8 + 4)[0] == 9
    assert patched[:8] == code[:8] and patched[16:] == code[16:]


@pytest.mark.parametrize("code,why", [
    (_insn(0x18, 1, 1, imm=99) + _insn(0), "fd 99, which is no map"),
    (_insn(0x18, 1, 3, imm=1234) + _insn(0), "src_reg 3"),            # BTF id
    (_insn(0x85, 0, 1, imm=4) + _insn(0x95), "call resolved at load"),  # subprogram call
])
def test_instructions_needing_load_time_resolution_are_not_cached(code, why):
    with pytest.raises(EntryUnusable, match=why):
        map_references(code, {42: "m"})


def test_prune_keeps_the_newest_entries(tmp_path):
    d = CacheDir(tmp_path)
    for i in range(bpf_cache.KEEP_ENTRIES + 3):
        p = tmp_path / f"k-{i:02d}{bpf_cache.SUFFIX}"
        p.write_text("{}")
        os.utime(p, (1000 + i, 1000 + i))
    d.prune()
    left = sorted(p.name for p in tmp_path.glob(f"*{bpf_cache.SUFFIX}"))
    assert left == [f"k-{i:02d}{bpf_cache.SUFFIX}" for i in range(3, bpf_cache.KEEP_ENTRIES + 3)]


def test_key_follows_text_flags_plans_and_options():
    base = ("int x;", ["-DA"], [{"name": "p", "symbol": "s"}], {"hot_kprobes": False})
    key = bpf_cache.entry_key(*base)
    assert key == bpf_cache.entry_key(*base)
    assert key != bpf_cache.entry_key("int y;", *base[1:])
    assert key != bpf_cache.entry_key(base[0], ["-DB"], *base[2:])
    assert key != bpf_cache.entry_key(*base[:2], [{"name": "p", "symbol": "s.isra.0"}], base[3])
    assert key != bpf_cache.entry_key(*base[:3], {"hot_kprobes": True})
