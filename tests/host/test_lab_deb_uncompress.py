"""The lab's rootfs hook (tests/lab/deb_uncompress.py) on real packages built by dpkg-deb:
the rewritten .deb holds the same control and the same payload, byte for byte, and dpkg
installs it; only apt's downloads are touched; the hook command works on the host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[1] / "lab"
sys.path.insert(0, str(LAB))
import deb_uncompress  # noqa: E402


def build_deb(tmp: Path, name: str, compression: str) -> Path:
    root = tmp / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@localhost>\n"
        "Description: deb_uncompress test\n")
    (root / "usr/share/t").mkdir(parents=True)
    (root / "usr/share/t/odd.bin").write_bytes(os.urandom(4097))      # odd member length
    (root / "usr/share/t/text").write_text("x" * 100_000)
    (root / "usr/share/t/link").symlink_to("text")
    deb = tmp / "archives" / "var/cache/apt/archives" / f"{name}_1_all.deb"
    deb.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", f"-Z{compression}", "--root-owner-group", "--build",
                    str(root), str(deb)], check=True, capture_output=True)
    return deb


def fsys_tar(deb: Path) -> bytes:
    return subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                          capture_output=True).stdout


def members(deb: Path) -> list[str]:
    return [deb_uncompress.member_name(h) for h, _ in deb_uncompress.members(deb.read_bytes())]


NO_ZSTD = pytest.mark.skipif(shutil.which("zstd") is None,
                             reason="no zstd binary (tests/lab/setup-host.sh installs it)")


@pytest.mark.parametrize("compression", ["xz", "gzip", pytest.param("zstd", marks=NO_ZSTD)])
def test_same_payload_uncompressed_and_installable(tmp_path, compression):
    deb = build_deb(tmp_path, f"t-{compression}", compression)
    tar, before = fsys_tar(deb), deb_uncompress.members(deb.read_bytes())
    assert deb_uncompress.uncompress(deb) is True
    after = deb_uncompress.members(deb.read_bytes())
    assert [deb_uncompress.member_name(h) for h, _ in after] == [
        "debian-binary", deb_uncompress.member_name(before[1][0]), "data.tar"]
    assert after[:2] == before[:2]                          # control member untouched
    assert fsys_tar(deb) == tar
    assert deb_uncompress.uncompress(deb) is False          # already uncompressed
    dest = tmp_path / "installed"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    assert (dest / "usr/share/t/link").readlink() == Path("text")
    assert len((dest / "usr/share/t/odd.bin").read_bytes()) == 4097


def test_hook_rewrites_only_apts_downloads(tmp_path):
    ours = build_deb(tmp_path, "t-ours", "xz")
    other = tmp_path / "elsewhere.deb"
    other.write_bytes(ours.read_bytes())
    proc = subprocess.run(["sh", "-c", deb_uncompress.hook_command("/nonexistent-fifo-dir")],
                          input=f"{ours}\n{other}\n", capture_output=True, text=True, check=True)
    assert "1 of 2 package(s) rewritten" in proc.stderr
    assert members(ours)[-1] == "data.tar"
    assert members(other)[-1] == "data.tar.xz"


def test_fifo_server_maps_chroot_paths(tmp_path):
    deb = build_deb(tmp_path, "t-fifo", "xz")
    root = tmp_path / "archives"            # the "chroot": deb is root/var/cache/apt/...
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    server = deb_uncompress.FifoServer(fifo, root)
    hook = deb_uncompress.hook_command(str(fifo))
    subprocess.run(["sh", "-c", hook], input=f"/{deb.relative_to(root)}\n", text=True,
                   check=True, timeout=60)
    server.stop()
    assert server.log == ["1 of 1 package(s) rewritten with an uncompressed data.tar"]
    assert members(deb)[-1] == "data.tar"
