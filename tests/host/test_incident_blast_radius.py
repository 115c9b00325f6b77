"""End to end on this host: an uncorrected memory error at the physical address of a page
this test process owns becomes an incident whose blast radius names the page kind and
this process's cgroup, read from /proc/kpageflags and /proc/kpagecgroup at once."""

from __future__ import annotations

import mmap
import os

import pytest

from rasd.assembly import host_lookups
from rasd.classify.blast_radius import pfn_of
from rasd.classify.severity import classify
from rasd.correlate.incidents import PAGE_SHIFT, Correlator
from rasd.decode.event import EventDecoder
from rasd.encode import cper as enc
from rasd.pipeline import Pipeline
from rasd.sources.records import Record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: PFNs and kpageflags")


def test_incident_names_the_anonymous_page_and_its_cgroup():
    buf = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf[:8] = b"poisoned"  # touch it: an anonymous page of this process now backs it
    import ctypes
    vaddr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    pfn = pfn_of(os.getpid(), vaddr)
    assert pfn
    block = enc.encode_status_block([enc.section(
        enc.memory_error(physical_addr=pfn << PAGE_SHIFT, error_type=3), enc.RECOVERABLE)])
    seen = []
    lookups = host_lookups()
    corr = Correlator(blast_radius=lookups["blast_radius"], on_change=seen.append)
    p = Pipeline(EventDecoder({}), stages=[classify, corr])
    p.feed(Record("ghes", "ghes_do_proc", 1, frozenset(), 0, 0, 0, "swapper/0", 1,
                  {"notify_type": 0}, block))
    inc = seen[-1]
    radius = inc.blast_radius
    assert radius["scope"] == "cgroup" and radius["kind"] == "anon", radius
    own = open("/proc/self/cgroup").read()
    assert radius["cgroup"]["path"] in own
    assert "touches" in inc.summary
    del buf
