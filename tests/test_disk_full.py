"""End to end: a checkpoint, export or result that cannot be written (full disk, read-only
model_dir) stops run.py with one line naming the path and the OS error, exit status 74; what
was written before stays whole and loads, and the same command resumes once the disk has room.

The disk fills up (RLIMIT_FSIZE 0, see `tests/disk_hooks.py`) or model_dir becomes read-only
right before the write chosen, inside the real run.py process.
"""

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

CASES = [("full", "checkpoint"), ("readonly", "checkpoint"), ("full", "export"), ("full", "result")]


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


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """{(how, where): (model_dir, the stopped run)}; the runs share the 2 cores."""

    def one(case):
        how, where = case
        if how == "readonly" and READ_ONLY_SKIP:
            return case, None
        model_dir = str(tmp_path_factory.mktemp(f"{how}_{where}") / "model")
        try:
            return case, (model_dir, hooked(model_dir, how, where))
        finally:
            if os.path.isdir(model_dir):
                os.chmod(model_dir, 0o755)  # room again, so to speak, for the re-run

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, CASES))


def pid_of(proc: subprocess.CompletedProcess) -> int:
    return int(re.search(r"^disk_hooks: \w+ \(pid (\d+)\)", proc.stderr, re.M).group(1))


@pytest.mark.parametrize("how", ["full", "readonly"])
def test_a_refused_checkpoint_keeps_the_last_one_and_the_rerun_resumes(refused, how):
    if refused[how, "checkpoint"] is None:
        pytest.skip(READ_ONLY_SKIP)
    model_dir, proc = refused[how, "checkpoint"]
    path, reason = refused_line(proc)
    failed = 2 * EVERY
    if how == "full":
        # Inside the checkpoint's own files; its shards are removed after the failure.
        assert path.startswith(os.path.join(model_dir, f"ckpt-{failed}")), path
        assert reason == os.strerror(27)  # EFBIG, what a file-size limit gives
        assert not [n for n in os.listdir(model_dir) if n.startswith(f"ckpt-{failed}")]
    else:
        assert path.startswith(model_dir) and reason == "Permission denied", (path, reason)
    assert f"resumes from {model_dir}/ckpt-{EVERY})" in proc.stderr
    assert recorded_step(model_dir) == EVERY
    assert assert_usable(model_dir) == [EVERY]
    assert not os.path.exists(os.path.join(model_dir, "saved_model"))
    assert not os.path.exists(os.path.join(model_dir, "result.json"))

    rerun = run(model_dir)
    # The read-only run could not remove its lock: the re-run takes it over.
    killed = pid_of(proc) if how == "readonly" else None
    assert_resumed_and_finished(rerun, model_dir, EVERY, killed_pid=killed)


def test_a_refused_export_leaves_nothing_under_its_name_and_the_rerun_exports(refused):
    model_dir, proc = refused["full", "export"]
    path, reason = refused_line(proc)
    root = os.path.join(model_dir, "saved_model")
    assert path.startswith(f"{root}/{PLANNED}.tmp-") and reason == os.strerror(27), path
    assert os.listdir(root) == []  # the temporary directory is removed too
    assert recorded_step(model_dir) == PLANNED
    assert assert_usable(model_dir) == list(range(EVERY, PLANNED + 1, EVERY))
    assert not os.path.exists(os.path.join(model_dir, "result.json"))

    assert_resumed_and_finished(run(model_dir), model_dir, PLANNED)


@pytest.fixture(scope="module")
def finished_after_refused_result(refused):
    """The model_dir of the refused result.json, re-run to its end."""
    model_dir, proc = refused["full", "result"]
    path, reason = refused_line(proc)
    assert path == os.path.join(model_dir, f"result_{PLANNED}.json.tmp"), path
    assert reason == os.strerror(27)
    names = os.listdir(model_dir)
    assert not [n for n in names if n.startswith("result")], names  # no half-written tmp
    assert tf.saved_model.load(os.path.join(model_dir, "saved_model", str(PLANNED))).variables
    assert assert_usable(model_dir) == list(range(EVERY, PLANNED + 1, EVERY))

    assert_resumed_and_finished(run(model_dir), model_dir, PLANNED)
    return model_dir


def test_a_refused_result_keeps_the_export_and_the_rerun_writes_it(finished_after_refused_result):
    with open(os.path.join(finished_after_refused_result, "result.json")) as f:
        assert json.load(f)["global_step"] == PLANNED


def _files(folder: str) -> dict:
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(parent, name), "rb") as f:
                found[os.path.relpath(os.path.join(parent, name), folder)] = f.read()
    return found


@pytest.mark.parametrize("where", ["result", "export"])
def test_a_refused_rewrite_keeps_the_previous_result_and_export(
    finished_after_refused_result, where
):
    """--mode=eval rewrites result.json, then the export of the same step: a refused
    rewrite leaves the previous files exactly as they were (the export's, and result.json
    when that is the one refused)."""
    model_dir = finished_after_refused_result
    export = os.path.join(model_dir, "saved_model", str(PLANNED))
    kept = ["result.json"] if where == "result" else []
    before = {**{n: _files(model_dir)[n] for n in kept}, **_files(export)}
    proc = hooked(model_dir, "full", where, "--mode=eval")
    path, _ = refused_line(proc)
    assert ("saved_model" in path) == (where == "export"), path
    after = {**{n: _files(model_dir)[n] for n in kept}, **_files(export)}
    assert after == before
    with open(os.path.join(model_dir, "result.json")) as f:
        assert json.load(f)["global_step"] == PLANNED
    assert tf.saved_model.load(export).variables
    assert [n for n in os.listdir(os.path.dirname(export))] == [str(PLANNED)]
    assert not [n for n in os.listdir(model_dir) if n.endswith(".tmp")]
