"""The pipeline: source record -> decode -> classify -> correlate -> sinks.

Every source (BPF ring buffer, tracefs instance, BERT, kmsg, replay) hands its
records or events to one ``Pipeline``, so replayed events and the kernel's take
exactly the same path. Stages are plain callables; sinks have ``handle``,
``flush`` and ``close``.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from types import BuiltinFunctionType, FunctionType, MethodType
from typing import Any, Callable, Protocol

from .decode.event import EventDecoder
from .events import Event

log = logging.getLogger("rasd.pipeline")


class Sink(Protocol):
    def handle(self, event: Event) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class Counters:
    events: Counter = field(default_factory=Counter)  # by kind
    decode_errors: int = 0
    sink_errors: int = 0
    last_event_wall_ns: int = 0

    def to_dict(self) -> dict:
        return {"events": dict(self.events), "events_total": sum(self.events.values()),
                "decode_errors": self.decode_errors, "sink_errors": self.sink_errors,
                "last_event_wall_ns": self.last_event_wall_ns}


class Pipeline:
    def __init__(self, decoder: EventDecoder, sinks: list[Sink] | None = None,
                 stages: list[Callable[[Event], None]] | None = None,
                 recorder: Any = None, first_event_id: int = 1) -> None:
        self.decoder = decoder
        self.event_ids = itertools.count(first_event_id)  # the store continues its numbering
        self.stages = stages or []  # classify, correlate (issue 4)
        self.sinks = sinks or []
        self.recorder = recorder
        self.counters = Counters()

    # Stages and sinks are called per event, so what to call is looked up once, when they
    # are set: a stage object as its bound __call__ (calling the object itself goes through
    # its type's call slot), each sink as its bound handle.
    @property
    def stages(self) -> list[Callable[[Event], None]]:
        return self._stages

    @stages.setter
    def stages(self, stages: list[Callable[[Event], None]]) -> None:
        self._stages = stages
        self._stage_calls = tuple(map(_direct_call, stages))

    @property
    def sinks(self) -> list[Sink]:
        return self._sinks

    @sinks.setter
    def sinks(self, sinks: list[Sink]) -> None:
        self._sinks = sinks
        self._sink_handles = tuple(sink.handle for sink in sinks)

    def feed(self, rec: Any) -> Event:
        """A source record from the BPF path (or its replay)."""
        if self.recorder is not None:
            self.recorder.write(rec)
        return self.feed_event(self.decoder.decode(rec))

    def feed_event(self, event: Event) -> Event:
        """An event a source built itself (BERT, tracefs instance, kmsg)."""
        if event.id is None:
            event.id = next(self.event_ids)
        for stage in self._stage_calls:
            stage(event)
        c = self.counters
        c.events[event.kind] += 1
        if event.wall_ns > c.last_event_wall_ns:
            c.last_event_wall_ns = event.wall_ns
        if event.decode_error:
            c.decode_errors += 1
        for handle in self._sink_handles:
            try:
                handle(event)
            except Exception:  # noqa: BLE001 - one failing sink must not stop the others
                c.sink_errors += 1
                log.exception("sink %s failed on a %s event", _sink_name(handle),
                              event.kind)
        return event

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()
        if self.recorder is not None:
            self.recorder.flush()

    def close(self) -> None:
        self.flush()
        for sink in self.sinks:
            sink.close()
        if self.recorder is not None:
            self.recorder.close()


def _sink_name(handle: Callable[[Event], None]) -> str:
    return type(getattr(handle, "__self__", handle)).__name__


def _direct_call(stage: Callable[[Event], None]) -> Callable[[Event], None]:
    """A function as it is; an object (Correlator, Thresholds) as its bound __call__."""
    if isinstance(stage, (FunctionType, MethodType, BuiltinFunctionType)):
        return stage
    return stage.__call__


class LogSink:
    """One debug log line per event (rasd --log-level debug)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("rasd.events")

    def handle(self, event: Event) -> None:
        if not self.log.isEnabledFor(logging.DEBUG):  # per event: storms would flood the log
            return  # (checked first: formatting the line costs more than the check)
        task = f" {event.task.comm}[{event.task.tgid}/{event.task.tid}]" if event.task else ""
        extra = f" decode error: {event.decode_error}" if event.decode_error else ""
        self.log.debug("%s from %s cpu %s%s %s%s", event.kind, event.source, event.cpu, task,
                       _summary(event), extra)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _summary(event: Event) -> str:
    if event.cper is not None and event.cper.sections:
        names = ",".join(s.name for s in event.cper.sections)
        return f"sections {names}"
    if event.esr is not None:
        return f"esr {event.esr.value:#x}"
    keys = ("pfn", "flag_names", "result", "claimed", "origin", "page_type", "result_name")
    return " ".join(f"{k}={event.fields[k]}" for k in keys if k in event.fields)
