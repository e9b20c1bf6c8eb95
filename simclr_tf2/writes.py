"""Writes into model_dir that the filesystem refuses: a full disk, a quota or file-size
limit, a read-only or unwritable directory.

`refused_write(error, model_dir)` recognises such a failure, in an OSError (Python's own
writes) or in one of TensorFlow's errors (its C++ file writes report `<path>; <strerror>`),
and returns the `WriteRefusedError` run.py prints as one line (exit status
`WriteRefusedError.EXIT_STATUS`); `writes_named(model_dir)` does it for a block of code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

import tensorflow as tf

# What a filesystem answers to a write it refuses: full, over a quota or a file-size limit
# (RLIMIT_FSIZE), read-only, or a directory this process may not write into.
_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)
_REASONS = tuple(os.strerror(e) for e in _ERRNOS)
# TensorFlow's file errors end "<path>; <strerror>"; its atomic writes add ".tempstate<n>" to
# the name they write first, which is not a name the user knows.
_TF_FAILURE = re.compile(
    r"(?:^|[\s}])(\S+?)(?:\.tempstate\d+)?; (" + "|".join(map(re.escape, _REASONS)) + r")"
)


class WriteRefusedError(RuntimeError):
    """A file of model_dir could not be written (disk full, read-only, ...).

    Attributes:
        path: the file or directory being written.
        reason: the operating system's error, e.g. "No space left on device".
    """

    # sysexits.h's EX_IOERR: neither a wrong setting (2) nor a failed training (1).
    EXIT_STATUS = 74

    def __init__(self, path: str, reason: str, model_dir: str):
        self.path, self.reason = path, reason
        try:
            latest = tf.train.latest_checkpoint(model_dir)
        except (tf.errors.OpError, OSError, ValueError):
            latest = None
        resume = f"resumes from {latest}" if latest else "starts from step 0: no checkpoint yet"
        super().__init__(
            f"cannot write {path}: {reason}. Free space on its disk or make "
            f"--model_dir={model_dir} writable, then re-run the same command (it {resume}), "
            "or give another --model_dir."
        )


def _inside(path: str, directory: str) -> bool:
    # The file's own name unresolved: it may be a link to somewhere else (a temporary name
    # linked to a fuller disk is still a file of model_dir).
    path = os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))
    directory = os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def refused_write(error: BaseException, model_dir: str) -> WriteRefusedError | None:
    """The WriteRefusedError `error` is, when it is a refused write of a path inside
    `model_dir` (or of `model_dir` itself); None otherwise.

    Only paths inside model_dir count: a permission error on an input file is not a
    write into the run's outputs.
    """
    if isinstance(error, OSError) and error.errno in _ERRNOS and error.filename:
        path, reason = os.fsdecode(error.filename), os.strerror(error.errno)
    elif isinstance(error, tf.errors.OpError):
        found = _TF_FAILURE.search(error.message or "")
        if found is None:
            return None
        path, reason = found.group(1), found.group(2)
    else:
        return None
    if "://" not in model_dir and not _inside(path, model_dir):
        return None
    return WriteRefusedError(path, reason, model_dir)


@contextlib.contextmanager
def writes_named(model_dir: str):
    """Turns a refused write into model_dir inside the block into a WriteRefusedError."""
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        refused = refused_write(error, model_dir)
        if refused is None:
            raise
        raise refused from None
