"""rasdctl: decode and inspect RAS error data.

Commands so far:
  decode       CPER status blocks and records (files, stdin, BERT) -> report or JSON lines
  decode-esr   an ESR_ELx value -> fields and the kernel's verdict
"""

from __future__ import annotations

import argparse
import json
import sys
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `rasdctl decode ... | head` is normal use
        sys.stderr.close()
        return EXIT_OK


# --- decode -------------------------------------------------------------------------------

def _inputs(args: argparse.Namespace):
    """(name, bytes | OSError | ValueError) for each input, in order."""
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
            yield name, to_bytes(data)[0]
        except (OSError, ValueError) as exc:
            yield name, exc


def cmd_decode(args: argparse.Namespace) -> int:
    if not args.files and args.bert is None:
        print("rasdctl decode: give FILE(s), - for stdin, or --bert", file=sys.stderr)
        return EXIT_USAGE
    out = Emitter(args)
    if args.bert is not None:
        _decode_bert(args.bert, out)
    for name, data in _inputs(args):
        if isinstance(data, Exception):
            out.input_error(name, str(data))
            continue
        records = cper.decode_all(data)
        if not records:
            out.input_error(name, "empty input")
        for index, rec in enumerate(records):
            _set_arm_reading(rec, args.arm_type)
            out.record(name, index, rec)
    return out.status


def _decode_bert(path: str, out: "Emitter") -> None:
    try:
        report = bert_mod.read_bert(path)
    except (OSError, DecodeError) as exc:
        out.input_error(f"BERT {path}", str(exc))
        return
    if report.table is None and not report.records:
        print(f"rasdctl: no BERT at {path}", file=sys.stderr)
    for index, rec in enumerate(report.records):
        out.record(f"BERT {path}", index, rec, consumed=rec.empty)


def _set_arm_reading(rec: cper.Record, reading: str) -> None:
    for sec in rec.sections:
        if hasattr(sec.body, "type_reading"):
            sec.body.type_reading = reading


class Emitter:
    """Writes each record as a report or a JSON line and tracks the exit status."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.json
        self.raw = args.raw
        self.status = EXIT_OK
        self.dumps = json.JSONEncoder(separators=(",", ":")).encode

    def record(self, source: str, index: int, rec: cper.Record, consumed: bool = False) -> None:
        if rec.error is not None:
            self.status = EXIT_DECODE_ERROR
            print(f"rasdctl: {source}: record {index}: {rec.error}", file=sys.stderr)
        if self.json:
            d = {"source": source, "index": index, **rec.to_dict(include_raw=self.raw)}
            if consumed:
                d["consumed_by_kernel"] = True
            sys.stdout.write(self.dumps(d) + "\n")
        else:
            sys.stdout.write(format_record(rec, f"{source} #{index}", consumed) + "\n")

    def input_error(self, source: str, reason: str) -> None:
        self.status = EXIT_DECODE_ERROR
        print(f"rasdctl: {source}: {reason}", file=sys.stderr)
        if self.json:
            sys.stdout.write(self.dumps({"source": source, "index": None, "framing": None,
                                         "error": {"offset": None, "reason": reason}}) + "\n")


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
