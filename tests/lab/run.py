#!/usr/bin/env python3
"""Run the arm64 RAS lab: build (or reuse) the artefacts, run scenarios.

    python3 tests/lab/run.py                         # every scenario, both kernels
    python3 tests/lab/run.py --kernel 6.1 --scenario sea-route
    python3 tests/lab/run.py --list
    python3 tests/lab/run.py --routes --serial       # + route proofs, kernels in turn

Prints one line per (kernel, scenario) with pass/fail and timing, the probe
coverage table (every probe of rasd's table x kernel: symbol, attached, fired
in which scenario, or why not) and writes <out>/results.json plus an evidence
directory per scenario (<out>/<kernel>/<scenario>/: console logs, QEMU
command lines, traces, rasd's store/status/metrics/log, rasdaemon databases).
Scenarios that share a boot and one rasd start (a session) get one more
directory, <out>/<kernel>/session-<name>/, with the guest's whole console.
Exit status 0 only if everything passed and no probe is left unexplained.
Needs root (QEMU 9p passthrough, mmdebstrap, /var/cache/rasd-lab) and
tests/lab/setup-host.sh run once.
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
import rasd_guest  # noqa: E402
import scenarios  # noqa: E402
import kvm_scenarios  # noqa: E402,F401


def _result(lab: build.Lab, ctx: scenarios.Ctx, name: str, flavour: str, status: str,
            seconds: float, error: str | None, session: str | None) -> dict:
    result = {"scenario": name, "kernel": flavour, "abi": lab.kernels[flavour].abi,
              "qemu": lab.qemu[ctx.qemu].version if ctx.qemu in lab.qemu else ctx.qemu,
              "session": session, "status": status, "seconds": round(seconds, 1),
              "error": error, "kernel_lines": ctx.kernel_lines, "notes": ctx.notes}
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def run_one(lab: build.Lab, name: str, flavour: str, out: Path, qemu: str | None,
            sess=None, session: str | None = None) -> dict:
    sc = scenarios.SCENARIOS[name]
    ctx = scenarios.Ctx(lab, flavour, qemu or sc.qemu, out / flavour / name, sess=sess,
                        name=name)
    shutil.rmtree(ctx.out, ignore_errors=True)  # no stale evidence from an earlier run
    ctx.out.mkdir(parents=True)
    t0 = time.monotonic()
    status, error = "pass", None
    try:
        sc.fn(ctx)
    except Exception as e:  # a scenario failure must not stop the others
        status, error = "fail", f"{type(e).__name__}: {e}"
        (ctx.out / "error.txt").write_text(traceback.format_exc())
    if sess is not None and hasattr(sess, "after_scenario"):
        try:  # evidence: console excerpt, rasd's store/metrics/log as they are now
            sess.after_scenario(ctx)
        except Exception:  # noqa: BLE001 - evidence must not turn a pass into a fail
            (ctx.out / "evidence-error.txt").write_text(traceback.format_exc())
    return _result(lab, ctx, name, flavour, status, time.monotonic() - t0, error, session)


def print_result(r: dict) -> None:
    err = f"  {r['error'].splitlines()[0][:300]}" if r["error"] else ""
    print(f"{r['status'].upper():4}  {r['kernel']:5} {r['scenario']:22} {r['seconds']:6.1f}s"
          + err, flush=True)
    for line in (r.get("notes") or {}).get("print", []):   # e.g. scenario 10's table
        print(f"      {line}", flush=True)


def run_session(lab: build.Lab, sname: str, names: list[str], flavour: str, out: Path,
                qemu: str | None) -> tuple[list[dict], dict]:
    """Boot the session once, run its scenarios, close it."""
    sess_def = scenarios.SESSIONS[sname]
    ctx = scenarios.Ctx(lab, flavour, qemu or sess_def.qemu, out / flavour / f"session-{sname}",
                        name=f"session-{sname}")
    shutil.rmtree(ctx.out, ignore_errors=True)
    ctx.out.mkdir(parents=True)
    results = []
    t0 = time.monotonic()
    info = {"session": sname, "kernel": flavour, "setup_seconds": None, "seconds": None,
            "error": None, "notes": ctx.notes}
    cm = sess_def.setup(ctx)
    try:
        sess = cm.__enter__()
    except Exception as e:  # noqa: BLE001
        (ctx.out / "error.txt").write_text(traceback.format_exc())
        err = f"session {sname} setup: {type(e).__name__}: {e}"
        info.update(error=err, seconds=round(time.monotonic() - t0, 1))
        print(f"FAIL  {flavour:5} session {sname} setup {info['seconds']}s: {err[:300]}",
              flush=True)
        for n in names:
            sc = scenarios.SCENARIOS[n]
            c = scenarios.Ctx(lab, flavour, qemu or sc.qemu, out / flavour / n, name=n)
            r = _result(lab, c, n, flavour, "fail", 0.0, err, sname)
            results.append(r)
            print_result(r)
        return results, info
    info["setup_seconds"] = round(time.monotonic() - t0, 1)
    print(f"      {flavour:5} session {sname}: up in {info['setup_seconds']}s", flush=True)
    exc_info = (None, None, None)
    try:
        for n in names:
            r = run_one(lab, n, flavour, out, qemu, sess, sname)
            results.append(r)
            print_result(r)
    except BaseException:
        exc_info = sys.exc_info()
        raise
    finally:
        t1 = time.monotonic()
        try:
            cm.__exit__(*exc_info)
        except Exception as e:  # noqa: BLE001
            (ctx.out / "teardown-error.txt").write_text(traceback.format_exc())
            info["error"] = f"teardown: {type(e).__name__}: {e}"
        info["teardown_seconds"] = round(time.monotonic() - t1, 1)
        info["seconds"] = round(time.monotonic() - t0, 1)
        print(f"      {flavour:5} session {sname}: {info['seconds']}s in all "
              f"(setup {info['setup_seconds']}s, teardown {info['teardown_seconds']}s)",
              flush=True)
    return results, info


def main() -> int:
    ap = argparse.ArgumentParser(description="arm64 RAS lab")
    ap.add_argument("--kernel", action="append", choices=sorted(build.KERNELS))
    ap.add_argument("--scenario", action="append", choices=sorted(scenarios.SCENARIOS))
    ap.add_argument("--qemu", choices=["host", "qemu11"], help="override the scenario's QEMU")
    ap.add_argument("--out", type=Path, default=scenarios.REPO / "build" / "lab"
                    / time.strftime("%Y%m%dT%H%M%S"))
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--routes", action="store_true",
                    help="also run the kernel-level route proofs (boot, sea-route, "
                    "polled-route, hwpoison, qmp-route, rootfs)")
    ap.add_argument("--serial", dest="parallel", action="store_false",
                    help="one kernel after the other (default: side by side, one thread "
                    "each: the guests wait often enough that two kernels finish well "
                    "before two in a row on 2 cores)")
    args = ap.parse_args()
    if args.list:
        for name, sc in scenarios.SCENARIOS.items():
            doc = (sc.fn.__doc__ or "").strip().splitlines()[0]
            print(f"{name:22} {sc.qemu:7} {','.join(sc.kernels):9} "
                  f"{sc.session or '-':10} {'' if sc.default else '(--routes) '}{doc}")
        return 0
    names = args.scenario or [n for n, sc in scenarios.SCENARIOS.items()
                              if sc.default or args.routes]
    flavours = args.kernel or list(build.KERNELS)
    needs_rootfs = any(n == "rootfs" or scenarios.SCENARIOS[n].session for n in names)
    needs_q11 = args.qemu == "qemu11" or any(scenarios.SCENARIOS[n].qemu == "qemu11"
                                               for n in names)
    t0 = time.monotonic()
    lab = build.build_all(tuple(flavours), want_qemu11=needs_q11, want_rootfs=needs_rootfs)
    build_s = round(time.monotonic() - t0, 1)
    print(f"build/cache check: {build_s}s", flush=True)
    results, sessions = [], []
    scenarios.rasd_tree()    # one copy of the checkout for every guest of this run

    def run_kernel(flavour: str) -> None:
        t1 = time.monotonic()
        done: set[str] = set()
        for name in names:
            sc = scenarios.SCENARIOS[name]
            if flavour not in sc.kernels or name in done:
                continue
            if sc.session:
                group = [n for n in names if scenarios.SCENARIOS[n].session == sc.session
                         and flavour in scenarios.SCENARIOS[n].kernels]
                done.update(group)
                rs, info = run_session(lab, sc.session, group, flavour, args.out, args.qemu)
                results.extend(rs)
                sessions.append(info)
                continue
            done.add(name)
            r = run_one(lab, name, flavour, args.out, args.qemu)
            results.append(r)
            print_result(r)
        kernel_seconds[flavour] = round(time.monotonic() - t1, 1)
        print(f"      {flavour:5} all scenarios: {kernel_seconds[flavour]}s", flush=True)

    kernel_seconds: dict[str, float] = {}
    if args.parallel and len(flavours) > 1:
        # One thread per kernel: its guests wait on I/O, sleeps and the other's CPU
        # often enough that two kernels side by side finish well before two in a row.
        import threading
        threads = [threading.Thread(target=run_kernel, args=(f,), name=f"kernel-{f}")
                   for f in flavours]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for flavour in flavours:
            run_kernel(flavour)
    total = round(time.monotonic() - t0, 1)
    cov = rasd_guest.COVERAGE
    print("\nprobe coverage (rasd's probe table x kernel; fired = events stored from it):")
    print(cov.format() if cov.table else "  (no rasd scenario ran)")
    unexplained = cov.unexplained()
    summary = {"build_seconds": build_s, "total_seconds": total, "parallel": args.parallel,
               "kernel_seconds": kernel_seconds, "results": results,
               "sessions": sessions, "coverage": cov.rows(),
               "coverage_unexplained": [(r["kernel"], r["probe"]) for r in unexplained],
               "kernels": {f: {"abi": k.abi, "version": k.version}
                           for f, k in lab.kernels.items()},
               "qemu": {n: q.version for n, q in lab.qemu.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    failed = sum(r["status"] != "pass" for r in results)
    print(f"\n{len(results) - failed}/{len(results)} passed in {total}s (build/cache "
          f"{build_s}s); {args.out}/results.json")
    # Only a full run can prove every probe fired somewhere.
    full = not args.scenario and len(flavours) == len(build.KERNELS)
    if unexplained:
        print(f"coverage: {len(unexplained)} probe(s) attached but never fired and not "
              f"explained: {', '.join(f'{k}/{p}' for k, p in summary['coverage_unexplained'])}"
              + ("" if full else " (partial run: not counted as failure)"))
    return 1 if failed or (full and unexplained) else 0


if __name__ == "__main__":
    sys.exit(main())
