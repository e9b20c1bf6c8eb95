"""SimCLRv2's third step: distillation into a student, in the model and through run.py."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_lifecycle import PRETRAIN, pretrained  # noqa: F401 (a fixture)
from test_run import TINY, run

from simclr_tf2.losses import distillation_loss
from simclr_tf2.models.simclr import SimCLRModel


def numpy_distillation_loss(student, teacher, t):
    def log_softmax(z):
        z = z / t
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p_teacher = np.exp(log_softmax(teacher))
    return float(np.mean(-(p_teacher * log_softmax(student)).sum(axis=1)))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_loss_is_temperature_scaled_cross_entropy_to_the_teacher(temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 16, 7)) * 3
    loss = distillation_loss(tf.constant(student), tf.constant(teacher), temperature)
    assert float(loss) == pytest.approx(numpy_distillation_loss(student, teacher, temperature))
    # Its minimum is the teacher's entropy, reached by a student equal to the teacher.
    at_teacher = float(distillation_loss(tf.constant(teacher), tf.constant(teacher), temperature))
    assert at_teacher < float(loss)


def test_the_gradient_reaches_the_student_only():
    student = tf.Variable(np.zeros((4, 3)), dtype=tf.float32)
    teacher = tf.Variable(np.eye(4, 3) * 5, dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = distillation_loss(student, teacher, 1.0)
    g_student, g_teacher = tape.gradient(loss, [student, teacher])
    assert g_teacher is None and np.abs(g_student.numpy()).sum() > 0


def colour_teacher(weights):
    """Logits that depend on each image's mean colour: learnable by any ResNet."""
    w = tf.constant(weights, tf.float32)
    return lambda images: tf.reduce_mean(images, axis=(1, 2)) @ w


def tiny_student(**kwargs):
    kwargs = {
        "num_classes": 4,
        "train_mode": "distill",
        "resnet_depth": 18,
        "width_multiplier": 0.125,
        "cifar_stem": True,
        "global_bn": False,
        "proj_head_mode": "none",
        **kwargs,
    }
    return SimCLRModel(**kwargs)


def kl_to_teacher(model, teacher, images, t):
    p = tf.nn.softmax(teacher(images) / t).numpy()
    log_q = tf.nn.log_softmax(model(images, training=False)["logits_sup"] / t).numpy()
    return float(np.mean((p * (np.log(p) - log_q)).sum(axis=1)))


def test_model_loss_on_a_fixed_batch_equals_numpy():
    model = tiny_student(distill_temperature=2.0)
    teacher = colour_teacher(np.random.default_rng(1).normal(size=(3, 4)) * 10)
    model.set_teacher(teacher)
    images = np.random.default_rng(2).uniform(size=(8, 8, 8, 3)).astype(np.float32)
    terms = model.compute_losses(tf.constant(images), None, training=False)
    student = model(images, training=False)["logits_sup"].numpy()
    expected = numpy_distillation_loss(student, teacher(images).numpy(), 2.0)
    assert float(terms["distill_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["total_loss"]) == pytest.approx(expected, rel=1e-5)  # no weight decay
    # The teacher is not part of the student: no variables, no checkpoint entries.
    assert not [v for v in model.variables if "teacher" in v.path]


def test_student_converges_to_the_teacher():
    rng = np.random.default_rng(3)
    # 64 images of random flat colours plus noise; the teacher separates them by colour.
    colours = rng.uniform(size=(64, 1, 1, 3))
    images = np.clip(colours + rng.normal(0, 0.05, (64, 8, 8, 3)), 0, 1).astype(np.float32)
    teacher = colour_teacher(rng.normal(size=(3, 4)) * 8)
    model = tiny_student(distill_temperature=1.0, batch_norm_decay=0.5)
    model.set_teacher(teacher)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.build((None, 8, 8, 3))
    before = kl_to_teacher(model, teacher, images, 1.0)
    # Unlabelled data: labels are -1 and ignored without --distill_label_weight.
    history = model.fit(images, -np.ones(64), batch_size=32, epochs=100, verbose=0)
    after = kl_to_teacher(model, teacher, images, 1.0)
    # KL(teacher || student) over the data, in nats: stated bound 0.05 after 200 steps.
    assert before > 0.2 and after < 0.05, (before, after)
    assert history.history["teacher_agreement"][-1] > 0.9
    assert "supervised_loss" not in history.history


def test_labels_add_a_weighted_supervised_term():
    model = tiny_student(distill_label_weight=0.5)
    model.set_teacher(colour_teacher(np.ones((3, 4))))
    images = np.random.default_rng(4).uniform(size=(8, 8, 8, 3)).astype(np.float32)
    labels = np.arange(8) % 4
    terms = model.compute_losses(tf.constant(images), tf.constant(labels), training=False)
    assert float(terms["total_loss"]) == pytest.approx(
        float(terms["distill_loss"]) + 0.5 * float(terms["supervised_loss"]), rel=1e-5
    )


def test_distill_without_a_teacher_says_so():
    model = tiny_student()
    model.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="set_teacher"):
        model.fit(np.zeros((4, 8, 8, 3), np.float32), np.zeros(4), verbose=0)


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):  # noqa: F811
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


def test_distill_runs_from_a_checkpoint_and_from_an_export(finetuned, pretrained, tmp_path):  # noqa: F811
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
            # The student's checkpoint holds the student only.
            names = [n for n, _ in tf.train.list_variables(os.path.join(out, "ckpt-10"))]
            own = [n for n in names if "head_supervised" in n or "supervised_head" in n]
            assert len(own) >= 2 and len(names) < 2 * 400, name
            assert os.listdir(os.path.join(out, "saved_model")) == ["10"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_mode=distill"], "--teacher=None: --train_mode=distill needs --teacher"),
        (["--teacher=/x"], "--teacher=/x: only applies with --train_mode=distill"),
        (
            ["--train_mode=distill", "--teacher=/no/teacher"],
            "--teacher=/no/teacher: no checkpoint or SavedModel there",
        ),
        (
            ["--train_mode=distill", "--teacher=/x", "--distill_temperature=0"],
            "--distill_temperature=0.0: must be positive",
        ),
    ],
)
def test_distill_mistakes_exit_2_with_one_line(tmp_path, args, message):
    proc = run("--mode=train", f"--model_dir={tmp_path}", "--train_steps=2", *TINY, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]


def test_a_pretrained_model_without_head_is_not_a_teacher(pretrained, tmp_path):  # noqa: F811
    # The pretraining run has a linear head (lineareval_while_pretraining): it can teach;
    # a checkpoint directory without config.json cannot be rebuilt.
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
