"""simclr_tf2: SimCLR (Chen et al., 2020) for TensorFlow 2 / Keras 3.

Every piece takes plain arguments, so it can be used without the command line:

    from simclr_tf2 import SimCLRModel, LARS, WarmUpAndCosineDecay, nt_xent

Imported before TensorFlow, it turns on TensorFlow's oneDNN CPU kernels unless
TF_ENABLE_ONEDNN_OPTS is set: TensorFlow enables them by itself only on CPUs with
AVX-512 VNNI or newer, and on an AVX2 CPU (an AMD EPYC here) they made the train
step about twice as fast. run.py and the tools do the same.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from simclr_tf2.losses import nt_xent
from simclr_tf2.models.heads import ProjectionHead, supervised_head
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import LARS, WarmUpAndCosineDecay, build_optimizer

__all__ = [
    "LARS",
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "WarmUpAndCosineDecay",
    "build_optimizer",
    "nt_xent",
    "supervised_head",
]
