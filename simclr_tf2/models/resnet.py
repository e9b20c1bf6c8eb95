"""ResNet v1 encoders (He et al., 2016) as used by SimCLR.

The family the paper uses: depths 18 to 200, a width multiplier on every
convolution, the "v1.5" bottleneck (stride on the 3x3 convolution), the last
batch norm of every residual block initialised to zero, and an optional CIFAR
stem (one 3x3 stride-1 convolution, no max-pool) for images of 32 px or less.

With `global_bn=True` every batch norm is `BatchNormalization(synchronized=True)`,
so under `tf.distribute` its statistics are computed over the global batch and no
replica can recognise its own examples through per-device statistics.

This module imports nothing else from the package, so it can be used alone.
"""

from __future__ import annotations

import keras

BATCH_NORM_EPSILON = 1e-5

# depth -> (block type, number of blocks in each of the four groups)
BLOCK_SPECS = {
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
    return keras.layers.BatchNormalization(
        momentum=momentum,
        epsilon=epsilon,
        center=center,
        gamma_initializer="zeros" if zero_init else "ones",
        synchronized=global_bn,
        name=name,
    )


class FixedPaddingConv2D(keras.layers.Layer):
    """Bias-free convolution whose padding does not depend on the input size.

    With stride 1 this is "same" padding; with a larger stride the input is
    padded by (k - 1) // 2 before and k // 2 after, then convolved with "valid"
    padding, as in the reference ResNet implementations.
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.pad = None
        if strides > 1:
            total = kernel_size - 1
            self.pad = keras.layers.ZeroPadding2D(
                ((total // 2, total - total // 2), (total // 2, total - total // 2))
            )
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="valid" if strides > 1 else "same",
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(),
            name="conv2d",
        )

    def call(self, inputs):
        if self.pad is not None:
            inputs = self.pad(inputs)
        return self.conv(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides}
        )
        return config


class _Block(keras.layers.Layer):
    """Common parts of the residual and bottleneck blocks.

    Subclasses add their main-path layers with `_add_path(convs, norms)`; the last
    norm is zero-initialised so that every block starts as the identity. Layers
    are held as named attributes (conv1, bn1, ...), not in Python lists, because
    `tf.train.Checkpoint` does not follow lists of Keras layers.
    `_spatial_conv` is the one place a 3x3 convolution is made: the seam where
    selective kernels (SimCLRv2) plug in.
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.strides = strides
        self.use_projection = use_projection
        self.global_bn = global_bn
        self.batch_norm_decay = batch_norm_decay
        self.batch_norm_epsilon = batch_norm_epsilon
        self.shortcut_conv = self.shortcut_norm = None
        if use_projection:
            self.shortcut_conv = FixedPaddingConv2D(
                filters * self.expansion, 1, strides, name="shortcut_conv"
            )
            self.shortcut_norm = self._norm(name="shortcut_batch_normalization")

    def _add_path(self, convs: list, norms: list) -> None:
        self.path_length = len(convs)
        for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
            setattr(self, f"conv{i + 1}", conv)
            setattr(self, f"bn{i + 1}", norm)

    @property
    def convs(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"conv{i + 1}") for i in range(self.path_length)]

    @property
    def norms(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"bn{i + 1}") for i in range(self.path_length)]

    def _norm(self, name: str, zero_init: bool = False) -> keras.layers.BatchNormalization:
        return batch_norm(
            global_bn=self.global_bn,
            momentum=self.batch_norm_decay,
            epsilon=self.batch_norm_epsilon,
            zero_init=zero_init,
            name=name,
        )

    def _spatial_conv(self, filters: int, strides: int, name: str) -> keras.layers.Layer:
        return FixedPaddingConv2D(filters, 3, strides, name=name)

    def call(self, inputs, training=None):
        shortcut = inputs
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_norm(self.shortcut_conv(inputs), training=training)
        x = inputs
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x), training=training)
            if i < last:
                x = keras.ops.relu(x)
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
            }
        )
        return config


class ResidualBlock(_Block):
    """Two 3x3 convolutions (ResNet-18 and -34)."""

    expansion = 1

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(filters, strides, **kwargs)
        self._add_path(
            [
                self._spatial_conv(filters, strides, "conv2d_1"),
                self._spatial_conv(filters, 1, "conv2d_2"),
            ],
            [
                self._norm("batch_normalization_1"),
                self._norm("batch_normalization_2", zero_init=True),
            ],
        )


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4 (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(filters, strides, **kwargs)
        self._add_path(
            [
                FixedPaddingConv2D(filters, 1, 1, name="conv2d_1"),
                self._spatial_conv(filters, strides, "conv2d_2"),
                FixedPaddingConv2D(4 * filters, 1, 1, name="conv2d_3"),
            ],
            [
                self._norm("batch_normalization_1"),
                self._norm("batch_normalization_2"),
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
        depth: 18, 34, 50, 101, 152 or 200.
        width_multiplier: multiplies every layer's number of channels: an
            integer as in the paper (1, 2, 4), or 0.25 / 0.5 for small runs.
        cifar_stem: 3x3 stride-1 stem without max-pool, for images <= 32 px.
        global_bn: synchronised batch norm across replicas.
        batch_norm_decay: momentum of the moving statistics.
        batch_norm_epsilon: batch norm epsilon.
        sk_ratio: selective-kernel ratio (SimCLRv2); only 0 is supported yet.
        se_ratio: squeeze-excitation ratio (SimCLRv2); only 0 is supported yet.

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
        if sk_ratio or se_ratio:
            raise NotImplementedError(
                f"sk_ratio={sk_ratio}, se_ratio={se_ratio}: selective-kernel and "
                "squeeze-excitation blocks are not implemented yet; use 0."
            )
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
        if cifar_stem:
            self.stem_conv = FixedPaddingConv2D(stem_width, 3, 1, name="initial_conv")
            self.stem_pool = None
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

    def _width(self, channels: int) -> int:
        return max(1, int(round(channels * self.width_multiplier)))

    @property
    def block_groups(self) -> list[BlockGroup]:
        return [getattr(self, f"block_group{g}") for g in range(1, 5)]

    @property
    def stages(self) -> list[list[keras.layers.Layer]]:
        """Layers of the stem (stage 0) and of block groups 1-4 (stages 1-4)."""
        stem = [self.stem_conv, self.stem_norm]
        return [stem] + [[group] for group in self.block_groups]

    def call(self, inputs, training=None):
        outputs = {}
        x = self.stem_conv(inputs)
        x = keras.ops.relu(self.stem_norm(x, training=training))
        outputs["initial_conv"] = x
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
