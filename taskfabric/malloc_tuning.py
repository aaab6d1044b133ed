"""glibc malloc settings for processes that move megabyte payloads (issue 15).

CPython hands every buffer above 512 bytes to the C library's malloc. glibc serves one of a MiB
or more with a fresh `mmap` and gives it back with `munmap` when it is freed (and trims its heap
whenever more than a few MiB are free at its top), so each new payload buffer is new pages: one
page fault per 4 KiB touched. On this project's 2-core VMs a fault costs 3-4 µs, so copying a
1 MiB payload cost 0.9 ms instead of 0.03 ms: the faults, not the copying, were most of what a
large task cost the forwarder, the agent and the client (benchmarks/README.md, 2026-12-01).

`tune_malloc()` keeps buffers up to `MMAP_THRESHOLD_BYTES` in the heap and lets up to
`TRIM_THRESHOLD_BYTES` of free memory stay there, so the pages of a freed payload serve the next
one. The price is memory a process keeps after a burst of large payloads (at most the trim
threshold above what it uses, per malloc arena) instead of returning it at once.

Set `TASKFABRIC_MALLOC_TUNING=off` to leave malloc as it is. A no-op where the C library is not
glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "tune_malloc"]

#: buffers up to this size come from the heap, not from their own mmap (glibc's own dynamic
#: threshold stops at 32 MiB on 64-bit)
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: free memory at the top of a heap kept for the next buffers, not given back to the system
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_OFF = {"0", "off", "no", "false"}
_done: list[bool] = []


def tune_malloc() -> bool:
    """Apply the settings once per process; whether they are in effect."""
    if _done:
        return _done[0]
    _done.append(_apply())
    return _done[0]


def _apply() -> bool:
    if os.environ.get("TASKFABRIC_MALLOC_TUNING", "").strip().lower() in _OFF or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not _is_glibc(libc):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the trim threshold first: setting either turns glibc's dynamic adjustment off
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    )


def _is_glibc(libc: ctypes.CDLL) -> bool:
    try:
        version = libc.gnu_get_libc_version
    except AttributeError:
        return False
    version.restype = ctypes.c_char_p
    return bool(version())
