"""Command-line entry points: ``rasd`` (the daemon) and ``rasdctl``."""
