"""funcmod.host_memory: with glibc told to keep freed memory, a jitted program whose temporary
buffer is large stops faulting in fresh pages on every call; called too late, it refuses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from funcmod.host_memory import HostMemoryError, retain_host_memory

# A program with an 85 MB temporary (the outer product) that XLA must materialise for the dot;
# prints the minor page faults of each of 9 calls after 12 warm-up calls. With the memory
# retained, the heap still grows now and then, by one buffer, when a buffer is asked for
# before the last one is back (a call faults then; in 80 calls the resident memory grew by
# 0.56 GB, seven buffers, and settled): the test reads the median call.
_SCRIPT = """
import json, resource, sys
from funcmod.host_memory import retain_host_memory
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
print(json.dumps({"retained": retained, "faults": sorted(faults)[4]}))
"""


def _faults_per_call(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_stops_the_page_faults_of_every_call():
    default = _faults_per_call("default")
    retained = _faults_per_call("retain")
    assert retained["retained"] is True
    pages = 4600 * 4600 * 4 // 4096  # the temporary's pages: faulted in afresh by default
    assert default["faults"] > pages / 2, default  # the median call
    assert retained["faults"] < pages / 100, retained


def test_refuses_after_jax_has_started():
    import jax.numpy as jnp

    jnp.ones(1).block_until_ready()  # the backends exist from here on
    with pytest.raises(HostMemoryError, match="before JAX's first computation"):
        retain_host_memory()
