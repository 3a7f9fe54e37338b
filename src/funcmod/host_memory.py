"""Host memory on CPU: keep the memory XLA frees for its next execution.

XLA:CPU allocates one buffer for all the temporaries of a compiled program on every execution
and frees it when the execution ends. Under glibc's default ``malloc`` a buffer that large is
mapped from the operating system (``mmap``) and unmapped again when freed (buffers over 32 MB
always are, and XLA's worker threads allocate from per-thread arenas whose heaps hold at most
64 MB), so every step writes to fresh pages and the kernel faults each one in: the SimpleCNN
train step at batch 256 (a 65 MB temporary buffer) takes 16,000 page faults per step, half of
its time (docs/pitfalls.md, "Fresh pages on every step"). A ``lax.scan`` epoch allocates once
per dispatch, which is why it did not show there.

``retain_host_memory()`` sets glibc's allocator to keep freed memory: one arena for every thread
(``M_ARENA_MAX=1``: a buffer of any size comes from the main heap), no mapped chunks
(``M_MMAP_MAX=0``) and no trimming of the heap (``M_TRIM_THRESHOLD`` at its maximum). The price
is memory (the process keeps its peak heap instead of returning it to the system) and the one
arena's lock: a small model's step, whose Python thread and XLA's threads allocate at once, ran
2-2.5x slower. Use it for large programs, not for steps of tens of microseconds. The same
settings from the environment, before Python starts::

    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 python train.py

They apply to every allocation of the process, PyTorch's CPU tensors included.

A lighter setting keeps the per-thread arenas and returns memory as before but faults each
buffer in by 2 MB pages instead of 4 KB ones: glibc's transparent huge page tunable (glibc 2.35
or later, with the kernel's ``transparent_hugepage`` in ``madvise`` or ``always`` mode), read
from the environment when the process starts, so there is no call for it::

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python train.py

The same SimpleCNN step then takes about 200 page faults instead of 16,000 and runs about as
fast as with the memory retained, with no slowdown of small steps and no growth of the heap
(docs/pitfalls.md). ``host_memory_mode()`` reports it as ``'huge_pages'``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["HostMemoryError", "host_memory_mode", "retain_host_memory"]

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_ENVIRONMENT = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
_retained = False


class HostMemoryError(RuntimeError):
    """``retain_host_memory`` was called too late or glibc refused a setting."""


def _jax_backends_started() -> bool:
    """Whether JAX has created its backends (and XLA its threads, bound to their arenas)."""
    jax_module = sys.modules.get("jax")
    if jax_module is None:
        return False
    # Private, but the one place JAX records it; without it, the check is skipped.
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def retain_host_memory() -> bool:
    """Keep freed host memory in the process for reuse (glibc ``mallopt``, see the module).

    Call it once, before JAX's first computation: threads that have allocated already keep
    their own arenas, so a later call would take effect only in part.

    Returns:
      True where the settings took effect (Linux with glibc); False where the C library has no
      ``mallopt`` (macOS, musl), with nothing changed.

    Raises:
      HostMemoryError: JAX's backends already exist, or glibc refused a setting.
    """
    if _jax_backends_started():
        raise HostMemoryError(
            "retain_host_memory() must run before JAX's first computation (its backends exist "
            "already; XLA's threads keep the arenas they allocated from)"
        )
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    for param, value in _SETTINGS:
        if mallopt(param, value) != 1:  # mallopt returns 1 on success
            raise HostMemoryError(f"glibc's mallopt refused parameter {param} = {value}")
    global _retained
    _retained = True
    return True


def _huge_pages_requested() -> bool:
    """Whether ``GLIBC_TUNABLES`` (colon-separated ``name=value`` pairs) asks ``malloc`` for
    transparent huge pages (``glibc.malloc.hugetlb=1``; ``2`` asks for reserved hugetlbfs
    pages instead, which a default kernel has none of)."""
    pairs = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return "glibc.malloc.hugetlb=1" in (pair.strip() for pair in pairs)


def host_memory_mode() -> str:
    """``'retained'`` after ``retain_host_memory()``; ``'environment'`` where the process
    started with all three ``MALLOC_*`` variables of the module docstring set;
    ``'huge_pages'`` where it started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``;
    otherwise ``'default'`` (the C library's own behaviour). The first that holds is named.
    Benchmarks record it beside their figures."""
    if _retained:
        return "retained"
    if all(name in os.environ for name in _ENVIRONMENT):
        return "environment"
    if _huge_pages_requested():
        return "huge_pages"
    return "default"
