"""One frozen, validated configuration of a run.

`run.py` turns its flags into a `Config`; library code and notebooks can build
one directly. `validate` checks every combination that cannot work before
anything is built, raising `ConfigError` whose message names the flag, the
value and the fix, in one line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from simclr_tf2.data.sources import VERIFY_MODES
from simclr_tf2.distribute import STRATEGIES
from simclr_tf2.models.heads import PROJ_HEAD_MODES, num_head_outputs
from simclr_tf2.models.resnet import BLOCK_SPECS
from simclr_tf2.models.simclr import TRAIN_MODES
from simclr_tf2.optim import OPTIMIZERS
from simclr_tf2.optim.schedules import SCALINGS

MODES = ("train", "eval", "train_then_eval")
PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16")


# The settings that take one of a fixed set of values (run.py makes them enum flags).
CHOICES = {
    "mode": MODES,
    "train_mode": TRAIN_MODES,
    "optimizer": OPTIMIZERS,
    "learning_rate_scaling": SCALINGS,
    "proj_head_mode": PROJ_HEAD_MODES,
    "verify_images": VERIFY_MODES,
    "strategy": STRATEGIES,
    "mixed_precision": PRECISIONS,
}


class ConfigError(ValueError):
    """An impossible setting; the message names the flag and the fix."""


@dataclass(frozen=True)
class Config:
    """Every setting of a run, named and defaulted like the paper code's flags."""

    # What to run.
    mode: str = "train"
    train_mode: str = "pretrain"
    model_dir: str | None = None
    checkpoint: str | None = None
    # Distillation (SimCLRv2): the teacher and its loss.
    teacher: str | None = None
    distill_temperature: float = 1.0
    distill_label_weight: float = 0.0
    # Data.
    dataset: str = "imagenet2012"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    label_subset: str | None = None
    label_fraction: float = 0.0
    cache_dataset: bool = False
    skip_bad_images: bool = False
    verify_images: str = "header"
    image_size: int = 224
    color_jitter_strength: float = 1.0
    use_blur: bool = True
    # Schedule.
    train_batch_size: int = 512
    train_epochs: int = 100
    train_steps: int = 0
    eval_batch_size: int = 256
    eval_steps: int = 0
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    keep_checkpoint_max: int = 5
    keep_hub_module_max: int = 1
    eval_timeout: int = 3600
    # Optimisation.
    optimizer: str = "lars"
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"
    warmup_epochs: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-6
    # Model.
    resnet_depth: int = 50
    width_multiplier: float = 1.0
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    global_bn: bool = True
    batch_norm_decay: float = 0.9
    proj_head_mode: str = "nonlinear"
    proj_out_dim: int = 128
    num_proj_layers: int = 3
    ft_proj_selector: int = 0
    temperature: float = 0.1
    hidden_norm: bool = True
    lineareval_while_pretraining: bool = True
    fine_tune_after_block: int = -1
    zero_init_logits_layer: bool = False
    # Monitoring.
    knn_eval_every: int = 0
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_bank_size: int = 10_000
    # Reproducibility.
    seed: int = 0
    deterministic: bool = False
    # Scale-out and speed.
    strategy: str = "auto"
    num_logical_cpus: int = 0
    cluster_timeout: int = 900
    use_tpu: bool = False
    tpu_name: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None
    master: str | None = None
    mixed_precision: str = "none"
    jit_compile: bool = False
    steps_per_execution: int = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @property
    def cifar_stem(self) -> bool:
        """The 3x3 stride-1 stem without max-pool, for images of 32 px or less."""
        return self.image_size <= 32


def _fail(flag: str, value, fix: str) -> None:
    raise ConfigError(f"--{flag}={value}: {fix}")


def validate(config: Config, num_replicas: int = 1) -> Config:
    """Raises ConfigError for the first impossible setting; returns the config."""
    c = config
    for flag, allowed in CHOICES.items():
        if getattr(c, flag) not in allowed:
            _fail(flag, getattr(c, flag), f"use one of {', '.join(allowed)}.")
    if c.resnet_depth not in BLOCK_SPECS:
        _fail("resnet_depth", c.resnet_depth, f"use one of {sorted(BLOCK_SPECS)}.")
    positive = (
        "train_batch_size",
        "eval_batch_size",
        "image_size",
        "proj_out_dim",
        "width_multiplier",
    )
    for flag in positive:
        if getattr(c, flag) <= 0:
            _fail(flag, getattr(c, flag), "must be positive.")
    for flag in (
        "learning_rate",
        "weight_decay",
        "momentum",
        "warmup_epochs",
        "color_jitter_strength",
    ):
        if getattr(c, flag) < 0:
            _fail(flag, getattr(c, flag), "must not be negative.")
    if c.temperature <= 0:
        _fail("temperature", c.temperature, "must be positive (the paper uses 0.1 to 0.5).")
    if not 0 < c.batch_norm_decay < 1:
        _fail("batch_norm_decay", c.batch_norm_decay, "must be in (0, 1), e.g. 0.9.")
    for flag in (
        "train_steps",
        "train_epochs",
        "eval_steps",
        "checkpoint_steps",
        "checkpoint_epochs",
    ):
        if getattr(c, flag) < 0:
            _fail(flag, getattr(c, flag), "must not be negative.")
    if c.mode != "eval" and c.train_steps == 0 and c.train_epochs == 0:
        _fail("train_epochs", 0, "with --train_steps=0 nothing would be trained; set one of them.")
    if c.keep_checkpoint_max < 1:
        _fail("keep_checkpoint_max", c.keep_checkpoint_max, "keep at least 1 checkpoint.")
    if c.keep_hub_module_max < 1:
        _fail("keep_hub_module_max", c.keep_hub_module_max, "keep at least 1 export.")
    if c.eval_timeout < 0:
        _fail("eval_timeout", c.eval_timeout, "must not be negative (0 = wait forever).")
    batch_flags = ["train_batch_size"] + (["eval_batch_size"] if c.mode != "train" else [])
    for flag in batch_flags:
        if getattr(c, flag) % num_replicas:
            _fail(
                flag,
                getattr(c, flag),
                f"must be divisible by the {num_replicas} replicas; "
                f"use a multiple of {num_replicas}.",
            )
    if not -1 <= c.fine_tune_after_block <= 4:
        _fail("fine_tune_after_block", c.fine_tune_after_block, "use -1 (all) or 0 to 4.")
    if c.train_mode == "pretrain" and c.fine_tune_after_block != -1:
        _fail(
            "fine_tune_after_block",
            c.fine_tune_after_block,
            "only applies with --train_mode=finetune; drop it when pretraining.",
        )
    if c.train_mode == "finetune" and c.mode != "eval" and not c.checkpoint:
        _fail(
            "checkpoint",
            c.checkpoint,
            "--train_mode=finetune needs --checkpoint (a pretrained checkpoint or SavedModel).",
        )
    if c.train_mode == "distill" and c.mode != "eval" and not c.teacher:
        _fail(
            "teacher",
            c.teacher,
            "--train_mode=distill needs --teacher (a fine-tuned model_dir, checkpoint or "
            "SavedModel whose supervised head labels the images).",
        )
    if c.teacher and c.train_mode != "distill":
        _fail("teacher", c.teacher, "only applies with --train_mode=distill.")
    if c.distill_temperature <= 0:
        _fail("distill_temperature", c.distill_temperature, "must be positive (1.0 is usual).")
    if c.distill_label_weight < 0:
        _fail("distill_label_weight", c.distill_label_weight, "must be >= 0 (0 = teacher only).")
    if c.proj_head_mode == "nonlinear" and c.num_proj_layers < 1:
        _fail("num_proj_layers", c.num_proj_layers, "a nonlinear head needs at least 1 layer.")
    max_selector = num_head_outputs(c.proj_head_mode, c.num_proj_layers)
    if not 0 <= c.ft_proj_selector <= max_selector:
        _fail(
            "ft_proj_selector",
            c.ft_proj_selector,
            f"must be in [0, {max_selector}] for --proj_head_mode={c.proj_head_mode} "
            f"with --num_proj_layers={c.num_proj_layers}.",
        )
    if not 0 <= c.sk_ratio < 1:
        _fail("sk_ratio", c.sk_ratio, "must be in [0, 1) (0 = off; SimCLRv2 uses 0.0625).")
    if not 0 <= c.se_ratio <= 1:
        _fail("se_ratio", c.se_ratio, "must be in [0, 1] (0 = off).")
    if not 0 <= c.label_fraction <= 1:
        _fail("label_fraction", c.label_fraction, "must be in [0, 1] (0 = every example).")
    if c.knn_eval_every < 0:
        _fail("knn_eval_every", c.knn_eval_every, "must be >= 0 (0 = no kNN monitor).")
    if c.knn_k < 1 or c.knn_bank_size < 1:
        flag = "knn_k" if c.knn_k < 1 else "knn_bank_size"
        _fail(flag, getattr(c, flag), "must be >= 1.")
    if c.knn_temperature <= 0:
        _fail("knn_temperature", c.knn_temperature, "must be positive (0.1 is usual).")
    if c.num_logical_cpus < 0:
        _fail("num_logical_cpus", c.num_logical_cpus, "must be >= 0 (0 = do not split the CPU).")
    if c.cluster_timeout < 0:
        _fail("cluster_timeout", c.cluster_timeout, "must not be negative (0 = an hour).")
    if c.steps_per_execution < 1:
        _fail("steps_per_execution", c.steps_per_execution, "must be >= 1.")
    for flag in ("train_steps", "checkpoint_steps"):
        if getattr(c, flag) % c.steps_per_execution:
            _fail(
                flag,
                getattr(c, flag),
                f"must be a multiple of --steps_per_execution={c.steps_per_execution} "
                "(Keras runs whole executions).",
            )
    if (c.use_tpu or c.tpu_name or c.master) and c.strategy not in ("auto", "tpu"):
        _fail(
            "strategy", c.strategy, "--use_tpu/--tpu_name/--master need --strategy=tpu (or auto)."
        )
    if c.jit_compile and c.num_logical_cpus > 1:
        _fail(
            "jit_compile",
            True,
            f"XLA cannot compile a step spread over --num_logical_cpus={c.num_logical_cpus} "
            "CPU devices; drop one of the two.",
        )
    if c.mode == "eval" and not c.model_dir and not c.checkpoint:
        _fail("mode", "eval", "needs --model_dir (to watch) or --checkpoint (to evaluate).")
    return c
