"""SimCLRModel on one device: losses, gradients, freezing, weight decay, modes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.models.heads import ProjectionHead, num_head_outputs
from simclr_tf2.models.resnet import BLOCK_OUTPUT_NAMES, ResNet
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import LARS, WeightDecay, build_optimizer

SIZE = 8


def data(n=16, views=2, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, SIZE, SIZE, 3 * views)).astype(np.float32)
    return x, rng.integers(0, classes, n)


def simclr(num_classes=10, head=None, **kwargs) -> SimCLRModel:
    """The tiny model: ResNet-10 x0.25 with a CIFAR stem, the `ProjectionHead` of
    the arguments `head` (None: the default head), `SimCLRModel`'s `kwargs`."""
    projection_head = ProjectionHead(**head) if head is not None else None
    encoder = ResNet(10, 0.25, cifar_stem=True)
    return SimCLRModel(encoder, projection_head, num_classes=num_classes, **kwargs)


def tiny(**kwargs):
    model = simclr(**kwargs)
    model.build((None, SIZE, SIZE, 3))
    return model


def test_call_returns_named_outputs():
    model = tiny()
    out = model(data()[0][..., :3])
    heads = {f"proj_head_layer_{i}" for i in (1, 2, 3)}  # the default 3-layer head
    assert set(out) == set(BLOCK_OUTPUT_NAMES) | {"proj_head_output", "logits_sup"} | heads
    assert out["proj_head_output"].shape == (16, 128)
    np.testing.assert_array_equal(out["proj_head_layer_3"], out["proj_head_output"])
    assert out["logits_sup"].shape == (16, 10)
    # Two views (6 channels or a pair) are stacked on the batch axis.
    x = data()[0]
    stacked = model(x)["final_avg_pool"]
    pair = model((x[..., :3], x[..., 3:]))["final_avg_pool"]
    assert stacked.shape[0] == 32
    # Batches of 32 and 16 may run different conv kernels: float32 round-off only.
    close = {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(stacked, pair, **close)
    np.testing.assert_allclose(stacked[:16], model(x[..., :3])["final_avg_pool"], **close)


def test_supervised_loss_sends_no_gradient_into_encoder_while_pretraining():
    model = tiny()
    x, y = data()
    with tf.GradientTape(persistent=True) as tape:
        terms = model.compute_losses(x, y, training=True)
    head = [v for v in model.trainable_variables if "head_supervised" in v.path]
    rest = [v for v in model.trainable_variables if "head_supervised" not in v.path]
    assert len(head) == 2 and len(rest) > 40
    sup_grads = tape.gradient(terms["supervised_loss"], rest)
    assert all(g is None for g in sup_grads)
    assert all(np.any(g.numpy() != 0) for g in tape.gradient(terms["supervised_loss"], head))
    # The contrastive loss, by contrast, does reach the encoder.
    encoder = [v for v in rest if "resnet" in v.path]
    contrast_grads = tape.gradient(terms["contrast_loss"], encoder)
    assert sum(np.any(g.numpy() != 0) for g in contrast_grads if g is not None) > 10


def test_finetuning_does_send_gradient_into_encoder():
    model = tiny(train_mode="finetune")
    x, y = data(views=1)
    with tf.GradientTape() as tape:
        terms = model.compute_losses(x, y, training=True)
    assert "contrast_loss" not in terms
    encoder = [v for v in model.trainable_variables if "resnet" in v.path]
    grads = tape.gradient(terms["supervised_loss"], encoder)
    assert all(g is not None for g in grads)


def fit_two_steps(model, x, y, optimizer="momentum", eager=False):
    """Two steps of `fit`; `eager` skips tracing (seconds per model) where the traced
    step is covered elsewhere."""
    model.compile(optimizer=build_optimizer(optimizer, 0.1), run_eagerly=eager)
    before = {v.path: v.numpy().copy() for v in model.weights}
    # Two steps: the first cannot move convs behind a zero-initialised gamma.
    history = model.fit(x, y, batch_size=len(x) // 2, epochs=1, verbose=0)
    after = {v.path: v.numpy() for v in model.weights}
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    return history, changed


@pytest.mark.parametrize("block", [0, 2, 4])
def test_fine_tune_after_block_freezes_everything_up_to_it(block):
    model = tiny(train_mode="finetune", fine_tune_after_block=block)
    x, y = data(views=1)
    # One case keeps the traced step: freezing must hold in the graph too.
    _, changed = fit_two_steps(model, x, y, eager=block != 4)
    frozen_prefixes = ["simclr_model/resnet/initial_"] + [
        f"simclr_model/resnet/block_group{g}/" for g in range(1, block + 1)
    ]
    for path in (v.path for v in model.weights):
        frozen = any(path.startswith(p) for p in frozen_prefixes)
        # Frozen stages keep weights and BN statistics; the next stage trains.
        assert (path in changed) != frozen or "projection_head" in path, path
    assert any("head_supervised" in p for p in changed)


def test_fine_tune_all_blocks():
    model = tiny(train_mode="finetune", fine_tune_after_block=-1)
    x, y = data(views=1)
    _, changed = fit_two_steps(model, x, y)
    assert "simclr_model/resnet/initial_conv/conv2d/kernel" in changed


@pytest.mark.parametrize("shared", ["by_compile", "by_build", "by_the_run"])
def test_weight_decay_with_lars_only_on_supervised_kernel(shared):
    model = tiny(weight_decay=1e-2)
    if shared == "by_build":
        # Compiled first, built (e.g. by fit) afterwards.
        model = simclr(weight_decay=1e-2)
        model.compile(optimizer=build_optimizer("lars", 0.1, weight_decay=1e-2))
        model.build((None, SIZE, SIZE, 3))
    elif shared == "by_compile":
        # A model given a rate, compiled with LARS: one rule, LARS's, for both.
        model.compile(optimizer=build_optimizer("lars", 0.1, weight_decay=1e-2))
    else:
        # What build_run does: the rule made for the model, given to both.
        rule = WeightDecay.for_model(model, 1e-2, "lars")
        model.weight_decay_rule = rule
        model.compile(optimizer=build_optimizer("lars", 0.1, weight_decay=rule))
    rule = model.weight_decay_rule
    assert isinstance(model.optimizer, LARS) and model.optimizer.decay_rule == rule
    kernel = next(v for v in model.weights if v.path.endswith("head_supervised/kernel"))
    expected = 1e-2 * 0.5 * np.sum(kernel.numpy() ** 2)
    assert float(model.weight_decay_loss()) == pytest.approx(expected, rel=1e-5)
    # LARS decays (and adapts) every other kernel and nothing of rank 1 (BN, biases).
    model.optimizer.build(model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if rule.in_update(v)}
    adapted = {v.path for v in model.trainable_variables if rule.trust_ratio(v)}
    assert adapted == decayed
    kernels = {
        v.path
        for v in model.trainable_variables
        if v.path.endswith("kernel") and "head_supervised" not in v.path
    }
    assert decayed == kernels and kernels


def test_weight_decay_with_other_optimizers_on_every_kernel():
    model = tiny(weight_decay=1e-2)
    model.compile(optimizer=build_optimizer("momentum", 0.1))
    weights = [v for v in model.trainable_variables if v.path.endswith("kernel")]
    # Kernels of every conv and dense, the supervised head's included; no BN, no bias.
    assert any(v.path.endswith("head_supervised/kernel") for v in weights)
    expected = 1e-2 * 0.5 * sum(np.sum(v.numpy().astype(np.float64) ** 2) for v in weights)
    assert float(model.weight_decay_loss()) == pytest.approx(expected, rel=1e-5)
    assert tiny(weight_decay=0.0).weight_decay_loss().numpy() == 0.0


def test_fit_reports_every_metric_and_evaluate_top5():
    model = tiny(weight_decay=1e-4)
    x, y = data()
    history, changed = fit_two_steps(model, x, y, optimizer="lars")
    expected = {
        "contrast_loss",
        "contrast_acc",
        "contrast_entropy",
        "supervised_loss",
        "supervised_acc",
        "weight_decay",
        "total_loss",
        "learning_rate",
    }
    assert expected <= set(history.history)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert logs["learning_rate"] == pytest.approx(0.1)
    assert logs["total_loss"] == pytest.approx(
        logs["contrast_loss"] + logs["supervised_loss"] + logs["weight_decay"], rel=1e-5
    )
    # Entropy of a softmax over N = 16 candidates is at most ln(16).
    assert 0 < logs["contrast_entropy"] <= np.log(16) + 1e-6
    result = model.evaluate(x[..., :3], y, batch_size=8, verbose=0, return_dict=True)
    assert {"supervised_acc", "supervised_top5_acc", "supervised_loss"} <= set(result)
    assert result["supervised_top5_acc"] >= result["supervised_acc"]


def test_pretraining_without_labels():
    model = simclr(num_classes=None)
    model.compile(optimizer=build_optimizer("lars", 0.1))
    history = model.fit(data()[0], batch_size=8, epochs=1, verbose=0)
    assert "supervised_loss" not in history.history
    assert np.isfinite(history.history["contrast_loss"][-1])


@pytest.mark.parametrize(
    "mode, layers, selector",
    [("none", 3, 0), ("linear", 3, 1), ("nonlinear", 2, 2), ("nonlinear", 3, 1)],
)
def test_every_projection_head_mode_pretrains_and_finetunes(mode, layers, selector):
    head = dict(proj_head_mode=mode, num_proj_layers=layers, proj_out_dim=16)
    model = tiny(head=head)
    x, y = data()
    history, _ = fit_two_steps(model, x, y, eager=True)
    assert np.isfinite(history.history["contrast_loss"][-1])
    width = 16 if mode != "none" else model.encoder.output_width
    assert model(x[..., :3])["proj_head_output"].shape == (16, width)

    finetune = tiny(train_mode="finetune", ft_proj_selector=selector, head=head)
    history, changed = fit_two_steps(finetune, x[..., :3], y, eager=True)
    assert np.isfinite(history.history["supervised_loss"][-1])
    # The supervised head sits on the selected head layer.
    sup_kernel = next(v for v in finetune.weights if v.path.endswith("head_supervised/kernel"))
    # Hidden head layers are as wide as h; only the last one is proj_out_dim wide.
    last_layer = selector > 0 and selector == num_head_outputs(mode, layers)
    assert sup_kernel.shape[0] == (16 if last_layer else finetune.encoder.output_width)


def test_config_round_trip():
    model = simclr(num_classes=7, temperature=0.2, head=dict(proj_out_dim=32))
    clone = SimCLRModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored, SimCLRModel) and restored.temperature == 0.2
    assert restored.projection_head.proj_out_dim == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_mode="teach"), "train_mode='teach'"),
        (dict(train_mode="distill", num_classes=None), "train_mode='distill' needs num_classes"),
        (dict(distill_temperature=0.0), "distill_temperature=0.0"),
        (dict(distill_label_weight=-1.0), "distill_label_weight=-1.0"),
        (dict(train_mode="finetune", num_classes=None), "needs num_classes"),
        (dict(fine_tune_after_block=2), "fine_tune_after_block=2 only applies"),
        (dict(train_mode="finetune", fine_tune_after_block=5), "fine_tune_after_block=5"),
        (dict(head=dict(proj_head_mode="linear"), ft_proj_selector=2), "ft_proj_selector=2"),
        (dict(temperature=0.0), "temperature=0.0"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simclr(**kwargs)


def test_bad_channel_count():
    with pytest.raises(ValueError, match="got 4"):
        tiny()(np.zeros((2, SIZE, SIZE, 4), np.float32))


def same_weights(a, b):
    return len(a.weights) == len(b.weights) and all(
        np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.weights, b.weights, strict=True)
    )


@pytest.fixture
def trained_checkpoint(tmp_path):
    """A model after fit, saved with its optimizer as train.run saves it."""
    model = tiny()
    x, y = data()
    fit_two_steps(model, x, y, optimizer="lars")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return model, checkpoint.save(str(tmp_path / "ckpt"))


def test_checkpoint_holds_every_model_weight(trained_checkpoint):
    model, path = trained_checkpoint
    saved = [name for name, _ in tf.train.list_variables(path)]
    # TF stores each variable once, under its shortest path: trainable weights
    # under optimizer/, the BN moving statistics only under model/ - so every
    # layer must be reachable from the model (layers held in Python lists are
    # not, and their statistics were silently lost).
    for stat in ("moving_mean", "moving_variance"):
        assert sum(stat in name for name in saved) == sum(stat in v.path for v in model.weights)
    restored = tiny()
    tf.train.Checkpoint(model=restored).restore(path).expect_partial()
    assert same_weights(model, restored)


def test_finetuning_restores_encoder_and_head_from_a_pretraining_checkpoint(trained_checkpoint):
    model, path = trained_checkpoint
    finetune = tiny(train_mode="finetune", num_classes=5)
    assert not same_weights(model.encoder, finetune.encoder)
    parts = tf.train.Checkpoint(encoder=finetune.encoder, projection_head=finetune.projection_head)
    tf.train.Checkpoint(model=parts).restore(path).expect_partial()
    assert same_weights(model.encoder, finetune.encoder)
    assert same_weights(model.projection_head, finetune.projection_head)
