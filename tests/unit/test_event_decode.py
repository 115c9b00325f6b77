"""The decode stage and the pipeline, driven by source records as the BPF side emits
them (and as `rasd --record` stores them), through the replay format.

Tracepoint entries are laid out with the recorded tracefs formats of Debian's arm64
6.1 and 6.12 kernels (tests/fixtures/formats/), so field offsets and the symbolic
tables are the real kernels' own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rasd import events as ev
from rasd.decode.cper.sections.arm import ERR_INFO
from rasd.decode.event import EventDecoder, print_symbolic_tables
from rasd.encode import cper as enc
from rasd.pipeline import Pipeline
from rasd.sources.records import Record
from rasd.sources.replay import ReplayFile, RecordWriter, encode_trace_entry, record_from_json
from rasd.sources.tracefs import parse_format

FORMATS = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
ROOT = Path(__file__).resolve().parents[2]


def fmt(kernel: str, name: str):
    return parse_format((FORMATS / kernel / name).read_text(), "ras", name)


class Collect:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def handle(self, event: ev.Event) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def call(probe: str, rec_flags=(), **fields) -> Record:
    return Record("call", probe, 0, frozenset(rec_flags), 1, 4242, 4243, "qemu-kvm", 10**9,
                  dict(fields))


def ghes_record(block: bytes, truncated: bool = False) -> Record:
    fields = {"source_id": 0, "hest_type": 10, "notify_type": 8, "error_block_length": 1024,
              "estatus_len": len(block), "captured_len": len(block), "ghes": 0xffff0000,
              "estatus": 0xffff1000}
    flags = {"truncated"} if truncated else set()
    return Record("ghes", "ghes_do_proc", 1, frozenset(flags), 0, 0, 0, "swapper/0", 5 * 10**9,
                  fields, block)


def tp_record(kernel: str, name: str, values: dict) -> Record:
    f = fmt(kernel, name)
    return Record("tp", name, 0, frozenset(), 2, 1, 1, "kworker", 7 * 10**9,
                  {"entry_len": 0, "captured_len": 0}, encode_trace_entry(f, values))


def pipeline(kernel: str = "6.12") -> tuple[Pipeline, Collect]:
    formats = {f"ras:{p.name}": fmt(kernel, p.name) for p in (FORMATS / kernel).iterdir()}
    sink = Collect()
    return Pipeline(EventDecoder(formats, wall_offset_ns=1_700_000_000 * 10**9), [sink]), sink


MEM = enc.memory_error(physical_addr=0x8_1234_5000, node=0, module=3, error_type=2)


def test_ghes_record_decodes_the_cper_block():
    p, sink = pipeline()
    block = enc.encode_status_block([enc.section(MEM, enc.CORRECTED)])
    event = p.feed(ghes_record(block))
    assert event.kind == ev.GHES and event.decode_error is None
    assert event.fields["notify"] == "sea" and event.fields["source_id"] == 0
    assert "ghes" not in event.fields and "estatus" not in event.fields  # kernel pointers dropped
    assert event.cper.sections[0].body.physical_addr == 0x8_1234_5000
    assert event.wall_ns == 5 * 10**9 + 1_700_000_000 * 10**9
    assert sink.events == [event] and p.counters.events[ev.GHES] == 1


def test_ghes_garbage_is_kept_and_counted_not_raised():
    p, _ = pipeline()
    event = p.feed(ghes_record(b"\x01\x00\x00\x00" + b"\xff" * 40))
    assert event.decode_error and event.raw.startswith(b"\x01\x00\x00\x00")
    assert p.counters.decode_errors == 1


def test_ghes_block_cut_by_the_kernel_side_is_not_a_decode_error():
    block = enc.encode_status_block([enc.section(MEM, enc.CORRECTED)])
    p, _ = pipeline()
    event = p.feed(ghes_record(block[:100], truncated=True))
    assert event.truncated and event.decode_error is None
    assert event.cper.error is not None  # the record itself knows it is short


def test_memory_failure_flags_and_result():
    p, _ = pipeline()
    event = p.feed(call("memory_failure", {"return"}, pfn=0x81234, flags=0x2, ret=0))
    assert event.kind == ev.MEMORY_FAILURE
    assert event.fields["action_required"] is True
    assert event.fields["flag_names"] == ["MF_ACTION_REQUIRED"]
    assert event.fields["result"] == "handled"
    already = p.feed(call("memory_failure", {"return"}, pfn=1, flags=0x20, ret=-133))
    assert already.fields["result"] == "already_poisoned"
    assert already.fields["flag_names"] == ["MF_SW_SIMULATED"]


@pytest.mark.parametrize("regs,flags,origin", [(0, {"no_regs"}, "guest"),
                                                (0xffff8000, {"user"}, "host_user"),
                                                (0xffff8000, set(), "host_kernel")])
def test_apei_claim_sea_origin(regs, flags, origin):
    p, _ = pipeline()
    event = p.feed(call("apei_claim_sea", flags | {"return"}, regs=regs, ret=-2))
    assert event.kind == ev.SEA_CLAIM
    assert event.fields["origin"] == origin and event.fields["claimed"] is False
    assert event.fields["result"] == "not_claimed"


def test_guest_sea_esr_is_decoded_when_the_vcpu_fault_was_read():
    p, _ = pipeline()
    event = p.feed(call("kvm_handle_guest_abort", {"vcpu_fault"}, vcpu=0xffff0001,
                        esr_el2=0x93800017, far_el2=0x20001000))
    assert event.kind == ev.GUEST_SEA
    assert event.esr.ec.value == 0x24 and event.esr.abort.is_sea
    assert event.esr.abort.walk_level == 3
    assert "vcpu" not in event.fields and event.task.comm == "qemu-kvm"


def test_guest_serror_pending_uses_disr():
    p, _ = pipeline()
    # DISR_EL1 with IDS clear: AET UER (3), DFSC 0x11 -> an EC 0x2F syndrome
    event = p.feed(call("handle_exit_early", {"vcpu_fault"}, vcpu=1,
                        exception_index=(1 << 31) | 2, esr_el2=0, disr_el1=0xC11))
    assert event.kind == ev.GUEST_SERROR and event.fields["serror_pending"]
    assert event.esr.ec.value == 0x2F and event.esr.serror.aet.name == "UER"


def test_host_serror_check_and_vserror_injection():
    p, _ = pipeline()
    check = p.feed(call("arm64_is_fatal_ras_serror", {"return"}, regs=0, esr=0xBE000C11, fatal=1))
    assert check.kind == ev.SERROR_CHECK and check.fields["origin"] == "guest"
    assert check.fields["fatal"] is True and check.esr.serror.aet.name == "UER"
    inject = p.feed(call("kvm_inject_serror_esr", vcpu=1, esr=0x1234))
    assert inject.kind == ev.VSERROR_INJECTED and inject.esr.iss == 0x1234
    vabt = p.feed(call("kvm_inject_vabt", vcpu=1))
    assert vabt.kind == ev.VSERROR_INJECTED and vabt.esr is None


def test_memory_failure_event_names_come_from_the_kernels_format():
    p, _ = pipeline("6.12")
    event = p.feed(tp_record("6.12", "memory_failure_event", {"pfn": 0x70002, "type": 13,
                                                              "result": 3}))
    assert event.kind == ev.MEMORY_FAILURE_EVENT and event.source == "tracefs:ras:memory_failure_event"
    assert event.fields["pfn"] == 0x70002
    assert event.fields["page_type"] == "dirty LRU page"
    assert event.fields["result_name"] == "Recovered"


def test_print_symbolic_tables_differ_between_kernels():
    t61 = print_symbolic_tables(fmt("6.1", "memory_failure_event").print_fmt)["type"]
    t612 = print_symbolic_tables(fmt("6.12", "memory_failure_event").print_fmt)["type"]
    assert t612[13] == "dirty LRU page"
    assert t61 != t612  # the page-type numbering moved between 6.1 and 6.12


def test_extended_arm_event_error_info_is_decoded():
    info = enc.arm_error_info(0x02, error_info=0x7, physical_fault_addr=0x8000_0000)
    pei = ERR_INFO.pack(info.version, info.length, info.validation_bits, info.type,
                        info.multiple_error, info.flags, info.error_info,
                        info.virt_fault_addr, info.physical_fault_addr)
    p, _ = pipeline("6.12")
    event = p.feed(tp_record("6.12", "arm_event", {
        "mpidr": 0x80000001, "midr": 0x410FD0C0, "running_state": 1, "psci_state": 0,
        "affinity": 0, "pei_len": len(pei), "pei_buf": pei, "ctx_len": 0, "ctx_buf": b"",
        "oem_len": 2, "oem_buf": b"\xab\xcd", "sev": 2, "cpu": 1}))
    assert event.kind == ev.ARM_EVENT and event.decode_error is None
    assert event.fields["mpidr"] == 0x80000001 and event.fields["severity"] == "recoverable"
    assert event.fields["error_info"][0]["physical_fault_addr"] == "0x80000000"
    assert event.fields["error_info"][0]["type"]["names"] == ["cache"]
    assert event.fields["oem_buf"] == "abcd"


def test_old_arm_event_layout():
    p, _ = pipeline("6.1")
    event = p.feed(tp_record("6.1", "arm_event", {"mpidr": 7, "midr": 8, "running_state": 1,
                                                   "psci_state": 0, "affinity": 0xFF}))
    assert event.fields["mpidr"] == 7 and "error_info" not in event.fields


def test_non_standard_event_guid_and_payload():
    guid = "12345678-1234-5678-1234-567812345678"
    from rasd.decode.common import guid_bytes
    p, _ = pipeline("6.12")
    event = p.feed(tp_record("6.12", "non_standard_event", {
        "sec_type": guid_bytes(guid), "fru_id": bytes(16), "fru_text": "", "sev": 1,
        "len": 4, "buf": b"\x01\x02\x03\x04"}))
    assert event.kind == ev.NON_STANDARD
    assert event.fields["sec_type"] == guid and event.fields["severity"] == "corrected"
    assert event.fields["buf"] == "01020304"


def test_unknown_tracepoint_format_is_a_counted_decode_error():
    p = Pipeline(EventDecoder({}))
    event = p.feed(tp_record("6.12", "mc_event", {"error_type": 0}))
    assert event.decode_error and p.counters.decode_errors == 1


def test_record_json_round_trip():
    rec = ghes_record(enc.encode_status_block([enc.section(MEM, enc.CORRECTED)]))
    back = record_from_json(json.loads(json.dumps(rec.to_json())))
    assert back == rec


def test_recorded_stream_replays_through_rasd(tmp_path):
    """rasd --replay: the header carries the recording kernel's formats."""
    path = tmp_path / "rec.jsonl"
    formats = {f"ras:{n}": (FORMATS / "6.12" / n).read_text()
               for n in ("memory_failure_event", "arm_event")}
    writer = RecordWriter(path, formats, wall_offset_ns=0)
    block = enc.encode_status_block([enc.section(MEM, enc.RECOVERABLE)])
    recs = [call("apei_claim_sea", {"return", "user"}, regs=1, ret=0), ghes_record(block),
            call("memory_failure", {"return"}, pfn=0x812345, flags=2, ret=0),
            tp_record("6.12", "memory_failure_event", {"pfn": 0x812345, "type": 13, "result": 3})]
    for rec in recs:
        writer.write(rec)
    writer.close()
    with open(path, "a") as f:
        f.write("{not json\n")  # a torn line is counted, the rest replays
    replay = ReplayFile(path)
    assert len(list(replay.records())) == 4 and len(replay.errors) == 1
    assert "ras:arm_event" in replay.formats
    out = subprocess.run([sys.executable, "-m", "rasd.cli.daemon", "--replay", str(path),
                          "--log-level", "warning"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 1, out.stderr  # the bad line makes the replay exit 1
    summary = json.loads(out.stdout)
    assert summary["records"] == 4 and summary["bad_lines"] == 1
    assert summary["events"] == {"sea_claim": 1, "ghes": 1, "memory_failure": 1,
                                 "memory_failure_event": 1}
    assert summary["decode_errors"] == 0
    # the SEA, its record (in a kernel thread), memory_failure in the task and the
    # outcome tracepoint are one fault: the page joins what the thread id began
    live = [i for i in summary["incidents"] if i["merged_into"] is None]
    assert len(live) == 1, summary["incidents"]
    assert live[0]["kind"] == "uncorrected_memory" and live[0]["pfn"] == 0x812345
    assert live[0]["severity"] == "recoverable" and live[0]["containment"] == "page_isolated"
