"""Runs 3 steps of `model.fit` on N logical CPU replicas and saves the results.

Run as a script (one strategy per process): `python tests/mirrored_fit.py
--replicas 4 --out result.npz [--no-global-bn]`. Every run starts from the same
weights and sees the same global batches, so runs with different replica
counts must end with the same weights when batch norm is global.
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
from simclr_tf2.losses import nt_xent  # noqa: E402
from simclr_tf2.models.batch_norm import BatchNormSpec  # noqa: E402
from simclr_tf2.models.resnet import ResNet  # noqa: E402
from simclr_tf2.models.simclr import SimCLRModel  # noqa: E402
from simclr_tf2.optim import WarmUpAndCosineDecay, build_optimizer  # noqa: E402

GLOBAL_BATCH = 32
STEPS = 3
SIZE = 16


class StepLosses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append([float(logs["contrast_loss"]), float(logs["supervised_loss"])])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-global-bn", action="store_true")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    keras.config.set_dtype_policy(args.dtype)

    strategy = cpu_strategy(args.replicas)
    assert strategy.num_replicas_in_sync == args.replicas

    rng = np.random.default_rng(0)
    images = rng.random((GLOBAL_BATCH * STEPS, SIZE, SIZE, 6)).astype(args.dtype)
    labels = rng.integers(0, 10, GLOBAL_BATCH * STEPS)
    # One random projection batch for the loss alone, (2n, d) per replica.
    z = rng.standard_normal((2 * GLOBAL_BATCH, 16)).astype(args.dtype)

    keras.utils.set_random_seed(0)
    with strategy.scope():
        batch_norm = BatchNormSpec(synchronized=not args.no_global_bn)
        model = SimCLRModel(
            ResNet(10, 0.25, cifar_stem=True, batch_norm=batch_norm),
            num_classes=10,
            temperature=0.5,
            weight_decay=1e-4,
        )
        model.build((None, SIZE, SIZE, 3))
        schedule = WarmUpAndCosineDecay(1.0, GLOBAL_BATCH, total_steps=STEPS, warmup_steps=1)
        model.compile(optimizer=build_optimizer("lars", schedule, weight_decay=1e-4))
    initial = [v.numpy() for v in model.weights]

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH)
    recorder = StepLosses()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[recorder], shuffle=False)

    # The loss function alone: each replica gets its rows of both views.
    z1, z2 = (tf.constant(half) for half in np.split(z, 2))
    n = GLOBAL_BATCH // args.replicas

    def replica_loss():
        ctx = tf.distribute.get_replica_context()
        r = ctx.replica_id_in_sync_group
        local = tf.concat([z1[r * n : (r + 1) * n], z2[r * n : (r + 1) * n]], axis=0)
        loss, _, _ = nt_xent(local, 0.5)
        return loss

    per_replica = strategy.run(tf.function(replica_loss))
    loss_alone = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    np.savez(
        args.out,
        names=np.array([v.path for v in model.weights]),
        step_losses=np.array(recorder.losses),
        loss_alone=float(loss_alone),
        replicas=strategy.num_replicas_in_sync,
        **{f"initial_{i}": w for i, w in enumerate(initial)},
        **{f"final_{i}": v.numpy() for i, v in enumerate(model.weights)},
    )


if __name__ == "__main__":
    main()
