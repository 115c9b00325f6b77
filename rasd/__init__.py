"""rasd: the RAS daemon for arm64 servers.

The package mirrors the pipeline:

    sources -> decode -> classify -> correlate -> sinks

``decode`` turns raw bytes (ESR values, CPER status blocks and records, BERT)
into typed objects; ``encode`` builds CPER bytes from the same objects (tests
and the arm64 lab's injector use it).
"""

__version__ = "0.1.0"
