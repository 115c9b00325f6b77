"""The rasd daemon: start the sources, run the main loop, stop cleanly.

Start-up order matters: BERT first (boot errors of the previous boot), then the
probes (compiled and loaded in a short-lived child so this process never holds
LLVM), then the status socket, then READY. The main loop sleeps in one
``selectors`` wait on the ring buffer, the status socket and a signal pipe — an
idle daemon wakes only for the watchdog.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
import os
import selectors
import signal
import time
from pathlib import Path
from typing import Any

from . import __version__
from . import config as config_mod
from . import events as ev
from .decode import bert as bert_mod
from .decode.event import EventDecoder
from .events import Event
from .notify import Notifier
from .assembly import build, host_lookups
from .pipeline import LogSink
from .sinks.journal import JournalAlerts
from .sources.lockdown import summary as lockdown_summary
from .sinks.metrics import Metrics
from .status import StatusServer

log = logging.getLogger("rasd")

EXIT_OK, EXIT_FAILURE = 0, 1
BERT_SEEN_FILE = "bert-seen.json"
BERT_SEEN_MAX = 4096


class StartupError(RuntimeError):
    """rasd cannot run at all (no source of events); the message says why."""


def _ignore(*args: Any) -> None:
    pass


def wall_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC: BPF stamps records with the monotonic clock."""
    return time.time_ns() - time.monotonic_ns()


class Daemon:
    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self.notifier = Notifier()
        self.started_wall = time.time()
        self.view: Any = None
        self.loaded: Any = None
        self.instance: Any = None  # sources.fallbacks.InstanceSource
        self.kmsg: Any = None  # sources.fallbacks.KmsgSource (lockdown=confidentiality)
        self.status_server: StatusServer | None = None
        self.lockdown = "unknown"
        self.notes: list[str] = []
        self.source_errors = 0
        m = cfg["metrics"]
        self.metrics = Metrics(m["max_location_labels"], m["max_vm_labels"])
        self.metrics.live_counters = {
            "kernel_ringbuf": self.lost_kernel, "decode": lambda: self.source_errors,
            "tracefs_instance": lambda: self.instance.lost() if self.instance else None,
            "kmsg": lambda: self.kmsg.lost() if self.kmsg else None}
        j = cfg["journal"]
        self.alerts = JournalAlerts(j["rate_limit_per_key"], j["rate_limit_interval_s"],
                                    j["enabled"], on_outcome=self._on_alert)
        self.alert_outcomes: Counter[tuple[str, str]] = Counter()
        self.metrics_error: str | None = None
        self.store = self._open_store()
        sinks = [self.metrics, LogSink()] + ([self.store] if self.store is not None else [])
        self.assembly = build(cfg, EventDecoder(wall_offset_ns=wall_offset_ns()), sinks,
                              on_incident=self._on_incident,
                              # a storm's repeats change only counts: the store's business
                              on_count=self.store.count_incident if self.store else _ignore,
                              first_event_id=self.store.next_event_id if self.store else 1,
                              first_incident_id=self.store.next_incident_id if self.store else 1,
                              **host_lookups())
        self.metrics.live_counters["store"] = \
            lambda: self.store.counters.lost_events if self.store else None
        self.pipeline = self.assembly.pipeline
        self.incidents_seen = 0
        self._selector: selectors.BaseSelector | None = None
        self._stop = False
        self._reload = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _open_store(self) -> Any:
        """The SQLite store; when it cannot be opened rasd still runs (metrics, alerts)."""
        if not self.cfg["store"]["enabled"]:
            return None
        from .sinks.store import Store, StoreError
        try:
            return Store.from_config(self.cfg, on_alert=self._on_store_alert)
        except (StoreError, OSError) as exc:
            self.notes.append(f"store unavailable: {exc}")
            log.error("store unavailable: %s", exc)
            return None

    def _on_store_alert(self, alert: dict) -> None:
        log.error("store: %s", alert.get("message", alert))

    # --- start -----------------------------------------------------------------------------
    def start(self) -> None:
        from .sources.resolve import KernelView
        self.view = KernelView.from_host()
        self.lockdown = self.view.lockdown
        self.notes.extend(self.view.notes)
        if self.lockdown in ("integrity", "confidentiality"):
            self.notes.append(lockdown_summary(self.lockdown))
            log.warning(self.notes[-1])
        self.pipeline.decoder.formats = dict(self.view.events)
        self._set_up_recorder()
        if self.cfg["bert"]["enabled"]:
            self.read_bert()
        if self.cfg["bpf"]["enabled"] and self.lockdown != "confidentiality":
            self._load_probes()
        self._start_instance()
        if self.lockdown == "confidentiality":
            self._start_kmsg()
        if self.loaded is None and self.instance is None and self.kmsg is None:
            raise StartupError("no event source: no probe attached, no tracefs instance, "
                               "no kmsg (see above)")
        self.status_server = StatusServer(self.cfg["daemon"]["runtime_dir"], self.snapshot)
        self.metrics.set_probes(self.probe_table())
        self.metrics.set_lockdown(self.lockdown)
        self._serve_metrics()
        self.notifier.ready(self.status_line())
        log.info("rasd %s ready: %s", __version__, self.status_line())

    def _load_probes(self) -> None:
        from .sources.bpf_loader import LoaderError, load_probes
        from .sources.resolve import NoProbesError
        t0 = time.monotonic()
        try:
            self.loaded = load_probes(self.view, ringbuf_pages=self.cfg["bpf"]["ringbuf_pages"],
                                      timeout=self.cfg["bpf"]["loader_timeout_s"],
                                      hot_paths=self.cfg["bpf"]["vm_exit_probes"],
                                      cache_dir=self.cfg["bpf"]["cache_dir"] or None)
        except NoProbesError as exc:
            self.notes.append(str(exc))
            log.error("%s", exc)
            return
        except LoaderError as exc:
            self.notes.append(f"probe loader failed: {exc}")
            log.error("probe loader failed: %s", exc)
            return
        self.notes.extend(self.loaded.notes)
        for r in self.loaded.results:
            log.info("probe %-26s %-15s %s %s", r.probe, r.status, r.symbol or "", r.reason)
        st = self.loaded.stats
        log.info("probes loaded in %.2f s (loader child %.2f s, of which BTF %.2f s, "
                 "bcc compile + verifier %.2f s, cached load %.2f s; compile cache: %s)",
                 time.monotonic() - t0, st.get("total_s", 0), st.get("btf_s", 0),
                 st.get("compile_s", 0), st.get("cache_load_s", 0), st.get("cache", "off"))
        hint = perf_paranoid_hint(self.loaded.results)
        if hint:
            self.notes.append(hint)
            log.error("%s", hint)

    def _start_instance(self) -> None:
        """The tracefs instance that buffered ras:* while rasd was down: drain it now."""
        from .sources.fallbacks import InstanceSource
        from .sources.trace_instance import TracefsUnavailable
        t = self.cfg["tracefs"]
        try:
            self.instance = InstanceSource(t["instance"], t["buffer_size_kb"],
                                           self.cfg["daemon"]["state_dir"]).setup()
        except (TracefsUnavailable, OSError) as exc:
            self.notes.append(f"tracefs instance unavailable: {exc}")
            log.warning("tracefs instance unavailable: %s", exc)
            return
        recovered = self.instance.drain(self.pipeline.feed)
        log.info("tracefs instance %s: %d event(s) recorded while rasd was down",
                 t["instance"], recovered)

    def _start_kmsg(self) -> None:
        from .sources.fallbacks import KmsgSource
        try:
            self.kmsg = KmsgSource(self.cfg["daemon"]["state_dir"]).open()
        except OSError as exc:
            # Under systemd the stock unit hides the kernel log (ProtectKernelLogs=yes);
            # only confidentiality-locked hosts need it, and they opt in with the drop-in.
            self.notes.append(f"/dev/kmsg unavailable: {exc}; under lockdown=confidentiality "
                              f"it is rasd's only live source: install {KERNEL_LOG_DROPIN} "
                              "as a drop-in of rasd.service")
            log.error("%s", self.notes[-1])
            return
        n = self.kmsg.drain(self.pipeline.feed_event, flush=True, commit=self._commit_store)
        log.info("kmsg: %d RAS line group(s) since the last cursor", n)

    def _commit_store(self) -> None:
        """Before a source's cursor moves past what it handed on (kmsg): the store has it.
        A kill in between (the kernel's SIGBUS when a memory error hits rasd's own page,
        seen in the lab) would otherwise skip those records on the next start."""
        if self.store is not None:
            self.store.flush()

    def _set_up_recorder(self) -> None:
        path = self.cfg["record"]["path"]
        if not path:
            return
        from .sources.replay import RecordWriter
        from .sources.probes import TRACE_SYSTEMS
        formats = {}
        for key, fmt in self.view.events.items():
            if key.split(":", 1)[0] in TRACE_SYSTEMS:  # what the tracepoint probes read
                formats[key] = _format_text(key)
        self.pipeline.recorder = RecordWriter(path, formats, self.pipeline.decoder.wall_offset_ns)

    # --- BERT ------------------------------------------------------------------------------
    def read_bert(self) -> None:
        """Boot errors of the previous boot; each reported once across restarts."""
        try:
            report = bert_mod.read_bert(self.cfg["bert"]["path"])
        except (OSError, ValueError) as exc:
            self.notes.append(f"BERT unreadable: {exc}")
            log.warning("BERT unreadable: %s", exc)
            return
        seen_path = Path(self.cfg["daemon"]["state_dir"]) / BERT_SEEN_FILE
        seen = _load_seen(seen_path)
        fresh = 0
        for rec in report.records:
            digest = report.record_digest(rec)
            if digest in seen:
                continue
            seen.append(digest)
            fresh += 1
            self.pipeline.feed_event(Event(
                kind=ev.BERT, source="bert", wall_ns=time.time_ns(), raw=rec.raw, cper=rec,
                decode_error=str(rec.error) if rec.error else None,
                fields={"digest": digest, "consumed_by_kernel": rec.empty}))
        if fresh:
            _save_seen(seen_path, seen[-BERT_SEEN_MAX:])
        log.info("BERT: %d record(s), %d new", len(report.records), fresh)

    # --- main loop -------------------------------------------------------------------------
    def run(self) -> int:
        sel = self._selector = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "signal")
        if self.loaded is not None:
            sel.register(self.loaded.ringbuf.fd, selectors.EVENT_READ, "ringbuf")
        if self.status_server is not None:
            sel.register(self.status_server.fileno(), selectors.EVENT_READ, "status")
        if self.instance is not None:
            for fd in self.instance.fds():
                sel.register(fd, selectors.EVENT_READ, "instance")
        if self.kmsg is not None:
            sel.register(self.kmsg.fileno(), selectors.EVENT_READ, "kmsg")
        if self.metrics.server is not None:
            sel.register(self.metrics.fileno(), selectors.EVENT_READ, "metrics")
        interval = self._wake_interval()
        next_ping = time.monotonic()
        while not self._stop:
            for key, _ in sel.select(timeout=max(0.0, next_ping - time.monotonic())):
                self._dispatch(key.data)
            if time.monotonic() >= next_ping:
                self.notifier.watchdog()
                self._tick()
                self.pipeline.flush()
                next_ping = time.monotonic() + interval
            if self._reload:
                self._do_reload()
        self.stop()
        return EXIT_OK

    def _tick(self) -> None:
        """Housekeeping at each watchdog wake-up: nothing here runs per event."""
        if self.instance is not None:
            self.instance.drain(self.pipeline.feed)
        if self.kmsg is not None:
            # close quiet line groups
            self.kmsg.drain(self.pipeline.feed_event, flush=True, commit=self._commit_store)
        self.assembly.correlator.expire(time.time_ns())
        if self.store is not None:
            self.store.poll()  # commits a quiet tail, runs retention when due
        self._serve_metrics()

    def _wake_interval(self) -> float:
        # systemd wants a ping well inside WatchdogSec; halve it
        if self.notifier.watchdog_s:
            return self.notifier.watchdog_s / 2
        return float(self.cfg["daemon"]["watchdog_fallback_s"])

    def _dispatch(self, what: str) -> None:
        if what == "ringbuf":
            self.drain()
        elif what == "status":
            self.status_server.serve_pending()
        elif what == "instance":
            self.instance.drain(self.pipeline.feed)
        elif what == "kmsg":
            self.kmsg.drain(self.pipeline.feed_event, commit=self._commit_store)
        elif what == "metrics":
            self.metrics.handle_ready()
        elif what == "signal":
            try:
                while os.read(self._wake_r, 64):
                    pass
            except BlockingIOError:
                pass

    def drain(self) -> int:
        """Everything in the ring buffer now, through the pipeline."""
        from .sources.records import RecordError, parse_record
        if self.loaded is None:
            return 0
        n = 0
        for raw in self.loaded.ringbuf.records():
            try:
                rec = parse_record(raw)
            except RecordError as exc:
                self.source_errors += 1
                log.warning("ring buffer record rejected: %s", exc)
                continue
            if rec.kind == "tp" and self.instance is not None and not self._first_copy(rec):
                continue
            self.pipeline.feed(rec)
            n += 1
        return n

    def _serve_metrics(self) -> None:
        """Bind the metrics endpoint; a port in use is an error the daemon survives and
        retries (events are still stored and alerted meanwhile)."""
        m = self.cfg["metrics"]
        if not m["enabled"] or self.metrics.server is not None:
            return
        try:
            self.metrics.serve(m["address"], m["port"], m["tls_cert"], m["tls_key"],
                               own_thread=False)
            self.metrics_error = None
            if self._selector is not None:
                self._selector.register(self.metrics.fileno(), selectors.EVENT_READ, "metrics")
        except OSError as exc:  # ssl.SSLError (a bad certificate or key) is one too
            message = f"metrics endpoint {m['address']}:{m['port']} unavailable: {exc}"
            if message != self.metrics_error:
                log.error("%s (retrying)", message)
            self.metrics_error = message

    def _on_incident(self, incident) -> None:
        """Incidents as they open, change and close: store, alerts and metrics."""
        if self.store is not None:
            self.store.save_incident(incident)
        self.alerts.incident(incident)
        self.metrics.incident(incident)
        if incident.closed and incident.merged_into is None:
            self.incidents_seen += 1

    def _on_alert(self, kind: str, outcome: str) -> None:
        self.alert_outcomes[kind, outcome] += 1
        self.metrics.alert(kind, outcome)

    def _first_copy(self, rec) -> bool:
        fmt = self.pipeline.decoder.format_for(rec.probe)
        return fmt is None or self.instance.offer_bpf(rec, fmt)

    # --- signals, reload, stop -------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: Any) -> None:
        self._stop = True
        os.write(self._wake_w, b"s")

    def _on_hup(self, signum: int, frame: Any) -> None:
        self._reload = True
        os.write(self._wake_w, b"h")

    def _do_reload(self) -> None:
        self._reload = False
        self.notifier.send(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)
        try:
            new = config_mod.load(self.cfg.path) if self.cfg.path else config_mod.defaults()
        except config_mod.ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
        else:
            self.cfg = new
            logging.getLogger().setLevel(new["daemon"]["log_level"].upper())
            log.info("config reloaded from %s", self.cfg.path or "defaults")
        self.notifier.send(ready=1, status=self.status_line())

    def stop(self) -> None:
        """Drain what the kernel still holds, flush the sinks, detach, exit."""
        self.notifier.stopping()
        drained = self.drain()
        if self.instance is not None:
            self.instance.drain(self.pipeline.feed)
            self.instance.close()  # the instance itself keeps recording while rasd is down
        if self.kmsg is not None:
            self.kmsg.drain(self.pipeline.feed_event, flush=True, commit=self._commit_store)
            self.kmsg.close()
        self.assembly.correlator.expire(2**63 - 1)  # close what is still open
        self.pipeline.close()
        if self.loaded is not None:
            self.loaded.close()
        if self.status_server is not None:
            self.status_server.close()
        self.metrics.stop()
        log.info("rasd stopped (%d record(s) drained at stop)", drained)

    # --- status ----------------------------------------------------------------------------
    def probe_table(self) -> list[dict]:
        if self.loaded is not None:
            return [r.to_json() for r in self.loaded.results]
        if self.view is None:
            return []
        from .sources.resolve import resolve
        return [r.to_json() for r in resolve(self.view)]

    def lost_kernel(self) -> int | None:
        if self.loaded is None:
            return None
        try:
            return self.loaded.lost.total()
        except OSError:
            return None

    def status_line(self) -> str:
        table = self.probe_table()
        attached = sum(1 for r in table if r["status"] == "attached")
        return (f"{attached}/{len(table)} probes attached, lockdown {self.lockdown}, "
                f"{sum(self.pipeline.counters.events.values())} events")

    def snapshot(self) -> dict:
        return {"version": __version__, "pid": os.getpid(), "started": self.started_wall,
                "lockdown": self.lockdown, "probes": self.probe_table(),
                "features": self.loaded.features.to_json() if self.loaded else None,
                "loader": self.loaded.stats if self.loaded else None,
                "counters": {**self.pipeline.counters.to_dict(),
                             "lost_kernel": self.lost_kernel(),
                             "source_errors": self.source_errors,
                             "tracefs_instance": None if self.instance is None else {
                                 "delivered": self.instance.delivered,
                                 "duplicates": self.instance.duplicates,
                                 "lost": self.instance.lost()},
                             "kmsg": None if self.kmsg is None else {
                                 "events": self.kmsg.events, "lost": self.kmsg.lost()}},
                "incidents": self.incidents_seen,
                "store": self.store.status() if self.store is not None else None,
                "alerts": self._alert_status(),
                "metrics": self.metrics_error or "ok",
                "notes": self.notes}

    def _alert_status(self) -> dict:
        """Alerts by outcome (sent / suppressed / stderr), each split by alert kind."""
        by_outcome: dict[str, dict[str, int]] = {}
        for (kind, outcome), n in sorted(self.alert_outcomes.items()):
            by_outcome.setdefault(outcome, {})[kind] = n
        return by_outcome


KERNEL_LOG_DROPIN = "/usr/share/rasd/systemd/kernel-log.conf"
PERF_PARANOID_DROPIN = "/usr/share/rasd/systemd/perf-paranoid.conf"
CAP_SYS_ADMIN = 21


def perf_paranoid_hint(results: list, proc: str = "/proc") -> str | None:
    """Why kprobes and tracepoints failed, when it is Debian's perf_event_paranoid > 2
    (only CAP_SYS_ADMIN may call perf_event_open then) and rasd lacks CAP_SYS_ADMIN."""
    failed = [r for r in results if r.status == "failed" and r.kind != "fentry"
              and "hot path" not in (r.reason or "")]
    if not failed:
        return None
    try:
        paranoid = int(Path(f"{proc}/sys/kernel/perf_event_paranoid").read_text())
        status = Path(f"{proc}/self/status").read_text()
        cap_eff = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("CapEff:")), 16)
    except (OSError, ValueError, StopIteration):
        return None
    if paranoid <= 2 or cap_eff >> CAP_SYS_ADMIN & 1:
        return None
    return (f"{len(failed)} probe(s) failed to attach: kernel.perf_event_paranoid={paranoid} "
            "(Debian's default) lets only CAP_SYS_ADMIN call perf_event_open; install "
            f"{PERF_PARANOID_DROPIN} as a drop-in of rasd.service (the package does when it "
            "sees this at install), or set the sysctl to 2")


def _format_text(key: str) -> str:
    from .sources.tracefs import find_tracefs
    tracefs = find_tracefs()
    system, _, name = key.partition(":")
    try:
        return (tracefs / "events" / system / name / "format").read_text() if tracefs else ""
    except OSError:
        return ""


def _load_seen(path: Path) -> list[str]:
    try:
        data = json.loads(path.read_text())
        return [d for d in data if isinstance(d, str)] if isinstance(data, list) else []
    except (OSError, ValueError):
        return []


def _save_seen(path: Path, seen: list[str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(seen))
        tmp.replace(path)
    except OSError as exc:  # a full disk costs dedup across restarts, never the daemon
        log.warning("cannot save BERT digests to %s: %s", path, exc)
