"""Data sources on small real files written by the test, and on ../shared/data."""

import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from simclr_tf2.data.pipeline import build_dataset
from simclr_tf2.data.sources import DataError, balanced_subset, load_source

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")


def save(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def rgb(h=40, w=30, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "images"
    save(str(root / "cat" / "a.png"), rgb(seed=1))
    save(str(root / "cat" / "b.jpg"), rgb(seed=2), "JPEG")
    save(str(root / "cat" / "nested" / "deeper" / "c.JPEG"), rgb(seed=3), "JPEG")
    save(str(root / "dog" / "gray.png"), rgb(seed=4)[..., 0])  # grayscale
    save(str(root / "dog" / "rgba.png"), np.dstack([rgb(seed=5), np.full((40, 30), 128, np.uint8)]))
    save(str(root / "dog" / "deep.png"), (rgb(seed=6)[..., 0].astype(np.uint16) * 257))  # 16-bit
    save(str(root / "dog" / "x.bmp"), rgb(seed=7), "BMP")
    save(str(root / "dog" / "y.gif"), rgb(seed=8), "GIF")
    (root / "dog" / "notes.txt").write_text("not an image")
    return str(root)


def test_image_folder_with_classes(class_folder):
    source = load_source(class_folder)
    assert source.num_examples == 8 and source.num_classes == 2
    labels = [int(ex["label"]) for ex in source.dataset()]
    assert labels == [0, 0, 0, 1, 1, 1, 1, 1]
    # Every format and colour layout decodes to RGB in [0, 1].
    views = list(build_dataset(source, 8, 16, "eval"))[0][0].numpy()
    assert views.shape == (8, 16, 16, 3) and 0 <= views.min() and views.max() <= 1
    pretrain = next(iter(build_dataset(source, 4, 16, "pretrain")))[0]
    assert pretrain.shape == (4, 16, 16, 6)


def test_sixteen_bit_and_gray_decode_to_the_right_values(class_folder):
    source = load_source(class_folder)
    by_path = {os.path.basename(ex["path"].numpy().decode()): ex for ex in source.dataset()}
    deep = tf.io.decode_image(by_path["deep.png"]["encoded"], channels=3, dtype=tf.uint8)
    np.testing.assert_array_equal(deep[..., 0], rgb(seed=6)[..., 0])
    np.testing.assert_array_equal(deep[..., 0], deep[..., 2])


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        save(str(tmp_path / f"{i}.png"), rgb(seed=i))
    source = load_source(str(tmp_path))
    assert source.num_classes is None and source.num_examples == 3
    assert {int(ex["label"]) for ex in source.dataset()} == {-1}


def test_folder_slicing(tmp_path):
    for i in range(10):
        save(str(tmp_path / f"{i:02d}.png"), rgb(8, 8, seed=i))
    assert load_source(str(tmp_path), "train[:30%]").num_examples == 3
    assert load_source(str(tmp_path), "train[2:5]").num_examples == 3
    with pytest.raises(DataError, match="selects no examples"):
        load_source(str(tmp_path), "train[5:5]")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "no images found"),
        (lambda root: save(str(root / "a.png"), rgb()) or os.makedirs(root / "cls"), "both images"),
    ],
)
def test_folder_errors(tmp_path, make, message):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=message):
        load_source(str(root))


def test_missing_paths():
    with pytest.raises(DataError, match="--dataset=/no/such/folder: no such directory"):
        load_source("/no/such/folder")
    with pytest.raises(DataError, match="--dataset=missing.npz: no such file"):
        load_source("missing.npz")


def test_npz_source(tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, images=np.zeros((5, 8, 8, 3), np.uint8), labels=np.array([0, 1, 2, 1, 0]))
    source = load_source(path)
    assert (source.num_examples, source.num_classes, source.image_shape) == (5, 3, (8, 8, 3))
    unlabelled = str(tmp_path / "u.npz")
    np.savez(unlabelled, images=np.zeros((4, 8, 8, 3), np.uint8))
    assert load_source(unlabelled).num_classes is None


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(images=np.zeros((2, 8, 8, 3), np.float32)), "must be uint8"),
        (dict(images=np.zeros((2, 8, 8), np.uint8)), r"shape \(2, 8, 8\)"),
        (dict(pixels=np.zeros((2, 8, 8, 3), np.uint8)), "has no 'images'"),
        (dict(images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(3, int)), "'labels' must"),
        (dict(images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0.5, 1])), "'labels' must"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    path = str(tmp_path / "bad.npz")
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_source(path)


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_source(str(path))


@pytest.mark.skipif(
    not os.path.isdir(SHARED), reason="../shared/data/cifar10 is not beside the clone"
)
def test_cifar10_npz_from_shared_data():
    test = load_source(os.path.join(SHARED, "test.npz"))
    assert (test.num_examples, test.num_classes, test.image_shape) == (1000, 10, (32, 32, 3))
    labels = np.array([int(ex["label"]) for ex in test.dataset()])
    # Class counts from the data's README.
    assert list(np.bincount(labels)) == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
    train = load_source(os.path.join(SHARED, "train.npz"), "train[:10%]")
    assert train.num_examples == 5000
    first = next(iter(train.dataset()))
    assert int(first["label"]) == 6  # the official first training label (frog)


def test_embedded_default():
    train, test = load_source("digits", "train"), load_source("digits", "test")
    assert (train.num_examples, test.num_examples) == (1437, 360)
    assert train.num_classes == 10 and train.image_shape == (32, 32, 3)
    image = next(iter(train.dataset()))["image"].numpy()
    assert image.dtype == np.uint8 and image.max() > 200
    with pytest.raises(DataError, match=r"^--train_split=valid: no such split in --dataset=digits"):
        load_source("digits", "valid")


def test_tfds_offline_fails_fast_with_instructions(tmp_path):
    start = time.time()
    with pytest.raises(DataError, match="tfds build cifar10 --data_dir"):
        load_source("cifar10", data_dir=str(tmp_path))
    assert time.time() - start < 30
    with pytest.raises(DataError, match="not the embedded default"):
        load_source("no_such_dataset_name", data_dir=str(tmp_path))
    # A TFDS name with a config is a TFDS name, not a folder.
    with pytest.raises(DataError, match="tfds build imagenet2012_subset/10pct --data_dir"):
        load_source("imagenet2012_subset/10pct", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="no such directory"):
        load_source(str(tmp_path / "photos"))


def test_tfds_not_prepared_is_decided_from_disk_even_when_metadata_is_fetched(
    tmp_path, monkeypatch
):
    """On a networked host TFDS fetches a dataset's metadata (splits and all) without its
    data; simulated here by a DatasetInfo whose splits are known."""

    class FetchedSplit:
        num_examples = 50_000

    monkeypatch.setattr(
        tfds.core.DatasetInfo, "splits", property(lambda self: {"train": FetchedSplit()})
    )
    assert tfds.builder("cifar10", data_dir=str(tmp_path)).info.splits  # as if fetched
    with pytest.raises(DataError, match="tfds build cifar10 --data_dir"):
        load_source("cifar10", data_dir=str(tmp_path))


def test_bad_split_syntax():
    with pytest.raises(DataError, match=r"^--train_split=train\[::2\]: not a split"):
        load_source("digits", "train[::2]")


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


def test_one_class_or_no_labels_for_linear_eval(tmp_path):
    save(str(tmp_path / "only" / "a.png"), rgb())
    with pytest.raises(DataError, match="has 1 class, and linear evaluation needs at least 2"):
        load_source(str(tmp_path)).require_classes("linear evaluation")
    flat = tmp_path / "flat"
    save(str(flat / "a.png"), rgb())
    with pytest.raises(DataError, match="has no labels, and fine-tuning needs them"):
        load_source(str(flat)).require_classes("fine-tuning")
    load_source("digits").require_classes("linear evaluation")  # 10 classes: fine


class TinyTestImages(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset built locally, so the TFDS path is tested offline."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(n)
        for i in range(n):
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            yield i, {"image": image, "label": i % 3, "file_name": f"img_{i}.png"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyTestImages(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_source_with_slicing(tfds_dir):
    source = load_source("tiny_test_images", "train", data_dir=tfds_dir)
    assert (source.num_examples, source.num_classes) == (12, 3)
    assert load_source("tiny_test_images", "train[:25%]", data_dir=tfds_dir).num_examples == 3
    assert load_source("tiny_test_images", "test", data_dir=tfds_dir).num_examples == 6
    views, labels = next(iter(build_dataset(source, 12, 8, "eval")))
    assert views.shape == (12, 8, 8, 3) and sorted(labels.numpy()) == sorted(
        [i % 3 for i in range(12)]
    )
    with pytest.raises(DataError, match=r"--train_split=validation: no such split in TFDS dataset"):
        load_source("tiny_test_images", "validation", data_dir=tfds_dir)


def test_label_subset_tfds(tfds_dir, tmp_path):
    subset = tmp_path / "subset.txt"
    subset.write_text("# two of twelve\nimg_4.png\nimg_7.png\n\n")
    source = load_source("tiny_test_images", data_dir=tfds_dir, label_subset=str(subset))
    assert source.num_examples == 2
    assert sorted(int(ex["label"]) for ex in source.dataset()) == [1, 1]


def test_label_subset_folder_and_npz(class_folder, tmp_path):
    subset = tmp_path / "subset.txt"
    subset.write_text("b.jpg\nx.bmp\n")
    source = load_source(class_folder, label_subset=str(subset))
    assert source.num_examples == 2
    assert [int(ex["label"]) for ex in source.dataset()] == [0, 1]
    subset.write_text("b.jpg\nmissing.png\n")
    with pytest.raises(DataError, match="1 of 2 ids are not in"):
        load_source(class_folder, label_subset=str(subset))
    rows = tmp_path / "rows.txt"
    rows.write_text("3\n0\n")
    digits = load_source("digits", "test", label_subset=str(rows))
    full = [int(ex["label"]) for ex in load_source("digits", "test").dataset().take(4)]
    assert [int(ex["label"]) for ex in digits.dataset()] == [full[3], full[0]]
    with pytest.raises(DataError, match="cannot be read"):
        load_source("digits", label_subset=str(tmp_path / "none.txt"))


def test_label_fraction_subsets_are_balanced_sized_and_seeded():
    # Imbalanced labels: 500 of class 0, 300 of class 1, 200 of class 2.
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    rows = balanced_subset(labels, 0.1, seed=7)
    assert len(rows) == 99  # 10% of 1000 over 3 classes: 33 each
    assert np.bincount(labels[rows]).tolist() == [33, 33, 33]
    assert len(set(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, balanced_subset(labels, 0.1, seed=7))
    assert not np.array_equal(rows, balanced_subset(labels, 0.1, seed=8))
    # A class smaller than its share gives all it has; 1% still keeps one per class.
    assert np.bincount(labels[balanced_subset(labels, 0.9, 0)]).tolist() == [300, 300, 200]
    assert np.bincount(labels[balanced_subset(labels, 0.001, 0)]).tolist() == [1, 1, 1]
    with pytest.raises(DataError, match=r"--label_fraction=1.5: must be in \(0, 1\]"):
        balanced_subset(labels, 1.5)


def test_label_fraction_on_npz_folder_and_digits(tmp_path):
    path = str(tmp_path / "data.npz")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    np.savez(path, images=np.zeros((400, 8, 8, 3), np.uint8), labels=labels)
    source = load_source(path, label_fraction=0.1, seed=3)
    assert source.num_examples == 40
    seen = np.concatenate([ex["label"].numpy()[None] for ex in source.dataset()])
    assert np.bincount(seen).tolist() == [10, 10, 10, 10]
    again = load_source(path, label_fraction=0.1, seed=3)
    assert [int(e["label"]) for e in again.dataset()] == seen.tolist()

    for label in ("a", "b"):
        for i in range(10):
            save(str(tmp_path / "folder" / label / f"{label}{i}.png"), rgb(seed=i))
    folder = load_source(str(tmp_path / "folder"), label_fraction=0.2, seed=0)
    assert folder.num_examples == 4
    assert sorted(int(e["label"]) for e in folder.dataset()) == [0, 0, 1, 1]

    assert load_source("digits", label_fraction=0.1).num_examples == 140  # 1437 train, 10 classes
    with pytest.raises(DataError, match="--label_fraction: not for TFDS datasets"):
        load_source("cifar10", data_dir=str(tmp_path), label_fraction=0.1)
