"""rasdctl as a user runs it: a subprocess, files in tmp_path, stdin, exit codes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rasd.cli.rasdctl import build_parser
from vectors import handbuilt as H

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin" / "rasdctl"

MEMORY = H.status_block_memory()
RECORD = H.cper_record()
ARM = H.status_block_arm()
MISC = H.status_block_misc()


def rasdctl(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "rasd.cli.rasdctl", *map(str, args)],
                          input=stdin, capture_output=True, cwd=REPO, env=env, timeout=timeout)


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    text = proc.stdout.decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, data in (("memory.bin", MEMORY), ("record.cper", RECORD),
                       ("three.bin", ARM + MISC + MEMORY + bytes(64)),
                       ("arm.hex", ARM.hex().encode() + b"\n"),
                       ("truncated.bin", ARM[:300]),
                       ("empty.bin", b""),
                       ("odd.hex", b"0x1, 0x2\n")):
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


# --- help and usage --------------------------------------------------------------------------

def commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_help_on_every_command():
    names = commands()
    assert {"decode", "decode-esr"} <= set(names)
    top = rasdctl("--help")
    assert top.returncode == 0 and b"usage: rasdctl" in top.stdout
    for name in names:
        assert name.encode() in top.stdout
        proc = rasdctl(name, "--help")
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout.startswith(f"usage: rasdctl {name}".encode()), name


def test_usage_errors_exit_2():
    for args in ([], ["decode"], ["decode", "--arm-type", "sideways", "x"], ["decode-esr"]):
        proc = rasdctl(*args)
        assert proc.returncode == 2, (args, proc.returncode)
        assert proc.stderr, args
        assert proc.stdout == b""


@pytest.mark.skipif(not BIN.exists(), reason="console script not installed in .venv")
def test_console_script():
    proc = subprocess.run([str(BIN), "decode-esr", "0x96000010"], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0 and b"DABT_CUR" in proc.stdout


# --- decode ----------------------------------------------------------------------------------

def test_text_report(files):
    proc = rasdctl("decode", files["memory.bin"], files["record.cper"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    out = proc.stdout.decode()
    mem_head = f"{files['memory.bin']} #0: status block, {len(MEMORY)} bytes, severity " \
               f"recoverable, 2 section(s)"
    assert mem_head in out
    assert "block status 0x2b: uncorrectable, correctable, multiple correctable, 2 entries" in out
    assert "section 0: platform_memory {A5BC1114-6F64-4EDE-B863-3E83ED7C83B1}, severity " \
           "corrected, 2026-11-25T04:16:39" in out
    assert "FRU: DIMM_A1" in out and "physical address: 0x8012345000" in out
    assert "raw data: 8 bytes" in out
    assert f"{files['record.cper']} #0: cper record, {len(RECORD)} bytes" in out
    assert "platform_memory2" in out and "processor_arm" in out
    assert out.index(str(files["memory.bin"])) < out.index(str(files["record.cper"]))


def test_json_lines_in_input_order(files):
    order = ["record.cper", "three.bin", "memory.bin", "arm.hex"]
    proc = rasdctl("decode", "--json", *(files[n] for n in order))
    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc)
    assert [(Path(d["source"]).name, d["index"]) for d in lines] == [
        ("record.cper", 0), ("three.bin", 0), ("three.bin", 1), ("three.bin", 2),
        ("memory.bin", 0), ("arm.hex", 0)]
    assert [d["framing"] for d in lines] == ["cper_record"] + ["status_block"] * 5
    assert [d["offset"] for d in lines[1:4]] == [0, len(ARM), len(ARM) + len(MISC)]
    assert [len(d["sections"]) for d in lines] == [3, 1, 6, 2, 2, 1]
    assert all(d["error"] is None and "raw" not in d for d in lines)
    assert lines[0]["header"]["notification_type"]["name"] == "boot"
    assert lines[4]["sections"][0]["body"]["physical_addr"] == "0x8012345000"
    # the same as decoding in-process
    from rasd.decode.cper import decode
    expected = {"source": str(files["memory.bin"]), "index": 0, **decode(MEMORY).to_dict()}
    assert lines[4] == json.loads(json.dumps(expected))


def test_json_raw_and_arm_type(files):
    proc = rasdctl("decode", "--json", "--raw", "--arm-type", "enum", files["arm.hex"])
    assert proc.returncode == 0
    (line,) = json_lines(proc)
    assert base64.b64decode(line["raw"]) == ARM
    types = [e["type"] for e in line["sections"][0]["body"]["error_info"]]
    assert [t["names"] for t in types] == [["bus"], ["reserved_4"], ["reserved_8"],
                                           ["reserved_16"]]
    assert all(t["reading"] == "enum" for t in types)
    proc = rasdctl("decode", "--json", "--arm-type", "bitmask", files["arm.hex"])
    assert [e["type"]["names"] for e in json_lines(proc)[0]["sections"][0]["body"]["error_info"]] \
        == [["cache"], ["tlb"], ["bus"], ["micro_architectural"]]


def test_bad_record_gets_its_line_with_error_partial_and_raw(files):
    proc = rasdctl("decode", "--json", files["memory.bin"], files["truncated.bin"],
                   files["record.cper"])
    assert proc.returncode == 1
    lines = json_lines(proc)
    assert [Path(d["source"]).name for d in lines] == ["memory.bin", "truncated.bin",
                                                        "record.cper"]
    bad = lines[1]
    assert bad["error"]["offset"] is not None and 0 <= bad["error"]["offset"] <= 300
    assert bad["error"]["reason"]
    assert base64.b64decode(bad["raw"]) == ARM[:300]
    assert bad["header"]["data_length"] == len(ARM) - 20
    arm = bad["sections"][0]
    assert arm["type"]["name"] == "processor_arm" and arm["error"] is not None
    assert len(arm["body"]["error_info"]) == 4  # what decoded before the cut
    assert lines[0]["error"] is None and lines[2]["error"] is None
    err = proc.stderr.decode()
    assert f"{files['truncated.bin']}: record 0: " in err and bad["error"]["reason"] in err


def test_text_report_of_bad_record_exit_1(files):
    proc = rasdctl("decode", files["truncated.bin"])
    assert proc.returncode == 1
    assert b"DECODE ERROR" in proc.stdout
    assert b"record 0" in proc.stderr and b"truncated" in proc.stderr


def test_input_errors(files, tmp_path):
    proc = rasdctl("decode", "--json", files["odd.hex"], files["empty.bin"],
                   tmp_path / "missing.bin", files["memory.bin"])
    assert proc.returncode == 1
    lines = json_lines(proc)
    assert [Path(d["source"]).name for d in lines] == ["odd.hex", "empty.bin", "missing.bin",
                                                        "memory.bin"]
    for d in lines[:3]:
        assert d["index"] is None and d["framing"] is None and d["error"]["reason"]
    assert "odd" in lines[0]["error"]["reason"]
    assert lines[3]["error"] is None and lines[3]["index"] == 0
    err = proc.stderr.decode()
    assert "odd number of digits" in err and "missing.bin" in err


@pytest.mark.parametrize("encoding", ["hex", "hex-0x-lines", "base64", "base64-lines", "binary"])
def test_stdin(encoding):
    data = MEMORY + RECORD
    stdin = {"hex": data.hex().encode(),
             "hex-0x-lines": "\n".join(f"0x{b:02x}," for b in data).encode(),
             "base64": base64.b64encode(data),
             "base64-lines": base64.encodebytes(data),
             "binary": data}[encoding]
    proc = rasdctl("decode", "--json", "-", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc)
    assert [(d["source"], d["index"], d["framing"]) for d in lines] == [
        ("-", 0, "status_block"), ("-", 1, "cper_record")]


def test_bert(tmp_path):
    from test_bert import BLOCKS, REGION, make_tables
    tables = make_tables(tmp_path)
    proc = rasdctl("decode", "--json", "--bert", tables)
    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc)
    assert [d["source"] for d in lines] == [f"BERT {tables}"] * 4
    assert [d.get("consumed_by_kernel", False) for d in lines] == [True, True, False, False]
    assert [d["header"]["block_status"]["value"] for d in lines] == [0, 0, 0x11, 0x11]
    assert [d["sections"][0]["type"]["name"] for d in lines] == [
        "platform_memory", "platform_memory", "processor_arm", "platform_memory"]
    text = rasdctl("decode", "--bert", tables)
    assert text.returncode == 0 and b"(0: consumed by the kernel)" in text.stdout
    # region file directly, together with a normal file afterwards
    region = tmp_path / "region.bin"
    region.write_bytes(REGION)
    other = tmp_path / "m.bin"
    other.write_bytes(BLOCKS[3])
    proc = rasdctl("decode", "--json", "--bert", region, other)
    assert [(d["source"], d["index"]) for d in json_lines(proc)] == \
        [(f"BERT {region}", i) for i in range(4)] + [(str(other), 0)]
    # no BERT: a note on stderr, nothing decoded, not an error
    proc = rasdctl("decode", "--json", "--bert", tmp_path / "nothing-here")
    assert proc.returncode == 0 and proc.stdout == b"" and b"no BERT" in proc.stderr
    # a truncated region: exit 1, the intact blocks still reported
    region.write_bytes(REGION[:len(BLOCKS[0]) + 50])
    proc = rasdctl("decode", "--json", "--bert", region)
    assert proc.returncode == 1
    lines = json_lines(proc)
    assert lines[0]["error"] is None and lines[1]["error"] is not None


def test_decode_2000_small_files_in_one_call(tmp_path):
    blocks = []
    for i in range(2000):
        v = dict(H.MEM_VALUES, physical_addr=0x1000 * (i + 1))
        e = H.entry_header(H.G_PLATFORM_MEM, 2, 0x201, 0, 1, 80) + H.memory80(v)
        blocks.append(H.status_header(0x12, 0, 0, len(e), 2) + e)
    paths = []
    for i, data in enumerate(blocks):
        p = tmp_path / f"r{i:04d}.bin"
        p.write_bytes(data if i % 3 else data.hex().encode())
        paths.append(p)
    argfile = [str(p) for p in paths]
    proc = rasdctl("decode", "--json", *argfile, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    lines = json_lines(proc)
    assert len(lines) == 2000
    assert [d["source"] for d in lines] == argfile
    assert [d["sections"][0]["body"]["physical_addr"] for d in lines] == \
        [hex(0x1000 * (i + 1)) for i in range(2000)]


def test_decode_many_files_with_one_bad_keeps_order_and_exit_1(tmp_path):
    paths = []
    for i in range(80):  # above the parallel threshold
        p = tmp_path / f"f{i:02d}.bin"
        p.write_bytes(MEMORY if i != 41 else MEMORY[:50])
        paths.append(str(p))
    proc = rasdctl("decode", "--json", *paths)
    assert proc.returncode == 1
    lines = json_lines(proc)
    assert [d["source"] for d in lines] == paths
    assert [i for i, d in enumerate(lines) if d["error"]] == [41]
    assert proc.stderr.decode().count("record 0") == 1


def test_jobs_give_the_same_bytes_as_one_process(tmp_path):
    # worker processes write their chunks themselves, in input order: stdout, stderr and
    # the exit status do not depend on how many there are
    inputs = [MEMORY, RECORD, ARM[:300], b"", ARM.hex().encode(), b"0x1, 0x2", MISC + MEMORY]
    paths = []
    for i in range(90):
        p = tmp_path / f"g{i:02d}.bin"
        p.write_bytes(inputs[i % len(inputs)])
        paths.append(str(p))
    paths.insert(45, str(tmp_path / "missing.bin"))
    for args in (["--json"], ["--json", "--raw"], []):
        runs = [rasdctl("decode", *args, "--jobs", str(n), *paths) for n in (1, 2, 3)]
        assert runs[0].returncode == 1 and runs[0].stdout.count(b"\n") > 90
        for run in runs[1:]:
            assert (run.returncode, run.stdout, run.stderr) == \
                (runs[0].returncode, runs[0].stdout, runs[0].stderr)


def test_jobs_output_closed_early_is_not_an_error(tmp_path):
    paths = []
    for i in range(200):
        p = tmp_path / f"h{i:03d}.bin"
        p.write_bytes(ARM)
        paths.append(str(p))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "rasd.cli.rasdctl", "decode", "--json",
                             "--jobs", "2", *paths], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env=env)
    assert proc.stdout.read(100)  # `rasdctl decode ... | head -c 100`
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert b"Traceback" not in proc.stderr.read()


# --- decode-esr --------------------------------------------------------------------------

def test_decode_esr_text_and_json():
    proc = rasdctl("decode-esr", "0x96000010", "be000c11")
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "EC 0x25 DABT_CUR" in out and "SEA" in out and "kernel:" in out
    assert "0x00000000be000c11" in out.lower() or "be000c11" in out.lower()
    proc = rasdctl("decode-esr", "--json", "0x96000010", "0xbe000000")
    assert proc.returncode == 0
    docs = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [d["esr"] for d in docs] == ["0x96000010", "0xbe000000"]
    assert docs[0]["ec"] == {"value": 0x25, "name": "DABT_CUR"}
    assert docs[0]["abort"]["is_sea"] is True and docs[0]["origin"] == "host"
    assert docs[1]["ec"]["name"] == "SERROR" and docs[1]["verdicts"]
    guest = json.loads(rasdctl("decode-esr", "--json", "--origin", "guest", "0xbe000000").stdout)
    assert guest["origin"] == "guest"


def test_decode_esr_bad_text_exit_1():
    proc = rasdctl("decode-esr", "zz", "0x96000010", "-5", "0x1" + "0" * 16)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "invalid ESR 'zz'" in err and "'-5'" in err and "64 bits" in err
    assert b"DABT_CUR" in proc.stdout  # the good value is still decoded


def test_bert_arm_type_checksum_warning_and_read_limit(tmp_path):
    from test_bert import REGION, bert_table, make_tables
    from rasd.decode import bert as bert_mod
    # --arm-type applies to BERT records too; a bad checksum is warned about
    tables = make_tables(tmp_path, table=bert_table(len(REGION), checksum_ok=False))
    proc = rasdctl("decode", "--json", "--arm-type", "enum", "--bert", tables)
    assert proc.returncode == 0
    lines = json_lines(proc)
    arm = lines[2]["sections"][0]["body"]["error_info"][0]["type"]
    assert arm["reading"] == "enum" and arm["names"] == ["bus"]
    assert b"checksum" in proc.stderr
    # a table whose region_length exceeds the read limit: records decoded, error reported
    (tmp_path / "BERT").write_bytes(bert_table(bert_mod.MAX_REGION + 1))
    proc = rasdctl("decode", "--json", "--bert", tables)
    assert proc.returncode == 1
    lines = json_lines(proc)
    assert len(lines) == 5 and lines[-1]["index"] is None
    assert "read limit" in lines[-1]["error"]["reason"] and b"read limit" in proc.stderr
    assert [d["index"] for d in lines[:4]] == [0, 1, 2, 3]


def test_status_loads_no_decoder_and_bert_default_is_the_decoders():
    """`rasdctl status` imports no CPER/ESR/BERT decoder (health checks and the arm64 lab
    run it often); `decode --bert`'s default path, kept apart for that, is the decoder's."""
    probe = ("import sys; from rasd.cli import rasdctl; "
             "rasdctl.main(['status', '--runtime-dir', sys.argv[1]]); "
             "print(sorted(m for m in sys.modules if m.startswith('rasd.decode')))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", probe, "/nonexistent-rasd-runtime"],
                          capture_output=True, cwd=REPO, env=env, timeout=60, text=True)
    assert "not running" in proc.stderr
    assert proc.stdout.strip() == "['rasd.decode', 'rasd.decode.inputs']"
    from rasd.cli import rasdctl as ctl
    from rasd.decode import bert
    assert ctl.BERT_TABLES == str(bert.DEFAULT_TABLES)
    assert build_parser().parse_args(["decode", "--bert"]).bert == str(bert.DEFAULT_TABLES)
