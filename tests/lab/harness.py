"""Boot an arm64 guest under QEMU TCG and talk to it (Python stdlib only).

    with Guest(kernel=k, initrd=i, qemu=q, outdir=d, rootfs=r, rasd=repo) as g:
        g.wait_ready()
        res = g.run("labinj hest")            # guest shell command, rc + output
        g.wait_for(r"\\[Hardware Error\\]")     # a kernel line on the console
        g.qmp.inject_ghes(record_bytes)       # QEMU >= 10.2 only

The guest's /init (guest/init.sh) serves commands on the serial console:
the harness sends "@@RUN <id> <base64>" and collects the lines up to
"@@LAB-END <id> <rc>".  Kernel lines ("[  12.345678] ...") interleave with
command output on the one console; they are told apart by that prefix.

Evidence per guest, in `outdir`: serial.log (QEMU's raw copy of the
console), console.log (every line with host seconds since QEMU start),
qemu.cmdline, qemu.stderr, qmp.log, and share/ (the guest's /lab).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")


class GuestError(Exception):
    pass


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL when the harness dies (no orphan VMs)."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Line:
    t: float      # host seconds since QEMU start
    text: str

    @property
    def kernel(self) -> bool:
        return bool(KERNEL_LINE.match(self.text))


@dataclass
class CmdResult:
    cmd: str
    rc: int
    out: list[str]          # non-kernel lines printed by the command
    kernel: list[str]       # kernel lines that arrived meanwhile
    seconds: float

    def text(self) -> str:
        return "\n".join(self.out)


class Console:
    """Line reader on QEMU's serial socket, with timestamps and a wait API."""

    def __init__(self, path: Path, log: Path, t0: float):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.t0 = t0
        self.lines: list[Line] = []
        self.cond = threading.Condition()
        self.closed = False
        self.log = open(log, "w", buffering=1)
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            *done, buf = buf.split(b"\n")
            with self.cond:
                for raw in done:
                    text = raw.decode("utf-8", "replace").rstrip("\r")
                    line = Line(time.monotonic() - self.t0, text)
                    self.lines.append(line)
                    self.log.write(f"{line.t:9.3f} {text}\n")
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def wait(self, pred, start: int, timeout: float) -> tuple[int, Line]:
        """First line at index >= start satisfying pred; (index, line)."""
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    why = "console closed" if self.closed else f"timeout {timeout}s"
                    raise GuestError(f"waiting for console line: {why}")
                self.cond.wait(left)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Qmp:
    """Minimal QMP client: one command at a time, events kept for the log."""

    # QEMU refuses a new record until the guest acked the previous one.
    NOT_ACKED = "OSPM does not acknowledge"
    MAX_RECORD = 1024  # acpi_ghes: "GHES CPER record is too big"

    def __init__(self, path: Path, log: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.sock.settimeout(30)
        self.file = self.sock.makefile("rwb")
        self.log = open(log, "a", buffering=1)
        self.events: list[dict] = []
        self.greeting = self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise GuestError("QMP connection closed")
        self.log.write("<- " + line.decode().rstrip() + "\n")
        return json.loads(line)

    def execute(self, cmd: str, **args) -> dict:
        """Returns the whole reply ({"return": ...} or {"error": ...})."""
        msg = {"execute": cmd, **({"arguments": args} if args else {})}
        self.log.write(f"-> {json.dumps(msg)}\n")
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            return reply

    def inject_ghes(self, record: bytes, timeout: float = 10.0) -> float:
        """inject-ghes-v2-error, guarding against QEMU 11.1.3's failure modes.

        Returns seconds spent (including retries while the guest has not
        acknowledged the previous record).
        """
        if len(record) > self.MAX_RECORD:
            raise ValueError(f"record is {len(record)} bytes; QEMU takes {self.MAX_RECORD}")
        if len(record) < 20 or int.from_bytes(record[:4], "little") == 0:
            # A zero block_status is never acked: it wedges injection until reboot.
            raise ValueError("record has a zero block_status")
        b64 = base64.b64encode(record).decode()
        # Invalid base64 aborts QEMU 11.1.3 (double error_setg): check our own.
        if base64.b64decode(b64, validate=True) != record:
            raise ValueError("base64 round trip failed")
        t0 = time.monotonic()
        delay = 0.05
        while True:
            reply = self.execute("inject-ghes-v2-error", cper=b64)
            if "return" in reply:
                return time.monotonic() - t0
            desc = reply.get("error", {}).get("desc", "")
            if self.NOT_ACKED not in desc or time.monotonic() - t0 > timeout:
                raise GuestError(f"inject-ghes-v2-error: {reply}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Share:
    tag: str
    path: Path
    readonly: bool = True
    passthrough: bool = False   # keep owners/modes (a rootfs); else "none"


# "max" signs and checks pointers (PAuth) with the architected QARMA5 cipher, which TCG
# computes in software at every signed return of the guest kernel (Debian builds it with
# pointer authentication). The implementation-defined cipher is as good for a guest that
# only needs PAuth to work, and measured here it boots in 7 s instead of 17, reads
# /proc/kallsyms in 1.1 s instead of 5.3 and compiles a bcc program in 18 s instead of 30.
CPU = "max,pauth-impdef=on"


@dataclass
class Guest:
    kernel: object              # build.Kernel
    initrd: Path
    qemu: object                # build.Qemu
    outdir: Path
    rootfs: Path | None = None
    rasd: Path | None = None    # checkout mounted at /rasd
    mem: str = "3G"             # HEST addresses depend on it: keep one value
    smp: int = 2
    append: str = ""
    machine: str = "virt,ras=on"
    qmp_enabled: bool = True
    extra_args: list = field(default_factory=list)
    boot_timeout: float = 120.0
    systemd: bool = False       # lab.mode=systemd: systemd is PID 1, commands run in the rootfs
    hostfwd: dict = field(default_factory=dict)   # {host port: guest port}, QEMU user net

    def __post_init__(self):
        self.outdir = Path(self.outdir)
        self.share = self.outdir / "share"
        self.proc: subprocess.Popen | None = None
        self.console: Console | None = None
        self.qmp: Qmp | None = None
        self._ids = 0

    # -- life cycle -------------------------------------------------------

    def command_line(self) -> list[str]:
        mode = "lab.mode=systemd systemd.show_status=0" if self.systemd else ""
        append = " ".join(["console=ttyAMA0 acpi=force loglevel=7 rdinit=/init panic=-1",
                           mode, self.append]).strip()
        if self.hostfwd:
            fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self.hostfwd.items())
            # romfile= : no iPXE option ROM (not in the QEMU tree, not needed)
            nic = ["-netdev", f"user,id=n0{fwd}", "-device", "virtio-net-pci,netdev=n0,romfile="]
        else:
            nic = ["-nic", "none"]
        argv = [*self.qemu.argv, "-M", self.machine, "-cpu", CPU, "-smp", str(self.smp),
                "-m", self.mem, "-bios", str(self.qemu.firmware),
                "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.initrd),
                "-append", append, "-display", "none", "-monitor", "none", *nic,
                "-no-reboot",
                "-chardev", f"socket,id=ser0,path={self._sock('serial')},server=on,wait=on,"
                            f"logfile={self.outdir / 'serial.log'}",
                "-serial", "chardev:ser0"]
        if self.qmp_enabled:
            argv += ["-qmp", f"unix:{self._sock('qmp')},server=on,wait=off"]
        for i, s in enumerate(self.shares()):
            model = "passthrough" if s.passthrough else "none"
            argv += ["-virtfs", f"local,path={s.path},mount_tag={s.tag},security_model={model},"
                                f"id=fs{i}" + (",readonly=on" if s.readonly else "")]
        return argv + list(self.extra_args)

    def shares(self) -> list[Share]:
        out = [Share("kmods", self.kernel.root / "lib/modules"),
               Share("lab", self.share, readonly=False)]
        if self.rootfs:
            out.append(Share("rootfs", self.rootfs, passthrough=True))
        if self.rasd:
            out.append(Share("rasd", self.rasd))
        return out

    def _sock(self, name: str) -> Path:
        # sun_path is 108 bytes: keep sockets out of deep evidence paths.
        d = Path("/run/rasd-lab")
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{os.getpid()}-{id(self):x}-{name}.sock"

    def start(self) -> "Guest":
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.share.mkdir(exist_ok=True)
        argv = self.command_line()
        (self.outdir / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
        for name in ("serial", "qmp"):
            self._sock(name).unlink(missing_ok=True)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env={**os.environ, **self.qemu.env},
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                     stdout=open(self.outdir / "qemu.stdout", "w"),
                                     stderr=open(self.outdir / "qemu.stderr", "w"))
        self._await_socket(self._sock("serial"))
        self.console = Console(self._sock("serial"), self.outdir / "console.log", self.t0)
        if self.qmp_enabled:
            self._await_socket(self._sock("qmp"))
            self.qmp = Qmp(self._sock("qmp"), self.outdir / "qmp.log")
        return self

    def _await_socket(self, path: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                err = (self.outdir / "qemu.stderr").read_text()
                raise GuestError(f"QEMU exited ({self.proc.returncode}): {err.strip()}")
            if time.monotonic() > deadline:
                raise GuestError(f"QEMU did not create {path}")
            time.sleep(0.02)

    def wait_ready(self) -> float:
        """Block until /init serves commands; returns seconds since QEMU start."""
        _, line = self.console.wait(lambda l: l.text.startswith("@@LAB-READY"), 0,
                                    self.boot_timeout)
        self.ready_at = line.t
        return line.t

    def close(self, timeout: float = 15.0) -> int:
        """Power off (politely if possible), then make sure QEMU is gone."""
        if self.proc and self.proc.poll() is None and self.console and not self.console.closed:
            try:
                off = b"systemctl poweroff -ff" if self.systemd else b"poweroff -f"
                self.console.send("@@RUN 0 " + base64.b64encode(off).decode())
            except OSError:
                pass
        try:
            rc = self.proc.wait(timeout) if self.proc else 0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        for c in (self.console, self.qmp):
            if c:
                c.close()
        for name in ("serial", "qmp"):
            self._sock(name).unlink(missing_ok=True)
        return rc

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- interaction ------------------------------------------------------

    def run(self, cmd: str, timeout: float = 60.0, check: bool = True,
            root: bool = False) -> CmdResult:
        """Run a shell command in the guest (root=True: chrooted in the rootfs)."""
        if root and not self.systemd:
            # Through a file: no quoting of arbitrary commands needed.
            cmd = (f"cat > /root/tmp/lab-cmd.sh <<'LAB_EOF'\n{cmd}\nLAB_EOF\n"
                   "chroot /root /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "
                   "HOME=/root LANG=C.UTF-8 /bin/sh /tmp/lab-cmd.sh")
        self._ids += 1
        cid = str(self._ids)
        encoded = base64.b64encode(cmd.encode()).decode()
        if len(encoded) > 3800:  # canonical tty line limit is 4095
            raise ValueError("command too long for the console; put it in the share")
        t0 = time.monotonic()
        start = len(self.console.lines)
        self.console.send(f"@@RUN {cid} {encoded}")
        # a kernel message printed at the same moment can run on in the marker's serial
        # line ("@@LAB-BEGIN 27[  202.89] {3}[Hardware Error]: ..."): match its start
        begin_rx = re.compile(rf"@@LAB-BEGIN {cid}(?!\d)")
        begin, _ = self.console.wait(lambda l: bool(begin_rx.match(l.text)), start, timeout)
        end, last = self.console.wait(lambda l: l.text.startswith(f"@@LAB-END {cid} "),
                                      begin, timeout - (time.monotonic() - t0))
        body = self.console.lines[begin + 1:end]
        # the status is the number right after the marker: a kernel message printed at the
        # same moment can run on in the same serial line ("@@LAB-END 7 0[ 12.3] ... ECC")
        rc = re.match(rf"@@LAB-END {cid} (-?\d+)", last.text)
        if rc is None:
            raise GuestError(f"unreadable end marker for command {cid}: {last.text!r}")
        res = CmdResult(cmd, int(rc.group(1)), [l.text for l in body if not l.kernel],
                        [l.text for l in body if l.kernel], time.monotonic() - t0)
        if check and res.rc != 0:
            raise GuestError(f"guest command failed (rc {res.rc}): {cmd}\n{res.text()}")
        return res

    def mark(self) -> int:
        """Console position, for waits on what happens after this point."""
        return len(self.console.lines)

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 30.0) -> Line:
        rx = re.compile(pattern)
        return self.console.wait(lambda l: bool(rx.search(l.text)), since, timeout)[1]

    def kernel_lines(self, since: int = 0) -> list[str]:
        return [l.text for l in self.console.lines[since:] if l.kernel]

    def grep(self, pattern: str, since: int = 0) -> list[str]:
        rx = re.compile(pattern)
        return [l.text for l in self.console.lines[since:] if rx.search(l.text)]

    def put(self, name: str, data: bytes) -> str:
        """Place a file in the shared directory; returns its guest path."""
        (self.share / name).write_bytes(data)
        return f"/lab/{name}"
