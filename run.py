"""SimCLR from the command line.

  python run.py --mode=train_then_eval --dataset=digits --image_size=32 \
      --resnet_depth=18 --train_batch_size=128 --train_epochs=2 --model_dir=/tmp/simclr

Flags live here and only here: they build one validated `Config`, and the
library does the rest (`simclr_tf2.train.run`). `--flagfile=FILE` reads flags
from a file; `--helpfull` lists them all.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

# Before TensorFlow loads: oneDNN's CPU kernels, which TensorFlow enables by itself only on
# CPUs with AVX-512 VNNI or newer, about double the train step's speed on an AVX2 CPU.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from simclr_tf2.config import FIELDS, Config, ConfigError
from simclr_tf2.startup import start_tensorflow

_FLAG_KINDS = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}


def _define_flags() -> None:
    """One flag per setting of Config, with the default, help, choices and range
    declared there."""
    for name, (_, field) in FIELDS.items():
        help_text, choices = field.metadata["help"], field.metadata["choices"]
        limits = field.metadata["range"]
        if limits is not None:
            requirement = limits.requirement()
            help_text += f" {requirement[0].upper()}{requirement[1:]}."
        default = field.default
        if choices is not None and all(isinstance(c, str) for c in choices):
            flags.DEFINE_enum(name, default, list(choices), help_text)
        elif choices is not None:
            flags.DEFINE_integer(name, default, f"{help_text} One of {list(choices)}.")
        else:
            define = _FLAG_KINDS.get(type(default), flags.DEFINE_string)
            define(name, default, help_text)


_define_flags()
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
    """The Config the command line describes."""
    return Config.from_flags(**{name: FLAGS[name].value for name in FIELDS})


def main(argv) -> int:
    if len(argv) > 1:
        sys.stderr.write(
            f"run.py: unexpected arguments {argv[1:]}; flags look like --name=value.\n"
        )
        return 2
    start_tensorflow(sys.argv)
    from simclr_tf2 import train
    from simclr_tf2.config import validate
    from simclr_tf2.data.sources import DataError
    from simclr_tf2.distribute import StrategyError, build_strategy, cluster_of
    from simclr_tf2.writes import WriteRefusedError

    try:
        config = config_from_flags()
        # Settings first (cheap, one line), then the strategy: splitting the CPU and
        # joining a cluster must come before TensorFlow touches a device.
        validate(config)
        strategy = build_strategy(
            config.runtime.strategy,
            config.runtime.num_logical_cpus,
            config.runtime.use_tpu,
            config.runtime.tpu_name,
            config.runtime.tpu_zone,
            config.runtime.gcp_project,
            config.runtime.master,
            config.runtime.cluster_timeout,
        )
        result = train.run(config, strategy)
    except (ConfigError, DataError, StrategyError) as error:
        sys.stderr.write(f"run.py: {error}\n")
        return 2
    except WriteRefusedError as error:
        # A full disk or a read-only model_dir: neither a wrong setting nor a failed run.
        sys.stderr.write(f"run.py: {error}\n")
        return WriteRefusedError.EXIT_STATUS
    except (train.TrainingError, train.WorkerLostError) as error:
        # One line on the terminal; a log file (--log_dir) gets it as well.
        if logging.get_absl_handler().python_handler.stream is not sys.stderr:
            logging.error("%s", error)
        sys.stderr.write(f"run.py: {error}\n")
        return 1
    if cluster_of(strategy).is_chief:
        _print_outputs(config.model_dir, result)
    return 0


def _print_outputs(model_dir: str, result: dict | None) -> None:
    """Where the run's outputs are, on stdout."""
    import tensorflow as tf

    from simclr_tf2.export import latest_export

    lines = [f"Outputs in {model_dir}:"]
    if result and "top_1_accuracy" in result:
        lines.append(
            f"  result.json       top-1 {result['top_1_accuracy']:.4f}, top-5 "
            f"{result['top_5_accuracy']:.4f} at step {result['global_step']}"
        )
    elif result:
        lines.append(
            f"  result.json       contrast_acc {result.get('contrast_acc', float('nan')):.4f} "
            f"at step {result['global_step']} (no linear head)"
        )
    checkpoint = tf.train.latest_checkpoint(model_dir)
    if checkpoint:
        lines.append(
            f"  {os.path.basename(checkpoint):<17} newest checkpoint (re-run the command to resume)"
        )
    export = latest_export(model_dir)
    if export:
        lines.append(f"  {os.path.relpath(export, model_dir):<17} exported encoder (SavedModel)")
    lines.append(f"  train/, eval/     TensorBoard: tensorboard --logdir {model_dir}")
    print("\n".join(lines), flush=True)


def _parse_flags(argv: list[str]) -> list[str]:
    # One line and exit status 2 for a mistyped flag, like every other user error.
    try:
        return FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"run.py: {error}\n")
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
