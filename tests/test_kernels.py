"""kernels="auto" (simclr_tf2.models.kernels) against "plain" (stock Keras), one training step.

`tests/kernels_step.py` runs in its own process per replica count (one
MirroredStrategy per process; 2 logical CPUs): for global batch norm on and
off, in float32 and mixed_bfloat16, the same model with the same weights takes
one step on the same global batch with each switch. Loss, gradients (summed
over replicas, as the optimizer applies them) and batch-norm moving statistics
must agree; the counts of kernel calls show that "auto" really ran them.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from simclr_tf2.models import kernels
from simclr_tf2.models.batch_norm import BatchNormSpec
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel

SCRIPT = os.path.join(os.path.dirname(__file__), "kernels_step.py")
REPLICAS = (1, 2)
SETTINGS = [
    f"{policy}_{bn}_bn" for policy in ("float32", "mixed_bfloat16") for bn in ("global", "local")
]


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels")

    def run(replicas):
        path = out / f"{replicas}.npz"
        proc = subprocess.run(
            [sys.executable, SCRIPT, "--replicas", str(replicas), "--out", str(path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"{replicas} replicas failed:\n{proc.stderr[-3000:]}"
        return replicas, dict(np.load(path))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, REPLICAS))


def relative(a, b) -> float:
    """||a - b|| / ||b||: the error of a whole tensor, not of its near-zero entries."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def tensors(run, setting, switch, kind) -> dict:
    names = run[f"{setting}/{switch}/{kind}_names"]
    return {name: run[f"{setting}/{switch}/{kind}/{name}"] for name in names}


def flat(tensors_by_name: dict) -> np.ndarray:
    return np.concatenate([t.ravel() for t in tensors_by_name.values()])


def calls(run, setting, switch) -> dict:
    prefix = f"{setting}/{switch}/calls/"
    return {key[len(prefix) :]: int(run[key]) for key in run if key.startswith(prefix)}


@pytest.mark.parametrize("replicas", REPLICAS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_auto_runs_the_kernels_where_they_apply_and_plain_none(steps, replicas, setting):
    run = steps[replicas]
    assert int(run["replicas"]) == replicas
    auto_layers = set(run[f"{setting}/auto/layers"])
    plain_layers = set(run[f"{setting}/plain/layers"])
    assert {"FusedBatchNormalization", "PaddedConv2D"} <= auto_layers
    assert not {"FusedBatchNormalization", "PaddedConv2D"} & plain_layers
    assert set(calls(run, setting, "plain").values()) == {0}
    auto = calls(run, setting, "auto")
    # The ImageNet stem's 7x7 convolution and one strided 3x3 per block group 2-4.
    assert auto["padded_conv2d"] == 4 * replicas
    if "global" in setting and replicas > 1:
        # Cross-replica statistics in training: Keras's synchronized batch norm.
        assert auto["fused_batch_norm"] == auto["norm_relu_conv"] == 0
    else:
        # One norm -> ReLU -> conv unit inside each of ResNet-10's 4 blocks.
        assert auto["norm_relu_conv"] == 4 * replicas
        assert auto["fused_batch_norm"] > auto["norm_relu_conv"]


@pytest.mark.parametrize("replicas", REPLICAS)
@pytest.mark.parametrize("bn", ["global", "local"])
def test_float32_step_is_the_same(steps, replicas, bn):
    run, setting = steps[replicas], f"float32_{bn}_bn"
    loss = {s: float(run[f"{setting}/{s}/loss"]) for s in kernels.KERNELS}
    assert loss["auto"] == pytest.approx(loss["plain"], rel=1e-5)
    auto, plain = (tensors(run, setting, s, "grad") for s in kernels.KERNELS)
    assert list(auto) == list(plain)  # same variables, same paths
    # The gradient as a whole (measured 6e-6 on one replica): the fused batch norm's
    # gradient and Keras's sum in another order, and the early layers' gradients
    # (sums over the batch with cancellation) carry that round-off through the
    # whole backward pass. Each tensor alone (measured at most 1.1e-5, even with
    # unit gammas and zero betas) is held to 5e-5: a wrong term in any one of them
    # is far larger.
    assert relative(flat(auto), flat(plain)) < 1e-5
    for name in auto:
        assert relative(auto[name], plain[name]) < 5e-5, name
    auto, plain = (tensors(run, setting, s, "stat") for s in kernels.KERNELS)
    assert list(auto) == list(plain) and len(auto) == 2 * 16  # every norm: mean, variance
    for name in auto:
        assert relative(auto[name], plain[name]) < 1e-5, name


@pytest.mark.parametrize("replicas", REPLICAS)
@pytest.mark.parametrize("bn", ["global", "local"])
def test_mixed_bfloat16_step_is_the_same_to_bfloat16s_own_error(steps, replicas, bn):
    run, setting = steps[replicas], f"mixed_bfloat16_{bn}_bn"
    loss = {s: float(run[f"{setting}/{s}/loss"]) for s in kernels.KERNELS}
    # bfloat16 keeps 8 significant bits (2^-8 = 3.9e-3 relative per rounding).
    assert loss["auto"] == pytest.approx(loss["plain"], rel=4e-3)
    auto, plain = (tensors(run, setting, s, "grad") for s in kernels.KERNELS)
    exact = tensors(run, f"float32_{bn}_bn", "plain", "grad")
    # The yardstick is the float32 step: the kernels must keep the bfloat16 step as close
    # to it as the stock layers do. bfloat16's own error in this step is large (the plain
    # model's bfloat16 gradients are 26-31% off its float32 ones, up to 65% for single
    # tensors), and where auto and plain round differs by host: with TensorFlow's Eigen
    # bfloat16 (AVX2, 2026-12-03) auto and plain differed by 4.4% of that error, with
    # oneDNN's native bfloat16 kernels (AVX512-BF16, 2026-12-06) by 42% with local batch
    # norm on 2 replicas (fused batch norm rounds elsewhere), while being as close to
    # float32 as plain: whole gradient 0.99x plain's error, at most 1.24x for one tensor.
    # Exactness against the stock layers is the float32 tests' job (1e-5).
    assert relative(flat(auto), flat(exact)) < 1.1 * relative(flat(plain), flat(exact))
    for name in auto:
        assert relative(auto[name], exact[name]) < 1.5 * relative(plain[name], exact[name]), name
    # Statistics are float32 moments of bfloat16 activations: within one bfloat16 rounding
    # (2^-8) of each other (measured 5e-6 with Eigen's bfloat16; 2.8e-3 with oneDNN's native
    # fused batch norm, local batch norm on 2 replicas, as close to float32's as plain's).
    auto, plain = (tensors(run, setting, s, "stat") for s in kernels.KERNELS)
    for name in auto:
        assert relative(auto[name], plain[name]) < 2**-8, name


def test_switch_is_validated_and_serialized():
    assert kernels.KERNELS == ("auto", "plain")
    with pytest.raises(ValueError, match="kernels='fast'"):
        BatchNormSpec(kernels="fast")
    with pytest.raises(ValueError, match="kernels='fast'"):
        ResNet(10, batch_norm={**BatchNormSpec().get_config(), "kernels": "fast"})
    plain = BatchNormSpec(kernels="plain")
    model = SimCLRModel(ResNet(10, 0.125, cifar_stem=True, batch_norm=plain))
    config = model.get_config()
    # The default projection head takes the encoder's spec.
    for part in ("encoder", "projection_head"):
        assert config[part]["config"]["batch_norm"]["kernels"] == "plain"
    clone = SimCLRModel.from_config(config)
    clone.build((None, 8, 8, 3))
    types = {type(layer) for layer in clone._flatten_layers()}
    assert keras.layers.BatchNormalization in types
    assert not {kernels.FusedBatchNormalization, kernels.PaddedConv2D} & types


@pytest.mark.parametrize("accelerated", [False, True])
def test_auto_builds_the_kernels_only_without_gpu_or_tpu(monkeypatch, accelerated):
    # The kernels are for CPUs: where TensorFlow sees a GPU or TPU, "auto" is "plain".
    monkeypatch.setattr(kernels, "_accelerated", lambda: accelerated)
    model = SimCLRModel(ResNet(10, 0.125, batch_norm=BatchNormSpec(kernels="auto")))
    model.build((None, 16, 16, 3))
    types = {type(layer) for layer in model._flatten_layers()}
    custom = {kernels.FusedBatchNormalization, kernels.PaddedConv2D} & types
    assert custom == (set() if accelerated else custom) and (accelerated or custom)
