"""Give freed heap memory back to the operating system (glibc ``malloc_trim``).

A long live run allocates and frees many medium-sized numpy/torch buffers on several threads
(transport, model, sink writers); glibc keeps the freed pages in per-thread arenas, so the
resident size creeps up although nothing is leaked (tracemalloc: Python-level memory flat over
a run). The engine calls :func:`trim_heap` at every run boundary: measured on the 2-core
development machine, 6 runs x 3,000 frames grew 447 -> 458 MB without it, 424 -> 430 MB with.
A no-op where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

__all__ = ["trim_heap"]

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


def trim_heap() -> bool:
    """Release free heap pages to the OS; True when the C library could do it."""
    fn = _malloc_trim()
    if fn is None:
        return False
    try:
        fn(0)
    except OSError as exc:  # never let housekeeping fail a run
        log.debug("malloc_trim failed: %s", exc)
        return False
    return True
