"""The README's main command and Python examples run as written."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CHECKS = """
assert int(run.optimizer.iterations.numpy()) == 20
assert run.optimizer.decay_rule == run.model.weight_decay_rule
assert h.shape == (4, 128), h.shape
views, labels = next(iter(train))
assert views.shape == (256, 32, 32, 6), views.shape
"""


EXPORT_CHECKS = """
assert h.shape == (4, 128), h.shape
assert h_jpeg.shape == (1, 128), h_jpeg.shape
assert classifier(images).shape == (4, 10)
assert len(encoder.trainable_weights) > 0
"""


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)


@pytest.fixture(scope="module")
def main_command_run(tmp_path_factory):
    """The README's main command as written, for one step, with its outputs elsewhere."""
    section = re.search(r"^## The main command\n(.*?)^## ", _readme(), re.M | re.S)
    command = re.search(r"```bash\n(.*?)```", section.group(1), re.S).group(1)
    command = command.replace("\\\n", " ").split()
    assert command[:2] == ["python", "run.py"], command
    assert "--model_dir=/tmp/simclr_quickstart" in command
    model_dir = tmp_path_factory.mktemp("quickstart") / "run"
    args = [f"--model_dir={model_dir}" if a.startswith("--model_dir=") else a for a in command[2:]]
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "run.py", *args, "--train_steps=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


def test_main_command_runs(main_command_run):
    config = json.loads((main_command_run / "config.json").read_text())
    # The flagfile's settings were used, not run.py's ImageNet defaults.
    settings = (config["data"]["dataset"], config["model"]["resnet_depth"])
    assert settings + (config["train"]["train_epochs"],) == ("digits", 18, 30)
    result = json.loads((main_command_run / "result.json").read_text())
    assert result["global_step"] == 1
    assert os.path.isdir(main_command_run / "saved_model" / "1")


def _run(script, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Run from elsewhere, like a user's own script.
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _released_block() -> str:
    return next(b for b in _blocks() if "AuthorsCheckpoint" in b)


def test_python_examples_run(tmp_path):
    blocks = [b for b in _blocks() if "AuthorsCheckpoint" not in b]
    assert len(blocks) == 4, "README.md should have the export, run, model and data examples"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks[1:]) + CHECKS)
    _run(script, tmp_path)


def test_released_model_example_runs(tmp_path):
    fixture = os.path.join(ROOT, "..", "shared", "data", "gr_checkpoints", "r50_sk1_w025")
    if not os.path.isdir(fixture):
        pytest.skip("../shared/data/gr_checkpoints is not here")
    # One of the authors' small SavedModels (ResNet-50 0.25x + SK) in place of the download.
    block = _released_block().replace("r50_1x_sk1/saved_model", f"{fixture}/saved_model")
    script = tmp_path / "released_example.py"
    script.write_text(block + "\nassert h.shape == (2, 512), h.shape\n")
    _run(script, tmp_path)


def test_export_example_runs(tmp_path, main_command_run):
    # On the export of the main command's run (after one step instead of 330).
    export_block = [b for b in _blocks() if "AuthorsCheckpoint" not in b][0]
    path = "/tmp/simclr_quickstart/saved_model/330"
    assert path in export_block
    script = tmp_path / "export_example.py"
    export = str(main_command_run / "saved_model" / "1")
    script.write_text(export_block.replace(path, export) + EXPORT_CHECKS)
    _run(script, tmp_path)
