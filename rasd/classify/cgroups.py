"""cgroup inode numbers → cgroup paths.

Two kernel interfaces name a cgroup by the kernfs inode of its directory:
/proc/kpagecgroup (a page's memory cgroup: blast radius) and the BPF helper
bpf_get_current_cgroup_id() (the cgroup v2 of the task an event ran in: the VM of a
VMM that has exited by the time its event is classified).
"""
from __future__ import annotations

import os
import re
import time


# --------------------------------------------------------- cgroup inode → path

def memcg_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """[(mount point, root inside the hierarchy)] of the hierarchy holding the
    memory controller: a v1 "memory" mount if there is one (hybrid hosts), else
    cgroup2. kernfs inode numbers are per hierarchy, so only that one is searched."""
    v1, v2 = _cgroup_mounts(mountinfo)
    return v1[:1] or v2[:1]


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """The cgroup2 mount: bpf_get_current_cgroup_id() gives an inode of this hierarchy
    whatever v1 hierarchies a hybrid host also mounts."""
    return _cgroup_mounts(mountinfo)[1][:1]


def _cgroup_mounts(mountinfo: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([v1 mounts with the memory controller], [cgroup2 mounts])."""
    v1: list[tuple[str, str]] = []
    v2: list[tuple[str, str]] = []
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return [], []
    for line in lines:
        pre, sep, post = line.partition(b" - ")
        fields, post_fields = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(post_fields) < 3:
            continue
        root, point = _unoctal(fields[3]), _unoctal(fields[4])
        if post_fields[0] == b"cgroup2":
            v2.append((point, root))
        elif post_fields[0] == b"cgroup" and b"memory" in post_fields[2].split(b","):
            v1.append((point, root))
    return v1, v2


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unoctal(field: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo; unescape the
    bytes, then decode as the filesystem does."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


class CgroupResolver:
    """Cgroup inode → cgroup path, by walking the hierarchy (default: the memory
    controller's, as /proc/kpagecgroup numbers it).

    The walk is bounded (``max_dirs``), cached, and repeated on a miss at most every
    ``rescan_s`` seconds (new VMs and containers create cgroups); a cached hit is
    re-checked with one stat because cgroups come and go."""

    def __init__(self, mounts: list[tuple[str, str]] | None = None, max_dirs: int = 50000,
                 rescan_s: float = 5.0) -> None:
        self.mounts = memcg_mounts() if mounts is None else mounts
        self.max_dirs = max_dirs
        self.rescan_s = rescan_s
        self._paths: dict[int, str] = {}  # ino → path relative to the mount point
        self._scanned_at: float | None = None
        self.truncated = False

    def _scan(self) -> None:
        self._paths.clear()
        self.truncated = False
        self._scanned_at = time.monotonic()
        if not self.mounts:
            return
        point = self.mounts[0][0]
        try:
            self._paths[os.stat(point).st_ino] = ""
        except OSError:
            return
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                with os.scandir(os.path.join(point, rel) if rel else point) as it:
                    for entry in it:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        if len(self._paths) >= self.max_dirs:
                            self.truncated = True
                            return
                        child = f"{rel}/{entry.name}" if rel else entry.name
                        # scandir's d_ino is the kernfs inode, the same number
                        # /proc/kpagecgroup reports; no stat per directory needed.
                        self._paths[entry.inode()] = child
                        stack.append(child)
            except OSError:
                continue  # removed while we walked

    def _fresh(self, ino: int, rel: str) -> bool:
        try:
            return os.stat(os.path.join(self.mounts[0][0], rel)).st_ino == ino
        except OSError:
            return False

    def path_of(self, ino: int) -> str | None:
        """The cgroup path as /proc/<pid>/cgroup spells it ("/machine.slice/…"), or None."""
        if not self.mounts or ino == 0:
            return None
        rel = self._paths.get(ino)
        if rel is None or not self._fresh(ino, rel):
            if self._scanned_at is not None and rel is None \
                    and time.monotonic() - self._scanned_at < self.rescan_s:
                return None
            self._scan()
            rel = self._paths.get(ino)
            if rel is None:
                return None
        root = self.mounts[0][1].rstrip("/")
        return f"{root}/{rel}" if rel else (root or "/")
