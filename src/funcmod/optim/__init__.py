"""``torch.optim`` -> optax, update by update as torch computes it: optimizers, lr schedulers and
their state.

``from_torch(optimizer, module, scheduler=...)`` returns the optax transformation that makes the
same updates to the Flax port's parameters as the torch loop makes to the twin's::

    opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=100)
    tx = from_torch(opt, twin, scheduler=sched)

Modules:

* ``transforms``: ``TorchOptState``, ``StepTable``, ``clip_grad_norm``, ``torch_momentum``,
  ``torch_sgd``, ``torch_adam``: torch's SGD and Adam/AdamW steps as transformations.
* ``adaptive``: ``torch_rmsprop``, ``torch_adagrad``, ``torch_adamax``, ``torch_nadam``,
  ``torch_radam``, ``torch_adadelta``.
* ``schedules``: ``schedule_from_torch``: a torch lr scheduler as the table of the values torch
  uses (``StepTable``, an optax schedule); finding schedulers attached to an optimizer.
* ``translate``: ``from_torch``: param groups, frozen parameters, settings it refuses.
* ``state``: ``to_torch_state`` and the carried-over ``init`` of a stepped optimizer.

Bitwise equality with torch is not possible: XLA on CPU contracts ``a * b + c`` into one fused
multiply-add (one rounding, where torch's separate ops round twice), and the two libraries sum
the terms of a matmul or convolution in different orders. The updates agree to the last few
ulps; ``funcmod.trajectory`` measures how that grows over whole training runs.
"""

from funcmod.optim.adaptive import (
    torch_adadelta,
    torch_adagrad,
    torch_adamax,
    torch_nadam,
    torch_radam,
    torch_rmsprop,
)
from funcmod.optim.schedules import schedule_from_torch
from funcmod.optim.state import to_torch_state
from funcmod.optim.transforms import (
    StepTable,
    TorchAdamState,
    TorchOptState,
    clip_grad_norm,
    torch_adam,
    torch_momentum,
    torch_sgd,
)
from funcmod.optim.translate import from_torch

__all__ = [
    "StepTable",
    "TorchAdamState",
    "TorchOptState",
    "clip_grad_norm",
    "from_torch",
    "schedule_from_torch",
    "to_torch_state",
    "torch_adadelta",
    "torch_adagrad",
    "torch_adam",
    "torch_adamax",
    "torch_momentum",
    "torch_nadam",
    "torch_radam",
    "torch_rmsprop",
    "torch_sgd",
]
