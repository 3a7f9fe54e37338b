"""Numerical parity between a PyTorch module and its Flax port.

``check_parity`` runs both on the same inputs and compares, leaf by leaf (``funcmod.tree``):

* the forward output;
* the gradient of ``sum(output * cotangent)`` (a fixed random cotangent, so every output element
  contributes) with respect to every input and every parameter.

Images are handled in PyTorch's layout: inputs are given NCHW and transposed to NHWC for the
port; the port's outputs and input gradients are transposed back before comparing, and parameter
gradients are mapped to Flax's layout by the conversion rules.

Run it in float32 (float32 inputs, a float32 module) or in float64 (float64 inputs, a
``module.double()`` twin, inside ``with jax.enable_x64(True):``). Integer and bool inputs
(token ids, masks) are passed to both as they are; gradients are taken with respect to the
float inputs and the parameters only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn

from funcmod.convert import check_against_template, torch_grads_to_flax, torch_to_flax
from funcmod.layout import inputs_to_channels_last, to_channels_first
from funcmod.precision import DTYPES, RTOL
from funcmod.tree import LeafDiff, compare_trees, leaves_with_paths

__all__ = ["ParityReport", "check_parity"]


@dataclass(frozen=True)
class ParityReport:
    """Forward and gradient errors of a port against its twin, per leaf."""

    name: str
    dtype: str
    rtol: float
    atol: float
    forward: list[LeafDiff] = field(default_factory=list)
    grads: list[LeafDiff] = field(default_factory=list)
    grad_atol: float = 0.0  # the absolute floor gradient leaves were held to (grad_floor)

    def __post_init__(self) -> None:
        # A report without a forward or a gradient leaf has compared nothing: it must not pass.
        if not self.forward or not self.grads:
            raise ValueError(
                f"a parity report needs at least one forward and one gradient leaf; got "
                f"{len(self.forward)} forward and {len(self.grads)} gradient leaves"
            )

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.forward + self.grads)

    @property
    def floored(self) -> list[str]:
        """Gradient leaves that pass only through the gradient floor (``grad_floor``): their
        relative error is above ``rtol``, their absolute error within ``grad_atol``."""
        return [
            d.path
            for d in self.grads
            if self.grad_atol and d.ok and d.max_rel > self.rtol and d.max_abs > self.atol
        ]

    @staticmethod
    def _max(diffs: list[LeafDiff], attr: str) -> float:
        return max((getattr(d, attr) for d in diffs), default=0.0)

    @property
    def forward_max_abs(self) -> float:
        return self._max(self.forward, "max_abs")

    @property
    def forward_max_rel(self) -> float:
        return self._max(self.forward, "max_rel")

    @property
    def grad_max_abs(self) -> float:
        return self._max(self.grads, "max_abs")

    @property
    def grad_max_rel(self) -> float:
        return self._max(self.grads, "max_rel")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "rtol": self.rtol,
            "atol": self.atol,
            "grad_atol": self.grad_atol,
            "floored": self.floored,
            "ok": self.ok,
            "forward": [d.to_dict() for d in self.forward],
            "grads": [d.to_dict() for d in self.grads],
        }

    def __str__(self) -> str:
        status = "PASS" if self.ok else "FAIL"
        floor = f", gradient floor {self.grad_atol:.2e}" if self.grad_atol else ""
        lines = [f"{self.name} [{self.dtype}] {status} (rtol {self.rtol:g}{floor})"]
        floored = set(self.floored)
        for kind, diffs in (("forward", self.forward), ("grad", self.grads)):
            for d in diffs:
                mark = (
                    "FAIL"
                    if not d.ok
                    else "flr "
                    if kind == "grad" and d.path in floored
                    else "ok  "
                )
                lines.append(
                    f"  {mark} {kind:7} {d.path:32} {d.shape!s:18} "
                    f"max abs {d.max_abs:.2e}  max rel {d.max_rel:.2e}"
                )
        if floored:
            lines.append(
                f"  flr: reference and error below the gradient floor {self.grad_atol:.2e} (rtol"
                " times the largest gradient element): a gradient that is zero in exact arithmetic"
            )
        return "\n".join(lines)


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _float_dtype(inputs: Sequence[np.ndarray], variables: Any) -> np.dtype:
    """The dtype of the float inputs (all float32 or all float64); integer and bool inputs
    (token ids, masks) pass through. Without a float input, the dtype of the variables."""
    for a in inputs:
        if not (_is_float(a) or np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(
                f"inputs must be float32/float64 arrays, or integer/bool ones passed through; "
                f"got {a.dtype}"
            )
    dtypes = {a.dtype for a in inputs if _is_float(a)}
    if not dtypes:
        dtypes = {np.dtype(leaf.dtype) for leaf in leaves_with_paths(variables).values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES.values():
        raise ValueError(
            f"inputs must all be float32 or all float64, got dtypes {sorted(map(str, dtypes))}"
        )
    return next(iter(dtypes))


def _check_variables_dtype(variables: Any, dtype: np.dtype) -> None:
    wrong = {
        path: str(leaf.dtype)
        for path, leaf in leaves_with_paths(variables).items()
        if np.issubdtype(leaf.dtype, np.floating) and np.dtype(leaf.dtype) != dtype
    }
    if wrong:
        raise ValueError(f"inputs are {dtype} but these variables are not: {wrong}")


def _check_tree_fits(tree: Any, template: Any, what: str) -> None:
    """Raise ``ConversionError`` unless ``tree`` has exactly the leaf paths and shapes of the
    port's ``template`` (dtypes are checked against the inputs separately)."""
    check_against_template(
        tree,
        template,
        dtypes=False,
        context=(
            f"{what} do not fit the port's variables (jax.eval_shape of its init on the "
            f"inputs): missing keys are the port's, absent from {what}; unexpected keys are in "
            f"{what} but not in the port"
        ),
    )


def _port_shapes(flax_module: Any, variables: Any, flax_inputs: Sequence[Any]) -> tuple[Any, Any]:
    """The port's output shape and variable tree, abstractly (``jax.eval_shape``: no FLOPs).

    A Linen module gives both from its own ``init`` on the inputs. An object that only has
    Linen's ``apply`` (``funcmod.nn.interop.LinenView`` over an NNX port) has no ``init``: its
    ``apply`` checks ``variables`` against the model's own parameters, strictly, so
    ``variables`` stands for its tree.
    """
    if isinstance(flax_module, nn.Module):
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        return jax.eval_shape(lambda *xs: flax_module.init_with_output(rngs, *xs), *flax_inputs)
    out = jax.eval_shape(lambda *xs: flax_module.apply(variables, *xs), *flax_inputs)
    return out, variables


def _shape_channels_first(shape: tuple[int, ...], layout: str | None) -> tuple[int, ...]:
    """The shape ``to_channels_first(a, layout)`` gives: ``(N, *S, C) -> (N, C, *S)``."""
    if layout is None or len(shape) < 2:
        return tuple(shape)
    return (shape[0], shape[-1], *shape[1:-1])


def check_parity(
    torch_module: torch.nn.Module,
    flax_module: nn.Module,
    variables: Any,
    inputs: Sequence[np.ndarray],
    *,
    input_layouts: Sequence[str | None] | None = None,
    output_layout: str | None = None,
    input_names: Sequence[str] | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    seed: int = 0,
    name: str | None = None,
    grad_floor: bool = False,
) -> ParityReport:
    """Compare forward outputs and all gradients of ``torch_module`` and ``flax_module``.

    Args:
      torch_module: the PyTorch module, in the dtype of ``inputs``. Its ``.grad`` fields are
        cleared afterwards; its weights are not touched.
      flax_module: the port: a Linen module, or an object with Linen's
        ``apply(variables, *xs)`` whose ``apply`` checks ``variables`` itself
        (``funcmod.nn.interop.LinenView``).
      variables: the port's variables (typically ``torch_to_flax(module)``).
      inputs: numpy arrays in PyTorch's layout: the float ones all float32 or all float64;
        integer and bool inputs (token ids, masks) are passed through as they are, and get no
        gradient. Without a float input, the variables' dtype is the one checked.
      input_layouts: per input, ``'NCHW'`` (or ``'NCL'``, ``'NCDHW'``) for an image, else None.
      output_layout: the output's layout, as for the inputs.
      input_names: labels for the input gradients (default ``x0, x1, ...``).
      rtol: the max relative error allowed per leaf; default ``funcmod.precision.RTOL["parity"]``.
      atol: a leaf also passes when its max absolute error is at most ``atol``.
      seed: seeds the random cotangent.
      grad_floor: a gradient leaf whose reference is itself below the rounding level of the
        whole gradient (its largest element at most ``rtol * G``, G the largest reference
        gradient element over all leaves) passes when its max absolute error is at most
        ``rtol * G``. Such a gradient is zero in exact arithmetic (an attention key bias, which
        softmax cancels): both frameworks return rounding noise for it, and its per-leaf
        relative error is meaningless. Every other leaf keeps its own ``rtol``.
      name: the report's title (default: the Flax module's class name).

    Returns:
      A ``ParityReport`` with the max absolute and relative error of every leaf.

    Raises:
      ValueError: float inputs that are not all float32 or all float64 (or float64 with 64-bit
        JAX off), inputs of any other dtype; variables of another dtype; outputs of different
        shapes (both named), checked after the twin's forward and before any gradient.
      funcmod.convert.ConversionError: the twin's converted variables, or ``variables``, do not
        have exactly the keys and shapes of the port's own (``jax.eval_shape`` of
        ``flax_module.init`` on the inputs in the port's layout); every key is named.
    """
    inputs = [np.asarray(a) for a in inputs]
    dtype = _float_dtype(inputs, variables)
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "float64 parity needs 64-bit JAX: run it inside `with jax.enable_x64(True):`"
        )
    _check_variables_dtype(variables, dtype)
    layouts = list(input_layouts) if input_layouts is not None else [None] * len(inputs)
    names = list(input_names) if input_names is not None else [f"x{i}" for i in range(len(inputs))]
    if not len(layouts) == len(names) == len(inputs):
        raise ValueError(
            f"got {len(inputs)} inputs but {len(layouts)} layouts and {len(names)} names"
        )
    rtol = RTOL["parity"][dtype] if rtol is None else rtol
    flax_inputs = [jnp.asarray(a) for a in inputs_to_channels_last(inputs, layouts)]

    # Before any gradient: the port's output shape and variable tree (abstractly, from its init),
    # which the twin's output, the twin's parameters and ``variables`` must all fit.
    flax_out_shape, template = _port_shapes(flax_module, variables, flax_inputs)
    diff = [i for i, a in enumerate(inputs) if _is_float(a)]  # inputs with a gradient
    torch_inputs = [torch.from_numpy(a.copy()) for a in inputs]
    for i in diff:
        torch_inputs[i].requires_grad_(True)
    torch_module.zero_grad(set_to_none=True)
    torch_out = torch_module(*torch_inputs)
    port_shape = _shape_channels_first(flax_out_shape.shape, output_layout)
    if tuple(torch_out.shape) != port_shape:
        raise ValueError(
            f"outputs differ in shape: the twin gives {tuple(torch_out.shape)}, the port "
            f"{port_shape} (in the twin's layout; {tuple(flax_out_shape.shape)} as the port "
            "returns it)"
        )
    _check_tree_fits(torch_to_flax(torch_module), template, "the twin's converted variables")
    _check_tree_fits(variables, template, "variables")

    # PyTorch: backward of sum(out * cotangent).
    cotangent = np.random.default_rng(seed).standard_normal(tuple(torch_out.shape)).astype(dtype)
    (torch_out * torch.from_numpy(cotangent)).sum().backward()
    torch_grads = {
        **torch_grads_to_flax(torch_module),
        **{names[i]: torch_inputs[i].grad.numpy() for i in diff},
    }
    torch_out = torch_out.detach().numpy()
    torch_module.zero_grad(set_to_none=True)

    # Flax: the same loss, differentiated with respect to the params and every input.
    params = variables.get("params", {})
    others = {k: v for k, v in variables.items() if k != "params"}

    def loss(params, float_xs, other_xs):
        xs = list(other_xs)
        for i, x in zip(diff, float_xs, strict=True):
            xs[i] = x
        out = flax_module.apply({**others, "params": params}, *xs)
        out = to_channels_first(out, output_layout)  # NHWC -> NCHW
        return jnp.sum(out * cotangent), out

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    others_in = [None if i in diff else x for i, x in enumerate(flax_inputs)]
    (_, flax_out), (g_params, g_inputs) = grad_fn(params, [flax_inputs[i] for i in diff], others_in)
    flax_grads = {"params": g_params} if params else {}
    for i, g in zip(diff, g_inputs, strict=True):
        flax_grads[names[i]] = to_channels_first(g, layouts[i])  # NHWC -> NCHW
    if not params:
        torch_grads.pop("params", None)

    grads = compare_trees(flax_grads, torch_grads, rtol=rtol, atol=atol)
    grad_atol = 0.0
    if grad_floor:
        # Only a leaf whose reference is itself below the rounding level of the whole gradient
        # (its largest element <= rtol * G) is held to that level instead of its own scale.
        ref = {p: np.abs(np.asarray(g)) for p, g in leaves_with_paths(torch_grads).items()}
        scale = max((float(g.max()) for g in ref.values() if g.size), default=0.0)
        grad_atol = max(atol, rtol * scale)
        grads = [
            dataclasses.replace(d, ok=True)
            if not d.ok and float(ref[d.path].max()) <= grad_atol and d.max_abs <= grad_atol
            else d
            for d in grads
        ]
    return ParityReport(
        name=name or type(flax_module).__name__,
        dtype=dtype.name,
        rtol=rtol,
        atol=atol,
        forward=compare_trees({"output": flax_out}, {"output": torch_out}, rtol=rtol, atol=atol),
        grads=grads,
        grad_atol=grad_atol,
    )
