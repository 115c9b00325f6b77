"""Blast radius on this machine's real pages.

The test process maps pages of each kind, finds their PFNs through
/proc/self/pagemap and checks what rasd says about them: anonymous, zero page,
file-backed, shmem, THP, KSM-merged, free and slab pages, and a PFN past the end.
Needs root (kpageflags/kpagecgroup are 0400 and pagemap hides PFNs otherwise).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import struct
import time
from pathlib import Path

import pytest

from rasd.classify.blast_radius import (F, PAGE_SIZE, BlastRadius, CgroupResolver,
                                        PageInspector, PageSnapshot, classify, flag_names,
                                        memcg_mounts, page_kinds, pfn_of)

is_root = os.geteuid() == 0
have_kpage = os.path.exists("/proc/kpageflags")
pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not is_root, reason="needs root: /proc/kpageflags and PFNs in pagemap"),
    pytest.mark.skipif(not have_kpage, reason="kernel without /proc/kpageflags"),
]

THP = Path("/sys/kernel/mm/transparent_hugepage")
KSM = Path("/sys/kernel/mm/ksm")


@pytest.fixture(scope="module")
def inspector():
    insp = PageInspector()
    yield insp
    insp.close()


def address(m: mmap.mmap) -> int:
    c = ctypes.c_char.from_buffer(m)
    try:
        return ctypes.addressof(c)
    finally:
        del c  # an exported buffer would keep the mmap from closing


def own_memcg_path() -> str:
    """This process's memory cgroup as /proc/self/cgroup names it (v1 memory line on a
    hybrid host, the unified "0::" line otherwise)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    return next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))


def private_anon(pages: int) -> mmap.mmap:
    return mmap.mmap(-1, pages * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def check_own_cgroup(br: BlastRadius) -> None:
    assert br.scope == "cgroup", br.to_dict()
    assert br.cgroup["path"] == own_memcg_path(), br.to_dict()
    assert br.cgroup["ino"] == os.stat(memcg_mounts()[0][0] + br.cgroup["path"]).st_ino


def test_anonymous_page(inspector):
    m = private_anon(1)
    try:
        m[0:4] = b"rasd"
        pfn = pfn_of("self", address(m))
        br = inspector.blast_radius(pfn)
        assert br.kind == "anon" and "anon" in br.kinds
        assert br.flags & F["ANON"] and br.flags & F["MMAP"] and br.mapcount == 1
        check_own_cgroup(br)
        d = br.to_dict()
        assert d["flags"] == hex(br.flags) and "ANON" in d["flag_names"]
        assert d["phys_addr"] == hex(pfn * PAGE_SIZE)
    finally:
        m.close()


def test_zero_page(inspector):
    m = private_anon(1)
    try:
        assert m[100] == 0  # read only: the fault maps the shared zero page
        br = inspector.blast_radius(pfn_of("self", address(m)))
        assert br.scope == "zero_page" and br.kind == "zero", br.to_dict()
        assert "every process" in br.detail
    finally:
        m.close()


def test_untouched_page_has_no_pfn():
    m = private_anon(1)
    try:
        assert pfn_of("self", address(m)) is None
    finally:
        m.close()


def _fs_type(path: Path) -> str:
    best, fstype = "", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        point = pre.split()[4]
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
            best, fstype = point, post.split()[0]
    return fstype


def test_file_page(inspector, tmp_path: Path):
    path = tmp_path / "data"
    path.write_bytes(os.urandom(PAGE_SIZE * 2))
    with open(path, "rb") as f:
        # MAP_PRIVATE (writable, so ctypes can give its address); never written, so the
        # read maps the page-cache page itself, not a private copy.
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        _ = m[PAGE_SIZE]
        vaddr = address(m) + PAGE_SIZE
        br = inspector.blast_radius(pfn_of("self", vaddr))
        expected = "shmem" if _fs_type(tmp_path) == "tmpfs" else "file"
        # kind may be "thp": filesystems with large folios (ext4, xfs on ≥6.x) give
        # the page cache multi-page folios, which kpageflags reports as THP.
        assert expected in br.kinds and not br.flags & F["ANON"], br.to_dict()
        assert br.kind in (expected, "thp")
        assert br.flags & F["MMAP"]
        check_own_cgroup(br)  # page cache is charged to the cgroup that read it in
    finally:
        m.close()


def test_shmem_page(inspector):
    m = mmap.mmap(-1, PAGE_SIZE)  # MAP_SHARED|MAP_ANONYMOUS: backed by shmem, not anon
    try:
        m[0:1] = b"x"
        br = inspector.blast_radius(pfn_of("self", address(m)))
        assert br.kind == "shmem" and br.flags & F["SWAPBACKED"] and not br.flags & F["ANON"]
        check_own_cgroup(br)
    finally:
        m.close()


def _thp_mode() -> str | None:
    try:
        text = (THP / "enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


@pytest.mark.skipif(_thp_mode() in (None, "never"),
                    reason=f"transparent hugepages off or absent (enabled: {_thp_mode()})")
def test_transparent_huge_page(inspector):
    size = int((THP / "hpage_pmd_size").read_text())  # 2 MiB on 4K pages, 512 MiB on 64K
    m = private_anon(2 * size // PAGE_SIZE)
    try:
        base = address(m)
        off = (-base) % size  # first PMD-aligned offset inside the mapping
        m.madvise(mmap.MADV_HUGEPAGE, off, size)
        m[off:off + 1] = b"h"
        head = inspector.blast_radius(pfn_of("self", base + off))
        if not head.flags & F["THP"]:
            pytest.skip(f"kernel gave base pages, not a THP (flags {flag_names(head.flags)})")
        assert head.kind == "thp" and "anon" in head.kinds and head.flags & F["COMPOUND_HEAD"]
        check_own_cgroup(head)
        tail = inspector.blast_radius(pfn_of("self", base + off + 5 * PAGE_SIZE))
        assert tail.flags & F["COMPOUND_TAIL"] and tail.kind == "thp"
        assert tail.pfn == head.pfn + 5
        check_own_cgroup(tail)
    finally:
        m.close()


class _KsmSettings:
    """Set KSM knobs for the test and put every one back afterwards."""

    NAMES = ("run", "pages_to_scan", "sleep_millisecs")

    def __enter__(self):
        self.saved = {n: (KSM / n).read_text().strip() for n in self.NAMES}
        (KSM / "pages_to_scan").write_text("1000")
        (KSM / "sleep_millisecs").write_text("10")
        (KSM / "run").write_text("1")
        return self

    def __exit__(self, *exc):
        for n in ("run", "pages_to_scan", "sleep_millisecs"):
            (KSM / n).write_text(self.saved[n])


def _ksm_usable() -> bool:
    return (KSM / "run").exists() and os.access(KSM / "run", os.W_OK) \
        and hasattr(mmap, "MADV_MERGEABLE")


@pytest.mark.skipif(not _ksm_usable(),
                    reason="KSM absent (no /sys/kernel/mm/ksm/run) or not writable")
def test_ksm_page(inspector):
    m = private_anon(2)
    content = os.urandom(PAGE_SIZE)  # not zero: use_zero_pages must not decide this
    try:
        m[0:PAGE_SIZE] = content
        m[PAGE_SIZE:2 * PAGE_SIZE] = content
        m.madvise(mmap.MADV_MERGEABLE)
        base = address(m)
        with _KsmSettings():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                a, b = pfn_of("self", base), pfn_of("self", base + PAGE_SIZE)
                if a == b:
                    break
                time.sleep(0.05)
            else:
                pytest.skip("KSM did not merge the two pages within 30 s")
            br = inspector.blast_radius(a)
        assert br.scope == "shared_ksm" and br.kind == "ksm", br.to_dict()
        assert br.flags & F["KSM"] and br.mapcount >= 2
    finally:
        m.close()


def _find(inspector: PageInspector, flag: int, exclude: int = 0) -> int | None:
    """The first PFN whose flags have ``flag`` now (bulk reads of kpageflags)."""
    base = 0
    with open("/proc/kpageflags", "rb") as f:
        while data := f.read(8 * 65536):
            for i, (flags,) in enumerate(struct.iter_unpack("<Q", data)):
                if flags & flag and not flags & exclude:
                    return base + i
            base += len(data) // 8
    return None


def test_free_page_is_host_kernel(inspector):
    for _ in range(5):  # a free page may be allocated between the scan and the read
        pfn = _find(inspector, F["BUDDY"])
        if pfn is None:
            pytest.skip("no free page on this host")
        br = inspector.blast_radius(pfn)
        if "buddy" in br.kinds:
            assert br.scope == "host_kernel" and br.detail == "free page, nothing mapped"
            return
    pytest.skip("free pages kept being allocated under the test")


def test_slab_page_is_host_kernel(inspector):
    pfn = _find(inspector, F["SLAB"])
    if pfn is None:
        pytest.skip("no slab page found")
    br = inspector.blast_radius(pfn)
    if "slab" in br.kinds:  # freed in between otherwise
        assert br.scope == "host_kernel" and br.kind == "slab"


def test_pfn_beyond_the_end(inspector):
    br = inspector.blast_radius(1 << 40)
    assert br.scope == "unknown" and "beyond max_pfn" in br.detail and br.flags is None
    br = inspector.blast_radius(1 << 60)
    assert br.scope == "unknown" and "out of range" in br.detail


def test_no_kpageflags_is_unknown_not_a_crash(tmp_path: Path):
    insp = PageInspector(proc=str(tmp_path), resolver=CgroupResolver(mounts=[]))
    br = insp.blast_radius(0x1000)
    assert br.scope == "unknown" and "absent" in br.detail and br.errors


def test_resolver_matches_proc_self_cgroup():
    r = CgroupResolver(max_dirs=100000)
    point, _ = memcg_mounts()[0]
    ino = os.stat(point + own_memcg_path()).st_ino
    assert r.path_of(ino) == own_memcg_path()
    assert r.path_of(0) is None
    tiny = CgroupResolver(max_dirs=1)  # bounded: only the root fits
    tiny.path_of(ino)
    assert tiny.truncated or own_memcg_path() == "/"


# Interpretation of flag words that cannot be produced on demand (pure function).

def snap(flags: int | None, ino: int = 0, errors: list[str] | None = None) -> PageSnapshot:
    return PageSnapshot(pfn=0x1234, wall_ns=1, flags=flags, cgroup_ino=ino, mapcount=0,
                        errors=errors or [])


def test_interpretation_of_other_flag_words():
    assert classify(snap(F["NOPAGE"])).scope == "host_kernel"
    assert classify(snap(F["PGTABLE"], ino=5)).kind == "pgtable"
    assert classify(snap(0)).kinds == ["kernel"] and classify(snap(0)).scope == "host_kernel"
    # a kernel page charged to a cgroup (kernel stack, vmalloc) is still kernel memory
    assert classify(snap(F["UPTODATE"], ino=5)).scope == "host_kernel"
    hw = classify(snap(F["ANON"] | F["MMAP"] | F["HWPOISON"], ino=0))
    assert hw.poisoned and "hwpoison" in hw.kinds and hw.detail.startswith("already poisoned")
    assert hw.scope == "unknown"  # uncharged user memory: owner not known
    huge = classify(snap(F["HUGE"] | F["COMPOUND_HEAD"]))
    assert huge.kind == "huge" and huge.scope == "unknown"
    dirty = classify(snap(F["LRU"] | F["DIRTY"], ino=1))
    assert dirty.kind == "file" and dirty.dirty and dirty.cgroup["path"] is None
    assert page_kinds(F["ANON"] | F["KSM"]) == ["ksm", "anon"]
    gone = classify(snap(None, errors=["/proc/kpageflags: permission denied (needs root)"]))
    assert gone.scope == "unknown" and "permission" in gone.detail
