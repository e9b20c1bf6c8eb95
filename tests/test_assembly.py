"""build_run: one way to build a run, for run.py, the tools and the tests."""

import json
import os
import re

import keras
import numpy as np
import pytest

from simclr_tf2 import Config, build_run
from simclr_tf2.assembly import Sources
from simclr_tf2.build import Plan
from simclr_tf2.config import ConfigError
from simclr_tf2.data.sources import npz_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    dataset="digits",
    image_size=16,
    resnet_depth=10,
    width_multiplier=0.25,
    train_batch_size=32,
    eval_batch_size=32,
    train_steps=6,
    checkpoint_steps=3,
    eval_split="test",
)


def test_build_run_plans_builds_and_compiles_what_the_config_says():
    config = Config.from_flags(**TINY, mode="train_then_eval", optimizer="lars")
    run = build_run(config)
    assert run.plan == Plan(1437, 1437 // 32, 6, 3, run.plan.warmup_steps)
    assert run.sources.train.num_examples == 1437 and run.sources.eval is not None
    # What result.json says was evaluated: one pass, or at most `steps` batches of 32.
    evaluated = {"dataset": "digits", "split": "test"}
    assert run.evaluated(None) == run.evaluated(100) == {**evaluated, "count": 360}
    assert run.evaluated(2) == {**evaluated, "count": 64}
    model = run.model
    assert model.built and model.num_classes == 10 and run.optimizer.built
    # One weight-decay rule for the optimizer and the model's loss.
    assert run.optimizer.decay_rule == model.weight_decay_rule
    assert model.weight_decay_rule.loss_only == {v.path for v in model.supervised_head.weights}
    views, labels = next(iter(run.train_dataset()))
    assert views.shape == (32, 16, 16, 6) and labels.shape == (32,)
    dataset, steps = run.eval_dataset()
    images, _ = next(iter(dataset))
    assert images.shape == (32, 16, 16, 3) and steps is None


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_resumed_run_trains_on_the_batches_of_the_run_never_interrupted(deterministic):
    # With --deterministic the batches from step 3 of a run resumed at step 3 are those the
    # run never interrupted trains on from step 3; without, a resumed run draws a new stream
    # (README: "Resume").
    config = Config.from_flags(**TINY, mode="train", deterministic=deterministic)
    run = build_run(config)

    def views(start_step, skip):
        """The views of batches skip, skip + 1 of the run resumed at `start_step`."""
        batches = zip(range(skip + 2), iter(run.train_dataset(start_step)), strict=False)
        return [x.numpy() for _, (x, _) in batches][skip:]

    whole, resumed = views(0, 3), views(3, 0)
    same = all(np.array_equal(w, r) for w, r in zip(whole, resumed, strict=True))
    assert same == deterministic


def test_build_run_takes_a_tools_own_data_and_other_optimizers(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "d.npz")
    np.savez(path, images=rng.integers(0, 256, (64, 8, 8, 3), np.uint8), labels=np.arange(64) % 4)
    config = Config.from_flags(**{**TINY, "image_size": 8}, optimizer="momentum")
    run = build_run(config, sources=Sources(train=npz_source(path)))
    assert run.plan.examples == 64 and run.plan.steps_per_epoch == 2
    assert run.model.num_classes == 4
    assert isinstance(run.optimizer, keras.optimizers.SGD)
    # Not LARS: the loss decays every kernel.
    assert not run.model.weight_decay_rule.by_optimizer


def test_build_run_validates_first():
    with pytest.raises(ConfigError, match="--train_batch_size=0"):
        build_run(Config.from_flags(**{**TINY, "train_batch_size": 0}))


def test_no_tool_or_test_imports_a_private_name_of_the_library():
    private = re.compile(r"from simclr_tf2[\w.]* import [^\n]*\b_\w+|simclr_tf2[\w.]*\._[a-z]\w*")
    offenders = []
    for folder in ("tools", "tests"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                text = open(os.path.join(ROOT, folder, name)).read()
                offenders += [f"{folder}/{name}: {m}" for m in private.findall(text)]
    assert not offenders, offenders


def test_load_sources_refuses_evaluation_on_the_training_images(tmp_path):
    from simclr_tf2.assembly import load_sources
    from simclr_tf2.checkpoints import write_json
    from simclr_tf2.data.sources import DataError

    path = str(tmp_path / "data.npz")
    np.savez(path, images=np.zeros((40, 8, 8, 3), np.uint8), labels=np.arange(40) % 4)
    flags = dict(TINY, dataset=path, eval_split="validation", image_size=8)
    refused = "--eval_split=validation: all of its 40 images are training images"
    for mode in ("train_then_eval", "eval"):  # --mode=eval watching model_dir
        with pytest.raises(DataError, match=refused):
            load_sources(Config.from_flags(**flags, mode=mode, model_dir=str(tmp_path)))
    held_out = dict(flags, train_split="train[:80%]", eval_split="train[80%:]")
    sources = load_sources(Config.from_flags(**held_out, mode="train_then_eval"))
    assert (sources.train.num_examples, sources.eval.num_examples) == (32, 8)
    # The kNN monitor's queries are held out too.
    with pytest.raises(DataError, match=r"so the kNN monitor \(--knn_eval_every\) would score"):
        load_sources(Config.from_flags(**flags, mode="train", knn_eval_every=1))
    # --mode=eval --checkpoint: the training data is the one in the checkpoint's config.json.
    trained = tmp_path / "trained"
    trained.mkdir()
    write_json(str(trained / "config.json"), json.loads(Config.from_flags(**flags).to_json()))
    for checkpoint in (trained, trained / "ckpt-20", trained / "saved_model" / "20"):
        config = Config.from_flags(
            **dict(flags, dataset="digits", eval_dataset=path),
            mode="eval",
            checkpoint=str(checkpoint),
        )
        with pytest.raises(DataError, match=refused):
            load_sources(config)
    # Another run's checkpoint (no config.json of ours: the authors'): not known, not refused.
    other = Config.from_flags(**flags, mode="eval", checkpoint=str(tmp_path / "theirs"))
    assert load_sources(other).eval.num_examples == 40
