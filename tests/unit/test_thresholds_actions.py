"""Leaky-bucket thresholds (predictive failure), MPIDR mapping and the actions' limits."""

from __future__ import annotations

import struct

from rasd import events as ev
from rasd.classify.cpu_map import CpuMap, parse_madt_mpidrs
from rasd.classify.thresholds import DAY_NS, Bucket, Limit, Thresholds
from rasd.correlate.incidents import PAGE_SHIFT
from rasd.encode import cper as enc
from rasd.decode import cper
from rasd.events import Event, Incident
from rasd.sinks.actions import Actions


def ce(t_ns, pa, **loc):
    rec = cper.decode(enc.encode_status_block([enc.section(
        enc.memory_error(physical_addr=pa, **loc), enc.CORRECTED)]))
    return Event(kind=ev.GHES, source="ghes_do_proc", wall_ns=t_ns, cper=rec, severity="corrected")


def test_bucket_trips_once_and_rearms_after_draining():
    limit = Limit(3, 3000)  # leaks one per 1000 ns
    b = Bucket(0)
    assert [b.add(t, limit) for t in (0, 0, 0)] == [False, False, True]
    assert not b.add(1, limit)  # already tripped: no second incident for the same burst
    assert not b.add(10_000, limit)  # drained to 0 and re-armed; one error is not a burst
    assert [b.add(t, limit) for t in (10_000, 10_000)] == [False, True]


def test_steady_trickle_below_the_rate_never_trips():
    limit = Limit(50, DAY_NS)
    b = Bucket(0)
    step = DAY_NS // 40  # 40 a day, under 50 a day
    assert not any(b.add(i * step, limit) for i in range(1000))


def test_page_threshold_opens_one_predictive_incident():
    got = []
    th = Thresholds(limits={"page": Limit(50, DAY_NS), "location": Limit(10**6, DAY_NS)},
                    on_incident=lambda inc, e: got.append(inc))
    pa = 0x8_0000_1000
    for i in range(60):
        th(ce(i * 10**9, pa, node=0, module=2))
    assert len(got) == 1
    inc = got[0]
    assert inc.kind == "predictive_failure" and inc.pfn == pa >> PAGE_SHIFT
    assert "50 corrected errors within 24 h on page" in inc.summary


def test_location_threshold_counts_across_pages():
    got = []
    th = Thresholds(limits={"location": Limit(20, DAY_NS)}, on_incident=lambda i, e: got.append(i))
    for i in range(25):  # 25 different pages, same DIMM row
        th(ce(i * 10**9, 0x1000_0000 + i * 0x10000, node=1, module=4, row=77))
    assert [g.location for g in got] == [{"node": 1, "module": 4, "row": 77}]


def test_uncorrected_events_do_not_count():
    th = Thresholds(limits={"page": Limit(1, DAY_NS)})
    e = ce(0, 0x1000)
    e.severity = "recoverable"
    th(e)
    assert th.tripped == [] and not th.buckets


def test_buckets_are_bounded():
    th = Thresholds(max_buckets=100)
    for i in range(1000):
        th(ce(i, 0x1000 * (i + 1)))
    assert len(th.buckets) <= 100


def madt(entries):
    """ACPI MADT: 44-byte header, then GICC subtables (type 0x0B, 80 bytes; ACPI 6.5
    Table 5.37: flags at +12, MPIDR at +68)."""
    body = b""
    for mpidr, enabled in entries:
        gicc = bytearray(80)
        gicc[0], gicc[1] = 0x0B, 80
        struct.pack_into("<I", gicc, 12, 1 if enabled else 0)
        struct.pack_into("<Q", gicc, 68, mpidr)
        body += bytes(gicc)
    return b"APIC" + bytes(40) + body


def test_mpidr_to_logical_cpu_from_madt():
    data = madt([(0x0, True), (0x1, True), (0x100, False), (0x10000, True)])
    assert parse_madt_mpidrs(data) == [0x0, 0x1, 0x10000]
    cpus = CpuMap(parse_madt_mpidrs(data))
    assert cpus(0x10000) == 2 and cpus(0x80000001) == 1  # bit 31 (RES1) ignored
    assert cpus(0x100) is None
    assert parse_madt_mpidrs(b"APIC" + bytes(40) + b"\x0b\x00") == []  # garbage length: stop


def sysfs(tmp_path, ncpu, offline=()):
    for i in range(ncpu):
        d = tmp_path / f"devices/system/cpu/cpu{i}"
        d.mkdir(parents=True)
        if i:
            (d / "online").write_text("0\n" if i in offline else "1\n")
    (tmp_path / "devices/system/memory").mkdir(parents=True)
    (tmp_path / "devices/system/memory/soft_offline_page").write_text("")
    return tmp_path


def predictive(**kw):
    return Incident(kind="predictive_failure", key="k", first_wall_ns=0, last_wall_ns=0, **kw)


def test_actions_are_off_by_default(tmp_path):
    acts = Actions(sysfs=sysfs(tmp_path, 4))
    assert acts.on_predictive(predictive(pfn=1, phys_addr=0x1000)) is None
    assert (tmp_path / "devices/system/memory/soft_offline_page").read_text() == ""


def test_dry_run_writes_nothing(tmp_path):
    acts = Actions(page_mode="dry-run", cpu_mode="dry-run", max_cpu_share=0.5,
                   sysfs=sysfs(tmp_path, 4))
    rec = acts.on_predictive(predictive(pfn=1, phys_addr=0x1000))
    assert rec.mode == "dry-run" and not rec.done
    assert acts.on_predictive(predictive(cpu=2)).reason == "dry run"
    assert (tmp_path / "devices/system/cpu/cpu2/online").read_text() == "1\n"


def test_page_offline_writes_the_address_within_the_daily_limit(tmp_path):
    acts = Actions(page_mode="on", max_pages_per_day=2, sysfs=sysfs(tmp_path, 2))
    done = [acts.on_predictive(predictive(pfn=i, phys_addr=i << 12)) for i in (1, 2, 3)]
    assert [d.done for d in done] == [True, True, False]
    assert "limit of 2 pages a day" in done[2].reason
    assert (tmp_path / "devices/system/memory/soft_offline_page").read_text() == "0x2000"


def test_cpu_offline_limits(tmp_path):
    root = sysfs(tmp_path, 8, offline={5})
    acts = Actions(cpu_mode="on", max_cpu_share=0.25, sysfs=root)
    assert acts.on_predictive(predictive(cpu=0)).reason == "never offline CPU 0"
    first = acts.on_predictive(predictive(cpu=3))
    assert first.done and (root / "devices/system/cpu/cpu3/online").read_text() == "0"
    third = acts.on_predictive(predictive(cpu=4))  # 3 of 8 > 25%
    assert not third.done and "over the 25% limit" in third.reason
