"""Checkpoints and exports: finding them, restoring models from them, importing
the authors' released ones.

`latest_checkpoint` finds a prefix; `resume_point` the newest checkpoint of a
model_dir that reads back whole (`unreadable` says why one does not);
`restore_model` rebuilds a model from a checkpoint and the config.json beside
it; `load_encoder` gives a trained model's outputs for inference from an
export or a checkpoint; `initialise` loads `--checkpoint` (ours, a SavedModel export, or the
authors') into a built model; `load_teacher` gives `--teacher`'s logits;
`import_authors_checkpoint` writes the authors' checkpoint or SavedModel as one
of ours.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from simclr_tf2.build import build_model, compile_model
from simclr_tf2.compat import AuthorsCheckpoint, CompatError, load_saved_model
from simclr_tf2.compat import find as find_authors_checkpoint
from simclr_tf2.config import Config, ConfigError, validate
from simclr_tf2.export import export_step, latest_export, restore_from_saved_model
from simclr_tf2.models.simclr import SimCLRModel


def write_json(path: str, data: dict) -> None:
    """`data` as indented JSON at `path`, replaced whole (never half written)."""
    # Written to a temporary file and renamed, so a crash or a full disk never leaves half
    # a file in place of the previous one.
    tmp = path + ".tmp"
    try:
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True))
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except (tf.errors.OpError, OSError):
        # The part written would only take space on a disk that may be full.
        with contextlib.suppress(tf.errors.OpError, OSError):
            tf.io.gfile.remove(tmp)
        raise


def read_config(model_dir: str, owner: str | None = None) -> Config:
    """The Config in `model_dir`/config.json; ConfigError when there is none, naming
    `owner` (e.g. a checkpoint prefix in `model_dir`) when given."""
    path = os.path.join(model_dir, "config.json")
    if not tf.io.gfile.exists(path):
        where = f"beside {owner}" if owner else f"in {model_dir}"
        raise ConfigError(f"no config.json {where} to rebuild the model from.")
    with tf.io.gfile.GFile(path) as f:
        return Config.from_json(f.read())


def _classes_in_checkpoint(prefix: str) -> int | None:
    for name, shape in tf.train.list_variables(prefix):
        # Keras 3's Dense saves its kernel as `_kernel`.
        if re.search(r"supervised_head/_?kernel/", name) and len(shape) == 2:
            return int(shape[1])
    return None


def restore_model(prefix: str, *, encoder_only: bool = False) -> SimCLRModel:
    """The model checkpoint `prefix` holds, rebuilt from the config.json beside it, with
    its supervised head when the checkpoint has one (call inside the strategy's scope).
    `encoder_only` restores the encoder and leaves the rest as built. Raises ConfigError
    with a one-line reason when the checkpoint cannot be used."""
    config = read_config(os.path.dirname(prefix), owner=prefix)
    num_classes = None if encoder_only else _classes_in_checkpoint(prefix)
    if not num_classes:
        # No supervised head to rebuild: the encoder and projection head of a pretraining.
        config = config.replace(train_mode="pretrain", lineareval_while_pretraining=False)
    model = build_model(config, num_classes)
    target = tf.train.Checkpoint(encoder=model.encoder) if encoder_only else model
    status = tf.train.Checkpoint(model=target).restore(prefix).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ConfigError(
            f"{prefix} does not match the model its config.json describes: "
            f"{str(error).splitlines()[0][:200]}"
        ) from None
    return model


def load_teacher(path: str, ft_proj_selector: int = 0, image_size: int | None = None):
    """(teacher, num_classes, where) for `--teacher`: a fine-tuned model_dir, checkpoint
    prefix or SavedModel whose supervised head labels images (call inside the strategy's
    scope). `teacher(images)` returns its logits; it is never trained.

    The authors' fine-tuned checkpoints and SavedModels are loaded too
    (`simclr_tf2.compat`); their supervised head reads projection-head layer
    `ft_proj_selector`, and `image_size` must fit their stem.

    A checkpoint (or a model_dir's newest one) is rebuilt from the config.json beside it;
    otherwise the newest export under `path` is loaded.
    """
    released = authors_checkpoint("teacher", path)
    if released is not None:
        if not released.architecture.num_classes:
            raise ConfigError(
                f"--teacher={path}: it has no supervised head to label images with; use one "
                "of the authors' fine-tuned models as the teacher."
            )
        try:
            model = released.build_model(ft_proj_selector, image_size)
        except CompatError as error:
            raise ConfigError(f"--teacher={error}") from None
        model.trainable = False
        return (
            (lambda images: model(images, training=False)["logits_sup"]),
            model.num_classes,
            path,
        )
    prefix = latest_checkpoint(path)
    if prefix is not None:
        try:
            model = restore_model(prefix)
        except ConfigError as error:
            raise ConfigError(
                f"--teacher={path}: {error} Give its model_dir or its SavedModel export."
            ) from None
        if not model.num_classes:
            raise ConfigError(
                f"--teacher={path}: {prefix} has no supervised head to label images with; "
                "use a fine-tuned model (--train_mode=finetune) as the teacher."
            )
        model.trainable = False
        return (
            (lambda images: model(images, training=False)["logits_sup"]),
            model.num_classes,
            prefix,
        )
    export = latest_export(path)
    if export is None:
        raise ConfigError(
            f"--teacher={path}: no checkpoint or SavedModel there (give a fine-tuned model_dir, "
            "a prefix such as model_dir/ckpt-1000, or model_dir/saved_model/<step>)."
        )
    loaded = tf.saved_model.load(export)
    paths = [p.decode() for p in loaded.variable_paths.numpy()]
    kernels = [
        v
        for p, v in zip(paths, loaded.variables, strict=True)
        if p.endswith("head_supervised/kernel")
    ]
    if not kernels:
        raise ConfigError(
            f"--teacher={path}: the export {export} has no supervised head (logits_sup); use "
            "a fine-tuned model as the teacher."
        )
    return (lambda images: loaded.serve(images)["logits_sup"]), int(kernels[0].shape[1]), export


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A trained model in inference mode: `encoder(images)`, images float32
    (B, H, W, 3) in [0, 1], returns its outputs (`final_avg_pool`, `proj_head_output`, ...).

    Attributes:
        call: the function called.
        where: the export directory or checkpoint prefix it comes from.
        image_size: the side of the images it was trained on, when known.
    """

    call: Callable[[tf.Tensor], dict]
    where: str
    image_size: int | None

    def __call__(self, images) -> dict:
        return self.call(images)


def load_encoder(saved_model: str | None = None, checkpoint: str | None = None) -> Encoder:
    """The `Encoder` of an export or of a checkpoint (exactly one of the two).

    Args:
        saved_model: an export (`model_dir/saved_model/<step>`), a model_dir (its newest
            export), or one of the authors' SavedModels.
        checkpoint: a checkpoint prefix or a model_dir (its newest checkpoint; the model
            is rebuilt from the config.json beside it), or one of the authors' checkpoints.

    Raises:
        ConfigError: one line naming --saved_model or --checkpoint and the fix.
    """
    if bool(saved_model) == bool(checkpoint):
        raise ConfigError("give one of --saved_model and --checkpoint.")
    if saved_model:
        export = latest_export(saved_model)
        if export is None:
            raise ConfigError(
                f"--saved_model={saved_model}: no SavedModel there (give "
                "model_dir/saved_model/<step> or a model_dir holding exports)."
            )
        # Quiet about the gradients of the authors' exports (inference needs none).
        loaded = load_saved_model(export)
        size = getattr(loaded, "image_size", None)  # exports before it was recorded: none
        return Encoder(
            lambda images: loaded(images, trainable=False),
            export,
            None if size is None else int(size.numpy()),
        )
    released = authors_checkpoint("checkpoint", checkpoint)
    try:
        if released is not None:
            model = released.build_model()
            prefix, size = released.variables.prefix, released.default_image_size()
        else:
            prefix = latest_checkpoint(checkpoint)
            if prefix is None:
                raise ConfigError("no checkpoint there (give model_dir or model_dir/ckpt-<step>).")
            model = restore_model(prefix)
            size = read_config(os.path.dirname(prefix)).data.image_size
    except (ConfigError, CompatError) as error:
        message = str(error)
        if not message.startswith("--checkpoint="):
            message = f"--checkpoint={checkpoint}: {message}"
        raise ConfigError(message) from None

    @tf.function(reduce_retracing=True)
    def call(images):
        return {k: tf.cast(v, tf.float32) for k, v in model(images, training=False).items()}

    return Encoder(call, prefix, size)


def authors_checkpoint(flag: str, path: str) -> AuthorsCheckpoint | None:
    """The authors' TF2 checkpoint or SavedModel at `path` (None if it is not theirs);
    ConfigError naming `flag` when it cannot be read."""
    if find_authors_checkpoint(path) is None:
        return None
    try:
        return AuthorsCheckpoint(path)
    except CompatError as error:
        raise ConfigError(f"--{flag}={error}") from None


def check_agrees(config: Config, released: AuthorsCheckpoint) -> None:
    """The architecture flags must describe the authors' checkpoint being loaded."""
    arch = released.architecture
    for flag, value in arch.flags().items():
        given = config.flags()[flag]
        if given != value:
            raise ConfigError(
                f"--{flag}={given}: --checkpoint={config.checkpoint} has {flag}={value} "
                f"({arch.describe()}); give --{flag}={value}."
            )
    if config.cifar_stem != arch.cifar_stem:
        raise ConfigError(
            f"--image_size={config.data.image_size}: --checkpoint={config.checkpoint} has "
            f"{'a CIFAR stem (32 px or less)' if arch.cifar_stem else 'an ImageNet stem'}; give "
            f"--image_size={released.default_image_size()}."
        )


# Largest difference from the authors' SavedModel's own outputs, relative to their
# largest value, that an import accepts (float32 round-off of other kernels is ~1e-6).
IMPORT_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Imported:
    """What `import_authors_checkpoint` read and wrote."""

    released: AuthorsCheckpoint
    config: Config
    checkpoint: str
    export: str
    # Output -> relative difference from their SavedModel's outputs (empty for a checkpoint).
    differences: dict


def import_authors_checkpoint(
    path: str, out_dir: str, *, ft_proj_selector: int = 0, image_size: int | None = None
) -> Imported:
    """Writes the authors' checkpoint or SavedModel at `path` into `out_dir` as this
    project's own: a checkpoint `ckpt-<their step>` (model and optimizer, so run.py,
    tools/linear_eval.py and tools/knn_eval.py take `--checkpoint=out_dir`), its
    `config.json`, and the SavedModel export `saved_model/<their step>/`.

    From a SavedModel of theirs, the imported model's outputs are first compared with
    what their SavedModel computes on random images; nothing is written unless they
    agree to `IMPORT_TOLERANCE`.

    Raises:
        ConfigError: nothing of theirs at `path`, a layout their code does not write,
            an `image_size` that does not fit the stem, outputs that differ from
            their SavedModel's (likely another `ft_proj_selector`), or an `out_dir`
            that already holds checkpoints (nothing is overwritten).
    """
    released = authors_checkpoint("checkpoint", path)
    if released is None:
        raise ConfigError(
            f"--checkpoint={path}: no checkpoint or SavedModel of the authors' TF2 code "
            "(google-research/simclr) there; give a ckpt-N prefix, a directory with a "
            "'checkpoint' file, or a SavedModel directory of theirs."
        )
    existing = tf.train.latest_checkpoint(out_dir) if tf.io.gfile.isdir(out_dir) else None
    if existing:
        raise ConfigError(
            f"--out={out_dir}: already holds checkpoints ({existing}); give a new or empty "
            "directory."
        )
    kwargs = released.model_kwargs(ft_proj_selector)
    config = Config.from_flags(
        model_dir=out_dir,
        checkpoint=path,
        image_size=image_size or released.default_image_size(),
        train_mode=kwargs["train_mode"],
        lineareval_while_pretraining=kwargs["lineareval_while_pretraining"],
        ft_proj_selector=ft_proj_selector,
        **released.architecture.flags(),
    )
    validate(config)
    check_agrees(config, released)
    model = build_model(config, released.architecture.num_classes)
    try:
        released.load_into(model)
    except CompatError as error:
        raise ConfigError(f"--checkpoint={error}") from None
    differences = {}
    if released.variables.kind == "saved_model":
        differences = released.compare_with_saved_model(model, config.data.image_size)
        wrong = {k: v for k, v in differences.items() if not v <= IMPORT_TOLERANCE}
        if wrong:
            hint = ""
            if list(wrong) == ["logits_sup"]:
                hint = " Only logits_sup differs: their head reads another layer; try "
                hint += "another --ft_proj_selector."
            listed = ", ".join(f"{k} {v:.1e}" for k, v in wrong.items())
            raise ConfigError(
                f"--checkpoint={path}: the imported model's outputs differ from their "
                f"SavedModel's ({listed} relative); nothing written.{hint}"
            )
    step = released.global_step
    compile_model(model, config, config.optim.learning_rate)
    model.optimizer.iterations.assign(step)
    tf.io.gfile.makedirs(out_dir)
    write_json(os.path.join(out_dir, "config.json"), json.loads(config.to_json()))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer), out_dir, max_to_keep=1
    )
    prefix = manager.save(checkpoint_number=step)
    export = export_step(
        model, out_dir, step, config.train.keep_hub_module_max, config.data.image_size
    )
    return Imported(released, config, prefix, export, differences)


def latest_checkpoint(path: str) -> str | None:
    """A checkpoint prefix from a prefix or a directory of checkpoints (None if neither)."""
    if tf.io.gfile.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


_STEP = re.compile(r"ckpt-(\d+)\.index$")


def unreadable(prefix: str) -> str | None:
    """Why checkpoint `prefix` cannot be read back whole, in one phrase (None if it can).

    Every tensor is read, which checks the data files against the sizes and checksums
    in the index: a missing, truncated or damaged index or data file is found here
    rather than halfway through a restore (or, for the optimizer's slots, which are
    restored when they are created, inside `fit`).
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    # The reader turns some of TensorFlow's errors into Python's (a short read: IndexError).
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError, OSError) as error:
        text = getattr(error, "message", None) or str(error)
        first = next((line for line in text.splitlines() if line.strip()), "")
        return f"{type(error).__name__}: {first[:200]}"
    return None


def resume_point(model_dir: str, repair: bool = False) -> str | None:
    """The newest checkpoint the `checkpoint` state file of `model_dir` lists that reads
    back whole (None when there is none). Without a readable state file, the
    `ckpt-<step>` files there are the list.

    Each newer one that does not is named in a warning. With `repair`, the state file
    then names the one returned as the newest, so that the resumed run writes the
    unreadable steps anew (their files stay on disk until then). Raises ConfigError
    when checkpoints are listed but none of them can be read.
    """
    try:
        state = tf.train.get_checkpoint_state(model_dir)
    except ValueError:  # a state file naming no checkpoint
        state = None
    if state is not None:
        listed = list(state.all_model_checkpoint_paths)
        times = list(state.all_model_checkpoint_timestamps)
        if state.model_checkpoint_path not in listed:
            listed.append(state.model_checkpoint_path)
        preserved = state.last_preserved_timestamp
    else:
        # No state file, or one that cannot be parsed (TF then ignores it): the
        # checkpoints on disk, oldest first, rather than silently none.
        found = tf.io.gfile.glob(os.path.join(model_dir, "ckpt-*.index"))
        numbered = [(int(m.group(1)), p[: -len(".index")]) for p in found if (m := _STEP.search(p))]
        listed = [p for _, p in sorted(numbered)]
        times, preserved = [], 0.0
    if len(times) != len(listed):
        times = [
            os.path.getmtime(p + ".index") if os.path.exists(p + ".index") else 0.0 for p in listed
        ]
    if not listed:
        return None
    broken = []
    for index in range(len(listed) - 1, -1, -1):
        prefix = listed[index]
        reason = unreadable(prefix)
        if reason is None:
            break
        logging.warning(
            "Checkpoint %s cannot be read back (%s); trying an older one.", prefix, reason
        )
        broken.append((prefix, reason))
    else:
        raise ConfigError(
            f"--model_dir={model_dir}: none of its checkpoints can be read back "
            f"({', '.join(os.path.basename(p) for p, _ in broken)}; the newest: {broken[0][1]}); "
            "move "
            "them away to start from step 0, or restore them from a copy."
        )
    if repair and (broken or state is None):
        # With their times, or the CheckpointManager would no longer list (nor sweep) them.
        tf.compat.v1.train.update_checkpoint_state(
            model_dir,
            prefix,
            all_model_checkpoint_paths=listed[: index + 1],
            all_model_checkpoint_timestamps=times[: index + 1],
            last_preserved_timestamp=preserved,
        )
    return prefix


def initialise(
    model: SimCLRModel, config: Config, released: AuthorsCheckpoint | None = None
) -> str:
    """Loads `config.checkpoint` (prefix, directory or SavedModel) into `model`.

    Fine-tuning and distillation take the encoder and projection head (a new
    supervised head); pretraining and evaluation take every weight there is.
    `released` is the authors' checkpoint at `config.checkpoint`, if it is theirs.
    """
    # A fine-tuning or distillation run starts a new supervised head; evaluating
    # (--mode=eval --checkpoint=...) a fine-tuned model takes its head too.
    new_head = config.train_mode != "pretrain" and config.mode != "eval"
    if released is not None:
        initialise_from_authors(model, config, released, new_head)
        return config.checkpoint
    layers = [model.encoder, model.projection_head]
    if not new_head and model.supervised_head is not None:
        layers.append(model.supervised_head)
    path = latest_checkpoint(config.checkpoint)
    if path is not None:
        if new_head:
            parts = tf.train.Checkpoint(
                encoder=model.encoder, projection_head=model.projection_head
            )
            status = tf.train.Checkpoint(model=parts).restore(path)
        else:
            # Evaluating a checkpoint also takes its step (the optimizer's iterations).
            status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(path)
        status.expect_partial()
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise ConfigError(
                f"--checkpoint={config.checkpoint}: it does not hold this model's weights "
                f"(another architecture?): {str(error).splitlines()[0][:200]}"
            ) from None
        return path
    export = latest_export(config.checkpoint)
    if export is None:
        raise ConfigError(
            f"--checkpoint={config.checkpoint}: no checkpoint or SavedModel there (give a prefix "
            "such as model_dir/ckpt-1000, a directory holding checkpoints, or "
            "model_dir/saved_model/<step>)."
        )
    try:
        restore_from_saved_model(export, layers)
    except ValueError as error:
        raise ConfigError(
            f"--checkpoint={config.checkpoint}: {error}; it was exported from another "
            "architecture (check --resnet_depth, --width_multiplier, --proj_head_mode)."
        ) from None
    return export


def initialise_from_authors(
    model: SimCLRModel, config: Config, released: AuthorsCheckpoint, new_head: bool
) -> None:
    theirs = released.architecture.num_classes
    take_head = not new_head and model.supervised_head is not None
    if take_head and theirs != model.num_classes:
        if config.mode == "eval" and not theirs:
            raise ConfigError(
                f"--checkpoint={config.checkpoint}: it has no supervised head to evaluate; "
                "fine-tune it first (--train_mode=finetune) or evaluate it linearly "
                "(--flagfile=simclr_tf2/recipes/linear_eval.flags)."
            )
        if config.mode == "eval":
            raise ConfigError(
                f"--checkpoint={config.checkpoint}: its supervised head predicts {theirs} "
                f"classes, the evaluation data has {model.num_classes}; evaluate it on data "
                "of its task, or fine-tune it first (--train_mode=finetune)."
            )
        take_head = False  # pretraining on other data: a new linear head
    try:
        released.load_into(model, supervised_head=take_head)
    except CompatError as error:
        raise ConfigError(f"--checkpoint={error}") from None
    if config.mode == "eval":
        # Evaluating a checkpoint reports its step (the optimizer's iterations).
        model.optimizer.iterations.assign(released.global_step)
