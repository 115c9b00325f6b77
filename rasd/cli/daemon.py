"""rasd: the RAS daemon (runs in the foreground; systemd supervises it)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .. import __version__
from .. import config as config_mod

EPILOG = """\
examples:
  rasd                                   run on /etc/rasd/rasd.toml, or the defaults without it
  rasd --config ./rasd.toml --log-level debug
  rasd --dry-run                         resolve the probes against this kernel, load nothing
  rasd --once                            start, drain what is pending, print status, stop
  rasd --record /tmp/ras.jsonl           also append every source record (replayable)
  rasd --replay /tmp/ras.jsonl           feed a recording through the pipeline and exit
signals: SIGTERM/SIGINT drain, flush and exit 0; SIGHUP reloads the config (a bad one is refused)
exit status: 0 ok, 1 cannot start (no event source), 78 bad config
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rasd", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"rasd {__version__}")
    p.add_argument("--config", metavar="PATH", help=f"config file (default {config_mod.DEFAULT_PATH})")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="resolve probes and print the plan; load nothing")
    mode.add_argument("--once", action="store_true",
                      help="start, drain pending events, print the status, stop")
    mode.add_argument("--replay", metavar="FILE", help="feed recorded source records and exit")
    p.add_argument("--record", metavar="FILE", help="append every source record to FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_mod.load(args.config, required=args.config is not None)
    except config_mod.ConfigError as exc:
        print(f"rasd: bad config: {exc}", file=sys.stderr)
        return config_mod.EX_CONFIG
    if args.record:
        cfg.values["record"]["path"] = args.record
    level = (args.log_level or cfg["daemon"]["log_level"]).upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.replay:
        return replay(cfg, args.replay)
    if args.dry_run:
        return dry_run()
    return run(cfg, once=args.once)


def run(cfg: config_mod.Config, once: bool = False) -> int:
    from ..daemon import Daemon, StartupError
    daemon = Daemon(cfg)
    daemon.install_signals()
    try:
        daemon.start()
    except StartupError as exc:
        print(f"rasd: cannot start: {exc}", file=sys.stderr)
        daemon.stop()
        return 1
    if once:
        daemon.drain()
        snapshot = daemon.snapshot()
        daemon.stop()
        print(json.dumps(snapshot, indent=2))
        return 0
    return daemon.run()


def dry_run() -> int:
    from ..sources.resolve import KernelView, detect_features, resolve
    view = KernelView.from_host()
    for r in resolve(view):
        print(f"{r.probe:28} {r.status:16} {r.kind or '-':18} {r.symbol or '-':32} {r.reason}")
    print(json.dumps({"lockdown": view.lockdown, "features": detect_features(view).to_json(),
                      "notes": view.notes}, indent=2))
    return 0


def replay(cfg: config_mod.Config, path: str) -> int:
    from ..assembly import build
    from ..decode.event import EventDecoder
    from ..pipeline import LogSink
    from ..sources.replay import ReplayFile
    source = ReplayFile(path)
    incidents = []
    assembly = build(cfg, EventDecoder(), [LogSink()],
                     on_incident=lambda i: incidents.append(i) if i.closed else None)
    pipeline = assembly.pipeline
    t0 = time.monotonic()
    n = 0
    for rec in source.records():
        if n == 0:  # the header (formats, clock) is read with the first line
            pipeline.decoder.formats = source.formats
            pipeline.decoder.wall_offset_ns = source.wall_offset_ns or 0
        pipeline.feed(rec)
        n += 1
    assembly.correlator.expire(2**63 - 1)
    pipeline.close()
    for err in source.errors:
        print(f"rasd: {err}", file=sys.stderr)
    summary = {"records": n, "bad_lines": len(source.errors),
               "seconds": round(time.monotonic() - t0, 3), **pipeline.counters.to_dict(),
               "incidents": [i.to_dict() for i in incidents]}
    print(json.dumps(summary))
    return 0 if not source.errors else 1


if __name__ == "__main__":
    sys.exit(main())
