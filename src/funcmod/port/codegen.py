"""Code generation: a captured graph (``funcmod.port.capture``) as Flax Linen source.

One Linen class per torch module with its own ``forward`` (same class name; instances whose
code differs get ``Name_1``, ``Name_2``), declaring its children in ``setup`` under the torch
attribute names (``nn.Sequential``'s children as ``layers``, ``ModuleList``/``ModuleDict``
attributes as Python lists/dicts: the names ``funcmod.convert`` gives), so the variables
``torch_to_flax`` returns load without renaming. A child with a ``funcmod.nn`` twin is that twin,
built with the torch module's constructor arguments. ``__call__`` has one statement per graph
node (named after torch's nodes, per class), a shape comment on every layout change, and a
``train: bool = False`` keyword when something inside depends on it. Inputs and outputs are in
PyTorch's layout.
"""

from __future__ import annotations

import builtins
import inspect
import keyword
import re
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn

import funcmod.port.ops_index
import funcmod.port.ops_nn
import funcmod.port.ops_shape
import funcmod.port.ops_tensor  # noqa: F401  (the four register the emitters)
from funcmod.port.capture import Call, Captured, source_line
from funcmod.port.declare import ClassDef, State, attr_expr, declarations
from funcmod.port.dtypes import dtype_writer, node_writer, source_of
from funcmod.port.ops import CHECKS, DROP, OpCall, Same, Var, lookup_op, render
from funcmod.port.params import TensorRef, constant_source, resolve

__all__ = ["HEADER", "CodegenError", "generate"]

HEADER = """import jax
import jax.numpy as jnp
from flax import linen

from funcmod import nn
from funcmod.nn import functional as F
"""
_RESERVED = {"self", "train", "jnp", "jax", "F", "nn", "linen", "float", "int", "bool", "list"}


def _used(import_line: str, code: str) -> bool:
    if not import_line.strip():
        return True
    name = import_line.split()[-1]
    return re.search(rf"\b{re.escape(name)}\.", code) is not None


class CodegenError(NotImplementedError):
    """A structure the generator cannot write (listed with module paths)."""


class _Namer:
    def __init__(self) -> None:
        self.used: set[str] = set()

    def fresh(self, base: str, *, node: bool = True) -> str:
        """A new name from ``base``: a graph node's (``linear_3`` -> ``linear``, numbered per
        class) or, with ``node=False``, a module attribute's, kept as it is (``ln_1``)."""
        if node:
            base = re.sub(r"_\d+$", "", base)
        base = base.strip("_") or "v"
        base = re.sub(r"\W", "_", base)
        if base[0].isdigit():
            base = "v" + base
        name, i = base, 1
        while (
            name in self.used
            or name in _RESERVED
            or keyword.iskeyword(name)
            or (hasattr(builtins, name))
        ):
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def _graph_index(cap: Captured) -> dict[torch.fx.Node, int]:
    return {n: i for i, n in enumerate(cap.program.graph.nodes)}


def _interface(call: Call, order: dict) -> tuple[list, list]:
    """A call's inputs, in the order its code first reads them (the same for every instance of
    a class, whatever order the caller made them in), and its outputs, in graph order. A
    symbolic size that one of the tensor inputs carries (the batch size) is no input: the
    class reads it from that tensor (``_derived_sizes``)."""
    inside = set(call.nodes())
    ins: dict[torch.fx.Node, None] = {}
    for n in sorted(inside, key=order.get):
        for a in n.all_input_nodes:
            if a not in inside and (a.op != "placeholder" or _is_user(a)):
                ins.setdefault(a, None)
    derived = _derived_sizes(list(ins))
    outs = sorted((n for n in inside if any(u not in inside for u in n.users)), key=order.get)
    return [n for n in ins if n not in derived], outs


def _derived_sizes(nodes: list) -> dict:
    """Symbolic sizes among ``nodes`` that a tensor among them has as an axis:
    ``{size node: (tensor node, axis)}``."""
    out = {}
    tensors = [n for n in nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    for n in nodes:
        v = n.meta.get("val")
        if not isinstance(v, torch.SymInt):
            continue
        for t in tensors:
            dims = [str(d) for d in t.meta["val"].shape]
            if str(v) in dims:
                out[n] = (t, dims.index(str(v)))
                break
    return out


def _is_user(node: torch.fx.Node) -> bool:
    return node.meta.get("_port_user", False)


def _needs_train(call: Call) -> bool:
    if not call.spec.takes_train():
        return False
    m = call.module
    for attr in ("p", "dropout"):
        v = getattr(m, attr, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
            return False
        if isinstance(v, nn.Dropout) and v.p == 0:
            return False
    return True


def _resolve_all(st: State) -> None:
    cap = st.cap
    program = cap.program
    values = {**program.state_dict, **program.constants}
    for name, (kind, target) in cap.inputs.items():
        if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            try:
                ref = resolve(cap.model, kind, target, cap.tied, values[target])
            except NotImplementedError as e:  # an error only where generated code reads it
                ref = TensorRef("error", owner=target, value=str(e))
            st.refs[name] = ref
    # leaves read by generated code are declared by their (generated) owner
    for call in cap.root.calls():
        if call.spec is not None:
            continue
        for node in call.items:
            if isinstance(node, Call):
                continue
            for a in node.all_input_nodes:
                ref = st.refs.get(a.name)
                if ref is not None and ref.kind == "variable" and ref.owner not in cap.twins:
                    st.own.setdefault(ref.owner, {})[ref.leaf] = ref


def _input_names(call: Call, count: int) -> list[str] | None:
    try:
        params = list(inspect.signature(call.module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names if len(names) == count else None


def _emit_class(st: State, call: Call, ins: list, outs: Any, root: bool = False) -> ClassDef:
    order = _graph_index(st.cap)
    namer = _Namer()
    env: dict[torch.fx.Node, str] = {}
    lines: list[str] = []
    needs_train = False
    given = _input_names(call, len(ins)) if not root else [n.name for n in ins]
    params = []
    for i, node in enumerate(ins):
        name = namer.fresh(given[i] if given else ("x" if len(ins) == 1 else node.name))
        env[node] = name
        params.append(name)
    # sizes the caller's tensors carry, read here from the input that carries them; bound at
    # the first statement that reads one (a class that never reads its batch size binds none)
    derived: dict[torch.fx.Node, tuple[torch.fx.Node, int]] = {}
    sizes: dict[torch.fx.Node, tuple[str, str]] = {}  # sym_size nodes not read yet
    if not root:
        inside = set(call.nodes())
        outer = {a for n in inside for a in n.all_input_nodes if a not in inside}
        for size, (tensor, axis) in _derived_sizes([*ins, *outer]).items():
            if tensor in env and size not in env:
                derived[size] = (tensor, axis)

    like: list[str] = []  # the keyword input a class without a model-dtype tensor takes

    def source(node: torch.fx.Node | None) -> str | None:
        """A name whose dtype is the model's: derived from ``node``, or, in a class that holds
        none (Llama's rotary embedding reads only its caller's x.dtype), ``like``, a tensor
        its caller passes."""
        found = source_of(node, env, st.capture_float)
        if found is None and not root and st.float_state:
            like[:] = like or [namer.fresh("like", node=False)]
            found = like[0]
        return found

    def writer(node: torch.fx.Node | None):  # dtypes as the statement of ``node`` writes them
        return node_writer(node, st.dtypes, st.capture_float, lambda: source(node))

    reading: list = [None]  # the node whose statement is being written (its constants' dtype)

    def value(node: torch.fx.Node) -> str:
        if node in env:
            return env[node]
        if node in derived:
            tensor, axis = derived[node]
            env[node] = namer.fresh("batch" if axis == 0 else node.name, node=False)
            lines.append(f"{env[node]} = {env[tensor]}.shape[{axis}]")
            return env[node]
        if node in sizes:  # a size this class's graph reads off a tensor, bound at first use
            name, expr = sizes.pop(node)
            env[node] = namer.fresh(name, node=name != "batch")
            lines.append(f"{env[node]} = {expr}")
            return env[node]
        ref = st.refs.get(node.name)
        if ref is None:
            st.errors.append(
                (f"value {node.name} is not available here", call.path, source_line(node))
            )
            return "None"
        env[node] = _read(st, call, node, ref, namer, lines, writer(reading[0]))
        return env[node]

    def arg(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return Var(value(a))
        if isinstance(a, (list, tuple)):
            return type(a)(arg(x) for x in a)
        return a

    dead = _dead_nodes(call)
    for item in call.items:
        if isinstance(item, Call):
            needs_train |= _emit_child(st, call, item, order, env, namer, lines, arg, source)
            continue
        node = item
        entry = lookup_op(node.target)
        if entry is None:
            continue  # listed by find_unsupported
        if node in dead:
            continue  # a value nothing reads (the indices of a max) or only checks: no statement
        reading[0] = node
        c = OpCall(
            node,
            arg(tuple(node.args)),
            {k: arg(v) for k, v in node.kwargs.items()},
            writer(node),
            alt=node.meta.get("_port_alt"),
        )
        reading[0] = None
        try:
            result = entry.emitter(c)
        except Exception as e:  # an emitter that cannot handle these arguments
            st.errors.append((f"op {node.target}: {e}", call.path, source_line(node)))
            continue
        needs_train |= c.uses_train
        if result is DROP:
            continue
        if isinstance(result, Same):
            env[node] = render(result.value, c.dtypes)
        elif node.target == torch.ops.aten.sym_size.int:
            # only twins' insides may read it (they take their own): written where first read
            sizes[node] = ("batch" if node.args[1:2] == (0,) else node.name, result)
        else:
            name = namer.fresh(node.name)
            comment = ""
            if entry.shape_comment:
                comment = f"  # {_shape(c.in_shape(0))} -> {_shape(c.shape)}"
            lines.append(f"{name} = {result}{comment}")
            env[node] = name
        if entry.inplace and node.args and isinstance(node.args[0], torch.fx.Node):
            env[node.args[0]] = env[node]
    for n in pytree.tree_flatten(outs)[0]:
        if isinstance(n, torch.fx.Node) and n in sizes:
            value(n)  # a size the class returns
    ret = _return(outs, env, root, st)
    decls = declarations(st, call)
    sig = ", ".join(["self", *params])
    if needs_train or like:
        sig += ", *" + (f", {like[0]}" if like else "")
        sig += ", train: bool = False" if needs_train else ""
    body = ["    def setup(self):", *(f"        {d}" for d in decls)] if decls else []
    if ins or call.items or root:
        body += [f"    def __call__({sig}):", *(f"        {ln}" for ln in lines), f"        {ret}"]
    torch_name = type(call.module).__name__
    doc = f'    """Port of ``{_qualname(call.module)}``."""'
    text = "\n".join([doc, *body])
    key = (torch_name, text)
    if key in st.by_text:
        return st.by_text[key]
    taken = sum(1 for k in st.by_text if k[0] == torch_name)
    cls = ClassDef(torch_name if not taken else f"{torch_name}_{taken}", text, needs_train)
    cls.needs_like = bool(like)
    st.classes.append(cls)
    st.by_text[key] = cls
    return cls


def _dead_nodes(call: Call) -> set[torch.fx.Node]:
    """The call's own nodes whose value nothing reads but runtime checks (``CHECKS``, dropped):
    they get no statement. In-place ops stay (later reads see their result)."""
    dead: set[torch.fx.Node] = set()
    for node in reversed([n for n in call.items if not isinstance(n, Call)]):
        entry = lookup_op(node.target)
        if entry is None or entry.inplace:
            continue
        if all(u in dead or _is_check(u) for u in node.users):
            dead.add(node)
    return dead


def _is_check(node: torch.fx.Node) -> bool:
    t = node.target
    return t in CHECKS or getattr(t, "overloadpacket", None) in CHECKS


def _qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _shape(shape: tuple) -> str:
    """A shape comment; the symbolic batch size is ``N``."""
    dims = [str(s) if isinstance(s, int) else "N" for s in shape]
    return "(" + ", ".join(dims) + ("," if len(shape) == 1 else "") + ")"


def _read(st: State, call: Call, node, ref: TensorRef, namer: _Namer, lines, dtypes) -> str:
    if ref.kind == "error":
        st.errors.append((ref.value, call.path, source_line(node)))
        return "None"
    if ref.kind == "constant":
        src = constant_source(ref.value, dtypes(ref.value.dtype))
        if src is None:
            st.errors.append(
                (
                    f"constant {node.name} {tuple(ref.value.shape)} is too large to write",
                    call.path,
                    "",
                )
            )
            return "None"
        name = namer.fresh(node.name.removeprefix("c_").removeprefix("b_"))
        lines.append(f"{name} = {src}")
        return name
    if ref.owner == call.path:
        expr = f"self.{ref.leaf}"
    elif ref.owner.startswith(f"{call.path}." if call.path else ""):
        target = attr_expr(st.cap.model, call.path, ref.owner)
        if ref.owner in st.cap.twins:
            expr = f"{target}.variables[{ref.collection!r}][{ref.leaf!r}]"
        else:
            expr = f"{target}.{ref.leaf}"
    else:
        st.errors.append(
            (f"{node.name} belongs to {ref.owner!r}, outside this module", call.path, "")
        )
        return "None"
    if ref.collection != "params" and ref.owner not in st.cap.twins:
        expr += ".value"
    if ref.perm is None:
        return expr
    inv = tuple(sorted(range(len(ref.perm)), key=lambda i: ref.perm[i]))
    name = namer.fresh(node.name.removeprefix("p_"))
    lines.append(f"{name} = jnp.transpose({expr}, {inv})  # Flax layout -> torch's")
    return name


def _emit_child(st, call, child: Call, order, env, namer, lines, arg, source) -> bool:
    target = attr_expr(st.cap.model, call.path, child.path)
    base = child.path.rsplit(".", 1)[-1]
    if base.isdigit():  # the Flax name: layers_0 in a Sequential, blocks_0 in a ModuleList
        parent = st.cap.model.get_submodule(child.path.rpartition(".")[0])
        last = child.path.rpartition(".")[0].rpartition(".")[2] or "layers"
        base = f"layers_{base}" if isinstance(parent, nn.Sequential) else f"{last}_{base}"
    if child.spec is not None:
        train = _needs_train(child)
        sig = child.signature
        if sig is not None:
            flat = []
            for a in sig.inputs:
                name = getattr(a, "name", "")
                node = next((n for n in child_nodes_inputs(st, name)), None) if name else None
                flat.append(
                    Var(env.get(node) or _lookup(node, env, arg)) if node is not None else a.value
                )
            args, kwargs = pytree.tree_unflatten(flat, sig.in_spec)
            parts = [render(a, st.dtypes) for a in args]
            parts += [f"{k}={render(v, st.dtypes)}" for k, v in kwargs.items()]
            out_nodes = [st_node(st, getattr(o, "name", None)) for o in sig.outputs]
            out_spec = sig.out_spec
        else:
            ins, outs = _interface(child, order)
            parts = [str(arg(n)) for n in ins]
            out_nodes, out_spec = outs, None
        if train:
            parts.append("train=train")
        pattern = _pattern(out_nodes, out_spec, base, namer, env, set(child.nodes()))
        lines.append(f"{pattern} = {target}({', '.join(parts)})")
        return train
    ins, outs = _interface(child, order)
    if child.path not in st.by_path:
        st.by_path[child.path] = _emit_class(st, child, ins, outs)
    cls = st.by_path[child.path]
    parts = [str(arg(n)) for n in ins]
    if cls.needs_like:  # a tensor of the model's dtype (torch's forward took one for its dtype)
        parts.append(f"like={source(None) or 'jnp.zeros((), float)'}")
    if cls.needs_train:
        parts.append("train=train")
    pattern = _pattern(outs, None, base, namer, env, set(child.nodes()))
    lines.append(f"{pattern} = {target}({', '.join(parts)})")
    return cls.needs_train


def child_nodes_inputs(st: State, name: str):
    node = st_node(st, name)
    return [node] if node is not None else []


def st_node(st: State, name: str | None):
    if not name:
        return None
    if not hasattr(st, "_nodes"):
        st._nodes = {n.name: n for n in st.cap.program.graph.nodes}
    return st._nodes.get(name)


def _lookup(node, env, arg) -> str:
    return str(arg(node))


def _pattern(
    out_nodes: list, out_spec: Any, base: str, namer: _Namer, env: dict, inside: set
) -> str:
    names = []
    for i, n in enumerate(out_nodes):
        if n is None or not any(u not in inside for u in n.users):
            names.append("_")  # an output nobody reads
            continue
        name = namer.fresh(base if i == 0 else f"{base}_{i}", node=False)
        env[n] = name
        names.append(name)
    if out_spec is None:
        return ", ".join(names) if len(names) != 1 else names[0]
    tree = pytree.tree_unflatten(names, out_spec)
    return _render_target(tree, top=True)


def _render_target(tree: Any, top: bool = False) -> str:
    if isinstance(tree, (tuple, list)):
        inner = ", ".join(_render_target(t) for t in tree)
        return inner if top else f"({inner})"
    return str(tree)


def _return(outs: Any, env: dict, root: bool, st: State) -> str:
    def val(n):
        return env.get(n, "None") if isinstance(n, torch.fx.Node) else repr(n)

    if root:
        tree = outs
        flat, spec = pytree.tree_flatten(tree)
        rendered = pytree.tree_unflatten([Var(val(n)) for n in flat], spec)
        text = rendered.name if isinstance(rendered, Var) else render(rendered, st.dtypes)
        return f"return {text}"
    names = [val(n) for n in outs]
    return f"return {', '.join(names)}" if names else "return None"


def generate(cap: Captured) -> tuple[str, str]:
    """The module source (imports and classes) and the root class's name.

    Raises:
      CodegenError: structures the generator cannot write, each with its module path.
    """
    params = [p for p in cap.model.parameters() if p.is_floating_point()]
    capture_float = params[0].dtype if params else torch.float32
    st = State(cap, dtype_writer(capture_float), capture_float=capture_float)
    # without float state the model has no dtype of its own: JAX's default float is its dtype
    st.float_state = bool(params) or any(b.is_floating_point() for b in cap.model.buffers())
    _resolve_all(st)
    placeholders = {n.name: n for n in cap.program.graph.nodes if n.op == "placeholder"}
    ins = [placeholders[name] for name in cap.user_inputs]
    for n in ins:
        n.meta["_port_user"] = True
    out_node = next(n for n in cap.program.graph.nodes if n.op == "output")
    specs = cap.program.graph_signature.output_specs
    flat_outs = [
        a for a, s in zip(out_node.args[0], specs, strict=True) if s.kind.name == "USER_OUTPUT"
    ]
    out_spec = cap.program.call_spec.out_spec
    outs = pytree.tree_unflatten(flat_outs, out_spec) if out_spec is not None else flat_outs[0]
    root = _emit_class(st, cap.root, ins, outs, root=True)
    if st.errors:
        lines = [f"  {what}  in {path or '<root>'}  {where}" for what, path, where in st.errors]
        raise CodegenError("cannot generate:\n" + "\n".join(lines))
    blocks = [f"class {c.name}(linen.Module):\n{c.text}\n" for c in st.classes]
    code = "\n\n".join(blocks)
    header = [line for line in HEADER.splitlines() if _used(line, code)]
    header += [f"import {m}" for m in sorted(st.imports)]
    return "\n".join(header) + "\n\n\n" + code, root.name
