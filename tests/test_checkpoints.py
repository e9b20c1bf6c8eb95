"""Resuming from a damaged model_dir (simclr_tf2/checkpoints.py `resume_point`): a truncated,
damaged or missing newest checkpoint (data or index file) is named in one warning and the run
resumes from the newest one that reads back whole, never silently from step 0; when none does,
one line says so.

The unit tests damage small checkpoints in every way; the end-to-end test truncates the newest
checkpoint of a real run and re-runs the same run.py command.
"""

import logging
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from simclr_tf2.checkpoints import resume_point, unreadable
from simclr_tf2.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = ".data-00000-of-00001"


def truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_a_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def garbage(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"\x00not a checkpoint\x00" * 10)


DAMAGES = {
    "data truncated": (DATA, truncate),
    "data byte flipped": (DATA, flip_a_byte),
    "index truncated": (".index", truncate),
    "index garbage": (".index", garbage),
    "index missing": (".index", os.remove),
    "data missing": (DATA, os.remove),
}


@pytest.fixture
def three(tmp_path):
    """A model_dir with ckpt-1..3 of a few variables (one large enough to span blocks)."""
    variables = {
        "big": tf.Variable(tf.random.normal([256, 256])),
        "small": tf.Variable([1.0, 2.0]),
        "step": tf.Variable(0, dtype=tf.int64),
    }
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**variables), str(tmp_path), 5)
    for step in (1, 2, 3):
        variables["step"].assign(step)
        manager.save(checkpoint_number=step)
    return str(tmp_path)


def test_an_intact_model_dir_resumes_from_its_newest(three):
    assert resume_point(three) == os.path.join(three, "ckpt-3")
    assert unreadable(os.path.join(three, "ckpt-3")) is None


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_is_named_and_skipped(three, caplog, damage):
    suffix, harm = DAMAGES[damage]
    newest = os.path.join(three, "ckpt-3")
    harm(newest + suffix)
    assert unreadable(newest) is not None
    with caplog.at_level(logging.WARNING):
        assert resume_point(three, repair=True) == os.path.join(three, "ckpt-2")
    named = [r.getMessage() for r in caplog.records if "cannot be read back" in r.getMessage()]
    assert len(named) == 1 and named[0].startswith(f"Checkpoint {newest} cannot"), named
    # Repaired: the state file names ckpt-2 (and still lists ckpt-1, for the manager to keep
    # and sweep), so the resumed run writes step 3 anew.
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(step=tf.Variable(3, dtype=tf.int64)), three, 5
    )
    assert manager.checkpoints == [os.path.join(three, f"ckpt-{s}") for s in (1, 2)]
    assert manager.save(checkpoint_number=3) == newest
    assert unreadable(newest) is None


def test_the_two_newest_damaged_resumes_from_the_third(three, caplog):
    truncate(os.path.join(three, "ckpt-3" + DATA))
    garbage(os.path.join(three, "ckpt-2.index"))
    with caplog.at_level(logging.WARNING):
        assert resume_point(three) == os.path.join(three, "ckpt-1")
    assert caplog.text.count("cannot be read back") == 2


def test_an_unreadable_state_file_falls_back_to_the_files_on_disk(three):
    garbage(os.path.join(three, "checkpoint"))
    assert tf.train.latest_checkpoint(three) is None  # what TensorFlow alone would resume from
    assert resume_point(three, repair=True) == os.path.join(three, "ckpt-3")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), three, 5)
    assert manager.checkpoints == [os.path.join(three, f"ckpt-{s}") for s in (1, 2, 3)]


def test_no_intact_checkpoint_is_one_line_naming_them(three):
    for step in (1, 2, 3):
        truncate(os.path.join(three, f"ckpt-{step}{DATA}"))
    with pytest.raises(ConfigError) as error:
        resume_point(three)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"--model_dir={three}: none of its checkpoints can be read back (ckpt-3, ckpt-2, ckpt-1;"
    )


def test_an_empty_model_dir_has_no_resume_point(tmp_path):
    assert resume_point(str(tmp_path)) is None


# ------------------------------------------------------------------ end to end, run.py


@pytest.mark.reliability
def test_run_py_resumes_from_the_newest_intact_checkpoint(tmp_path):
    from test_kill_resume import FLAGS, assert_resumed_and_finished, run

    model_dir = str(tmp_path / "model")
    first = subprocess.run(
        [sys.executable, "run.py", *FLAGS, "--train_steps=20", f"--model_dir={model_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    none_intact = str(tmp_path / "none_intact")
    shutil.copytree(model_dir, none_intact)
    truncate(os.path.join(model_dir, "ckpt-20" + DATA))

    rerun = run(model_dir)  # the same command, planned to step 30
    named = [line for line in rerun.stderr.splitlines() if "cannot be read back" in line]
    assert len(named) == 1 and f"Checkpoint {model_dir}/ckpt-20 cannot" in named[0], named
    assert_resumed_and_finished(rerun, model_dir, 10)

    for step in (10, 20):
        truncate(os.path.join(none_intact, f"ckpt-{step}{DATA}"))
    failed = run(none_intact)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert failed.stderr.splitlines()[-1].startswith(
        f"run.py: --model_dir={none_intact}: none of its checkpoints can be read back "
        "(ckpt-20, ckpt-10;"
    )
    assert "Traceback" not in failed.stderr and "Saved checkpoint" not in failed.stderr
