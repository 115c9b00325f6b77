"""Predictive failure: leaky-bucket counts of corrected errors per page, per memory
location and per CPU. A bucket that fills up is a predictive-failure incident:
the hardware is wearing out before it fails outright.

A leaky bucket (not a plain count per period) so that a steady trickle below the
rate never trips, a burst does, and memory stays bounded: the bucket drains at
``threshold / period`` and each corrected error adds one. Defaults follow
rasdaemon's (page: 50 CEs in 24 h; CPU: 18 CEs in 24 h).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .. import events as ev
from ..correlate.incidents import PAGE_SHIFT, _where
from ..events import Event, Incident

DAY_NS = 24 * 3600 * 10**9


@dataclass(frozen=True)
class Limit:
    threshold: int
    period_ns: int
    leak_per_ns: float = field(init=False, repr=False, compare=False)
    rearm_level: float = field(init=False, repr=False, compare=False)  # see Bucket.add

    def __post_init__(self) -> None:
        # read per event and bucket: plain attributes, not properties
        object.__setattr__(self, "leak_per_ns", self.threshold / self.period_ns)
        object.__setattr__(self, "rearm_level", self.threshold / 2)


DEFAULT_LIMITS = {"page": Limit(50, DAY_NS), "location": Limit(100, DAY_NS),
                  "cpu": Limit(18, DAY_NS)}


class Bucket:
    __slots__ = ("level", "last_ns", "tripped")

    def __init__(self, now_ns: int) -> None:
        self.level = 0.0
        self.last_ns = now_ns
        self.tripped = False

    def add(self, now_ns: int, limit: Limit) -> bool:
        """Count one error; True the moment the bucket fills (once, until it drains half)."""
        # (locals, no max(): this runs per event and bucket)
        level, last_ns, tripped = self.level, self.last_ns, self.tripped
        if now_ns > last_ns:
            level -= (now_ns - last_ns) * limit.leak_per_ns
            if level < 0.0:
                level = 0.0
        self.last_ns = now_ns
        self.level = level = level + 1
        if tripped and level < limit.rearm_level:
            self.tripped = tripped = False  # hysteresis: re-arm only after it drained half
        if not tripped and level >= limit.threshold:
            self.tripped = True
            return True
        return False


SERROR_KINDS = (ev.SERROR_CHECK, ev.HOST_SERROR)  # thresholds count their CPU


class Thresholds:
    """Pipeline stage: counts corrected events and opens predictive-failure incidents."""

    def __init__(self, limits: dict[str, Limit] | None = None, ids: Iterator[int] | None = None,
                 on_incident: Callable[[Incident, Event], None] | None = None,
                 max_buckets: int = 100_000, cpu_of_mpidr: Callable[[int], int | None] | None = None
                 ) -> None:
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.ids = ids or itertools.count(1)
        self.on_incident = on_incident
        self.max_buckets = max_buckets
        self.cpu_of_mpidr = cpu_of_mpidr
        # by "scope:key" text: hashed per event, and a str keeps its hash (a tuple of a
        # location's items is hashed anew each time)
        self.buckets: OrderedDict[str, Bucket] = OrderedDict()
        self.tripped: list[Incident] = []
        # this instance's entry in Record.derived (its keys depend on cpu_of_mpidr and
        # its limits); a plain object: hashed per event
        self._memo = object()

    def __call__(self, event: Event) -> None:
        if event.severity != "corrected":
            return
        rec = event.cper
        if rec is not None and "pfn" not in event.fields and event.kind not in SERROR_KINDS:
            # the buckets then follow from the record alone: once per record (CperCache
            # hands a storm's identical blocks one record). An empty memo is recomputed.
            pairs = rec.derived.get(self._memo) or self._remember_pairs(event)
        else:
            pairs = self._pairs(event)
        now, buckets = event.wall_ns, self.buckets
        for name, scope, key, limit in pairs:
            # (inline, not a method per bucket: this runs per corrected event)
            bucket = buckets.get(name)
            if bucket is None:
                bucket = self._new_bucket(name, now)
            else:
                buckets.move_to_end(name)
            if bucket.add(now, limit):
                self._trip(scope, key, event)

    def _remember_pairs(self, event: Event) -> list[tuple[str, str, object, Limit]]:
        pairs = event.cper.derived[self._memo] = self._pairs(event)
        return pairs

    def _pairs(self, event: Event) -> list[tuple[str, str, object, Limit]]:
        """The buckets the event counts in: (bucket name, scope, key, the scope's limit)."""
        return [(f"{scope}:{key!r}", scope, key, self.limits[scope])
                for scope, key in self._read_keys(event)]

    def _read_keys(self, event: Event) -> list[tuple[str, object]]:
        pa, location, mpidr = _where(event)
        keys: list[tuple[str, object]] = []
        pfn = event.fields.get("pfn")
        if pfn is None and pa is not None:
            pfn = pa >> PAGE_SHIFT
        if pfn is not None:
            keys.append(("page", pfn))
        if location:
            keys.append(("location", tuple(sorted(location.items()))))
        cpu = event.cpu if event.kind in SERROR_KINDS else None
        if mpidr is not None:
            mapped = self.cpu_of_mpidr(mpidr) if self.cpu_of_mpidr else None
            cpu = mapped if mapped is not None else f"mpidr:{mpidr:#x}"
        if cpu is not None:
            keys.append(("cpu", cpu))
        return keys

    def _new_bucket(self, name: str, now_ns: int) -> Bucket:
        bucket = self.buckets[name] = Bucket(now_ns)
        if len(self.buckets) > self.max_buckets:
            self.buckets.popitem(last=False)  # forget the least recently seen
        return bucket

    def _trip(self, scope: str, key: object, event: Event) -> None:
        limit = self.limits[scope]
        what = {"page": lambda k: f"page {k:#x}",
                "location": lambda k: " ".join(f"{a} {b}" for a, b in k),
                "cpu": lambda k: f"CPU {k}"}[scope](key)
        hours = limit.period_ns / 3600e9
        incident = Incident(
            kind="predictive_failure", key=f"predict:{scope}:{key}", first_wall_ns=event.wall_ns,
            last_wall_ns=event.wall_ns, severity="uncorrected" if scope == "cpu" else "recoverable",
            containment="none_needed", id=next(self.ids),
            summary=f"Predictive failure: {limit.threshold} corrected errors within "
                    f"{hours:g} h on {what}; replace or offline it before it fails uncorrected")
        incident.add_member(event.id, event.kind)
        if scope == "page":
            incident.pfn = key
            incident.phys_addr = key << PAGE_SHIFT
        elif scope == "location":
            incident.location = dict(key)
        elif isinstance(key, int):
            incident.cpu = key
        incident.blast_radius = {"scope": scope, "key": str(key)}
        self.tripped.append(incident)
        if self.on_incident is not None:
            self.on_incident(incident, event)
