"""Test configuration: JAX in its strictest mode, so silent promotion and broadcasting fail.

* ``jax_numpy_dtype_promotion="strict"``: mixing float32 and float64 (or int and float arrays)
  raises instead of promoting.
* ``jax_numpy_rank_promotion="raise"``: adding a (3,) array to a (2, 3) array raises instead of
  broadcasting.

* Under xdist, ``OMP_NUM_THREADS`` is the cores per worker (torch's intra-op threads), unless
  set already.

float64 tests enter ``jax.enable_x64(True)`` themselves; the rest run in JAX's default 32 bits.
Test modules that need torch start with ``torch = pytest.importorskip("torch")``, so the suite
skips them cleanly where torch is not installed.
"""

from __future__ import annotations

import os

# Under xdist, torch's intra-op threads share the cores among the workers: by default each
# worker runs one OpenMP thread per core, so two workers on two cores run four, which wait for
# each other and slow every torch-heavy test. Set before any test module imports torch; an
# explicit OMP_NUM_THREADS wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# JAX compiles each new shape once; keep the generated cases few and never time them.
settings.register_profile(
    "funcmod",
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("funcmod")
