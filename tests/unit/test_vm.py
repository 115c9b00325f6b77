"""VM attribution: parsing of real-world cgroup paths and VMM command lines, then a
real process on this host posing as qemu (argv, thread names, cgroup) read back
from the real /proc."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from rasd.classify import vm
from rasd.classify.vm import (VmCache, attribute, owner_from_cgroup_path,
                              owner_from_proc_cgroup, parse_cmdline, qemu_name,
                              start_time, unescape_unit, vcpu_from_thread_name)

# ------------------------------------------------------------------ cgroups


def test_libvirt_scope_v2_with_vcpu_child():
    # libvirt ≥ 3.x on cgroup v2: per-vCPU child cgroups under the machine scope.
    path = "/machine.slice/machine-qemu\\x2d12\\x2dweb\\x2dfront.scope/libvirt/vcpu3"
    o = owner_from_cgroup_path(path)
    assert o["kind"] == "vm" and o["name"] == "web-front" and o["libvirt_id"] == 12
    assert o["unit"] == "machine-qemu\\x2d12\\x2dweb\\x2dfront.scope"
    assert o["vcpu"] == 3 and o["how"] == "cgroup:libvirt-qemu"


def test_libvirt_session_and_lxc_and_embed():
    o = owner_from_cgroup_path("/user.slice/machine-qemu\\x2dalice\\x2d3\\x2dvm1.scope")
    assert (o["kind"], o["name"]) == ("vm", "vm1")
    o = owner_from_cgroup_path("/machine.slice/machine-lxc\\x2d4711\\x2dbox.scope")
    assert (o["kind"], o["name"]) == ("container", "box")
    o = owner_from_cgroup_path(
        "/machine.slice/machine-qemu\\x2dembed\\x2d0a1b2c3d\\x2d1\\x2dt.scope")
    assert o["name"] == "t"
    # A privileged domain whose own name starts with digits: the id is the first number.
    o = owner_from_cgroup_path("/machine.slice/machine-qemu\\x2d3\\x2d7\\x2dalpha.scope")
    assert (o["libvirt_id"], o["name"]) == (3, "7-alpha")


def test_nspawn_and_cgroupfs_libvirt():
    o = owner_from_cgroup_path("/machine.slice/machine-fedora\\x2d40.scope/payload")
    assert o == {"kind": "machine", "name": "fedora-40", "unit": "machine-fedora\\x2d40.scope",
                 "machine": "fedora-40", "how": "cgroup:machined"}
    o = owner_from_cgroup_path("/machine/db01.libvirt-qemu/emulator")
    assert (o["kind"], o["name"], o["how"]) == ("vm", "db01", "cgroup:libvirt-qemu")


def test_containers():
    cid = "4f3c" + "a" * 60
    o = owner_from_cgroup_path(f"/machine.slice/libpod-{cid}.scope/container")
    assert (o["kind"], o["runtime"], o["id"], o["name"]) == ("container", "podman", cid, None)
    assert owner_from_cgroup_path(f"/system.slice/docker-{cid}.scope")["runtime"] == "docker"
    assert owner_from_cgroup_path(f"/docker/{cid}")["runtime"] == "docker"
    o = owner_from_cgroup_path(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
        f"cri-containerd-{cid}.scope")
    assert o["runtime"] == "containerd"
    # conmon is podman's monitor process, not the container: it names no container.
    o = owner_from_cgroup_path(f"/machine.slice/libpod-conmon-{cid}.scope")
    assert o == {"kind": "scope", "name": None, "unit": f"libpod-conmon-{cid}.scope",
                 "how": "cgroup:unit"}


def test_plain_units_and_nothing():
    o = owner_from_cgroup_path("/user.slice/user-0.slice/user@0.service/app.slice/x.service")
    assert (o["kind"], o["unit"], o["name"]) == ("service", "x.service", None)
    assert owner_from_cgroup_path("/user.slice/user-0.slice/user@0.service")["unit"] == \
        "user@0.service"
    assert owner_from_cgroup_path("/") is None
    assert owner_from_cgroup_path("/system.slice") is None


def test_proc_cgroup_prefers_the_hierarchy_that_names_a_vm():
    text = ("12:memory:/machine.slice/machine-qemu\\x2d1\\x2dvm1.scope\n"
            "1:name=systemd:/machine.slice/machine-qemu\\x2d1\\x2dvm1.scope\n"
            "0::/\n")
    assert owner_from_proc_cgroup(text)["name"] == "vm1"
    session = "0::/user.slice/user-0.slice/session-3.scope\n"
    assert owner_from_proc_cgroup(session)["kind"] == "scope"
    assert unescape_unit("machine-qemu\\x2d1\\x2da\\x2eb") == "machine-qemu-1-a.b"


# ------------------------------------------------------------------ cmdlines

LIBVIRT_QEMU = ["/usr/bin/qemu-system-aarch64", "-name", "guest=db-01,debug-threads=on",
                "-S", "-object", '{"qom-type":"secret","id":"masterKey0"}',
                "-machine", "virt-8.2,usb=off,gic-version=3", "-accel", "kvm",
                "-cpu", "host", "-m", "size=8388608k", "-smp", "4,sockets=4",
                "-uuid", "0b8c2c0e-5c7a-4a6c-9a8e-3c2e1f0d9b7a",
                "-append", "console=ttyAMA0 -name x"]


def test_qemu_names():
    assert parse_cmdline(LIBVIRT_QEMU) == {"vmm": "qemu", "name": "db-01",
                                           "how": "cmdline:qemu -name"}
    assert parse_cmdline(["qemu-system-aarch64", "-name", "plain", "-m", "1G"])["name"] == "plain"
    assert parse_cmdline(["qemu-kvm", "--name", "legacy,process=qemu:legacy"])["name"] == "legacy"
    assert qemu_name("guest=a,,b,debug-threads=on") == "a,b"  # ",," is a literal comma
    assert qemu_name("process=p,guest=g") == "g"
    assert qemu_name("debug-threads=on") is None


def test_unknown_stays_unknown():
    # qemu with no -name: the VMM is known, the guest is not; no name is made up.
    assert parse_cmdline(["qemu-system-aarch64", "-m", "1G", "-kernel", "Image"]) == \
        {"vmm": "qemu", "name": None, "how": None}
    assert parse_cmdline(["firecracker", "--api-sock", "/tmp/fc.sock"])["name"] is None
    assert parse_cmdline(["firecracker", "--id", "anonymous-instance"])["name"] is None
    assert parse_cmdline(["bash", "-name", "x"]) == {"vmm": None, "name": None, "how": None}
    assert parse_cmdline([]) == {"vmm": None, "name": None, "how": None}


def test_other_vmms():
    assert parse_cmdline(["/usr/bin/firecracker", "--id", "i-0abc", "--api-sock", "/s"]) == \
        {"vmm": "firecracker", "name": "i-0abc", "how": "cmdline:firecracker --id"}
    assert parse_cmdline(["firecracker", "--id=vm7"])["name"] == "vm7"
    ch = ["cloud-hypervisor", "--api-socket", "path=/run/vc/vm/abc/clh-api.sock",
          "--kernel", "vmlinux", "--serial", "tty"]
    assert parse_cmdline(ch)["name"] == "/run/vc/vm/abc/clh-api.sock"
    bare = ["cloud-hypervisor", "--api-socket", "/run/ch.sock"]
    assert parse_cmdline(bare)["name"] == "/run/ch.sock"
    assert parse_cmdline(["cloud-hypervisor", "--api-socket", "fd=3"])["name"] is None
    assert parse_cmdline(["lkvm", "run", "--name", "guest-x", "-c", "2"])["name"] == "guest-x"
    assert parse_cmdline(["crosvm", "run", "vmlinux"]) == {"vmm": "crosvm", "name": None,
                                                          "how": None}


def test_vcpu_thread_names():
    assert vcpu_from_thread_name("CPU 3/KVM") == 3
    assert vcpu_from_thread_name("CPU 12/KVM\n") == 12
    assert vcpu_from_thread_name("fc_vcpu 0") == 0
    assert vcpu_from_thread_name("vcpu7") == 7
    assert vcpu_from_thread_name("kvm-vcpu-2") == 2
    assert vcpu_from_thread_name("crosvm_vcpu5") == 5
    for other in ("qemu-system-aar", "IO mon_iothread", "worker", "", None, "CPU x/KVM"):
        assert vcpu_from_thread_name(other) is None


def test_cgroup_and_cmdline_disagree():
    owner = owner_from_cgroup_path("/machine.slice/machine-qemu\\x2d1\\x2dvm1.scope")
    agree = vm.combine(owner, {"vmm": "qemu", "name": "vm1", "how": "cmdline:qemu -name"})
    assert agree["name"] == "vm1" and agree["how"] == "cmdline:qemu -name+cgroup:libvirt-qemu"
    # libvirt drops characters a hostname cannot hold: the exact cmdline name wins.
    owner = owner_from_cgroup_path("/machine.slice/machine-qemu\\x2d2\\x2dmyvm.scope")
    agree = vm.combine(owner, {"vmm": "qemu", "name": "my_vm", "how": "cmdline:qemu -name"})
    assert agree["name"] == "my_vm"
    clash = vm.combine(owner, {"vmm": "qemu", "name": "other", "how": "cmdline:qemu -name"})
    assert clash["name"] == "myvm" and "other" in clash["disagreement"]


# ------------------------------------------------------- a fake /proc tree
# Pid reuse cannot be produced on demand, so this one case uses a /proc-shaped tree.

def _fake_proc(root: Path, pid: int, start: int, argv: list[str], cgroup: str) -> None:
    d = root / str(pid)
    (d / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} (qemu-system-aar) " + " ".join(fields) + "\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "cgroup").write_text(cgroup)
    (d / "task" / str(pid) / "comm").write_text("CPU 0/KVM\n")


def test_cache_start_time_guards_pid_reuse(tmp_path: Path):
    _fake_proc(tmp_path, 4242, 1000, ["qemu-system-aarch64", "-name", "guest=old"], "0::/\n")
    cache = VmCache(max_entries=2, proc=str(tmp_path))
    assert start_time(4242, str(tmp_path)) == 1000
    assert cache.lookup(4242, 4242)["name"] == "old"
    # Same pid, new process (later start time): the cache must not answer "old".
    _fake_proc(tmp_path, 4242, 2000, ["qemu-system-aarch64", "-name", "guest=new"], "0::/\n")
    r = cache.lookup(4242, 4242)
    assert r["name"] == "new" and r["vcpu"] == 0 and "verified" not in r
    # Process gone: the last entry is still given, marked unverified.
    for p in sorted((tmp_path / "4242").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (tmp_path / "4242").rmdir()
    r = cache.lookup(4242, 4242, comm="CPU 2/KVM")
    assert r["name"] == "new" and r["verified"] is False and r["vcpu"] == 2
    # Bounded.
    for pid in (1, 2, 3):
        _fake_proc(tmp_path, pid, 5, ["qemu-system-aarch64"], "0::/\n")
        cache.lookup(pid)
    assert len(cache) == 2


# ------------------------------------------------------------- real /proc

CHILD = r"""
import os, sys, threading
def vcpu(i, ready):
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/comm", "w") as f:
        f.write(f"CPU {i}/KVM")
    ready.append((i, tid))
    threading.Event().wait()
ready = []
for i in range(2):
    threading.Thread(target=vcpu, args=(i, ready), daemon=True).start()
while len(ready) < 2:
    pass
print(" ".join(str(tid) for _, tid in sorted(ready)), flush=True)  # by vCPU index
sys.stdin.read()
"""


def _spawn(tmp_path: Path, argv_tail: list[str], argv0: str = "qemu-system-aarch64"):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # argv[0] and the qemu options are what /proc/<pid>/cmdline shows; python only
    # runs the script (argv[1]) and ignores the rest.
    argv = [argv0, str(script), *argv_tail]
    p = subprocess.Popen(argv, executable=sys.executable, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    tids = [int(t) for t in p.stdout.readline().split()]
    return p, tids


def _stop(p: subprocess.Popen) -> None:
    p.stdin.close()
    p.wait(timeout=10)


def test_real_process_posing_as_qemu(tmp_path: Path):
    p, tids = _spawn(tmp_path, ["-name", "guest=vm-test,debug-threads=on", "-machine", "virt"])
    try:
        r = attribute(p.pid, tids[1])
        assert r["name"] == "vm-test" and r["tgid"] == p.pid and r["vcpu"] == 1
        assert r["how"] == "cmdline:qemu -name" and r["vcpu_how"] == "thread-name"
        assert r["vmm"] == "qemu"
        # The comm the event carried wins over the live thread name.
        assert attribute(p.pid, tids[1], comm="CPU 0/KVM")["vcpu"] == 0
        cache = VmCache()
        assert cache.lookup(p.pid, tids[0])["vcpu"] == 0
        assert cache.lookup(p.pid, tids[1])["name"] == "vm-test"
    finally:
        _stop(p)
    # Gone now: a fresh read knows nothing, the cache still says who it was.
    assert attribute(p.pid, tids[1]) is None
    r = cache.lookup(p.pid, tids[1], comm="CPU 1/KVM")
    assert r["name"] == "vm-test" and r["verified"] is False


def test_real_qemu_without_name(tmp_path: Path):
    p, tids = _spawn(tmp_path, ["-machine", "virt", "-m", "1G"])
    try:
        r = attribute(p.pid, tids[0])
        assert r["name"] is None and r["how"] is None and r["vmm"] == "qemu" and r["vcpu"] == 0
    finally:
        _stop(p)


def test_real_non_vmm_is_none():
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert attribute(p.pid, p.pid) is None
    finally:
        p.kill()
        p.wait()


def _writable_cgroup2() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.startswith("cgroup2 "):
            point = pre.split()[4]
            if os.access(point, os.W_OK):
                return point
    return None


@pytest.mark.skipif(os.geteuid() != 0 or _writable_cgroup2() is None,
                    reason="needs root and a writable cgroup2 mount")
def test_real_libvirt_style_cgroup(tmp_path: Path):
    """A child in a real cgroup named like libvirt's scope, argv with a different name:
    the cgroup (manager-assigned) wins and the disagreement is reported."""
    mount = _writable_cgroup2()
    tag = uuid.uuid4().hex[:6]
    slice_dir = Path(mount) / f"rasd-test-{tag}.slice"
    scope = slice_dir / f"machine-qemu\\x2d9\\x2dcg\\x2dvm{tag}.scope"
    scope.mkdir(parents=True)
    p, tids = _spawn(tmp_path, ["-name", "guest=argv-name"])
    try:
        (scope / "cgroup.procs").write_text(str(p.pid))
        r = attribute(p.pid, tids[0])
        assert r["name"] == f"cg-vm{tag}" and r["how"] == "cgroup:libvirt-qemu"
        assert r["unit"] == scope.name and "argv-name" in r["disagreement"]
    finally:
        _stop(p)
        for _ in range(50):  # the cgroup empties once the child is reaped
            try:
                scope.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        slice_dir.rmdir()


def _tree_resolver(tmp_path: Path):
    """A cgroup tree on a plain filesystem: the resolver only needs directory inodes."""
    from rasd.classify.cgroups import CgroupResolver
    top = tmp_path / "cg"
    scope = top / "machine.slice" / "machine-qemu\\x2d3\\x2dweb01.scope"
    scope.mkdir(parents=True)
    return CgroupResolver(mounts=[(str(top), "/")]), scope.stat().st_ino


def test_gone_vmm_named_by_the_event_cgroup_id(tmp_path: Path):
    resolver, ino = _tree_resolver(tmp_path)
    (tmp_path / "proc").mkdir()
    cache = VmCache(proc=str(tmp_path / "proc"), cgroups=resolver)  # the process is gone
    vm = cache.lookup(4242, 4243, "CPU 1/KVM", cgroup_id=ino)
    assert (vm["name"], vm["vcpu"], vm["how"], vm["cgroup_id"]) == \
        ("web01", 1, "cgroup-id:libvirt-qemu", ino)
    # an id the hierarchy does not hold: unknown stays unknown (the vCPU from the comm)
    vm = cache.lookup(4242, 4243, "CPU 1/KVM", cgroup_id=ino + 12345)
    assert vm["name"] is None and vm["vcpu"] == 1 and "cgroup_id" not in vm
    assert cache.lookup(4242, 4243, "kworker/0:1", cgroup_id=ino + 12345) is None


def test_live_process_is_read_from_proc_not_from_the_cgroup_id(tmp_path: Path):
    resolver, ino = _tree_resolver(tmp_path)
    p, tids = _spawn(tmp_path, ["-name", "guest=vm-live", "-machine", "virt"])
    try:
        vm = VmCache(cgroups=resolver).lookup(p.pid, tids[0], cgroup_id=ino)
        assert vm["name"] == "vm-live" and vm["how"] == "cmdline:qemu -name"
        assert "cgroup_id" not in vm
    finally:
        _stop(p)
