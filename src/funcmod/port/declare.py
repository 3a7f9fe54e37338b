"""The ``setup`` of a generated class: its own parameters and buffers (read from the
variables, zeros at ``init``) and the children its code calls, under the names
``funcmod.convert`` gives them (``nn.Sequential`` children as ``layers``, ``ModuleList`` and
``ModuleDict`` attributes as lists and dicts, an uncalled ``Sequential`` reached into as a
``linen.Sequential``); and ``attr_expr``, the expression that reaches a module from another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from funcmod.port.capture import Call, Captured
from funcmod.port.modules import Src, twin_arguments
from funcmod.port.params import TensorRef

__all__ = ["ClassDef", "State", "attr_expr", "declarations", "twin_source"]


@dataclass
class ClassDef:
    name: str
    text: str
    needs_train: bool
    needs_like: bool = False  # takes like=, a tensor whose dtype is the model's (codegen)


@dataclass
class State:
    cap: Captured
    dtypes: Any
    capture_float: Any = None
    refs: dict[str, TensorRef] = field(default_factory=dict)  # placeholder name -> home
    own: dict[str, dict[str, TensorRef]] = field(default_factory=dict)  # owner -> leaves
    classes: list[ClassDef] = field(default_factory=list)
    by_path: dict[str, ClassDef] = field(default_factory=dict)
    by_text: dict[tuple[str, str], ClassDef] = field(default_factory=dict)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)  # modules of registered twins
    float_state: bool = True  # the model has float parameters or buffers (codegen)


def attr_expr(model: nn.Module, base: str, path: str) -> str:
    """``self.<...>`` reaching module ``path`` from module ``base`` in the generated code."""
    rel = path[len(base) + 1 :] if base else path
    m = model.get_submodule(base)
    expr = "self"
    for part in rel.split("."):
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)) and m is not model.get_submodule(base):
            expr += f"[{int(part)}]" if isinstance(m, nn.ModuleList) else f"[{part!r}]"
        elif isinstance(m, nn.Sequential):
            expr += f".layers[{list(m._modules).index(part)}]"
        else:
            expr += f".{part}"
        m = m._modules[part]
    return expr


def twin_source(call_module: nn.Module, spec) -> str:
    pos, kw = twin_arguments(spec, call_module)
    args = [repr(v) if not isinstance(v, Src) else v.text for v in pos]
    args += [f"{k}={v!r}" for k, v in kw.items()]
    return f"{spec.twin}({', '.join(args)})"


def declarations(st: State, call: Call) -> list[str]:
    """``setup`` lines: own leaves, then the children this module's code calls."""
    model, base = st.cap.model, call.path
    lines = []
    for leaf, ref in st.own.get(base, {}).items():
        if ref.collection == "params":
            lines.append(
                f"self.{leaf} = self.param({leaf!r}, linen.initializers.zeros_init(), {ref.shape})"
            )
        else:
            lines.append(
                f"self.{leaf} = self.variable({ref.collection!r}, {leaf!r}, jnp.zeros, {ref.shape})"
            )
    needed: dict[str, None] = {}
    for item in call.items:
        if isinstance(item, Call):
            needed[item.path] = None
    for owner in st.own:
        if owner != base and owner.startswith(f"{base}." if base else ""):
            needed[owner] = None
    for node in (i for i in call.items if not isinstance(i, Call)):
        for a in node.all_input_nodes:
            ref = st.refs.get(a.name)
            if ref is not None and ref.kind == "variable" and ref.owner != base:
                needed[ref.owner] = None
    module = model.get_submodule(base)
    firsts: dict[str, list[str]] = {}
    for path in needed:
        rel = path[len(base) + 1 :] if base else path
        firsts.setdefault(rel.split(".")[0], []).append(path)
    prefix = f"{base}." if base else ""
    for attr in module._modules:
        if attr not in firsts:
            continue
        if isinstance(module, nn.Sequential):
            continue
        lines.append(f"self.{attr} = {_decl(st, prefix + attr, set(needed))}")
    if isinstance(module, nn.Sequential):
        items = [
            _decl(st, prefix + a, set(needed)) if a in firsts else "None" for a in module._modules
        ]
        lines.append(f"self.layers = [{', '.join(items)}]")
    return lines


def _decl(st: State, path: str, needed: set[str]) -> str:
    model = st.cap.model
    m = model.get_submodule(path)
    if path in st.cap.twins:
        spec = st.cap.twins[path]
        if not spec.twin.startswith("nn."):  # a registered class of your own: imported
            st.imports.add(spec.cls.__module__)
        return twin_source(m, spec)
    if path in st.by_path:
        return f"{st.by_path[path].name}()"
    under = [p for p in needed if p.startswith(path + ".")]
    if isinstance(m, nn.ModuleList):
        return (
            "["
            + ", ".join(
                _decl(st, f"{path}.{k}", needed)
                if any(p == f"{path}.{k}" or p.startswith(f"{path}.{k}.") for p in needed)
                else "None"
                for k in m._modules
            )
            + "]"
        )
    if isinstance(m, nn.ModuleDict):
        return (
            "{"
            + ", ".join(
                f"{k!r}: {_decl(st, f'{path}.{k}', needed)}"
                for k in m._modules
                if any(p == f"{path}.{k}" or p.startswith(f"{path}.{k}.") for p in needed)
            )
            + "}"
        )
    if isinstance(m, nn.Sequential) and under:
        items = [
            _decl(st, f"{path}.{k}", needed)
            if any(p == f"{path}.{k}" or p.startswith(f"{path}.{k}.") for p in needed)
            else "None"
            for k in m._modules
        ]
        return f"linen.Sequential([{', '.join(items)}])"
    st.errors.append((f"module {type(m).__name__} is reached into but never called", path, ""))
    return "None"
