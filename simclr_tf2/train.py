"""A whole run from one Config: train / eval / train_then_eval, pretrain / finetune /
distill.

`run(config)` loads the data, builds the model under the strategy, resumes
from the newest checkpoint in `model_dir` (or starts fine-tuning from
`config.checkpoint`; a distillation student also loads its `config.teacher`),
trains with `model.fit`, saves checkpoints every
`checkpoint_steps` / `checkpoint_epochs`, evaluates, and writes
`config.json`, `result.json` and `result_<step>.json` into `model_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf2.callbacks import KNNMonitor
from simclr_tf2.compat import AuthorsCheckpoint, CompatError
from simclr_tf2.compat import find as find_authors_checkpoint
from simclr_tf2.config import Config, ConfigError, validate
from simclr_tf2.data.pipeline import build_dataset, distributed_dataset
from simclr_tf2.data.sources import DataError, Source, load_source
from simclr_tf2.distribute import Cluster, cluster_of, describe
from simclr_tf2.export import export_step, latest_export, restore_from_saved_model
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import WarmUpAndCosineDecay, build_optimizer, warmup_steps_for


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says why."""


class WorkerLostError(RuntimeError):
    """Another worker of a multi-worker run died or became unreachable."""


# What TensorFlow raises in this process when a peer of a collective is gone.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
)


@contextlib.contextmanager
def _peers_watched(cluster: Cluster, model_dir: str):
    """Turns a lost peer's collective error into one clear WorkerLostError."""
    if cluster.num_workers == 1:
        yield
        return
    try:
        yield
    except _PEER_ERRORS as error:
        text = str(error)
        me = (cluster.task_type, str(cluster.task_id))
        peers = [p for p in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text) if p != me]
        who = " ".join(peers[0]) if peers else "another worker"
        why = [
            re.sub(r"\{\{.*?\}\}\s*", "", line).strip()
            for line in text.splitlines()
            if re.search(r"crash|closed|unavailable|heartbeat|timed out|connect", line, re.I)
        ]
        latest = tf.train.latest_checkpoint(model_dir) or "none yet"
        raise WorkerLostError(
            f"{cluster.task_type} {cluster.task_id}: {who} died or became unreachable"
            f"{' (' + why[0][:160] + ')' if why else ''}; stopping. Restart every worker with "
            f"the same command and TF_CONFIG to resume from the last checkpoint ({latest})."
        ) from None


@contextlib.contextmanager
def _undecodable_images_named(config: Config):
    """An image that passed the quick header check but cannot be decoded stops the
    run with what to do, instead of a tf.data traceback."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        text = error.message
        if not re.search(r"decod|jpeg|png|gif|bmp|image", text, re.I):
            raise
        first = next((line for line in text.splitlines() if line.strip()), "")
        raise DataError(
            f"--dataset={config.dataset}: an image could not be decoded ({first[:160]}); the "
            f"--verify_images={config.verify_images} check let it through. Re-run with "
            "--verify_images=decode to find and name such files before training, and "
            "--skip_bad_images to skip them."
        ) from None


@contextlib.contextmanager
def _dtype_policy(name: str):
    """Builds layers under the `name` mixed-precision policy, then restores the old one."""
    if name == "none":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _n_params(variables) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def build_model(config: Config, num_classes: int | None) -> SimCLRModel:
    """The SimCLRModel a config describes (call inside the strategy's scope)."""
    return SimCLRModel(
        num_classes=num_classes,
        train_mode=config.train_mode,
        resnet_depth=config.resnet_depth,
        width_multiplier=config.width_multiplier,
        cifar_stem=config.cifar_stem,
        sk_ratio=config.sk_ratio,
        se_ratio=config.se_ratio,
        global_bn=config.global_bn,
        batch_norm_decay=config.batch_norm_decay,
        proj_head_mode=config.proj_head_mode,
        proj_out_dim=config.proj_out_dim,
        num_proj_layers=config.num_proj_layers,
        ft_proj_selector=config.ft_proj_selector,
        temperature=config.temperature,
        hidden_norm=config.hidden_norm,
        lineareval_while_pretraining=config.lineareval_while_pretraining,
        fine_tune_after_block=config.fine_tune_after_block,
        weight_decay=config.weight_decay,
        zero_init_logits_layer=config.zero_init_logits_layer,
        distill_temperature=config.distill_temperature,
        distill_label_weight=config.distill_label_weight,
    )


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
    config_path = os.path.join(os.path.dirname(prefix), "config.json")
    if not tf.io.gfile.exists(config_path):
        raise ConfigError(f"no config.json beside {prefix} to rebuild the model from.")
    with tf.io.gfile.GFile(config_path) as f:
        config = Config(**json.load(f))
    num_classes = None if encoder_only else _classes_in_checkpoint(prefix)
    if not num_classes:
        # No supervised head to rebuild: the encoder and projection head of a pretraining.
        config = dataclasses.replace(
            config, train_mode="pretrain", lineareval_while_pretraining=False
        )
    model = build_model(config, num_classes)
    model.build((None, config.image_size, config.image_size, 3))
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


def _check_image_size(config: Config, source: Source) -> None:
    if source.image_shape and config.image_size > 2 * min(source.image_shape[:2]):
        side = min(source.image_shape[:2])
        raise ConfigError(
            f"--image_size={config.image_size}: the images of {source.name} are "
            f"{source.image_shape[0]}x{source.image_shape[1]}; upscaling them more than 2x "
            f"is almost surely a mistake: use --image_size={side}."
        )


def authors_checkpoint(flag: str, path: str) -> AuthorsCheckpoint | None:
    """The authors' TF2 checkpoint or SavedModel at `path` (None if it is not theirs);
    ConfigError naming `flag` when it cannot be read."""
    if find_authors_checkpoint(path) is None:
        return None
    try:
        return AuthorsCheckpoint(path)
    except CompatError as error:
        raise ConfigError(f"--{flag}={error}") from None


def _check_agrees(config: Config, released: AuthorsCheckpoint) -> None:
    """The architecture flags must describe the authors' checkpoint being loaded."""
    arch = released.architecture
    for flag, value in arch.flags().items():
        given = getattr(config, flag)
        if given != value:
            raise ConfigError(
                f"--{flag}={given}: --checkpoint={config.checkpoint} has {flag}={value} "
                f"({arch.describe()}); give --{flag}={value}."
            )
    if config.cifar_stem != arch.cifar_stem:
        raise ConfigError(
            f"--image_size={config.image_size}: --checkpoint={config.checkpoint} has "
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
    config = Config(
        model_dir=out_dir,
        checkpoint=path,
        image_size=image_size or released.default_image_size(),
        train_mode=kwargs["train_mode"],
        lineareval_while_pretraining=kwargs["lineareval_while_pretraining"],
        ft_proj_selector=ft_proj_selector,
        **released.architecture.flags(),
    )
    validate(config)
    _check_agrees(config, released)
    model = build_model(config, released.architecture.num_classes)
    model.build((None, config.image_size, config.image_size, 3))
    try:
        released.load_into(model)
    except CompatError as error:
        raise ConfigError(f"--checkpoint={error}") from None
    differences = {}
    if released.variables.kind == "saved_model":
        differences = released.compare_with_saved_model(model, config.image_size)
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
    model.compile(
        optimizer=build_optimizer(
            config.optimizer, config.learning_rate, config.momentum, config.weight_decay
        )
    )
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(step)
    tf.io.gfile.makedirs(out_dir)
    write_json(os.path.join(out_dir, "config.json"), json.loads(config.to_json()))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer), out_dir, max_to_keep=1
    )
    prefix = manager.save(checkpoint_number=step)
    export = export_step(model, out_dir, step, config.keep_hub_module_max)
    return Imported(released, config, prefix, export, differences)


def latest_checkpoint(path: str) -> str | None:
    """A checkpoint prefix from a prefix or a directory of checkpoints (None if neither)."""
    if tf.io.gfile.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


class _Checkpointing(keras.callbacks.Callback):
    """Saves every epoch (= checkpoint interval), stops at the planned step, and
    stops without saving when the loss is not finite."""

    def __init__(self, manager: tf.train.CheckpointManager, total_steps: int):
        super().__init__()
        self.manager = manager
        self.total_steps = total_steps
        self.bad_step = None
        self.bad_value = None

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("total_loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step, self.bad_value = self._step(), float(loss)
            self.model.stop_training = True
        elif self._step() >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_step is None:
            self.save()

    def save(self) -> None:
        step = self._step()
        if self.manager.latest_checkpoint != f"{self.manager.directory}/ckpt-{step}":
            path = self.manager.save(checkpoint_number=step)
            logging.info("Saved checkpoint %s", path)


class _Progress(keras.callbacks.Callback):
    """Pairs/s and ETA: added to the progress bar's logs on a terminal, and
    logged as one concise line every `every_s` seconds otherwise."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int, log_lines: bool):
        super().__init__()
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.start_step = start_step
        self.log_lines = log_lines
        self.every_s = 30.0
        self._t0 = self._last = None
        self._step0 = start_step
        self._timing = False

    def on_train_begin(self, logs=None):
        self._t0 = self._last = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if logs is None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        now = time.time()
        if not self._timing:  # the first step includes tracing: start the clock after it
            self._timing = True
            self._t0, self._step0 = now, step
            return
        if step <= self._step0:
            return
        rate = (step - self._step0) / (now - self._t0)
        logs["pairs_per_s"] = rate * self.batch_size
        if not self.log_lines or (now - self._last < self.every_s and step < self.total_steps):
            return
        self._last = now
        eta = (self.total_steps - step) / rate
        parts = [f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.0f}%)"]
        parts += [
            f"{key} {float(logs[key]):.4g}"
            for key in (
                "total_loss",
                "contrast_acc",
                "supervised_acc",
                "teacher_agreement",
                "learning_rate",
            )
            if key in logs
        ]
        parts.append(f"{logs['pairs_per_s']:.1f} pairs/s")
        parts.append(
            "ETA "
            + (
                time.strftime("%H:%M:%S", time.gmtime(eta))
                if eta < 86400
                else f"{eta / 3600:.0f} h"
            )
        )
        logging.info("%s", ", ".join(parts))


def _write_view_images(config: Config, source: Source, step: int, pairs: int = 4) -> None:
    """A few augmented view pairs (view 1 | view 2) as TensorBoard images in train/."""
    dataset = build_dataset(
        source,
        pairs,
        config.image_size,
        mode="pretrain",
        color_jitter_strength=config.color_jitter_strength,
        use_blur=config.use_blur,
        seed=config.seed + step,
        shuffle_buffer=64,
    )
    batch = next(iter(dataset))
    views = batch[0] if isinstance(batch, tuple) else batch
    side_by_side = tf.concat(tf.split(views, 2, axis=-1), axis=2)
    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
    with writer.as_default(step=step):
        tf.summary.image("augmented_views", side_by_side, max_outputs=pairs)
    writer.close()


def _knn_monitor(
    config: Config, train_source: Source, queries: Source, out_dir: str, steps_per_epoch: int
) -> KNNMonitor:
    """The kNN monitor of --knn_eval_every: eval views of a spread-out training subset
    (at most --knn_bank_size) against the eval split."""
    views = dict(image_size=config.image_size, mode="eval")
    stride = max(1, -(-train_source.num_examples // config.knn_bank_size))
    return KNNMonitor(
        build_dataset(train_source, config.eval_batch_size, every=stride, **views),
        build_dataset(queries, config.eval_batch_size, **views),
        train_source.num_classes,
        config.knn_eval_every * steps_per_epoch,
        os.path.join(out_dir, "train"),
        config.knn_k,
        config.knn_temperature,
    )


def write_json(path: str, data: dict) -> None:
    """`data` as indented JSON at `path`, replaced whole (never half written)."""
    # Written to a temporary file and renamed, so a crash never leaves half a file.
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def evaluate(
    model: SimCLRModel,
    source: Source,
    config: Config,
    strategy: tf.distribute.Strategy,
    model_dir: str,
    started: float,
) -> dict:
    """Evaluates on `source`, writes result.json / result_<step>.json and eval events.

    With a supervised head: top-1 / top-5 on centre-cropped images. A
    pretraining model without one is evaluated on its own task: contrastive
    loss and accuracy on two augmented views (fixed seed) of the eval split.
    """
    step = int(model.optimizer.iterations.numpy())
    two_views = model.supervised_head is None and config.train_mode == "pretrain"
    dataset = distributed_dataset(
        strategy,
        source,
        config.eval_batch_size,
        image_size=config.image_size,
        mode="pretrain" if two_views else "eval",
        color_jitter_strength=config.color_jitter_strength,
        use_blur=config.use_blur,
        seed=config.seed,
        cache=config.cache_dataset,
        deterministic=True,
    )
    steps = config.eval_steps or None
    if two_views:
        # A pretraining dataset repeats; one pass over the split.
        steps = config.eval_steps or max(1, source.num_examples // config.eval_batch_size)
    metrics = model.evaluate(dataset, steps=steps, verbose=0, return_dict=True)
    result = {
        "global_step": step,
        "wall_clock_seconds": round(time.time() - started, 1),
        **{k: float(v) for k, v in metrics.items()},
    }
    if "supervised_acc" in metrics:
        result["top_1_accuracy"] = float(metrics["supervised_acc"])
        result["top_5_accuracy"] = float(metrics["supervised_top5_acc"])
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "eval"))
    with writer.as_default(step=step):
        for key, value in metrics.items():
            tf.summary.scalar(key, value)
    writer.close()
    write_json(os.path.join(model_dir, f"result_{step}.json"), result)
    write_json(os.path.join(model_dir, "result.json"), result)
    logging.info("Evaluation at step %d: %s", step, result)
    return result


def _export(model: SimCLRModel, config: Config, out_dir: str | None = None) -> str:
    step = int(model.optimizer.iterations.numpy())
    path = export_step(model, out_dir or config.model_dir, step, config.keep_hub_module_max)
    logging.info("Exported SavedModel %s", path)
    return path


def _initialise(
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
        _initialise_from_authors(model, config, released, new_head)
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


def _initialise_from_authors(
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


def _plan(config: Config, train_source: Source | None) -> tuple[int, int, int, int]:
    """(examples per epoch, steps per epoch, total steps, steps between checkpoints)."""
    examples = train_source.num_examples if train_source else config.train_batch_size
    steps_per_epoch = max(1, examples // config.train_batch_size)
    total_steps = config.train_steps or config.train_epochs * steps_per_epoch
    every = config.checkpoint_steps or config.checkpoint_epochs * steps_per_epoch
    every = max(1, min(every, total_steps))
    # Keras runs whole executions of steps_per_execution steps: intervals from
    # epochs are rounded to them (validate() rejects explicit steps that aren't).
    spe = config.steps_per_execution
    if total_steps % spe or every % spe:
        rounded = max(spe, total_steps // spe * spe), max(spe, every // spe * spe)
        logging.info(
            "%d steps with checkpoints every %d, rounded to %d and %d: whole executions of "
            "--steps_per_execution=%d.",
            total_steps,
            every,
            *rounded,
            spe,
        )
        total_steps, every = rounded
    return examples, steps_per_epoch, total_steps, every


def run(config: Config, eval_dataset: str | None = None, strategy=None) -> dict | None:
    """Runs what `config.mode` says; returns the last evaluation result, if any.

    Raises:
        ConfigError / DataError: a setting or the data is wrong (before any compute,
            except an image that passes the header check but cannot be decoded).
        TrainingError: the loss became non-finite.
    """
    started = time.time()
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    validate(config, replicas)
    if not config.model_dir:
        raise ConfigError("--model_dir=None: set where checkpoints and results go.")
    training = config.mode in ("train", "train_then_eval")
    evaluating = config.mode in ("eval", "train_then_eval")
    watching = config.mode == "eval" and not config.checkpoint
    if watching and not (
        tf.train.latest_checkpoint(config.model_dir)
        or tf.io.gfile.exists(os.path.join(config.model_dir, "config.json"))
    ):
        # Neither a checkpoint nor a training run that started (it writes config.json first).
        raise ConfigError(
            f"--mode=eval: no checkpoint in --model_dir={config.model_dir} and no training run "
            "started there; start --mode=train first, or give --checkpoint."
        )

    # The authors' checkpoint to start from, checked against the flags before any data.
    released = authors_checkpoint("checkpoint", config.checkpoint) if config.checkpoint else None
    if released is not None:
        _check_agrees(config, released)
        logging.info("--checkpoint is the authors': %s", released.architecture.describe())

    train_source = eval_source = None
    # The watcher needs the training set's size to know the final step.
    if training or (watching and not config.train_steps):
        train_source = load_source(
            config.dataset,
            config.train_split,
            config.data_dir,
            skip_bad_images=config.skip_bad_images,
            verify_images=config.verify_images if training else "header",
            label_subset=config.label_subset,
            label_fraction=config.label_fraction,
            seed=config.seed,
        )
        _check_image_size(config, train_source)
        if training and config.train_mode == "finetune":
            train_source.require_classes("fine-tuning")
        elif training and config.train_mode == "distill" and config.distill_label_weight:
            train_source.require_classes("--distill_label_weight")
        elif (
            training
            and config.lineareval_while_pretraining
            and train_source.num_classes is not None
        ):
            train_source.require_classes("--lineareval_while_pretraining")

    def load_eval_split() -> Source:
        return load_source(
            eval_dataset or config.dataset,
            config.eval_split,
            config.data_dir,
            skip_bad_images=config.skip_bad_images,
            verify_images=config.verify_images,
            split_flag="--eval_split",
        )

    if evaluating:
        eval_source = load_eval_split()
        linear_head = config.lineareval_while_pretraining and (
            train_source is None or train_source.num_classes is not None
        )
        if config.train_mode != "pretrain" or linear_head:
            eval_source.require_classes("evaluation (--eval_split)")
        _check_image_size(config, eval_source)
    knn_queries = None
    if training and config.knn_eval_every:
        train_source.require_classes("the kNN monitor (--knn_eval_every)")
        knn_queries = eval_source or load_eval_split()
        knn_queries.require_classes("the kNN monitor (--knn_eval_every)")
    num_classes = (train_source or eval_source).num_classes
    if config.train_mode == "pretrain" and not config.lineareval_while_pretraining:
        num_classes = None
    if config.lineareval_while_pretraining and config.train_mode == "pretrain" and not num_classes:
        logging.warning("%s has no labels: no linear evaluation while pretraining.", config.dataset)

    cluster = cluster_of(strategy)
    tf.io.gfile.makedirs(config.model_dir)
    if training and cluster.is_chief:
        write_json(os.path.join(config.model_dir, "config.json"), json.loads(config.to_json()))
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    examples, steps_per_epoch, total_steps, every = _plan(config, train_source)
    warmup = min(
        warmup_steps_for(config.warmup_epochs, examples, config.train_batch_size), total_steps
    )

    with strategy.scope(), _dtype_policy(config.mixed_precision):
        teacher = None
        if config.train_mode == "distill" and training:
            teacher, teacher_classes, where = load_teacher(
                config.teacher, config.ft_proj_selector, config.image_size
            )
            if num_classes and num_classes != teacher_classes:
                raise ConfigError(
                    f"--teacher={config.teacher}: it predicts {teacher_classes} classes, but "
                    f"{config.dataset} has {num_classes}; distil on data of the teacher's task."
                )
            num_classes = teacher_classes
            logging.info("Teacher: %s (%d classes).", where, teacher_classes)
        model = build_model(config, num_classes)
        model.build((None, config.image_size, config.image_size, 3))
        if teacher is not None:
            model.set_teacher(teacher)
        schedule = WarmUpAndCosineDecay(
            config.learning_rate,
            config.train_batch_size,
            total_steps,
            warmup,
            config.learning_rate_scaling,
        )
        model.compile(
            optimizer=build_optimizer(
                config.optimizer, schedule, config.momentum, config.weight_decay
            ),
            jit_compile=config.jit_compile,
            steps_per_execution=config.steps_per_execution,
        )
        # With mixed_float16, compile wrapped the optimizer for loss scaling.
        model.optimizer.build(model.trainable_variables)

    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    if watching:
        return _watch(model, checkpoint, config, eval_source, strategy, total_steps, started)
    latest = tf.train.latest_checkpoint(config.model_dir)
    if latest and config.mode != "eval":
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Restored %s", latest)
    elif config.checkpoint:
        logging.info("Initialised from %s", _initialise(model, config, released))
    start_step = int(model.optimizer.iterations.numpy())

    logging.info(
        "Strategy %s with %d replica(s); batch %d per replica, %d global; precision %s%s; "
        "encoder %s parameters, heads %s; %d steps planned (%.2f epochs of %d examples), "
        "from step %d.",
        describe(strategy),
        replicas,
        config.train_batch_size // replicas,
        config.train_batch_size,
        config.mixed_precision,
        ", XLA" if config.jit_compile else "",
        f"{_n_params(model.encoder.weights):,}",
        f"{_n_params(model.weights) - _n_params(model.encoder.weights):,}",
        total_steps,
        total_steps / steps_per_epoch,
        examples,
        start_step,
    )

    # Every worker saves, exports and evaluates (they are collective); only the
    # chief writes into model_dir, the others into a directory removed at the end.
    out_dir = config.model_dir
    if not cluster.is_chief:
        out_dir = tempfile.mkdtemp(prefix=f"simclr_{cluster.task_type}{cluster.task_id}_")
    try:
        with _peers_watched(cluster, config.model_dir), _undecodable_images_named(config):
            return _train_and_evaluate(
                model,
                checkpoint,
                config,
                strategy,
                train_source if training else None,
                eval_source,
                out_dir,
                start_step,
                total_steps,
                every,
                started,
                knn_queries,
                steps_per_epoch,
            )
    finally:
        if out_dir != config.model_dir:
            shutil.rmtree(out_dir, ignore_errors=True)


def _train_and_evaluate(
    model: SimCLRModel,
    checkpoint: tf.train.Checkpoint,
    config: Config,
    strategy: tf.distribute.Strategy,
    train_source: Source | None,
    eval_source: Source | None,
    out_dir: str,
    start_step: int,
    total_steps: int,
    every: int,
    started: float,
    knn_queries: Source | None = None,
    steps_per_epoch: int = 1,
) -> dict | None:
    """Trains (when `train_source`), exports and evaluates (when `eval_source`),
    writing checkpoints, events, exports and results into `out_dir`; with
    `knn_queries`, a kNN monitor reports every `config.knn_eval_every` epochs."""
    chief = out_dir == config.model_dir
    manager = tf.train.CheckpointManager(
        checkpoint, out_dir, max_to_keep=config.keep_checkpoint_max
    )
    if train_source is not None and start_step < total_steps:
        dataset = distributed_dataset(
            strategy,
            train_source,
            config.train_batch_size,
            image_size=config.image_size,
            # A student sees what a fine-tuned model sees: crop + flip.
            mode="pretrain" if config.train_mode == "pretrain" else "finetune",
            color_jitter_strength=config.color_jitter_strength,
            use_blur=config.use_blur,
            # A resumed run continues with new views rather than repeating the first ones.
            seed=config.seed + 7919 * start_step,
            cache=config.cache_dataset,
            deterministic=config.deterministic,
        )
        if config.train_mode == "pretrain" and chief:
            _write_view_images(config, train_source, start_step)
        saver = _Checkpointing(manager, total_steps)
        terminal = sys.stdout.isatty()
        callbacks = [
            saver,
            _Progress(total_steps, config.train_batch_size, start_step, log_lines=not terminal),
            keras.callbacks.TensorBoard(log_dir=out_dir, update_freq=max(1, every // 10)),
        ]
        if knn_queries is not None:
            monitor = _knn_monitor(config, train_source, knn_queries, out_dir, steps_per_epoch)
            callbacks.insert(0, monitor)
        model.fit(
            dataset,
            steps_per_epoch=every,
            epochs=math.ceil(total_steps / every),
            initial_epoch=start_step // every,
            callbacks=callbacks,
            verbose=1 if terminal else 0,
            shuffle=False,  # the input pipeline shuffles
        )
        if saver.bad_step is not None:
            raise TrainingError(
                f"the loss became {saver.bad_value} at step {saver.bad_step}; stopped without "
                f"saving, the last good checkpoint ({manager.latest_checkpoint}) is kept. Likely "
                "causes: a learning rate too high (--learning_rate) or a temperature too low "
                "(--temperature)."
            )
        saver.save()
    if train_source is not None:
        _export(model, config, out_dir)
    result = None
    if eval_source is not None:
        result = evaluate(model, eval_source, config, strategy, out_dir, started)
        if train_source is None:
            _export(model, config, out_dir)
    logging.info("Outputs are in %s", out_dir)
    return result


def _watch(
    model: SimCLRModel,
    checkpoint: tf.train.Checkpoint,
    config: Config,
    eval_source: Source,
    strategy: tf.distribute.Strategy,
    total_steps: int,
    started: float,
) -> dict | None:
    """--mode=eval: evaluates each new checkpoint in model_dir until the final step."""
    result = None
    timeout = config.eval_timeout or None
    logging.info(
        "Watching %s for checkpoints up to step %d (timeout %s s).",
        config.model_dir,
        total_steps,
        timeout,
    )
    for path in tf.train.checkpoints_iterator(
        config.model_dir, min_interval_secs=1, timeout=timeout
    ):
        try:
            checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        except (tf.errors.NotFoundError, tf.errors.DataLossError) as error:
            # Swept by the trainer (keep_checkpoint_max) before we read it.
            logging.warning("Skipping %s: %s", path, str(error).splitlines()[0])
            continue
        result = evaluate(model, eval_source, config, strategy, config.model_dir, started)
        _export(model, config)
        if result["global_step"] >= total_steps:
            break
    else:
        if result is None:
            raise ConfigError(
                f"--mode=eval: no checkpoint appeared in --model_dir={config.model_dir} within "
                f"--eval_timeout={config.eval_timeout} s."
            )
        logging.warning(
            "No new checkpoint within --eval_timeout=%d s; the last one evaluated is step %d "
            "of %d.",
            config.eval_timeout,
            result["global_step"],
            total_steps,
        )
    logging.info("Outputs are in %s", config.model_dir)
    return result
