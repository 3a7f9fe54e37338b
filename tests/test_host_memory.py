"""funcmod.host_memory: with glibc told to keep freed memory, a jitted program whose temporary
buffer is large stops faulting in fresh pages on every call; called too late, it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from funcmod.host_memory import HostMemoryError, host_memory_mode, retain_host_memory

# A program with an 85 MB temporary (the outer product) that XLA must materialise for the dot;
# prints the minor page faults of each of 9 calls after 12 warm-up calls. With the memory
# retained, the heap still grows now and then, by one buffer, when a buffer is asked for
# before the last one is back (a call faults then; in 80 calls the resident memory grew by
# 0.56 GB, seven buffers, and settled): the test reads the median call.
_SCRIPT = """
import json, resource, sys
from funcmod.host_memory import host_memory_mode, retain_host_memory
retained = retain_host_memory() if sys.argv[1] == "retain" else None
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.outer(x, x) @ x)
x = jnp.ones((4600,), jnp.float32)
for _ in range(12):
    f(x).block_until_ready()
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"retained": retained, "mode": host_memory_mode(), "faults": sorted(faults)[4]}))
"""
_PAGES = 4600 * 4600 * 4 // 4096  # the temporary's 4 KB pages: faulted in afresh by default


def _faults_per_call(mode: str, **environment: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **environment},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _transparent_huge_pages() -> bool:
    """Linux with glibc 2.35 or later (its ``glibc.malloc.hugetlb`` tunable) and the kernel's
    transparent huge pages on for ``madvise`` (what glibc asks with) or always."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except (OSError, ValueError):
        return False
    numbers = version.removeprefix("glibc ").split(".")
    glibc = tuple(int(n) for n in numbers[:2]) if version.startswith("glibc ") else (0, 0)
    return glibc >= (2, 35) and ("[madvise]" in thp or "[always]" in thp)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_stops_the_page_faults_of_every_call():
    default = _faults_per_call("default")
    retained = _faults_per_call("retain")
    assert retained["retained"] is True
    assert (default["mode"], retained["mode"]) == ("default", "retained")
    assert default["faults"] > _PAGES / 2, default  # the median call
    assert retained["faults"] < _PAGES / 100, retained


@pytest.mark.skipif(not _transparent_huge_pages(), reason="glibc >= 2.35 and THP madvise")
def test_huge_pages_fault_each_buffer_in_by_two_megabytes():
    """Measured here: 20,665 faults per call by default, 225 with the tunable (an 85 MB
    buffer is about 41 huge pages; the rest are small allocations)."""
    huge = _faults_per_call("default", GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    assert huge["mode"] == "huge_pages"
    assert huge["faults"] < _PAGES / 20, huge


def test_host_memory_mode_reads_the_tunable_among_others(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1")
    assert host_memory_mode() == "huge_pages"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=2")  # hugetlbfs, not THP
    assert host_memory_mode() == "default"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=10")
    assert host_memory_mode() == "default"


def test_refuses_after_jax_has_started():
    import jax.numpy as jnp

    jnp.ones(1).block_until_ready()  # the backends exist from here on
    with pytest.raises(HostMemoryError, match="before JAX's first computation"):
        retain_host_memory()
