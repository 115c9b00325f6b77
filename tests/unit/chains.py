"""Source records as the BPF side emits them, for tests that replay kernel event chains."""

from __future__ import annotations

from rasd.sources.records import Record

MS = 10**6


class Clock:
    """Kernel-ish monotonic stamps: each call advances by step_ms."""

    def __init__(self) -> None:
        self.t = 10**9

    def __call__(self, step_ms: float = 1) -> int:
        self.t += int(step_ms * MS)
        return self.t


def make(probe, kind, t, tid=5000, comm="victim", rf=(), blob=b"", **fields) -> Record:
    """rf: the record's header flags (return, user, no_regs, vcpu_fault...)."""
    return Record(kind, probe, 0, frozenset(rf), 1, tid, tid, comm, t, dict(fields), blob)


def ghes(t, block, tid=5000, comm="victim", notify_type=8) -> Record:
    """A ghes_do_proc record carrying ``block``; notify 8 = SEA (processed in the
    faulting task's context), 0 = polled."""
    return make("ghes_do_proc", "ghes", t, tid, comm, blob=block, source_id=0, hest_type=10,
                notify_type=notify_type, error_block_length=1024, estatus_len=len(block),
                captured_len=len(block))


def run(records, decoder, vm_of=None, blast=None):
    """Feed records through decode -> classify -> correlate; close everything at the end.

    Returns the events (incident ids followed through merges, as a store would) and
    every incident by id in its last state."""
    from rasd.classify.severity import classify
    from rasd.correlate.incidents import Correlator
    from rasd.pipeline import Pipeline

    changes = []
    corr = Correlator(window_ns=2000 * MS, vm_of=vm_of, blast_radius=blast,
                      on_change=changes.append)
    p = Pipeline(decoder, stages=[classify, corr])  # the pipeline numbers events from 1
    events = [p.feed(r) for r in records]
    corr.expire(10**18)
    incidents = {c.id: c for c in changes}
    for event in events:
        while event.incident_id is not None and incidents[event.incident_id].merged_into:
            event.incident_id = incidents[event.incident_id].merged_into
    return events, incidents


def recording_vm_of(name: str = "vm1", vcpu: int = 0):
    """A VM lookup that names every task ``name`` and records what it was asked."""
    asked: list[tuple] = []

    def vm_of(tgid, tid, comm, cgroup_id=None):
        asked.append((tgid, tid, comm))
        return {"name": name, "tgid": tgid, "vcpu": vcpu, "how": "test"}
    return vm_of, asked
