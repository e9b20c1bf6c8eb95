"""SimCLRv2's third step: distillation into a student, in the model and through run.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_run import TINY, run

from simclr_tf2.losses import distillation_loss
from simclr_tf2.models.batch_norm import BatchNormSpec
from simclr_tf2.models.heads import ProjectionHead
from simclr_tf2.models.resnet import ResNet
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


def tiny_student(momentum=0.9, **kwargs):
    batch_norm = BatchNormSpec(synchronized=False, momentum=momentum)
    return SimCLRModel(
        ResNet(18, 0.125, cifar_stem=True, batch_norm=batch_norm),
        ProjectionHead("none", batch_norm=batch_norm),
        **{"num_classes": 4, "train_mode": "distill", **kwargs},
    )


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
    model = tiny_student(distill_temperature=1.0, momentum=0.5)
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
