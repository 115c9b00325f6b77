"""Hand-built CPER test vectors (see handbuilt.py)."""
