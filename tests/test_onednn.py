"""Importing simclr_tf2 (and so run.py and the tools) turns on oneDNN's CPU kernels,
unless the user chose otherwise."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = (
    "import simclr_tf2\n"
    "from tensorflow.python.util import _pywrap_util_port as port\n"
    "print(port.IsMklEnabled())\n"
)


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False")])
def test_onednn_default(setting, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    proc = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == expected
