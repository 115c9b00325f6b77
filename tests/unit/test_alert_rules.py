"""etc/prometheus/rasd-alerts.yml: promtool check/test for real, the alerts the issue names,
and every metric an expression uses is one rasd exports."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RULES = ROOT / "etc" / "prometheus" / "rasd-alerts.yml"
RULE_TESTS = ROOT / "etc" / "prometheus" / "rasd-alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus); CI installs it")

# the PromQL name extractor and exported-name set live with the dashboard test
_spec = importlib.util.spec_from_file_location("rasd_test_promql", HERE / "test_dashboard.py")
promql = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(promql)

# what issue 5 ("Fleet side") and the brief ask for -> the alert that covers it
REQUIRED = {
    "uncorrected memory error": "RasdUncorrectedMemoryError",
    "unlocatable memory corruption": "RasdUnlocatableMemoryCorruption",
    "guest SError contained to a VM": "RasdGuestErrorContained",
    "host-fatal SError history from BERT": "RasdPreviousBootFatalError",
    "CE rate on one memory location above threshold": "RasdCorrectedErrorRateHigh",
    "predictive failure": "RasdPredictiveFailure",
    "probes missing (none attached)": "RasdNoProbesAttached",
    "probes missing (GHES probe on arm64)": "RasdGhesProbeNotAttached",
    "lost events": "RasdLostEvents",
    "rasd down": "RasdDown",
    "rasd absent": "RasdAbsent",
    "decode errors rising": "RasdDecodeErrors",
}

DOC = yaml.safe_load(RULES.read_text())
RULE_LIST = [rule for group in DOC["groups"] for rule in group["rules"]]
ALERTS = {rule["alert"]: rule for rule in RULE_LIST if "alert" in rule}
RECORDED = {rule["record"] for rule in RULE_LIST if "record" in rule}


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@needs_promtool
def test_promtool_check_rules():
    res = _run("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(RULE_LIST)} rules found" in res.stdout


@needs_promtool
def test_promtool_test_rules():
    res = _run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_one_group():
    assert len(DOC["groups"]) == 1


@pytest.mark.parametrize("what, name", sorted(REQUIRED.items()))
def test_required_alert_exists(what, name):
    assert name in ALERTS, f"no alert for {what}"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_labels_and_annotations(name):
    rule = ALERTS[name]
    assert rule["labels"]["severity"] in ("page", "ticket", "info")
    ann = rule["annotations"]
    assert {"summary", "description", "runbook"} <= set(ann)
    for key in ("summary", "description"):
        assert "{{ $labels." in ann[key], f"{name} {key} interpolates no label"
    # the template names only labels the expression's result carries (or the instance/job
    # every scraped series has); a typo would render as an empty string
    used = set(re.findall(r"\$labels\.(\w+)", " ".join(ann.values())))
    assert used <= _result_labels(rule["expr"]), name


def _result_labels(expr: str) -> set[str]:
    """Labels an alert's result can have: grouping labels, label_replace targets, matchers."""
    labels = {"job", "instance"}
    labels |= set(re.findall(r"\b(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
    labels |= set(re.findall(r'label_replace\([^"]*"(\w+)"', expr, re.S))
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    for name in re.findall(r"\b(rasd:\w+:\w+)", expr):  # a recording rule's own labels
        labels |= _result_labels(next(r["expr"] for r in RULE_LIST if r.get("record") == name))
    return labels


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_every_alert_is_unit_tested_both_ways(name):
    """rasd-alerts.test.yml has a case where the alert fires and one where it must not."""
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case["alertname"] == name]
    assert any(case.get("exp_alerts") for case in cases), f"{name} never expected to fire"
    assert any(not case.get("exp_alerts") for case in cases), f"{name} has no negative case"
    for case in cases:
        for alert in case.get("exp_alerts") or []:
            assert alert["exp_labels"]["severity"] == ALERTS[name]["labels"]["severity"]
            assert set(alert["exp_annotations"]) == set(ALERTS[name]["annotations"])


@pytest.fixture(scope="module")
def known() -> set[str]:
    return promql.exported_names() | promql.PROMETHEUS_NAMES


@pytest.mark.parametrize("rule", RULE_LIST, ids=lambda r: r.get("alert") or r.get("record"))
def test_rule_metrics_are_exported(rule, known):
    bad = promql.unknown_names(rule["expr"], known | RECORDED)
    assert not bad, f"not exported by rasd: {sorted(bad)}"


def test_rules_use_rasd_metrics_and_recordings():
    used = set().union(*(promql.promql_names(r["expr"])[0] for r in RULE_LIST))
    assert RECORDED <= used, "recording rule nobody uses"
    for name in RECORDED:
        assert re.fullmatch(r"rasd:[a-z_]+:[a-z0-9_]+", name), name


def test_recordings_come_before_their_alerts():
    """Rules of a group run in order: an alert sees this cycle's recording only if after it."""
    seen: set[str] = set()
    for rule in RULE_LIST:
        used = promql.promql_names(rule["expr"])[0] & RECORDED
        assert used <= seen, rule.get("alert") or rule.get("record")
        if "record" in rule:
            seen.add(rule["record"])


def test_job_convention():
    """Every job matcher is the documented job="rasd" (one sed to change it)."""
    exprs = "\n".join(rule["expr"] for rule in RULE_LIST)
    matchers = re.findall(r'\bjob\s*(=~|!~|!=|=)\s*"([^"]*)"', exprs)
    assert matchers and set(matchers) == {("=", "rasd")}
    assert 'job="rasd"' in RULES.read_text().split("groups:")[0]  # documented in the header


def test_ghes_probe_rule_spares_wrong_arch():
    expr = ALERTS["RasdGhesProbeNotAttached"]["expr"]
    assert "ghes_do_proc" in expr
    statuses = set(re.search(r'status=~"([^"]+)"', expr).group(1).split("|"))
    assert statuses == {"failed", "missing_symbol", "lockdown"}
