"""Decode throughput: a mixed CPER corpus decoded to JSON text, records per second.

Corpus: platform memory errors, ARM processor errors with several error-information
and context entries, PCIe errors and vendor sections, in both framings (ACPI status
blocks and UEFI CPER records), with varying field values. The figure printed is
end to end: bytes -> typed objects -> JSON text (one line per record), as
``rasdctl decode --json`` does. Target on the 2-core dev machine: >= 30,000 records/s.

    .venv/bin/python bench/decode.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rasd.cli.rasdctl import Rendered, render_all  # noqa: E402
from rasd.decode import cper  # noqa: E402
from rasd.encode import cper as enc  # noqa: E402

TARGET = 30_000


def make_corpus(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    builders = (_memory, _arm, _pcie, _mixed)
    corpus = []
    for i in range(n):
        sections = builders[i % len(builders)](rnd)
        framing = enc.encode_status_block if i % 2 == 0 else enc.encode_cper_record
        corpus.append(framing(sections))
    return corpus


def _memory(rnd: random.Random) -> list:
    mem = enc.memory_error(physical_addr=rnd.randrange(1 << 40) & ~0xFFF, node=rnd.randrange(4),
                           card=0, module=rnd.randrange(16), rank=rnd.randrange(4),
                           bank_group=rnd.randrange(4), bank_address=rnd.randrange(4),
                           row=rnd.randrange(1 << 17), column=rnd.randrange(1024),
                           error_type=rnd.choice((2, 3)), mem_dev_handle=rnd.randrange(64))
    return [enc.section(mem, rnd.choice((enc.CORRECTED, enc.RECOVERABLE)),
                        timestamp=enc.Timestamp.from_fields(2026, 11, 25, 4, 5, rnd.randrange(60)))]


def _arm(rnd: random.Random) -> list:
    infos = [enc.arm_error_info(0x02, error_info=0x7 | 1 << 16 | 3 << 18 | 2 << 22,
                                physical_fault_addr=rnd.randrange(1 << 40)),
             enc.arm_error_info(0x04, error_info=0x3 | 1 << 18),
             enc.arm_error_info(0x08, error_info=0xFFF | 1 << 29, virt_fault_addr=rnd.randrange(1 << 48))]
    ctx = [enc.arm_context(4, [rnd.randrange(1 << 64) for _ in range(32)]),
           enc.arm_context(5, {"esr_el1": 0x96000010, "far_el1": rnd.randrange(1 << 48)})]
    arm = enc.arm_processor(infos, ctx, mpidr=0x80000000 | rnd.randrange(64), midr=0x410FD0C0,
                            running_state=1, vendor=bytes(16))
    return [enc.section(arm, enc.RECOVERABLE)]


def _pcie(rnd: random.Random) -> list:
    sec = enc.pcie(port_type=4, version=(1, 0), command=0x0407, device=dict(
        bus=rnd.randrange(256), device=rnd.randrange(32), function=rnd.randrange(8),
        vendor_id=0x15B3, device_id=0x101B), aer=dict(uncor_status=1 << 14, cor_status=1))
    return [enc.section(sec, enc.RECOVERABLE)]


def _mixed(rnd: random.Random) -> list:
    return _memory(rnd) + [enc.raw_section("12345678-1234-5678-1234-567812345678",
                                           rnd.randbytes(48), enc.CORRECTED)]


def render_blob(blob: bytes) -> Rendered:
    """One input's JSON lines, as ``rasdctl decode --json`` renders them: Record.to_json,
    which equals json of rec.to_dict() byte for byte (tests/unit/test_cper_json_identity.py)."""
    return Rendered("".join([rec.to_json() + "\n" for rec in cper.decode_all(blob)]))


def best_rate(corpus: list[bytes], rounds: int, workers: int) -> float:
    """Best records/s over ``rounds``, JSON lines written to /dev/null by rasdctl's own
    render_all(): with workers > 1, forked processes render chunks of the corpus and
    write them in order, exactly as ``rasdctl decode --jobs`` does with its inputs."""
    best = 0.0
    with open(os.devnull, "w") as sink:
        for _ in range(rounds):
            t0 = time.perf_counter()
            render_all(render_blob, corpus, workers, sink, sink)
            best = max(best, len(corpus) / (time.perf_counter() - t0))
    return best


def stage_times(corpus: list[bytes], rounds: int) -> tuple[float, float, float]:
    """Best microseconds per record for decoding (record by record, as rasdctl does: a
    list of every record would bill the garbage collector to decoding) and for writing
    JSON text, and the average JSON bytes per record."""
    records = [rec for blob in corpus for rec in cper.decode_all(blob)]
    size = sum([len(rec.to_json()) for rec in records])
    decode_s = text_s = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for blob in corpus:
            cper.decode_all(blob)
        t1 = time.perf_counter()
        for rec in records:
            rec.to_json()
        t2 = time.perf_counter()
        decode_s, text_s = min(decode_s, t1 - t0), min(text_s, t2 - t1)
    n = len(corpus)
    return decode_s / n * 1e6, text_s / n * 1e6, size / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    corpus = make_corpus(args.records)
    size = sum(map(len, corpus))
    print(f"corpus: {len(corpus)} records, {size / len(corpus):.0f} bytes/record on average")
    decode_us, text_us, json_bytes = stage_times(corpus, args.rounds)
    print(f"per record, 1 process: decode {decode_us:.1f} us, JSON text {text_us:.1f} us "
          f"({json_bytes:.0f} JSON bytes/record)")
    single = best_rate(corpus, args.rounds, 1)
    print(f"decode to JSON text, 1 process:  {single:,.0f} records/s (best of {args.rounds}); "
          f"ratio to target {single / TARGET:.2f}")
    cpus = os.cpu_count() or 1
    if cpus > 1:
        multi = best_rate(corpus, args.rounds, cpus)
        print(f"decode to JSON text, {cpus} processes: {multi:,.0f} records/s; ratio to target "
              f"{multi / TARGET:.2f}, to 1 process {multi / single:.2f}")
    print(f"target (C decoder, json-c, on this machine): {TARGET:,} records/s")


if __name__ == "__main__":
    main()
