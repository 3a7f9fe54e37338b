"""funcmod.port on the acceptance corpus (funcmod.corpus): for every model, the ported module's
forward and every gradient against torch (float32 <= 1e-5, float64 <= 1e-12 per leaf), 20
AdamW steps in train mode in step with torch (float64 <= 1e-10), the saved source re-imported
from disk giving the same numbers, and the gallery (docs/gallery) current.

A leaf whose exact gradient is zero (an attention key bias: softmax is unchanged when the same
number is added to every score of a row) holds rounding noise in both frameworks, so its own
scale means nothing. The rule (``beyond_tolerance``), for the gradients and for the parameters
after training: a leaf whose reference is itself below ``rtol`` times the scale of the whole tree
(the largest magnitude over all its leaves), i.e. at the tree's rounding level, is compared
absolutely at that level; every other leaf keeps its own relative error. A wrong nonzero
gradient of any real size still fails, and no leaf is named in advance.

``PENDING`` lists the cases the porter does not pass yet, each with the error it gives; they are
strict xfails, so a case that starts passing fails the run until it is taken off the list.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from funcmod.convert import torch_grads_to_flax, torch_to_flax  # noqa: E402
from funcmod.corpus import CORPUS, get_model  # noqa: E402
from funcmod.optim import from_torch  # noqa: E402
from funcmod.port import load, port  # noqa: E402
from funcmod.precision import RTOL  # noqa: E402
from funcmod.tools.gallery import DEFAULT_DIR, page  # noqa: E402
from funcmod.tree import compare_trees, leaves_with_paths  # noqa: E402

pytestmark = pytest.mark.slow  # every case ports a model and compiles it: 5-140 s each

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(CORPUS)
STEPS = 20
TRAIN_RTOL = 1e-10  # float64, 20 AdamW steps


# (test, model[, dtype]) -> the error it gives now. Only shrinks.
PENDING: dict[tuple[str, ...], str] = {}


def mark_pending(request, *key: str) -> None:
    """Make the running test a strict xfail if ``key`` is in ``PENDING``."""
    if key in PENDING:
        request.applymarker(pytest.mark.xfail(reason=PENDING[key], strict=True))


@functools.cache
def ported(name: str, dropout: float | None = None):
    """The corpus model as people build it (float32, default dropout; ``dropout`` overrides
    the rate), ported once per process and key. Tests only read it: ``check`` works on a copy
    of its torch model, and a Linen module is immutable."""
    entry = get_model(name)
    return port(entry.build(dropout=dropout), entry.example_inputs())


def beyond_tolerance(leaves: list[tuple[str, float, float]], rtol: float) -> list[str]:
    """The leaves, given as ``(path, max_abs_error, scale)``, that miss ``rtol`` under the
    zero-gradient rule: a leaf whose scale (its reference's largest magnitude) is at most
    ``rtol`` times the largest scale of all leaves is held to ``max_abs <= rtol * that``,
    every other leaf to ``max_abs <= rtol * scale``."""
    floor = rtol * max(scale for _, _, scale in leaves)
    return [
        f"{path}: max abs {err:.3e}, scale {scale:.3e}"
        for path, err, scale in leaves
        if err > (floor if scale <= floor else rtol * scale)
    ]


def _numpy_args(args, dtype=None):
    out = []
    for a in args:
        arr = a.detach().cpu().numpy()
        out.append(arr.astype(dtype) if dtype and np.issubdtype(arr.dtype, np.floating) else arr)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_and_every_gradient(name, dtype, request):
    mark_pending(request, "check", name, np.dtype(dtype).name)
    report = ported(name).check(dtype)
    assert report.rtol == RTOL["parity"][np.dtype(dtype)]
    bad = failing_leaves(report)
    assert not bad, f"{name} {np.dtype(dtype).name}: {bad}"


def failing_leaves(report) -> list[str]:
    """A ParityReport's leaves that miss its rtol: the output by its own scale, the gradients
    under the zero-gradient rule (a leaf's scale is its max_abs / max_rel)."""
    bad = [f"{d.path}: max rel {d.max_rel:.3e}" for d in report.forward if not d.ok]
    # An exact leaf (max_abs 0) passes at any scale; a zero reference (max_rel inf) has scale 0.
    grads = [(d.path, d.max_abs, d.max_abs / d.max_rel if d.max_abs else 0.0) for d in report.grads]
    return bad + beyond_tolerance(grads, report.rtol)


def _train_kwargs(module) -> dict:
    params = inspect.signature(type(module).__call__).parameters
    return {"train": True} if "train" in params else {}


@pytest.mark.parametrize("name", NAMES)
def test_adamw_steps_in_step_with_torch(name, request):
    """20 AdamW steps of the loss sum(output * cotangent), a new batch every step, in train mode
    (BatchNorm statistics update; dropout off), float64: every parameter and running statistic
    after the run agrees with torch's to 1e-10 of its scale.

    The zero-gradient rule, element by element: an element whose torch gradient stayed at the
    rounding level of the whole gradient (<= 1e-12 of its largest element) at every step has an
    exact gradient of zero (GPT's packed c_attn.bias, ViT's k_proj.bias: attention's softmax
    cancels a key bias); Adam turns that noise into steps of up to lr * max|noise| / eps, a
    different noise in each framework (it depends on the summation order, torch's thread
    count included), so those elements are held to 1e-10 of the whole tree's scale plus that
    bound summed over the run for both frameworks' largest gradient of the element, every other
    element to 1e-10 of its leaf's scale; a leaf whose own scale is below that floor
    (MobileNetV3: the running mean after a BatchNorm whose shift the next BatchNorm cancels, so
    it stays at zero) is held to the floor too."""
    mark_pending(request, "train", name)
    entry = get_model(name)
    dropout = 0.0 if entry.dropout else None
    # the port's module (shared, read only), a fresh torch model with the same seeded weights
    module = ported(name, dropout).module
    model = entry.build(dropout=dropout).double().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    noise = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    torch_gmax = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    lr, eps = opt.param_groups[0]["lr"], opt.param_groups[0]["eps"]
    noise_cap = 0.0  # the largest per-step noise threshold
    with jax.enable_x64(True):
        variables = torch_to_flax(model)
        params = variables["params"]
        state = {k: v for k, v in variables.items() if k != "params"}
        tx = from_torch(opt, model)
        opt_state = jax.jit(tx.init)(params)  # one compile, not one eager op per leaf
        kwargs = _train_kwargs(module)
        mutable = ["batch_stats"] if "batch_stats" in state else False

        @jax.jit
        def step(params, state, opt_state, gmax, xs, cotangent):
            def loss(p):
                got = module.apply(
                    {"params": p, **state},
                    *xs,
                    rngs={"dropout": jax.random.key(0)},
                    mutable=mutable,
                    **kwargs,
                )
                out, new_state = got if mutable else (got, {})
                return jnp.sum(out * cotangent), new_state

            grads, new_state = jax.grad(loss, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            gmax = jax.tree.map(lambda m, g: jnp.maximum(m, jnp.abs(g)), gmax, grads)
            return new_params, {**state, **new_state}, opt_state, gmax

        jax_gmax = jax.tree.map(jnp.zeros_like, params)  # the largest |gradient| so far
        for i in range(STEPS):
            args = entry.example_inputs(dtype=torch.float64, seed=100 + i)
            opt.zero_grad()
            out = model(*args)
            cotangent = rng.standard_normal(tuple(out.shape))
            (out * torch.from_numpy(cotangent)).sum().backward()
            scale = max(float(p.grad.abs().max()) for p in model.parameters())
            noise_cap = max(noise_cap, RTOL["parity"][np.dtype(np.float64)] * scale)
            for n, p in model.named_parameters():
                noise[n] &= p.grad.abs() <= RTOL["parity"][np.dtype(np.float64)] * scale
                torch_gmax[n] = torch.maximum(torch_gmax[n], p.grad.abs())
            opt.step()
            params, state, opt_state, jax_gmax = step(
                params, state, opt_state, jax_gmax, _numpy_args(args), cotangent
            )
        want = torch_to_flax(model)
        got = {"params": params, **state}
        compare_trees(got, want, rtol=TRAIN_RTOL)  # the same leaves and shapes
    with torch.no_grad():  # the masks in Flax's layout, through the gradient converter
        for n, p in model.named_parameters():
            p.grad = noise[n].to(p.dtype)
        masks = leaves_with_paths(torch_grads_to_flax(model))
        for n, p in model.named_parameters():
            p.grad = torch_gmax[n]
        torch_g = leaves_with_paths(torch_grads_to_flax(model))
    jax_g = leaves_with_paths({"params": jax_gmax})
    assert set(jax_g) == set(torch_g) == set(masks)
    # the port's gradient of those elements is rounding noise too (else the drift would excuse
    # a real error)
    loud = {k: float(np.max(np.asarray(jax_g[k])[masks[k].astype(bool)], initial=0.0))
            for k in masks}  # fmt: skip
    assert all(v <= noise_cap for v in loud.values()), (noise_cap, loud)
    # Adam's step of an element is at most lr * max|g| / eps while |g| stays below eps
    drift = {k: STEPS * lr * (np.asarray(torch_g[k]) + np.asarray(jax_g[k])) / eps for k in masks}
    bad = trajectory_misses(
        leaves_with_paths(got), leaves_with_paths(want), masks, TRAIN_RTOL, drift
    )
    assert not bad, f"{name} after {STEPS} steps: {bad}"


def trajectory_misses(
    got: dict, want: dict, noise: dict, rtol: float, drift: dict | None = None
) -> list[str]:
    """Leaves (by path) that miss ``rtol``: the elements ``noise[path]`` marks (exact gradient
    zero) against ``rtol`` times the largest magnitude of the whole tree (the floor) plus their
    ``drift[path]`` (the optimizer's bound on where rounding noise can move them; 0 without),
    every other element against ``rtol`` times the largest magnitude of its leaf's other
    elements, or against the floor where that magnitude is itself below it."""
    floor = rtol * max(float(np.max(np.abs(np.asarray(b)))) for b in want.values())
    bad = []
    for path, b in want.items():
        b = np.asarray(b, np.float64)
        err = np.abs(np.asarray(got[path], np.float64) - b)
        mask = np.asarray(noise[path]).astype(bool) if path in noise else np.zeros(b.shape, bool)
        real_scale = float(np.max(np.abs(b[~mask]), initial=0.0))
        real_err = float(np.max(err[~mask], initial=0.0))
        moved = np.asarray(drift[path]) if drift and path in drift else np.zeros(b.shape)
        noise_err = float(np.max(err[mask], initial=0.0))
        noise_excess = float(np.max((err - floor - moved)[mask], initial=-np.inf))
        # a leaf whose reference is itself at the tree's rounding level (a running mean of an
        # exactly-zero activation) is held to the floor, as a zero-gradient element
        limit = floor if real_scale <= floor else rtol * real_scale
        if real_err > limit or noise_excess > 0:
            bad.append(f"{path}: max abs {real_err:.3e} (scale {real_scale:.3e}), "
                       f"zero-gradient elements {noise_err:.3e} (floor {floor:.3e}, noise "
                       f"drift up to {float(np.max(moved[mask], initial=0.0)):.3e})")  # fmt: skip
    return bad


def first_difference(got: str, want: str) -> str | None:
    """Where two texts first differ, as ``line N: got against want``; None where they are equal.
    (Asserting the whole texts equal would have pytest diff thousands of lines.)"""
    pairs = itertools.zip_longest(got.splitlines(), want.splitlines())
    for i, (g, w) in enumerate(pairs, 1):
        if g != w:
            return f"line {i}: {g!r} against {w!r}"
    return None


@pytest.mark.parametrize("name", NAMES)
def test_saved_source_reimports_with_the_same_numbers(name, tmp_path, request):
    mark_pending(request, "saved", name)
    p = ported(name)
    p.save(tmp_path)
    assert (tmp_path / f"{p.name}.py").read_text(encoding="utf-8") == p.source
    module, variables = load(tmp_path)
    assert type(module).__name__ == p.class_name and type(module) is not type(p.module)
    args = _numpy_args(p.args)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(p.variables)
    # The re-imported module traces to the very program the original does, so one compile
    # serves both: that program on the loaded variables gives bitwise the original's output.
    # (Jitted: op-by-op eager dispatch of a whole model costs 10-20 s here, a compile 1-5 s.)
    lowered = jax.jit(p.module.apply).lower(p.variables, *args)
    reloaded = jax.jit(module.apply).lower(variables, *args)
    diff = first_difference(reloaded.as_text(), lowered.as_text())
    assert diff is None, f"the re-imported module traces to another program: StableHLO {diff}"
    apply = lowered.compile()
    want = np.asarray(apply(p.variables, *args))
    got = np.asarray(apply(variables, *args))
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("name", NAMES)
def test_gallery_is_current(name, request):
    """docs/gallery/<name>.py is what ``funcmod gallery`` writes now; rerun it after changing the
    porter or the corpus."""
    mark_pending(request, "gallery", name)
    path = ROOT / DEFAULT_DIR / f"{name}.py"
    assert path.is_file(), f"{path} is missing: run `funcmod gallery`"
    assert path.read_text(encoding="utf-8") == page(name, ported(name).source), (
        f"{path} is out of date: run `funcmod gallery`"
    )


def test_the_zero_gradient_rule_bites():
    # a noise-level reference leaf is held to the tree's floor, not excused
    assert beyond_tolerance([("w", 1e-6, 1.0), ("k_bias", 1e-6, 1e-7)], 1e-5) == []
    assert beyond_tolerance([("w", 1e-6, 1.0), ("k_bias", 2e-5, 1e-7)], 1e-5) == [
        "k_bias: max abs 2.000e-05, scale 1.000e-07"
    ]
    # a small but real leaf keeps its own relative error
    assert len(beyond_tolerance([("w", 1e-6, 1.0), ("small", 1e-6, 1e-3)], 1e-5)) == 1


def test_the_trajectory_rule_bites():
    want = {"w": np.array([1.0, 2.0]), "b": np.array([0.5, 1e-13])}
    noise = {"b": np.array([0.0, 1.0])}
    got = {"w": np.array([1.0, 2.0]), "b": np.array([0.5, 2e-13])}
    assert trajectory_misses(got, want, noise, 1e-10) == []  # noise element within the floor
    got["b"] = np.array([0.5 + 1e-9, 1e-13])  # a real element off by 2e-9 of its leaf
    assert len(trajectory_misses(got, want, noise, 1e-10)) == 1
    got["b"] = np.array([0.5, 1e-9])  # a noise element above the floor (2e-10)
    assert len(trajectory_misses(got, want, noise, 1e-10)) == 1
    # ... within the floor plus its noise drift, and that drift is the element's, not the leaf's
    assert trajectory_misses(got, want, noise, 1e-10, {"b": np.array([0.0, 1e-9])}) == []
    assert len(trajectory_misses(got, want, noise, 1e-10, {"b": np.array([1.0, 0.0])})) == 1
    # a leaf whose reference is itself below the floor (2e-10 here) is held to the floor
    tiny = {"w": np.array([1.0, 2.0]), "m": np.array([1e-13, -1e-13])}
    assert trajectory_misses({**tiny, "m": np.array([5e-11, 0.0])}, tiny, {}, 1e-10) == []
    assert len(trajectory_misses({**tiny, "m": np.array([5e-10, 0.0])}, tiny, {}, 1e-10)) == 1


def test_first_difference_names_the_line():
    assert first_difference("a\nb", "a\nb") is None
    assert first_difference("a\nb", "a\nc") == "line 2: 'b' against 'c'"
    assert first_difference("a", "a\nb") == "line 2: None against 'b'"
