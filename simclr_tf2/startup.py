"""A quiet start for TensorFlow: a leaf module (it imports TensorFlow only when asked).

TensorFlow's native start-up messages (CUDA probing on a machine without a GPU,
oneDNN notices) are written by C++ code straight to the process's stderr, before
and regardless of TF_CPP_MIN_LOG_LEVEL. `start_tensorflow` loads TensorFlow and
finds its devices with that output held back, unless the command line asks for
debug output (--verbosity >= 1); if start-up fails, what was held is shown.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


def verbose(argv: list[str]) -> bool:
    """Whether --verbosity (-v) asks for debug output (TensorFlow's native start-up
    messages included); read before the flags are parsed, as TensorFlow loads first."""
    for i, arg in enumerate(argv[1:], start=1):
        for prefix in ("--verbosity", "-v"):
            if arg.startswith(prefix + "="):
                value = arg.split("=", 1)[1]
            elif arg == prefix and i + 1 < len(argv):
                value = argv[i + 1]
            else:
                continue
            try:
                return int(value) >= 1
            except ValueError:
                return False
    return False


@contextlib.contextmanager
def native_stderr_held(show: bool):
    """Keeps what native code writes to stderr (TensorFlow's CUDA probing and
    oneDNN notices at start-up) out of the terminal (unless `show`); shown if
    start-up fails."""
    if show:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def start_tensorflow(argv: list[str]) -> None:
    """Loads TensorFlow and finds its devices quietly (unless --verbosity >= 1)."""
    with native_stderr_held(verbose(argv)):
        import tensorflow as tf

        tf.config.list_physical_devices()
