"""Input pipelines: shapes, ranges, determinism, and per-replica sharding."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data.pipeline import build_dataset
from simclr_tf2.data.sources import load_source

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_input.py")


@pytest.fixture(scope="module")
def indexed_npz(tmp_path_factory):
    """64 random images whose label is their index, so batches can be traced."""
    path = str(tmp_path_factory.mktemp("data") / "indexed.npz")
    rng = np.random.default_rng(0)
    images = (rng.random((64, 12, 12, 3)) * 255).astype(np.uint8)
    np.savez(path, images=images, labels=np.arange(64))
    return path


@pytest.mark.parametrize(
    "mode, channels, drops",
    [("pretrain", 6, True), ("finetune", 3, True), ("eval", 3, False)],
)
def test_modes(indexed_npz, mode, channels, drops):
    source = load_source(indexed_npz)
    batches = list(build_dataset(source, 24, 8, mode).take(4))
    x, y = batches[0]
    assert x.shape == (24, 8, 8, channels) and x.dtype == "float32"
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0
    assert y.dtype == "int64"
    if drops:  # training repeats forever in full batches
        assert len(batches) == 4 and all(b[0].shape[0] == 24 for b in batches)
    else:  # eval: one ordered pass, last batch kept
        assert [b[0].shape[0] for b in batches] == [24, 24, 16]
        assert list(np.concatenate([b[1] for b in batches])) == list(range(64))


def test_two_views_differ_and_new_epochs_bring_new_views(indexed_npz):
    source = load_source(indexed_npz)
    x, y = next(iter(build_dataset(source, 64, 8, "pretrain", shuffle_buffer=1)))
    x = x.numpy()
    assert np.abs(x[..., :3] - x[..., 3:]).max(axis=(1, 2, 3)).min() > 0.01
    second = list(build_dataset(source, 64, 8, "pretrain", shuffle_buffer=1).take(2))[1][0]
    assert np.abs(second.numpy() - x).max() > 0.1


def test_deterministic_mode_reproduces_views(indexed_npz):
    source = load_source(indexed_npz)

    def first_batches(seed):
        ds = build_dataset(source, 16, 8, "pretrain", seed=seed, deterministic=True)
        return [(b[0].numpy(), b[1].numpy()) for b in ds.take(3)]

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


def run_distributed(path, mode, steps):
    proc = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            path,
            "--replicas",
            "4",
            "--global-batch",
            "16",
            "--steps",
            str(steps),
            "--mode",
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_replicas_get_disjoint_batches_covering_the_global_batch(indexed_npz):
    steps = run_distributed(indexed_npz, "eval", 4)
    assert len(steps) == 4
    seen = []
    for step in steps:
        assert len(set(step["devices"])) == 4  # one batch on each logical CPU
        assert all(shape[0] == 4 for shape in step["shapes"])  # 16 / 4 per replica
        labels = [x for replica in step["labels"] for x in replica]
        assert len(labels) == len(set(labels)) == 16  # disjoint, 16 in all
        seen += labels
    assert sorted(seen) == list(range(64))  # together: every example once

    for step in run_distributed(indexed_npz, "pretrain", 3):
        labels = [x for replica in step["labels"] for x in replica]
        assert len(set(labels)) == 16 and all(s == [4, 8, 8, 6] for s in step["shapes"])


def test_deterministic_global_batches_do_not_depend_on_the_number_of_workers(indexed_npz):
    # What a multi-worker run with --deterministic relies on: 2 input pipelines
    # (workers) x 2 replicas make the same global batches, with the same views,
    # as 1 pipeline x 4 replicas.
    source = load_source(indexed_npz)
    per_replica, steps = 4, 5

    def global_batches(pipelines):
        out = [{} for _ in range(steps)]
        for pipeline in range(pipelines):
            context = tf.distribute.InputContext(pipelines, pipeline, 4)
            ds = build_dataset(
                source,
                per_replica,
                8,
                "pretrain",
                seed=3,
                deterministic=True,
                input_context=context,
            )
            local_replicas = 4 // pipelines
            for i, (x, y) in enumerate(ds.take(steps * local_replicas)):
                for view, label in zip(x.numpy(), y.numpy(), strict=True):
                    out[i // local_replicas][int(label)] = view
        return out

    one, two = global_batches(1), global_batches(2)
    for step_one, step_two in zip(one, two, strict=True):
        assert len(step_one) == 16 and step_one.keys() == step_two.keys()
        for label, view in step_one.items():
            np.testing.assert_array_equal(view, step_two[label])
    # Not a trivial equality: steps hold different examples (the stream goes on).
    assert one[0].keys() != one[1].keys()

    # Without --deterministic each worker reads its own shard of the source.
    context = tf.distribute.InputContext(2, 1, 4)
    ds = build_dataset(source, 8, 8, "pretrain", input_context=context)
    labels = np.concatenate([y.numpy() for _, y in ds.take(8)])
    assert set(labels) == set(range(1, 64, 2))


@pytest.mark.parametrize("pipelines", [1, 2])
def test_a_resumed_deterministic_stream_goes_on_where_the_run_was(indexed_npz, pipelines):
    # What exact resume relies on: the stream of a run resumed at step k (its first k global
    # batches skipped by `start`) is the stream of the run never interrupted from batch k on,
    # the same examples with the same views, also with 2 input pipelines (multi-worker) and
    # past the end of an epoch (64 examples: 5 steps of 16 are 80).
    source = load_source(indexed_npz)
    per_replica, replicas, done, steps = 4, 4, 5, 3
    local = replicas // pipelines  # per-replica batches one pipeline makes per step

    def batches(pipeline, start, skip):
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        ds = build_dataset(
            source,
            per_replica,
            8,
            "pretrain",
            seed=3,
            deterministic=True,
            input_context=context,
            start=start,
        )
        return [(x.numpy(), y.numpy()) for x, y in ds.skip(skip).take(steps * local)]

    for pipeline in range(pipelines):
        whole = batches(pipeline, 0, done * local)
        resumed = batches(pipeline, done * per_replica * replicas, 0)
        assert len(whole) == len(resumed) == steps * local
        for (xw, yw), (xr, yr) in zip(whole, resumed, strict=True):
            np.testing.assert_array_equal(yr, yw)
            np.testing.assert_array_equal(xr, xw)
        # Not trivially equal: the stream's first batches are others.
        first = batches(pipeline, 0, 0)
        assert any(
            not np.array_equal(x, xr) for (x, _), (xr, _) in zip(first, resumed, strict=True)
        )


def test_training_batches_have_static_shapes(indexed_npz):
    # Static shapes (drop_remainder) are what a TPU step and XLA need.
    source = load_source(indexed_npz)
    for mode, channels in (("pretrain", 6), ("finetune", 3)):
        x_spec, y_spec = build_dataset(source, 8, 8, mode).element_spec
        assert x_spec.shape.as_list() == [8, 8, 8, channels] and y_spec.shape.as_list() == [8]
