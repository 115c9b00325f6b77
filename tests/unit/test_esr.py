"""Tests for rasd.decode.esr.

Expected values are written out from the sources, not derived from the module:
- layout/EC/FSC constants: arch/arm64/include/asm/esr.h (6.17) and the Arm ARM
  (DDI 0487, ESR_ELx); reference/arm64-ras.md §3;
- SError verdicts: arch/arm64/include/asm/traps.h (arm64_is_ras_serror,
  arm64_ras_serror_get_severity), arch/arm64/kernel/traps.c (do_serror,
  arm64_is_fatal_ras_serror), arch/arm64/kvm/handle_exit.c (kvm_handle_guest_serror);
  reference §1.3, §1.4, §3.2;
- SEA verdicts: arch/arm64/mm/fault.c (do_sea, fault_info[]),
  arch/arm64/kvm/mmu.c (kvm_handle_guest_abort, kvm_handle_guest_sea); reference §1.2, §1.4, §3.3.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rasd.decode.esr import (
    Esr, Outcome, Verdict, decode_esr, guest_sea_verdicts, host_sea_verdicts,
    parse_esr_text, serror_verdict,
)


def esr(ec: int, iss: int = 0, il: int = 1, iss2: int = 0) -> int:
    """Build an ESR from its fields: ISS2 [55:32], EC [31:26], IL [25], ISS [24:0]."""
    return iss2 << 32 | ec << 26 | il << 25 | iss


# --- Exception classes (esr.h ESR_ELx_EC_*) ----------------------------------------
EC_NAMES = {
    0x00: "UNKNOWN", 0x01: "WFx", 0x03: "CP15_32", 0x04: "CP15_64", 0x05: "CP14_MR",
    0x06: "CP14_LS", 0x07: "FP_ASIMD", 0x08: "CP10_ID", 0x09: "PAC", 0x0A: "OTHER",
    0x0C: "CP14_64", 0x0D: "BTI", 0x0E: "ILL", 0x11: "SVC32", 0x12: "HVC32", 0x13: "SMC32",
    0x15: "SVC64", 0x16: "HVC64", 0x17: "SMC64", 0x18: "SYS64", 0x19: "SVE", 0x1A: "ERET",
    0x1C: "FPAC", 0x1D: "SME", 0x1F: "IMP_DEF", 0x20: "IABT_LOW", 0x21: "IABT_CUR",
    0x22: "PC_ALIGN", 0x24: "DABT_LOW", 0x25: "DABT_CUR", 0x26: "SP_ALIGN", 0x27: "MOPS",
    0x28: "FP_EXC32", 0x2C: "FP_EXC64", 0x2D: "GCS", 0x2F: "SERROR", 0x30: "BREAKPT_LOW",
    0x31: "BREAKPT_CUR", 0x32: "SOFTSTP_LOW", 0x33: "SOFTSTP_CUR", 0x34: "WATCHPT_LOW",
    0x35: "WATCHPT_CUR", 0x38: "BKPT32", 0x3A: "VECTOR32", 0x3C: "BRK64",
}
# esr.h "Unallocated EC" comments
UNALLOCATED_ECS = [0x02, 0x0B, 0x0F, 0x10, 0x14, 0x1B, 0x1E, 0x23, 0x29, 0x2A, 0x2B, 0x2E,
                   0x36, 0x37, 0x39, 0x3B, 0x3D, 0x3E, 0x3F]


@pytest.mark.parametrize("ec,name", sorted(EC_NAMES.items()))
def test_ec_names(ec, name):
    d = decode_esr(esr(ec, iss=0x1FFFFFF))
    assert d.ec.value == ec
    assert d.ec.name == name
    assert d.to_dict()["ec"] == {"value": ec, "name": name}
    assert (d.serror is not None) == (ec == 0x2F)
    assert (d.abort is not None) == (ec in (0x20, 0x21, 0x24, 0x25))


@pytest.mark.parametrize("ec", UNALLOCATED_ECS)
def test_unallocated_ec(ec):
    d = decode_esr(esr(ec))
    assert d.ec.value == ec and d.ec.name == "unknown"
    assert d.serror is None and d.abort is None


def test_layout_il_iss_iss2():
    # IL bit 25; ISS [24:0]; ISS2 [55:32]; bits [63:56] are RES0 and not part of ISS2
    d = decode_esr(esr(0x15, iss=0x1ABCDEF & 0x1FFFFFF, il=0, iss2=0x123456))
    assert (d.il, d.iss, d.iss2) == (False, 0x1ABCDEF & 0x1FFFFFF, 0x123456)
    d = decode_esr(0xFF00_0000_0000_0000 | esr(0x15))
    assert d.iss2 == 0 and d.il is True and d.ec.value == 0x15
    assert decode_esr(0).to_dict()["esr"] == "0x0"


# --- SError ISS (reference §3.2) ---------------------------------------------------
AET_NAMES = {0: "UC", 1: "UEU", 2: "UEO", 3: "UER", 4: "reserved", 5: "reserved",
             6: "CE", 7: "reserved"}


@pytest.mark.parametrize("aet", range(8))
@pytest.mark.parametrize("dfsc,dfsc_name", [(0x11, "ASYNC_SERROR"), (0x00, "UNCATEGORIZED")])
def test_serror_aet_dfsc(aet, dfsc, dfsc_name):
    s = decode_esr(esr(0x2F, iss=aet << 10 | dfsc)).serror
    assert s is not None and s.ids is False and s.impdef_syndrome is None
    assert s.aet is not None and s.aet.value == aet and s.aet.name == AET_NAMES[aet]
    assert s.dfsc is not None and (s.dfsc.value, s.dfsc.name) == (dfsc, dfsc_name)
    assert s.aet_valid is (dfsc == 0x11)  # AET is valid only when DFSC == 0x11 and IDS == 0
    assert s.ea is False and s.iesb is False


def test_serror_other_bits():
    s = decode_esr(esr(0x2F, iss=1 << 13 | 1 << 9 | 0x11)).serror
    assert s.iesb is True and s.ea is True and s.aet.name == "UC"
    assert decode_esr(esr(0x2F, iss=0x12)).serror.dfsc.name == "reserved"


@pytest.mark.parametrize("low", [0, 0x1811, 0xFFFFFF])
def test_serror_ids_set(low):
    # IDS (bit 24) set: bits [23:0] are an implementation-defined syndrome
    s = decode_esr(esr(0x2F, iss=1 << 24 | low)).serror
    assert s.ids is True and s.impdef_syndrome == low
    assert (s.aet, s.dfsc, s.ea, s.iesb, s.aet_valid) == (None, None, None, None, False)


# --- Abort FSC table (reference §3.3; esr.h ESR_ELx_FSC_*; Arm ARM) ---------------
# (code, name, kind, level, is_sea)
FSCS = [
    (0x00, "ADDRSZ_L(0)", "address_size", 0, False),
    (0x03, "ADDRSZ_L(3)", "address_size", 3, False),
    (0x04, "FAULT_L(0)", "translation", 0, False),
    (0x05, "FAULT_L(1)", "translation", 1, False),
    (0x06, "FAULT_L(2)", "translation", 2, False),
    (0x07, "FAULT_L(3)", "translation", 3, False),
    (0x2B, "FAULT_L(-1)", "translation", -1, False),
    (0x08, "ACCESS_L(0)", "access_flag", 0, False),
    (0x09, "ACCESS_L(1)", "access_flag", 1, False),
    (0x0A, "ACCESS_L(2)", "access_flag", 2, False),
    (0x0B, "ACCESS_L(3)", "access_flag", 3, False),
    (0x0C, "PERM_L(0)", "permission", 0, False),
    (0x0D, "PERM_L(1)", "permission", 1, False),
    (0x0E, "PERM_L(2)", "permission", 2, False),
    (0x0F, "PERM_L(3)", "permission", 3, False),
    (0x10, "EXTABT", "sea", None, True),
    (0x13, "SEA_TTW(-1)", "sea_ttw", -1, True),
    (0x14, "SEA_TTW(0)", "sea_ttw", 0, True),
    (0x15, "SEA_TTW(1)", "sea_ttw", 1, True),
    (0x16, "SEA_TTW(2)", "sea_ttw", 2, True),
    (0x17, "SEA_TTW(3)", "sea_ttw", 3, True),
    (0x18, "SECC", "secc", None, True),
    (0x1B, "SECC_TTW(-1)", "secc_ttw", -1, True),
    (0x1C, "SECC_TTW(0)", "secc_ttw", 0, True),
    (0x1D, "SECC_TTW(1)", "secc_ttw", 1, True),
    (0x1E, "SECC_TTW(2)", "secc_ttw", 2, True),
    (0x1F, "SECC_TTW(3)", "secc_ttw", 3, True),
    (0x30, "TLB_CONFLICT", "tlb_conflict", None, False),
    (0x31, "UNSUPPORTED_HW_UPDATE", "unsupported_hw_update", None, False),
]
# DFSC-only encodings (no IFSC equivalent in the Arm ARM)
DABT_ONLY = [
    (0x11, "MTE", "tag_check", None, False),
    (0x21, "ALIGNMENT", "alignment", None, False),
    (0x34, "IMPDEF_LOCKDOWN", "impdef", None, False),
    (0x35, "IMPDEF_EXCL_ATOMIC", "impdef", None, False),
]
UNNAMED_FSCS = [0x12, 0x19, 0x1A, 0x20, 0x22, 0x3F]
# kvm_vcpu_abt_issea(): {0x10, 0x13-0x17, 0x18, 0x1B-0x1F}
SEA_SET = {0x10, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F}
WALK_SEAS = SEA_SET - {0x10, 0x18}


def _check_fsc(a, code, name, kind, level, is_sea):
    assert a.fsc.value == code and a.fsc.name == name
    assert a.fsc_kind == kind and a.walk_level == level and a.is_sea is is_sea


@pytest.mark.parametrize("ec", [0x20, 0x21, 0x24, 0x25])
@pytest.mark.parametrize("code,name,kind,level,is_sea", FSCS)
def test_fsc_table(ec, code, name, kind, level, is_sea):
    _check_fsc(decode_esr(esr(ec, iss=code)).abort, code, name, kind, level, is_sea)


@pytest.mark.parametrize("code,name,kind,level,is_sea", DABT_ONLY)
def test_fsc_dabt_only(code, name, kind, level, is_sea):
    for ec in (0x24, 0x25):
        _check_fsc(decode_esr(esr(ec, iss=code)).abort, code, name, kind, level, is_sea)
    for ec in (0x20, 0x21):
        _check_fsc(decode_esr(esr(ec, iss=code)).abort, code, "unknown", "unknown", None, False)


@pytest.mark.parametrize("code", UNNAMED_FSCS)
def test_fsc_unnamed(code):
    _check_fsc(decode_esr(esr(0x24, iss=code)).abort, code, "unknown", "unknown", None, False)


def test_is_sea_set_is_exactly_kvm_vcpu_abt_issea():
    for code in range(64):
        for ec in (0x20, 0x21, 0x24, 0x25):
            assert decode_esr(esr(ec, iss=code)).abort.is_sea is (code in SEA_SET), (ec, code)


# --- Abort ISS bit extraction -------------------------------------------------------
# (bit, attribute) shared by IABT and DABT: FnV 10, EA 9, S1PTW 7
SHARED_BITS = [(10, "fnv"), (9, "ea"), (7, "s1ptw")]
DABT_BITS = [(6, "wnr"), (8, "cm"), (13, "vncr")]


@pytest.mark.parametrize("ec", [0x20, 0x21, 0x24, 0x25])
@pytest.mark.parametrize("bit,attr", SHARED_BITS + DABT_BITS)
def test_abort_single_bits(ec, bit, attr):
    data = ec in (0x24, 0x25)
    on = decode_esr(esr(ec, iss=1 << bit | 0x10)).abort
    off = decode_esr(esr(ec, iss=(0x1FFFFFF & ~(1 << bit) & ~0x3F) | 0x10)).abort
    if (bit, attr) in DABT_BITS and not data:
        assert getattr(on, attr) is None and getattr(off, attr) is None
    else:
        assert getattr(on, attr) is True and getattr(off, attr) is False
    assert on.fsc.value == 0x10  # neighbouring bits do not leak into the FSC


@pytest.mark.parametrize("value,name", [(0, "UER"), (1, "reserved"), (2, "UC"), (3, "UEO")])
def test_set_field(value, name):
    for ec in (0x20, 0x24):
        a = decode_esr(esr(ec, iss=value << 11 | 0x10)).abort
        assert (a.set.value, a.set.name, a.set_valid) == (value, name, True)
        assert a.fnv is False and a.vncr in (False, None)  # SET [12:11] only
    # SET is only meaningful for FSC 0x10 (Arm ARM); extracted but flagged otherwise
    for code in range(64):
        a = decode_esr(esr(0x24, iss=value << 11 | code)).abort
        assert a.set.value == value and a.set_valid is (code == 0x10)


@pytest.mark.parametrize("sas,sas_name", [(0, "BYTE"), (1, "HALFWORD"), (2, "WORD"), (3, "DOUBLEWORD")])
@pytest.mark.parametrize("srt", [0, 1, 17, 30, 31])
def test_isv_fields(sas, sas_name, srt):
    # ISV 24, SAS [23:22], SSE 21, SRT [20:16], SF 15, AR 14
    a = decode_esr(esr(0x24, iss=1 << 24 | sas << 22 | 1 << 21 | srt << 16 | 1 << 15 | 0x10)).abort
    assert a.isv is True and a.sas.value == sas and a.sas.name == sas_name
    assert (a.sse, a.srt, a.sf, a.ar) == (True, srt, True, False)
    a = decode_esr(esr(0x25, iss=1 << 24 | sas << 22 | srt << 16 | 1 << 14 | 0x10)).abort
    assert (a.sse, a.srt, a.sf, a.ar) == (False, srt, False, True)


def test_isv_clear_and_iabt():
    a = decode_esr(esr(0x24, iss=0x00FFC010)).abort  # bits 23:14 set but ISV = 0
    assert a.isv is False
    assert (a.sas, a.sse, a.srt, a.sf, a.ar) == (None,) * 5
    a = decode_esr(esr(0x20, iss=0x01FFC010)).abort  # IABT: no ISV at all
    assert (a.isv, a.sas, a.srt, a.wnr, a.cm, a.vncr, a.data) == (None,) * 6 + (False,)


# --- Known real values, decoded by hand ---------------------------------------------
def test_real_93800017():
    # 0x93800017 = 1001 0011 1000 0000 0000 0000 0001 0111
    #   EC [31:26] = 100100 = 0x24 DABT_LOW; IL bit 25 = 1; ISV bit 24 = 1
    #   [23:20] = 1000: SAS [23:22] = 0b10 (word), SSE 21 = 0, SRT [20:16] = 0 (x0)
    #   SF 15 = AR 14 = VNCR 13 = 0, SET [12:11] = 0, FnV 10 = EA 9 = CM 8 = S1PTW 7 = WnR 6 = 0
    #   DFSC [5:0] = 01 0111 = 0x17 = SEA on translation table walk, level 3
    d = decode_esr(0x93800017)
    a = d.abort
    assert (d.ec.name, d.il, d.iss, d.iss2) == ("DABT_LOW", True, 0x1800017, 0)
    assert (a.isv, a.sas.name, a.sse, a.srt, a.sf, a.ar) == (True, "WORD", False, 0, False, False)
    assert (a.fnv, a.ea, a.cm, a.s1ptw, a.wnr, a.vncr) == (False,) * 6
    assert (a.fsc.value, a.fsc.name, a.walk_level, a.is_sea) == (0x17, "SEA_TTW(3)", 3, True)


def test_real_96000010():
    # 1001 0110 ...: EC 100101 = 0x25 DABT_CUR, IL 1, ISV 0; DFSC 0x10 SEA (not on walk)
    d = decode_esr(0x96000010)
    assert (d.ec.name, d.il, d.iss) == ("DABT_CUR", True, 0x10)
    assert (d.abort.fsc.name, d.abort.is_sea, d.abort.walk_level, d.abort.isv) == ("EXTABT", True, None, False)
    assert d.abort.set_valid and d.abort.set.name == "UER"


def test_real_bf000000():
    # 1011 1111 ...: EC 101111 = 0x2F SERROR, IL 1, IDS bit 24 = 1, rest 0
    d = decode_esr(0xBF000000)
    assert (d.ec.name, d.il, d.iss) == ("SERROR", True, 0x1000000)
    assert d.serror.ids is True and d.serror.impdef_syndrome == 0


@pytest.mark.parametrize("value,iss2", [(0x86000010, 0), (0xFFFFFFFF86000010, 0xFFFFFF)])
def test_real_86000010(value, iss2):
    # 1000 0110 ...: EC 100001 = 0x21 IABT_CUR, IL 1, IFSC 0x10 SEA.
    # 0xffffffff........: ISS2 = bits [55:32] = 0xffffff (bits [63:56] dropped)
    d = decode_esr(value)
    assert (d.ec.name, d.il, d.iss, d.iss2) == ("IABT_CUR", True, 0x10, iss2)
    assert d.abort.data is False and d.abort.fsc.name == "EXTABT" and d.abort.is_sea
    assert d.to_dict()["esr"] == hex(value)


def test_real_92000010():
    # 1001 0010 ...: EC 100100 = 0x24 DABT_LOW, IL 1, ISV 0, DFSC 0x10 SEA
    d = decode_esr(0x92000010)
    assert (d.ec.value, d.ec.name, d.il, d.iss) == (0x24, "DABT_LOW", True, 0x10)
    assert d.abort.is_sea and d.abort.data


# --- JSON form and description -----------------------------------------------------
TOP_KEYS = {"esr", "ec", "il", "iss", "iss2", "serror", "abort"}
SERROR_KEYS = {"ids", "impdef_syndrome", "iesb", "aet", "aet_valid", "ea", "dfsc"}
ABORT_KEYS = {"kind", "fsc", "fsc_kind", "walk_level", "is_sea", "fnv", "ea", "s1ptw", "set",
              "set_valid", "wnr", "cm", "vncr", "isv", "sas", "sse", "srt", "sf", "ar"}


def test_to_dict_keys_stable():
    d = decode_esr(0x93800017).to_dict()
    assert set(d) == TOP_KEYS and set(d["abort"]) == ABORT_KEYS and d["serror"] is None
    assert d["abort"]["fsc"] == {"value": 0x17, "name": "SEA_TTW(3)"}
    assert d["abort"]["sas"] == {"value": 2, "name": "WORD"} and d["abort"]["kind"] == "data"
    d = decode_esr(esr(0x2F, iss=6 << 10 | 0x11)).to_dict()
    assert set(d["serror"]) == SERROR_KEYS and d["abort"] is None
    assert d["serror"]["aet"] == {"value": 6, "name": "CE"}
    assert decode_esr(0xBF000000).to_dict()["serror"]["aet"] is None
    json.dumps(d)


def test_describe():
    text = decode_esr(0x93800017).describe()
    assert text.count("\n") >= 2 and "DABT_LOW" in text and "SEA_TTW(3)" in text and "level 3" in text
    text = decode_esr(esr(0x2F, iss=2 << 10 | 0x11)).describe()
    assert "SERROR" in text and "UEO" in text and "ASYNC_SERROR" in text
    assert "implementation-defined" in decode_esr(0xBF000000).describe()
    assert decode_esr(esr(0x15)).describe().count("\n") == 0


# --- Input parsing and range --------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("0x96000010", 0x96000010), ("96000010", 0x96000010), ("0X96000010", 0x96000010),
    ("  0xbf000000\n", 0xBF000000), ("10", 0x10), ("0", 0), ("FFFFFFFFFFFFFFFF", 2**64 - 1),
    ("0x0000000000000000000093800017", 0x93800017),
    ("0b101", 0xB101),  # bare digits are always hex, even if they look like a 0b prefix
])
def test_parse_ok(text, value):
    assert parse_esr_text(text) == value


@pytest.mark.parametrize("text", ["", "0x", "xyz", "0xg1", "-1", "-0x10", "0x1_0", "1 2",
                                  "10000000000000000", "0x1ffffffffffffffff", "0o17", "12h"])
def test_parse_bad(text):
    with pytest.raises(ValueError, match="invalid ESR"):
        parse_esr_text(text)


@pytest.mark.parametrize("value", [-1, 2**64, 2**100])
def test_decode_out_of_range(value):
    with pytest.raises(ValueError):
        decode_esr(value)


@pytest.mark.parametrize("value", [True, 1.0, "0x10", None])
def test_decode_wrong_type(value):
    with pytest.raises(TypeError):
        decode_esr(value)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_any_u64_decodes(value):
    d = decode_esr(value)
    assert isinstance(d, Esr)
    out = json.loads(json.dumps(d.to_dict()))
    assert int(out["esr"], 16) == value
    assert out["ec"]["value"] == value >> 26 & 0x3F and out["iss"] == value & 0x1FFFFFF
    assert isinstance(d.describe(), str)
    assert parse_esr_text(f"{value:#x}") == value == parse_esr_text(f"{value:X}")


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64)))
def test_any_out_of_range_raises(value):
    with pytest.raises(ValueError):
        decode_esr(value)


# --- SError verdicts (reference §1.3, §1.4, §3.2) -----------------------------------
P, C, I, G = Outcome.HOST_PANIC, Outcome.CONTINUE, Outcome.VSERROR_INJECTED, Outcome.IGNORED
# RAS SError with DFSC 0x11, by AET: (host outcome, guest outcome).
# arm64_is_fatal_ras_serror: CE/UEO -> false; UEU/UER -> true; UC/reserved -> panics inside.
AET_VERDICT = {0: (P, P), 1: (P, I), 2: (C, G), 3: (P, I), 4: (P, P), 5: (P, P), 6: (C, G), 7: (P, P)}


def expected_serror(aet, dfsc, ids, has_ras, origin):
    col = 0 if origin == "host" else 1
    if ids or not has_ras:  # arm64_is_ras_serror false: host panics, KVM injects
        return (P, I)[col], "arm64_is_ras_serror"
    if dfsc != 0x11:  # arm64_ras_serror_get_severity -> UC -> arm64_serror_panic
        return P, "arm64_is_fatal_ras_serror"
    return AET_VERDICT[aet][col], "arm64_is_fatal_ras_serror"


@pytest.mark.parametrize("origin", ["host", "guest"])
@pytest.mark.parametrize("has_ras", [True, False])
@pytest.mark.parametrize("ids", [0, 1])
@pytest.mark.parametrize("dfsc", [0x00, 0x11])
@pytest.mark.parametrize("aet", range(8))
def test_serror_verdict_table(aet, dfsc, ids, has_ras, origin):
    value = esr(0x2F, iss=ids << 24 | aet << 10 | dfsc)
    v = serror_verdict(value, has_ras, origin)
    assert isinstance(v, Verdict)
    assert (v.outcome, v.decided_by) == expected_serror(aet, dfsc, ids, has_ras, origin)
    assert v.reason
    assert serror_verdict(decode_esr(value), has_ras, origin) == v  # accepts a decoded Esr
    json.dumps(v.to_dict())


def test_serror_verdict_spot_checks():
    # UC on a RAS host SError, guest: host panics with arm64_serror_panic(NULL, esr)
    assert serror_verdict(0xBE000011, True, "guest").outcome is Outcome.HOST_PANIC
    assert serror_verdict(0xBE001811, True, "host").outcome is Outcome.CONTINUE  # CE
    assert serror_verdict(0xBE000C11, True, "guest").to_dict()["outcome"] == "vserror_injected"  # UER
    # a reserved DFSC (not 0x00/0x11) is also "severity UC"
    assert serror_verdict(esr(0x2F, iss=6 << 10 | 0x10), True, "host").outcome is Outcome.HOST_PANIC


def test_serror_verdict_rejects():
    with pytest.raises(ValueError, match="not an SError"):
        serror_verdict(0x96000010, True, "host")
    with pytest.raises(ValueError, match="origin"):
        serror_verdict(0xBE001811, True, "vm")  # type: ignore[arg-type]


# --- SEA verdicts (reference §1.2, §1.4) -------------------------------------------
def outcomes(vs):
    return [v.outcome for v in vs]


UNCLAIMED_GUEST = [Outcome.VSERROR_INJECTED, Outcome.VSERROR_INJECTED, Outcome.EXIT_TO_USER]


@pytest.mark.parametrize("code", sorted(SEA_SET))
@pytest.mark.parametrize("ec", [0x20, 0x24])
def test_guest_sea(code, ec):
    value = esr(ec, iss=code)
    assert outcomes(guest_sea_verdicts(value, True)) == [Outcome.APEI_HANDLED]
    unclaimed = guest_sea_verdicts(value, False)
    assert outcomes(unclaimed) == UNCLAIMED_GUEST
    # <=6.16 kvm_inject_vabt via kvm_handle_guest_abort; >=6.17 kvm_inject_serror via kvm_handle_guest_sea
    assert "kvm_inject_vabt" in unclaimed[0].reason and unclaimed[0].applies == "5.9-6.16"
    assert "kvm_inject_serror" in unclaimed[1].reason and unclaimed[1].applies.startswith(">=6.17")
    assert "KVM_EXIT_ARM_SEA" in unclaimed[2].reason and "KVM_CAP_ARM_SEA_TO_USER" in unclaimed[2].applies
    assert outcomes(guest_sea_verdicts(value, None)) == [Outcome.APEI_HANDLED] + UNCLAIMED_GUEST


@pytest.mark.parametrize("code", sorted(SEA_SET))
def test_guest_sea_s1ptw_host_owned(code):
    # ~7.0: a table-walk SEA with S1PTW set is host-owned: never KVM_EXIT_ARM_SEA
    got = outcomes(guest_sea_verdicts(esr(0x24, iss=1 << 7 | code), False))
    if code in WALK_SEAS:
        assert got == [Outcome.VSERROR_INJECTED] * 2
    else:
        assert got == UNCLAIMED_GUEST


@pytest.mark.parametrize("value", [
    esr(0x24, iss=0x07), esr(0x20, iss=0x0F), esr(0x24, iss=0x11), esr(0x24, iss=0x21),
    esr(0x25, iss=0x10), esr(0x21, iss=0x10),  # current-EL aborts are not guest aborts
    esr(0x2F, iss=0x11), esr(0x15),
])
def test_guest_not_sea(value):
    for claimed in (True, False, None):
        assert outcomes(guest_sea_verdicts(value, claimed)) == [Outcome.NOT_SEA]


# fault.c fault_info[]: 0x10/0x18 SIGBUS/BUS_OBJERR; table-walk codes SIGKILL/SI_KERNEL
HOST_SIGNAL = {c: Outcome.SIGBUS if c in (0x10, 0x18) else Outcome.SIGKILL for c in SEA_SET}


@pytest.mark.parametrize("code", sorted(SEA_SET))
@pytest.mark.parametrize("ec", [0x20, 0x24])
def test_host_sea_user(code, ec):
    value = esr(ec, iss=code)
    assert outcomes(host_sea_verdicts(value, True)) == [Outcome.APEI_HANDLED]
    (v,) = host_sea_verdicts(value, False)
    assert v.outcome is HOST_SIGNAL[code] and v.decided_by == "do_sea"
    assert ("BUS_OBJERR" in v.reason) is (code in (0x10, 0x18))
    assert outcomes(host_sea_verdicts(value)) == [Outcome.APEI_HANDLED, HOST_SIGNAL[code]]


def test_host_sea_fnv_si_addr():
    assert "si_addr 0" in host_sea_verdicts(esr(0x24, iss=1 << 10 | 0x10), False)[0].reason
    assert "FAR" in host_sea_verdicts(esr(0x24, iss=0x10), False)[0].reason


@pytest.mark.parametrize("code", sorted(SEA_SET))
@pytest.mark.parametrize("ec", [0x21, 0x25])
def test_host_sea_kernel_never_apei(code, ec):
    for claimed in (True, False, None):
        (v,) = host_sea_verdicts(esr(ec, iss=code), claimed)
        assert v.outcome is Outcome.OOPS and v.decided_by == "do_sea"


@pytest.mark.parametrize("value", [esr(0x24, iss=0x07), esr(0x25, iss=0x21), esr(0x2F, iss=0x11), 0])
def test_host_not_sea(value):
    assert outcomes(host_sea_verdicts(value, None)) == [Outcome.NOT_SEA]
