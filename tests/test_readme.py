"""The README's Python example runs as written."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CHECKS = """
assert h.shape == (4, 128), h.shape
views, labels = next(iter(train))
assert views.shape == (256, 32, 32, 6), views.shape
"""


# The quick start's export, stood in for by an untrained model of the same shape.
EXPORT = """
from simclr_tf2 import SimCLRModel
from simclr_tf2.export import export_saved_model

model = SimCLRModel(num_classes=10, resnet_depth=18, width_multiplier=0.25, cifar_stem=True)
model.build((None, 32, 32, 3))
export_saved_model(model, "export")
"""
EXPORT_CHECKS = """
assert h.shape == (4, 128), h.shape
assert classifier(images).shape == (4, 10)
assert len(encoder.trainable_weights) > 0
"""


def _blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


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
    assert len(blocks) == 3, "README.md should have the export, model and data examples"
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


def test_export_example_runs(tmp_path):
    export_block = [b for b in _blocks() if "AuthorsCheckpoint" not in b][0]
    path = "/tmp/simclr_quickstart/saved_model/330"
    assert path in export_block
    script = tmp_path / "export_example.py"
    script.write_text(EXPORT + export_block.replace(path, "export") + EXPORT_CHECKS)
    _run(script, tmp_path)
