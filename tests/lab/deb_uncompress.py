#!/usr/bin/env python3
"""apt's DPkg::Pre-Install-Pkgs hook for the lab's rootfs build: rewrite each .deb
apt is about to hand to dpkg with its data.tar stored uncompressed.

dpkg under qemu-user spends about a quarter of the rootfs build decompressing
data.tar.xz in emulation (~60 s for the rootfs's 190 packages; natively: seconds).
Here, on the host, the same files go into an uncompressed data.tar member; the
control member and every byte of the payload stay as they were, so the installed
tree is the same. apt checked the downloads before it runs the hook, and dpkg reads
uncompressed data.tar members as it reads compressed ones.

mmdebstrap runs apt twice: on the host for the essential packages (the hook then runs
here directly: stdin, one .deb path per line, apt's hook protocol version 0) and inside
the chroot for the rest, where no host python3 exists: there the hook hands the list
through a FIFO pair to a FifoServer thread of the build (hook_command() does both).
Only files under var/cache/apt/archives/ are rewritten (apt's downloads).
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

AR_MAGIC = b"!<arch>\n"
HEADER = 60
DECOMPRESS = {".xz": lzma.decompress, ".gz": gzip.decompress,
              ".zst": lambda b: subprocess.run(["zstd", "-dc"], input=b, check=True,
                                               capture_output=True).stdout}


def members(data: bytes) -> list[tuple[bytes, bytes]]:
    """(header, body) of each ar member, in order."""
    if not data.startswith(AR_MAGIC):
        raise ValueError("not an ar archive")
    out, pos = [], len(AR_MAGIC)
    while pos < len(data):
        header = data[pos:pos + HEADER]
        size = int(header[48:58])
        out.append((header, data[pos + HEADER:pos + HEADER + size]))
        pos += HEADER + size + (size & 1)       # bodies are padded to an even length
    return out


def member_name(header: bytes) -> str:
    return header[:16].decode().rstrip(" ").rstrip("/")


def with_body(header: bytes, name: str, body: bytes) -> bytes:
    """The header with a new name and size (dates, owner and mode kept)."""
    slash = "/" if header[:16].rstrip(b" ").endswith(b"/") else ""
    return (f"{name}{slash}".ljust(16).encode() + header[16:48]
            + str(len(body)).ljust(10).encode() + header[58:60])


def uncompress(path: Path) -> bool:
    """Rewrite `path` with an uncompressed data.tar; False if it already is."""
    parts = members(path.read_bytes())
    out = [AR_MAGIC]
    changed = False
    for header, body in parts:
        name = member_name(header)
        suffix = name[len("data.tar"):]
        if name.startswith("data.tar") and suffix in DECOMPRESS:
            body = DECOMPRESS[suffix](body)
            header = with_body(header, "data.tar", body)
            changed = True
        out += [header, body, b"\n" if len(body) & 1 else b""]
    if changed:
        tmp = path.with_name(path.name + ".uncompressed")
        tmp.write_bytes(b"".join(out))
        os.replace(tmp, path)
    return changed


def uncompress_all(paths: list[Path]) -> str:
    ours = [p for p in paths if "/var/cache/apt/archives/" in str(p) and p.is_file()]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # lzma frees the GIL
        done = sum(pool.map(uncompress, ours))
    return f"{done} of {len(paths)} package(s) rewritten with an uncompressed data.tar"


def hook_command(fifo_dir: str) -> str:
    """The Pre-Install-Pkgs command: through the FIFOs in the chroot, else here."""
    return (f"/bin/sh -c 'if [ -p {fifo_dir}/req ]; then cat > {fifo_dir}/req && "
            f"read ok < {fifo_dir}/done; else /usr/bin/python3 {Path(__file__).resolve()}; fi'")


class FifoServer:
    """Serves the hook apt runs inside the chroot `root`: the .deb list arrives on
    fifo_dir/req (paths as the chroot sees them), the answer goes to fifo_dir/done."""

    def __init__(self, fifo_dir: Path, root: Path):
        self.req, self.done, self.root = fifo_dir / "req", fifo_dir / "done", root
        for fifo in (self.req, self.done):
            os.mkfifo(fifo)
        self.log: list[str] = []
        self.thread = threading.Thread(target=self._serve, name="deb-uncompress", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            text = self.req.read_text()          # blocks until the hook writes
            if text == "STOP":
                return
            paths = [self.root / line.strip().lstrip("/") for line in text.splitlines()
                     if line.strip().endswith(".deb")]
            try:
                self.log.append(uncompress_all(paths))
            finally:                             # the hook (and apt) wait for this
                self.done.write_text("ok\n")

    def stop(self) -> None:
        self.req.write_text("STOP")
        self.thread.join()


def main() -> int:
    paths = [Path(line.strip()) for line in sys.stdin if line.strip().endswith(".deb")]
    print(f"deb_uncompress: {uncompress_all(paths)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
