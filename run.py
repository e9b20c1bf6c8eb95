"""SimCLR from the command line.

  python run.py --mode=train_then_eval --dataset=digits --image_size=32 \
      --resnet_depth=18 --train_batch_size=128 --train_epochs=2 --model_dir=/tmp/simclr

Flags live here and only here: they build one validated `Config`, and the
library does the rest (`simclr_tf2.train.run`). `--flagfile=FILE` reads flags
from a file; `--helpfull` lists them all.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags, logging

# Before TensorFlow loads: oneDNN's CPU kernels, which TensorFlow enables by itself only on
# CPUs with AVX-512 VNNI or newer, about double the train step's speed on an AVX2 CPU.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from simclr_tf2.config import CHOICES, Config, ConfigError
from simclr_tf2.data.sources import DataError

_DEFAULTS = Config()
_HELP = {
    # What to run.
    "mode": "train, eval (watch --model_dir and evaluate each new checkpoint until the last "
    "step) or train_then_eval.",
    "train_mode": "pretrain (contrastive), finetune (supervised, from --checkpoint) or distill "
    "(a student learns the --teacher's predictions; SimCLRv2).",
    "model_dir": "Where checkpoints, TensorBoard events and results go (re-run to resume).",
    "checkpoint": "Where to start from: a checkpoint prefix, a directory of checkpoints, or an "
    "exported SavedModel (model_dir/saved_model/<step>).",
    "teacher": "--train_mode=distill: the fine-tuned teacher, a model_dir, a checkpoint prefix "
    "or a SavedModel export; it labels every training image.",
    "distill_temperature": "Temperature of the teacher's and the student's softmax when "
    "distilling.",
    "distill_label_weight": "Weight of the supervised loss on true labels added to the "
    "distillation loss (0 = teacher only; the data may then be unlabelled).",
    # Data.
    "dataset": "'digits' (embedded, no download), a .npz file, an image folder, or a "
    "prepared TFDS name.",
    "data_dir": "Directory of prepared TFDS datasets.",
    "train_split": "Split to train on; TFDS slicing such as train[:10%] works.",
    "eval_split": "Split to evaluate on (for .npz files and folders, see --eval_dataset).",
    "label_subset": "File of example ids, one per line, to train on (1%/10% lists).",
    "label_fraction": "Train on a class-balanced random subset of this fraction of --train_split "
    "(the same number per class, drawn with --seed); .npz, folders, digits. 0 = all.",
    "cache_dataset": "Keep the decoded training examples in memory.",
    "skip_bad_images": "Skip (and log) unreadable image files instead of stopping.",
    "verify_images": "Image folders: 'header' checks each file's signature and end marker "
    "(fast); 'decode' also decodes every file before training.",
    "image_size": "Side of the views in pixels; <= 32 selects the CIFAR stem and no blur.",
    "color_jitter_strength": "Strength s of the colour distortion.",
    "use_blur": "Gaussian blur on the views (never at 32 px or less).",
    # Schedule.
    "train_batch_size": "Global batch size (all replicas).",
    "train_epochs": "Epochs to train (ignored when --train_steps > 0).",
    "train_steps": "Steps to train; 0 = from --train_epochs.",
    "eval_batch_size": "Global batch size for evaluation.",
    "eval_steps": "Evaluation steps; 0 = the whole eval split.",
    "checkpoint_epochs": "Save a checkpoint every this many epochs.",
    "checkpoint_steps": "Save a checkpoint every this many steps (overrides the epochs).",
    "keep_checkpoint_max": "Checkpoints to keep.",
    "keep_hub_module_max": "Exported SavedModels (model_dir/saved_model/<step>) to keep.",
    "eval_timeout": "--mode=eval: stop after this many seconds without a new checkpoint "
    "(0 = wait forever).",
    # Optimisation.
    "optimizer": "lars, momentum (SGD with Nesterov), adam or lamb.",
    "learning_rate": "Base learning rate, scaled by the batch size (--learning_rate_scaling).",
    "learning_rate_scaling": "linear (x batch/256) or sqrt (x sqrt(batch)).",
    "warmup_epochs": "Epochs of linear warm-up.",
    "momentum": "Momentum of lars and momentum.",
    "weight_decay": "L2 weight decay (see the README for what each optimizer decays).",
    # Model.
    "resnet_depth": "ResNet depth: 18, 34, 50, 101, 152 or 200 (10: one block per group, "
    "for quick tests).",
    "width_multiplier": "ResNet width multiplier (1, 2, 4, or 0.25 / 0.5 for small runs).",
    "sk_ratio": "Selective-kernel ratio (SimCLRv2: 0.0625); also a ResNet-D stem and "
    "average-pool shortcuts. 0 = off.",
    "se_ratio": "Squeeze-excitation ratio (SimCLRv2); 0 = off.",
    "global_bn": "Synchronise batch norm statistics across replicas.",
    "batch_norm_decay": "Momentum of the batch norm moving statistics.",
    "proj_head_mode": "Projection head: none, linear or nonlinear.",
    "proj_out_dim": "Width of the projection z.",
    "num_proj_layers": "Layers of the nonlinear projection head.",
    "ft_proj_selector": "Head layer feeding the supervised head when fine-tuning or "
    "distilling (0 = h; SimCLRv2 uses 1 of a 3-layer head).",
    "temperature": "NT-Xent temperature.",
    "hidden_norm": "L2-normalise projections in the loss (cosine similarity).",
    "lineareval_while_pretraining": "Train a linear head on stop_gradient(h) while pretraining.",
    "fine_tune_after_block": "Fine-tune only after this stage: -1 all, 0 stem, 1-3, 4 head only.",
    "zero_init_logits_layer": "Start the supervised head at zero.",
    "knn_eval_every": "Every this many epochs, report the weighted kNN top-1 of the encoder's "
    "features (eval split vs a labelled training subset) to the log and TensorBoard; 0 = off.",
    "knn_k": "Neighbours that vote in the kNN monitor.",
    "knn_temperature": "Temperature of the kNN monitor's vote weights exp(similarity / t).",
    "knn_bank_size": "Labelled training examples the kNN monitor compares against (at most).",
    "seed": "Seed of initialisation, shuffling and augmentation.",
    "deterministic": "Same data order and views on every run, whatever the number of workers "
    "and replicas (slower input pipeline: every worker reads the whole stream).",
    # Scale-out and speed.
    "strategy": "auto (TPU with --use_tpu/--tpu_name; multi_worker when TF_CONFIG names several "
    "workers; mirrored over local GPUs or --num_logical_cpus; else one device), one_device, "
    "mirrored, multi_worker or tpu.",
    "num_logical_cpus": "With no GPU, split the CPU into this many devices, one replica each "
    "(per worker with multi_worker), to try multi-replica training on a CPU; 0 = don't.",
    "cluster_timeout": "multi_worker: seconds to wait for every worker of TF_CONFIG to join "
    "before giving up (0 = TensorFlow's default, an hour).",
    "use_tpu": "Run on a Cloud TPU (same as --strategy=tpu).",
    "tpu_name": "Cloud TPU name, or 'local' on a TPU VM.",
    "tpu_zone": "Cloud TPU zone (guessed from metadata when unset).",
    "gcp_project": "GCP project of the TPU (guessed from metadata when unset).",
    "master": "TPU master address (grpc://ip:8470), instead of --tpu_name.",
    "mixed_precision": "none, mixed_bfloat16 (TPUs, recent CPUs and GPUs) or mixed_float16 "
    "(GPUs; with loss scaling). Logits, losses and BN statistics stay float32.",
    "jit_compile": "Compile the train step with XLA (for accelerators; not faster on CPUs).",
    "steps_per_execution": "Train steps per call into the compiled step (fewer host round trips "
    "on TPUs); callbacks then see every N-th step.",
}
_EXTRA = {"eval_dataset": (None, "Dataset to evaluate on; default: --dataset.")}


def _define_flags() -> None:
    for field in dataclasses.fields(Config):
        name, default, help_text = field.name, getattr(_DEFAULTS, field.name), _HELP[field.name]
        if name in CHOICES:
            flags.DEFINE_enum(name, default, list(CHOICES[name]), help_text)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_text)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text)
        else:
            flags.DEFINE_string(name, default, help_text)
    for name, (default, help_text) in _EXTRA.items():
        flags.DEFINE_string(name, default, help_text)


_define_flags()
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
    values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)}
    return Config(**values)


def main(argv) -> int:
    if len(argv) > 1:
        sys.stderr.write(
            f"run.py: unexpected arguments {argv[1:]}; flags look like --name=value.\n"
        )
        return 2
    from simclr_tf2 import train
    from simclr_tf2.config import validate
    from simclr_tf2.distribute import StrategyError, build_strategy, cluster_of

    config = config_from_flags()
    try:
        # Settings first (cheap, one line), then the strategy: splitting the CPU and
        # joining a cluster must come before TensorFlow touches a device.
        validate(config)
        strategy = build_strategy(
            config.strategy,
            config.num_logical_cpus,
            config.use_tpu,
            config.tpu_name,
            config.tpu_zone,
            config.gcp_project,
            config.master,
            config.cluster_timeout,
        )
        result = train.run(config, eval_dataset=FLAGS.eval_dataset, strategy=strategy)
    except (ConfigError, DataError, StrategyError) as error:
        sys.stderr.write(f"run.py: {error}\n")
        return 2
    except (train.TrainingError, train.WorkerLostError) as error:
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
