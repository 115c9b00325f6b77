"""rasd configuration: TOML (stdlib tomllib), every key with a default, validated.

The daemon runs with no config file at all: every key below has its default. A
config that names an unknown key, or gives a value of the wrong type or out of
range, is refused with a message naming the key (the daemon then exits 78,
EX_CONFIG, which its systemd unit does not restart on).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

DEFAULT_PATH = Path("/etc/rasd/rasd.toml")
EX_CONFIG = 78


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Key:
    type: type | tuple[type, ...]
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _not_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _power_of_two(v: Any) -> str | None:
    return None if v > 0 and v & (v - 1) == 0 else "must be a power of two"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


SCHEMA: dict[str, dict[str, Key]] = {
    "daemon": {
        "state_dir": Key(str, "/var/lib/rasd", "persistent state: store, BERT digests, kmsg cursor"),
        "runtime_dir": Key(str, "/run/rasd", "status socket lives here"),
        "log_level": Key(str, "info", "debug, info, warning, error",
                         _one_of("debug", "info", "warning", "error")),
        "watchdog_fallback_s": Key((int, float), 10, "main-loop wake-up when systemd gives no "
                                   "watchdog interval", _positive),
    },
    "bpf": {
        "ringbuf_pages": Key(int, 64, "BPF ring buffer size in pages (power of two)",
                             _power_of_two),
        "enabled": Key(bool, True, "load the eBPF probes (false: tracefs/kmsg/BERT only)"),
        "loader_timeout_s": Key((int, float), 120, "how long the probe loader child may take "
                                "to compile and attach (bcc's compile is slow on small or "
                                "busy machines)", _positive),
        "cache_dir": Key(str, "/var/cache/rasd", "compiled-probe cache: a start on a kernel "
                         "it has compiled for before loads the bytecode instead of running "
                         "clang (seconds to minutes, ~130 MB) again; must be writable by root "
                         "only; empty: always compile"),
        "vm_exit_probes": Key(str, "off", "the KVM probes that run on every VM exit "
                              "(handle_exit_early, kvm_handle_guest_abort): off (guest SErrors "
                              "and SEAs are still seen on their rare paths: apei_claim_sea, "
                              "arm64_is_fatal_ras_serror, kvm_inject_vabt; only the ESR of a "
                              "claimed guest SEA is lost), fentry (where BPF trampolines work; "
                              "the ESR, FAR and HPFAR of every guest SEA), kprobe (fentry, else "
                              "a kprobe: a trap on every exit)", _one_of("off", "fentry", "kprobe")),
    },
    "tracefs": {
        "instance": Key(str, "rasd",
                        "tracefs instance that buffers ras:* and SIGBUS while rasd is down"),
        "buffer_size_kb": Key(int, 1024, "per-CPU buffer of that instance", _positive),
    },
    "bert": {
        "enabled": Key(bool, True, "read the Boot Error Record Table at start"),
        "path": Key(str, "/sys/firmware/acpi/tables", "tables directory or region file"),
    },
    "metrics": {
        "enabled": Key(bool, True, "serve Prometheus metrics"),
        "address": Key(str, "0.0.0.0", "bind address of the metrics endpoint"),
        "port": Key(int, 10199, "port of the metrics endpoint (outside the fully allocated "
                    "9100-9999 exporter range)", lambda v: None if 0 < v < 65536 else
                    "must be 1-65535"),
        "tls_cert": Key(str, "", "PEM certificate: serve HTTPS when set"),
        "tls_key": Key(str, "", "PEM private key for tls_cert (empty: inside the cert file)"),
        "max_location_labels": Key(int, 256, "distinct memory-location label values before "
                                   "\"_other\"", _positive),
        "max_vm_labels": Key(int, 32, "distinct VM label values before \"_other\"", _positive),
    },
    "journal": {
        "enabled": Key(bool, True, "send alerts to journald (stderr when journald is absent)"),
        "rate_limit_per_key": Key(int, 5, "alerts per alert key per interval; the rest are "
                                  "counted, not sent", _positive),
        "rate_limit_interval_s": Key((int, float), 600, "...the interval", _positive),
    },
    "correlate": {
        "window_s": Key((int, float), 10, "events of one fault join an incident while they come "
                        "within this many seconds of its last event", _positive),
    },
    "thresholds": {
        "page_count": Key(int, 50, "corrected errors on one page that make a predictive "
                          "failure", _positive),
        "page_period_h": Key((int, float), 24, "...within this many hours", _positive),
        "location_count": Key(int, 100, "corrected errors on one memory location (DIMM "
                              "node/card/module/bank/rank/row)", _positive),
        "location_period_h": Key((int, float), 24, "...within this many hours", _positive),
        "cpu_count": Key(int, 18, "corrected errors on one CPU", _positive),
        "cpu_period_h": Key((int, float), 24, "...within this many hours", _positive),
    },
    "actions": {
        "page_offline": Key(str, "off", "soft-offline a page that crossed its threshold: off, "
                            "dry-run or on", _one_of("off", "dry-run", "on")),
        "cpu_offline": Key(str, "off", "offline a CPU that crossed its threshold: off, dry-run "
                           "or on", _one_of("off", "dry-run", "on")),
        "max_pages_per_day": Key(int, 64, "never soft-offline more pages than this a day",
                                 _positive),
        "max_cpu_share": Key(float, 0.125, "never have more than this share of CPUs offline",
                             lambda v: None if 0 < v < 1 else "must be between 0 and 1"),
    },
    "store": {
        "enabled": Key(bool, True, "keep events and incidents in the SQLite store"),
        "path": Key(str, "", "store file; empty: rasd.db in daemon.state_dir "
                    "(/var/lib/rasd/rasd.db)"),
        "batch_events": Key(int, 4000, "commit when this many events are pending", _positive),
        "batch_ms": Key(int, 200, "commit pending events at least this often (ms)", _positive),
        "retention_days": Key((int, float), 90, "delete events older than this; 0: keep all",
                              _not_negative),
        "max_size_mb": Key((int, float), 1024, "delete the oldest events beyond this size; "
                           "0: no limit", _not_negative),
        "retention_interval_s": Key((int, float), 600, "how often retention runs",
                                    _positive),
        "integrity_check": Key(str, "always", "PRAGMA integrity_check at open: always, or "
                               "after_crash (only when the last writer left its WAL behind; "
                               "the check reads the whole file)",
                               _one_of("always", "after_crash")),
    },
    "record": {
        "path": Key(str, "", "append every source record here as JSON lines (replayable with "
                    "rasd --replay); empty: off"),
    },
}


@dataclass
class Config:
    values: dict[str, dict[str, Any]]
    path: Path | None = None

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]


def defaults() -> Config:
    return Config({s: {k: key.default for k, key in keys.items()} for s, keys in SCHEMA.items()})


def load(path: str | Path | None = None, required: bool = False) -> Config:
    """Load ``path`` (default /etc/rasd/rasd.toml) over the defaults.

    A missing default file is fine (defaults); a missing file that was asked for
    explicitly (``required``) is an error."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: no such file")
        return defaults()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    cfg = validate(data)
    cfg.path = path
    return cfg


def validate(data: dict[str, Any]) -> Config:
    cfg = defaults()
    for section, table in data.items():
        keys = SCHEMA.get(section)
        if keys is None:
            raise ConfigError(f"unknown section [{section}] (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a table")
        for name, value in table.items():
            cfg.values[section][name] = _check(section, name, value, keys)
    return cfg


def _check(section: str, name: str, value: Any, keys: dict[str, Key]) -> Any:
    key = keys.get(name)
    if key is None:
        raise ConfigError(f"unknown key {section}.{name} (known in [{section}]: "
                          f"{', '.join(keys)})")
    # bool is an int subclass: a "true" where a number belongs is a mistake, not 1
    if isinstance(value, bool) and key.type is not bool or not isinstance(value, key.type):
        want = key.type.__name__ if isinstance(key.type, type) else \
            " or ".join(t.__name__ for t in key.type)
        raise ConfigError(f"{section}.{name}: expected {want}, got {type(value).__name__} "
                          f"{value!r}")
    if key.check is not None:
        complaint = key.check(value)
        if complaint:
            raise ConfigError(f"{section}.{name} = {value!r}: {complaint}")
    return value
