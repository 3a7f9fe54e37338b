"""Train a port and its twin on the digits, side by side, from the same initial weights.

``train_and_evaluate(config, workdir)`` is what ``funcmod digits mlp|cnn`` (and the scripts
``examples/digits_mlp.py``, ``examples/digits_cnn.py``) run: the twin trains with a
``torch.optim.Adam`` loop, the port with ``funcmod.optim.from_torch`` of that optimizer and
``funcmod.train``'s jitted ``lax.scan`` epoch, on the same mini-batches. It reports both test
accuracies, the final parameter error between the two runs, and writes a PNG with the two loss
curves overlaid.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from funcmod.articles import models, torch_models
from funcmod.articles.data import batches, load_digits
from funcmod.convert import torch_to_flax
from funcmod.layout import to_channels_last
from funcmod.optim import from_torch
from funcmod.train import (
    create_train_state,
    make_eval_step,
    make_train_epoch,
    raise_if_nonfinite,
    softmax_cross_entropy,
)
from funcmod.tree import compare_trees

__all__ = ["DigitsConfig", "train_and_evaluate"]


@dataclass(frozen=True)
class DigitsConfig:
    """What to train and how.

    Attributes:
      model: ``'mlp'`` (``MLP(64, hidden, 10)`` on flat pixels) or ``'cnn'`` (``DigitsCNN``:
        ``SimpleCNN(1, channels)`` on 1x8x8 images, then a linear head).
      hidden: the MLP's hidden size, or the CNN's channel count.
      epochs, batch_size, learning_rate: Adam's training run.
      seed: seeds the weights, the split and the batch order.
      progress: show tqdm progress bars.
    """

    model: str = "mlp"
    hidden: int = 64
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    progress: bool = True


def _models(config: DigitsConfig) -> tuple[Any, torch.nn.Module, str | None]:
    torch.manual_seed(config.seed)
    if config.model == "mlp":
        return (
            models.MLP(64, config.hidden, 10),
            torch_models.MLP(64, config.hidden, 10),
            None,
        )
    if config.model == "cnn":
        return (
            models.DigitsCNN(channels=config.hidden),
            torch_models.DigitsCNN(channels=config.hidden),
            "NCHW",
        )
    raise ValueError(f"config.model must be 'mlp' or 'cnn', got {config.model!r}")


def _torch_accuracy(twin: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        logits = twin(torch.from_numpy(x))
    return float((logits.argmax(-1).numpy() == y).mean())


def _plot(path: Path, torch_losses: np.ndarray, flax_losses: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(torch_losses, label="PyTorch (torch.optim.Adam)", linewidth=2.5, alpha=0.6)
    ax.plot(flax_losses, label="Flax (optax, jitted lax.scan)", linewidth=1, linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_and_evaluate(config: DigitsConfig, workdir: str | Path) -> dict[str, Any]:
    """Train both frameworks on the digits and write ``<workdir>/digits_<model>_loss.png`` and
    ``<workdir>/digits_<model>.json`` (what it returns, the loss curves included).

    Returns:
      ``{'torch_accuracy', 'flax_accuracy', 'final_param_max_rel', 'loss_max_abs_diff',
      'steps', 'torch_losses', 'flax_losses', 'plot', ...}``: accuracies on the held-out test
      split, the max relative parameter error between the two runs at the end, and the per-step
      losses (length ``steps``).
    """
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port, twin, layout = _models(config)
    data = load_digits(images=layout is not None, seed=config.seed)
    xb, yb = batches(
        data.x_train, data.y_train, config.batch_size, epochs=config.epochs, seed=config.seed
    )
    per_epoch = len(xb) // config.epochs
    xb_port = np.stack([to_channels_last(b, layout) for b in xb])  # NCHW -> NHWC per batch

    # Same initial weights: the port starts from the twin's.
    torch_opt = torch.optim.Adam(twin.parameters(), lr=config.learning_rate)
    state = create_train_state(port, torch_to_flax(twin), from_torch(torch_opt, twin))
    train_epoch = make_train_epoch(softmax_cross_entropy)  # jitted once
    eval_step = make_eval_step(softmax_cross_entropy)

    torch_losses: list[float] = []
    for step in tqdm(range(len(xb)), desc=f"torch {config.model}", disable=not config.progress):
        torch_opt.zero_grad(set_to_none=True)
        logits = twin(torch.from_numpy(xb[step]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(yb[step]).long())
        loss.backward()
        torch_opt.step()
        torch_losses.append(loss.item())

    flax_losses: list[np.ndarray] = []
    for epoch in tqdm(
        range(config.epochs), desc=f"flax {config.model}", disable=not config.progress
    ):
        window = slice(epoch * per_epoch, (epoch + 1) * per_epoch)
        state, metrics = train_epoch(state, (xb_port[window], yb[window]))  # one dispatch
        losses = np.asarray(metrics["loss"])
        raise_if_nonfinite(losses, first_step=epoch * per_epoch)
        flax_losses.append(losses)
    flax_loss = np.concatenate(flax_losses)

    x_test_port = jnp.asarray(to_channels_last(data.x_test, layout))
    logits = eval_step(state, (x_test_port, jnp.asarray(data.y_test)))["outputs"]
    flax_accuracy = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == data.y_test))
    param_diffs = compare_trees(state.params, torch_to_flax(twin)["params"], rtol=np.inf)

    plot = workdir / f"digits_{config.model}_loss.png"
    _plot(plot, np.array(torch_losses), flax_loss, f"digits, {config.model}: loss per step")
    result = {
        "config": dataclasses.asdict(config),
        "steps": len(xb),
        "torch_accuracy": _torch_accuracy(twin, data.x_test, data.y_test),
        "flax_accuracy": flax_accuracy,
        "final_param_max_rel": max(d.max_rel for d in param_diffs),
        "loss_max_abs_diff": float(np.max(np.abs(flax_loss - np.array(torch_losses)))),
        "backend": jax.default_backend(),
        "plot": str(plot),
        # the curves themselves, so a chart can be drawn again from the file (funcmod charts)
        "torch_losses": torch_losses,
        "flax_losses": flax_loss.tolist(),
    }
    (workdir / f"digits_{config.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
