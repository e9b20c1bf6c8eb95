"""Input pipelines: two views per image for pretraining, one for fine-tuning and eval.

`build_dataset` makes the per-replica `tf.data.Dataset` for one input pipeline;
`distributed_dataset` hands it to `strategy.distribute_datasets_from_function`,
which shards it by input pipeline and batches it per replica.

Views are seeded by (seed, shard, position in the stream), so with
`deterministic=True` a run sees exactly the same views every time, and a run
resumed at a step (`start`) goes on with exactly the batches it would have had.

An image file that passed the check before the run but cannot be decoded stops
the pipeline with a `DataError` naming it, or, when its source's
`decode_failures` say to skip, is dropped, counted and logged.
"""

from __future__ import annotations

import tensorflow as tf

from simclr_tf2.data.blur import use_blur_for
from simclr_tf2.data.crop import decode_and_random_crops, random_resized_crops
from simclr_tf2.data.files import DecodeFailures
from simclr_tf2.data.source import Source
from simclr_tf2.data.views import eval_view, finetune_view, simclr_pair, simclr_pair_of

MODES = ("pretrain", "finetune", "eval")


def decode_image(encoded) -> tf.Tensor:
    """The uint8 (H, W, 3) pixels of a JPEG, PNG, BMP or GIF file's bytes
    (grayscale, RGBA and 16-bit images become RGB uint8)."""
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def pixels(example) -> tf.Tensor:
    """The uint8 (H, W, 3) pixels of a source's example (see `Source`)."""
    return example["image"] if "image" in example else decode_image(example["encoded"])


def _attempt(fn, args: tuple, fallback, guarded: bool):
    """(fn(*args), True), or when `guarded` and fn raises, (fallback, False).

    tf.data's only per-element error handling is `ignore_errors`, so a guarded
    fn runs in a dataset of this one element. Keep fn to the decode: its
    function is instantiated for every element, which costs little for a few
    ops (a crop window's decode and resize) and about a millisecond for a
    whole view.
    """
    if not guarded:
        return fn(*args), tf.constant(True)
    tried = tf.data.Dataset.from_tensors(args).map(lambda *a: (fn(*a), True)).ignore_errors()
    failed = tf.data.Dataset.from_tensors((fallback, False))
    return tried.concatenate(failed).take(1).get_single_element()


def _decoded(encoded, guarded: bool):
    """(uint8 pixels, ok) of a file's bytes. A file that cannot be decoded
    gives a blank image, whose views are made and then dropped."""
    image, ok = _attempt(decode_image, (encoded,), tf.zeros([16, 16, 3], tf.uint8), guarded)
    image.set_shape([None, None, 3])
    return image, ok


def _pair_crops(encoded, crop_seeds, image_size: int, guarded: bool):
    """(the two random resized crops of `simclr_pair_of`, ok)
    of a file's bytes: a JPEG is decoded only in the crops' window."""

    def crops_of_jpeg(jpeg, seeds):
        return tuple(decode_and_random_crops(jpeg, tf.unstack(seeds), image_size))

    def jpeg():
        blank = tf.zeros([image_size, image_size, 3])
        return _attempt(crops_of_jpeg, (encoded, tf.stack(crop_seeds)), (blank, blank), guarded)

    def other():
        image, ok = _decoded(encoded, guarded)
        return tuple(random_resized_crops(image, crop_seeds, image_size)), ok

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def view_function(
    mode: str, image_size: int, color_jitter_strength: float, use_blur: bool, guarded: bool
):
    """Returns fn(example, seed) -> ((view(s), label), ok) for `mode`; ok is
    False for a file that could not be decoded (only when `guarded`)."""
    blur = use_blur_for(image_size, use_blur)

    def two_views(example, seed):
        # Both views stacked on channels: (S, S, 6).
        if "image" in example:
            views = simclr_pair(example["image"], seed, image_size, color_jitter_strength, blur)
            return (views, example["label"]), tf.constant(True)
        decoded = []  # the ok of the decode crops_of runs, set while the pair is built

        def crops_of(crop_seeds):
            crops, ok = _pair_crops(example["encoded"], crop_seeds, image_size, guarded)
            decoded.append(ok)
            return list(crops)

        views = simclr_pair_of(crops_of, seed, image_size, color_jitter_strength, blur)
        return (views, example["label"]), decoded[0]

    def one_view(example, seed):
        if "image" in example:
            image, ok = example["image"], tf.constant(True)
        else:
            image, ok = _decoded(example["encoded"], guarded)
        if mode == "finetune":
            return (finetune_view(image, seed, image_size), example["label"]), ok
        return (eval_view(image, image_size), example["label"]), ok

    return two_views if mode == "pretrain" else one_view


def build_dataset(
    source: Source,
    batch_size: int,
    image_size: int,
    mode: str = "pretrain",
    *,
    color_jitter_strength: float = 1.0,
    use_blur: bool = True,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    cache: bool = False,
    deterministic: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    every: int = 1,
    start: int = 0,
) -> tf.data.Dataset:
    """The batched dataset of one input pipeline.

    Args:
        source: where the images come from.
        batch_size: examples per batch (per replica under a strategy).
        image_size: side of the views.
        mode: "pretrain" (two views stacked on channels: (B, S, S, 6)),
            "finetune" (crop + flip) or "eval" (centre crop; one pass in the
            source's order, last batch kept).
        color_jitter_strength: s of the colour distortion.
        use_blur: Gaussian blur (never at 32 px or less).
        seed: seed of the shuffle and of every view.
        shuffle_buffer: examples in the shuffle buffer.
        cache: keep the source's examples in memory after the first epoch.
        deterministic: same order and views on every run (slower).
        input_context: from `distribute_datasets_from_function`; shards the
            source by input pipeline.
        every: keep only every `every`-th example of the source (a subset
            spread over the whole source, e.g. over all classes of a folder).
        start: elements of the whole training stream (all input pipelines)
            already consumed, by a run resumed at step `start / global batch`:
            they are skipped before any view is made, so the stream goes on
            exactly where that run was (with the same `seed`).

    Returns:
        A dataset of (views, labels); labels are int64, -1 when unlabelled.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}.")
    training = mode != "eval"
    if start and not training:
        raise ValueError(f"start={start}: an eval pass does not resume; use start=0.")
    # An eval pass keeps the source's order (per-example results line up with it).
    deterministic = deterministic or not training
    ds = source.dataset()
    # Files of the user's, decoded here: one may fail only now.
    from_files = {"encoded", "path"} <= set(ds.element_spec)
    if every > 1:
        ds = ds.shard(every, 0)
    pipelines, shard = 1, 0
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines, shard = input_context.num_input_pipelines, input_context.input_pipeline_id
    # Deterministic training shards the shuffled stream, not the source: every
    # pipeline reads the whole stream (cheap: images are decoded after the
    # shard) and keeps every k-th element, so each global batch holds the same
    # examples and views whatever the number of workers.
    shard_stream = training and deterministic and pipelines > 1
    if pipelines > 1 and not shard_stream:
        ds = ds.shard(pipelines, shard)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    # Each element's position in the (repeated) stream seeds its views, so
    # every epoch sees new views.
    ds = ds.enumerate()
    if start:
        # Skipped before the views: a resume reads the consumed examples but neither
        # decodes nor augments them. A sharded stream skips its global positions; a
        # pipeline with its own shard of the source consumed its share of them.
        ds = ds.skip(start if shard_stream or pipelines == 1 else start // pipelines)
    if shard_stream:
        ds = ds.shard(pipelines, shard)
        shard = 0  # positions are global: the seeds need no shard
    view = view_function(mode, image_size, color_jitter_strength, use_blur, from_files)
    failures = None
    if from_files:
        failures = source.decode_failures or DecodeFailures(skip=False)

    def augment_one(index, example):
        stream = tf.constant(seed * 1_000_003 + shard, tf.int64)
        out, ok = view(example, tf.stack([stream, index]))
        if failures is None:
            return out
        # Runs only for a file that failed: names it, and stops or says to drop it.
        report = lambda: tf.py_function(failures.report, [example["path"]], tf.bool)  # noqa: E731
        return out, tf.cond(ok, lambda: tf.constant(True), report)

    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)
    ds = ds.map(augment_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if failures is not None:
        # Only the example that failed is dropped: the batches fill up from the next ones.
        ds = ds.filter(lambda _, ok: ok)
        ds = ds.map(lambda out, _: out)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)


def distributed_dataset(
    strategy: tf.distribute.Strategy, source: Source, global_batch_size: int, **kwargs
) -> tf.distribute.DistributedDataset:
    """`build_dataset` for every input pipeline of `strategy`, per-replica batched.

    Args:
        strategy: the distribution strategy.
        source: where the images come from.
        global_batch_size: examples per step over all replicas.
        **kwargs: the other arguments of `build_dataset`.
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise ValueError(
            f"train_batch_size={global_batch_size} is not divisible by the {replicas} "
            "replicas; use a multiple of the replica count."
        )

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch_size)
        return build_dataset(source, per_replica, input_context=context, **kwargs)

    return strategy.distribute_datasets_from_function(dataset_fn)
