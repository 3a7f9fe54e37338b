"""Data-parallel training: ``funcmod.train`` with a mesh, ``funcmod.tools.distributed`` on 8 CPU
devices and on two processes, and PyTorch DDP against the JAX run.

Several devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts,
so those tests run a fresh Python in a subprocess (this process keeps its one CPU device) with a
time limit, and always kill what they started. Each subprocess runs with the suite's strict
dtype and rank promotion (``JAX_NUMPY_DTYPE_PROMOTION``, ``JAX_NUMPY_RANK_PROMOTION``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from funcmod.precision import DTYPES as DTYPE_NAMES
from funcmod.precision import rtol
from funcmod.sharding import data_mesh, initialize, process_rows, replicate, shard_batch
from funcmod.tools.data_parallel import (
    TRAINABLE,
    Run,
    compare_runs,
    global_batch_grads,
    train_example,
)
from funcmod.tools.ddp import ddp_train, free_port
from funcmod.train import (
    make_train_epoch,
    make_train_step,
    mse,
    stack_batches,
)
from funcmod.tree import assert_trees_close
from tests.helpers import net_batches, shared_dir, x64
from tests.helpers import net_state as batchnorm_net_state

DTYPES = [np.float32, np.float64]
# Steps per run. float32 runs of ReLU nets agree until a ReLU input lies within rounding of 0
# and one run keeps it while the other zeroes it; SimpleCNN (seed 0) meets one at step 84 in the
# two-process run and ends 3.1e-3 apart after 200 steps (docs/pitfalls.md, "Data-parallel runs:
# one device against many"). 50 steps stay before it; `funcmod distributed parity` and
# comparisons/distributed.py measure 200.
STEPS = 50
# The funcmod command line, run by a fresh Python.
FUNCMOD = [sys.executable, "-m", "funcmod.tools.cli"]
TWO_PROCESS_EXAMPLES = ["MLP", "SimpleCNN"]


def net_state(dtype):
    return batchnorm_net_state(dtype, first_bias=False)  # see BatchNormNet: no noise-only bias


# --- subprocesses -------------------------------------------------------------------------------


def _env(devices: int) -> dict[str, str]:
    """This environment with ``devices`` CPU devices and the suite's strict promotion."""
    env = dict(os.environ)
    flags = [
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUMPY_DTYPE_PROMOTION"] = "strict"
    env["JAX_NUMPY_RANK_PROMOTION"] = "raise"
    return env


def _run_all(commands: list[list[str]], devices: int, timeout: float, logs: Path) -> list[str]:
    """Start every command at once (``devices`` CPU devices each), wait at most ``timeout``
    seconds for all of them, kill any still running, and return their stdouts.

    Output goes to files under ``logs`` (not pipes, which could fill up and block a process
    while its peer waits for it). A failure or timeout raises AssertionError with the stderrs.
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    try:
        for i, cmd in enumerate(commands):
            out, err = logs / f"{i}.out", logs / f"{i}.err"
            with out.open("w") as o, err.open("w") as e:
                procs.append(subprocess.Popen(cmd, stdout=o, stderr=e, env=_env(devices)))
            files.append((out, err))
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        timed_out = [p.pid for p in procs if p.poll() is None]
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
    report = "\n".join(
        f"--- command {i} (rc {p.returncode}): {' '.join(commands[i])}\n{err.read_text()[-3000:]}"
        for i, (p, (_, err)) in enumerate(zip(procs, files, strict=True))
    )
    assert not timed_out, f"killed after {timeout} s (pids {timed_out}):\n{report}"
    assert all(p.returncode == 0 for p in procs), f"a process failed:\n{report}"
    return [out.read_text() for out, _ in files]


def _last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


# --- one device (this process) ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_device_mesh_is_bitwise_the_single_device_step(dtype):
    with x64(dtype):
        mesh = data_mesh()
        data = net_batches(4, dtype)
        plain, meshed = net_state(dtype), replicate(net_state(dtype), mesh)
        step = make_train_step(mse, apply_kwargs={"train": True})
        mesh_step = make_train_step(mse, apply_kwargs={"train": True}, mesh=mesh)
        for batch in data:
            plain, metrics = step(plain, batch)
            meshed, mesh_metrics = mesh_step(meshed, batch)
            assert_trees_close(mesh_metrics, metrics, rtol=0.0, what="loss")
        for name in ("params", "opt_state", "batch_stats", "step"):
            assert_trees_close(getattr(meshed, name), getattr(plain, name), rtol=0.0, what=name)

        epoch = make_train_epoch(mse, apply_kwargs={"train": True})
        mesh_epoch = make_train_epoch(mse, apply_kwargs={"train": True}, mesh=mesh)
        plain, metrics = epoch(net_state(dtype), stack_batches(data))
        meshed, mesh_metrics = mesh_epoch(replicate(net_state(dtype), mesh), stack_batches(data))
        assert_trees_close(mesh_metrics, metrics, rtol=0.0, what="epoch metrics")
        assert_trees_close(meshed.params, plain.params, rtol=0.0, what="epoch params")
        assert_trees_close(meshed.batch_stats, plain.batch_stats, rtol=0.0, what="epoch stats")


def test_mesh_helpers_on_one_device():
    mesh = data_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    np.testing.assert_array_equal(process_rows(6, mesh), np.arange(6))
    x, stacked = np.zeros((4, 3), np.float32), np.zeros((5, 4, 3), np.float32)
    assert shard_batch(x, mesh).sharding.spec == P("data")
    assert shard_batch(stacked, mesh, batch_axis=1).sharding.spec == P(None, "data")
    state = replicate(net_state(np.float32), mesh)
    assert state.params["Dense_0"]["kernel"].sharding.spec == P()
    assert state.key_impl == net_state(np.float32).key_impl  # static fields survive

    with pytest.raises(ValueError, match=r"has axes \('model',\); expected one named 'data'"):
        make_train_step(mse, mesh=Mesh(np.array(jax.devices()), ("model",)))
    with pytest.raises(ValueError, match=r"shape \(\) has no batch axis 0"):
        shard_batch(np.float32(1.0), mesh)
    with pytest.raises(ValueError, match=r"shape \(4, 3\) has no batch axis 2"):
        shard_batch(x, mesh, batch_axis=2)
    with pytest.raises(ValueError, match="at least one device"):
        data_mesh([])


def test_argument_errors():
    with pytest.raises(ValueError, match=r"no seed example named 'Nope'"):
        train_example("Nope")
    with pytest.raises(ValueError, match="SimpleAdder has no parameters"):
        train_example("SimpleAdder")
    with pytest.raises(ValueError, match="float32 or float64, got float16"):
        train_example("MLP", dtype=np.float16)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
        initialize("127.0.0.1:1", 2, 2)  # refused before JAX is touched
    with pytest.raises(ValueError, match="batch size 15 does not divide evenly over 2 processes"):
        ddp_train(["MLP"], batch=15)  # refused before any process starts


# --- 8 CPU devices in a subprocess --------------------------------------------------------------

EIGHT_DEVICES = """
import json
import jax, jax.numpy as jnp, numpy as np
from tests.helpers import net_batches
from tests.test_distributed import net_state
from funcmod.articles.models import MLP
from funcmod.optim import torch_adam
from funcmod.sharding import data_mesh, process_rows, replicate, shard_batch
from funcmod.train import (create_train_state, make_train_epoch, make_train_step, mse,
                           stack_batches)
from funcmod.tree import compare_trees

def max_rel(a, b):
    return max(d.max_rel for d in compare_trees(a, b, rtol=0.0))

facts = {"devices": jax.device_count()}
mesh = data_mesh()
data = net_batches(4, np.float32)
x, y = data[0]
xs, ys = shard_batch((x, y), mesh)
facts["batch_spec"] = str(xs.sharding.spec)
facts["rows_per_device"] = sorted(s.data.shape[0] for s in xs.addressable_shards)

# BatchNorm (statistics of the global batch) and dropout: 8 devices against 1
train = {"train": True}
one = net_state(np.float32)
step = make_train_step(mse, apply_kwargs=train)
many = replicate(net_state(np.float32), mesh)
mesh_step = make_train_step(mse, apply_kwargs=train, mesh=mesh)
for batch in data:
    one, _ = step(one, batch)
    many, _ = mesh_step(many, batch)
facts["param_spec"] = str(many.params["Dense_0"]["kernel"].sharding.spec)
facts["param_devices"] = len(many.params["Dense_0"]["kernel"].sharding.device_set)
facts["compiled"] = mesh_step.jitted._cache_size()
facts["net_params"] = max_rel(many.params, one.params)
facts["net_stats"] = max_rel(many.batch_stats, one.batch_stats)

mesh_epoch = make_train_epoch(mse, apply_kwargs=train, mesh=mesh)
scanned, metrics = mesh_epoch(replicate(net_state(np.float32), mesh), stack_batches(data))
facts["epoch_vs_steps"] = max_rel(scanned.params, many.params)
facts["epoch_steps"] = np.asarray(metrics["step"]).tolist()

errors = {}
bad = (x[:10], y[:10])
for what, call in {
    "step": lambda: mesh_step(many, bad),
    "epoch": lambda: mesh_epoch(many, stack_batches([bad])),
    "shard_batch": lambda: shard_batch(bad, mesh),
    "process_rows": lambda: process_rows(10, mesh),
}.items():
    try:
        call()
        errors[what] = None
    except ValueError as e:
        errors[what] = str(e)
facts["errors"] = errors
facts["state_alive"] = not many.params["Dense_0"]["kernel"].is_deleted()
print(json.dumps(facts))
"""


@pytest.mark.slow
def test_eight_devices_split_the_batch_and_replicate_the_state(tmp_path):
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(root)!r})\n{EIGHT_DEVICES}"]
    facts = _last_json(_run_all([cmd], devices=8, timeout=120, logs=tmp_path)[0])
    assert facts["devices"] == 8
    assert facts["batch_spec"] == str(P("data")) and facts["rows_per_device"] == [2] * 8
    assert facts["param_spec"] == str(P()) and facts["param_devices"] == 8
    assert facts["compiled"] == 1
    # Same mathematics, gradients summed in another order: a few float32 ulps.
    assert facts["net_params"] <= rtol("parity", "float32"), facts
    assert facts["net_stats"] <= rtol("parity", "float32"), facts
    assert facts["epoch_vs_steps"] <= 1e-6 and facts["epoch_steps"] == [0, 1, 2, 3]
    for what, message in facts["errors"].items():
        assert message is not None, f"{what} accepted a batch of 10 on 8 devices"
        assert re.search(r"batch size 10 does not divide evenly over (the )?8 devices", message)
    assert facts["state_alive"], "a refused batch must not consume the donated state"


@pytest.mark.slow
def test_parity_one_vs_eight_devices(tmp_path):
    """Every trainable example, float32 and float64: 8 devices within the target of 1."""
    cmd = [*FUNCMOD, "distributed", "parity", "--json", "--steps", str(STEPS)]
    rows = _last_json(_run_all([cmd], devices=8, timeout=240, logs=tmp_path)[0])
    assert {(r["example"], r["dtype"]) for r in rows} == {
        (name, dtype) for name in TRAINABLE for dtype in DTYPE_NAMES
    }
    for r in rows:
        assert r["devices"] == 8 and r["steps"] == STEPS
        assert r["one_device_bitwise"], f"{r['example']} {r['dtype']}: 1-device mesh differs"
        assert r["ok"], (
            f"{r['example']} {r['dtype']}: 8 devices vs 1, max rel {r['max_rel']:.2e} "
            f"(loss {r['loss_max_rel']:.2e}), target {r['target']:g}; leaves {r['leaves']}"
        )
        assert r["moved"] > 100 * r["target"], "training must move the parameters"


# --- two processes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> list[dict]:
    """``funcmod distributed train`` as two processes of 4 CPU devices each on
    127.0.0.1: one global batch of 16 rows, 8 per process, 2 per device. Their JSON outputs.

    Run once per test run, not once per xdist worker: the two tests that read it usually land on
    different workers, and each worker would otherwise start its own pair of processes. The
    first worker runs it under a file lock; the other waits and reads the same files."""
    from filelock import FileLock

    logs = shared_dir(tmp_path_factory) / "two-process-runs"
    outs = [logs / f"process{i}.json" for i in range(2)]
    with FileLock(f"{logs}.lock"):
        if not all(out.is_file() for out in outs):
            for out in outs:  # a half-finished earlier try must not mix with this one
                out.unlink(missing_ok=True)
            _two_process_train(logs)
    return [json.loads(out.read_text()) for out in outs]


def _two_process_train(logs: Path) -> None:
    """Both processes at once; each writes ``logs/process{i}.json``."""
    port = free_port()
    commands = [
        [
            *FUNCMOD,
            "distributed",
            "train",
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            "--timeout",
            "60",
            "--steps",
            str(STEPS),
            "--examples",
            *TWO_PROCESS_EXAMPLES,
            "--out",  # not stdout, where gloo logs too
            str(logs / f"process{i}.json"),
        ]
        for i in range(2)
    ]
    _run_all(commands, devices=4, timeout=180, logs=logs)


@pytest.mark.slow
def test_two_processes_train_like_one_device(two_process_runs):
    first, second = two_process_runs
    for i, out in enumerate(two_process_runs):
        assert (out["process_index"], out["process_count"]) == (i, 2)
        assert (out["device_count"], out["local_device_count"]) == (8, 4)
    assert len(first["runs"]) == len(TWO_PROCESS_EXAMPLES) * len(DTYPE_NAMES)
    for a, b in zip(first["runs"], second["runs"], strict=True):
        # Replicated parameters: each process holds the same copy.
        run, copy = Run.from_dict(a), Run.from_dict(b)
        assert_trees_close(copy.params, run.params, rtol=0.0, what="process 1 vs process 0")
        assert (run.devices, run.processes) == (8, 2)
        single = train_example(run.example, dtype=run.dtype, steps=STEPS)
        diff = compare_runs(run, single)
        assert diff["ok"], f"{run.example} {run.dtype}: two processes vs one device: {diff}"


@pytest.mark.slow
def test_ddp_matches_the_jax_data_parallel_run(request):
    pytest.importorskip("torch")
    ddp = ddp_train(
        TWO_PROCESS_EXAMPLES, dtypes=list(DTYPE_NAMES), steps=STEPS, world_size=2, timeout_s=180
    )
    # Asked for after DDP has trained, not as an argument: when another worker is running the
    # two JAX processes, DDP's processes train meanwhile instead of waiting for its lock.
    two_process_runs = request.getfixturevalue("two_process_runs")
    for d in two_process_runs[0]["runs"]:
        jax_run = Run.from_dict(d)
        torch_run = ddp[(jax_run.example, jax_run.dtype)]
        diff = compare_runs(torch_run, jax_run)
        assert diff["ok"], f"{jax_run.example} {jax_run.dtype}: DDP vs JAX: {diff}"
        # DDP divides the summed gradients by the world size: with equal shares of the rows,
        # the gradient of the global-batch mean loss (not twice it).
        assert_trees_close(
            torch_run.first_grads,
            global_batch_grads(jax_run.example, dtype=jax_run.dtype),
            rtol=rtol("parity", jax_run.dtype),
            what=f"{jax_run.example} {jax_run.dtype} DDP first gradient",
        )
