"""The authors' TF2 checkpoints and SavedModels (simclr_tf2.compat, tools/import_checkpoint.py,
run.py --checkpoint / --teacher), against the fixtures written by their own code in
../shared/data/gr_checkpoints with the outputs their code computes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.compat import AuthorsCheckpoint, CompatError, find
from tests.run_many import run_many

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "..", "shared", "data", "gr_checkpoints")
pytestmark = pytest.mark.skipif(
    not os.path.isdir(FIXTURES), reason="../shared/data/gr_checkpoints is not here"
)
OUTPUTS = ("final_avg_pool", "proj_head_output", "logits_sup")
# (fixture, form): every fixture as a checkpoint, the SK one also as their SavedModel.
FORMS = [
    ("r18_cifar_w025", ""),
    ("r50_sk0_w025", ""),
    ("r50_sk1_w025", ""),
    ("r50_sk1_w025", "saved_model/1234"),
]


def fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


def expected(name: str) -> dict:
    return dict(np.load(os.path.join(fixture(name), "expected_outputs.npz")))


def assert_outputs_equal(outputs: dict, name: str) -> None:
    ref = expected(name)
    for key in OUTPUTS:
        got = np.asarray(outputs[key], np.float64)
        # 1e-5 relative to the largest value: float32 round-off of different kernels.
        scale = np.abs(ref[key]).max()
        assert got.shape == ref[key].shape, key
        assert np.abs(got - ref[key]).max() <= 1e-5 * scale, (name, key)


@pytest.mark.parametrize("name, form", FORMS)
def test_imported_model_computes_the_authors_outputs(name, form):
    flags = json.load(open(os.path.join(fixture(name), "flags.json")))
    released = AuthorsCheckpoint(os.path.join(fixture(name), form))
    arch = released.architecture
    assert arch.resnet_depth == int(flags["flags"]["resnet_depth"])
    assert arch.width_multiplier == float(flags["flags"]["width_multiplier"])
    assert arch.sk_ratio == float(flags["flags"].get("sk_ratio", 0))
    assert arch.cifar_stem == (int(flags["flags"]["image_size"]) <= 32)
    assert arch.num_proj_layers == int(flags["flags"]["num_proj_layers"])
    assert arch.proj_out_dim == int(flags["flags"]["proj_out_dim"])
    assert arch.num_classes == flags["num_classes"]
    assert released.num_params == flags["params"]
    assert released.global_step == 1234
    model = released.build_model(image_size=int(flags["flags"]["image_size"]))
    assert_outputs_equal(model(expected(name)["inputs"], training=False), name)


def test_find_tells_theirs_from_ours_and_from_nothing(tmp_path):
    assert find(fixture("r18_cifar_w025")) is not None
    assert find(fixture("r50_sk1_w025/saved_model")) is not None  # the newest <step> in it
    assert find(str(tmp_path)) is None
    with pytest.raises(CompatError, match="no checkpoint or SavedModel there"):
        AuthorsCheckpoint(str(tmp_path))


def _rewrite(source: str, out: str, drop: str | None = None, reshape: str | None = None) -> str:
    """The fixture's model variables re-saved under their object paths (the layout their
    code writes), without `drop` or with `reshape` given a wrong shape."""
    values = tf.train.load_checkpoint(source)
    root = tf.train.Checkpoint()
    for key, _ in tf.train.list_variables(source):
        if not key.startswith("model/") or key.endswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue
        path = key.split("/.ATTRIBUTES")[0]
        if drop and (path == drop or path.startswith(drop + "/")):
            continue
        value = values.get_tensor(key)
        if path == reshape:
            value = value[..., : value.shape[-1] // 2]
        node = root
        *parents, leaf = path.split("/")
        for part in parents:
            if not hasattr(node, part):
                setattr(node, part, tf.__internal__.tracking.AutoTrackable())
            node = getattr(node, part)
        setattr(node, leaf, tf.Variable(value))
    return root.write(out)


BLOCKS = "model/resnet_model/block_groups"
BROKEN = {
    "deleted": dict(drop=f"{BLOCKS}/1/layers/0/conv2d_bn_layers/3/bn/moving_variance"),
    "reshaped": dict(reshape=f"{BLOCKS}/2/layers/1/conv2d_bn_layers/2/conv2d/kernel"),
}


@pytest.mark.parametrize("how", sorted(BROKEN))
def test_a_damaged_checkpoint_names_the_variable(how, tmp_path):
    source = os.path.join(fixture("r18_cifar_w025"), "ckpt-1234")
    path = _rewrite(source, str(tmp_path / "ckpt"), **BROKEN[how])
    variable = next(iter(BROKEN[how].values()))
    # The rewrite itself keeps the layout: unchanged, it loads.
    intact = _rewrite(source, str(tmp_path / "intact"))
    AuthorsCheckpoint(intact).build_model(image_size=32)
    with pytest.raises(CompatError) as error:
        AuthorsCheckpoint(path).build_model(image_size=32)
    message = str(error.value)
    assert variable in message and "\n" not in message
    assert ("is missing" if how == "deleted" else "has shape (3, 3, 64, 32)") in message


def test_no_projection_head_like_their_simclrv1_releases(tmp_path):
    source = os.path.join(fixture("r50_sk0_w025"), "ckpt-1234")
    path = _rewrite(source, str(tmp_path / "ckpt"), drop="model/_projection_head")
    released = AuthorsCheckpoint(path)
    assert released.architecture.proj_head_mode == "none"
    assert "no projection head" in released.architecture.describe()
    model = released.build_model(image_size=64)
    outputs = model(expected("r50_sk0_w025")["inputs"], training=False)
    ref = expected("r50_sk0_w025")
    for key in ("final_avg_pool", "logits_sup"):  # their head reads h
        scale = np.abs(ref[key]).max()
        assert np.abs(outputs[key].numpy() - ref[key]).max() <= 1e-5 * scale, key


def test_an_image_size_that_does_not_fit_the_stem():
    with pytest.raises(CompatError, match="image_size=224 does not fit .* a CIFAR stem"):
        AuthorsCheckpoint(fixture("r18_cifar_w025")).build_model(image_size=224)


@pytest.mark.long
def test_import_tool_writes_a_checkpoint_config_and_export_with_their_outputs(tmp_path):
    out = tmp_path / "imported"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    tool = [sys.executable, os.path.join(ROOT, "tools", "import_checkpoint.py")]
    source = fixture("r50_sk1_w025/saved_model/1234")  # their SavedModel form
    proc = subprocess.run(
        [*tool, f"--checkpoint={source}", f"--out={out}", "--image_size=64"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ResNet-50 0.25x, selective kernels (sk_ratio 0.0625)" in proc.stdout
    assert "2,878,594 parameters" in proc.stdout
    assert "Checked   against their SavedModel" in proc.stdout
    assert "--resnet_depth=50 --width_multiplier=0.25 --sk_ratio=0.0625" in proc.stdout
    assert (out / "ckpt-1234.index").exists()
    config = json.loads((out / "config.json").read_text())["model"]
    assert (config["resnet_depth"], config["sk_ratio"], config["num_proj_layers"]) == (
        50,
        0.0625,
        3,
    )
    # tools/linear_eval.py, knn_eval.py and embed.py take the imported directory as
    # --checkpoint.
    from simclr_tf2.checkpoints import load_encoder

    encoder = load_encoder(checkpoint=str(out))
    assert encoder.where == str(out / "ckpt-1234") and encoder.image_size == 64  # --image_size
    features = encoder(tf.constant(expected("r50_sk1_w025")["inputs"]))["final_avg_pool"]
    ref = expected("r50_sk1_w025")["final_avg_pool"]
    assert np.abs(features.numpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    # The other fixtures, as checkpoints, through the function the tool runs.
    from simclr_tf2.checkpoints import import_authors_checkpoint

    exports = {"r50_sk1_w025": str(out / "saved_model" / "1234")}
    for name in ("r18_cifar_w025", "r50_sk0_w025", "r50_sk1_w025"):
        imported = import_authors_checkpoint(fixture(name), str(tmp_path / f"{name}_ckpt"))
        exports[f"{name}_ckpt"] = imported.export
    # Every export, loaded in a fresh process, computes their outputs.
    jobs = []
    for key, export in exports.items():
        name = key.removesuffix("_ckpt")
        np.save(tmp_path / f"{key}.npy", expected(name)["inputs"])
        jobs.append((export, str(tmp_path / f"{key}.npy"), str(tmp_path / f"{key}.npz")))
    script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "for export, inputs, outputs in json.loads(sys.argv[1]):\n"
        "    m = tf.saved_model.load(export)\n"
        "    o = m(tf.constant(np.load(inputs)), trainable=False)\n"
        "    np.savez(outputs, **{k: v.numpy() for k, v in o.items()})\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script, json.dumps(jobs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    for key in exports:
        outputs = dict(np.load(tmp_path / f"{key}.npz"))
        assert_outputs_equal(outputs, key.removesuffix("_ckpt"))
    # The same directory again: refused, nothing overwritten.
    again = subprocess.run(
        [*tool, f"--checkpoint={source}", f"--out={out}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert again.returncode == 2 and "already holds checkpoints" in again.stderr


def test_an_import_that_computes_other_outputs_than_their_saved_model_writes_nothing(tmp_path):
    from simclr_tf2.checkpoints import import_authors_checkpoint
    from simclr_tf2.config import ConfigError

    # Their head reads h; told it reads head layer 1 (as wide as h), every shape fits,
    # and only the comparison with their SavedModel's outputs can tell.
    with pytest.raises(ConfigError, match="Only logits_sup differs.*ft_proj_selector"):
        import_authors_checkpoint(
            fixture("r50_sk1_w025/saved_model"),
            str(tmp_path / "out"),
            ft_proj_selector=1,
            image_size=64,
        )
    assert not (tmp_path / "out").exists()


def test_linear_and_knn_tools_take_their_checkpoint():
    from simclr_tf2.checkpoints import load_encoder

    encoder = load_encoder(checkpoint=fixture("r50_sk1_w025"))
    assert encoder.where.endswith("ckpt-1234")
    features = encoder(tf.constant(expected("r50_sk1_w025")["inputs"]))["final_avg_pool"]
    ref = expected("r50_sk1_w025")["final_avg_pool"]
    assert np.abs(features.numpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "knn_eval.py"),
            f"--checkpoint={fixture('r18_cifar_w025')}",
            "--dataset=digits",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["saved_model"].endswith("ckpt-1234") and result["eval_examples"] == 360


# run.py on digits (32 px) from the authors' CIFAR-stem ResNet-18, whose flags these are.
R18 = [
    "--dataset=digits",
    "--eval_split=test",
    "--image_size=32",
    "--resnet_depth=18",
    "--width_multiplier=0.25",
    "--proj_out_dim=64",
    "--num_proj_layers=2",
    "--train_batch_size=32",
    "--eval_batch_size=128",
    "--train_steps=2",
    "--checkpoint_steps=2",
    "--warmup_epochs=0",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """run.py cases in one process (tests/run_many.py): {case: (exit code, stderr, model_dir)}."""
    base = tmp_path_factory.mktemp("runs")
    r18 = fixture("r18_cifar_w025")
    # Not named like a case: each case's model_dir is base/<case>, created (locked) first.
    damaged = _rewrite(
        os.path.join(r18, "ckpt-1234"), str(base / "damaged_ckpt"), **BROKEN["deleted"]
    )
    from simclr_tf2.checkpoints import import_authors_checkpoint

    imported = import_authors_checkpoint(r18, str(base / "imported_r18")).checkpoint
    finetune = [
        "--mode=train",
        "--train_mode=finetune",
        "--optimizer=momentum",
        "--learning_rate=0.5",
    ]
    three = str(base / "three_classes.npz")
    rng = np.random.default_rng(0)
    np.savez(
        three, images=rng.integers(0, 255, (12, 32, 32, 3), np.uint8), labels=np.arange(12) % 3
    )
    cases = {
        "finetune": [*finetune, f"--checkpoint={r18}"],
        "finetune_imported": [*finetune, f"--checkpoint={os.path.dirname(imported)}"],
        "linear_eval": [f"--flagfile={ROOT}/simclr_tf2/recipes/linear_eval.flags",
                        f"--checkpoint={r18}", "--train_batch_size=32", "--learning_rate=1.0"],
        "eval": ["--mode=eval", f"--checkpoint={r18}"],
        "distill": ["--mode=train", "--train_mode=distill", f"--teacher={r18}"],
        "wrong_depth": ["--mode=train", "--train_mode=finetune", f"--checkpoint={r18}",
                        "--resnet_depth=50"],
        "wrong_head": ["--mode=train", "--train_mode=finetune", f"--checkpoint={r18}",
                       "--num_proj_layers=3"],
        "wrong_stem": ["--mode=train", "--train_mode=finetune", "--image_size=64",
                       f"--checkpoint={r18}"],
        "damaged": ["--mode=train", "--train_mode=finetune", f"--checkpoint={damaged}"],
        "eval_other_task": ["--mode=eval", f"--checkpoint={r18}", f"--dataset={three}"],
    }  # fmt: skip
    listed = [[*R18, f"--model_dir={base / case}", *args] for case, args in cases.items()]
    results = run_many(listed, base, timeout=1200)
    return {
        case: (r["code"], r["stderr"], str(base / case))
        for case, r in zip(cases, results, strict=True)
    }


def _trained(model_dir: str) -> dict:
    from simclr_tf2.checkpoints import restore_model

    model = restore_model(tf.train.latest_checkpoint(model_dir))
    return {v.path.split("/", 1)[1]: v.numpy() for v in model.variables}, model


def _theirs() -> dict:
    model = AuthorsCheckpoint(fixture("r18_cifar_w025")).build_model()
    return {v.path.split("/", 1)[1]: v.numpy() for v in model.variables}


@pytest.mark.parametrize("case", ["finetune", "finetune_imported"])
def test_finetuning_from_their_checkpoint_changes_the_encoder_and_a_new_head(runs, case):
    """From their checkpoint directly, and from what tools/import_checkpoint.py writes."""
    code, stderr, model_dir = runs[case]
    assert code == 0, stderr[-3000:]
    trained, model = _trained(model_dir)
    theirs = _theirs()
    encoder = [k for k in trained if k.startswith("resnet/")]
    assert len(encoder) == len([k for k in theirs if k.startswith("resnet/")])
    changed = [k for k in encoder if not np.array_equal(trained[k], theirs[k])]
    assert len(changed) > len(encoder) // 2
    # A new head: not theirs, and trained (its bias starts at zero).
    assert not np.array_equal(trained["head_supervised/kernel"], theirs["head_supervised/kernel"])
    assert np.abs(trained["head_supervised/bias"]).max() > 0


def test_linear_evaluation_of_their_checkpoint_freezes_every_encoder_weight_and_statistic(runs):
    code, stderr, model_dir = runs["linear_eval"]
    assert code == 0, stderr[-3000:]
    trained, _ = _trained(model_dir)
    theirs = _theirs()
    encoder = [k for k in trained if k.startswith("resnet/")]
    assert any("moving_variance" in k for k in encoder)
    for key in encoder:
        np.testing.assert_array_equal(trained[key], theirs[key], err_msg=key)
    assert np.abs(trained["head_supervised/bias"]).max() > 0
    assert os.path.exists(os.path.join(model_dir, "result.json"))


def test_eval_mode_evaluates_their_supervised_head_at_their_step(runs):
    code, stderr, model_dir = runs["eval"]
    assert code == 0, stderr[-3000:]
    result = json.load(open(os.path.join(model_dir, "result.json")))
    assert result["global_step"] == 1234
    assert 0 <= result["top_1_accuracy"] <= 1
    # What was evaluated (and exported) is their model: their outputs.
    loaded = tf.saved_model.load(os.path.join(model_dir, "saved_model", "1234"))
    inputs = tf.constant(expected("r18_cifar_w025")["inputs"])
    assert_outputs_equal(loaded(inputs, trainable=False), "r18_cifar_w025")


def test_their_checkpoint_as_a_distillation_teacher(runs):
    code, stderr, model_dir = runs["distill"]
    assert code == 0, stderr[-3000:]
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-2")


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_depth", "--resnet_depth=50: --checkpoint="),
        ("wrong_head", "--num_proj_layers=3: --checkpoint="),
        ("wrong_stem", "--image_size=64: --checkpoint="),
        ("damaged", "conv2d_bn_layers/3/bn/moving_variance is missing"),
        ("eval_other_task", "its supervised head predicts 10 classes, the evaluation data has 3"),
    ],
)
def test_flags_that_disagree_with_their_checkpoint_stop_with_one_line(runs, case, message):
    code, stderr, _ = runs[case]
    lines = [line for line in stderr.splitlines() if line.startswith("run.py: ")]
    assert code == 2 and len(lines) == 1 and message in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
