"""Image file checks: bad files are named, and stop the run or are skipped and logged."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data.files import check_image_file, decode_failure, list_images
from simclr_tf2.data.pipeline import build_dataset
from simclr_tf2.data.sources import DataError, load_source
from tests.images import rgb, save, undecodable_jpeg, undecodable_png


@pytest.fixture
def folder_with_bad_files(tmp_path):
    root = tmp_path / "mixed"
    save(str(root / "a" / "good.png"), rgb(seed=1))
    save(str(root / "a" / "good.jpg"), rgb(seed=2), "JPEG")
    save(str(root / "b" / "good.png"), rgb(seed=3))
    jpeg = (root / "a" / "good.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "b" / "text.png").write_text("this is not an image")
    (root / "b" / "empty.gif").write_bytes(b"")
    # A valid header and end marker around garbage: only decoding finds it.
    (root / "b" / "garbage.jpg").write_bytes(jpeg[:20] + b"\x00" * 500 + jpeg[-2:])
    return str(root)


def test_bad_files_stop_the_run_naming_them(folder_with_bad_files):
    with pytest.raises(DataError) as error:
        load_source(folder_with_bad_files)
    message = str(error.value)
    assert message.startswith("3 bad image file(s):")
    for name, reason in [
        ("empty.gif", "empty file"),
        ("text.png", "not a JPEG, PNG, GIF or BMP file"),
        ("truncated.jpg", "truncated JPEG"),
    ]:
        assert f"{name}: {reason}" in message
    assert "--skip_bad_images" in message


def test_skip_bad_images_skips_and_logs_them(folder_with_bad_files, caplog):
    source = load_source(folder_with_bad_files, skip_bad_images=True)
    assert source.num_examples == 4  # 3 good + garbage.jpg, which has valid markers
    assert "Skipped 3 bad image files of 7" in caplog.text
    assert "truncated.jpg: truncated JPEG" in caplog.text
    full = load_source(folder_with_bad_files, skip_bad_images=True, verify_images="decode")
    assert full.num_examples == 3
    assert "garbage.jpg: cannot be decoded" in caplog.text
    # What is left decodes.
    views = list(build_dataset(full, 8, 8, "eval"))[0][0]
    assert views.shape == (3, 8, 8, 3)


def test_every_image_bad(tmp_path):
    (tmp_path / "x.jpg").write_text("nope")
    with pytest.raises(DataError, match="every image file is bad"):
        load_source(str(tmp_path), skip_bad_images=True)


def test_check_image_file_and_list_images(folder_with_bad_files, tmp_path):
    root = folder_with_bad_files
    assert check_image_file(f"{root}/a/good.jpg") is None
    assert check_image_file(f"{root}/b/empty.gif") == "empty file"
    assert check_image_file(f"{root}/b/truncated.jpg").startswith("truncated JPEG")
    assert check_image_file(f"{root}/b/garbage.jpg") is None  # valid markers
    assert check_image_file(f"{root}/b/garbage.jpg", decode=True).startswith("cannot be decoded")
    assert check_image_file(str(tmp_path / "none.png")).startswith("cannot be read")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    (other / ".hidden").write_text("x")
    files, others = list_images(str(other))
    assert files == [] and others == 1  # hidden files are not counted
    files, others = list_images(root)
    assert [f[len(root) + 1 :] for f in files[:3]] == ["a/good.jpg", "a/good.png", "b/empty.gif"]


# ------------------------------------------------ files that fail only at decode time


@pytest.fixture
def folder_with_undecodable_files(tmp_path):
    """One image per class, so a label names its file; classes 1 and 3 also hold a
    file that passes the header check and fails to decode."""
    root = tmp_path / "undecodable"
    for label in range(5):
        save(str(root / f"c{label}" / "good.png"), rgb(seed=label))
    undecodable_jpeg(str(root / "c1" / "bad.jpg"))
    undecodable_png(str(root / "c3" / "bad.png"))
    return str(root)


def test_undecodable_files_pass_the_header_check_and_fail_to_decode(
    folder_with_undecodable_files,
):
    for name in ("c1/bad.jpg", "c3/bad.png"):
        path = os.path.join(folder_with_undecodable_files, name)
        assert check_image_file(path) is None
        assert check_image_file(path, decode=True).startswith("cannot be decoded (")
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(open(path, "rb").read(), channels=3)


@pytest.mark.parametrize("bad", ["c1/bad.jpg", "c3/bad.png"])
@pytest.mark.parametrize("mode", ["pretrain", "eval"])
def test_an_undecodable_file_stops_the_pipeline_naming_it(folder_with_undecodable_files, bad, mode):
    root = folder_with_undecodable_files
    other = {"c1/bad.jpg": "c3/bad.png", "c3/bad.png": "c1/bad.jpg"}[bad]
    os.remove(os.path.join(root, other))
    source = load_source(root)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(build_dataset(source, 2, 16, mode).take(10))
    error = decode_failure(raised.value)
    assert isinstance(error, DataError)
    message = str(error)
    assert message.startswith(
        f"1 bad image file(s) at decode time: {os.path.join(root, bad)}: cannot be decoded ("
    )
    assert "\n" not in message and "--skip_bad_images" in message


def test_skip_bad_images_drops_exactly_the_undecodable_files(folder_with_undecodable_files, caplog):
    source = load_source(folder_with_undecodable_files, skip_bad_images=True)
    assert source.num_examples == 7  # both pass the header check
    # Eval: one pass in order, every good file once.
    labels = [int(y) for _, ys in build_dataset(source, 3, 16, "eval") for y in ys]
    assert labels == [0, 1, 2, 3, 4]
    # Training: three epochs of the 5 good files hold each one three times.
    batches = build_dataset(source, 5, 16, "pretrain", shuffle_buffer=7).take(3)
    counts = collections.Counter(int(y) for _, ys in batches for y in ys)
    assert counts == {label: 3 for label in range(5)}
    # Each file is named once (with its reason) however often it comes round, and counted.
    for bad in ("c1/bad.jpg", "c3/bad.png"):
        path = os.path.join(folder_with_undecodable_files, bad)
        lines = [r.getMessage() for r in caplog.records if path in r.getMessage()]
        assert len(lines) == 1, lines  # once per source, however many datasets it makes
        assert lines[0].startswith(f"Skipping bad image {path}: cannot be decoded (")
    assert "at decode time; 2 file(s) skipped so far" in caplog.text


def test_guarded_views_are_the_views_of_the_library(tmp_path):
    """The decode guard changes nothing for a file that decodes: same seed, same views."""
    from simclr_tf2.data.pipeline import view_function
    from simclr_tf2.data.views import simclr_pair, simclr_pair_jpeg

    save(str(tmp_path / "a.jpg"), rgb(48, 40, seed=5), "JPEG")
    save(str(tmp_path / "b.png"), rgb(48, 40, seed=6))
    seed = tf.constant([3, 7], tf.int64)
    for name, direct in [
        ("a.jpg", lambda data: simclr_pair_jpeg(data, seed, 32, blur=False)),
        ("b.png", lambda data: simclr_pair(tf.io.decode_png(data), seed, 32, blur=False)),
    ]:
        data = tf.io.read_file(str(tmp_path / name))
        example = {"encoded": data, "path": tf.constant(name), "label": tf.constant(0, tf.int64)}
        (views, _), ok = view_function("pretrain", 32, 1.0, False, guarded=True)(example, seed)
        assert bool(ok)
        np.testing.assert_array_equal(views.numpy(), direct(data).numpy())
