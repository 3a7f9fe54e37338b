"""Parity of a torch layer and its ``funcmod.nn`` port when the layer returns a tuple.

``tuple_parity`` converts the torch layer's weights (``funcmod.convert``), runs both on the same
inputs and compares, leaf by leaf with ``funcmod.tree.compare_trees``: every output, and the
gradients of ``sum(out * cotangent)`` (a fixed random cotangent per output) with respect to every
floating-point input and every parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from funcmod.convert import torch_grads_to_flax, torch_to_flax
from funcmod.precision import rtol
from funcmod.tree import assert_trees_close


def _leaves(tree) -> list:
    return [leaf for leaf in jax.tree.leaves(tree) if leaf is not None]


def tuple_parity(
    twin: torch.nn.Module,
    port,
    inputs: list[np.ndarray],
    *,
    kwargs: dict | None = None,
    torch_kwargs: dict | None = None,
    pack=tuple,
    seed: int = 0,
) -> dict[str, float]:
    """Assert parity at ``funcmod.precision.RTOL['parity']``; return the max relative errors.

    ``inputs`` are float arrays (all differentiated), passed as ``*pack(inputs)`` (an LSTM's
    ``pack`` nests ``(h0, c0)``); ``kwargs`` go to both (``torch_kwargs`` override them for
    torch, e.g. masks as tensors).
    """
    kwargs = kwargs or {}
    torch_kwargs = {**kwargs, **(torch_kwargs or {})}
    dtype = inputs[0].dtype
    tol = rtol("parity", dtype)
    params = torch_to_flax(twin)["params"]

    def f(p, *xs):
        return _leaves(port.apply({"params": p}, *pack(xs), **kwargs))

    # One compiled program for the forward pass and its VJP: op by op, each of a layer's few
    # hundred primitives compiles for its shapes (the encoder test took 38 s that way, 16 s so).
    xs = [jnp.asarray(x) for x in inputs]
    rng = np.random.default_rng(seed)
    cots = [rng.standard_normal(o.shape).astype(dtype) for o in jax.eval_shape(f, params, *xs)]

    @jax.jit
    def forward_and_vjp(p, xs, cots):
        outs, vjp = jax.vjp(f, p, *xs)
        return outs, vjp(cots)

    outs, grads = forward_and_vjp(params, xs, [jnp.asarray(c) for c in cots])

    xs_t = [torch.tensor(x, requires_grad=True) for x in inputs]
    twin.zero_grad()
    t_outs = _leaves(twin(*pack(xs_t), **torch_kwargs))
    assert len(t_outs) == len(outs) > 0, (len(t_outs), len(outs))
    sum(((o * torch.from_numpy(c)).sum() for o, c in zip(t_outs, cots, strict=True))).backward()

    fwd = assert_trees_close(
        [np.asarray(o) for o in outs], [o.detach().numpy() for o in t_outs], rtol=tol, what="out"
    )
    d_in = assert_trees_close(
        [np.asarray(g) for g in grads[1:]], [x.grad.numpy() for x in xs_t], rtol=tol, what="d_in"
    )
    mine = traverse_util.flatten_dict(grads[0], sep="/")
    theirs = traverse_util.flatten_dict(torch_grads_to_flax(twin)["params"], sep="/")
    # Attention's key bias shifts every score of a query by the same amount, which softmax
    # ignores: its exact gradient is 0 and both frameworks return rounding noise (about 1e-8),
    # whose relative difference means nothing. It must be noise on both sides: below the
    # tolerance times the largest parameter gradient.
    zero = [k for k in theirs if k.endswith("k_proj/bias")]
    scale = max(float(np.abs(v).max()) for v in theirs.values())
    for k in zero:
        for side in (mine.pop(k), theirs.pop(k)):
            assert float(np.abs(side).max()) <= tol * scale, (k, float(np.abs(side).max()), scale)
    d_p = assert_trees_close(mine, theirs, rtol=tol, what="d_p")
    assert d_p, "no parameter gradients compared"
    return {
        "forward": max(d.max_rel for d in fwd),
        "grad_inputs": max(d.max_rel for d in d_in),
        "grad_params": max(d.max_rel for d in d_p),
    }


def _cases(dtype) -> dict:
    from tests import test_nn_attention as attn
    from tests import test_nn_recurrent as rec

    def recurrent(kind):
        return lambda: rec.measure(kind, dtype, num_layers=2, bidirectional=True, batch_first=True)

    return {
        **{kind: recurrent(kind) for kind in sorted(rec.KINDS)},
        "MultiheadAttention (bool masks)": lambda: attn.measure_mha(dtype, masks="bool"),
        "MultiheadAttention kdim=3": lambda: attn.measure_mha(dtype, kdim=3, masks="float"),
        "sdpa causal GQA": lambda: attn.measure_sdpa(dtype, is_causal=True, gqa=True),
        "sdpa float mask": lambda: attn.measure_sdpa(dtype, mask="float"),
        "TransformerEncoderLayer": lambda: attn.measure_encoder_layer(dtype, masks=True),
        "TransformerEncoder x2": lambda: attn.measure_encoder_layer(dtype, stack=True),
        "TransformerDecoderLayer": lambda: attn.measure_decoder_layer(dtype),
    }


def _print_layer_errors() -> None:
    """The largest relative error (outputs, input and parameter gradients) of every layer."""
    from tests.helpers import x64

    for dtype in (np.float32, np.float64):
        with x64(dtype):
            for name, run in _cases(dtype).items():
                print(f"{np.dtype(dtype).name:8} {name:34} {max(run().values()):.1e}")


if __name__ == "__main__":  # PYTHONPATH=. .venv/bin/python tests/nn_parity.py
    _print_layer_errors()
