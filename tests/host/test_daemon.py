"""The daemon on this host's real kernel: bcc compiles and loads, the ras:* tracepoints
that exist here attach, the arm64-only probes are reported with the right reason,
status is served, SIGHUP reloads (refusing a bad config), SIGTERM stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rasd.status import query

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: loads eBPF programs")


def write_config(path: Path, tmp: Path, extra: str = "") -> Path:
    path.write_text(f"""
[daemon]
state_dir = "{tmp / 'state'}"
runtime_dir = "{tmp / 'run'}"
log_level = "info"
[bert]
path = "{tmp / 'no-bert'}"
{extra}
""")
    return path


def start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rasd.cli.daemon", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_status(run_dir: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"rasd exited {proc.returncode}: {proc.stderr.read()}")
        try:
            return query(run_dir, timeout=2)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("rasd never served status")


@pytest.fixture
def daemon(tmp_path):
    cfg = write_config(tmp_path / "rasd.toml", tmp_path)
    proc = start(cfg)
    yield proc, tmp_path, cfg
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_starts_serves_status_and_stops_cleanly(daemon):
    proc, tmp, _ = daemon
    status = wait_status(tmp / "run", proc)
    probes = {p["probe"]: p for p in status["probes"]}
    here = Path("/sys/kernel/tracing/events/ras")
    for name in ("arm_event", "mc_event", "non_standard_event"):
        if (here / name).exists():
            assert probes[name]["status"] == "attached", probes[name]
    for name in ("ghes_do_proc", "apei_claim_sea", "do_serror", "kvm_handle_guest_abort"):
        if os.uname().machine != "aarch64":
            assert probes[name]["status"] == "wrong_arch"
            assert "arm64 only" in probes[name]["reason"]
    if not Path("/sys/kernel/tracing/events/ras/memory_failure_event").exists():
        assert probes["memory_failure_event"]["status"] == "missing_symbol"
    assert status["counters"]["lost_kernel"] == 0
    assert status["pid"] == proc.pid

    # rasdctl status reads the same socket
    out = subprocess.run([sys.executable, "-m", "rasd.cli.rasdctl", "status", "--runtime-dir",
                          str(tmp / "run")], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "arm_event" in out.stdout and "wrong_arch" in out.stdout

    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert time.monotonic() - t0 < 10
    assert not (tmp / "run" / "status.sock").exists()
    assert "rasd stopped" in proc.stderr.read()


def test_sighup_reloads_and_refuses_a_bad_config(daemon):
    proc, tmp, cfg = daemon
    wait_status(tmp / "run", proc)
    cfg.write_text(cfg.read_text() + "\n[bpf]\nringbuf_pages = 3\n")  # not a power of two
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None  # a bad reload never stops the daemon
    write_config(cfg, tmp)
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    status = query(tmp / "run")
    assert status["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    err = proc.stderr.read()
    assert "reload refused, keeping the running config" in err and "ringbuf_pages" in err
    assert "config reloaded" in err


def test_bad_config_exits_78(tmp_path):
    cfg = tmp_path / "rasd.toml"
    cfg.write_text("[daemon]\nno_such_key = 1\n")
    out = subprocess.run([sys.executable, "-m", "rasd.cli.daemon", "--config", str(cfg)],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 78
    assert "daemon.no_such_key" in out.stderr


def test_once_prints_the_status_document(tmp_path):
    cfg = write_config(tmp_path / "rasd.toml", tmp_path)
    out = subprocess.run([sys.executable, "-m", "rasd.cli.daemon", "--config", str(cfg), "--once"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert any(p["status"] == "attached" for p in doc["probes"])
    assert doc["features"]["btf"] == Path("/sys/kernel/btf/vmlinux").exists()
    # the embedded default store lives in the state dir and is usable by rasdctl
    assert doc["store"]["available"] and doc["store"]["path"] == str(tmp_path / "state/rasd.db")
    out = subprocess.run([sys.executable, "-m", "rasd.cli.rasdctl", "summary", "--db",
                          doc["store"]["path"], "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_restart_on_the_same_kernel_loads_from_the_compile_cache(tmp_path):
    """The second start finds the first one's compiled probes: no clang, same table."""
    cfg = write_config(tmp_path / "rasd.toml", tmp_path,
                       f'[bpf]\ncache_dir = "{tmp_path / "cache"}"\n')
    docs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "rasd.cli.daemon", "--config", str(cfg),
                              "--once"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        docs.append(json.loads(out.stdout))
    first, second = (d["loader"] for d in docs)
    assert first["cache"] == "miss, written" and first["compile_s"] > 0
    assert second["cache"] == "hit" and second["compile_s"] == 0
    assert "compile cache: hit" in out.stderr

    def table(doc):
        return {p["probe"]: (p["status"], p["kind"]) for p in doc["probes"]}
    assert table(docs[1]) == table(docs[0])
    assert any(s == "attached" for s, _ in table(docs[1]).values())
