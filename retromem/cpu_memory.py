"""Let glibc keep large freed buffers for reuse, so that CPU training steps do not page-fault.

glibc's ``malloc`` serves every request above its mmap threshold (at most 32 MiB unless told
otherwise) with a fresh ``mmap`` and gives the pages back on ``free``. A training step allocates
and frees several such tensors (a (30522, 384) float32 gradient of the word embeddings is 47 MB,
a chunk of vocabulary logits 33 MB), so every step touches fresh pages and pays a page fault per
4 KiB: measured on MiniLM at batch 16 x 128 on one core, 16% of a ``bow`` step and 30% of a
``retromae`` step. Raising the mmap threshold (and the trim threshold, so that the top of the heap
is not returned either) makes freed buffers reusable, as tcmalloc or jemalloc would.

:func:`keep_freed_memory` does this through ``mallopt`` when the C library is glibc. It does
nothing elsewhere, when ``RETROMEM_MALLOC_TUNING=0``, or when the user already set
``MALLOC_MMAP_THRESHOLD_`` or preloads another allocator. The process then keeps its peak heap
instead of returning it to the system between steps, which is what a training process wants.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Requests up to this size come from the heap (freed memory is reused) instead of fresh mmaps.
DEFAULT_THRESHOLD = 1 << 30

_applied: bool | None = None


def keep_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes; True when they are now in effect.

    Idempotent: only the first call acts. Safe to call anywhere; see the module docstring for when
    it declines.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    reason = _reason_to_skip()
    if reason:
        log.debug("allocator tuning skipped: %s", reason)
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
        trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, int(threshold))
    except (OSError, AttributeError) as err:
        log.debug("allocator tuning skipped: %s", err)
        return False
    _applied = bool(mmap_ok and trim_ok)
    log.debug("glibc mmap/trim thresholds set to %d bytes: %s", threshold, _applied)
    return _applied


def _reason_to_skip() -> str | None:
    if os.environ.get("RETROMEM_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return "RETROMEM_MALLOC_TUNING=0"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return "MALLOC_MMAP_THRESHOLD_ is set by the user"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator is preloaded"
    return None
