"""Keras callbacks for SimCLR training: checkpoints, progress, the kNN monitor."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf2.knn import knn_accuracy
from simclr_tf2.models.simclr import copy_weights, float32_copy


class KNNMonitor(keras.callbacks.Callback):
    """Weighted kNN top-1 of the encoder's features, every `every_steps` steps.

    The bank (a labelled subset of the training set) and the queries (the eval
    split) are embedded with the encoder in inference mode (`final_avg_pool`,
    on eval views), and each query is classified by its `k` nearest bank
    features (cosine similarity, votes weighted by exp(sim / temperature)).
    The accuracy is logged, added to the step's logs as `knn_acc`, kept in
    `history` as (step, accuracy), and written to TensorBoard as `knn_top1`
    under `log_dir`. A mixed-precision model's features are computed in float32,
    by a copy holding its weights.

    Args:
        bank: finite dataset of (images, labels) batches for the bank.
        queries: finite dataset of (images, labels) batches to classify.
        num_classes: number of classes.
        every_steps: evaluate when the optimizer's step count reaches a
            multiple of this.
        log_dir: where to write the TensorBoard scalar (None: nowhere).
        k, temperature: the kNN vote.
    """

    def __init__(
        self,
        bank: tf.data.Dataset,
        queries: tf.data.Dataset,
        num_classes: int,
        every_steps: int,
        log_dir: str | None = None,
        k: int = 200,
        temperature: float = 0.1,
    ):
        super().__init__()
        if every_steps < 1:
            raise ValueError(f"every_steps={every_steps} must be >= 1.")
        self.bank, self.queries = bank, queries
        self.num_classes = num_classes
        self.every_steps = every_steps
        self.log_dir = log_dir
        self.k, self.temperature = k, temperature
        self.history: list[tuple[int, float]] = []
        self._embed = None
        self._float32 = None
        self._last = None

    def _features(self, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
        if self._embed is None:
            encoder = self.model.encoder
            if encoder.compute_dtype != "float32":
                # Judged in float32 like run.py's evaluation (see `float32_copy`): a
                # copy, its weights brought up to date at every evaluation.
                self._float32 = float32_copy(self.model)
                encoder = self._float32.encoder
            self._embed = tf.function(
                lambda images: encoder(images, training=False)["final_avg_pool"],
                reduce_retracing=True,
            )
        if self._float32 is not None:
            copy_weights(self.model, self._float32)
        feats, labels = [], []
        for images, y in dataset:
            feats.append(self._embed(images).numpy())
            labels.append(y.numpy())
        return np.concatenate(feats), np.concatenate(labels)

    def evaluate(self, step: int) -> float:
        """Embeds bank and queries now and returns the kNN top-1."""
        bank_x, bank_y = self._features(self.bank)
        query_x, query_y = self._features(self.queries)
        accuracy = knn_accuracy(
            bank_x, bank_y, query_x, query_y, self.num_classes, self.k, self.temperature
        )
        self.history.append((step, accuracy))
        logging.info(
            "kNN top-1 at step %d: %.4f (k=%d, %d bank, %d queries)",
            step,
            accuracy,
            self.k,
            len(bank_y),
            len(query_y),
        )
        if self.log_dir:
            writer = tf.summary.create_file_writer(self.log_dir)
            with writer.as_default(step=step):
                tf.summary.scalar("knn_top1", accuracy)
            writer.close()
        return accuracy

    def on_train_begin(self, logs=None):
        self._last = int(self.model.optimizer.iterations.numpy()) // self.every_steps

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        # Also right with steps_per_execution, where batches end every N steps.
        if step // self.every_steps > self._last:
            self._last = step // self.every_steps
            accuracy = self.evaluate(step)
            if logs is not None:
                logs["knn_acc"] = accuracy


class CheckpointSaver(keras.callbacks.Callback):
    """Saves at the end of every Keras epoch (= checkpoint interval) and stops at
    `total_steps`; stops without saving, from the first step where it sees it, when
    the loss or the state a checkpoint would hold is not finite (`bad_step`,
    `bad_what` and `bad_value` then say where).

    The state is checked before each save: the loss a step logs was computed before
    that step's update, so the update can leave non-finite weights or slots behind a
    finite loss, and such a checkpoint would not be a good one to resume from.
    """

    def __init__(self, manager: tf.train.CheckpointManager, total_steps: int):
        super().__init__()
        self.manager = manager
        self.total_steps = total_steps
        self.bad_step = None
        self.bad_what = None
        self.bad_value = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _stop(self, what: str, value: float) -> None:
        self.bad_step, self.bad_what, self.bad_value = self._step(), what, value
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("total_loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop("total_loss", float(loss))
        elif self._step() >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def _non_finite_variable(self) -> tuple[str, float] | None:
        """(path, value) of the first variable of the state a checkpoint holds (model,
        optimizer) that has a non-finite value; None when all are finite."""
        for variable in [*self.model.variables, *self.model.optimizer.variables]:
            values = tf.convert_to_tensor(variable)
            if values.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(values))):
                first = tf.boolean_mask(values, ~tf.math.is_finite(values))[0]
                return variable.path, float(first)
        return None

    def save(self) -> None:
        """Saves this step's state unless it is saved already or is not finite."""
        if self.bad_step is not None:
            return
        step = self._step()
        if self.manager.latest_checkpoint == f"{self.manager.directory}/ckpt-{step}":
            return
        bad = self._non_finite_variable()
        if bad is not None:
            self._stop(f"variable {bad[0]}", bad[1])
            return
        prefix = f"{self.manager.directory}/ckpt-{step}"
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError):
            _discard_unrecorded(prefix)
            raise
        logging.info("Saved checkpoint %s", path)


def _discard_unrecorded(prefix: str) -> None:
    """Removes what a failed save of `prefix` left (its `_temp/` shards, a partial index or
    data file) unless the `checkpoint` state file names it: on a full disk that space is
    better free, and a resume never reads an unrecorded checkpoint anyway."""
    directory, left = os.path.dirname(prefix), [f"{prefix}_temp"]
    with contextlib.suppress(tf.errors.OpError, OSError, ValueError):
        state = tf.train.get_checkpoint_state(directory)
        if state is not None and prefix in {
            os.path.join(directory, os.path.basename(p)) for p in state.all_model_checkpoint_paths
        }:
            return
    with contextlib.suppress(tf.errors.OpError, OSError):
        left = [f"{prefix}_temp", *tf.io.gfile.glob(f"{prefix}.*")]
    for path in left:
        with contextlib.suppress(tf.errors.OpError, OSError):
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)


# Logged values, in the order they are shown.
_SHOWN = ("total_loss", "contrast_acc", "supervised_acc", "teacher_agreement", "learning_rate")


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 3600:.0f} h"
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


class Progress(keras.callbacks.Callback):
    """Progress of the whole run (not of one checkpoint window): step of
    `total_steps`, the logged values, pairs/s and the ETA of the last step.

    On a terminal (`bar=True`) one line redrawn in place at most every
    `redraw_s` seconds, in place of Keras's per-epoch progress bar (run `fit`
    with verbose=0); otherwise one log line every `every_s` seconds. The rate
    and the ETA leave out the first step, which includes tracing.
    """

    def __init__(
        self,
        total_steps: int,
        batch_size: int,
        bar: bool = False,
        every_s: float = 30.0,
        redraw_s: float = 0.5,
        stream=None,
    ):
        super().__init__()
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.bar = bar
        self.every_s = redraw_s if bar else every_s
        self.stream = stream or sys.stdout
        self._t0 = self._last = None
        self._step0 = None
        self._drawn = False

    def on_train_batch_end(self, batch, logs=None):
        if logs is None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        now = time.time()
        if self._step0 is None:  # the first step includes tracing: start the clock after it
            self._t0 = self._last = now
            self._step0 = step
            return
        if step <= self._step0:
            return
        rate = (step - self._step0) / (now - self._t0)
        logs["pairs_per_s"] = rate * self.batch_size
        if now - self._last < self.every_s and step < self.total_steps:
            return
        self._last = now
        eta = max(0, self.total_steps - step) / rate
        parts = [f"{key} {float(logs[key]):.4g}" for key in _SHOWN if key in logs]
        parts.append(f"{logs['pairs_per_s']:.1f} pairs/s")
        parts.append(f"ETA {_duration(eta)}")
        done = f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.0f}%)"
        if self.bar:
            width = 20
            filled = int(width * min(step, self.total_steps) / self.total_steps)
            line = f"{done} [{'=' * filled}{'.' * (width - filled)}] " + ", ".join(parts)
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self._drawn = True
        else:
            logging.info("%s", ", ".join([done, *parts]))

    def on_train_end(self, logs=None):
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
