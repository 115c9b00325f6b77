#!/usr/bin/env python3
"""Run the arm64 RAS lab: build (or reuse) the artefacts, run scenarios.

    python3 tests/lab/run.py                         # every scenario, both kernels
    python3 tests/lab/run.py --kernel 6.1 --scenario sea-route
    python3 tests/lab/run.py --list

Prints one line per (kernel, scenario) with pass/fail and timing, and writes
<out>/results.json plus an evidence directory per scenario
(<out>/<kernel>/<scenario>/: console logs, QEMU command lines, traces).
Exit status 0 only if everything passed.  Needs root (QEMU 9p passthrough,
mmdebstrap, /var/cache/rasd-lab) and tests/lab/setup-host.sh run once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402
import scenarios  # noqa: E402


def run_one(lab: build.Lab, name: str, flavour: str, out: Path, qemu: str | None) -> dict:
    fn, default_qemu, _ = scenarios.SCENARIOS[name]
    ctx = scenarios.Ctx(lab, flavour, qemu or default_qemu, out / flavour / name)
    shutil.rmtree(ctx.out, ignore_errors=True)  # no stale evidence from an earlier run
    ctx.out.mkdir(parents=True)
    t0 = time.monotonic()
    status, error = "pass", None
    try:
        fn(ctx)
    except Exception as e:  # a scenario failure must not stop the others
        status, error = "fail", f"{type(e).__name__}: {e}"
        (ctx.out / "error.txt").write_text(traceback.format_exc())
    result = {"scenario": name, "kernel": flavour, "abi": lab.kernels[flavour].abi,
              "qemu": lab.qemu[ctx.qemu].version, "status": status,
              "seconds": round(time.monotonic() - t0, 1), "error": error,
              "kernel_lines": ctx.kernel_lines, "notes": ctx.notes}
    (ctx.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description="arm64 RAS lab")
    ap.add_argument("--kernel", action="append", choices=sorted(build.KERNELS))
    ap.add_argument("--scenario", action="append", choices=sorted(scenarios.SCENARIOS))
    ap.add_argument("--qemu", choices=["host", "qemu11"], help="override the scenario's QEMU")
    ap.add_argument("--out", type=Path, default=scenarios.REPO / "build" / "lab"
                    / time.strftime("%Y%m%dT%H%M%S"))
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, (fn, q, ks) in scenarios.SCENARIOS.items():
            print(f"{name:14} {q:7} {','.join(ks):9} {fn.__doc__.strip().splitlines()[0]}")
        return 0
    names = args.scenario or list(scenarios.SCENARIOS)
    flavours = args.kernel or list(build.KERNELS)
    needs_rootfs = any(n == "rootfs" for n in names)
    needs_q11 = args.qemu == "qemu11" or any(scenarios.SCENARIOS[n][1] == "qemu11"
                                               for n in names)
    t0 = time.monotonic()
    lab = build.build_all(tuple(flavours), want_qemu11=needs_q11, want_rootfs=needs_rootfs)
    build_s = round(time.monotonic() - t0, 1)
    print(f"build/cache check: {build_s}s", flush=True)
    results = []
    for flavour in flavours:
        for name in names:
            if flavour not in scenarios.SCENARIOS[name][2]:
                continue
            r = run_one(lab, name, flavour, args.out, args.qemu)
            results.append(r)
            print(f"{r['status'].upper():4}  {flavour:5} {name:14} {r['seconds']:6.1f}s"
                  + (f"  {r['error']}" if r["error"] else ""), flush=True)
    total = round(time.monotonic() - t0, 1)
    summary = {"build_seconds": build_s, "total_seconds": total, "results": results,
               "kernels": {f: {"abi": k.abi, "version": k.version}
                           for f, k in lab.kernels.items()},
               "qemu": {n: q.version for n, q in lab.qemu.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    failed = sum(r["status"] != "pass" for r in results)
    print(f"{len(results) - failed}/{len(results)} passed in {total}s; {args.out}/results.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
