"""CPU performance kernels for the ResNet trunk and the heads, behind one switch.

The architecture (`resnet.py`, `heads.py`) is plain Keras. Every layer that
can run faster or lighter asks this module for its piece with the switch
`kernels`, one of `KERNELS`:

* "auto" (the default): on a machine without GPU or TPU, each kernel below is
  used where it applies, under the conditions its docstring gives, and the
  plain Keras code runs everywhere else. The kernels exist for the CPU
  (oneDNN) training step, where they were measured: where TensorFlow sees a
  GPU or a TPU, "auto" builds the plain layers. They also decline by
  themselves in the cases they do not cover (float64, masks, cross-replica
  batch statistics in training, ...).
* "plain": stock Keras layers and TensorFlow's automatic gradients only.

Both settings build the same variables under the same paths, so checkpoints,
exports and the authors' weights load either way, and they compute the same
function: `tests/test_kernels.py` checks one training step's loss, gradients
and batch-norm statistics to 1e-5 relative in float32, on one and two
replicas, with and without global batch norm, and under mixed_bfloat16.

The kernels (each docstring gives why and its measured gain). All three
together, A/B on the same host in one session (2026-12-03, AMD EPYC, 2 cores,
AVX2 + FMA, no AVX-512; the cores shared with other jobs, load average 6-8),
`tools/benchmark.py --resnet_depth=18 --image_size=32 --train_batch_size=64
--no_pipeline --steps=3 --windows=3 --kernels=auto|plain`, run side by side,
twice: peak resident memory 1.71 vs 1.86 GB and 1.91 vs 1.95 GB ("auto" vs
"plain", ResNet-18 CIFAR); speed 1.94 vs 1.89 and 1.87 vs 1.90 pairs/s, a
difference the shared cores could not resolve.

* `FusedBatchNormalization`: batch norm by TensorFlow's fused kernel.
* `PaddedConv2D`: a strided convolution with explicit padding that keeps no
  padded copy of its input for the backward pass.
* `norm_relu_conv`: conv(relu(norm(x))) whose backward pass recomputes the
  ReLU output instead of keeping it.

Of the package it imports only the leaf `config` (the choices of the switch).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from simclr_tf2.config import KERNELS


def check_kernels(kernels: str) -> str:
    """Returns `kernels` if it is one of `KERNELS`, else raises ValueError."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r} is not one of {KERNELS}.")
    return kernels


@functools.cache
def _accelerated() -> bool:
    """Whether TensorFlow sees a GPU or a TPU (listing physical devices does not
    initialise TensorFlow's runtime, so logical devices can still be set up)."""
    return any(tf.config.list_physical_devices(kind) for kind in ("GPU", "TPU"))


def uses_kernels(kernels: str) -> bool:
    """Whether the switch `kernels` asks for this module's kernels on this machine:
    "auto" without GPU or TPU."""
    return check_kernels(kernels) == "auto" and not _accelerated()


def fused_batch_norm(kernels: str, **kwargs) -> FusedBatchNormalization | None:
    """A `FusedBatchNormalization` with Keras's arguments where `uses_kernels`; else None."""
    if not uses_kernels(kernels):
        return None
    return FusedBatchNormalization(**kwargs)


def padded_conv2d(
    kernels: str, filters: int, kernel_size: int, strides: int, pads, **kwargs
) -> PaddedConv2D | None:
    """A `PaddedConv2D` on "auto"; None on "plain" (the caller pads, then convolves)."""
    if not uses_kernels(kernels):
        return None
    return PaddedConv2D(filters, kernel_size, strides, pads, **kwargs)


@keras.saving.register_keras_serializable(package="simclr_tf2")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization, computed by TensorFlow's fused kernel where it can be.

    Why: Keras 3 normalises with separate ops (moments, then an elementwise
    transform; with `synchronized=True` also a tensor of ones the size of the
    input, to count it) and differentiates through each of them, which keeps
    several copies of every activation for the backward pass. TensorFlow's
    FusedBatchNormV3 (oneDNN's on CPUs, cuDNN's on GPUs, XLA's under
    `jit_compile`) computes the same function in one pass and its gradient in
    one more, keeping only the input and the batch statistics.

    Measured gain: batch norm took 3.9 s of op time per ResNet-18 CIFAR step at
    batch 256 as Keras computes it (moments from Sum/Square/Mul, a Tile in the
    gradient) and 1.9 s on the fused kernel (`tools/benchmark.py
    --profile_dir`, 2 cores of an AMD EPYC, AVX2, 2026-11-26). It is also what
    `norm_relu_conv` needs: the batch statistics and reserve spaces it reuses.

    Where: channels-last float32, float16 and bfloat16 inputs of rank 2 or 4,
    whenever the statistics are this replica's own: always in inference, and
    in training unless `synchronized` batch norm runs on more than one replica
    (then the statistics are all-reduced first, as in Keras). Same variables,
    moving-statistics update (biased batch variance, as Keras) and outputs as
    Keras's layer, up to round-off; other cases (float64, masks, renorm,
    another axis) are Keras's own code.
    """

    def _fusable(self, inputs, training, mask) -> bool:
        rank = len(inputs.shape)
        if mask is not None or self.renorm or rank not in (2, 4):
            return False
        if self.axis not in (-1, rank - 1) or inputs.shape[-1] is None:
            return False
        if inputs.dtype not in (tf.float32, tf.float16, tf.bfloat16):
            return False
        if training and self.trainable and self.synchronized:
            return tf.distribute.get_strategy().num_replicas_in_sync == 1
        return True

    def _scale_offset(self, channels: int) -> tuple:
        """gamma and beta as float32 tensors (ones / zeros when not learned)."""
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        return tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)

    def _fused(self, x, train: bool, gamma=None, beta=None) -> list:
        """FusedBatchNormV3 outputs: y, batch mean, batch variance, 3 reserve spaces."""
        if gamma is None:
            gamma, beta = self._scale_offset(x.shape[-1])
        empty = tf.constant([], tf.float32)
        # float16 / bfloat16 inputs keep their type; scale, offset and statistics are float32.
        return tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=empty if train else tf.cast(self.moving_mean, tf.float32),
            variance=empty if train else tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=train,
        )

    @staticmethod
    def _biased(x, variance):
        # The kernel returns the unbiased (n - 1) batch variance; it normalised by the
        # biased one, which Keras keeps.
        count = tf.cast(tf.size(x) // x.shape[-1], tf.float32)
        return variance * ((count - 1.0) / tf.maximum(count, 1.0))

    def _update_moving_statistics(self, x, mean, variance) -> None:
        variance = self._biased(x, variance)
        momentum = self.momentum
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * momentum + tf.cast(batch, moving.dtype) * (1.0 - momentum))

    def call(self, inputs, training=None, mask=None):
        inputs = tf.convert_to_tensor(inputs)
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [-1, 1, 1, channels])
        train = bool(training and self.trainable)
        y, mean, variance, *_ = self._fused(x, train)
        if train:
            self._update_moving_statistics(x, mean, variance)
        if len(inputs.shape) == 2:
            y = tf.reshape(y, tf.shape(inputs))
        return tf.cast(y, self.compute_dtype)


class PaddedConv2D(keras.layers.Conv2D):
    """Conv2D with zero padding given per side, whose padded input is not kept.

    Why: padding in front of the convolution (a ZeroPadding2D layer, or
    `keras.ops.pad` as the plain path does) makes a padded copy of the input,
    and that copy is what the backward pass keeps, beside the unpadded input:
    measured gain 0.36 GB at TensorFlow's memory peak of a ResNet-18 CIFAR
    step at batch 256 (3.32 vs 2.96 GB, `tools/benchmark.py
    --memory_profile_dir`, 2 cores of an AMD EPYC, AVX2, 2026-11-26). TensorFlow's own explicit
    paddings avoid the copy but run the backward on its generic kernels
    instead of oneDNN's. So the gradient is defined here: the forward pads,
    convolves and drops the padded copy; the backward pads again (a transient
    copy) and calls the same "valid" backprop kernels.

    Where: every strided convolution wider than 1x1 (the ImageNet stem, the
    first 3x3 convolution of a downsampling block, SK's strided convolution).
    Same outputs and gradients as padding then convolving.
    """

    def __init__(self, filters: int, kernel_size: int, strides: int, pads, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)
        self.pads = tuple(tuple(int(p) for p in side) for side in pads)

    def convolution_op(self, inputs, kernel):
        (top, bottom), (left, right) = self.pads
        paddings = [[0, 0], [top, bottom], [left, right], [0, 0]]
        strides = [1, *self.strides, 1]

        @tf.custom_gradient
        def conv(x, w):
            y = tf.nn.conv2d(tf.pad(x, paddings), w, strides, "VALID")

            def grad(dy):
                # After dy exists: not merged with the forward's pad (grappler
                # would, keeping that copy alive), nor run ahead of its use.
                with tf.control_dependencies([dy]):
                    padded = tf.pad(x, paddings)
                dw = tf.raw_ops.Conv2DBackpropFilter(
                    input=padded,
                    filter_sizes=tf.shape(w),
                    out_backprop=dy,
                    strides=strides,
                    padding="VALID",
                )
                dpadded = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(padded),
                    filter=w,
                    out_backprop=dy,
                    strides=strides,
                    padding="VALID",
                )
                dx = tf.slice(dpadded, [0, top, left, 0], tf.shape(x))
                return dx, dw

            return y, grad

        return conv(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        sizes = zip((height, width), self.pads, strict=True)
        padded = [None if n is None else n + a + b for n, (a, b) in sizes]
        return super().compute_output_shape((batch, *padded, channels))

    def get_config(self):
        config = super().get_config()
        config.pop("padding", None)
        config["pads"] = self.pads
        return config


def norm_relu_conv(
    kernels: str, norm: keras.layers.Layer, conv: keras.layers.Conv2D, x, training
) -> tf.Tensor | None:
    """conv(relu(norm(x))) whose backward pass keeps x but not relu(norm(x)); or None.

    Why: the ReLU output is what a plain graph keeps for the convolution's
    weight gradient; here the backward recomputes it from x with the batch
    statistics of the forward pass (one elementwise pass), so each residual
    block keeps one activation fewer. Measured gain 0.48 GB at TensorFlow's
    memory peak of a ResNet-18 CIFAR step at batch 256 (2.96 vs 2.48 GB,
    `tools/benchmark.py --memory_profile_dir`, same host and month as
    `PaddedConv2D`), for about 1% more op time (the recomputed passes are
    elementwise), below the run-to-run spread.

    Where: on "auto", when `norm` is a built `FusedBatchNormalization` that
    trains with TensorFlow's fused kernel on a rank-4 input and `conv` (a
    built Conv2D: plain or `PaddedConv2D`) follows it. Otherwise (the "plain"
    switch, inference, frozen or cross-replica batch norm, the first call that
    builds the layers) it returns None and the caller calls the layers. Same
    outputs, gradients, variables and moving-statistics update either way.

    Args:
        kernels: one of `KERNELS`.
        norm: the batch norm whose output is rectified.
        conv: the convolution on the rectified output.
        x: the norm's input.
        training: the Keras training flag.

    Returns:
        The convolution's output, or None when the kernel does not apply.
    """
    fast = (
        uses_kernels(kernels)
        and isinstance(norm, FusedBatchNormalization)
        and isinstance(conv, keras.layers.Conv2D)
        and norm.built
        and conv.built
        and bool(training and norm.trainable)
        and len(x.shape) == 4
        and norm._fusable(tf.convert_to_tensor(x), training, None)
    )
    if not fast:
        return None
    x = tf.convert_to_tensor(x)
    gamma, beta = norm._scale_offset(x.shape[-1])

    @tf.custom_gradient
    def unit(x, gamma, beta, kernel):
        y, mean, variance, *reserve = norm._fused(x, True, gamma, beta)
        z = conv.convolution_op(tf.nn.relu(y), kernel)

        def grad(dz, *_):
            # After dz exists, so the recomputed activation is alive only now.
            with tf.control_dependencies([dz]):
                y, *_ = tf.raw_ops.FusedBatchNormV3(
                    x=x,
                    scale=gamma,
                    offset=beta,
                    mean=mean,
                    variance=norm._biased(x, variance),
                    epsilon=norm.epsilon,
                    data_format="NHWC",
                    is_training=False,
                )
            a = tf.nn.relu(y)
            with tf.GradientTape() as tape:
                tape.watch([a, kernel])
                out = conv.convolution_op(a, kernel)  # unused, so not run: only its gradient
            da, dkernel = tape.gradient(out, [a, kernel], output_gradients=dz)
            dx, dgamma, dbeta, *_ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=tf.raw_ops.ReluGrad(gradients=da, features=a),
                x=x,
                scale=gamma,
                reserve_space_1=reserve[0],
                reserve_space_2=reserve[1],
                reserve_space_3=reserve[2],
                epsilon=norm.epsilon,
                data_format="NHWC",
                is_training=True,
            )
            return dx, dgamma, dbeta, dkernel

        return (z, mean, variance), grad

    z, mean, variance = unit(x, gamma, beta, tf.cast(conv.kernel, x.dtype))
    norm._update_moving_statistics(x, mean, variance)
    return z
