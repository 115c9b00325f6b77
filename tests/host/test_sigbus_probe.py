"""The sigbus probe on this host's kernel, for real: signal:signal_generate with the
SIGBUS filter in the program's first instructions, loaded by load_probes() exactly
as the daemon loads it, read through the daemon's ring-buffer reader.

signal_generate fires in the sender's context; its fields name the target. A child
process installs handlers (so SIGBUS does not kill it), names itself and one of its
threads ("CPU 0/KVM", as QEMU names vCPU threads), and the test sends it SIGUSR1 and
SIGBUS with kill(), then has the child send SIGBUS to that thread with
pthread_kill() (tgkill: the thread id is the target).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rasd.classify.severity import classify
from rasd.decode.event import EventDecoder
from rasd.sources.bpf_loader import load_probes
from rasd.sources.bpfsys import prog_info
from rasd.sources.resolve import ATTACHED, KernelView
from rasd.sources.tracefs import find_tracefs

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loads eBPF programs"),
    pytest.mark.skipif(find_tracefs() is None or not (
        find_tracefs() / "events/signal/signal_generate").is_dir(),
        reason="needs tracefs with signal:signal_generate"),
]

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
KID_COMM = "rasd-sigbus-kid"  # 15 chars: fits TASK_COMM_LEN

_CHILD = r"""
import ctypes, json, os, signal, sys, threading
ctypes.CDLL(None).prctl(15, b"%s", 0, 0, 0)  # PR_SET_NAME: the main thread's comm
signal.signal(signal.SIGBUS, lambda *a: None)  # handled: SIGBUS must not kill us
signal.signal(signal.SIGUSR1, lambda *a: None)
ready, stop = threading.Event(), threading.Event()

def vcpu():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write("CPU 0/KVM")
    ready.set()
    stop.wait()

t = threading.Thread(target=vcpu, daemon=True)
t.start()
ready.wait()
print(json.dumps({"pid": os.getpid(), "vcpu_tid": t.native_id}), flush=True)
for line in sys.stdin:
    if line.strip() == "pthread_kill":
        signal.pthread_kill(t.ident, signal.SIGBUS)
    print("ok", flush=True)
""" % KID_COMM.encode().decode()


@pytest.fixture(scope="module")
def run() -> dict:
    """Load the real probe table, signal the child, collect every sigbus record."""
    old_stats = STATS.read_text().strip()
    lp = load_probes(ringbuf_pages=16)
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        STATS.write_text("1")  # run_cnt: proves the program ran for the filtered SIGUSR1
        ids = json.loads(child.stdout.readline())
        list(lp.read())  # whatever the host signalled before
        fd = lp.prog_fds["rasd_tp_sigbus"]
        runs_before = prog_info(fd).run_cnt
        os.kill(ids["pid"], signal.SIGUSR1)
        os.kill(ids["pid"], signal.SIGBUS)
        child.stdin.write("pthread_kill\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ok"
        runs = prog_info(fd).run_cnt - runs_before
        lp.ringbuf.poll(1.0)
        records = [r for r in lp.read() if r.probe == "sigbus"]
        view = KernelView.from_host()
        yield {"ids": ids, "records": records, "runs": runs, "lost": lp.lost.total(),
               "status": {r.probe: r for r in lp.results}, "formats": view.events}
    finally:
        STATS.write_text(old_stats)
        child.kill()
        child.wait()
        lp.close()


def _decode(run: dict) -> list:
    decoder = EventDecoder(dict(run["formats"]))
    return [classify(decoder.decode(r)) for r in run["records"]]


def _to(run: dict, tid: int) -> list:
    return [e for e in _decode(run) if e.fields.get("target_tid") == tid]


def test_attached_as_a_filtered_tracepoint(run):
    r = run["status"]["sigbus"]
    assert (r.status, r.kind, r.symbol) == (ATTACHED, "tracepoint", "signal:signal_generate")


def test_kill_gives_exactly_one_record_naming_the_target(run):
    pid = run["ids"]["pid"]
    (e,) = _to(run, pid)
    f = e.fields
    assert e.kind == "sigbus" and e.source == "tracefs:signal:signal_generate"
    assert (f["sig"], f["target_comm"], f["code_name"]) == (7, KID_COMM, "SI_USER")
    assert f["group"] == 1 and f["result_name"] == "delivered"
    # the header is the sender: this test process, not the child
    assert (e.task.tgid, e.task.tid) == (os.getpid(), os.getpid())
    assert (e.severity, e.containment) == ("info", "none_needed")  # kill() is not RAS
    assert not e.decode_error


def test_sigusr1_never_leaves_the_kernel(run):
    """The program ran for SIGUSR1 (run_cnt) but emitted nothing: the filter is in BPF."""
    assert all(e.fields["sig"] == 7 for e in _decode(run))
    assert run["runs"] >= 3  # SIGUSR1, SIGBUS, pthread_kill's SIGBUS (+ host noise)
    mine = {run["ids"]["pid"], run["ids"]["vcpu_tid"]}
    assert len([r for r in _decode(run) if r.fields["target_tid"] in mine]) == 2
    assert run["lost"] == 0


def test_pthread_kill_targets_the_thread(run):
    pid, tid = run["ids"]["pid"], run["ids"]["vcpu_tid"]
    assert tid != pid
    (e,) = _to(run, tid)
    f = e.fields
    assert (f["target_comm"], f["target_vcpu"], f["code_name"]) == ("CPU 0/KVM", 0, "SI_TKILL")
    assert f["group"] == 0
    # sent by the child's main thread to its own vCPU-named thread
    assert (e.task.tgid, e.task.tid, e.task.comm) == (pid, pid, KID_COMM)
    assert e.severity == "info"  # SI_TKILL is not BUS_MCEERR_*: no vm_contained claim
