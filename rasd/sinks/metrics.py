"""Prometheus metrics: counters and gauges of what rasd saw, served over HTTP(S).

Labels stay bounded: no per-PFN, per-address or per-event labels; memory locations
and VM names are capped (config), the rest beyond the cap counted under "_other".
Default port 10199 (see README: the 9100-9999 exporter range is fully allocated).
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Iterable

# *_created series double every counter and no alert or panel uses them. prometheus_client
# 0.16 (Debian 12) reads this at import; newer ones also have disable_created_metrics().
os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")

import prometheus_client  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: E402
from prometheus_client.exposition import MetricsHandler  # noqa: E402

from .. import __version__  # noqa: E402
from .. import events as ev  # noqa: E402
from ..decode.cper.sections.memory import MemorySection  # noqa: E402
from ..events import Event, Incident  # noqa: E402

if hasattr(prometheus_client, "disable_created_metrics"):
    prometheus_client.disable_created_metrics()

log = logging.getLogger("rasd.metrics")
DEFAULT_PORT = 10199
OTHER = "_other"


class BoundedLabel:
    """Label values up to a cap; later new values become "_other" (and are counted)."""

    def __init__(self, cap: int, overflow: Callable[[], None]) -> None:
        self.cap = cap
        self.seen: set[str] = set()
        self.overflow = overflow

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.cap:
            self.seen.add(value)
            return value
        self.overflow()
        return OTHER


class Metrics:
    """A pipeline sink plus incident listener; ``live`` callbacks supply counters kept
    elsewhere (kernel ring-buffer losses, store losses) at scrape time."""

    def __init__(self, max_location_labels: int = 256, max_vm_labels: int = 32,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # per-event counts wait here and reach the counters at scrape time (this
        # collector is registered first, so a scrape collects them after it ran)
        self._pending: dict[tuple, int] = {}  # (metric, label values) -> count
        self._last_event_s: float | None = None
        self._pending_lock = threading.Lock()
        self._children: dict[tuple, Any] = {}
        r.register(_PendingCollector(self))
        Gauge("rasd_build_info", "rasd build information", ["version", "python_version"],
              registry=r).labels(__version__, platform.python_version()).set(1)
        self.events = Counter("rasd_events_total", "RAS events received, by source probe, "
                              "kind and rasd severity", ["source", "kind", "severity"], registry=r)
        self.memory = Counter("rasd_memory_errors_total", "Memory errors by memory location "
                              "(node/card/module/rank/bank/row as firmware gives it) and severity",
                              ["location", "severity"], registry=r)
        self.serrors = Counter("rasd_serrors_total", "SErrors by origin (host/guest), AET and "
                               "outcome", ["origin", "aet", "outcome"], registry=r)
        self.seas = Counter("rasd_seas_total", "Synchronous external aborts by origin and "
                            "whether firmware-first claimed them", ["origin", "claimed"], registry=r)
        self.memory_failure = Counter("rasd_memory_failure_total", "memory_failure() outcomes "
                                      "by result and page type", ["result", "page_type"], registry=r)
        self.incidents = Counter("rasd_incidents_total", "Incidents (closed) by alert kind, "
                                 "severity and blast radius", ["kind", "severity", "blast_radius"],
                                 registry=r)
        self.vm_errors = Counter("rasd_vm_errors_total", "Incidents attributed to a VM",
                                 ["vm", "kind"], registry=r)
        self.decode_errors = Counter("rasd_decode_errors_total", "Events whose bytes did not "
                                     "decode (kept raw)", ["source"], registry=r)
        self.alerts = Counter("rasd_alerts_total", "Incident alerts by alert kind and outcome "
                              "(sent to journald, suppressed by the rate limit, or written to "
                              "stderr because journald refused them)", ["kind", "outcome"],
                              registry=r)
        self.bert = Counter("rasd_bert_records_total", "Boot error records (previous boot) by "
                            "severity", ["severity"], registry=r)
        self.actions = Counter("rasd_actions_total", "Predictive-failure actions", ["action",
                               "mode", "result"], registry=r)
        self.overflow = Counter("rasd_label_overflow_total", "Label values folded into "
                                "\"_other\" by the label caps", ["label"], registry=r)
        self.last_event = Gauge("rasd_last_event_timestamp_seconds", "Wall time of the last "
                                "event", registry=r)
        self.probe_state = Gauge("rasd_probe_status", "1 for each probe's current state",
                                 ["probe", "status"], registry=r)
        self.lockdown = Gauge("rasd_kernel_lockdown_info", "Kernel lockdown mode (1 for the "
                              "current one)", ["mode"], registry=r)
        self.location_label = BoundedLabel(max_location_labels,
                                           self.overflow.labels("location").inc)
        self.vm_label = BoundedLabel(max_vm_labels, self.overflow.labels("vm").inc)
        self.live_counters: dict[str, Callable[[], int | None]] = {}
        r.register(_LiveCollector(self))
        self.server: ThreadingHTTPServer | None = None

    # --- sink -------------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        severity = event.severity or "info"
        source = event.source
        if source.startswith("replay"):
            source = _source(event)
        # rasd_events_total's key built here, not by count(): one call fewer per event
        key = (self.events, (source, event.kind, severity))
        more = _EVENT_METRICS.get(event.kind)
        with self._pending_lock:
            pending = self._pending
            pending[key] = pending.get(key, 0) + 1
            if event.wall_ns:
                self._last_event_s = event.wall_ns / 1e9
            if event.decode_error:
                self.count(self.decode_errors, source)
            if more is not None:
                for handler in more:
                    handler(self, event, severity)

    def count(self, metric: Any, *labels: str) -> None:
        """One more for ``metric{labels}``, applied at the next scrape (apply_pending):
        prometheus_client's labels() and inc() validate and lock on every call, several
        microseconds per event in a storm. Caller holds _pending_lock."""
        key = (metric, labels)
        self._pending[key] = self._pending.get(key, 0) + 1

    def apply_pending(self) -> None:
        """Bring the counters up to date (a scrape does this first)."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            last, self._last_event_s = self._last_event_s, None
        for (metric, labels), n in pending.items():
            self.child(metric, *labels).inc(n)
        if last is not None:
            self.last_event.set(last)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered (only for metrics whose children are
        never removed: not probe_state or lockdown)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def flush(self) -> None:
        self.apply_pending()

    def close(self) -> None:
        self.stop()

    # --- other inputs -------------------------------------------------------------------------
    def incident(self, incident: Incident) -> None:
        if not incident.closed or incident.merged_into is not None:
            return  # counted once, when it is final
        scope = (incident.blast_radius or {}).get("scope", "unknown")
        self.incidents.labels(incident.kind, incident.severity, scope).inc()
        if incident.vm and incident.vm.get("name"):
            self.vm_errors.labels(self.vm_label(incident.vm["name"]), incident.kind).inc()

    def alert(self, kind: str, outcome: str) -> None:
        self.alerts.labels(kind, outcome).inc()

    def set_probes(self, table: Iterable[dict]) -> None:
        self.probe_state.clear()
        for row in table:
            self.probe_state.labels(row["probe"], row["status"]).set(1)

    def set_lockdown(self, mode: str) -> None:
        self.lockdown.clear()
        self.lockdown.labels(mode).set(1)

    def action(self, record: Any) -> None:
        if record is not None:
            self.actions.labels(record.what, record.mode, "done" if record.done else "not_done").inc()

    # --- HTTP ---------------------------------------------------------------------------------
    def serve(self, address: str, port: int, certfile: str = "", keyfile: str = "",
              own_thread: bool = True) -> None:
        """Start the endpoint; raises OSError (e.g. port in use) to the caller.

        ``own_thread=False``: the caller's event loop calls ``handle_ready()`` when
        ``fileno()`` is readable (the daemon does: an accept thread polling twice a
        second would be the idle daemon's main CPU cost)."""
        handler = MetricsHandler.factory(self.registry)
        server = ThreadingHTTPServer((address, port), handler)
        server.daemon_threads = True
        if certfile:
            import ssl  # here only: loading it adds ~0.1 s to every start on a small core
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(certfile, keyfile or None)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.timeout = 0  # handle_ready() never waits
        if own_thread:
            threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        self._own_thread = own_thread
        self.server = server
        log.info("metrics on %s://%s:%d/metrics", "https" if certfile else "http", address, port)

    def fileno(self) -> int:
        return self.server.fileno()

    def handle_ready(self) -> None:
        """Accept one pending scrape; ThreadingHTTPServer answers it in its own thread."""
        if self.server is not None:
            self.server.handle_request()

    def stop(self) -> None:
        if self.server is not None:
            if self._own_thread:
                self.server.shutdown()
            self.server.server_close()
            self.server = None


def _source(event: Event) -> str:
    return event.source.split(":", 1)[0] if event.source.startswith("replay") else event.source


# The location label stops at the DIMM (and rank): bank/row/column/bit would spread
# one failing DIMM over many series and exhaust the label cap.
LABEL_LOCATION_FIELDS = ("node", "card", "module", "rank")


def memory_location_label(body: MemorySection) -> str:
    loc = body.location()
    text = " ".join(f"{k} {loc[k]}" for k in LABEL_LOCATION_FIELDS if k in loc)
    return text or ("unlocatable" if not body.physical_addr_valid else "unknown")


def _memory(m: Metrics, event: Event, severity: str) -> None:
    record = event.cper
    if record is None:
        return
    labels = record.derived.get("metric_locations")  # a storm's every event: read it here
    if labels is None:
        labels = _memory_labels(record)
    seen, pending = m.location_label.seen, m._pending
    for text in labels:
        # a label under the cap once is so for good: the cap is asked only about new ones;
        # m.count() written out (per event)
        key = (m.memory, (text if text in seen else m.location_label(text), severity))
        pending[key] = pending.get(key, 0) + 1


def _memory_labels(record: Any) -> tuple[str, ...]:
    """The location label of each memory section, once per record (see CperCache)."""
    labels = record.derived.get("metric_locations")
    if labels is None:
        labels = record.derived["metric_locations"] = tuple(
            memory_location_label(sec.body) for sec in record.sections
            if isinstance(sec.body, MemorySection))
    return labels


def _bert(m: Metrics, event: Event, severity: str) -> None:
    m.count(m.bert, severity)


def _serror(m: Metrics, event: Event, severity: str) -> None:
    origin = "guest" if event.kind == ev.GUEST_SERROR or event.fields.get("origin") == "guest" \
        else "host"
    aet = "unknown"
    if event.esr is not None and event.esr.serror is not None:
        aet = event.esr.serror.aet.name if event.esr.serror.aet else "IDS"
    m.count(m.serrors, origin, aet, event.containment or "unknown")


def _sea(m: Metrics, event: Event, severity: str) -> None:
    claimed = "yes" if event.fields.get("claimed") else "no"
    m.count(m.seas, event.fields.get("origin", "unknown"), claimed)


def _memory_failure(m: Metrics, event: Event, severity: str) -> None:
    f = event.fields
    if event.kind == ev.MEMORY_FAILURE_EVENT:
        m.count(m.memory_failure, f.get("result_name", "unknown"), f.get("page_type", "unknown"))


def _mc(m: Metrics, event: Event, severity: str) -> None:
    label = event.fields.get("label") or "unknown"
    m.count(m.memory, m.location_label(str(label)), severity)


_EVENT_METRICS: dict[str, tuple] = {
    ev.GHES: (_memory,),
    ev.BERT: (_memory, _bert),
    ev.HOST_SERROR: (_serror,),
    ev.GUEST_SERROR: (_serror,),
    ev.SERROR_CHECK: (_serror,),
    ev.SEA_CLAIM: (_sea,),
    ev.MEMORY_FAILURE_EVENT: (_memory_failure,),
    ev.MC_EVENT: (_mc,),
}


class _PendingCollector:
    """Registered first: applies the per-event counts Metrics.handle kept, so the
    counters collected after it are current."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        self.metrics.apply_pending()
        return []


class _LiveCollector:
    """Values owned elsewhere, read at scrape time: kernel ring-buffer losses come from
    the in-kernel per-CPU counter, store losses from the store."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        lost = CounterMetricFamily("rasd_lost_events", "Events lost, by pipeline stage "
                                   "(kernel_ringbuf: BPF reserve failures; decode: records "
                                   "rejected; store: not written)", labels=["stage"])
        for stage, read in sorted(self.metrics.live_counters.items()):
            value = _safe(read)
            if value is not None:
                lost.add_metric([stage], value)
        yield lost
        attached = GaugeMetricFamily("rasd_probes_attached", "Probes attached now")
        attached.add_metric([], sum(1 for s in self.metrics.probe_state._metrics
                                    if s[1] == "attached"))
        yield attached


def _safe(read: Callable[[], int | None]) -> int | None:
    try:
        return read()
    except Exception:  # noqa: BLE001 - a scrape must never fail on one source
        return None
