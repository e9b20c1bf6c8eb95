"""One frozen, validated configuration of a run: a leaf module (no TensorFlow).

A `Config` holds a few top-level settings (what to run, where) and one frozen
sub-config per concern: `model`, `data`, `train` (batches, steps, checkpoints),
`optim`, `distill`, `knn` and `runtime`. Every setting is declared once, below,
with its default, its help text and its allowed values or range; `run.py` makes
its flags from these declarations and `validate` checks them, so the two can
never disagree. Setting names are unique across sub-configs and equal to the
flag names (google-research/simclr's where they have one):

    config = Config.from_flags(resnet_depth=18, image_size=32, train_batch_size=256)
    config.model.resnet_depth, config.data.image_size, config.flags()["image_size"]

`validate` raises `ConfigError` for the first impossible setting or
combination, in one line naming the flag, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

# The choices a setting can take, defined once: validation, --helpfull and the
# library's own argument checks use these tuples.
MODES = ("train", "eval", "train_then_eval")
TRAIN_MODES = ("pretrain", "finetune", "distill")
OPTIMIZERS = ("lars", "momentum", "adam", "lamb")
SCALINGS = ("linear", "sqrt")
PROJ_HEAD_MODES = ("none", "linear", "nonlinear")
VERIFY_MODES = ("header", "decode")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16", "auto")
KERNELS = ("auto", "plain")
RESNET_DEPTHS = (10, 18, 34, 50, 101, 152, 200)


class ConfigError(ValueError):
    """An impossible setting; the message names the flag and the fix."""


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: [low, high], either end open or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def contains(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def requirement(self) -> str:
        """E.g. "must be in [0, 1) (0 = off)", "must not be negative"."""
        if self.high is None and self.low == 0:
            text = "must be positive" if self.low_open else "must not be negative"
        elif self.high is None:
            text = f"must be {'>' if self.low_open else '>='} {_number(self.low)}"
        else:
            text = (
                f"must be in {'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}"
            )
        return f"{text} ({self.note})" if self.note else text


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(0, low_open=True)
NOT_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)


def setting(default, help: str, *, choices: tuple | None = None, range: Range | None = None):
    """A dataclass field declaring one setting (= one flag of run.py)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range})


@dataclass(frozen=True)
class ModelConfig:
    """The network: encoder, heads, loss."""

    resnet_depth: int = setting(
        50,
        "ResNet depth (10: one block per group, for quick tests).",
        choices=RESNET_DEPTHS,
    )
    width_multiplier: float = setting(
        1.0, "ResNet width multiplier (1, 2, 4, or 0.25 / 0.5 for small runs).", range=POSITIVE
    )
    sk_ratio: float = setting(
        0.0,
        "Selective-kernel ratio (SimCLRv2: 0.0625); also a ResNet-D stem and average-pool "
        "shortcuts. 0 = off.",
        range=Range(0, 1, high_open=True, note="0 = off; SimCLRv2 uses 0.0625"),
    )
    se_ratio: float = setting(
        0.0, "Squeeze-excitation ratio (SimCLRv2); 0 = off.", range=Range(0, 1, note="0 = off")
    )
    global_bn: bool = setting(True, "Synchronise batch norm statistics across replicas.")
    batch_norm_decay: float = setting(
        0.9,
        "Momentum of the batch norm moving statistics.",
        range=Range(0, 1, low_open=True, high_open=True, note="e.g. 0.9"),
    )
    proj_head_mode: str = setting(
        "nonlinear", "Projection head: none, linear or nonlinear.", choices=PROJ_HEAD_MODES
    )
    proj_out_dim: int = setting(128, "Width of the projection z.", range=POSITIVE)
    num_proj_layers: int = setting(
        3, "Layers of the nonlinear projection head.", range=NOT_NEGATIVE
    )
    ft_proj_selector: int = setting(
        0,
        "Head layer feeding the supervised head when fine-tuning or distilling (0 = h; "
        "SimCLRv2 uses 1 of a 3-layer head).",
    )
    temperature: float = setting(
        0.1, "NT-Xent temperature.", range=Range(0, low_open=True, note="the paper uses 0.1-0.5")
    )
    hidden_norm: bool = setting(True, "L2-normalise projections in the loss (cosine similarity).")
    lineareval_while_pretraining: bool = setting(
        True, "Train a linear head on stop_gradient(h) while pretraining."
    )
    fine_tune_after_block: int = setting(
        -1,
        "Fine-tune only after this stage: -1 all, 0 stem, 1-3, 4 head only.",
        range=Range(-1, 4, note="-1 = all"),
    )
    zero_init_logits_layer: bool = setting(False, "Start the supervised head at zero.")
    kernels: str = setting(
        "auto",
        "CPU performance kernels of the encoder: auto (where they help, i.e. on CPU) or plain "
        "(stock Keras layers only).",
        choices=KERNELS,
    )


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how the views are made."""

    dataset: str = setting(
        "imagenet2012",
        "'digits' (embedded, no download), a .npz file, an image folder, or a prepared TFDS name.",
    )
    eval_dataset: str | None = setting(None, "Dataset to evaluate on; default: --dataset.")
    data_dir: str | None = setting(None, "Directory of prepared TFDS datasets.")
    train_split: str = setting(
        "train",
        "Split to train on; TFDS slicing such as train[:90%] works (a folder or .npz file: of a "
        "fixed class-stratified shuffle).",
    )
    eval_split: str = setting(
        "validation",
        "Split to evaluate on. A folder or .npz file is one split: hold images out with "
        "--train_split=train[:90%] --eval_split=train[90%:], or use --eval_dataset.",
    )
    label_subset: str | None = setting(
        None, "File of example ids, one per line, to train on (1%/10% lists)."
    )
    label_fraction: float = setting(
        0.0,
        "Train on a class-balanced random subset of this fraction of --train_split (the same "
        "number per class, drawn with --seed); .npz, folders, digits. 0 = all.",
        range=Range(0, 1, note="0 = every example"),
    )
    cache_dataset: bool = setting(False, "Keep the decoded training examples in memory.")
    skip_bad_images: bool = setting(
        False, "Skip (and log) unreadable image files instead of stopping."
    )
    verify_images: str = setting(
        "header",
        "Image folders: 'header' checks each file's signature and end marker (fast); 'decode' "
        "also decodes every file before training.",
        choices=VERIFY_MODES,
    )
    image_size: int = setting(
        224,
        "Side of the views in pixels; <= 32 selects the CIFAR stem and no blur.",
        range=POSITIVE,
    )
    color_jitter_strength: float = setting(
        1.0, "Strength s of the colour distortion.", range=NOT_NEGATIVE
    )
    use_blur: bool = setting(True, "Gaussian blur on the views (never at 32 px or less).")


@dataclass(frozen=True)
class TrainConfig:
    """How long to train, in what batches, and how often to save and evaluate."""

    train_batch_size: int = setting(512, "Global batch size (all replicas).", range=POSITIVE)
    train_epochs: int = setting(
        100, "Epochs to train (ignored when --train_steps > 0).", range=NOT_NEGATIVE
    )
    train_steps: int = setting(0, "Steps to train; 0 = from --train_epochs.", range=NOT_NEGATIVE)
    eval_batch_size: int = setting(256, "Global batch size for evaluation.", range=POSITIVE)
    eval_steps: int = setting(0, "Evaluation steps; 0 = the whole eval split.", range=NOT_NEGATIVE)
    checkpoint_epochs: int = setting(
        1, "Save a checkpoint every this many epochs.", range=NOT_NEGATIVE
    )
    checkpoint_steps: int = setting(
        0,
        "Save a checkpoint every this many steps (overrides the epochs).",
        range=NOT_NEGATIVE,
    )
    keep_checkpoint_max: int = setting(
        5,
        "Checkpoints to keep.",
        range=Range(2, note="a damaged newest checkpoint falls back to the one before"),
    )
    keep_hub_module_max: int = setting(
        1,
        "Exported SavedModels (model_dir/saved_model/<step>) to keep.",
        range=Range(1, note="keep at least 1 export"),
    )
    eval_timeout: int = setting(
        3600,
        "--mode=eval: stop after this many seconds without a new checkpoint (0 = wait forever).",
        range=Range(0, note="0 = wait forever"),
    )


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer, its learning-rate schedule and weight decay."""

    optimizer: str = setting(
        "lars", "lars, momentum (SGD with Nesterov), adam or lamb.", choices=OPTIMIZERS
    )
    learning_rate: float = setting(
        0.3,
        "Base learning rate, scaled by the batch size (--learning_rate_scaling).",
        range=NOT_NEGATIVE,
    )
    learning_rate_scaling: str = setting(
        "linear", "linear (x batch/256) or sqrt (x sqrt(batch)).", choices=SCALINGS
    )
    warmup_epochs: float = setting(10.0, "Epochs of linear warm-up.", range=NOT_NEGATIVE)
    momentum: float = setting(0.9, "Momentum of lars and momentum.", range=NOT_NEGATIVE)
    weight_decay: float = setting(
        1e-6,
        "L2 weight decay of the kernels (never batch norm or biases); lars applies it in its "
        "update, the other optimizers through the loss.",
        range=NOT_NEGATIVE,
    )


@dataclass(frozen=True)
class DistillConfig:
    """SimCLRv2's distillation: the teacher and its loss."""

    teacher: str | None = setting(
        None,
        "--train_mode=distill: the fine-tuned teacher, a model_dir, a checkpoint prefix or a "
        "SavedModel export; it labels every training image.",
    )
    distill_temperature: float = setting(
        1.0,
        "Temperature of the teacher's and the student's softmax when distilling.",
        range=Range(0, low_open=True, note="1.0 is usual"),
    )
    distill_label_weight: float = setting(
        0.0,
        "Weight of the supervised loss on true labels added to the distillation loss (0 = "
        "teacher only; the data may then be unlabelled).",
        range=Range(0, note="0 = teacher only"),
    )


@dataclass(frozen=True)
class KNNConfig:
    """The kNN monitor of the encoder's features during training."""

    knn_eval_every: int = setting(
        0,
        "Every this many epochs, report the weighted kNN top-1 of the encoder's features (eval "
        "split vs a labelled training subset) to the log and TensorBoard; 0 = off.",
        range=Range(0, note="0 = no kNN monitor"),
    )
    knn_k: int = setting(200, "Neighbours that vote in the kNN monitor.", range=AT_LEAST_1)
    knn_temperature: float = setting(
        0.1,
        "Temperature of the kNN monitor's vote weights exp(similarity / t).",
        range=Range(0, low_open=True, note="0.1 is usual"),
    )
    knn_bank_size: int = setting(
        10_000,
        "Labelled training examples the kNN monitor compares against (at most).",
        range=AT_LEAST_1,
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """Devices, precision, reproducibility and speed."""

    seed: int = setting(0, "Seed of initialisation, shuffling and augmentation.")
    deterministic: bool = setting(
        False,
        "Same data order and views on every run, whatever the number of workers and replicas, "
        "and a resumed run exactly the run never interrupted (it reads through the examples "
        "already trained on); without it a resume draws a new data order and new views. Slower "
        "input pipeline: every worker reads the whole stream; deterministic ops.",
    )
    strategy: str = setting(
        "auto",
        "auto (TPU with --use_tpu/--tpu_name; multi_worker when TF_CONFIG names several "
        "workers; mirrored over local GPUs or --num_logical_cpus; else one device), one_device, "
        "mirrored, multi_worker or tpu.",
        choices=STRATEGIES,
    )
    num_logical_cpus: int = setting(
        0,
        "With no GPU, split the CPU into this many devices, one replica each (per worker with "
        "multi_worker), to try multi-replica training on a CPU; 0 = don't.",
        range=Range(0, note="0 = do not split the CPU"),
    )
    cluster_timeout: int = setting(
        900,
        "multi_worker: seconds to wait for every worker of TF_CONFIG to join before giving up "
        "(0 = TensorFlow's default, an hour).",
        range=Range(0, note="0 = an hour"),
    )
    use_tpu: bool = setting(False, "Run on a Cloud TPU (same as --strategy=tpu).")
    tpu_name: str | None = setting(None, "Cloud TPU name, or 'local' on a TPU VM.")
    tpu_zone: str | None = setting(None, "Cloud TPU zone (guessed from metadata when unset).")
    gcp_project: str | None = setting(
        None, "GCP project of the TPU (guessed from metadata when unset)."
    )
    master: str | None = setting(
        None, "TPU master address (grpc://ip:8470), instead of --tpu_name."
    )
    mixed_precision: str = setting(
        "none",
        "none (float32, the paper's setting), mixed_bfloat16 (TPUs, recent CPUs and GPUs), "
        "mixed_float16 (GPUs; with loss scaling) or auto: mixed_bfloat16 where the device "
        "computes bfloat16 natively (a CPU with AMX or AVX512-BF16, a TPU, a GPU of compute "
        "capability 8.0+), else none; the log says which. Weights, logits, losses and BN "
        "statistics stay float32.",
        choices=PRECISIONS,
    )
    jit_compile: bool = setting(
        False, "Compile the train step with XLA (for accelerators; not faster on CPUs)."
    )
    steps_per_execution: int = setting(
        1,
        "Train steps per call into the compiled step (fewer host round trips on TPUs); "
        "callbacks then see every N-th step.",
        range=AT_LEAST_1,
    )
    skip_memory_check: bool = setting(
        False,
        "Start training even when the train step's estimated peak memory exceeds what each "
        "replica has (the estimate is logged either way).",
    )


# The sub-configs, by the Config attribute that holds each.
SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "optim": OptimConfig,
    "distill": DistillConfig,
    "knn": KNNConfig,
    "runtime": RuntimeConfig,
}


@dataclass(frozen=True)
class Config:
    """Every setting of a run: what to run and where, and one sub-config per concern."""

    mode: str = setting(
        "train",
        "train, eval (watch --model_dir and evaluate each new checkpoint until the last step) "
        "or train_then_eval.",
        choices=MODES,
    )
    train_mode: str = setting(
        "pretrain",
        "pretrain (contrastive), finetune (supervised, from --checkpoint) or distill (a student "
        "learns the --teacher's predictions; SimCLRv2).",
        choices=TRAIN_MODES,
    )
    model_dir: str | None = setting(
        None, "Where checkpoints, TensorBoard events and results go (re-run to resume)."
    )
    checkpoint: str | None = setting(
        None,
        "Where to start from: a checkpoint prefix, a directory of checkpoints, or an exported "
        "SavedModel (model_dir/saved_model/<step>); the authors' released checkpoints too.",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def from_flags(cls, **flags) -> Config:
        """A Config from settings named as the flags are (`resnet_depth=18, ...`); the
        others keep their defaults. Raises ConfigError for an unknown name."""
        unknown = set(flags) - set(FIELDS)
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"--{name}: no such setting; see `python run.py --helpfull`.")
        top = {k: v for k, v in flags.items() if FIELDS[k][0] is None}
        parts = {
            section: kind(**{k: v for k, v in flags.items() if FIELDS[k][0] == section})
            for section, kind in SECTIONS.items()
        }
        return cls(**top, **parts)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """The Config of a config.json: nested as `to_json` writes it, or flat as the
        model_dirs of earlier versions hold it."""
        data = json.loads(text)
        flat = {}
        for key, value in data.items():
            if key in SECTIONS and isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        if "cifar_stem" in flat:  # derived from image_size
            del flat["cifar_stem"]
        return cls.from_flags(**flat)

    def flags(self) -> dict:
        """Every setting by its flag name."""
        out = {}
        for name, (section, _) in FIELDS.items():
            out[name] = getattr(getattr(self, section) if section else self, name)
        return out

    def replace(self, **flags) -> Config:
        """A copy with the settings named as flags changed."""
        return Config.from_flags(**{**self.flags(), **flags})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @property
    def cifar_stem(self) -> bool:
        """The 3x3 stride-1 stem without max-pool, for images of 32 px or less."""
        return self.data.image_size <= 32


def _declared(kind) -> dict:
    return {f.name: f for f in dataclasses.fields(kind) if f.name not in SECTIONS}


# flag name -> (the Config attribute of its sub-config, or None at the top; its field)
FIELDS: dict[str, tuple[str | None, dataclasses.Field]] = {
    **{name: (None, f) for name, f in _declared(Config).items()},
    **{
        name: (section, f)
        for section, kind in SECTIONS.items()
        for name, f in _declared(kind).items()
    },
}


def num_head_outputs(proj_head_mode: str, num_proj_layers: int) -> int:
    """How many layers the projection head has, i.e. the largest valid `ft_proj_selector`."""
    if proj_head_mode == "none":
        return 0
    if proj_head_mode == "linear":
        return 1
    if proj_head_mode == "nonlinear":
        return num_proj_layers
    raise ValueError(f"proj_head_mode={proj_head_mode!r} is not one of {PROJ_HEAD_MODES}.")


def _fail(flag: str, value, fix: str) -> None:
    raise ConfigError(f"--{flag}={value}: {fix}")


def _check_declared(values: dict) -> None:
    """Each setting against its own declaration: choices and range."""
    for name, (_, f) in FIELDS.items():
        value = values[name]
        choices, limits = f.metadata["choices"], f.metadata["range"]
        if choices is not None and value not in choices:
            _fail(name, value, f"use one of {', '.join(str(c) for c in choices)}.")
        if limits is not None and not limits.contains(value):
            _fail(name, value, f"{limits.requirement()}.")


def validate(config: Config, num_replicas: int = 1) -> Config:
    """Raises ConfigError for the first impossible setting; returns the config."""
    c = config.flags()
    _check_declared(c)
    if c["mode"] != "eval" and c["train_steps"] == 0 and c["train_epochs"] == 0:
        _fail("train_epochs", 0, "with --train_steps=0 nothing would be trained; set one of them.")
    batch_flags = ["train_batch_size"] + (["eval_batch_size"] if c["mode"] != "train" else [])
    for flag in batch_flags:
        if c[flag] % num_replicas:
            _fail(
                flag,
                c[flag],
                f"must be divisible by the {num_replicas} replicas; "
                f"use a multiple of {num_replicas}.",
            )
    if c["train_mode"] == "pretrain" and c["fine_tune_after_block"] != -1:
        _fail(
            "fine_tune_after_block",
            c["fine_tune_after_block"],
            "only applies with --train_mode=finetune; drop it when pretraining.",
        )
    if c["train_mode"] == "finetune" and c["mode"] != "eval" and not c["checkpoint"]:
        _fail(
            "checkpoint",
            c["checkpoint"],
            "--train_mode=finetune needs --checkpoint (a pretrained checkpoint or SavedModel).",
        )
    if c["train_mode"] == "distill" and c["mode"] != "eval" and not c["teacher"]:
        _fail(
            "teacher",
            c["teacher"],
            "--train_mode=distill needs --teacher (a fine-tuned model_dir, checkpoint or "
            "SavedModel whose supervised head labels the images).",
        )
    if c["teacher"] and c["train_mode"] != "distill":
        _fail("teacher", c["teacher"], "only applies with --train_mode=distill.")
    if c["proj_head_mode"] == "nonlinear" and c["num_proj_layers"] < 1:
        _fail("num_proj_layers", c["num_proj_layers"], "a nonlinear head needs at least 1 layer.")
    max_selector = num_head_outputs(c["proj_head_mode"], c["num_proj_layers"])
    if not 0 <= c["ft_proj_selector"] <= max_selector:
        _fail(
            "ft_proj_selector",
            c["ft_proj_selector"],
            f"must be in [0, {max_selector}] for --proj_head_mode={c['proj_head_mode']} "
            f"with --num_proj_layers={c['num_proj_layers']}.",
        )
    for flag in ("train_steps", "checkpoint_steps"):
        if c[flag] % c["steps_per_execution"]:
            _fail(
                flag,
                c[flag],
                f"must be a multiple of --steps_per_execution={c['steps_per_execution']} "
                "(Keras runs whole executions).",
            )
    if (c["use_tpu"] or c["tpu_name"] or c["master"]) and c["strategy"] not in ("auto", "tpu"):
        _fail(
            "strategy",
            c["strategy"],
            "--use_tpu/--tpu_name/--master need --strategy=tpu (or auto).",
        )
    tpu = c["strategy"] == "tpu" or c["use_tpu"] or c["tpu_name"] or c["master"]
    if c["steps_per_execution"] > 1 and num_replicas > 1 and not tpu:
        # Keras 3 runs the steps of one call in a tf.while_loop whose tf.cond holds the
        # step; the step's cross-replica ops (all-gather, synchronised batch norm, the
        # optimizer's merge) then fail with "You must feed a value for placeholder tensor"
        # (keras-team/keras#19246; seen with 2 logical CPUs, float32 and bfloat16).
        _fail(
            "steps_per_execution",
            c["steps_per_execution"],
            f"Keras cannot run several steps per call over {num_replicas} replicas outside a "
            "TPU (keras-team/keras#19246); use 1 (the default).",
        )
    if c["jit_compile"] and c["num_logical_cpus"] > 1:
        _fail(
            "jit_compile",
            True,
            f"XLA cannot compile a step spread over --num_logical_cpus={c['num_logical_cpus']} "
            "CPU devices; drop one of the two.",
        )
    if c["mode"] == "eval" and not c["model_dir"] and not c["checkpoint"]:
        _fail("mode", "eval", "needs --model_dir (to watch) or --checkpoint (to evaluate).")
    return config
