"""The BPF programs on this host's kernel, with real bcc: compile + verifier for
every program, the loader child attaching what exists, and the parent reading
the ring buffer itself (records end to end, exact lost counting)."""
from __future__ import annotations

import json
import struct
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rasd.sources.bpf_loader import ExtraAttach, compile_all_programs, load_probes, tp_instance
from rasd.sources.probes import PROBES, TEST_PROBE_ID
from rasd.sources.records import parse_record
from rasd.sources.resolve import ATTACHED, MISSING, WRONG_ARCH, KernelView
from rasd.sources.tracefs import find_tracefs, parse_format

ROOT = Path(__file__).resolve().parents[2]
K612 = ROOT / "tests" / "fixtures" / "arm64-kernels" / "6.12.95+deb12-arm64"

pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loads eBPF programs"),
    pytest.mark.skipif(find_tracefs() is None, reason="needs tracefs at /sys/kernel/tracing"),
]


HOST_FORMATS = ROOT / "tests" / "fixtures" / "formats" / "host"


def _fixture_tp_lines() -> list[str]:
    """Generic tracepoint programs instantiated from the recorded 6.12 arm64
    formats (extended arm_event, aer_event, memory_failure_event): verified here
    even though this kernel lacks some of those events. Events the arm64
    capture did not record (signal:signal_generate) come from this host's copy."""
    lines = []
    for p in PROBES:
        if p.is_tracepoint:
            system, event = p.events[0].split(":")
            path = K612 / "events" / system / event / "format"
            if not path.exists():
                path = HOST_FORMATS / event
            fmt = parse_format(path.read_text())
            lines.append(tp_instance(p.entry_fn + "_612", p.id, fmt, p.tp_filter))
    return lines


VCPU_OFFSETS = ["-DRASD_OFF_VCPU_ESR_EL2=2048", "-DRASD_SZ_VCPU_ESR_EL2=8",
                "-DRASD_OFF_VCPU_DISR_EL1=2056", "-DRASD_OFF_VCPU_FAR_EL2=2064",
                "-DRASD_OFF_VCPU_HPFAR_EL2=2072"]


@pytest.mark.parametrize("cflags", [[], VCPU_OFFSETS, VCPU_OFFSETS[:1] + ["-DRASD_SZ_VCPU_ESR_EL2=4", "-DRASD_ESR32_PROBES=0x7fffeULL"]],
                         ids=["no-btf-offsets", "vcpu-offsets", "esr32"])
def test_every_program_compiles_and_passes_verifier(cflags):
    names = compile_all_programs(_fixture_tp_lines(), cflags)
    expected = {fn for p in PROBES for fn in (p.entry_fn, p.exit_fn) if fn and not p.is_tracepoint}
    expected |= {p.entry_fn + "_612" for p in PROBES if p.is_tracepoint}
    assert expected <= set(names)


_PARENT_SCRIPT = r"""
import json, os, sys
from rasd.sources.bpf_loader import load_probes
lp = load_probes(ringbuf_pages=16)
rss = int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])
print(json.dumps({"results": [r.to_json() for r in lp.results], "stats": lp.stats,
                  "bcc_imported": "bcc" in sys.modules, "rss_kb": rss}))
"""


@pytest.fixture(scope="module")
def daemon_side() -> dict:
    """load_probes() in a fresh process, as the daemon calls it."""
    out = subprocess.run([sys.executable, "-c", _PARENT_SCRIPT], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parent_never_imports_bcc_and_stays_small(daemon_side):
    assert daemon_side["bcc_imported"] is False
    assert daemon_side["rss_kb"] < 60 * 1024, daemon_side
    assert daemon_side["stats"]["child_maxrss_kb"] > daemon_side["rss_kb"]


def test_host_tracepoints_attach_and_arm64_probes_report_why(daemon_side):
    res = {r["probe"]: r for r in daemon_side["results"]}
    view = KernelView.from_host()
    for p in PROBES:
        r = res[p.name]
        if p.is_tracepoint:
            present = any(k in view.events for k in p.events)
            assert r["status"] == (ATTACHED if present else MISSING), r
        elif view.arch != "arm64" and p.arch == ("arm64",):
            assert r["status"] == WRONG_ARCH and "arm64 only" in r["reason"]
    assert res["arm_event"]["status"] == ATTACHED  # this host has ras:arm_event


def test_records_end_to_end_after_child_exit():
    lp = load_probes(ringbuf_pages=8, require_any=False,
                     test_attach=[ExtraAttach("rasd_test_call", "syscalls:sys_enter_getppid")],
                     extra_cflags=[f"-DRASD_TEST_TGID={os.getpid()}"])
    try:
        assert not lp.ringbuf.poll(0.05)  # idle: nothing to read
        for _ in range(3):
            os.getppid()
        assert lp.ringbuf.poll(1.0)
        mine = [r for r in lp.read() if r.tgid == os.getpid()]
        assert len(mine) == 3
        r = mine[0]
        assert (r.kind, r.probe, r.probe_id) == ("call", "test", TEST_PROBE_ID)
        assert r.tid == os.getpid() and r.comm and r.ktime_ns > 0
        assert r.fields == {"arg0": 1, "arg1": 2, "arg2": 3, "arg3": 4,
                            "x0": 6, "x1": 7, "x2": 8, "x3": 9}
        assert lp.lost.total() == 0
    finally:
        lp.close()


def test_generic_tracepoint_copy_decodes_data_loc():
    """The tracepoint body ras:* events use, on a syscall-driven event with a
    __data_loc string (sched_process_exec.filename)."""
    lp = load_probes(ringbuf_pages=8, require_any=False,
                     test_attach=[ExtraAttach("rasd_tp_exec", "sched:sched_process_exec",
                                             copy_tp=True)])
    try:
        subprocess.run(["/bin/true"], check=True)
        assert lp.ringbuf.poll(1.0)
        fmt = parse_format((find_tracefs() / "events/sched/sched_process_exec/format").read_text())
        hits = [r for r in lp.read() if r.kind == "tp" and r.probe_id == TEST_PROBE_ID]
        decoded = [r.decode_tp(fmt) for r in hits]
        assert any(d["filename"] == "/bin/true" for d in decoded), decoded
        r = hits[0]
        assert r.fields["captured_len"] == r.fields["entry_len"] == len(r.blob)
        assert not r.truncated
    finally:
        lp.close()


def test_lost_events_counted_exactly():
    """A one-page ring holds 31 CALL records (48+72 bytes + 8 header): every
    further hit must be counted lost, none silently dropped."""
    n = 500
    lp = load_probes(ringbuf_pages=1, require_any=False,
                     test_attach=[ExtraAttach("rasd_test_call", "syscalls:sys_enter_getppid")],
                     extra_cflags=[f"-DRASD_TEST_TGID={os.getpid()}"])
    try:
        for _ in range(n):
            os.getppid()
        lost = lp.lost.total()
        got = sum(1 for raw in lp.ringbuf.records() if parse_record(raw).probe_id == TEST_PROBE_ID)
        assert got == (4096 - 1) // 128  # the kernel keeps one byte free: 31 fit
        assert got + lost == n
        # space is free again after draining
        os.getppid()
        assert sum(1 for _ in lp.ringbuf.records()) == 1
    finally:
        lp.close()


def test_close_detaches():
    lp = load_probes(ringbuf_pages=8, require_any=False,
                     test_attach=[ExtraAttach("rasd_test_call", "syscalls:sys_enter_getppid")],
                     extra_cflags=[f"-DRASD_TEST_TGID={os.getpid()}"])
    fd = lp.link_fds["test:rasd_test_call"][0]
    lp.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def _libc_path() -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "/libc.so" in path or "/libc-" in path:
            return path
    pytest.skip("libc not found in /proc/self/maps")


def test_perf_event_attachments_survive_the_child():
    """bcc attaches kprobes and uprobes the same way: perf_event_open on the
    kprobe/uprobe PMU, then PERF_EVENT_IOC_SET_BPF. This kernel has no kprobes,
    so a uprobe proves the mechanism: attached in the child, firing after the
    child exited because the parent holds the perf-event fd, and no legacy
    tracefs uprobe_events entry left behind."""
    libc = _libc_path()
    lp = load_probes(ringbuf_pages=8, require_any=False,
                     test_attach=[ExtraAttach("rasd_test_call", f"{libc}:getppid", kind="uprobe"),
                                  ExtraAttach("rasd_tp_exec", "sched:sched_process_exec",
                                              copy_tp=True)],
                     extra_cflags=[f"-DRASD_TEST_TGID={os.getpid()}"])
    try:
        res = {r.probe: r for r in lp.results}
        assert res["test:rasd_test_call"].status == ATTACHED, res["test:rasd_test_call"]
        for name in ("test:rasd_test_call", "test:rasd_tp_exec", "arm_event"):
            for fd in lp.link_fds[name]:
                assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[perf_event]"
        uprobe_events = (find_tracefs() / "uprobe_events").read_text()
        assert "getppid" not in uprobe_events
        os.getppid()
        assert lp.ringbuf.poll(1.0)
        assert [r.probe for r in lp.read() if r.kind == "call"] == ["test"]
    finally:
        lp.close()


def _fake_ghes(estatus: bytes) -> bytes:
    """struct rasd_test_ghes value: generic_ptr (set by BPF), acpi_hest_generic, block."""
    generic = bytearray(64)
    struct.pack_into("<HH", generic, 0, 10, 7)  # GHESv2, source id 7
    generic[32] = 8  # notify type SEA
    struct.pack_into("<I", generic, 60, 0x2000)  # error_block_length
    return bytes(8) + bytes(generic) + estatus.ljust(4096 + 1024, b"\0")


def _estatus(raw_off: int, raw_len: int, data_len: int, fill: int = 0x5A) -> bytes:
    hdr = struct.pack("<5I", 1, raw_off, raw_len, data_len, 2)
    return hdr + bytes([fill]) * (4096 + 1024 - len(hdr))


@pytest.mark.parametrize("raw_off, raw_len, data_len, want_len", [
    (0, 0, 72, 92),  # 20 + data_length
    (100, 50, 72, 150),  # raw_data_offset + raw_data_length
    (0, 0, 5000, 5020),  # longer than the 4 KiB cap: truncated
])
def test_ghes_body_copies_the_status_block(raw_off, raw_len, data_len, want_len):
    """The ghes_do_proc body (ghes.c) end to end: HEST identity through
    ghes->generic, cper_estatus_len(), the bounded copy and its flag."""
    from rasd.sources.bpfsys import update_elem
    lp = load_probes(ringbuf_pages=16, require_any=False,
                     test_attach=[ExtraAttach("rasd_test_ghes", "syscalls:sys_enter_getppid")],
                     extra_cflags=[f"-DRASD_TEST_TGID={os.getpid()}"])
    try:
        block = _estatus(raw_off, raw_len, data_len)
        update_elem(lp.map_fds["rasd_test_ghes_mem"], struct.pack("<I", 0), _fake_ghes(block))
        os.getppid()
        assert lp.ringbuf.poll(1.0)
        (rec,) = list(lp.read())
        assert rec.kind == "ghes" and rec.probe_id == TEST_PROBE_ID
        f = rec.fields
        assert (f["source_id"], f["hest_type"], f["notify_type"], f["error_block_length"]) == \
            (7, 10, 8, 0x2000)
        assert f["estatus_len"] == want_len
        cap = min(want_len, 4096)
        assert f["captured_len"] == cap and rec.blob == block[:cap]
        assert rec.truncated == (want_len > 4096)
        assert "read_fault" not in rec.flags
    finally:
        lp.close()


def test_ghes_body_reads_the_isra_clone_argument():
    """Debian 6.1's ghes_do_proc.isra.0 is passed ghes->generic instead of ghes (seen in
    the arm64 lab: notify type read as 0, "polled", for an SEA record): the HEST
    identity is still read, from the entry itself."""
    from rasd.sources.bpfsys import update_elem
    lp = load_probes(ringbuf_pages=16, require_any=False,
                     test_attach=[ExtraAttach("rasd_test_ghes_isra",
                                              "syscalls:sys_enter_getppid")],
                     extra_cflags=[f"-DRASD_TEST_TGID={os.getpid()}"])
    try:
        update_elem(lp.map_fds["rasd_test_ghes_mem"], struct.pack("<I", 0),
                    _fake_ghes(_estatus(0, 0, 72)))
        os.getppid()
        assert lp.ringbuf.poll(1.0)
        (rec,) = list(lp.read())
        f = rec.fields
        assert (f["source_id"], f["hest_type"], f["notify_type"], f["error_block_length"]) == \
            (7, 10, 8, 0x2000)
        assert f["estatus_len"] == 92 and "read_fault" not in rec.flags
    finally:
        lp.close()


def _uprobe_pair(entry_fn: str | None, exit_fn: str | None, libc_fn: str,
                 cflags: tuple[str, ...] = ()):
    libc = _libc_path()
    attach = []
    if entry_fn:
        attach.append(ExtraAttach(entry_fn, f"{libc}:{libc_fn}", kind="uprobe"))
    if exit_fn:
        attach.append(ExtraAttach(exit_fn, f"{libc}:{libc_fn}", kind="uretprobe"))
    lp = load_probes(ringbuf_pages=8, require_any=False, test_attach=attach,
                     extra_cflags=list(cflags))
    for r in lp.results:
        if r.probe.startswith("test:"):
            assert r.status == ATTACHED, r
    return lp


def _mine(lp) -> list:
    return [r for r in lp.read() if r.tgid == os.getpid()]


def test_kretprobe_pair_memory_failure_body():
    """memory_failure entry/return bodies run as uprobe/uretprobe on libc
    getpgid(pid): the entry stash per tid pairs with the return value."""
    lp = _uprobe_pair("rasd_memory_failure_entry", "rasd_memory_failure_return", "getpgid")
    try:
        with pytest.raises(ProcessLookupError):
            os.getpgid(0x3FFFFFF0)
        recs = _mine(lp)
        assert len(recs) == 1
        r = recs[0]
        assert r.probe == "memory_failure" and r.fields["pfn"] == 0x3FFFFFF0
        assert r.fields["ret"] == -1 and {"return"} == set(r.flags)
    finally:
        lp.close()


def test_kretprobe_without_entry_is_flagged():
    lp = _uprobe_pair(None, "rasd_memory_failure_return", "getpgid")
    try:
        os.getpgid(0)
        (r,) = _mine(lp)
        assert {"return", "no_entry"} <= r.flags and r.fields["pfn"] == 0
        assert r.fields["ret"] == os.getpgid(0)
    finally:
        lp.close()


def test_apei_claim_sea_null_regs_is_the_guest_path():
    lp = _uprobe_pair("rasd_apei_claim_sea_entry", "rasd_apei_claim_sea_return", "getpgid")
    try:
        os.getpgid(0)  # x0 = 0: like apei_claim_sea(NULL) from KVM
        (r,) = _mine(lp)
        assert r.probe == "apei_claim_sea" and r.fields["regs"] == 0
        assert "no_regs" in r.flags and r.fields["ret"] == os.getpgid(0)
    finally:
        lp.close()


def test_handle_exit_early_filter():
    """Only exception_index == 1 (EL1_SERROR) or bit 31 passes; x1 of setpgid."""
    lp = _uprobe_pair("rasd_handle_exit_early", None, "setpgid",
                      ("-DRASD_OFF_VCPU_ESR_EL2=0", "-DRASD_SZ_VCPU_ESR_EL2=8"))
    try:
        for idx in (0, 2, 3, 1):
            with pytest.raises(OSError):
                os.setpgid(0x3FFFFFF0, idx)
        recs = _mine(lp)
        assert [r.fields["exception_index"] for r in recs] == [1]
        r = recs[0]
        assert r.probe == "handle_exit_early" and r.fields["vcpu"] == 0x3FFFFFF0
        # the vcpu "pointer" is not kernel memory here: the read fails and says so
        assert {"vcpu_fault", "read_fault"} <= r.flags
    finally:
        lp.close()


def _cgroup2_root() -> Path | None:
    from rasd.classify.cgroups import cgroup2_mounts
    mounts = cgroup2_mounts()
    return Path(mounts[0][0]) if mounts and mounts[0][1] == "/" else None


@pytest.mark.skipif(_cgroup2_root() is None, reason="no cgroup2 hierarchy mounted at its root")
def test_vmm_cgroup_id_names_the_vm_after_the_vmm_is_gone(tmp_path):
    """KVM probes send the vCPU thread's cgroup v2 id (bpf_get_current_cgroup_id): it is
    the kernfs inode of the cgroup directory, so the VM is named from the machine scope
    even when /proc has no such process any more (the 6.12 lab's VMM that exits right
    after its virtual SError)."""
    from rasd.classify.vm import VmCache

    root = _cgroup2_root()
    slice_ = root / "machine.slice"
    made_slice = not slice_.exists()
    scope = slice_ / "machine-qemu\\x2d7\\x2dhostvm.scope"
    scope.mkdir(parents=True, exist_ok=True)
    own = (Path("/proc/self/cgroup").read_text().split("0::", 1)[1].splitlines()[0]
           if "0::" in Path("/proc/self/cgroup").read_text() else "/")
    lp = load_probes(ringbuf_pages=8, require_any=False,
                     test_attach=[ExtraAttach("rasd_test_vmm_call", "syscalls:sys_enter_getppid")],
                     extra_cflags=[f"-DRASD_TEST_TGID={os.getpid()}"])
    try:
        (scope / "cgroup.procs").write_text(str(os.getpid()))
        try:
            os.getppid()
        finally:
            (root / own.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))
        assert lp.ringbuf.poll(1.0)
        (rec,) = [r for r in lp.read() if r.tgid == os.getpid()]
        assert rec.fields["arg3"] == scope.stat().st_ino
        # no such process in this (empty) /proc: only the id can name the VM
        cache = VmCache(proc=str(tmp_path))
        vm = cache.lookup(rec.tgid, rec.tid, "CPU 2/KVM", cgroup_id=rec.fields["arg3"])
        assert (vm["name"], vm["vcpu"], vm["how"]) == ("hostvm", 2, "cgroup-id:libvirt-qemu")
    finally:
        lp.close()
        scope.rmdir()
        if made_slice:
            slice_.rmdir()
