"""Correlation: group the events of one real-world fault into an incident."""
