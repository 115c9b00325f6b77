"""Lab scenarios: each boots guests, injects through one real kernel path and
checks the kernel's own evidence (console lines, tracefs counts).

A scenario is a function taking a Ctx; it raises Failed (or any exception)
to fail and records what it saw with ctx.note().  The first group (boot,
sea-route, polled-route, hwpoison, qmp-route, rootfs; run.py --routes) proves
the injection routes at the kernel level; the rasd scenarios (second half of
this file, issue 6 items 1-10 and 12) run rasd in the guest and assert what it
stored, exported and alerted.

Sessions: scenarios that can share one boot and one rasd start name a
session (@session); run.py boots it once per kernel, runs its scenarios in
order (each with its own PASS/FAIL, timing and evidence dir; ctx.sess is
what the session yielded) and closes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import build
import hest
from harness import Guest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from rasd.encode import cper as enc  # noqa: E402  (the project's own CPER encoder)

def rasd_tree() -> Path:
    """A private copy of this checkout (rasd/, bpf/, etc/, ...), taken once per lab run,
    that guests mount at /rasd.  The live checkout may be edited while the lab runs (a
    daemon restarted mid-run once imported a half-written module); the copy also makes
    every guest of one run see the same code."""
    global _RASD_TREE
    if _RASD_TREE is None:
        import atexit
        import shutil
        import tempfile
        tmp = Path(tempfile.mkdtemp(prefix="rasd-lab-src-"))
        atexit.register(shutil.rmtree, tmp, True)
        shutil.copytree(REPO, tmp / "rasd-src", symlinks=True, ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "__pycache__", "*.pyc", ".pytest_cache"))
        _RASD_TREE = tmp / "rasd-src"
        _precompile(_RASD_TREE / "rasd")
    return _RASD_TREE


def _precompile(package: Path) -> None:
    """Byte-compile the copy on the host: guests mount it read-only, so their python3
    would compile every rasd module again at every start (seconds each time under TCG).
    Bytecode is the same on both architectures; the rootfs's python3 is 3.11 too (with
    another minor version the guest just ignores these files)."""
    import compileall
    compileall.compile_dir(str(package), quiet=1, workers=1)


_RASD_TREE: Path | None = None
PLACEHOLDER = 0x4C41424C41425041    # labinj --victim patches it with its page's PA
PAGE_MASK = 0xFFFF_FFFF_FFFF_F000
MF_ACTION_REQUIRED = 1 << 1         # enum mf_flags (include/linux/mm.h)
HW_ERROR = r"\[Hardware Error\]: Hardware error from APEI Generic Hardware Error Source: {}"


class Failed(AssertionError):
    pass


@dataclass
class Ctx:
    lab: build.Lab
    flavour: str
    qemu: str
    out: Path
    notes: dict = field(default_factory=dict)
    kernel_lines: list = field(default_factory=list)
    sess: Any = None            # what the scenario's session yielded (None: no session)
    name: str = ""

    @property
    def kernel(self) -> build.Kernel:
        return self.lab.kernels[self.flavour]

    def guest(self, name: str = "guest", *, initrd: Path | None = None, rootfs: bool = False,
              qemu: str | None = None, **kw) -> Guest:
        q = self.lab.qemu[qemu or self.qemu]
        return Guest(kernel=self.kernel, initrd=initrd or self.lab.initrds[self.flavour],
                     qemu=q, outdir=self.out / name, rasd=rasd_tree(),
                     rootfs=self.lab.rootfs if rootfs else None,
                     qmp_enabled=q.name == "qemu11", **kw)

    def note(self, **kv) -> None:
        self.notes.update(kv)

    def expect(self, cond, what: str) -> None:
        if not cond:
            raise Failed(what)

    def seen(self, g: Guest, pattern: str, since: int = 0, timeout: float = 20.0) -> str:
        """Wait for a console line; keep it as evidence."""
        line = g.wait_for(pattern, since, timeout).text
        self.kernel_lines.append(line)
        return line


class Scenario(NamedTuple):
    fn: Callable
    qemu: str
    kernels: tuple
    session: str | None = None
    default: bool = True        # False: only with --routes or when named


ROUTES = ("boot", "sea-route", "polled-route", "hwpoison", "qmp-route", "rootfs")


class Session(NamedTuple):
    name: str
    setup: Callable          # ctx -> context manager yielding the session object
    qemu: str
    doc: str


SCENARIOS: dict[str, Scenario] = {}
SESSIONS: dict[str, Session] = {}


def scenario(name: str, qemu: str = "host", kernels=("6.1", "6.12"), session: str | None = None):
    """Register fn(ctx).  With `session`, the scenario runs inside that session's boot
    (its qemu is the session's) and finds the session object in ctx.sess."""
    def register(fn):
        q = SESSIONS[session].qemu if session else qemu
        # The route proofs (kernel level, no rasd) are what the rasd scenarios drive
        # anyway: a full run skips them to stay in the time budget; --routes adds them
        # (they tell "the injection route broke" from "rasd missed it").
        SCENARIOS[name] = Scenario(fn, q, tuple(kernels), session, name not in ROUTES)
        return fn
    return register


def session(name: str, qemu: str = "qemu11"):
    """Register a generator fn(ctx) that boots, yields a session object, and cleans up."""
    def register(fn):
        SESSIONS[name] = Session(name, contextlib.contextmanager(fn), qemu,
                                 (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return register


# --------------------------------------------------------------------------
# guest-side tracing through tracefs (no bcc needed): which kernel functions
# each injection really went through

KPROBES = {
    "ghes_proc": "src=+2(+0(%x0)):u16",   # struct ghes -> generic -> source_id
    "ghes_proc_in_irq": "", "ghes_notify_sea": "", "ghes_notify_hed": "",
    "ghes_poll_func": "", "acpi_hed_notify": "", "apei_claim_sea": "",
    "memory_failure": "pfn=%x0:x64 flags=%x1:x32",
    "memory_failure_queue": "pfn=%x0:x64 flags=%x1:x32",
    "ghes_do_proc": "",                   # ghes_do_proc.isra.0 on 6.1
}


def trace_on(g: Guest) -> list[str]:
    """Register kprobes on the GHES/memory-failure functions that exist."""
    # Resolve symbols at run time (compilers rename: .isra.0, .constprop.0);
    # one pass over /proc/kallsyms, which is slow to generate under TCG.
    names = "|".join(KPROBES)
    lines = ["T=/sys/kernel/tracing", "echo 0 > $T/tracing_on", "echo > $T/kprobe_events",
             "echo > $T/trace",
             f"grep -oE ' ({names})(\\.[a-z]+\\.[0-9]+)?$' /proc/kallsyms > /tmp/syms"]
    for fn, args in KPROBES.items():
        lines.append(f"s=$(grep -oE ' {fn}(\\.[a-z]+\\.[0-9]+)?$' /tmp/syms | head -1)")
        lines.append(f'[ -n "$s" ] && echo "p:lab/{fn} $s {args}" >> $T/kprobe_events')
    lines += ["echo 1 > $T/events/lab/enable", "echo 1 > $T/events/ras/enable",
              "echo 1 > $T/tracing_on", "cat $T/kprobe_events"]
    return g.run("\n".join(lines), timeout=120).out


def trace_dump(g: Guest, ctx: Ctx, name: str = "trace.txt") -> dict:
    """Copy the trace to the evidence dir; return {event: count}."""
    g.run(f"cat /sys/kernel/tracing/trace > /lab/{name}")
    counts: dict = {}
    for line in (g.share / name).read_text().splitlines():
        m = re.search(r"\s(\w+): ", line)
        if m and not line.startswith("#"):
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    ctx.note(trace=counts)
    return counts


def trace_lines(g: Guest, event: str, name: str = "trace.txt") -> list[str]:
    return [l for l in (g.share / name).read_text().splitlines() if f" {event}: " in l]


def hest_sources(g: Guest) -> list[dict]:
    out = []
    for line in g.run("labinj hest").out:
        if line.startswith("source "):
            out.append({k: int(v, 0) for k, v in re.findall(r"(\w+)=(\S+)", line)})
    return out


def mem_record(pa: int | None, severity: int, **extra) -> bytes:
    fields = dict(physical_addr=pa, physical_addr_mask=PAGE_MASK) if pa is not None else {}
    err = enc.memory_error(error_type=3 if severity == enc.RECOVERABLE else 2, node=0,
                           module=1, **fields, **extra)
    return enc.encode_status_block([enc.section(err, severity, fru_text="DIMM-A1")])


# --------------------------------------------------------------------------

@scenario("boot")
def boot(ctx: Ctx) -> None:
    """UEFI + ACPI boot; HEST parsed, GHES platform devices, RAS tracepoints."""
    with ctx.guest() as g:
        ctx.note(ready_s=round(g.wait_ready(), 2))
        srcs = hest_sources(g)
        ctx.note(hest=srcs)
        ctx.expect(any(s["notify"] == hest.NOTIFY_SEA for s in srcs), "HEST has a SEA source")
        devs = g.run("ls -1 /sys/bus/platform/devices | grep GHES").out
        ctx.note(ghes_devices=devs)
        ctx.expect(len(devs) == len(srcs), f"one GHES device per source: {devs}")
        tps = g.run("ls -1 /sys/kernel/tracing/events/ras").out
        ctx.note(ras_tracepoints=tps)
        ctx.expect("memory_failure_event" in tps and "arm_event" in tps, "RAS tracepoints")
        ctx.seen(g, r"HEST: Table parsing has been initialized")


@scenario("sea-route")
def sea_route(ctx: Ctx) -> None:
    """Guest writes a CPER record into QEMU's SEA source, then loads from a hole."""
    with ctx.guest() as g:
        g.wait_ready()
        trace_on(g)
        sea = next(s for s in hest_sources(g) if s["notify"] == hest.NOTIFY_SEA)
        rec = g.put("sea.bin", mem_record(PLACEHOLDER, enc.RECOVERABLE))
        mark = g.mark()
        res = g.run(f"labinj sea {sea['id']} {rec} --victim", timeout=60)
        ctx.note(injector=res.out)
        pfn = re.search(r"pfn=0x([0-9a-f]+)", res.text()).group(1)
        ctx.seen(g, HW_ERROR.format(sea["id"]), mark)
        ctx.seen(g, rf"physical_address: 0x0*{pfn}000", mark)
        ctx.seen(g, rf"Memory failure: 0x{pfn}: ", mark)
        ctx.expect(any("SIGBUS" in l for l in res.out), "the injector got SIGBUS")
        counts = trace_dump(g, ctx)
        for ev in ("ghes_notify_sea", "ghes_proc_in_irq", "ghes_do_proc", "memory_failure",
                   "memory_failure_event"):
            ctx.expect(counts.get(ev), f"trace shows {ev}")
        flags = [int(m, 16) for l in trace_lines(g, "memory_failure")
                 for m in re.findall(r"flags=0x([0-9a-f]+)", l)]
        ctx.expect(any(f & MF_ACTION_REQUIRED for f in flags),
                   f"memory_failure with MF_ACTION_REQUIRED: {flags}")


def polled_initrd(ctx: Ctx, count: int, poll_ms: int) -> tuple[Path, hest.PolledLayout]:
    """The plain initrd with an upgraded HEST (+ boot script) in front.

    The table extends the HEST this QEMU really builds, so a probe boot
    fetches it.  Its addresses depend on the QEMU build, firmware, memory
    size and the sizes of kernel and initrd the firmware loads (6.1 and 6.12
    differ); the polled initrd keeps the plain one's size (build.INITRD_SLOT).
    """
    q = ctx.lab.qemu[ctx.qemu]
    plain = ctx.lab.initrds[ctx.flavour]
    fw = hashlib.sha256(q.firmware.read_bytes()).hexdigest()
    key = build.digest(q.version, fw, Guest.mem, ctx.kernel.vmlinuz.stat().st_size,
                       plain.stat().st_size)
    probe = build.CACHE / "hest" / f"{q.name}-{ctx.flavour}-{key}"
    if not (probe / "iomem.txt").exists():
        with ctx.guest("hest-probe") as g:
            g.wait_ready()
            g.run("cp /sys/firmware/acpi/tables/HEST /lab/hest.bin; cat /proc/iomem > /lab/iomem.txt")
            probe.mkdir(parents=True, exist_ok=True)
            for f in ("hest.bin", "iomem.txt"):
                (probe / f).write_bytes((g.share / f).read_bytes())
    table, layout = hest.upgrade((probe / "hest.bin").read_bytes(),
                                 (probe / "iomem.txt").read_text(), count, poll_ms)
    work = ctx.out / "polled-initrd"
    tree = work / "tree"
    (tree / "kernel/firmware/acpi").mkdir(parents=True, exist_ok=True)
    (tree / "etc").mkdir(exist_ok=True)
    (tree / "kernel/firmware/acpi/hest.aml").write_bytes(table)
    (tree / "etc/lab-boot.sh").write_text(hest.boot_script(layout))
    (tree / "etc/lab-boot.sh").chmod(0o755)
    # The table must be in an uncompressed cpio at the very start of the initrd.
    files = build.sh("find", "kernel", "etc", cwd=tree, capture=True)
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, check=True,
                          input=files.encode(), stdout=subprocess.PIPE).stdout
    if len(cpio) > build.INITRD_SLOT:
        raise Failed(f"HEST cpio is {len(cpio)} bytes; the initrd slot {build.INITRD_SLOT}")
    out = work / "initrd-polled.img"
    out.write_bytes(cpio.ljust(build.INITRD_SLOT, b"\0") + plain.read_bytes()[build.INITRD_SLOT:])
    return out, layout


@scenario("polled-route")
def polled_route(ctx: Ctx) -> None:
    """Polled GHES sources from a HEST table upgrade: ghes_poll_func -> ghes_proc."""
    count, poll_ms = 4, 100
    initrd, layout = polled_initrd(ctx, count, poll_ms)
    ctx.note(polled_sources=[(i, hex(r), hex(b)) for i, r, b in layout.sources],
             poll_ms=poll_ms)
    with ctx.guest(initrd=initrd) as g:
        g.wait_ready()
        ctx.seen(g, r"Table Upgrade: override \[HEST")
        srcs = {s["id"]: s for s in hest_sources(g)}
        for sid, _, block in layout.sources:
            ctx.expect(srcs.get(sid, {}).get("block") == block, f"source {sid} points at {block:#x}")
        devs = g.run("ls -1 /sys/bus/platform/devices | grep GHES").out
        ctx.expect(len(devs) == len(srcs), f"GHES devices {devs}")
        trace_on(g)
        mark = g.mark()
        # One corrected record per source, distinct PAs (the estatus cache
        # hides repeats); the kernel prints at most 2 corrected per 5 s.
        for n, (sid, _, _) in enumerate(layout.sources):
            path = g.put(f"ce{sid}.bin", mem_record(0x60000000 + n * 0x1000, enc.CORRECTED))
            g.run(f"labinj write {sid} {path}")
        first = layout.sources[0][0]
        # Polled together, printed 2 per 5 s: whichever sources come first.
        ids = "|".join(str(sid) for sid, _, _ in layout.sources)
        ctx.seen(g, HW_ERROR.format(f"({ids})$"), mark)
        ctx.seen(g, r"It has been corrected by h/w and requires no further action", mark)
        wait_consumed(ctx, g, layout)
        # Throughput: records round-robin over all sources, as fast as polled.
        n = 200
        res = g.run(f"labinj feed {n} /lab/ce{first}.bin {ids.replace('|', ' ')}", timeout=300)
        rate = re.search(r"in ([\d.]+) s", res.text())
        ctx.note(storm=res.out, storm_records=n, storm_seconds=float(rate.group(1)))
        wait_consumed(ctx, g, layout)   # feed returns before the last polls
        counts = trace_dump(g, ctx)
        # Every poll calls ghes_proc (an empty block returns early); only a
        # record reaches ghes_do_proc, so that count must be exact.
        ctx.expect(counts.get("ghes_poll_func"), "ghes_poll_func ran")
        ctx.expect(counts.get("ghes_do_proc") == count + n,
                   f"ghes_do_proc ran {counts.get('ghes_do_proc')} times, want {count + n}")
        ctx.expect(not counts.get("memory_failure"), "corrected errors: no memory_failure")


def wait_consumed(ctx: Ctx, g: Guest, layout: hest.PolledLayout) -> None:
    """Every polled block's status word back to zero: the kernel took it."""
    for sid, _, block in layout.sources:
        for _ in range(30):
            word = g.run(f"labinj peek {block:#x} 4").out[0].strip()
            if word == "00000000":
                break
            time.sleep(layout.poll_ms / 1000)
        ctx.expect(word == "00000000", f"source {sid} block consumed (status {word})")


@scenario("hwpoison")
def hwpoison(ctx: Ctx) -> None:
    """madvise(MADV_HWPOISON) and hwpoison-inject's corrupt-pfn."""
    with ctx.guest() as g:
        g.wait_ready()
        trace_on(g)
        mark = g.mark()
        res = g.run("labinj madvise")
        ctx.note(madvise=res.out)
        pfn = re.search(r"pfn=0x([0-9a-f]+)", res.text()).group(1)
        ctx.seen(g, rf"Memory failure: 0x{pfn}: recovery action", mark)
        ctx.expect(any("si_code=4" in l for l in res.out), "BUS_MCEERR_AR")
        # hwpoison-inject on a page of another process, early kill: AO signal.
        g.run("echo 1 > /proc/sys/vm/memory_failure_early_kill; modprobe hwpoison_inject")
        g.run("labinj hold 30 > /lab/hold.txt 2>&1 &")
        pfn2 = wait_text(g.share / "hold.txt", r"pfn=0x([0-9a-f]+)")
        mark = g.mark()
        g.run(f"echo 0x{pfn2} > /sys/kernel/debug/hwpoison/corrupt-pfn")
        ctx.seen(g, rf"Memory failure: 0x{pfn2}: ", mark)
        wait_text(g.share / "hold.txt", r"(SIGBUS)")
        hold = _read(g.share / "hold.txt")
        ctx.note(hold=hold.splitlines())
        ctx.expect("si_code=5" in hold, "BUS_MCEERR_AO to the page owner (early kill)")
        counts = trace_dump(g, ctx)
        ctx.expect(counts.get("memory_failure_event", 0) >= 2, "two memory_failure_event")


@scenario("qmp-route", qemu="qemu11")
def qmp_route(ctx: Ctx) -> None:
    """Host-side inject-ghes-v2-error: GED -> acpi_hed_notify -> ghes_proc."""
    with ctx.guest() as g:
        g.wait_ready()
        trace_on(g)
        qmp_src = next(s for s in hest_sources(g) if s["notify"] == hest.NOTIFY_GPIO)["id"]
        g.run("echo 1 > /proc/sys/vm/memory_failure_early_kill; "
              "labinj hold 60 > /lab/hold.txt 2>&1 &")
        victim = int(wait_text(g.share / "hold.txt", r"pa=0x([0-9a-f]+)"), 16)
        arm = enc.arm_processor([enc.arm_error_info(0x02, error_info=0x4D0007, flags=1),
                                 enc.arm_error_info(0x04, flags=1),
                                 enc.arm_error_info(0x08, flags=1)],
                                mpidr=0x80000000, affinity_level=0, running_state=1)
        pcie = enc.pcie(port_type=0, version=(1, 1), device=dict(
            bus=0x7F, device=0x1F, vendor_id=0x1B36, device_id=0xC),  # no such device:
            aer=dict(uncor_status=1 << 14))                           # nothing is reset
        vendor = enc.raw_section("12345678-1234-5678-9abc-def012345678", bytes(range(32)),
                                 enc.CORRECTED)
        # The kernel prints at most 2 corrected and 2 uncorrected records per
        # 5 s: order and pause so every case is printed (cases 1-4, pause, 5).
        cases = [
            ("ce-memory", mem_record(0x60001000, enc.CORRECTED),
             r"error_type: 2, single-bit ECC"),
            ("ue-memory-victim", mem_record(victim, enc.RECOVERABLE),
             rf"Memory failure: 0x{victim >> 12:x}: "),
            ("arm-processor", enc.encode_status_block([enc.section(arm, enc.CORRECTED)]),
             r"error_type: 0x08: bus error"),
            ("pcie", enc.encode_status_block([enc.section(pcie, enc.RECOVERABLE)]),
             r"section_type: PCIe error"),
            ("vendor-guid", enc.encode_status_block([vendor]),
             r"section type: unknown, 12345678-1234-5678-9abc-def012345678"),
        ]
        timings = {}
        for n, (name, rec, pattern) in enumerate(cases):
            if n == 4:
                time.sleep(5.5)
            mark = g.mark()
            t0 = time.monotonic() - g.t0
            timings[name] = {"qmp_s": round(g.qmp.inject_ghes(rec), 4)}
            line = g.wait_for(pattern, mark, 15)
            ctx.kernel_lines.append(line.text)
            timings[name]["to_console_s"] = round(line.t - t0, 4)
        ctx.note(cases=timings)
        time.sleep(1)
        counts = trace_dump(g, ctx)
        for ev in ("acpi_hed_notify", "ghes_notify_hed", "ghes_proc", "ghes_do_proc",
                   "memory_failure_event", "arm_event", "non_standard_event"):
            ctx.expect(counts.get(ev), f"trace shows {ev}")
        ctx.expect(counts.get("ghes_proc", 0) >= len(cases), "one ghes_proc per record")
        wait_text(g.share / "hold.txt", r"(SIGBUS)")
        hold = _read(g.share / "hold.txt")
        ctx.note(hold=hold.splitlines())
        ctx.expect("si_code=5" in hold, "victim got BUS_MCEERR_AO")


@scenario("rootfs")
def rootfs(ctx: Ctx) -> None:
    """The arm64 rootfs over 9p: python3, bcc attaching a kprobe, rasdaemons."""
    with ctx.guest(rootfs=True) as g:
        g.wait_ready()
        info = g.run("uname -r; python3 -c 'import bcc, prometheus_client, pyroute2, "
                     "systemd.journal; print(\"imports ok\")'; "
                     "ls /lib/modules/$(uname -r)/build/Makefile; rasdaemon --version; "
                     "/opt/rasdaemon-*/usr/sbin/rasdaemon --version; "
                     "PYTHONPATH=/rasd python3 -c 'import rasd.encode.cper; print(\"rasd ok\")'",
                     root=True, timeout=120)
        ctx.note(rootfs=info.out)
        ctx.expect("imports ok" in info.out and "rasd ok" in info.out, "imports")
        # bcc end to end: compile, attach a kprobe, see it fire on madvise.
        g.put("smoke_bcc.py", BCC_SMOKE.encode())  # not bcc.py: it would shadow bcc
        g.run("python3 /lab/smoke_bcc.py > /lab/bcc.txt 2>&1 &", root=True)
        t0 = time.monotonic()
        while "READY" not in _read(g.share / "bcc.txt") and time.monotonic() - t0 < 180:
            time.sleep(0.5)
        ctx.note(bcc_ready_s=round(time.monotonic() - t0, 1))
        ctx.expect("READY" in _read(g.share / "bcc.txt"), "bcc attached")
        g.run("labinj madvise")
        while "hits" not in _read(g.share / "bcc.txt") and time.monotonic() - t0 < 200:
            time.sleep(0.5)
        out = _read(g.share / "bcc.txt")
        ctx.note(bcc=out.splitlines())
        ctx.expect(re.search(r"hits [1-9]", out), "bcc kprobe on memory_failure fired")


def _read(p: Path) -> str:
    return p.read_text() if p.exists() else ""


def wait_text(p: Path, pattern: str, timeout: float = 10.0) -> str:
    """First group of `pattern` in a file the guest is writing to the share."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, _read(p))
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise Failed(f"{p.name}: no {pattern!r} within {timeout}s")


BCC_SMOKE = r"""
import time
from bcc import BPF
b = BPF(text='''
BPF_ARRAY(hits, u64, 1);
int on_mf(void *ctx) { int k = 0; u64 *v = hits.lookup(&k); if (v) __sync_fetch_and_add(v, 1); return 0; }
''')
b.attach_kprobe(event="memory_failure", fn_name="on_mf")
print("READY", flush=True)
for _ in range(600):
    n = b["hits"][0].value
    if n:
        break
    time.sleep(0.1)
print("hits", n, flush=True)
"""


# ==========================================================================
# rasd in the guest (issue 6 scenarios 1-10 and 12).  Helpers first.

import rasd_guest  # noqa: E402
from rasd_guest import COVERAGE, Rasd  # noqa: E402

RASDAEMON_BIN = {"0.6.8": "/usr/sbin/rasdaemon",
                 "0.8.1": "$(ls -d /opt/rasdaemon-0.8.1*)/usr/sbin/rasdaemon"}
# Why a probe of rasd's table cannot fire in this lab (coverage report).
CANNOT_FIRE = {
    "mc_event": "ras:mc_event never fires on Debian arm64: CONFIG_EDAC_GHES is not set "
                "(reference §1); nothing else drives EDAC under QEMU",
    "do_serror": "host SError: QEMU TCG has no source of physical SErrors (reference §7.2)",
    "arm64_is_fatal_ras_serror": "runs only for a physical SError (host do_serror or a guest "
                                 "exit with one pending); QEMU TCG raises none (§7.2)",
    "arm64_serror_panic": "fatal SError panics the kernel; QEMU TCG raises no physical "
                          "SError (§7.2)",
}
KVM_PROBES = ("handle_exit_early", "kvm_handle_guest_abort", "kvm_handle_guest_sea",
              "kvm_inject_vabt", "kvm_inject_serror_esr")


def walk(d):
    """Every dict inside a JSON value (depth first), d included."""
    if isinstance(d, dict):
        yield d
        for v in d.values():
            yield from walk(v)
    elif isinstance(d, list):
        for v in d:
            yield from walk(v)


def cper_sections(ev: dict) -> list[dict]:
    return ((ev.get("cper") or {}).get("sections")) or []


def section_named(ev: dict, word: str) -> list[dict]:
    return [s for s in cper_sections(ev)
            if word.lower() in json.dumps(s.get("type", s.get("header", {}))).lower()
            or word.lower() in json.dumps(s).lower()[:400]]


def mem_body(ev: dict) -> dict | None:
    """The memory-error section body of a GHES event, if any."""
    for d in walk(cper_sections(ev)):
        if "physical_addr_valid" in d:
            return d
    return None


def kinds_of(evs: list[dict]) -> dict:
    out: dict = {}
    for e in evs:
        out[e["kind"]] = out.get(e["kind"], 0) + 1
    return out


def memory(pa: int | None, severity: int, *, module: int = 1, node: int = 0,
           fru: str = "DIMM-A1", flags: int | None = None) -> bytes:
    """A memory-error status block (one section) at `pa` (None: PA-valid bit clear)."""
    fields = dict(physical_addr=pa, physical_addr_mask=PAGE_MASK) if pa is not None else {}
    err = enc.memory_error(error_type=3 if severity == enc.RECOVERABLE else 2, node=node,
                           module=module, **fields)
    kw = {"flags": flags} if flags is not None else {}
    return enc.encode_status_block([enc.section(err, severity, fru_text=fru, **kw)])


def arm_record(mpidr: int = 0x80000000, severity: int = enc.CORRECTED) -> bytes:
    """ARM processor error: cache, TLB and bus error-info entries + two contexts."""
    arm = enc.arm_processor(
        [enc.arm_error_info(0x02, error_info=0x4D0007, flags=1),    # cache, data read, L1
         enc.arm_error_info(0x04, flags=1),                          # TLB
         enc.arm_error_info(0x08, flags=1)],                         # bus
        [enc.arm_context(4, list(range(0x100, 0x100 + 31))),          # AArch64 GPRs
         enc.arm_context(5, {})],                                      # AArch64 EL1 regs
        mpidr=mpidr, midr=0x000F0510, affinity_level=0, running_state=1)
    return enc.encode_status_block([enc.section(arm, severity)])


VENDOR_GUID = "12345678-1234-5678-9abc-def012345678"


def vendor_pcie_record() -> bytes:
    """One record, two sections: an unknown vendor GUID and a corrected PCIe AER error of
    the guest's PCIe host bridge 0000:00:00.0.  Corrected: the kernel prints it and emits
    ras:aer_event (cper_print_aer) but starts no recovery; a device that does not exist
    gets no aer_event at all ("AER: no pci_dev")."""
    vendor = enc.raw_section(VENDOR_GUID, bytes(range(32)), enc.CORRECTED)
    pcie = enc.pcie(port_type=0, version=(1, 1), command=0x0406, status=0x0010,
                    device=dict(bus=0, device=0, function=0, vendor_id=0x1B36,
                                device_id=0x0008, segment=0),
                    aer=dict(cor_status=1))                  # receiver error
    return enc.encode_status_block([vendor, enc.section(pcie, enc.CORRECTED)])


class Rasdaemon:
    """Debian's rasdaemon (0.6.8 from bookworm, 0.8.1 from bookworm-backports) in the
    guest, recording to its SQLite database.  Both use the same tracefs instance name
    and database path, so only one runs at a time."""

    DB = "/var/lib/rasdaemon/ras-mc_event.db"

    def __init__(self, g: Guest, version: str, evidence: Path):
        self.g, self.version, self.evidence = g, version, evidence
        self.tag = f"rasdaemon-{version}"

    def start(self) -> None:
        self.g.run(f"rm -rf /var/lib/rasdaemon; mkdir -p /var/lib/rasdaemon; "
                   f"B={RASDAEMON_BIN[self.version]}; cd / && setsid -f sh -c "
                   f"\"exec $B -f -r > /lab/{self.tag}.log 2>&1 & echo \\$! > /lab/{self.tag}.pid\"",
                   root=True)
        # It enables the ras events in its tracefs instance at start: wait for that.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            res = self.g.run("cat /sys/kernel/tracing/instances/rasdaemon/events/ras/"
                             "arm_event/enable 2>/dev/null", check=False, root=True)
            if res.out[:1] == ["1"]:
                time.sleep(1)
                return
            time.sleep(1)
        raise Failed(f"{self.tag} did not enable its trace events: "
                     f"{_read(self.g.share / (self.tag + '.log'))[-1000:]}")

    def stop(self) -> dict[str, list[dict]]:
        """Stop it and read every table of its database: {table: rows}."""
        pid = _read(self.g.share / f"{self.tag}.pid").strip()
        self.g.run(f"kill -TERM {pid}; i=0; while kill -0 {pid} 2>/dev/null; do i=$((i+1)); "
                   f"[ $i -gt 50 ] && kill -KILL {pid}; sleep 0.2; done; "
                   f"cp {self.DB} /lab/{self.tag}.db 2>/dev/null; true", root=True, timeout=60)
        self.evidence.mkdir(parents=True, exist_ok=True)
        db = self.g.share / f"{self.tag}.db"
        rows: dict[str, list[dict]] = {}
        if db.exists():
            import sqlite3
            shutil_copy(db, self.evidence / f"{self.tag}.db")
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            con.row_factory = sqlite3.Row
            con.text_factory = lambda b: b.decode("utf-8", "replace")  # raw GUID bytes
            for (table,) in con.execute("select name from sqlite_master where type='table'"):
                rows[table] = [dict(r) for r in con.execute(f'select * from "{table}"')]
            con.close()
        log = _read(self.g.share / f"{self.tag}.log")
        (self.evidence / f"{self.tag}.log").write_text(log)
        (self.evidence / f"{self.tag}.json").write_text(json.dumps(rows, indent=1, default=str))
        return rows


def shutil_copy(a: Path, b: Path) -> None:
    import shutil
    shutil.copy(a, b)


@dataclass
class RasdSession:
    """The shell-mode session: one guest (QEMU 11, POLLED sources, rootfs), one rasd."""
    ctx: Ctx
    g: Guest
    rasd: Rasd
    layout: hest.PolledLayout
    sea_id: int
    console_mark: int = 0
    event_mark: int = 0
    incident_mark: int = 0
    rasd_window: float = 3          # correlate.window_s of the session's config
    rate_limit: int = 2             # journal.rate_limit_per_key of the session's config

    def before(self, ctx: Ctx) -> None:
        self.console_mark = self.g.mark()
        self.event_mark = self.rasd.event_mark()
        self.incident_mark = self.rasd.incident_mark()

    def after_scenario(self, ctx: Ctx) -> None:
        lines = self.g.console.lines[self.console_mark:]
        (ctx.out / "console.log").write_text("".join(f"{l.t:9.3f} {l.text}\n" for l in lines))
        if self.rasd.alive():
            self.rasd.dump_evidence(ctx.out / "rasd", status=False)

    def inject(self, record: bytes) -> None:
        """Host-side QMP inject-ghes-v2-error (retries while the guest has not acked)."""
        self.g.qmp.inject_ghes(record, timeout=20)

    def new_events(self, pred, what: str, timeout: float = 90) -> list[dict]:
        return self.rasd.wait_events(pred, since=self.event_mark, timeout=timeout, what=what)

    def new_incidents(self, pred, what: str, timeout: float = 90) -> list[dict]:
        return self.rasd.wait_incidents(pred, since=self.incident_mark, timeout=timeout,
                                        what=what)


def _session_scenario(fn):
    """Scenario body wrapper: marks before, so each scenario sees only its own events."""
    def run(ctx: Ctx) -> None:
        ctx.sess.before(ctx)
        fn(ctx, ctx.sess)
    run.__doc__ = fn.__doc__
    run.__name__ = fn.__name__
    return run


def polled_ids(s: RasdSession) -> list[int]:
    return [sid for sid, _, _ in s.layout.sources]


@session("rasd")
def rasd_session(ctx: Ctx):
    """One boot (QEMU 11: QMP + SEA + 4 POLLED sources), rasd from the checkout."""
    initrd, layout = polled_initrd(ctx, 4, 100)
    ctx.note(polled_sources=[(i, hex(r), hex(b)) for i, r, b in layout.sources])
    with ctx.guest(initrd=initrd, rootfs=True) as g:
        ctx.note(boot_s=round(g.wait_ready(), 1))
        sea = next(s for s in hest_sources(g) if s["notify"] == hest.NOTIFY_SEA)
        cfg = rasd_guest.lab_config(correlate={"window_s": RasdSession.rasd_window},
                                    journal={"rate_limit_per_key": RasdSession.rate_limit})
        rasd = Rasd(g, evidence=ctx.out / "rasd", config=cfg)
        doc = rasd.start()
        ctx.note(rasd_ready_s=rasd.ready_s, rasd_loads=rasd.loads, rasd_retried=rasd.retried,
                 probes={p["probe"]: p["status"] for p in doc["probes"]})
        s = RasdSession(ctx, g, rasd, layout, sea["id"])
        try:
            yield s
        finally:
            try:
                if rasd.alive():   # the scenarios left the store/metrics evidence
                    rasd.dump_evidence(ctx.out / "rasd", store=False)
                COVERAGE.add(ctx.flavour, "rasd session", rasd.status_doc, rasd.probe_fired())
                for probe, why in CANNOT_FIRE.items():
                    COVERAGE.explain(ctx.flavour, probe, why)
                for probe in KVM_PROBES:
                    COVERAGE.explain(ctx.flavour, probe, "KVM exits: only the nested-KVM "
                                     "scenarios (kvm_scenarios.py) drive them", fallback=True)
            finally:
                if rasd.alive():
                    rasd.stop()


@scenario("rasd-ce-memory", session="rasd")
@_session_scenario
def rasd_ce_memory(ctx: Ctx, s: RasdSession) -> None:
    """1: corrected memory error -> stored with location, counted; rasdaemon misses it."""
    before = s.rasd.metrics()
    rd = Rasdaemon(s.g, "0.8.1", ctx.out)
    rd.start()
    pa = 0x60001000
    s.inject(memory(pa, enc.CORRECTED, module=1))
    evs = s.new_events(lambda es: any(e["kind"] == "ghes" and mem_body(e) for e in es),
                       "the GHES event of the corrected memory error")
    ev = next(e for e in evs if e["kind"] == "ghes" and mem_body(e))
    body = mem_body(ev)
    ctx.note(event=ev["id"], severity=ev.get("severity"), body=body)
    ctx.expect(ev.get("severity") == "corrected", f"severity corrected: {ev.get('severity')}")
    ctx.expect(body.get("physical_addr_valid") and int(body["physical_addr"], 16) == pa,
               f"physical address {pa:#x}: {body.get('physical_addr')}")
    loc = body.get("location") or {}
    ctx.expect(loc.get("node") == 0 and loc.get("module") == 1, f"location node 0 module 1: {loc}")
    ctx.expect(ev.get("source") == "ghes_do_proc", f"seen by the GHES probe: {ev.get('source')}")
    after = s.rasd.metrics(save_as="metrics-after.txt")
    lbl = dict(location="node 0 module 1", severity="corrected")
    d = after.get("rasd_memory_errors_total", **lbl) - before.get("rasd_memory_errors_total", **lbl)
    ctx.note(metric_delta=d)
    ctx.expect(d == 1, f"rasd_memory_errors_total{{{lbl}}} went up by 1, not {d}")
    time.sleep(2)
    rows = rd.stop()
    stored = {t: len(r) for t, r in rows.items() if r}
    ctx.note(rasdaemon_081_rows=stored)
    ctx.expect(rows, "rasdaemon 0.8.1 created its database (it was running)")
    ctx.expect(not stored, f"rasdaemon 0.8.1 stored nothing for a corrected memory error "
               f"(no EDAC_GHES, no tracepoint): {stored}")
    incs = s.new_incidents(lambda i: any(x["kind"] == "corrected_memory" and x["closed"]
                                         for x in i), "a closed corrected_memory incident")
    ctx.note(incident=[(i["id"], i["kind"], i["summary"]) for i in incs])


@scenario("rasd-sea-recoverable", session="rasd")
@_session_scenario
def rasd_sea_recoverable(ctx: Ctx, s: RasdSession) -> None:
    """2: recoverable memory error at a test process page via SEA -> one incident."""
    rec = s.g.put("sea-victim.bin", memory(PLACEHOLDER, enc.RECOVERABLE))
    res = s.g.run(f"labinj sea {s.sea_id} {rec} --victim", timeout=60)
    ctx.note(injector=res.out)
    m = re.search(r"pfn=0x([0-9a-f]+) pid=(\d+)", res.text())
    pfn, pid = int(m.group(1), 16), int(m.group(2))
    ctx.expect(any("SIGBUS" in l for l in res.out), "the injector got SIGBUS")
    want = {"ghes", "sea_claim", "memory_failure", "memory_failure_event", "sigbus"}
    evs = s.new_events(lambda es: want <= set(kinds_of(es)),
                       f"events {sorted(want)} of the SEA", timeout=60)
    ctx.note(kinds=kinds_of(evs))
    mf = [e for e in evs if e["kind"] == "memory_failure" and e["fields"].get("pfn") == pfn]
    ctx.expect(mf, f"memory_failure for pfn {pfn:#x}")
    ctx.expect(any(e["fields"].get("action_required") or
                   "MF_ACTION_REQUIRED" in e["fields"].get("flag_names", ()) for e in mf),
               f"memory_failure with MF_ACTION_REQUIRED: {[e['fields'] for e in mf]}")
    ctx.expect(any("ret" in e["fields"] or "result" in e["fields"] for e in mf),
               "memory_failure's return value recorded")
    sig = [e for e in evs if e["kind"] == "sigbus" and e["fields"].get("target_tid") == pid]
    ctx.expect(sig, f"SIGBUS to the injector (pid {pid}): {[e['fields'] for e in evs if e['kind'] == 'sigbus']}")
    incs = s.new_incidents(lambda i: any(x["closed"] and x.get("pfn") == pfn for x in i),
                           f"a closed incident for pfn {pfn:#x}")
    mine = [i for i in incs if i.get("pfn") == pfn and i["merged_into"] is None]
    ctx.note(incidents=mine)
    ctx.expect(len(mine) == 1, f"one incident for pfn {pfn:#x}, not {len(mine)}")
    inc = mine[0]
    ek = set(inc["event_kinds"])
    ctx.expect({"ghes", "memory_failure", "sigbus"} <= ek,
               f"the incident joins GHES, memory_failure and SIGBUS: {sorted(ek)}")
    br = inc.get("blast_radius") or {}
    ctx.note(blast_radius=br, summary=inc["summary"])
    ctx.expect("anon" in (br.get("kinds") or [br.get("kind")]),
               f"blast radius: an anonymous page: {br}")
    ctx.expect("labinj" in json.dumps(inc) or str(pid) in json.dumps(inc),
               f"the incident names the process (labinj, pid {pid}): {inc['summary']}")


@scenario("rasd-ue-unlocatable", session="rasd")
@_session_scenario
def rasd_ue_unlocatable(ctx: Ctx, s: RasdSession) -> None:
    """3: uncorrected memory error without a valid PA -> critical unlocatable alert."""
    s.inject(memory(None, enc.RECOVERABLE, module=3, fru="DIMM-C1"))
    incs = s.new_incidents(lambda i: any(x["kind"] == "unlocatable_memory_corruption"
                                         for x in i), "an unlocatable_memory_corruption incident")
    inc = next(x for x in incs if x["kind"] == "unlocatable_memory_corruption")
    ctx.note(incident=inc)
    ctx.expect(inc["severity"] == "critical", f"severity critical: {inc['severity']}")
    deadline = time.monotonic() + 30
    while True:
        alerts = [a for a in s.rasd.alerts()
                  if a.get("RASD_ALERT_KIND") == "unlocatable_memory_corruption"]
        if alerts or time.monotonic() > deadline:
            break
        time.sleep(1)
    ctx.note(alerts=alerts)
    ctx.expect(alerts and alerts[0]["PRIORITY"] == "2", f"a priority-2 (crit) alert: {alerts}")
    ctx.expect("nlocatable memory corruption" in alerts[0]["MESSAGE"], alerts[0]["MESSAGE"])


@scenario("rasd-arm-processor", session="rasd")
@_session_scenario
def rasd_arm_processor(ctx: Ctx, s: RasdSession) -> None:
    """4: ARM processor error, cache+TLB+bus error info and contexts, + ras:arm_event."""
    mpidr = 0x80000000
    s.inject(arm_record(mpidr))
    evs = s.new_events(lambda es: {"ghes", "arm_event"} <= set(kinds_of(es)),
                       "ghes + arm_event of the ARM processor error")
    ghes = next(e for e in evs if e["kind"] == "ghes")
    infos = [d for d in walk(cper_sections(ghes)) if "type" in d and isinstance(d["type"], dict)
             and "names" in d["type"]]
    names = [n for d in infos for n in d["type"]["names"]]
    ctx.note(error_info_types=names)
    for want in ("cache", "tlb", "bus"):
        ctx.expect(any(want in n.lower() for n in names), f"{want} error info decoded: {names}")
    ctxs = [d for d in walk(cper_sections(ghes)) if "registers" in d]
    ctx.note(contexts=[(c.get("type"), c.get("size"), len(c["registers"])) for c in ctxs])
    ctx.expect(len(ctxs) == 2 and all(c["registers"] for c in ctxs),
               f"two context records with named registers: {len(ctxs)}")
    gprs = json.dumps(ctxs[0]["registers"])
    ctx.expect("0x100" in gprs or "0x0000000000000100" in gprs, "GPR values decoded")
    cache = next(d for d in infos if any("cache" in n.lower() for n in d["type"]["names"]))
    ctx.expect("error_info" in cache and len(cache["error_info"]) > 1,
               f"cache error_info fields decoded: {cache.get('error_info')}")
    arm = next(e for e in evs if e["kind"] == "arm_event")
    ctx.note(arm_event=arm["fields"])
    ctx.expect(int(str(arm["fields"].get("mpidr", 0)), 0) == mpidr,
               f"arm_event MPIDR {mpidr:#x}: {arm['fields']}")
    # one fault, one incident: the record and its tracepoint share the section's MPIDR
    incs = {e.get("incident_id") for e in (ghes, arm)}
    ctx.note(incidents=sorted(incs, key=str))
    ctx.expect(len(incs) == 1 and None not in incs,
               f"the GHES record and its arm_event are one incident: {incs}")


@scenario("rasd-vendor-pcie", session="rasd")
@_session_scenario
def rasd_vendor_pcie(ctx: Ctx, s: RasdSession) -> None:
    """5: unknown vendor GUID + PCIe section -> stored, decoded (+ non_standard, aer)."""
    s.inject(vendor_pcie_record())
    evs = s.new_events(lambda es: {"ghes", "non_standard", "aer"} <= set(kinds_of(es)),
                       "ghes + non_standard + aer of the vendor/PCIe record")
    time.sleep(2)
    evs = [e for e in s.rasd.events() if e["id"] > s.event_mark]
    ctx.note(kinds=kinds_of(evs))
    ghes = next(e for e in evs if e["kind"] == "ghes")
    secs = cper_sections(ghes)
    text = json.dumps(secs).lower()
    ctx.note(sections=[json.dumps(x)[:300] for x in secs])
    ctx.expect(len(secs) == 2, f"two sections stored: {len(secs)}")
    ctx.expect(VENDOR_GUID in text, "the vendor GUID is kept")
    ctx.expect("00:00.0" in text, "PCIe device 0000:00:00.0 decoded")
    ns = next(e for e in evs if e["kind"] == "non_standard")
    ctx.note(non_standard=ns["fields"])
    ctx.expect(VENDOR_GUID in json.dumps(ns).lower(), f"non_standard_event names the GUID "
               f"(byte order fixed): {json.dumps(ns['fields'])[:300]}")
    aer = [e for e in evs if e["kind"] == "aer"]
    ctx.note(aer=[e["fields"] for e in aer])
    ctx.expect(aer and "0000:00:00.0" in json.dumps(aer[0]["fields"]),
               f"ras:aer_event of 0000:00:00.0 stored: {[e['fields'] for e in aer]}")


@scenario("rasd-madv-hwpoison", session="rasd")
@_session_scenario
def rasd_madv_hwpoison(ctx: Ctx, s: RasdSession) -> None:
    """6: MADV_HWPOISON -> memory_failure event with page type and result."""
    res = s.g.run("labinj madvise", check=False)
    ctx.note(injector=res.out)
    pfn = int(re.search(r"pfn=0x([0-9a-f]+)", res.text()).group(1), 16)
    evs = s.new_events(lambda es: any(e["kind"] == "memory_failure_event" and
                                      e["fields"].get("pfn") == pfn for e in es),
                       f"memory_failure_event for pfn {pfn:#x}")
    mfe = next(e for e in evs if e["kind"] == "memory_failure_event"
               and e["fields"].get("pfn") == pfn)
    ctx.note(memory_failure_event=mfe["fields"])
    f = mfe["fields"]
    ctx.expect(f.get("page_type") and f.get("result_name"),
               f"page type and result decoded: {f}")
    mf = [e for e in evs if e["kind"] == "memory_failure" and e["fields"].get("pfn") == pfn]
    ctx.expect(mf and "MF_SW_SIMULATED" in mf[0]["fields"].get("flag_names", ()),
               f"memory_failure with MF_SW_SIMULATED: {[e['fields'] for e in mf]}")


def ghes_at(evs: list[dict], pa: int) -> list[dict]:
    out = []
    for e in evs:
        body = mem_body(e) if e["kind"] == "ghes" else None
        if body and body.get("physical_addr") and int(body["physical_addr"], 16) == pa:
            out.append(e)
    return out


STORM_PA = 0x61234000
STORM_BURSTS = (70, 70, 60)      # >= 200 records; pauses > correlate.window_s between


@scenario("rasd-ce-storm", session="rasd")
@_session_scenario
def rasd_ce_storm(ctx: Ctx, s: RasdSession) -> None:
    """7: CE storm (200 records, 4 POLLED sources): exact counts, rate limit, predictive."""
    st0 = s.rasd.status()
    lost0 = st0["counters"]["lost_kernel"] or 0
    rec = s.g.put("storm.bin", memory(STORM_PA, enc.CORRECTED, module=2, fru="DIMM-B2"))
    ids = " ".join(map(str, polled_ids(s)))
    fed = []
    for n in STORM_BURSTS:
        res = s.g.run(f"labinj feed {n} {rec} {ids}", timeout=300)
        fed.append(res.text().strip())
        wait_consumed(ctx, s.g, s.layout)
        time.sleep(s.rasd_window + 2)       # > correlate.window_s: the next burst is new
    total = sum(STORM_BURSTS)
    ctx.note(fed=fed)
    deadline = time.monotonic() + 120
    while True:
        evs = [e for e in s.rasd.events("--type", "ghes") if e["id"] > s.event_mark]
        got = ghes_at(evs, STORM_PA)
        st = s.rasd.status()
        lost = (st["counters"]["lost_kernel"] or 0) - lost0
        if len(got) + lost >= total or time.monotonic() > deadline:
            break
        time.sleep(2)
    srcs = sorted({e["fields"].get("source_id") for e in got})
    ctx.note(stored=len(got), lost_kernel=lost, sources=srcs,
             print=[f"storm: {total} records fed, {len(got)} stored, {lost} counted lost"])
    ctx.expect(len(got) + lost == total,
               f"every record stored or counted lost: {len(got)} + {lost} != {total}")
    ctx.expect(set(srcs) == set(polled_ids(s)), f"all polled sources used: {srcs}")
    incs = s.new_incidents(
        lambda i: sum(1 for x in i if x["kind"] == "corrected_memory" and x["closed"]
                      and x.get("pfn") == STORM_PA >> 12 and x["merged_into"] is None)
        >= len(STORM_BURSTS) and sum(1 for x in i if x["kind"] == "predictive_failure") >= 2,
        "corrected_memory incidents per burst and predictive_failure incidents", timeout=60)
    ce = [x for x in incs if x["kind"] == "corrected_memory" and x.get("pfn") == STORM_PA >> 12
          and x["merged_into"] is None]
    pred = [x for x in incs if x["kind"] == "predictive_failure"]
    ctx.note(ce_incidents=[(x["id"], x["event_count"]) for x in ce],
             predictive=[(x["key"], x["summary"]) for x in pred])
    ctx.expect(sum(x["event_count"] for x in ce) == len(got),
               f"the storm's events all joined its incidents: "
               f"{sum(x['event_count'] for x in ce)} != {len(got)}")
    keys = [x["key"] for x in pred]
    ctx.expect(keys.count(f"predict:page:{STORM_PA >> 12}") == 1 or
               sum(1 for k in keys if k.startswith("predict:page:")) == 1,
               f"one predictive incident for the page: {keys}")
    loc = [k for k in keys if k.startswith("predict:location:") and "'module', 2" in k]
    ctx.expect(len(loc) == 1, f"one predictive incident for location node 0 module 2: {keys}")
    # Rate limit: rate_limit_per_key alerts per (kind, location) per interval, the rest
    # counted as suppressed (rasd_alerts_total{outcome="suppressed"}).
    time.sleep(2)
    alerts = [a for a in s.rasd.alerts() if a.get("RASD_ALERT_KIND") == "corrected_memory"
              and a.get("RASD_PFN") == hex(STORM_PA >> 12)]
    m = s.rasd.metrics()
    suppressed = m.get("rasd_alerts_total", kind="corrected_memory", outcome="suppressed")
    ctx.note(alerts_sent=len(alerts), suppressed_metric=suppressed,
             alert_messages=[a["MESSAGE"] for a in alerts])
    limit = s.rate_limit
    ctx.expect(len(alerts) == min(len(ce), limit),
               f"{min(len(ce), limit)} corrected_memory alert(s) sent for {len(ce)} incidents "
               f"(rate limit {limit}), not {len(alerts)}")
    ctx.expect(suppressed >= len(ce) - len(alerts),
               f"suppressed alerts counted: {suppressed} < {len(ce) - len(alerts)}")
    pal = [a for a in s.rasd.alerts() if a.get("RASD_ALERT_KIND") == "predictive_failure"]
    ctx.expect(len(pal) >= 2, f"predictive_failure alerts: {len(pal)}")


# --- scenario 10: rasdaemon 0.6.8 and 0.8.1 side by side ----------------------------------

# rasdaemon table -> the rasd event kind recording the same kernel signal
RASDAEMON_TABLE_KIND = {"mc_event": "mc_event", "memory_failure_event": "memory_failure_event",
                        "arm_event": "arm_event", "non_standard_event": "non_standard",
                        "aer_event": "aer", "extlog_event": None, "mce_record": None,
                        "devlink_event": None, "disk_errors": None}


def side_by_side_set(s: RasdSession, phase: int) -> list[dict]:
    """The same kinds of injection for each rasdaemon; distinct addresses per phase
    (the kernel's estatus cache hides repeats for 10 s)."""
    base = 0x64000000 + phase * 0x100000
    cases = [("corrected memory", memory(base + 0x1000, enc.CORRECTED, module=5)),
             ("uncorrected memory (free page)", memory(base + 0x2000, enc.RECOVERABLE, module=5)),
             ("uncorrected memory, no PA", memory(None, enc.RECOVERABLE, module=6)),
             ("ARM processor", arm_record(0x80000010 + phase)),
             ("vendor GUID + PCIe", vendor_pcie_record())]
    out = []
    for name, rec in cases:
        s.inject(rec)
        out.append({"name": name, "pa": base + 0x2000 if "free" in name else
                    base + 0x1000 if name == "corrected memory" else None})
        time.sleep(0.3)
    res = s.g.run("labinj madvise", check=False)
    pfn = int(re.search(r"pfn=0x([0-9a-f]+)", res.text()).group(1), 16)
    out.append({"name": "MADV_HWPOISON", "pfn": pfn})
    return out


def rasd_saw(case: dict, evs: list[dict], phase: int) -> list[str]:
    """Which rasd event kinds belong to this injection (matched by content)."""
    n = case["name"]
    kinds: list[str] = []
    for e in evs:
        f, body = e["fields"], mem_body(e) if e["kind"] == "ghes" else None
        pa = int(body["physical_addr"], 16) if body and body.get("physical_addr") else None
        if case.get("pa") is not None and (pa == case["pa"] or
                                           f.get("pfn") == case["pa"] >> 12):
            kinds.append(e["kind"])
        elif n == "uncorrected memory, no PA" and body and not body["physical_addr_valid"] \
                and (body.get("location") or {}).get("module") == 6:
            kinds.append(e["kind"])
        elif n == "ARM processor" and int(str(f.get("mpidr", 0)), 0) == 0x80000010 + phase:
            kinds.append(e["kind"])
        elif n == "ARM processor" and e["kind"] == "ghes" and \
                f'"mpidr": "{0x80000010 + phase:#x}"' in json.dumps(e):
            kinds.append(e["kind"])
        elif n == "vendor GUID + PCIe" and (
                (e["kind"] in ("ghes", "non_standard") and VENDOR_GUID in json.dumps(e).lower())
                or (e["kind"] == "aer" and "0000:00:00.0" in json.dumps(e))):
            kinds.append(e["kind"])
        elif n == "MADV_HWPOISON" and f.get("pfn") == case["pfn"]:
            kinds.append(e["kind"])
    return sorted(set(kinds))


def rasdaemon_saw(case: dict, rows: dict[str, list[dict]], phase: int) -> list[str]:
    n, out = case["name"], []
    for table, rs in rows.items():
        for r in rs:
            text = json.dumps(r, default=str).lower()
            hit = False
            if case.get("pa") is not None:
                hit = f"{case['pa'] >> 12:x}" in text and table != "arm_event"
            if n == "MADV_HWPOISON":
                hit = f"{case['pfn']:x}" in text
            if n == "ARM processor" and table == "arm_event":
                hit = int(str(r.get("mpidr") or 0), 0) == 0x80000010 + phase   # an integer
            if n == "vendor GUID + PCIe":
                hit = table in ("non_standard_event", "aer_event")
            if n.startswith("corrected") or n.endswith("no PA"):
                hit = hit or table == "mc_event"
            if hit:
                out.append(table)
    return sorted(set(out))


@scenario("rasd-vs-rasdaemon", session="rasd")
@_session_scenario
def rasd_vs_rasdaemon(ctx: Ctx, s: RasdSession) -> None:
    """10: rasdaemon 0.6.8 and 0.8.1 beside rasd: what each captured of the same injections."""
    table = []
    for phase, version in enumerate(("0.6.8", "0.8.1")):
        mark = s.rasd.event_mark()
        rd = Rasdaemon(s.g, version, ctx.out)
        rd.start()
        cases = side_by_side_set(s, phase)
        time.sleep(3)
        rows = rd.stop()
        evs = s.rasd.wait_events(lambda es: sum(1 for e in es if e["kind"] == "ghes") >= 5,
                                 since=mark, timeout=60, what="rasd's events of this phase")
        time.sleep(2)
        evs = [e for e in s.rasd.events() if e["id"] > mark]
        all_rows = sum(len(r) for r in rows.values())
        for case in cases:
            table.append({"rasdaemon": version, "injection": case["name"],
                          "rasd": rasd_saw(case, evs, phase),
                          "rasdaemon_rows": rasdaemon_saw(case, rows, phase)})
        ctx.note(**{f"rows_{version}": {t: len(r) for t, r in rows.items()}})
        # Every signal rasdaemon stored, rasd stored too (same kernel event kind).
        for t, rs in rows.items():
            kind = RASDAEMON_TABLE_KIND.get(t)
            if not rs or kind is None:
                continue
            have = sum(1 for e in evs if e["kind"] == kind)
            ctx.expect(have >= len(rs), f"rasdaemon {version} stored {len(rs)} {t} row(s); "
                       f"rasd has {have} {kind} event(s) of that phase")
        ctx.note(**{f"rows_total_{version}": all_rows})
    lines = [f"{'injection':32} {'rasd':48} {'0.6.8':22} 0.8.1"]
    by = {}
    for r in table:
        by.setdefault(r["injection"], {})[r["rasdaemon"]] = r
    for name, v in by.items():
        rasd = sorted(set(v["0.6.8"]["rasd"]) | set(v["0.8.1"]["rasd"]))
        lines.append(f"{name:32} {','.join(rasd) or '-':48} "
                     f"{','.join(v['0.6.8']['rasdaemon_rows']) or '-':22} "
                     f"{','.join(v['0.8.1']['rasdaemon_rows']) or '-'}")
    ctx.note(table=table, print=lines)
    (ctx.out / "table.txt").write_text("\n".join(lines) + "\n")
    for r in table:
        ctx.expect(r["rasd"], f"rasd recorded the {r['injection']} of the {r['rasdaemon']} "
                   f"phase: {r}")


@scenario("rasd-restart-gap", session="rasd")
@_session_scenario
def rasd_restart_gap(ctx: Ctx, s: RasdSession) -> None:
    """8: stop rasd, inject, start -> the events are recovered from its trace instance, once."""
    s.rasd.stop()
    mpidr, pa = 0x80000020, 0x65432000
    mark = s.g.mark()
    s.inject(arm_record(mpidr))
    s.inject(memory(pa, enc.RECOVERABLE, module=7))
    ctx.seen(s.g, rf"Memory failure: 0x{pa >> 12:x}: ", mark, timeout=30)
    s.rasd.start()
    ctx.note(restart_ready_s=s.rasd.ready_s[-1])
    time.sleep(4)   # a few ticks: a second drain must not deliver them again
    evs = s.new_events(lambda es: any(e["kind"] == "memory_failure_event" for e in es) and
                       any(e["kind"] == "arm_event" for e in es), "the gap's events")
    time.sleep(3)
    evs = [e for e in s.rasd.events() if e["id"] > s.event_mark]
    arm = [e for e in evs if e["kind"] == "arm_event" and
           int(str(e["fields"].get("mpidr", 0)), 0) == mpidr]
    mfe = [e for e in evs if e["kind"] == "memory_failure_event" and
           e["fields"].get("pfn") == pa >> 12]
    ctx.note(kinds=kinds_of(evs), arm=[(e["id"], e["source"]) for e in arm],
             mfe=[(e["id"], e["source"], e["fields"].get("result_name")) for e in mfe],
             instance=s.rasd.status()["counters"].get("tracefs_instance"))
    ctx.expect(len(arm) == 1, f"arm_event recovered once: {len(arm)}")
    ctx.expect(len(mfe) == 1, f"memory_failure_event recovered once: {len(mfe)}")
    ctx.expect(all(e["source"].startswith("tracefs") for e in arm + mfe),
               "recovered from the tracefs instance")


# --- systemd as PID 1, the Debian package, lockdown (scenarios 9 and 12) --------------------

@dataclass
class SystemdSession:
    """A guest with systemd as PID 1 and rasd installed from its .deb (own unit)."""
    ctx: Ctx
    g: Guest
    rasd: Rasd
    lockdown: str
    host_port: int
    console_mark: int = 0
    event_mark: int = 0
    stock_finding: str | None = None     # what the stock unit could not do, if anything
    probes_status: dict | None = None    # rasd's status before 12b's lockdown (coverage)

    before = RasdSession.before
    after_scenario = RasdSession.after_scenario
    inject = RasdSession.inject

    def incident_mark_now(self) -> int:
        return self.rasd.incident_mark()


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def systemd_boot(ctx: Ctx, lockdown: str, name: str = "guest"):
    port = free_port()
    g = ctx.guest(name, rootfs=True, systemd=True, append=f"lockdown={lockdown}",
                  hostfwd={port: rasd_guest.METRICS_PORT}, boot_timeout=300)
    return g, port


def guest_net_up(g: Guest) -> str:
    """virtio-net up with QEMU user networking's fixed addresses (no DHCP client)."""
    res = g.run("modprobe virtio_net 2>/dev/null; d=; for i in $(seq 20); do "
                "d=$(ls /sys/class/net | grep -v '^lo$' | head -1); [ -n \"$d\" ] && break; "
                "sleep 0.5; done; [ -n \"$d\" ] || exit 1; ip link set lo up; ip link set $d up; "
                "ip addr add 10.0.2.15/24 dev $d; ip route add default via 10.0.2.2; echo $d",
                root=True, timeout=60)
    return res.text().strip()


LAB_DROPIN = """[Service]
# rasd lab: bcc compiles the probes in ~1-3 min under QEMU TCG on a loaded 2-core host
# (seconds on arm64 hardware): the stock 3 min start budget is too tight here.
TimeoutStartSec=15min
"""


def systemd_rasd(ctx: Ctx, g: Guest) -> Rasd:
    cfg = rasd_guest.lab_config(daemon={"watchdog_fallback_s": 10})
    rasd = Rasd(g, how="systemd", config=cfg, evidence=ctx.out / "rasd")
    (g.share / "lab-timeout.conf").write_text(LAB_DROPIN)
    g.run("mkdir -p /etc/systemd/system/rasd.service.d && cp /lab/lab-timeout.conf "
          "/etc/systemd/system/rasd.service.d/", root=True)
    return rasd


@session("systemd")
def systemd_session(ctx: Ctx):
    """systemd PID 1, lockdown=integrity, rasd .deb + its unit, metrics via hostfwd."""
    g, port = systemd_boot(ctx, "integrity")
    with g:
        ctx.note(boot_s=round(g.wait_ready(), 1))
        ctx.note(netdev=guest_net_up(g))
        rasd = systemd_rasd(ctx, g)
        t0 = time.monotonic()
        rasd.install(timeout=1000)            # postinst: enable + start, waits for READY
        st = rasd.wait_ready(timeout=120)
        rasd.note_load(st)
        if Rasd.loader_timed_out(st):         # bcc compile > rasd's 120 s: host too busy
            rasd.stop()
            rasd.retried.append("install: probe loader timed out; restarted")
            st = rasd.start(timeout=900, retry=False)
        ctx.note(rasd_retried=rasd.retried, rasd_loads=rasd.loads)
        ctx.note(install_and_start_s=round(time.monotonic() - t0, 1))
        s = SystemdSession(ctx, g, rasd, "integrity", port)
        s.stock_finding = stock_unit_check(ctx, g, rasd, st)
        try:
            yield s
        finally:
            try:
                rasd.dump_evidence(ctx.out / "rasd", store=False, journal=False)
                COVERAGE.add(ctx.flavour, "systemd session", s.probes_status or rasd.status_doc,
                             rasd.probe_fired())
            finally:
                if rasd.alive():
                    rasd.stop()


CORE_PROBES = {"ghes_do_proc", "ghes_proc", "memory_failure", "memory_failure_queue",
               "arm_event", "memory_failure_event", "non_standard_event", "sigbus"}


def stock_unit_check(ctx: Ctx, g: Guest, rasd: Rasd, st: dict) -> str | None:
    """Did the package's unit, as shipped, attach the core probes?  If not because the
    kernel's perf_event_paranoid (Debian: 3) asks CAP_SYS_ADMIN for perf_event_open,
    which the unit's CapabilityBoundingSet does not grant, say so, lower it to 2 and
    restart, so the rest of the scenarios still test something; they fail at the end
    with the finding."""
    att = {p["probe"] for p in st["probes"] if p["status"] == "attached"}
    ctx.note(stock_unit_attached=sorted(att))
    if CORE_PROBES <= att:
        return None
    paranoid = g.run("cat /proc/sys/kernel/perf_event_paranoid", root=True).text().strip()
    reasons = {p["probe"]: p["reason"] for p in st["probes"] if p["probe"] in CORE_PROBES}
    finding = (f"the stock rasd.service attached {len(att)}/{len(st['probes'])} probes "
               f"({sorted(att)}); {sorted(CORE_PROBES - att)} failed, e.g. "
               f"{reasons.get('ghes_do_proc')!r}; kernel.perf_event_paranoid={paranoid}")
    if paranoid == "3":
        finding += (": Debian's perf_event_paranoid=3 patch lets only CAP_SYS_ADMIN call "
                    "perf_event_open (kprobe and tracepoint attach); the unit's "
                    "CapabilityBoundingSet has CAP_BPF CAP_PERFMON only, so only fentry "
                    "(BPF link) probes attach")
        g.run("sysctl -w kernel.perf_event_paranoid=2 && systemctl restart rasd",
              root=True, timeout=900)
        st2 = rasd.wait_ready(timeout=900)
        att2 = {p["probe"] for p in st2["probes"] if p["status"] == "attached"}
        ctx.note(after_paranoid_2_attached=sorted(att2))
        finding += f"; with perf_event_paranoid=2 it attaches {len(att2)}"
    ctx.note(stock_unit_finding=finding)
    return finding


def systemctl_show(g: Guest, *props: str) -> dict:
    res = g.run(f"systemctl show rasd -p {','.join(props)}", root=True)
    return dict(l.split("=", 1) for l in res.out if "=" in l)


@scenario("rasd-systemd", session="systemd")
@_session_scenario
def rasd_systemd(ctx: Ctx, s: SystemdSession) -> None:
    """9: rasd.service under systemd: active, watchdog, journal alerts, host scrape."""
    g = s.g
    state = g.run("systemctl is-active rasd", root=True, check=False).text().strip()
    ctx.expect(state == "active", f"systemctl is-active rasd: {state}")
    p1 = systemctl_show(g, "MainPID", "NRestarts", "WatchdogUSec", "Type",
                        "WatchdogTimestampMonotonic", "FragmentPath", "DropInPaths")
    ctx.note(unit=p1)
    ctx.expect(p1["FragmentPath"] == "/lib/systemd/system/rasd.service",
               f"the package's own unit: {p1['FragmentPath']}")
    ctx.expect(p1["Type"] == "notify" and p1["WatchdogUSec"] == "30s",
               f"Type=notify, WatchdogSec=30s: {p1}")
    caps = g.run(f"grep -E 'CapEff|CapBnd' /proc/{p1['MainPID']}/status", root=True).out
    ctx.note(caps=caps)
    # Pings come every WatchdogSec/2 = 15 s: the timestamp must move within ~20 s.
    t0 = time.monotonic()
    while True:
        time.sleep(4)
        p2 = systemctl_show(g, "WatchdogTimestampMonotonic", "NRestarts")
        if p2["WatchdogTimestampMonotonic"] != p1["WatchdogTimestampMonotonic"] or \
                time.monotonic() - t0 > 40:
            break
    ctx.note(watchdog=(p1["WatchdogTimestampMonotonic"], p2["WatchdogTimestampMonotonic"]))
    ctx.expect(int(p2["WatchdogTimestampMonotonic"]) > int(p1["WatchdogTimestampMonotonic"]) > 0,
               "rasd pings the watchdog (WatchdogTimestamp advanced)")
    ctx.expect(p2["NRestarts"] == "0", f"no restarts: {p2['NRestarts']}")
    before = s.rasd.metrics()
    pa = 0x66001000
    s.inject(memory(pa, enc.CORRECTED, module=8, fru="DIMM-S8"))
    s.inject(memory(None, enc.RECOVERABLE, module=9, fru="DIMM-S9"))
    from rasd.sinks.journal import MESSAGE_IDS
    deadline = time.monotonic() + 90
    while True:
        alerts = s.rasd.alerts()
        kinds = {a.get("RASD_ALERT_KIND") for a in alerts}
        if {"corrected_memory", "unlocatable_memory_corruption"} <= kinds or \
                time.monotonic() > deadline:
            break
        time.sleep(3)
    ctx.note(journal_alerts=[(a.get("RASD_ALERT_KIND"), a.get("PRIORITY"), a.get("MESSAGE"))
                             for a in alerts])
    for kind, prio in (("corrected_memory", "5"), ("unlocatable_memory_corruption", "2")):
        hit = [a for a in alerts if a.get("RASD_ALERT_KIND") == kind]
        ctx.expect(hit, f"{kind} alert in the guest journal")
        ctx.expect(hit[0].get("PRIORITY") == prio, f"{kind} priority {prio}: {hit[0]}")
        ctx.expect(hit[0].get("MESSAGE_ID") == MESSAGE_IDS[kind],
                   f"{kind} MESSAGE_ID from the catalog: {hit[0].get('MESSAGE_ID')}")
        ctx.expect(hit[0].get("_SYSTEMD_UNIT") == "rasd.service",
                   f"sent by rasd.service: {hit[0].get('_SYSTEMD_UNIT')}")
    after = s.rasd.metrics(save_as="metrics-host-scrape.txt")   # through hostfwd
    lbl = dict(location="node 0 module 8", severity="corrected")
    d = after.get("rasd_memory_errors_total", **lbl) - before.get("rasd_memory_errors_total", **lbl)
    ctx.note(scrape_port=s.host_port, memory_delta=d,
             lockdown_metric=after.series("rasd_kernel_lockdown_info"))
    ctx.expect(d == 1, f"host scrape: rasd_memory_errors_total{{{lbl}}} +1, not {d}")
    ctx.expect(after.get("rasd_kernel_lockdown_info", mode=s.lockdown) == 1,
               f"rasd_kernel_lockdown_info{{mode={s.lockdown}}} == 1")
    # (the guest's journal export lands in rasd/journal.export with the other evidence)
    ctx.expect(s.stock_finding is None, f"stock unit: {s.stock_finding}")


@scenario("rasd-lockdown-integrity", session="systemd")
@_session_scenario
def rasd_lockdown_integrity(ctx: Ctx, s: SystemdSession) -> None:
    """12a: lockdown=integrity: /dev/mem closed, injection via host QMP, rasd works fully."""
    g = s.g
    mode = g.run("cat /sys/kernel/security/lockdown", root=True).text().strip()
    ctx.expect("[integrity]" in mode, f"kernel lockdown: {mode}")
    devmem = g.run("dd if=/dev/mem of=/dev/null bs=4 count=1 2>&1", root=True, check=False)
    ctx.note(devmem=devmem.out)
    ctx.expect(devmem.rc != 0 and "not permitted" in devmem.text(),
               f"/dev/mem refused under integrity: {devmem.text()}")
    st = s.rasd.status()
    ctx.expect(st["lockdown"] == "integrity", f"rasd reports lockdown {st['lockdown']}")
    att = {p["probe"] for p in st["probes"] if p["status"] == "attached"}
    ctx.note(attached=sorted(att), notes=st.get("notes"))
    ctx.expect(CORE_PROBES <= att,
               f"probes attached under integrity: missing {sorted(CORE_PROBES - att)}")
    pa = 0x66102000
    s.inject(memory(pa, enc.RECOVERABLE, module=10))
    evs = s.rasd.wait_events(lambda es: {"ghes", "memory_failure_queue", "memory_failure",
                                         "memory_failure_event"} <= set(kinds_of(es)),
                             since=s.event_mark, timeout=60,
                             what="ghes -> memory_failure chain of the QMP record")
    ctx.note(kinds=kinds_of(evs))
    mf = [e for e in evs if e["kind"] == "memory_failure" and e["fields"].get("pfn") == pa >> 12]
    ctx.expect(mf, f"memory_failure for pfn {pa >> 12:#x}")
    ctx.expect(s.stock_finding is None, f"stock unit: {s.stock_finding}")


@scenario("rasd-lockdown-confidentiality", session="systemd")
def rasd_lockdown_confidentiality(ctx: Ctx) -> None:
    """12b: lockdown=confidentiality: rasd says what it cannot do, reports from /dev/kmsg."""
    s: SystemdSession = ctx.sess
    s.console_mark = s.g.mark()
    g = s.g
    # The systemd session's boot (lockdown=integrity) raised to confidentiality through
    # the lockdown LSM's own switch: the state the boot parameter sets (it only ever
    # rises), without a second boot and package install (~4 min a kernel under TCG).
    # Last in the session: nothing after it can use eBPF or tracefs.
    s.probes_status = s.rasd.status()
    g.run("systemctl stop rasd", root=True, timeout=120)
    g.run("echo confidentiality > /sys/kernel/security/lockdown", root=True)
    mode = g.run("cat /sys/kernel/security/lockdown", root=True).text().strip()
    ctx.expect("[confidentiality]" in mode, f"kernel lockdown: {mode}")
    # the stock unit may fail to start (no kernel log): its words are what is checked
    g.run("systemctl start rasd", root=True, timeout=300, check=False)
    # The stock unit hides the kernel log: rasd must say so and name the drop-in.
    deadline = time.monotonic() + 60
    while True:
        log = s.rasd.log()
        if "kernel-log.conf" in log or time.monotonic() > deadline:
            break
        time.sleep(3)
    said = [l for l in log.splitlines() if "kernel-log.conf" in l or "lockdown" in l.lower()]
    ctx.note(first_start=said[-6:])
    ctx.expect(any("kernel-log.conf" in l for l in said),
               "without the drop-in rasd names /usr/share/rasd/systemd/kernel-log.conf")
    g.run("install -D -m 644 /usr/share/rasd/systemd/kernel-log.conf "
          "/etc/systemd/system/rasd.service.d/kernel-log.conf && systemctl daemon-reload && "
          "systemctl reset-failed rasd; systemctl restart rasd", root=True, timeout=300)
    st = s.rasd.wait_ready(timeout=300)
    ctx.note(status_notes=st.get("notes"), probes={p["probe"]: (p["status"], p["reason"])
                                                   for p in st["probes"][:3]})
    ctx.expect(st["lockdown"] == "confidentiality", f"rasd reports {st['lockdown']}")
    ctx.expect(not any(p["status"] == "attached" for p in st["probes"]),
               "no probe attached (eBPF refused)")
    notes = " ".join(st.get("notes") or []).lower()
    ctx.expect("confidentiality" in notes and ("kprobe" in notes or "ebpf" in notes or
                                               "bpf" in notes),
               f"status notes say what is refused: {st.get('notes')}")
    ctx.expect((st["counters"].get("kmsg") or {}) != {}, f"kmsg source running: {st['counters']}")
    mark = s.rasd.event_mark()
    pa = 0x66203000
    s.inject(memory(pa, enc.RECOVERABLE, module=11, fru="DIMM-K11"))
    time.sleep(1.5)
    s.inject(memory(0x66204000, enc.CORRECTED, module=11, fru="DIMM-K11"))
    evs = s.rasd.wait_events(lambda es: len([e for e in es if e["kind"] == "kmsg"]) >= 2,
                             since=mark, timeout=90, what="kmsg events of the two records")
    ctx.note(events=[(e["kind"], e.get("severity"), e.get("phys_addr"), e.get("reason"))
                     for e in evs])
    kmsg_pa = [e for e in evs if e["kind"] == "kmsg" and
               (hex(pa) in json.dumps(e) or f"{pa:016x}" in json.dumps(e) or
                str(pa) in json.dumps(e["fields"]))]
    ctx.note(kmsg_event=kmsg_pa[0] if kmsg_pa else None)
    ctx.expect(kmsg_pa, f"the recoverable error at {pa:#x} reported from /dev/kmsg")
    incs = s.rasd.wait_incidents(lambda i: any(x.get("phys_addr") == hex(pa) for x in i),
                                 timeout=60, what=f"an incident at {pa:#x}")
    ctx.note(incident=[x["summary"] for x in incs if x.get("phys_addr") == hex(pa)])
    ctx.expect(any(e.get("severity") == "corrected" for e in evs), "the corrected one too")
