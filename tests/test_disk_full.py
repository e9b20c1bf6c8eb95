"""End to end: a checkpoint, export or result that cannot be written (full disk, read-only
model_dir) stops run.py with one line naming the path and the OS error, exit status 74; what
was written before stays whole and loads, and the same command resumes once the disk has room.

The disk fills up (RLIMIT_FSIZE 0, see `tests/disk_hooks.py`) or model_dir becomes read-only
right before the write chosen, inside the real run.py process. To keep the real runs few, one
model_dir goes through them in turn: the disk fills at the second checkpoint; the re-run
resumes and the disk fills at the export; the next one at result.json; the last finishes;
then an --mode=eval run is refused the re-export of the same step. A second model_dir
becomes read-only at its second checkpoint.
"""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import tensorflow as tf
from test_kill_resume import (
    ENV,
    EVERY,
    FLAGS,
    PLANNED,
    ROOT,
    RUN_TIMEOUT,
    assert_resumed_and_finished,
    assert_usable,
    recorded_step,
    run,
)

from simclr_tf2.writes import WriteRefusedError

pytestmark = pytest.mark.reliability

HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "disk_hooks.py")
# Root writes into a mode-0555 directory (CAP_DAC_OVERRIDE): the read-only run goes without it.
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
READ_ONLY_SKIP = None
if os.geteuid() == 0 and shutil.which("setpriv") is None:
    READ_ONLY_SKIP = "running as root without setpriv: chmod cannot make a directory read-only"


def hooked(model_dir: str, how: str, where: str, *flags: str) -> subprocess.CompletedProcess:
    prefix = DROP_DAC if how == "readonly" and os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, HOOKS, how, where, *FLAGS, *flags, f"--model_dir={model_dir}"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def refused_line(proc: subprocess.CompletedProcess) -> tuple[str, str]:
    """(path, OS error) of the one line of a run stopped by a refused write."""
    log = proc.stdout + proc.stderr
    assert proc.returncode == WriteRefusedError.EXIT_STATUS, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("run.py:")]
    assert len(lines) == 1, log[-3000:]
    found = re.fullmatch(r"run\.py: cannot write (\S+): ([^.]+)\. Free space .*", lines[0])
    assert found, lines[0]
    return found.group(1), found.group(2)


def restored(proc: subprocess.CompletedProcess, model_dir: str, step: int) -> list[int]:
    """Asserts the run resumed from ckpt-<step>; returns the steps it saved."""
    assert f"Restored {model_dir}/ckpt-{step}\n" in proc.stderr, proc.stderr[-3000:]
    assert f"from step {step}." in proc.stderr, proc.stderr[-3000:]
    return [int(n) for n in re.findall(r"Saved checkpoint .*/ckpt-(\d+)$", proc.stderr, re.M)]


FILE_TOO_LARGE = os.strerror(errno.EFBIG)  # what a write beyond RLIMIT_FSIZE gets


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """{how: (model_dir, the run stopped at its second checkpoint)} for a full disk and a
    read-only model_dir; the two runs share the 2 cores."""

    def one(how):
        if how == "readonly" and READ_ONLY_SKIP:
            return how, None
        model_dir = str(tmp_path_factory.mktemp(how) / "model")
        try:
            return how, (model_dir, hooked(model_dir, how, "checkpoint"))
        finally:
            if os.path.isdir(model_dir):
                os.chmod(model_dir, 0o755)  # writable again for the re-run

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, ["full", "readonly"]))


def assert_kept_the_first_checkpoint(model_dir: str, proc: subprocess.CompletedProcess) -> None:
    assert f"resumes from {model_dir}/ckpt-{EVERY})" in proc.stderr
    assert recorded_step(model_dir) == EVERY
    assert assert_usable(model_dir) == [EVERY]
    assert not os.path.exists(os.path.join(model_dir, "saved_model"))
    assert not os.path.exists(os.path.join(model_dir, "result.json"))


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one(first):
    model_dir, proc = first["full"]
    path, reason = refused_line(proc)
    # A file of the checkpoint being written; what it left is removed after the failure.
    assert path.startswith(os.path.join(model_dir, f"ckpt-{2 * EVERY}")), path
    assert reason == FILE_TOO_LARGE
    assert not [n for n in os.listdir(model_dir) if n.startswith(f"ckpt-{2 * EVERY}")]
    assert_kept_the_first_checkpoint(model_dir, proc)


def test_a_read_only_model_dir_at_a_checkpoint_keeps_the_last_one_and_the_rerun_resumes(first):
    if first["readonly"] is None:
        pytest.skip(READ_ONLY_SKIP)
    model_dir, proc = first["readonly"]
    path, reason = refused_line(proc)
    assert path.startswith(model_dir) and reason == "Permission denied", (path, reason)
    # The write that was refused, not the lock the run then could not remove.
    assert not os.path.basename(path).startswith("lock.json"), path
    assert_kept_the_first_checkpoint(model_dir, proc)
    holder = int(re.search(r"^disk_hooks: \w+ \(pid (\d+)\)", proc.stderr, re.M).group(1))
    # It could not remove its lock from the read-only directory: the re-run takes it over.
    assert_resumed_and_finished(run(model_dir), model_dir, EVERY, killed_pid=holder)


@pytest.fixture(scope="module")
def export_refused(first):
    """The full disk's model_dir, re-run: it resumes, and the disk fills at the export."""
    model_dir, _ = first["full"]
    return model_dir, hooked(model_dir, "full", "export")


def test_the_rerun_resumes_and_a_full_disk_at_the_export_leaves_no_export(export_refused):
    model_dir, proc = export_refused
    path, reason = refused_line(proc)
    root = os.path.join(model_dir, "saved_model")
    assert path.startswith(f"{root}/{PLANNED}.tmp-") and reason == FILE_TOO_LARGE, path
    assert restored(proc, model_dir, EVERY) == list(range(2 * EVERY, PLANNED + 1, EVERY))
    assert os.listdir(root) == []  # its temporary directory is removed too
    assert recorded_step(model_dir) == PLANNED
    assert assert_usable(model_dir) == list(range(EVERY, PLANNED + 1, EVERY))
    assert not os.path.exists(os.path.join(model_dir, "result.json"))


@pytest.fixture(scope="module")
def result_refused(export_refused):
    """Re-run again: it exports, and the disk fills at result.json."""
    model_dir, _ = export_refused
    return model_dir, hooked(model_dir, "full", "result")


def test_a_full_disk_at_result_json_keeps_the_export(result_refused):
    model_dir, proc = result_refused
    path, reason = refused_line(proc)
    assert path == os.path.join(model_dir, f"result_{PLANNED}.json.tmp"), path
    assert reason == FILE_TOO_LARGE
    assert restored(proc, model_dir, PLANNED) == []
    names = os.listdir(model_dir)
    assert not [n for n in names if n.startswith("result")], names  # no half-written tmp
    assert tf.saved_model.load(os.path.join(model_dir, "saved_model", str(PLANNED))).variables
    assert assert_usable(model_dir) == list(range(EVERY, PLANNED + 1, EVERY))


@pytest.fixture(scope="module")
def finished(result_refused):
    """The same command once more, with room on the disk: it finishes."""
    model_dir, _ = result_refused
    return model_dir, run(model_dir)


def test_with_room_again_the_same_command_finishes(finished):
    model_dir, rerun = finished
    assert_resumed_and_finished(rerun, model_dir, PLANNED)


def _files(folder: str) -> dict:
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(parent, name), "rb") as f:
                found[os.path.relpath(os.path.join(parent, name), folder)] = f.read()
    return found


def test_a_refused_re_export_keeps_the_previous_export(finished):
    """--mode=eval evaluates the last checkpoint (result.json anew), then exports its step
    again: the refused export leaves the one there exactly as it was."""
    model_dir, _ = finished
    export = os.path.join(model_dir, "saved_model", str(PLANNED))
    before = _files(export)
    proc = hooked(model_dir, "full", "export", "--mode=eval")
    path, reason = refused_line(proc)
    assert path.startswith(f"{export}.tmp-") and reason == FILE_TOO_LARGE, path
    assert _files(export) == before
    assert tf.saved_model.load(export).variables
    assert os.listdir(os.path.dirname(export)) == [str(PLANNED)]
    with open(os.path.join(model_dir, "result.json")) as f:
        assert json.load(f)["global_step"] == PLANNED
