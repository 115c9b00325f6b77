"""SIGBUS, the end of a memory-error chain: decode, classification and correlation
of signal:signal_generate records (synthetic raw entries laid out with real tracefs
formats), in the orders the kernel produces them.

signal_generate runs in the sender's context: the record header (tgid/tid/comm) is
the sender, the fields (pid, comm) are the target thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rasd.classify.severity import classify
from rasd.correlate.incidents import PAGE_SHIFT
from rasd.decode.event import EventDecoder
from rasd.encode import cper as enc
from rasd.sources.bpf_loader import tp_instance
from rasd.sources.probes import BY_NAME
from rasd.sources.records import Record

import chains
from chains import MS, Clock, ghes, make, recording_vm_of
from rasd.sources.replay import encode_trace_entry
from rasd.sources.tracefs import parse_format

FORMATS = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
# this host's kernel, plus the arm64 Debian kernels' copies where recorded
FORMAT_FILES = sorted(FORMATS.glob("*/signal_generate"))
HOST = parse_format((FORMATS / "host" / "signal_generate").read_text(), "signal",
                    "signal_generate")
MFE = parse_format((FORMATS / "6.12" / "memory_failure_event").read_text(), "ras",
                   "memory_failure_event")
SIGBUS = 7
SI_USER, BUS_ADRERR, BUS_OBJERR, BUS_MCEERR_AR, BUS_MCEERR_AO = 0, 2, 3, 4, 5





def sigbus(t, target_tid, target_comm, code, sender_tid=None, sender_comm=None, result=0,
           group=0, fmt=HOST):
    """A sigbus record as the BPF program ships it (sender = target unless given)."""
    blob = encode_trace_entry(fmt, {"sig": SIGBUS, "errno": 0, "code": code,
                                    "comm": target_comm, "pid": target_tid, "group": group,
                                    "result": result}, common_type=0)
    return make("sigbus", "tp", t, tid=sender_tid or target_tid,
                comm=sender_comm or target_comm, blob=blob)




def mem_block(pa):
    err = enc.memory_error(error_type=3, physical_addr=pa, node=0, module=3)
    return enc.encode_status_block([enc.section(err, enc.RECOVERABLE)])


def mfe(t, pfn, tid, comm):
    return make("memory_failure_event", "tp", t, tid=tid, comm=comm,
                blob=encode_trace_entry(MFE, {"pfn": pfn, "type": 13, "result": 3}))


def decoder(fmt=HOST) -> EventDecoder:
    return EventDecoder({"signal:signal_generate": fmt, "ras:memory_failure_event": MFE})


def run(records, vm_of=None):
    return chains.run(records, decoder(), vm_of)


# --- the format and the program the loader generates from it ----------------------------

@pytest.mark.parametrize("path", FORMAT_FILES, ids=lambda p: p.parent.name)
def test_filter_is_generated_from_each_format(path):
    fmt = parse_format(path.read_text(), "signal", "signal_generate")
    probe = BY_NAME["sigbus"]
    assert probe.tp_filter == ("sig", 7)
    sig = fmt.field("sig")
    line = tp_instance(probe.entry_fn, probe.id, fmt, probe.tp_filter)
    assert line == (f"RASD_TP_PROGRAM_IF(rasd_tp_sigbus, 22, {fmt.fixed_size}, -1, -1, -1, -1, "
                    f"{sig.offset}, {sig.size}, 7)")
    # the fields the decoder reads are there, at the widths it assumes
    for name in ("sig", "errno", "code", "pid", "group", "result"):
        assert fmt.field(name).size == 4, name
    assert fmt.field("comm").size == 16


def test_filter_refuses_fields_the_program_cannot_load():
    probe = BY_NAME["sigbus"]
    for bad in (("comm", 0), ("common_pid", 1), ("nosuch", 1)):
        with pytest.raises(ValueError):
            tp_instance(probe.entry_fn, probe.id, HOST, bad)


@pytest.mark.parametrize("path", FORMAT_FILES, ids=lambda p: p.parent.name)
def test_decode_names_target_code_and_result(path):
    fmt = parse_format(path.read_text(), "signal", "signal_generate")
    rec = sigbus(10**9, 4321, "worker", BUS_MCEERR_AO, sender_tid=77,
                 sender_comm="kworker/u8:2", result=2, group=1, fmt=fmt)
    e = decoder(fmt).decode(rec)
    f = e.fields
    assert not e.decode_error and e.kind == "sigbus"
    assert (f["target_tid"], f["target_comm"], f["code_name"]) == (4321, "worker", "BUS_MCEERR_AO")
    assert f["mceerr"] and f["result_name"] == "already_pending" and f["group"] == 1
    assert (e.task.tid, e.task.comm) == (77, "kworker/u8:2")  # the sender
    assert "target_vcpu" not in f
    assert all(not isinstance(v, bytes) for v in f.values())  # JSON-able


@pytest.mark.parametrize("code, name, severity, containment", [
    (BUS_MCEERR_AR, "BUS_MCEERR_AR", "uncorrected", "process_killed"),
    (BUS_MCEERR_AO, "BUS_MCEERR_AO", "uncorrected", "process_killed"),
    (BUS_OBJERR, "BUS_OBJERR", "info", "none_needed"),
    (BUS_ADRERR, "BUS_ADRERR", "info", "none_needed"),
    (1, "BUS_ADRALN", "info", "none_needed"),
    (SI_USER, "SI_USER", "info", "none_needed"),
])
def test_classification_by_si_code(code, name, severity, containment):
    e = classify(decoder().decode(sigbus(10**9, 5000, "victim", code)))
    assert e.fields["code_name"] == name
    assert (e.severity, e.containment) == (severity, containment), e.reason
    assert "victim[5000]" in e.reason


def test_mceerr_to_a_qemu_vcpu_thread_is_vm_contained():
    e = classify(decoder().decode(sigbus(10**9, 4243, "CPU 3/KVM", BUS_MCEERR_AR)))
    assert e.fields["target_vcpu"] == 3
    assert (e.severity, e.containment) == ("uncorrected", "vm_contained")
    assert "VMM forwards the error into the guest" in e.reason


# --- correlation --------------------------------------------------------------------------

def test_host_sea_chain_ends_in_sigbus_to_the_victim():
    """6.12 order, claimed SEA in user space: apei_claim_sea in the task -> the GHES
    record (SEA-notified, same task) -> memory_failure as task work (MF_ACTION_REQUIRED)
    -> its tracepoint -> SIGBUS BUS_MCEERR_AR sent by the victim to itself
    (kill_me_maybe), with unrelated signals around it."""
    clk = Clock()
    pa = 0x8_1234_5000
    pfn = pa >> PAGE_SHIFT
    victim = dict(tid=5000, comm="victim")
    seq = [
        sigbus(clk(), 900, "other", SI_USER, sender_tid=901, sender_comm="bash"),
        make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=0, **victim),
        ghes(clk(), mem_block(pa), **victim),
        make("memory_failure", "call", clk(), rf={"return"}, pfn=pfn, flags=2, ret=0, **victim),
        mfe(clk(), pfn, **victim),
        sigbus(clk(), 5000, "victim", BUS_MCEERR_AR),
        sigbus(clk(), 902, "app", BUS_ADRERR),
    ]
    events, incidents = run(seq)
    chain = {e.incident_id for e in events[1:6]}
    assert len(chain) == 1 and None not in chain, [(e.kind, e.incident_id) for e in events]
    inc = incidents[chain.pop()]
    assert inc.kind == "uncorrected_memory" and inc.pfn == pfn
    assert inc.severity == "uncorrected" and inc.containment == "process_killed"
    assert "SIGBUS to victim[5000] (BUS_MCEERR_AR)" in inc.summary
    # the unrelated signals stay out of it
    assert events[0].incident_id != inc.id and events[6].incident_id != inc.id


def test_sigbus_joins_by_target_not_sender():
    """BUS_MCEERR_AO comes from memory_failure's thread (here a kworker) to a mapper:
    the key is the target's tid; the kworker's own tid links nothing."""
    clk = Clock()
    seq = [make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=0,
                tid=6000, comm="mapper"),
           sigbus(clk(), 6000, "mapper", BUS_MCEERR_AO, sender_tid=77, sender_comm="kworker/1:1"),
           sigbus(clk(), 77, "kworker/1:1", BUS_MCEERR_AO, sender_tid=6000, sender_comm="mapper")]
    events, incidents = run(seq)
    assert events[0].incident_id == events[1].incident_id
    assert events[2].incident_id != events[0].incident_id


def test_adrerr_is_info_and_stands_alone():
    clk = Clock()
    seq = [make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=0),
           sigbus(clk(), 5000, "victim", BUS_ADRERR)]  # same thread, not a memory error
    events, incidents = run(seq)
    e = events[1]
    assert (e.severity, e.containment) == ("info", "none_needed")
    assert e.incident_id is not None and e.incident_id != events[0].incident_id
    inc = incidents[e.incident_id]
    assert inc.kind == "sigbus" and inc.severity == "info" and inc.event_ids == [2]
    assert "SIGBUS to victim[5000] (BUS_ADRERR)" in inc.summary


def test_objerr_ends_an_unclaimed_sea_but_never_opens_an_incident():
    """arm64 do_sea: firmware did not claim the SEA -> arm64_notify_die -> SIGBUS
    BUS_OBJERR to the task. Alone (drivers send it too) it opens nothing."""
    clk = Clock()
    seq = [make("do_sea", "call", clk(), rf={"user"}, far=0x1000, esr=0x92000010, regs=1),
           make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=-2),
           sigbus(clk(), 5000, "victim", BUS_OBJERR),
           sigbus(clk(), 7000, "gpu-app", BUS_OBJERR)]
    events, incidents = run(seq)
    assert events[2].incident_id == events[1].incident_id
    assert events[3].incident_id is None
    inc = incidents[events[1].incident_id]
    assert inc.containment == "process_killed"  # from the unclaimed SEA itself
    assert "SIGBUS to victim[5000] (BUS_OBJERR)" in inc.summary


def test_guest_sea_chain_ends_in_sigbus_to_the_vcpu_thread():
    """Guest touches poisoned memory: kvm_handle_guest_abort -> apei_claim_sea(NULL)
    claimed -> the record on the vCPU thread -> memory_failure as its task work ->
    SIGBUS BUS_MCEERR_AR to "CPU 0/KVM", which QEMU turns into an SEA for the guest."""
    clk = Clock()
    pa = 0x9_0000_0000
    vmm = dict(tid=4243, comm="CPU 0/KVM")
    seq = [make("kvm_handle_guest_abort", "call", clk(), rf={"vcpu_fault"}, vcpu=1,
                esr_el2=0x92000010, **vmm),
           make("apei_claim_sea", "call", clk(), rf={"return", "no_regs"}, regs=0, ret=0, **vmm),
           ghes(clk(), mem_block(pa), **vmm),
           make("memory_failure", "call", clk(), rf={"return"}, pfn=pa >> PAGE_SHIFT, flags=2,
                ret=0, **vmm),
           sigbus(clk(), 4243, "CPU 0/KVM", BUS_MCEERR_AR)]
    vm_of, seen = recording_vm_of()
    events, incidents = run(seq, vm_of=vm_of)
    assert len({e.incident_id for e in events}) == 1
    inc = incidents[events[0].incident_id]
    assert events[4].containment == "vm_contained"
    assert inc.kind == "guest_sea" and inc.containment == "vm_contained"
    assert inc.severity == "uncorrected" and inc.vm["name"] == "vm1"
    assert "SIGBUS to CPU 0/KVM[4243] (BUS_MCEERR_AR)" in inc.summary
    assert "vm contained" in inc.summary and seen == [(4243, 4243, "CPU 0/KVM")]


def test_kvm_hwpoison_sigbus_alone_names_the_vm():
    """A guest touching a page already poisoned: KVM's stage-2 fault sends SIGBUS
    BUS_MCEERR_AR from the vCPU thread to itself; no other event."""
    events, incidents = run([sigbus(10**9, 4250, "CPU 1/KVM", BUS_MCEERR_AR)],
                            vm_of=lambda tgid, tid, comm, cgroup_id=None: {"name": "vm2", "vcpu": 1})
    inc = incidents[events[0].incident_id]
    assert inc.kind == "memory_error_sigbus" and inc.containment == "vm_contained"
    assert inc.vm["name"] == "vm2" and "SIGBUS to CPU 1/KVM[4250]" in inc.summary


@pytest.mark.parametrize("kernel", ["6.1.0-50-arm64", "6.12.95+deb12-arm64"])
def test_resolves_on_the_arm64_kernels(kernel):
    from rasd.sources.resolve import PENDING, KernelView, resolve
    view = KernelView.from_fixture(FORMATS.parent / "arm64-kernels" / kernel)
    (r,) = [r for r in resolve(view) if r.probe == "sigbus"]
    assert (r.status, r.kind, r.symbol) == (PENDING, "tracepoint", "signal:signal_generate")


def test_an_ignored_action_optional_sigbus_kills_nobody():
    e = classify(decoder().decode(sigbus(10**9, 6000, "mapper", BUS_MCEERR_AO, sender_tid=77,
                                         sender_comm="kworker/1:1", result=1)))
    assert (e.severity, e.containment) == ("recoverable", "page_isolated")
    assert "ignored" in e.reason


def test_madvise_hwpoison_and_its_retouch_are_one_incident():
    """Recorded in the arm64 6.1 lab guest (labinj madvise): MADV_HWPOISON runs
    memory_failure(pfn, MF_COUNT_INCREASED|MF_SW_SIMULATED) in the caller; the re-touch
    faults on the hwpoison entry and the fault path sends SIGBUS BUS_MCEERR_AR, with no
    page in it. The caller's thread ties them together."""
    clk = Clock()
    me = dict(tid=190, comm="labinj")
    seq = [mfe(clk(), 0x4209B, **me),
           make("memory_failure", "call", clk(), rf={"return"}, pfn=0x4209B, flags=33, ret=0,
                **me),
           sigbus(clk(), 190, "labinj", BUS_MCEERR_AR)]
    events, incidents = run(seq)
    assert len({e.incident_id for e in events}) == 1
    inc = incidents[events[0].incident_id]
    assert inc.kind == "hwpoison" and inc.pfn == 0x4209B
    assert (inc.severity, inc.containment) == ("uncorrected", "process_killed")
    assert "SIGBUS to labinj[190] (BUS_MCEERR_AR)" in inc.summary


def test_injection_by_a_kernel_thread_keys_no_thread():
    clk = Clock()
    seq = [make("memory_failure", "call", clk(), rf={"return"}, pfn=0x100, flags=32, ret=0,
                tid=77, comm="kworker/0:1"),
           sigbus(clk(), 77, "kworker/0:1", BUS_MCEERR_AR)]
    events, _ = run(seq)
    assert events[0].incident_id != events[1].incident_id


def test_612_order_sigbus_before_memory_failure_returns():
    """Recorded in the arm64 6.12 lab guest: MADV_HWPOISON passes MF_ACTION_REQUIRED,
    memory_failure sends SIGBUS BUS_MCEERR_AR itself (kill_proc), so the sigbus record
    comes first, then the tracepoint, then memory_failure's return: one incident."""
    clk = Clock()
    me = dict(tid=234, comm="labinj")
    seq = [sigbus(clk(), 234, "labinj", BUS_MCEERR_AR),
           mfe(clk(), 0xFE575, **me),
           make("memory_failure", "call", clk(), rf={"return"}, pfn=0xFE575, flags=35, ret=0,
                **me)]
    events, incidents = run(seq)
    assert len({e.incident_id for e in events}) == 1
    inc = incidents[events[0].incident_id]
    assert inc.kind == "hwpoison" and inc.pfn == 0xFE575 and sorted(inc.event_ids) == [1, 2, 3]
    assert "SIGBUS to labinj[234] (BUS_MCEERR_AR)" in inc.summary


def test_action_optional_sigbus_from_a_kworker_joins_that_workers_memory_failure():
    """A polled GHES record queues memory_failure; a kworker runs it and signals every
    mapper (BUS_MCEERR_AO, no address) before its own records arrive: one incident with
    the page. The same kworker's next page is another fault, and so are its SIGBUSes."""
    clk = Clock()
    kw = dict(tid=77, comm="kworker/1:1")
    pa, pa2 = 0x8_1234_5000, 0x8_5555_5000
    seq = [ghes(clk(), mem_block(pa), tid=1, comm="swapper/0", notify_type=0),
           sigbus(clk(), 6000, "mapper", BUS_MCEERR_AO, sender_tid=77, sender_comm=kw["comm"]),
           sigbus(clk(), 6001, "mapper2", BUS_MCEERR_AO, sender_tid=77, sender_comm=kw["comm"]),
           mfe(clk(), pa >> PAGE_SHIFT, **kw),
           make("memory_failure", "call", clk(), rf={"return"}, pfn=pa >> PAGE_SHIFT, flags=0,
                ret=0, **kw),
           # the worker's next job: another page, another mapper
           sigbus(clk(), 6002, "mapper3", BUS_MCEERR_AO, sender_tid=77, sender_comm=kw["comm"]),
           mfe(clk(), pa2 >> PAGE_SHIFT, **kw)]
    events, incidents = run(seq)
    first = {e.incident_id for e in events[:5]}
    assert len(first) == 1 and None not in first, [(e.kind, e.incident_id) for e in events]
    inc = incidents[first.pop()]
    assert inc.pfn == pa >> PAGE_SHIFT
    assert "SIGBUS to mapper[6000]" in inc.summary and "mapper2[6001]" in inc.summary
    second = {e.incident_id for e in events[5:]}
    assert len(second) == 1 and inc.id not in second
    assert incidents[second.pop()].pfn == pa2 >> PAGE_SHIFT
