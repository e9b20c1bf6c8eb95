"""NT-Xent against an independent NumPy implementation."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.losses import nt_xent


def numpy_nt_xent(z: np.ndarray, temperature: float, hidden_norm: bool) -> float:
    """SimCLR's loss written from the paper's definition, one anchor at a time.

    For each of the 2N projections (view 1 rows first), the loss is
    -log softmax of its positive among all other 2N - 1 projections. The
    paper's code sums the two anchors of a pair and averages over pairs, i.e.
    it reports 2x the mean over the 2N anchors.
    """
    z = z.astype(np.float64)
    if hidden_norm:
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    two_n = z.shape[0]
    n = two_n // 2
    sim = z @ z.T / temperature
    losses = []
    for i in range(two_n):
        positive = i + n if i < n else i - n
        others = [j for j in range(two_n) if j != i]
        logits = sim[i, others]
        log_denominator = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
        losses.append(log_denominator - sim[i, positive])
    return 2.0 * float(np.mean(losses))


@pytest.mark.parametrize("n", [1, 2, 7, 32])
@pytest.mark.parametrize("dim", [3, 128])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("hidden_norm", [True, False])
def test_matches_numpy(n, dim, temperature, hidden_norm):
    rng = np.random.default_rng(n * 1000 + dim)
    # Without normalisation, keep the logits in a range where float32 is exact
    # enough: |z_i . z_j| / t stays below ~30.
    scale = 1.0 if hidden_norm else np.sqrt(temperature * 3.0 / dim)
    z = (rng.standard_normal((2 * n, dim)) * scale).astype(np.float32)
    loss, logits_ab, labels = nt_xent(tf.constant(z), temperature, hidden_norm)
    expected = numpy_nt_xent(z, temperature, hidden_norm)
    # float32 softmax over <= 64 terms: relative error ~1e-6.
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)
    assert logits_ab.shape == (n, n)
    assert labels.shape == (n, 2 * n)
    np.testing.assert_array_equal(np.argmax(labels, axis=1), np.arange(n))


def test_fresh_model_starts_near_2_ln_2n_minus_1():
    # Orthogonal-ish random directions: all similarities near 0, so each
    # anchor's softmax is near uniform over 2N - 1 candidates.
    n = 64
    z = np.random.default_rng(0).standard_normal((2 * n, 4096)).astype(np.float32)
    loss, _, _ = nt_xent(z, temperature=1.0)
    assert abs(float(loss) - 2 * np.log(2 * n - 1)) < 0.05


def test_positive_pairs_lower_the_loss():
    rng = np.random.default_rng(1)
    view1 = rng.standard_normal((16, 32)).astype(np.float32)
    aligned = np.concatenate([view1, view1 + 0.01 * rng.standard_normal(view1.shape)])
    shuffled = np.concatenate([view1, rng.standard_normal(view1.shape)])
    aligned_loss = float(nt_xent(aligned.astype(np.float32), 0.1)[0])
    random_loss = float(nt_xent(shuffled.astype(np.float32), 0.1)[0])
    assert aligned_loss < 0.1 < random_loss


def test_gradient_matches_finite_differences():
    z = tf.Variable(np.random.default_rng(2).standard_normal((8, 5)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss, _, _ = nt_xent(z, 0.5)
    grad = tape.gradient(loss, z).numpy()
    base = z.numpy().astype(np.float64)
    eps = 1e-3
    for index in [(0, 0), (3, 2), (7, 4)]:
        plus, minus = base.copy(), base.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (numpy_nt_xent(plus, 0.5, True) - numpy_nt_xent(minus, 0.5, True)) / (2 * eps)
        assert grad[index] == pytest.approx(numeric, abs=2e-3)
