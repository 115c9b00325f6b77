"""Wire the pipeline from the config: decode -> classify -> correlate -> thresholds -> sinks.

The daemon and ``rasd --replay`` both build their pipeline here, so a replayed
recording takes exactly the path live events take.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from .classify.severity import classify
from .classify.thresholds import Limit, Thresholds
from .config import Config
from .correlate.incidents import Correlator
from .decode.event import EventDecoder
from .events import Incident
from .pipeline import Pipeline, Sink
from .sinks.actions import Actions

HOUR_NS = 3600 * 10**9


def host_lookups() -> dict[str, Any]:
    """What the correlator asks the running host: page state, VM names, DIMM labels,
    MPIDR -> CPU, PCIe -> NIC. Replays on another machine pass none of these."""
    from .classify.blast_radius import PageInspector
    from .classify.cpu_map import CpuMap
    from .classify.dimm import DimmTable
    from .classify.netdev import netdevs_for_pci
    from .classify.vm import VmCache
    return {"blast_radius": PageInspector().blast_radius, "vm_of": VmCache().lookup,
            "dimm_of": DimmTable().lookup, "cpu_of_mpidr": CpuMap.from_host(),
            "netdevs_of": netdevs_for_pci}


@dataclass
class Assembly:
    pipeline: Pipeline
    correlator: Correlator
    thresholds: Thresholds
    actions: Actions


def build(cfg: Config, decoder: EventDecoder, sinks: list[Sink],
          on_incident: Callable[[Incident], None] | None = None,
          on_count: Callable[[Incident], None] | None = None,
          first_event_id: int = 1, first_incident_id: int = 1,
          blast_radius: Callable[[int], Any] | None = None,
          vm_of: Callable[[int, int, str, int | None], Any] | None = None,
          cpu_of_mpidr: Callable[[int], int | None] | None = None,
          netdevs_of: Callable[[str], list] | None = None,
          dimm_of: Callable[[int], dict | None] | None = None) -> Assembly:
    incident_ids = itertools.count(first_incident_id)  # shared: one numbering for incidents
    notify = on_incident or (lambda incident: None)
    correlator = Correlator(window_ns=int(cfg["correlate"]["window_s"] * 10**9), ids=incident_ids,
                            blast_radius=blast_radius, vm_of=vm_of, on_change=notify,
                            on_count=on_count,
                            netdevs_of=netdevs_of, dimm_of=dimm_of)
    actions = Actions(cfg["actions"]["page_offline"], cfg["actions"]["cpu_offline"],
                      cfg["actions"]["max_pages_per_day"], cfg["actions"]["max_cpu_share"])

    def predictive(incident: Incident, event: Any) -> None:
        # A threshold verdict is complete when it trips and nothing ever closes it later:
        # closed, it is stored as final, alerted (journal alerts only closed incidents
        # below critical) and counted in rasd_incidents_total.
        incident.closed = True
        notify(incident)
        actions.on_predictive(incident)

    t = cfg["thresholds"]
    limits = {scope: Limit(t[f"{scope}_count"], int(t[f"{scope}_period_h"] * HOUR_NS))
              for scope in ("page", "location", "cpu")}
    thresholds = Thresholds(limits, ids=incident_ids, on_incident=predictive,
                            cpu_of_mpidr=cpu_of_mpidr)
    pipeline = Pipeline(decoder, sinks, stages=[classify, correlator, thresholds],
                        first_event_id=first_event_id)
    return Assembly(pipeline, correlator, thresholds, actions)
