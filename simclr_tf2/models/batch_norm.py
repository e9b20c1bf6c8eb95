"""How SimCLR's batch norms are built: one spec for the encoder and the heads.

Every batch norm of a SimCLR model (trunk, selective kernels, projection head)
has the same settings: whether its statistics are synchronised across replicas
(`--global_bn`), the momentum of its moving statistics (`--batch_norm_decay`),
its epsilon, and whether it is computed by the CPU kernels of
`simclr_tf2.models.kernels` (`--kernels`). `BatchNormSpec` holds them once; a
layer that has batch norms takes one spec (`batch_norm=`), builds its norms with
`spec.layer(...)` and stores `spec.get_config()` in its own config:

    spec = BatchNormSpec(synchronized=False, momentum=0.99)
    encoder = ResNet(18, cifar_stem=True, batch_norm=spec)
    head = ProjectionHead("nonlinear", 128, 3, batch_norm=spec)

With `synchronized=True`, under `tf.distribute` the statistics are computed
over the global batch, so no replica can recognise its own examples through
per-device statistics.
"""

from __future__ import annotations

import dataclasses

import keras

from simclr_tf2.models import kernels as cpu_kernels


@dataclasses.dataclass(frozen=True)
class BatchNormSpec:
    """The settings every batch norm of a model shares.

    Args:
        synchronized: synchronise the statistics across replicas (`--global_bn`).
        momentum: decay of the moving statistics (`--batch_norm_decay`).
        epsilon: added to the variance.
        kernels: "auto" for `kernels.FusedBatchNormalization` (Keras's layer
            computed by TensorFlow's fused kernel where it can be), "plain" for
            Keras's own layer. A `ResNet` takes the same switch for the CPU
            kernels of its convolutions, which pair with the fused norm.
    """

    synchronized: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5
    kernels: str = "auto"

    def __post_init__(self):
        cpu_kernels.check_kernels(self.kernels)

    def layer(
        self, name: str, *, zero_init: bool = False, center: bool = True
    ) -> keras.layers.BatchNormalization:
        """A new batch norm with these settings.

        Args:
            name: layer name; it should contain "batch_normalization" (the
                authors' name, which their checkpoints and exclusion patterns use).
            zero_init: initialise gamma to zero (last norm of a residual block).
            center: learn a beta offset.
        """
        args = dict(
            momentum=self.momentum,
            epsilon=self.epsilon,
            center=center,
            gamma_initializer="zeros" if zero_init else "ones",
            synchronized=self.synchronized,
            name=name,
        )
        fused = cpu_kernels.fused_batch_norm(self.kernels, **args)
        return keras.layers.BatchNormalization(**args) if fused is None else fused

    def get_config(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> BatchNormSpec:
        return cls(**config)

    @classmethod
    def get(cls, identifier: BatchNormSpec | dict | None) -> BatchNormSpec:
        """The spec `identifier` names, as `keras.initializers.get` does for
        initializers: None is the authors' defaults, a dict a `get_config()`, a
        spec itself."""
        if identifier is None:
            return cls()
        if isinstance(identifier, dict):
            return cls.from_config(identifier)
        if isinstance(identifier, cls):
            return identifier
        raise TypeError(f"batch_norm={identifier!r} is not a BatchNormSpec, its config or None.")
