"""kNN classification and the kNN monitor callback; the linear probe on synthetic features."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from simclr_tf2.callbacks import KNNMonitor
from simclr_tf2.knn import knn_accuracy, knn_classify
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import build_optimizer
from tools.linear_eval import top_k, train_linear


def numpy_knn_scores(bank, bank_y, queries, classes, k, t):
    """Independent transcription: cosine similarity, top-k, exp(sim/t)-weighted votes."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = queries @ bank.T
    scores = np.zeros((len(queries), classes))
    for i, row in enumerate(sim):
        top = np.argsort(-row, kind="stable")[:k]
        for j in top:
            scores[i, bank_y[j]] += np.exp(row[j] / t)
    return scores


@pytest.mark.parametrize("n, d, classes, k, t", [(50, 8, 3, 5, 0.1), (300, 32, 10, 200, 0.5)])
def test_knn_matches_numpy(n, d, classes, k, t):
    rng = np.random.default_rng(n)
    bank, queries = rng.standard_normal((n, d)), rng.standard_normal((40, d))
    bank_y = rng.integers(0, classes, n)
    ours = knn_classify(bank, bank_y, queries, classes, k, t, chunk=16).numpy()
    # float32 similarities, exp(sim / 0.1) up to e^10: 1e-5 relative.
    np.testing.assert_allclose(ours, numpy_knn_scores(bank, bank_y, queries, classes, k, t), 1e-5)


def separable(classes=5, d=16, seed=0):
    """Train and test features linearly separable by construction: class centres far
    apart (scale 3) plus small noise (0.3)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d)) * 3

    def draw(n):
        y = rng.integers(0, classes, n)
        return (centres[y] + 0.3 * rng.standard_normal((n, d))).astype(np.float32), y

    return draw(1000), draw(500)


def test_knn_and_linear_probe_find_separable_classes_and_only_chance_on_shuffled_labels():
    (train_x, train_y), (test_x, test_y) = separable()
    assert knn_accuracy(train_x, train_y, test_x, test_y, 5, k=20) > 0.98
    probe = train_linear(train_x, train_y, 5, 20, 64, 0.1, 0.0, seed=0)
    assert top_k(probe.predict(test_x, verbose=0), test_y, 1) > 0.98

    # Labels shuffled (train and test independently): nothing links features to labels,
    # so both fall to chance, 1/5, give or take sampling noise (standard error ~0.018).
    rng = np.random.default_rng(1)
    train_s, test_s = rng.permutation(train_y), rng.permutation(test_y)
    assert abs(knn_accuracy(train_x, train_s, test_x, test_s, 5, k=20) - 0.2) < 0.07
    probe = train_linear(train_x, train_s, 5, 20, 64, 0.1, 0.0, seed=0)
    assert abs(top_k(probe.predict(test_x, verbose=0), test_s, 1) - 0.2) < 0.07


def test_knn_monitor_writes_its_scalar_at_the_requested_steps(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    labelled = tf.data.Dataset.from_tensor_slices((x[..., :3], y)).batch(8)
    keras.utils.set_random_seed(0)
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3, temperature=0.5)
    model.build((None, 8, 8, 3))
    model.compile(optimizer=build_optimizer("lars", 0.1))
    monitor = KNNMonitor(labelled, labelled, 3, every_steps=2, log_dir=str(tmp_path), k=3)
    model.fit(
        tf.data.Dataset.from_tensors((x, y)).repeat(),
        steps_per_epoch=3,
        epochs=2,
        verbose=0,
        callbacks=[monitor],
        shuffle=False,
    )
    assert [step for step, _ in monitor.history] == [2, 4, 6]
    assert all(0.0 <= acc <= 1.0 for _, acc in monitor.history)
    written = {}
    for path in glob.glob(os.path.join(tmp_path, "events*")):
        events = EventAccumulator(path)
        events.Reload()
        for event in events.Tensors("knn_top1"):
            written[event.step] = float(tf.make_ndarray(event.tensor_proto))
    assert written == pytest.approx(dict(monitor.history))


def test_knn_monitor_embeds_a_mixed_precision_model_in_float32():
    """The monitor reads features of a float32 copy, brought up to date with the training
    model's weights at every evaluation (bfloat16 features would be 2**-8 off)."""
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    labelled = tf.data.Dataset.from_tensor_slices((x[..., :3], y)).batch(8)
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3, temperature=0.5)
        model.build((None, 8, 8, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer=build_optimizer("lars", 0.1))
    reference = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3, temperature=0.5)
    reference.build((None, 8, 8, 3))
    monitor = KNNMonitor(labelled, labelled, 3, every_steps=2, k=3)
    monitor.set_model(model)
    images = tf.constant(x[..., :3])
    for _ in range(2):  # before and after the weights change
        reference.set_weights(model.get_weights())
        features, labels = monitor._features(labelled)
        expected = reference.encoder(images, training=False)["final_avg_pool"].numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(features, expected, rtol=0, atol=1e-5 * scale)
        np.testing.assert_array_equal(labels, y)
        rounded = model.encoder(images, training=False)["final_avg_pool"]
        assert np.abs(rounded.numpy().astype(np.float32) - expected).max() > 1e-3 * scale
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        model.fit(data, steps_per_epoch=1, verbose=0, shuffle=False)
