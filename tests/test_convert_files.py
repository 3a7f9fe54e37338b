"""Torch-named safetensors files <-> Flax variables (funcmod.convert_files): bitwise round trips
over the corpus, modules on the meta device, and bad files refused by name with nothing written."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from funcmod import convert_files  # noqa: E402
from funcmod.convert import ConversionError, torch_to_flax  # noqa: E402
from funcmod.convert_files import (  # noqa: E402
    load_torch_safetensors,
    read_safetensors,
    save_torch_safetensors,
)
from funcmod.corpus import CORPUS, get_model  # noqa: E402
from tests.helpers import x64  # noqa: E402


def _skeleton(name, dtype=torch.float32):
    """The corpus model on the meta device: structure only, no storage."""
    with torch.device("meta"):
        return get_model(name).build(dtype=dtype)


def _torch_file(model, path):
    """What a torch user writes: ``save_model`` (it drops the second name of a tied tensor)."""
    safetensors_torch.save_model(model, str(path))
    return path


def _assert_same_state(got, want):
    """Bitwise equal state dicts, num_batches_tracked aside (load_state_dict fills it in)."""
    got, want = (
        {k: v for k, v in d.items() if not k.endswith("num_batches_tracked")} for d in (got, want)
    )
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_round_trip_through_files_is_bitwise(name, tmp_path):
    entry = get_model(name)
    model = entry.build(seed=3)
    with torch.no_grad():  # BatchNorm statistics away from their initial 0 / 1
        model.train()(*entry.example_inputs())
    source = _torch_file(model, tmp_path / "torch.safetensors")

    variables = load_torch_safetensors(source, _skeleton(name))
    want = torch_to_flax(model)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(want)
    for a, b in zip(
        jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(want), strict=True
    ):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))

    target = tmp_path / "flax.safetensors"
    save_torch_safetensors(variables, _skeleton(name), target)
    _assert_same_state(safetensors_torch.load_file(str(target)), model.state_dict())
    fresh = entry.build(seed=4)
    fresh.load_state_dict(safetensors_torch.load_file(str(target)), strict=True)
    _assert_same_state(fresh.state_dict(), model.state_dict())
    assert set(tmp_path.iterdir()) == {source, target}  # no temporary file left behind


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_round_trip_bitwise(dtype, tmp_path):
    model = get_model("resnet").build(dtype=dtype, seed=5)
    source = _torch_file(model, tmp_path / "a.safetensors")
    with x64(np.float64 if dtype == torch.float64 else np.float32):
        variables = load_torch_safetensors(source, _skeleton("resnet", dtype))
        save_torch_safetensors(variables, _skeleton("resnet", dtype), tmp_path / "b.safetensors")
    _assert_same_state(
        safetensors_torch.load_file(str(tmp_path / "b.safetensors")), model.state_dict()
    )


def test_a_tie_under_either_name_or_both(tmp_path):
    model = get_model("gpt").build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    want = torch_to_flax(model)
    tied = ("transformer.wte.weight", "lm_head.weight")
    for keep in (*tied, None):  # the tensor under one name, the other, or both
        tensors = {k: v for k, v in state.items() if k not in tied or keep in (None, k)}
        safetensors_torch.save_file(tensors, str(tmp_path / "gpt.safetensors"))
        got = load_torch_safetensors(tmp_path / "gpt.safetensors", _skeleton("gpt"))
        assert np.array_equal(
            got["params"]["transformer_wte"]["embedding"],
            want["params"]["transformer_wte"]["embedding"],
        )
        assert "lm_head" not in got["params"]
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    safetensors_torch.save_file(state, str(tmp_path / "gpt.safetensors"))
    with pytest.raises(
        ConversionError, match=r"tied 'lm_head\.weight'.*'transformer\.wte\.weight'"
    ):
        load_torch_safetensors(tmp_path / "gpt.safetensors", _skeleton("gpt"))


def test_a_file_that_does_not_fit_is_refused_naming_every_key(tmp_path):
    state = get_model("weightnorm_mlp").build().state_dict()
    state = {k: v.clone() for k, v in state.items()}
    del state["out.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["fc1.parametrizations.weight.original1"] = torch.zeros(5, 5)
    state["out.weight"] = state["out.weight"].double()
    path = tmp_path / "bad.safetensors"
    safetensors_torch.save_file(state, str(path))
    with pytest.raises(ConversionError) as info:
        load_torch_safetensors(path, _skeleton("weightnorm_mlp"))
    err = info.value
    assert str(path) in str(err)
    assert err.missing == ["out.bias"] and err.unexpected == ["extra.weight"]
    assert sorted(k for k, _, _ in err.mismatched) == [
        "fc1.parametrizations.weight.original1",
        "out.weight",
    ]
    assert "shape (32, 16) float32" in str(err) and "shape (5, 5) float32" in str(err)
    assert "shape (3, 32) float64" in str(err)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(ConversionError, match=r"no safetensors file at .*nothing\.safetensors"):
        read_safetensors(tmp_path / "nothing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 32)
    with pytest.raises(ConversionError, match=r"junk\.safetensors.*not a readable safetensors"):
        load_torch_safetensors(tmp_path / "junk.safetensors", _skeleton("weightnorm_mlp"))


def test_bad_variables_write_nothing(tmp_path):
    model = get_model("weightnorm_mlp").build()
    variables = torch_to_flax(model)
    path = tmp_path / "out.safetensors"
    save_torch_safetensors(variables, model, path)
    before = path.read_bytes()
    bad = jax.tree_util.tree_map(lambda a: a, variables)
    del bad["params"]["out"]["bias"]
    bad["params"]["fc2"]["v"] = bad["params"]["fc2"]["v"][:1]
    bad["params"]["stray"] = {"kernel": np.zeros(2, np.float32)}
    with pytest.raises(ConversionError) as info:
        save_torch_safetensors(bad, _skeleton("weightnorm_mlp"), path)
    assert info.value.missing == ["params/out/bias"]
    assert info.value.unexpected == ["params/stray/kernel"]
    assert [k.split(" ")[0] for k, _, _ in info.value.mismatched] == ["params/fc2/v"]
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.safetensors"]
    with pytest.raises(ConversionError, match="is no directory"):
        save_torch_safetensors(variables, model, tmp_path / "missing" / "x.safetensors")


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    model = get_model("weightnorm_mlp").build()
    path = tmp_path / "out.safetensors"
    save_torch_safetensors(torch_to_flax(model), model, path)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(convert_files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_torch_safetensors(
            torch_to_flax(get_model("weightnorm_mlp").build(seed=1)), model, path
        )
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["out.safetensors"]


def test_the_module_is_not_touched(tmp_path):
    model = get_model("resnet").build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = _torch_file(get_model("resnet").build(seed=9), tmp_path / "r.safetensors")
    load_torch_safetensors(path, model)
    _assert_same_state(model.state_dict(), before)
