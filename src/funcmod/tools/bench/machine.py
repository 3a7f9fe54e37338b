"""The machine a result was measured on: its hardware and library versions, its load, and its
float32 matmul peak (the rate the bench's GFLOP/s are set against)."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcmod.host_memory import host_memory_mode
from funcmod.timing import cpu_model
from funcmod.tools.bench.timing import median_time

__all__ = ["load_average", "machine_info", "measure_matmul_peak"]


def machine_info() -> dict[str, Any]:
    """The backend, the devices, the CPU, and every library version the numbers depend on."""
    import flax
    import jaxlib
    import torch
    import torch._inductor.config as inductor_config

    device = jax.devices()[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
        "cpu": cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        # torch.compile's first call is much shorter when inductor's on-disk cache holds the
        # graphs from an earlier run.
        "torch_inductor_fx_graph_cache": bool(inductor_config.fx_graph_cache),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # Whether freed host memory is kept for reuse (funcmod.host_memory): a large XLA
        # program's step time depends on it.
        "host_memory": host_memory_mode(),
        # ... and whether another allocator was preloaded (jemalloc: docs/pitfalls.md).
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "malloc_conf": os.environ.get("MALLOC_CONF", ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """The machine's float32 matmul rate: an (n, n) @ (n, n) product in XLA and in torch.

    Returns:
      ``{'n', 'flops', 'jax_gflops', 'torch_gflops', 'peak_gflops'}``; the peak is the better
      of the two, the rate the benchmark's GFLOP/s are compared with.
    """
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    matmul = jax.jit(jnp.matmul)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    flops = float(matmul.lower(ja, jb).compile().cost_analysis()["flops"])  # 2 n^3
    jax.block_until_ready(matmul(ja, jb))
    jax_s = median_time(lambda: jax.block_until_ready(matmul(ja, jb)), repeats)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch.mm(ta, tb)
    torch_s = median_time(lambda: torch.mm(ta, tb), repeats)
    rates = {"jax_gflops": flops / jax_s / 1e9, "torch_gflops": flops / torch_s / 1e9}
    return {"n": n, "flops": flops, **rates, "peak_gflops": max(rates.values())}
