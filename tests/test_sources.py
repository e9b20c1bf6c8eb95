"""Data sources (folders, .npz files, the embedded default) on small real files written
by the test, and on ../shared/data."""

import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data.pipeline import build_dataset
from simclr_tf2.data.sources import DataError, load_source
from tests.images import rgb, save

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10")


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
    first = next(iter(load_source(os.path.join(SHARED, "train.npz")).dataset()))
    assert int(first["label"]) == 6  # the official first training label (frog)
    # A slice is class-stratified: 10% of each class's 5000.
    train = load_source(os.path.join(SHARED, "train.npz"), "train[:10%]")
    labels = next(iter(train.dataset().batch(5000)))["label"].numpy()
    assert train.num_examples == 5000 and np.bincount(labels).tolist() == [500] * 10


def test_embedded_default():
    train, test = load_source("digits", "train"), load_source("digits", "test")
    assert (train.num_examples, test.num_examples) == (1437, 360)
    assert train.num_classes == 10 and train.image_shape == (32, 32, 3)
    image = next(iter(train.dataset()))["image"].numpy()
    assert image.dtype == np.uint8 and image.max() > 200
    with pytest.raises(DataError, match=r"^--train_split=valid: no such split in --dataset=digits"):
        load_source("digits", "valid")


def test_one_class_or_no_labels_for_linear_eval(tmp_path):
    save(str(tmp_path / "only" / "a.png"), rgb())
    with pytest.raises(DataError, match="has 1 class, and linear evaluation needs at least 2"):
        load_source(str(tmp_path)).require_classes("linear evaluation")
    flat = tmp_path / "flat"
    save(str(flat / "a.png"), rgb())
    with pytest.raises(DataError, match="has no labels, and fine-tuning needs them"):
        load_source(str(flat)).require_classes("fine-tuning")
    load_source("digits").require_classes("linear evaluation")  # 10 classes: fine


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
