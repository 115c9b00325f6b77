"""The rasd tracefs instance on this host's real tracefs (root).

The ras:* events exist here but never fire, so the buffering, draining, restart,
dedup and loss tests use an event that does fire on demand:
syscalls:sys_enter_getppid (one entry per os.getppid()). Each test makes its own
instance and removes it. Ring-buffer page parsing is also tested on synthetic
pages for the event types a syscall storm does not produce (long entries,
discarded events, stored missed counts, absolute stamps).
"""
from __future__ import annotations

import os
import select
import struct
import time
import uuid
from pathlib import Path

import pytest

from rasd.sources import lockdown
from rasd.sources.trace_instance import (DEFAULT_EVENTS, RB_MISSED_EVENTS, RB_MISSED_STORED,
                                         Deduper, PageLayout, TraceInstance, TracefsLockedDown,
                                         dedup_payload, find_tracefs_mount, parse_page)

EVENT = "syscalls:sys_enter_getppid"
is_root = os.geteuid() == 0
tracefs = find_tracefs_mount()


def host_test(f):
    """Real tracefs: root, and tracefs mounted (rasd would mount it, a test should not)."""
    f = pytest.mark.skipif(tracefs is None, reason="no tracefs mounted")(f)
    f = pytest.mark.skipif(not is_root, reason="needs root: creates a tracefs instance")(f)
    return pytest.mark.host(f)


def _name() -> str:
    return f"rasd-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_instance():
    made: list[TraceInstance] = []

    def make(same: bool = False, **kw) -> TraceInstance:
        """A new instance, or (same=True) the first one again, as after a restart."""
        kw.setdefault("events", [EVENT])
        inst = TraceInstance(name=made[0].name if same else _name(), **kw).setup()
        made.append(inst)
        return inst

    yield make
    for inst in made:
        inst.close()
    for inst in {i.name: i for i in made}.values():
        inst.remove()


def _getppid(n: int) -> None:
    for _ in range(n):
        os.getppid()


def _mine(entries):
    return [e for e in entries if e.fields.get("common_pid") == os.getpid()]


# ---------------------------------------------------------------- real tracefs

@host_test
@pytest.mark.parametrize("n", [1, 500, 5000])
def test_drain_delivers_exactly_n_with_fields_and_mono_time(make_instance, n: int) -> None:
    inst = make_instance()
    inst.drain()
    t0 = time.monotonic_ns()
    _getppid(n)
    t1 = time.monotonic_ns()
    entries = _mine(inst.drain())
    assert len(entries) == n
    assert all(e.key == EVENT and e.fields["common_type"] == inst.format(EVENT).id for e in entries)
    assert all("__syscall_nr" in e.fields for e in entries)
    stamps = [e.ts_ns for e in entries]
    assert stamps == sorted(stamps)
    # trace_clock=mono is CLOCK_MONOTONIC: every stamp falls inside the window we measured.
    assert t0 <= stamps[0] and stamps[-1] <= t1
    assert inst.counters.lost == 0 and inst.counters.unknown_type == 0
    assert _mine(inst.drain()) == []  # consumed


@host_test
def test_instance_configuration(make_instance) -> None:
    inst = make_instance(buffer_size_kb=64)
    p = Path(inst.path)
    assert inst.created and p.is_dir() and p.parent == tracefs / "instances"
    assert "[mono]" in (p / "trace_clock").read_text()
    assert (p / "tracing_on").read_text().strip() == "1"
    # The kernel rounds up to whole sub-buffers.
    assert 64 <= int((p / "buffer_size_kb").read_text().split()[0]) <= 72
    assert (p / "events/syscalls/sys_enter_getppid/enable").read_text().strip() == "1"
    # Only the instance is enabled, not the global buffer.
    assert (tracefs / "events/syscalls/sys_enter_getppid/enable").read_text().strip() == "0"


@host_test
def test_ras_events_enabled_when_present(make_instance) -> None:
    inst = make_instance(events=DEFAULT_EVENTS)
    present = [e for e in ("ras:mc_event", "ras:arm_event", "ras:non_standard_event", "ras:aer_event",
                           "ras:memory_failure_event", "memory_failure:memory_failure_event",
                           "signal:signal_generate")
               if (tracefs / "events" / e.replace(":", "/")).is_dir()]
    assert present, "this host has ras:* events"
    assert sorted(inst.enabled) == sorted(present)
    for key in present:
        assert (inst.path / "events" / key.replace(":", "/") / "enable").read_text().strip() == "1"
    assert len(inst.enabled) + len(inst.missing) == len(DEFAULT_EVENTS)
    assert [e for e in inst.drain() if e.key != "signal:signal_generate"] == []  # never fire here


@host_test
def test_sigbus_buffered_while_down_and_nothing_else_of_signal_generate(make_instance) -> None:
    """signal_generate sees every signal on the machine: the instance's kernel filter keeps
    SIGBUS only, so a SIGBUS sent while rasd is down is waiting at start and the
    SIGCHLD/SIGUSR1 noise never took buffer space."""
    import signal
    import subprocess
    first = make_instance(events=["signal:signal_generate"])
    assert first.enabled == ["signal:signal_generate"]
    filt = (first.path / "events/signal/signal_generate/filter").read_text().strip()
    assert filt == "sig == 7", filt
    first.drain()
    state = first.current_loss_state()
    first.close()  # rasd is down
    victims = []
    for sig in (signal.SIGUSR1, signal.SIGBUS, signal.SIGUSR2):
        child = subprocess.Popen(["sleep", "30"])
        child.send_signal(sig)
        child.wait()
        victims.append(child.pid)
    again = make_instance(same=True, events=["signal:signal_generate"], loss_state=state)
    got = [e for e in again.drain() if e.fields.get("pid") in victims]
    assert [(e.fields["sig"], e.fields["pid"]) for e in got] == [(7, victims[1])]
    # the daemon's fallback source hands it on as the sigbus probe's record
    from rasd.sources.fallbacks import _probe_reading
    assert _probe_reading(got[0].key, got[0].event) == "sigbus"


@host_test
def test_a_filter_the_kernel_refuses_leaves_the_event_off(make_instance) -> None:
    inst = make_instance(events=[EVENT], filters={EVENT: "no_such_field == 1"})
    assert inst.enabled == [] and inst.missing == [EVENT]
    assert (inst.path / "events" / EVENT.replace(":", "/") / "enable").read_text().strip() == "0"


@host_test
def test_restart_delivers_buffered_events_once(make_instance) -> None:
    first = make_instance()
    first.drain()
    state = first.current_loss_state()
    first.close()  # rasd is down: no reader, the instance keeps recording
    _getppid(300)
    second = make_instance(same=True, loss_state=state)
    assert not second.created
    assert len(_mine(second.drain())) == 300
    assert _mine(second.drain()) == []
    second.close()
    third = make_instance(same=True, loss_state=second.current_loss_state())
    assert _mine(third.drain()) == [] and third.counters.lost == 0


@host_test
def test_loss_while_down_is_counted_exactly(make_instance) -> None:
    first = make_instance(buffer_size_kb=8)
    first.drain()
    state = first.current_loss_state()
    first.close()
    n = 20000
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # one CPU buffer, so it must overflow
    try:
        _getppid(n)
    finally:
        os.sched_setaffinity(0, affinity)
    second = make_instance(same=True, loss_state=state)
    got = second.drain()
    c = second.counters
    mine = len(_mine(got))
    assert 0 < mine < n
    assert c.lost > 0 and c.missed_pages >= 1  # the kernel flagged the gap in the page too
    # Everything is accounted for: what we read plus what was overwritten
    # (exactly, unless another process called getppid meanwhile).
    assert mine + c.lost >= n
    if len(got) == mine:
        assert mine + c.lost == n
    # A restart after that does not count the same loss again.
    second.close()
    third = make_instance(same=True, loss_state=second.current_loss_state())
    third.drain()
    assert third.counters.lost == 0


@host_test
def test_dedup_drops_what_bpf_already_delivered(make_instance) -> None:
    inst = make_instance()
    inst.drain()
    _getppid(10)
    entries = _mine(inst.drain())
    fmt = inst.format(EVENT)
    dd = Deduper()
    # The BPF path saw the first 6 (its blob is the entry cut at its logical length).
    for e in entries[:6]:
        bpf_blob = e.raw[:fmt.fixed_size]  # BPF ships the logical length, tracefs pads to 4
        assert dd.offer("bpf", e.key, dedup_payload(fmt, bpf_blob), e.ts_ns + 3_000)
    delivered = [e for e in entries if dd.offer("tracefs", e.key, dedup_payload(fmt, e.raw), e.ts_ns)]
    # The 10 entries have identical payloads: matching is one to one, so exactly 4 pass.
    assert len(delivered) == 4 and dd.duplicates == 6


@host_test
def test_poll_wakes_on_first_event(make_instance) -> None:
    inst = make_instance()
    # Other processes on this host call getppid too: only ours may wake us.
    (inst.path / "events/syscalls/sys_enter_getppid/filter").write_text(f"common_pid == {os.getpid()}")
    inst.drain()
    poller = select.poll()
    for fd in inst.fds():
        poller.register(fd, select.POLLIN)
    assert poller.poll(50) == []  # idle: nothing to read, no busy loop
    os.getppid()
    assert poller.poll(2000), "buffer_percent=0 makes trace_pipe_raw readable on one event"
    assert len(_mine(inst.drain())) == 1


@host_test
def test_unknown_event_type_is_counted_not_fatal(make_instance) -> None:
    """An entry whose common_type matches no format read at setup (someone enabled
    another event in our instance, or the format changed) is counted and skipped."""
    inst = make_instance()
    inst.drain()
    (inst.path / "events/syscalls/sys_enter_getpid/enable").write_text("1")
    for _ in range(5):
        os.getpid()
        os.getppid()
    got = _mine(inst.drain())
    assert len(got) == 5 and all(e.event == "sys_enter_getppid" for e in got)
    assert inst.counters.unknown_type >= 5


@host_test
def test_clock_change_on_reuse_is_counted(make_instance) -> None:
    """An instance left on another clock is switched to mono; the kernel empties the
    buffer when the clock changes, so that loss is counted."""
    first = make_instance()
    first.close()
    (first.path / "trace_clock").write_text("local")
    _getppid(10)
    second = make_instance(same=True)
    assert second.counters.clock_resets == 1 and second.counters.lost >= 10
    assert "[mono]" in (second.path / "trace_clock").read_text()
    assert _mine(second.drain()) == []


@host_test
def test_confidentiality_lockdown_is_a_clear_error(monkeypatch, tmp_path) -> None:
    f = tmp_path / "lockdown"
    f.write_text("none integrity [confidentiality]\n")
    monkeypatch.setattr(lockdown, "LOCKDOWN_PATH", f)
    with pytest.raises(TracefsLockedDown) as ei:
        TraceInstance(name=_name(), events=[EVENT]).setup()
    assert ei.value.mode == "confidentiality" and "lockdown" in str(ei.value)


# ------------------------------------------------------------- pure functions

def test_find_tracefs_mount_prefers_non_debugfs(tmp_path) -> None:
    m = tmp_path / "mounts"
    m.write_text("debugfs /sys/kernel/debug debugfs rw 0 0\n"
                 "tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"
                 "tracefs /sys/kernel/tracing tracefs rw 0 0\n")
    assert find_tracefs_mount(str(m)) == Path("/sys/kernel/tracing")
    m.write_text("tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n")
    assert find_tracefs_mount(str(m)) is None  # debugfs-only: mount our own
    assert find_tracefs_mount(str(tmp_path / "none")) is None


LAY = PageLayout()


def _ev(type_len: int, delta: int, body: bytes = b"") -> bytes:
    return struct.pack("<I", (delta << 5) | type_len) + body


def _page(events: bytes, ts: int = 1_000, flags: int = 0, tail: bytes = b"") -> bytes:
    commit = len(events) | flags
    page = struct.pack("<Qq", ts, commit) + events + tail
    return page + b"\0" * (LAY.page_size - len(page))


def test_page_small_long_extend_padding_and_abs() -> None:
    small = b"A" * 8
    long_body = b"B" * 200  # > 28*4: length word form
    events = (_ev(2, 5, small)
              + _ev(0, 7, struct.pack("<I", 4 + len(long_body)) + long_body)
              + _ev(30, 3, struct.pack("<I", 2))  # time extend: += (2 << 27) + 3
              + _ev(29, 9, struct.pack("<I", 12) + b"x" * 8)  # discarded: skipped, time unchanged
              + _ev(1, 1, b"C" * 4)
              + _ev(31, 50, struct.pack("<I", 0))  # absolute stamp 50
              + _ev(1, 2, b"D" * 4))
    res = parse_page(_page(events), LAY)
    assert not res.corrupt and res.missed == 0
    assert [(ts, raw[:1], len(raw)) for ts, raw in res.entries] == [
        (1005, b"A", 8), (1012, b"B", 200), (1012 + (2 << 27) + 3 + 1, b"C", 4), (52, b"D", 4)]


def test_page_missed_events_stored_and_unknown() -> None:
    body = _ev(1, 1, b"E" * 4)
    stored = parse_page(_page(body, flags=RB_MISSED_EVENTS | RB_MISSED_STORED,
                              tail=struct.pack("<Q", 1234)), LAY)
    assert stored.missed == 1234 and len(stored.entries) == 1
    assert parse_page(_page(body, flags=RB_MISSED_EVENTS), LAY).missed == -1


def test_page_null_padding_ends_and_truncation_is_flagged() -> None:
    res = parse_page(_page(_ev(1, 1, b"F" * 4) + _ev(29, 0) + b"\xff" * 12), LAY)
    assert len(res.entries) == 1 and not res.corrupt
    bad = parse_page(_page(_ev(0, 1, struct.pack("<I", 4000))), LAY)
    assert bad.corrupt and bad.entries == []


def test_deduper_window_and_bounded_memory() -> None:
    dd = Deduper(window_ns=1_000, retain_ns=10_000, max_entries=100)
    t = 0  # arrival clock
    assert dd.offer("bpf", "ras:mc_event", b"p", 10_000, t)
    assert dd.offer("bpf", "ras:mc_event", b"p", 10_001, t)  # same path twice: two real events
    assert not dd.offer("tracefs", "ras:mc_event", b"p", 10_500, t)
    assert not dd.offer("tracefs", "ras:mc_event", b"p", 10_400, t)
    assert dd.offer("tracefs", "ras:mc_event", b"p", 10_600, t)  # third copy: nothing left to match
    assert dd.offer("tracefs", "ras:arm_event", b"p", 10_600, t)  # other event name
    assert dd.offer("tracefs", "ras:mc_event", b"q", 10_600, t)  # other payload
    assert dd.offer("bpf", "ras:mc_event", b"z", 20_000, t)
    assert dd.offer("tracefs", "ras:mc_event", b"z", 21_001, t)  # event times too far apart
    long = b"L" * 300  # hashed key
    assert dd.offer("bpf", "ras:arm_event", long, 5, t) and not dd.offer("tracefs", "ras:arm_event", long, 5, t)
    for i in range(1000):
        dd.offer("bpf", "ras:mc_event", i.to_bytes(4, "little"), 30_000 + i, t)
    assert len(dd) <= 100 and dd.evicted > 0


def test_deduper_waits_for_a_late_drain_then_expires() -> None:
    """The tracefs twin arrives at the next drain, after later BPF events moved event
    time on: it still matches. Past retain_ns of arrival time the copy is gone."""
    dd = Deduper(window_ns=2_000, retain_ns=1_000_000)
    assert dd.offer("bpf", "ras:mc_event", b"a", ts_ns=100, now_ns=0)
    for i in range(50):  # busy period: event time runs far past the window
        dd.offer("bpf", "ras:mc_event", bytes([i]), ts_ns=10_000 * i, now_ns=10 * i)
    assert not dd.offer("tracefs", "ras:mc_event", b"a", ts_ns=101, now_ns=500_000)
    assert dd.offer("bpf", "ras:mc_event", b"b", ts_ns=200, now_ns=600_000)
    assert dd.offer("tracefs", "ras:mc_event", b"b", ts_ns=200, now_ns=1_700_000)  # too late
    assert len(dd) == 1  # only the late tracefs copy remains; the rest expired
