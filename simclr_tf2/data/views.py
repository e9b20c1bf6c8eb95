"""SimCLR's views: random resized crop + flip, colour distortion, blur; the
pair of views of one image (from JPEG bytes with one decode for both); the
fine-tuning and evaluation views.

Every view is a stateless function of (image, seed): the same image and seed
give the same view, on any device and in any `tf.data` order. The seed of a
view splits into a crop seed and a seed of its `ViewDraws` (every other
choice, drawn in one op).

Above 32 px (`COMPILE_ABOVE`) the steps after the crop run as one
XLA-compiled function on planar views; at 32 px and below, op by op. Both
give the same views for the same seed, to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import tensorflow as tf

from simclr_tf2.data.blur import BlurDraws, random_blur
from simclr_tf2.data.color import ColorDraws, color_distortion
from simclr_tf2.data.crop import (
    center_crop,
    decode_and_random_crops,
    random_resized_crop,
    random_resized_crops,
    resize,
)
from simclr_tf2.data.draws import maybe, split_seed, uniforms

# Above this side, the steps after the crop run as one XLA-compiled function on
# planar views: fused, they cost about a quarter of TensorFlow's kernels run op
# by op (at 224 px the whole JPEG pipeline makes 1.45-1.65x the pairs/s; see
# README, "Input pipeline speed"); at 32 px the call costs more than it saves,
# so small views run op by op. The first call compiles (about 9 s at 224 px).
COMPILE_ABOVE = 32


class ViewDraws(NamedTuple):
    """The uniform [0, 1) draws of one view after its crop."""

    flip_coin: tf.Tensor
    color: ColorDraws
    blur: BlurDraws

    SIZE = 1 + ColorDraws.SIZE + BlurDraws.SIZE

    @classmethod
    def take(cls, values: Iterator[tf.Tensor]) -> ViewDraws:
        return cls(next(values), ColorDraws.take(values), BlurDraws.take(values))

    @classmethod
    def from_seed(cls, seed) -> ViewDraws:
        return cls.take(uniforms(seed, cls.SIZE))


def view_seeds(seed) -> tuple[tf.Tensor, tf.Tensor]:
    """(crop seed, `ViewDraws` seed) of the view `simclr_view(image, seed)`."""
    crop_seed, draws_seed = split_seed(seed, 2)
    return crop_seed, draws_seed


def pair_seeds(seed) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """(crop seeds, `ViewDraws` seeds) of the two views of a pair: view i of
    `simclr_pair(image, seed)` is `simclr_view(image, seed_i)`."""
    seeds = [view_seeds(view_seed) for view_seed in split_seed(seed, 2)]
    return [crop for crop, _ in seeds], [draws for _, draws in seeds]


def _finish(views, draws, image_size, strength, blur, flip, color_distort, planar):
    finished = []
    width_axis = 2 if planar else 1
    for view, d in zip(views, draws, strict=True):
        if planar:
            view = tf.transpose(view, [2, 0, 1])  # see simclr_tf2/data/color.py
        if flip:
            view = maybe(d.flip_coin < 0.5, lambda x: tf.reverse(x, [width_axis]), view)
        if color_distort:
            view = color_distortion(view, d.color, strength, planar)
        if blur:
            view = random_blur(view, d.blur, image_size, planar=planar)
        view = tf.clip_by_value(view, 0.0, 1.0)
        finished.append(tf.transpose(view, [1, 2, 0]) if planar else view)
    return tf.concat(finished, -1)  # one view: returned as it is


_finish_compiled = tf.function(_finish, jit_compile=True)


def finish_views(
    views: Sequence[tf.Tensor],
    draws: Sequence[ViewDraws],
    image_size: int,
    color_jitter_strength: float = 1.0,
    blur: bool = True,
    flip: bool = True,
    color_distort: bool = True,
    compiled: bool | None = None,
) -> tf.Tensor:
    """Flip (p=0.5), colour distortion and blur of cropped views, stacked on channels.

    Args:
        views: float32 (image_size, image_size, 3) crops in [0, 1].
        draws: the `ViewDraws` of each view, drawn outside any compiled
            function so that both paths make the same choices (XLA has its own
            random number generators).
        image_size: side of the views.
        compiled: run as one XLA-compiled function on planar views; by
            default above `COMPILE_ABOVE` px when there is a colour
            distortion or a blur.
    """
    for view in views:
        view.set_shape([image_size, image_size, 3])
    if compiled is None:
        compiled = image_size > COMPILE_ABOVE and bool(blur or color_distort)
    finish = _finish_compiled if compiled else _finish
    return finish(
        list(views),
        list(draws),
        int(image_size),
        float(color_jitter_strength),
        bool(blur),
        bool(flip),
        bool(color_distort),
        bool(compiled),
    )


def simclr_view(
    image,
    seed,
    image_size: int,
    color_jitter_strength: float = 1.0,
    blur: bool = True,
    crop: bool = True,
    flip: bool = True,
    color_distort: bool = True,
) -> tf.Tensor:
    """One SimCLR view of `image` (H, W, 3, uint8 or float in [0, 1]).

    Random resized crop to `image_size`, horizontal flip (p=0.5), colour
    distortion of strength `color_jitter_strength`, Gaussian blur (p=0.5).
    Pass `tf.image.decode_*`'d pixels; for JPEG bytes use `simclr_view_jpeg`.

    Returns:
        float32 (image_size, image_size, 3) in [0, 1].
    """
    crop_seed, draws_seed = view_seeds(seed)
    view = random_resized_crop(image, crop_seed, image_size) if crop else resize(image, image_size)
    return finish_views(
        [view],
        [ViewDraws.from_seed(draws_seed)],
        image_size,
        color_jitter_strength,
        blur,
        flip,
        color_distort,
    )


def simclr_view_jpeg(
    jpeg_bytes,
    seed,
    image_size: int,
    color_jitter_strength: float = 1.0,
    blur: bool = True,
    flip: bool = True,
    color_distort: bool = True,
) -> tf.Tensor:
    """`simclr_view` of encoded JPEG bytes, decoding only the crop window."""
    crop_seed, draws_seed = view_seeds(seed)
    views = decode_and_random_crops(jpeg_bytes, [crop_seed], image_size)
    return finish_views(
        views,
        [ViewDraws.from_seed(draws_seed)],
        image_size,
        color_jitter_strength,
        blur,
        flip,
        color_distort,
    )


def simclr_pair_of(
    crops_of: Callable[[list[tf.Tensor]], Sequence[tf.Tensor]],
    seed,
    image_size: int,
    color_jitter_strength: float = 1.0,
    blur: bool = True,
) -> tf.Tensor:
    """Two SimCLR views stacked on channels, (image_size, image_size, 6), from
    their random resized crops: the one path of every pair of views.

    Args:
        crops_of: fn(crop seeds) -> the two float32 (image_size, image_size, 3)
            crops in [0, 1], one per seed (e.g. `random_resized_crops` of
            pixels, `decode_and_random_crops` of JPEG bytes).
        seed: shape-[2] integer seed of the pair; view i is
            `simclr_view(image, seed_i)` with seed_1, seed_2 split from it.
        image_size: side of the views.
        color_jitter_strength: s of the colour distortion.
        blur: Gaussian blur (p=0.5).

    Returns:
        float32 (image_size, image_size, 6) in [0, 1].
    """
    crop_seeds, draws_seeds = pair_seeds(seed)
    draws = [ViewDraws.from_seed(s) for s in draws_seeds]
    return finish_views(crops_of(crop_seeds), draws, image_size, color_jitter_strength, blur)


def simclr_pair(
    image, seed, image_size: int, color_jitter_strength: float = 1.0, blur: bool = True
) -> tf.Tensor:
    """Two SimCLR views of `image` stacked on channels: (image_size, image_size, 6).

    View i is `simclr_view(image, seed_i)` with seed_1, seed_2 split from `seed`.
    """
    return simclr_pair_of(
        lambda crop_seeds: random_resized_crops(image, crop_seeds, image_size),
        seed,
        image_size,
        color_jitter_strength,
        blur,
    )


def simclr_pair_jpeg(
    jpeg_bytes, seed, image_size: int, color_jitter_strength: float = 1.0, blur: bool = True
) -> tf.Tensor:
    """`simclr_pair` of encoded JPEG bytes, decoding once: only the smallest
    window that holds both crops (one entropy-decoding pass instead of two)."""
    return simclr_pair_of(
        lambda crop_seeds: decode_and_random_crops(jpeg_bytes, crop_seeds, image_size),
        seed,
        image_size,
        color_jitter_strength,
        blur,
    )


def finetune_view(image, seed, image_size: int) -> tf.Tensor:
    """Fine-tuning augmentation: random resized crop and flip only."""
    return simclr_view(image, seed, image_size, blur=False, color_distort=False)


def eval_view(image, image_size: int) -> tf.Tensor:
    """Evaluation preprocessing: centre crop (above 32 px) and resize."""
    view = center_crop(image, image_size)
    view.set_shape([image_size, image_size, 3])
    return view
