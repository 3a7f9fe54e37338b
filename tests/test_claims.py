"""The fact check of the seed articles (docs/claims.md): one test per verdict.

Each test pins what PyTorch really does, so it fails if PyTorch's behaviour changes and the verdict
in docs/claims.md would need revisiting. The article's modules come from
``funcmod.articles.torch_models`` where the twin behaves like the article's code; where the
article's code differs from the twin (an in-place add, an overridden ``__call__``, a wrong shape)
the test builds that variant itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from funcmod.articles import models, torch_models  # noqa: E402
from funcmod.convert import torch_to_flax  # noqa: E402
from funcmod.tree import assert_trees_close  # noqa: E402

# --- "Can PyTorch tensor methods be used within nn.Modules?" -----------------------------------


def test_adder_prints_4_6_and_is_differentiable():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = torch.tensor([3.0, 4.0], requires_grad=True)
    out = torch_models.SimpleAdder()(x, y)
    assert str(out.detach()) == "tensor([4., 6.])"
    assert out.grad_fn is not None and type(out.grad_fn).__name__ == "AddBackward0"
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0] and y.grad.tolist() == [1.0, 1.0]


def test_custom_linear_output_is_1x3_with_grad_fn():
    torch.manual_seed(0)
    out = torch_models.CustomLinear(in_features=2, out_features=3)(torch.randn(1, 2))
    assert tuple(out.shape) == (1, 3)
    assert type(out.grad_fn).__name__ == "AddBackward0"


def test_requires_grad_not_parameter_is_what_autograd_tracks():
    """nn.Parameter registers a tensor with the module (and sets requires_grad); autograd
    itself only looks at requires_grad."""

    class PlainTensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.ones(3, requires_grad=True)  # not an nn.Parameter

        def forward(self, x):
            return (x * self.w).sum()

    m = PlainTensor()
    m(torch.arange(3.0)).backward()
    assert m.w.grad.tolist() == [0.0, 1.0, 2.0]  # tracked by autograd...
    assert list(m.parameters()) == [] and "w" not in m.state_dict()  # ...unknown to the module
    assert nn.Parameter(torch.zeros(2)).requires_grad


def test_risky_module_raises_at_the_inplace_add_not_at_backward():
    class InPlaceAdd(nn.Module):  # the article's version: x += 1 on the input
        def forward(self, x):
            x += 1
            return x

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"leaf Variable that requires grad.*in-place"):
        InPlaceAdd()(x)  # raised in forward, before any print or backward
    assert x.tolist() == [1.0, 2.0]  # and nothing was modified

    # Without requires_grad it "works", by mutating the caller's tensor.
    plain = torch.tensor([1.0, 2.0])
    InPlaceAdd()(plain)
    assert plain.tolist() == [2.0, 3.0]


def test_risky_module_backward_on_a_vector_output_needs_a_gradient():
    """Even out of place, the article's ``output.backward()`` fails: the output has 2 elements."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = torch_models.RiskyModule()(x)
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        out.backward()
    out.backward(torch.ones(2))
    assert x.grad.tolist() == [1.0, 1.0]


def test_inplace_on_a_saved_tensor_raises_at_backward():
    x = torch.ones(2, requires_grad=True)
    y = x.sigmoid()  # sigmoid saves its output for the backward pass
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_inplace_that_autograd_does_not_need_is_fine():
    x = torch.ones(2, requires_grad=True)
    y = x * 3  # mul saves x, not y
    y += 1
    y.sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_bypassing_autograd_silently_gives_wrong_gradients_only_via_data():
    """Autograd refuses most ways of escaping it (errors above, and numpy() below); the silent
    failure the article warns about needs an explicit escape hatch such as ``.data``."""
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="Can't call numpy"):
        x.numpy()
    y = x.sigmoid()
    y.data.mul_(2)  # invisible to autograd's version counter
    y.sum().backward()
    s = torch.sigmoid(torch.ones(3))
    true_grad = s * (1 - s)
    assert not torch.allclose(x.grad, true_grad)  # silently wrong: uses the doubled output
    assert torch.allclose(x.grad, (2 * s) * (1 - 2 * s))


def test_detach_shares_the_version_counter_so_an_inplace_edit_through_it_raises():
    """``.detach()`` is not an escape: it shares the tensor's version counter, so autograd sees
    an in-place edit made through it and refuses to backpropagate. ``.data`` and a write into a
    ``.detach().numpy()`` view are not seen."""
    x = torch.ones(3, requires_grad=True)
    y = x.sigmoid()  # sigmoid saves its output for backward
    y.detach().mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    x = torch.ones(3, requires_grad=True)
    y = x.sigmoid()
    y.detach().numpy()[:] *= 2  # numpy writes the memory behind the counter's back
    y.sum().backward()
    s = torch.sigmoid(torch.ones(3))
    assert torch.allclose(x.grad, (2 * s) * (1 - 2 * s))  # silently wrong, like .data


def test_a_numpy_round_trip_cuts_the_graph_and_upstream_weights_stop_learning():
    """The common silent failure: a value taken through numpy and back is a new leaf, so the
    layers before it get no gradient (``None``) and an optimizer never moves them."""
    first, second = nn.Linear(2, 2), nn.Linear(2, 1)
    h = first(torch.ones(1, 2))
    h = torch.from_numpy(h.detach().numpy() * 2.0)  # "some numpy post-processing"
    second(h).sum().backward()
    assert first.weight.grad is None and first.bias.grad is None
    assert second.weight.grad is not None


def test_non_differentiable_operations_get_no_grad_fn():
    x = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    assert (x + 1).grad_fn is not None
    assert torch.argmax(x).grad_fn is None  # an integer index: nothing to differentiate
    assert (x > 1).grad_fn is None  # a comparison gives booleans
    assert x.long().grad_fn is None  # an integer cast cuts the graph


# --- "Why do PyTorch Tensor methods to nn.Modules?" ---------------------------------------------


def test_tensors_know_about_gradients():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 2
    assert x.requires_grad and x.is_leaf and x.grad is None
    assert type(y.grad_fn).__name__ == "MulBackward0"  # the graph lives on the tensors
    y.sum().backward()  # no module anywhere
    assert x.grad.tolist() == [2.0, 2.0, 2.0]


def test_mlp_output_is_1x2():
    out = torch_models.MLP(10, 5, 2)(torch.randn(1, 10))
    assert tuple(out.shape) == (1, 2)


def test_simple_cnn_output_shape_is_1_16_32_32():
    out = torch_models.SimpleCNN(3, 16)(torch.randn(1, 3, 32, 32))
    assert str(out.shape) == "torch.Size([1, 16, 32, 32])"


def test_multiply_examples_print_2_2_2_and_6():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * 2).sum().backward()
    assert str(x.grad) == "tensor([2., 2., 2.])"

    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    m = torch_models.MultiplyByTwo()
    m(x).sum().backward()
    assert str(x.grad) == "tensor([2., 2., 2.])"
    assert str(m.multiplier.grad) == "tensor(6.)"  # d/dm sum(m * x) = sum(x)


def test_gradients_live_on_tensors_not_on_modules():
    m = torch_models.MultiplyByTwo()
    m(torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    (param,) = m.parameters()
    assert param is m.multiplier and param.grad is not None
    assert not hasattr(m, "grad") and not hasattr(m, "grads")


def test_module_tracks_registered_parameters_whatever_requires_grad():
    m = nn.Linear(2, 2)
    m.weight.requires_grad_(False)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]  # frozen, still tracked


def test_modules_do_not_update_parameters_backward_only_fills_grad():
    torch.manual_seed(0)
    m = nn.Linear(3, 1)
    before = m.weight.detach().clone()
    m(torch.randn(4, 3)).sum().backward()
    assert torch.equal(m.weight.detach(), before) and m.weight.grad is not None
    torch.optim.SGD(m.parameters(), lr=0.1).step()  # the optimizer updates, not the module
    assert not torch.equal(m.weight.detach(), before)


def test_plain_tensor_code_gets_gradients_without_a_module():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    x = torch.randn(4, 3)
    torch.nn.functional.linear(x, w, b).sum().backward()
    layer(x).sum().backward()
    assert torch.allclose(w.grad, layer.weight.grad) and torch.allclose(b.grad, layer.bias.grad)


def test_tensor_has_no_module_methods():
    t = torch.zeros(2)
    assert not hasattr(t, "parameters") and not hasattr(t, "forward")
    assert not isinstance(t, nn.Module)


def test_tensor_and_module_share_a_dozen_method_names():
    """Separate jobs, but a shared vocabulary for moving and casting: ``to``, ``float``,
    ``double``, ``half``, ``cuda``, ``cpu``, ... exist on both (a module applies them to every
    parameter and buffer)."""
    public = lambda cls: {n for n in dir(cls) if not n.startswith("_")}  # noqa: E731
    shared = public(torch.Tensor) & public(nn.Module)
    assert {"to", "float", "double", "half", "bfloat16", "cpu", "cuda", "type"} <= shared
    assert 8 <= len(shared) <= 16, sorted(shared)
    assert nn.Linear(2, 2).double().weight.dtype == torch.float64


# --- "Why does a Pytorch Tensor methods to nn.Modules?" -----------------------------------------


def test_module_mean_raises_attribute_error():
    model = torch_models.SimpleConvNet()
    with pytest.raises(AttributeError, match="'Conv2d' object has no attribute 'mean'"):
        model.conv1.mean()


def test_module_std_raises_attribute_error():
    model = torch_models.SimpleConvNet()
    with pytest.raises(AttributeError, match="'Conv2d' object has no attribute 'std'"):
        model.conv1.std()


def test_module_getattr_only_finds_registered_names():
    """No metaclass and no forwarding: ``nn.Module.__getattr__`` looks in ``_parameters``,
    ``_buffers`` and ``_modules``, and raises for anything else."""
    assert type(nn.Module) is type and type(nn.Conv2d) is type
    conv = nn.Conv2d(3, 16, 3)
    assert conv.weight is conv._parameters["weight"]
    assert not any(
        hasattr(nn.Module, name) for name in ("mean", "std", "sum", "__torch_function__")
    )


def test_parameter_averaging_loop_is_mean_of_means():
    torch.manual_seed(0)
    model = torch_models.SimpleConvNet()
    total, count = 0, 0
    for p in model.parameters():  # the article's loop, in effect
        total += p.mean()
        count += 1
    result = total / count
    w, b = model.conv1.weight, model.conv1.bias
    assert count == 2
    assert torch.allclose(result, (w.mean() + b.mean()) / 2)
    everything = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert everything.numel() == 448  # 432 weights and 16 biases, weighted 1:1 by the loop
    assert abs(result.item() - everything.mean().item()) > 1e-3  # not the mean of all values
    assert type(result.grad_fn).__name__ == "DivBackward0"  # and it is part of a graph


def test_article_conv_net_ignores_its_64x64_input():
    out = torch_models.SimpleConvNet()(torch.randn(1, 3, 64, 64))
    assert tuple(out.shape) == (1, 16, 64, 64)


# --- "How does PyTorch's nn.Module class function internally?" ----------------------------------


def test_attribute_assignment_registers_but_plain_lists_do_not():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.direct = nn.Linear(2, 2)
            self.plain_list = [nn.Linear(2, 2)]
            self.module_list = nn.ModuleList([nn.Linear(2, 2)])

    names = {n.split(".")[0] for n, _ in Holder().named_parameters()}
    assert names == {"direct", "module_list"}


def test_register_parameter_equals_parameter_assignment():
    class ByAttribute(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

    class ByRegister(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("w", nn.Parameter(torch.ones(2)))

    class PlainTensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.ones(2)

    assert [n for n, _ in ByAttribute().named_parameters()] == ["w"]
    assert [n for n, _ in ByRegister().named_parameters()] == ["w"]
    assert list(PlainTensor().named_parameters()) == []


def test_forward_is_required_and_call_dispatches_to_it():
    class NoForward(nn.Module):
        pass

    with pytest.raises(NotImplementedError, match='missing the required "forward" function'):
        NoForward()(torch.ones(1))
    assert nn.Module.__call__ is not nn.Linear.forward  # __call__ is defined once, on Module


class _CallOverride(nn.Module):
    """The article's SimpleLinear: ``__call__`` overridden instead of ``forward``."""

    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim)

    def __call__(self, x):
        return self.linear(x)


def test_call_override_runs_and_prints_1x5():
    assert str(_CallOverride(10, 5)(torch.randn(1, 10)).shape) == "torch.Size([1, 5])"


def test_call_override_skips_forward_hooks_and_pre_hooks():
    calls = []
    for module in (_CallOverride(10, 5), torch_models.SimpleLinear(10, 5)):
        module.register_forward_pre_hook(lambda m, inputs: calls.append((type(m).__name__, "pre")))
        module.register_forward_hook(
            lambda m, inputs, out: calls.append((type(m).__name__, "post"))
        )
        module(torch.randn(1, 10))
    # Only the module that defines forward ran its hooks (the inner Linear has none).
    assert calls == [("SimpleLinear", "pre"), ("SimpleLinear", "post")]


def test_backward_runs_only_when_called():
    torch.manual_seed(0)
    model = torch_models.SimpleLinear(10, 5)
    loss = model(torch.randn(2, 10)).pow(2).sum()
    assert loss.grad_fn is not None
    assert all(p.grad is None for p in model.parameters())  # a loss alone computes nothing
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_autograd_uses_requires_grad_not_registration():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    model.bias.requires_grad_(False)  # registered, excluded
    extra = torch.ones(1, requires_grad=True)  # not registered, included
    (model(torch.randn(2, 3)) * extra).sum().backward()
    assert model.bias.grad is None and model.weight.grad is not None and extra.grad is not None


def test_batchnorm_state_updates_only_in_training_mode():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    x = torch.randn(8, 3) + 5.0
    bn.eval()
    bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(3))  # eval: untouched
    bn.train()
    bn(x)
    assert torch.allclose(bn.running_mean, 0.1 * x.mean(0))  # train: momentum 0.1
    assert int(bn.num_batches_tracked) == 1


def test_super_init_is_required_before_assigning_modules():
    class Early(nn.Module):
        def __init__(self):
            self.linear = nn.Linear(1, 1)
            super().__init__()

    with pytest.raises(AttributeError, match=r"cannot assign module before Module.__init__"):
        Early()


class _ArticleCustomModule(nn.Module):
    """The article's CustomModule: ``weight_custom`` is (hidden_dim, output_dim)."""

    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.linear1 = nn.Linear(input_dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, output_dim)
        self.register_parameter("weight_custom", nn.Parameter(torch.randn(hidden_dim, output_dim)))

    def forward(self, x):
        x = torch.relu(self.linear1(x))
        return self.linear2(torch.matmul(x, self.weight_custom))  # (1, 5) into Linear(20, 5)


def test_article_custom_module_raises_shape_error():
    with pytest.raises(
        RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied \(1x5 and 20x5\)"
    ):
        _ArticleCustomModule(10, 20, 5)(torch.randn(1, 10))
    # It only runs when output_dim == hidden_dim, the case the fixed twin makes general.
    assert tuple(_ArticleCustomModule(10, 20, 20)(torch.randn(1, 10)).shape) == (1, 20)
    assert tuple(torch_models.CustomModule(10, 20, 5)(torch.randn(1, 10)).shape) == (1, 5)


def test_registered_parameter_is_treated_like_layer_parameters():
    model = torch_models.CustomModule(10, 20, 5)
    assert "weight_custom" in dict(model.named_parameters())
    assert "weight_custom" in model.state_dict()
    model(torch.randn(2, 10)).sum().backward()
    assert model.weight_custom.grad is not None
    params = torch_to_flax(model)["params"]  # and it converts like the others
    assert params["weight_custom"].shape == (20, 20)


def test_sequential_output_is_1x5_children_are_modules_named_by_index():
    torch.manual_seed(0)
    seq = torch_models.SequentialModel(10, 20, 5)
    x = torch.randn(1, 10)
    out = seq(x)
    assert str(out.shape) == "torch.Size([1, 5])"
    assert [name for name, _ in seq.named_children()] == ["0", "1", "2"]
    assert all(isinstance(child, nn.Module) for child in seq)
    assert torch.equal(out, seq[2](seq[1](seq[0](x))))  # chaining, in order


def test_no_grad_output_cannot_be_backpropagated():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        loss = model(torch.ones(1, 2)).sum()
    assert not loss.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        loss.backward()


def test_forward_may_return_any_python_object():
    class Dicty(nn.Module):
        def forward(self, x):
            return {"double": 2 * x, "note": "any object"}

    out = Dicty()(torch.ones(2))
    assert out["note"] == "any object" and out["double"].tolist() == [2.0, 2.0]


# --- the JAX/Flax counterparts named in the table --------------------------------------------


def test_flax_counterparts_mean_of_params_and_no_backward():
    """In Flax the parameters are a pytree: a per-tensor mean is a tree_map, the mean of all
    values a concatenation; and nothing is differentiated until jax.grad is called."""
    torch.manual_seed(0)
    twin = torch_models.SimpleConvNet()
    params = torch_to_flax(twin)["params"]
    means = jax.tree_util.tree_map(jnp.mean, params)
    assert_trees_close(
        means,
        {
            "conv1": {
                "kernel": twin.conv1.weight.mean().item(),
                "bias": twin.conv1.bias.mean().item(),
            }
        },
        rtol=1e-5,
    )
    flat = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(params)])
    everything = torch.cat([p.detach().flatten() for p in twin.parameters()])
    assert_trees_close(jnp.mean(flat), everything.mean().item(), rtol=1e-5)

    port = models.SimpleLinear(10, 5)
    x = jnp.ones((1, 10))
    variables = port.init(jax.random.key(0), x)
    grads = jax.grad(lambda p: jnp.sum(port.apply({"params": p}, x) ** 2))(variables["params"])
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(variables["params"])
    assert np.all(np.isfinite(np.asarray(grads["linear"]["kernel"])))


def test_flax_lists_of_layers_are_registered_or_refused():
    """PyTorch silently ignores layers in a plain list; Linen registers them (``layers_0``) and
    NNX refuses a plain list that holds modules."""
    variables = models.SequentialModel().init(jax.random.key(0), jnp.ones((1, 10)))
    assert set(variables["params"]) == {"layers_0", "layers_2"}

    from flax import nnx

    class PlainList(nnx.Module):
        def __init__(self):
            self.layers = [nnx.Linear(2, 2, rngs=nnx.Rngs(0))]

    with pytest.raises(ValueError, match="static attribute 'layers'"):
        PlainList()


def test_jax_grad_also_needs_a_scalar_and_refuses_numpy():
    with pytest.raises(TypeError, match="only defined for scalar-output functions"):
        jax.grad(lambda x: x + 1)(jnp.ones(2))
    with pytest.raises(jax.errors.TracerArrayConversionError):
        jax.grad(lambda x: jnp.sum(jnp.asarray(np.asarray(x))))(jnp.ones(2))


# --- the document itself ------------------------------------------------------------------------


def test_claims_table_cites_existing_tests_and_counts_its_verdicts():
    """Every test the table cites exists here, every test here is cited, and the summary
    sentence counts the verdicts the table gives."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "claims.md").read_text("utf-8")
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, len(rows) + 1))
    cited = {name for r in rows for name in re.findall(r"`(test_\w+)`", r.split("|")[7])}
    defined = {name for name in globals() if name.startswith("test_")}
    defined.discard("test_claims_table_cites_existing_tests_and_counts_its_verdicts")
    assert cited - defined == set(), "cited but not defined"
    assert defined - cited == set(), "defined but not cited"
    verdicts = [r.split("|")[4].strip() for r in rows]
    holds = sum(v == "holds" for v in verdicts)
    fails = sum(v == "does not hold" for v in verdicts)
    only = sum(v.startswith("holds only") for v in verdicts)
    assert holds + fails + only == len(rows)
    summary = (
        f"Of the {len(rows)} claims below, {holds} hold, {fails} do not hold and {only} hold "
        f"only under a condition."
    )
    assert summary in " ".join(text.split())
