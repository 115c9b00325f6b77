"""Build and cache the lab's artefacts: kernels, rootfs, QEMU 11 tree, initrds.

Every artefact lives in its own directory under the cache (default
/var/cache/rasd-lab, outside the repo) whose name ends in a hash of its
inputs: the exact Debian package versions it is made from and the source of
the function that builds it.  A warm run therefore finds every directory and
builds nothing; a change to a recipe or a new package version in the archive
rebuilds exactly that artefact.  Artefacts are built in a temporary
directory and renamed into place, so an interrupted build never looks done.

Network: only the Debian mirror the host's apt sources already name.  The
arm64 and backports package lists live in a lab-private apt configuration
(Dir::Etc/Dir::State/Dir::Cache under the cache) so the host's apt set-up is
never changed.

Run directly to build everything:  python3 tests/lab/build.py [--kernel 6.1]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, asdict
from pathlib import Path

import deb_uncompress

LAB_DIR = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("RASD_LAB_CACHE", "/var/cache/rasd-lab"))
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
APT_MAX_AGE = 12 * 3600  # refresh the lab's package lists at most twice a day


def log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*cmd, cwd=None, env=None, capture=False) -> str:
    """Run a command, failing loudly; return stdout when capture is set."""
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, check=True,
                         stdout=subprocess.PIPE if capture else None, text=True)
    return res.stdout if capture else ""


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def recipe(*funcs) -> list[str]:
    """Source text of the functions that build an artefact: part of its key."""
    return [inspect.getsource(f) for f in funcs]


@contextlib.contextmanager
def building(final: Path):
    """Yield a scratch directory that becomes `final` only on success.

    Older siblings of the same artefact kind (same name before the last '-')
    are removed afterwards: each is hundreds of MB and is never reused.
    """
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(final)
    kind = final.name.rsplit("-", 1)[0]
    for old in final.parent.glob(kind + "-*"):
        if old != final and old.name.rsplit("-", 1)[0] == kind:
            log(f"removing stale {old}")
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def cache_lock():
    """One builder at a time: two concurrent mmdebstraps would race on rename."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------
# Mirrors and the lab-private apt

def host_mirrors() -> tuple[str, str]:
    """The Debian and Debian-security URIs the host's bookworm sources use."""
    main = security = None
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            suites = fields.get("Suites", "").split()
            uri = fields.get("URIs", "").split()
            if not uri or fields.get("Enabled", "yes") == "no":
                continue
            if "bookworm" in suites and not main:
                main = uri[0].rstrip("/")
            if "bookworm-security" in suites and not security:
                security = uri[0].rstrip("/")
    legacy = Path("/etc/apt/sources.list")
    for line in (legacy.read_text().splitlines() if legacy.exists() else []):
        m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
        if m and m.group(2) == "bookworm" and not main:
            main = m.group(1).rstrip("/")
        if m and m.group(2) == "bookworm-security" and not security:
            security = m.group(1).rstrip("/")
    if not main:
        raise SystemExit("no bookworm mirror in the host's apt sources")
    return main, security or main + "-security"


class LabApt:
    """apt-get/apt-cache over a private configuration rooted in the cache."""

    def __init__(self, name: str, sources: list[str], archs: list[str]):
        self.root = CACHE / name
        self.sources = sources
        self.opts = [f"-oDir::Etc={self.root}/etc", f"-oDir::State={self.root}/state",
                     f"-oDir::Cache={self.root}/cache",
                     "-oDir::State::status=/var/lib/dpkg/status",
                     "-oAPT::Architectures=", *[f"-oAPT::Architectures::={a}" for a in archs],
                     "-oAcquire::Languages=none", "-oAPT::Sandbox::User=root", "-qq"]

    def update(self, force: bool = False) -> None:
        """Write the sources and refresh the lists when stale or changed."""
        etc = self.root / "etc"
        for d in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d",
                  "state/lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # Dir::Etc also moves trusted.gpg.d: name the keyring per source.
        text = "".join(s.replace("deb ", f"deb [signed-by={KEYRING}] ", 1) + "\n"
                       for s in self.sources)
        src = etc / "sources.list"
        changed = not src.exists() or src.read_text() != text
        src.write_text(text)
        stamp = self.root / "state" / "updated"
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < APT_MAX_AGE
        if changed or force or not fresh:
            log(f"apt update ({self.root.name})")
            sh("apt-get", *self.opts, "update")
            stamp.touch()

    def cache(self, *args) -> str:
        return sh("apt-cache", *self.opts, *args, capture=True)

    def madison(self, names: list[str], arch: str) -> list[tuple[str, str, str]]:
        """(package, version, suite) for every version of `names` for `arch`."""
        rows = []
        # "name:arch" finds arch-specific packages, plain "name" arch:all ones
        # (which madison lists once per configured architecture).
        query = [q for n in names for q in (n, f"{n}:{arch}")]
        for line in self.cache("madison", *query).splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2].endswith(f" {arch} Packages"):
                suite = parts[2].split()[1].split("/")[0]
                rows.append((parts[0].split(":")[0], parts[1], suite))
        return rows

    def download(self, specs: list[str], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        sh("apt-get", *self.opts, "download", *specs, cwd=dest)
        return sorted(set(dest.glob("*.deb")) - before)


def bookworm_apt() -> LabApt:
    main, security = host_mirrors()
    return LabApt("apt-bookworm", [
        f"deb {main} bookworm main", f"deb {main} bookworm-updates main",
        f"deb {main} bookworm-backports main", f"deb {security} bookworm-security main",
    ], ["amd64", "arm64"])


def trixie_apt() -> LabApt:
    main, _ = host_mirrors()
    return LabApt("apt-trixie", [f"deb {main} trixie main",
                                 f"deb {main} trixie-backports main"], ["amd64"])


def version_key(v: str) -> list:
    return [int(x) for x in re.findall(r"\d+", v)]


def pick(apt: LabApt, name: str, suites: set[str], arch: str) -> str:
    """Newest version of `name` in `suites`."""
    rows = [r for r in apt.madison([name], arch) if r[2] in suites]
    if not rows:
        raise SystemExit(f"{name}:{arch} not found in {sorted(suites)}")
    return max(rows, key=lambda r: version_key(r[1]))[1]


# --------------------------------------------------------------------------
# Kernels

# flavour -> (suites the ABI must come from, ABI pattern)
KERNELS = {
    "6.1": ({"bookworm", "bookworm-security", "bookworm-updates"}, r"6\.1\.0-\d+"),
    "6.12": ({"bookworm-backports"}, r"6\.12\.\d+\+deb12"),
}


@dataclass
class KernelChoice:
    flavour: str
    abi: str          # e.g. 6.1.0-56-arm64
    version: str      # Debian version of image and headers
    image_pkg: str
    headers_pkg: str


def discover_kernel(apt: LabApt, flavour: str) -> KernelChoice:
    """Newest ABI of `flavour` for which both image and headers exist.

    Package lists keep images of ABIs whose headers are already gone, so the
    two sets are intersected, at the same version.
    """
    suites, pat = KERNELS[flavour]
    img_re = re.compile(rf"^linux-image-({pat}-arm64)(-unsigned)?$")
    hdr_re = re.compile(rf"^linux-headers-({pat}-arm64)$")
    names = [n for n in apt.cache("pkgnames", "linux-").split()
             if img_re.match(n) or hdr_re.match(n)]
    rows = [r for r in apt.madison(names, "arm64") if r[2] in suites]
    headers = {(hdr_re.match(n).group(1), v) for n, v, _ in rows if hdr_re.match(n)}
    images = {}
    for n, v, _ in rows:
        m = img_re.match(n)
        if m and (m.group(1), v) in headers:
            # The unsigned image is the same kernel without the EFI signature.
            if m.group(2) or (m.group(1), v) not in images:
                images[(m.group(1), v)] = n
    if not images:
        raise SystemExit(f"no {flavour} ABI with both image and headers in {sorted(suites)}")
    (abi, version), image = max(images.items(), key=lambda kv: version_key(kv[0][1]))
    return KernelChoice(flavour, abi, version, image, f"linux-headers-{abi}")


@dataclass
class Kernel:
    flavour: str
    abi: str
    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.abi}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.abi


def build_kernel(apt: LabApt, choice: KernelChoice) -> Kernel:
    key = digest(recipe(build_kernel), choice.image_pkg, choice.version)
    final = CACHE / "kernels" / f"k{choice.flavour}-{key}"
    if not final.exists():
        log(f"kernel {choice.image_pkg} {choice.version}")
        with building(final) as tmp:
            debs = apt.download([f"{choice.image_pkg}:arm64={choice.version}"], tmp / "debs")
            for deb in debs:
                sh("dpkg-deb", "-x", deb, tmp)
            shutil.rmtree(tmp / "debs")
            # The image package ships no modules.dep; modprobe needs it.
            sh("depmod", "-b", tmp, choice.abi)
            # bcc finds headers through /lib/modules/<abi>/build; the guest
            # mounts this tree over the rootfs' /lib/modules, so provide it.
            # (and "source" for the -common half, as the headers package does).
            mods = tmp / "lib/modules" / choice.abi
            (mods / "build").symlink_to(f"/usr/src/linux-headers-{choice.abi}")
            common = choice.abi.removesuffix("-arm64") + "-common"
            (mods / "source").symlink_to(f"/usr/src/linux-headers-{common}")
            (tmp / "kernel.json").write_text(json.dumps(asdict(choice), indent=1))
    return Kernel(choice.flavour, choice.abi, choice.version, final)


# --------------------------------------------------------------------------
# arm64 root filesystem (one for both kernels)

ROOTFS_PKGS = ["python3", "python3-bpfcc", "python3-prometheus-client", "python3-pyroute2",
               "python3-systemd", "systemd", "procps", "kmod", "rasdaemon",
               "libtraceevent1",  # for the side-by-side rasdaemon 0.8.1 binary
               "sqlite3", "iproute2"]
EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*",
            "/usr/share/info/*", "/usr/share/lintian/*"]


# The CPU qemu-user emulates for the arm64 maintainer scripts and dpkg (binfmt passes
# QEMU_CPU on to every arm64 process). Its default, "max", has SVE, which glibc's string
# functions then use: a plain ARMv8.0 core emulates ~15% faster (xz, python3 measured).
QEMU_USER_CPU = "cortex-a72"


def rootfs_inputs(apt: LabApt, kernels: list[KernelChoice]) -> dict:
    suites = {"bookworm", "bookworm-security", "bookworm-updates"}
    rows = apt.madison(ROOTFS_PKGS, "arm64")   # one apt-cache run: it is slow
    pins = {}
    for p in ROOTFS_PKGS:
        versions = [v for n, v, suite in rows if n == p and suite in suites]
        if not versions:
            raise SystemExit(f"{p}:arm64 not found in {sorted(suites)}")
        pins[p] = max(versions, key=version_key)
    for k in kernels:
        pins[k.headers_pkg] = k.version
    bpo = [v for n, v, suite in rows if n == "rasdaemon" and suite == "bookworm-backports"]
    return {"pins": pins, "rasdaemon_bpo": max(bpo, key=version_key, default=None)}


def kernel_placeholder(kernels: list[KernelChoice], where: Path) -> Path:
    """An empty arm64 package that Provides the kernel images.

    bookworm-backports' linux-headers-6.12 depends on its linux-image; the
    real one would drag 300 MB of modules and an initramfs build under
    qemu-user into a rootfs whose kernels boot from the host anyway.
    """
    provides = ", ".join(f"linux-image-{k.abi}{suffix} (= {k.version})"
                         for k in kernels for suffix in ("", "-unsigned"))
    pkg = where / "placeholder"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: rasd-lab-kernel-placeholder\nVersion: 1\nArchitecture: arm64\n"
        "Maintainer: rasd lab <root@localhost>\n"
        f"Provides: {provides}\n"
        "Description: lab placeholder: the guest kernels boot from the host\n")
    sh("dpkg-deb", "--build", "--root-owner-group", pkg, where / "placeholder.deb",
       capture=True)
    return where / "placeholder.deb"


def build_rootfs(apt: LabApt, kernels: list[KernelChoice]) -> Path:
    """mmdebstrap an arm64 bookworm tree through qemu-user binfmt.

    Both kernels' headers go into the one tree (bcc needs the running
    kernel's).  rasdaemon 0.6.8 is installed; bookworm-backports' 0.8.1 has
    the same package name, so its binary is unpacked beside it in /opt.
    """
    inputs = rootfs_inputs(apt, kernels)
    key = digest(recipe(build_rootfs, rootfs_inputs, kernel_placeholder), ROOTFS_PKGS,
                 EXCLUDES, inputs, Path(deb_uncompress.__file__).read_text())
    final = CACHE / "rootfs" / f"arm64-{key}"
    if final.exists():
        return final
    log(f"rootfs ({len(inputs['pins'])} named packages) -> {final}")
    with building(final) as tmp:
        hooks = []
        if inputs["rasdaemon_bpo"]:
            debs = apt.download([f"rasdaemon:arm64={inputs['rasdaemon_bpo']}"], tmp / "debs")
            hooks.append(f'--customize-hook=dpkg-deb -x {debs[0]} '
                         f'"$1"/opt/rasdaemon-{inputs["rasdaemon_bpo"]}')
        # Headers outside bookworm proper come from security or backports:
        # name them with their exact versions so apt cannot pick another ABI.
        include = ",".join(f"{p}={v}" if p.startswith("linux-headers") else p
                           for p, v in inputs["pins"].items())
        # A path is only recognised as a lone --include item.
        placeholder = kernel_placeholder(kernels, tmp)
        (tmp / "root").mkdir()
        (tmp / "fifo").mkdir()
        fifo_in_root = "/lab-uncompress"
        uncompressor = deb_uncompress.FifoServer(tmp / "fifo", tmp / "root")
        hooks += [f'--setup-hook=mkdir "$1"{fifo_in_root} && '
                  f'mount --bind {tmp / "fifo"} "$1"{fifo_in_root}',
                  f'--customize-hook=umount "$1"{fifo_in_root} && rmdir "$1"{fifo_in_root}']
        try:
            _mmdebstrap_rootfs(hooks, fifo_in_root, placeholder, include, tmp / "root")
        finally:  # mmdebstrap's customize hook unmounts it unless it failed before
            subprocess.run(["umount", f"{tmp}/root{fifo_in_root}"], capture_output=True)
        uncompressor.stop()
        log("rootfs: " + "; ".join(uncompressor.log))
        shutil.rmtree(tmp / "fifo")
        (tmp / "inputs.json").write_text(json.dumps(inputs, indent=1))
        shutil.rmtree(tmp / "placeholder")
        shutil.rmtree(tmp / "debs", ignore_errors=True)
        (tmp / "placeholder.deb").unlink()
    return final


def _mmdebstrap_rootfs(hooks: list[str], fifo_in_root: str, placeholder: Path, include: str,
                       root: Path) -> None:
    main, security = host_mirrors()
    # nice -10: the critical path of a cold build; the kernels, initrds and QEMU 11 tree
    # building beside it have minutes of slack
    sh("nice", "-n", "-10", "mmdebstrap", "--mode=root", "--arch=arm64", "--variant=minbase",
       "--aptopt=APT::Install-Recommends \"false\"", "--dpkgopt=force-unsafe-io",
       # apt runs this hook before each dpkg call: dpkg then unpacks uncompressed
       # data.tar members instead of xz-decoding them under qemu-user
       f"--aptopt=DPkg::Pre-Install-Pkgs {{\"{deb_uncompress.hook_command(fifo_in_root)}\";}};",
       "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
       # /usr merged by symlinks as debootstrap does, not by the usrmerge package,
       # whose conversion script (perl) takes ~15 s under qemu-user
       "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
       *[f"--dpkgopt=path-exclude={e}" for e in EXCLUDES],
       f"--include={placeholder}", f"--include={include}", *hooks,
       # no apt lists in the image: it is never updated in place; nor the hook
       "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
       "--customize-hook=sed -i /Pre-Install-Pkgs/d \"$1\"/etc/apt/apt.conf.d/99mmdebstrap",
       "bookworm", root,
       f"deb {main} bookworm main", f"deb {main} bookworm-updates main",
       f"deb {security} bookworm-security main", f"deb {main} bookworm-backports main",
       env={**os.environ, "QEMU_CPU": QEMU_USER_CPU})


# --------------------------------------------------------------------------
# QEMU 11.1.3 side tree (trixie + trixie-backports, native amd64)

@dataclass
class Qemu:
    """How to start one QEMU build: argv prefix, environment, firmware."""
    name: str
    argv: list[str]
    env: dict
    firmware: Path
    version: str


def host_qemu() -> Qemu:
    ver = sh("qemu-system-aarch64", "--version", capture=True).split("\n")[0]
    return Qemu("host", ["qemu-system-aarch64"], {},
                Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"), ver)


def build_qemu11(apt: LabApt) -> Qemu:
    qemu_ver = pick(apt, "qemu-system-arm", {"trixie-backports"}, "amd64")
    efi_ver = pick(apt, "qemu-efi-aarch64", {"trixie", "trixie-backports"}, "amd64")
    key = digest(recipe(build_qemu11), qemu_ver, efi_ver)
    final = CACHE / "qemu" / f"trixie-{key}"
    if not final.exists():
        main, _ = host_mirrors()
        log(f"QEMU {qemu_ver} tree -> {final}")
        pin = ("Package: qemu-*\\nPin: release n=trixie-backports\\nPin-Priority: 990\\n")
        with building(final) as tmp:
            sh("mmdebstrap", "--mode=root", "--variant=essential",
               "--aptopt=APT::Install-Recommends \"false\"",
               *[f"--dpkgopt=path-exclude={e}" for e in EXCLUDES],
               "--setup-hook=mkdir -p \"$1\"/etc/apt/preferences.d; printf '"
               + pin + "' > \"$1\"/etc/apt/preferences.d/qemu-bpo",
               f"--include=qemu-system-arm={qemu_ver},qemu-efi-aarch64={efi_ver}",
               "trixie", tmp / "root",
               f"deb {main} trixie main", f"deb {main} trixie-backports main")
    return qemu11_from(final / "root")


def qemu11_from(root: Path) -> Qemu:
    """A trixie binary on the bookworm host: run it through the tree's ld.so."""
    argv = [str(root / "usr/lib64/ld-linux-x86-64.so.2"), "--library-path",
            str(root / "usr/lib/x86_64-linux-gnu"), str(root / "usr/bin/qemu-system-aarch64"),
            "-L", str(root / "usr/share/qemu")]
    # Without this QEMU loads the host 7.2's modules (ABI mismatch).
    env = {"QEMU_MODULE_DIR": str(root / "usr/lib/x86_64-linux-gnu/qemu")}
    ver = sh(*argv, "--version", env={**os.environ, **env}, capture=True).split("\n")[0]
    return Qemu("qemu11", argv, env, root / "usr/share/qemu-efi-aarch64/QEMU_EFI.fd", ver)


# --------------------------------------------------------------------------
# Static arm64 helpers and the per-kernel initramfs

GUEST_SRC = LAB_DIR / "guest"
# 9p transport and overlayfs: everything else is modprobed from the kernel
# tree that the guest mounts over 9p.
INITRD_MODULES = ["9p", "9pnet_virtio", "virtio_pci", "overlay"]
INITRD_SLOT = 64 * 1024  # zero bytes before the initramfs (Linux skips NUL padding)


def build_tools() -> Path:
    """Cross-compile the guest C helpers (static, so they run from the initrd)."""
    srcs = sorted(GUEST_SRC.glob("*.c"))
    gcc = sh("aarch64-linux-gnu-gcc", "--version", capture=True).split("\n")[0]
    key = digest(recipe(build_tools), gcc, [(s.name, s.read_text()) for s in srcs])
    final = CACHE / "tools" / f"arm64-{key}"
    if not final.exists():
        with building(final) as tmp:
            for src in srcs:
                sh("aarch64-linux-gnu-gcc", "-O2", "-Wall", "-Werror", "-static",
                   "-o", tmp / src.stem, src)
    return final


def busybox(apt: LabApt) -> Path:
    ver = pick(apt, "busybox-static", {"bookworm", "bookworm-security", "bookworm-updates"},
               "arm64")
    final = CACHE / "busybox" / f"arm64-{digest(recipe(busybox), ver)}"
    if not final.exists():
        with building(final) as tmp:
            debs = apt.download([f"busybox-static:arm64={ver}"], tmp / "debs")
            sh("dpkg-deb", "-x", debs[0], tmp / "x")
            shutil.move(tmp / "x/bin/busybox", tmp / "busybox")
            shutil.rmtree(tmp / "debs")
            shutil.rmtree(tmp / "x")
    return final / "busybox"


def module_closure(kernel: Kernel, names: list[str]) -> list[str]:
    """Module paths (relative to the module dir) in load order, deps first."""
    deps = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", Path(m).name).replace("-", "_"): m
               for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        # modules.dep lists all transitive deps, deepest last: load reversed
        for d in reversed(deps[mod]):
            if d not in order:
                order.append(d)
        if mod not in order:
            order.append(mod)

    for n in names:
        mod = by_name.get(n.replace("-", "_"))
        if mod:  # absent = built into this kernel
            visit(mod)
    return order


def build_initrd(kernel: Kernel, bb: Path, tools: Path) -> Path:
    """busybox + static helpers + 9p/overlay modules + /init (guest/init.sh)."""
    init = (GUEST_SRC / "init.sh").read_text()
    mods = module_closure(kernel, INITRD_MODULES)
    key = digest(recipe(build_initrd, module_closure), kernel.root.name, init, mods,
                 bb.parent.name, tools.name)
    final = CACHE / "initrd" / f"{kernel.flavour}-{key}"
    if not final.exists():
        with building(final) as tmp:
            t = tmp / "tree"
            for d in ("bin", "dev", "proc", "sys", "tmp", "root", "lab", "mnt", "run",
                      "lib/modules"):
                (t / d).mkdir(parents=True)
            shutil.copy(bb, t / "bin/busybox")
            for tool in tools.iterdir():
                shutil.copy(tool, t / "bin" / tool.name)
            (t / "init").write_text(init)
            (t / "init").chmod(0o755)
            load = []
            for m in mods:
                dst = t / "lib/initrd-modules" / Path(m).name
                dst.parent.mkdir(exist_ok=True)
                shutil.copy(kernel.modules / m, dst)
                # busybox insmod cannot decompress: store plain .ko
                if dst.suffix in (".xz", ".zst"):
                    sh(*(["xz", "-dq"] if dst.suffix == ".xz" else ["zstd", "-dq", "--rm"]), dst)
                    dst = dst.with_suffix("")
                load.append(dst.name)
            (t / "lib/initrd-modules/order").write_text("\n".join(load) + "\n")
            files = sh("find", ".", cwd=t, capture=True)
            cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=t, check=True,
                                  input=files.encode(), stdout=subprocess.PIPE).stdout
            gz = subprocess.run(["gzip", "-1"], input=cpio, check=True,
                                stdout=subprocess.PIPE).stdout
            # A zeroed slot in front, for an uncompressed cpio (the HEST
            # upgrade) to be dropped in without changing the size: the
            # firmware places QEMU's error blob depending on the sizes of the
            # images it loads, and the upgraded table hard-codes addresses.
            (tmp / "initrd.img").write_bytes(bytes(INITRD_SLOT) + gz)
            shutil.rmtree(t)
    return final / "initrd.img"


# --------------------------------------------------------------------------

@dataclass
class Lab:
    kernels: dict          # flavour -> Kernel
    rootfs: Path
    qemu: dict             # name -> Qemu
    initrds: dict          # flavour -> Path
    tools: Path


def _qemu11() -> Qemu:
    tapt = trixie_apt()
    tapt.update()
    return build_qemu11(tapt)


def build_all(flavours=("6.1", "6.12"), want_qemu11=True, want_rootfs=True) -> Lab:
    with cache_lock():
        apt = bookworm_apt()
        apt.update()
        t0 = time.monotonic()
        choices = {f: discover_kernel(apt, f) for f in KERNELS}

        def kernels_and_initrds() -> tuple[dict, dict, Path]:
            kernels = {f: build_kernel(apt, choices[f]) for f in flavours}
            log(f"kernels ready {time.monotonic() - t0:.1f}s: "
                + ", ".join(f"{k.abi} ({k.version})" for k in kernels.values()))
            tools = build_tools()
            bb = busybox(apt)
            initrds = {f: build_initrd(k, bb, tools) for f, k in kernels.items()}
            log(f"initrds ready {time.monotonic() - t0:.1f}s")
            return kernels, initrds, tools

        with ThreadPoolExecutor(max_workers=2) as pool:
            # The rootfs (dpkg under qemu-user) keeps one core busy for minutes; the
            # kernels, initrds and the QEMU 11 tree (native dpkg-deb, cross gcc, mostly
            # download) build beside it, so a cold build is one rootfs long.
            q11 = pool.submit(_qemu11) if want_qemu11 else None
            guest_side = pool.submit(kernels_and_initrds)
            rootfs = build_rootfs(apt, list(choices.values())) if want_rootfs else None
            log(f"rootfs ready {time.monotonic() - t0:.1f}s")
            kernels, initrds, tools = guest_side.result()
            qemus = {"host": host_qemu()}
            if q11:
                qemus["qemu11"] = q11.result()
        log(f"all ready {time.monotonic() - t0:.1f}s")
        return Lab(kernels, rootfs and rootfs / "root", qemus, initrds, tools)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", action="append", choices=sorted(KERNELS))
    ap.add_argument("--no-rootfs", action="store_true")
    ap.add_argument("--no-qemu11", action="store_true")
    args = ap.parse_args()
    lab = build_all(tuple(args.kernel or KERNELS), not args.no_qemu11, not args.no_rootfs)
    print(json.dumps(asdict(lab), default=str, indent=1))


if __name__ == "__main__":
    main()
