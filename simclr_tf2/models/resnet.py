"""ResNet v1 encoders (He et al., 2016) as used by SimCLR.

The family the paper uses: depths 18 to 200 (and ResNet-10, one residual block
per group, for smoke tests and quick experiments), a width multiplier on every
convolution, the "v1.5" bottleneck (stride on the 3x3 convolution), the last
batch norm of every residual block initialised to zero, and an optional CIFAR
stem (one 3x3 stride-1 convolution, no max-pool) for images of 32 px or less.

SimCLRv2's variants (Chen et al., 2020b), exactly as the authors' code builds
them, so that their released checkpoints load (`simclr_tf2.compat`): with
`sk_ratio` > 0 the 3x3 convolution of every bottleneck block becomes a
selective-kernel convolution (`SelectiveKernelConv2D`), the ImageNet stem
becomes ResNet-D's three 3x3 convolutions, and every projection shortcut
average-pools before its 1x1 convolution; with `se_ratio` > 0 every block ends
in squeeze-excitation (`SqueezeExcitation`) before the shortcut is added.

With `global_bn=True` every batch norm is `synchronized=True`, so under
`tf.distribute` its statistics are computed over the global batch and no
replica can recognise its own examples through per-device statistics. Every
batch norm is `FusedBatchNormalization`: Keras's layer, computed by
TensorFlow's fused kernel whenever the statistics are the replica's own.

This module imports nothing else from the package, so it can be used alone.
"""

from __future__ import annotations

import keras
import tensorflow as tf

BATCH_NORM_EPSILON = 1e-5

# depth -> (block type, number of blocks in each of the four groups)
BLOCK_SPECS = {
    10: ("residual", (1, 1, 1, 1)),
    18: ("residual", (2, 2, 2, 2)),
    34: ("residual", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

# Names of the intermediate outputs, in network order (the TF Hub output keys).
BLOCK_OUTPUT_NAMES = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
)


def batch_norm(
    *,
    global_bn: bool = True,
    momentum: float = 0.9,
    epsilon: float = BATCH_NORM_EPSILON,
    zero_init: bool = False,
    center: bool = True,
    name: str | None = None,
) -> keras.layers.BatchNormalization:
    """Returns the batch norm used everywhere in SimCLR (trunk and heads).

    Args:
        global_bn: synchronise the statistics across replicas.
        momentum: decay of the moving statistics (`batch_norm_decay`).
        epsilon: added to the variance.
        zero_init: initialise gamma to zero (last norm of a residual block).
        center: learn a beta offset.
        name: layer name; it should contain "batch_normalization" so that the
            default LARS exclusions match its variables.
    """
    return FusedBatchNormalization(
        momentum=momentum,
        epsilon=epsilon,
        center=center,
        gamma_initializer="zeros" if zero_init else "ones",
        synchronized=global_bn,
        name=name,
    )


@keras.saving.register_keras_serializable(package="simclr_tf2")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization, computed by TensorFlow's fused kernel where it can be.

    Keras 3 normalises with separate ops (moments, then an elementwise
    transform; with `synchronized=True` also a tensor of ones the size of the
    input, to count it) and differentiates through each of them, which keeps
    several copies of every activation for the backward pass. TensorFlow's
    FusedBatchNormV3 (oneDNN's on CPUs, cuDNN's on GPUs, XLA's under
    `jit_compile`) computes the same function in one pass and its gradient in
    one more, keeping only the input and the batch statistics.

    The fused kernel is used for channels-last float32, float16 and bfloat16
    inputs of rank 2 or 4, whenever the statistics are this replica's own:
    always in inference, and in training unless `synchronized` batch norm runs
    on more than one replica (then the statistics are all-reduced first, as in
    Keras). Same variables, moving-statistics update (biased batch variance, as
    Keras) and outputs as Keras's layer, up to round-off; other cases
    (float64, masks, renorm, another axis) are Keras's own code.
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


class _PaddedConv2D(keras.layers.Conv2D):
    """Conv2D with zero padding given per side, whose padded input is not kept.

    A ZeroPadding2D layer in front makes a padded copy of the input, and that
    copy is what the backward pass keeps, beside the unpadded input: 0.36 GB
    more at the memory peak of a ResNet-18 step at batch 256 (measured).
    TensorFlow's own explicit paddings avoid the copy but run the backward on
    its generic kernels instead of oneDNN's. So the gradient is defined here:
    the forward pads, convolves and drops the padded copy; the backward pads
    again (a transient copy) and calls the same "valid" backprop kernels.
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


class FixedPaddingConv2D(keras.layers.Layer):
    """Bias-free convolution whose padding does not depend on the input size.

    With stride 1 this is "same" padding; with a larger stride the input is
    padded by (k - 1) // 2 before and k // 2 after, then convolved with "valid"
    padding, as in the reference ResNet implementations (without keeping the
    padded copy for the backward pass: see `_PaddedConv2D`).
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        common = dict(
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(),
            name="conv2d",
        )
        if strides > 1 and kernel_size > 1:
            total = kernel_size - 1
            side = (total // 2, total - total // 2)
            self.conv = _PaddedConv2D(filters, kernel_size, strides, (side, side), **common)
        else:
            self.conv = keras.layers.Conv2D(
                filters,
                kernel_size,
                strides=strides,
                padding="same" if strides == 1 else "valid",
                **common,
            )

    def call(self, inputs):
        return self.conv(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides}
        )
        return config


def _norm_relu_conv(norm, conv, x, training):
    """conv(relu(norm(x))) whose backward pass keeps x but not relu(norm(x)).

    The ReLU output is what a plain graph keeps for the convolution's weight
    gradient; here the backward recomputes it from x with the batch statistics
    of the forward pass (one elementwise pass), so each residual block keeps
    one activation fewer: 0.5 GB less at the memory peak of a ResNet-18 step
    at batch 256 (measured, `tools/benchmark.py --memory_profile_dir`). Used
    when the norm trains with TensorFlow's fused kernel and the convolution is
    a `FixedPaddingConv2D`; otherwise (inference, frozen or cross-replica
    batch norm, selective kernels, the first call that builds the layers) the
    layers are simply called. Same outputs, gradients, variables and
    moving-statistics update either way.
    """
    fast = (
        isinstance(norm, FusedBatchNormalization)
        and isinstance(conv, FixedPaddingConv2D)
        and norm.built
        and conv.built
        and conv.conv.built
        and bool(training and norm.trainable)
        and len(x.shape) == 4
        and norm._fusable(tf.convert_to_tensor(x), training, None)
    )
    if not fast:
        a = keras.ops.relu(norm(x, training=training))
        if isinstance(conv, SelectiveKernelConv2D):
            return conv(a, training=training)
        return conv(a)
    layer = conv.conv
    x = tf.convert_to_tensor(x)
    gamma, beta = norm._scale_offset(x.shape[-1])

    @tf.custom_gradient
    def unit(x, gamma, beta, kernel):
        y, mean, variance, *reserve = norm._fused(x, True, gamma, beta)
        z = layer.convolution_op(tf.nn.relu(y), kernel)

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
                out = layer.convolution_op(a, kernel)  # unused, so not run: only its gradient
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

    z, mean, variance = unit(x, gamma, beta, tf.cast(layer.kernel, x.dtype))
    norm._update_moving_statistics(x, mean, variance)
    return z


class SelectiveKernelConv2D(keras.layers.Layer):
    """Selective-kernel convolution (Li et al., 2019) in SimCLRv2's form.

    SimCLRv2's released models use a two-branch variant in which both branches
    are plain 3x3 convolutions: one convolution with `2 * filters` outputs,
    one batch norm + ReLU over all of them, then the channels are split into
    the two branches. A descriptor of the branches' sum (global average pool,
    a 1x1 convolution to `max(int(filters * sk_ratio), min_dim)` channels,
    batch norm, ReLU, a 1x1 convolution to `2 * filters`) is split the same
    way into per-channel logits of each branch; a softmax across the two
    branches mixes them. The output is already normalised and rectified: the
    layer replaces a 3x3 convolution + batch norm + ReLU. Variables and their
    shapes are those of the authors' checkpoints (1x1 convolutions, not Dense
    layers), so their weights load as they are.

    Args:
        filters: output channels.
        strides: 1 or 2.
        sk_ratio: width of the attention descriptor relative to `filters`.
        min_dim: its smallest width.
        global_bn, batch_norm_decay, batch_norm_epsilon: as in `ResNet`.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        sk_ratio: float = 0.0625,
        min_dim: int = 32,
        global_bn: bool = True,
        batch_norm_decay: float = 0.9,
        batch_norm_epsilon: float = BATCH_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"SelectiveKernelConv2D supports strides 1 and 2, not {strides}.")
        self.filters = filters
        self.strides = strides
        self.sk_ratio = sk_ratio
        self.min_dim = min_dim
        self.global_bn = global_bn
        self.batch_norm_decay = batch_norm_decay
        self.batch_norm_epsilon = batch_norm_epsilon
        bn_args = dict(global_bn=global_bn, momentum=batch_norm_decay, epsilon=batch_norm_epsilon)
        # Both branches in one convolution: channels [0, filters) and [filters, 2 * filters).
        self.conv = FixedPaddingConv2D(2 * filters, 3, strides, name="conv2d")
        self.norm = batch_norm(name="batch_normalization", **bn_args)
        self.attention_width = max(int(filters * sk_ratio), min_dim)
        self.reduce = _pointwise(self.attention_width, "attention_reduce")
        self.reduce_norm = batch_norm(name="attention_batch_normalization", **bn_args)
        self.expand = _pointwise(2 * filters, "attention_expand")

    def branches(self, inputs, training=None):
        """The two normalised, rectified branch outputs."""
        x = keras.ops.relu(self.norm(self.conv(inputs), training=training))
        return keras.ops.split(x, 2, axis=-1)

    def attention(self, a, b, training=None):
        """(batch, 2, filters) branch weights; they sum to 1 over axis 1."""
        descriptor = keras.ops.mean(a + b, axis=(1, 2), keepdims=True)
        descriptor = keras.ops.relu(self.reduce_norm(self.reduce(descriptor), training=training))
        logits = keras.ops.reshape(self.expand(descriptor), (-1, 2, self.filters))
        return keras.ops.softmax(logits, axis=1)

    def call(self, inputs, training=None):
        a, b = self.branches(inputs, training=training)
        weights = keras.ops.cast(self.attention(a, b, training=training), a.dtype)
        return a * weights[:, None, None, 0, :] + b * weights[:, None, None, 1, :]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "sk_ratio": self.sk_ratio,
                "min_dim": self.min_dim,
                "global_bn": self.global_bn,
                "batch_norm_decay": self.batch_norm_decay,
                "batch_norm_epsilon": self.batch_norm_epsilon,
            }
        )
        return config


def _pointwise(filters: int, name: str, use_bias: bool = False) -> keras.layers.Conv2D:
    """A 1x1 convolution on (B, 1, 1, C) descriptors (SK attention, squeeze-excitation)."""
    return keras.layers.Conv2D(
        filters,
        1,
        use_bias=use_bias,
        kernel_initializer=keras.initializers.VarianceScaling(),
        name=name,
    )


class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-excitation (Hu et al., 2018): channels rescaled by a gate in (0, 1).

    Global average pool, a 1x1 convolution (with bias) to
    `max(1, int(filters * se_ratio))` channels with ReLU, a 1x1 convolution
    back to the input's channels with a sigmoid; the input is multiplied by
    that gate. 1x1 convolutions, as in SimCLRv2's code, so that its
    checkpoints' kernels load as they are.

    Args:
        filters: the block's base width (its bottleneck width).
        se_ratio: the reduction.
    """

    def __init__(self, filters: int, se_ratio: float, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.se_ratio = se_ratio
        self.reduced = max(1, int(filters * se_ratio))
        self.squeeze = _pointwise(self.reduced, "se_reduce", use_bias=True)
        self.excite = None

    def build(self, input_shape):
        self.excite = _pointwise(int(input_shape[-1]), "se_expand", use_bias=True)

    def call(self, inputs):
        descriptor = keras.ops.mean(inputs, axis=(1, 2), keepdims=True)
        gate = keras.ops.sigmoid(self.excite(keras.ops.relu(self.squeeze(descriptor))))
        return inputs * gate

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "se_ratio": self.se_ratio})
        return config


class _Block(keras.layers.Layer):
    """Common parts of the residual and bottleneck blocks.

    Subclasses add their main-path layers with `_add_path(convs, norms)`; the last
    norm is zero-initialised so that every block starts as the identity. Layers
    are held as named attributes (conv1, bn1, ...), not in Python lists, because
    `tf.train.Checkpoint` does not follow lists of Keras layers.
    With `sk_ratio` > 0 (SimCLRv2), projection shortcuts are ResNet-D's in
    every block type, and a bottleneck's 3x3 convolution is selective-kernel
    (`_spatial_conv`); it normalises and rectifies itself (its norm slot is
    None). Residual blocks (ResNet-18/34) have no selective kernels, as in the
    authors' code.
    """

    expansion = 1

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        use_projection: bool = False,
        global_bn: bool = True,
        batch_norm_decay: float = 0.9,
        batch_norm_epsilon: float = BATCH_NORM_EPSILON,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.use_projection = use_projection
        self.global_bn = global_bn
        self.batch_norm_decay = batch_norm_decay
        self.batch_norm_epsilon = batch_norm_epsilon
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.shortcut_pad = self.shortcut_pool = self.shortcut_conv = self.shortcut_norm = None
        if use_projection:
            if sk_ratio > 0:
                # ResNet-D, as SimCLRv2 has it: a 2x2 average pool (also at stride 1),
                # then a 1x1 convolution that sees every pixel. Strided, the input is
                # padded by one at the end and pooled without padding, so at odd sizes
                # the last window averages a zero in.
                if strides > 1:
                    self.shortcut_pad = keras.layers.ZeroPadding2D(
                        ((0, 1), (0, 1)), name="shortcut_pad"
                    )
                self.shortcut_pool = keras.layers.AveragePooling2D(
                    2, strides, padding="valid" if strides > 1 else "same", name="shortcut_pool"
                )
            self.shortcut_conv = FixedPaddingConv2D(
                filters * self.expansion,
                1,
                1 if self.shortcut_pool is not None else strides,
                name="shortcut_conv",
            )
            self.shortcut_norm = self._norm(name="shortcut_batch_normalization")
        self.se = SqueezeExcitation(filters, se_ratio, name="se") if se_ratio > 0 else None

    def _add_path(self, convs: list, norms: list) -> None:
        self.path_length = len(convs)
        for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
            setattr(self, f"conv{i + 1}", conv)
            setattr(self, f"bn{i + 1}", norm)

    @property
    def convs(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"conv{i + 1}") for i in range(self.path_length)]

    @property
    def norms(self) -> list[keras.layers.Layer | None]:
        return [getattr(self, f"bn{i + 1}") for i in range(self.path_length)]

    def _norm(self, name: str, zero_init: bool = False) -> keras.layers.BatchNormalization:
        return batch_norm(
            global_bn=self.global_bn,
            momentum=self.batch_norm_decay,
            epsilon=self.batch_norm_epsilon,
            zero_init=zero_init,
            name=name,
        )

    def _spatial_conv(self, filters: int, strides: int, name: str, norm_name: str) -> tuple:
        """(3x3 convolution, its batch norm) for a place followed by ReLU."""
        if self.sk_ratio > 0:
            sk = SelectiveKernelConv2D(
                filters,
                strides,
                self.sk_ratio,
                global_bn=self.global_bn,
                batch_norm_decay=self.batch_norm_decay,
                batch_norm_epsilon=self.batch_norm_epsilon,
                name=f"sk_{name}",
            )
            return sk, None
        return FixedPaddingConv2D(filters, 3, strides, name=name), self._norm(norm_name)

    def call(self, inputs, training=None):
        shortcut = inputs
        if self.shortcut_conv is not None:
            if self.shortcut_pad is not None:
                shortcut = self.shortcut_pad(shortcut)
            if self.shortcut_pool is not None:
                shortcut = self.shortcut_pool(shortcut)
            shortcut = self.shortcut_norm(self.shortcut_conv(shortcut), training=training)
        x = inputs
        pending = None  # a norm whose ReLU feeds the next convolution
        for conv, norm in zip(self.convs, self.norms, strict=True):
            if pending is not None:
                x = _norm_relu_conv(pending, conv, x, training)
            elif norm is None:  # a selective-kernel convolution: normalised and rectified
                x = conv(x, training=training)
            else:
                x = conv(x)
            pending = norm
        if pending is not None:  # the last norm: before the shortcut is added, no ReLU
            x = pending(x, training=training)
        if self.se is not None:
            x = self.se(x)
        return keras.ops.relu(x + shortcut)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "use_projection": self.use_projection,
                "global_bn": self.global_bn,
                "batch_norm_decay": self.batch_norm_decay,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "sk_ratio": self.sk_ratio,
                "se_ratio": self.se_ratio,
            }
        )
        return config


class ResidualBlock(_Block):
    """Two 3x3 convolutions (ResNet-18 and -34); never selective-kernel."""

    expansion = 1

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(filters, strides, **kwargs)
        # The last convolution is followed by the zero-initialised norm, not ReLU.
        self._add_path(
            [
                FixedPaddingConv2D(filters, 3, strides, name="conv2d_1"),
                FixedPaddingConv2D(filters, 3, 1, name="conv2d_2"),
            ],
            [
                self._norm("batch_normalization_1"),
                self._norm("batch_normalization_2", zero_init=True),
            ],
        )


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (strided; selective with SK), 1x1 expand by 4 (ResNet-50+)."""

    expansion = 4

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(filters, strides, **kwargs)
        conv2, bn2 = self._spatial_conv(filters, strides, "conv2d_2", "batch_normalization_2")
        self._add_path(
            [
                FixedPaddingConv2D(filters, 1, 1, name="conv2d_1"),
                conv2,
                FixedPaddingConv2D(4 * filters, 1, 1, name="conv2d_3"),
            ],
            [
                self._norm("batch_normalization_1"),
                bn2,
                self._norm("batch_normalization_3", zero_init=True),
            ],
        )


class BlockGroup(keras.layers.Layer):
    """A stage of residual blocks; the first one may stride and project.

    Blocks are held as attributes block_0, block_1, ...: `tf.train.Checkpoint`
    does not follow Python lists of Keras layers.
    """

    def __init__(self, blocks: list[keras.layers.Layer], **kwargs):
        super().__init__(**kwargs)
        self.num_blocks = len(blocks)
        for b, block in enumerate(blocks):
            setattr(self, f"block_{b}", block)

    @property
    def blocks(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"block_{b}") for b in range(self.num_blocks)]

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x


class ResNet(keras.layers.Layer):
    """ResNet v1 trunk whose call returns every named intermediate output.

    Args:
        depth: 10, 18, 34, 50, 101, 152 or 200.
        width_multiplier: multiplies every layer's number of channels: an
            integer as in the paper (1, 2, 4), or 0.25 / 0.5 for small runs.
        cifar_stem: 3x3 stride-1 stem without max-pool, for images <= 32 px.
        global_bn: synchronised batch norm across replicas.
        batch_norm_decay: momentum of the moving statistics.
        batch_norm_epsilon: batch norm epsilon.
        sk_ratio: selective-kernel ratio (SimCLRv2; 0.0625 recommended); 0 = off.
            Also switches to ResNet-D's stem (unless `cifar_stem`) and
            average-pool projection shortcuts.
        se_ratio: squeeze-excitation ratio (SimCLRv2); 0 = off.

    Call returns a dict with the keys of `BLOCK_OUTPUT_NAMES`;
    `final_avg_pool` is h, the representation.
    """

    def __init__(
        self,
        depth: int = 50,
        width_multiplier: float = 1,
        cifar_stem: bool = False,
        global_bn: bool = True,
        batch_norm_decay: float = 0.9,
        batch_norm_epsilon: float = BATCH_NORM_EPSILON,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth not in BLOCK_SPECS:
            raise ValueError(
                f"resnet_depth={depth} is not supported; use one of {sorted(BLOCK_SPECS)}."
            )
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier={width_multiplier} must be positive.")
        if not 0 <= sk_ratio < 1:
            raise ValueError(f"sk_ratio={sk_ratio} must be in [0, 1); SimCLRv2 uses 0.0625.")
        if not 0 <= se_ratio <= 1:
            raise ValueError(f"se_ratio={se_ratio} must be in [0, 1].")
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.cifar_stem = cifar_stem
        self.global_bn = global_bn
        self.batch_norm_decay = batch_norm_decay
        self.batch_norm_epsilon = batch_norm_epsilon
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio

        bn_args = dict(global_bn=global_bn, momentum=batch_norm_decay, epsilon=batch_norm_epsilon)
        stem_width = self._width(64)
        self.resnet_d_stem = sk_ratio > 0 and not cifar_stem
        if cifar_stem:
            self.stem_conv = FixedPaddingConv2D(stem_width, 3, 1, name="initial_conv")
            self.stem_pool = None
        elif self.resnet_d_stem:
            # ResNet-D (He et al., 2019): three 3x3 convolutions instead of one 7x7.
            half = self._width(32)
            self.stem_conv_a = FixedPaddingConv2D(half, 3, 2, name="initial_conv_a")
            self.stem_norm_a = batch_norm(name="initial_batch_normalization_a", **bn_args)
            self.stem_conv_b = FixedPaddingConv2D(half, 3, 1, name="initial_conv_b")
            self.stem_norm_b = batch_norm(name="initial_batch_normalization_b", **bn_args)
            self.stem_conv = FixedPaddingConv2D(stem_width, 3, 1, name="initial_conv")
            self.stem_pool = keras.layers.MaxPooling2D(
                3, 2, padding="same", name="initial_max_pool"
            )
        else:
            self.stem_conv = FixedPaddingConv2D(stem_width, 7, 2, name="initial_conv")
            self.stem_pool = keras.layers.MaxPooling2D(
                3, 2, padding="same", name="initial_max_pool"
            )
        self.stem_norm = batch_norm(name="initial_batch_normalization", **bn_args)

        block_type, counts = BLOCK_SPECS[depth]
        block_cls = ResidualBlock if block_type == "residual" else BottleneckBlock
        block_args = dict(
            global_bn=global_bn,
            batch_norm_decay=batch_norm_decay,
            batch_norm_epsilon=batch_norm_epsilon,
            sk_ratio=sk_ratio,
            se_ratio=se_ratio,
        )
        for g, (base, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            blocks = [
                block_cls(
                    self._width(base),
                    strides=(1 if g == 0 else 2) if b == 0 else 1,
                    use_projection=b == 0,
                    name=f"block_{b}",
                    **block_args,
                )
                for b in range(count)
            ]
            # Attributes, not a list: tf.train.Checkpoint does not follow lists.
            setattr(self, f"block_group{g + 1}", BlockGroup(blocks, name=f"block_group{g + 1}"))
        self.output_width = self._width(512) * block_cls.expansion

    @property
    def stem_extra(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
        """ResNet-D's first two stem convolutions with their norms (else empty)."""
        if not self.resnet_d_stem:
            return []
        return [(self.stem_conv_a, self.stem_norm_a), (self.stem_conv_b, self.stem_norm_b)]

    def _width(self, channels: int) -> int:
        return max(1, int(round(channels * self.width_multiplier)))

    @property
    def block_groups(self) -> list[BlockGroup]:
        return [getattr(self, f"block_group{g}") for g in range(1, 5)]

    @property
    def stages(self) -> list[list[keras.layers.Layer]]:
        """Layers of the stem (stage 0) and of block groups 1-4 (stages 1-4)."""
        stem = [layer for pair in self.stem_extra for layer in pair]
        stem += [self.stem_conv, self.stem_norm]
        return [stem] + [[group] for group in self.block_groups]

    def call(self, inputs, training=None):
        outputs = {}
        x = inputs
        for conv, norm in self.stem_extra:
            x = keras.ops.relu(norm(conv(x), training=training))
        x = self.stem_conv(x)
        # As the authors' TF Hub exports: the stem convolution's output, before its norm.
        outputs["initial_conv"] = x
        x = keras.ops.relu(self.stem_norm(x, training=training))
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        outputs["initial_max_pool"] = x
        for g, group in enumerate(self.block_groups):
            x = group(x, training=training)
            outputs[f"block_group{g + 1}"] = x
        outputs["final_avg_pool"] = keras.ops.mean(x, axis=(1, 2))
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "width_multiplier": self.width_multiplier,
                "cifar_stem": self.cifar_stem,
                "global_bn": self.global_bn,
                "batch_norm_decay": self.batch_norm_decay,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "sk_ratio": self.sk_ratio,
                "se_ratio": self.se_ratio,
            }
        )
        return config
