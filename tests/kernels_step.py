"""One training step of SimCLRModel with kernels="auto" and with "plain", on N replicas.

Run as a script (one strategy per process): `python tests/kernels_step.py
--replicas 2 --out result.npz`. For each setting (global batch norm on and
off; float32 and mixed_bfloat16) it builds the model twice, with the same
weights, and takes one step on the same global batch: the loss, the gradients
summed over replicas (what the optimizer applies) and the batch-norm moving
statistics after the step are saved for `tests/test_kernels.py`, with what
the traced step holds (which kernels ran).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf2.distribute import cpu_strategy  # noqa: E402
from simclr_tf2.models import kernels  # noqa: E402
from simclr_tf2.models.batch_norm import BatchNormSpec  # noqa: E402
from simclr_tf2.models.resnet import ResNet  # noqa: E402
from simclr_tf2.models.simclr import SimCLRModel  # noqa: E402

GLOBAL_BATCH = 16
SIZE = 16
SETTINGS = [
    (f"{policy}_{'global' if global_bn else 'local'}_bn", policy, global_bn)
    for policy in ("float32", "mixed_bfloat16")
    for global_bn in (True, False)
]


def build(strategy, policy: str, global_bn: bool, switch: str) -> SimCLRModel:
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            batch_norm = BatchNormSpec(synchronized=global_bn, kernels=switch)
            # The ImageNet stem: a strided 7x7 convolution too.
            encoder = ResNet(10, 0.25, cifar_stem=False, batch_norm=batch_norm)
            model = SimCLRModel(encoder, num_classes=10, temperature=0.5)
            model.build((None, SIZE, SIZE, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    return model


def randomise_norms(model: SimCLRModel) -> None:
    """Non-trivial scales and offsets (the last gamma of each block starts at 0)."""
    rng = np.random.default_rng(1)
    for v in model.weights:
        if v.path.endswith("gamma"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32))
        elif v.path.endswith("beta"):
            v.assign(rng.uniform(-0.5, 0.5, v.shape).astype(np.float32))


def layer_types(model: SimCLRModel) -> set:
    return {type(layer).__name__ for layer in model._flatten_layers()}


class KernelCalls:
    """Counts the calls in which each kernel of `simclr_tf2.models.kernels` did the work."""

    def __init__(self):
        self.counts = {"fused_batch_norm": 0, "padded_conv2d": 0, "norm_relu_conv": 0}
        fused = kernels.FusedBatchNormalization._fused
        conv = kernels.PaddedConv2D.convolution_op
        unit = kernels.norm_relu_conv

        def counted(key, fn, returned=lambda result: True):
            def wrapper(*args, **kwargs):
                result = fn(*args, **kwargs)
                self.counts[key] += bool(returned(result))
                return result

            return wrapper

        kernels.FusedBatchNormalization._fused = counted("fused_batch_norm", fused)
        kernels.PaddedConv2D.convolution_op = counted("padded_conv2d", conv)
        kernels.norm_relu_conv = counted("norm_relu_conv", unit, lambda z: z is not None)

    def take(self) -> dict:
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts


def one_step(strategy, model: SimCLRModel, batch):
    """Loss and gradients summed over replicas; eager (the math, not the graph, is compared)."""
    variables = model.trainable_variables

    def replica_step(x, y):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = model.compute_losses(x, y, training=True)
            loss = terms["total_loss"] / replicas
        grads = tape.gradient(loss, variables)
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("sum", loss), ctx.all_reduce("sum", grads)

    loss, grads = strategy.run(replica_step, args=batch)
    return strategy.experimental_local_results((loss, grads))[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    strategy = cpu_strategy(args.replicas)
    assert strategy.num_replicas_in_sync == args.replicas

    rng = np.random.default_rng(0)
    images = rng.random((GLOBAL_BATCH, SIZE, SIZE, 6)).astype(np.float32)
    labels = rng.integers(0, 10, GLOBAL_BATCH)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((images, labels))
    )
    batch = next(iter(dataset))
    calls = KernelCalls()
    out = {"replicas": args.replicas}
    for name, policy, global_bn in SETTINGS:
        start = None
        for switch in kernels.KERNELS:
            keras.utils.set_random_seed(0)
            model = build(strategy, policy, global_bn, switch)
            if start is None:
                randomise_norms(model)
                start = [v.numpy() for v in model.weights]
            else:
                for v, value in zip(model.weights, start, strict=True):
                    v.assign(value)
            calls.take()  # not the calls that built the model
            loss, grads = one_step(strategy, model, batch)
            prefix = f"{name}/{switch}"
            out[f"{prefix}/loss"] = float(loss)
            out[f"{prefix}/layers"] = np.array(sorted(layer_types(model)))
            out[f"{prefix}/grad_names"] = np.array([v.path for v in model.trainable_variables])
            for v, g in zip(model.trainable_variables, grads, strict=True):
                out[f"{prefix}/grad/{v.path}"] = tf.cast(g, tf.float32).numpy()
            stats = [v for v in model.non_trainable_variables if "moving_" in v.path]
            out[f"{prefix}/stat_names"] = np.array([v.path for v in stats])
            for v in stats:
                out[f"{prefix}/stat/{v.path}"] = v.numpy()
            for key, value in calls.take().items():
                out[f"{prefix}/calls/{key}"] = value
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
