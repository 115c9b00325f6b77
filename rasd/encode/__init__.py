"""Encoders: build CPER bytes from the decoder's typed objects (tests, the arm64 lab injector)."""
