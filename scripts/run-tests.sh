#!/usr/bin/env bash
# Run the test suite as CI does (root: the host tests load real eBPF programs).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
