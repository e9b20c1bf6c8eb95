"""End to end: a run killed with SIGKILL at any moment resumes when the same command is re-run.

The first run is killed (by the test, mid-training; or by itself through `tests/kill_hooks.py`,
inside a checkpoint save or the export, at the same moment every time); the same `run.py`
command then runs again, unchanged. It must take over the lock the killed run left, restore the
last checkpoint the `checkpoint` state file names, continue from its step rather than from 0,
and stop at exactly the planned step; every checkpoint the state file lists must stay readable,
both right after the kill and at the end, and no export is ever half there under its name.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import tensorflow as tf
from test_run import TINY

pytestmark = pytest.mark.reliability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "run.py")
HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_hooks.py")
PLANNED = 30
EVERY = 10
FLAGS = [
    "--mode=train_then_eval",
    *TINY,
    f"--train_steps={PLANNED}",
    f"--checkpoint_steps={EVERY}",
    "--eval_steps=2",
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
# A whole tiny run takes ~25 s on 2 cores; these bounds only stop a hung run from hanging CI.
RUN_TIMEOUT = 300
FIRST_CHECKPOINT_TIMEOUT = 240
ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def command(model_dir: str, kill_point: str | None = None) -> list[str]:
    script = [HOOKS, kill_point] if kill_point else [RUN_PY]
    return [sys.executable, *script, *FLAGS, f"--model_dir={model_dir}"]


def run(model_dir: str, kill_point: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(model_dir, kill_point),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def step_of(prefix: str) -> int:
    return int(re.fullmatch(r"ckpt-(\d+)", os.path.basename(prefix)).group(1))


def recorded_step(model_dir: str) -> int | None:
    """The step of the checkpoint the `checkpoint` state file names, if any."""
    state = tf.train.get_checkpoint_state(model_dir)
    return step_of(state.model_checkpoint_path) if state else None


def assert_usable(model_dir: str) -> list[int]:
    """Every checkpoint the state file lists reads back whole and holds its own step;
    the JSON files parse. Returns the listed steps."""
    state = tf.train.get_checkpoint_state(model_dir)
    assert state is not None, os.listdir(model_dir)
    assert tf.train.latest_checkpoint(model_dir) == os.path.join(
        model_dir, os.path.basename(state.model_checkpoint_path)
    )
    steps = []
    for path in state.all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(os.path.join(model_dir, path))
        # Reading every tensor checks the data file against the index (sizes, checksums).
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
        assert reader.get_tensor(ITERATIONS) == step_of(path), path
        steps.append(step_of(path))
    for name in os.listdir(model_dir):
        if name.endswith(".json"):
            with open(os.path.join(model_dir, name)) as f:
                json.load(f)
    return steps


def assert_resumed_and_finished(
    rerun: subprocess.CompletedProcess, model_dir: str, step: int, killed_pid: int | None = None
):
    """The re-run took over the lock of `killed_pid` (if given), restored ckpt-<step>, trained
    from there, stopped at exactly PLANNED and exported that step."""
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    if killed_pid is not None:
        taken = re.findall(r"Took over the lock .*", rerun.stderr)
        assert len(taken) == 1 and f"from process {killed_pid} on " in taken[0], log[-3000:]
        assert f"process {killed_pid} is no longer running" in taken[0], taken
    assert not os.path.exists(os.path.join(model_dir, "lock.json"))  # released at the end
    assert f"Restored {os.path.join(model_dir, f'ckpt-{step}')}\n" in rerun.stderr, log[-3000:]
    assert f"from step {step}." in rerun.stderr, log[-3000:]
    # It saved exactly the checkpoints after the resumed one: no replay from 0, no overshoot.
    saved = [int(n) for n in re.findall(r"Saved checkpoint .*/ckpt-(\d+)$", rerun.stderr, re.M)]
    assert saved == list(range(step + EVERY, PLANNED + 1, EVERY)), log[-3000:]
    with open(os.path.join(model_dir, "result.json")) as f:
        assert json.load(f)["global_step"] == PLANNED
    assert recorded_step(model_dir) == PLANNED
    assert assert_usable(model_dir) == list(range(EVERY, PLANNED + 1, EVERY))
    names = os.listdir(model_dir)
    on_disk = [int(m.group(1)) for name in names if (m := re.match(r"ckpt-(\d+)\.", name))]
    assert max(on_disk) == PLANNED, sorted(on_disk)
    export = os.path.join(model_dir, "saved_model", str(PLANNED))
    assert tf.saved_model.load(export).variables  # whole: it loads


def test_sigkill_mid_training_then_the_same_command_resumes(tmp_path):
    model_dir = str(tmp_path / "model")
    with open(tmp_path / "killed.log", "w") as log:  # a file, so a full pipe never blocks it
        proc = subprocess.Popen(command(model_dir), cwd=ROOT, env=ENV, stdout=log, stderr=log)
    try:
        # Wait for the state file to name a checkpoint, not only for ckpt-<n>.index: the index
        # is written a moment before the state file, and a kill in between correctly resumes
        # from 0, which this test could not tell from a broken resume.
        deadline = time.monotonic() + FIRST_CHECKPOINT_TIMEOUT
        while not (os.path.isdir(model_dir) and recorded_step(model_dir)):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            time.sleep(0.05)
        time.sleep(1.0)  # a few steps into the next interval
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)

    step = recorded_step(model_dir)
    assert 0 < step < PLANNED
    assert step in assert_usable(model_dir)
    rerun = run(model_dir)
    assert_resumed_and_finished(rerun, model_dir, step, killed_pid=proc.pid)


KILL_POINTS = ["before_state", "mid_write"]


def killed_pid(killed: subprocess.CompletedProcess) -> tuple[int, str]:
    """(pid, line) of the `kill_hooks: SIGKILL (pid N) ...` line of a killed run."""
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    line = re.search(r"^kill_hooks: SIGKILL \(pid (\d+)\) .*$", killed.stderr, re.M)
    assert line, killed.stderr[-3000:]
    return int(line.group(1)), line.group()


@pytest.fixture(scope="module")
def killed_in_save(tmp_path_factory):
    """{kill point: (model_dir, the killed run)} for the save points and the export; the
    runs share the 2 cores."""

    def killed(point):
        model_dir = str(tmp_path_factory.mktemp(point) / "model")
        return point, (model_dir, run(model_dir, point))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(killed, [*KILL_POINTS, "mid_export"]))


@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_sigkill_inside_a_checkpoint_save_then_the_same_command_resumes(killed_in_save, kill_point):
    model_dir, killed = killed_in_save[kill_point]
    pid, line = killed_pid(killed)
    # The checkpoint being written when the process died: the second one, every time.
    dying = int(re.search(r"ckpt-(\d+)", line).group(1))
    assert dying == 2 * EVERY, line
    names = os.listdir(model_dir)
    if kill_point == "before_state":
        # Its files are complete, but the state file does not name them yet.
        assert {f"ckpt-{dying}.index", f"ckpt-{dying}.data-00000-of-00001"} <= set(names)
    else:
        # Only the shard written into <prefix>_temp/ exists: nothing was merged.
        assert f"ckpt-{dying}_temp" in names and f"ckpt-{dying}.index" not in names, names
        assert f"ckpt-{dying}.data-00000-of-00001" not in names, names
        temp = os.listdir(os.path.join(model_dir, f"ckpt-{dying}_temp"))
        assert any(".data-" in n for n in temp) and any(n.endswith(".index") for n in temp), temp
    assert recorded_step(model_dir) == dying - EVERY
    assert assert_usable(model_dir) == list(range(EVERY, dying, EVERY))
    assert "Saved checkpoint" not in killed.stderr.split(line)[-1]

    rerun = run(model_dir)
    assert_resumed_and_finished(rerun, model_dir, dying - EVERY, killed_pid=pid)


def test_sigkill_inside_the_export_then_the_same_command_resumes(killed_in_save):
    model_dir, killed = killed_in_save["mid_export"]
    pid, line = killed_pid(killed)
    # Killed in the export after training, every checkpoint written, before result.json.
    assert f"{model_dir}/saved_model/{PLANNED}.tmp-" in line and "variables.index" in line, line
    assert recorded_step(model_dir) == PLANNED
    assert assert_usable(model_dir) == list(range(EVERY, PLANNED + 1, EVERY))
    exports = os.listdir(os.path.join(model_dir, "saved_model"))
    # Only the temporary directory of the export being written: nothing under the final name.
    assert len(exports) == 1 and exports[0].startswith(f"{PLANNED}.tmp-"), exports
    assert not os.path.exists(os.path.join(model_dir, "saved_model", exports[0], "saved_model.pb"))
    assert not os.path.exists(os.path.join(model_dir, "result.json"))

    rerun = run(model_dir)
    assert_resumed_and_finished(rerun, model_dir, PLANNED, killed_pid=pid)
