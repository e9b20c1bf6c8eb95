"""train.py pieces that the end-to-end tests cannot reach cheaply."""

import numpy as np
import tensorflow as tf

from simclr_tf2.callbacks import CheckpointSaver
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import build_optimizer


def test_non_finite_loss_stops_without_saving(tmp_path):
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3)
    model.build((None, 8, 8, 3))
    model.compile(optimizer=build_optimizer("momentum", 0.1))
    model.optimizer.build(model.trainable_variables)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer), str(tmp_path), 3
    )
    saver = CheckpointSaver(manager, total_steps=100)
    saver.set_model(model)
    model.optimizer.iterations.assign(5)
    saver.on_train_batch_end(0, {"total_loss": 1.5})
    saver.on_epoch_end(0)
    assert manager.latest_checkpoint.endswith("ckpt-5") and not model.stop_training

    model.optimizer.iterations.assign(7)
    saver.on_train_batch_end(1, {"total_loss": float("nan")})
    assert model.stop_training and saver.bad_step == 7 and np.isnan(saver.bad_value)
    saver.on_epoch_end(1)
    assert manager.latest_checkpoint.endswith("ckpt-5")  # the last good one stays newest


def test_stops_at_the_planned_step(tmp_path):
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=None)
    model.build((None, 8, 8, 3))
    model.compile(optimizer=build_optimizer("momentum", 0.1))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(tmp_path), 3)
    saver = CheckpointSaver(manager, total_steps=10)
    saver.set_model(model)
    model.optimizer.iterations.assign(9)
    saver.on_train_batch_end(0, {"total_loss": 1.0})
    assert not model.stop_training
    model.optimizer.iterations.assign(10)
    saver.on_train_batch_end(1, {"total_loss": 1.0})
    assert model.stop_training
