"""Save and restore a ``funcmod.train.TrainState`` losslessly, with atomic writes.

The file is the msgpack of ``flax.serialization.to_state_dict(state)``: params, opt_state,
step, batch_stats and dropout key, every array with its exact dtype and bits. ``apply_fn`` and
``tx`` are code, not data: restoring needs a template state built the same way
(``create_train_state(model, variables, tx)``), whose structure, shapes and dtypes the file must
match exactly::

    save_checkpoint("run/ckpt.msgpack", state)
    state = restore_checkpoint("run/ckpt.msgpack", template_state)

A write goes to a temporary file in the same directory, is flushed and fsynced, and then
renamed over the old file with ``os.replace``, which is atomic on POSIX and Windows: a crash at
any point leaves either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, BinaryIO, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

__all__ = ["CheckpointError", "check_state_dict", "restore_checkpoint", "save_checkpoint"]

State = TypeVar("State")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the template: names every offending key."""


def _write(f: BinaryIO, data: bytes) -> None:
    """Write all of ``data`` to ``f`` (a separate function so that tests can make it fail)."""
    f.write(data)


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike[str], state: Any) -> None:
    """Write ``state`` (a ``TrainState`` or any flax-serializable pytree) to ``path``, atomically.

    Raises whatever the write raised; the previous file at ``path`` is then untouched and the
    temporary file is removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    data = serialization.to_bytes(state)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)  # make the rename itself durable


def _describe(leaf: Any) -> str:
    if leaf is None:
        return "None"
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):  # metadata only: never the values
        return f"shape {tuple(leaf.shape)} {np.dtype(leaf.dtype).name}"
    a = np.asarray(leaf)
    return f"shape {a.shape} {a.dtype.name}"


def _structure(template: State) -> State:
    """``template`` with every array leaf replaced by its ``jax.ShapeDtypeStruct``: the arrays'
    buffers are never read, so a template whose arrays a donating train step has consumed (and
    deleted) serves as well as a live one."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "dtype") else x, template
    )


def _flat(state_dict: Any) -> dict[str, Any]:
    if not isinstance(state_dict, dict):
        return {"": state_dict}
    flat = traverse_util.flatten_dict(state_dict, keep_empty_nodes=True, sep="/")
    return {k: (None if v is traverse_util.empty_node else v) for k, v in flat.items()}


def check_state_dict(restored: Any, template: Any, *, source: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` unless two state dicts (``to_state_dict`` results) have the same
    keys, and every leaf the same shape and dtype, naming every key that differs."""
    got, want = _flat(restored), _flat(template)
    missing = sorted(k for k in want if k not in got)
    unexpected = sorted(k for k in got if k not in want)
    mismatched = [
        f"  {k}: {source} has {_describe(got[k])}, the state expects {_describe(want[k])}"
        for k in want
        if k in got and _describe(got[k]) != _describe(want[k])
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit the state it is restored into:"]
        if missing:
            lines.append(f"  keys the state has and the {source} lacks: {missing}")
        if unexpected:
            lines.append(f"  keys the {source} has and the state lacks: {unexpected}")
        raise CheckpointError("\n".join(lines + mismatched))


def restore_checkpoint(path: str | os.PathLike[str], template: State) -> State:
    """Read the state saved at ``path`` into the structure of ``template``.

    Args:
      path: a file written by ``save_checkpoint``.
      template: a state built like the saved one (same model, optimizer and collections); its
        values are not read, only its structure, shapes and dtypes, and its ``apply_fn``/``tx``
        (so a state already consumed by a donating train step is a valid template).

    Returns:
      a state like ``template`` holding the saved arrays, bit for bit.

    Raises:
      CheckpointError: the file's keys, shapes or dtypes differ from the template's (each key
        named with both shapes), or the file is not a msgpack checkpoint.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as e:
        raise CheckpointError(f"{path} is not a msgpack checkpoint: {e}") from e
    template = _structure(template)
    check_state_dict(raw, serialization.to_state_dict(template), source=f"checkpoint {path}")
    arrays = jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, raw)
    changed = [
        f"{k}: {np.asarray(v).dtype.name} became {np.asarray(arrays_flat[k]).dtype.name}"
        for arrays_flat in [_flat(arrays)]
        for k, v in _flat(raw).items()
        if v is not None and np.asarray(v).dtype != np.asarray(arrays_flat[k]).dtype
    ]
    if changed:
        raise CheckpointError(
            f"restoring {path} would change dtypes ({changed}); restore 64-bit checkpoints "
            f"inside `with jax.enable_x64(True):`"
        )
    return serialization.from_state_dict(template, arrays)
