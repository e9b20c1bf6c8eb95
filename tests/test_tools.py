"""The tools run as documented (small settings)."""

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_show_augmentations_writes_the_grid(tmp_path):
    out = str(tmp_path / "grid.png")
    proc = run(
        "tools/show_augmentations.py", "--dataset=digits", "--rows=3", "--pairs=2", f"--out={out}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = tf.io.decode_png(tf.io.read_file(out)).numpy()
    # 3 rows of 32 px tiles; original + 4 views per row, with gaps.
    assert image.shape == (3 * 32 + 2 * 4, 5 * 32 + 4 * 4 + 2 * 4, 3)
    assert image.std() > 10  # not a blank canvas


def test_show_augmentations_bad_dataset_exits_2():
    proc = run("tools/show_augmentations.py", "--dataset=/no/such/dir")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "show_augmentations: --dataset=/no/such/dir: no such directory."
    )


def test_benchmark_input_ends_with_json():
    proc = run("tools/benchmark_input.py", "--seconds=0.5", "--batch=32", "--jpegs=40")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("pairs_per_s_32", "pairs_per_s_224", "cores", "matmul_gflops"):
        assert key in result
    assert result["pairs_per_s_32"] > 0 and result["pairs_per_s_224"] > 0
    assert result["cores"] == len(os.sched_getaffinity(0))
    assert np.isclose(
        result["pairs_per_s_224_at_290"],
        result["pairs_per_s_224"] * 290 / result["matmul_gflops"],
        rtol=0.01,
    )
