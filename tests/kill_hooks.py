"""Runs run.py exactly as `python run.py` would, with a SIGKILL planted inside a checkpoint save.

Run as a script: `python tests/kill_hooks.py KILL_POINT [run.py flags...]`. The process kills
itself with SIGKILL, which no Python code can intercept, at one of these moments:

- `before_state`: during the second save, once `ckpt-<step>.index` and its data file are
  complete but before the `checkpoint` state file names them (the first `_record_state` of
  `tf.train.CheckpointManager.save`).
- `mid_write`: during the second save, while TensorFlow is writing the shard into
  `<prefix>_temp/`: a thread started with the write polls that folder and kills the process as
  soon as it sees the writer's `.tempstate` file, i.e. before the shard is renamed into place
  and long before the merge into `<prefix>.index` / `.data-*`.

The `mid_write` watcher races the writer (a few milliseconds); it wins almost always. When it
loses, the process is killed as the write returns, before the merge: the shard then sits
complete in `<prefix>_temp/` and `<prefix>.index` does not exist, which a resume must treat the
same way. (A CI run once lost the race at every save and the run reached its export.) The line
`kill_hooks: SIGKILL ...` on stderr names the checkpoint being written. If the run ends without
having been killed, the script exits with status 86 so that a test cannot pass by accident.
"""

import os
import runpy
import signal
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_KILLED = 86
FIRST_SAVE_TO_KILL = 2

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from tensorflow.python.checkpoint import checkpoint_management  # noqa: E402
from tensorflow.python.ops import io_ops  # noqa: E402

_saves = 0


def _die(message: str) -> None:
    sys.stderr.write(f"kill_hooks: SIGKILL {message}\n")
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
    # functional_saver calls `io_ops.save_v2` through the module at each save (eagerly), so
    # replacing the module attribute reaches every shard write.
    save_v2 = io_ops.save_v2

    def save_v2_and_die(prefix, *args, **kwargs):
        # Saving a SavedModel traces the saver into a graph (a symbolic prefix): not a write.
        if _saves < FIRST_SAVE_TO_KILL or not hasattr(prefix, "numpy"):
            return save_v2(prefix, *args, **kwargs)
        folder = os.path.dirname(prefix.numpy().decode())
        done = threading.Event()

        def watch():
            while not done.is_set():
                try:
                    names = os.listdir(folder)
                except FileNotFoundError:
                    continue
                partial = [n for n in names if ".tempstate" in n]
                if partial:
                    size = os.path.getsize(os.path.join(folder, partial[0]))
                    _die(f"while writing {folder}/{partial[0]} ({size} bytes so far)")

        # The watcher must get the interpreter lock within the few ms the write lasts.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            save_v2(prefix, *args, **kwargs)
        finally:
            done.set()
            watcher.join()
            sys.setswitchinterval(switch_interval)
        _die(f"after writing into {folder}, before the merge (the watcher missed the write)")

    io_ops.save_v2 = save_v2_and_die


POINTS = {"before_state": _kill_before_state, "mid_write": _kill_mid_write}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in POINTS:
        sys.stderr.write(f"usage: kill_hooks.py {{{','.join(POINTS)}}} [run.py flags...]\n")
        return 2
    point = sys.argv[1]
    _count_saves()
    POINTS[point]()
    # What `python run.py flags...` sees: its own path as argv[0] and its folder on sys.path.
    run_py = os.path.join(ROOT, "run.py")
    sys.argv = [run_py, *sys.argv[2:]]
    sys.path[0] = ROOT
    try:
        runpy.run_path(run_py, run_name="__main__")
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise
    sys.stderr.write(f"kill_hooks: the run ended without being killed at {point}\n")
    return NOT_KILLED


if __name__ == "__main__":
    sys.exit(main())
