"""train.py pieces that the end-to-end tests cannot reach cheaply."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.callbacks import CheckpointSaver
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import build_optimizer


def _saver_at_step_5(tmp_path, num_classes):
    """A small built model, its checkpoint manager in tmp_path and a CheckpointSaver,
    at optimizer step 5."""
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=num_classes)
    model.build((None, 8, 8, 3))
    model.compile(optimizer=build_optimizer("momentum", 0.1))
    model.optimizer.build(model.trainable_variables)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer), str(tmp_path), 3
    )
    saver = CheckpointSaver(manager, total_steps=100)
    saver.set_model(model)
    model.optimizer.iterations.assign(5)
    return model, manager, saver


def test_non_finite_loss_stops_without_saving(tmp_path):
    model, manager, saver = _saver_at_step_5(tmp_path, num_classes=3)
    saver.on_train_batch_end(0, {"total_loss": 1.5})
    saver.on_epoch_end(0)
    assert manager.latest_checkpoint.endswith("ckpt-5") and not model.stop_training

    model.optimizer.iterations.assign(7)
    saver.on_train_batch_end(1, {"total_loss": float("nan")})
    assert model.stop_training and saver.bad_step == 7 and np.isnan(saver.bad_value)
    saver.on_epoch_end(1)
    assert manager.latest_checkpoint.endswith("ckpt-5")  # the last good one stays newest


def test_stops_at_the_planned_step(tmp_path):
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=None)
    model.build((None, 8, 8, 3))
    model.compile(optimizer=build_optimizer("momentum", 0.1))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path), 3)
    saver = CheckpointSaver(manager, total_steps=10)
    saver.set_model(model)
    model.optimizer.iterations.assign(9)
    saver.on_train_batch_end(0, {"total_loss": 1.0})
    assert not model.stop_training
    model.optimizer.iterations.assign(10)
    saver.on_train_batch_end(1, {"total_loss": 1.0})
    assert model.stop_training


def test_a_non_finite_state_behind_a_finite_loss_is_not_saved(tmp_path):
    # The loss a step logs was computed before the step's update: the update can leave
    # non-finite weights behind a finite loss, and that state must not become a checkpoint.
    model, manager, saver = _saver_at_step_5(tmp_path, num_classes=None)
    saver.on_epoch_end(0)
    assert manager.latest_checkpoint.endswith("ckpt-5")

    slot = model.optimizer.variables[-1]  # a momentum slot: state a checkpoint holds
    slot.assign(tf.fill(slot.shape, float("inf")))
    model.optimizer.iterations.assign(10)
    saver.on_train_batch_end(0, {"total_loss": 1.5})
    saver.on_epoch_end(1)
    assert manager.latest_checkpoint.endswith("ckpt-5")
    assert model.stop_training and saver.bad_step == 10 and saver.bad_value == float("inf")
    assert saver.bad_what == f"variable {slot.path}"


@pytest.mark.reliability
def test_run_py_stops_at_the_first_non_finite_step_and_keeps_the_last_good(tmp_path):
    from test_run import TINY

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model_dir = str(tmp_path / "model")
    # A checkpoint at every step, so that one would be written right after the divergence.
    command = [sys.executable, "run.py", "--mode=train_then_eval", *TINY, "--checkpoint_steps=1"]
    command += ["--train_steps=10", "--eval_steps=2", f"--model_dir={model_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def run(learning_rate):
        return subprocess.run(
            [*command, f"--learning_rate={learning_rate}"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    diverged = run(1e9)  # non-finite within a few steps
    assert diverged.returncode == 1, diverged.stderr[-3000:]
    last = diverged.stderr.splitlines()[-1]
    stop = re.fullmatch(
        r"run.py: (total_loss|variable \S+) became (nan|inf|-inf) at step (\d+); stopped "
        r"without saving it, the last good checkpoint \((\S+)\) is kept\. .*",
        last,
    )
    assert stop, diverged.stderr[-3000:]
    # Said once: not also as a log line on the same terminal.
    assert diverged.stderr.count(last.removeprefix("run.py: ")) == 1, diverged.stderr[-3000:]
    bad_step, kept = int(stop.group(3)), stop.group(4)
    assert 1 < bad_step < 10
    saved = [int(n) for n in re.findall(r"Saved checkpoint .*/ckpt-(\d+)$", diverged.stderr, re.M)]
    assert saved == list(range(1, bad_step)), saved  # every step before it, none from it on
    assert kept == os.path.join(model_dir, f"ckpt-{bad_step - 1}")
    assert tf.train.latest_checkpoint(model_dir) == kept
    on_disk = sorted(
        int(n.split("-")[1].split(".")[0])
        for n in os.listdir(model_dir)
        if n.startswith("ckpt-") and n.endswith(".index")
    )
    assert max(on_disk) == bad_step - 1
    # The last good checkpoint holds finite values only, and nothing was exported or evaluated.
    reader = tf.train.load_checkpoint(kept)
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.all(np.isfinite(reader.get_tensor(key))), key
    assert not os.path.exists(os.path.join(model_dir, "saved_model"))
    assert not os.path.exists(os.path.join(model_dir, "result.json"))

    # Resumable: the same command restores it and goes on (here, to diverge again at once: the
    # momentum a diverging run leaves in the optimizer slots diverges at any learning rate).
    resumed = run(1e9)
    assert f"Restored {kept}\n" in resumed.stderr and f"from step {bad_step - 1}." in resumed.stderr
    assert resumed.returncode == 1, resumed.stderr[-3000:]
    again = re.search(r"became \S+ at step (\d+);", resumed.stderr.splitlines()[-1])
    assert again and int(again.group(1)) >= bad_step, resumed.stderr[-3000:]
    assert tf.train.latest_checkpoint(model_dir) == kept


def test_a_mixed_precision_run_is_evaluated_in_float32(tmp_path):
    """`evaluate` judges a mixed_bfloat16 run's float32 weights in float32: its metrics are
    the float32 model's, not those of the weights rounded to bfloat16."""
    import time

    import keras

    from simclr_tf2 import Config, build_run
    from simclr_tf2.train import evaluate

    flags = dict(
        dataset="digits",
        image_size=8,
        resnet_depth=10,
        width_multiplier=0.125,
        train_batch_size=16,
        train_mode="finetune",
        checkpoint="none",
        mode="train_then_eval",
        model_dir=str(tmp_path),
    )
    keras.utils.set_random_seed(0)
    mixed = build_run(Config.from_flags(**flags, mixed_precision="mixed_bfloat16"))
    assert mixed.precision == "mixed_bfloat16"
    head = mixed.model.supervised_head
    # Logits far from 0 (the head starts at std 0.01 on small features), where the
    # rounding shows in the loss.
    head.kernel.assign(100 * tf.random.stateless_normal(head.kernel.shape, (0, 1)))
    reference = build_run(Config.from_flags(**flags))
    reference.model.set_weights(mixed.model.get_weights())

    def metrics(run):
        dataset, steps = run.eval_dataset()
        return run.model.evaluate(dataset, steps=steps, verbose=0, return_dict=True)

    expected, rounded = metrics(reference), metrics(mixed)
    result = evaluate(mixed, str(tmp_path), time.time())
    loss = expected["supervised_loss"]
    # The same float32 computation in another graph: float32 round-off (~1e-7) only.
    assert abs(result["supervised_loss"] - loss) <= 1e-5 * loss
    assert result["top_1_accuracy"] == expected["supervised_acc"]
    # What evaluating the bfloat16 model would have said is off by far more than that.
    # (2026-12-07: 0 apart in float32, 1.8e-3 of the loss in bfloat16.)
    assert abs(rounded["supervised_loss"] - loss) > 5e-4 * loss, (rounded, expected)
    assert result["mixed_precision"] == "mixed_bfloat16"
    # The run's own model is untouched (it goes on training in bfloat16).
    assert mixed.model.encoder.dtype_policy.compute_dtype == "bfloat16"
