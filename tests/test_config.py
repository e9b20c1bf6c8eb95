"""Config validation: one line naming the flag, the value and the fix."""

import json

import pytest

from simclr_tf2.config import Config, ConfigError, validate


def test_defaults_are_the_paper_codes_and_valid():
    config = validate(Config())
    assert (config.learning_rate, config.temperature, config.train_batch_size) == (0.3, 0.1, 512)
    assert (config.resnet_depth, config.proj_head_mode, config.optimizer) == (
        50,
        "nonlinear",
        "lars",
    )
    assert json.loads(config.to_json())["weight_decay"] == 1e-6
    assert Config(image_size=32).cifar_stem and not Config(image_size=224).cifar_stem


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
        (dict(keep_checkpoint_max=0), 1, "--keep_checkpoint_max=0: keep at least 1"),
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
        (dict(num_logical_cpus=-1), 1, "--num_logical_cpus=-1: must be >= 0"),
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
        validate(Config(**kwargs), replicas)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_eval_batch_is_free_when_only_training():
    validate(Config(mode="train", train_batch_size=32, eval_batch_size=30), 4)
