"""Probe resolution against this host's real kallsyms/tracefs and against
recorded Debian arm64 kernels (tests/fixtures/arm64-kernels)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from rasd.sources import probes as P
from rasd.sources.resolve import (BLACKLISTED, DISABLED, FAILED, LOCKDOWN, MISSING, PENDING,
                                  WRONG_ARCH,
                                  KernelView, NoProbesError, Resolution, detect_features,
                                  require_some, resolve)
from rasd.sources.tracefs import parse_format

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "arm64-kernels"
K61 = FIX / "6.1.0-50-arm64"
K612 = FIX / "6.12.95+deb12-arm64"


def by_name(results: list[Resolution]) -> dict[str, Resolution]:
    return {r.probe: r for r in results}


@pytest.fixture(scope="module")
def v61() -> KernelView:
    return KernelView.from_fixture(K61)


@pytest.fixture(scope="module")
def v612() -> KernelView:
    return KernelView.from_fixture(K612)


def test_probe_ids_match_common_h():
    text = (ROOT / "bpf" / "common.h").read_text()
    ids = {m.group(1): int(m.group(2))
           for m in re.finditer(r"#define RASD_P_(\w+)\s+(\d+)", text)}
    for p in P.PROBES:
        c_name = ("TP_" + p.name if p.is_tracepoint else p.name).upper()
        assert ids[c_name] == p.id, p.name
    assert ids["TEST"] == P.TEST_PROBE_ID
    assert len({p.id for p in P.PROBES}) == len(P.PROBES)


def test_probe_functions_exist_in_bpf_sources():
    sources = {f: (ROOT / "bpf" / f).read_text() for f in P.BPF_SOURCES}
    for p in P.PROBES:
        if p.is_tracepoint:
            continue  # instantiated by the loader from the tracefs format
        for fn in (p.entry_fn, p.exit_fn):
            if fn:
                assert f"int {fn}(" in sources[p.source], fn
        if p.fentry_macro:
            assert p.fentry_macro in sources[p.source]


def test_61_resolves_isra_clone(v61):
    r = by_name(resolve(v61))["ghes_do_proc"]
    assert (r.status, r.symbol) == (PENDING, "ghes_do_proc.isra.0")
    assert not r.fentry  # a suffixed clone is not a BTF function: kprobe


def test_612_resolves_plain_name(v612):
    r = by_name(resolve(v612))["ghes_do_proc"]
    assert (r.status, r.symbol) == (PENDING, "ghes_do_proc")


@pytest.mark.parametrize("kernel", [K61, K612])
def test_inlined_kvm_handle_guest_sea_is_missing(kernel):
    r = by_name(resolve(KernelView.from_fixture(kernel)))["kvm_handle_guest_sea"]
    assert r.status == MISSING
    assert "kvm_handle_guest_sea not in kallsyms" in r.reason and "inlined" in r.reason


@pytest.mark.parametrize("kernel", [K61, K612])
def test_arm64_kernels_resolve_the_rare_paths(kernel):
    view = KernelView.from_fixture(kernel)
    res = by_name(resolve(view))
    for name in ("apei_claim_sea", "ghes_proc", "ghes_proc_in_irq", "memory_failure",
                 "memory_failure_queue", "kvm_inject_vabt", "do_serror",
                 "arm64_is_fatal_ras_serror", "arm64_serror_panic", "do_sea"):
        assert res[name].status == PENDING, (name, res[name])
    assert res["kvm_inject_serror_esr"].status == MISSING
    assert res["do_sea"].symbol == "do_sea"
    # hot paths go to fentry where the kernel can do it (6.12; 6.1 arm64 has no direct calls)
    for name in ("handle_exit_early", "kvm_handle_guest_abort"):
        r = res[name]
        assert (r.status, r.fentry) == ((PENDING, True) if view.direct_calls else (FAILED, False))
    if view.direct_calls:
        assert res["handle_exit_early"].kind == "fentry"
    assert res["memory_failure"].kind == "kprobe+kretprobe"
    # tracepoints present on both; aer_event and memory_failure_event under ras:
    for name in ("arm_event", "mc_event", "non_standard_event", "aer_event"):
        assert res[name].status == PENDING
    assert res["memory_failure_event"].symbol == "ras:memory_failure_event"


def test_hot_paths_never_kprobed_by_default(v612):
    view = dataclasses.replace(v612, btf=False)  # no BTF: no fentry
    res = by_name(resolve(view))
    for name in ("handle_exit_early", "kvm_handle_guest_abort"):
        assert res[name].status == FAILED and "every VM exit" in res[name].reason
    allowed = by_name(resolve(view, hot_paths="kprobe"))
    assert allowed["handle_exit_early"].status == PENDING
    assert allowed["handle_exit_early"].kind == "kprobe"
    # rare paths are unaffected
    assert res["apei_claim_sea"].status == PENDING


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_vm_exit_probes_setting(kernel, v61, v612):
    """[bpf] vm_exit_probes: off keeps the per-exit probes (symbol still resolved, so the
    status says what is there) out while every rare KVM path resolves; fentry takes them
    where trampolines work (6.12, not 6.1 arm64); kprobe falls back to a trap per exit."""
    view = v61 if kernel == "6.1" else v612
    off = by_name(resolve(view, hot_paths="off"))
    for name in ("handle_exit_early", "kvm_handle_guest_abort"):
        assert off[name].status == DISABLED and off[name].symbol == name
        assert "vm_exit_probes" in off[name].reason
    for name in ("apei_claim_sea", "kvm_inject_vabt", "arm64_is_fatal_ras_serror"):
        assert off[name].status == PENDING, off[name]
    assert detect_features(view).fentry is (kernel == "6.12")
    fentry = by_name(resolve(view, hot_paths="fentry"))["kvm_handle_guest_abort"]
    if kernel == "6.12":
        assert (fentry.status, fentry.kind) == (PENDING, "fentry")
    else:
        assert fentry.status == FAILED and "DIRECT_CALLS" in fentry.reason
    kprobe = by_name(resolve(view, hot_paths="kprobe"))["kvm_handle_guest_abort"]
    assert kprobe.status == PENDING and kprobe.kind == ("fentry" if kernel == "6.12" else "kprobe")


def test_exact_names_do_not_match_lookalikes(v612):
    # the fixture has e.g. force_sig_mceerr and kvm_handle_cp*; regex candidates are anchored
    assert v612.match_symbol(["re:ghes_proc(\\.isra\\.\\d+)*"]) == "ghes_proc"
    assert v612.match_symbol(["re:do_sea"]) == "do_sea"
    assert v612.match_symbol(["kvm_handle"]) is None


def test_blacklisted_symbol(v612):
    view = dataclasses.replace(v612, blacklist=v612.blacklist | {"do_serror"})
    r = by_name(resolve(view))["do_serror"]
    assert (r.status, r.symbol) == (BLACKLISTED, "do_serror")
    # the real blacklist has do_mem_abort: not a probe target, and do_sea is not blacklisted
    assert "do_mem_abort" in v612.blacklist
    assert by_name(resolve(v612))["do_sea"].status == PENDING


def test_lockdown_integrity_blacklist_unknown_is_not_failure():
    view = KernelView.from_fixture(K612, lockdown="integrity", blacklist_readable=False)
    assert view.blacklist is None and view.lockdown == "integrity"
    res = by_name(resolve(view))
    assert res["apei_claim_sea"].status == PENDING
    assert "blacklist unknown" in res["apei_claim_sea"].reason
    assert res["arm_event"].status == PENDING
    assert detect_features(view).kprobe_blacklist_known is False


def test_lockdown_confidentiality_refuses_everything():
    view = KernelView.from_fixture(K612, lockdown="confidentiality")
    res = resolve(view)
    assert {r.status for r in res} == {LOCKDOWN}
    assert "confidentiality" in res[0].reason


def test_fixture_lockdown_read_from_uname(v61):
    assert v61.lockdown == "none"  # "[none] integrity confidentiality"


def test_x86_host_arm64_probes_wrong_arch():
    view = KernelView.from_host()
    res = by_name(resolve(view))
    if view.arch == "arm64":
        pytest.skip("this host is arm64")
    for p in P.PROBES:
        if p.arch == P.ARM64:
            assert res[p.name].status == WRONG_ARCH
            assert "arm64 only" in res[p.name].reason
    # the ras tracepoints this host has (read from its tracefs) resolve
    for key, name in (("ras:arm_event", "arm_event"), ("ras:mc_event", "mc_event")):
        if key in view.events:
            assert res[name].status == PENDING


def test_host_kallsyms_is_real_and_filtered():
    view = KernelView.from_host()
    # only candidate/feature symbols are kept, so the view stays small
    assert len(view.symbols) < 200
    res = by_name(resolve(view))
    mf = res["memory_failure"]
    if "memory_failure" in view.symbols:
        assert mf.symbol == "memory_failure"
    else:
        assert mf.status in (MISSING,)


def test_host_without_kprobes_reports_failed():
    view = KernelView.from_fixture(K612)
    view = dataclasses.replace(view, kprobes=False)
    res = by_name(resolve(view))
    assert res["apei_claim_sea"].status == FAILED
    assert "no kprobe support" in res["apei_claim_sea"].reason
    assert res["handle_exit_early"].status == PENDING  # fentry needs no kprobes


def test_memory_failure_event_under_either_system(v612):
    fmt = v612.events["ras:memory_failure_event"]
    moved = dict(v612.events)
    del moved["ras:memory_failure_event"]
    moved["memory_failure:memory_failure_event"] = dataclasses.replace(fmt, system="memory_failure")
    view = dataclasses.replace(v612, events=moved)
    r = by_name(resolve(view))["memory_failure_event"]
    assert (r.status, r.symbol) == (PENDING, "memory_failure:memory_failure_event")
    assert detect_features(view).memory_failure_event == "memory_failure:memory_failure_event"
    gone = dataclasses.replace(v612, events={k: v for k, v in moved.items()
                                             if "memory_failure" not in k})
    assert by_name(resolve(gone))["memory_failure_event"].status == MISSING


def test_features_61_vs_612(v61, v612):
    f61, f612 = detect_features(v61), detect_features(v612)
    assert not f61.arm_event_extended and f612.arm_event_extended
    for f in (f61, f612):
        assert f.kvm_inject == "kvm_inject_vabt"
        assert not f.kvm_handle_guest_sea_symbol
        assert f.memory_failure_event == "ras:memory_failure_event"
        assert f.btf
    # neither memory_failure_cb nor ghes_kick_task_work is in these Debian kernels' kallsyms
    assert f61.ghes_model in ("legacy", "kick_task_work")


def test_features_newer_kernel_symbols(v612):
    syms = dict(v612.symbols, memory_failure_cb="t", kvm_inject_serror_esr="T",
                kvm_handle_guest_sea="T")
    f = detect_features(dataclasses.replace(v612, symbols=syms))
    assert f.ghes_model == "task_work_cb"
    assert f.kvm_inject == "kvm_inject_serror_esr"
    assert f.kvm_handle_guest_sea_symbol
    res = by_name(resolve(dataclasses.replace(v612, symbols=syms)))
    assert res["kvm_handle_guest_sea"].status == PENDING
    assert res["kvm_inject_serror_esr"].status == PENDING


def test_extended_arm_event_format_offsets(v612):
    fmt = v612.events["ras:arm_event"]
    assert fmt.has_field("pei_len") and fmt.field("pei_buf").is_data_loc
    assert fmt.field("sev").offset == 60 and fmt.field("cpu").offset == 64
    assert len(fmt.data_loc_offsets) == 3
    assert parse_format((K61 / "events/ras/arm_event/format").read_text()).data_loc_offsets == []


def test_no_probe_at_all_is_a_clear_error(v612):
    res = resolve(dataclasses.replace(v612, lockdown="confidentiality"))
    with pytest.raises(NoProbesError, match="no probe could be attached"):
        require_some(res)


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="needs kernel BTF")
def test_btf_reader_on_this_kernel():
    from rasd.sources.bpf_loader import _esr32_mask
    from rasd.sources.btf import Btf
    btf = Btf.from_file()
    # vfs_read(struct file *, char *, size_t, loff_t *); do_sys_openat2(int dfd, ...)
    assert btf.func_param_sizes("vfs_read") == [8, 8, 8, 8]
    assert btf.func_param_sizes("do_sys_openat2")[0] == 4
    assert btf.func_param_sizes("no_such_function_rasd") is None
    m = btf.member("task_struct", "pid")
    assert m is not None and m.size == 4 and m.offset > 0
    assert btf.member("task_struct", "no_such_field") is None
    plans = [{"id": 13, "symbol": "do_sys_openat2", "esr_param": 0},
             {"id": 14, "symbol": "vfs_read", "esr_param": 1},
             {"id": 15, "symbol": "do_sys_openat2.isra.0", "esr_param": 0}]
    assert _esr32_mask(btf, plans) == (1 << 13) | (1 << 15)


def test_fentry_predicted_from_the_kernel_config(v61, v612):
    """Debian 6.1 arm64 has BTF but no ftrace direct calls (arm64 got them in 6.4): fentry
    cannot attach there, so the hot paths are refused at resolution instead of after a
    failed attach and a second compile. 6.12 has them."""
    assert (v61.btf, v61.direct_calls) == (True, False)
    assert (v612.btf, v612.direct_calls) == (True, True)
    res61 = by_name(resolve(v61))
    for name in ("handle_exit_early", "kvm_handle_guest_abort"):
        assert res61[name].status == FAILED and not res61[name].fentry
        assert "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS" in res61[name].reason
    assert by_name(resolve(v612))["kvm_handle_guest_abort"].fentry
    # the operator's opt-in still turns them into kprobes on 6.1
    assert by_name(resolve(v61, hot_paths="kprobe"))["handle_exit_early"].kind == "kprobe"
    # an unreadable config is not a verdict: fentry is tried, as before
    unknown = dataclasses.replace(v61, direct_calls=None)
    assert by_name(resolve(unknown))["handle_exit_early"].fentry


def test_kernel_config_read_from_the_host():
    from rasd.sources.resolve import direct_calls, read_kernel_config
    import platform
    config = read_kernel_config(platform.release())
    if config is None:
        pytest.skip("neither /boot/config-$(uname -r) nor /proc/config.gz on this host")
    assert "CONFIG_BPF=y" in config  # bcc works here, so the config must say so
    assert KernelView.from_host().direct_calls is direct_calls(config)
    assert direct_calls("# CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS is not set\n") is False


def test_kernel_config_sources_in_order(tmp_path):
    """/boot first, then /proc/config.gz, then the build headers' .config (a kernel
    booted without /boot, as in the arm64 lab: Debian's headers carry the build's
    .config); None when none exists."""
    import gzip
    from rasd.sources.resolve import read_kernel_config
    rel = "6.1.0-57-arm64"
    assert read_kernel_config(rel, tmp_path) is None
    build = tmp_path / "lib/modules" / rel / "build"
    build.mkdir(parents=True)
    (build / ".config").write_text("CONFIG_FROM_HEADERS=y\n")
    assert read_kernel_config(rel, tmp_path) == "CONFIG_FROM_HEADERS=y\n"
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(b"CONFIG_IKCONFIG_PROC=y\n"))
    assert read_kernel_config(rel, tmp_path) == "CONFIG_IKCONFIG_PROC=y\n"
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"config-{rel}").write_text("CONFIG_FROM_BOOT=y\n")
    assert read_kernel_config(rel, tmp_path) == "CONFIG_FROM_BOOT=y\n"


def test_cache_needs_only_the_programs_attached_probes_run(v612):
    """A cached fentry build holds the KFUNC programs of the hot paths, not their kprobe
    functions (bcc never loads those): asking for them made every restart in fentry mode
    recompile (6.12 lab, kvm-guest-sea: "entry lacks program(s) rasd_handle_exit_early")."""
    from rasd.sources.bpf_loader import _probe_plans, needed_programs

    probes = list(P.PROBES)
    plans = _probe_plans(probes, resolve(v612, hot_paths="fentry"), v612)
    by_probe = {p["name"]: p for p in plans}
    needed = needed_programs(plans, {}, vcpu_esr=True)
    for name in ("handle_exit_early", "kvm_handle_guest_abort"):
        assert by_probe[name]["fentry_fn"] in needed
        assert by_probe[name]["entry_fn"] not in needed
    mf = by_probe["memory_failure"]          # kprobe+kretprobe: both functions
    assert {mf["entry_fn"], mf["exit_fn"]} <= needed
    # without the vcpu ESR offset the SEA probe is not attached: nothing of it is needed
    sea = by_probe["kvm_handle_guest_abort"]
    assert sea["fentry_fn"] not in needed_programs(plans, {}, vcpu_esr=False)


@pytest.mark.parametrize("kernel", [K61, K612], ids=["6.1", "6.12"])
def test_kallsyms_searched_by_prefix_gives_what_parsing_every_line_gives(kernel, tmp_path):
    """The recorded arm64 symbols as /proc/kallsyms prints them (address, type, name,
    some with a module), with look-alikes around them (data symbols, longer names, a
    prefix in a module's name): the prefix search keeps exactly what the line parser
    keeps, types included, and finds every probe target the fixture has."""
    from rasd.sources import resolve as R

    lines = []
    for i, line in enumerate((kernel / "kallsyms.txt").read_text().splitlines()):
        kind, name, *module = line.split()
        module = module or (["[kvm]"] if i % 7 == 0 else [])
        lines.append(f"ffff8000{i:08x} {kind} {name}" + "".join(f"\t{m}" for m in module))
        lines.append(f"ffff9000{i:08x} d {name}")           # data: not a text symbol
        lines.append(f"ffffa000{i:08x} t {name}_lookalike")  # a longer name
        lines.append(f"ffffb000{i:08x} t x\t[{name}]")       # the name as a module
    text = "\n".join(lines)  # (no newline at the end: the last line counts too)
    path = tmp_path / "kallsyms"
    path.write_text(text)
    flt, prefixes = R.candidate_filter(), R.candidate_prefixes()
    parsed = R._parse_kallsyms_lines(text.splitlines(), addr=True, flt=flt)
    searched = R._read_kallsyms(path, flt, prefixes)
    assert searched == parsed and list(searched) == list(parsed)
    assert {"ghes_proc", "memory_failure", "apei_claim_sea"} <= set(searched)
    assert any(n.startswith("ghes_do_proc") for n in searched)


def test_every_probe_candidate_has_a_literal_prefix():
    """Otherwise the daemon falls back to parsing every kallsyms line (correct, slower)."""
    from rasd.sources import resolve as R

    prefixes = R.candidate_prefixes()
    assert prefixes is not None and "ghes_do_proc" in prefixes

    def lead(pattern: str) -> tuple[str, ...] | None:
        probe = dataclasses.replace(P.PROBES[0], symbols=(f"re:{pattern}",))
        return R.candidate_prefixes([probe])

    assert lead(r"\w*_x") is None                    # no literal beginning
    assert lead(r"do_seax?") is None                 # its last letter optional
    assert lead(r"do_sea|sea_x") is None             # another beginning beside it
    assert "do_sea" in lead(r"do_sea(\.(isra|part)\.\d+)*")  # "|" only inside a group
    assert "do_sea" in lead(r"do_sea[|]\|x")         # "|" in a class, escaped
