"""The converter's promises on architectures nobody wrote by hand: hypothesis builds random torch
modules (nested ``Sequential`` / ``ModuleList`` / ``ModuleDict``, every layer type with a rule,
raw ``nn.Parameter``s and buffers, float32 / float64 / bfloat16) and checks, for each:

* torch -> flax -> torch is bitwise, into a second copy of the module with other values;
* a corrupted tree (a dropped key, an added key, a transposed leaf, a changed dtype) is refused
  with a ``ConversionError`` that names the key, and the target module is left unchanged;
* where a Flax model of the same structure exists (a ``Sequential`` of Dense / LayerNorm layers),
  the converted tree has exactly that model's keys, shapes and dtypes.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as fnn  # noqa: E402
from flax import traverse_util  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from funcmod.convert import ConversionError, flax_to_torch, torch_to_flax  # noqa: E402
from tests.helpers import x64  # noqa: E402

# How many random architectures each property sees (the suite's profile default is 6).
EXAMPLES = 40
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


class Raw(nn.Module):
    """A module with its own tensors and no rule: a parameter and a persistent buffer."""

    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(n, n + 1))
        self.register_buffer("offset", torch.randn(n))


class Holder(nn.Module):
    """Holds a ModuleList or ModuleDict as an attribute, as real models do."""

    def __init__(self, blocks: nn.Module):
        super().__init__()
        self.blocks = blocks


def layers() -> st.SearchStrategy[nn.Module]:
    n = st.integers(1, 4)
    return st.one_of(
        st.builds(lambda i, o, b: nn.Linear(i, o, bias=b), n, n, st.booleans()),
        st.builds(lambda i, o, k: nn.Conv1d(i, o, k), n, n, st.integers(1, 3)),
        st.builds(lambda i, o, k: nn.Conv2d(i, o, k), n, n, st.integers(1, 3)),
        st.builds(lambda c: nn.BatchNorm1d(c), n),
        st.builds(lambda c: nn.BatchNorm2d(c), n),
        st.builds(lambda d: nn.LayerNorm(d), n),
        st.builds(lambda g: nn.GroupNorm(g, 2 * g), n),
        st.builds(lambda v, d: nn.Embedding(v, d), n, n),
        st.builds(Raw, n),
    )


def architectures() -> st.SearchStrategy[nn.Module]:
    def containers(children: st.SearchStrategy[nn.Module]) -> st.SearchStrategy[nn.Module]:
        several = st.lists(children, min_size=1, max_size=3)
        return st.one_of(
            several.map(lambda ms: nn.Sequential(*ms)),
            several.map(lambda ms: Holder(nn.ModuleList(ms))),
            several.map(lambda ms: Holder(nn.ModuleDict({f"m{i}": m for i, m in enumerate(ms)}))),
        )

    return st.recursive(layers(), containers, max_leaves=6).map(
        lambda m: m if isinstance(m, nn.Sequential | Holder) else nn.Sequential(m)
    )


def _not_carried(module: nn.Module) -> set[str]:
    """State the converter leaves out by design: the batch counter of a BatchNorm that has a
    momentum (only ``momentum=None`` reads it)."""
    return {
        f"{name}.num_batches_tracked" if name else "num_batches_tracked"
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None
    }


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    skip = _not_carried(module)
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k not in skip}


def _scrambled(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose every parameter and buffer holds other values."""
    other = copy.deepcopy(module)
    with torch.no_grad():
        for t in [*other.parameters(), *other.buffers()]:
            if t.is_floating_point():
                t.add_(1.0)
            else:
                t.add_(1)
    return other


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k


def _float_leaves(flat: dict) -> list:
    return [k for k, v in flat.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]


@settings(max_examples=EXAMPLES)
@given(architectures(), st.sampled_from(list(DTYPES)), st.randoms(use_true_random=False))
def test_random_architectures_round_trip_and_refuse_corruption(module, dtype, rand):
    torch.manual_seed(0)
    module = module.to(DTYPES[dtype])
    with x64(np.float64 if dtype == "float64" else np.float32):
        variables = torch_to_flax(module)
        flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables))
        assert flat, "a converted module with tensors must give leaves"

        # torch -> flax -> torch, bitwise, into a module that held other values.
        target = _scrambled(module)
        flax_to_torch(variables, target)
        _assert_bitwise(_state(target), _state(module))

        # Each corruption is refused, names the key, and writes nothing.
        key = rand.choice(sorted(flat))
        name = "/".join(key)
        corruptions = {
            "dropped": {k: v for k, v in flat.items() if k != key},
            "added": {**flat, (*key[:-1], "not_a_torch_tensor"): np.zeros(2, np.float32)},
        }
        wrong_dtype = np.float16 if np.asarray(flat[key]).dtype != np.float16 else np.float32
        corruptions["dtype"] = {**flat, key: np.asarray(flat[key]).astype(wrong_dtype)}
        matrices = [k for k, v in flat.items() if np.ndim(v) == 2 and len(set(np.shape(v))) == 2]
        if matrices:
            mkey = rand.choice(sorted(matrices))
            corruptions["transposed"] = {**flat, mkey: np.asarray(flat[mkey]).T}
        for kind, bad in corruptions.items():
            target = _scrambled(module)
            before = _state(target)
            with pytest.raises(ConversionError) as err:
                flax_to_torch(traverse_util.unflatten_dict(bad), target)
            named = {
                "dropped": name,
                "added": "not_a_torch_tensor",
                "dtype": name,
                "transposed": "/".join(mkey) if matrices else None,
            }[kind]
            assert named in str(err.value), f"{kind}: {err.value}"
            _assert_bitwise(_state(target), before)


class FlaxChain(fnn.Module):
    """The Flax counterpart of ``nn.Sequential(Linear | LayerNorm, ...)``: Flax names the
    elements of a list attribute ``layers_0``, ``layers_1``, ... as the converter does."""

    kinds: tuple[tuple[str, int], ...]

    def setup(self):
        self.layers = [
            fnn.Dense(n, param_dtype=jnp.float32) if kind == "linear" else fnn.LayerNorm()
            for kind, n in self.kinds
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@settings(max_examples=EXAMPLES // 2)
@given(st.lists(st.tuples(st.sampled_from(["linear", "norm"]), st.integers(1, 5)), min_size=1))
def test_converted_tree_equals_the_flax_template(kinds):
    width, torch_layers, flax_kinds = 3, [], []
    for kind, n in kinds:
        if kind == "linear":
            torch_layers.append(nn.Linear(width, n))
            flax_kinds.append(("linear", n))
            width = n
        else:
            torch_layers.append(nn.LayerNorm(width))
            flax_kinds.append(("norm", width))
    variables = torch_to_flax(nn.Sequential(*torch_layers))
    template = jax.eval_shape(
        FlaxChain(tuple(flax_kinds)).init, jax.random.key(0), jnp.ones((1, 3))
    )
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
    assert shapes(variables) == shapes(template)
