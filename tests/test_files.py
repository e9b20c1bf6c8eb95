"""Image file checks: bad files are named, and stop the run or are skipped and logged."""

import pytest

from simclr_tf2.data.files import check_image_file, list_images
from simclr_tf2.data.pipeline import build_dataset
from simclr_tf2.data.sources import DataError, load_source
from tests.images import rgb, save


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
