"""etc/rasd.toml, the documented default config, never drifts from rasd/config.py SCHEMA.

The file is generated (scripts/gen-config.py); when a key is added, renamed or its
default or doc changes, these tests fail until the script is re-run.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

from rasd import config

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "etc" / "rasd.toml"


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "scripts" / "gen-config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_file_is_what_the_generator_writes():
    assert FILE.read_text() == _gen().render(), "etc/rasd.toml is stale: run scripts/gen-config.py"


def test_as_shipped_it_changes_nothing(tmp_path):
    """All keys commented: loading the file gives exactly the defaults."""
    assert config.load(FILE).values == config.defaults().values


def test_uncommented_it_lists_every_key_at_its_default():
    """Independent of the generator: uncomment every key line, parse, compare."""
    text = re.sub(r"(?m)^#(\w+ = )", r"\1", FILE.read_text())
    data = tomllib.loads(text)
    assert {s: set(t) for s, t in data.items()} == \
        {s: set(keys) for s, keys in config.SCHEMA.items()}
    cfg = config.validate(data)  # every default passes its own check
    assert cfg.values == config.defaults().values
    for section, keys in config.SCHEMA.items():
        for name, key in keys.items():
            assert data[section][name] == key.default
            assert type(data[section][name]) is type(key.default), f"{section}.{name}"


def test_every_key_is_documented():
    text = FILE.read_text()
    for section, keys in config.SCHEMA.items():
        block = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
        comments = " ".join(l[2:] for l in block.splitlines() if l.startswith("# "))
        for name, key in keys.items():
            assert key.doc.split()[0] in comments, f"{section}.{name}: doc missing"


def test_generator_check_mode():
    import subprocess, sys
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-config.py"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
