"""funcmod.nn.attention and funcmod.nn.transformer against torch: scaled_dot_product_attention,
MultiheadAttention (packed and unpacked), the transformer layers; outputs and every gradient,
float32 and float64; initial trees, lossless conversion, the packing pitfall."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as fnn  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from funcmod.convert import flax_to_torch, torch_to_flax  # noqa: E402
from funcmod.nn import attention, transformer  # noqa: E402
from funcmod.precision import rtol  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402
from tests.helpers import x64  # noqa: E402
from tests.nn_parity import tuple_parity  # noqa: E402

E, HEADS, L, S, N = 8, 2, 3, 4, 2


def _tdtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def _mask(kind, rng, shape, dtype):
    """A mask in torch's MHA convention (bool True = masked), never masking a whole row."""
    if kind == "bool":
        m = rng.random(shape) < 0.4
        m[..., 0] = False
        return m
    return rng.standard_normal(shape).astype(dtype)


def measure_sdpa(dtype, *, mask=None, is_causal=False, gqa=False, scale=None, seed=0):
    rng = np.random.default_rng(seed)
    h_k = 1 if gqa else 2
    q = rng.standard_normal((N, 2, L, E)).astype(dtype)
    k = rng.standard_normal((N, h_k, S, E)).astype(dtype)
    v = rng.standard_normal((N, h_k, S, 6)).astype(dtype)
    m = None
    if mask is not None:
        m = _mask(mask, rng, (L, S), dtype)
        m = ~m if mask == "bool" else m  # SDPA's convention: True = attend
    kw = {"is_causal": is_causal, "scale": scale, "enable_gqa": gqa}

    def f(q, k, v):
        return attention.scaled_dot_product_attention(q, k, v, m, **kw)

    out, vjp = jax.vjp(f, *map(jnp.asarray, (q, k, v)))
    cot = rng.standard_normal(out.shape).astype(dtype)
    grads = vjp(jnp.asarray(cot))
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    tm = None if m is None else torch.from_numpy(m)
    t_out = torch.nn.functional.scaled_dot_product_attention(*ts, tm, **kw)
    (t_out * torch.from_numpy(cot)).sum().backward()
    tol = rtol("parity", dtype)
    d1 = assert_trees_close(np.asarray(out), t_out.detach().numpy(), rtol=tol, what="sdpa out")
    d2 = assert_trees_close(
        [np.asarray(g) for g in grads], [t.grad.numpy() for t in ts], rtol=tol, what="sdpa grads"
    )
    return {"forward": d1[0].max_rel, "grad_inputs": max(d.max_rel for d in d2)}


@given(
    mask=st.sampled_from([None, "bool", "float"]),
    is_causal=st.booleans(),
    gqa=st.booleans(),
    scale=st.sampled_from([None, 0.3]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_sdpa_parity(mask, is_causal, gqa, scale, dtype):
    with x64(dtype):
        measure_sdpa(
            dtype, mask=None if is_causal else mask, is_causal=is_causal, gqa=gqa, scale=scale
        )


def measure_mha(
    dtype,
    *,
    kdim=None,
    bias=True,
    batch_first=False,
    masks=None,
    need_weights=True,
    average=True,
    unbatched=False,
    seed=0,
):
    torch.manual_seed(seed)
    kw = dict(bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first)
    twin = torch.nn.MultiheadAttention(E, HEADS, **kw).to(_tdtype(dtype))
    port = attention.MultiheadAttention(E, HEADS, **kw)
    rng = np.random.default_rng(seed)
    d = kdim or E

    def shape(t, feat):
        if unbatched:
            return (t, feat)
        return (N, t, feat) if batch_first else (t, N, feat)

    inputs = [rng.standard_normal(shape(L, E)).astype(dtype)]
    inputs += [rng.standard_normal(shape(S, d)).astype(dtype) for _ in range(2)]
    kwargs = {"need_weights": need_weights, "average_attn_weights": average}
    if masks is not None:
        kwargs["attn_mask"] = _mask(masks, rng, (L, S), dtype)
        if not unbatched:
            kwargs["key_padding_mask"] = _mask("bool", rng, (N, S), dtype)
    t_kwargs = {k: torch.from_numpy(v) for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    return tuple_parity(twin, port, inputs, kwargs=kwargs, torch_kwargs=t_kwargs)


@given(
    kdim=st.sampled_from([None, 3]),
    bias=st.booleans(),
    batch_first=st.booleans(),
    masks=st.sampled_from([None, "bool", "float"]),
    need_weights=st.booleans(),
    average=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_mha_parity(kdim, bias, batch_first, masks, need_weights, average, dtype):
    with x64(dtype):
        measure_mha(
            dtype,
            kdim=kdim,
            bias=bias,
            batch_first=batch_first,
            masks=masks,
            need_weights=need_weights,
            average=average,
        )


def test_mha_unbatched():
    measure_mha(np.float32, unbatched=True, masks="bool", average=False)


@pytest.mark.parametrize("kdim", [None, 3])
def test_mha_converted_tree_is_the_init_tree_and_round_trip_is_bitwise(kdim):
    torch.manual_seed(0)
    twin = torch.nn.MultiheadAttention(E, HEADS, kdim=kdim, vdim=kdim)
    converted = torch_to_flax(twin)
    port = attention.MultiheadAttention(E, HEADS, kdim=kdim, vdim=kdim)
    q = jnp.zeros((L, N, E))
    kv = jnp.zeros((S, N, kdim or E))
    init = port.init(jax.random.key(0), q, kv, kv)
    assert jax.tree.map(jnp.shape, converted) == jax.tree.map(jnp.shape, init)
    bound = np.sqrt(6 / (4 * E)) if kdim is None else np.sqrt(6 / (E + kdim))  # xavier_uniform
    k = np.asarray(init["params"]["k_proj"]["kernel"])
    assert bound / 2 < np.abs(k).max() <= bound
    assert not np.any(init["params"]["q_proj"]["bias"]) and not np.any(
        init["params"]["out_proj"]["bias"]
    )
    fresh = torch.nn.MultiheadAttention(E, HEADS, kdim=kdim, vdim=kdim)
    flax_to_torch(converted, fresh)
    for (name, a), (_, b) in zip(
        twin.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_mha_flax_layout_matches_multi_head_dot_product_attention():
    torch.manual_seed(0)
    twin = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
    x = np.random.default_rng(0).standard_normal((N, L, E)).astype(np.float32)
    want = twin(*(torch.from_numpy(x),) * 3, need_weights=False)[0].detach().numpy()
    theirs = attention.to_flax_mha(torch_to_flax(twin)["params"], HEADS)
    got = fnn.MultiHeadDotProductAttention(HEADS).apply({"params": theirs}, jnp.asarray(x))
    assert_trees_close(np.asarray(got), want, rtol=1e-5)


def test_pitfall_packed_projection_split_by_columns_is_caught():
    torch.manual_seed(0)
    twin = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
    x = np.random.default_rng(0).standard_normal((N, L, E)).astype(np.float32)
    want = twin(*(torch.from_numpy(x),) * 3, need_weights=False)[0].detach().numpy()
    w = twin.in_proj_weight.detach().numpy()  # (3E, E), rows [q; k; v]
    params = torch_to_flax(twin)["params"]
    naive = dict(params)
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):  # without the transpose
        naive[name] = {**params[name], "kernel": jnp.asarray(w[i * E : (i + 1) * E])}
    port = attention.MultiheadAttention(E, HEADS, batch_first=True)
    got = port.apply({"params": naive}, x, x, x, need_weights=False)[0]
    with pytest.raises(AssertionError, match="max rel"):
        assert_trees_close(np.asarray(got), want, rtol=1e-5)
    fixed = port.apply({"params": params}, x, x, x, need_weights=False)[0]
    assert_trees_close(np.asarray(fixed), want, rtol=1e-5)


# --- transformer layers -------------------------------------------------------------------------


def measure_encoder_layer(
    dtype,
    *,
    norm_first=False,
    activation="relu",
    batch_first=False,
    masks=False,
    stack=False,
    seed=0,
):
    torch.manual_seed(seed)
    kw = dict(
        dim_feedforward=16,
        dropout=0.0,
        activation=activation,
        batch_first=batch_first,
        norm_first=norm_first,
    )
    twin = torch.nn.TransformerEncoderLayer(E, HEADS, **kw)
    port = transformer.TransformerEncoderLayer(E, HEADS, **kw, param_dtype=dtype)
    if stack:
        twin = torch.nn.TransformerEncoder(
            twin, 2, norm=torch.nn.LayerNorm(E), enable_nested_tensor=False
        )
        port = transformer.TransformerEncoder(
            port,
            2,
            norm=fnn.LayerNorm(
                epsilon=1e-5,
                use_fast_variance=False,
                force_float32_reductions=False,
                param_dtype=dtype,
            ),
        )
    twin = twin.to(_tdtype(dtype)).eval()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, S, E) if batch_first else (S, N, E)).astype(dtype)
    kwargs = {}
    if masks:
        causal = np.triu(np.full((S, S), -np.inf), 1).astype(dtype)
        kwargs = {
            "mask" if stack else "src_mask": causal,
            "src_key_padding_mask": _mask("bool", rng, (N, S), dtype),
        }
    t_kwargs = {k: torch.from_numpy(v) for k, v in kwargs.items()}
    return tuple_parity(twin, port, [x], kwargs=kwargs, torch_kwargs=t_kwargs)


@given(
    norm_first=st.booleans(),
    activation=st.sampled_from(["relu", "gelu"]),
    batch_first=st.booleans(),
    masks=st.booleans(),
    stack=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_encoder_parity(norm_first, activation, batch_first, masks, stack, dtype):
    with x64(dtype):
        measure_encoder_layer(
            dtype,
            norm_first=norm_first,
            activation=activation,
            batch_first=batch_first,
            masks=masks,
            stack=stack,
        )


def measure_decoder_layer(dtype, *, norm_first=False, seed=0):
    torch.manual_seed(seed)
    kw = dict(dim_feedforward=16, dropout=0.0, activation="gelu", norm_first=norm_first)
    twin = torch.nn.TransformerDecoderLayer(E, HEADS, **kw).to(_tdtype(dtype)).eval()
    port = transformer.TransformerDecoderLayer(E, HEADS, **kw, param_dtype=dtype)
    rng = np.random.default_rng(seed)
    tgt = rng.standard_normal((L, N, E)).astype(dtype)
    memory = rng.standard_normal((S, N, E)).astype(dtype)
    causal = np.triu(np.full((L, L), -np.inf), 1).astype(dtype)
    kwargs = {"tgt_mask": causal, "memory_key_padding_mask": _mask("bool", rng, (N, S), dtype)}
    t_kwargs = {k: torch.from_numpy(v) for k, v in kwargs.items()}
    return tuple_parity(twin, port, [tgt, memory], kwargs=kwargs, torch_kwargs=t_kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_parity(norm_first, dtype):
    with x64(dtype):
        measure_decoder_layer(dtype, norm_first=norm_first)


def test_encoder_converted_tree_is_the_init_tree():
    twin = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(E, HEADS, 16),
        2,
        norm=torch.nn.LayerNorm(E),
        enable_nested_tensor=False,
    )
    port = transformer.TransformerEncoder(
        transformer.TransformerEncoderLayer(E, HEADS, 16), 2, norm=fnn.LayerNorm(epsilon=1e-5)
    )
    init = port.init(jax.random.key(0), jnp.zeros((S, N, E)))
    assert jax.tree.map(jnp.shape, torch_to_flax(twin)) == jax.tree.map(jnp.shape, init)
