#!/usr/bin/env python3
"""Write etc/rasd.toml, the documented default config, from rasd/config.py SCHEMA.

    scripts/gen-config.py            rewrite etc/rasd.toml
    scripts/gen-config.py --check    exit 1 (and say so) if etc/rasd.toml is stale
    scripts/gen-config.py --stdout   print it

Every key is written commented out at its default, under an uncommented section
header: the file is valid TOML that changes nothing (rasd runs the same with it,
with an empty file and with none), and uncommenting a line is the way to change a
value. tests/unit/test_default_config.py fails when SCHEMA and the file disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rasd import config  # noqa: E402

OUT = ROOT / "etc" / "rasd.toml"
WIDTH = 88

HEADER = """\
# rasd configuration: /etc/rasd/rasd.toml
#
# GENERATED from rasd/config.py by scripts/gen-config.py: change the schema there
# and re-run the script (the tests fail while this file is stale).
#
# Every key is listed with its default, commented out; rasd runs the same with
# this file, with an empty one and with none. Uncomment a line to change it.
# Unknown keys and wrong types are refused with a message naming the key: the
# daemon then exits 78 (EX_CONFIG) and systemd does not restart it. SIGHUP
# (systemctl reload rasd) re-reads the file; a bad file is refused and the
# running config kept.
#
# Under the systemd unit only /var/lib/rasd (StateDirectory), /run/rasd
# (RuntimeDirectory) and /tmp (private) are writable: a path below that points
# elsewhere (state_dir, store.path, record.path, ...) needs a ReadWritePaths= in
# a drop-in (systemctl edit rasd).
"""


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return ("-" if v < 0 else "") + ("inf" if math.isinf(v) else "nan")
        return repr(v)
    if isinstance(v, str):
        # a JSON string is a valid TOML basic string for everything json.dumps emits
        # with ensure_ascii (\uXXXX escapes, \" \\ \n \t ...)
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__} {v!r}")


def type_name(t: type | tuple[type, ...]) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string",
             list: "array", dict: "table"}
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join(names.get(x, x.__name__) for x in ts)


def render() -> str:
    parts = [HEADER]
    for section, keys in config.SCHEMA.items():
        parts.append(f"\n[{section}]\n")
        for name, key in keys.items():
            doc = f"{key.doc} ({type_name(key.type)})"
            for line in textwrap.wrap(doc, WIDTH - 2):
                parts.append(f"# {line}\n")
            parts.append(f"#{name} = {toml_value(key.default)}\n")
    return "".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="exit 1 if etc/rasd.toml is stale")
    g.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = p.parse_args()
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run scripts/gen-config.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
