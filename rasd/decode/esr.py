"""Decode arm64 ``ESR_ELx`` syndrome values and predict what the kernel does with them.

Field layout and constants: ``arch/arm64/include/asm/esr.h`` (6.17) and the Arm ARM
(DDI 0487, "ESR_ELx"); see docs/esr.md and reference/arm64-ras.md §3. Verdict logic
mirrors ``arch/arm64/include/asm/traps.h`` / ``kernel/traps.c`` (SError),
``arch/arm64/mm/fault.c`` (``do_sea``) and ``arch/arm64/kvm/{handle_exit,mmu}.c``
(guest SError / SEA), as summarised in reference §1.2-§1.4 and §3.2.

Everything here is pure table look-up and bit extraction: the daemon decodes every
ESR it sees, so per-call work is one result object plus its detail object.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Literal

from rasd.decode.common import hex64

__all__ = [
    "Named", "SerrorIss", "AbortIss", "Esr", "Outcome", "Verdict",
    "decode_esr", "parse_esr_text", "serror_verdict", "guest_sea_verdicts",
    "host_sea_verdicts", "EC_SERROR", "ABORT_ECS", "SEA_FSCS",
]


@dataclass(slots=True, frozen=True)
class Named:
    """An enumerated field: numeric value, stable short name, human description."""

    value: int
    name: str
    desc: str = ""

    def to_dict(self) -> dict:
        return {"value": self.value, "name": self.name}


# --- Exception classes: esr.h ESR_ELx_EC_* (names are the macro suffixes) -----------
_EC_TABLE: dict[int, tuple[str, str]] = {
    0x00: ("UNKNOWN", "unknown reason"),
    0x01: ("WFx", "trapped WFI/WFE"),
    0x03: ("CP15_32", "AArch32 MCR/MRC (cp15)"),
    0x04: ("CP15_64", "AArch32 MCRR/MRRC (cp15)"),
    0x05: ("CP14_MR", "AArch32 MCR/MRC (cp14)"),
    0x06: ("CP14_LS", "AArch32 LDC/STC (cp14)"),
    0x07: ("FP_ASIMD", "FP/SIMD/SVE access trap"),
    0x08: ("CP10_ID", "AArch32 VMRS ID-group trap"),
    0x09: ("PAC", "pointer authentication trap"),
    0x0A: ("OTHER", "LD64B/ST64B and other ISS encodings"),
    0x0C: ("CP14_64", "AArch32 MRRC (cp14)"),
    0x0D: ("BTI", "branch target exception"),
    0x0E: ("ILL", "illegal execution state"),
    0x11: ("SVC32", "AArch32 SVC"),
    0x12: ("HVC32", "AArch32 HVC"),
    0x13: ("SMC32", "AArch32 SMC"),
    0x15: ("SVC64", "SVC"),
    0x16: ("HVC64", "HVC"),
    0x17: ("SMC64", "SMC"),
    0x18: ("SYS64", "MSR/MRS/system instruction trap"),
    0x19: ("SVE", "SVE access trap"),
    0x1A: ("ERET", "ERET/ERETAA/ERETAB trap"),
    0x1C: ("FPAC", "pointer authentication failure"),
    0x1D: ("SME", "SME access trap"),
    0x1F: ("IMP_DEF", "implementation defined (EL3)"),
    0x20: ("IABT_LOW", "instruction abort from a lower EL"),
    0x21: ("IABT_CUR", "instruction abort at the current EL"),
    0x22: ("PC_ALIGN", "PC alignment fault"),
    0x24: ("DABT_LOW", "data abort from a lower EL"),
    0x25: ("DABT_CUR", "data abort at the current EL"),
    0x26: ("SP_ALIGN", "SP alignment fault"),
    0x27: ("MOPS", "memory copy/set (MOPS) exception"),
    0x28: ("FP_EXC32", "AArch32 FP exception"),
    0x2C: ("FP_EXC64", "FP exception"),
    0x2D: ("GCS", "guarded control stack exception"),
    0x2F: ("SERROR", "SError"),
    0x30: ("BREAKPT_LOW", "breakpoint from a lower EL"),
    0x31: ("BREAKPT_CUR", "breakpoint at the current EL"),
    0x32: ("SOFTSTP_LOW", "software step from a lower EL"),
    0x33: ("SOFTSTP_CUR", "software step at the current EL"),
    0x34: ("WATCHPT_LOW", "watchpoint from a lower EL"),
    0x35: ("WATCHPT_CUR", "watchpoint at the current EL"),
    0x38: ("BKPT32", "AArch32 BKPT"),
    0x3A: ("VECTOR32", "AArch32 vector catch"),
    0x3C: ("BRK64", "BRK instruction"),
}
_EC: tuple[Named, ...] = tuple(
    Named(v, *_EC_TABLE.get(v, ("unknown", f"unallocated EC {v:#04x}"))) for v in range(64))

EC_SERROR = 0x2F
EC_IABT_LOW, EC_IABT_CUR, EC_DABT_LOW, EC_DABT_CUR = 0x20, 0x21, 0x24, 0x25
ABORT_ECS = frozenset({EC_IABT_LOW, EC_IABT_CUR, EC_DABT_LOW, EC_DABT_CUR})
_LOWER_EL_ABORTS = frozenset({EC_IABT_LOW, EC_DABT_LOW})

# --- SError ISS (reference §3.2; esr.h ESR_ELx_IDS/AET/EA/FSC_SERROR; IESB is Arm ARM) --
AET_UC, AET_UEU, AET_UEO, AET_UER, AET_CE = 0, 1, 2, 3, 6
_AET_TABLE: dict[int, tuple[str, str]] = {
    AET_UC: ("UC", "uncontainable"),
    AET_UEU: ("UEU", "uncorrected, unrecoverable"),
    AET_UEO: ("UEO", "uncorrected, restartable (not yet consumed)"),
    AET_UER: ("UER", "uncorrected, recoverable"),
    AET_CE: ("CE", "corrected"),
}
_AET: tuple[Named, ...] = tuple(
    Named(v, *_AET_TABLE.get(v, ("reserved", f"reserved AET {v}"))) for v in range(8))

FSC_SERROR = 0x11  # ESR_ELx_FSC_SERROR: "asynchronous SError"; AET valid only with it
_SERROR_DFSC_TABLE: dict[int, tuple[str, str]] = {
    0x00: ("UNCATEGORIZED", "uncategorized"),
    FSC_SERROR: ("ASYNC_SERROR", "asynchronous SError interrupt"),
}
_SERROR_DFSC: tuple[Named, ...] = tuple(
    Named(v, *_SERROR_DFSC_TABLE.get(v, ("reserved", f"reserved DFSC {v:#04x}"))) for v in range(64))

# --- Abort FSC (reference §3.3; esr.h ESR_ELx_FSC_*; fault.c fault_info[]; Arm ARM) ---
# code -> (name, kind, level). Names follow the esr.h macros where one exists.
# Kinds: "sea"/"sea_ttw"/"secc"/"secc_ttw" are the kvm_vcpu_abt_issea() set.
_FSC_TABLE: dict[int, tuple[str, str, int | None]] = {
    **{0x00 + n: (f"ADDRSZ_L({n})", "address_size", n) for n in range(4)},
    **{0x04 + n: (f"FAULT_L({n})", "translation", n) for n in range(4)},
    0x2B: ("FAULT_L(-1)", "translation", -1),  # ESR_ELx_FSC_FAULT_nL + (-1)
    **{0x08 + n: (f"ACCESS_L({n})", "access_flag", n) for n in range(4)},
    **{0x0C + n: (f"PERM_L({n})", "permission", n) for n in range(4)},
    0x10: ("EXTABT", "sea", None),
    0x11: ("MTE", "tag_check", None),
    **{0x14 + n: (f"SEA_TTW({n})", "sea_ttw", n) for n in range(-1, 4)},
    0x18: ("SECC", "secc", None),
    **{0x1C + n: (f"SECC_TTW({n})", "secc_ttw", n) for n in range(-1, 4)},
    0x21: ("ALIGNMENT", "alignment", None),
    0x30: ("TLB_CONFLICT", "tlb_conflict", None),
    0x31: ("UNSUPPORTED_HW_UPDATE", "unsupported_hw_update", None),
    0x34: ("IMPDEF_LOCKDOWN", "impdef", None),
    0x35: ("IMPDEF_EXCL_ATOMIC", "impdef", None),
}
_FSC_DESC: dict[str, str] = {
    "address_size": "address size fault",
    "translation": "translation fault",
    "access_flag": "access flag fault",
    "permission": "permission fault",
    "sea": "synchronous external abort (SEA)",
    "tag_check": "synchronous tag check fault",
    "sea_ttw": "SEA on translation table walk",
    "secc": "synchronous parity/ECC error (reserved with FEAT_RAS)",
    "secc_ttw": "synchronous parity/ECC error on translation table walk (reserved with FEAT_RAS)",
    "alignment": "alignment fault",
    "tlb_conflict": "TLB conflict abort",
    "unsupported_hw_update": "unsupported atomic hardware update fault",
    "impdef": "implementation defined fault",
    "unknown": "unallocated fault status code",
}
# IFSC lacks these DFSC-only encodings (Arm ARM ISS encoding for an instruction abort).
_DABT_ONLY_FSCS = frozenset({0x11, 0x21, 0x34, 0x35})
SEA_KINDS = frozenset({"sea", "sea_ttw", "secc", "secc_ttw"})
SEA_FSCS = frozenset(c for c, (_, kind, _) in _FSC_TABLE.items() if kind in SEA_KINDS)

_FscInfo = tuple[Named, str, "int | None"]


def _fsc_info(code: int) -> _FscInfo:
    name, kind, level = _FSC_TABLE.get(code, ("unknown", "unknown", None))
    desc = _FSC_DESC[kind] + ("" if level is None else f", level {level}")
    return Named(code, name, desc), kind, level


_UNKNOWN_FSC = tuple((Named(c, "unknown", _FSC_DESC["unknown"]), "unknown", None) for c in range(64))
_DABT_FSC: tuple[_FscInfo, ...] = tuple(_fsc_info(c) for c in range(64))
_IABT_FSC: tuple[_FscInfo, ...] = tuple(
    _UNKNOWN_FSC[c] if c in _DABT_ONLY_FSCS else _DABT_FSC[c] for c in range(64))

# SET [12:11] (Arm ARM; esr.h defines only the position). Meaningful with FEAT_RAS
# and FSC 0x10; the decoder cannot know about FEAT_RAS, so set_valid covers the FSC.
_SET: tuple[Named, ...] = (
    Named(0, "UER", "recoverable"), Named(1, "reserved", "reserved"),
    Named(2, "UC", "uncontainable"), Named(3, "UEO", "restartable"))
_SAS: tuple[Named, ...] = (
    Named(0, "BYTE", "byte"), Named(1, "HALFWORD", "halfword"),
    Named(2, "WORD", "word"), Named(3, "DOUBLEWORD", "doubleword"))


def _bit(v: int, n: int) -> bool:
    return bool(v >> n & 1)


@dataclass(slots=True, frozen=True)
class SerrorIss:
    """ISS of an SError (EC 0x2F). With IDS set, bits [23:0] are implementation defined
    and the architected fields are None."""

    ids: bool
    impdef_syndrome: int | None
    iesb: bool | None
    aet: Named | None
    aet_valid: bool  # DFSC == 0x11 and IDS == 0 (and the CPU has FEAT_RAS)
    ea: bool | None
    dfsc: Named | None

    @classmethod
    def from_iss(cls, iss: int) -> SerrorIss:
        if iss >> 24 & 1:
            return cls(True, iss & 0xFFFFFF, None, None, False, None, None)
        dfsc = iss & 0x3F
        return cls(False, None, _bit(iss, 13), _AET[iss >> 10 & 7], dfsc == FSC_SERROR,
                   _bit(iss, 9), _SERROR_DFSC[dfsc])

    def to_dict(self) -> dict:
        return {
            "ids": self.ids, "impdef_syndrome": self.impdef_syndrome, "iesb": self.iesb,
            "aet": self.aet and self.aet.to_dict(), "aet_valid": self.aet_valid,
            "ea": self.ea, "dfsc": self.dfsc and self.dfsc.to_dict(),
        }

    def describe(self) -> list[str]:
        if self.ids:
            return [f"  IDS=1: implementation-defined syndrome {self.impdef_syndrome:#08x}"]
        assert self.aet is not None and self.dfsc is not None
        aet = f"{self.aet.name} ({self.aet.desc})" if self.aet_valid else f"{self.aet.name} (not valid)"
        return [f"  DFSC {self.dfsc.value:#04x} {self.dfsc.name}: {self.dfsc.desc}",
                f"  AET {aet}  EA={int(bool(self.ea))} IESB={int(bool(self.iesb))}"]


@dataclass(slots=True, frozen=True)
class AbortIss:
    """ISS of an instruction or data abort (EC 0x20, 0x21, 0x24, 0x25).

    DABT-only fields are None for instruction aborts; the ISV-qualified syndrome
    fields (sas, sse, srt, sf, ar) are None unless ISV is set.
    """

    data: bool
    fsc: Named
    fsc_kind: str
    walk_level: int | None
    is_sea: bool
    fnv: bool
    ea: bool
    s1ptw: bool
    set: Named
    set_valid: bool
    wnr: bool | None
    cm: bool | None
    vncr: bool | None
    isv: bool | None
    sas: Named | None
    sse: bool | None
    srt: int | None
    sf: bool | None
    ar: bool | None

    @classmethod
    def from_iss(cls, iss: int, data: bool) -> AbortIss:
        code = iss & 0x3F
        fsc, kind, level = (_DABT_FSC if data else _IABT_FSC)[code]
        common = (fsc, kind, level, kind in SEA_KINDS, _bit(iss, 10), _bit(iss, 9),
                  _bit(iss, 7), _SET[iss >> 11 & 3], code == 0x10)
        if not data:
            return cls(False, *common, None, None, None, None, None, None, None, None, None)
        isv = _bit(iss, 24)
        syn = ((_SAS[iss >> 22 & 3], _bit(iss, 21), iss >> 16 & 0x1F, _bit(iss, 15), _bit(iss, 14))
               if isv else (None, None, None, None, None))
        return cls(True, *common, _bit(iss, 6), _bit(iss, 8), _bit(iss, 13), isv, *syn)

    def to_dict(self) -> dict:
        return {
            "kind": "data" if self.data else "instruction",
            "fsc": self.fsc.to_dict(), "fsc_kind": self.fsc_kind, "walk_level": self.walk_level,
            "is_sea": self.is_sea, "fnv": self.fnv, "ea": self.ea, "s1ptw": self.s1ptw,
            "set": self.set.to_dict(), "set_valid": self.set_valid,
            "wnr": self.wnr, "cm": self.cm, "vncr": self.vncr, "isv": self.isv,
            "sas": self.sas and self.sas.to_dict(), "sse": self.sse, "srt": self.srt,
            "sf": self.sf, "ar": self.ar,
        }

    def describe(self) -> list[str]:
        label = "DFSC" if self.data else "IFSC"
        lines = [f"  {label} {self.fsc.value:#04x} {self.fsc.name}: {self.fsc.desc}"
                 + ("  [SEA]" if self.is_sea else "")]
        bits = f"  FnV={int(self.fnv)} EA={int(self.ea)} S1PTW={int(self.s1ptw)}"
        if self.data:
            bits += f" WnR={int(bool(self.wnr))} CM={int(bool(self.cm))}"
        if self.set_valid:
            bits += f" SET={self.set.name} ({self.set.desc}, if FEAT_RAS)"
        lines.append(bits)
        if self.isv:
            assert self.sas is not None
            lines.append(f"  ISV=1 SAS={self.sas.name} SSE={int(bool(self.sse))} SRT=x{self.srt}"
                         f" SF={int(bool(self.sf))} AR={int(bool(self.ar))}")
        return lines


@dataclass(slots=True, frozen=True)
class Esr:
    """A decoded ESR_ELx value. Exactly one of ``serror``/``abort`` is set for those ECs."""

    value: int
    ec: Named
    il: bool
    iss: int
    iss2: int
    serror: SerrorIss | None
    abort: AbortIss | None

    def to_dict(self) -> dict:
        return {
            "esr": hex64(self.value), "ec": self.ec.to_dict(), "il": self.il,
            "iss": self.iss, "iss2": self.iss2,
            "serror": self.serror and self.serror.to_dict(),
            "abort": self.abort and self.abort.to_dict(),
        }

    def describe(self) -> str:
        lines = [f"ESR {self.value:#018x}: EC {self.ec.value:#04x} {self.ec.name} ({self.ec.desc}),"
                 f" IL={int(self.il)}, ISS {self.iss:#09x}"
                 + (f", ISS2 {self.iss2:#08x}" if self.iss2 else "")]
        if self.serror is not None:
            lines += self.serror.describe()
        elif self.abort is not None:
            lines += self.abort.describe()
        return "\n".join(lines)


def _check_range(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ESR must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << 64:
        raise ValueError(f"ESR {value:#x} is outside the 64-bit range [0, 2**64)")
    return value


def decode_esr(value: int) -> Esr:
    """Decode a 64-bit ESR_ELx. Raises ValueError outside [0, 2**64), TypeError for non-ints."""
    _check_range(value)
    ec = value >> 26 & 0x3F
    iss = value & 0x1FFFFFF
    serror = SerrorIss.from_iss(iss) if ec == EC_SERROR else None
    abort = AbortIss.from_iss(iss, ec >= EC_DABT_LOW) if ec in ABORT_ECS else None
    return Esr(value, _EC[ec], _bit(value, 25), iss, value >> 32 & 0xFFFFFF, serror, abort)


_HEX_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")


def parse_esr_text(text: str) -> int:
    """Parse an ESR written in hex, with or without ``0x`` ("0x96000010", "96000010").

    Bare digits are hex too: ESRs are always printed in hex (kernel logs, Arm docs),
    so "10" is 0x10, never ten. Surrounding whitespace is ignored.
    """
    s = text.strip()
    m = _HEX_RE.fullmatch(s)
    if m is None:
        why = "negative values are not ESRs" if s.startswith("-") else "expected hex digits, optionally 0x-prefixed"
        raise ValueError(f"invalid ESR {text!r}: {why}")
    value = int(m.group(1), 16)
    if value >> 64:
        raise ValueError(f"invalid ESR {text!r}: wider than 64 bits")
    return value


def _as_esr(esr: int | Esr) -> Esr:
    return esr if isinstance(esr, Esr) else decode_esr(esr)


# --- Verdicts ----------------------------------------------------------------------
class Outcome(enum.StrEnum):
    """What the kernel does. Values are stable JSON strings."""

    HOST_PANIC = "host_panic"              # arm64_serror_panic(): nmi_panic
    CONTINUE = "continue"                  # host SError survived; nothing is logged
    VSERROR_INJECTED = "vserror_injected"  # virtual SError pending for the guest
    IGNORED = "ignored"                    # guest SError dropped; guest continues
    APEI_HANDLED = "apei_handled"          # firmware-first GHES record claimed the SEA
    EXIT_TO_USER = "exit_to_user"          # KVM_EXIT_ARM_SEA to the VMM
    SIGBUS = "sigbus"
    SIGKILL = "sigkill"
    OOPS = "oops"                          # die(); panics with panic_on_oops / in interrupt
    NOT_SEA = "not_sea"                    # ESR is not an SEA this path handles


@dataclass(slots=True, frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    decided_by: str   # kernel function whose test selects this outcome
    applies: str = ""  # kernel version / configuration condition; "" = every version covered

    def to_dict(self) -> dict:
        return {"outcome": self.outcome.value, "reason": self.reason,
                "decided_by": self.decided_by, "applies": self.applies}


# arm64_is_fatal_ras_serror() switch on arm64_ras_serror_get_severity() (traps.c/traps.h):
# CE/UEO -> false, UEU/UER -> true (Neoverse-N1 #1349291), anything else -> panics inside.
_SURVIVABLE, _FATAL, _PANICS = "survivable", "fatal", "panics"
_AET_CLASS: dict[int, str] = {AET_CE: _SURVIVABLE, AET_UEO: _SURVIVABLE, AET_UEU: _FATAL, AET_UER: _FATAL}
_SERROR_OUTCOME: dict[tuple[str, str], Outcome] = {
    (_SURVIVABLE, "host"): Outcome.CONTINUE,     # do_serror returns
    (_SURVIVABLE, "guest"): Outcome.IGNORED,     # kvm_handle_guest_serror does nothing
    (_FATAL, "host"): Outcome.HOST_PANIC,        # do_serror -> arm64_serror_panic(regs, esr)
    (_FATAL, "guest"): Outcome.VSERROR_INJECTED,  # kvm_inject_vabt / kvm_inject_serror
    (_PANICS, "host"): Outcome.HOST_PANIC,       # arm64_serror_panic(regs, esr)
    (_PANICS, "guest"): Outcome.HOST_PANIC,      # arm64_serror_panic(NULL, esr)
}
_NOT_RAS_OUTCOME: dict[str, Outcome] = {"host": Outcome.HOST_PANIC, "guest": Outcome.VSERROR_INJECTED}
_INJECT = "kvm_inject_vabt (<=6.16) / kvm_inject_serror (>=6.17)"


def serror_verdict(esr: int | Esr, has_ras_extension: bool,
                   origin: Literal["host", "guest"]) -> Verdict:
    """The kernel's decision for an SError: host ``do_serror`` or KVM ``kvm_handle_guest_serror``.

    ``esr`` must have EC 0x2F (for a guest: ESR_EL2, or ``disr_to_esr(DISR_EL1)``).
    """
    e = _as_esr(esr)
    if e.serror is None:
        raise ValueError(f"ESR {e.value:#x} is not an SError (EC {e.ec.value:#04x} {e.ec.name})")
    if origin not in _NOT_RAS_OUTCOME:
        raise ValueError(f"origin must be 'host' or 'guest', not {origin!r}")
    if e.serror.ids or not has_ras_extension:
        why = "IDS=1 (implementation-defined syndrome)" if e.serror.ids else "CPU lacks the RAS extension"
        act = "arm64_serror_panic" if origin == "host" else _INJECT
        return Verdict(_NOT_RAS_OUTCOME[origin], f"not a RAS SError: {why}; {act}", "arm64_is_ras_serror")
    # arm64_ras_serror_get_severity(): DFSC != 0x11 counts as UC.
    assert e.serror.dfsc is not None and e.serror.aet is not None
    if e.serror.dfsc.value != FSC_SERROR:
        cls, why = _PANICS, f"DFSC {e.serror.dfsc.value:#04x} != 0x11: severity treated as UC"
    else:
        cls = _AET_CLASS.get(e.serror.aet.value, _PANICS)
        why = f"AET {e.serror.aet.name} ({e.serror.aet.value})"
    outcome = _SERROR_OUTCOME[(cls, origin)]
    act = {Outcome.HOST_PANIC: "arm64_serror_panic", Outcome.VSERROR_INJECTED: _INJECT}.get(outcome)
    return Verdict(outcome, why + (f"; {act}" if act else ""), "arm64_is_fatal_ras_serror")


# Pre-built verdicts (immutable) for the SEA paths: no per-call construction.
_GUEST_SEA_CLAIMED = Verdict(
    Outcome.APEI_HANDLED,
    "apei_claim_sea(NULL) returned 0: GHES processed the record (memory_failure; SIGBUS "
    "to the VMM if the poisoned page is mapped); no injection, the guest resumes",
    "apei_claim_sea")
_GUEST_SEA_UNCLAIMED = (
    Verdict(Outcome.VSERROR_INJECTED, "SEA not claimed by APEI: kvm_inject_vabt",
            "kvm_handle_guest_abort", "5.9-6.16"),
    Verdict(Outcome.VSERROR_INJECTED, "SEA not claimed by APEI: kvm_inject_serror",
            "kvm_handle_guest_sea",
            ">=6.17; on ~7.0+ also when KVM_CAP_ARM_SEA_TO_USER is off or the SEA is host-owned"),
)
_GUEST_SEA_TO_USER = Verdict(
    Outcome.EXIT_TO_USER,
    "SEA not claimed by APEI: exit to user space with KVM_EXIT_ARM_SEA (41)",
    "kvm_handle_guest_sea",
    "~7.0+ with KVM_CAP_ARM_SEA_TO_USER (245) enabled and host FEAT_RAS")


def _claim_split(claimed: bool | None, yes: tuple[Verdict, ...],
                 no: tuple[Verdict, ...]) -> tuple[Verdict, ...]:
    return yes if claimed else no if claimed is False else yes + no


def guest_sea_verdicts(esr: int | Esr, claimed: bool | None) -> tuple[Verdict, ...]:
    """What KVM does with a guest stage-2 abort ESR_EL2 (``kvm_handle_guest_abort``).

    ``claimed`` is ``apei_claim_sea(NULL) == 0``; None (unknown) returns every
    possibility. Alternatives differ by kernel version/VM config (see ``applies``).
    """
    e = _as_esr(esr)
    if e.ec.value not in _LOWER_EL_ABORTS or e.abort is None or not e.abort.is_sea:
        return (Verdict(Outcome.NOT_SEA, f"EC {e.ec.name}"
                        + (f", FSC {e.abort.fsc.name}" if e.abort else "")
                        + ": not a guest SEA (kvm_vcpu_abt_issea false)", "kvm_handle_guest_abort"),)
    # ~7.0: a table-walk SEA with S1PTW set is host-owned and never goes to user space.
    host_owned = e.abort.s1ptw and e.abort.walk_level is not None
    no = _GUEST_SEA_UNCLAIMED if host_owned else _GUEST_SEA_UNCLAIMED + (_GUEST_SEA_TO_USER,)
    return _claim_split(claimed, (_GUEST_SEA_CLAIMED,), no)


# fault.c fault_info[]: signal and si_code do_sea() passes to arm64_notify_die().
_SEA_SIGNAL: dict[str, tuple[Outcome, str]] = {
    "sea": (Outcome.SIGBUS, "SIGBUS/BUS_OBJERR"),
    "secc": (Outcome.SIGBUS, "SIGBUS/BUS_OBJERR"),
    "sea_ttw": (Outcome.SIGKILL, "SIGKILL/SI_KERNEL"),
    "secc_ttw": (Outcome.SIGKILL, "SIGKILL/SI_KERNEL"),
}
_HOST_SEA_CLAIMED = Verdict(
    Outcome.APEI_HANDLED,
    "apei_claim_sea(regs) returned 0: GHES processed the record (memory_failure, "
    "SIGBUS/BUS_MCEERR_AR to the task if the page is mapped)", "apei_claim_sea")


def host_sea_verdicts(esr: int | Esr, claimed: bool | None = None) -> tuple[Verdict, ...]:
    """What ``do_sea`` does with a host SEA. User mode (lower-EL EC) asks APEI first;
    kernel mode (current-EL EC) never reaches APEI and dies. ``claimed`` as in
    ``guest_sea_verdicts``; it is ignored for kernel mode."""
    e = _as_esr(esr)
    if e.abort is None or not e.abort.is_sea:
        return (Verdict(Outcome.NOT_SEA, f"EC {e.ec.name}: do_mem_abort does not route it to do_sea",
                        "do_mem_abort"),)
    if e.ec.value not in _LOWER_EL_ABORTS:
        return (Verdict(Outcome.OOPS, f"kernel-mode {e.abort.fsc.name}: arm64_notify_die -> die() "
                        "(panic if panic_on_oops or in interrupt)", "do_sea"),)
    outcome, sig = _SEA_SIGNAL[e.abort.fsc_kind]
    addr = "si_addr 0 (FnV=1)" if e.abort.fnv else "si_addr = untagged FAR"
    unclaimed = Verdict(outcome, f"SEA not claimed by APEI: {sig}, {addr}", "do_sea")
    return _claim_split(claimed, (_HOST_SEA_CLAIMED,), (unclaimed,))
