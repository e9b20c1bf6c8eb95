"""Runs run.py exactly as `python run.py` would, with a SIGKILL planted inside a checkpoint save.

Run as a script: `python tests/kill_hooks.py KILL_POINT [run.py flags...]`. The process kills
itself with SIGKILL, which no Python code can intercept, at one of these moments:

- `before_state`: during the second save, once `ckpt-<step>.index` and its data file are
  complete but before the `checkpoint` state file names them (the first `_record_state` of
  `tf.train.CheckpointManager.save`).
- `mid_write`: during the second save, once TensorFlow has written the checkpoint's shard (its
  data and its own index) into `<prefix>_temp/` and before it merges them into `<prefix>.index`
  and `<prefix>.data-*` (the call to `merge_v2_checkpoints`, which the save makes right after the
  shard writes).
- `mid_export`: during the first export, once the SavedModel's variables are written into its
  temporary directory and before its `saved_model.pb` is (the last file a SavedModel gets, and
  the one readers take as the sign that it is complete).
- `after_step=N`: in training, once step N is done (the optimizer's `iterations` is N) and before
  step N + 1 starts (the end of a batch, seen by the `CheckpointSaver` callback, after its own
  handling of that batch).

Each moment is reached by replacing the TensorFlow function that the save calls next, so the
kill comes inside the save at every run, never before or after it. The line
`kill_hooks: SIGKILL ...` on stderr names what was being written. If the run ends without having
been killed, the script exits with status 86 so that a test cannot pass by accident.
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_KILLED = 86
FIRST_SAVE_TO_KILL = 2

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from tensorflow.python.checkpoint import checkpoint_management  # noqa: E402
from tensorflow.python.lib.io import file_io  # noqa: E402
from tensorflow.python.ops import gen_io_ops  # noqa: E402

_saves = 0


def _die(message: str) -> None:
    sys.stderr.write(f"kill_hooks: SIGKILL (pid {os.getpid()}) {message}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _count_saves() -> None:
    save = checkpoint_management.CheckpointManager.save

    def counted(self, *args, **kwargs):
        global _saves
        _saves += 1
        return save(self, *args, **kwargs)

    checkpoint_management.CheckpointManager.save = counted


def _kill_before_state() -> None:
    record_state = checkpoint_management.CheckpointManager._record_state

    def record_state_or_die(self):
        if _saves == FIRST_SAVE_TO_KILL:
            prefix = self.latest_checkpoint
            complete = [os.path.exists(prefix + s) for s in (".index", ".data-00000-of-00001")]
            _die(f"before the state file names {prefix} (its files exist: {all(complete)})")
        record_state(self)

    checkpoint_management.CheckpointManager._record_state = record_state_or_die


def _kill_mid_write() -> None:
    # functional_saver calls `gen_io_ops.merge_v2_checkpoints` through the module once the
    # shards are written, so replacing the module attribute reaches every save.
    merge = gen_io_ops.merge_v2_checkpoints

    def merge_or_die(checkpoint_prefixes, destination_prefix, *args, **kwargs):
        # Saving a SavedModel traces the saver into a graph (symbolic prefixes): not a write.
        if _saves == FIRST_SAVE_TO_KILL and hasattr(destination_prefix, "numpy"):
            prefix = destination_prefix.numpy().decode()
            shards = os.listdir(prefix + "_temp")
            _die(f"with {prefix} written into {prefix}_temp/ ({len(shards)} files), not merged")
        return merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)

    gen_io_ops.merge_v2_checkpoints = merge_or_die


def _kill_after_step(step: int) -> None:
    from simclr_tf2.callbacks import CheckpointSaver

    batch_end = CheckpointSaver.on_train_batch_end

    def batch_end_or_die(self, batch, logs=None):
        batch_end(self, batch, logs)
        if self._step() == step:
            saved = self.manager.latest_checkpoint
            _die(f"after training step {step} (newest checkpoint {saved})")

    CheckpointSaver.on_train_batch_end = batch_end_or_die


def _kill_mid_export() -> None:
    # tf.saved_model.save writes saved_model.pb through `file_io.atomic_write_string_to_file`
    # after the variables; replacing the module attribute reaches that call.
    write = file_io.atomic_write_string_to_file

    def write_or_die(filename, *args, **kwargs):
        name = os.fspath(filename)
        if name.endswith("saved_model.pb"):
            folder = os.path.dirname(name)
            written = sorted(os.listdir(os.path.join(folder, "variables")))
            _die(f"while exporting into {folder} (variables/ holds {written}), before its .pb")
        return write(filename, *args, **kwargs)

    file_io.atomic_write_string_to_file = write_or_die


POINTS = {
    "before_state": _kill_before_state,
    "mid_write": _kill_mid_write,
    "mid_export": _kill_mid_export,
}


def main() -> int:
    point = sys.argv[1] if len(sys.argv) > 1 else ""
    step = point.removeprefix("after_step=")
    if point not in POINTS and not (step != point and step.isdigit()):
        points = ",".join([*POINTS, "after_step=N"])
        sys.stderr.write(f"usage: kill_hooks.py {{{points}}} [run.py flags...]\n")
        return 2
    # What `python run.py flags...` sees: its own path as argv[0] and its folder on sys.path
    # (set first: the after_step hook imports simclr_tf2 from there).
    run_py = os.path.join(ROOT, "run.py")
    sys.argv = [run_py, *sys.argv[2:]]
    sys.path[0] = ROOT
    _count_saves()
    if point in POINTS:
        POINTS[point]()
    else:
        _kill_after_step(int(step))
    try:
        runpy.run_path(run_py, run_name="__main__")
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise
    sys.stderr.write(f"kill_hooks: the run ended without being killed at {point}\n")
    return NOT_KILLED


if __name__ == "__main__":
    sys.exit(main())
