"""The package's import surface: funcmod imports and runs its ports without torch."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import jax, numpy as np
import funcmod
from funcmod import train, checkpoint, sharding, nn
from funcmod.articles import EXAMPLES, models, nnx_models
x = np.ones((2, 10), np.float32)
model = models.MLP(10, 5, 2)
variables = model.init(jax.random.key(0), x)
assert funcmod.count_params(variables) == 67
try:
    import funcmod.convert
except ImportError:
    pass
else:
    raise AssertionError("funcmod.convert imported without torch")
print("ok")
"""


def test_funcmod_imports_and_runs_without_torch():
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_public_api_is_exported():
    import funcmod

    for name in funcmod.__all__:
        assert hasattr(funcmod, name), name
