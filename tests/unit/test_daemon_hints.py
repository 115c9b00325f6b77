"""The daemon's start-up diagnosis of why probes failed (rasd.daemon.perf_paranoid_hint),
against proc trees laid out like the kernel's."""
from __future__ import annotations

from pathlib import Path

from rasd.daemon import perf_paranoid_hint
from rasd.sources.resolve import Resolution

FAILED = Resolution("ghes_do_proc", "failed", "kprobe", "ghes_do_proc",
                    reason="perf_event_open: Permission denied")


def proc(tmp_path: Path, paranoid: int, cap_eff: int) -> str:
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/perf_event_paranoid").write_text(f"{paranoid}\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "self/status").write_text(f"Name:\trasd\nCapEff:\t{cap_eff:016x}\n")
    return str(tmp_path)


def test_paranoid_3_without_cap_sys_admin_names_the_drop_in(tmp_path):
    hint = perf_paranoid_hint([FAILED], proc(tmp_path, 3, (1 << 39) | (1 << 38)))
    assert hint and "perf_event_paranoid=3" in hint and "perf-paranoid.conf" in hint


def test_no_hint_with_cap_sys_admin_at_level_2_or_without_failures(tmp_path):
    assert perf_paranoid_hint([FAILED], proc(tmp_path / "a", 3, 1 << 21)) is None
    assert perf_paranoid_hint([FAILED], proc(tmp_path / "b", 2, 0)) is None
    ok = Resolution("ghes_do_proc", "attached", "kprobe", "ghes_do_proc")
    assert perf_paranoid_hint([ok], proc(tmp_path / "c", 3, 0)) is None
