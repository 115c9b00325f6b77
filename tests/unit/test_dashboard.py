"""etc/grafana/rasd.json: every query names only metrics rasd exports.

Also home of the PromQL metric-name extractor and the exported-name set that
test_alert_rules.py uses too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "etc" / "grafana" / "rasd.json"

# --- PromQL tokenizer ------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])                     # Grafana variables
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[a-zA-Z\d]*)  # 5m, 1h30m
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
""", re.X)

# keywords followed by a parenthesised label list (skipped whole)
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
FUNCTIONS = AGGREGATIONS | {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_sum", "histogram_fraction",
    "histogram_quantile", "histogram_stddev", "histogram_stdvar", "holt_winters",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time", "acos", "acosh",
    "asin", "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "pi",
    "rad", "start", "end"}


class PromQLSyntaxError(ValueError):
    pass


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLSyntaxError(f"cannot tokenize {expr[pos:pos + 20]!r} in {expr!r}")
        if m.lastgroup not in ("ws", "comment"):
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def _close(toks: list[tuple[str, str]], i: int, open_: str, close: str) -> int:
    """Index of the token closing the bracket opened at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j] == ("op", open_):
            depth += 1
        elif toks[j] == ("op", close):
            depth -= 1
            if depth == 0:
                return j
    raise PromQLSyntaxError(f"unbalanced {open_!r}")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, function/aggregation names) used in a PromQL expression.

    Skipped: label matchers inside {...} (but {__name__="x"} counts as metric x), ranges and
    subqueries inside [...], label lists after by/without/on/ignoring/group_left/group_right,
    keywords, strings, numbers, durations and Grafana variables.
    """
    toks = _tokens(expr)
    metrics: set[str] = set()
    funcs: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if (kind, text) == ("op", "{"):
            end = _close(toks, i, "{", "}")
            inner = toks[i + 1:end]
            for k in range(len(inner) - 2):
                if inner[k] == ("ident", "__name__") and inner[k + 1] == ("op", "=") \
                        and inner[k + 2][0] == "string":
                    metrics.add(inner[k + 2][1][1:-1])
            i = end + 1
            continue
        if (kind, text) == ("op", "["):
            i = _close(toks, i, "[", "]") + 1
            continue
        if kind == "ident":
            low = text.lower()
            if low in LABEL_LIST_KEYWORDS:
                i = _close(toks, i + 1, "(", ")") + 1 if nxt == ("op", "(") else i + 1
                continue
            if low in KEYWORDS:
                pass
            elif nxt == ("op", "(") or (text in AGGREGATIONS and nxt is not None
                                        and nxt[0] == "ident"
                                        and nxt[1].lower() in ("by", "without")):
                funcs.add(text)  # sum(...), sum by (...) (...)
            else:
                metrics.add(text)
        i += 1
    return metrics, funcs


# --- what rasd exports ---------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
             "gaugehistogram": ("_bucket", "_gcount", "_gsum"), "summary": ("", "_count", "_sum"),
             "info": ("_info",)}


def exported_names() -> set[str]:
    """Series names a live rasd.sinks.metrics.Metrics() registry can expose."""
    from rasd.sinks.metrics import Metrics

    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


# Prometheus' own per-target series the queries may use
PROMETHEUS_NAMES = {"up"}


# --- the dashboard -------------------------------------------------------------------------

def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation and query variable."""
    out = []
    for panel in _panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append((f"annotation {ann.get('name')!r}", ann["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\(\s*(?:(.*?)\s*,)?\s*\w+\s*\)\s*", query)
        if m:
            if m.group(1):
                out.append((f"variable {var['name']}", m.group(1)))
        elif query.strip():
            m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query)
            out.append((f"variable {var['name']}", m.group(1) if m else query))
    return out


def unknown_names(expr: str, known: set[str]) -> set[str]:
    metrics, funcs = promql_names(expr)
    return (metrics - known) | {f + "()" for f in funcs - FUNCTIONS}


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def known() -> set[str]:
    return exported_names() | PROMETHEUS_NAMES


def test_exported_names_sane(known):
    assert {"rasd_incidents_total", "rasd_lost_events_total", "rasd_probe_status",
            "rasd_build_info", "rasd_probes_attached", "up"} <= known
    assert "rasd_incidents" not in known  # counters only as *_total


def test_dashboard_shape(dash):
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    assert 36 <= dash["schemaVersion"] <= 39  # Grafana 9.x / 10.x
    assert [v["name"] for v in dash["templating"]["list"]] == ["instance"]
    panels = list(_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
    titles = {p["title"] for p in panels}
    for wanted in ("Memory errors by location", "CPU-side errors: SErrors and SEAs", "Errors by VM",
                   "Incidents in range", "Probe status", "Lost events by stage",
                   "Decode errors by source", "Last event age", "Kernel lockdown", "rasd build"):
        assert wanted in titles
    # at least one collapsed row with nested panels, so the walk below must recurse
    assert any(p["type"] == "row" and p["collapsed"] and p["panels"] for p in dash["panels"])


def test_every_query_uses_exported_metrics(dash, known):
    queries = dashboard_queries(dash)
    assert len(queries) >= 20
    nested = {w for w, _ in queries if "Probe status" in w or "Decode errors" in w}
    assert nested, "panels inside the collapsed row were not walked"
    bad = {where: sorted(unknown_names(expr, known)) for where, expr in queries}
    assert not {w: b for w, b in bad.items() if b}
    used = set().union(*(promql_names(e)[0] for _, e in queries))
    # the dashboard covers what the issue asks for
    assert {"rasd_memory_errors_total", "rasd_serrors_total", "rasd_vm_errors_total",
            "rasd_incidents_total", "rasd_probe_status", "rasd_lost_events_total",
            "rasd_decode_errors_total", "rasd_last_event_timestamp_seconds",
            "rasd_kernel_lockdown_info", "rasd_build_info"} <= used


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package prometheus); CI installs it")
def test_every_query_parses(dash, tmp_path):
    """promtool parses every query (Grafana variables replaced by plausible values)."""
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d", "$instance": ".+"}
    rules = []
    for n, (_, expr) in enumerate(dashboard_queries(dash)):
        for var, value in subst.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query:{n}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --- the extractor itself --------------------------------------------------------------------

@pytest.mark.parametrize("expr, metrics", [
    ('rasd_events_total', {"rasd_events_total"}),
    ('sum by (instance, location) (rate(rasd_memory_errors_total{instance=~"$instance", '
     'location!~"rasd_fake|_other"}[$__rate_interval])) * 3600', {"rasd_memory_errors_total"}),
    ('sum(rasd_vm_errors_total) without (vm) > bool 1e3 unless on (job) group_left(version) '
     'rasd_build_info offset 1h30m', {"rasd_vm_errors_total", "rasd_build_info"}),
    ('label_replace(rasd_probe_status{probe="ghes_do_proc"}, "x", "$1", "probe", "(up)") '
     'or ignoring(x) vector(0) and Inf', {"rasd_probe_status"}),
    ('max_over_time(rasd_probes_attached[1h:5m] @ end()) / -0.5 # rasd_comment_only',
     {"rasd_probes_attached"}),
    ('{__name__="rasd_lost_events_total", stage="kernel_ringbuf"}', {"rasd_lost_events_total"}),
    ('count_values("version", rasd_build_info) or absent(up{job="rasd"})',
     {"rasd_build_info", "up"}),
    ('time() - (rasd_last_event_timestamp_seconds > 0)', {"rasd_last_event_timestamp_seconds"}),
    ('rasd:incidents:new_10m{kind="x"} > 0', {"rasd:incidents:new_10m"}),
])
def test_extractor(expr, metrics):
    assert promql_names(expr)[0] == metrics


@pytest.mark.parametrize("expr, wrong", [
    ('sum by (location) (rate(rasd_memory_error_total{instance=~"$instance"}[5m]))',
     "rasd_memory_error_total"),  # missing "s"
    ('rasd_incidents{kind="uncorrected_memory"}', "rasd_incidents"),  # counter without _total
    ('sum(rasd_probes_attached) + rasd_lost_event_total', "rasd_lost_event_total"),
    ('rasd_probe_status{status="attached"} == on(instance) group_left rasd_lockdown_info',
     "rasd_lockdown_info"),
    ('rat(rasd_events_total[5m])', "rat()"),  # unknown function
    ('{__name__="rasd_serror_total"}', "rasd_serror_total"),
])
def test_typo_is_caught(expr, wrong, known):
    assert unknown_names(expr, known) == {wrong}


def test_typo_in_dashboard_is_caught(dash, known):
    """The same walk over a dashboard with one nested query misspelt reports exactly that."""
    broken = json.loads(json.dumps(dash))
    row = next(p for p in broken["panels"] if p["type"] == "row" and p["panels"])
    row["panels"][0]["targets"][0]["expr"] = 'rasd_probe_statuz{instance=~"$instance"} == 1'
    bad = set().union(*(unknown_names(e, known) for _, e in dashboard_queries(broken)))
    assert bad == {"rasd_probe_statuz"}
