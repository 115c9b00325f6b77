#!/usr/bin/env python3
"""Per-hit run time of the rasd BPF programs on this host (kernel.bpf_stats_enabled).

This x86 host has no RAS hardware and no kprobes, so the program bodies are
driven from places that fire here, through the same loader and ring buffer:

  rasd_test_baseline         one 8-byte ringbuf reserve + submit (the yardstick)
  rasd_test_call             a CALL record: the body every kprobe program ends in
  rasd_test_ghes             the ghes_do_proc body on a fake 172-byte status block
  rasd_tp_bench_getsid       the generic ras:* tracepoint body (raw entry copy)
  rasd_tp_bench_exec         same body, __data_loc string, on the cold exec path
  rasd_memory_failure_entry  kprobe bodies with the per-tid hash stash, run as
  rasd_memory_failure_return   uprobe/uretprobe on libc getpgid()
  rasd_handle_exit_early     the hot-path filter rejecting a non-SError exit
                               (uprobe on libc setpgid(x, 2)): the per-VM-exit cost
  rasd_tp_sigbus             the production sigbus probe (signal:signal_generate):
                               SIGUSR1 to self, rejected by the in-BPF filter, and
                               SIGBUS to self, copied out (the two costs differ)
  ras:* programs             attached; they fire only on hardware errors

ns/hit = run_time_ns / run_cnt from BPF_OBJ_GET_INFO_BY_FD; the trap cost of
uprobes/kprobes themselves is not included. Run as root.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rasd.sources.bpf_loader import ExtraAttach, load_probes  # noqa: E402
from rasd.sources.bpfsys import prog_info, update_elem  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
HITS = 200_000
UPROBE_HITS = 50_000
EXECS = 1_000
SIGNALS = 20_000


def main() -> int:
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        return run()
    finally:
        STATS.write_text(old)


def _libc() -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "/libc.so" in line.split()[-1]:
            return line.split()[-1]
    raise SystemExit("libc not found")


def _fake_ghes() -> bytes:
    generic = bytearray(64)
    struct.pack_into("<HH", generic, 0, 10, 1)
    struct.pack_into("<I", generic, 60, 4096)
    block = struct.pack("<5I", 1, 0, 0, 152, 2) + bytes(152)
    return bytes(8) + bytes(generic) + block.ljust(4096 + 1024, b"\0")


def run() -> int:
    libc = _libc()
    t0 = time.monotonic()
    lp = load_probes(ringbuf_pages=256, require_any=False, test_attach=[
        ExtraAttach("rasd_test_baseline", "syscalls:sys_enter_getppid"),
        ExtraAttach("rasd_test_call", "syscalls:sys_enter_getpgrp"),
        ExtraAttach("rasd_test_ghes", "syscalls:sys_enter_getuid"),
        ExtraAttach("rasd_tp_bench_getsid", "syscalls:sys_enter_getsid", copy_tp=True),
        ExtraAttach("rasd_tp_bench_exec", "sched:sched_process_exec", copy_tp=True),
        ExtraAttach("rasd_memory_failure_entry", f"{libc}:getpgid", kind="uprobe"),
        ExtraAttach("rasd_memory_failure_return", f"{libc}:getpgid", kind="uretprobe"),
        ExtraAttach("rasd_handle_exit_early", f"{libc}:setpgid", kind="uprobe"),
    ])
    ready = time.monotonic() - t0
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])
    print(f"load_probes: {ready:.2f} s wall (child: "
          f"compile+load {lp.stats['compile_s']:.2f} s, child total {lp.stats['total_s']:.2f} s,"
          f" child max RSS {lp.stats['child_maxrss_kb'] / 1024:.0f} MB); "
          f"parent RSS after load {rss / 1024:.1f} MB")
    update_elem(lp.map_fds["rasd_test_ghes_mem"], struct.pack("<I", 0), _fake_ghes())
    drain = lambda: sum(1 for _ in lp.ringbuf.records())  # noqa: E731
    for i in range(HITS):
        os.getppid()
        os.getpgrp()
        os.getuid()
        os.getsid(0)
        if i % 500 == 0:
            drain()
    for i in range(UPROBE_HITS):
        os.getpgid(0)
        try:
            os.setpgid(0x3FFFFFF0, 2)
        except OSError:
            pass
        if i % 500 == 0:
            drain()
    for _ in range(EXECS):
        subprocess.run(["/bin/true"])
        drain()
    drain()
    report(lp)
    signal_costs(lp, drain)
    lp.close()
    return 0


def _sigbus_run(lp, sig: int, n: int, drain) -> tuple[int, float]:
    """(hits, ns/hit) of the sigbus program while sending `sig` to ourselves n times."""
    before = prog_info(lp.prog_fds["rasd_tp_sigbus"])
    for i in range(n):
        os.kill(os.getpid(), sig)
        if i % 500 == 0:
            drain()
    drain()
    after = prog_info(lp.prog_fds["rasd_tp_sigbus"])
    hits = after.run_cnt - before.run_cnt
    return hits, (after.run_time_ns - before.run_time_ns) / max(hits, 1)


def signal_costs(lp, drain) -> None:
    if "rasd_tp_sigbus" not in lp.prog_fds:
        print("rasd_tp_sigbus not attached (no signal:signal_generate)")
        return
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # signal_generate fires all the same
    signal.signal(signal.SIGBUS, lambda *a: None)
    for name, sig in (("filtered (SIGUSR1)", signal.SIGUSR1), ("emitted (SIGBUS)", signal.SIGBUS)):
        hits, ns = _sigbus_run(lp, sig, SIGNALS, drain)
        print(f"rasd_tp_sigbus {name:19} {hits:8d} {ns:8.1f} ns/hit")


def report(lp) -> None:
    rows = []
    for fn, fd in sorted(lp.prog_fds.items()):
        info = prog_info(fd)
        rows.append((fn, info.run_cnt, info.run_time_ns / info.run_cnt if info.run_cnt else None))
    base = next(ns for fn, _, ns in rows if fn == "rasd_test_baseline")
    print(f"{'program':30} {'hits':>8} {'ns/hit':>8} {'x baseline':>10}")
    for fn, cnt, ns in rows:
        if ns is None:
            print(f"{fn:30} {cnt:8d} {'-':>8}   (does not fire here)")
        else:
            print(f"{fn:30} {cnt:8d} {ns:8.1f} {ns / base:10.2f}")
    print(f"lost records: {lp.lost.total()}")


if __name__ == "__main__":
    sys.exit(main())
