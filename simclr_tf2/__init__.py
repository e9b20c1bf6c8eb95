"""simclr_tf2: SimCLR (Chen et al., 2020) for TensorFlow 2 / Keras 3.

Every piece takes plain arguments, so it can be used without the command line:

    from simclr_tf2 import Config, build_run, SimCLRModel, LARS, nt_xent

The names below load on first use, so `import simclr_tf2.config` stays free of
TensorFlow. Imported before TensorFlow, the package turns on TensorFlow's oneDNN
CPU kernels unless TF_ENABLE_ONEDNN_OPTS is set: TensorFlow enables them by
itself only on CPUs with AVX-512 VNNI or newer, and on an AVX2 CPU (an AMD EPYC
here) they made the train step about twice as fast. run.py and the tools do the
same.
"""

import importlib
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Public name -> the module that defines it.
_EXPORTS = {
    "Config": "simclr_tf2.config",
    "ConfigError": "simclr_tf2.config",
    "validate": "simclr_tf2.config",
    "Run": "simclr_tf2.assembly",
    "Sources": "simclr_tf2.assembly",
    "build_run": "simclr_tf2.assembly",
    "build_model": "simclr_tf2.build",
    "run": "simclr_tf2.train",
    "nt_xent": "simclr_tf2.losses",
    "BatchNormSpec": "simclr_tf2.models.batch_norm",
    "ProjectionHead": "simclr_tf2.models.heads",
    "supervised_head": "simclr_tf2.models.heads",
    "ResNet": "simclr_tf2.models.resnet",
    "SimCLRModel": "simclr_tf2.models.simclr",
    "LARS": "simclr_tf2.optim",
    "WarmUpAndCosineDecay": "simclr_tf2.optim",
    "WeightDecay": "simclr_tf2.optim",
    "build_optimizer": "simclr_tf2.optim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'simclr_tf2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
