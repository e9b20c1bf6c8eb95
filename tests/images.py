"""Small image files written by the data tests."""

import os

import numpy as np
from PIL import Image


def save(path, array, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def rgb(h=40, w=30, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def undecodable_jpeg(path, seed=0):
    """A JPEG whose header and end marker are sound but whose Huffman table is not:
    the header check passes it, decoding fails. (Scrambled entropy-coded data would
    not do: libjpeg decodes it to noise with a warning.)"""
    save(path, rgb(seed=seed), "JPEG")
    data = bytearray(open(path, "rb").read())
    table = data.index(b"\xff\xc4")  # DHT: marker, length (2), class/id, 16 code counts
    data[table + 5 : table + 21] = b"\xff" * 16  # more codes than any table can hold
    open(path, "wb").write(bytes(data))


def undecodable_png(path, seed=0):
    """A PNG with a sound signature, header chunk and IEND whose compressed pixel
    data is garbage: the header check passes it, decoding fails."""
    save(path, rgb(seed=seed), "PNG")
    data = bytearray(open(path, "rb").read())
    start = data.index(b"IDAT") + 4
    data[start : len(data) - 12] = np.random.default_rng(seed).bytes(len(data) - 12 - start)
    open(path, "wb").write(bytes(data))
