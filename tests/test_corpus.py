"""The acceptance corpus (funcmod.corpus): every model runs forward and backward in torch,
exports with torch.export (non-strict), and has the parameter count pinned here."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from funcmod.corpus import CORPUS, get_model  # noqa: E402

# Pinned: a change to a corpus model's structure shows up here first. Tied tensors count once
# (GPT's lm_head is its token embedding).
PARAMETER_COUNTS = {
    "resnet": 4018,
    "mobilenetv3": 6762,
    "unet": 7458,
    "vit": 19626,
    "gpt": 28032,
    "llama": 22688,
    "lstm": 9893,
    "gru": 8412,
    "weightnorm_mlp": 1763,
}
OUTPUT_SHAPES = {
    "resnet": (2, 10),
    "mobilenetv3": (2, 10),
    "unet": (2, 2, 16, 16),
    "vit": (2, 10),
    "gpt": (2, 8, 64),
    "llama": (2, 8, 64),
    "lstm": (2, 5),
    "gru": (2, 4),
    "weightnorm_mlp": (4, 3),
}


def test_the_registry_is_the_pinned_list():
    assert set(CORPUS) == set(PARAMETER_COUNTS) == set(OUTPUT_SHAPES)
    with pytest.raises(KeyError, match="known: resnet"):
        get_model("resnet50")


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_forward_backward_and_parameter_count(name):
    entry = CORPUS[name]
    model = entry.build()
    assert sum(p.numel() for p in model.parameters()) == PARAMETER_COUNTS[name]
    args = entry.example_inputs()
    out = model(*args)
    assert tuple(out.shape) == OUTPUT_SHAPES[name]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_builds_are_seeded_and_inputs_typed(name):
    entry = CORPUS[name]
    first, again, other = (entry.build(seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    args = entry.example_inputs(dtype=torch.float64)
    for spec, arg in zip(entry.inputs, args, strict=True):
        assert tuple(arg.shape) == spec.shape
        assert arg.dtype == (torch.int64 if spec.is_tokens else torch.float64)
        if spec.is_tokens:
            assert int(arg.min()) >= 0 and int(arg.max()) < spec.vocab
    model64 = entry.build(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model64.parameters())
    assert model64(*args).dtype == torch.float64


def test_dropout_override():
    model = get_model("mobilenetv3").build(dropout=0.0)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(ValueError, match="'resnet' has no dropout"):
        get_model("resnet").build(dropout=0.0)


def test_gpt_ties_its_head_to_the_embedding():
    model = get_model("gpt").build()
    assert model.lm_head.weight is model.transformer.wte.weight
    state = model.state_dict()
    assert "lm_head.weight" in state and "transformer.wte.weight" in state


def test_llama_recomputes_its_rotary_frequencies():
    model = get_model("llama").build()
    assert "rotary_emb.inv_freq" in dict(model.named_buffers())
    assert not any("inv_freq" in k for k in model.state_dict())  # non-persistent


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_exports_non_strict(name):
    entry = CORPUS[name]
    model = entry.build().eval()
    args = entry.example_inputs()
    with warnings.catch_warnings():
        # nn.LSTM/GRU reassign their _flat_weights list while being traced: torch's own warning
        warnings.filterwarnings("ignore", message="The tensor attributes self.(lstm|gru)")
        program = torch.export.export(model, args, strict=False)
    got = program.module()(*args)
    torch.testing.assert_close(got, model(*args), rtol=0, atol=0)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets, name


def test_float32_island_in_float64():
    """docs/pitfalls.md, 'A float32 island in a float64 model': torch's and XLA's float32 cos and
    sin differ by an ulp on some of the corpus Llama's rotary angles, so a model that computes
    them in float32 (Hugging Face's .float() casts) cannot meet the float64 target, only the
    float32 one; the corpus Llama computes them in the input's dtype instead."""
    jnp = pytest.importorskip("jax.numpy")
    import numpy as np

    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.int64).float() / 8))
    angles = torch.outer(torch.arange(8).float(), inv_freq)  # float32, as the casts make them
    for fn in ("cos", "sin"):
        diff = np.abs(getattr(angles, fn)().numpy() - np.asarray(getattr(jnp, fn)(angles.numpy())))
        assert 0 < diff.max() <= 2.0**-24, fn  # one ulp on some inputs, not zero
    q = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    half = torch.cat((-q[:, 4:], q[:, :4]), dim=1)
    ang = torch.cat((angles, angles), dim=1)
    out_torch = q * ang.cos().double() + half * ang.sin().double()
    cos_xla = torch.from_numpy(np.asarray(jnp.cos(ang.numpy()))).double()
    sin_xla = torch.from_numpy(np.asarray(jnp.sin(ang.numpy()))).double()
    out_xla = q * cos_xla + half * sin_xla
    rel = float((out_torch - out_xla).abs().max() / out_torch.abs().max())
    assert 1e-12 < rel < 1e-5
    # the corpus model itself stays float64 in its rotary embedding
    rotary = get_model("llama").build(dtype=torch.float64).rotary_emb
    cos, sin = rotary(torch.zeros(1, dtype=torch.float64), torch.arange(8)[None])
    assert cos.dtype == sin.dtype == torch.float64
