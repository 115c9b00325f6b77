"""The ingest path's shortcuts change nothing it outputs.

A storm's events share what the decode stage can share (one decoded CPER record per
identical block, one Task per thread) and later stages take shortcuts on that (record
memos, the correlator's repeat check). Fed once through one pipeline, and once with a
fresh decoder per record (nothing shared, no memo ever hit), the same records must give
the same events, incidents, threshold trips and metrics.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from rasd import config
from rasd.assembly import build
from rasd.decode.event import EventDecoder
from rasd.encode import cper as enc
from rasd.sinks.metrics import Metrics
from rasd.sources.replay import encode_trace_entry
from rasd.sources.tracefs import parse_format

from chains import Clock, ghes, make

FORMATS = Path(__file__).resolve().parents[1] / "fixtures" / "formats" / "6.12"
MFE = parse_format((FORMATS / "memory_failure_event").read_text(), "ras", "memory_failure_event")
PAGES = [0x8_1234_5000, 0x8_1234_6000, 0x9_0000_0000]


def storm() -> list:
    """Corrected errors repeating over three pages from two threads (enough on one page
    to trip its threshold), an SEA chain on one of them, a truncated block."""
    clk = Clock()
    blocks = [enc.encode_status_block([enc.section(enc.memory_error(
        physical_addr=pa, node=0, module=i, error_type=2), enc.CORRECTED)])
        for i, pa in enumerate(PAGES)]
    recs = []
    for i in range(120):
        tid, comm = (0, "swapper/0") if i % 3 else (4321, "victim")
        recs.append(ghes(clk(0.1), bytes(blocks[i % 7 % 3]), tid=tid, comm=comm,
                         notify_type=0))
    pfn = PAGES[1] >> 12
    recs += [make("apei_claim_sea", "call", clk(), tid=4321, comm="victim",
                  rf={"return", "user"}, regs=1, ret=0),
             make("memory_failure", "call", clk(), tid=4321, comm="victim", rf={"return"},
                  pfn=pfn, flags=2, ret=0),
             make("memory_failure_event", "tp", clk(), tid=4321, comm="victim",
                  blob=encode_trace_entry(MFE, {"pfn": pfn, "type": 13, "result": 3})),
             ghes(clk(), blocks[0][:40], tid=0, comm="swapper/0", notify_type=0)]
    recs[-1].flags = frozenset({"truncated"})
    recs += [ghes(clk(0.1), bytes(blocks[2]), tid=0, comm="swapper/0", notify_type=0)
             for _ in range(30)]
    return recs


def ingest(records: list, shared_decoder: bool) -> dict:
    metrics = Metrics()
    changes: list[dict] = []
    assembly = build(config.defaults(), EventDecoder({"ras:memory_failure_event": MFE}),
                     [metrics], on_incident=lambda i: changes.append(i.to_dict()))
    pipeline = assembly.pipeline
    events = []
    for rec in records:
        if not shared_decoder:
            fresh = EventDecoder({"ras:memory_failure_event": MFE})
            events.append(pipeline.feed_event(fresh.decode(rec)).to_dict())
        else:
            events.append(pipeline.feed(rec).to_dict())
    assembly.correlator.expire(2**63 - 1)
    pipeline.flush()
    return {"events": events, "incident_changes": changes,
            "tripped": [i.to_dict() for i in assembly.thresholds.tripped],
            "metrics": [line for line in generate_latest(metrics.registry).decode().splitlines()
                        if "_created" not in line],  # creation times differ, run to run
            "counters": pipeline.counters.to_dict()}


def test_shared_records_and_tasks_give_what_fresh_decoding_gives():
    records = storm()
    shared, fresh = ingest(records, True), ingest(records, False)
    assert len(shared["events"]) == len(records)
    assert shared["tripped"], "the storm trips a threshold (the memo path is exercised)"
    for name in shared:
        assert shared[name] == fresh[name], name


def test_the_decoder_shares_one_task_per_thread():
    dec = EventDecoder()
    clk = Clock()
    a = dec.decode(make("ghes_proc_in_irq", "call", clk(), tid=7, comm="kworker/0:1"))
    b = dec.decode(make("ghes_proc_in_irq", "call", clk(), tid=7, comm="kworker/0:1"))
    c = dec.decode(make("ghes_proc_in_irq", "call", clk(), tid=8, comm="kworker/0:1"))
    assert a.task is b.task and a.task == b.task
    assert c.task is not a.task and (c.task.tid, c.task.comm) == (8, "kworker/0:1")
