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

Every batch norm is built from one `BatchNormSpec` (`batch_norm=`): with
`synchronized=True` (`--global_bn`) its statistics are computed over the
global batch under `tf.distribute`, so no replica can recognise its own
examples through per-device statistics.

The layers here are plain Keras. With the spec's `kernels="auto"` (the
default) they ask `simclr_tf2.models.kernels` for its CPU performance kernels
(fused batch norm, a strided convolution and a norm-ReLU-convolution unit with
lighter gradients), used where those apply; `kernels="plain"` builds stock
Keras layers only. Same variables and the same function either way.

This module imports nothing else from the package but `models.kernels` and
`models.batch_norm`, so it can be used alone.
"""

from __future__ import annotations

import keras

from simclr_tf2.models import kernels as cpu_kernels
from simclr_tf2.models.batch_norm import BatchNormSpec

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


class FixedPaddingConv2D(keras.layers.Layer):
    """Bias-free convolution whose padding does not depend on the input size.

    With stride 1 this is "same" padding; with a larger stride the input is
    padded by (k - 1) // 2 before and k // 2 after, then convolved with "valid"
    padding, as in the reference ResNet implementations. With `kernels="auto"`
    that padded convolution is `kernels.PaddedConv2D`, which keeps no padded
    copy for the backward pass; with "plain" the input is padded by
    `keras.ops.pad`, then convolved by Keras's Conv2D.
    """

    def __init__(
        self, filters: int, kernel_size: int, strides: int = 1, kernels: str = "auto", **kwargs
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.kernels = cpu_kernels.check_kernels(kernels)
        self.input_pads = None  # padding done here, before a "valid" convolution
        common = dict(
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(),
            name="conv2d",
        )
        if strides > 1 and kernel_size > 1:
            total = kernel_size - 1
            side = (total // 2, total - total // 2)
            conv = cpu_kernels.padded_conv2d(
                kernels, filters, kernel_size, strides, (side, side), **common
            )
            if conv is None:
                self.input_pads = (side, side)
                conv = keras.layers.Conv2D(
                    filters, kernel_size, strides=strides, padding="valid", **common
                )
            self.conv = conv
        else:
            self.conv = keras.layers.Conv2D(
                filters,
                kernel_size,
                strides=strides,
                padding="same" if strides == 1 else "valid",
                **common,
            )

    def call(self, inputs):
        if self.input_pads is not None:
            inputs = keras.ops.pad(inputs, [(0, 0), *self.input_pads, (0, 0)])
        return self.conv(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "kernels": self.kernels,
            }
        )
        return config


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
        batch_norm: as in `ResNet`.
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        sk_ratio: float = 0.0625,
        min_dim: int = 32,
        batch_norm: BatchNormSpec | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"SelectiveKernelConv2D supports strides 1 and 2, not {strides}.")
        self.filters = filters
        self.strides = strides
        self.sk_ratio = sk_ratio
        self.min_dim = min_dim
        self.batch_norm = BatchNormSpec.get(batch_norm)
        # Both branches in one convolution: channels [0, filters) and [filters, 2 * filters).
        self.conv = FixedPaddingConv2D(
            2 * filters, 3, strides, kernels=self.batch_norm.kernels, name="conv2d"
        )
        self.norm = self.batch_norm.layer("batch_normalization")
        self.attention_width = max(int(filters * sk_ratio), min_dim)
        self.reduce = _pointwise(self.attention_width, "attention_reduce")
        self.reduce_norm = self.batch_norm.layer("attention_batch_normalization")
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
                "batch_norm": self.batch_norm.get_config(),
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
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        batch_norm: BatchNormSpec | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.use_projection = use_projection
        self.batch_norm = BatchNormSpec.get(batch_norm)
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
            self.shortcut_conv = self._conv(
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
        return self.batch_norm.layer(name, zero_init=zero_init)

    def _conv(self, filters: int, kernel_size: int, strides: int, name: str) -> FixedPaddingConv2D:
        return FixedPaddingConv2D(
            filters, kernel_size, strides, kernels=self.batch_norm.kernels, name=name
        )

    def _spatial_conv(self, filters: int, strides: int, name: str, norm_name: str) -> tuple:
        """(3x3 convolution, its batch norm) for a place followed by ReLU."""
        if self.sk_ratio > 0:
            sk = SelectiveKernelConv2D(
                filters, strides, self.sk_ratio, batch_norm=self.batch_norm, name=f"sk_{name}"
            )
            return sk, None
        return self._conv(filters, 3, strides, name=name), self._norm(norm_name)

    def _norm_relu_conv(self, norm, conv, x, training):
        """conv(relu(norm(x))): `kernels.norm_relu_conv` where it applies, else the layers."""
        if isinstance(conv, FixedPaddingConv2D) and conv.built and conv.conv.built:
            z = cpu_kernels.norm_relu_conv(self.batch_norm.kernels, norm, conv.conv, x, training)
            if z is not None:
                return z
        a = keras.ops.relu(norm(x, training=training))
        if isinstance(conv, SelectiveKernelConv2D):
            return conv(a, training=training)
        return conv(a)

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
                x = self._norm_relu_conv(pending, conv, x, training)
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
                "sk_ratio": self.sk_ratio,
                "se_ratio": self.se_ratio,
                "batch_norm": self.batch_norm.get_config(),
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
                self._conv(filters, 3, strides, name="conv2d_1"),
                self._conv(filters, 3, 1, name="conv2d_2"),
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
                self._conv(filters, 1, 1, name="conv2d_1"),
                conv2,
                self._conv(4 * filters, 1, 1, name="conv2d_3"),
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


@keras.saving.register_keras_serializable(package="simclr_tf2")
class ResNet(keras.layers.Layer):
    """ResNet v1 trunk whose call returns every named intermediate output.

    Args:
        depth: 10, 18, 34, 50, 101, 152 or 200.
        width_multiplier: multiplies every layer's number of channels: an
            integer as in the paper (1, 2, 4), or 0.25 / 0.5 for small runs.
        cifar_stem: 3x3 stride-1 stem without max-pool, for images <= 32 px.
        sk_ratio: selective-kernel ratio (SimCLRv2; 0.0625 recommended); 0 = off.
            Also switches to ResNet-D's stem (unless `cifar_stem`) and
            average-pool projection shortcuts.
        se_ratio: squeeze-excitation ratio (SimCLRv2); 0 = off.
        batch_norm: the `BatchNormSpec` of every batch norm (or its config;
            None: synchronised, momentum 0.9, epsilon 1e-5, kernels "auto").
            Its `kernels` switch is the whole trunk's: "auto" uses the CPU
            performance kernels of `simclr_tf2.models.kernels` where they apply
            (fused batch norm, and lighter gradients for strided convolutions
            and norm-ReLU-conv units); "plain" builds stock Keras layers with
            TensorFlow's automatic gradients only. Same variables and function
            either way.

    Call returns a dict with the keys of `BLOCK_OUTPUT_NAMES`;
    `final_avg_pool` is h, the representation.
    """

    def __init__(
        self,
        depth: int = 50,
        width_multiplier: float = 1,
        cifar_stem: bool = False,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        batch_norm: BatchNormSpec | dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", "resnet")
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
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.batch_norm = bn = BatchNormSpec.get(batch_norm)

        conv = dict(kernels=bn.kernels)
        stem_width = self._width(64)
        self.resnet_d_stem = sk_ratio > 0 and not cifar_stem
        if cifar_stem:
            self.stem_conv = FixedPaddingConv2D(stem_width, 3, 1, name="initial_conv", **conv)
            self.stem_pool = None
        elif self.resnet_d_stem:
            # ResNet-D (He et al., 2019): three 3x3 convolutions instead of one 7x7.
            half = self._width(32)
            self.stem_conv_a = FixedPaddingConv2D(half, 3, 2, name="initial_conv_a", **conv)
            self.stem_norm_a = bn.layer("initial_batch_normalization_a")
            self.stem_conv_b = FixedPaddingConv2D(half, 3, 1, name="initial_conv_b", **conv)
            self.stem_norm_b = bn.layer("initial_batch_normalization_b")
            self.stem_conv = FixedPaddingConv2D(stem_width, 3, 1, name="initial_conv", **conv)
            self.stem_pool = keras.layers.MaxPooling2D(
                3, 2, padding="same", name="initial_max_pool"
            )
        else:
            self.stem_conv = FixedPaddingConv2D(stem_width, 7, 2, name="initial_conv", **conv)
            self.stem_pool = keras.layers.MaxPooling2D(
                3, 2, padding="same", name="initial_max_pool"
            )
        self.stem_norm = bn.layer("initial_batch_normalization")

        block_type, counts = BLOCK_SPECS[depth]
        block_cls = ResidualBlock if block_type == "residual" else BottleneckBlock
        block_args = dict(sk_ratio=sk_ratio, se_ratio=se_ratio, batch_norm=bn)
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
                "sk_ratio": self.sk_ratio,
                "se_ratio": self.se_ratio,
                "batch_norm": self.batch_norm.get_config(),
            }
        )
        return config
