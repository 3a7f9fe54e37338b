"""Capture: a torch module's ``forward`` as a ``torch.export`` graph (default training IR,
non-strict, eval mode), and the module calls in it as a tree.

The graph is flat; each node's ``nn_module_stack`` names the module calls it ran inside, so
the nodes group into calls (``Call``), one per module call (a module called twice is two
calls, ``fc`` and ``fc@1``). A call of a module with a ``funcmod.nn`` twin
(``funcmod.port.modules``) is a leaf: its nodes are the twin's business, and its exact
arguments come from ``preserve_module_call_signature``. Every other call becomes code.

``find_unsupported`` lists everything the porter cannot write, with the module path and the
torch source line of each, before any code is generated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from funcmod.convert import tied_parameters
from funcmod.port.modules import ModuleSpec, module_spec_for
from funcmod.port.ops import lookup_op

__all__ = ["Call", "Captured", "UnsupportedError", "capture", "find_unsupported", "source_line"]

_VIEW_OPS = {
    "view",
    "slice",
    "select",
    "transpose",
    "permute",
    "unsqueeze",
    "squeeze",
    "expand",
    "as_strided",
    "diagonal",
    "t",
    "unflatten",
    "narrow",
    "alias",
    "split",
    "chunk",
    "unbind",
    "_unsafe_view",
}


class UnsupportedError(NotImplementedError):
    """What the porter cannot write, every item with its module path and torch source line.

    Attributes:
      items: ``(what, module path, source line)`` triples.
    """

    def __init__(self, items: list[tuple[str, str, str]]):
        self.items = items
        lines = [f"  {what}  in {path or '<root>'}  at {where}" for what, path, where in items]
        super().__init__(
            f"cannot port {len(items)} op(s)/module(s); extend the porter with "
            "funcmod.port.register_op / register_module:\n" + "\n".join(lines)
        )


@dataclass
class Call:
    """One module call: its nodes and child calls in graph order (``items``)."""

    path: str  # the module's path in the model ('' for the root)
    key: tuple[str, ...]  # the nn_module_stack keys to this call (unique per call)
    module: nn.Module
    spec: ModuleSpec | None  # the twin, for a leaf call
    items: list[Any] = field(default_factory=list)  # torch.fx.Node | Call
    signature: Any = None  # torch.export ModuleCallSignature of a twin call

    @property
    def call_id(self) -> str:
        return self.key[-1] if self.key else ""

    def nodes(self):
        """Every node in this call and its children."""
        for item in self.items:
            if isinstance(item, Call):
                yield from item.nodes()
            else:
                yield item

    def calls(self):
        yield self
        for item in self.items:
            if isinstance(item, Call):
                yield from item.calls()


@dataclass
class Captured:
    """What ``capture`` returns: the model, its ``torch.export`` program, the module-call tree
    rooted at ``root``, the tied state_dict keys and where each graph input comes from."""

    model: nn.Module
    program: Any  # torch.export.ExportedProgram
    root: Call
    tied: dict[str, str]  # alias state_dict key -> the key holding the tensor
    inputs: dict[str, tuple[str, str]]  # placeholder name -> (kind, torch target)
    user_inputs: list[str]
    twins: dict[str, ModuleSpec]  # module path -> twin, for leaf modules


def source_line(node: torch.fx.Node) -> str:
    """``file:line: code`` of the innermost torch source frame that made ``node``."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines()]
    frames = [
        (lines[i], lines[i + 1] if i + 1 < len(lines) else "")
        for i in range(len(lines))
        if lines[i].startswith("File ")
    ]
    if not frames:
        return "<unknown source>"
    head, code = frames[-1]
    parts = head.split(",")
    where = parts[0][len('File "') :].rstrip('"') + ":" + parts[1].strip().removeprefix("line ")
    return f"{where}: {code}"


def _twin_paths(model: nn.Module, tied: dict[str, str]) -> tuple[dict[str, ModuleSpec], set[str]]:
    """Modules that become twins (a registered class, not parametrized, owning no tied alias,
    not inside another twin), and modules whose code is written into their caller's: a
    registered class that reads a tied tensor held elsewhere (``lm_head`` tied to ``wte``),
    whose own class could not hold it."""
    out: dict[str, ModuleSpec] = {}
    inline: set[str] = set()

    def visit(module: nn.Module, path: str) -> None:
        spec = module_spec_for(module)
        prefix = f"{path}." if path else ""
        aliased = any(k.startswith(prefix) and k.count(".") == prefix.count(".") for k in tied)
        parametrized = torch.nn.utils.parametrize.is_parametrized(module)
        if spec is not None and path and not aliased and not parametrized:
            out[path] = spec
            return
        if spec is not None and path and aliased and not parametrized:
            inline.add(path)
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}")

    visit(model, "")
    return out, inline


def _is_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _inlined(path: str, inline: set[str]) -> bool:
    """A parametrization's own modules run as part of the module they parametrize."""
    return path in inline or path == "parametrizations" or ".parametrizations" in f".{path}"


def _inline_grad_regions(program: Any) -> None:
    """Write ``torch.no_grad()`` / ``enable_grad()`` regions (``wrap_with_set_grad_enabled``)
    into the graph: their nodes in place of the call, and a ``detach`` on each result of a
    no-grad region (the port's ``jax.lax.stop_gradient``)."""
    gm = program.graph_module
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or "wrap_with_set_grad_enabled" not in str(node.target):
            continue
        enabled, attr, *operands = node.args
        sub = getattr(gm, attr.target)
        env: dict[Any, Any] = {}
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        env.update(zip(placeholders, operands, strict=True))
        outs: list[Any] = []
        with graph.inserting_before(node):
            for n in sub.graph.nodes:
                if n.op == "placeholder":
                    continue
                if n.op == "output":
                    outs = [env.get(a, a) for a in n.args[0]]
                    continue
                new = graph.node_copy(n, env.__getitem__)
                if not new.meta.get("nn_module_stack"):
                    new.meta["nn_module_stack"] = node.meta.get("nn_module_stack")
                env[n] = new
            if not enabled:
                detached = []
                for o in outs:
                    d = graph.call_function(torch.ops.aten.detach.default, (o,))
                    d.meta.update({k: o.meta[k] for k in ("val", "nn_module_stack") if k in o.meta})
                    detached.append(d)
                outs = detached
        for user in list(node.users):
            user.replace_all_uses_with(outs[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)


def _float64(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    if isinstance(value, (tuple, list)):
        return type(value)(_float64(v) for v in value)
    if isinstance(value, dict):
        return {k: _float64(v) for k, v in value.items()}
    return value


def _align_float64(program: Any, model: nn.Module, args: tuple, kwargs: dict, preserve) -> None:
    """Capture a float64 copy as well and pair its nodes with ``program``'s
    (``node.meta['_port_alt']``): a dtype that is float32 in one capture and float64 in the
    other follows the model's dtype (``x.dtype``, a buffer's), one that is float32 in both is
    written in the model's code (``.float()``). Nothing is paired when the two graphs differ."""
    if not any(p.is_floating_point() for p in [*model.parameters(), *model.buffers()]):
        return
    twin = copy.deepcopy(model).double().eval()
    try:
        other = _export(twin, _float64(args), _float64(kwargs), preserve)
    except Exception:  # the float64 capture is a refinement only
        return
    _inline_grad_regions(other)
    mine = [n for n in program.graph.nodes if n.op == "call_function"]
    theirs = [n for n in other.graph.nodes if n.op == "call_function"]
    if len(mine) != len(theirs) or any(
        a.target != b.target for a, b in zip(mine, theirs, strict=False)
    ):
        return
    for a, b in zip(mine, theirs, strict=False):
        a.meta["_port_alt"] = b


def _batch_dims(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """``dynamic_shapes`` with the leading axis of every tensor input free (``Dim.AUTO``: export
    keeps it symbolic where the code allows and specialises it where not)."""

    def spec(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim:
            return {0: torch.export.Dim.AUTO}
        if isinstance(v, (tuple, list)):
            return type(v)(spec(x) for x in v)
        if isinstance(v, dict):
            return {k: spec(x) for k, x in v.items()}
        return None

    return spec(args), spec(kwargs)


def _export(model: nn.Module, args: tuple, kwargs: dict, preserve: tuple[str, ...]):
    """Export with a symbolic batch axis; with static shapes where that fails."""
    dyn_args, _ = _batch_dims(args, kwargs)
    try:
        if kwargs:
            raise ValueError("keyword inputs: static shapes")
        return torch.export.export(
            model,
            args,
            kwargs,
            dynamic_shapes=dyn_args,
            strict=False,
            preserve_module_call_signature=preserve,
        )
    except Exception:  # a model whose batch axis cannot stay symbolic: its example's shapes
        return torch.export.export(
            model, args, kwargs, strict=False, preserve_module_call_signature=preserve
        )


def capture(model: nn.Module, args: tuple, kwargs: dict | None = None) -> Captured:
    """Export ``model`` (in eval mode, restored afterwards) and group its graph into calls."""
    kwargs = dict(kwargs or {})
    tied = tied_parameters(model)
    twins, inline = _twin_paths(model, tied)
    was_training = model.training
    model.eval()
    try:
        program = _export(model, tuple(args), kwargs, tuple(twins))
    finally:
        model.train(was_training)
    _inline_grad_regions(program)
    _align_float64(program, model, tuple(args), kwargs, tuple(twins))
    signatures = {e.fqn: e.signature for e in program.module_call_graph if e.fqn}
    sig = program.graph_signature
    inputs = {
        s.arg.name: (s.kind.name, s.target) for s in sig.input_specs if hasattr(s.arg, "name")
    }
    root = Call("", (), model, None)
    by_key: dict[tuple[str, ...], Call] = {(): root}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).items())
        if stack and stack[0][1][0] == "":
            stack = stack[1:]
        call, key = root, ()
        for k, (path, _) in stack:
            if call.spec is not None:
                break
            if _inlined(path, inline) or not _is_module(model, path):
                continue  # (export's placeholder stacks for symbolic sizes name no module)
            key = (*key, k)
            child = by_key.get(key)
            if child is None:
                spec = twins.get(path)
                child = Call(path, key, model.get_submodule(path), spec)
                if spec is not None:
                    fqn = path + (k[k.index("@") :] if "@" in k else "")
                    child.signature = signatures.get(fqn)
                by_key[key] = child
                call.items.append(child)
            call = child
        call.items.append(node)
    user_inputs = [s.arg.name for s in sig.input_specs if s.kind.name == "USER_INPUT"]
    return Captured(model, program, root, tied, inputs, user_inputs, twins)


def _is_view_result(node: Any) -> bool:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return False
    name = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
    return name in _VIEW_OPS


def find_unsupported(cap: Captured) -> list[tuple[str, str, str]]:
    """Every node and module the porter cannot write: ``(what, module path, source line)``."""
    found: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()

    def add(what: str, path: str, where: str) -> None:
        if (what, path) not in seen:
            seen.add((what, path))
            found.append((what, path, where))

    for call in cap.root.calls():
        if call.spec is not None:
            if call.signature is None and not _single_input(call, cap.user_inputs):
                add(
                    f"module {type(call.module).__name__} (call signature not captured)",
                    call.path,
                    _first_line(call),
                )
            try:
                call.spec.arguments(call.module)
            except (NotImplementedError, ValueError) as e:
                add(f"module {type(call.module).__name__}: {e}", call.path, _first_line(call))
            continue
        for item in call.items:
            if isinstance(item, Call):
                continue
            entry = lookup_op(item.target)
            if entry is None:
                add(f"op {_target_name(item.target)}", call.path, source_line(item))
            elif entry.inplace and _is_view_result(item.args[0] if item.args else None):
                add(f"in-place {_target_name(item.target)} on a view", call.path, source_line(item))
    return found


def _single_input(call: Call, user_inputs: list[str]) -> bool:
    """Whether a twin call without a captured signature reads one value from outside (besides
    weights): then it is called with that value alone."""
    inside = set(call.nodes())
    outer = {
        a
        for n in inside
        for a in n.all_input_nodes
        if a not in inside and (a.op != "placeholder" or a.name in user_inputs)
    }
    return len(outer) <= 1


def _first_line(call: Call) -> str:
    node = next(iter(call.nodes()), None)
    return source_line(node) if node is not None else "<no nodes>"


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target.__name__}" if target.namespace == "aten" else str(target)
    return getattr(target, "__qualname__", None) or str(target)
