"""One writer per model_dir (simclr_tf2/lock.py): a live holder is named and refused, a dead
one is taken over with a warning, and of many processes starting at once exactly one wins.

The end-to-end test runs real run.py processes: a second run on the model_dir of a live one
stops at once (exit 2, one line naming the first), and after the first is killed with SIGKILL
the same command takes its lock over and resumes. (tests/test_kill_resume.py checks the
takeover after every kill there; tests/test_multi_worker.py that only the chief locks.)
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from simclr_tf2.lock import LOCK_NAME, ModelDirInUseError, ModelDirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()
# Acquires the lock of argv[1] and reports it, then holds it until killed (or argv[2] s).
HOLDER = """
import sys, time
from simclr_tf2.lock import ModelDirLock, ModelDirInUseError
try:
    lock = ModelDirLock(sys.argv[1], heartbeat_s=0.2)
    lock.acquire()
except ModelDirInUseError as error:
    print("busy", flush=True)
    sys.exit(3)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def holder(model_dir, seconds=600.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(model_dir), str(seconds)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def write_record(model_dir, **fields) -> str:
    path = os.path.join(model_dir, LOCK_NAME)
    record = {"pid": 1, "host": HOST, "started": "then", "token": "x", **fields}
    with open(path, "w") as f:
        json.dump(record, f)
    return path


def test_a_held_lock_is_refused_naming_its_holder(tmp_path):
    with ModelDirLock(str(tmp_path)):
        assert os.path.exists(tmp_path / LOCK_NAME)
        with pytest.raises(ModelDirInUseError) as error:
            ModelDirLock(str(tmp_path)).acquire()
    message = str(error.value)
    assert f"--model_dir={tmp_path} is in use by process {os.getpid()} on {HOST}" in message
    assert "\n" not in message
    assert not os.path.exists(tmp_path / LOCK_NAME)  # released on leaving the block
    ModelDirLock(str(tmp_path)).acquire()  # and free again


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    proc = holder(tmp_path)
    try:
        assert proc.stdout.readline() == "held\n", proc.stderr.read()
        with pytest.raises(ModelDirInUseError, match=f"process {proc.pid} on {HOST}"):
            ModelDirLock(str(tmp_path)).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert os.path.exists(tmp_path / LOCK_NAME)  # SIGKILL leaves it behind
    lock = ModelDirLock(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert lock.held()
    taken = [r.getMessage() for r in caplog.records if "Took over" in r.getMessage()]
    assert len(taken) == 1 and f"process {proc.pid} on {HOST}" in taken[0], taken
    assert f"process {proc.pid} is no longer running" in taken[0]
    lock.release()


@pytest.mark.parametrize(
    "fields, reason",
    [
        # Our own pid, started at another time: the pid was reused by a later process.
        (dict(pid=os.getpid(), process_start="1"), "its pid is another process's now"),
        # A record from before this host restarted.
        (dict(pid=os.getpid(), boot_id="another-boot"), "this host has restarted since"),
    ],
)
def test_a_reused_pid_or_a_restarted_host_does_not_hold_the_lock(tmp_path, caplog, fields, reason):
    write_record(tmp_path, **fields)
    with caplog.at_level(logging.WARNING), ModelDirLock(str(tmp_path)) as lock:
        assert lock.held()
    assert reason in caplog.text


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path, caplog):
    path = write_record(tmp_path, host="node-b", pid=4242)
    with pytest.raises(ModelDirInUseError, match="in use by process 4242 on node-b"):
        ModelDirLock(str(tmp_path), stale_after_s=60).acquire()
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))  # node-b stopped beating an hour ago
    with caplog.at_level(logging.WARNING), ModelDirLock(str(tmp_path), stale_after_s=60) as lock:
        assert lock.held()
    assert (
        "from process 4242 on node-b" in caplog.text and "no heartbeat from node-b" in caplog.text
    )


def test_the_holder_beats_and_releases_only_its_own_lock(tmp_path):
    lock = ModelDirLock(str(tmp_path), heartbeat_s=0.05)
    lock.acquire()
    path = tmp_path / LOCK_NAME
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    deadline = time.time() + 10
    while os.path.getmtime(path) < time.time() - 60:
        assert time.time() < deadline, "no heartbeat"
        time.sleep(0.05)
    write_record(tmp_path, host="node-b", pid=4242)  # taken over by another host meanwhile
    lock.release()
    assert json.loads(path.read_text())["host"] == "node-b"  # not ours to remove


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_of_processes_starting_at_once_exactly_one_takes_the_lock(tmp_path, stale):
    if stale:
        write_record(tmp_path, host="node-b", pid=4242)
        hour_ago = time.time() - 3600
        os.utime(tmp_path / LOCK_NAME, (hour_ago, hour_ago))
    procs = [holder(tmp_path, seconds=5.0) for _ in range(6)]
    said = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.wait(timeout=60)
    assert sorted(said) == ["busy"] * 5 + ["held"], [p.stderr.read()[-500:] for p in procs]
    assert not os.path.exists(tmp_path / LOCK_NAME)


# ------------------------------------------------------------------ end to end, run.py


@pytest.mark.reliability
def test_a_second_run_on_a_live_model_dir_stops_at_once(tmp_path):
    from test_run import TINY

    model_dir = str(tmp_path / "model")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Long enough to outlive the second run's start; killed once that has been refused.
    command = [sys.executable, "run.py", "--mode=train", *TINY, "--train_steps=2000"]
    command.append(f"--model_dir={model_dir}")
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 240
        while not os.path.exists(os.path.join(model_dir, "ckpt-10.index")):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the first run saved no checkpoint in time"
            time.sleep(0.2)
        second = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert first.poll() is None, "the first run ended before the second was refused"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.splitlines()[-1] == (
        f"run.py: --model_dir={model_dir} is in use by process {first.pid} on {HOST} "
        f"(since {json.load(open(os.path.join(model_dir, LOCK_NAME)))['started']}): one run "
        "writes a model_dir at a time. Wait for it to end or stop it, or give another "
        f"--model_dir (if that process is surely gone, delete {model_dir}/{LOCK_NAME})."
    )
    # Refused before loading the data or building anything (the `Strategy ...` line comes
    # after the build). No bound on its time: TensorFlow's start alone took 10-90 s here,
    # depending on the load of the machine.
    assert "Traceback" not in second.stderr and "Strategy " not in second.stderr

    # The killed run's lock is taken over by the same command, which resumes its checkpoint.
    resumed = subprocess.run(
        [*command[:-2], "--train_steps=10", command[-1]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    taken = [line for line in resumed.stderr.splitlines() if "Took over the lock" in line]
    assert len(taken) == 1, resumed.stderr[-3000:]
    assert f"from process {first.pid} on {HOST}" in taken[0]
    assert f"process {first.pid} is no longer running" in taken[0]
    assert "Restored " in resumed.stderr
    assert not os.path.exists(os.path.join(model_dir, LOCK_NAME))
