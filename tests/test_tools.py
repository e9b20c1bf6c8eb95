"""The tools run as documented (small settings)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.precision import Device, compute_dtype, resolve_precision
from tools.hardware import cpu_features, parse_onednn_verbose

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
    proc = run(
        "tools/benchmark_input.py", "--seconds=0.5", "--batch=32", "--jpegs=40", "--breakdown"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("pairs_per_s_32", "pairs_per_s_224", "cores", "matmul_gflops"):
        assert key in result
    assert result["pairs_per_s_32"] > 0 and result["pairs_per_s_224"] > 0
    parts = result["breakdown_224_ms_per_pair"]
    assert len(parts) == 7 and all(ms > 0 for ms in parts.values())
    assert result["cores"] == len(os.sched_getaffinity(0))
    assert np.isclose(
        result["pairs_per_s_224_at_290"],
        result["pairs_per_s_224"] * 290 / result["matmul_gflops"],
        rtol=0.01,
    )


def test_benchmark_counts_flops_and_ends_with_json(tmp_path):
    proc = run(
        "tools/benchmark.py",
        "--resnet_depth=18",
        "--width_multiplier=0.25",
        "--image_size=16",
        "--train_batch_size=16",
        "--steps=2",
        "--windows=2",
        "--mixed_precision=auto",
        f"--profile_dir={tmp_path / 'ops'}",
        f"--memory_profile_dir={tmp_path / 'memory'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # --memory_profile_dir: the tensors alive at TensorFlow's memory peak, by op.
    memory = proc.stdout.split("peak in use ", 1)[1].splitlines()
    assert float(memory[0].split()[0]) > 0
    assert any("FusedBatchNorm" in line or "conv" in line.lower() for line in memory[1:6])
    # --profile_dir: the op-time table from the profiler's trace, convolutions on top.
    table = proc.stdout.split("op type", 1)[1].splitlines()
    top = [line.split()[0] for line in table[1:4]]
    assert any("Conv2D" in op for op in top), table[:6]
    assert any("all ops" in line for line in table)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("pairs_per_s", "pairs_per_s_with_pipeline", "peak_rss_gb", "flops_per_pair"):
        assert result[key] > 0, key
    # The two inputs take turns: --windows timed windows each, medians reported.
    assert len(result["synthetic_windows"]) == len(result["pipeline_windows"]) == 2
    assert result["pairs_per_s"] == pytest.approx(np.median(result["synthetic_windows"]), rel=0.01)
    # Counted from the traced step: at least forward + backward of the convolutions.
    # ResNet-18, CIFAR stem, width 0.25 at 16 px: ~0.11 GFLOP per image forward
    # (2 x multiply-adds of every conv and dense); a pair is 2 images; backward ~2x.
    # Not 3.5x: the forward convs a recomputing gradient traces but never runs
    # are not counted.
    forward_per_pair = 2 * forward_flops_r18(width=0.25, size=16)
    assert 2.8 * forward_per_pair < result["flops_per_pair"] < 3.3 * forward_per_pair
    achieved = result["pairs_per_s"] * result["flops_per_pair"] / 1e9
    for peak in ("matmul", "conv"):
        assert result[f"pct_of_{peak}_peak"] == pytest.approx(
            100 * achieved / result[f"{peak}_peak_gflops"], rel=0.02
        )
    # The peaks are in the dtype of the step: "auto" resolved as the library does here.
    policy, reason = resolve_precision("auto", [Device("CPU")])
    assert (result["precision"], result["precision_reason"]) == (policy, reason)
    assert result["compute_dtype"] == compute_dtype(policy)
    assert result["mixed_precision"] == "auto"  # what was asked
    if policy == "none":
        assert result["fp32_matmul_peak_gflops"] == result["matmul_peak_gflops"]
    assert result["cpu_features"] == cpu_features()
    # The tool turns oneDNN on: its ISA and a convolution kernel (float32 here).
    onednn = result["onednn"]
    assert onednn["onednn_opts"] == "1" and onednn["isa"]
    if policy == "none":
        assert any(k.startswith("convolution ") for k in onednn["kernels"]), onednn


def test_onednn_verbose_is_parsed():
    stdout = "\n".join(
        [
            "onednn_verbose,v1,info,cpu,runtime:threadpool,nthr:2",
            "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with AVX512BW, AVX512VL, AVX512DQ, "
            "AVX512_VNNI, AVX512_BF16 and Intel AMX with bfloat16 and 8-bit integer support",
            "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:cdba::f0 "
            "dst:bf16::blocked:Acdb16a::f0,,,16x16x3x3,0.18",
            "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,"
            "forward_training,src:bf16::blocked:acdb::f0 wei:bf16:a:blocked:Acdb16a::f0,,"
            "alg:convolution_direct,mb2_ic16oc16,0.19",
            "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,"
            "forward_training,src:bf16::blocked:acdb::f0,,,mb2_ic16oc16,0.18",
            "onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src_f32::blocked:ab:f0 "
            "wei_f32::blocked:ab:f0,,,64x64:64x64,47.7",
            "1.0 [2.0, 3.0]",
        ]
    )
    stderr = (
        "E0000 00:00:17.9 5576 util.cc:131] oneDNN supports DT_BFLOAT16 only on platforms with "
        "AVX-512. Falling back to the default Eigen-based implementation if present.\n"
    )
    found = parse_onednn_verbose(stdout, stderr)
    assert found["isa"].startswith("Intel AVX-512 with") and "AMX" in found["isa"]
    # Reorders are left out; each kernel once.
    assert found["kernels"] == [
        "convolution brg_conv_fwd:avx512_core_amx bf16",
        "gemm_api - f32",
    ]
    assert found["notes"] == [
        "oneDNN supports DT_BFLOAT16 only on platforms with AVX-512. Falling back to the "
        "default Eigen-based implementation if present."
    ]


def forward_flops_r18(width: float, size: int) -> float:
    """2 x multiply-adds of ResNet-18 with the CIFAR stem, by hand, for the check above."""
    c = [int(64 * width), int(128 * width), int(256 * width), int(512 * width)]
    flops = 2 * 3 * 3 * 3 * c[0] * size * size  # stem
    side, cin = size, c[0]
    for stage, cout in enumerate(c):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            side_out = side // stride
            flops += 2 * 9 * cin * cout * side_out**2 + 2 * 9 * cout * cout * side_out**2
            if block == 0:  # every group starts with a projection shortcut
                flops += 2 * cin * cout * side_out**2
            side, cin = side_out, cout
    head = 2 * (cin * cin * 2 + cin * 128)  # 3-layer projection head
    return flops + head


def test_cifar_study_probes_a_bfloat16_encoder_in_float32():
    # The study's probes read features of a float32 twin holding the trained weights:
    # bfloat16 features lose the small differences a standardised linear probe reads.
    import argparse

    from tools import cifar_study

    args = argparse.Namespace(
        width_multiplier=0.125, batch_size=8, seed=0, mixed_precision="mixed_bfloat16"
    )
    model = cifar_study.built(cifar_study.config_for(args), None)
    images = tf.random.stateless_uniform((4, 32, 32, 3), seed=(1, 2))
    mixed = model.encoder(images, training=False)["final_avg_pool"]
    twin = cifar_study.float32_encoder(model)
    features = twin(images, training=False)["final_avg_pool"]
    assert mixed.dtype == tf.bfloat16 and features.dtype == tf.float32
    assert {w.dtype for w in twin.weights} == {"float32"}
    for a, b in zip(model.encoder.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The same function, computed in float32: close to the bfloat16 features, not equal.
    mixed = mixed.numpy().astype(np.float32)
    np.testing.assert_allclose(features.numpy(), mixed, rtol=0.05, atol=0.05)
    assert not np.array_equal(features.numpy(), mixed)


@pytest.mark.parametrize("planned, warmup", [(300, 20), (800, 20), (100, 5)])
def test_cifar_study_budget_replans_its_schedule_to_end_with_the_time(planned, warmup, capsys):
    """The first estimate of a step's time is 1.3x or 4x too slow, or 2x too fast: the
    schedule is re-planned from the steps' own time, so the learning rate reaches ~0 as
    the budget (100 s of 0.25 s steps after a 2 s first step: 393 steps) runs out, and a
    warm-up still running at the first re-plan (step 11) gets its 5% of the real steps
    (20); one already over (5 steps) stays so."""
    import types

    from tools import cifar_study

    schedule = cifar_study.BudgetSchedule(1.0, 256, planned, planned // 20)
    now = [0.0]
    budget = cifar_study.Budget(100.0, schedule=schedule, clock=lambda: now[0])
    iterations = tf.Variable(0, dtype=tf.int64)
    model = types.SimpleNamespace(
        stop_training=False, optimizer=types.SimpleNamespace(iterations=iterations)
    )
    budget.set_model(model)
    budget.on_train_begin()
    while not model.stop_training and iterations.numpy() < 4 * planned:
        now[0] += 2.0 if iterations.numpy() == 0 else 0.25
        iterations.assign_add(1)
        budget.on_train_batch_end(0, {"contrast_loss": 1.0})
    steps = int(iterations.numpy())
    assert 390 <= steps <= 394, budget.replans
    # Where it stopped, the rate has decayed to (nearly) nothing.
    assert float(schedule(steps)) < 0.01 * schedule.peak_learning_rate
    # Once after the first steps, then at each fraction of the budget.
    assert len(budget.replans) == 1 + len(cifar_study.Budget.REPLAN_AT)
    assert budget.replans[0]["step"] == 1 + cifar_study.Budget.FIRST_STEPS
    # Every re-plan measured the steps' real time.
    assert all(abs(r["step_seconds"] - 0.25) < 1e-9 for r in budget.replans)
    assert int(schedule.warmup_steps.numpy()) == warmup
    assert float(schedule(warmup)) == pytest.approx(schedule.peak_learning_rate)
    # Each re-plan is a progress line of the log.
    lines = [line for line in capsys.readouterr().out.splitlines() if "re-planned" in line]
    assert len(lines) == len(budget.replans)
    last = budget.replans[-1]["total_steps"]
    assert lines[-1].endswith(
        f"0.25 s/step, schedule re-planned to {last} steps ({warmup} of warm-up)"
    )


def test_cifar_study_steps_are_never_replanned():
    """--steps is an infinite budget: the planned schedule, stopped exactly at its end."""
    import types

    from tools import cifar_study

    schedule = cifar_study.BudgetSchedule(1.0, 256, 30, 3)
    budget = cifar_study.Budget(float("inf"), schedule=schedule, clock=lambda: 0.0)
    iterations = tf.Variable(0, dtype=tf.int64)
    model = types.SimpleNamespace(
        stop_training=False, optimizer=types.SimpleNamespace(iterations=iterations)
    )
    budget.set_model(model)
    budget.on_train_begin()
    while not model.stop_training and iterations.numpy() < 100:
        iterations.assign_add(1)
        budget.on_train_batch_end(0, {"contrast_loss": 1.0})
    assert int(iterations.numpy()) == 30 and not budget.replans
    assert int(schedule.warmup_steps.numpy()) == 3


@pytest.mark.long
def test_cifar_study_writes_its_plot_table_and_json(tmp_path):
    # The whole study in miniature: a second of each training on 256 images, tiny width.
    out = tmp_path / "study"

    def study(*flags):
        tiny = ["--train_examples=256", "--width_multiplier=0.125", "--batch_size=32"]
        proc = run("tools/cifar_study.py", *tiny, *flags, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    summary = study(
        "--minutes=0.01", "--probe_epochs=2", "--knn_every_minutes=0.001", f"--out={out}"
    )
    assert set(summary) == {"machine", "mixed_precision", "simclr", "random", "supervised"}
    for encoder in ("simclr", "random"):
        for test_set in ("test_jpeg (10,000, JPEG q75)", "test (1,000, exact)"):
            assert 0 <= summary[encoder][test_set]["linear_top1"] <= 1
            assert 0 <= summary[encoder][test_set]["knn_top1"] <= 1
    assert summary["simclr"]["steps"] >= 1 and summary["supervised"]["steps"] >= 1
    table = (out / "study.md").read_text().splitlines()
    assert len(table) == 2 + 6 and table[2].startswith("| SimCLR | test_jpeg")
    image = tf.io.decode_png(tf.io.read_file(str(out / "study.png"))).numpy()
    assert image.shape[1] > image.shape[0] > 100 and image.std() > 10
    saved = json.loads((out / "study.json").read_text())
    assert saved["curves"]["knn"] and saved["curves"]["pretraining"]

    # --no-supervised --no-random: SimCLR only (to compare pretraining settings).
    summary = study(
        "--steps=2", "--probe_epochs=1", "--no-supervised", "--no-random", f"--out={out}_simclr"
    )
    assert set(summary) == {"machine", "mixed_precision", "simclr"}
    assert summary["simclr"]["steps"] == 2
    table = (tmp_path / "study_simclr" / "study.md").read_text().splitlines()
    assert len(table) == 2 + 2 and all(row.startswith("| SimCLR") for row in table[2:])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A model_dir as a run leaves it (config.json, ckpt-1, saved_model/1) of an untrained
    ResNet-18 at width 0.25, and a folder of two classes of 32x40 images."""
    from images import rgb, save

    from simclr_tf2.build import build_model
    from simclr_tf2.checkpoints import write_json
    from simclr_tf2.config import Config
    from simclr_tf2.export import export_step

    root = tmp_path_factory.mktemp("embed")
    model_dir = str(root / "run")
    os.makedirs(model_dir)
    config = Config.from_flags(resnet_depth=18, width_multiplier=0.25, image_size=32)
    model = build_model(config, None)
    write_json(os.path.join(model_dir, "config.json"), json.loads(config.to_json()))
    checkpoint = tf.train.Checkpoint(model=model)
    tf.train.CheckpointManager(checkpoint, model_dir, 1).save(checkpoint_number=1)
    export_step(model, model_dir, 1, keep=1, image_size=32)
    for label, name in enumerate(("cats", "dogs")):
        for i in range(3):
            save(str(root / "images" / name / f"{i}.png"), rgb(32, 40, seed=10 * label + i))
    return model_dir, str(root / "images")


def test_embed_writes_features_paths_labels_and_finds_a_duplicate_first(tiny_run, tmp_path):
    model_dir, images = tiny_run
    duplicate = str(tmp_path / "query.png")
    shutil.copy(os.path.join(images, "dogs", "1.png"), duplicate)
    out = str(tmp_path / "embeddings.npz")
    proc = run(
        "tools/embed.py",
        f"--saved_model={model_dir}",
        f"--dataset={images}",
        f"--out={out}",
        "--projections",
        "--batch_size=4",  # 6 images: a full batch and a partial one
        f"--query={duplicate}",
        "--top_k=3",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = np.load(out)
    names = [os.path.join(images, c, f"{i}.png") for c in ("cats", "dogs") for i in range(3)]
    assert list(saved["paths"]) == names
    np.testing.assert_array_equal(saved["labels"], [0, 0, 0, 1, 1, 1])
    assert saved["features"].shape == (6, 128) and saved["features"].dtype == np.float32
    assert saved["projections"].shape == (6, 128)
    # The exact copy first, at cosine similarity 1 (float32 round-off); then the others.
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["image_size"] == 32 and result["examples"] == 6  # the export's size
    first, *others = result["similar"]
    assert first["path"] == names[4] and first["similarity"] == pytest.approx(1, abs=1e-5)
    assert len(others) == 2 and all(o["similarity"] < first["similarity"] for o in others)
    assert saved["query_index"][0] == 4 and str(saved["query"]) == duplicate
    assert f"1.0000  {names[4]}" in proc.stdout

    # From the checkpoint instead: the same weights, so the same features.
    proc = run("tools/embed.py", f"--checkpoint={model_dir}", f"--dataset={images}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_checkpoint = np.load(out)
    assert set(from_checkpoint) == {"features", "paths", "labels"}
    # A SavedModel's graph is optimised (BN folded into the conv): float32 round-off only.
    np.testing.assert_allclose(from_checkpoint["features"], saved["features"], rtol=1e-4, atol=1e-5)


def test_embed_gives_the_index_for_sources_without_files_and_refuses_bad_flags(tiny_run, tmp_path):
    model_dir, _ = tiny_run
    out = str(tmp_path / "digits.npz")
    proc = run("tools/embed.py", f"--saved_model={model_dir}", "--split=test[:20]", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = np.load(out)
    assert set(saved) == {"features", "index", "labels"}
    np.testing.assert_array_equal(saved["index"], np.arange(20))
    assert saved["features"].shape == (20, 128) and saved["labels"].max() < 10
    for flags, line in (
        ([f"--out={tmp_path}/x.txt"], f"--out={tmp_path}/x.txt: must end in .npz."),
        ([f"--out={out}", "--top_k=0"], "--top_k=0: must be positive."),
        ([f"--query={tmp_path}/none.png"], f"--query={tmp_path}/none.png: no such file."),
        ([], "give --out=FILE.npz (the embeddings), --query=IMAGE (similar images), or both."),
    ):
        proc = run("tools/embed.py", f"--saved_model={model_dir}", *flags)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == f"embed.py: {line}"
    # A query that is not an image, checked as a folder's files are, before any embedding.
    (tmp_path / "notes.jpg").write_text("not an image")
    proc = run("tools/embed.py", f"--saved_model={model_dir}", f"--query={tmp_path}/notes.jpg")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"embed.py: --query={tmp_path}/notes.jpg: not a JPEG, PNG, GIF or BMP file "
        "(starts with b'not an i')."
    )
    proc = run("tools/embed.py", "--saved_model=/no/such/export", f"--out={out}")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("embed.py: --saved_model=/no/such/export: no SavedModel there")
    )
