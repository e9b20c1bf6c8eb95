"""Image files of a folder: which files are images, and checking each one before
a run (a bad file is named, and stops the run or is skipped as the user chose);
`DecodeFailures` does the same for a file that fails only when the pipeline
decodes it."""

from __future__ import annotations

import os
import re
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import tensorflow as tf
from absl import logging

from simclr_tf2.config import VERIFY_MODES
from simclr_tf2.data.source import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def list_images(root: str) -> tuple[list[str], int]:
    """The image files under `root` (by extension, sorted, nested folders
    included) and the number of other files (hidden files not counted)."""
    files, skipped = [], 0
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(directory, name))
            elif not name.startswith("."):
                skipped += 1
    return files, skipped


def check_image_file(path: str, decode: bool = False) -> str | None:
    """Why `path` is not a usable image, or None if it is.

    The default check reads only the first and last bytes: the signature of a
    JPEG, PNG, GIF or BMP and its end marker (so truncated files are caught).
    With `decode`, the file is also fully decoded.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if head.startswith(b"\xff\xd8\xff"):
        if b"\xff\xd9" not in tail:
            return "truncated JPEG (no end-of-image marker)"
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in tail:
            return "truncated PNG (no IEND chunk)"
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        if b"\x3b" not in tail[-16:]:
            return "truncated GIF (no trailer)"
    elif head.startswith(b"BM") and len(head) >= 6:
        if struct.unpack("<I", head[2:6])[0] > size:
            return "truncated BMP (shorter than its header says)"
    else:
        return f"not a JPEG, PNG, GIF or BMP file (starts with {head[:8]!r})"
    if decode:
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            return f"cannot be decoded ({_op_problem(error)})"
    return None


def _op_problem(error: tf.errors.OpError) -> str:
    """What a decode op said, without TensorFlow's node and op names."""
    text = re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", error.message.splitlines()[0])
    return text.strip() or type(error).__name__


def _bad_files_error(bad: list[tuple[str, str]], when: str = "", hint: str = "") -> DataError:
    listed = "; ".join(f"{f}: {p}" for f, p in bad[:3])
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return DataError(
        f"{len(bad)} bad image file(s){when}: {listed}{more}. Fix or remove them, or pass "
        f"--skip_bad_images to skip them{hint}."
    )


def verify_files(files: list[str], verify: str, skip_bad_images: bool) -> list[bool]:
    """Checks every file (`check_image_file`; `verify="decode"` also decodes);
    stops on a bad one unless `skip_bad_images`. Returns which files are good."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify_images={verify!r} is not one of {VERIFY_MODES}.")
    start, last_log = time.time(), time.time()
    problems = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        for i, problem in enumerate(
            pool.map(lambda f: check_image_file(f, verify == "decode"), files)
        ):
            problems.append(problem)
            if time.time() - last_log > 10:
                last_log = time.time()
                logging.info("Checked %d of %d image files...", i + 1, len(files))
    bad = [(f, p) for f, p in zip(files, problems, strict=True) if p]
    logging.info(
        "Checked %d image files (%s) in %.1fs: %d bad.",
        len(files),
        verify,
        time.time() - start,
        len(bad),
    )
    if bad and not skip_bad_images:
        raise _bad_files_error(bad)
    for f, p in bad:
        logging.warning("Skipping bad image %s: %s", f, p)
    if bad:
        logging.warning("Skipped %d bad image files of %d.", len(bad), len(files))
    return [p is None for p in problems]


# How a DataError raised in a tf.py_function reaches the caller: inside the
# message of a TensorFlow error, as the exception's name and text.
_RAISED = re.compile(r"\bDataError: (.+)")


class DecodeFailures:
    """Files that passed the check before the run but fail when the input
    pipeline decodes them.

    `report(path)` is called (through `tf.py_function`) for each example whose
    file could not be decoded. It raises `DataError` naming the file, or with
    `skip` logs the file once, counts it and returns False: the pipeline then
    drops that example and nothing else.
    """

    def __init__(self, skip: bool):
        self.skip = skip
        self.paths: set[str] = set()
        self._lock = threading.Lock()

    def report(self, path) -> bool:
        path = path.numpy().decode() if hasattr(path, "numpy") else str(path)
        reason = check_image_file(path, decode=True) or "cannot be decoded"
        if not self.skip:
            raise _bad_files_error(
                [(path, reason)],
                when=" at decode time",
                hint="; --verify_images=decode finds every such file before training",
            )
        with self._lock:
            if path not in self.paths:
                self.paths.add(path)
                logging.warning(
                    "Skipping bad image %s: %s (at decode time; %d file(s) skipped so far).",
                    path,
                    reason,
                    len(self.paths),
                )
        return False


def decode_failure(error: tf.errors.OpError) -> DataError | None:
    """The DataError `DecodeFailures.report` raised inside the input pipeline,
    when `error` (from `fit` / `evaluate` / iterating the dataset) carries one."""
    found = _RAISED.search(error.message)
    return DataError(found.group(1).strip()) if found else None
