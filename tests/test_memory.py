"""The train step's memory estimate: the refusal, the batch that fits, and the
estimate against a measured peak."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.build import build_model
from simclr_tf2.config import Config
from simclr_tf2.memory import (
    GB,
    STATED_ERROR,
    MemoryCheckError,
    check_memory,
    encoder_layout,
    estimate,
)
from tools.memory_table import estimate_for, make_images, peak_rss_of, train_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_batch_far_beyond_memory_is_refused_before_anything_is_written(tmp_path):
    # ResNet-50 at 224 px needs ~0.2 GB per pair: a batch of 2048 (~400 GB) fits no host,
    # while the 2048 images (112 px, upscaled 2x) hold the batch without repeats.
    data = str(tmp_path / "images.npz")
    make_images(data, 112, 2048)
    model_dir = tmp_path / "run"
    result = _run(
        "--mode=train",
        f"--dataset={data}",
        "--image_size=224",
        "--train_batch_size=2048",
        "--train_steps=2",
        f"--model_dir={model_dir}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    needed = float(re.search(r"would need about ([\d.]+) GB", line).group(1))
    available = float(re.search(r"but ([\d.]+) GB is available", line).group(1))
    fits = int(re.search(r"the largest batch that fits is --train_batch_size=(\d+)", line).group(1))
    assert needed > 100 and needed > available, line
    assert 0 < fits < 2048, line
    assert "--skip_memory_check" in line
    # Nothing was written: no model_dir, so no checkpoint, event file or config.json.
    assert not model_dir.exists()


def test_the_largest_batch_is_the_largest_that_fits_and_a_fitting_batch_passes():
    strategy = tf.distribute.get_strategy()
    config = Config.from_flags(resnet_depth=18, image_size=32, train_batch_size=1024)
    needed = estimate(config, num_classes=10).bytes
    # Just enough memory: not refused. Slightly less: refused, naming a batch that fits.
    assert check_memory(config, strategy, num_classes=10, available_bytes=needed).fits
    with pytest.raises(MemoryCheckError) as raised:
        check_memory(config, strategy, num_classes=10, available_bytes=0.9 * needed)
    largest = int(re.search(r"--train_batch_size=(\d+)\. Or", str(raised.value)).group(1))
    assert largest < 1024

    def needs(batch):
        return estimate(config.replace(train_batch_size=batch), num_classes=10).bytes

    assert needs(largest) <= 0.9 * needed < needs(largest + 1)
    # --skip_memory_check starts anyway.
    skipping = config.replace(skip_memory_check=True)
    result = check_memory(skipping, strategy, num_classes=10, available_bytes=0.9 * needed)
    assert not result.fits and result.largest_batch == largest


def test_replicas_share_the_host():
    # The same global batch on two replicas of one host: each holds half the batch and
    # its own variables, and the largest batch is a multiple of the replicas.
    config = Config.from_flags(resnet_depth=18, image_size=32, train_batch_size=512)
    config = config.replace(global_bn=False)  # the same kernels on one and two replicas
    one = estimate(config, 1, available=8 * GB)
    two = estimate(config, 2, available=4 * GB)
    assert one.bytes / 2 < two.bytes < one.bytes
    assert two.per_example == one.per_example
    assert two.largest_batch % 2 == 0 and two.largest_batch <= one.largest_batch


@pytest.mark.parametrize(
    "settings",
    [
        dict(resnet_depth=18, image_size=32),
        dict(resnet_depth=50, image_size=64, width_multiplier=0.25),
        dict(resnet_depth=50, image_size=64, width_multiplier=0.25, sk_ratio=0.0625, se_ratio=0.25),
    ],
)
def test_the_layout_counts_the_encoders_parameters(settings):
    config = Config.from_flags(
        **settings, proj_head_mode="none", lineareval_while_pretraining=False
    )
    encoder = build_model(config, None).encoder
    layout = encoder_layout(
        config.model.resnet_depth,
        config.model.width_multiplier,
        config.data.image_size,
        config.cifar_stem,
        config.model.sk_ratio,
        config.model.se_ratio,
    )
    # Trainable scalars plus batch norm's two moving statistics per channel.
    assert layout.params == sum(int(np.prod(v.shape)) for v in encoder.weights)


def test_the_estimate_is_within_its_stated_error_of_a_measured_peak(tmp_path):
    # ResNet-18 at half width, CIFAR stem, at two batches: the activations are about a
    # third of the peak at the larger one, so a wrong per-example factor shows.
    for batch in (32, 160):
        settings = dict(
            resnet_depth=18,
            width_multiplier=0.5,
            image_size=32,
            train_batch_size=batch,
            mixed_precision="none",
            kernels="auto",
        )
        data = str(tmp_path / f"images{batch}.npz")
        make_images(data, 32, 2 * batch)
        command = train_command(settings, data, steps=2)
        guess = estimate_for(settings, 2 * batch).bytes / GB
        # The same run's peak varies between runs (thread scheduling, the allocator): at
        # batch 160 it was 1.61-1.66 GB in 20 runs on one host, and 1.99 GB once in CI on
        # that host. So a miss is measured again, up to three runs in all, and one run must
        # be within the stated error; a wrong per-example factor misses in every run.
        measured = []
        while len(measured) < 3:
            measured.append(peak_rss_of(command)[0])
            if abs(guess - measured[-1]) <= STATED_ERROR * measured[-1]:
                break
        else:
            raise AssertionError(
                f"batch {batch}: estimate {guess:.3f} GB, measured peaks {measured} GB "
                f"(load average {os.getloadavg()}, {os.cpu_count()} CPUs)"
            )
