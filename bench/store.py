"""Store ingest and `rasdctl summary` latency.

A replayed storm: N corrected memory errors (GHES status blocks, firmware-first, the
arm64 path) spread over P pages on 16 DIMMs, plus a few uncorrected chains (SEA claim
-> GHES recoverable -> memory_failure), through the daemon's own pipeline
(rasd.assembly.build: classify -> correlate -> thresholds -> the store). Measures:

- ingest events/s through classify + correlate + store (``--mode pipeline``: events
  built already decoded, one decoded record per page as bench/decode.py measures the
  decoder); through the whole daemon path from source records (``--mode replay``:
  decode, classify, correlate, thresholds, metrics, store, as ``rasd --replay`` runs
  it); and the store alone (``--mode store``: pre-classified events into Store.handle);
- the store's SQLite writes run in a writer process (the daemon's default) or inline
  (``--writer inline``); CPU seconds are given per process: with other work on the
  machine, wall time says more about the machine than about rasd;
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
from rasd.decode.common import Timestamp  # noqa: E402
from rasd.decode.event import EventDecoder  # noqa: E402
from rasd.encode import cper as enc  # noqa: E402
from rasd.events import Event, Task  # noqa: E402
from rasd.sinks.metrics import Metrics  # noqa: E402
from rasd.sinks.store import PAGE_SHIFT, Store  # noqa: E402
from rasd.sources.records import Record  # noqa: E402

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
    swapper = Task(0, 0, "swapper/0")
    for i in range(n):
        t = t0 + i * step
        if i and i % every == 0:
            yield from uncorrected_chain(t, i // every)
        block, rec = blocks[i % pages]
        # (positional: kind, source, wall_ns, mono_ns, cpu, task, fields, raw, cper; as
        # the decode stage makes them: fresh fields, one shared Task per thread)
        yield Event("ghes", "ghes_do_proc", t, t - t0, i % 2, swapper,
                    {"notify": "sea", "notify_type": 8}, block, rec)


def stamped(block: bytes, i: int) -> bytes:
    """The block with a firmware timestamp of its own (the entry's revision-3 timestamp,
    BCD seconds/minutes/hours from ``i``): no two events' bytes alike, so the decode
    stage's cache never hits — firmware that stamps each record gives such storms."""
    ts = Timestamp.from_fields(2026, 11, 25, i // 3600 % 24, i // 60 % 60, i % 60)
    b = bytearray(block)
    b[ENTRY_VALID] |= 0x4  # timestamp valid
    b[ENTRY_STAMP:ENTRY_STAMP + 8] = ts.raw.to_bytes(8, "little")
    return bytes(b)


# offsets in a one-entry status block: 20-byte block header, then the entry's
# validation bits (+22) and timestamp (+64)
ENTRY_VALID, ENTRY_STAMP = 20 + 22, 20 + 64


def storm_records(n: int, pages: int, t0: int, chains: int = 5, distinct: bool = False):
    """The same storm as source records, as the BPF side emits them (and a recording
    replays them): each event's bytes are its own object, decoded by the decode stage.
    ``distinct``: each block time-stamped on its own (see stamped)."""
    blocks = [blk for blk, _ in page_blocks(pages)]
    every = max(1, n // (chains + 1))
    step = 10**9 // STORM_RATE
    ghes = {"source_id": 1, "hest_type": 10, "notify_type": 0, "error_block_length": 4096}
    for i in range(n):
        t = t0 + i * step
        if i and i % every == 0:
            yield from uncorrected_chain_records(t, i // every)
        # a fresh bytes object each time, as a ring-buffer read gives (its hash not cached)
        blk = stamped(blocks[i % pages], i) if distinct else bytes(bytearray(blocks[i % pages]))
        yield Record("ghes", "ghes_do_proc", 1, frozenset(), i % 2, 0, 0, "swapper/0", t,
                     {**ghes, "estatus_len": len(blk), "captured_len": len(blk)}, blk)


def uncorrected_chain_records(t: int, n: int):
    pa = BASE_PA + (1 << 36) + (n << PAGE_SHIFT)
    mem = enc.memory_error(physical_addr=pa, node=0, module=1, error_type=3)
    blk = enc.encode_status_block([enc.section(mem, severity=enc.RECOVERABLE)])
    pid = 4000 + n
    yield Record("call", "apei_claim_sea", 4, frozenset({"return", "user"}), 1, pid, pid,
                 "victim", t, {"ret": 0, "regs": 1})
    yield Record("ghes", "ghes_do_proc", 1, frozenset(), 1, pid, pid, "victim", t + 1000,
                 {"source_id": 2, "hest_type": 10, "notify_type": 8, "error_block_length": 4096,
                  "estatus_len": len(blk), "captured_len": len(blk)}, blk)
    yield Record("call", "memory_failure", 6, frozenset({"return"}), 0, 77, 77, "kworker/0:1",
                 t + 20_000_000, {"pfn": pa >> PAGE_SHIFT, "flags": 0, "ret": 0})


def ingest_replay(db: Path, n: int, pages: int, batch: int, writer: str,
                  distinct: bool = False) -> tuple[int, Store]:
    """Source records through the daemon's pipeline: decode, classify, correlate,
    thresholds, then metrics and the store (rasd.assembly.build, as the daemon)."""
    cfg = config_mod.defaults()
    store = Store(db, batch_events=batch, batch_ms=200, writer=writer)
    metrics = Metrics()
    asm = build(cfg, EventDecoder(), [metrics, store],
                on_incident=lambda i: (store.save_incident(i), metrics.incident(i)),
                on_count=store.count_incident,
                first_event_id=store.next_event_id, first_incident_id=store.next_incident_id)
    t0 = time.time_ns() - 3 * 3600 * 10**9
    count = 0
    for rec in storm_records(n, pages, t0, distinct=distinct):
        asm.pipeline.feed(rec)
        count += 1
    asm.correlator.expire(2**63 - 1)
    asm.pipeline.close()
    return count, store


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def children_cpu() -> float:
    """CPU seconds of finished children: the writer process, once the store closed."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ingest_pipeline(db: Path, n: int, pages: int, batch: int, writer: str) -> tuple[int, Store]:
    cfg = config_mod.defaults()
    store = Store(db, batch_events=batch, batch_ms=200, writer=writer)
    asm = build(cfg, EventDecoder(), [store], on_incident=store.save_incident,
                on_count=store.count_incident, first_event_id=store.next_event_id, first_incident_id=store.next_incident_id)
    t0 = time.time_ns() - 3600 * 10**9
    count = 0
    for event in storm(n, pages, t0):
        asm.pipeline.feed_event(event)
        count += 1
    asm.correlator.expire(2**63 - 1)
    asm.pipeline.close()
    return count, store


def ingest_store_only(db: Path, n: int, pages: int, batch: int, writer: str
                      ) -> tuple[int, Store]:
    store = Store(db, batch_events=batch, batch_ms=200, writer=writer)
    t0 = time.time_ns() - 7200 * 10**9
    count = 0
    for event in storm(n, pages, t0):
        classify(event)  # outside the timer would need a list: keep memory flat instead
        store.handle(event)
        count += 1
    store.close()
    return count, store


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
    ap.add_argument("--batch", type=int, default=config_mod.defaults()["store"]["batch_events"],
                    help="events per store batch (default: the daemon's)")
    ap.add_argument("--mode", choices=("pipeline", "replay", "store"), default="pipeline")
    ap.add_argument("--writer", choices=("process", "inline"), default="process",
                    help="SQLite writes in a child process (the daemon's default) or inline")
    ap.add_argument("--distinct", action="store_true", help="replay: every block with a "
                    "timestamp of its own (no two alike: the decode cache never hits)")
    ap.add_argument("--keep", metavar="DIR", help="put the store here and keep it")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rasd-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "rasd.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    rss0 = peak_rss_mb()
    ingest = {"pipeline": ingest_pipeline, "replay": ingest_replay,
              "store": ingest_store_only}[args.mode]
    load = os.getloadavg()[0]
    start, cpu, child_cpu = time.perf_counter(), time.process_time(), children_cpu()
    extra = {"distinct": True} if args.distinct else {}
    if extra and args.mode != "replay":
        ap.error("--distinct is for --mode replay")
    count, store = ingest(db, args.events, args.pages, args.batch, args.writer, **extra)
    waited = store.writer_waited_s
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu
    child_cpu = children_cpu() - child_cpu
    rate, cpu_rate = count / secs, count / cpu
    print(f"ingest ({args.mode}, {args.writer} writer): {count} events in {secs:.1f} s wall = "
          f"{rate:,.0f} events/s ({rate / TARGET_RATE:.2f}x the {TARGET_RATE:,}/s target); "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"CPU: daemon process {cpu:.1f} s = {cpu_rate:,.0f} events per CPU-second "
          f"({cpu_rate / TARGET_RATE:.2f}x the target); writer process {child_cpu:.1f} s"
          + (f" = {count / child_cpu:,.0f} events per CPU-second; the daemon waited "
             f"{waited:.1f} s on it" if child_cpu else ""))
    print(f"lost {store.counters.lost_events}, commits {store.counters.commits}, "
          f"incident writes {store.counters.committed_incidents}")
    print(f"peak RSS: {peak_rss_mb():.0f} MB (before ingest {rss0:.0f} MB); writer process "
          f"{peak_rss_mb(resource.RUSAGE_CHILDREN):.0f} MB")
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
