"""The run lifecycle end to end: export, eval mode, fine-tuning, head modes.

One tiny pretraining run (run.py in a subprocess) is shared; every test that
changes a model_dir works on its own copy or its own run.
"""

import json
import os
import select
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_run import ROOT, TINY, checkpoints, run

PRETRAIN = ["--train_steps=20", *TINY]
# A SavedModel's graph is optimised (e.g. BN folded into the conv): float32 round-off only.
SAME = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("pretrained"))
    proc = run("--mode=train_then_eval", f"--model_dir={model_dir}", *PRETRAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir, proc


def _copy(model_dir, tmp_path):
    target = str(tmp_path / "copy")
    shutil.copytree(model_dir, target)
    return target


def _in_memory_model(model_dir, step):
    """The trained model, rebuilt from config.json and restored from ckpt-<step>."""
    from simclr_tf2.checkpoints import restore_model

    return restore_model(os.path.join(model_dir, f"ckpt-{step}"))


def _images(n=8, size=32, seed=0):
    return np.random.RandomState(seed).rand(n, size, size, 3).astype("float32")


def test_run_exports_a_saved_model_and_logs_progress(pretrained):
    model_dir, proc = pretrained
    exports = os.listdir(os.path.join(model_dir, "saved_model"))
    assert exports == ["20"]  # after training and the evaluation, at step 20; no .tmp left
    assert "Exported SavedModel" in proc.stderr
    # Not a terminal: concise periodic lines with throughput and ETA.
    assert "step 20/20 (100%), total_loss" in proc.stderr and "pairs/s, ETA" in proc.stderr


def test_tensorboard_shows_augmented_view_pairs(pretrained):
    model_dir, _ = pretrained
    events = EventAccumulator(os.path.join(model_dir, "train"), size_guidance={"tensors": 0})
    events.Reload()
    assert "augmented_views" in events.Tags()["tensors"]
    (event,) = events.Tensors("augmented_views")
    # An image summary holds width, height, then one encoded PNG per image.
    width, height, *pngs = event.tensor_proto.string_val
    assert (int(width), int(height)) == (64, 32) and len(pngs) == 4  # view 1 | view 2


def test_saved_model_matches_the_trained_model(pretrained):
    import keras
    import tensorflow as tf

    model_dir, _ = pretrained
    export = os.path.join(model_dir, "saved_model", "20")
    model = _in_memory_model(model_dir, 20)
    images = _images()
    expected = {k: v.numpy() for k, v in model(images, training=False).items()}
    assert {"final_avg_pool", "proj_head_output", "logits_sup", "block_group4"} <= set(expected)

    loaded = tf.saved_model.load(export)
    got = loaded(images, trainable=False)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key], **SAME, err_msg=key)
    # trainable=True uses the batch's statistics (and updates the moving ones).
    train_out = loaded(images, trainable=True)
    assert set(train_out) == set(expected)
    assert np.max(np.abs(train_out["final_avg_pool"] - expected["final_avg_pool"])) > 1e-3
    # Any image size.
    assert loaded(_images(2, 48))["final_avg_pool"].shape == expected["final_avg_pool"][:2].shape

    layer = keras.layers.TFSMLayer(
        export, call_endpoint="serve", call_training_endpoint="train", trainable=True
    )
    got = layer(images)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key], **SAME, err_msg=key)


def test_saved_model_can_be_fine_tuned(pretrained):
    import keras
    import tensorflow as tf

    model_dir, _ = pretrained
    export = os.path.join(model_dir, "saved_model", "20")
    loaded = tf.saved_model.load(export)
    assert len(loaded.trainable_variables) > 0
    assert len(loaded.variables) > len(loaded.trainable_variables)  # + BN moving statistics
    images, labels = _images(16), np.arange(16) % 10
    with tf.GradientTape() as tape:
        logits = loaded(images, trainable=True)["logits_sup"]
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        )
    grads = tape.gradient(loss, loaded.trainable_variables)
    assert all(g is not None for g in grads)
    refs = [v.ref() for v in loaded.variables]
    paths = dict(zip(refs, loaded.variable_paths.numpy(), strict=True))
    trainable = loaded.trainable_variables
    named = {paths[v.ref()].decode(): g for v, g in zip(trainable, grads, strict=True)}
    assert float(tf.reduce_max(tf.abs(named["head_supervised/kernel"]))) > 0
    # The linear head sees stop_gradient(h) while pretraining; z does reach the encoder.
    assert float(tf.reduce_max(tf.abs(named["resnet/initial_conv/conv2d/kernel"]))) == 0
    with tf.GradientTape() as tape:
        z = loaded(images, trainable=True)["proj_head_output"]
        loss = tf.reduce_sum(z[:8] * z[8:])
    (grad,) = tape.gradient(loss, [loaded.trainable_variables[0]])
    assert float(tf.reduce_max(tf.abs(grad))) > 0

    # Keras 3: the export as a layer in a new model, trained by fit.
    layer = keras.layers.TFSMLayer(
        export, call_endpoint="serve", call_training_endpoint="train", trainable=True
    )
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(10)(layer(inputs)["final_avg_pool"])
    classifier = keras.Model(inputs, outputs)
    classifier.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    weights = layer.trainable_weights
    before = [w.numpy().copy() for w in weights]
    classifier.fit(images, labels, epochs=3, verbose=0)
    changed = [w.path for w, b in zip(weights, before, strict=True) if np.any(w.numpy() != b)]
    encoder_kernels = [p for p in changed if "resnet" in p and "kernel" in p]
    assert len(encoder_kernels) > 10, changed


def test_finetuning_starts_from_checkpoint_or_export_alike(pretrained):
    from simclr_tf2.build import build_model
    from simclr_tf2.checkpoints import initialise, read_config

    model_dir, _ = pretrained
    pretrain = _in_memory_model(model_dir, 20)
    base = read_config(model_dir)
    sources = {
        "prefix": os.path.join(model_dir, "ckpt-20"),
        "directory": model_dir,
        "export": os.path.join(model_dir, "saved_model", "20"),
    }
    for name, path in sources.items():
        config = base.replace(train_mode="finetune", checkpoint=path)
        model = build_model(config, num_classes=10)
        model.compile(optimizer="sgd")
        initialise(model, config)
        for layer in ("encoder", "projection_head"):
            mine, theirs = getattr(model, layer).weights, getattr(pretrain, layer).weights
            assert len(mine) == len(theirs) > 0
            for a, b in zip(mine, theirs, strict=True):
                np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{name} {a.path}")


def test_finetune_runs_from_a_checkpoint_and_from_an_export(pretrained, tmp_path):
    model_dir, _ = pretrained
    starts = {
        "ckpt": model_dir,
        "export": os.path.join(model_dir, "saved_model", "20"),
    }

    def finetune(item):
        name, start = item
        out = str(tmp_path / name)
        return (
            name,
            out,
            run(
                "--mode=train_then_eval",
                "--train_mode=finetune",
                f"--checkpoint={start}",
                "--fine_tune_after_block=2",
                "--zero_init_logits_layer",
                "--train_steps=10",
                f"--model_dir={out}",
                *TINY,
            ),
        )

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, out, proc in pool.map(finetune, starts.items()):
            assert proc.returncode == 0, (name, proc.stderr[-3000:])
            assert f"Initialised from {starts[name]}" in proc.stderr, name
            result = json.load(open(os.path.join(out, "result.json")))
            assert result["global_step"] == 10 and 0 <= result["top_1_accuracy"] <= 1
            assert os.listdir(os.path.join(out, "saved_model")) == ["10"]


def test_linear_eval_recipe_trains_the_classifier_only(pretrained, tmp_path):
    out = str(tmp_path / "linear")
    proc = run(
        f"--flagfile={os.path.join(RECIPES, 'linear_eval.flags')}",
        f"--checkpoint={pretrained[0]}",
        "--train_steps=10",
        f"--model_dir={out}",
        *TINY,
        "--learning_rate=0.1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(os.path.join(out, "result.json")))
    assert 0 <= result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1
    # Checkpoints name a variable by its first path in the object graph, which differs
    # between a trainable and a frozen encoder: compare the restored models instead.
    before, after = _in_memory_model(pretrained[0], 20), _in_memory_model(out, 10)
    frozen = {v.path: v.numpy() for v in before.encoder.weights}
    assert len(frozen) > 50
    for variable in after.encoder.weights:  # weights and batch-norm statistics
        np.testing.assert_array_equal(variable.numpy(), frozen[variable.path], variable.path)
    head = after.supervised_head.kernel.numpy()
    assert np.any(head != 0)  # zero-initialised, then trained


def test_eval_mode_on_a_finished_model_dir(pretrained, tmp_path):
    model_dir = _copy(pretrained[0], tmp_path)
    os.remove(os.path.join(model_dir, "result.json"))
    started = time.time()
    proc = run("--mode=eval", f"--model_dir={model_dir}", *PRETRAIN, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - started < 240  # it did not wait for more checkpoints
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result["global_step"] == 20 and "top_1_accuracy" in result


@pytest.mark.long
def test_eval_mode_watches_a_training_run(tmp_path):
    model_dir = str(tmp_path / "watched")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = os.path.join(ROOT, "run.py")
    args = [f"--model_dir={model_dir}", "--train_steps=30", *TINY]
    trainer = subprocess.Popen(
        [sys.executable, script, "--mode=train", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(model_dir, "config.json")):
            assert time.time() < deadline and trainer.poll() is None, "the trainer did not start"
            time.sleep(0.2)
        watcher = subprocess.run(
            [sys.executable, script, "--mode=eval", "--eval_timeout=240", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert trainer.wait(timeout=300) == 0, trainer.stderr.read()[-3000:]
    finally:
        trainer.kill()
    assert watcher.returncode == 0, watcher.stderr[-3000:]
    assert "Watching" in watcher.stderr
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result["global_step"] == 30  # it ran until the final step
    assert os.path.exists(os.path.join(model_dir, "result_30.json"))
    assert checkpoints(model_dir) == [10, 20, 30]


@pytest.mark.parametrize(
    "mode, linear_eval",
    [("none", "--nolineareval_while_pretraining"), ("linear", "--lineareval_while_pretraining")],
)
def test_head_modes_end_to_end(tmp_path, mode, linear_eval):
    proc = run(
        "--mode=train_then_eval",
        f"--proj_head_mode={mode}",
        linear_eval,
        "--train_steps=5",
        "--eval_steps=2",
        f"--model_dir={tmp_path}",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(tmp_path / "result.json"))
    if linear_eval == "--lineareval_while_pretraining":
        assert 0 <= result["top_1_accuracy"] <= 1
    else:
        # No linear head: the eval reports the contrastive task on the eval split.
        assert "top_1_accuracy" not in result
        assert 0 <= result["contrast_acc"] <= 1 and result["contrast_loss"] > 0
    assert os.path.isdir(tmp_path / "saved_model" / "5")


RECIPES = os.path.join(ROOT, "simclr_tf2", "recipes")


@pytest.mark.parametrize("name", sorted(os.listdir(RECIPES)))
def test_recipe_flagfiles_parse_and_validate(name):
    code = (
        "import sys, run; run.FLAGS(['run.py', '--flagfile=' + sys.argv[1]]);"
        "import json; from simclr_tf2.config import validate;"
        "print(json.dumps(validate(run.config_from_flags()).flags()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, os.path.join(RECIPES, name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads(proc.stdout)
    if name.startswith("simclrv2"):
        assert config["sk_ratio"] == 0.0625 and config["num_proj_layers"] == 3
        assert config["learning_rate_scaling"] == "sqrt"
        step = name.split("_")[1]
        assert config["train_mode"] == {"r152": "pretrain", "finetune": "finetune"}.get(
            step, "distill"
        )
        if config["train_mode"] != "pretrain":
            assert config["ft_proj_selector"] == 1
    elif name == "linear_eval.flags":
        assert (config["train_mode"], config["fine_tune_after_block"]) == ("finetune", 4)
        assert (config["optimizer"], config["weight_decay"]) == ("momentum", 0.0)
        assert config["ft_proj_selector"] == 0 and config["train_epochs"] == 90
    elif name.startswith("imagenet"):
        assert (config["train_batch_size"], config["learning_rate"]) == (4096, 0.3)
        assert (config["temperature"], config["weight_decay"], config["resnet_depth"]) == (
            0.1,
            1e-6,
            50,
        )
        assert config["train_epochs"] == (1000 if "1000ep" in name else 100)
    elif name == "digits_quickstart.flags":
        settings = (config["dataset"], config["mode"], config["image_size"])
        assert settings == ("digits", "train_then_eval", 32)
        assert config["mixed_precision"] == "auto"  # bfloat16 where native, else float32
    else:
        assert (config["temperature"], config["color_jitter_strength"]) == (0.5, 0.5)
        assert not config["use_blur"] and config["image_size"] == 32
        assert config["train_epochs"] == 1000
        if "resnet50" in name:  # the paper's 94.0% setting
            assert (config["resnet_depth"], config["train_batch_size"]) == (50, 1024)


@pytest.mark.long
def test_cifar_recipe_runs_on_the_shared_npz(tmp_path):
    data = os.path.join(ROOT, "..", "shared", "data", "cifar10")
    if not os.path.exists(os.path.join(data, "train.npz")):
        pytest.skip("../shared/data/cifar10 is not here")
    proc = run(
        f"--flagfile={os.path.join(RECIPES, 'cifar10_resnet18.flags')}",
        f"--dataset={os.path.join(data, 'train.npz')}",
        f"--eval_dataset={os.path.join(data, 'test.npz')}",
        # Tiny overrides: flags after the file win.
        "--width_multiplier=0.25",
        "--train_batch_size=64",
        "--eval_batch_size=100",
        "--train_steps=3",
        "--eval_steps=2",
        f"--model_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(tmp_path / "result.json"))
    assert result["global_step"] == 3 and "top_1_accuracy" in result
    assert "50000 examples" in proc.stderr.replace(",", "")


@pytest.mark.long
def test_linear_eval_tool_on_an_export(pretrained):
    model_dir, _ = pretrained
    tool = os.path.join(ROOT, "tools", "linear_eval.py")
    args = ["--dataset=digits", "--train_split=train", "--eval_split=test", "--epochs=30"]
    proc = subprocess.run(
        [sys.executable, tool, f"--saved_model={model_dir}", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["saved_model"].endswith(os.path.join("saved_model", "20"))
    assert result["eval_examples"] == 360 and result["image_size"] == 32
    assert 0.5 < result["top_1_accuracy"] <= result["top_5_accuracy"] <= 1  # chance: 0.1
    # The same from the model_dir's checkpoint: the same weights, so the same features.
    from_checkpoint = subprocess.run(
        [sys.executable, tool, f"--checkpoint={model_dir}", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert from_checkpoint.returncode == 0, from_checkpoint.stderr[-3000:]
    again = json.loads(from_checkpoint.stdout.strip().splitlines()[-1])
    assert again["saved_model"].endswith("ckpt-20")
    assert again["top_1_accuracy"] == pytest.approx(result["top_1_accuracy"], abs=0.02)
    bad = subprocess.run(
        [sys.executable, tool, "--saved_model=/no/such/export", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--saved_model=/no/such/export: no SavedModel" in bad.stderr


def test_knn_eval_tool_on_an_export(pretrained):
    model_dir, _ = pretrained
    tool = os.path.join(ROOT, "tools", "knn_eval.py")
    proc = subprocess.run(
        [sys.executable, tool, f"--saved_model={model_dir}", "--dataset=digits", "--k=20"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["eval_examples"] == 360 and result["train_examples"] == 1437
    assert 0.3 < result["knn_top_1_accuracy"] <= 1  # chance: 0.1


def test_terminal_progress_line_covers_the_whole_run(tmp_path):
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "run.py"),
            "--mode=train",
            "--train_steps=12",
            f"--model_dir={tmp_path}",
            *TINY,
        ],
        cwd=ROOT,
        env=env,
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    output, deadline = b"", time.time() + 300
    try:
        while time.time() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        os.close(master)
    text = output.decode(errors="replace")
    # One line for the whole run, redrawn in place: the step of the planned total,
    # the losses, the learning rate, our throughput and the ETA of the last step.
    assert "\rstep " in text and "step 12/12 (100%) [====================]" in text
    assert "contrast_acc " in text and "learning_rate " in text
    assert "pairs/s, ETA 00:00:00" in text


# ------------------------------------------------ SimCLRv2: from the head, distillation
# (the distillation loss and model: tests/test_distill.py)


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    """A fine-tuned teacher whose supervised head sits on the first head layer."""
    model_dir = str(tmp_path_factory.mktemp("finetuned"))
    proc = run(
        "--mode=train_then_eval",
        "--train_mode=finetune",
        f"--checkpoint={pretrained[0]}",
        "--ft_proj_selector=1",
        "--train_steps=10",
        f"--model_dir={model_dir}",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


def test_ft_proj_selector_1_head_is_on_the_first_head_layer_and_exported(finetuned):
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(finetuned, "saved_model", "10"))
    images = np.random.default_rng(8).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    outputs = loaded(images, trainable=False)
    assert {"proj_head_layer_1", "proj_head_layer_2", "proj_head_layer_3"} <= set(outputs)
    paths = [p.decode() for p in loaded.variable_paths.numpy()]
    by_path = dict(zip(paths, loaded.variables, strict=True))
    kernel = by_path["head_supervised/kernel"].numpy()
    bias = by_path["head_supervised/bias"].numpy()
    hidden = outputs["proj_head_layer_1"].numpy()
    assert kernel.shape[0] == hidden.shape[1]  # as wide as the first head layer (= h)
    np.testing.assert_allclose(outputs["logits_sup"], hidden @ kernel + bias, atol=1e-4)


def test_eval_of_a_fine_tuned_checkpoint_takes_its_classifier(finetuned, tmp_path):
    out = str(tmp_path / "eval")
    proc = run(
        "--mode=eval",
        "--train_mode=finetune",
        "--ft_proj_selector=1",
        f"--checkpoint={os.path.join(finetuned, 'ckpt-10')}",
        f"--model_dir={out}",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = json.load(open(os.path.join(out, "result.json")))
    theirs = json.load(open(os.path.join(finetuned, "result.json")))
    assert mine["global_step"] == theirs["global_step"] == 10
    assert mine["top_1_accuracy"] == pytest.approx(theirs["top_1_accuracy"], abs=1e-6)
    assert mine["supervised_loss"] == pytest.approx(theirs["supervised_loss"], rel=1e-4)


@pytest.mark.long
def test_distill_runs_from_a_checkpoint_and_from_an_export(finetuned, pretrained, tmp_path):
    import tensorflow as tf

    teachers = {
        # Self-distillation from the fine-tuned model_dir, on 2 replicas, with labels.
        "ckpt": (
            finetuned,
            ["--num_logical_cpus=2", "--distill_label_weight=0.5", "--ft_proj_selector=1"],
        ),
        # A student that starts from the pretrained encoder, taught by the export
        # (loaded into the strategy's scope: mirrored variables).
        "export": (
            os.path.join(finetuned, "saved_model", "10"),
            ["--num_logical_cpus=2", f"--checkpoint={pretrained[0]}", "--distill_temperature=2.0"],
        ),
    }

    def distill(item):
        name, (teacher, extra) = item
        out = str(tmp_path / name)
        proc = run(
            "--mode=train_then_eval",
            "--train_mode=distill",
            f"--teacher={teacher}",
            "--train_steps=10",
            f"--model_dir={out}",
            *TINY,
            *extra,
        )
        return name, out, proc

    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, out, proc in pool.map(distill, teachers.items()):
            assert proc.returncode == 0, (name, proc.stderr[-3000:])
            assert "Teacher: " in proc.stderr and "(10 classes)" in proc.stderr, name
            result = json.load(open(os.path.join(out, "result.json")))
            assert result["global_step"] == 10 and 0 <= result["top_1_accuracy"] <= 1
            assert "distill_loss" in result
            # The student's checkpoint holds the student only: the same entries as the
            # teacher's own checkpoint (same architecture and optimizer), not twice as many.
            names = [n for n, _ in tf.train.list_variables(os.path.join(out, "ckpt-10"))]
            teacher_names = tf.train.list_variables(os.path.join(finetuned, "ckpt-10"))
            assert len(names) == len(teacher_names), name
            assert not [n for n in names if "teacher" in n], name
            assert os.listdir(os.path.join(out, "saved_model")) == ["10"]


def test_a_checkpoint_without_its_config_is_not_a_teacher(pretrained, tmp_path):
    # A directory of checkpoints without the run's config.json cannot be rebuilt.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in os.listdir(pretrained[0]):
        if f.startswith("ckpt-20") or f == "checkpoint":
            os.link(os.path.join(pretrained[0], f), bare / f)
    proc = run(
        "--mode=train",
        "--train_mode=distill",
        f"--teacher={bare}",
        f"--model_dir={tmp_path}/s",
        "--train_steps=2",
        *TINY,
    )
    assert proc.returncode == 2 and "no config.json beside" in proc.stderr, proc.stderr[-2000:]
