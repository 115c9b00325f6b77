"""The Debian package: build it, inspect it, install it into a clean Debian 12 root.

- ``packaging/build-deb.sh`` builds ``rasd_<version>_all.deb`` (a staged tree and
  dpkg-deb); ``dpkg-deb -c``/``-f`` check its contents and control.
- A clean root from ``mmdebstrap --variant=minbase bookworm`` (plus systemd, for
  journalctl and the unit directory) gets the package with ``apt-get install
  ./rasd_*.deb``: apt resolves its Depends. Inside: ``rasdctl --version``,
  ``rasdctl decode`` of CPER built by rasd's encoder (the JSON must equal the
  host's in-process decode), the unit enabled, the catalog indexed, the conffile,
  then a purge that leaves nothing behind.

Cost: the root with rasd's dependencies installed is cached as a tarball under
/var/cache/rasd-test/, keyed by the package's Depends line, the base package list,
the host's apt sources and the ISO week (so it follows Debian updates weekly and
is rebuilt when the dependencies change). Cold: mmdebstrap + apt resolving and
installing the dependencies (bcc/LLVM, kernel headers) from the package itself;
warm: extract the tarball, install, check, purge, in seconds.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("RASD_TEST_CACHE", "/var/cache/rasd-test"))
SUITE = "bookworm"
BASE_PACKAGES = ["systemd"]  # journalctl --update-catalog, /lib/systemd/system, deb-systemd-helper

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from vectors import handbuilt as H  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: chroot, mounts, device nodes"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system (no dpkg-deb)"),
]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run(cmd, **kw)
    assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


# --------------------------------------------------------------------------- build

def build_deb(out: Path) -> Path:
    p = run([str(ROOT / "packaging" / "build-deb.sh"), str(out)])
    path = Path(p.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out
    return path


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


def version() -> str:
    from rasd import __version__
    return __version__


def field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def test_control(deb):
    assert deb.name == f"rasd_{version()}_all.deb"
    assert field(deb, "Package") == "rasd"
    assert field(deb, "Version") == version()
    assert field(deb, "Architecture") == "all"
    depends = [d.strip() for d in field(deb, "Depends").replace("\n", " ").split(",")]
    assert depends[:5] == ["python3 (>= 3.11)", "python3-bpfcc", "python3-prometheus-client",
                           "python3-pyroute2", "python3-systemd"]
    assert "procps" in depends  # /bin/kill for ExecReload (minbase has none)
    headers = [a.strip() for a in depends[-1].split("|")]  # kernel headers for bcc
    assert "linux-headers-arm64" in headers and headers[-1] == "linux-headers"
    assert int(field(deb, "Installed-Size")) > 0


def contents(deb: Path) -> dict[str, str]:
    """path -> mode string, from dpkg-deb -c."""
    out = {}
    for line in run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines():
        parts = line.split(None, 5)
        out[parts[5].split(" -> ")[0].removeprefix("./")] = parts[0]
        assert parts[1] == "root/root", line
    return out


def test_contents(deb):
    c = contents(deb)
    must = {
        "usr/bin/rasd": "-rwxr-xr-x", "usr/bin/rasdctl": "-rwxr-xr-x",
        "lib/systemd/system/rasd.service": "-rw-r--r--",
        "etc/rasd/rasd.toml": "-rw-r--r--",
        "usr/share/rasd/bpf/common.h": "-rw-r--r--",
        "usr/share/rasd/systemd/page-offline.conf": "-rw-r--r--",
        "usr/share/rasd/systemd/kernel-log.conf": "-rw-r--r--",
        "usr/share/rasd/systemd/perf-paranoid.conf": "-rw-r--r--",
        "usr/share/man/man8/rasd.8.gz": "-rw-r--r--",
        "usr/share/man/man1/rasdctl.1.gz": "-rw-r--r--",
        "usr/share/doc/rasd/copyright": "-rw-r--r--",
        "usr/lib/python3/dist-packages/rasd/__init__.py": "-rw-r--r--",
        "usr/lib/python3/dist-packages/rasd/cli/rasdctl.py": "-rw-r--r--",
        f"usr/lib/python3/dist-packages/rasd-{version()}.dist-info/METADATA": "-rw-r--r--",
    }
    for path, mode in must.items():
        assert c.get(path) == mode, f"{path}: {c.get(path)}"
    # every module and every bpf source of the tree, no bytecode
    for py in (ROOT / "rasd").rglob("*.py"):
        rel = py.relative_to(ROOT)
        if "__pycache__" not in rel.parts:
            assert f"usr/lib/python3/dist-packages/{rel}" in c, rel
    for src in (ROOT / "bpf").iterdir():
        if src.suffix in (".c", ".h"):
            assert f"usr/share/rasd/bpf/{src.name}" in c, src.name
    assert not [p for p in c if p.endswith((".pyc", ".pyo")) or "__pycache__" in p]
    # what other parts of issue 5 provide, wherever it exists in the tree already
    for src, dest in (("etc/catalog/rasd.catalog", "usr/lib/systemd/catalog/rasd.catalog"),
                      ("etc/prometheus/rasd-alerts.yml",
                       "usr/share/rasd/prometheus/rasd-alerts.yml"),
                      ("etc/grafana/rasd.json", "usr/share/rasd/grafana/rasd.json")):
        assert ((ROOT / src).exists()) == (dest in c), dest


def test_control_files(deb, tmp_path):
    run(["dpkg-deb", "-e", str(deb), str(tmp_path / "DEBIAN")])
    d = tmp_path / "DEBIAN"
    assert (d / "conffiles").read_text().split() == ["/etc/rasd/rasd.toml"]
    for script in ("postinst", "prerm", "postrm"):
        assert os.access(d / script, os.X_OK), script
        run(["sh", "-n", str(d / script)])
    post = (d / "postinst").read_text()
    assert "deb-systemd-helper enable 'rasd.service'" in post
    assert "journalctl --update-catalog" in post and "py3compile -p rasd" in post
    # md5sums covers every shipped file but the conffile
    sums = {line.split(None, 1)[1] for line in (d / "md5sums").read_text().splitlines()}
    files = {p for p, mode in contents(deb).items() if mode.startswith("-")}
    assert sums == files - {"etc/rasd/rasd.toml"}


def test_shipped_config_is_the_generated_one(deb, tmp_path):
    run(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    gen = run([sys.executable, str(ROOT / "scripts" / "gen-config.py"), "--stdout"]).stdout
    assert (tmp_path / "etc/rasd/rasd.toml").read_text() == gen


def test_man_pages_render(deb, tmp_path):
    if shutil.which("man") is None:
        pytest.skip("man-db not installed")
    run(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    for page, want in (("man8/rasd.8.gz", ["--config PATH", "exit status", "/etc/rasd/rasd.toml"]),
                       ("man1/rasdctl.1.gz", ["decode-esr", "rasdctl decode --bert"])):
        p = run(["man", "-l", str(tmp_path / "usr/share/man" / page)],
                env=dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0"))
        text = p.stdout
        for w in want:
            assert w in text, (page, w)
        assert "warning" not in p.stderr.lower(), p.stderr


# --------------------------------------------------------------------------- clean root

def apt_sources() -> list[Path]:
    """The host's apt sources (bookworm + updates + security), for the chroot too."""
    srcs = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    srcs += [p for p in [Path("/etc/apt/sources.list")] if p.is_file() and p.read_text().strip()
             and any(not l.startswith("#") and l.strip() for l in p.read_text().splitlines())]
    srcs += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    return srcs


def base_key(deb: Path) -> str:
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    h = hashlib.sha256()
    for part in (SUITE, arch, " ".join(BASE_PACKAGES), field(deb, "Depends"),
                 *(p.read_text() for p in apt_sources())):
        h.update(part.encode() + b"\0")
    year, week, _ = datetime.date.today().isocalendar()
    return f"{SUITE}-{arch}-{h.hexdigest()[:12]}-{year}W{week:02d}"


def build_base(deb: Path, tar: Path) -> None:
    """minbase + systemd, then rasd's dependencies as apt resolves them from the .deb
    (install it, purge it: the dependencies stay)."""
    if shutil.which("mmdebstrap") is None:
        if shutil.which("apt-get") is None:
            pytest.skip("mmdebstrap missing and no apt-get to install it")
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap"],
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    tmp = tar.with_name(tar.stem + ".partial.tar")  # the extension tells mmdebstrap: tar
    sources = [str(p) for p in apt_sources()] or ["http://deb.debian.org/debian"]
    # the mmdebstrap hooks run with /proc, /sys, /dev mounted in the chroot
    cmd = ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
           "--aptopt=Acquire::Retries \"3\"",
           "--customize-hook=upload " + str(deb) + " /tmp/rasd.deb",
           "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install "
           "-y -q --no-install-recommends /tmp/rasd.deb",
           "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get purge "
           "-y -q rasd",
           "--customize-hook=rm -f \"$1/tmp/rasd.deb\"",
           SUITE, str(tmp), *sources]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        if "Could not resolve" in p.stderr or "Temporary failure resolving" in p.stderr:
            pytest.skip(f"no Debian mirror reachable to build the clean root: {p.stderr[-300:]}")
        raise AssertionError(f"mmdebstrap failed:\n{p.stderr[-4000:]}")
    tmp.rename(tar)


@pytest.fixture(scope="module")
def base_tar(deb) -> Path:
    return base_tarball(deb)


def base_tarball(deb: Path) -> Path:
    """The cached clean root with the .deb's dependencies installed (built if missing)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / f"base-{base_key(deb)}.tar"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        if not tar.exists():
            build_base(deb, tar)
            for old in CACHE.glob("base-*.tar"):  # keep the cache to one base
                if old != tar:
                    old.unlink()
    return tar


class Chroot:
    """An extracted copy of the base; commands run in a private mount namespace
    (unshare) with /proc mounted, so no mount outlives a command, failed or not."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, script: str, check: bool = True, timeout: float = 300,
            stdin: str | None = None) -> subprocess.CompletedProcess:
        inner = f'mount -t proc proc "{self.path}/proc" && exec chroot "{self.path}" /bin/sh -c "$0"'
        p = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                            "sh", "-c", inner, script], capture_output=True, text=True,
                           timeout=timeout, input=stdin,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"})
        if check:
            assert p.returncode == 0, f"{script}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p


def extract(tar: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    run(["tar", "-xf", str(tar), "-C", str(root), "--numeric-owner"])
    return root


@pytest.fixture(scope="module")
def installed(deb, base_tar, tmp_path_factory) -> Chroot:
    root = extract(base_tar, tmp_path_factory.mktemp("chroot") / "root")
    shutil.copy(deb, root / "tmp" / deb.name)
    ch = Chroot(root)
    p = ch.run(f"apt-get install -y -q --no-install-recommends /tmp/{deb.name}")
    ch.install_log = p.stdout + p.stderr
    yield ch
    shutil.rmtree(root.parent, ignore_errors=True)


def test_apt_resolved_everything(installed):
    # nothing left to download: the dependencies came from apt when the base was built
    assert "Setting up rasd" in installed.install_log
    p = installed.run("dpkg-query -W -f='${Status} ${Version}\\n' rasd python3-bpfcc "
                      "python3-prometheus-client python3-pyroute2 python3-systemd")
    assert [l.split()[:3] for l in p.stdout.splitlines()] == [["install", "ok", "installed"]] * 5
    assert installed.run("apt-get check").returncode == 0
    # a kernel header package satisfied the alternative
    p = installed.run("dpkg-query -W -f='${Package}\\n' 'linux-headers-*'")
    assert p.stdout.strip(), "no linux-headers package installed"


def test_rasdctl_version(installed):
    p = installed.run("rasdctl --version && rasd --version")
    assert p.stdout.split("\n")[:2] == [f"rasdctl {version()}", f"rasd {version()}"]
    p = installed.run("python3 -c 'import rasd; print(rasd.__file__)'")
    assert p.stdout.strip() == "/usr/lib/python3/dist-packages/rasd/__init__.py"


def test_rasdctl_decode(installed):
    from rasd.decode.cper import decode
    (installed.path / "tmp/memory.bin").write_bytes(H.status_block_memory())
    (installed.path / "tmp/record.cper").write_bytes(H.cper_record())
    p = installed.run("rasdctl decode --json /tmp/memory.bin /tmp/record.cper")
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    assert [d["framing"] for d in lines] == ["status_block", "cper_record"]
    assert lines[0]["sections"][0]["body"]["physical_addr"] == "0x8012345000"
    for d, data, src in ((lines[0], H.status_block_memory(), "/tmp/memory.bin"),
                         (lines[1], H.cper_record(), "/tmp/record.cper")):
        expected = {"source": src, "index": 0, **decode(data).to_dict()}
        assert d == json.loads(json.dumps(expected))
    p = installed.run("rasdctl decode /tmp/memory.bin")
    assert "physical address: 0x8012345000" in p.stdout and "FRU: DIMM_A1" in p.stdout
    p = installed.run("rasdctl decode-esr 0x93800017")
    assert "SEA_TTW(3)" in p.stdout


def test_byte_compiled(installed):
    p = installed.run("ls /usr/lib/python3/dist-packages/rasd/__pycache__/")
    assert "__init__.cpython-311.pyc" in p.stdout.split()


def test_unit_enabled_and_verifies(installed):
    link = installed.path / "etc/systemd/system/multi-user.target.wants/rasd.service"
    assert link.is_symlink() and os.readlink(link) == "/lib/systemd/system/rasd.service"
    # deb-systemd-helper's own record of the enablement (what purge undoes)
    assert (installed.path / "var/lib/systemd/deb-systemd-helper-enabled/rasd.service.dsh-also"
            ).is_file()
    if shutil.which("systemd-analyze"):
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={installed.path}",
                            "rasd.service"], capture_output=True, text=True)
        assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def test_conffile_and_daemon_config(installed):
    conf = installed.path / "etc/rasd/rasd.toml"
    gen = run([sys.executable, str(ROOT / "scripts" / "gen-config.py"), "--stdout"]).stdout
    assert conf.read_text() == gen
    p = installed.run("dpkg-query -W -f='${Conffiles}' rasd")
    assert "/etc/rasd/rasd.toml" in p.stdout
    # the shipped file parses and yields the defaults in the installed package
    p = installed.run("python3 -c 'from rasd import config; "
                      "print(config.load().values == config.defaults().values)'")
    assert p.stdout.strip() == "True"


def test_catalog_indexed(installed):
    cat = installed.path / "usr/lib/systemd/catalog/rasd.catalog"
    if not (ROOT / "etc/catalog/rasd.catalog").exists():
        pytest.skip("etc/catalog/rasd.catalog not in the tree yet")
    ids = [l[3:].split()[0] for l in cat.read_text().splitlines() if l.startswith("-- ")]
    assert ids
    p = installed.run("journalctl --list-catalog")
    listed = {l.split()[0] for l in p.stdout.splitlines() if l.strip()}
    assert {i.replace("-", "").lower() for i in ids} <= listed


def test_bpf_sources_found_by_loader(installed):
    """The daemon compiles bpf/*.c; installed, they live in /usr/share/rasd/bpf."""
    p = installed.run("python3 -c 'from rasd.sources import bpf_loader as b; "
                      "print(b.BPF_DIR); print((b.BPF_DIR / \"common.h\").is_file())'")
    bpf_dir, found = p.stdout.split()
    if found != "True":
        pytest.xfail(f"rasd.sources.bpf_loader.BPF_DIR is {bpf_dir} when installed; "
                     "needs the /usr/share/rasd/bpf fallback (see packaging/build-deb.sh)")
    assert bpf_dir == "/usr/share/rasd/bpf"


def test_perf_paranoid_3_gets_the_cap_sys_admin_drop_in_once(installed):
    """Debian kernels' perf_event_paranoid=3 lets only CAP_SYS_ADMIN attach kprobes and
    tracepoints: configure links the drop-in then, once; removed by the admin, it stays
    removed on the next configure (upgrade)."""
    link = installed.path / "etc/systemd/system/rasd.service.d/perf-paranoid.conf"
    assert not link.exists()  # this host's paranoid level is what the install saw
    installed.run("rm -f /var/lib/rasd/.perf-paranoid-dropin-offered")
    installed.run("RASD_PERF_PARANOID=3 /var/lib/dpkg/info/rasd.postinst configure 0.1")
    assert os.readlink(link) == "/usr/share/rasd/systemd/perf-paranoid.conf"
    p = installed.run("cat /etc/systemd/system/rasd.service.d/perf-paranoid.conf")
    assert "CapabilityBoundingSet=CAP_SYS_ADMIN" in p.stdout
    link.unlink()
    installed.run("RASD_PERF_PARANOID=3 /var/lib/dpkg/info/rasd.postinst configure 0.1")
    assert not link.exists()  # the administrator's choice stands


def test_purge_leaves_nothing(installed):
    """Last: purge, and the package's files, the enablement and the config are gone."""
    installed.run("mkdir -p /var/lib/rasd && touch /var/lib/rasd/rasd.db")
    installed.run("apt-get purge -y -q rasd")
    for path in ("usr/bin/rasd", "usr/lib/python3/dist-packages/rasd", "etc/rasd",
                 "lib/systemd/system/rasd.service", "var/lib/rasd",
                 "etc/systemd/system/multi-user.target.wants/rasd.service",
                 "etc/systemd/system/rasd.service.d"):
        assert not (installed.path / path).exists(), path
