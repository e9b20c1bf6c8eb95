"""Embeddings of a source's images (order, ids, labels, preprocessing) and the
cosine-similarity search, against NumPy."""

import numpy as np
import tensorflow as tf
from images import rgb, save

from simclr_tf2.data.pipeline import decode_image
from simclr_tf2.data.sources import array_source, folder_source
from simclr_tf2.data.views import eval_view
from simclr_tf2.embeddings import embed_source, most_similar, prepare_file


def encoder(images):
    """A stand-in encoder whose outputs tell the prepared images apart."""
    return {
        "final_avg_pool": tf.reshape(images[:, ::4, ::4, :], [tf.shape(images)[0], -1]),
        "proj_head_output": tf.reduce_mean(images, [1, 2]),
    }


def test_every_image_once_in_order_with_index_labels_and_eval_preprocessing():
    rng = np.random.default_rng(0)
    images = (rng.random((11, 48, 40, 3)) * 255).astype(np.uint8)
    labels = np.arange(11, dtype=np.int64) % 3
    source = array_source("arrays", "train[2:]", images, labels, 3, {"train": np.arange(11)})
    done = []
    # 9 images in batches of 4: the last batch is kept.
    got = embed_source(encoder, source, 36, batch_size=4, projections=True, progress=done.append)
    assert done == [4, 8, 9]
    np.testing.assert_array_equal(got.index, np.arange(9))
    np.testing.assert_array_equal(got.labels, labels[2:])
    assert got.paths is None
    # Above 32 px: the centre crop and resize of evaluation, image by image.
    expected = encoder(tf.stack([eval_view(image, 36) for image in images[2:]]))
    np.testing.assert_array_equal(got.features, expected["final_avg_pool"])
    np.testing.assert_array_equal(got.projections, expected["proj_head_output"])
    assert got.features.dtype == np.float32 and got.features.shape == (9, 9 * 9 * 3)
    assert embed_source(encoder, source, 36).projections is None


def test_a_flat_folder_gives_paths_and_no_labels(tmp_path):
    for name, seed in (("b.png", 1), ("a.jpg", 2), ("c.png", 3)):
        save(str(tmp_path / name), rgb(30, 20, seed))
    got = embed_source(encoder, folder_source(str(tmp_path)), 16, batch_size=2)
    assert list(got.paths) == [str(tmp_path / n) for n in ("a.jpg", "b.png", "c.png")]
    assert got.labels is None
    # A query file is prepared as the set's images are: identical features.
    query = encoder(prepare_file(str(tmp_path / "b.png"), 16)[None])["final_avg_pool"]
    np.testing.assert_array_equal(query[0], got.features[1])
    pixels = decode_image(tf.io.read_file(str(tmp_path / "b.png")))
    np.testing.assert_array_equal(prepare_file(str(tmp_path / "b.png"), 16), eval_view(pixels, 16))


def test_most_similar_is_numpys_cosine_ranking():
    rng = np.random.default_rng(1)
    features, query = rng.normal(size=(50, 8)), rng.normal(size=8)
    rows, similarity = most_similar(features, query, 5)
    cosine = features @ query / np.linalg.norm(features, axis=1) / np.linalg.norm(query)
    np.testing.assert_array_equal(rows, np.argsort(-cosine)[:5])
    # float32 products of unit vectors in 8 dimensions.
    np.testing.assert_allclose(similarity, np.sort(cosine)[::-1][:5], atol=1e-6)
    assert len(most_similar(features[:3], query, 5)[0]) == 3
