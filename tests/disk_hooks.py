"""Runs run.py exactly as `python run.py` would, with its disk filling up (or its model_dir
becoming read-only) at one chosen write.

Run as a script: `python tests/disk_hooks.py {full,readonly} {checkpoint,export,result}
[run.py flags...]`. Right before the chosen write, which is then the first to fail:

- `full`: the process's file-size limit (RLIMIT_FSIZE) becomes 0, with SIGXFSZ ignored, so
  every write that would make a regular file longer fails with EFBIG ("File too large")
  inside the write call, in Python or in TensorFlow's C++, as it would with ENOSPC on a
  full disk; files already written stay readable. (A limit set from the start would stop
  the first checkpoint or none: it limits each file's size, not the disk's.)
- `readonly`: `--model_dir` is made read-only (mode 0555). The caller must run this
  script without CAP_DAC_OVERRIDE (e.g. not as root) for that to stop writes.

The writes: `checkpoint` the second checkpoint save (the first one is complete),
`export` the first SavedModel export (after the last checkpoint), `result` the first
result_<step>.json / result.json (after the export). The line `disk_hooks: ...` on stderr
names the moment. A run that ends without reaching it exits with status 86, so that a test
cannot pass by accident.
"""

import os
import resource
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_REACHED = 86
SAVE_TO_FAIL = 2

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see run.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, ROOT)

import tensorflow as tf  # noqa: E402
from tensorflow.python.checkpoint import checkpoint_management  # noqa: E402

import simclr_tf2.train  # noqa: E402

_reached = False


def _model_dir() -> str:
    flag = next(a for a in sys.argv if a.startswith("--model_dir="))
    return flag.split("=", 1)[1]


def _fill_disk() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))


def _make_read_only() -> None:
    os.chmod(_model_dir(), 0o555)


def _strike(how, what: str) -> None:
    global _reached
    if not _reached:
        _reached = True
        sys.stderr.write(f"disk_hooks: {how.__name__} (pid {os.getpid()}) before {what}\n")
        sys.stderr.flush()
        how()


def _at_checkpoint(how) -> None:
    save = checkpoint_management.CheckpointManager.save
    saves = 0

    def save_or_strike(self, *args, **kwargs):
        nonlocal saves
        saves += 1
        if saves == SAVE_TO_FAIL:
            _strike(how, f"checkpoint save {saves} into {self.directory}")
        return save(self, *args, **kwargs)

    checkpoint_management.CheckpointManager.save = save_or_strike


def _at_export(how) -> None:
    save = tf.saved_model.save

    def save_or_strike(obj, export_dir, *args, **kwargs):
        _strike(how, f"the export into {export_dir}")
        return save(obj, export_dir, *args, **kwargs)

    tf.saved_model.save = save_or_strike


def _at_result(how) -> None:
    write_json = simclr_tf2.train.write_json

    def write_or_strike(path, data):
        if os.path.basename(path).startswith("result"):
            _strike(how, f"writing {path}")
        return write_json(path, data)

    simclr_tf2.train.write_json = write_or_strike


HOW = {"full": _fill_disk, "readonly": _make_read_only}
WHERE = {"checkpoint": _at_checkpoint, "export": _at_export, "result": _at_result}


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in HOW or sys.argv[2] not in WHERE:
        sys.stderr.write(
            f"usage: disk_hooks.py {{{','.join(HOW)}}} {{{','.join(WHERE)}}} [run.py flags...]\n"
        )
        return 2
    WHERE[sys.argv[2]](HOW[sys.argv[1]])
    # What `python run.py flags...` sees: its own path as argv[0] and its folder on sys.path.
    run_py = os.path.join(ROOT, "run.py")
    sys.argv = [run_py, *sys.argv[3:]]
    sys.path[0] = ROOT
    try:
        runpy.run_path(run_py, run_name="__main__")
    except SystemExit as exit:
        if exit.code not in (0, None) or _reached:
            raise
    sys.stderr.write("disk_hooks: the run ended without reaching the write to fail\n")
    return NOT_REACHED


if __name__ == "__main__":
    sys.exit(main())
