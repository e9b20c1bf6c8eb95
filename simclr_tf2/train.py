"""A whole run from one Config: train / eval / train_then_eval, pretrain / finetune /
distill.

`run(config, strategy)` reads top to bottom: plan (check the settings, the
model_dir and the data) -> build (`assembly.build_run`) -> restore (the newest
checkpoint in `model_dir`, or `--checkpoint` to start from) -> fit (checkpoints
every `checkpoint_steps` / `checkpoint_epochs`) -> evaluate -> export, writing
`config.json`, `result.json` and `result_<step>.json` into `model_dir`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

from simclr_tf2.assembly import Run, build_run, load_sources, released_checkpoint
from simclr_tf2.build import num_params
from simclr_tf2.checkpoints import initialise, resume_point, write_json
from simclr_tf2.config import Config, ConfigError, validate
from simclr_tf2.data.files import decode_failure
from simclr_tf2.data.sources import DataError
from simclr_tf2.distribute import Cluster, cluster_of, describe
from simclr_tf2.export import export_step
from simclr_tf2.lock import ModelDirLock
from simclr_tf2.memory import check_memory
from simclr_tf2.models.simclr import SimCLRModel, float32_copy
from simclr_tf2.writes import writes_named


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
    run with what to do, instead of a tf.data traceback: a file of a folder by its
    path (`DecodeFailures`), any other image by what the decoder said."""
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        named = decode_failure(error)
        if named is not None:
            raise named from None
        if not isinstance(error, tf.errors.InvalidArgumentError):
            raise
        text = error.message
        if not re.search(r"decod|jpeg|png|gif|bmp|image", text, re.I):
            raise
        first = next((line for line in text.splitlines() if line.strip()), "")
        raise DataError(
            f"--dataset={config.data.dataset}: an image could not be decoded ({first[:160]}); the "
            f"--verify_images={config.data.verify_images} check let it through. Re-run with "
            "--verify_images=decode to find and name such files before training, and "
            "--skip_bad_images to skip them."
        ) from None


def evaluate(run: Run, out_dir: str, started: float) -> dict:
    """Evaluates `run`'s model on its eval split, writes result.json /
    result_<step>.json and eval events into `out_dir`; returns the result.

    With a supervised head: top-1 / top-5 on centre-cropped images. A
    pretraining model without one is evaluated on its own task: contrastive
    loss and accuracy on two augmented views (fixed seed) of the eval split.
    """
    step = run.step
    dataset, steps = run.eval_dataset()
    metrics = _evaluation_model(run).evaluate(dataset, steps=steps, verbose=0, return_dict=True)
    result = {
        "global_step": step,
        "wall_clock_seconds": round(time.time() - started, 1),
        # --mixed_precision as the run resolved it (config.json has what was asked).
        "mixed_precision": run.precision,
        **{k: float(v) for k, v in metrics.items()},
    }
    if "supervised_acc" in metrics:
        result["top_1_accuracy"] = float(metrics["supervised_acc"])
        result["top_5_accuracy"] = float(metrics["supervised_top5_acc"])
    result["evaluated"] = run.evaluated(steps)
    writer = tf.summary.create_file_writer(os.path.join(out_dir, "eval"))
    with writer.as_default(step=step):
        for key, value in metrics.items():
            tf.summary.scalar(key, value)
    writer.close()
    write_json(os.path.join(out_dir, f"result_{step}.json"), result)
    write_json(os.path.join(out_dir, "result.json"), result)
    logging.info("Evaluation at step %d: %s", step, result)
    return result


def _evaluation_model(run: Run) -> SimCLRModel:
    """What evaluation runs: the run's model, or after mixed precision a float32 copy
    of it (the weights, not their 16-bit rounding, are what is judged; see
    `float32_copy`)."""
    if run.precision == "none":
        return run.model
    with run.strategy.scope():
        model = float32_copy(run.model)
        r = run.config.runtime
        model.compile(jit_compile=r.jit_compile, steps_per_execution=r.steps_per_execution)
    logging.info("Evaluating in float32 (a copy of the %s model's weights).", run.precision)
    return model


def _export(run: Run, out_dir: str) -> str:
    path = export_step(
        run.model,
        out_dir,
        run.step,
        run.config.train.keep_hub_module_max,
        run.config.data.image_size,
    )
    logging.info("Exported SavedModel %s", path)
    return path


def _check_model_dir(config: Config) -> None:
    if not config.model_dir:
        raise ConfigError("--model_dir=None: set where checkpoints and results go.")
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


def _check_memory(config: Config, strategy: tf.distribute.Strategy, sources) -> None:
    """Logs the train step's estimated peak memory; raises MemoryCheckError when it
    exceeds what each replica has (unless --skip_memory_check)."""
    train = sources.train
    fit = check_memory(
        config,
        strategy,
        num_classes=train.num_classes,
        image_shape=train.image_shape,
        num_examples=train.num_examples,
    )
    if fit.fits:
        logging.info("Memory of the train step: %s.", fit.describe())
    else:
        logging.warning(
            "Memory of the train step: %s; starting anyway (--skip_memory_check); the largest "
            "batch estimated to fit is %d.",
            fit.describe(),
            fit.largest_batch,
        )


@contextlib.contextmanager
def _one_writer(config: Config, cluster: Cluster):
    """A training run's chief holds model_dir's lock (simclr_tf2/lock.py) to its end.

    --mode=eval does not: it only reads checkpoints, and its results and exports
    are written whole under names of their own, so a watcher runs beside the
    trainer. Other workers of a cluster write nothing into model_dir.
    """
    if config.mode == "eval" or not cluster.is_chief:
        yield
    elif "://" in config.model_dir:
        logging.warning(
            "--model_dir=%s is not a local or mounted path: it is not locked against a "
            "second run writing into it.",
            config.model_dir,
        )
        yield
    else:
        with ModelDirLock(config.model_dir):
            yield


def _restore(run: Run, checkpoint: tf.train.Checkpoint, is_chief: bool) -> int:
    """Resumes from the newest checkpoint in model_dir that reads back whole (newer,
    unreadable ones are named in the log), else starts from --checkpoint; returns
    the step the run is at."""
    config = run.config
    latest = None
    if config.mode != "eval":
        latest = resume_point(config.model_dir, repair=is_chief)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Restored %s", latest)
    elif config.checkpoint:
        logging.info("Initialised from %s", initialise(run.model, config, run.released))
    return run.step


def _log_start(run: Run, start_step: int) -> None:
    c, plan, replicas = run.config, run.plan, run.strategy.num_replicas_in_sync
    encoder = num_params(run.model.encoder.weights)
    logging.info(
        "Strategy %s with %d replica(s); batch %d per replica, %d global; precision %s%s; "
        "encoder %s parameters, heads %s; %d steps planned (%.2f epochs of %d examples), "
        "from step %d.",
        describe(run.strategy),
        replicas,
        c.train.train_batch_size // replicas,
        c.train.train_batch_size,
        run.precision + (" (from auto)" if c.runtime.mixed_precision == "auto" else ""),
        ", XLA" if c.runtime.jit_compile else "",
        f"{encoder:,}",
        f"{num_params(run.model.weights) - encoder:,}",
        plan.total_steps,
        plan.total_steps / plan.steps_per_epoch,
        plan.examples,
        start_step,
    )


def run(config: Config, strategy: tf.distribute.Strategy | None = None) -> dict | None:
    """Runs what `config.mode` says; returns the last evaluation result, if any.

    Raises:
        ConfigError / DataError: a setting or the data is wrong (before any compute,
            except an image that passes the header check but cannot be decoded).
        TrainingError: the loss became non-finite.
        WorkerLostError: another worker of a multi-worker run died.
        WriteRefusedError: a file of model_dir could not be written (disk full,
            read-only); what was written before stays whole.
    """
    # A refused write (a checkpoint, the export, a result, the lock) is named in one line;
    # every write replaces its file whole, so the last good checkpoint, export and result
    # stay as they were and a re-run resumes.
    with writes_named(config.model_dir or "."):
        return _run(config, strategy)


def _run(config: Config, strategy: tf.distribute.Strategy | None) -> dict | None:
    started = time.time()
    strategy = strategy or tf.distribute.get_strategy()
    cluster = cluster_of(strategy)
    training = config.mode in ("train", "train_then_eval")
    watching = config.mode == "eval" and not config.checkpoint

    # Plan: every setting, the model_dir, --checkpoint and the data, before any compute.
    validate(config, strategy.num_replicas_in_sync)
    _check_model_dir(config)
    with _one_writer(config, cluster):
        released = released_checkpoint(config)
        sources = load_sources(config, strategy.num_replicas_in_sync)
        if training:
            _check_memory(config, strategy, sources)
        tf.io.gfile.makedirs(config.model_dir)
        if training and cluster.is_chief:
            write_json(os.path.join(config.model_dir, "config.json"), json.loads(config.to_json()))
        keras.utils.set_random_seed(config.runtime.seed)
        if config.runtime.deterministic:
            tf.config.experimental.enable_op_determinism()

        # Build.
        built = build_run(config, strategy, sources, released)
        checkpoint = built.checkpoint()
        if watching:
            return _watch(built, checkpoint, started)

        # Restore.
        start_step = _restore(built, checkpoint, cluster.is_chief)
        _log_start(built, start_step)

        # Every worker saves, exports and evaluates (they are collective); only the
        # chief writes into model_dir, the others into a directory removed at the end.
        out_dir = config.model_dir
        if not cluster.is_chief:
            out_dir = tempfile.mkdtemp(prefix=f"simclr_{cluster.task_type}{cluster.task_id}_")
        try:
            with _peers_watched(cluster, config.model_dir), _undecodable_images_named(config):
                # Fit, evaluate, export.
                if training:
                    _fit(built, checkpoint, out_dir, start_step)
                    _export(built, out_dir)
                result = None
                if sources.eval is not None:
                    result = evaluate(built, out_dir, started)
                    if not training:
                        _export(built, out_dir)
                logging.info("Outputs are in %s", out_dir)
                return result
        finally:
            if out_dir != config.model_dir:
                shutil.rmtree(out_dir, ignore_errors=True)


def _fit(run: Run, checkpoint: tf.train.Checkpoint, out_dir: str, start_step: int) -> None:
    """Trains from `start_step` to the planned step, saving checkpoints into `out_dir`.

    Raises TrainingError (after keeping the last good checkpoint) when the loss
    becomes non-finite.
    """
    config, plan = run.config, run.plan
    manager = tf.train.CheckpointManager(
        checkpoint, out_dir, max_to_keep=config.train.keep_checkpoint_max
    )
    if start_step < plan.total_steps:
        dataset = run.train_dataset(start_step)
        if config.train_mode == "pretrain" and out_dir == config.model_dir:
            run.write_view_images(out_dir, start_step)
        terminal = sys.stdout.isatty()
        saver, callbacks = run.callbacks(manager, out_dir, bar=terminal)
        every = plan.checkpoint_every
        run.model.fit(
            dataset,
            steps_per_epoch=every,
            epochs=-(-plan.total_steps // every),
            initial_epoch=start_step // every,
            callbacks=callbacks,
            verbose=0,  # Progress shows the whole run's progress
            shuffle=False,  # the input pipeline shuffles
        )
        saver.save()  # the last step, when it ends no checkpoint interval
        if saver.bad_step is not None:
            raise TrainingError(
                f"{saver.bad_what} became {saver.bad_value} at step {saver.bad_step}; stopped "
                f"without saving it, the last good checkpoint "
                f"({manager.latest_checkpoint or 'none yet'}) is kept. Likely causes: a "
                "learning rate too high (--learning_rate) or a temperature too low "
                "(--temperature)."
            )


def _watch(run: Run, checkpoint: tf.train.Checkpoint, started: float) -> dict | None:
    """--mode=eval: evaluates each new checkpoint in model_dir until the final step."""
    config, total_steps = run.config, run.plan.total_steps
    result = None
    timeout = config.train.eval_timeout or None
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
        result = evaluate(run, config.model_dir, started)
        _export(run, config.model_dir)
        if result["global_step"] >= total_steps:
            break
    else:
        if result is None:
            raise ConfigError(
                f"--mode=eval: no checkpoint appeared in --model_dir={config.model_dir} within "
                f"--eval_timeout={config.train.eval_timeout} s."
            )
        logging.warning(
            "No new checkpoint within --eval_timeout=%d s; the last one evaluated is step %d "
            "of %d.",
            config.train.eval_timeout,
            result["global_step"],
            total_steps,
        )
    logging.info("Outputs are in %s", config.model_dir)
    return result
