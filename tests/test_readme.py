"""The README's Python example runs as written."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CHECKS = """
assert h.shape == (4, 128), h.shape
views, labels = next(iter(train))
assert views.shape == (256, 32, 32, 6), views.shape
"""


def test_python_examples_run(tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert len(blocks) == 2, "README.md should have the model and the data examples"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks) + CHECKS)
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Run from elsewhere, like a user's own script.
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
