"""Daemon footprint and ingest: start-to-ready, steady RSS, idle CPU, replay ingest rate.

Targets on the 2-core dev machine (issue 3): ready <= 2 s; idle CPU <= 0.05 CPU-seconds
per minute; steady RSS <= 60 MB (bcc's LLVM alone holds ~130 MB after a compile: rasd
compiles in a short-lived child); replay ingest >= 50,000 events/s with zero loss.
Needs root (loads eBPF). Numbers are printed, never asserted.

    .venv/bin/python bench/daemon.py [--idle-seconds 60] [--events 200000]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rasd.decode.event import EventDecoder  # noqa: E402
from rasd.encode import cper as enc  # noqa: E402
from rasd.sources.records import Record  # noqa: E402
from rasd.sources.replay import encode_trace_entry  # noqa: E402
from rasd.sources.tracefs import parse_format  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def start_daemon(tmp: Path) -> tuple[subprocess.Popen, float, socket.socket]:
    cfg = tmp / "rasd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp}/state"\nruntime_dir = "{tmp}/run"\n'
                   f'log_level = "warning"\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify.sock"))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rasd.cli.daemon", "--config", str(cfg)],
                            cwd=ROOT, env=env)
    notify.settimeout(60)
    while True:
        msg = notify.recv(4096).decode()
        if "READY=1" in msg:
            return proc, time.monotonic() - t0, notify


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def footprint(idle_seconds: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        proc, ready_s, _ = start_daemon(Path(d))
        try:
            time.sleep(2)
            rss = rss_mb(proc.pid)
            c0 = cpu_seconds(proc.pid)
            time.sleep(idle_seconds)
            idle = (cpu_seconds(proc.pid) - c0) * 60 / idle_seconds
            rss_after = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    print(f"start to READY:      {ready_s:6.2f} s      (target <= 2 s; ratio {ready_s / 2:.2f})")
    print(f"steady RSS:          {rss:6.1f} MB     after {idle_seconds:.0f} s idle: {rss_after:.1f} MB "
          f"(target <= 60 MB; ratio {rss_after / 60:.2f})")
    print(f"idle CPU:            {idle:6.3f} CPU-s/min over {idle_seconds:.0f} s "
          f"(target <= 0.05; ratio {idle / 0.05:.2f})")


def synthetic_records(n: int) -> list[Record]:
    """A storm as the BPF side emits it: mostly corrected memory errors (GHES blocks)
    over 1,000 pages, plus SEA claims, memory_failure calls and tracepoint entries."""
    rnd = random.Random(3)
    fmt_text = (ROOT / "tests/fixtures/formats/6.12/memory_failure_event").read_text()
    mfe = parse_format(fmt_text, "ras", "memory_failure_event")
    pages = [rnd.randrange(1 << 28) << 12 for _ in range(1000)]
    blocks = [enc.encode_status_block([enc.section(enc.memory_error(
        physical_addr=pa, node=0, module=pa >> 20 & 15, error_type=2), enc.CORRECTED)])
        for pa in pages]
    out = []
    for i in range(n):
        t = 10**9 + i * 1000
        if i % 50 == 49:
            out.append(Record("call", "memory_failure", 6, frozenset({"return"}), 0, 1, 1, "kworker",
                              t, {"pfn": pages[i % 1000] >> 12, "flags": 2, "ret": 0}))
        elif i % 50 == 48:
            out.append(Record("tp", "memory_failure_event", 21, frozenset(), 0, 1, 1, "kworker", t,
                              {}, encode_trace_entry(mfe, {"pfn": pages[i % 1000] >> 12,
                                                           "type": 13, "result": 3})))
        else:
            blk = blocks[i % 1000]
            out.append(Record("ghes", "ghes_do_proc", 1, frozenset(), 0, 0, 0, "swapper", t,
                              {"source_id": 1, "hest_type": 10, "notify_type": 0,
                               "error_block_length": 1024, "estatus_len": len(blk),
                               "captured_len": len(blk)}, blk))
    return out, {"ras:memory_failure_event": mfe}


def ingest(n: int) -> None:
    records, formats = synthetic_records(n)

    class Count:
        n = 0

        def handle(self, event):
            Count.n += 1

        def flush(self):
            pass

        def close(self):
            pass

    from rasd import config
    from rasd.assembly import build
    from rasd.sinks.metrics import Metrics
    incidents = []
    assembly = build(config.defaults(), EventDecoder(formats), [Metrics(), Count()],
                     on_incident=lambda i: incidents.append(i) if i.closed else None)
    pipeline = assembly.pipeline
    t0 = time.perf_counter()
    for rec in records:
        pipeline.feed(rec)
    dt = time.perf_counter() - t0
    assembly.correlator.expire(2**63 - 1)  # close what is open (not timed)
    lost = n - Count.n
    print(f"replay ingest:       {n / dt:8,.0f} events/s over {n:,} events, lost {lost}, "
          f"decode errors {pipeline.counters.decode_errors} (target >= 50,000; ratio "
          f"{n / dt / 50_000:.2f}); decode, classify, correlate, thresholds, metrics "
          f"(the SQLite store: bench/store.py); {len(incidents)} incidents closed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()
    if os.geteuid() == 0:
        footprint(args.idle_seconds)
    else:
        print("footprint: skipped (needs root to load eBPF)")
    ingest(args.events)


if __name__ == "__main__":
    main()
