"""Random resized crop windows: ranges, the fallback."""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data.crop import CROP_AREA_RANGE, CROP_ASPECT_RANGE, crop_window
from tests.seeded import collect, seeds


def expected_crop_area(area_range=CROP_AREA_RANGE, aspect_range=CROP_ASPECT_RANGE):
    """E[area fraction] of an accepted crop of a square image, by quadrature.

    (area a, log-ratio u) is uniform; a crop fits a square iff a <= min(r, 1/r)
    = exp(-|u|), so E[a] = int int a da du / int int da du over that region.
    """
    u = np.linspace(math.log(aspect_range[0]), math.log(aspect_range[1]), 20001)
    top = np.minimum(np.exp(-np.abs(u)), area_range[1])
    lo = area_range[0]
    numerator = np.trapezoid((top**2 - lo**2) / 2, u)
    denominator = np.trapezoid(top - lo, u)
    return numerator / denominator


def test_crop_areas_and_aspects():
    shape = tf.constant([1000, 1000, 3])  # large, so pixel rounding is negligible
    windows = collect(seeds(4000).map(lambda s: crop_window(shape, s)))
    _, _, h, w = windows.T
    area = h * w / 1e6
    assert area.min() >= 0.08 - 1e-3 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 0.75 - 2e-3 and ratio.max() <= 4 / 3 + 2e-3
    # Log-uniform aspect: the mean of log(ratio) is ~0.
    assert abs(np.mean(np.log(ratio))) < 0.01
    # Standard error of the mean area over 4000 draws is ~0.004.
    assert np.mean(area) == pytest.approx(expected_crop_area(), abs=0.012)
    offsets_ok = (windows[:, 0] + h <= 1000) & (windows[:, 1] + w <= 1000)
    assert offsets_ok.all() and (windows[:, :2] >= 0).all()


def test_crop_falls_back_to_clamped_centre_crop():
    # A 10x1000 strip: no candidate with aspect <= 4/3 and area >= 8% fits.
    window = crop_window(tf.constant([10, 1000, 3]), tf.constant([1, 2])).numpy()
    assert list(window) == [0, (1000 - 13) // 2, 10, 13]
