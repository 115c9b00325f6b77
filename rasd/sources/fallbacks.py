"""The sources besides the BPF ring buffer, adapted for the daemon's main loop:

- ``InstanceSource``: the rasd tracefs instance. At start it delivers what the
  instance buffered while rasd was down; while running, copies the BPF path already
  delivered are dropped (one ``Deduper`` sees both paths).
- ``KmsgSource``: the kernel's own [Hardware Error] / Memory failure lines from
  /dev/kmsg, for lockdown=confidentiality where kprobes and tracefs are refused.

Both hand the pipeline what a BPF source would: source records (tracepoint entries)
or Events (kmsg), with counters the daemon exports.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from .. import events as ev
from ..decode.esr import decode_esr
from ..events import Event
from .records import Record

log = logging.getLogger("rasd.sources")


def _load_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _save_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError as exc:  # costs exactness after a restart, never the daemon
        log.warning("cannot save %s: %s", path, exc)


class InstanceSource:
    STATE = "trace-instance.json"

    def __init__(self, name: str, buffer_size_kb: int, state_dir: str | Path) -> None:
        from .trace_instance import Deduper, TraceInstance
        self.state_path = Path(state_dir) / self.STATE
        self.instance = TraceInstance(name=name, buffer_size_kb=buffer_size_kb,
                                      loss_state=_load_json(self.state_path))
        self.deduper = Deduper()
        self.delivered = 0
        self.duplicates = 0

    def setup(self) -> "InstanceSource":
        self.instance.setup()  # TracefsUnavailable / TracefsLockedDown propagate
        return self

    def fds(self) -> list[int]:
        return self.instance.fds()

    def drain(self, feed: Callable[[Record], Any]) -> int:
        """Deliver the instance's entries the BPF path has not delivered."""
        from .trace_instance import dedup_payload
        n = 0
        for entry in self.instance.drain():
            fmt = self.instance.format(entry.key)
            if fmt is not None and not self.deduper.offer(
                    "tracefs", entry.key, dedup_payload(fmt, entry.raw), entry.ts_ns):
                self.duplicates += 1
                continue
            feed(self._record(entry))
            n += 1
        self.delivered += n
        _save_json(self.state_path, self.instance.current_loss_state())
        return n

    def offer_bpf(self, rec: Record, fmt: Any) -> bool:
        """Register a tracepoint record the BPF path read; False if the instance
        already delivered it (then the BPF copy is the duplicate)."""
        from .trace_instance import dedup_payload
        key = f"{fmt.system}:{fmt.name}"
        if self.deduper.offer("bpf", key, dedup_payload(fmt, rec.blob), rec.ktime_ns):
            return True
        self.duplicates += 1
        return False

    @staticmethod
    def _record(entry: Any) -> Record:
        pid = int(entry.fields.get("common_pid", 0) or 0)
        return Record("tp", _probe_reading(entry.key, entry.event), 0, frozenset({"tracefs_instance"}), entry.cpu, pid, pid,
                      "", entry.ts_ns, {"entry_len": len(entry.raw),
                                        "captured_len": len(entry.raw)}, entry.raw)

    def lost(self) -> int:
        return int(self.instance.counters.lost)

    def close(self) -> None:
        self.instance.close()


def _probe_reading(key: str, event: str) -> str:
    """The probe whose records this tracepoint's entries are (sigbus <- signal_generate);
    the ras:* probes are named after their events."""
    from .probes import PROBES
    return next((p.name for p in PROBES if key in p.events), event)


class KmsgSource:
    STATE = "kmsg-cursor.json"

    def __init__(self, state_dir: str | Path) -> None:
        from .kmsg import KmsgCursor, KmsgReader, RasLineParser
        self.state_path = Path(state_dir) / self.STATE
        saved = _load_json(self.state_path)
        cursor = KmsgCursor.from_dict(saved) if saved else None
        self.reader = KmsgReader(cursor=cursor)
        self.parser = RasLineParser()
        self.events = 0

    def open(self) -> "KmsgSource":
        self.reader.open()
        return self

    def fileno(self) -> int:
        return self.reader.fileno()

    def drain(self, feed: Callable[[Event], Any], flush: bool = False,
              commit: Callable[[], Any] | None = None) -> int:
        """Feed the RAS events of the records available now; then ``commit()`` (make
        what was fed durable) before the cursor is saved past those records."""
        found = self.parser.feed_all(self.reader.read())
        if flush:
            found += self.parser.flush()
        for item in found:
            feed(self._event(item))
        self.events += len(found)
        if found and commit is not None:
            commit()
        if self.reader.cursor is not None:
            _save_json(self.state_path, self.reader.cursor.as_dict())
        return len(found)

    @staticmethod
    def _event(item: Any) -> Event:
        fields = {"kmsg_kind": item.kind, "seq": item.seq, **item.fields}
        event = Event(kind=ev.KMSG, source="kmsg", wall_ns=time.time_ns(),
                      mono_ns=item.ts_us * 1000, fields=fields,
                      raw="\n".join(item.lines).encode())
        if item.kind == "serror" and isinstance(item.fields.get("esr"), int):
            event.esr = decode_esr(item.fields["esr"] & (1 << 64) - 1)
        return event

    def lost(self) -> int:
        return int(self.reader.counters.lost)

    def close(self) -> None:
        self.reader.close()
