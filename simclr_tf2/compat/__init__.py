"""The SimCLR authors' released TF2 models in this project.

google-research/simclr publishes its SimCLRv1 and SimCLRv2 models as checkpoints and
SavedModels of its TF2 code. `AuthorsCheckpoint(path)` reads either form, infers the
architecture from the variables (depth, width, stem, selective kernels,
squeeze-excitation, projection head, supervised head) and builds the matching
`SimCLRModel` with every weight and batch-norm statistic in place:

    from simclr_tf2.compat import AuthorsCheckpoint

    released = AuthorsCheckpoint("r50_1x_sk0/saved_model")
    print(released.architecture.describe())
    model = released.build_model()          # inference: model(images)["final_avg_pool"]

What the variables cannot tell comes from arguments, with the authors' defaults:
`ft_proj_selector` (which projection-head layer their supervised head reads; 0 = h)
and the image size (224, or 32 for a CIFAR stem). A checkpoint that does not match
(a variable missing, a shape unexpected, a variable left over) raises `CompatError`
naming the variable: nothing is left at its initial value.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf2.build import build_model
from simclr_tf2.compat.layout import Architecture, infer_architecture, their_layout
from simclr_tf2.compat.reader import CompatError, find, read_variables
from simclr_tf2.config import Config
from simclr_tf2.models.simclr import SimCLRModel

__all__ = ["Architecture", "AuthorsCheckpoint", "CompatError", "find", "load_saved_model"]

_SUPERVISED = "supervised_head/"


def load_saved_model(path: str):
    """`tf.saved_model.load(path)` without TensorFlow's warning per custom-gradient
    function of a tf-keras model (hundreds of lines for the authors' exports, all about
    gradients of their synchronized batch norm, which inference never asks for)."""
    previous = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        return tf.saved_model.load(path)
    finally:
        logging.set_verbosity(previous)


class AuthorsCheckpoint:
    """A checkpoint or SavedModel of the authors' TF2 code, read and understood.

    Args:
        path: a checkpoint prefix (`.../ckpt-1234`), a directory with a `checkpoint`
            file, a SavedModel directory, or a directory holding `saved_model/<step>/`.

    Attributes:
        variables: what was read (`simclr_tf2.compat.reader.AuthorsVariables`).
        architecture: what the variables tell (`Architecture`).

    Raises:
        CompatError: nothing there, not their format, or a layout their code does not
            write (the message names the variable).
    """

    def __init__(self, path: str):
        self.variables = read_variables(path)
        self.architecture = infer_architecture(self.variables)

    @property
    def path(self) -> str:
        return self.variables.path

    @property
    def global_step(self) -> int:
        return self.variables.global_step

    @property
    def num_params(self) -> int:
        """Parameters of the model (trainable weights, no batch-norm statistics)."""
        return int(
            sum(
                np.prod(shape)
                for name, shape in self.variables.shapes.items()
                if not name.endswith(("moving_mean", "moving_variance"))
            )
        )

    def default_image_size(self) -> int:
        """The authors' image size for this stem: 32 for a CIFAR stem, else 224."""
        return 32 if self.architecture.cifar_stem else 224

    def model_kwargs(self, ft_proj_selector: int = 0) -> dict:
        """`SimCLRModel` arguments of this architecture besides its parts.

        With `ft_proj_selector` > 0 their supervised head reads that projection-head
        layer, which is this project's fine-tuning mode; with 0 it reads h, which
        is pretraining with a linear head (the same outputs in inference).
        """
        arch = self.architecture
        return dict(
            num_classes=arch.num_classes,
            train_mode="finetune" if ft_proj_selector and arch.num_classes else "pretrain",
            ft_proj_selector=ft_proj_selector,
            lineareval_while_pretraining=arch.num_classes is not None,
        )

    def build_model(
        self, ft_proj_selector: int = 0, image_size: int | None = None, **settings
    ) -> SimCLRModel:
        """A built `SimCLRModel` of this architecture with every weight loaded.

        It is the model a run would build (`simclr_tf2.build.build_model`);
        `settings` are further run settings by their flag names (e.g.
        `global_bn=False`, `temperature=0.5`); architecture settings among them must
        agree with the checkpoint (the load checks every shape).
        """
        size = image_size or self.default_image_size()
        if (size <= 32) != self.architecture.cifar_stem:
            stem = "a CIFAR stem (images of 32 px or less)" if size > 32 else "an ImageNet stem"
            raise CompatError(
                f"{self.path}: image_size={size} does not fit the checkpoint, which has {stem}."
            )
        model_kwargs = self.model_kwargs(ft_proj_selector)
        num_classes = model_kwargs.pop("num_classes")
        config = Config.from_flags(
            image_size=size, **{**self.architecture.flags(), **model_kwargs, **settings}
        )
        model = build_model(config, num_classes)
        self.load_into(model)
        return model

    def load_into(self, model: SimCLRModel, *, supervised_head: bool = True) -> int:
        """Assigns the checkpoint's weights to a built `model`; returns how many.

        `supervised_head=False` leaves the model's supervised head as it is (a new
        head for fine-tuning) and ignores theirs. Every other variable of theirs must
        find its place in `model` and every variable of `model` its value.

        Raises:
            CompatError: naming the first variable missing, of another shape, or
                left over.
        """
        shapes = self.variables.shapes
        pairs = list(their_layout(model, supervised_head=supervised_head))
        for name, variable in pairs:
            if name not in shapes:
                raise CompatError(
                    f"{self.path}: variable model/{name} is missing (expected "
                    f"{tuple(variable.shape)} for {variable.path})."
                )
            if tuple(shapes[name]) != tuple(variable.shape):
                hint = ""
                if name.startswith(_SUPERVISED):
                    hint = " (their head reads another layer: check ft_proj_selector)"
                raise CompatError(
                    f"{self.path}: variable model/{name} has shape {tuple(shapes[name])}, "
                    f"expected {tuple(variable.shape)} for {variable.path}{hint}."
                )
        used = {name for name, _ in pairs}
        left = sorted(
            name
            for name in shapes
            if name not in used and (supervised_head or not name.startswith(_SUPERVISED))
        )
        if left:
            raise CompatError(
                f"{self.path}: variable model/{left[0]} has no place in the model the other "
                f"variables describe ({self.architecture.describe()}); "
                f"{len(left)} such variable(s)."
            )
        reader = self.variables.reader()
        for name, variable in pairs:
            value = reader.get_tensor(self.variables.keys[name])
            variable.assign(value.astype(variable.dtype))
        return len(pairs)

    def compare_with_saved_model(
        self, model: SimCLRModel, image_size: int, count: int = 2, seed: int = 0
    ) -> dict[str, float]:
        """How far `model`'s outputs are from the authors' SavedModel's own, on `count`
        random images: {output: largest difference / largest value of theirs}, for
        `final_avg_pool`, `proj_head_output` and `logits_sup` where both have them.

        Only for a SavedModel (`variables.kind == "saved_model"`): it runs their graph,
        which is how an import of a full-size release is checked without their code.
        """
        if self.variables.kind != "saved_model":
            raise CompatError(f"{self.path}: not a SavedModel; nothing of theirs to run.")
        export = os.path.dirname(os.path.dirname(self.variables.prefix))
        theirs = load_saved_model(export)
        rng = np.random.default_rng(seed)
        images = rng.uniform(size=(count, image_size, image_size, 3)).astype(np.float32)
        expected = theirs(tf.constant(images), trainable=False)
        ours = model(images, training=False)
        errors = {}
        for key in ("final_avg_pool", "proj_head_output", "logits_sup"):
            if key in expected and key in ours:
                ref = np.asarray(expected[key], np.float64)
                got = np.asarray(ours[key], np.float64)
                scale = max(float(np.abs(ref).max()), 1e-12)
                errors[key] = float(np.abs(got - ref).max()) / scale
        return errors
