"""Run rasd inside a lab guest and read what it stored, exported and alerted.

    from rasd_guest import Rasd
    with ctx.guest(rootfs=True) as g:
        g.wait_ready()
        rasd = Rasd(g, evidence=ctx.out / "rasd")     # from the /rasd checkout
        rasd.start()                                   # waits for `rasdctl status`
        mark = rasd.event_mark()
        ...inject...
        evs = rasd.wait_events(lambda e: e["kind"] == "ghes", since=mark)
        incs = rasd.incidents()                        # rasdctl incidents --json
        m = rasd.metrics()                             # Metrics (Prometheus text, parsed)
        rasd.stop()

Three ways of running it (``how``):

- ``"checkout"`` (default): ``PYTHONPATH=/rasd python3 -m rasd.cli.daemon`` in the
  guest's rootfs chroot, with a config written to the share; alerts go to stderr
  (no journald in the shell-mode guest), which lands in ``<share>/rasd/rasd.log``.
- ``"deb"``: the package built by packaging/build-deb.sh (``build_deb()``) is
  ``dpkg -i``'d into the guest's tmpfs overlay, then ``/usr/bin/rasd`` is run
  the same way as "checkout" (no systemd).
- ``"systemd"``: the guest runs systemd as PID 1 (``lab.mode=systemd``); the
  package's own unit starts rasd (``dpkg -i`` enables and starts it); the config
  goes to /etc/rasd/rasd.toml; alerts land in the guest's journal.

Everything the guest writes for us goes through the 9p share (``/lab`` in the
guest, ``guest.share`` on the host) rather than the console, so long JSON never
mixes with kernel lines.  The SQLite store itself lives in the guest's tmpfs
(``store_path``): SQLite's WAL does not belong on 9p.  Queries (events,
incidents, show, summary) take a consistent copy with ``sqlite3 .backup`` in the
guest and run this checkout's ``rasdctl ... --json --db <copy>`` on the host:
the same code and the same store, but a TCG guest needs ~9 s just to import
rasdctl.  Readiness is still checked with ``rasdctl status --json`` in the guest.
``dump_evidence()`` keeps status, metrics, the store (copy + events/incidents
JSON), the log, the alerts and (systemd) the journal export.

Compile cache: rasd keeps compiled probes in /var/cache/rasd ([bpf] cache_dir), which
lives in the guest's tmpfs overlay. ``start()`` seeds it from this run's per-kernel host
directory (``bpf_cache_dir(abi)``) and copies back what a start wrote, so each kernel
compiles once per lab run (the first start proves the compile path) and every later
start, restart-gap's and other sessions' included, loads from the cache, as a host
restarting rasd on the same kernel does. ``loads`` records which path each start took.

Probe coverage: ``probe_fired()`` is the per-probe event count from the
``rasd_events_total{source=<probe>}`` metric, accumulated over restarts of the
daemon within this object; ``COVERAGE`` collects it per kernel for run.py's
table (``COVERAGE.add(...)``, ``COVERAGE.explain(...)``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))   # rasd.sources.probes (coverage), rasd.sinks.journal
METRICS_PORT = 10199
GUEST_DIR = "/lab/rasd"           # share subdirectory, as the guest sees it
STATE_DIR = "/var/lib/rasd"       # tmpfs overlay (shell mode) / StateDirectory (systemd)
RUNTIME_DIR = "/run/rasd"


class RasdError(AssertionError):
    """rasd did not start, answer or stop as expected; the message says what was seen."""


# ---------------------------------------------------------------------------------------
# Prometheus text format (enough of it for rasd's own endpoint)

_SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Metrics:
    """A parsed scrape: samples[(name, frozenset(labels.items()))] = value."""
    text: str
    samples: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        m = cls(text)
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            hit = _SAMPLE.match(line)
            if not hit:
                continue
            labels = frozenset((k, bytes(v, "utf-8").decode("unicode_escape"))
                               for k, v in _LABEL.findall(hit.group(2) or ""))
            try:
                m.samples[hit.group(1), labels] = float(hit.group(3))
            except ValueError:
                pass
        return m

    def get(self, name: str, **labels) -> float:
        """Sum of every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def series(self, name: str) -> list[tuple[dict, float]]:
        return [(dict(ls), v) for (n, ls), v in self.samples.items() if n == name]


# ---------------------------------------------------------------------------------------

def build_deb(outdir: Path, src: Path = REPO) -> Path:
    """packaging/build-deb.sh of the tree `src` into `outdir`; returns the .deb (rebuilt
    every call: it takes about a second)."""
    outdir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["bash", str(src / "packaging/build-deb.sh"), str(outdir)],
                         cwd=src, capture_output=True, text=True)
    if res.returncode != 0:
        raise RasdError(f"packaging/build-deb.sh failed ({res.returncode}):\n{res.stderr}")
    debs = sorted(outdir.glob("rasd_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise RasdError(f"build-deb.sh made no .deb in {outdir}: {res.stdout}")
    return debs[-1]


def headers_placeholder(outdir: Path) -> Path:
    """An arm64 package providing `linux-headers-arm64`, the metapackage rasd's Depends
    names.  The rootfs has the exact linux-headers-<abi>-arm64 of both lab kernels but
    not the metapackage (which would pin one ABI and pull the other out)."""
    pkg = outdir / "headers-placeholder"
    (pkg / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: rasd-lab-headers-placeholder\nVersion: 1\nArchitecture: arm64\n"
        "Maintainer: rasd lab <root@localhost>\nProvides: linux-headers-arm64\n"
        "Description: lab placeholder: the headers of both lab kernels are installed\n")
    deb = outdir / "headers-placeholder.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)],
                   check=True, capture_output=True)
    return deb


def lab_config(store_path: str = f"{STATE_DIR}/rasd.db", **overrides: dict) -> str:
    """rasd.toml for the lab: fast incident closing, no BERT surprises, a known store.

    `overrides` are sections: lab_config(journal={"rate_limit_per_key": 1})."""
    sections: dict[str, dict] = {
        "daemon": {"state_dir": STATE_DIR, "runtime_dir": RUNTIME_DIR, "log_level": "info",
                   "watchdog_fallback_s": 1},
        "correlate": {"window_s": 3},
        "store": {"path": store_path, "batch_ms": 100},
        "metrics": {"address": "0.0.0.0", "port": METRICS_PORT},
        # bcc's compile under TCG takes 1-2 min, and more on a loaded 2-core host (two
        # kernels' guests side by side): rasd's 120 s default is for real machines
        "bpf": {"loader_timeout_s": 900},
    }
    for sec, values in overrides.items():
        sections.setdefault(sec, {}).update(values)
    out = []
    for sec, values in sections.items():
        out.append(f"[{sec}]")
        out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


_BPF_CACHE_ROOT: Path | None = None
CACHE_GUEST = "/var/cache/rasd"    # rasd's default [bpf] cache_dir (the unit's CacheDirectory)
CACHE_GLOB = "*.bpfcache.json"


def bpf_cache_dir(abi: str) -> Path:
    """This lab run's host copy of one kernel's compiled-probe cache entries."""
    global _BPF_CACHE_ROOT
    if _BPF_CACHE_ROOT is None:
        import atexit
        import shutil
        import tempfile
        _BPF_CACHE_ROOT = Path(tempfile.mkdtemp(prefix="rasd-lab-bpfcache-"))
        atexit.register(shutil.rmtree, _BPF_CACHE_ROOT, True)
    d = _BPF_CACHE_ROOT / abi
    d.mkdir(exist_ok=True)
    return d


class Rasd:
    """One rasd in one guest (see the module docstring)."""

    def __init__(self, guest, *, how: str = "checkout", config: str | None = None,
                 evidence: Path | None = None, deb: Path | None = None,
                 store_path: str = f"{STATE_DIR}/rasd.db"):
        if how not in ("checkout", "deb", "systemd"):
            raise ValueError(f"how={how!r}")
        self.g = guest
        self.how = how
        self.config = config if config is not None else lab_config(store_path)
        self.evidence = Path(evidence) if evidence else guest.outdir / "rasd"
        self.deb = deb
        self.host_dir = guest.share / "rasd"          # = GUEST_DIR in the guest
        self.host_dir.mkdir(parents=True, exist_ok=True)
        self.store_path = store_path      # must match the config's store.path
        self.started = 0          # start() calls
        self.ready_s: list[float] = []
        self.status_doc: dict | None = None
        self._fired: dict[str, int] = {}   # probe -> events, over earlier daemon runs
        self._q = 0
        self.installed = False
        self.loader_retries = 1           # 0: never restart on a loader timeout
        self.retried: list[str] = []
        self.src = Path(guest.rasd) if guest.rasd else REPO   # the tree the guest runs
        self.loads: list[dict] = []       # per start: compile cache state and seconds


    # -- helpers ---------------------------------------------------------------------

    def sh(self, cmd: str, timeout: float = 120, check: bool = True):
        """A command in the rootfs (chroot in shell mode, directly under systemd)."""
        return self.g.run(cmd, timeout=timeout, check=check, root=True)

    def _rasdctl(self) -> str:
        if self.how == "checkout":
            return "PYTHONPATH=/rasd python3 -m rasd.cli.rasdctl"
        return "rasdctl"

    def _query(self, args: str, timeout: float = 120) -> str:
        """rasdctl ARGS with stdout into the share; returns the text."""
        self._q += 1
        name = f"q{self._q}.out"
        res = self.sh(f"{self._rasdctl()} {args} > {GUEST_DIR}/{name} 2> {GUEST_DIR}/{name}.err",
                      timeout=timeout, check=False)
        text = (self.host_dir / name).read_text()
        if res.rc != 0:
            err = (self.host_dir / f"{name}.err").read_text()
            raise RasdError(f"rasdctl {args}: exit {res.rc}: {err.strip()}")
        return text

    # -- life cycle -------------------------------------------------------------------

    def install(self, timeout: float = 400) -> None:
        """dpkg -i the package (how="deb"/"systemd"). Under systemd the postinst enables
        and starts rasd.service, so this returns once the unit is started (or failed)."""
        if self.installed or self.how == "checkout":
            return
        deb = self.deb or build_deb(self.g.outdir / "deb", self.src)
        placeholder = headers_placeholder(self.g.outdir / "deb")
        for p in (deb, placeholder):
            (self.g.share / p.name).write_bytes(p.read_bytes())
        if self.how == "systemd":
            self.seed_cache()
            (self.host_dir / "rasd.toml").write_text(self.config)
            # the conffile is ours before the package's first start reads it
            self.sh(f"mkdir -p /etc/rasd && cp {GUEST_DIR}/rasd.toml /etc/rasd/rasd.toml")
        res = self.sh(f"dpkg -i --force-confold /lab/{placeholder.name} /lab/{deb.name} "
                      f"> {GUEST_DIR}/dpkg.log 2>&1; echo dpkg-rc=$?", timeout=timeout,
                      check=False)
        log = (self.host_dir / "dpkg.log").read_text()
        if "dpkg-rc=0" not in res.text():
            raise RasdError(f"dpkg -i failed: {res.text()}\n{log[-3000:]}")
        self.installed = True

    def start(self, timeout: float = 420, retry: bool = True) -> dict:
        """Start the daemon and wait for its status socket; returns the status document.
        If its probe loader timed out (a busy TCG host), stop and start once more."""
        t0 = time.monotonic()
        self.started += 1
        if self.how != "systemd" or self.installed:
            self.seed_cache()            # (install() seeds before the postinst starts rasd)
        if self.how == "systemd":
            if not self.installed:
                self.install(timeout)          # postinst starts the unit
            else:
                self.sh("systemctl start --no-block rasd")
        else:
            if self.how == "deb":
                self.install(timeout)
            (self.host_dir / "rasd.toml").write_text(self.config)
            exe = ("PYTHONPATH=/rasd exec python3 -m rasd.cli.daemon" if self.how == "checkout"
                   else "exec /usr/bin/rasd")
            # loopback for the metrics endpoint; setsid: outlives the command's shell
            (self.host_dir / "rasd.pid").unlink(missing_ok=True)   # a stopped run's pid
            self.sh("ip link set lo up 2>/dev/null; mkdir -p /var/lib/rasd; "
                    f"cd / && setsid -f sh -c '{exe} --config {GUEST_DIR}/rasd.toml "
                    f">> {GUEST_DIR}/rasd.log 2>&1 & echo $! > {GUEST_DIR}/rasd.pid.new && "
                    f"mv {GUEST_DIR}/rasd.pid.new {GUEST_DIR}/rasd.pid'")
            self._wait_pid_file(t0)
        doc = self.wait_ready(timeout - (time.monotonic() - t0))
        self.ready_s.append(round(time.monotonic() - t0, 1))
        self.note_load(doc)
        if retry and self.loader_retries > 0 and self.loader_timed_out(doc):
            # rasd gives its bcc compile 120 s; a TCG guest on a loaded 2-core host can
            # need more. That is the host's slowness, not rasd's: start it once more.
            self.retried.append(f"start {self.started}: probe loader timed out; restarted")
            self.stop()
            return self.start(timeout, retry=False)
        return doc

    def _wait_pid_file(self, t0: float, timeout: float = 60) -> None:
        """`setsid -f` returns before its child has started rasd and written the pid:
        asking alive() before then reads "no pid" as "exited" (CI saw that on a loaded
        host, with an empty log). The file is renamed into place, so it is never half-written."""
        pid_file = self.host_dir / "rasd.pid"
        while not pid_file.exists():
            if time.monotonic() - t0 > timeout:
                raise RasdError(f"rasd's launcher wrote no pid file in {timeout:.0f}s:\n"
                                f"{self.log()[-3000:]}")
            time.sleep(0.2)

    def seed_cache(self) -> None:
        """Put this run's entries for the guest's kernel where rasd looks for them."""
        entries = list(bpf_cache_dir(self.g.kernel.abi).glob(CACHE_GLOB))
        if not entries:
            return
        seed = self.host_dir / "bpf-cache-seed"
        seed.mkdir(exist_ok=True)
        for e in entries:
            (seed / e.name).write_bytes(e.read_bytes())
        self.sh(f"mkdir -p {CACHE_GUEST} && chmod 700 {CACHE_GUEST} && "
                f"cp {GUEST_DIR}/bpf-cache-seed/{CACHE_GLOB} {CACHE_GUEST}/ && "
                f"chmod 600 {CACHE_GUEST}/{CACHE_GLOB}")

    def note_load(self, doc: dict) -> None:
        """Which path loaded the probes; keep what a compile wrote for later starts."""
        loader = doc.get("loader") or {}
        self.loads.append({"cache": loader.get("cache"),
                           "compile_s": round(loader.get("compile_s", 0), 1),
                           "cache_load_s": round(loader.get("cache_load_s", 0), 1),
                           # why an entry was unusable or not written, when it was
                           "notes": [n for n in doc.get("notes") or [] if "cache" in n]})
        if "written" not in (loader.get("cache") or ""):
            return
        out = f"{GUEST_DIR}/bpf-cache-out"
        self.sh(f"mkdir -p {out} && cp {CACHE_GUEST}/{CACHE_GLOB} {out}/", check=False)
        for e in (self.host_dir / "bpf-cache-out").glob(CACHE_GLOB):
            (bpf_cache_dir(self.g.kernel.abi) / e.name).write_bytes(e.read_bytes())

    @staticmethod
    def loader_timed_out(doc: dict) -> bool:
        return any("loader child: timed out" in n for n in doc.get("notes") or [])

    def wait_ready(self, timeout: float = 420) -> dict:
        """Wait for the status socket (rasd binds it once BERT is read and the probes are
        loaded), then ask `rasdctl status --json` in the guest, as an operator would."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.sh(f"test -S {RUNTIME_DIR}/status.sock", check=False, timeout=60)
            if res.rc == 0:
                break
            if not self.alive():
                raise RasdError(f"rasd exited before it was ready:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RasdError(f"rasd not ready after {timeout:.0f}s (no status socket):\n"
                                f"{self.log()[-3000:]}")
            time.sleep(2)
        while True:   # the socket file may be a dead daemon's: retry until it answers
            try:
                self.status_doc = json.loads(self._query(
                    f"status --json --runtime-dir {RUNTIME_DIR}", timeout=120))
                return self.status_doc
            except (RasdError, ValueError) as exc:
                if not self.alive() or time.monotonic() > deadline:
                    raise RasdError(f"rasdctl status: {exc}\n{self.log()[-3000:]}") from None
            time.sleep(3)

    def alive(self) -> bool:
        if self.how == "systemd":
            res = self.sh("systemctl is-active rasd", check=False)
            return res.text().strip() in ("active", "activating", "reloading")
        pid = (self.host_dir / "rasd.pid").read_text().strip() \
            if (self.host_dir / "rasd.pid").exists() else ""
        return bool(pid) and self.sh(f"kill -0 {pid}", check=False).rc == 0

    def stop(self, timeout: float = 90) -> None:
        """SIGTERM (systemctl stop) and wait until gone; counts its probe events first."""
        try:
            self._fold_fired(self.metrics())
        except (RasdError, OSError):
            pass
        if self.how == "systemd":
            self.sh("systemctl stop rasd", timeout=timeout)
            return
        pid = (self.host_dir / "rasd.pid").read_text().strip()
        self.sh(f"kill -TERM {pid}; i=0; while kill -0 {pid} 2>/dev/null; do "
                f"i=$((i+1)); [ $i -gt {int(timeout * 5)} ] && exit 1; sleep 0.2; done",
                timeout=timeout + 30)

    # -- what rasd says ---------------------------------------------------------------

    def status(self) -> dict:
        """The daemon's status document (what `rasdctl status --json` prints), read from
        its socket by a bare python3 in the guest: rasdctl's imports cost ~9 s under TCG."""
        self._q += 1
        name = f"status{self._q}.json"
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(30); "
                f"s.connect('{RUNTIME_DIR}/status.sock'); b=b''\n"
                "while True:\n c=s.recv(65536)\n if not c: break\n b+=c\n"
                "sys.stdout.write(b.decode())")
        (self.host_dir / "status.py").write_text(code)
        res = self.sh(f"python3 {GUEST_DIR}/status.py > {GUEST_DIR}/{name}", check=False,
                      timeout=90)
        if res.rc != 0:
            raise RasdError(f"status socket: {res.text()}")
        self.status_doc = json.loads((self.host_dir / name).read_text())
        return self.status_doc

    def snapshot(self) -> Path:
        """A consistent copy of the store (sqlite3 .backup in the guest) in the share."""
        self._q += 1
        name = f"snap{self._q}.db"
        self.sh(f"sqlite3 {shlex.quote(self.store_path)} '.backup /tmp/rasd-snap.db' && "
                f"cp /tmp/rasd-snap.db {GUEST_DIR}/{name} && rm -f /tmp/rasd-snap.db",
                timeout=120)
        for old in self.host_dir.glob("snap*.db"):
            if old.name != name:
                old.unlink(missing_ok=True)
        return self.host_dir / name

    def rasdctl(self, *args: str, snapshot: Path | None = None) -> str:
        """rasdctl ARGS --db <a snapshot of the guest's store>, run on the host from this
        checkout (same code as in the guest; ~0.3 s instead of ~9 s)."""
        db = snapshot or self.snapshot()
        res = subprocess.run([sys.executable, "-m", "rasd.cli.rasdctl", *args, "--db", str(db)],
                             cwd=self.src, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RasdError(f"rasdctl {' '.join(args)}: exit {res.returncode}: "
                            f"{res.stderr.strip()}")
        return res.stdout

    def events(self, *args: str, snapshot: Path | None = None) -> list[dict]:
        """`rasdctl events --json ARGS` (oldest first; each has "id", "kind", ...)."""
        text = self.rasdctl("events", "--json", *args, snapshot=snapshot)
        return [json.loads(l) for l in text.splitlines() if l.strip()]

    def incidents(self, *args: str, snapshot: Path | None = None) -> list[dict]:
        text = self.rasdctl("incidents", "--json", *args, snapshot=snapshot)
        return [json.loads(l) for l in text.splitlines() if l.strip()]

    def show(self, ident: int | str, snapshot: Path | None = None) -> dict:
        return json.loads(self.rasdctl("show", "--json", str(ident), snapshot=snapshot))

    def summary(self, snapshot: Path | None = None) -> dict:
        return json.loads(self.rasdctl("summary", "--json", snapshot=snapshot))

    def event_mark(self) -> int:
        """Highest stored event id now: pass as `since` to tell a scenario's events
        apart (ids only grow, across restarts too)."""
        evs = self.events("--limit", "1")
        return evs[-1]["id"] if evs else 0

    def incident_mark(self) -> int:
        return max((i["id"] for i in self.incidents()), default=0)

    def wait_events(self, pred: Callable[[list[dict]], bool], since: int = 0,
                    timeout: float = 60, what: str = "events") -> list[dict]:
        """Events with id > since, polled until pred(events) holds."""
        def stored(evs: list[dict]) -> str:
            kinds: dict = {}
            for e in evs:
                kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
            return f"stored since event {since}: {kinds}"
        return _poll_new(self.events, pred, since, timeout, what, stored)

    def wait_incidents(self, pred: Callable[[list[dict]], bool], since: int = 0,
                       timeout: float = 60, what: str = "incidents") -> list[dict]:
        """Incidents with id > since, polled until pred(incidents) holds."""
        def brief(incs: list[dict]) -> str:
            return f"incidents since {since}: " + \
                str([(i["id"], i["kind"], i.get("closed")) for i in incs])
        return _poll_new(self.incidents, pred, since, timeout, what, brief)

    def metrics(self, save_as: str | None = None) -> Metrics:
        """Scrape /metrics: from the host through QEMU's hostfwd when the guest has one
        for the metrics port, else inside the guest (busybox wget / python3)."""
        self._q += 1
        name = save_as or f"metrics{self._q}.txt"
        host_port = next((h for h, gp in self.g.hostfwd.items() if gp == METRICS_PORT), None)
        if host_port is not None:
            import urllib.request
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{host_port}/metrics",
                                              timeout=30).read().decode()
            except OSError as exc:
                raise RasdError(f"metrics scrape through hostfwd :{host_port}: {exc}") from None
            (self.host_dir / name).write_text(text)
            return Metrics.parse(text)
        # (busybox's static wget segfaults in these guests: python3 it is)
        (self.host_dir / "scrape.py").write_text(
            "import sys, urllib.request\n"
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics',"
            " timeout=30).read().decode())\n")
        res = self.sh(f"python3 {GUEST_DIR}/scrape.py > {GUEST_DIR}/{name}", check=False,
                      timeout=90)
        if res.rc != 0:
            raise RasdError(f"metrics scrape failed: {res.text()}")
        return Metrics.parse((self.host_dir / name).read_text())

    def log(self) -> str:
        """The daemon's stderr (shell modes) or its journal lines (systemd)."""
        if self.how == "systemd":
            self.sh(f"journalctl -u rasd -o short-monotonic --no-pager > {GUEST_DIR}/journal-rasd.txt",
                    check=False)
            p = self.host_dir / "journal-rasd.txt"
        else:
            p = self.host_dir / "rasd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def alerts(self) -> list[dict]:
        """Alerts rasd sent: journal entries with RASD_ALERT_KIND (systemd), or the
        `rasd alert <prio> message [K=V ...]` lines of its stderr."""
        if self.how == "systemd":
            self.sh(f"journalctl -o json --no-pager SYSLOG_IDENTIFIER=rasd "
                    f"> {GUEST_DIR}/journal-alerts.json", check=False)
            out = []
            for line in (self.host_dir / "journal-alerts.json").read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if "RASD_ALERT_KIND" in entry:
                    out.append(entry)
            return out
        out = []
        for line in self.log().splitlines():
            m = re.match(r"rasd alert <(\d)> (.*?) \[(.*)\]$", line)
            if m:
                entry = {"PRIORITY": m.group(1), "MESSAGE": m.group(2)}
                entry.update(re.findall(r"(RASD_\w+)=(.*?)(?= RASD_\w+=|$)", m.group(3)))
                out.append(entry)
        return out

    # -- coverage and evidence ----------------------------------------------------------

    def _fold_fired(self, m: Metrics) -> None:
        for labels, v in m.series("rasd_events_total"):
            src = labels.get("source", "")
            self._fired[src] = self._fired.get(src, 0) + int(v)

    def probe_fired(self) -> dict[str, int]:
        """Events per source probe over every run of this daemon (incl. the live one)."""
        out = dict(self._fired)
        try:
            live = self.metrics()
        except RasdError:
            return out
        for labels, v in live.series("rasd_events_total"):
            src = labels.get("source", "")
            out[src] = out.get(src, 0) + int(v)
        return out

    def dump_evidence(self, dest: Path | None = None, tag: str = "", status: bool = True,
                      store: bool = True, journal: bool = True) -> Path:
        """Status, metrics, the store (copy, events and incidents JSON), log, alerts and
        (systemd) the journal export into `dest` (each part can be left out: a TCG guest
        takes seconds for each)."""
        dest = Path(dest or self.evidence)
        dest.mkdir(parents=True, exist_ok=True)
        sfx = f"-{tag}" if tag else ""

        def keep(name: str, fn) -> None:
            try:
                data = fn()
                (dest / name).write_text(data if isinstance(data, str)
                                         else json.dumps(data, indent=1))
            except Exception as exc:  # noqa: BLE001 - evidence is best effort
                (dest / (name + ".error")).write_text(f"{type(exc).__name__}: {exc}\n")

        if status:
            keep(f"status{sfx}.json", self.status)
        keep(f"metrics{sfx}.txt", lambda: self.metrics().text)
        snap = None
        try:
            snap = self.snapshot() if store else None
        except Exception as exc:  # noqa: BLE001
            (dest / f"store{sfx}.error").write_text(f"{type(exc).__name__}: {exc}\n")
        if snap is not None:
            import shutil
            shutil.copy(snap, dest / f"store{sfx}.db")
            keep(f"events{sfx}.jsonl", lambda: "".join(json.dumps(e) + "\n"
                                                       for e in self.events(snapshot=snap)))
            keep(f"incidents{sfx}.jsonl", lambda: "".join(
                json.dumps(i) + "\n" for i in self.incidents(snapshot=snap)))
        keep(f"rasd{sfx}.log", self.log)
        if store:
            keep(f"alerts{sfx}.json", self.alerts)
        if self.how == "systemd" and journal:
            keep(f"journal{sfx}.export", self.journal_export)
        return dest

    def journal_export(self) -> str:
        """The guest's whole journal in export format (systemd guests)."""
        self.sh(f"journalctl -o export --no-pager > {GUEST_DIR}/journal.export", check=False)
        return (self.host_dir / "journal.export").read_text(errors="replace")


# ---------------------------------------------------------------------------------------
# Probe coverage across scenarios and kernels (run.py prints it)

def probe_of_source(source: str) -> tuple[str, str | None]:
    """Event source -> (probe, path).  A tracepoint's entries reach rasd twice, through
    its BPF program and through its tracefs instance; the first copy is kept and the
    other counted as a duplicate, so a stored "tracefs:ras:arm_event" event is the
    arm_event probe's tracepoint firing, delivered by the instance."""
    if source.startswith("tracefs:"):
        key = source.split(":", 1)[1]
        from rasd.sources.probes import PROBES
        for p in PROBES:
            if key in p.events:
                return p.name, "tracefs instance"
    return source, None


@dataclass
class Coverage:
    """kernel -> probe -> {"symbol", "status", "reason", "fired": {scenario: n}, "why"}.

    add(): a daemon's probe table (its status document) and its per-probe event counts,
    under the name of the scenario/session that drove them.  explain(): why a probe
    cannot fire on that kernel in this lab (shown when it did not fire).  Other
    scenario modules (the nested-KVM ones) call the same two methods."""
    table: dict = field(default_factory=dict)

    def add(self, kernel: str, scenario: str, status_doc: dict | None,
            fired: dict[str, int]) -> None:
        probes = self.table.setdefault(kernel, {})
        for p in (status_doc or {}).get("probes", []):
            row = probes.setdefault(p["probe"], {"fired": {}, "why": None})
            # keep the best state seen: attached beats anything else
            if row.get("status") != "attached":
                row.update(symbol=p.get("symbol"), status=p.get("status"),
                           reason=p.get("reason"), kind=p.get("kind"))
        for source, n in fired.items():
            if not n:
                continue
            probe, via = probe_of_source(source)
            row = probes.setdefault(probe, {"fired": {}, "why": None})
            label = scenario + (f" (via {via})" if via else "")
            row["fired"][label] = row["fired"].get(label, 0) + n

    def explain(self, kernel: str, probe: str, why: str, fallback: bool = False) -> None:
        """Why `probe` cannot fire on `kernel` here.  fallback=True: only if nobody gives
        a better reason (e.g. "covered elsewhere" from a session that does not try)."""
        row = self.table.setdefault(kernel, {}).setdefault(probe, {"fired": {}, "why": None})
        key = "fallback" if fallback else "why"
        if not row.get(key):
            row[key] = why

    def rows(self) -> list[dict]:
        out = []
        for kernel, probes in sorted(self.table.items()):
            for probe, r in probes.items():
                fired = sum(r["fired"].values())
                status = r.get("status")
                why = r.get("why") or r.get("fallback")
                if status not in ("attached", None) and r.get("reason"):
                    # rasd's own reason (missing symbol, hot path without fentry, ...)
                    why = f"{status}: {r['reason']}" + (f"; {r['why']}" if r.get("why") else "")
                if fired:
                    verdict = "fired"
                elif why:
                    verdict = "explained"
                elif status in ("missing_symbol", "wrong_arch"):
                    verdict = "no target"
                else:
                    verdict = "UNEXPLAINED"
                out.append({"kernel": kernel, "probe": probe, "symbol": r.get("symbol"),
                            "status": r.get("status"), "reason": r.get("reason"),
                            "fired": fired, "scenarios": sorted(r["fired"]),
                            "why_not": None if fired else why,
                            "verdict": verdict})
        return out

    def unexplained(self) -> list[dict]:
        return [r for r in self.rows() if r["verdict"] == "UNEXPLAINED"]

    def format(self) -> str:
        lines = [f"{'kernel':6} {'probe':26} {'symbol':24} {'status':15} {'fired':>6}  note"]
        for r in self.rows():
            note = ",".join(r["scenarios"]) if r["fired"] else (r["why_not"] or "")
            lines.append(f"{r['kernel']:6} {r['probe']:26} {(r['symbol'] or '-')[:24]:24} "
                         f"{(r['status'] or '-'):15} {r['fired']:6}  "
                         f"{'' if r['verdict'] in ('fired', 'explained') else r['verdict'] + ': '}"
                         f"{note}")
        return "\n".join(lines)


COVERAGE = Coverage()


def _poll_new(fetch: Callable[[], list[dict]], pred: Callable[[list[dict]], bool], since: int,
              timeout: float, what: str, describe: Callable[[list[dict]], str]) -> list[dict]:
    """Rows with id > since from fetch(), polled once a second until pred(rows) holds;
    a timeout says what was there."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in fetch() if r["id"] > since]
        if pred(rows):
            return rows
        if time.monotonic() > deadline:
            raise RasdError(f"timeout {timeout:.0f}s waiting for {what}; {describe(rows)}")
        time.sleep(1)
