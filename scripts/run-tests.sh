#!/usr/bin/env bash
# The test suite as CI runs it, as root (the host tests load real eBPF programs; the lab
# boots Debian's arm64 kernels under QEMU and proves every probe there).
#
#   scripts/run-tests.sh              pytest (tests/unit, tests/host), then the arm64 lab
#   RASD_LAB=0 scripts/run-tests.sh   pytest only (the lab takes ~20 min with a cold cache)
#   scripts/run-tests.sh ARGS...      pytest ARGS only
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest
if [ "${RASD_LAB:-1}" = 0 ]; then
    echo "run-tests: RASD_LAB=0: arm64 lab skipped"
    exit 0
fi
sh tests/lab/setup-host.sh
exec .venv/bin/python tests/lab/run.py
