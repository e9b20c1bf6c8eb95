"""One way to build a run: `build_run(config, strategy) -> Run`.

`run.py` (through `train.run`), the tools and the tests build every run here:
the data sources checked against the config, the plan (steps, checkpoints,
warm-up), the model under the strategy and the precision policy (with the
teacher when distilling), its learning-rate schedule, optimizer and
weight-decay rule; the `Run` then makes the datasets and callbacks for `fit`.
Nothing here trains, restores or writes.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf
from absl import logging

from simclr_tf2.build import Plan, build_model, build_schedule, compile_model, dtype_policy
from simclr_tf2.callbacks import CheckpointSaver, KNNMonitor, Progress
from simclr_tf2.checkpoints import authors_checkpoint, check_agrees, load_teacher, read_config
from simclr_tf2.compat import AuthorsCheckpoint
from simclr_tf2.config import Config, ConfigError, validate
from simclr_tf2.data.pipeline import build_dataset, distributed_dataset
from simclr_tf2.data.source import same_data
from simclr_tf2.data.sources import Source, load_source
from simclr_tf2.data.splits import require_held_out
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import WarmUpAndCosineDecay
from simclr_tf2.precision import compute_dtype, resolve_precision, strategy_devices


@dataclasses.dataclass(frozen=True)
class Sources:
    """The data of a run: what it trains on, evaluates on, and the kNN monitor's
    queries (each None when the run does not need it)."""

    train: Source | None = None
    eval: Source | None = None
    knn_queries: Source | None = None


def _check_image_size(config: Config, source: Source) -> None:
    size = config.data.image_size
    if source.image_shape and size > 2 * min(source.image_shape[:2]):
        side = min(source.image_shape[:2])
        raise ConfigError(
            f"--image_size={size}: the images of {source.name} are "
            f"{source.image_shape[0]}x{source.image_shape[1]}; upscaling them more than 2x "
            f"is almost surely a mistake: use --image_size={side}."
        )


def _check_batch_fits_data(config: Config, source: Source, num_replicas: int) -> None:
    """A batch must not hold an image twice: its two copies' views would be each
    other's negatives in the contrastive loss (and a duplicate in any loss)."""
    batch = config.train.train_batch_size
    if batch > source.num_examples:
        largest = source.num_examples // num_replicas * num_replicas
        raise ConfigError(
            f"--train_batch_size={batch}: the training data ({source.name}, "
            f"--train_split={config.data.train_split}) holds {source.num_examples} examples, so "
            "a batch would hold images twice (an image's copies would be its own negatives); "
            f"use --train_batch_size={largest} or less."
        )


def _train_source(config: Config, verify_images: str) -> Source:
    """The training data `config` names (--dataset, --train_split and its subsets)."""
    d = config.data
    return load_source(
        d.dataset,
        d.train_split,
        d.data_dir,
        skip_bad_images=d.skip_bad_images,
        verify_images=verify_images,
        label_subset=d.label_subset,
        label_fraction=d.label_fraction,
        seed=config.runtime.seed,
    )


def _training_config(config: Config) -> Config | None:
    """The config of the training of what --mode=eval evaluates: the flags when
    watching --model_dir (they plan its steps), the config.json of --checkpoint
    when it is one of ours; None when not known (the authors' checkpoints)."""
    if not config.checkpoint:
        return config
    path = os.path.normpath(config.checkpoint)
    # A model_dir, a checkpoint prefix in one, or an export model_dir/saved_model/<step>.
    for folder in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        if tf.io.gfile.exists(os.path.join(folder, "config.json")):
            return read_config(folder)
    return None


def load_sources(config: Config, num_replicas: int = 1) -> Sources:
    """The sources `config.mode` needs, each checked for the labels its use needs,
    the training data for holding a whole batch of `num_replicas` replicas, and the
    evaluation data (and the kNN monitor's queries) for holding no training image.

    Raises:
        ConfigError / DataError: a split that is not there, labels that are missing,
            images far smaller than --image_size, evaluation on training images.
    """
    d = config.data
    training = config.mode in ("train", "train_then_eval")
    evaluating = config.mode in ("eval", "train_then_eval")
    watching = config.mode == "eval" and not config.checkpoint
    train = eval_ = knn_queries = None

    # The watcher needs the training set's size to know the final step.
    if training or (watching and not config.train.train_steps):
        train = _train_source(config, d.verify_images if training else "header")
        _check_image_size(config, train)
        linear_head = config.model.lineareval_while_pretraining
        if training and config.train_mode == "finetune":
            train.require_classes("fine-tuning")
        elif training and config.train_mode == "distill" and config.distill.distill_label_weight:
            train.require_classes("--distill_label_weight")
        elif training and linear_head and train.num_classes is not None:
            train.require_classes("--lineareval_while_pretraining")
        if training:  # after the labels: a folder of one class is the first thing to say
            _check_batch_fits_data(config, train, num_replicas)

    def eval_split() -> Source:
        return load_source(
            d.eval_dataset or d.dataset,
            d.eval_split,
            d.data_dir,
            skip_bad_images=d.skip_bad_images,
            verify_images=d.verify_images,
            split_flag="--eval_split",
        )

    if evaluating:
        eval_ = eval_split()
        linear_head = config.model.lineareval_while_pretraining and (
            train is None or train.num_classes is not None
        )
        if config.train_mode != "pretrain" or linear_head:
            eval_.require_classes("evaluation (--eval_split)")
        _check_image_size(config, eval_)
        trained = config if training else _training_config(config)
        if trained is not None and same_data(trained.data.dataset, eval_.name):
            same = train is not None and trained is config
            require_held_out(train if same else _train_source(trained, "header"), eval_)
    if training and config.knn.knn_eval_every:
        train.require_classes("the kNN monitor (--knn_eval_every)")
        knn_queries = eval_ or eval_split()
        knn_queries.require_classes("the kNN monitor (--knn_eval_every)")
        require_held_out(train, knn_queries, "the kNN monitor (--knn_eval_every)")
    return Sources(train, eval_, knn_queries)


@dataclasses.dataclass
class Run:
    """A built run: the model compiled with its optimizer and schedule, the plan,
    the data; `train_dataset`, `eval_dataset` and `callbacks` make what `fit` and
    `evaluate` take."""

    config: Config
    strategy: tf.distribute.Strategy
    plan: Plan
    sources: Sources
    model: SimCLRModel
    schedule: WarmUpAndCosineDecay
    # The authors' checkpoint at --checkpoint (None when it is ours or there is none).
    released: AuthorsCheckpoint | None = None
    # The precision the model computes in: --mixed_precision, "auto" resolved.
    precision: str = "none"

    @property
    def optimizer(self) -> keras.optimizers.Optimizer:
        return self.model.optimizer

    @property
    def step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def checkpoint(self) -> tf.train.Checkpoint:
        """What a checkpoint of this run holds: the model and its optimizer."""
        return tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)

    def _views(self) -> dict:
        d = self.config.data
        return dict(
            image_size=d.image_size,
            color_jitter_strength=d.color_jitter_strength,
            use_blur=d.use_blur,
            cache=d.cache_dataset,
        )

    def train_dataset(self, start_step: int = 0) -> tf.distribute.DistributedDataset:
        """The training batches, per replica, for a run resumed at `start_step`."""
        c = self.config
        if c.runtime.deterministic:
            # The stream of a run never interrupted, from the first example it has
            # not trained on yet: a resumed run trains on exactly the same batches.
            seed, start = c.runtime.seed, start_step * c.train.train_batch_size
        else:
            # Cheap: a new stream (order and views) rather than reading through the
            # consumed examples; it does not repeat the first batches either.
            seed, start = c.runtime.seed + 7919 * start_step, 0
        return distributed_dataset(
            self.strategy,
            self.sources.train,
            c.train.train_batch_size,
            # A student sees what a fine-tuned model sees: crop + flip.
            mode="pretrain" if c.train_mode == "pretrain" else "finetune",
            seed=seed,
            deterministic=c.runtime.deterministic,
            start=start,
            **self._views(),
        )

    def eval_dataset(self) -> tuple[tf.distribute.DistributedDataset, int | None]:
        """(batches, steps) of the evaluation. With a supervised head: centre-cropped
        images; a pretraining model without one is evaluated on its own task, two
        augmented views (fixed seed) per image, one pass over the split."""
        c = self.config
        two_views = self.model.supervised_head is None and c.train_mode == "pretrain"
        dataset = distributed_dataset(
            self.strategy,
            self.sources.eval,
            c.train.eval_batch_size,
            mode="pretrain" if two_views else "eval",
            seed=c.runtime.seed,
            deterministic=True,
            **self._views(),
        )
        steps = c.train.eval_steps or None
        if two_views:
            # A pretraining dataset repeats; one pass over the split.
            batches = max(1, self.sources.eval.num_examples // c.train.eval_batch_size)
            steps = c.train.eval_steps or batches
        return dataset, steps

    def evaluated(self, steps: int | None) -> dict:
        """What an evaluation of `steps` batches (None: one pass) reads, as result.json
        records it: the dataset, the split and the number of images."""
        source = self.sources.eval
        count = source.num_examples
        if steps is not None:
            count = min(count, steps * self.config.train.eval_batch_size)
        return {"dataset": source.name, "split": source.split, "count": count}

    def callbacks(
        self, manager: tf.train.CheckpointManager, out_dir: str, bar: bool
    ) -> tuple[CheckpointSaver, list]:
        """(the checkpoint saver, every callback of `fit`), writing into `out_dir`."""
        c = self.config
        saver = CheckpointSaver(manager, self.plan.total_steps)
        callbacks = [
            saver,
            Progress(self.plan.total_steps, c.train.train_batch_size, bar=bar),
            keras.callbacks.TensorBoard(
                log_dir=out_dir, update_freq=max(1, self.plan.checkpoint_every // 10)
            ),
        ]
        if self.sources.knn_queries is not None:
            callbacks.insert(0, self._knn_monitor(out_dir))
        return saver, callbacks

    def _knn_monitor(self, out_dir: str) -> KNNMonitor:
        """The kNN monitor of --knn_eval_every: eval views of a spread-out training
        subset (at most --knn_bank_size) against the eval split."""
        c, train = self.config, self.sources.train
        views = dict(image_size=c.data.image_size, mode="eval")
        stride = max(1, -(-train.num_examples // c.knn.knn_bank_size))
        return KNNMonitor(
            build_dataset(train, c.train.eval_batch_size, every=stride, **views),
            build_dataset(self.sources.knn_queries, c.train.eval_batch_size, **views),
            train.num_classes,
            c.knn.knn_eval_every * self.plan.steps_per_epoch,
            os.path.join(out_dir, "train"),
            c.knn.knn_k,
            c.knn.knn_temperature,
        )

    def write_view_images(self, out_dir: str, step: int, pairs: int = 4) -> None:
        """A few augmented view pairs (view 1 | view 2) as TensorBoard images in train/."""
        d = self.config.data
        dataset = build_dataset(
            self.sources.train,
            pairs,
            d.image_size,
            mode="pretrain",
            color_jitter_strength=d.color_jitter_strength,
            use_blur=d.use_blur,
            seed=self.config.runtime.seed + step,
            shuffle_buffer=64,
        )
        batch = next(iter(dataset))
        views = batch[0] if isinstance(batch, tuple) else batch
        side_by_side = tf.concat(tf.split(views, 2, axis=-1), axis=2)
        writer = tf.summary.create_file_writer(os.path.join(out_dir, "train"))
        with writer.as_default(step=step):
            tf.summary.image("augmented_views", side_by_side, max_outputs=pairs)
        writer.close()


def _num_classes(config: Config, sources: Sources) -> int | None:
    """Classes of the supervised head: the data's, unless pretraining without one."""
    source = sources.train or sources.eval
    num_classes = source.num_classes if source else None
    pretraining = config.train_mode == "pretrain"
    if pretraining and not config.model.lineareval_while_pretraining:
        return None
    if pretraining and not num_classes and source is not None:
        logging.warning(
            "%s has no labels: no linear evaluation while pretraining.", config.data.dataset
        )
    return num_classes


def released_checkpoint(config: Config) -> AuthorsCheckpoint | None:
    """The authors' checkpoint at --checkpoint, checked against the architecture flags
    (None when --checkpoint is ours or unset)."""
    released = authors_checkpoint("checkpoint", config.checkpoint) if config.checkpoint else None
    if released is not None:
        check_agrees(config, released)
        logging.info("--checkpoint is the authors': %s", released.architecture.describe())
    return released


def build_run(
    config: Config,
    strategy: tf.distribute.Strategy | None = None,
    sources: Sources | None = None,
    released: AuthorsCheckpoint | None = None,
) -> Run:
    """Builds the run `config` describes under `strategy` (default: the current one).

    `sources` replaces the data the config names (a tool's own arrays, say); by
    default they are loaded and checked (`load_sources`). `released` is
    `released_checkpoint(config)` when the caller has it already. The model is built and
    compiled, with the teacher when distilling; nothing is restored or written.

    Raises:
        ConfigError / DataError: a setting, the data, --checkpoint or --teacher is
            wrong (all before any compute).
    """
    strategy = strategy or tf.distribute.get_strategy()
    validate(config, strategy.num_replicas_in_sync)
    if released is None:
        released = released_checkpoint(config)
    sources = sources or load_sources(config, strategy.num_replicas_in_sync)
    num_classes = _num_classes(config, sources)
    plan = Plan.of(config, sources.train.num_examples if sources.train else None)
    training = config.mode in ("train", "train_then_eval")
    asked = config.runtime.mixed_precision
    precision, reason = resolve_precision(asked, strategy_devices(strategy))
    if asked == "auto":
        logging.info("Precision %s: %s.", compute_dtype(precision), reason)
    with strategy.scope(), dtype_policy(precision):
        teacher = None
        if config.train_mode == "distill" and training:
            teacher, teacher_classes, where = load_teacher(
                config.distill.teacher, config.model.ft_proj_selector, config.data.image_size
            )
            if num_classes and num_classes != teacher_classes:
                raise ConfigError(
                    f"--teacher={config.distill.teacher}: it predicts {teacher_classes} classes, "
                    f"but {config.data.dataset} has {num_classes}; distil on data of the "
                    "teacher's task."
                )
            num_classes = teacher_classes
            logging.info("Teacher: %s (%d classes).", where, teacher_classes)
        model = build_model(config, num_classes)
        if teacher is not None:
            model.set_teacher(teacher)
        schedule = build_schedule(config, plan)
        compile_model(model, config, schedule)
    return Run(config, strategy, plan, sources, model, schedule, released, precision)
