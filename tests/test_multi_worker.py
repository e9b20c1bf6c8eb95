"""Multi-worker training for real: run.py in two worker processes on 127.0.0.1.

Each worker splits its CPU into 2 logical devices, so the cluster has 4
replicas, like a single process with 4 logical devices. With --deterministic
the global batches do not depend on how the replicas are spread over
processes, so the two runs must end with the same loss and weights.
"""

import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "run.py")
FLAGS = [
    "--dataset=digits",
    "--eval_split=test",
    "--image_size=32",
    "--resnet_depth=10",
    "--width_multiplier=0.25",
    "--train_batch_size=32",
    "--eval_batch_size=32",
    "--eval_steps=2",
    "--learning_rate=0.1",
    "--temperature=0.5",
    "--warmup_epochs=0",
    "--deterministic",
    # A worker whose peer never comes up stops after this instead of waiting an hour.
    "--cluster_timeout=120",
]
# Bounds on every wait, so a broken cluster fails the test instead of hanging CI
# (a whole tiny run takes 30-80 s here; two runs share the 2 cores, and another
# test file's runs may share them too).
RUN_TIMEOUT = 900
LOST_WORKER_EXIT = 90


def free_ports(count: int) -> list[int]:
    """Ports free now and outside the kernel's ephemeral range: a port picked by
    binding to 0 can be taken, before its worker binds it, by the source port of
    another worker's outgoing connection."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    rng = random.Random()
    ports = []
    while len(ports) < count:
        port = rng.randrange(10_000, ephemeral_low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def float64_keras_home(path) -> dict:
    """Environment that makes Keras build float64 layers (its `floatx` setting)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "keras.json"), "w") as f:
        json.dump({"floatx": "float64", "backend": "tensorflow"}, f)
    return {"KERAS_HOME": str(path)}


def start_workers(model_dir, logs_dir, *args, env=None) -> list[subprocess.Popen]:
    """Two run.py workers (2 logical CPUs each) on fresh ports; each with its own TMPDIR."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(2):
        tmp = os.path.join(logs_dir, f"tmp{index}")
        os.makedirs(tmp, exist_ok=True)
        worker_env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TMPDIR": tmp,
            **(env or {}),
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        log = open(os.path.join(logs_dir, f"worker{index}.log"), "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    RUN_PY,
                    *FLAGS,
                    "--strategy=multi_worker",
                    "--num_logical_cpus=2",
                    f"--model_dir={model_dir}",
                    *args,
                ],
                cwd=ROOT,
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
    return procs


def wait_all(procs, timeout=RUN_TIMEOUT) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def log_of(logs_dir, index) -> str:
    with open(os.path.join(logs_dir, f"worker{index}.log")) as f:
        return f.read()


def run_single(model_dir, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            RUN_PY,
            *FLAGS,
            "--strategy=mirrored",
            "--num_logical_cpus=4",
            f"--model_dir={model_dir}",
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def scalars(model_dir, tag) -> list[float]:
    values = []
    for path in sorted(glob.glob(os.path.join(model_dir, "train", "events*"))):
        events = EventAccumulator(path)
        events.Reload()
        if tag in events.Tags()["tensors"]:
            values += [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
    return values


def cluster_beside_single(multi, single, logs_dir, args, env):
    """(exit codes of the 2 workers, the single process): the same run by 2 workers x 2
    devices into `multi` and by 1 process x 4 devices into `single`, at the same time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = pool.submit(lambda: wait_all(start_workers(multi, str(logs_dir), *args, env=env)))
        one = pool.submit(run_single, single, *args, env=env)
        return codes.result(), one.result()


def checkpoint_tensors(model_dir) -> dict:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def assert_same_tensors(a: dict, b: dict) -> None:
    """float64 runs of the same steps: equal up to round-off (1e-9)."""
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9, err_msg=key)


@pytest.fixture(scope="module")
def cluster_and_single(tmp_path_factory):
    """The same 3-step train_then_eval by 2 workers x 2 devices and by 1 process x 4.

    In float64: in float32 the different summation orders (a ring across
    processes, a local reduction in one) differ by ~1e-7, which three LARS
    steps amplify to ~7e-5 in the zero-initialised last BN of the encoder (as
    in test_simclr_mirrored.py); float64 leaves only round-off, so equality
    checks the distributed logic itself.
    """
    base = tmp_path_factory.mktemp("multi_worker")
    multi, single = str(base / "multi"), str(base / "single")
    args = ["--mode=train_then_eval", "--train_steps=3", "--checkpoint_steps=3"]
    codes, one = cluster_beside_single(
        multi, single, base, args, float64_keras_home(base / "keras")
    )
    return base, multi, single, codes, one


def test_both_workers_finish(cluster_and_single):
    base, multi, _, codes, _ = cluster_and_single
    assert codes == [0, 0], log_of(base, 0)[-3000:] + log_of(base, 1)[-3000:]
    chief, other = log_of(base, 0), log_of(base, 1)
    # The startup log names the strategy, the replicas and both batch sizes.
    assert re.search(
        r"Strategy MultiWorkerMirroredStrategy \(2 workers; this is worker 0, the chief\) "
        r"with 4 replica\(s\); batch 8 per replica, 32 global",
        chief,
    ), chief[-3000:]
    assert "this is worker 1, the non-chief" in other
    # Only the chief tells the user where the outputs are.
    assert f"Outputs in {multi}:" in chief and "Outputs in" not in other


def test_cluster_equals_one_process_with_four_devices(cluster_and_single):
    _, multi, single, _, one = cluster_and_single
    assert one.returncode == 0, one.stderr[-3000:]
    losses_multi = scalars(multi, "batch_total_loss")
    losses_single = scalars(single, "batch_total_loss")
    assert len(losses_multi) == len(losses_single) == 3
    # Logged as float32 metrics.
    np.testing.assert_allclose(losses_multi, losses_single, rtol=1e-6)
    a, b = checkpoint_tensors(multi), checkpoint_tensors(single)
    assert a.keys() == b.keys()
    assert any("moving_variance" in k for k in a) and len(a) > 120
    assert int(a["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 3
    assert a["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"].dtype == np.float64
    # It trained: the momentum slots hold the (learning-rate scaled) updates of 3 steps.
    slots = [a[k] for k in a if k.startswith("optimizer/_variables/") and a[k].ndim == 4]
    assert slots and max(np.abs(slot).max() for slot in slots) > 1e-6
    # Every weight, BN moving statistics and optimizer slot, far inside the 1e-5 asked for.
    assert_same_tensors(a, b)
    # Both evaluated the same model on the same examples.
    results = []
    for model_dir in (multi, single):
        with open(os.path.join(model_dir, "result.json")) as f:
            results.append(json.load(f))
    assert results[0]["global_step"] == results[1]["global_step"] == 3
    assert results[0]["top_1_accuracy"] == pytest.approx(results[1]["top_1_accuracy"], abs=1e-6)
    assert results[0]["supervised_loss"] == pytest.approx(results[1]["supervised_loss"], rel=1e-5)


def test_only_the_chief_writes_model_dir(cluster_and_single):
    base, multi, _, _, _ = cluster_and_single
    assert sorted(f for f in os.listdir(multi) if f.startswith("ckpt-")) == [
        "ckpt-3.data-00000-of-00001",
        "ckpt-3.index",
    ]
    assert os.listdir(os.path.join(multi, "saved_model")) == ["3"]
    # TensorBoard names its files after the writing process: all are the chief's.
    events = glob.glob(os.path.join(multi, "*", "events.out.tfevents.*"))
    assert events
    chief_pid = None
    for path in events:
        pid = os.path.basename(path).split(".")[4]
        chief_pid = chief_pid or pid
        assert pid == chief_pid, events
    # The other worker wrote its share into a temporary directory, then removed it.
    other = log_of(base, 1)
    tmp1 = os.path.join(base, "tmp1")
    assert re.search(rf"Outputs are in {re.escape(tmp1)}/simclr_worker1_", other), other[-2000:]
    assert os.listdir(tmp1) == []


@pytest.fixture(scope="module")
def distilled(cluster_and_single):
    """Distillation (SimCLRv2's third step) by 2 workers x 2 devices and by 1 process x 4,
    both taught by the cluster's model (its linear head, trained while pretraining), in
    float64 as above, with the supervised term on too."""
    base, multi, _, codes, _ = cluster_and_single
    assert codes == [0, 0], log_of(base, 0)[-3000:]
    logs = base / "distill"
    logs.mkdir()
    students = str(logs / "multi"), str(logs / "single")
    args = [
        "--mode=train",
        "--train_mode=distill",
        f"--teacher={multi}",
        "--distill_temperature=2.0",
        "--distill_label_weight=0.5",
        "--train_steps=3",
        "--checkpoint_steps=3",
    ]
    env = float64_keras_home(base / "keras")
    codes, one = cluster_beside_single(*students, logs, args, env)
    return logs, students, codes, one


def test_distillation_on_a_cluster_equals_one_process(distilled):
    logs, (multi, single), codes, one = distilled
    assert codes == [0, 0], log_of(logs, 0)[-3000:] + log_of(logs, 1)[-3000:]
    assert one.returncode == 0, one.stderr[-3000:]
    assert "(10 classes)" in log_of(logs, 0)
    distill_multi = scalars(multi, "batch_distill_loss")
    distill_single = scalars(single, "batch_distill_loss")
    assert len(distill_multi) == len(distill_single) == 3
    assert all(np.isfinite(distill_multi)) and min(distill_multi) > 0
    np.testing.assert_allclose(distill_multi, distill_single, rtol=1e-6)
    np.testing.assert_allclose(
        scalars(multi, "batch_total_loss"), scalars(single, "batch_total_loss"), rtol=1e-6
    )
    a, b = checkpoint_tensors(multi), checkpoint_tensors(single)
    assert a.keys() == b.keys() and not [k for k in a if "teacher" in k]
    assert int(a["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 3
    assert_same_tensors(a, b)


def test_a_dead_worker_stops_the_other_and_a_restart_resumes(tmp_path):
    model_dir = str(tmp_path / "model")
    args = ["--mode=train", "--train_steps=30", "--checkpoint_steps=10"]
    procs = start_workers(model_dir, str(tmp_path), *args)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not tf.train.get_checkpoint_state(model_dir):
            assert all(p.poll() is None for p in procs), log_of(tmp_path, 0)[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            time.sleep(0.1)
        saved = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
        assert all(p.poll() is None for p in procs), "the run ended before a worker could be killed"
        os.kill(procs[1].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # The survivor stops on its own, quickly, with one clear line and no traceback.
        code = procs[0].wait(timeout=LOST_WORKER_EXIT)
        waited = time.monotonic() - killed_at
    finally:
        wait_all(procs, timeout=10)
    chief = log_of(tmp_path, 0)
    assert code == 1, chief[-3000:]
    assert waited < LOST_WORKER_EXIT
    # One line of ours; TensorFlow's C++ threads may still log after it while shutting down.
    ours = [line for line in chief.splitlines() if line.startswith("run.py: ")]
    assert len(ours) == 1, chief[-3000:]
    last = ours[0]
    assert re.fullmatch(
        # The error names the peer when TensorFlow's does.
        r"run\.py: worker 0: (worker 1|another worker) died or became unreachable.*; stopping\. "
        r"Restart every "
        r"worker with the same command and TF_CONFIG to resume from the last checkpoint "
        r"\(.*ckpt-\d+\)\.",
        last,
    ), last
    assert "Traceback" not in chief
    resumed_from = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
    assert saved <= resumed_from < 30

    # The same command on both workers resumes from the last checkpoint, to the planned step.
    procs = start_workers(model_dir, str(tmp_path), *args)
    codes = wait_all(procs)
    chief = log_of(tmp_path, 0)
    assert codes == [0, 0], chief[-3000:] + log_of(tmp_path, 1)[-3000:]
    assert f"Restored {model_dir}/ckpt-{resumed_from}" in chief
    assert f"from step {resumed_from}." in chief
    assert tf.train.latest_checkpoint(model_dir) == f"{model_dir}/ckpt-30"
    assert os.listdir(os.path.join(model_dir, "saved_model")) == ["30"]
