"""Config validation: one line naming the flag, the value and the fix."""

import dataclasses
import json
import subprocess
import sys

import pytest

from simclr_tf2.config import Config, ConfigError, validate


def test_defaults_are_the_paper_codes_and_valid():
    config = validate(Config())
    flat = config.flags()
    assert (flat["learning_rate"], flat["temperature"], flat["train_batch_size"]) == (0.3, 0.1, 512)
    assert (config.model.resnet_depth, config.model.proj_head_mode, config.optim.optimizer) == (
        50,
        "nonlinear",
        "lars",
    )
    assert json.loads(config.to_json())["optim"]["weight_decay"] == 1e-6
    assert Config.from_flags(image_size=32).cifar_stem
    assert not Config.from_flags(image_size=224).cifar_stem


@pytest.mark.parametrize(
    "kwargs, replicas, message",
    [
        (
            dict(train_batch_size=30),
            4,
            "--train_batch_size=30: must be divisible by the 4 replicas",
        ),
        (
            dict(mode="train_then_eval", train_batch_size=32, eval_batch_size=30),
            4,
            "--eval_batch_size=30: must be divisible by the 4 replicas",
        ),
        (dict(optimizer="sgd"), 1, "--optimizer=sgd: use one of lars, momentum, adam, lamb"),
        (dict(batch_norm_decay=1.0), 1, "--batch_norm_decay=1.0: must be in (0, 1)"),
        (dict(keep_checkpoint_max=1), 1, "--keep_checkpoint_max=1: must be >= 2 (a damaged"),
        (dict(sk_ratio=1.0), 1, "--sk_ratio=1.0: must be in [0, 1)"),
        (dict(se_ratio=2.0), 1, "--se_ratio=2.0: must be in [0, 1]"),
        (dict(mode="eval"), 1, "--mode=eval: needs --model_dir"),
        (dict(strategy="horovod"), 1, "--strategy=horovod: use one of auto, one_device"),
        (dict(mixed_precision="fp8"), 1, "--mixed_precision=fp8: use one of none, mixed_bfloat16"),
        (dict(steps_per_execution=0), 1, "--steps_per_execution=0: must be >= 1"),
        (
            dict(steps_per_execution=4, train_steps=10),
            1,
            "--train_steps=10: must be a multiple of --steps_per_execution=4",
        ),
        (
            dict(steps_per_execution=2, train_steps=10, checkpoint_steps=2),
            2,
            "--steps_per_execution=2: Keras cannot run several steps per call over 2 replicas",
        ),
        (dict(num_logical_cpus=-1), 1, "--num_logical_cpus=-1: must not be negative"),
        (dict(cluster_timeout=-5), 1, "--cluster_timeout=-5: must not be negative"),
        (dict(use_tpu=True, strategy="mirrored"), 1, "--strategy=mirrored: --use_tpu/--tpu_name"),
        (
            dict(jit_compile=True, num_logical_cpus=2),
            1,
            "--jit_compile=True: XLA cannot compile a step spread over --num_logical_cpus=2",
        ),
    ],
)
def test_impossible_settings(kwargs, replicas, message):
    with pytest.raises(ConfigError) as error:
        validate(Config.from_flags(**kwargs), replicas)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_eval_batch_is_free_when_only_training():
    validate(Config.from_flags(mode="train", train_batch_size=32, eval_batch_size=30), 4)


def test_config_json_round_trips_nested_and_reads_the_flat_form_of_earlier_versions():
    config = Config.from_flags(resnet_depth=18, image_size=32, eval_dataset="x.npz", seed=3)
    assert Config.from_json(config.to_json()) == config
    assert Config.from_json(json.dumps(config.flags())) == config
    assert config.replace(seed=4).runtime.seed == 4 and config.runtime.seed == 3
    with pytest.raises(ConfigError, match="--resnet_dpth: no such setting"):
        Config.from_flags(resnet_dpth=18)


def test_every_setting_is_declared_once_with_help_and_a_unique_flag_name():
    from simclr_tf2.config import FIELDS, SECTIONS

    names = [f.name for kind in SECTIONS.values() for f in dataclasses.fields(kind)]
    assert len(names) == len(set(names))
    assert set(names) <= set(FIELDS)
    for name, (_, field) in FIELDS.items():
        assert field.metadata["help"].strip(), name


def test_config_is_a_leaf_module():
    # Importing the configuration must not load TensorFlow, Keras or the models.
    code = (
        "import sys, simclr_tf2.config; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras') or m.startswith('simclr_tf2.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['simclr_tf2.config']"


def test_declared_ranges_are_what_validation_enforces():
    # Each range's edges: the bound itself is accepted or refused as declared.
    from simclr_tf2.config import FIELDS

    checked = 0
    for name, (_, field) in FIELDS.items():
        limits = field.metadata["range"]
        if limits is None or limits.low is None:
            continue
        low = type(field.default)(limits.low)
        ok = not limits.low_open
        settings = {name: low}
        if name == "train_epochs" and low == 0:
            settings["train_steps"] = 1
        if name == "num_proj_layers":
            settings["proj_head_mode"] = "linear"
        try:
            validate(Config.from_flags(**settings))
            accepted = True
        except ConfigError as error:
            accepted = False
            assert str(error).startswith(f"--{name}="), error
        assert accepted == ok, name
        checked += 1
    assert checked > 20
