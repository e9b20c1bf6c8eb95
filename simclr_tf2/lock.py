"""One writer per model_dir: a lock file that names the process holding it.

A training run holds `model_dir/lock.json` from its start to its end, so that a
second run started on the same model_dir (a second terminal, a scheduler
restarting a job that is still alive) stops at once instead of writing into it:

    with ModelDirLock(model_dir):
        ...  # write checkpoints, results, exports

The file is created atomically (a hard link to a complete temporary file, which
NFS also does atomically) and records the holder's pid, host, boot id and
process start time. A lock whose holder is gone is taken over, with a warning:

- on the same host, when the process no longer runs (its pid is free, or now
  belongs to a process started later), or the host has restarted since;
- from another host (a shared filesystem), when the holder has not refreshed the
  file's modification time (its heartbeat, every `heartbeat_s`) for
  `stale_after_s`. This assumes the hosts' clocks roughly agree (NTP).

Only a local (or mounted) path is locked; a URL such as gs://... is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from simclr_tf2.config import ConfigError

LOCK_NAME = "lock.json"


class ModelDirInUseError(ConfigError):
    """Another live process holds the model_dir's lock; the message names it."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name in parentheses may hold spaces: count fields after it.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class ModelDirLock:
    """The lock of `model_dir` for this process (a context manager).

    Args:
        model_dir: the run's directory; created if missing.
        heartbeat_s: how often the holder refreshes the lock's modification time.
        stale_after_s: how long without a heartbeat before another host may take
            the lock over.

    Raises ModelDirInUseError (a ConfigError: one line, exit status 2 from
    run.py) when a live process holds it.
    """

    def __init__(self, model_dir: str, heartbeat_s: float = 30.0, stale_after_s: float = 600.0):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_NAME)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._record = None
        self._stop = threading.Event()
        self._beat = None
        self._made_dir = False  # acquire() created model_dir

    def _read(self, path: str | None = None) -> dict | None:
        try:
            with open(path or self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # Not ours to judge (another program's file?): treat it as held.
            return {}

    def _why_stale(self, holder: dict) -> str | None:
        """Why `holder` no longer holds the lock (None: it may still)."""
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return None
        if holder.get("host") != socket.gethostname():
            try:
                age = time.time() - os.path.getmtime(self.path)
            except FileNotFoundError:
                return "it was released"
            if age > self.stale_after_s:
                return f"no heartbeat from {holder.get('host')} for {age:.0f} s"
            return None
        if holder.get("boot_id") and holder["boot_id"] != _boot_id():
            return "this host has restarted since"
        if not _is_running(pid):
            return f"process {pid} is no longer running"
        start = holder.get("process_start")
        if start and _process_start(pid) not in ("", start):
            return f"process {pid} is no longer running (its pid is another process's now)"
        return None

    def _busy(self, holder: dict) -> ModelDirInUseError:
        if not holder:
            who = f"{self.path} (unreadable)"
        else:
            who = (
                f"process {holder.get('pid')} on {holder.get('host')} "
                f"(since {holder.get('started', '?')})"
            )
        return ModelDirInUseError(
            f"--model_dir={self.model_dir} is in use by {who}: one run writes a model_dir at a "
            f"time. Wait for it to end or stop it, or give another --model_dir (if that process "
            f"is surely gone, delete {self.path})."
        )

    def acquire(self) -> None:
        # A run refused before it writes anything (e.g. the memory check) leaves no
        # empty model_dir behind: release() removes the folder it created if empty.
        self._made_dir = not os.path.isdir(self.model_dir)
        os.makedirs(self.model_dir, exist_ok=True)
        self._record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "token": uuid.uuid4().hex,
        }
        tmp = f"{self.path}.{self._record['token']}"
        with open(tmp, "w") as f:
            json.dump(self._record, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            for _ in range(5):  # a few rounds of racing other starters
                try:
                    self._create(tmp)
                    break
                except FileExistsError:
                    pass
                holder = self._read()
                if holder is None:  # released meanwhile
                    continue
                reason = self._why_stale(holder)
                if reason is None:
                    raise self._busy(holder)
                if self._take_over(holder):
                    logging.warning(
                        "Took over the lock %s from process %s on %s (since %s): %s.",
                        self.path,
                        holder.get("pid"),
                        holder.get("host"),
                        holder.get("started", "?"),
                        reason,
                    )
            else:
                raise self._busy(self._read() or {})
        finally:
            with contextlib.suppress(FileNotFoundError):  # never written (read-only model_dir)
                os.remove(tmp)
        self._beat = threading.Thread(target=self._heartbeat, name="model_dir lock", daemon=True)
        self._beat.start()

    def _create(self, tmp: str) -> None:
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:
            # No hard links on this filesystem (some FUSE or SMB mounts): an exclusive create.
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(self._record, f, indent=2, sort_keys=True)

    def _take_over(self, holder: dict) -> bool:
        """Moves the stale lock aside; False if another process replaced it meanwhile."""
        aside = f"{self.path}.stale-{self._record['token']}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = self._read(aside)
        if moved != holder:
            # Another starter took it over between our read and the rename: put it back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.remove(aside)
            return False
        os.remove(aside)
        return True

    def held(self) -> bool:
        """Whether the lock file still holds this process's record."""
        return self._record is not None and self._read() == self._record

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.held():
                logging.error(
                    "The lock %s is no longer this run's (another run took it over?); "
                    "two runs may be writing %s.",
                    self.path,
                    self.model_dir,
                )
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.held():
            try:
                os.remove(self.path)
            except OSError as error:
                # A model_dir that became read-only: the error that stopped the run is the one
                # to report; the next run takes this lock over (its process is gone by then).
                logging.warning("Could not remove the lock %s: %s.", self.path, error.strerror)
                self._record = None
                return
            if self._made_dir:
                with contextlib.suppress(OSError):  # not empty: the run wrote into it
                    os.rmdir(self.model_dir)
        self._record = None

    def __enter__(self) -> ModelDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
