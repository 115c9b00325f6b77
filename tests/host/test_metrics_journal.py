"""Operator interfaces for real: a Prometheus scrape of the running daemon checked by
promtool, the port-in-use and TLS cases, and alerts through a real journald read back
with journalctl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rasd.events import Incident
from rasd.sinks.journal import MESSAGE_IDS, JournalAlerts
from rasd.sinks.metrics import Metrics
from rasd.status import query

ROOT = Path(__file__).resolve().parents[2]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loads eBPF programs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(tmp: Path, port: int, extra: str = "") -> subprocess.Popen:
    cfg = tmp / "rasd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp}/state"\nruntime_dir = "{tmp}/run"\n'
                   f'watchdog_fallback_s = 0.5\n[bert]\npath = "{tmp}/none"\n'
                   f'[metrics]\naddress = "127.0.0.1"\nport = {port}\n{extra}')
    return subprocess.Popen([sys.executable, "-m", "rasd.cli.daemon", "--config", str(cfg)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)


def wait_for(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    return proc.stderr.read()


@root_only
def test_scrape_passes_promtool(tmp_path):
    port = free_port()
    proc = start_daemon(tmp_path, port)
    try:
        text = wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                       timeout=5).read().decode(), what="scrape")
    finally:
        stop(proc)
    assert 'rasd_probe_status{probe="arm_event",status="attached"} 1.0' in text or \
        not Path("/sys/kernel/tracing/events/ras/arm_event").exists()
    assert 'rasd_lost_events_total{stage="kernel_ringbuf"} 0.0' in text
    assert "rasd_build_info{" in text and "_created" not in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool missing (Debian package prometheus)")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0 and check.stdout == "" and check.stderr == "", check


@root_only
def test_port_in_use_is_a_clear_error_and_the_daemon_recovers(tmp_path):
    port = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    proc = start_daemon(tmp_path, port)
    try:
        status = wait_for(lambda: query(tmp_path / "run"), what="status")
        assert f"127.0.0.1:{port} unavailable" in status["metrics"]
        assert proc.poll() is None  # running: events are still taken and alerted
        blocker.close()
        wait_for(lambda: query(tmp_path / "run")["metrics"] == "ok", what="metrics rebind")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"rasd_build_info" in text
    finally:
        blocker.close()
        err = stop(proc)
    assert f"metrics endpoint 127.0.0.1:{port} unavailable" in err
    assert err.count(f"{port} unavailable") == 1  # said once, not on every retry


def test_tls_endpoint(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl missing")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    m = Metrics()
    port = free_port()
    m.serve("127.0.0.1", port, str(cert), str(key))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx,
                                      timeout=5).read()
        assert b"rasd_build_info" in body
        with pytest.raises(Exception):  # plain HTTP is refused on a TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        m.stop()


def test_labels_are_bounded():
    m = Metrics(max_location_labels=3)
    from rasd import events as ev
    from rasd.decode import cper
    from rasd.encode import cper as enc
    from rasd.events import Event
    for module in range(10):
        rec = cper.decode(enc.encode_status_block([enc.section(
            enc.memory_error(physical_addr=0x1000 * (module + 1), node=0, module=module),
            enc.CORRECTED)]))
        m.handle(Event(kind=ev.GHES, source="ghes_do_proc", wall_ns=1, cper=rec,
                       severity="corrected"))
    from prometheus_client import generate_latest
    text = generate_latest(m.registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("rasd_memory_errors_total{")]
    assert len(lines) == 4  # 3 distinct locations + "_other"
    assert 'location="_other",severity="corrected"} 7.0' in text
    assert 'rasd_label_overflow_total{label="location"} 7.0' in text


def incident(i: int, kind="uncorrected_memory", severity="recoverable", **kw) -> Incident:
    inc = Incident(kind=kind, key=f"page:{i}", first_wall_ns=1, last_wall_ns=2,
                   severity=severity, containment="page_isolated", id=i,
                   summary=f"Uncorrected memory error at PA {i:#x}", closed=True, **kw)
    for kind in ("sea_claim", "ghes", "memory_failure"):
        inc.add_member(None, kind)
    return inc


def journal_entries(field: str, value: str, expect: int, timeout: float = 10.0) -> list[dict]:
    def read():
        out = subprocess.run(["journalctl", "-o", "json", "--no-pager", f"{field}={value}"],
                             capture_output=True, text=True, timeout=30)
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        return rows if len(rows) >= expect else None
    return wait_for(read, timeout, f"{expect} journal entries with {field}={value}")


def test_alerts_reach_journald_with_fields(journald):
    tag = f"rasd-test-{os.getpid()}-{time.monotonic_ns()}"
    alerts = JournalAlerts()
    assert alerts.send.__name__ == "send"  # journald is there: not the stderr fallback
    inc = incident(int.from_bytes(os.urandom(6), "little"), pfn=0x812345, phys_addr=0x812345000,
                   location={"node": 0, "module": 3},
                   vm={"name": "vm1", "tgid": 4242, "vcpu": 2},
                   blast_radius={"scope": "cgroup", "summary": "anonymous page of qemu[4242]"})
    inc.summary = tag
    alerts.incident(inc)
    (entry,) = journal_entries("RASD_INCIDENT_ID", str(inc.id), 1)
    assert entry["MESSAGE_ID"] == MESSAGE_IDS["uncorrected_memory"]
    assert entry["PRIORITY"] == "4" and entry["SYSLOG_IDENTIFIER"] == "rasd"
    assert entry["RASD_SEVERITY"] == "recoverable"
    assert entry["RASD_PHYS_ADDR"] == "0x812345000" and entry["RASD_PFN"] == "0x812345"
    assert entry["RASD_LOCATION"] == "node=0 module=3" and entry["RASD_VM"] == "vm1"
    assert entry["RASD_BLAST_RADIUS"] == "cgroup"
    assert tag in entry["MESSAGE"]


def test_one_alert_per_incident_and_storms_are_rate_limited(journald):
    alerts = JournalAlerts(rate_limit=3, interval_s=3600)
    base = 0x7000_0000 + (os.getpid() << 8)
    for i in range(10):  # a storm on one location: 10 incidents, same alert key
        inc = incident(base + i, kind="corrected_memory", severity="corrected",
                       location={"node": 9, "module": os.getpid() % 1000})
        alerts.incident(inc)
        alerts.incident(inc)  # the same incident again: never a second alert
    assert alerts.sent == 3 and sum(alerts.suppressed.values()) == 7
    rows = journal_entries("RASD_ALERT_KIND", "corrected_memory", 3)
    mine = [r for r in rows if int(r["RASD_INCIDENT_ID"]) in range(base, base + 10)]
    assert len(mine) == 3
    assert {r["PRIORITY"] for r in mine} == {"5"}


def test_open_incidents_wait_unless_critical():
    sent = []
    alerts = JournalAlerts(send=lambda **f: sent.append(f))
    open_ce = incident(1, kind="corrected_memory", severity="corrected")
    open_ce.closed = False
    alerts.incident(open_ce)
    assert sent == []
    critical = incident(2, kind="unlocatable_memory_corruption", severity="critical")
    critical.closed = False
    alerts.incident(critical)
    critical.closed = True
    alerts.incident(critical)
    assert [f["RASD_INCIDENT_ID"] for f in sent] == ["2"] and sent[0]["PRIORITY"] == "2"


def test_catalog_covers_every_alert_kind_and_journalctl_reads_it(tmp_path):
    catalog = ROOT / "etc/catalog/rasd.catalog"
    text = catalog.read_text()
    for kind, mid in MESSAGE_IDS.items():
        assert f"-- {mid}\n" in text, kind
    if shutil.which("journalctl") is None or os.geteuid() != 0:
        pytest.skip("needs journalctl and root")
    target = tmp_path / "usr/lib/systemd/catalog"
    target.mkdir(parents=True)
    shutil.copy(catalog, target / "rasd.catalog")
    (tmp_path / "var/lib/systemd/catalog").mkdir(parents=True)
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True,
                   capture_output=True, timeout=60)
    listed = subprocess.run(["journalctl", f"--root={tmp_path}", "--list-catalog"],
                            capture_output=True, text=True, timeout=60).stdout
    for mid in MESSAGE_IDS.values():
        assert mid in listed
    dumped = subprocess.run(["journalctl", f"--root={tmp_path}", "--dump-catalog",
                             MESSAGE_IDS["unlocatable_memory_corruption"]],
                            capture_output=True, text=True, timeout=60).stdout
    assert "drain the host" in dumped


def test_alert_survives_a_journald_that_refuses(tmp_path, capsys):
    """A journald restarting leaves its socket file with nobody behind it: the kernel refuses
    the datagram. The alert goes to stderr instead, is counted, and the next one is tried."""
    stale = tmp_path / "socket"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody reads it

    def send_to_stale(**fields):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(f"MESSAGE={fields['MESSAGE']}".encode(), str(stale))

    outcomes = []
    alerts = JournalAlerts(send=send_to_stale, on_outcome=lambda k, o: outcomes.append((k, o)))
    for i in range(2):
        alerts.incident(incident(0x100 + i, kind="uncorrected_memory", severity="uncorrected",
                                 location={"node": 0, "module": i}))
    assert alerts.send_failures == 2 and alerts.sent == 0
    assert outcomes == [("uncorrected_memory", "stderr")] * 2
    err = capsys.readouterr().err
    assert err.count("rasd alert <3>") == 2 and "module=1" in err
