"""Name the VM behind a VMM task: cgroup, command line, vCPU thread name.

KVM events carry the task that was running (the VMM's vCPU thread). Three places
can name the guest, each with its own trust:

* the cgroup, set by the manager (libvirt/machined/podman/docker); the VMM cannot
  move itself out of it, but libvirt sanitises and truncates the name it puts there;
* the command line (``-name guest=…``, ``--id …``), exact but chosen by whoever
  started the process, and rewritable by the process itself;
* the thread name (``CPU 3/KVM``), which gives the vCPU index and nothing else.

Unknown stays unknown: a process called ``qemu`` with no ``-name`` and no machine
cgroup gets ``name: None``, never a name made up from its pid or binary.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Any

from .cgroups import CgroupResolver, cgroup2_mounts

PROC = "/proc"

# ---------------------------------------------------------------- cgroup paths

_UNIT_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def unescape_unit(name: str) -> str:
    """systemd unit-name unescaping: ``\\x2d`` → ``-`` (machined escapes the name)."""
    return _UNIT_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


# libvirt's machine name (src/hypervisor/domain_driver.c,
# virDomainDriverGenerateMachineName): "<drv>-[<user>-|embed-<hash8>-]<id>-<name>",
# <name> reduced to hostname characters and the whole cut at 64 characters.
# The non-greedy optional middle group tries "no user" first, so a privileged
# "qemu-3-vm-1" is id 3 name "vm-1", and "qemu-alice-3-vm1" is user alice.
_LIBVIRT_MACHINE = re.compile(
    r"^(?P<drv>qemu|lxc|ch|bhyve|libxl|vz)-(?:embed-[0-9a-f]{8}-|(?P<user>.+?)-)??"
    r"(?P<id>\d+)-(?P<name>.+)$")
_LIBVIRT_VM_DRIVERS = {"qemu", "ch", "bhyve", "libxl", "vz"}
# Container runtimes with the systemd cgroup driver: "<prefix>-<id>.scope".
_CONTAINER_SCOPES = (
    ("libpod-conmon-", None),  # podman's conmon, not the container itself
    ("crio-conmon-", None),
    ("libpod-", "podman"),
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
)
_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")
_VCPU_CGROUP = re.compile(r"^vcpu(\d+)$")  # libvirt's per-vCPU child cgroups


def _machine_owner(unit: str) -> dict[str, Any]:
    """machine-<escaped machine name>.scope: libvirt's or another machined machine."""
    machine = unescape_unit(unit[len("machine-"):-len(".scope")])
    m = _LIBVIRT_MACHINE.match(machine)
    if m:
        kind = "vm" if m.group("drv") in _LIBVIRT_VM_DRIVERS else "container"
        return {"kind": kind, "name": m.group("name"), "unit": unit, "machine": machine,
                "libvirt_id": int(m.group("id")), "how": f"cgroup:libvirt-{m.group('drv')}"}
    # systemd-nspawn, or anything else registered with machined: the machine name
    # is exactly what `machinectl` lists, so it is a name, not a guess.
    return {"kind": "machine", "name": machine, "unit": unit, "machine": machine,
            "how": "cgroup:machined"}


def _container_owner(component: str) -> dict[str, Any] | None:
    base = component[:-len(".scope")] if component.endswith(".scope") else None
    if base is None:
        return None
    for prefix, runtime in _CONTAINER_SCOPES:
        if base.startswith(prefix):
            cid = base[len(prefix):]
            if runtime is None or not _CONTAINER_ID.match(cid):
                return None
            return {"kind": "container", "runtime": runtime, "id": cid, "name": None,
                    "unit": component, "how": f"cgroup:{runtime}"}
    return None


def owner_from_cgroup_path(path: str) -> dict[str, Any] | None:
    """What a cgroup path says about its owner: VM, container, machine, or unit.

    Deepest recognised component wins, except that libvirt's own children
    (``…scope/libvirt/vcpu3``, ``…/emulator``) belong to the machine scope above them.
    Returns None for paths that name nothing (``/``, bare slices).
    """
    parts = [p for p in path.split("/") if p]
    vcpu = None
    for part in parts:
        m = _VCPU_CGROUP.match(part)
        if m:
            vcpu = int(m.group(1))
    for i in range(len(parts) - 1, -1, -1):
        part = parts[i]
        owner = None
        if part.startswith("machine-") and part.endswith(".scope"):
            owner = _machine_owner(part)
        elif part.endswith(".libvirt-qemu") or part.endswith(".libvirt-lxc"):
            # libvirt with the cgroupfs backend (no systemd): /machine/<name>.libvirt-qemu
            name, _, drv = part.rpartition(".libvirt-")
            owner = {"kind": "vm" if drv == "qemu" else "container", "name": name,
                     "unit": None, "how": f"cgroup:libvirt-{drv}"}
        elif i > 0 and parts[i - 1] == "docker" and _CONTAINER_ID.match(part):
            owner = {"kind": "container", "runtime": "docker", "id": part, "name": None,
                     "unit": None, "how": "cgroup:docker"}
        else:
            owner = _container_owner(part)
        if owner:
            if vcpu is not None:
                owner["vcpu"] = vcpu
            return owner
    for part in reversed(parts):
        if part.endswith((".scope", ".service")):
            return {"kind": "scope" if part.endswith(".scope") else "service",
                    "name": None, "unit": part, "how": "cgroup:unit"}
    return None


def deepest_unit(path: str) -> str | None:
    """The innermost systemd .scope/.service in a cgroup path, as systemd spells it."""
    for part in reversed([p for p in path.split("/") if p]):
        if part.endswith((".scope", ".service")):
            return part
    return None


def parse_proc_cgroup(text: str) -> list[tuple[str, str]]:
    """``/proc/<pid>/cgroup`` lines → [(controllers, path)]; v2 "0::" first."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        hid, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep and sep2:
            out.append((controllers, path))
    # v2 first (it is what systemd manages on modern hosts), then name=systemd, then v1.
    out.sort(key=lambda cp: 0 if cp[0] == "" else 1 if cp[0] == "name=systemd" else 2)
    return out


def owner_from_proc_cgroup(text: str) -> dict[str, Any] | None:
    """The best owner any hierarchy in ``/proc/<pid>/cgroup`` names."""
    best: dict[str, Any] | None = None
    for _, path in parse_proc_cgroup(text):
        owner = owner_from_cgroup_path(path)
        if owner is None:
            continue
        if owner["kind"] in ("vm", "machine", "container"):
            return owner
        best = best or owner
    return best


# ------------------------------------------------------------------ cmdlines

def vmm_kind(argv0: str) -> str | None:
    """Which VMM a binary name is (basename of argv[0]); None when not one we know."""
    base = os.path.basename(argv0)
    if base.startswith("qemu-system-") or base in ("qemu-kvm", "kvm"):
        return "qemu"
    if base in ("firecracker", "cloud-hypervisor", "crosvm"):
        return base
    if base in ("lkvm", "lkvm-static"):
        return "kvmtool"
    return None


def _option(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last ``--opt value`` or ``--opt=value`` (last wins, as in getopt)."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1:]
    return value


def split_qemu_opts(text: str) -> list[str]:
    """QemuOpts splitting: ',' separates, ',,' is a literal comma."""
    parts, cur, i = [], [], 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(text[i])
        i += 1
    parts.append("".join(cur))
    return parts


def qemu_name(value: str) -> str | None:
    """``-name`` value → guest name. Its implied first key is ``guest``
    (qemu's -name takes ``guest=``, ``process=``, ``debug-threads=``)."""
    for i, part in enumerate(split_qemu_opts(value)):
        key, eq, val = part.partition("=")
        if not eq and i == 0:
            return key or None
        if eq and key == "guest":
            return val or None
    return None


def parse_cmdline(argv: list[str]) -> dict[str, Any]:
    """{"vmm", "name", "how"} from a VMM's argv; name None when argv names nothing."""
    vmm = vmm_kind(argv[0]) if argv else None
    name, how = None, None
    if vmm == "qemu":
        # qemu accepts -opt and --opt alike (never --opt=value, so that form is
        # simply never seen on a running qemu).
        value = _option(argv[1:], ("-name", "--name"))
        if value is not None:
            name, how = qemu_name(value), "cmdline:qemu -name"
    elif vmm == "firecracker":
        value = _option(argv[1:], ("--id",))
        # "anonymous-instance" is firecracker's default id: it identifies nothing.
        if value and value != "anonymous-instance":
            name, how = value, "cmdline:firecracker --id"
    elif vmm == "cloud-hypervisor":
        # cloud-hypervisor has no guest name; its API socket is unique per running VMM
        # and is what an operator uses to reach it (ch-remote --api-socket).
        value = _option(argv[1:], ("--api-socket",))
        if value:
            path = value
            for part in value.split(","):
                if part.startswith("path="):
                    path = part[len("path="):]
                elif part.startswith("fd="):
                    path = None  # an inherited fd names nothing
            if path and "=" not in path:
                name, how = path, "cmdline:cloud-hypervisor --api-socket"
    elif vmm == "kvmtool":
        value = _option(argv[1:], ("--name",))
        if value:
            name, how = value, "cmdline:kvmtool --name"
    return {"vmm": vmm, "name": name, "how": how if name else None}


# --------------------------------------------------------------- thread names

_VCPU_THREAD = (
    re.compile(r"^CPU (\d+)/KVM$"),  # qemu (debug-threads=on, which libvirt sets)
    re.compile(r"^fc_vcpu (\d+)$"),  # firecracker
    re.compile(r"^vcpu(\d+)$"),  # cloud-hypervisor
    re.compile(r"^kvm-vcpu-(\d+)$"),  # kvmtool
    re.compile(r"^crosvm_vcpu(\d+)$"),  # crosvm
)


def vcpu_from_thread_name(comm: str | None) -> int | None:
    if not comm:
        return None
    for pattern in _VCPU_THREAD:
        m = pattern.match(comm.strip())
        if m:
            return int(m.group(1))
    return None


# ------------------------------------------------------------- /proc readers

def _read(path: str, limit: int = 65536) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def read_cmdline(pid: int, proc: str = PROC) -> list[str] | None:
    data = _read(f"{proc}/{pid}/cmdline", 1 << 20)
    if data is None:
        return None
    return [a.decode(errors="replace") for a in data.rstrip(b"\0").split(b"\0")] if data else []


def read_cgroup(pid: int, proc: str = PROC, tid: int | None = None) -> str | None:
    path = f"{proc}/{pid}/task/{tid}/cgroup" if tid else f"{proc}/{pid}/cgroup"
    data = _read(path)
    return None if data is None else data.decode(errors="replace")


def read_thread_comm(tgid: int, tid: int, proc: str = PROC) -> str | None:
    data = _read(f"{proc}/{tgid}/task/{tid}/comm", 64)
    return None if data is None else data.decode(errors="replace").rstrip("\n")


def start_time(pid: int, proc: str = PROC) -> int | None:
    """/proc/<pid>/stat field 22 (starttime, clock ticks since boot): with the pid it
    identifies a process for good, so a reused pid is told apart."""
    data = _read(f"{proc}/{pid}/stat", 4096)
    if not data:
        return None
    # comm (field 2) may hold spaces and ')' — split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[22 - 3])
    except (IndexError, ValueError):
        return None


# ---------------------------------------------------------------- attribution

def combine(cgroup_owner: dict | None, cmd: dict) -> dict[str, Any]:
    """Pick the name and say how. The cgroup is set by the manager, the cmdline is
    exact; when both exist and agree, the exact one; when they disagree, the cgroup,
    and the disagreement is kept."""
    out: dict[str, Any] = {"name": None, "how": None, "vmm": cmd.get("vmm")}
    cg_name = cgroup_owner.get("name") if cgroup_owner else None
    cg_is_vm = bool(cgroup_owner) and cgroup_owner["kind"] in ("vm", "machine")
    if cgroup_owner:
        out["unit"] = cgroup_owner.get("unit")
        if cgroup_owner["kind"] == "container":
            out["container"] = {k: cgroup_owner.get(k) for k in ("runtime", "id", "name")}
    if cg_is_vm and cg_name and cmd.get("name"):
        if libvirt_sanitize(cmd["name"]) == cg_name or cmd["name"] == cg_name:
            out.update(name=cmd["name"], how=f"{cmd['how']}+{cgroup_owner['how']}")
        else:
            out.update(name=cg_name, how=cgroup_owner["how"],
                       disagreement=f"cmdline names {cmd['name']!r}")
    elif cg_is_vm and cg_name:
        out.update(name=cg_name, how=cgroup_owner["how"])
    elif cmd.get("name"):
        out.update(name=cmd["name"], how=cmd["how"])
    return out


def libvirt_sanitize(name: str) -> str:
    """virDomainMachineNameAppendValid: hostname characters only, runs of '.'/'-'
    collapsed, no leading/trailing '.'/'-'. (The 64-character cut is on the whole
    machine name, so a long name only has to match as a prefix — not checked here.)"""
    out, skip = [], True
    for ch in name:
        if ch in ".-":
            if not skip:
                out.append(ch)
                skip = True
            continue
        if ch.isascii() and ch.isalnum():
            out.append(ch)
            skip = False
    return "".join(out).rstrip(".-")


def _identify(tgid: int, proc: str) -> dict[str, Any] | None:
    """The per-process part (cached): None when the process cannot be read."""
    argv = read_cmdline(tgid, proc)
    cg_text = read_cgroup(tgid, proc)
    if argv is None and cg_text is None:
        return None
    owner = owner_from_proc_cgroup(cg_text) if cg_text else None
    cmd = parse_cmdline(argv or [])
    info = combine(owner, cmd)
    info["is_vmm"] = bool(cmd["vmm"]) or bool(owner and owner["kind"] in ("vm", "machine"))
    return info


def _vcpu(tgid: int, tid: int | None, comm: str | None, proc: str) -> tuple[int | None, str | None]:
    """vCPU index: the comm the event carried (the name at the time), else the live
    thread name, else libvirt's per-vCPU cgroup of that thread."""
    v = vcpu_from_thread_name(comm)
    if v is not None:
        return v, "comm"
    if tid is None:
        return None, None
    v = vcpu_from_thread_name(read_thread_comm(tgid, tid, proc))
    if v is not None:
        return v, "thread-name"
    text = read_cgroup(tgid, proc, tid=tid)
    for _, path in parse_proc_cgroup(text or ""):
        owner = owner_from_cgroup_path(path)
        if owner and owner.get("vcpu") is not None:
            return owner["vcpu"], "cgroup"
    return None, None


def _result(info: dict | None, tgid: int, tid: int | None, vcpu: int | None,
            vcpu_how: str | None) -> dict[str, Any] | None:
    if info is None and vcpu is None:
        return None
    if info is not None and not info.get("is_vmm") and vcpu is None and info["name"] is None:
        return None  # nothing says this is a VMM at all
    out: dict[str, Any] = {"name": None, "tgid": tgid, "vcpu": vcpu, "how": None}
    if info:
        out.update({k: v for k, v in info.items() if k != "is_vmm"})
    out["tid"] = tid
    if vcpu_how:
        out["vcpu_how"] = vcpu_how
    return out


def attribute(tgid: int, tid: int | None = None, comm: str | None = None,
              proc: str = PROC) -> dict[str, Any] | None:
    """{"name", "tgid", "vcpu", "how", ...} for a VMM task, read from /proc now.

    None when the process is gone and its comm says nothing, or when nothing marks it
    as a VMM (not a known VMM binary, no VM cgroup, no vCPU thread name).
    """
    vcpu, vcpu_how = _vcpu(tgid, tid, comm, proc)
    return _result(_identify(tgid, proc), tgid, tid, vcpu, vcpu_how)


def attribute_task(task: Any, proc: str = PROC) -> dict[str, Any] | None:
    """attribute() for an ``rasd.events.Task`` (tgid, tid, comm at event time)."""
    return attribute(task.tgid, task.tid, task.comm, proc)


class VmCache:
    """attribute() with a bounded per-tgid cache checked against the start time.

    A VMM killed by the very SIGBUS rasd reports is gone by the time the event is
    classified; the cached entry is then returned marked ``verified: False`` (the pid
    cannot have been reused by a live process, but a short-lived one in between
    cannot be ruled out)."""

    def __init__(self, max_entries: int = 1024, proc: str = PROC,
                 cgroups: CgroupResolver | None = None) -> None:
        self.max_entries = max_entries
        self.proc = proc
        self._cache: OrderedDict[int, tuple[int, dict | None]] = OrderedDict()
        self._cgroups = cgroups  # a CgroupResolver over cgroup2 (made on first use)

    def _info(self, tgid: int) -> tuple[dict | None, bool]:
        st = start_time(tgid, self.proc)
        cached = self._cache.get(tgid)
        if st is None:
            return (cached[1], False) if cached else (None, True)
        if cached and cached[0] == st:
            self._cache.move_to_end(tgid)
            return cached[1], True
        info = _identify(tgid, self.proc)
        # Re-check: if the pid changed hands while we read, the read is not trusted.
        if start_time(tgid, self.proc) != st:
            return None, True
        self._cache[tgid] = (st, info)
        self._cache.move_to_end(tgid)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return info, True

    def lookup(self, tgid: int, tid: int | None = None, comm: str | None = None,
               cgroup_id: int | None = None) -> dict[str, Any] | None:
        """``cgroup_id``: the cgroup v2 id the event ran in (KVM probes send it): names
        the VM when the process is gone and was never seen alive."""
        info, verified = self._info(tgid)
        from_event = info is None and verified and bool(cgroup_id)
        if from_event:
            info = self._by_cgroup_id(cgroup_id)
        vcpu, vcpu_how = _vcpu(tgid, tid, comm, self.proc)
        out = _result(info, tgid, tid, vcpu, vcpu_how)
        if out is not None and not verified:
            out["verified"] = False
        if out is not None and from_event and info is not None:
            out["cgroup_id"] = cgroup_id
        return out

    def _by_cgroup_id(self, cgroup_id: int) -> dict[str, Any] | None:
        """The owner the event's cgroup names (the directory outlives the process while
        its manager keeps it), as _identify() gives it from /proc; None if unknown."""
        if self._cgroups is None:
            self._cgroups = CgroupResolver(mounts=cgroup2_mounts())
        path = self._cgroups.path_of(cgroup_id)
        owner = owner_from_cgroup_path(path) if path else None
        if owner is None:
            return None
        info = combine(owner, parse_cmdline([]))
        info["is_vmm"] = owner["kind"] in ("vm", "machine")
        if info.get("how"):  # "cgroup-id:libvirt-qemu": the path came from the event's id
            info["how"] = info["how"].replace("cgroup:", "cgroup-id:", 1)
        return info

    def lookup_task(self, task: Any) -> dict[str, Any] | None:
        """lookup() for an ``rasd.events.Task``."""
        return self.lookup(task.tgid, task.tid, task.comm)

    def __len__(self) -> int:
        return len(self._cache)
