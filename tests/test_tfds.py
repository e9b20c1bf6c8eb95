"""TFDS sources: prepared datasets only (offline), slicing, label subsets."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from simclr_tf2.data.pipeline import build_dataset
from simclr_tf2.data.sources import DataError, load_source


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
