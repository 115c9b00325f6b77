"""Store ingest and `rasdctl summary` latency.

A replayed storm: N corrected memory errors (GHES status blocks, firmware-first, the
arm64 path) spread over P pages on 16 DIMMs, plus a few uncorrected chains (SEA claim
-> GHES recoverable -> memory_failure), through the daemon's own pipeline
(rasd.assembly.build: classify -> correlate -> thresholds -> the store). Measures:

- ingest events/s through classify + correlate + store (the daemon's path), and the
  store alone (pre-classified events straight into Store.handle);
- peak RSS of this process (bounded memory: it must not grow with N);
- `rasdctl summary` (the real command, in-process and as a subprocess) on the result;
- `rasdctl events --limit 50` and `PRAGMA integrity_check` at open.

Targets (issue 4): >= 50,000 events/s with bounded memory; summary <= 1 s. Numbers
are printed with their ratio to the target, never asserted.

    .venv/bin/python bench/store.py [--events 1000000] [--pages 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rasd import config as config_mod  # noqa: E402
from rasd.assembly import build  # noqa: E402
from rasd.classify.severity import classify  # noqa: E402
from rasd.cli import rasdctl  # noqa: E402
from rasd.decode import cper  # noqa: E402
from rasd.decode.event import EventDecoder  # noqa: E402
from rasd.encode import cper as enc  # noqa: E402
from rasd.events import Event, Task  # noqa: E402
from rasd.sinks.store import PAGE_SHIFT, Store  # noqa: E402

TARGET_RATE = 50_000
TARGET_SUMMARY_S = 1.0
BASE_PA = 0x80_0000_0000
STORM_RATE = 50_000  # simulated arrival: wall clocks advance as if at this rate


def page_blocks(pages: int) -> list[tuple[bytes, object]]:
    """One CE status block per page, decoded once (the decode stage is bench/decode.py's)."""
    out = []
    for p in range(pages):
        mem = enc.memory_error(physical_addr=BASE_PA + (p << PAGE_SHIFT) + 0x40, node=p % 2,
                               card=p % 4, module=p % 16 // 4, rank=p % 2, bank=p % 8,
                               row=p, column=8, error_type=2)
        block = enc.encode_status_block([enc.section(mem, severity=enc.CORRECTED)])
        out.append((block, cper.try_decode(block)))
    return out


def uncorrected_chain(t: int, n: int) -> list[Event]:
    pa = BASE_PA + (1 << 36) + (n << PAGE_SHIFT)
    mem = enc.memory_error(physical_addr=pa, node=0, module=1, error_type=3)
    block = enc.encode_status_block([enc.section(mem, severity=enc.RECOVERABLE)])
    task = Task(4000 + n, 4000 + n, "victim")
    return [Event("sea_claim", "apei_claim_sea", t, cpu=1, task=task,
                  fields={"claimed": True, "result": "claimed", "origin": "host_user", "ret": 0}),
            Event("ghes", "ghes_do_proc", t + 1000, cpu=1, task=task, raw=block,
                  cper=cper.try_decode(block), fields={"notify": "sea", "notify_type": 8}),
            Event("memory_failure", "memory_failure", t + 20_000_000, cpu=0,
                  task=Task(77, 77, "kworker/0:1"),
                  fields={"pfn": pa >> PAGE_SHIFT, "flags": 0, "flag_names": [], "ret": 0,
                          "result": "handled", "action_required": False})]


def storm(n: int, pages: int, t0: int, chains: int = 5):
    blocks = page_blocks(pages)
    every = max(1, n // (chains + 1))
    step = 10**9 // STORM_RATE
    for i in range(n):
        t = t0 + i * step
        if i and i % every == 0:
            yield from uncorrected_chain(t, i // every)
        block, rec = blocks[i % pages]
        yield Event("ghes", "ghes_do_proc", t, mono_ns=t - t0, cpu=i % 2,
                    task=Task(0, 0, "swapper/0"), raw=block, cper=rec,
                    fields={"notify": "sea", "notify_type": 8})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ingest_pipeline(db: Path, n: int, pages: int, batch: int) -> tuple[int, float, Store]:
    cfg = config_mod.defaults()
    store = Store(db, batch_events=batch, batch_ms=200)
    asm = build(cfg, EventDecoder(), [store], on_incident=store.save_incident,
                first_event_id=store.next_event_id, first_incident_id=store.next_incident_id)
    t0 = time.time_ns() - 3600 * 10**9
    count = 0
    start, cpu = time.perf_counter(), time.process_time()
    for event in storm(n, pages, t0):
        asm.pipeline.feed_event(event)
        count += 1
    asm.correlator.expire(2**63 - 1)
    asm.pipeline.close()
    return count, time.perf_counter() - start, time.process_time() - cpu, store


def ingest_store_only(db: Path, n: int, pages: int, batch: int) -> tuple[int, float, Store]:
    store = Store(db, batch_events=batch, batch_ms=200)
    t0 = time.time_ns() - 7200 * 10**9
    count = 0
    start, cpu = time.perf_counter(), time.process_time()
    for event in storm(n, pages, t0):
        classify(event)  # outside the timer would need a list: keep memory flat instead
        store.handle(event)
        count += 1
    store.close()
    return count, time.perf_counter() - start, time.process_time() - cpu, store


def timed_rasdctl(argv: list[str]) -> tuple[float, str, int]:
    buf = io.StringIO()
    start = time.perf_counter()
    with redirect_stdout(buf):
        code = rasdctl.main(argv)
    return time.perf_counter() - start, buf.getvalue(), code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--mode", choices=("pipeline", "store"), default="pipeline")
    ap.add_argument("--keep", metavar="DIR", help="put the store here and keep it")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rasd-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "rasd.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    rss0 = peak_rss_mb()
    ingest = ingest_pipeline if args.mode == "pipeline" else ingest_store_only
    load = os.getloadavg()[0]
    count, secs, cpu, store = ingest(db, args.events, args.pages, args.batch)
    rate, cpu_rate = count / secs, count / cpu
    print(f"ingest ({args.mode}): {count} events in {secs:.1f} s wall = {rate:,.0f} events/s "
          f"({rate / TARGET_RATE:.2f}x the {TARGET_RATE:,}/s target); "
          f"{cpu:.1f} CPU-s = {cpu_rate:,.0f} events per CPU-second "
          f"({cpu_rate / TARGET_RATE:.2f}x); load average {load:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"lost {store.counters.lost_events}, commits {store.counters.commits}, "
          f"incident writes {store.counters.committed_incidents}")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (before ingest {rss0:.0f} MB)")
    print(f"store size: {db.stat().st_size / 2**20:.0f} MB "
          f"({db.stat().st_size / count:.0f} bytes/event)")

    for mode in ("always", "after_crash"):
        start = time.perf_counter()
        Store(db, integrity_check=mode).close()
        print(f"open, integrity_check = {mode}: {time.perf_counter() - start:.2f} s "
              f"(after a clean close)")
    for argv in (["summary"], ["summary", "--json"], ["summary", "--since", "90m"],
                 ["events", "--limit", "50"], ["incidents", "--severity", "recoverable"]):
        secs, out, code = timed_rasdctl([argv[0], "--db", str(db), *argv[1:]])
        ratio = f" ({secs / TARGET_SUMMARY_S:.2f}x the {TARGET_SUMMARY_S:.0f} s budget)" \
            if argv[0] == "summary" else ""
        print(f"rasdctl {' '.join(argv)}: {secs * 1000:.0f} ms in-process, exit {code}, "
              f"{len(out.splitlines())} lines{ratio}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rasd.cli.rasdctl", "summary", "--db", str(db)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    secs = time.perf_counter() - start
    print(f"rasdctl summary as a new process: {secs * 1000:.0f} ms "
          f"({secs / TARGET_SUMMARY_S:.2f}x budget, includes Python start-up)")
    if not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
