"""Lab scenarios: each boots guests, injects through one real kernel path and
checks the kernel's own evidence (console lines, tracefs counts).

A scenario is a function taking a Ctx; it raises Failed (or any exception)
to fail and records what it saw with ctx.note().  rasd itself is not
involved yet: these prove the routes the rasd scenarios will drive.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import build
import hest
from harness import Guest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from rasd.encode import cper as enc  # noqa: E402  (the project's own CPER encoder)

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

    @property
    def kernel(self) -> build.Kernel:
        return self.lab.kernels[self.flavour]

    def guest(self, name: str = "guest", *, initrd: Path | None = None, rootfs: bool = False,
              qemu: str | None = None, **kw) -> Guest:
        q = self.lab.qemu[qemu or self.qemu]
        return Guest(kernel=self.kernel, initrd=initrd or self.lab.initrds[self.flavour],
                     qemu=q, outdir=self.out / name, rasd=REPO,
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


SCENARIOS: dict = {}


def scenario(name: str, qemu: str = "host", kernels=("6.1", "6.12")):
    def register(fn):
        SCENARIOS[name] = (fn, qemu, kernels)
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
