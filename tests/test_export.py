"""Exports under concurrency: a trainer and an --mode=eval watcher export the same step."""

import os

from simclr_tf2.export import export_step, is_saved_model
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel


def test_an_export_does_not_touch_another_writers_work_in_progress(tmp_path):
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3)
    model.build((None, 8, 8, 3))
    root = tmp_path / "saved_model"
    # Another process is writing step 30 right now (its temporary directory; the name
    # the exporter used to share with every writer of that step).
    busy = root / "30.tmp" / "variables"
    busy.mkdir(parents=True)
    (busy / "part").write_text("being written")
    path = export_step(model, str(tmp_path), 30, keep=1)
    assert path == str(root / "30") and is_saved_model(path)
    assert (busy / "part").read_text() == "being written"
    # Our own temporary directory is gone; the export stands beside the other's.
    assert sorted(os.listdir(root)) == ["30", "30.tmp"]
    # Exporting the same step again (an eval watcher after the trainer) replaces it whole.
    assert is_saved_model(export_step(model, str(tmp_path), 30, keep=1))


def test_serving_signatures_prepare_images_as_the_library_does(tmp_path):
    import numpy as np
    import tensorflow as tf
    from images import rgb

    from simclr_tf2.data.pipeline import decode_image
    from simclr_tf2.data.views import eval_view
    from simclr_tf2.export import export_saved_model

    # Above 32 px, so the evaluation view crops before it resizes.
    size = 40
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True))
    model.build((None, size, size, 3))
    loaded = tf.saved_model.load(export_saved_model(model, str(tmp_path / "export"), size))
    assert int(loaded.image_size.numpy()) == size
    assert {"serving_default", "serving_bytes", "serving_uint8"} <= set(loaded.signatures)
    # Two images of other sizes and aspects, a JPEG and a PNG, in one batch.
    encoded = [tf.io.encode_jpeg(rgb(57, 45, seed=1)), tf.io.encode_png(rgb(36, 70, seed=2))]
    # The same bytes decoded by the library (no second JPEG decoder to differ from).
    pixels = [decode_image(data) for data in encoded]
    expected = loaded.signatures["serving_default"](
        images=tf.stack([eval_view(p, size) for p in pixels])
    )
    got = loaded.signatures["serving_bytes"](image_bytes=tf.stack(encoded))
    assert set(got) == set(expected)
    # The same ops on the same pixels, traced into another graph: float32 round-off at most.
    for key in ("final_avg_pool", "proj_head_output"):
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-5, err_msg=key)
    # uint8 pixels of any size (one size per batch), through the Python attribute too.
    got = loaded.serve_uint8(pixels[1][None])
    np.testing.assert_allclose(
        got["final_avg_pool"], expected["final_avg_pool"][1:], rtol=0, atol=1e-5
    )


def test_a_mixed_precision_model_is_exported_in_float32(tmp_path):
    """The export computes in float32 with the float32 weights, whatever the training
    computed in: features the bfloat16 model would round to 8 bits of mantissa."""
    import keras
    import numpy as np
    import tensorflow as tf

    from simclr_tf2.export import export_saved_model

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3)
        mixed.build((None, 16, 16, 3))
    finally:
        keras.config.set_dtype_policy("float32")
    reference = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3)
    reference.build((None, 16, 16, 3))
    reference.set_weights(mixed.get_weights())
    images = tf.random.stateless_uniform((4, 16, 16, 3), (1, 2))
    loaded = tf.saved_model.load(export_saved_model(mixed, str(tmp_path / "export")))
    got = loaded.signatures["serving_default"](images=images)
    expected = reference(images, training=False)
    rounded = mixed(images, training=False)
    for key in ("final_avg_pool", "proj_head_output", "logits_sup"):
        assert got[key].dtype == tf.float32
        scale = float(tf.reduce_max(tf.abs(expected[key])))
        # The same float32 graph, traced twice: round-off of float32 only.
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-5 * scale, err_msg=key)
        # The bfloat16 model is 2**-8 away: far outside that tolerance.
        error = float(tf.reduce_max(tf.abs(tf.cast(rounded[key], tf.float32) - expected[key])))
        assert error > 1e-3 * scale, key
    # The float32 weights are the export's, unchanged.
    assert all(v.dtype == tf.float32 for v in loaded.variables if v.dtype.is_floating)
