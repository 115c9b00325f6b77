"""rasdctl: decode and inspect RAS error data.

Commands:
  decode       CPER status blocks and records (files, stdin, BERT) -> report or JSON lines
  decode-esr   an ESR_ELx value -> fields and the kernel's verdict
  status       the running daemon's probe table and counters
  events       stored events (filters: time, type, severity, VM)
  incidents    stored incidents
  show         one incident with its events, or one event (event:ID)
  summary      event counts by type, severity, CPU, VM, memory location
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TextIO

from .. import __version__
from ..decode.inputs import FORMATS, to_bytes
from . import tables

if TYPE_CHECKING:
    from ..decode import cper, esr

# The decoders (CPER, ESR, BERT) are imported by the commands that use them: `rasdctl
# status`, run by health checks and at every daemon start in the arm64 lab, then loads
# in half the time (0.43 s instead of 0.82 s under qemu-user).
BERT_TABLES = "/sys/firmware/acpi/tables"  # decode.bert.DEFAULT_TABLES (a test pins it)

EXIT_OK, EXIT_DECODE_ERROR, EXIT_USAGE = 0, 1, 2

DECODE_EPILOG = """\
examples:
  rasdctl decode /var/lib/rasd/raw/*.cper          readable report of each record
  rasdctl decode --json dump.hex | jq .severity    one JSON object per record per line
  base64 -w0 rec.bin | rasdctl decode -            stdin: binary, hex or base64
  rasdctl decode --bert                            BERT from /sys/firmware/acpi/tables
  rasdctl decode --bert /tmp/tables                BERT from a copied tables directory
exit status: 0 all records decoded, 1 a record or input failed (reason on stderr), 2 usage
"""

ESR_EPILOG = """\
examples:
  rasdctl decode-esr 0x96000010                    data abort, synchronous external abort
  rasdctl decode-esr --origin guest be000c11       guest SError: what KVM does with it
  rasdctl decode-esr --json 0xbf000000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rasdctl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"rasdctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dec = sub.add_parser("decode", help="decode CPER status blocks / records",
                         description="Decode CPER: ACPI Generic Error Status Blocks (GHES, BERT) "
                         "and UEFI CPER records, framing auto-detected; input binary, hex text "
                         "or base64, auto-detected.", epilog=DECODE_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dec.add_argument("files", nargs="*", metavar="FILE", help="input files; - for stdin")
    dec.add_argument("--json", action="store_true", help="JSON Lines: one object per record")
    dec.add_argument("--raw", action="store_true", help="include each record's bytes (base64) "
                     "in JSON even when it decoded")
    dec.add_argument("--bert", nargs="?", const=BERT_TABLES, metavar="PATH",
                     help="read BERT (tables directory or region file; default %(const)s)")
    dec.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: one "
                     f"per CPU from {PARALLEL_MIN_INPUTS} inputs on, else 1)")
    dec.add_argument("--input-format", choices=FORMATS, default="auto",
                     help="how to read each input (default: detect binary, hex or base64)")
    dec.add_argument("--arm-type", choices=("auto", "enum", "bitmask"), default="auto",
                     help="reading of the ARM error-info type byte (default: auto)")
    dec.set_defaults(func=cmd_decode)

    de = sub.add_parser("decode-esr", help="decode an ESR_ELx value",
                        description="Decode a 64-bit ESR_ELx value (hex, with or without 0x) "
                        "and give the kernel's verdict for SErrors and SEAs.",
                        epilog=ESR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    de.add_argument("values", nargs="+", metavar="VALUE")
    de.add_argument("--json", action="store_true", help="one JSON object per value")
    de.add_argument("--origin", choices=("host", "guest"), default="host",
                    help="where the exception was taken (default: host)")
    de.add_argument("--no-ras", action="store_true",
                    help="the CPU lacks the RAS extension (FEAT_RAS)")
    de.set_defaults(func=cmd_decode_esr)

    st = sub.add_parser("status", help="probe table and counters of the running daemon",
                        description="Ask the running rasd (over its status socket) for its "
                        "probe table, counters and notes.")
    st.add_argument("--json", action="store_true", help="the raw status document")
    st.add_argument("--runtime-dir", default="/run/rasd", metavar="DIR",
                    help="where the daemon's status.sock is (default %(default)s)")
    st.set_defaults(func=cmd_status)
    add_store_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `rasdctl decode ... | head` is normal use
        sys.stderr.close()
        return EXIT_OK


# --- decode -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DecodeOptions:
    json: bool
    raw: bool
    arm_type: str
    input_format: str = "auto"


@dataclass
class Rendered:
    """What one input produced: stdout text, stderr lines, and whether all of it decoded."""

    out: str = ""
    err: list[str] = field(default_factory=list)
    ok: bool = True


_dumps = json.JSONEncoder(separators=(",", ":")).encode
PARALLEL_MIN_INPUTS = 64  # below this, starting worker processes costs more than it saves


def cmd_decode(args: argparse.Namespace) -> int:
    if not args.files and args.bert is None:
        print("rasdctl decode: give FILE(s), - for stdin, or --bert", file=sys.stderr)
        return EXIT_USAGE
    opts = DecodeOptions(args.json, args.raw, args.arm_type, args.input_format)
    ok = True
    if args.bert is not None:
        ok = write_rendered(render_bert(args.bert, opts), sys.stdout, sys.stderr)
    jobs = [(name, sys.stdin.buffer.read() if name == "-" else None, opts) for name in args.files]
    workers = args.jobs
    if workers is None:
        workers = (os.cpu_count() or 1) if len(jobs) >= PARALLEL_MIN_INPUTS else 1
    ok &= render_all(render_input, jobs, workers, sys.stdout, sys.stderr)
    return EXIT_OK if ok else EXIT_DECODE_ERROR


def write_rendered(res: Rendered, out: TextIO, err: TextIO) -> bool:
    out.write(res.out)
    for line in res.err:
        print(line, file=err)
    return res.ok


def render_all(render: Callable[[Any], Rendered], jobs: Sequence, workers: int,
               out: TextIO, err: TextIO) -> bool:
    """Render every job and write what each gave, in job order: text to ``out``, messages
    to ``err``. True when every job rendered ok.

    With workers > 1, forked processes render contiguous chunks of the jobs, and each
    writes its chunk to out's and err's file descriptors itself once the chunks before it
    are written: the text does not travel back through the parent (pickled, for 20,000
    records of JSON, that cost the parent a quarter of a worker's CPU time). The jobs
    and ``render`` reach the workers by fork, not pickling. bench/decode.py measures
    its 2-process figure through this function.
    """
    if workers <= 1 or len(jobs) < 2 or not (_has_fd(out) and _has_fd(err)):
        ok = True
        for job in jobs:
            ok &= write_rendered(render(job), out, err)
        return ok
    out.flush()
    err.flush()  # what the parent wrote goes first, and no forked copy of a buffer
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    chunks = min(len(jobs), workers * 8)  # small enough to balance, few enough to be cheap
    bounds = [len(jobs) * i // chunks for i in range(chunks + 1)]
    order = _WriteOrder(ctx)
    state = (render, jobs, bounds, out, err, order)
    with ctx.Pool(workers, initializer=_set_worker_state, initargs=(state,)) as pool:
        ok = all(list(pool.imap(_render_chunk, range(chunks))))  # every chunk, then close
    if order.broken.value:
        raise BrokenPipeError  # a worker found stdout closed (`| head`): as main() expects
    return ok


class _WriteOrder:
    """Whose turn it is to write, across forked workers: chunk i writes after chunks < i.

    Pool hands out chunks in order, so the chunk whose turn it is has always been taken
    by a worker that is not waiting for a later one: no deadlock."""

    def __init__(self, ctx: Any) -> None:
        self.turn = ctx.Value("q", 0, lock=False)  # guarded by ``changed``
        self.broken = ctx.Value("b", 0, lock=False)  # set by the worker whose turn it is
        self.changed = ctx.Condition()

    def wait_turn(self, index: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.turn.value == index)

    def pass_turn(self, index: int) -> None:
        with self.changed:
            self.turn.value = index + 1
            self.changed.notify_all()


_worker_state: tuple = ()


def _set_worker_state(state: tuple) -> None:
    global _worker_state
    _worker_state = state


def _render_chunk(index: int) -> bool:
    render, jobs, bounds, out, err, order = _worker_state
    results = [render(job) for job in jobs[bounds[index]:bounds[index + 1]]]
    # encoded as out's and err's text layers would (print() adds the newline)
    text = "".join(res.out for res in results).encode(out.encoding, out.errors)
    notes = "".join(f"{line}\n" for res in results for line in res.err)
    notes = notes.encode(err.encoding, err.errors)
    order.wait_turn(index)
    try:
        if not order.broken.value:
            _write_fd(out.fileno(), text)
            _write_fd(err.fileno(), notes)
    except BrokenPipeError:
        order.broken.value = 1
    finally:
        order.pass_turn(index)
    return all(res.ok for res in results)


def _has_fd(stream: TextIO) -> bool:
    """Workers write to the file descriptor (a test's StringIO stdout has none)."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def render_input(job: tuple[str, bytes | None, DecodeOptions]) -> Rendered:
    from ..decode import cper
    name, data, opts = job
    res = Rendered()
    try:
        raw = data if data is not None else Path(name).read_bytes()
        blob = to_bytes(raw, opts.input_format)[0]
    except (OSError, ValueError) as exc:
        _input_error(res, name, str(exc), opts)
        return res
    records = cper.decode_all(blob)
    if not records:
        _input_error(res, name, "empty input", opts)
    parts = []
    for index, rec in enumerate(records):
        _set_arm_reading(rec, opts.arm_type)
        parts.append(_render_record(res, name, index, rec, opts))
    res.out += "".join(parts)  # after any input-error line already there
    return res


def render_bert(path: str, opts: DecodeOptions) -> Rendered:
    from ..decode import bert
    from ..decode.errors import DecodeError
    res = Rendered()
    source = f"BERT {path}"
    try:
        report = bert.read_bert(path)
    except (OSError, DecodeError) as exc:
        _input_error(res, source, str(exc), opts)
        return res
    if report.table is None and not report.records:
        res.err.append(f"rasdctl: no BERT at {path}")
    if report.table is not None and not report.table.checksum_ok:
        res.err.append(f"rasdctl: {source}: warning: BERT table checksum is wrong")
    for rec in report.records:
        _set_arm_reading(rec, opts.arm_type)
    res.out = "".join(_render_record(res, source, index, rec, opts, consumed=rec.empty)
                      for index, rec in enumerate(report.records))
    if report.error is not None:  # e.g. a region beyond the read limit: say so, exit 1
        _input_error(res, source, str(report.error), opts)
    return res


def _render_record(res: Rendered, source: str, index: int, rec: cper.Record,
                   opts: DecodeOptions, consumed: bool = False) -> str:
    if rec.error is not None:
        res.ok = False
        res.err.append(f"rasdctl: {source}: record {index}: {rec.error}")
    if not opts.json:
        from .report import format_record
        return format_record(rec, f"{source} #{index}", consumed) + "\n"
    return record_json_line(source, index, rec, opts.raw, consumed)


def record_json_line(source: str, index: int, rec: cper.Record, raw: bool = False,
                     consumed: bool = False) -> str:
    """One line of ``decode --json``: the text of
    ``{"source": source, "index": index, **rec.to_dict(raw)}`` (plus consumed_by_kernel),
    written by Record.to_json rather than through a dict (3x faster; tests pin it equal)."""
    from ..decode.common import json_str
    members = rec.to_json(include_raw=raw)[1:-1]  # the record's object, without its braces
    tail = ',"consumed_by_kernel":true' if consumed else ""
    return f'{{"source":{json_str(source)},"index":{index},{members}{tail}}}\n'


def _input_error(res: Rendered, source: str, reason: str, opts: DecodeOptions) -> None:
    res.ok = False
    res.err.append(f"rasdctl: {source}: {reason}")
    if opts.json:
        res.out += _dumps({"source": source, "index": None, "framing": None,
                           "error": {"offset": None, "reason": reason}}) + "\n"


def _set_arm_reading(rec: cper.Record, reading: str) -> None:
    for sec in rec.sections:
        if hasattr(sec.body, "type_reading"):
            sec.body.type_reading = reading


# --- status -------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    from ..status import query
    try:
        doc = query(args.runtime_dir)
    except (OSError, ValueError) as exc:
        print(f"rasdctl: rasd is not running or not answering at {args.runtime_dir}: {exc}",
              file=sys.stderr)
        return 3  # as LSB "program is not running"
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"rasd {doc['version']} pid {doc['pid']}, lockdown {doc['lockdown']}")
    loader = doc.get("loader")
    if loader:
        how = (f"loaded from the compile cache in {loader.get('cache_load_s', 0):.2f} s"
               if loader.get("cache") == "hit" else
               f"compiled in {loader.get('compile_s', 0):.2f} s "
               f"(compile cache: {loader.get('cache', 'off')})")
        print(f"probes {how}")
    print(f"{'PROBE':28} {'STATUS':16} {'KIND':18} {'SYMBOL':32} REASON")
    for p in doc["probes"]:
        print(f"{p['probe']:28} {p['status']:16} {p['kind'] or '-':18} "
              f"{p['symbol'] or '-':32} {p['reason']}")
    c = doc["counters"]
    print(f"events {c['events_total']}  decode errors {c['decode_errors']}  "
          f"lost in kernel {c['lost_kernel']}  source errors {c['source_errors']}")
    for kind, n in sorted(c["events"].items()):
        print(f"  {kind:24} {n}")
    for note in doc.get("notes", []):
        print(f"note: {note}")
    return EXIT_OK


# --- decode-esr ---------------------------------------------------------------------------

def cmd_decode_esr(args: argparse.Namespace) -> int:
    from ..decode import esr
    status = EXIT_OK
    for text in args.values:
        try:
            decoded = esr.decode_esr(esr.parse_esr_text(text))
        except ValueError as exc:
            print(f"rasdctl: {exc}", file=sys.stderr)
            status = EXIT_DECODE_ERROR
            continue
        verdicts = _esr_verdicts(decoded, not args.no_ras, args.origin)
        if args.json:
            print(json.dumps({**decoded.to_dict(), "origin": args.origin,
                              "has_ras_extension": not args.no_ras,
                              "verdicts": [v.to_dict() for v in verdicts]}))
        else:
            print(decoded.describe())
            for v in verdicts:
                print(f"  kernel: {v.outcome} -- {v.reason} [{v.decided_by}]"
                      + (f" ({v.applies})" if v.applies else ""))
    return status


def _esr_verdicts(decoded: esr.Esr, has_ras: bool, origin: str) -> list:
    from ..decode import esr
    if decoded.ec.value == esr.EC_SERROR:
        return [esr.serror_verdict(decoded, has_ras, origin)]
    if decoded.abort is not None and decoded.abort.is_sea:
        if origin == "guest":
            return list(esr.guest_sea_verdicts(decoded, None))
        return list(esr.host_sea_verdicts(decoded, None))
    return []


# --- store queries: events, incidents, show, summary ---------------------------------------

STORE_EPILOG = """\
times (--since/--until): ISO 8601 (2026-11-25T04:00:00Z; no zone means UTC), @EPOCH_SECONDS,
  or an age: 90s, 30m, 1h, 2d, 1w. Output times are UTC. [since, until) is half-open.
--json: {json}
exit status: 0 ok (also when nothing matched), 1 the store cannot be read or the id is
  unknown (reason on stderr), 2 usage
"""


def _time_arg(text: str) -> int:
    try:
        return tables.parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _default_db() -> str:
    from .. import config as config_mod
    from ..sinks.store import DEFAULT_PATH, store_path
    try:
        return str(store_path(config_mod.load()))
    except config_mod.ConfigError:
        return DEFAULT_PATH


def add_store_commands(sub: Any) -> None:
    from ..events import SEVERITY_ORDER

    def common(p: argparse.ArgumentParser, times: bool = True) -> None:
        p.add_argument("--db", metavar="PATH", help="the store (default: store.path from "
                       "/etc/rasd/rasd.toml, else /var/lib/rasd/rasd.db)")
        if times:
            p.add_argument("--since", type=_time_arg, metavar="TIME", help="from this time on")
            p.add_argument("--until", type=_time_arg, metavar="TIME", help="before this time")

    def parser(name: str, help_: str, desc: str, json_doc: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=desc,
                              epilog=STORE_EPILOG.format(json=json_doc),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    ev = parser("events", "stored events", "List stored events, oldest first.",
                "JSON Lines, one event per line (its decoded form, without raw bytes)")
    common(ev)
    ev.add_argument("--type", dest="kinds", action="append", metavar="KIND",
                    help="event kind (ghes, memory_failure, guest_sea, ...); repeatable")
    ev.add_argument("--severity", choices=SEVERITY_ORDER, help="this severity or worse")
    ev.add_argument("--vm", metavar="NAME", help="events attributed to this VM")
    ev.add_argument("--limit", type=_positive_int, metavar="N", help="only the newest N")
    ev.add_argument("--json", action="store_true", help="JSON Lines")
    ev.set_defaults(func=cmd_events)

    inc = parser("incidents", "stored incidents", "List incidents that overlap the time range, "
                 "oldest first.", "JSON Lines, one incident per line")
    common(inc)
    inc.add_argument("--severity", choices=SEVERITY_ORDER, help="this severity or worse")
    inc.add_argument("--vm", metavar="NAME", help="incidents in this VM")
    inc.add_argument("--open", action="store_true", help="only incidents still open")
    inc.add_argument("--json", action="store_true", help="JSON Lines")
    inc.set_defaults(func=cmd_incidents)

    sh = parser("show", "one incident with its events, or one event",
                "Show incident ID with its member events, or event:ID with its stored raw "
                "bytes decoded again (to show they round-trip).", "one JSON document")
    common(sh, times=False)
    sh.add_argument("id", metavar="ID|event:ID")
    sh.add_argument("--json", action="store_true", help="one JSON document")
    sh.set_defaults(func=cmd_show)

    su = parser("summary", "event counts by type, severity, CPU, VM, memory location",
                "Count events by type, severity, CPU, VM, memory location and page.",
                "one JSON document")
    common(su)
    su.add_argument("--json", action="store_true", help="one JSON document")
    su.set_defaults(func=cmd_summary)


def _open_store(args: argparse.Namespace):
    from ..sinks.store import StoreReader
    return StoreReader(args.db or _default_db())


def _store_command(fn):
    """Store errors are exit 1 with the reason on stderr, never a traceback."""
    def run(args: argparse.Namespace) -> int:
        from ..sinks.store import StoreError
        try:
            reader = _open_store(args)
        except StoreError as exc:
            print(f"rasdctl: {exc}", file=sys.stderr)
            return EXIT_DECODE_ERROR
        try:
            return fn(args, reader)
        except StoreError as exc:
            print(f"rasdctl: {exc}", file=sys.stderr)
            return EXIT_DECODE_ERROR
        finally:
            reader.close()
    return run


def event_json(row: Any, reader: Any) -> dict:
    """The stored decoded form (its CPER record decoded from the raw bytes where only
    those were stored), with the columns the store derived from it."""
    d = reader.decoded(row)
    d["id"] = row["id"]
    d["time"] = tables.fmt_time(row["wall_ns"])
    d["incident_id"] = row["incident_id"]
    d["vm"] = row["vm"]
    d["pfn"] = row["pfn"]
    d["phys_addr"] = None if row["phys_addr"] is None else hex(row["phys_addr"])
    d["location"] = row["location"]
    return d


def incident_json(row: Any) -> dict:
    d = {k: row[k] for k in row.keys()}
    for name in ("location", "vm", "blast_radius", "disagreements", "event_kinds", "sections"):
        d[name] = None if d.get(name) is None else json.loads(d[name])
    for name in ("phys_addr", "mpidr", "esr"):
        d[name] = None if d.get(name) is None else hex(d[name])
    d.pop("sev_rank", None)
    d.pop("vm_name", None)
    d["closed"] = bool(d["closed"])
    d["first"], d["last"] = tables.fmt_time(d["first_wall_ns"]), tables.fmt_time(d["last_wall_ns"])
    return d


EVENT_HEADERS = ("ID", "TIME", "KIND", "SEVERITY", "CPU", "TASK", "PFN", "LOCATION", "VM",
                 "INCIDENT", "REASON")


def _event_cells(row: Any) -> list:
    task = f"{row['comm']}[{row['tid']}]" if row["comm"] is not None else None
    return [row["id"], tables.fmt_time(row["wall_ns"]), row["kind"], row["severity"], row["cpu"],
            task, tables.hex_or_dash(row["pfn"]), row["location"], row["vm"],
            row["incident_id"], row["decode_error"] and f"decode error: {row['decode_error']}"
            or row["reason"]]


INCIDENT_HEADERS = ("ID", "FIRST", "LAST", "SEVERITY", "KIND", "EVENTS", "STATE", "VM",
                    "SUMMARY")


def _incident_state(row: Any) -> str:
    if row["merged_into"] is not None:
        return f"merged:{row['merged_into']}"
    return "closed" if row["closed"] else "open"


def _incident_cells(row: Any) -> list:
    return [row["id"], tables.fmt_time(row["first_wall_ns"]), tables.fmt_time(row["last_wall_ns"]),
            row["severity"], row["kind"], row["event_count"], _incident_state(row),
            row["vm_name"], row["summary"]]


@_store_command
def cmd_events(args: argparse.Namespace, reader: Any) -> int:
    from ..sinks.store import EventQuery
    rows = reader.events(EventQuery(args.since, args.until, args.kinds or (), args.severity,
                                    args.vm, args.limit, newest_first=args.limit is not None))
    if args.json:
        sys.stdout.writelines(_dumps(event_json(r, reader)) + "\n" for r in rows)
    else:  # column widths need every row: a table is built whole
        sys.stdout.write(tables.format_table(EVENT_HEADERS, [_event_cells(r) for r in rows]))
    return EXIT_OK


@_store_command
def cmd_incidents(args: argparse.Namespace, reader: Any) -> int:
    rows = reader.incidents(args.since, args.until, args.severity, args.vm, args.open)
    if args.json:
        sys.stdout.writelines(_dumps(incident_json(r)) + "\n" for r in rows)
    else:
        sys.stdout.write(tables.format_table(INCIDENT_HEADERS, map(_incident_cells, rows)))
    return EXIT_OK


def _parse_show_id(text: str) -> tuple[str, int] | None:
    kind, _, number = text.rpartition(":")
    if kind not in ("", "event", "incident") or not number.isdigit():
        return None
    return (kind or "incident"), int(number)


def cmd_show(args: argparse.Namespace) -> int:
    target = _parse_show_id(args.id)
    if target is None:
        print(f"rasdctl show: {args.id!r}: give an incident id (42) or event:ID", file=sys.stderr)
        return EXIT_USAGE
    args.target = target
    return _show(args)


@_store_command
def _show(args: argparse.Namespace, reader: Any) -> int:
    kind, number = args.target
    if kind == "event":
        return _show_event(args, reader, number)
    row = reader.incident(number)
    if row is None:
        print(f"rasdctl: no incident {number} in {reader.path}", file=sys.stderr)
        return EXIT_DECODE_ERROR
    members = reader.incident_events(number)
    if args.json:
        print(json.dumps({"incident": incident_json(row),
                          "events": [event_json(r, reader) for r in members]}, indent=2))
        return EXIT_OK
    d = incident_json(row)
    print(f"incident {d['id']}: {d['kind']}, severity {d['severity']}, containment "
          f"{d['containment']}, {_incident_state(row)}")
    for label, value in (("summary", d["summary"]), ("first", d["first"]), ("last", d["last"]),
                         ("key", d["key"]), ("page", tables.hex_or_dash(d["pfn"])),
                         ("physical address", d["phys_addr"]), ("location", d["location"]),
                         ("cpu", d["cpu"]), ("mpidr", d["mpidr"]), ("vm", d["vm"]),
                         ("blast radius", d["blast_radius"]),
                         ("disagreements", "; ".join(d["disagreements"] or []))):
        print(f"  {label + ':':18}{tables.cell(value)}")
    print(f"\n{len(members)} event(s):")
    sys.stdout.write(tables.format_table(EVENT_HEADERS, map(_event_cells, members)))
    return EXIT_OK


def redecode(raw: bytes | None) -> tuple[Any, dict | None]:
    """The stored bytes through the decoder again: (record, its to_dict) or (None, None)."""
    from ..decode import cper
    if not raw:
        return None, None
    rec = cper.try_decode(bytes(raw))
    return rec, json.loads(_dumps(rec.to_dict()))


def _show_event(args: argparse.Namespace, reader: Any, eid: int) -> int:
    row = reader.event(eid)
    if row is None:
        print(f"rasdctl: no event {eid} in {reader.path}", file=sys.stderr)
        return EXIT_DECODE_ERROR
    from ..sinks.store import CPER_FROM_RAW
    d = event_json(row, reader)
    rec, again = redecode(row["raw"]) if "cper" in d else (None, None)
    # a GHES block's decoding is not stored (the store keeps its bytes): nothing to compare
    from_raw = json.loads(row["decoded"]).get("cper") == CPER_FROM_RAW
    same = None if again is None or from_raw else again == d["cper"]
    if args.json:
        doc = {"event": d, "raw": base64.b64encode(row["raw"]).decode() if row["raw"] else None,
               "redecoded": again, "roundtrip": same,
               "cper_stored": None if "cper" not in d else "raw" if from_raw else "decoded"}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"event {d['id']}: {d['kind']} from {d['source']} at {d['time']}")
    for cells in zip(EVENT_HEADERS[3:], _event_cells(row)[3:]):
        print(f"  {cells[0].lower() + ':':18}{tables.cell(cells[1])}")
    for name, value in sorted(d.get("fields", {}).items()):
        print(f"  field {name}: {value}")
    if d.get("esr"):
        print(f"  esr: {d['esr']}")
    raw = row["raw"] or b""
    print(f"  raw: {len(raw)} bytes")
    if rec is not None:
        from .report import format_record
        print(format_record(rec, f"event {eid} raw bytes decoded again"))
        if from_raw:
            print("stored as raw bytes only: decoded now, by this rasdctl")
        else:
            print("round trip: " + ("the stored bytes decode to the stored decoding" if same
                                    else "the stored bytes decode DIFFERENTLY from the stored "
                                    "decoding (the decoder changed since it was stored)"))
    return EXIT_OK


@_store_command
def cmd_summary(args: argparse.Namespace, reader: Any) -> int:
    s = reader.summary(args.since, args.until)
    s["since"] = tables.fmt_time(args.since) if args.since is not None else None
    s["until"] = tables.fmt_time(args.until) if args.until is not None else None
    if args.json:
        print(json.dumps(s, indent=2))
        return EXIT_OK
    print(f"{s['total']} event(s) from {s['since'] or 'the first'} until {s['until'] or 'now'}")
    pages = [[tables.hex_or_dash(pfn), n] for pfn, n in s["top_pages"]]
    for title, rows in (("TYPE", s["by_type"]), ("SEVERITY", s["by_severity"]),
                        ("CPU", s["by_cpu"]), ("VM", s["by_vm"]),
                        ("MEMORY LOCATION", s["by_location"]), ("PAGE (top 20)", pages)):
        print()
        sys.stdout.write(_count_table(title, rows))
    return EXIT_OK


def _count_table(title: str, rows: list) -> str:
    """EVENTS first so the free-text key (a location) can be the unpadded last column."""
    return tables.format_table(("EVENTS", title), [(n, key) for key, n in rows])


if __name__ == "__main__":
    sys.exit(main())
