"""rasdctl events / incidents / show / summary on a real store: filters, table and
JSON output, exit codes, and the stored raw bytes decoding again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rasd.cli import rasdctl, tables
from rasd.decode import cper
from rasd.encode import cper as enc
from rasd.events import Event, Incident, Task
from rasd.sinks.store import PAGE_SHIFT, Store

NOW = time.time_ns()
H = 3600 * 10**9
PA = 0x8_0000_1040


def ce(t: int, cpu: int = 0, pa: int = PA) -> Event:
    mem = enc.memory_error(physical_addr=pa, node=0, card=1, module=2, rank=0, error_type=2)
    block = enc.encode_status_block([enc.section(mem, severity=enc.CORRECTED)])
    return Event("ghes", "ghes_do_proc", t, cpu=cpu, task=Task(0, 0, "swapper/0"), raw=block,
                 cper=cper.try_decode(block), fields={"notify": "sea"}, severity="corrected",
                 containment="corrected", reason="corrected memory error")


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """3 h ago: two CEs; 10 min ago: a guest SEA chain in VM web-1 (an open incident);
    1 min ago: a CE on CPU 1."""
    path = tmp_path_factory.mktemp("store") / "rasd.db"
    s = Store(path)
    for t in (NOW - 3 * H, NOW - 3 * H + 1):
        s.handle(ce(t))
    inc = Incident("guest_sea", "tid:4243", NOW - H // 6, NOW - H // 6 + 5,
                   severity="uncorrected", containment="vm_contained",
                   summary="guest SEA in web-1 vCPU 2", vm={"name": "web-1", "vcpu": 2})
    s.save_incident(inc)
    for i, kind in enumerate(("guest_sea", "vserror_injected")):
        e = Event(kind, kind, NOW - H // 6 + i, cpu=1, task=Task(4242, 4243, "CPU 2/KVM"),
                  severity="uncorrected", reason=f"{kind} reason", incident_id=inc.id)
        s.handle(e)
        inc.event_ids.append(e.id)
    s.save_incident(inc)
    s.handle(ce(NOW - 60 * 10**9, cpu=1))
    done = Incident("uncorrected_memory", "page:0x1", NOW - 3 * H, NOW - 3 * H + 1,
                    severity="recoverable", closed=True, event_ids=[1, 2], summary="old one")
    s.save_incident(done)
    s.close()
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = rasdctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_ids(out: str) -> list[int]:
    lines = out.splitlines()
    assert lines[0].split()[0] == "ID"
    return [int(line.split()[0]) for line in lines[1:]]


def test_events_table_has_stable_columns_oldest_first(db, capsys) -> None:
    code, out, _ = run(capsys, "events", "--db", str(db))
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "TIME", "KIND", "SEVERITY", "CPU", "TASK",
                                           "PFN", "LOCATION", "VM", "INCIDENT", "REASON"]
    assert table_ids(out) == [1, 2, 3, 4, 5]
    row = out.splitlines()[1]
    assert f"{PA >> PAGE_SHIFT:#x}" in row and "node 0 card 1 module 2 rank 0" in row
    assert "\x1b" not in out  # no colour


@pytest.mark.parametrize("argv, ids", [
    (("--since", "1h"), [3, 4, 5]),
    (("--until", "30m"), [1, 2]),
    (("--since", "2h", "--until", "5m"), [3, 4]),
    (("--type", "ghes"), [1, 2, 5]),
    (("--type", "guest_sea", "--type", "vserror_injected"), [3, 4]),
    (("--severity", "recoverable"), [3, 4]),
    (("--severity", "corrected"), [1, 2, 3, 4, 5]),
    (("--vm", "web-1"), [3, 4]),
    (("--vm", "nope"), []),
    (("--limit", "2"), [4, 5]),  # the newest two, still oldest first
])
def test_events_filters(db, capsys, argv, ids) -> None:
    code, out, _ = run(capsys, "events", "--db", str(db), *argv)
    assert code == 0 and table_ids(out) == ids


def test_events_since_accepts_iso_8601(db, capsys) -> None:
    since = tables.fmt_time(NOW - 2 * H)
    code, out, _ = run(capsys, "events", "--db", str(db), "--since", since)
    assert code == 0 and table_ids(out) == [3, 4, 5]


def test_events_json_lines(db, capsys) -> None:
    code, out, _ = run(capsys, "events", "--db", str(db), "--json", "--vm", "web-1")
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [d["id"] for d in docs] == [3, 4]
    assert docs[0]["kind"] == "guest_sea" and docs[0]["vm"] == "web-1"
    assert docs[0]["incident_id"] == 1 and docs[0]["task"]["comm"] == "CPU 2/KVM"
    assert "raw" not in docs[0]
    code, out, _ = run(capsys, "events", "--db", str(db), "--json", "--type", "bert")
    assert code == 0 and out == ""  # empty result: no lines, still success


def test_incidents_filters_and_json(db, capsys) -> None:
    code, out, _ = run(capsys, "incidents", "--db", str(db))
    assert code == 0 and table_ids(out) == [2, 1]  # by first time
    assert run(capsys, "incidents", "--db", str(db), "--open")[1].count("\n") == 2
    assert table_ids(run(capsys, "incidents", "--db", str(db), "--open")[1]) == [1]
    assert table_ids(run(capsys, "incidents", "--db", str(db), "--since", "1h")[1]) == [1]
    assert table_ids(run(capsys, "incidents", "--db", str(db), "--severity", "uncorrected")[1]) \
        == [1]
    code, out, _ = run(capsys, "incidents", "--db", str(db), "--vm", "web-1", "--json")
    (doc,) = [json.loads(line) for line in out.splitlines()]
    assert doc["id"] == 1 and doc["vm"] == {"name": "web-1", "vcpu": 2}
    assert doc["closed"] is False and doc["event_count"] == 2


def test_show_incident_lists_its_events(db, capsys) -> None:
    code, out, _ = run(capsys, "show", "--db", str(db), "1")
    assert code == 0
    assert out.startswith("incident 1: guest_sea, severity uncorrected")
    assert "guest SEA in web-1 vCPU 2" in out
    assert table_ids(out[out.index("ID "):]) == [3, 4]
    code, out, _ = run(capsys, "show", "--db", str(db), "--json", "incident:1")
    doc = json.loads(out)
    assert [e["id"] for e in doc["events"]] == [3, 4] and doc["incident"]["kind"] == "guest_sea"


def test_show_event_decodes_the_stored_raw_bytes_again(db, capsys) -> None:
    code, out, _ = run(capsys, "show", "--db", str(db), "event:5")
    assert code == 0
    assert "decoded again: status block" in out
    assert f"physical address: {PA:#x}" in out
    assert "stored as raw bytes only: decoded now" in out  # a GHES block's decoding is not kept
    code, out, _ = run(capsys, "show", "--db", str(db), "--json", "event:5")
    doc = json.loads(out)
    assert doc["cper_stored"] == "raw" and doc["roundtrip"] is None
    assert doc["redecoded"] == doc["event"]["cper"]
    assert cper.try_decode(__import__("base64").b64decode(doc["raw"])).sections[0].body \
        .physical_addr == PA


def test_show_unknown_or_malformed_ids(db, capsys) -> None:
    code, _, err = run(capsys, "show", "--db", str(db), "99")
    assert code == 1 and "no incident 99" in err
    code, _, err = run(capsys, "show", "--db", str(db), "event:99")
    assert code == 1 and "no event 99" in err
    code, _, err = run(capsys, "show", "--db", str(db), "page:3")
    assert code == 2


def test_summary_text_and_json(db, capsys) -> None:
    code, out, _ = run(capsys, "summary", "--db", str(db), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["total"] == 5
    assert dict(map(tuple, doc["by_type"])) == {"ghes": 3, "guest_sea": 1, "vserror_injected": 1}
    assert doc["by_cpu"] == [[1, 3], [0, 2]]  # most events first
    assert doc["by_vm"] == [["web-1", 2]]
    assert doc["by_location"] == [["node 0 card 1 module 2 rank 0", 3]]
    assert doc["by_severity"] == [["uncorrected", 2], ["corrected", 3]]
    code, out, _ = run(capsys, "summary", "--db", str(db), "--since", "1h", "--json")
    assert json.loads(out)["total"] == 3
    code, out, _ = run(capsys, "summary", "--db", str(db))
    assert code == 0 and out.startswith("5 event(s)")
    for title in ("TYPE", "SEVERITY", "CPU", "VM", "MEMORY LOCATION", "PAGE (top 20)"):
        assert f"EVENTS  {title}" in out


def test_exit_codes_for_missing_unreadable_store_and_usage(tmp_path, capsys) -> None:
    code, out, err = run(capsys, "events", "--db", str(tmp_path / "none.db"))
    assert code == 1 and out == "" and "no store" in err
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    code, _, err = run(capsys, "summary", "--db", str(bad))
    assert code == 1 and "rasdctl:" in err
    with pytest.raises(SystemExit) as exc:
        rasdctl.main(["events", "--since", "yesterday-ish"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        rasdctl.main(["events", "--limit", "0"])
    assert exc.value.code == 2


def test_empty_store_prints_headers_and_succeeds(tmp_path, capsys) -> None:
    db = tmp_path / "empty.db"
    Store(db).close()
    code, out, _ = run(capsys, "events", "--db", str(db))
    assert code == 0 and out.splitlines() == [out.splitlines()[0]]
    code, out, _ = run(capsys, "summary", "--db", str(db), "--json")
    assert code == 0 and json.loads(out)["total"] == 0


@pytest.mark.parametrize("text, expect", [
    ("30m", NOW - 30 * 60 * 10**9),
    ("1h", NOW - H),
    ("2d", NOW - 48 * H),
    ("90s", NOW - 90 * 10**9),
    ("2026-11-25T04:00:00Z", 1795579200 * 10**9),
    ("2026-11-25T04:00:00", 1795579200 * 10**9),  # no zone: UTC
    ("2026-11-25T05:00:00+01:00", 1795579200 * 10**9),
    ("@1795579200.5", 1795579200_500_000_000),
])
def test_parse_time(text, expect) -> None:
    assert tables.parse_time(text, now_ns=NOW) == expect


def test_parse_time_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="not a time"):
        tables.parse_time("last tuesday", now_ns=NOW)
    assert tables.fmt_time(1795579200_123_456_789) == "2026-11-25T04:00:00.123Z"


def test_events_json_gives_every_ghes_event_its_cper_decoded_from_the_raw_bytes(db, capsys) -> None:
    """The store keeps a GHES block's bytes, not their decoding: `events --json` decodes
    them again, each event its own bytes (two different pages stay two pages)."""
    path = db.parent / "two-pages.db"
    s = Store(path)
    for i, pa in enumerate((PA, PA + (5 << PAGE_SHIFT))):
        s.handle(ce(NOW - 60 * 10**9 + i, pa=pa))
    s.close()
    code, out, _ = run(capsys, "events", "--db", str(path), "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(docs) == 2
    for doc, pa in zip(docs, (PA, PA + (5 << PAGE_SHIFT))):
        block = ce(0, pa=pa)
        assert doc["cper"] == json.loads(json.dumps(block.cper.to_dict()))
        assert doc["cper"]["sections"][0]["body"]["physical_addr"] == hex(pa)
        assert doc["phys_addr"] == hex(pa)
