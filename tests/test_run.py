"""End to end: the real run.py in a subprocess, on tiny settings."""

import json
import os
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.run_many import run_many

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dataset=digits",
    "--eval_split=test",
    "--image_size=32",
    "--resnet_depth=10",
    "--width_multiplier=0.25",
    "--train_batch_size=64",
    "--eval_batch_size=128",
    "--checkpoint_steps=10",
    "--learning_rate=1.0",
    "--temperature=0.5",
    "--warmup_epochs=0",
]


def run(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def checkpoints(model_dir):
    return sorted(
        int(m.group(1)) for f in os.listdir(model_dir) if (m := re.match(r"ckpt-(\d+)\.index$", f))
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run"))
    proc = run("--mode=train_then_eval", "--train_steps=20", f"--model_dir={model_dir}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir, proc


def test_train_then_eval_writes_every_output(finished):
    model_dir, proc = finished
    assert checkpoints(model_dir) == [10, 20]
    config = json.load(open(os.path.join(model_dir, "config.json")))
    assert config["data"]["dataset"] == "digits" and config["train"]["train_steps"] == 20
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result == json.load(open(os.path.join(model_dir, "result_20.json")))
    assert result["global_step"] == 20 and result["wall_clock_seconds"] > 0
    assert 0 <= result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1
    assert result["evaluated"] == {"dataset": "digits", "split": "test", "count": 360}
    # The startup log states the run's shape.
    assert "1 replica(s); batch 64 per replica, 64 global" in proc.stderr
    assert "20 steps planned" in proc.stderr and f"Outputs are in {model_dir}" in proc.stderr
    # stdout ends with where everything is.
    assert f"Outputs in {model_dir}:" in proc.stdout
    assert "top-1" in proc.stdout and "ckpt-20" in proc.stdout and "saved_model/20" in proc.stdout


def test_tensorboard_events_hold_the_scalars(finished):
    model_dir, _ = finished
    train = EventAccumulator(os.path.join(model_dir, "train"))
    train.Reload()
    tags = set(train.Tags()["tensors"])
    for name in ("contrast_loss", "contrast_acc", "supervised_acc", "learning_rate", "total_loss"):
        assert f"epoch_{name}" in tags
    assert len(train.Tensors("epoch_contrast_loss")) == 2  # one per checkpoint interval
    evaluation = EventAccumulator(os.path.join(model_dir, "eval"))
    evaluation.Reload()
    assert {"supervised_acc", "supervised_top5_acc"} <= set(evaluation.Tags()["tensors"])
    assert evaluation.Tensors("supervised_acc")[0].step == 20


def test_rerun_resumes_and_stops_at_the_planned_step(finished, tmp_path):
    model_dir, _ = finished
    # Same command again: nothing left to train, the result is rewritten.
    again = run("--mode=train_then_eval", "--train_steps=20", f"--model_dir={model_dir}", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Restored" in again.stderr and "from step 20" in again.stderr
    assert checkpoints(model_dir) == [10, 20]
    # A longer plan continues from the last checkpoint.
    longer = run("--mode=train", "--train_steps=30", f"--model_dir={model_dir}", *TINY)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "from step 20" in longer.stderr
    assert checkpoints(model_dir) == [10, 20, 30]


WRONG = [
    (["--dataset=no_such_dataset"], "--dataset=no_such_dataset: not the embedded default"),
    (["--dataset=/no/such/folder"], "--dataset=/no/such/folder: no such directory"),
    (["--dataset=missing.npz"], "--dataset=missing.npz: no such file"),
    (["--train_batch_size=0"], "--train_batch_size=0: must be positive"),
    (
        ["--num_logical_cpus=4", "--train_batch_size=30"],
        "--train_batch_size=30: must be divisible by the 4 replicas",
    ),
    (["--learning_rate=-1"], "--learning_rate=-1.0: must not be negative"),
    (["--train_mode=finetune"], "--checkpoint=None: --train_mode=finetune needs --checkpoint"),
    (["--fine_tune_after_block=2"], "--fine_tune_after_block=2: only applies with"),
    (["--temperature=0"], "--temperature=0.0: must be positive"),
    (["--resnet_depth=42"], "--resnet_depth=42: use one of"),
    (["--mode=evaluate"], "flag --mode=evaluate: value should be one of"),
    (["--mode=eval"], "--mode=eval: no checkpoint in --model_dir="),
    (["--keep_hub_module_max=0"], "--keep_hub_module_max=0: must be >= 1 (keep at least 1 export)"),
    (["--mode=eval", "--eval_timeout=-1"], "--eval_timeout=-1: must not be negative"),
    (["--verify_images=full"], "flag --verify_images=full: value should be one of"),
    (
        ["--proj_head_mode=linear", "--ft_proj_selector=3"],
        "--ft_proj_selector=3: must be in [0, 1]",
    ),
    (["stray_argument"], "unexpected arguments ['stray_argument']"),
    (["--train_mode=finetune", "--checkpoint=/no/ckpt"], "--checkpoint=/no/ckpt: no checkpoint"),
    (
        ["--mode=train_then_eval", "--eval_split=nope"],
        "--eval_split=nope: no such split in --dataset=digits",
    ),
    (["--train_steps=0", "--train_epochs=0"], "--train_epochs=0: with --train_steps=0 nothing"),
    (
        ["--mode=train_then_eval", "--eval_split=train[80%:]"],
        "--eval_split=train[80%:]: all of its 287 images are training images (--dataset=digits "
        "--train_split=train), so the evaluation would score images the model trained on",
    ),
    (
        # digits' train split holds 1437 images: a batch of 4096 would repeat them.
        ["--train_batch_size=4096"],
        "--train_batch_size=4096: the training data (digits, --train_split=train) holds 1437 "
        "examples, so a batch would hold images twice",
    ),
    (
        ["--train_batch_size=1200", "--label_fraction=0.5"],
        "holds 720 examples, so a batch would hold images twice (an image's copies would be "
        "its own negatives); use --train_batch_size=720 or less.",
    ),
]


def test_wrong_invocations_exit_2_with_one_line(tmp_path):
    # All cases in one process (tests/run_many.py: run.py's app.run per case, flags reset in
    # between), as one subprocess per case would import TensorFlow 20 times. The real
    # `python run.py` exits 2 the same way in the tests below.
    # --train_steps=1 first: a case that wrongly passes validation ends quickly.
    cases = [[*TINY, "--train_steps=1", f"--model_dir={tmp_path}", *args] for args, _ in WRONG]
    results = run_many(cases, tmp_path)
    for (args, expected), result in zip(WRONG, results, strict=True):
        stderr = result["stderr"]
        assert result["code"] == 2, (args, stderr[-2000:])
        lines = [line for line in stderr.splitlines() if line.startswith("run.py: ")]
        assert len(lines) == 1 and expected in lines[0], (args, stderr[-2000:])
        assert "Traceback" not in stderr, args


def test_a_user_error_is_the_only_line_on_stderr(tmp_path):
    # TensorFlow's native start-up messages (CUDA probing, oneDNN notices) are held back
    # unless --verbosity asks for them; here TensorFlow starts before the settings fail.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run.py"), "--train_batch_size=0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr == "run.py: --train_batch_size=0: must be positive.\n", proc.stderr


def test_one_class_folder_for_linear_eval(tmp_path):
    from PIL import Image

    folder = tmp_path / "images" / "only_class"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "a.png")
    proc = run(*TINY, f"--model_dir={tmp_path}", f"--dataset={tmp_path / 'images'}")
    assert proc.returncode == 2
    assert "has 1 class, and --lineareval_while_pretraining needs at least 2" in proc.stderr


def test_train_then_eval_on_a_folder_without_a_held_out_part_stops_with_one_line(tmp_path):
    from tests.images import rgb, save

    for c in range(3):
        for i in range(4):
            save(str(tmp_path / "images" / f"class_{c}" / f"{i}.png"), rgb(8, 8, seed=4 * c + i))
    folder = str(tmp_path / "images")
    args = ["--mode=train_then_eval", "--train_batch_size=8", f"--dataset={folder}"]
    proc = run(*TINY, *args, f"--model_dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("run.py: ")]
    assert ours == [
        "run.py: --eval_split=test: all of its 12 images are training images "
        f"(--dataset={folder} --train_split=train), so the evaluation would score images the "
        "model trained on; hold some out with --train_split=train[:90%] "
        "--eval_split=train[90%:], or evaluate on other data with --eval_dataset."
    ], proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "config.json")  # stopped before the run started


def test_image_size_mismatch_with_npz(tmp_path):
    import numpy as np

    path = tmp_path / "small.npz"
    np.savez(path, images=np.zeros((8, 32, 32, 3), np.uint8), labels=np.arange(8) % 2)
    proc = run(*TINY, f"--model_dir={tmp_path}", f"--dataset={path}", "--image_size=224")
    assert proc.returncode == 2
    assert "--image_size=224: the images of" in proc.stderr and "use --image_size=32" in proc.stderr


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_file_only_decoding_finds_bad_is_named_and_can_be_skipped(tmp_path, replicas):
    from tests.images import rgb, save, undecodable_jpeg, undecodable_png

    images = tmp_path / "images"
    for label in ("a", "b"):
        for i in range(4):
            save(str(images / label / f"{i}.png"), rgb(32, 32, seed=10 * len(label) + i))
    bad = str(images / "b" / "bad.jpg")
    undecodable_jpeg(bad)  # passes the default header check
    undecodable_png(str(images / "a" / "bad.png"))
    args = [
        *TINY,
        "--mode=train",
        "--train_batch_size=4",
        "--train_steps=6",  # 24 examples: every file comes round at least twice
        f"--num_logical_cpus={replicas}",
        f"--dataset={images}",
    ]
    os.remove(str(images / "a" / "bad.png"))  # one bad file: the message names it
    proc = run(*args, f"--model_dir={tmp_path / 'stopped'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # (libjpeg prints its own complaint too, on the C side.)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("run.py: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(
        f"run.py: 1 bad image file(s) at decode time: {bad}: cannot be decoded ("
    )
    assert "--skip_bad_images" in lines[0]

    undecodable_png(str(images / "a" / "bad.png"))
    proc = run(*args, "--skip_bad_images", f"--model_dir={tmp_path / 'skipped'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"with {replicas} replica(s)" in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if "Skipping bad image" in line]
    # Named once each (not once per epoch), with the reason, and counted.
    assert len(skipped) == 2, skipped
    assert any(f"{bad}: cannot be decoded (" in line for line in skipped)
    assert any(f"{images / 'a' / 'bad.png'}: cannot be decoded (" in line for line in skipped)
    assert "2 file(s) skipped so far" in skipped[-1]
    assert checkpoints(str(tmp_path / "skipped"))[-1] == 6
