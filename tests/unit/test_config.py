"""Config: defaults without a file, validation errors that name the key."""

from __future__ import annotations

import pytest

from rasd import config


def test_no_file_means_defaults(tmp_path):
    cfg = config.load(tmp_path / "absent.toml")
    assert cfg["bpf"]["ringbuf_pages"] == 64
    assert cfg["daemon"]["state_dir"] == "/var/lib/rasd"


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml", required=True)


def test_values_override_defaults(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[bpf]\nringbuf_pages = 256\n[daemon]\nlog_level = "debug"\n')
    cfg = config.load(p)
    assert cfg["bpf"]["ringbuf_pages"] == 256 and cfg["daemon"]["log_level"] == "debug"
    assert cfg["tracefs"]["instance"] == "rasd"  # untouched keys keep their defaults


@pytest.mark.parametrize("text,match", [
    ("[nope]\nx = 1\n", r"unknown section \[nope\]"),
    ("[bpf]\nring = 1\n", r"unknown key bpf.ring"),
    ("[bpf]\nringbuf_pages = \"64\"\n", r"bpf.ringbuf_pages: expected int, got str"),
    ("[bpf]\nringbuf_pages = true\n", r"bpf.ringbuf_pages: expected int, got bool"),
    ("[bpf]\nringbuf_pages = 100\n", r"bpf.ringbuf_pages = 100: must be a power of two"),
    ("[daemon]\nlog_level = \"loud\"\n", r"daemon.log_level = 'loud': must be one of"),
    ("[bpf]\nenabled = 1\n", r"bpf.enabled: expected bool, got int"),
    ("[bpf\n", r"not valid TOML"),
    ("bpf = 3\n", r"bpf: must be a table"),
])
def test_bad_configs_name_the_key(tmp_path, text, match):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=match):
        config.load(p)
