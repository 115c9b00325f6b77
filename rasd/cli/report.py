"""Readable text reports of decoded records (what `rasdctl decode` prints without --json)."""

from __future__ import annotations

from ..decode.cper import SEVERITIES, Record, StatusBlockHeader


def format_record(rec: Record, label: str, consumed: bool = False) -> str:
    sev = SEVERITIES.get(rec.severity, "unknown") if rec.severity is not None else "-"
    lines = [f"{label}: {rec.framing.replace('_', ' ')}, {len(rec.raw)} bytes, "
             f"severity {sev}, {len(rec.sections)} section(s)"]
    if isinstance(rec.header, StatusBlockHeader):
        bs = rec.header.block_status
        kinds = [n for bit, n in ((1, "uncorrectable"), (2, "correctable"),
                                  (4, "multiple uncorrectable"), (8, "multiple correctable"))
                 if bs & bit]
        note = " (0: consumed by the kernel)" if consumed or bs == 0 else ""
        lines.append(f"  block status {bs:#x}{note}: {', '.join(kinds) or 'none'}, "
                     f"{rec.header.entry_count} entries")
    for i, sec in enumerate(rec.sections):
        stamp = ""
        if sec.timestamp is not None and sec.validation_bits & 4:
            stamp = f", {sec.timestamp.iso() or 'invalid timestamp'}"
        lines.append(f"  section {i}: {sec.name} {{{sec.section_type}}}, severity "
                     f"{SEVERITIES.get(sec.severity, sec.severity)}{stamp}")
        if sec.validation_bits & 2 and sec.fru_text:
            lines.append(f"    FRU: {sec.fru_text}")
        if sec.body is not None:
            lines.extend("    " + line for line in sec.body.describe())
        if sec.error is not None:
            lines.append(f"    DECODE ERROR: {sec.error}")
    if rec.raw_data:
        lines.append(f"  raw data: {len(rec.raw_data)} bytes")
    if rec.error is not None:
        lines.append(f"  DECODE ERROR: {rec.error}")
    return "\n".join(lines)
