"""rasdctl: decode and inspect RAS error data.

Commands:
  decode       CPER status blocks and records (files, stdin, BERT) -> report or JSON lines
  decode-esr   an ESR_ELx value -> fields and the kernel's verdict
  status       the running daemon's probe table and counters
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..decode import bert as bert_mod
from ..decode import cper, esr
from ..decode.errors import DecodeError
from ..decode.inputs import to_bytes
from .report import format_record

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
    dec.add_argument("--bert", nargs="?", const=str(bert_mod.DEFAULT_TABLES), metavar="PATH",
                     help="read BERT (tables directory or region file; default %(const)s)")
    dec.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: one "
                     f"per CPU from {PARALLEL_MIN_INPUTS} inputs on, else 1)")
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
    opts = DecodeOptions(args.json, args.raw, args.arm_type)
    results = []
    if args.bert is not None:
        results.append(render_bert(args.bert, opts))
    jobs = [(name, sys.stdin.buffer.read() if name == "-" else None, opts) for name in args.files]
    results.extend(_render_all(jobs, args.jobs))
    ok = True
    for res in results:
        sys.stdout.write(res.out)
        for line in res.err:
            print(line, file=sys.stderr)
        ok &= res.ok
    return EXIT_OK if ok else EXIT_DECODE_ERROR


def _render_all(jobs: list, workers: int | None):
    """Render inputs in order; many inputs are spread over worker processes."""
    if workers is None:
        workers = (os.cpu_count() or 1) if len(jobs) >= PARALLEL_MIN_INPUTS else 1
    if workers <= 1 or len(jobs) < 2:
        return map(render_input, jobs)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(render_input, jobs, chunksize=max(1, len(jobs) // (workers * 8)))


def render_input(job: tuple[str, bytes | None, DecodeOptions]) -> Rendered:
    name, data, opts = job
    res = Rendered()
    try:
        raw = data if data is not None else Path(name).read_bytes()
        blob = to_bytes(raw)[0]
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
    res.out = "".join(parts)
    return res


def render_bert(path: str, opts: DecodeOptions) -> Rendered:
    res = Rendered()
    source = f"BERT {path}"
    try:
        report = bert_mod.read_bert(path)
    except (OSError, DecodeError) as exc:
        _input_error(res, source, str(exc), opts)
        return res
    if report.table is None and not report.records:
        res.err.append(f"rasdctl: no BERT at {path}")
    res.out = "".join(_render_record(res, source, index, rec, opts, consumed=rec.empty)
                      for index, rec in enumerate(report.records))
    return res


def _render_record(res: Rendered, source: str, index: int, rec: cper.Record,
                   opts: DecodeOptions, consumed: bool = False) -> str:
    if rec.error is not None:
        res.ok = False
        res.err.append(f"rasdctl: {source}: record {index}: {rec.error}")
    if not opts.json:
        return format_record(rec, f"{source} #{index}", consumed) + "\n"
    d = {"source": source, "index": index, **rec.to_dict(include_raw=opts.raw)}
    if consumed:
        d["consumed_by_kernel"] = True
    return _dumps(d) + "\n"


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
    if decoded.ec.value == esr.EC_SERROR:
        return [esr.serror_verdict(decoded, has_ras, origin)]
    if decoded.abort is not None and decoded.abort.is_sea:
        if origin == "guest":
            return list(esr.guest_sea_verdicts(decoded, None))
        return list(esr.host_sea_verdicts(decoded, None))
    return []


if __name__ == "__main__":
    sys.exit(main())
