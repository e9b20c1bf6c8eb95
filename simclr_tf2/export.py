"""SavedModel export for TF Hub, `tf.saved_model.load` and `keras.layers.TFSMLayer`.

`export_saved_model(model, path)` writes a reusable SavedModel:

- `obj(images, trainable=False)`: images are float32 in [0, 1], (B, H, W, 3)
  of any size. Returns a dict with the encoder's block outputs
  (`initial_conv`, the stem convolution before its norm as in the authors' exports;
  `initial_max_pool`, `block_group1`..`block_group4`),
  `final_avg_pool` (h, the representation), `proj_head_output` (z) and,
  when the model has a supervised head, `logits_sup`. `trainable=True` runs
  batch norm in training mode (batch statistics, moving averages updated),
  for fine-tuning; `training=` is accepted as a synonym (the reusable
  SavedModel convention that `hub.KerasLayer` follows).
- `obj.serve(images)` / `obj.train(images)`: the same with `trainable` fixed,
  and the `serving_default` signature; the endpoints `keras.layers.TFSMLayer`
  uses (`call_endpoint="serve", call_training_endpoint="train"`).
- `obj.serve_bytes(image_bytes)` (signature `serving_bytes`): a (B,) string
  tensor of encoded images (JPEG, PNG, BMP, GIF; any sizes), and
  `obj.serve_uint8(images)` (signature `serving_uint8`): uint8 (B, H, W, 3)
  pixels of any size. Both prepare each image as evaluation does
  (`simclr_tf2.data.views.eval_view` at `obj.image_size`: centre crop and
  bicubic resize) and return what `obj.serve` returns, so a consumer (TF
  Serving, another program) needs no copy of the preprocessing.
- `obj.image_size`: the side the images are prepared to (int32 variable).
- `obj.variables`, `obj.trainable_variables`, `obj.regularization_losses`:
  what a consumer needs to fine-tune the loaded model.
- `obj.variable_paths`: the Keras path of each of `obj.variables`
  (`resnet/block_group1/...`), which is how `restore_from_saved_model` starts
  fine-tuning from an export.

The export computes in float32 on one device, whatever the model trained in
(mixed precision, synchronised batch norm across replicas): see `float32_copy`.
An export is written to a temporary directory and renamed into place, so a
crash never leaves half an export under its final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid

import keras
import tensorflow as tf

from simclr_tf2.data.pipeline import decode_image
from simclr_tf2.data.views import eval_view
from simclr_tf2.models.simclr import float32_copy

_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
# Encoded images, one string each (TF Serving's REST API takes them as {"b64": ...}).
_IMAGE_BYTES = tf.TensorSpec([None], tf.string, name="image_bytes")
_PIXELS = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")


def _relative_path(variable) -> str:
    """A Keras variable's path without the model's own name."""
    return variable.path.split("/", 1)[-1]


def _as_tf_variables(variables) -> list[tf.Variable]:
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def default_image_size(model) -> int:
    """The image size a model's stem is for: 32 with the CIFAR stem, else 224."""
    return 32 if model.encoder.cifar_stem else 224


class _HubModule(tf.__internal__.tracking.AutoTrackable):
    def __init__(self, model, image_size: int):
        super().__init__()
        self.variables = _as_tf_variables(model.variables)
        self.trainable_variables = _as_tf_variables(model.trainable_variables)
        self.regularization_losses = []  # weight decay lives in the optimizer (LARS)
        # tf.Variable names are not unique ("resnet/kernel:0"); the Keras paths
        # below the model's name are, and name `variables` in order.
        self.variable_paths = tf.Variable(
            [_relative_path(v) for v in model.variables], trainable=False, name="variable_paths"
        )

        # The model and its layers are not tracked (the optimizer would be
        # exported too, and a Keras variable beside its tf.Variable would be
        # saved twice): the functions close over the model; its variables are
        # tracked, by name, in the lists above.
        def outputs(images, trainable: bool) -> dict:
            result = model(images, training=trainable)
            return {k: tf.cast(v, tf.float32) for k, v in result.items()}

        # The model is traced twice, once per mode; the four variants of `__call__`
        # (TF Hub's `trainable` and Keras' `training`) call those two graphs.
        self.serve = tf.function(lambda images: outputs(images, False), [_IMAGES])
        self.train = tf.function(lambda images: outputs(images, True), [_IMAGES])

        @tf.function
        def call(images, trainable=False, training=False):
            return self.train(images) if trainable or training else self.serve(images)

        for trainable in (False, True):
            for training in (False, True):
                call.get_concrete_function(_IMAGES, trainable, training)
        self.__call__ = call

        # Encoded or uint8 images prepared in the graph, by the function evaluation
        # uses; one image at a time (each has its own size), then one batch.
        self.image_size = tf.Variable(image_size, trainable=False, name="image_size")
        prepared = tf.TensorSpec([image_size, image_size, 3], tf.float32)

        def prepare(images, to_pixels):
            return tf.map_fn(
                lambda image: eval_view(to_pixels(image), image_size),
                images,
                fn_output_signature=prepared,
            )

        self.serve_bytes = tf.function(
            lambda image_bytes: self.serve(prepare(image_bytes, decode_image)), [_IMAGE_BYTES]
        )
        self.serve_uint8 = tf.function(
            lambda images: self.serve(prepare(images, lambda image: image)), [_PIXELS]
        )


def export_saved_model(model, path: str, image_size: int | None = None) -> str:
    """Writes `model` (a built SimCLRModel) as a reusable SavedModel at `path`.

    Args:
        model: the model.
        path: where the export goes (replaced whole).
        image_size: the side `serving_bytes` and `serving_uint8` prepare images to
            (the run's --image_size); by default `default_image_size(model)`.
    """
    # One device (synchronised batch norm would put cross-replica ops with custom
    # gradients into it, which a SavedModel cannot differentiate after loading), and
    # float32 whatever the training computed in: full-precision features, and fast
    # on every consumer's device (bfloat16 is emulated, slowly, on most CPUs).
    standalone = float32_copy(model, synchronized=False)
    module = _HubModule(standalone, image_size or default_image_size(model))
    # Written under a name of this writer's own, then renamed into place: a reader
    # never sees half an export, and two processes exporting the same step at
    # once (a trainer and an --mode=eval watcher) do not write into each other.
    tmp = f"{path.rstrip('/')}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        signatures = {
            "serving_default": module.serve,
            "serving_bytes": module.serve_bytes,
            "serving_uint8": module.serve_uint8,
        }
        tf.saved_model.save(module, tmp, signatures=signatures)
        try:
            if tf.io.gfile.exists(path):
                tf.io.gfile.rmtree(path)
            tf.io.gfile.rename(tmp, path)
        except (tf.errors.OpError, OSError):
            if not is_saved_model(path):
                raise
            # Another process put the same step's export in place meanwhile: it stands.
    finally:
        # Also after a refused write (disk full): the error that stopped the export is
        # the one to report, not a failure to clean up after it.
        with contextlib.suppress(tf.errors.OpError, OSError):
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.rmtree(tmp)
    return path


def export_step(model, model_dir: str, step: int, keep: int, image_size: int | None = None) -> str:
    """Exports to `model_dir/saved_model/<step>/`, keeping the newest `keep` exports
    (`image_size`: see `export_saved_model`)."""
    root = os.path.join(model_dir, "saved_model")
    tf.io.gfile.makedirs(root)
    path = export_saved_model(model, os.path.join(root, str(step)), image_size)
    steps = sorted(int(name) for name in _exports(root))
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(os.path.join(root, str(old)), ignore_errors=True)
    return path


def _exports(root: str) -> list[str]:
    return [n for n in tf.io.gfile.listdir(root) if re.fullmatch(r"\d+/?", n)]


def is_saved_model(path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def latest_export(path: str) -> str | None:
    """`path` itself if it is an export, else the newest `saved_model/<step>` under it."""
    if is_saved_model(path):
        return path
    for root in (os.path.join(path, "saved_model"), path):
        if tf.io.gfile.isdir(root):
            steps = sorted((int(n.rstrip("/")) for n in _exports(root)), reverse=True)
            for step in steps:
                candidate = os.path.join(root, str(step))
                if is_saved_model(candidate):
                    return candidate
    return None


def restore_from_saved_model(path: str, layers) -> int:
    """Copies the export's weights into `layers` (Keras layers), matched by path.

    Returns the number of variables restored. Raises ValueError naming the
    first variable that is missing from the export or has another shape
    (the export holds a different architecture).
    """
    loaded = tf.saved_model.load(path)
    paths = [p.decode() for p in loaded.variable_paths.numpy()]
    exported = dict(zip(paths, loaded.variables, strict=True))
    count = 0
    for layer in layers:
        for variable in layer.variables:
            source = exported.get(_relative_path(variable))
            if source is None:
                raise ValueError(f"{path} has no variable {variable.path}")
            if tuple(source.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{path}: {variable.path} has shape {tuple(source.shape)} there, "
                    f"{tuple(variable.shape)} in this model"
                )
            variable.assign(source.numpy())
            count += 1
    return count
