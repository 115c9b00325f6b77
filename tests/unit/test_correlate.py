"""Classification and correlation on event sequences in the orders the kernel produces
them (reference §1, §5; the lab's measured chains), with unrelated events interleaved.

Events enter as the BPF side emits them (source records) and take the real decode
stage, so what is tested is the daemon's own path.
"""

from __future__ import annotations

from pathlib import Path

from rasd.classify.severity import classify
from rasd.correlate.incidents import PAGE_SHIFT, Correlator
from rasd.decode.event import EventDecoder
from rasd.encode import cper as enc
from rasd.pipeline import Pipeline
from rasd.sources.records import Record

import chains
from chains import MS, Clock, ghes, make, recording_vm_of
from rasd.sources.replay import encode_trace_entry
from rasd.sources.tracefs import parse_format

FORMATS = Path(__file__).resolve().parents[1] / "fixtures" / "formats" / "6.12"
MFE = parse_format((FORMATS / "memory_failure_event").read_text(), "ras", "memory_failure_event")
ARM = parse_format((FORMATS / "arm_event").read_text(), "ras", "arm_event")







def mem_block(pa, severity, pa_valid=True, **loc):
    fields = dict(loc)
    if pa_valid:
        fields["physical_addr"] = pa
    return enc.encode_status_block([enc.section(enc.memory_error(error_type=3, **fields), severity)])


def mfe(t, pfn, result=3, page_type=13):
    return make("memory_failure_event", "tp", t, tid=77, comm="kworker/1:1",
                blob=encode_trace_entry(MFE, {"pfn": pfn, "type": page_type, "result": result}))


def run(records, vm_of=None, blast=None):
    return chains.run(records, EventDecoder({"ras:memory_failure_event": MFE,
                                             "ras:arm_event": ARM}), vm_of, blast)


def arm_block(mpidr, severity=enc.CORRECTED):
    arm = enc.arm_processor([enc.arm_error_info(0x02, error_info=0x4D0007, flags=1)], [],
                            mpidr=mpidr, midr=0x410FD0C0)
    return enc.encode_status_block([enc.section(arm, severity)])


def arm_event(t, mpidr, sev=0):
    return make("arm_event", "tp", t, tid=0, comm="swapper/1",
                blob=encode_trace_entry(ARM, {"mpidr": mpidr, "midr": 0x410FD0C0,
                                              "running_state": 1, "psci_state": 0,
                                              "affinity": 0, "sev": sev, "cpu": 1}))


def test_arm_processor_record_and_its_arm_event_are_one_incident():
    """ghes_do_proc -> log_arm_hw_error -> ras:arm_event: the tracepoint carries the
    section's MPIDR and nothing else the record has; another CPU's error stays apart."""
    clk = Clock()
    seq = [ghes(clk(), arm_block(0x80000101), tid=90, comm="kworker/0:1", notify_type=0),
           arm_event(clk(), 0x80000101),
           arm_event(clk(), 0x80000202)]
    events, incidents = run(seq)
    assert events[0].incident_id == events[1].incident_id is not None
    assert events[2].incident_id not in (None, events[0].incident_id)
    inc = incidents[events[0].incident_id]
    assert inc.mpidr == 0x80000101 and sorted(inc.event_ids) == [1, 2]


def test_host_sea_on_a_user_page_is_one_incident():
    """6.1 order (lab §5): do_sea -> apei_claim_sea in the task -> ghes_proc_in_irq ->
    ghes_do_proc (record in the faulting task's context) -> memory_failure_queue ->
    memory_failure in a kworker -> memory_failure_event."""
    clk = Clock()
    pa = 0x8_1234_5000
    pfn = pa >> PAGE_SHIFT
    seq = [
        make("ghes_proc_in_irq", "call", clk()),
        ghes(clk(), mem_block(pa, enc.RECOVERABLE, node=0, module=3)),
        make("memory_failure_queue", "call", clk(), pfn=pfn, flags=0),
        make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=0),
        make("memory_failure", "call", clk(20), tid=77, comm="kworker/1:1",
             rf={"return"}, pfn=pfn, flags=0, ret=0),
        mfe(clk(), pfn),
    ]
    events, incidents = run(seq, blast=lambda pfn: {"scope": "cgroup", "summary": "anon page"})
    # ghes_proc_in_irq runs before the record it drains exists: an informational
    # follower with nothing to follow yet stays outside; everything else is one incident
    assert events[0].incident_id is None
    ids = {e.incident_id for e in events[1:]}
    assert len(ids) == 1 and None not in ids, [(e.kind, e.incident_id) for e in events]
    inc = incidents[ids.pop()]
    assert inc.kind == "uncorrected_memory"
    assert inc.severity == "recoverable" and inc.containment == "page_isolated"
    assert inc.phys_addr == pa and inc.pfn == pfn
    assert inc.location == {"node": 0, "module": 3}
    assert inc.blast_radius == {"scope": "cgroup", "summary": "anon page"}
    assert inc.closed and sorted(inc.event_ids) == [2, 3, 4, 5, 6]
    assert "PA 0x812345000" in inc.summary and "touches anon page" in inc.summary


def test_unrelated_corrected_errors_interleaved_stay_apart():
    clk = Clock()
    pa = 0x4000_0000
    seq = [make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=0),
           ghes(clk(), mem_block(pa, enc.RECOVERABLE)),
           ghes(clk(), mem_block(0x7000_0000, enc.CORRECTED), notify_type=0, tid=999, comm="bash"),
           ghes(clk(), mem_block(0x7100_0000, enc.CORRECTED), notify_type=0, tid=5000),
           # MF_ACTION_REQUIRED: task work in the faulting task (>= 6.8)
           make("memory_failure", "call", clk(), tid=5000, rf={"return"}, pfn=pa >> PAGE_SHIFT,
                flags=2, ret=0)]
    events, incidents = run(seq)
    chain = {events[i].incident_id for i in (0, 1, 4)}
    assert len(chain) == 1
    assert events[2].incident_id not in chain and events[3].incident_id not in chain
    # the polled CE ran on the victim's thread by chance: it must not join the SEA
    assert events[3].incident_id != events[2].incident_id
    assert incidents[events[2].incident_id].kind == "corrected_memory"
    assert incidents[events[2].incident_id].severity == "corrected"


def test_unlocatable_memory_corruption_is_critical():
    clk = Clock()
    seq = [make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=0),
           ghes(clk(), mem_block(0, enc.RECOVERABLE, pa_valid=False, node=1))]
    events, incidents = run(seq)
    inc = incidents[events[1].incident_id]
    assert events[0].incident_id == events[1].incident_id
    assert inc.kind == "unlocatable_memory_corruption"
    assert inc.severity == "critical" and inc.containment == "not_containable"
    assert "Unlocatable memory corruption" in inc.summary


def test_guest_sea_not_claimed_injects_a_vserror_contained_to_the_vm():
    """kvm_handle_guest_abort -> apei_claim_sea(NULL) -> not claimed -> kvm_inject_vabt,
    all on the vCPU thread (lab §7.1)."""
    clk = Clock()
    vmm = dict(tid=4243, comm="CPU 0/KVM")
    seq = [make("kvm_handle_guest_abort", "call", clk(), rf={"vcpu_fault"}, vcpu=1,
                esr_el2=0x93800017, **vmm),
           make("apei_claim_sea", "call", clk(), rf={"return", "no_regs"}, regs=0, ret=-2, **vmm),
           make("kvm_inject_vabt", "call", clk(), vcpu=1, **vmm)]
    vm_of, seen = recording_vm_of()
    events, incidents = run(seq, vm_of=vm_of)
    assert len({e.incident_id for e in events}) == 1
    inc = incidents[events[0].incident_id]
    assert inc.kind == "guest_sea" and inc.containment == "vm_contained"
    assert inc.severity == "uncorrected" and inc.vm["name"] == "vm1"
    assert events[2].severity == "uncorrected"  # the vSError is RAS-driven here
    assert seen == [(4243, 4243, "CPU 0/KVM")]  # attributed once
    assert "in VM vm1 vCPU 0" in inc.summary


def test_vserror_from_user_space_is_told_apart():
    clk = Clock()
    events, incidents = run([make("kvm_inject_vabt", "call", clk(), tid=4250, comm="CPU 1/KVM",
                                  vcpu=2)])
    inc = incidents[events[0].incident_id]
    assert inc.kind == "virtual_serror" and inc.severity == "info"
    assert "not RAS-driven" in inc.summary


def test_host_serror_corrected_and_fatal():
    clk = Clock()
    ce = make("arm64_is_fatal_ras_serror", "call", clk(), rf={"return"}, regs=1,
              esr=0xBE001811, fatal=0)  # AET CE (6), DFSC 0x11
    events, incidents = run([ce])
    inc = incidents[events[0].incident_id]
    assert inc.kind == "host_serror" and inc.severity == "corrected" and inc.cpu == 1
    uer = make("do_serror", "call", clk(), regs=1, esr=0xBE000C11)  # AET UER on the host: panic
    events, incidents = run([uer])
    assert incidents[events[0].incident_id].severity == "fatal"
    assert incidents[events[0].incident_id].containment == "host_panic"


def test_cper_overrules_the_esr_and_the_disagreement_is_kept():
    """A guest SError the ESR calls UER (uncorrected), while firmware's record on the
    same vCPU thread calls it corrected."""
    clk = Clock()
    vmm = dict(tid=4300, comm="CPU 2/KVM")
    seq = [make("arm64_is_fatal_ras_serror", "call", clk(), rf={"return"}, regs=0,
                esr=0xBE000C11, fatal=1, **vmm),
           ghes(clk(), mem_block(0x9000_0000, enc.CORRECTED), **vmm)]
    events, incidents = run(seq)
    inc = incidents[events[0].incident_id]
    assert events[1].incident_id == inc.id
    assert inc.severity == "corrected"
    assert inc.disagreements == ["ESR/AET says uncorrected, CPER says corrected (CPER taken)"]


def test_an_event_that_links_two_open_incidents_merges_them():
    """The SEA (thread key) and its record processed in a kernel thread (page key) open
    two incidents; memory_failure in the task carries both keys: one fault."""
    clk = Clock()
    pa = 0x6000_0000
    seq = [make("apei_claim_sea", "call", clk(), rf={"return", "user"}, regs=1, ret=0),
           ghes(clk(), mem_block(pa, enc.RECOVERABLE), notify_type=0, tid=0, comm="swapper/1"),
           make("memory_failure", "call", clk(), rf={"return"}, pfn=pa >> PAGE_SHIFT, flags=2,
                ret=0)]
    events, incidents = run(seq)
    assert len({e.incident_id for e in events}) == 1
    survivor = incidents[events[0].incident_id]
    assert sorted(survivor.event_ids) == [1, 2, 3] and survivor.kind == "uncorrected_memory"
    merged = [i for i in incidents.values() if i.merged_into == survivor.id]
    assert len(merged) == 1 and merged[0].closed


def test_window_closes_incidents():
    clk = Clock()
    pa = 0x5000_0000
    first = ghes(clk(), mem_block(pa, enc.CORRECTED), notify_type=0)
    later = ghes(clk(5000), mem_block(pa, enc.CORRECTED), notify_type=0)  # 5 s > 2 s window
    events, incidents = run([first, later])
    assert events[0].incident_id != events[1].incident_id
    assert incidents[events[0].incident_id].closed


def test_memory_failure_outcomes_classified():
    clk = Clock()
    for result, severity, containment in ((3, "recoverable", "page_isolated"),
                                          (1, "uncorrected", "not_contained"),
                                          (2, "recoverable", "delayed"),
                                          (0, "uncorrected", "not_contained")):
        events, _ = run([mfe(clk(), 0x1234, result=result)])
        assert (events[0].severity, events[0].containment) == (severity, containment)


def test_pcie_incident_names_the_nic():
    from rasd.classify.netdev import NetdevInfo
    clk = Clock()
    sec = enc.pcie(port_type=0, device=dict(segment=0, bus=3, device=0, function=1,
                                            vendor_id=0x15B3, device_id=0x101B),
                   aer=dict(cor_status=1))
    block = enc.encode_status_block([enc.section(sec, enc.CORRECTED)])
    asked = []

    def netdevs(bdf):
        asked.append(bdf)
        return [NetdevInfo("enp3s0f1", operstate="UP")]

    corr = Correlator(netdevs_of=netdevs)
    p = Pipeline(EventDecoder({}), stages=[classify, corr])
    event = p.feed(ghes(clk(), block, notify_type=0, tid=0, comm="swapper/0"))
    inc = corr.open[event.incident_id]
    assert asked == ["0000:03:00.1"]
    assert inc.location == {"pcie": "0000:03:00.1", "netdev": "enp3s0f1(UP)"}
    assert "netdev enp3s0f1(UP)" in inc.summary


def test_kmsg_lines_become_one_incident_under_lockdown():
    """lockdown=confidentiality: only the kernel's printk lines are left. The GHES
    block print and the Memory failure line of the same page are one incident."""
    from rasd.sources.fallbacks import KmsgSource
    from rasd.sources.kmsg import KmsgRecord, RasLineParser
    text = """{1}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 0
{1}[Hardware Error]: event severity: recoverable
{1}[Hardware Error]:  Error 0, type: recoverable
{1}[Hardware Error]:   section_type: memory error
{1}[Hardware Error]:   physical_address: 0x0000000812345000
{1}[Hardware Error]:   node:0 module:3
Memory failure: 0x812345: recovery action for dirty LRU page: Recovered""".splitlines()
    parser = RasLineParser()
    found = []
    for i, line in enumerate(text):
        found += parser.feed(KmsgRecord(i, 3, 0, 1000 + i, "-", line))
    found += parser.flush()
    seen = []
    corr = Correlator(on_change=seen.append)
    p = Pipeline(EventDecoder({}), stages=[classify, corr])
    events = [p.feed_event(KmsgSource._event(item)) for item in found]
    assert len({e.incident_id for e in events}) == 1
    inc = seen[-1]
    assert inc.kind == "uncorrected_memory" and inc.phys_addr == 0x812345000
    assert inc.severity == "recoverable" and inc.containment == "page_isolated"


def test_kmsg_hardware_error_without_address_is_unlocatable():
    from rasd.sources.fallbacks import KmsgSource
    from rasd.sources.kmsg import KmsgEvent
    item = KmsgEvent("hw_error", 1, 1000, 3, {"severity": "recoverable", "source_id": 0,
                                              "sections": [{"section_type": "memory error"}]})
    seen = []
    p = Pipeline(EventDecoder({}), stages=[classify, Correlator(on_change=seen.append)])
    p.feed_event(KmsgSource._event(item))
    assert seen[-1].kind == "unlocatable_memory_corruption" and seen[-1].severity == "critical"


def test_a_long_storm_keeps_incident_memory_bounded():
    """Corrected errors on one page, back to back: one incident that stays open for the
    whole storm. It counts every member but keeps only the first MAX_EVENT_IDS ids (each
    event row names its incident, so the store loses none)."""
    from rasd.events import MAX_EVENT_IDS
    clk = Clock()
    pa = 0x8_1234_5000
    n = MAX_EVENT_IDS + 500
    seq = [ghes(clk(), mem_block(pa, 2, node=0, module=3), notify_type=0) for _ in range(n)]
    events, incidents = run(seq)
    assert len({e.incident_id for e in events}) == 1
    inc = incidents[events[0].incident_id]
    assert inc.event_count == n and inc.kind_counts == {"ghes": n}
    assert inc.event_ids == [e.id for e in events[:MAX_EVENT_IDS]]
    assert inc.to_dict()["event_count"] == n


def test_a_storm_s_repeats_only_count_and_are_heard_by_on_count():
    """One record again and again (the decode stage shares its Record): after the first,
    each event joins the same incident through the repeat path, which tells on_count,
    not on_change. A record that differs, the same record after the incident closed, or
    the same record with other fields takes the full path."""
    changes, counts = [], []
    corr = Correlator(window_ns=2000 * MS, on_change=changes.append, on_count=counts.append)
    p = Pipeline(EventDecoder(), stages=[classify, corr])
    clk = Clock()
    hot = mem_block(0x8_0000_1000, 2, node=0, module=1)
    events = [p.feed(ghes(clk(), hot, notify_type=0)) for _ in range(5)]
    inc = corr.open[events[0].incident_id]
    assert {e.incident_id for e in events} == {inc.id}
    assert changes == [inc] and counts == [inc] * 4  # opened once, then counted
    assert inc.event_count == 5 and inc.event_ids == [e.id for e in events]
    assert (inc.first_wall_ns, inc.last_wall_ns) == (events[0].wall_ns, events[-1].wall_ns)

    other = p.feed(ghes(clk(), mem_block(0x8_0000_2000, 2, node=0, module=1), notify_type=0))
    assert other.incident_id != inc.id and changes[-1].id == other.incident_id
    sea = p.feed(ghes(clk(), hot, notify_type=8))  # same bytes, SEA-notified: other fields
    assert sea.incident_id == inc.id and changes[-1] is inc and len(counts) == 4

    corr.expire(clk(5000))  # the window passed: closed
    assert inc.closed
    again = p.feed(ghes(clk(), hot, notify_type=0))
    assert again.incident_id not in (None, inc.id) and changes[-1].id == again.incident_id


def test_without_on_count_on_change_hears_of_repeats_too():
    changes = []
    corr = Correlator(on_change=changes.append)
    p = Pipeline(EventDecoder(), stages=[classify, corr])
    clk = Clock()
    hot = mem_block(0x8_0000_1000, 2, node=0, module=1)
    for _ in range(3):
        p.feed(ghes(clk(), hot, notify_type=0))
    assert len(changes) == 3 and len(set(map(id, changes))) == 1
