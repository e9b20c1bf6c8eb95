"""simclr_tf2/writes.py: which errors are refused writes into model_dir, and what their one
line says; write_json on a really full device (/dev/full gives ENOSPC)."""

import errno
import os

import pytest
import tensorflow as tf

from simclr_tf2.checkpoints import write_json
from simclr_tf2.writes import WriteRefusedError, refused_write, writes_named


def test_write_json_on_a_full_disk_keeps_the_previous_file_whole(tmp_path):
    path = str(tmp_path / "result.json")
    write_json(path, {"global_step": 10})
    before = open(path).read()
    # The temporary file lands on a device that is always full.
    os.symlink("/dev/full", path + ".tmp")
    with pytest.raises(tf.errors.OpError) as raised:
        write_json(path, {"global_step": 20})
    refused = refused_write(raised.value, str(tmp_path))
    assert isinstance(refused, WriteRefusedError)
    assert (refused.path, refused.reason) == (path + ".tmp", os.strerror(errno.ENOSPC))
    assert str(refused).startswith(f"cannot write {path}.tmp: No space left on device. ")
    assert "starts from step 0" in str(refused) and "\n" not in str(refused)
    assert open(path).read() == before
    assert os.listdir(tmp_path) == ["result.json"]  # the failed temporary file is removed


def test_a_tensorflow_error_names_the_file_without_its_temporary_suffix(tmp_path):
    target = f"{tmp_path}/ckpt-20_temp/part-00000-of-00001.data-00000-of-00001"
    error = tf.errors.OutOfRangeError(
        None,
        None,
        f"{{{{function_node __wrapped__SaveV2}}}} {target}.tempstate69572; File too large"
        " [Op:SaveV2]",
    )
    refused = refused_write(error, str(tmp_path))
    assert (refused.path, refused.reason) == (target, "File too large")


def test_only_refused_writes_inside_model_dir_count(tmp_path):
    model_dir = str(tmp_path / "model")
    inside = OSError(errno.EACCES, "Permission denied", os.path.join(model_dir, "lock.json"))
    assert refused_write(inside, model_dir).path == os.path.join(model_dir, "lock.json")
    # An input file the run may not read, a missing file, another kind of error: not ours.
    assert (
        refused_write(OSError(errno.EACCES, "Permission denied", "/data/x.png"), model_dir) is None
    )
    missing = OSError(errno.ENOENT, "No such file", os.path.join(model_dir, "x"))
    assert refused_write(missing, model_dir) is None
    assert refused_write(ValueError("No space left on device"), model_dir) is None
    with pytest.raises(FileNotFoundError), writes_named(model_dir):
        raise FileNotFoundError(errno.ENOENT, "No such file", os.path.join(model_dir, "x"))
    with pytest.raises(WriteRefusedError, match="^cannot write .*lock.json: Permission denied"):
        with writes_named(model_dir):
            raise inside
