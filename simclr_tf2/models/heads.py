"""SimCLR's projection head g and the supervised (linear evaluation) head."""

from __future__ import annotations

import keras

from simclr_tf2.config import num_head_outputs
from simclr_tf2.models.batch_norm import BatchNormSpec


class LinearLayer(keras.layers.Layer):
    """Dense layer, optionally followed by batch norm (then the Dense has no bias).

    Args:
        units: output width.
        use_bias: learn an offset (the norm's beta when `use_bn`).
        use_bn: follow the Dense with batch norm.
        batch_norm: its `BatchNormSpec` (or its config; None: the defaults).
    """

    def __init__(
        self,
        units: int,
        use_bias: bool = True,
        use_bn: bool = False,
        batch_norm: BatchNormSpec | dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = units
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.batch_norm = BatchNormSpec.get(batch_norm)
        self.dense = keras.layers.Dense(
            units,
            use_bias=use_bias and not use_bn,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="dense",
        )
        self.norm = None
        if use_bn:
            self.norm = self.batch_norm.layer("batch_normalization", center=use_bias)

    def call(self, inputs, training=None):
        x = self.dense(inputs)
        if self.norm is not None:
            x = self.norm(x, training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "use_bn": self.use_bn,
                "batch_norm": self.batch_norm.get_config(),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="simclr_tf2")
class ProjectionHead(keras.layers.Layer):
    """The projection head g that maps h to the space of the contrastive loss.

    Modes:
      - "none": z = h.
      - "linear": one Dense + BN to `proj_out_dim`.
      - "nonlinear": `num_proj_layers` layers; the hidden ones are Dense + BN +
        ReLU as wide as h, the last is Dense + BN to `proj_out_dim`, no ReLU.

    Call returns `(z, hiddens)`, where `hiddens[0]` is h and `hiddens[i]` the
    output of the i-th layer; `hiddens[ft_proj_selector]` feeds the supervised
    head when fine-tuning (SimCLRv2 fine-tunes from the middle of the head).

    Args:
        proj_head_mode: "none", "linear" or "nonlinear".
        proj_out_dim: width of z.
        num_proj_layers: depth of the nonlinear head.
        batch_norm: the `BatchNormSpec` of its layers' norms (or its config;
            None: the defaults).
    """

    def __init__(
        self,
        proj_head_mode: str = "nonlinear",
        proj_out_dim: int = 128,
        num_proj_layers: int = 3,
        batch_norm: BatchNormSpec | dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", "projection_head")
        super().__init__(**kwargs)
        if proj_head_mode == "nonlinear" and num_proj_layers < 1:
            raise ValueError(
                f"num_proj_layers={num_proj_layers} must be >= 1 with a nonlinear head."
            )
        num_head_outputs(proj_head_mode, num_proj_layers)  # validates the mode
        if proj_out_dim < 1:
            raise ValueError(f"proj_out_dim={proj_out_dim} must be >= 1.")
        self.proj_head_mode = proj_head_mode
        self.proj_out_dim = proj_out_dim
        self.num_proj_layers = num_proj_layers
        self.batch_norm = BatchNormSpec.get(batch_norm)
        self.num_layers = 0

    @property
    def layers_(self) -> list[LinearLayer]:
        # Held as attributes nl_0, nl_1, ...: tf.train.Checkpoint does not follow lists.
        return [getattr(self, f"nl_{j}") for j in range(self.num_layers)]

    def build(self, input_shape):
        if self.proj_head_mode == "linear":
            widths = [self.proj_out_dim]
        elif self.proj_head_mode == "nonlinear":
            widths = [int(input_shape[-1])] * (self.num_proj_layers - 1) + [self.proj_out_dim]
        else:
            widths = []
        last = len(widths) - 1
        for j, width in enumerate(widths):
            # Hidden layers: Dense + BN (+ ReLU in call); the last one: no bias, no beta.
            layer = LinearLayer(
                width, use_bias=j < last, use_bn=True, batch_norm=self.batch_norm, name=f"nl_{j}"
            )
            setattr(self, f"nl_{j}", layer)
        self.num_layers = len(widths)

    def call(self, inputs, training=None):
        hiddens = [inputs]
        x = inputs
        last = len(self.layers_) - 1
        for j, layer in enumerate(self.layers_):
            x = layer(x, training=training)
            if j < last and self.proj_head_mode == "nonlinear":
                x = keras.ops.relu(x)
            hiddens.append(x)
        return x, hiddens

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "proj_head_mode": self.proj_head_mode,
                "proj_out_dim": self.proj_out_dim,
                "num_proj_layers": self.num_proj_layers,
                "batch_norm": self.batch_norm.get_config(),
            }
        )
        return config


def supervised_head(num_classes: int, zero_init: bool = False) -> keras.layers.Dense:
    """The linear classifier on h (or on a head layer when fine-tuning).

    Named "head_supervised", as in the authors' checkpoints. Its weight decay is
    decided by the run's `WeightDecay` rule (an L2 term in the loss, no trust ratio).
    """
    initializer = "zeros" if zero_init else keras.initializers.RandomNormal(stddev=0.01)
    # Under a mixed-precision policy the logits are computed in float32.
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=initializer,
        name="head_supervised",
        dtype="float32" if mixed else None,
    )
