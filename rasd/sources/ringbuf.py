"""Consume a BPF ring buffer from user space by mmap-ing its map fd (no bcc).

Kernel layout of a BPF_MAP_TYPE_RINGBUF mapping (kernel/bpf/ringbuf.c):
  offset 0:          consumer page (read-write): u64 consumer position
  offset PAGE:       producer page (read-only): u64 producer position
  offset 2*PAGE:     data, max_entries bytes, mapped twice back to back so a
                     record that wraps is still contiguous
Each record: 8-byte header {u32 len | BUSY bit 31 | DISCARD bit 30, u32 pg_off},
then len bytes, the whole padded to 8 bytes. Positions only grow; the data
offset is position & (max_entries - 1).

Wake-up: the map fd is pollable (EPOLLIN when data is available), so the
daemon sleeps in epoll and never busy-polls.
"""
from __future__ import annotations

import mmap
import select
import struct
import threading
from typing import Callable, Iterator

from . import bpfsys

BPF_MAP_TYPE_RINGBUF = 27
_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    """Reader for one ring buffer map fd (the caller keeps the fd open)."""

    def __init__(self, map_fd: int):
        info = bpfsys.map_info(map_fd)
        if info.type != BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"map fd {map_fd} is type {info.type}, not a ring buffer")
        self.fd = map_fd
        self.size = info.max_entries
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(map_fd, page + 2 * self.size, mmap.MAP_SHARED,
                               mmap.PROT_READ, offset=page)
        self._data_off = page
        self._view = memoryview(self._prod)
        # Lock acquire/release executes acquire/release barriers in C (pthread):
        # orders our header load before the record loads on weakly ordered CPUs
        # (arm64); x86 needs nothing.
        self._fence = threading.Lock()
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def close(self) -> None:
        self._epoll.close()
        self._view.release()
        self._prod.close()
        self._cons.close()

    def _barrier(self) -> None:
        with self._fence:
            pass

    @property
    def consumer_pos(self) -> int:
        return _U64.unpack_from(self._cons, 0)[0]

    @property
    def producer_pos(self) -> int:
        return _U64.unpack_from(self._prod, 0)[0]

    def available(self) -> int:
        return self.producer_pos - self.consumer_pos

    def records(self) -> Iterator[bytes]:
        """Yield every committed record now in the buffer (copies), advancing the
        consumer position after each; stops at the first record still being written."""
        cons = self.consumer_pos
        prod = self.producer_pos
        self._barrier()
        while cons < prod:
            off = self._data_off + (cons & self._mask)
            (hdr,) = _U32.unpack_from(self._view, off)
            if hdr & _BUSY:
                break
            self._barrier()
            length = hdr & ~(_BUSY | _DISCARD)
            if not hdr & _DISCARD:
                yield bytes(self._view[off + _HDR:off + _HDR + length])
            cons += (length + _HDR + 7) & ~7
            _U64.pack_into(self._cons, 0, cons)  # frees the space for the producer
            if cons >= prod:
                prod = self.producer_pos
                self._barrier()

    def poll(self, timeout: float | None = None) -> bool:
        """Sleep until the kernel signals data (or timeout, seconds). True if ready."""
        if self.available() > 0:
            return True
        return bool(self._epoll.poll(-1 if timeout is None else timeout))

    def drain(self, handle: Callable[[bytes], None]) -> int:
        n = 0
        for rec in self.records():
            handle(rec)
            n += 1
        return n


class LostCounter:
    """The in-kernel per-CPU count of records that did not fit the ring buffer."""

    def __init__(self, map_fd: int):
        self.fd = map_fd

    def per_cpu(self) -> list[int]:
        return bpfsys.lookup_percpu_u64(self.fd, 0)

    def total(self) -> int:
        return sum(self.per_cpu())
