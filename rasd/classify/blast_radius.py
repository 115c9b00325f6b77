"""Blast radius of a bad page: what a PFN holds and who owns it, read right away.

``memory_failure()`` changes the page (poison flag, unmapping, killing its users),
so the raw state is read first and as cheaply as possible (``snapshot``: three
``pread``s of 8 bytes) and only then interpreted (``classify``: cgroup inode → path →
systemd unit → VM/container).

Sources (fs/proc/page.c):
* ``/proc/kpageflags``: u64 flags per PFN, bits from include/uapi/linux/kernel-page-flags.h
  (0-26) and the "kernel hacking" bits of include/linux/kernel-page-flags.h (32-42);
* ``/proc/kpagecgroup``: u64 inode of the owning memory cgroup's directory, 0 if none;
* ``/proc/kpagecount``: u64 map count.
All three return nothing past max_pfn (rounded up to a section), and NOPAGE for a
PFN without a struct page (hole, firmware-owned, offline).
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rasd.classify.cgroups import CgroupResolver, memcg_mounts  # noqa: F401 (re-exported)
from rasd.classify.vm import deepest_unit, owner_from_cgroup_path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # arm64: 4K, 16K or 64K; PFNs count in these

KPF_BITS = {
    "LOCKED": 0, "ERROR": 1, "REFERENCED": 2, "UPTODATE": 3, "DIRTY": 4, "LRU": 5,
    "ACTIVE": 6, "SLAB": 7, "WRITEBACK": 8, "RECLAIM": 9, "BUDDY": 10, "MMAP": 11,
    "ANON": 12, "SWAPCACHE": 13, "SWAPBACKED": 14, "COMPOUND_HEAD": 15,
    "COMPOUND_TAIL": 16, "HUGE": 17, "UNEVICTABLE": 18, "HWPOISON": 19, "NOPAGE": 20,
    "KSM": 21, "THP": 22, "OFFLINE": 23, "ZERO_PAGE": 24, "IDLE": 25, "PGTABLE": 26,
    # include/linux/kernel-page-flags.h: exported but "subject to change"; bit 34 was
    # MAPPEDTODISK before it became OWNER_2.
    "RESERVED": 32, "MLOCKED": 33, "OWNER_2": 34, "PRIVATE": 35, "PRIVATE_2": 36,
    "OWNER_PRIVATE": 37, "ARCH": 38, "UNCACHED": 39, "SOFTDIRTY": 40, "ARCH_2": 41,
    "ARCH_3": 42,
}
F = {name: 1 << bit for name, bit in KPF_BITS.items()}

SCOPES = ("shared_ksm", "zero_page", "host_kernel", "cgroup", "unknown")

# Flags only user memory carries (mapped, on an LRU, anonymous, swap-backed, huge).
_USER = F["MMAP"] | F["ANON"] | F["LRU"] | F["SWAPBACKED"] | F["SWAPCACHE"] | F["HUGE"] \
    | F["THP"] | F["UNEVICTABLE"]

PAGEMAP_PRESENT = 1 << 63
PAGEMAP_SWAP = 1 << 62
PAGEMAP_PFN_MASK = (1 << 55) - 1
MAX_PFN = PAGEMAP_PFN_MASK  # larger values cannot be a PFN (and overflow pread offsets)


def flag_names(flags: int) -> list[str]:
    return [name for name, bit in KPF_BITS.items() if flags >> bit & 1]


# ------------------------------------------------------------------ pagemap

def pfn_of(pid: int | str, vaddr: int, proc: str = "/proc") -> int | None:
    """PFN behind a virtual address of a process (``/proc/<pid>/pagemap``).

    None when the page is not present (never touched, or swapped out). Raises
    PermissionError when present but the kernel hid the PFN (reads it as 0 without
    CAP_SYS_ADMIN since 4.2), OSError when pagemap cannot be read.
    """
    with open(f"{proc}/{pid}/pagemap", "rb", buffering=0) as f:
        data = os.pread(f.fileno(), 8, (vaddr // PAGE_SIZE) * 8)
    if len(data) != 8:
        return None
    entry = struct.unpack("<Q", data)[0]
    if not entry & PAGEMAP_PRESENT or entry & PAGEMAP_SWAP:
        return None
    pfn = entry & PAGEMAP_PFN_MASK
    if pfn == 0:
        raise PermissionError("pagemap hides PFNs from this reader (needs CAP_SYS_ADMIN)")
    return pfn


# -------------------------------------------------------------- raw snapshot

@dataclass(slots=True)
class PageSnapshot:
    """The raw per-PFN state, as read at ``wall_ns``."""

    pfn: int
    wall_ns: int
    flags: int | None = None
    cgroup_ino: int | None = None
    mapcount: int | None = None
    errors: list[str] = field(default_factory=list)


class _KpageFile:
    """One /proc/kpage* file, opened once and kept (the read must be quick later)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.error: str | None = None

    def read(self, pfn: int) -> tuple[int | None, str | None]:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None, f"{self.path}: absent (kernel built without it)"
            except PermissionError:
                return None, f"{self.path}: permission denied (needs root)"
            except OSError as e:
                return None, f"{self.path}: {e.strerror}"
        try:
            data = os.pread(self.fd, 8, pfn * 8)
        except OSError as e:
            return None, f"{self.path}: {e.strerror} at pfn {pfn:#x}"
        if len(data) != 8:
            return None, f"{self.path}: no entry for pfn {pfn:#x} (beyond max_pfn)"
        return struct.unpack("<Q", data)[0], None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------- the verdict

@dataclass(slots=True)
class BlastRadius:
    pfn: int
    scope: str  # one of SCOPES
    kind: str  # the main kind: zero, ksm, slab, pgtable, buddy, huge, thp, anon, file, ...
    kinds: list[str]
    detail: str  # one line for a person
    wall_ns: int  # when the page state was read
    page_size: int = PAGE_SIZE
    flags: int | None = None
    mapcount: int | None = None
    poisoned: bool = False  # HWPOISON already set: read after memory_failure got to it
    dirty: bool = False
    cgroup: dict[str, Any] | None = None  # {"ino", "path", "unit", "owner"}
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"pfn": hex(self.pfn), "phys_addr": hex(self.pfn * self.page_size),
                "page_size": self.page_size, "scope": self.scope, "kind": self.kind,
                "kinds": list(self.kinds), "detail": self.detail, "wall_ns": self.wall_ns,
                "flags": None if self.flags is None else hex(self.flags),
                "flag_names": [] if self.flags is None else flag_names(self.flags),
                "mapcount": self.mapcount, "poisoned": self.poisoned, "dirty": self.dirty,
                "cgroup": self.cgroup, "errors": list(self.errors)}


def page_kinds(flags: int) -> list[str]:
    """Every kind the flags say, most telling first (the first is ``kind``)."""
    has = lambda name: bool(flags & F[name])  # noqa: E731
    kinds: list[str] = []
    for name, kind in (("NOPAGE", "nopage"), ("ZERO_PAGE", "zero"), ("KSM", "ksm"),
                       ("SLAB", "slab"), ("PGTABLE", "pgtable"), ("BUDDY", "buddy"),
                       ("OFFLINE", "offline"), ("RESERVED", "reserved"),
                       ("HUGE", "huge"), ("THP", "thp")):
        if has(name):
            kinds.append(kind)
    if has("ANON"):
        kinds.append("anon")
    elif has("SWAPBACKED"):
        kinds.append("shmem")  # tmpfs, memfd, MAP_SHARED|MAP_ANONYMOUS, SysV shm
    elif (has("LRU") or has("MMAP")) and not has("HUGE") and not has("ZERO_PAGE"):
        kinds.append("file")  # page cache
    if has("SWAPCACHE"):
        kinds.append("swapcache")
    if not kinds and not flags & _USER:
        kinds.append("kernel")  # plain kernel allocation: no LRU, not mapped, no type
    if has("HWPOISON"):
        kinds.append("hwpoison")
    return kinds or ["unknown"]


def _scope(flags: int, kinds: list[str], ino: int | None) -> tuple[str, str]:
    """(scope, detail) from the flags; the cgroup is looked at only for user memory."""
    k = set(kinds)
    if "nopage" in k:
        return "host_kernel", ("no struct page here: a hole or memory the kernel does "
                               "not manage (firmware, device); memory_failure gives -ENXIO")
    if "zero" in k:
        return "zero_page", ("the shared zero page: every process and guest reading "
                             "untouched anonymous memory maps it")
    if "ksm" in k:
        return "shared_ksm", "a KSM-merged page: every process and guest that merged it maps it"
    for kind, text in (("slab", "slab: kernel objects"), ("pgtable", "a page table"),
                       ("reserved", "reserved kernel memory (kernel image, memmap, firmware)"),
                       ("offline", "logically offline (balloon or hot-unplug)"),
                       ("buddy", "free page, nothing mapped")):
        if kind in k:
            return "host_kernel", text
    if "kernel" in k:
        charged = " (charged to a memory cgroup)" if ino else ""
        return "host_kernel", f"kernel allocation, not user memory{charged}"
    if "huge" in k and not flags & F["MMAP"] and not ino:
        return "unknown", "hugetlb page not mapped: free in the pool or hugetlbfs file data"
    if ino:
        return "cgroup", "user memory of one memory cgroup"
    return "unknown", "user memory not charged to any memory cgroup (memcg off?)"


def _cgroup_info(ino: int, resolver: CgroupResolver | None) -> dict[str, Any]:
    info: dict[str, Any] = {"ino": ino, "path": None, "unit": None, "owner": None}
    if resolver is None:
        return info
    path = resolver.path_of(ino)
    if path is not None:
        info.update(path=path, unit=deepest_unit(path), owner=owner_from_cgroup_path(path))
    return info


def classify(snap: PageSnapshot, resolver: CgroupResolver | None = None) -> BlastRadius:
    """Interpret a snapshot. Never raises for missing sources: scope ``unknown`` says why."""
    errors = list(snap.errors)
    if snap.flags is None:
        reason = errors[0] if errors else "page flags unavailable"
        return BlastRadius(pfn=snap.pfn, scope="unknown", kind="unknown", kinds=["unknown"],
                           detail=reason, wall_ns=snap.wall_ns, mapcount=snap.mapcount,
                           errors=errors)
    flags = snap.flags
    kinds = page_kinds(flags)
    scope, detail = _scope(flags, kinds, snap.cgroup_ino)
    cgroup = None
    if snap.cgroup_ino:
        cgroup = _cgroup_info(snap.cgroup_ino, resolver)
        if cgroup["path"] is None:
            errors.append(f"memory cgroup inode {snap.cgroup_ino} not found "
                          "(removed, or outside the mounted hierarchy)")
        elif scope == "cgroup":
            owner = cgroup["owner"] or {}
            who = owner.get("name") or owner.get("id") or cgroup["unit"] or cgroup["path"]
            detail = f"user memory of {owner.get('kind', 'cgroup')} {who}"
    poisoned = bool(flags & F["HWPOISON"])
    if poisoned:
        detail = "already poisoned (read after memory_failure); " + detail
    return BlastRadius(pfn=snap.pfn, scope=scope, kind=kinds[0], kinds=kinds, detail=detail,
                       wall_ns=snap.wall_ns, flags=flags, mapcount=snap.mapcount,
                       poisoned=poisoned, dirty=bool(flags & F["DIRTY"]), cgroup=cgroup,
                       errors=errors)


class PageInspector:
    """Holds the /proc/kpage* files open and the cgroup cache; one per daemon."""

    def __init__(self, proc: str = "/proc", resolver: CgroupResolver | None = None,
                 ksm: str = "/sys/kernel/mm/ksm") -> None:
        self.flags = _KpageFile(f"{proc}/kpageflags")
        self.cgroup = _KpageFile(f"{proc}/kpagecgroup")
        self.count = _KpageFile(f"{proc}/kpagecount")
        self._resolver = resolver
        self.ksm = Path(ksm)

    @property
    def resolver(self) -> CgroupResolver:
        if self._resolver is None:
            self._resolver = CgroupResolver()
        return self._resolver

    def snapshot(self, pfn: int) -> PageSnapshot:
        """Read the page state now: call this as soon as the PFN is known."""
        snap = PageSnapshot(pfn=pfn, wall_ns=time.time_ns())
        if not 0 <= pfn <= MAX_PFN:
            snap.errors.append(f"pfn {pfn:#x} out of range")
            return snap
        snap.flags, err = self.flags.read(pfn)
        if err:
            snap.errors.append(err)
        if snap.flags is not None and snap.flags & F["KSM"] and not self.ksm_pages():
            # Some kernels (seen on 6.12.95: stable_page_flags tests `mapping &
            # PAGE_MAPPING_KSM`, true for every anonymous folio) set KPF_KSM on plain
            # anonymous pages. With no KSM-merged page on the system it cannot be one.
            snap.flags &= ~F["KSM"]
            snap.errors.append("kpageflags said KSM but no page is KSM-merged "
                               "(/sys/kernel/mm/ksm/pages_shared 0): KSM bit ignored")
        snap.cgroup_ino, err = self.cgroup.read(pfn)
        if err and snap.flags is not None:
            snap.errors.append(err)  # flags errors already say it for a bad pfn
        snap.mapcount, err = self.count.read(pfn)
        if err and snap.flags is not None:
            snap.errors.append(err)
        return snap

    def ksm_pages(self) -> bool:
        """Whether any KSM-merged page exists (False without KSM in the kernel)."""
        try:
            return int((self.ksm / "pages_shared").read_text()) > 0
        except (OSError, ValueError):
            return False

    def blast_radius(self, pfn: int) -> BlastRadius:
        return classify(self.snapshot(pfn), self.resolver)

    def close(self) -> None:
        for f in (self.flags, self.cgroup, self.count):
            f.close()


_default: PageInspector | None = None


def blast_radius(pfn: int) -> BlastRadius:
    """Module-level convenience on a shared PageInspector."""
    global _default
    if _default is None:
        _default = PageInspector()
    return _default.blast_radius(pfn)


def pfn_from_phys(phys_addr: int) -> int:
    return phys_addr // PAGE_SIZE
