"""Exact resume with --deterministic: a run killed with SIGKILL mid-training and started again
with the same command ends with the same checkpoint, tensor for tensor and bit for bit, as the
same run never interrupted: every weight, batch-norm moving statistic, optimizer slot and the
step counter (on one device and on 2 logical CPU replicas). Each run is a real `run.py`
process; the killed one kills itself (tests/kill_hooks.py `after_step=N`) at a step drawn at
random (seeded, printed) after its first checkpoint and off a checkpoint boundary, so the
resumed run repeats the steps after that checkpoint. Equal weights after the resumed steps need
the same batches and views as well: the data order is checked on its own, without training, in
tests/test_pipeline.py (`test_a_resumed_deterministic_stream_*`).
"""

import os
import random
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from test_run import TINY

pytestmark = pytest.mark.reliability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "run.py")
HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_hooks.py")
PLANNED = 8
EVERY = 2
FLAGS = [
    "--mode=train",
    *TINY,
    "--deterministic",
    f"--train_steps={PLANNED}",
    f"--checkpoint_steps={EVERY}",
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
# Only stops a hung run from hanging CI: a run takes ~40 s of CPU (~20 s alone on 2
# cores), several minutes on a loaded machine.
RUN_TIMEOUT = 900
# Change it (or set SIMCLR_KILL_SEED) to kill at other steps.
KILL_SEED = int(os.environ.get("SIMCLR_KILL_SEED", "24"))


def kill_step(replicas: int) -> int:
    """The step to kill at: after the first checkpoint, not on a checkpoint."""
    steps = [s for s in range(EVERY + 1, PLANNED) if s % EVERY]
    return random.Random(f"{KILL_SEED}-{replicas}").choice(steps)


def run(model_dir: str, replicas: int, kill_at: int | None = None) -> subprocess.CompletedProcess:
    script = [HOOKS, f"after_step={kill_at}"] if kill_at else [RUN_PY]
    # One replica: the default strategy on the one CPU device; two: mirrored over 2 logical CPUs.
    devices = [f"--num_logical_cpus={replicas}"] if replicas > 1 else []
    return subprocess.run(
        [sys.executable, *script, *FLAGS, *devices, f"--model_dir={model_dir}"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def tensors(model_dir: str, step: int) -> dict[str, np.ndarray]:
    """Every tensor of model_dir/ckpt-<step> but the object graph, by checkpoint key."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, f"ckpt-{step}"))
    keys = reader.get_variable_to_shape_map()
    return {k: reader.get_tensor(k) for k in keys if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """The keys whose tensors are not bitwise equal, each with its largest relative difference."""
    differ = []
    for key in sorted(a):
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            x, y = x.astype(np.float64), y.astype(np.float64)
            scale = np.maximum(np.abs(x), np.abs(y)).max() or 1.0
            differ.append(f"{key}: max |a-b|/max|a| = {np.abs(x - y).max() / scale:.3g}")
    return differ


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{replicas: (never interrupted model_dir, killed-then-resumed model_dir, kill step,
    the killed run, the resumed run)}; the four first runs share the 2 cores."""

    def uninterrupted(replicas):
        model_dir = str(tmp_path_factory.mktemp(f"whole{replicas}") / "model")
        return model_dir, run(model_dir, replicas)

    def killed(replicas):
        model_dir = str(tmp_path_factory.mktemp(f"killed{replicas}") / "model")
        return model_dir, run(model_dir, replicas, kill_step(replicas))

    cases = [(f, r) for r in (1, 2) for f in (uninterrupted, killed)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda case: case[0](case[1]), cases))
    out = {}
    for i, replicas in enumerate((1, 2)):
        (whole, whole_run), (resumed, killed_run) = done[2 * i], done[2 * i + 1]
        assert whole_run.returncode == 0, whole_run.stderr[-3000:]
        rerun = run(resumed, replicas)
        out[replicas] = (whole, resumed, kill_step(replicas), killed_run, rerun)
    return out


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_killed_deterministic_run_resumes_to_the_same_bits(runs, replicas):
    whole, resumed, step, killed, rerun = runs[replicas]
    print(f"replicas={replicas}: SIGKILL after step {step} (SIMCLR_KILL_SEED={KILL_SEED})")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    line = re.search(
        r"^kill_hooks: SIGKILL \(pid \d+\) after training step (\d+) .*$", killed.stderr, re.M
    )
    assert line and int(line.group(1)) == step, killed.stderr[-3000:]
    assert f"with {replicas} replica(s)" in killed.stderr, killed.stderr[-3000:]
    last = step // EVERY * EVERY  # the newest checkpoint when it died
    assert "Saved checkpoint" not in killed.stderr.split(f"ckpt-{last}\n")[-1]

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Restored {os.path.join(resumed, f'ckpt-{last}')}\n" in rerun.stderr
    assert f"from step {last}." in rerun.stderr, rerun.stderr[-3000:]

    a, b = tensors(whole, PLANNED), tensors(resumed, PLANNED)
    assert sorted(a) == sorted(b)
    assert a["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == PLANNED
    # What the comparison covers: weights, batch-norm moving statistics, optimizer slots.
    assert any("moving_mean" in k for k in a) and any("moving_variance" in k for k in a)
    assert any(k.startswith("optimizer/_variables/") for k in a)
    assert differences(a, b) == []
    # The checkpoint before the kill was equal too (the two runs were the same run until then).
    assert differences(tensors(whole, last), tensors(resumed, last)) == []
