"""The loader child's compile failures carry clang's reason, not only bcc's
"Failed to compile BPF module" (seen in the arm64 lab: headers not found)."""
from __future__ import annotations

from rasd.sources.bpf_loader import _diagnostics

# stderr of the loader child in the 6.1 arm64 lab guest, /lib/modules/<abi>/source absent
LAB_STDERR = b"""modprobe: FATAL: Module kheaders not found in directory /lib/modules/6.1.0-56-arm64
<built-in>:1:10: fatal error: './include/linux/kconfig.h' file not found
#include "./include/linux/kconfig.h"
         ^~~~~~~~~~~~~~~~~~~~~~~~~~~
1 error generated.
Unable to find kernel headers. Try rebuilding kernel with CONFIG_IKHEADERS=m (module) or \
installing the kernel development package for your running kernel version.
"""


def test_reason_of_a_failed_compile_is_kept():
    d = _diagnostics(LAB_STDERR)
    assert "kconfig.h' file not found" in d and "Unable to find kernel headers" in d
    assert "#include" not in d and len(d) <= 600


def test_nothing_to_add_when_stderr_is_quiet():
    assert _diagnostics(b"") == "" and _diagnostics(b"some warning\n") == ""
