"""packaging/rasd.service checked by the real systemd tools.

- ``systemd-analyze verify`` must be silent: the unit is verified inside a scratch
  root that holds the host's own unit directory (so sysinit.target & co. resolve),
  an executable /usr/bin/rasd and the unit itself; ``--man=no`` because the man
  pages exist only once the package is installed (test_deb verifies the installed
  unit in its chroot).
- ``systemd-analyze security --offline=true``: exposure <= 2.5.
- The directives issue 5 names are there, with the values the daemon relies on.
- Under a real systemd (``systemd-nspawn --boot``): see test_unit_under_systemd.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "rasd.service"
DROPINS = {"page-offline": ROOT / "packaging" / "debian" / "page-offline.conf",
           "kernel-log": ROOT / "packaging" / "debian" / "kernel-log.conf",
           "perf-paranoid": ROOT / "packaging" / "debian" / "perf-paranoid.conf"}
# Issue 5 asks for <= 2.5; this unit scores 2.4. ProtectKernelTunables= (kallsyms hidden, tracefs
# forced read-only) and ProtectKernelModules= (the kernel headers bcc compiles against) would hide
# what rasd needs (0.2 each): the unit applies their other effects explicitly and restricts
# metrics peers to local/private networks (IPAddressAllow=) instead. The kernel log (only read
# under lockdown=confidentiality) is an opt-in drop-in.
# test_exposure_items_left_are_the_documented_ones fails on anything new.
MAX_EXPOSURE = 2.5

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (apt-get install systemd)")


def directives(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every assignment, in order (systemd allows repeats)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        assert section is not None, f"{line!r} outside a section"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def scratch_root(tmp_path: Path, dropin: str | None = None) -> Path:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "usr/lib/systemd").mkdir(parents=True)
    host_units = Path("/usr/lib/systemd/system")
    if not host_units.is_dir():
        host_units = Path("/lib/systemd/system")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    shutil.copy(UNIT, root / "usr/lib/systemd/system/rasd.service")
    shutil.copy("/bin/true", root / "usr/bin/rasd")
    shutil.copy("/bin/kill", root / "bin/kill")
    if dropin:
        d = root / "etc/systemd/system/rasd.service.d"
        d.mkdir(parents=True)
        shutil.copy(DROPINS[dropin], d / f"{dropin}.conf")
    return root


@needs_analyze
@pytest.mark.parametrize("dropin", [None, *DROPINS], ids=["unit", *DROPINS])
def test_verify_is_clean(tmp_path, dropin):
    root = scratch_root(tmp_path, dropin)
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                        "rasd.service"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        p.stdout + p.stderr


def exposure(unit: Path) -> tuple[float, str]:
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(unit)], capture_output=True, text=True, cwd=unit.parent)
    assert p.returncode == 0, p.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", p.stdout)
    assert m, p.stdout
    return float(m.group(1)), p.stdout


@needs_analyze
def test_exposure_at_most_2_5():
    # systemd rounds the exposure *up* to the tenth it prints, so "2.5" is <= 2.5.
    score, report = exposure(UNIT)
    bad = "\n".join(line for line in report.splitlines() if line.startswith("✗"))
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{bad}"
    # and the threshold option agrees (exit status non-zero above 25/100)
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25",
                        "--no-pager", str(UNIT)], capture_output=True, text=True, cwd=UNIT.parent)
    assert p.returncode == 0, bad


@needs_analyze
def test_exposure_items_left_are_the_documented_ones():
    """Every ✗ left must be one the unit's comments justify; a new one fails here."""
    _, report = exposure(UNIT)
    left = {line.split()[1] for line in report.splitlines() if line.startswith("✗")}
    justified = {
        "SystemCallFilter=~@privileged",  # bpf(2)
        "SystemCallFilter=~@debug",  # perf_event_open(2)
        "RootDirectory=/RootImage=", "User=/DynamicUser=", "PrivateUsers=",
        "ProtectKernelModules=",  # bcc needs /lib/modules/$(uname -r)/{build,source}
        "ProtectKernelTunables=",  # /proc/kallsyms, writable tracefs; parts applied by hand
        "CapabilityBoundingSet=~CAP_BPF",
        "RestrictAddressFamilies=~AF_NETLINK", "RestrictAddressFamilies=~AF_UNIX",
        "RestrictAddressFamilies=~AF_(INET|INET6)", "PrivateNetwork=", "IPAddressDeny=",
        "ProtectProc=", "ProcSubset=",  # VMM processes of other uids; kallsyms, kpageflags
        "DeviceAllow=",  # rtc r (ProtectClock)
    }
    assert left <= justified, f"new exposure: {sorted(left - justified)}"


def test_directives_of_issue_5():
    s = directives()["Service"]
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["ExecStart"] == "/usr/bin/rasd"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["WatchdogSec"] == "30s"
    assert one["Restart"] == "on-failure"
    assert one["RestartPreventExitStatus"] == "78"  # rasd.config.EX_CONFIG
    assert one["StateDirectory"] == "rasd" and one["RuntimeDirectory"] == "rasd"
    assert one["ConfigurationDirectory"] == "rasd"
    assert one["UMask"] == "0077"
    assert one["NotifyAccess"] == "main"
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
                "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
                "LockPersonality", "MemoryDenyWriteExecute", "NoNewPrivileges",
                "PrivateMounts"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["SystemCallArchitectures"] == "native"
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6",
                                                      "AF_NETLINK"]
    # deliberately off, see the unit's comments
    assert one["ProtectKernelModules"] == "no"
    assert one["ProtectKernelLogs"] == "yes"  # opened only by the kernel-log drop-in
    assert one["ProtectKernelTunables"] == "no"
    # ...and what of ProtectKernelTunables is applied by hand
    ro = " ".join(s["ReadOnlyPaths"]).split()
    assert {"/sys", "/proc/sys", "-/proc/sysrq-trigger"} <= set(ro)
    assert "/proc/kallsyms" not in " ".join(ro) and s["InaccessiblePaths"] == ["-/proc/kcore"]
    assert directives()["Install"]["WantedBy"] == ["multi-user.target"]


def test_capabilities_are_exactly_the_tracing_ones():
    s = directives()["Service"]
    caps = set(" ".join(s["CapabilityBoundingSet"]).split())
    assert caps == {"CAP_BPF", "CAP_PERFMON"}
    assert s["AmbientCapabilities"] == [""]
    assert s["LimitMEMLOCK"] == ["infinity"]  # instead of CAP_SYS_RESOURCE (< 5.11 kernels)
    assert "User" not in s and "DynamicUser" not in s  # root uid, see the unit
    # the opt-in for page soft-offline adds exactly CAP_SYS_ADMIN
    d = configparser.ConfigParser(strict=False)
    d.read(DROPINS["page-offline"])
    assert d["Service"]["CapabilityBoundingSet"].split() == ["CAP_SYS_ADMIN"]


def test_writable_paths_and_kmsg():
    s = directives()["Service"]
    assert s["ReadWritePaths"] == ["-/sys/kernel/tracing",
                                   "-/sys/devices/system/memory/soft_offline_page",
                                   "/sys/devices/system/cpu"]
    assert "BindReadOnlyPaths" not in s and "DeviceAllow" not in s  # no /dev/kmsg by default
    # the lockdown=confidentiality opt-in opens exactly the kernel log
    d = directives(DROPINS["kernel-log"])["Service"]
    assert d == {"ProtectKernelLogs": ["no"], "CapabilityBoundingSet": ["CAP_SYSLOG"],
                 "BindReadOnlyPaths": ["-/dev/kmsg"],  # "-": no kmsg in containers
                 "DeviceAllow": ["/dev/kmsg r"]}


@needs_analyze
def test_syscall_filter_keeps_bpf_and_perf_event_open(tmp_path):
    """The filter lines are order-sensitive (~@privileged drops bpf, ~@debug drops
    perf_event_open): systemd's own view of the final allow list must have both
    and none of the module/mount calls."""
    root = scratch_root(tmp_path)
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--json=short",
                        f"--root={root}", "rasd.service"],
                       capture_output=True, text=True, cwd=tmp_path)
    if p.returncode != 0 or not p.stdout.startswith("["):  # --json needs systemd >= 250
        pytest.skip(f"no JSON from systemd-analyze security: {p.stderr.strip()[:200]}")
    import json
    items = {i["name"]: i for i in json.loads(p.stdout)}
    desc = {n: (i.get("description") or "") for n, i in items.items()}
    assert "bpf is allowed" in desc["SystemCallFilter=~@privileged"]
    assert "perf_event_open is allowed" in desc["SystemCallFilter=~@debug"]
    for group in ("@module", "@mount", "@reboot", "@swap", "@clock", "@raw-io",
                  "@obsolete", "@cpu-emulation", "@resources"):
        assert "is not included" in desc[f"SystemCallFilter=~{group}"], desc[
            f"SystemCallFilter=~{group}"]


# --------------------------------------------------------------------------- real systemd

CHECK_SCRIPT = r"""#!/bin/sh
# Runs inside the booted container once rasd.service had its chance to start; writes
# key=value lines to /root/result, then powers the container off.
out=/root/result
show() { echo "== $1" >> $out; systemctl show rasd -p ActiveState -p SubState -p Result \
    -p NRestarts -p ExecMainStatus -p StatusText -p WatchdogUSec >> $out; }
for i in $(seq 60); do
    [ "$(systemctl show -p SubState --value rasd)" = running ] && break; sleep 1
done
show started
P=$(systemctl show -p MainPID --value rasd)
if [ "$P" != 0 ]; then
    nsenter -t "$P" -m cat /proc/self/mountinfo > /root/mountinfo
    grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/$P/status > /root/status
    # the watchdog: a stopped main process is killed and restarted (WatchdogSec=6s here)
    kill -STOP "$P"
    for i in $(seq 40); do
        [ "$(systemctl show -p NRestarts --value rasd)" != 0 ] && break; sleep 1
    done
    for i in $(seq 60); do
        [ "$(systemctl show -p SubState --value rasd)" = running ] && break; sleep 1
    done
    show after-watchdog
    systemctl reload rasd; sleep 1
    show after-reload
    systemctl stop rasd
    show after-stop
    # a bad config: exit 78 and no restart
    printf '[daemon]\nno_such_key = 1\n' > /etc/rasd/rasd.toml
    systemctl start rasd; sleep 8
    show bad-config
fi
journalctl -u rasd -o cat --no-pager > /root/journal
systemctl poweroff
"""


def parse_result(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("== "):
            cur = out.setdefault(line[3:], {})
        elif "=" in line:
            k, _, v = line.partition("=")
            cur[k] = v
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: systemd-nspawn")
def test_unit_under_systemd(tmp_path_factory):
    """The installed package's unit under a real systemd: ``systemd-nspawn --boot`` of
    the clean Debian root of test_deb (rasd installed with apt), with the host's
    tracefs, kernel headers, kallsyms and /dev/kmsg bound in and the container given
    CAP_BPF/CAP_PERFMON/CAP_SYSLOG (the unit keeps the first two) and bpf/perf_event_open. Checks READY (Type=notify)
    with its STATUS, the capability bounding set, the mounts the sandbox makes, the
    watchdog restarting a hung daemon, SIGHUP reload, SIGTERM -> exit 0, and exit 78 on
    a bad config without a restart."""
    import test_deb as D  # same directory: the build, the cached base, the chroot
    if shutil.which("systemd-nspawn") is None:
        p = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                            "systemd-container"], capture_output=True, text=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if p.returncode != 0:
            pytest.skip(f"systemd-nspawn missing and not installable: {p.stderr[-300:]}")
    deb = D.build_deb(tmp_path_factory.mktemp("deb"))
    base = D.base_tarball(deb)
    root = D.extract(base, tmp_path_factory.mktemp("nspawn") / "root")
    shutil.copy(deb, root / "tmp" / deb.name)
    ch = D.Chroot(root)
    ch.run(f"apt-get install -y -q --no-install-recommends /tmp/{deb.name}")
    (root / "etc/hostname").write_text("rasd-test\n")
    dropin = root / "etc/systemd/system/rasd.service.d"
    dropin.mkdir(parents=True)
    (dropin / "test.conf").write_text("[Service]\nWatchdogSec=6s\nRestartSec=1s\n")
    (root / "usr/local/sbin").mkdir(parents=True, exist_ok=True)
    (root / "usr/local/sbin/rasd-check").write_text(CHECK_SCRIPT)
    (root / "usr/local/sbin/rasd-check").chmod(0o755)
    (root / "etc/systemd/system/rasd-check.service").write_text(
        "[Unit]\nAfter=rasd.service\n[Service]\nType=oneshot\n"
        "ExecStart=/usr/local/sbin/rasd-check\n[Install]\nWantedBy=multi-user.target\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    (wants / "rasd-check.service").symlink_to("/etc/systemd/system/rasd-check.service")
    release = os.uname().release
    binds = [f"--bind-ro=/usr/src", f"--bind-ro=/lib/modules/{release}"]
    for path, opt in (("/sys/kernel/tracing", "--bind"), ("/dev/kmsg", "--bind-ro"),
                      ("/proc/kallsyms", "--bind-ro")):  # nspawn hides kallsyms and kmsg
        if os.path.exists(path):
            binds.append(f"{opt}={path}")
    (root / f"lib/modules/{release}").mkdir(parents=True, exist_ok=True)
    cmd = ["systemd-nspawn", "-D", str(root), "--register=no", "--keep-unit", "--boot",
           "--console=pipe", "--capability=CAP_BPF,CAP_PERFMON,CAP_SYSLOG",
           "--system-call-filter=bpf perf_event_open", *binds]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"container did not power off in 240 s: {(e.stdout or b'')[-2000:]!r}")
    result = root / "root/result"
    if not result.exists():
        pytest.skip("systemd-nspawn could not boot the Debian root here (cgroups/namespaces?): "
                    + (p.stdout + p.stderr)[-600:].replace("\n", " | "))
    r = parse_result(result.read_text())
    journal = (root / "root/journal").read_text() if (root / "root/journal").exists() else ""
    why = f"\n{result.read_text()}\n--- journal:\n{journal[-3000:]}"
    assert r["started"]["ActiveState"] == "active", why
    assert r["started"]["SubState"] == "running", why
    assert "probes attached" in r["started"]["StatusText"], why  # STATUS= from READY
    assert r["started"]["WatchdogUSec"] == "6s", why
    # sandbox as the unit says: exactly the two capabilities, seccomp, no new privileges
    status = dict(l.split(":\t") for l in (root / "root/status").read_text().splitlines())
    caps = (1 << 39) | (1 << 38)  # BPF PERFMON
    if (root / "etc/systemd/system/rasd.service.d/perf-paranoid.conf").exists():
        caps |= 1 << 21  # postinst saw perf_event_paranoid > 2: CAP_SYS_ADMIN drop-in
    assert int(status["CapBnd"], 16) == caps, status
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1", status
    mounts = {}
    for line in (root / "root/mountinfo").read_text().splitlines():
        f = line.split()
        mounts[f[4]] = f[5].split(",")[0]
    assert mounts["/sys"] == "ro" and mounts["/proc/sys"] == "ro", mounts
    if "/sys/kernel/tracing" in mounts:
        assert mounts["/sys/kernel/tracing"] == "rw", mounts
    assert mounts["/"] == "ro" and mounts.get("/var/lib/rasd") == "rw", mounts
    # watchdog: the SIGSTOPped daemon was killed (SIGABRT) and restarted, and is READY again
    assert int(r["after-watchdog"]["NRestarts"]) >= 1, why
    assert r["after-watchdog"]["SubState"] == "running", why
    assert "Watchdog timeout" in journal, why
    assert "config reloaded" in journal, why
    assert r["after-reload"]["SubState"] == "running", why
    assert r["after-stop"]["ActiveState"] == "inactive", why
    assert r["after-stop"]["Result"] == "success" and r["after-stop"]["ExecMainStatus"] == "0", why
    # bad config: 78, and RestartPreventExitStatus keeps it down
    assert r["bad-config"]["ExecMainStatus"] == "78", why
    assert r["bad-config"]["ActiveState"] == "failed", why
    assert r["bad-config"]["NRestarts"] == "0", why
    assert "no_such_key" in journal, why
