"""LARS against a NumPy transcription of the paper code's update rule."""

import contextlib

import keras
import numpy as np
import pytest

from simclr_tf2.optim import LARS, WeightDecay, build_optimizer

# name -> initial value; the names are the Keras paths the exclusions see.
SHAPES = {
    "encoder/conv2d/kernel": (3, 3, 2, 4),
    "encoder/dense/bias": (4,),
    "encoder/batch_normalization/gamma": (4,),
    "head_supervised/kernel": (4, 3),
    "zero_init/kernel": (5, 2),  # starts at zero: trust ratio must fall back to 1
    "no_grad/kernel": (2, 2),  # receives a zero gradient
}


# What the paper's code leaves out of LARS's weight decay and trust ratio, by name.
EXCLUDED = ("batch_normalization", "bias", "head_supervised")


def make_variable(path: str, value: np.ndarray) -> keras.Variable:
    """A variable whose Keras path is `path` (name scopes, then the name)."""
    *scopes, name = path.split("/")
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(keras.name_scope(scope))
        return keras.Variable(value, name=name)


def numpy_lars(params, grads_per_step, lr, momentum, wd, eeta, classic, nesterov, excluded):
    """Transcription of the paper code's LARS, in float64."""
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in params.items()}

    def trust(w, d):
        w_norm, d_norm = np.linalg.norm(w), np.linalg.norm(d)
        if w_norm > 0 and d_norm > 0:
            return eeta * w_norm / d_norm
        return 1.0

    for grads in grads_per_step:
        for name, w in params.items():
            g = grads[name].astype(np.float64)
            skip = any(p in name for p in excluded)
            if not skip:
                g = g + wd * w
            v = velocity[name]
            if classic:
                scaled_lr = lr * (1.0 if skip else trust(w, g))
                next_v = momentum * v + scaled_lr * g
                update = momentum * next_v + scaled_lr * g if nesterov else next_v
                params[name] = w - update
            else:
                next_v = momentum * v + g
                update = momentum * next_v + g if nesterov else next_v
                scaled_lr = lr * (1.0 if skip else trust(w, update))
                params[name] = w - scaled_lr * update
            velocity[name] = next_v
    return params


@pytest.mark.parametrize("classic", [True, False])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_five_steps_match_numpy(classic, nesterov, weight_decay):
    rng = np.random.default_rng(0)
    initial = {
        name: (np.zeros(shape) if name.startswith("zero") else rng.standard_normal(shape)).astype(
            np.float32
        )
        for name, shape in SHAPES.items()
    }
    grads = [
        {
            name: (
                np.zeros(shape) if name.startswith("no_grad") else rng.standard_normal(shape)
            ).astype(np.float32)
            for name, shape in SHAPES.items()
        }
        for _ in range(5)
    ]
    variables = [make_variable(name, initial[name]) for name in SHAPES]
    assert [v.path for v in variables] == list(SHAPES)
    # The run's rule: kernels decayed, rank-1 variables (BN, biases) not, and the
    # supervised head decayed through the loss (so not here) without trust ratio.
    rule = WeightDecay(
        weight_decay, by_optimizer=True, loss_only=frozenset({"head_supervised/kernel"})
    )
    optimizer = LARS(
        learning_rate=0.5,
        momentum=0.9,
        weight_decay=rule,
        classic_momentum=classic,
        eeta=0.001,
        nesterov=nesterov,
    )
    for step in grads:
        optimizer.apply_gradients([(step[v.path], v) for v in variables])

    expected = numpy_lars(
        initial, grads, 0.5, 0.9, weight_decay, 0.001, classic, nesterov, EXCLUDED
    )
    for v in variables:
        # float32 arithmetic over 5 steps of O(1) values.
        np.testing.assert_allclose(v.numpy(), expected[v.path], rtol=1e-5, atol=1e-6)
    assert not np.allclose(variables[0].numpy(), initial["encoder/conv2d/kernel"]), (
        "the update must move the weights"
    )


def test_excluded_variable_gets_plain_momentum_sgd():
    v = make_variable("dense/bias", np.ones(3, np.float32))
    optimizer = LARS(0.1, momentum=0.0, weight_decay=0.5, exclude_from_weight_decay=["bias"])
    optimizer.apply_gradients([(np.full(3, 2.0, np.float32), v)])
    # No decay, no trust ratio: w - lr * g.
    np.testing.assert_allclose(v.numpy(), 1 - 0.1 * 2.0, rtol=1e-6)


def test_layer_adaptation_list_defaults_to_weight_decay_list():
    optimizer = LARS(0.1, exclude_from_weight_decay=["bias"])
    v = make_variable("dense/bias", np.ones(3, np.float32))
    optimizer.build([v])
    assert not optimizer.decay_rule.trust_ratio(v)
    optimizer = LARS(0.1, exclude_from_weight_decay=["bias"], exclude_from_layer_adaptation=[])
    assert optimizer.decay_rule.trust_ratio(v) and not optimizer.decay_rule.decays(v)


def test_separate_layer_adaptation_exclusions():
    # Decayed but not adapted: w - lr * (g + wd * w).
    v = make_variable("x/kernel", np.ones(3, np.float32))
    optimizer = LARS(0.1, momentum=0.0, weight_decay=0.5, exclude_from_layer_adaptation=["kernel"])
    optimizer.apply_gradients([(np.full(3, 2.0, np.float32), v)])
    np.testing.assert_allclose(v.numpy(), 1 - 0.1 * (2.0 + 0.5), rtol=1e-6)


def test_serializes():
    optimizer = LARS(
        0.2,
        momentum=0.8,
        weight_decay=1e-6,
        exclude_from_weight_decay=["bias"],
        classic_momentum=False,
        eeta=0.002,
        nesterov=True,
    )
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, LARS)
    for key in ("momentum", "weight_decay", "classic_momentum", "eeta", "nesterov"):
        assert restored.get_config()[key] == optimizer.get_config()[key]
    assert restored.decay_rule == optimizer.decay_rule
    assert restored.decay_rule.exclude == ("bias",) and restored.weight_decay == 1e-6


def test_build_optimizer_names():
    assert isinstance(build_optimizer("lars", 0.1), LARS)
    sgd = build_optimizer("momentum", 0.1, momentum=0.8)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.8
    assert isinstance(build_optimizer("adam", 0.1), keras.optimizers.Adam)
    assert isinstance(build_optimizer("lamb", 0.1), keras.optimizers.Lamb)
    with pytest.raises(ValueError, match="optimizer='sgdd'"):
        build_optimizer("sgdd", 0.1)
