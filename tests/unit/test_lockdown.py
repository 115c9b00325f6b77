"""Lockdown mode parsing and the capability table, against temp files."""
from __future__ import annotations

from pathlib import Path

import pytest

from rasd.sources import lockdown


@pytest.mark.parametrize("text, mode", [
    ("[none] integrity confidentiality\n", "none"),
    ("none [integrity] confidentiality\n", "integrity"),
    ("none integrity [confidentiality]\n", "confidentiality"),
    ("", "unknown"),
    ("[bogus] integrity\n", "unknown"),
])
def test_read_mode(tmp_path: Path, text: str, mode: str) -> None:
    f = tmp_path / "lockdown"
    f.write_text(text)
    assert lockdown.read_mode(f) == mode


def test_missing_file_is_unknown(tmp_path: Path) -> None:
    assert lockdown.read_mode(tmp_path / "nope") == "unknown"


def test_capabilities_none_and_unknown() -> None:
    none = lockdown.capabilities("none")
    assert none.kprobes and none.bpf_kernel_read and none.tracefs and none.debugfs
    assert not none.degraded and not none.assumed
    unknown = lockdown.capabilities("unknown")
    assert unknown.tracefs and unknown.assumed


def test_capabilities_integrity_closes_only_debugfs() -> None:
    caps = lockdown.capabilities("integrity")
    assert caps.kprobes and caps.bpf_kernel_read and caps.tracefs
    assert not caps.debugfs and not caps.degraded
    assert "debugfs closed" in lockdown.summary("integrity")


def test_capabilities_confidentiality_leaves_kmsg_and_bert() -> None:
    caps = lockdown.capabilities("confidentiality")
    assert not (caps.kprobes or caps.bpf_kernel_read or caps.tracefs or caps.debugfs)
    assert caps.kmsg and caps.bert and caps.degraded
    assert "refused" in lockdown.summary("confidentiality")
    assert caps.as_dict()["mode"] == "confidentiality"


def test_this_host_mode_is_a_known_word() -> None:
    assert lockdown.read_mode() in ("none", "integrity", "confidentiality", "unknown")
