"""Nested-KVM scenarios (issue 6, items 11 and 13).

The L1 guest boots with ``-M virt,ras=on,virtualization=on`` (KVM in the guest,
VHE), and runs the lab's own VMM, guest/kvm/labvmm.c, whose L2 guest is a few
instructions doing MMIO exits.  A real KVM guest SEA is made reachable by the
test-only module guest/kvm/labsea.c (reference arm64-lab.md §7.1: QEMU routes an
external abort to EL2 only on a stage-2 table walk, so one level-2 table
descriptor of the VM is pointed at an unassigned PA).

    kvm-guest-sea   (a) MMIO exits through kvm_handle_guest_abort, rasd's KVM
                    probes attached and run per exit; (b) guest SEA with a
                    recoverable memory-error record pending in the SEA source
                    (claimed, memory_failure, SIGBUS to the VMM) and without one
                    (KVM injects a virtual SError); (c) virtual SErrors from
                    KVM_SET_VCPU_EVENTS, with and without an ESR.
    kvm-overhead    MMIO-exit loop timed with rasd attached and detached in the
                    same boot (median and spread of repeated runs).

The VMM process is put in a libvirt-style machine scope cgroup
(``machine.slice/machine-qemu\\x2d1\\x2dlabvm.scope``), as libvirt/machined do,
and its vCPU thread is called "CPU 0/KVM" as QEMU's is: rasd's VM attribution
reads both.  Nothing else names the VM.

Artefacts (cached under the lab cache, keyed by their inputs): the static VMM
(cross-compiled on the host) and labsea.ko per kernel ABI, cross-compiled on the
host by kbuild against the cached rootfs' headers (see build_module).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path

import build
import hest
import scenarios
from scenarios import Ctx, Failed, enc, hest_sources, mem_record, scenario, session
from rasd_guest import COVERAGE, Rasd, lab_config

KVM_SRC = build.LAB_DIR / "guest" / "kvm"
MACHINE = "virt,ras=on,virtualization=on"
VM_NAME = "labvm"
VM_CGROUP = "/sys/fs/cgroup/machine.slice/machine-qemu\\x2d1\\x2dlabvm.scope"
SEA_ESR_FSC = 0x17          # SEA on a level-3 table walk (what the redirect produces)
VSERROR_ESR = 0xBF000000    # EC 0x2F, IL, ISS bit 24: kvm_inject_vabt's syndrome
USER_ESR = 0x1234           # KVM_SET_VCPU_EVENTS serror_esr (ISS only)
SIGBUS_CODES = {4: "BUS_MCEERR_AR", 5: "BUS_MCEERR_AO", 3: "BUS_OBJERR"}

# What this lab cannot exercise, for the coverage report (reference §7.2).
KVM_LIMITS = {
    "handle_exit_early": "SError branch needs a physical SError at a guest exit; QEMU TCG has "
                         "no source of physical SErrors (no QMP/HMP command, machine option or "
                         "device; reference §7.2): only MMIO/trap exits, which the BPF filter "
                         "drops by design",
    "kvm_handle_guest_serror": "static, inlined into handle_exit_early; and it needs a "
                               "physical SError (QEMU TCG has none, reference §7.2)",
    "arm64_is_fatal_ras_serror": "called with regs == NULL only from kvm_handle_guest_serror "
                                 "(physical guest SError) or do_serror: no physical SError "
                                 "under QEMU TCG (reference §7.2)",
    "kvm_handle_guest_sea": "a function only from 6.17 (inline apei_claim_sea(NULL) before); "
                            "the lab kernels are 6.1 and 6.12",
    "kvm_inject_serror_esr": "6.17+ only (kvm_inject_vabt/kvm_set_sei_esr before)",
}


# --------------------------------------------------------------------------
# artefacts

def build_vmm() -> Path:
    src = KVM_SRC / "labvmm.c"
    gcc = build.sh("aarch64-linux-gnu-gcc", "--version", capture=True).split("\n")[0]
    key = build.digest(build.recipe(build_vmm), gcc, src.read_text())
    final = build.CACHE / "kvm" / f"labvmm-{key}"
    if not final.exists():
        with build.cache_lock(), build.building(final) as tmp:
            build.sh("aarch64-linux-gnu-gcc", "-O2", "-Wall", "-Werror", "-static", "-pthread",
                     "-o", tmp / "labvmm", src)
    return final / "labvmm"


def lab_rootfs(lab: build.Lab) -> Path:
    """The cached arm64 rootfs (headers of both kernels, rasd's dependencies)."""
    if lab.rootfs is None:
        with build.cache_lock():
            apt = build.bookworm_apt()
            apt.update()
            choices = [build.discover_kernel(apt, f) for f in build.KERNELS]
            lab.rootfs = build.build_rootfs(apt, choices) / "root"
    return lab.rootfs


def build_module(lab: build.Lab, kernel: build.Kernel) -> Path:
    """labsea.ko for this kernel ABI, cross-compiled natively against the rootfs's headers.

    kbuild runs on the host with aarch64-linux-gnu-gcc-12 (the compiler Debian builds
    these kernels with); only the headers package's own helpers (fixdep, modpost, arm64
    binaries) go through qemu-user, with the cross toolchain's libc as their root. It
    takes seconds, where make and gcc under qemu-user in a chroot took ~40 s a kernel.
    An external module build writes only into M=."""
    rootfs = lab_rootfs(lab)
    srcs = [KVM_SRC / "labsea.c", KVM_SRC / "Kbuild"]
    gcc = build.sh("aarch64-linux-gnu-gcc-12", "--version", capture=True).split("\n")[0]
    key = build.digest(build.recipe(build_module), [(s.name, s.read_text()) for s in srcs],
                       kernel.abi, kernel.version, rootfs.parent.name, gcc)
    final = build.CACHE / "kvm" / f"labsea-{kernel.flavour}-{key}"
    if (final / "labsea.ko").exists():
        return final / "labsea.ko"
    with build.cache_lock(), build.building(final) as tmp:
        build.log(f"labsea.ko for {kernel.abi}")
        common = kernel.abi.removesuffix("-arm64") + "-common"
        for s in srcs:
            shutil.copy(s, tmp / s.name)
        build.sh("make", "-s", "-C", rootfs / f"usr/src/linux-headers-{common}",
                 f"KBUILD_OUTPUT={rootfs}/usr/src/linux-headers-{kernel.abi}",
                 "CROSS_COMPILE=aarch64-linux-gnu-", f"M={tmp}",
                 # module BTF needs pahole on the host; labsea's kprobes do not use it
                 "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules",
                 env={**os.environ, "QEMU_LD_PREFIX": "/usr/aarch64-linux-gnu"})
        for f in tmp.iterdir():
            if f.name != "labsea.ko":
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    return final / "labsea.ko"


# --------------------------------------------------------------------------
# guest side

def kvm_guest(ctx: Ctx, name: str = "guest"):
    """A guest with KVM, the rootfs (rasd) and the VMM + module in /lab."""
    vmm, ko = build_vmm(), build_module(ctx.lab, ctx.kernel)
    lab_rootfs(ctx.lab)
    g = ctx.guest(name, machine=MACHINE, rootfs=True)
    g.share.mkdir(parents=True, exist_ok=True)
    shutil.copy(vmm, g.share / "labvmm")
    (g.share / "labvmm").chmod(0o755)
    shutil.copy(ko, g.share / "labsea.ko")
    (g.share / "vmm.sh").write_text(
        "#!/bin/sh\n# the VMM in the VM's machine scope, as libvirt/machined would place it\n"
        f"echo $$ > '{VM_CGROUP}/cgroup.procs' || exit 9\nexec /lab/labvmm \"$@\"\n")
    (g.share / "vmm.sh").chmod(0o755)
    return g


def prepare(g) -> None:
    g.run("[ -e /dev/kvm ] || { dmesg | grep -i kvm; exit 1; }")
    g.run("mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup; "
          f"mkdir -p '{VM_CGROUP}'")
    # rasd runs chrooted in /root, whose /sys was bind-mounted at boot, before this
    # cgroup2 mount: show it there too, as on any systemd host (rasd resolves the KVM
    # records' cgroup ids through it once a VMM has exited)
    g.run("! grep -q ' /root ' /proc/mounts || mountpoint -q /root/sys/fs/cgroup || "
          "mount --bind /sys/fs/cgroup /root/sys/fs/cgroup")


def parse_vmm(lines: list[str]) -> dict:
    out: dict = {"runs": [], "sigbus": []}
    for line in lines:
        if not line.startswith("labvmm: "):
            continue
        body = line[len("labvmm: "):]
        kv = dict(re.findall(r"(\w+)=(\S+)", body))
        if body.startswith("mmio run="):
            out["runs"].append({"exits": int(kv["exits"]), "seconds": float(kv["seconds"]),
                                "us_per_exit": float(kv["us_per_exit"])})
        elif body.startswith("SIGBUS"):
            code = int(kv["si_code"])
            out["sigbus"].append({"si_code": code, "name": SIGBUS_CODES.get(code, str(code)),
                                  "addr": kv["addr"], "tid": int(kv["tid"])})
        elif body.startswith("result"):
            out["result"] = kv
        elif body.startswith("target"):
            out["target"] = kv
        else:
            out.update(kv)
    return out


def run_vmm(g, args: str, timeout: float = 120) -> dict:
    res = g.run(f"/lab/vmm.sh {args}", timeout=timeout, check=False)
    out = parse_vmm(res.out)
    out["rc"], out["lines"] = res.rc, res.out
    if "result" not in out:
        raise Failed(f"labvmm {args}: no result (rc {res.rc}): {res.out}")
    return out


KVM_KPROBES = {
    "kvm_handle_guest_abort": "", "apei_claim_sea": "regs=%x0:x64",
    "ghes_notify_sea": "", "ghes_proc_in_irq": "", "ghes_do_proc": "",
    "memory_failure": "pfn=%x0:x64 flags=%x1:x32",
    "memory_failure_queue": "pfn=%x0:x64 flags=%x1:x32",
    "kvm_inject_vabt": "", "kvm_set_sei_esr": "esr=%x1:x64",
}


def trace_on(g) -> list[str]:
    """tracefs kprobes on the KVM SEA chain (names resolved at run time), SIGBUS only
    from signal_generate, stack traces on apei_claim_sea and kvm_inject_vabt."""
    names = "|".join(KVM_KPROBES)
    lines = ["T=/sys/kernel/tracing", "echo 0 > $T/tracing_on", "echo > $T/trace",
             f"grep -oE ' ({names})(\\.[a-z]+\\.[0-9]+)?$' /proc/kallsyms > /tmp/kvmsyms"]
    for fn, args in KVM_KPROBES.items():
        lines.append(f"s=$(grep -oE ' {fn}(\\.[a-z]+\\.[0-9]+)?$' /tmp/kvmsyms | head -1)")
        lines.append(f'[ -n "$s" ] && echo "p:kvmlab/{fn} $s {args}" >> $T/kprobe_events')
    lines += ["echo 'r:kvmlab/apei_claim_sea_ret apei_claim_sea ret=$retval:s32' "
              ">> $T/kprobe_events",
              "echo 1 > $T/events/kvmlab/enable", "echo 1 > $T/events/ras/enable",
              "echo 'sig == 7' > $T/events/signal/signal_generate/filter",
              "echo 1 > $T/events/signal/signal_generate/enable",
              "echo stacktrace > $T/events/kvmlab/apei_claim_sea/trigger",
              "echo 1 > $T/tracing_on", "grep kvmlab $T/kprobe_events"]
    # one pass over /proc/kallsyms: 8-15 s in a quiet TCG guest, minutes beside a loaded one
    return g.run("\n".join(lines), timeout=420).out


def trace_take(g, ctx: Ctx, name: str) -> list[str]:
    """The trace so far into the evidence (and cleared)."""
    g.run(f"cat /sys/kernel/tracing/trace > /lab/{name}; echo > /sys/kernel/tracing/trace")
    return (g.share / name).read_text().splitlines()


def trace_events(lines: list[str]) -> list[tuple[str, str]]:
    """(event, line) in trace order, stack lines skipped."""
    out = []
    for line in lines:
        m = re.search(r"\s(\w+): ", line)
        if m and not line.startswith("#") and not line.lstrip().startswith("=>"):
            out.append((m.group(1), line))
    return out


def in_order(evs: list[tuple[str, str]], chain: list[str]) -> bool:
    i = 0
    for name, _ in evs:
        if i < len(chain) and name == chain[i]:
            i += 1
    return i == len(chain)


# --------------------------------------------------------------------------
# rasd helpers

def bpf_prog_runs(g, rasd: Rasd, tag: str) -> dict:
    """run_cnt/run_time_ns of every BPF program loaded in the guest (rasd's: nothing
    else loads any), by program name; counted while kernel.bpf_stats_enabled=1.
    Programs are enumerated with bpf(2) BPF_PROG_GET_NEXT_ID / GET_FD_BY_ID (the
    daemon holds perf-event and link fds, not program fds) and read with
    rasd.sources.bpfsys.prog_info."""
    script = r'''
import ctypes, json, os, struct, sys
sys.path.insert(0, "/rasd")
from rasd.sources import bpfsys
out, pid = {}, 0
while True:
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<I", attr, 0, pid)
    try:
        bpfsys._bpf(11, attr)                       # BPF_PROG_GET_NEXT_ID
    except OSError:
        break
    pid = struct.unpack_from("<I", attr.raw, 4)[0]
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<I", attr, 0, pid)
    try:
        fd = bpfsys._bpf(13, attr)                  # BPF_PROG_GET_FD_BY_ID
    except OSError:
        continue
    info = bpfsys.prog_info(fd)
    os.close(fd)
    e = out.setdefault(info.name, {"run_cnt": 0, "run_time_ns": 0, "progs": 0})
    e["run_cnt"] += info.run_cnt; e["run_time_ns"] += info.run_time_ns; e["progs"] += 1
print(json.dumps(out))
'''
    g.put("progruns.py", script.encode())
    res = rasd.sh(f"python3 /lab/progruns.py > /lab/progruns-{tag}.json", check=False)
    p = g.share / f"progruns-{tag}.json"
    if res.rc != 0 or not p.exists() or not p.read_text().strip():
        return {"error": res.text()}
    return json.loads(p.read_text())


def rasd_config(vm_exit_probes: str) -> str:
    return lab_config(bpf={"vm_exit_probes": vm_exit_probes})


def start_rasd(ctx: Ctx, g, rasd: Rasd, tries: int = 2, compiles: bool = True) -> dict:
    """Start rasd; once more when its BPF loader gave up (see rasd_config).  When it is
    going to compile (no compile-cache entry for its mode yet), LLVM and bcc are read
    once beforehand: the loader's compile otherwise faults them in over 9p."""
    if compiles:
        g.run("cat /root/usr/lib/aarch64-linux-gnu/libLLVM* /root/usr/lib/aarch64-linux-gnu/"
              "libclang-cpp* /root/usr/lib/aarch64-linux-gnu/libbcc* > /dev/null 2>&1; true",
              timeout=600)
    for attempt in range(tries):
        status = rasd.start()
        if any(p["status"] == "attached" for p in status.get("probes", [])):
            return status
        why = [l for l in rasd.log().splitlines() if "loader" in l][-2:]
        ctx.note(**{f"rasd_start_{attempt}_attached_nothing": why})
        rasd.stop()
    raise Failed(f"rasd attached no probe in {tries} starts: {why}")


def abort_attached(rasd: Rasd) -> bool:
    rows = probe_rows(rasd.status_doc)
    return rows.get("kvm_handle_guest_abort", {}).get("status") == "attached"


def probe_rows(status: dict) -> dict:
    return {p["probe"]: p for p in (status or {}).get("probes", [])}


def _brief_event(e: dict) -> dict:
    f = e.get("fields") or {}
    keep = {k: f[k] for k in ("claimed", "result", "origin", "pfn", "flag_names", "action",
                              "page_type", "target_comm", "target_tid", "code_name", "notify",
                              "exception_index", "had_record", "cgroup_id") if k in f}
    out = {"id": e["id"], "kind": e["kind"], "source": e.get("source"),
           "task": e.get("task"), "severity": e.get("severity"), "fields": keep,
           "incident_id": e.get("incident_id"), "vm": e.get("vm")}
    if e.get("esr"):
        out["esr"] = e["esr"].get("esr") if isinstance(e["esr"], dict) else e["esr"]
    return out


def _brief_incident(i: dict) -> dict:
    return {k: i.get(k) for k in ("id", "kind", "severity", "containment", "summary", "vm",
                                  "event_kinds", "pfn", "phys_addr", "esr", "sections",
                                  "blast_radius", "closed", "merged_into")}


def wait_closed(rasd: Rasd, since: int, pred, what: str, timeout: float = 90) -> list[dict]:
    """Incidents after `since` once every one of them is closed (window 3 s) and pred."""
    return rasd.wait_incidents(lambda incs: bool(incs) and all(i["closed"] for i in incs)
                               and pred(incs), since=since, timeout=timeout, what=what)


# --------------------------------------------------------------------------

class KvmSession:
    """The KVM boot and its one rasd, started on demand in the mode a scenario needs:
    [bpf] vm_exit_probes "off" (rasd's default: no program on the per-exit paths) or
    "fentry" (the opt-in per-exit probes: (a) sees real exits, (b) a claimed SEA's ESR).
    A mode change is a restart: a bcc compile, ~1-2 min under TCG."""

    def __init__(self, ctx: Ctx, g, sea_src: int, detached_1: list, abort_trace: dict):
        self.ctx, self.g, self.sea_src, self.detached_1 = ctx, g, sea_src, detached_1
        self.abort_trace = abort_trace   # kernel side of (a), taken before rasd attached
        self.rasd = Rasd(g, evidence=ctx.out / "rasd", config=rasd_config("off"))
        self.mode: str | None = None   # the running rasd's vm_exit_probes
        self.modes_started: set[str] = set()   # (their compile-cache entries exist)
        self.status: dict = {}         # its status document when it came up

    def rasd_in(self, mode: str, fresh: bool = False) -> Rasd:
        """rasd running in `mode`; fresh: restarted even if it already runs so."""
        if self.mode == mode and self.rasd.alive() and not fresh:
            return self.rasd
        if (mode == "fentry" and self.mode == "off" and self.rasd.alive()
                and (self.status.get("features") or {}).get("fentry") is False):
            # rasd knows this kernel has no BPF trampolines (6.1 arm64): "fentry" would
            # attach exactly what "off" does; keep it and save a bcc compile
            self.ctx.note(fentry_unavailable="vm_exit_probes=fentry = off on this kernel: "
                          "rasd not restarted")
            return self.rasd
        if self.rasd.alive():
            self.rasd.stop()
        self.rasd.config = rasd_config(mode)
        # "off" loads from the compile cache the rasd session filled for this kernel, and
        # so does "fentry" where the kernel has no trampolines (the same programs)
        no_trampolines = (self.status.get("features") or {}).get("fentry") is False
        compiles = mode != "off" and not no_trampolines and mode not in self.modes_started
        self.status = start_rasd(self.ctx, self.g, self.rasd, compiles=compiles)
        self.modes_started.add(mode)
        self.mode = mode
        self.ctx.note(rasd_ready_s=self.rasd.ready_s, rasd_loads=self.rasd.loads)
        return self.rasd

    def stop(self) -> None:
        if self.rasd.alive():
            self.rasd.stop()
        self.mode = None


@session("kvm", qemu="host")
def kvm_session(ctx: Ctx):
    """One nested-KVM boot: labsea.ko, the VMM timed before rasd ever ran, then rasd."""
    ctx.note(limits=KVM_LIMITS)
    with kvm_guest(ctx) as g:
        ctx.note(ready_s=round(g.wait_ready(), 1))
        prepare(g)
        sea_src = next(s for s in hest_sources(g) if s["notify"] == hest.NOTIFY_SEA)["id"]
        ins = g.run("insmod /lab/labsea.ko && grep -c . /proc/modules")
        if not (any("labsea: TEST-ONLY module loaded" in l for l in ins.kernel)
                or g.grep(r"labsea: TEST-ONLY module loaded")):
            raise Failed("labsea.ko not loaded")
        # kvm-overhead's first detached block: the only time in this boot before rasd
        # ever attached (measured here, cheap, whether or not kvm-overhead runs)
        run_vmm(g, "mmio 200 2")                        # warm the VMM binary and KVM
        detached_1 = _timed_block(g, "detached-1")
        # kvm-guest-sea (a), kernel side: the exits as labsea's kprobe on
        # kvm_handle_guest_abort counts them, before rasd attached anything there
        s = KvmSession(ctx, g, sea_src, detached_1, _abort_trace(g, A_EXITS))
        try:
            yield s
        finally:
            try:
                s.stop()
            finally:
                _finish(ctx, g, s.rasd, "kvm session")


def kvm_guest_sea(ctx: Ctx) -> None:
    """Nested KVM: MMIO exits, a real guest SEA (with/without CPER), virtual SErrors."""
    s: KvmSession = ctx.sess
    s.g.run("sysctl -w kernel.bpf_stats_enabled=1")   # part (a) counts program runs
    # Where the kernel has trampolines, kvm-overhead's "fentry" start compiled them: start
    # once more, so (a) shows the fentry programs rasd loads from its compile cache (what
    # every later restart on such a host runs) seeing each real exit.
    trampolines = (s.status.get("features") or {}).get("fentry") is not False
    s.rasd_in("fentry", fresh=trampolines and s.mode == "fentry")
    ctx.note(limits=KVM_LIMITS, rasd_ready_s=s.rasd.ready_s, rasd_loads=s.rasd.loads)
    if trampolines and len(s.rasd.loads) > 1:
        ctx.expect(s.rasd.loads[-1]["cache"] == "hit",
                   f"vm_exit_probes=fentry restarted from the compile cache: {s.rasd.loads}")
    _part_a(ctx, s.g, s.rasd, s.status)
    trace_on(s.g)
    _part_b_no_record(ctx, s.g, s.rasd)
    _part_b_record(ctx, s.g, s.rasd, s.sea_src)
    _part_c(ctx, s.g, s.rasd)


def _finish(ctx: Ctx, g, rasd: Rasd, name: str) -> None:
    try:
        rasd.dump_evidence()
        COVERAGE.add(ctx.flavour, name, rasd.status_doc, rasd.probe_fired())
        for probe, why in KVM_LIMITS.items():
            COVERAGE.explain(ctx.flavour, probe, why)
        for probe, row in probe_rows(rasd.status_doc).items():
            if row.get("status") not in ("attached", "missing_symbol", "wrong_arch"):
                COVERAGE.explain(ctx.flavour, probe, f"{row.get('status')}: {row.get('reason')}")
    except Exception as exc:  # noqa: BLE001 - evidence is best effort
        ctx.note(evidence_error=f"{type(exc).__name__}: {exc}")


A_EXITS = 200       # MMIO exits of part (a)


def _abort_trace(g, n: int) -> dict:
    """Run n MMIO exits and read labsea.ko's own kprobe on kvm_handle_guest_abort (set at
    insmod): how often it ran, on which thread last, and the VMM's account (its vCPU
    thread id). Set before rasd ever attached there. (A tracefs kprobe registered at this
    point took 172 s on 6.12 under a loaded TCG host, twice: module parameters instead.)"""
    par = "/sys/module/labsea/parameters"
    before = int(g.run(f"cat {par}/abort_count").text().strip())
    vmm = run_vmm(g, f"mmio {n} 1")
    after, tid = g.run(f"cat {par}/abort_count {par}/abort_tid").text().split()
    return {"runs": vmm["runs"], "vcpu_tid": vmm.get("vcpu_tid"),
            "hits": int(after) - before, "tids": [tid]}


def _part_a(ctx: Ctx, g, rasd: Rasd, status: dict) -> None:
    """(a) MMIO exits go through kvm_handle_guest_abort in the VMM's vCPU thread (labsea's
    kprobe, counted in the session's set-up before rasd attached anything there); rasd's
    KVM probes are attached and their BPF programs run on each exit (they emit nothing:
    the FSC/SError filters drop non-RAS exits in their first instructions)."""
    rows = probe_rows(status)
    kvm = {p: {k: rows.get(p, {}).get(k) for k in ("status", "kind", "symbol", "reason")}
           for p in ("kvm_handle_guest_abort", "handle_exit_early", "kvm_inject_vabt",
                     "apei_claim_sea", "kvm_handle_guest_sea", "kvm_inject_serror_esr")}
    ctx.note(a_rasd_kvm_probes=kvm)
    ctx.expect(kvm["kvm_inject_vabt"]["status"] == "attached", f"kvm_inject_vabt attached: {kvm}")
    ctx.expect(kvm["apei_claim_sea"]["status"] == "attached", f"apei_claim_sea attached: {kvm}")
    n, tr = A_EXITS, ctx.sess.abort_trace
    ctx.note(a_vmm=tr["runs"], a_vcpu_tid=tr["vcpu_tid"], a_abort_hits=tr["hits"],
             a_abort_last_tid=tr["tids"])
    ctx.expect(tr["runs"] and tr["runs"][0]["exits"] == n, f"{n} MMIO exits: {tr['runs']}")
    ctx.expect(tr["hits"] >= n and tr["tids"] == [tr["vcpu_tid"]],
               f"kvm_handle_guest_abort ran {tr['hits']}x on the vCPU thread "
               f"{tr['vcpu_tid']} (threads {tr['tids']})")
    # rasd side: its program on kvm_handle_guest_abort ran once per exit
    before = bpf_prog_runs(g, rasd, "a-before")
    vmm = run_vmm(g, f"mmio {n} 1")
    after = bpf_prog_runs(g, rasd, "a-after")
    ctx.expect(vmm["runs"] and vmm["runs"][0]["exits"] == n, f"{n} MMIO exits: {vmm['runs']}")
    runs = {k: after.get(k, {}).get("run_cnt", 0) - before.get(k, {}).get("run_cnt", 0)
            for k in after if isinstance(after.get(k), dict)}
    ctx.note(a_rasd_prog_runs={k: v for k, v in runs.items() if v})
    abort_progs = [k for k in runs if "kvm_hand" in k and "sea" not in k]
    if kvm["kvm_handle_guest_abort"]["status"] == "attached":
        ctx.expect(any(runs[k] >= n for k in abort_progs),
                   f"rasd's kvm_handle_guest_abort program ran >= {n} times: {runs}")
    else:
        ctx.note(a_guest_abort_not_attached=kvm["kvm_handle_guest_abort"])


def _part_b_no_record(ctx: Ctx, g, rasd: Rasd) -> None:
    """(b) without a pending record: not claimed, KVM injects a virtual SError."""
    since = rasd.incident_mark()
    mark = g.mark()
    vmm = run_vmm(g, "sea")
    res = vmm["result"]
    ctx.note(b0_vmm=res)
    ctx.expect(res.get("armed") == "1", "the guest rang the arm doorbell")
    ctx.seen(g, r"labsea: .*level-2 descriptor for ipa 20001000 [0-9a-f]+ -> ", mark)
    esr_line = ctx.seen(g, r"labsea: SEA exit esr_el2=", mark)
    esr = int(re.search(r"esr_el2=([0-9a-f]+)", esr_line).group(1), 16)
    ctx.expect(esr & 0x3F == SEA_ESR_FSC and esr >> 26 == 0x24,
               f"ESR_EL2 {esr:#x}: DABT_LOW, SEA on a table walk")
    ctx.seen(g, r"labsea: restored stage-2 descriptor \(apei_claim_sea\)", mark)
    ctx.expect(res.get("esr") == hex(VSERROR_ESR) and res.get("vector") == "0x380",
               f"L2 took a virtual SError (ESR_EL1 {VSERROR_ESR:#x} at vector 0x380): {res}")
    evs = trace_events(trace_take(g, ctx, "trace-b-norecord.txt"))
    names = [n for n, _ in evs]
    ctx.note(b0_trace=names)
    ctx.expect(in_order(evs, ["kvm_handle_guest_abort", "apei_claim_sea", "ghes_notify_sea",
                              "apei_claim_sea_ret", "kvm_inject_vabt"]),
               f"kvm_handle_guest_abort -> apei_claim_sea -> ghes_notify_sea -> (not claimed) "
               f"-> kvm_inject_vabt: {names}")
    ctx.expect("memory_failure" not in names and "ghes_proc_in_irq" not in names,
               "no record: no GHES processing, no memory_failure")
    ret = [l for n, l in evs if n == "apei_claim_sea_ret"]
    ctx.expect(ret and "ret=0" not in ret[-1], f"apei_claim_sea did not claim: {ret}")
    # rasd: one incident, guest SEA contained to the VM, named
    incs = wait_closed(rasd, since, lambda i: any("vserror_injected" in (x["event_kinds"] or [])
                                                   for x in i), "guest SEA (no record)")
    live = [i for i in incs if i.get("merged_into") is None]
    ctx.note(b0_rasd_incidents=[_brief_incident(i) for i in live])
    ctx.expect(len(live) == 1, f"one incident for the unclaimed guest SEA: {len(live)}")
    inc = live[0]
    kinds = set(inc["event_kinds"] or [])
    want = {"sea_claim", "vserror_injected"} | ({"guest_sea"} if abort_attached(rasd) else set())
    ctx.expect(want <= kinds, f"incident joins {sorted(want)}: {sorted(kinds)}")
    ctx.expect(inc["kind"] == "guest_sea" and inc["containment"] == "vm_contained",
               f"guest SEA contained to the VM: {inc['kind']}/{inc['containment']}")
    ctx.expect((inc.get("vm") or {}).get("name") == VM_NAME,
               f"VM named {VM_NAME}: {inc.get('vm')}")


def _part_b_record(ctx: Ctx, g, rasd: Rasd, sea_src: int) -> None:
    """(b) with a recoverable memory error pending in the SEA source for the page
    behind the guest address: claimed, memory_failure, SIGBUS to the VMM."""
    since = rasd.incident_mark()
    ev_since = rasd.event_mark()
    mark = g.mark()
    g.run("rm -f /tmp/sea-go; /lab/vmm.sh sea --wait-file /tmp/sea-go "
          "> /lab/vmm-sea.txt 2>&1 &")
    pa = int(scenarios.wait_text(g.share / "vmm-sea.txt",
                                 r"target ipa=\S+ hva=\S+ pa=0x([0-9a-f]+)", timeout=60), 16)
    pfn = pa >> 12
    rec = g.put("sea-rec.bin", mem_record(pa & scenarios.PAGE_MASK, enc.RECOVERABLE))
    g.run(f"labinj write {sea_src} {rec}")
    g.run("touch /tmp/sea-go")
    scenarios.wait_text(g.share / "vmm-sea.txt", r"labvmm: (end) status", timeout=90)
    vmm = parse_vmm((g.share / "vmm-sea.txt").read_text().splitlines())
    ctx.note(b1_vmm={"target": vmm.get("target"), "result": vmm.get("result"),
                     "sigbus": vmm["sigbus"], "pid": vmm.get("pid")})
    ctx.seen(g, rf"physical_address: 0x0*{pa & scenarios.PAGE_MASK:x}", mark)
    ctx.seen(g, rf"Memory failure: 0x{pfn:x}: ", mark)
    ctx.expect(vmm["sigbus"], f"the VMM got SIGBUS: {vmm.get('result')}")
    ctx.expect(any(s["name"].startswith("BUS_MCEERR") for s in vmm["sigbus"]),
               f"SIGBUS BUS_MCEERR_*: {vmm['sigbus']}")
    evs = trace_events(trace_take(g, ctx, "trace-b-record.txt"))
    names = [n for n, _ in evs]
    ctx.note(b1_trace=names)
    chain = ["kvm_handle_guest_abort", "apei_claim_sea", "ghes_notify_sea", "ghes_proc_in_irq",
             "memory_failure"]
    ctx.expect(in_order(evs, chain), f"chain {' -> '.join(chain)}: {names}")
    ctx.expect("kvm_inject_vabt" not in names, "claimed: no virtual SError")
    ret = [l for n, l in evs if n == "apei_claim_sea_ret"]
    ctx.expect(ret and "ret=0" in ret[0], f"apei_claim_sea claimed (ret 0): {ret}")
    mf = [l for n, l in evs if n == "memory_failure" and f"pfn=0x{pfn:x}" in l]
    ctx.expect(mf, f"memory_failure(pfn {pfn:#x})")
    ctx.note(b1_trace_sigbus=[l.strip() for n, l in evs if n == "signal_generate"])
    # rasd: ONE incident with the whole chain, the VM named
    incs = wait_closed(rasd, since, lambda i: any("sigbus" in (x["event_kinds"] or []) for x in i)
                       and any("memory_failure_event" in (x["event_kinds"] or []) for x in i),
                       "guest SEA with CPER")
    live = [i for i in incs if i.get("merged_into") is None]
    ctx.note(b1_rasd_incidents=[_brief_incident(i) for i in live])
    evs_r = [e for e in rasd.events() if e["id"] > ev_since]
    ctx.note(b1_rasd_events=[_brief_event(e) for e in evs_r])
    ctx.expect(len(live) == 1,
               f"ONE incident for the guest SEA: {[(i['id'], i['kind']) for i in live]}")
    inc = live[0]
    kinds = set(inc["event_kinds"] or [])
    want = {"sea_claim", "ghes", "memory_failure", "memory_failure_event", "sigbus"} | \
        ({"guest_sea"} if abort_attached(rasd) else set())
    ctx.expect(want <= kinds, f"incident has {sorted(want)}: {sorted(kinds)}")
    ctx.expect(inc["kind"] == "guest_sea", f"kind guest_sea: {inc['kind']}")
    ctx.expect((inc.get("vm") or {}).get("name") == VM_NAME, f"VM named: {inc.get('vm')}")
    ctx.expect(inc.get("pfn") == pfn, f"incident at pfn {pfn:#x}: {inc.get('pfn')}")
    claims = [e for e in evs_r if e["kind"] == "sea_claim" and e.get("incident_id") == inc["id"]]
    ctx.expect(any((e.get("fields") or {}).get("claimed") for e in claims),
               f"claimed by firmware-first: {[_brief_event(e) for e in claims]}")
    # the KVM exit itself (guest_sea, when kvm_handle_guest_abort is attached) and the
    # claim (apei_claim_sea with regs NULL: origin guest) both ran in the VMM's vCPU thread
    gsea = [e for e in evs_r if e["kind"] == "guest_sea" or
            (e["kind"] == "sea_claim" and (e.get("fields") or {}).get("origin") == "guest")]
    ctx.expect(gsea and all((e.get("task") or {}).get("tgid") == int(vmm["pid"]) for e in gsea),
               f"guest SEA from the VMM (pid {vmm.get('pid')}): "
               f"{[(e['kind'], e.get('task')) for e in gsea]}")
    ctx.expect(not abort_attached(rasd) or any(e["kind"] == "guest_sea" for e in gsea),
               "kvm_handle_guest_abort attached: a guest_sea event")
    mfe = [e for e in evs_r if e["kind"] == "memory_failure_event"
           and e.get("incident_id") == inc["id"]]
    ctx.expect(mfe and (mfe[0].get("fields") or {}).get("result"),
               f"memory_failure result: {[_brief_event(e) for e in mfe]}")
    sigs = [e for e in evs_r if e["kind"] == "sigbus" and e.get("incident_id") == inc["id"]]
    ctx.expect(any((e.get("fields") or {}).get("target_comm") in ("CPU 0/KVM", "labvmm")
                   for e in sigs), f"SIGBUS to the VMM: {[_brief_event(e) for e in sigs]}")
    ctx.note(b1_summary=inc.get("summary"))


def _part_c(ctx: Ctx, g, rasd: Rasd) -> None:
    """(c) virtual SErrors from user space (KVM_SET_VCPU_EVENTS), with and without an
    ESR: seen, and not taken for RAS-driven ones."""
    results = {}
    for label, args, want_esr in (("plain", "vserror", VSERROR_ESR),
                                  ("esr", f"vserror {USER_ESR:#x}", 0xBE000000 | USER_ESR)):
        since = rasd.incident_mark()
        ev_since = rasd.event_mark()
        vmm = run_vmm(g, args)
        res = vmm["result"]
        ctx.expect(res.get("injected") == "1" and res.get("esr") == hex(want_esr),
                   f"{label}: L2 took the virtual SError with ESR {want_esr:#x}: {res}")
        evs = trace_events(trace_take(g, ctx, f"trace-c-{label}.txt"))
        names = [n for n, _ in evs]
        time.sleep(5)  # correlation window 3 s
        evs_r = [e for e in rasd.events() if e["id"] > ev_since]
        incs = [i for i in rasd.incidents() if i["id"] > since and i.get("merged_into") is None]
        results[label] = {"vmm": res, "trace": names,
                          "rasd_events": [_brief_event(e) for e in evs_r],
                          "rasd_incidents": [_brief_incident(i) for i in incs]}
    ctx.note(c=results)
    # the vCPU thread's cgroup v2 id each KVM record carries is the VM scope's inode:
    # what names the VM once the VMM has exited (the VMM quits right after this part)
    ino = int(g.run(f"stat -c %i '{VM_CGROUP}'").text().strip())
    ids = [e["fields"].get("cgroup_id") for r in results.values() for e in r["rasd_events"]
           if e["kind"] == "vserror_injected"]
    ctx.expect(ids and all(i == ino for i in ids),
               f"vSError records carry the VM scope's cgroup id {ino}: {ids}")
    _dead_vmm_named(ctx, rasd, results)
    plain = results["plain"]
    ctx.expect("kvm_inject_vabt" in plain["trace"], f"plain: kvm_inject_vabt: {plain['trace']}")
    kinds = [i["kind"] for i in plain["rasd_incidents"]]
    ctx.expect(kinds == ["virtual_serror"],
               f"plain: one virtual_serror incident (not RAS-driven): {kinds}")
    inc = plain["rasd_incidents"][0]
    ctx.expect(inc["severity"] == "info" and (inc.get("vm") or {}).get("name") == VM_NAME,
               f"plain: info severity, VM named: {inc}")
    esr = results["esr"]
    ctx.expect("kvm_set_sei_esr" in esr["trace"] and "kvm_inject_vabt" not in esr["trace"],
               f"with ESR: kvm_set_sei_esr, not kvm_inject_vabt: {esr['trace']}")
    ekinds = [i["kind"] for i in esr["rasd_incidents"]]
    ctx.expect(ekinds == ["virtual_serror"],
               f"with ESR: rasd reports one virtual_serror incident: {ekinds} "
               f"(events {[e['kind'] for e in esr['rasd_events']]})")
    syn = [e.get("esr") for e in esr["rasd_events"] if e["kind"] == "vserror_injected"]
    ctx.expect(syn == [hex(0xBE000000 | USER_ESR)],
               f"with ESR: rasd decodes the syndrome the guest saw "
               f"({0xBE000000 | USER_ESR:#x}): {syn}")


def _dead_vmm_named(ctx: Ctx, rasd: Rasd, results: dict) -> None:
    """The VMMs of (c) have exited: rasd's VM lookup, in the daemon's own mount view,
    must still name the VM from a record's cgroup id (whether the daemon needed that
    route above depends on how fast it read /proc)."""
    ev = next((e for r in results.values() for e in r["rasd_events"]
               if e["fields"].get("cgroup_id")), None)
    if ev is None:
        return  # the expectation above failed already
    prefix = "PYTHONPATH=/rasd " if rasd.how == "checkout" else ""
    res = rasd.sh(f"""{prefix}python3 - <<'PY'
import json
from rasd.classify.vm import VmCache
print(json.dumps(VmCache().lookup({ev["task"]["tgid"]}, None, "CPU 0/KVM",
                                  cgroup_id={ev["fields"]["cgroup_id"]})))
PY""", check=False)
    lines = res.text().strip().splitlines()
    vm = json.loads(lines[-1]) if lines and lines[-1].startswith(("{", "null")) else lines
    ctx.note(dead_vmm_lookup=vm)
    ctx.expect(isinstance(vm, dict) and vm.get("name") == VM_NAME
               and vm.get("how") == "cgroup-id:libvirt-qemu",
               f"an exited VMM's record names {VM_NAME} by its cgroup id: {vm}")


# --------------------------------------------------------------------------

OVERHEAD_EXITS = 2000       # MMIO exits per timed run (~0.7 s under TCG)
OVERHEAD_RUNS = 6           # timed runs per VMM process (the first is dropped: warm-up)
OVERHEAD_PROCS = 3          # VMM processes per block
OVERHEAD_TARGET = 0.02


def _timed_block(g, label: str) -> list[float]:
    """us per exit of OVERHEAD_PROCS x (OVERHEAD_RUNS - 1) timed runs."""
    out = []
    for _ in range(OVERHEAD_PROCS):
        vmm = run_vmm(g, f"mmio {OVERHEAD_EXITS} {OVERHEAD_RUNS}", timeout=300)
        runs = vmm["runs"]
        if len(runs) != OVERHEAD_RUNS or any(r["exits"] != OVERHEAD_EXITS for r in runs):
            raise Failed(f"{label}: short VMM run: {runs}")
        out += [r["us_per_exit"] for r in runs[1:]]
    return out


def _cpu(g) -> dict:
    """CPU ticks (USER_HZ) of rasd (utime+stime) and of the whole guest (busy, all)."""
    res = g.run("p=$(cat /lab/rasd/rasd.pid 2>/dev/null); "
                "[ -n \"$p\" ] && [ -e /proc/$p/stat ] && cut -d')' -f2 /proc/$p/stat | "
                "awk '{print \"rasd\", $12 + $13}'; head -1 /proc/stat")
    out = {"rasd": 0, "busy": 0, "all": 0}
    for line in res.out:
        f = line.split()
        if f and f[0] == "rasd":
            out["rasd"] = int(f[1])
        elif f and f[0] == "cpu":
            v = [int(x) for x in f[1:]]
            out["all"], out["busy"] = sum(v), sum(v) - v[3] - v[4]
    return out


def _settle(g, limit_pct: float = 5.0, timeout: float = 60) -> list:
    """Wait until rasd is idle (under limit_pct of one CPU over 10 s): right after
    start it still reads its backlog, which takes seconds. Bounded at a minute: on a
    loaded host an idle rasd (1 s ticks) sits at 5-15% of a TCG vCPU, and a CI run
    waited 5 min here for nothing."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a = _cpu(g)
        time.sleep(10)
        b = _cpu(g)
        pct = 100 * (b["rasd"] - a["rasd"]) * 2 / max(1, b["all"] - a["all"])  # 2 vCPUs
        seen.append(round(pct, 1))
        if pct < limit_pct:
            break
    return seen


def _stats(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=4)
    med = statistics.median(xs)
    return {"n": len(xs), "median_us": round(med, 2), "p25_us": round(q[0], 2),
            "p75_us": round(q[2], 2), "min_us": round(min(xs), 2), "max_us": round(max(xs), 2),
            "iqr_pct": round(100 * (q[2] - q[0]) / med, 2)}


def _attached_block(ctx: Ctx, s: KvmSession, mode: str) -> dict:
    """One attached block with rasd in `mode`, then the per-exit cost of its programs
    from the kernel's BPF statistics (switched on only after the timed block: they add
    their own clock reads)."""
    g = s.g
    g.run("sysctl -w kernel.bpf_stats_enabled=0")
    rasd = s.rasd_in(mode)
    rows = probe_rows(s.status)
    hot = {p: {k: rows.get(p, {}).get(k) for k in ("status", "kind", "reason")}
           for p in ("kvm_handle_guest_abort", "handle_exit_early")}
    settle = _settle(g)
    c0 = _cpu(g)
    on = _timed_block(g, f"attached-{mode}")
    c1 = _cpu(g)
    g.run("sysctl -w kernel.bpf_stats_enabled=1")
    before = bpf_prog_runs(g, rasd, f"before-{mode}")
    vmm = run_vmm(g, f"mmio {OVERHEAD_EXITS} 2")
    after = bpf_prog_runs(g, rasd, f"after-{mode}")
    g.run("sysctl -w kernel.bpf_stats_enabled=0")
    per_prog = {}
    for name, a in after.items():
        if not isinstance(a, dict):
            continue
        b = before.get(name, {})
        cnt = a["run_cnt"] - b.get("run_cnt", 0)
        if cnt:
            per_prog[name] = {"runs": cnt, "ns_per_run": round(
                (a["run_time_ns"] - b.get("run_time_ns", 0)) / cnt, 1)}
    bpf_ns = sum(v["ns_per_run"] * v["runs"] for v in per_prog.values()) / (2 * OVERHEAD_EXITS)
    return {"us": on, "hot_probes": hot, "settle_cpu_pct": settle,
            "rasd_pct_of_one_cpu": round(100 * 2 * (c1["rasd"] - c0["rasd"])
                                         / max(1, c1["all"] - c0["all"]), 2),
            "guest_busy_pct": round(100 * (c1["busy"] - c0["busy"])
                                    / max(1, c1["all"] - c0["all"]), 1),
            "bpf_programs_per_exit": per_prog, "bpf_ns_per_exit": round(bpf_ns, 1),
            "exit_us_with_stats": round(statistics.median(r["us_per_exit"]
                                                          for r in vmm["runs"]), 1)}


def kvm_overhead(ctx: Ctx) -> None:
    """Nested KVM: MMIO-exit loop timed detached / rasd default / detached / per-exit probes."""
    s: KvmSession = ctx.sess
    g, off1 = s.g, s.detached_1
    s.stop()
    default = _attached_block(ctx, s, "off")
    # 6.1 arm64 has no BPF trampolines: "fentry" would attach exactly what "off" did
    trampolines = (s.status.get("features") or {}).get("fentry") is not False
    s.stop()                                         # detached: its probes are gone
    off2 = _timed_block(g, "detached-2")
    blocks = [("off", default)]
    if trampolines:
        blocks.append(("fentry", _attached_block(ctx, s, "fentry")))
    else:
        ctx.note(fentry_block="skipped: rasd reports no BPF trampolines on this kernel "
                 "(features.fentry false), so vm_exit_probes=fentry attaches what off does")
    s_off, s_off1, s_off2 = _stats(off1 + off2), _stats(off1), _stats(off2)
    drift = abs(s_off2["median_us"] / s_off1["median_us"] - 1)
    out = {}
    for mode, blk in blocks:
        st = _stats(blk.pop("us"))
        slowdown = st["median_us"] / s_off["median_us"] - 1
        out[mode] = {**blk, "attached": st, "slowdown_pct": round(100 * slowdown, 2),
                     "bpf_share_of_detached_exit_pct": round(
                         100 * blk["bpf_ns_per_exit"] / (s_off["median_us"] * 1000), 2)}
    ctx.note(detached=s_off, detached_1=s_off1, detached_2=s_off2, modes=out,
             detached_drift_pct=round(100 * drift, 2), target_pct=100 * OVERHEAD_TARGET,
             raw_us={"detached_1": off1, "detached_2": off2})
    for mode, r in out.items():
        print(f"    kvm-overhead {ctx.flavour} vm_exit_probes={mode}: MMIO exit "
              f"{s_off['median_us']} us detached, {r['attached']['median_us']} us attached: "
              f"slowdown {r['slowdown_pct']:+.2f}% (IQR {s_off['iqr_pct']}% / "
              f"{r['attached']['iqr_pct']}%, detached drift {100 * drift:.2f}%); rasd's BPF "
              f"per exit {r['bpf_ns_per_exit']} ns = {r['bpf_share_of_detached_exit_pct']}% "
              "of a detached exit", flush=True)
    # the default attaches nothing to the per-exit paths: none of rasd's programs ran
    per_exit = {k: v for k, v in out["off"]["bpf_programs_per_exit"].items()
                if v["runs"] >= OVERHEAD_EXITS}
    ctx.expect(not per_exit, f"default rasd runs no program per VM exit: {per_exit}")
    hot = out["fentry"]["hot_probes"] if "fentry" in out else {}
    if any(r["status"] == "attached" for r in hot.values()):
        ctx.expect(out["fentry"]["bpf_programs_per_exit"],
                   f"vm_exit_probes=fentry: rasd's per-exit programs ran: {hot}")
    elif "fentry" in out:
        ctx.note(hot_probes_not_attached="no per-exit probe attached on this kernel (fentry "
                 "unavailable): the fentry block measures rasd idle")
    # A speed target is a measurement, not a pass/fail assertion (a loaded host would fail
    # it, not rasd): the verdict is recorded and printed. The wall-clock ratio cannot be
    # judged finer than the machine's own drift between the two detached blocks.
    verdicts = {mode: _verdict(drift, r["slowdown_pct"] / 100) for mode, r in out.items()}
    ctx.note(overhead_verdict=verdicts)
    for mode, v in verdicts.items():
        print(f"    kvm-overhead {ctx.flavour} vm_exit_probes={mode}: {v}", flush=True)


def _verdict(drift: float, slowdown: float) -> str:
    if drift > OVERHEAD_TARGET:
        return (f"inconclusive: the two detached blocks differ by {100 * drift:.1f}% "
                f"(> {100 * OVERHEAD_TARGET}% target); run alone: run.py --serial")
    if slowdown <= OVERHEAD_TARGET:
        return f"target met: {100 * slowdown:+.2f}% <= {100 * OVERHEAD_TARGET}%"
    return f"target NOT met: {100 * slowdown:+.2f}% > {100 * OVERHEAD_TARGET}%"


# Session order: kvm-overhead first (rasd's default, detached, then the per-exit probes),
# so kvm-guest-sea finds rasd already running with them: two bcc compiles in all.
scenario("kvm-overhead", session="kvm")(kvm_overhead)
scenario("kvm-guest-sea", session="kvm")(kvm_guest_sea)
