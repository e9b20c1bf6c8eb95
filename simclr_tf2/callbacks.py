"""Keras callbacks for SimCLR training: the kNN monitor."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf2.knn import knn_accuracy


class KNNMonitor(keras.callbacks.Callback):
    """Weighted kNN top-1 of the encoder's features, every `every_steps` steps.

    The bank (a labelled subset of the training set) and the queries (the eval
    split) are embedded with the encoder in inference mode (`final_avg_pool`,
    on eval views), and each query is classified by its `k` nearest bank
    features (cosine similarity, votes weighted by exp(sim / temperature)).
    The accuracy is logged, added to the step's logs as `knn_acc`, kept in
    `history` as (step, accuracy), and written to TensorBoard as `knn_top1`
    under `log_dir`.

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
        self._last = None

    def _features(self, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
        if self._embed is None:
            encoder = self.model.encoder
            self._embed = tf.function(
                lambda images: encoder(images, training=False)["final_avg_pool"],
                reduce_retracing=True,
            )
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
