"""Sinks: the SQLite store, Prometheus metrics, journald alerts and actions."""
