"""Strategy choice, the TPU code path up to the TPU, and run.py's scale-out flags.

Building a strategy touches the process's devices, so anything that builds one
runs in a subprocess.
"""

import glob
import json
import os
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_run import TINY, checkpoints, run

from simclr_tf2.distribute import StrategyError, resolve_kind, tf_config

TWO_WORKERS = json.dumps(
    {
        "cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},
        "task": {"type": "worker", "index": 0},
    }
)


def test_auto_picks_tpu_then_cluster_then_local(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert resolve_kind("auto") == "mirrored"  # local GPUs or logical CPUs, else one device
    assert resolve_kind("auto", use_tpu=True) == "tpu"
    assert resolve_kind("auto", tpu_name="my-tpu") == "tpu"
    assert resolve_kind("auto", master="grpc://10.0.0.2:8470") == "tpu"
    monkeypatch.setenv("TF_CONFIG", TWO_WORKERS)
    assert resolve_kind("auto") == "multi_worker"
    assert resolve_kind("one_device") == "one_device"  # an explicit choice wins
    one = json.loads(TWO_WORKERS)
    one["cluster"]["worker"] = one["cluster"]["worker"][:1]
    monkeypatch.setenv("TF_CONFIG", json.dumps(one))
    assert resolve_kind("auto") == "mirrored"  # a cluster of one is not multi-worker


def test_bad_tf_config_is_named(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: [")
    with pytest.raises(StrategyError, match="TF_CONFIG is not valid JSON"):
        tf_config()
    with pytest.raises(StrategyError, match="--strategy=gpu: use one of auto"):
        resolve_kind("gpu")


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # One line of ours; TensorFlow's C++ threads may still log after it while shutting down.
    ours = [line for line in proc.stderr.splitlines() if line.startswith("run.py: ")]
    assert len(ours) == 1, proc.stderr[-3000:]
    return ours[0]


@pytest.mark.parametrize(
    "args, message",
    [
        # The TPU path runs until a TPU is needed: resolver, connect, initialise.
        (["--use_tpu", "--tpu_name=local"], r"--strategy=tpu: no TPU reachable \(tpu_name='local'"),
        (["--strategy=tpu"], r"--strategy=tpu: no TPU reachable .*Please provide a TPU Name"),
        (["--strategy=multi_worker"], r"--strategy=multi_worker needs TF_CONFIG"),
        (["--strategy=mirrored", "--use_tpu"], r"--strategy=mirrored: --use_tpu/--tpu_name"),
        (
            ["--jit_compile", "--num_logical_cpus=2"],
            r"--jit_compile=True: XLA cannot compile a step spread over --num_logical_cpus=2",
        ),
        (["--mixed_precision=fp16"], r"flag --mixed_precision=fp16: value should be one of"),
    ],
)
def test_scale_out_mistakes_exit_2_with_one_line(tmp_path, args, message):
    env_free = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "run.py", *TINY, "--train_steps=1", f"--model_dir={tmp_path}", *args],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**env_free, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert re.search(message, one_line_error(proc)), proc.stderr[-1000:]


# A bfloat16 train_then_eval with the kNN monitor every epoch (train[:64]: 4 steps of 16).
# Batch 16: bfloat16 matmuls are emulated, slowly, on CPUs without AVX-512 BF16.
BFLOAT16_RUN = [
    *TINY,
    "--train_batch_size=16",
    "--train_split=train[:64]",
    "--knn_eval_every=1",
    "--knn_k=20",
    "--mode=train_then_eval",
    "--eval_steps=1",
    "--mixed_precision=mixed_bfloat16",
]


def test_bfloat16_over_two_replicas_is_evaluated_and_monitored_in_float32(tmp_path):
    # Synchronised batch norm over 2 logical CPUs: evaluation's float32 copy is made in the
    # strategy's scope, the kNN monitor's beside it (callbacks run outside the scope).
    proc = run(
        *BFLOAT16_RUN,
        "--train_steps=4",
        "--strategy=mirrored",
        "--num_logical_cpus=2",
        f"--model_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Strategy MirroredStrategy (/job:localhost/replica:0/task:0/device:CPU:0, " in (
        proc.stderr
    )
    assert re.search(r"kNN top-1 at step 4: [01]\.\d+ \(k=20, 64 bank, 360 queries\)", proc.stderr)
    assert "Evaluating in float32 (a copy of the mixed_bfloat16 model's weights)" in proc.stderr
    with open(tmp_path / "result.json") as f:
        result = json.load(f)
    assert result["global_step"] == 4 and 0.0 <= result["top_1_accuracy"] <= 1.0


def test_bfloat16_with_steps_per_execution_end_to_end(tmp_path):
    # Also the kNN monitor: an epoch of train[:64] is 4 steps, seen at step 6 (executions of 3).
    proc = run(
        *BFLOAT16_RUN,
        "--train_steps=6",
        "--checkpoint_steps=3",
        "--steps_per_execution=3",
        "--strategy=one_device",
        f"--model_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Strategy OneDeviceStrategy (/job:localhost/replica:0/task:0/device:CPU:0)" in (
        proc.stderr
    )
    assert "Evaluating in float32 (a copy of the mixed_bfloat16 model's weights)" in proc.stderr
    assert "precision mixed_bfloat16" in proc.stderr
    assert checkpoints(tmp_path)[-1] == 6  # the planned step, exactly
    with open(tmp_path / "result.json") as f:
        result = json.load(f)
    assert result["global_step"] == 6 and 0.0 <= result["top_1_accuracy"] <= 1.0
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["runtime"]["mixed_precision"] == "mixed_bfloat16"
    assert re.search(r"kNN top-1 at step 6: [01]\.\d+ \(k=20, 64 bank, 360 queries\)", proc.stderr)
    knn = []
    for path in glob.glob(str(tmp_path / "train" / "events*")):
        events = EventAccumulator(path)
        events.Reload()
        if "knn_top1" in events.Tags()["tensors"]:
            knn += [event.step for event in events.Tensors("knn_top1")]
    assert knn == [6]
